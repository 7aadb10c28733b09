"""Vision-language preference data: TRL's, RLAIF-V's and mDPO's rows all become the one canonical row
(messages in parts form, images in order, decoded at collate), and each bad row is named by source,
row and column."""

from __future__ import annotations

import io
import json

import datasets
import pytest
import torch
from PIL import Image

from alignsuite.data import DataError, PreferenceDataModule, TextPairs, VisionPairs

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}
IMG = {"type": "image"}


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def colours(images: list) -> list[str]:
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (3, 2) for im in images)
    return [next(n for n, rgb in COLOURS.items() if rgb == im.getpixel((2, 1))) for im in images]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def answer(t: str) -> list[dict]:
    return [{"role": "assistant", "content": [text(t)]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_dm(train, layout=None, **kwargs):
    dm = PreferenceDataModule(train=train, layout=layout or VisionPairs(), batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def whole(dm):
    """The whole train set as one batch, in row order, through the module's collate function."""
    return dm.collate([dm.train_set[i] for i in range(len(dm.train_set))])


def rlaif_rows(n=2):
    return [{"image": {"bytes": png("red" if i % 2 == 0 else "blue"), "path": None}, "question": f"Colour {i}?",
             "chosen": f"Red {i}.", "rejected": f"Blue {i}.", "idx": i} for i in range(n)]


def test_trl_layout_with_an_image_feature_list_and_several_images(tmp_path):
    prompts = [
        [{"role": "system", "content": [text("Be brief.")]},
         {"role": "user", "content": [IMG, text("Same colour as"), IMG, text("?")]}],
        [{"role": "user", "content": [text("What is it?"), IMG]}],
    ]
    rows = [
        {"prompt": prompts[0], "images": [png("red"), png("blue")], "chosen": answer("No."),
         "rejected": [{"role": "assistant", "content": "Yes."}]},
        {"prompt": prompts[1], "images": [png("green")], "chosen": answer("A square."),
         "rejected": [{"role": "assistant", "content": "A cat."}]},
    ]
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    path = str(tmp_path / "trl.parquet")
    ds.to_parquet(path)
    dm = make_dm(path)
    assert dm.train_set.features["images"] == datasets.List(datasets.Image(decode=False))
    assert dm.train_set[0]["images"][1]["bytes"] == png("blue")  # stored encoded
    assert dm.train_set["_images_column"] == ["images", "images"]
    batch = whole(dm)
    assert set(batch) == {"prompt", "chosen", "rejected", "images", "index"}
    assert batch["prompt"][0] == [
        {"role": "system", "content": [text("Be brief.")]},
        {"role": "user", "content": [IMG, text("Same colour as"), IMG, text("?")]},
    ]
    assert batch["prompt"][1] == [{"role": "user", "content": [text("What is it?"), IMG]}]
    assert batch["chosen"] == [answer("No."), answer("A square.")]
    assert batch["rejected"] == [answer("Yes."), answer("A cat.")]
    assert [colours(ims) for ims in batch["images"]] == [["red", "blue"], ["green"]]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1]


def test_rlaif_v_rows_through_the_loader(tmp_path):
    path = str(tmp_path / "rlaif.parquet")
    datasets.Dataset.from_list(rlaif_rows(4)).to_parquet(path)
    dm = make_dm(path)
    batches = list(dm.train_dataloader())
    assert [len(b["prompt"]) for b in batches] == [2, 2]
    for b in batches:
        for i, prompt, chosen, ims in zip(b["index"].tolist(), b["prompt"], b["chosen"], b["images"]):
            assert prompt == [{"role": "user", "content": [IMG, text(f"Colour {i}?")]}]
            assert chosen == answer(f"Red {i}.")
            assert colours(ims) == ["red" if i % 2 == 0 else "blue"]
    assert "idx" not in batches[0]  # the source's other columns stay out



def test_a_16_bit_png_keeps_its_grey_through_the_vision_layout(tmp_path):
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 3), 32768, dtype=np.uint16)).save(buffer, format="PNG")  # mode I;16
    path = str(tmp_path / "grey.parquet")
    datasets.Dataset.from_list([dict(rlaif_rows(1)[0], image={"bytes": buffer.getvalue(), "path": None})]).to_parquet(path)
    (image,) = whole(make_dm(path))["images"][0]
    assert image.mode == "RGB" and image.getpixel((2, 1)) == (128, 128, 128)  # not clipped to white


def test_mdpo_rows_with_img_path_relative_to_the_data_file(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (3, 2), COLOURS["green"]).save(tmp_path / "images" / "a.jpg", quality=100)
    Image.new("RGB", (3, 2), COLOURS["blue"]).save(tmp_path / "b.png")
    rows = [  # as luka-group/mDPO data/sample_data.json: a JSON array, Bunny's template in the prompt
        {"img_path": "images/a.jpg", "prompt": "A chat. USER: <image>\nWhat is this? ASSISTANT:",
         "chosen": "A field.", "rejected": "A sea."},
        {"img_path": str(tmp_path / "b.png"), "prompt": "Describe.", "chosen": "Blue.", "rejected": "Red."},
    ]
    (tmp_path / "mdpo.json").write_text(json.dumps(rows))
    dm = make_dm(str(tmp_path / "mdpo.json"))
    assert dm.train_set[0]["images"] == [{"bytes": None, "path": str((tmp_path / "images" / "a.jpg").resolve())}]
    batch = whole(dm)
    assert batch["prompt"] == [
        [{"role": "user", "content": [text("A chat. USER: "), IMG, text("\nWhat is this? ASSISTANT:")]}],
        [{"role": "user", "content": [IMG, text("Describe.")]}],  # no placeholder: the image first
    ]
    assert batch["rejected"] == [answer("A sea."), answer("Red.")]
    assert max(abs(a - b) for a, b in zip(batch["images"][0][0].getpixel((1, 1)), COLOURS["green"])) < 8  # jpeg
    assert colours(batch["images"][1]) == ["blue"]


def test_multi_image_text_prompts_place_images_at_placeholders_or_first(tmp_path):
    rows = [
        {"prompt": "<image><image> Which is red?", "images": [png("blue"), png("red")], "chosen": "2", "rejected": "1"},
        {"prompt": "Left <image> right <image>", "images": [png("red"), png("green")], "chosen": "a", "rejected": "b"},
        {"prompt": "Which differs?", "image": None, "images": [png("red"), png("red"), png("blue")], "chosen": "3", "rejected": "1"},
    ]
    path = str(tmp_path / "multi.parquet")
    datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "image"} for r in rows[:2]]).to_parquet(path)
    dm = make_dm(path)
    batch = whole(dm)
    assert [p[0]["content"] for p in batch["prompt"]] == [
        [IMG, IMG, text(" Which is red?")], [text("Left "), IMG, text(" right "), IMG]]
    assert [colours(ims) for ims in batch["images"]] == [["blue", "red"], ["red", "green"]]
    out = VisionPairs().normalize({k: [{"bytes": b, "path": None} for b in v] if k == "images" else v
                                   for k, v in rows[2].items()}, 0, "mem")
    assert json.loads(out["prompt"]) == [{"role": "user", "content": [IMG, IMG, IMG, text("Which differs?")]}]
    assert [ref["bytes"] for ref in out["images"]] == [png("red"), png("red"), png("blue")]


def test_pil_and_path_images_and_text_only_rows():
    image = Image.open(io.BytesIO(png("green")))
    out = VisionPairs().normalize({"image": image, "question": "q", "chosen": "a", "rejected": "b"}, 0, "mem")
    assert Image.open(io.BytesIO(out["images"][0]["bytes"])).convert("RGB").getpixel((0, 0)) == COLOURS["green"]
    # An empty image column is a text-only row when asked for: no image parts, no images.
    out = VisionPairs(keep_text_only=True).normalize({"prompt": "hi", "images": [], "chosen": "a", "rejected": "b"}, 0, "mem")
    assert json.loads(out["prompt"]) == [{"role": "user", "content": [text("hi")]}] and out["images"] == []


@pytest.mark.parametrize("column, value", [("images", [None]), ("image", None), ("images", []),
                                           ("images", [{"bytes": None, "path": None}]), ("img_path", "")])
def test_a_row_without_its_image_is_refused_naming_file_row_and_field(tmp_path, column, value):
    # Trained as a text-only pair it would teach the answer without the image: the image-blind signal mDPO avoids.
    (tmp_path / "red.png").write_bytes(png("red"))
    rows = [{"prompt": "q0", "chosen": "a", "rejected": "b", column: "red.png" if column != "images" else ["red.png"]},
            {"prompt": "q1", "chosen": "a", "rejected": "c", column: value}]
    err = error_of(tmp_path, rows)
    assert (err.source, err.row, err.field) == (str(tmp_path / "bad.jsonl"), 1, column)
    assert "keep_text_only" in str(err) and "no image" in str(err)


def test_rows_without_images_kept_on_request_are_counted_and_reported(tmp_path):
    (tmp_path / "red.png").write_bytes(png("red"))
    rows = [{"image": None if i in (1, 3) else "red.png", "question": f"q{i}", "chosen": "a", "rejected": "b"}
            for i in range(4)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    layout = VisionPairs(keep_text_only=True)
    with pytest.warns(UserWarning, match=rf"{path}: kept 2 rows with no image as text-only pairs \(rows 1, 3\)"):
        dm = make_dm(path, layout=layout)
    assert layout.text_only == {path: 2} and len(dm.train_set) == 4
    assert [len(ims) for ims in whole(dm)["images"]] == [1, 0, 1, 0]


def test_a_null_among_a_rows_images_is_refused_even_when_text_only_rows_are_kept(tmp_path):
    (tmp_path / "red.png").write_bytes(png("red"))
    rows = [{"prompt": [{"role": "user", "content": [IMG, IMG, text("q")]}], "images": ["red.png", None],
             "chosen": "a", "rejected": "b"}]
    err = error_of(tmp_path, rows, layout=VisionPairs(keep_text_only=True))
    assert (err.row, err.field) == (0, "images") and "image 1 of the row is null" in str(err)


def test_chosen_equal_to_rejected_is_skipped_and_counted(tmp_path):
    rows = rlaif_rows(3)
    rows[1]["rejected"] = rows[1]["chosen"]
    path = write_jsonl(tmp_path / "r.jsonl", [dict(r, image=None, images=[]) for r in rows])
    with pytest.warns(UserWarning, match=rf"{path}: skipped 1 rows where chosen equals rejected \(rows 1\)"):
        dm = make_dm(path, layout=VisionPairs(keep_text_only=True))
    assert dm.skipped == {path: 1} and dm.train_set["_row"] == [0, 2]


# --- errors ---------------------------------------------------------------------------------------


def error_of(tmp_path, rows, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        make_dm(write_jsonl(tmp_path / "bad.jsonl", rows), **kwargs)
    return err.value


@pytest.mark.parametrize("column", ["chosen", "rejected", "question"])
def test_missing_or_empty_column_is_named(tmp_path, column):
    Image.new("RGB", (3, 2)).save(tmp_path / "x.png")
    rows = [{"image": "x.png", "question": "q", "chosen": "a", "rejected": "b"} for _ in range(2)]
    rows[1][column] = None  # a jsonl row without the key: None
    err = error_of(tmp_path, rows)
    assert (err.row, err.field) == (1, column) and str(err).endswith("expected text, or chat messages that are dicts"
                                                                   " with a string 'role' and a 'content', got None")
    for row in rows:
        del row[column]
    err = error_of(tmp_path, rows)
    field = "prompt" if column == "question" else column
    assert (err.row, err.field) == (0, field) and f"expected a column named {field!r}" in str(err)


def test_missing_image_column_points_at_text_pairs(tmp_path):
    err = error_of(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert (err.row, err.field) == (0, "images")
    assert "expected an image column ('images', 'image' or 'img_path')" in str(err)
    assert "alignsuite.data.TextPairs" in str(err)


def test_missing_image_file_is_named_at_build(tmp_path):
    rows = [{"img_path": "gone.jpg", "prompt": "<image> q", "chosen": "a", "rejected": "b"}]
    err = error_of(tmp_path, rows)
    assert (err.source, err.row, err.field) == (str(tmp_path / "bad.jsonl"), 0, "img_path")
    assert "there is no file at" in str(err) and "gone.jpg" in str(err)


def test_image_part_count_must_match_the_images(tmp_path):
    rows = [{"prompt": "<image> and <image>?", "images": [{"bytes": None, "path": str(tmp_path / "x.png")}],
             "chosen": "a", "rejected": "b"}]
    Image.new("RGB", (3, 2)).save(tmp_path / "x.png")
    err = error_of(tmp_path, rows)
    assert (err.row, err.field) == (0, "prompt")
    assert str(err).endswith("expected one image part per image of the row; the prompt has 2 image parts,"
                             " column 'images' has 1 images")
    # Image parts with no image column value at all.
    rows = [{"prompt": [{"role": "user", "content": [IMG, text("q")]}], "images": None, "chosen": "a", "rejected": "b"}]
    assert "the prompt has 1 image parts, column 'images' has 0 images" in str(error_of(tmp_path, rows))


def test_image_parts_in_an_answer_are_refused(tmp_path):
    rows = [{"prompt": "q", "images": [], "chosen": "a",
             "rejected": [{"role": "assistant", "content": [IMG, text("b")]}]}]
    err = error_of(tmp_path, rows)
    assert (err.row, err.field) == (0, "rejected") and "expected an answer of text parts only" in str(err)



@pytest.mark.parametrize("field, row", [
    ("chosen", {"chosen": "it is <image> red"}),
    ("rejected", {"rejected": [{"role": "assistant", "content": [text("<image>")]}]}),
    ("prompt", {"prompt": [{"role": "user", "content": [IMG, text("and <image> what colour?")]}]}),
])
def test_the_image_placeholder_typed_in_an_answer_or_a_prompts_text_part_is_refused(tmp_path, field, row):
    # The processor would expand it into image tokens with no image to match ("Image features and image tokens
    # do not match" inside transformers); here the row and field are named.
    (tmp_path / "red.png").write_bytes(png("red"))
    rows = [{"prompt": "q", "images": ["red.png"], "chosen": "a", "rejected": "b"},
            dict({"prompt": "q", "images": ["red.png"], "chosen": "a", "rejected": "b"}, **row)]
    err = error_of(tmp_path, rows)
    assert (err.row, err.field) == (1, field) and "'<image>'" in str(err)


def test_the_models_image_token_handed_over_at_setup_is_refused_at_collate_naming_file_row_and_field(tmp_path):
    rows = rlaif_rows(3)
    rows[1]["rejected"] = "Blue <|image_pad|>."
    rows[2]["question"] = "What <|image_pad|> colour?"
    path = str(tmp_path / "r.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    dm = make_dm(path)
    whole(dm)  # the layout does not know the model's image token yet
    dm.layout.use_model(image_tokens=["<|image_pad|>"])
    assert len(dm.collate([dm.train_set[0]])["prompt"]) == 1
    for i, field in ((1, "rejected"), (2, "question")):
        with pytest.raises(DataError) as err:
            dm.collate([dm.train_set[0], dm.train_set[i]])
        assert (err.value.source, err.value.row, err.value.field) == (path, i, field)
        assert "the model's image token '<|image_pad|>'" in str(err.value)



@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/a/cat.jpg"])
def test_an_image_url_is_refused_saying_urls_are_not_fetched(tmp_path, url):
    err = error_of(tmp_path, [{"image": url, "question": "q", "chosen": "a", "rejected": "b"}])
    assert (err.row, err.field) == (0, "image") and "URLs are not fetched" in str(err) and url in str(err)
    assert "there is no file at" not in str(err)  # not read as a path relative to the data file


def test_undecodable_image_fails_at_collate_naming_row_and_column(tmp_path):
    rows = rlaif_rows(3)
    rows[2]["image"] = {"bytes": b"not an image", "path": None}
    path = str(tmp_path / "r.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    dm = make_dm(path)
    with pytest.raises(DataError) as err:
        whole(dm)
    assert (err.value.source, err.value.row, err.value.field) == (path, 2, "image")
    assert "expected an image that decodes" in str(err.value)


def test_skip_bad_images_drops_the_row_and_counts(tmp_path):
    rows = rlaif_rows(3)
    rows[1]["image"] = {"bytes": b"garbage", "path": None}
    path = str(tmp_path / "r.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    dm = make_dm(path, VisionPairs(skip_bad_images=True))
    with pytest.warns(UserWarning, match=rf"skipping rows whose image does not decode.*{path}: row 1: field 'image'"):
        batch = whole(dm)
    assert batch["index"].tolist() == [0, 2] and [colours(ims) for ims in batch["images"]] == [["red"], ["red"]]
    assert dm.bad_images == {path: 1}


def test_text_layouts_point_at_vision_pairs(tmp_path):
    path = str(tmp_path / "rlaif.parquet")
    datasets.Dataset.from_list(rlaif_rows(2)).to_parquet(path)
    with pytest.raises(DataError, match=r"row 0: field 'image': .*read by the layout alignsuite\.data\.VisionPairs$"):
        make_dm(path, TextPairs())
    rows = [{"prompt": [{"role": "user", "content": [IMG, text("q")]}], "chosen": "a", "rejected": "b"}]
    err = error_of(tmp_path, rows, layout=TextPairs())
    assert (err.row, err.field) == (0, "prompt") and "alignsuite.data.VisionPairs" in str(err)


def test_rows_given_for_a_source_build_what_reading_its_file_builds(tmp_path):
    """``use_rows``: the rows of a configured file, read already (the online loop's own JSON lines), build the same
    stored rows and schema as the file read through `datasets`: messages whose content mixes images and text
    (which Arrow stores as its Json type), relative and absolute image paths; bad rows are still refused naming the
    source and row."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (3, 2), COLOURS["green"]).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (3, 2), COLOURS["blue"]).save(tmp_path / "b.png")
    rows = [
        {"images": ["images/a.png"], "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                             {"type": "text", "text": "Colour?"}]}],
         "chosen": "Green.", "rejected": "Blue.", "score_chosen": 1, "seeds": [3, 4]},
        {"images": [str(tmp_path / "b.png")], "prompt": [{"role": "user", "content": "<image>Which?"}],
         "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}], "rejected": "Red.",
         "score_chosen": 0.5, "seeds": []},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    layout = VisionPairs()
    from_file = make_dm(path, layout)
    given = PreferenceDataModule(train=path, layout=layout, batch_size=2)
    given.use_rows(path, [json.loads(line) for line in open(path)])
    given.setup("fit")
    assert given.train_set.features == from_file.train_set.features
    assert given.train_set.to_list() == from_file.train_set.to_list()
    assert whole(given)["prompt"] == whole(from_file)["prompt"]
    assert [colours(i) for i in whole(given)["images"]] == [["green"], ["blue"]]
    with pytest.raises(ValueError, match="not a configured source"):
        PreferenceDataModule(train=path, layout=VisionPairs(), batch_size=2).use_rows(str(tmp_path / "other.jsonl"), rows)
    with pytest.raises(RuntimeError, match="before setup"):
        from_file.use_rows(path, rows)
    bad = PreferenceDataModule(train=path, layout=VisionPairs(), batch_size=2)
    bad.use_rows(path, [rows[0], {**rows[1], "chosen": ""}])
    with pytest.raises(DataError, match=r"pairs.jsonl: row 1: field 'chosen'"):
        bad.setup("fit")
