"""Image preference data: Pick-a-Pic rows pick the right winner, ties and bad rows are handled as
documented, every image encoding and file layout gives the same canonical rows, decoding happens at
collate with errors that name the source row and column, and `to_tensor` crops and flips exactly."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from alignsuite.data import (
    DataError,
    ImageFields,
    ImagePairs,
    ImageUnpaired,
    PreferenceDataModule,
    normalize_image_pair,
    normalize_image_unpaired,
    to_tensor,
)

SRC = "data/pickapic.parquet"
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "white": (255, 255, 255)}


def png(colour: str, size=(4, 4), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_of(image: Image.Image) -> str:
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    rgb = image.getpixel((0, 0))
    return next(name for name, value in COLOURS.items() if value == rgb)


def pickapic_rows(n=4, overrides=None):
    """Row i: caption "c{i}"; jpg_0 red and jpg_1 blue; label_0 alternates 1, 0 (so the winner
    alternates red, blue); reward_0 = i, reward_1 = 10 + i."""
    rows = [
        {"caption": f"c{i}", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": float(i % 2 == 0),
         "label_1": float(i % 2 == 1), "reward_0": float(i), "reward_1": 10.0 + i}
        for i in range(n)
    ]
    for i, changes in (overrides or {}).items():
        rows[i].update(changes)
    return rows


def write_parquet(path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_dm(train, layout=None, **kwargs):
    dm = PreferenceDataModule(train=train, layout=layout or ImagePairs(), **kwargs)
    dm.setup("fit")
    return dm


def first_batch(dm):
    """The whole train set as one batch, in row order, through the module's collate function."""
    return dm.collate([dm.train_set[i] for i in range(len(dm.train_set))])


# --- Pick-a-Pic rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("label_0, winner, loser", [(1, "jpg_0", "jpg_1"), (0, "jpg_1", "jpg_0"), (1.0, "jpg_0", "jpg_1"), (0.0, "jpg_1", "jpg_0")])
def test_pickapic_winner_follows_label_0(label_0, winner, loser):
    row = {"caption": "a cat", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": label_0}
    assert normalize_image_pair(row, 3, SRC) == {
        "prompt": "a cat",
        "chosen": {"bytes": row[winner], "path": None},
        "rejected": {"bytes": row[loser], "path": None},
        "_source": SRC, "_row": 3, "_chosen_column": winner, "_rejected_column": loser,
    }


def test_pickapic_parquet_to_batch(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", pickapic_rows(4))
    dm = make_dm(path, batch_size=4)
    # Stored encoded, with provenance, not decoded pixels.
    assert dm.train_set.features["chosen"] == datasets.Image(decode=False)
    assert dm.train_set[1]["chosen"] == {"bytes": png("blue"), "path": None}
    assert dm.train_set[1]["_source"] == path and dm.train_set[1]["_row"] == 1
    batch = first_batch(dm)
    assert set(batch) == {"prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "index"}
    assert batch["prompt"] == ["c0", "c1", "c2", "c3"]
    assert [colour_of(im) for im in batch["chosen"]] == ["red", "blue", "red", "blue"]
    assert [colour_of(im) for im in batch["rejected"]] == ["blue", "red", "blue", "red"]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2, 3]


def test_train_loader_batches_images(tmp_path):
    dm = make_dm(write_parquet(tmp_path / "t.parquet", pickapic_rows(6)), batch_size=4)
    batches = list(dm.train_dataloader())
    assert [len(b["prompt"]) for b in batches] == [4, 2]
    for b in batches:
        for i, caption in zip(b["index"].tolist(), b["prompt"]):
            assert caption == f"c{i}"
        assert [colour_of(im) for im in b["chosen"]] == ["red" if i % 2 == 0 else "blue" for i in b["index"].tolist()]


def test_ties_are_dropped_counted_and_warned(tmp_path):
    rows = pickapic_rows(6, {1: {"label_0": 0.5}, 4: {"label_0": 0.5}})
    path = write_parquet(tmp_path / "t.parquet", rows)
    with pytest.warns(UserWarning, match=rf"{path}: dropped 2 tied pairs \(label_0 == 0.5; rows 1, 4\)"):
        dm = make_dm(path)
    assert dm.skipped == {path: 2}
    assert dm.train_set["prompt"] == ["c0", "c2", "c3", "c5"]
    assert dm.train_set["_row"] == [0, 2, 3, 5]  # the source row, not the position


def test_ties_kept_in_original_order_without_drop_ties(tmp_path):
    rows = pickapic_rows(4, {1: {"label_0": 0.5}})
    dm = make_dm(write_parquet(tmp_path / "t.parquet", rows), ImagePairs(drop_ties=False))
    assert dm.skipped == {}
    assert dm.train_set["prompt"] == ["c0", "c1", "c2", "c3"]
    batch = first_batch(dm)
    # the tie (row 1) keeps jpg_0 (red) as chosen, and its rewards in the same order
    assert [colour_of(im) for im in batch["chosen"]] == ["red", "red", "red", "blue"]
    assert batch["reward_chosen"][1].item() == 1.0 and batch["reward_rejected"][1].item() == 11.0


@pytest.mark.parametrize("bad", [2, 0.3, -1, None, "1", float("nan")])
def test_bad_label_names_source_row_field_and_value(bad):
    row = {"caption": "x", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": bad}
    with pytest.raises(DataError) as err:
        normalize_image_pair(row, 7, SRC)
    assert str(err.value).startswith(f"{SRC}: row 7: field 'label_0': expected a Pick-a-Pic label in {{0, 0.5, 1}}, got {bad!r}")


def test_bad_label_in_file_names_the_file(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", pickapic_rows(4, {2: {"label_0": 2.0}}))
    with pytest.raises(DataError, match=rf"^{path}: row 2: field 'label_0': .* got 2.0$"):
        make_dm(path)


@pytest.mark.parametrize("caption", [None, "", "   "])
def test_missing_caption_names_the_field(caption):
    row = {"caption": caption, "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": 1}
    with pytest.raises(DataError, match=rf"^{SRC}: row 5: field 'caption': expected a non-empty caption, got {caption!r}$"):
        normalize_image_pair(row, 5, SRC)


def test_missing_caption_column_names_the_field():
    with pytest.raises(DataError, match=r"row 0: field 'caption': expected a column named 'caption'"):
        normalize_image_pair({"jpg_0": png("red"), "jpg_1": png("blue"), "label_0": 1}, 0, SRC)


@pytest.mark.parametrize("value", [None, b"", "", 42])
def test_missing_image_names_the_field(value):
    row = {"caption": "x", "jpg_0": png("red"), "jpg_1": value, "label_0": 1}
    with pytest.raises(DataError, match=rf"^{SRC}: row 1: field 'jpg_1': expected encoded image bytes, a"):
        normalize_image_pair(row, 1, SRC)


def test_row_without_image_columns_lists_its_columns():
    with pytest.raises(DataError, match=r"row 0: field 'jpg_0': expected image columns 'jpg_0'/'jpg_1' .*\['caption', 'x'\]"):
        normalize_image_pair({"caption": "c", "x": 1}, 0, SRC)


def test_custom_field_names():
    fields = ImageFields(caption="prompt", image_0="img_a", image_1="img_b", label_0="ps_label_0")
    row = {"prompt": "p", "img_a": png("red"), "img_b": png("blue"), "ps_label_0": 0}
    out = normalize_image_pair(row, 0, SRC, fields)
    assert out["chosen"]["bytes"] == png("blue") and out["_chosen_column"] == "img_b"


# --- image encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytes", "dict", "pil"])
def test_image_value_kinds_give_the_same_image(kind):
    encode = {
        "bytes": lambda b: b,
        "dict": lambda b: {"bytes": b, "path": None},
        "pil": lambda b: Image.open(io.BytesIO(b)),
    }[kind]
    row = {"caption": "x", "jpg_0": encode(png("red")), "jpg_1": encode(png("blue")), "label_0": 0}
    out = normalize_image_pair(row, 0, SRC)
    assert isinstance(out["chosen"]["bytes"], bytes)
    dm = PreferenceDataModule(layout=ImagePairs())
    batch = dm.collate([dict(out, index=0)])
    assert colour_of(batch["chosen"][0]) == "blue" and colour_of(batch["rejected"][0]) == "red"


def test_image_feature_column_saved_to_disk(tmp_path):
    rows = pickapic_rows(4)
    ds = datasets.Dataset.from_list(rows).cast_column("jpg_0", datasets.Image()).cast_column("jpg_1", datasets.Image())
    assert isinstance(ds[0]["jpg_0"], Image.Image)  # the source decodes to PIL...
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "t.parquet"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for source in (str(tmp_path / "saved"), str(arrow), str(tmp_path / "t.parquet")):
        dm = make_dm(source)
        # ...but setup decodes nothing: the original PNG bytes are stored
        assert dm.train_set[0]["chosen"]["bytes"] == png("red"), source
        assert [colour_of(im) for im in first_batch(dm)["chosen"]] == ["red", "blue", "red", "blue"], source


def test_non_rgb_images_arrive_as_rgb():
    row = {"caption": "x", "jpg_0": png("white", mode="L"), "jpg_1": png("blue", mode="RGBA"), "label_0": 1}
    batch = PreferenceDataModule(layout=ImagePairs()).collate([dict(normalize_image_pair(row, 0, SRC), index=0)])
    assert colour_of(batch["chosen"][0]) == "white" and colour_of(batch["rejected"][0]) == "blue"



def grey16_png(value: int = 32768) -> bytes:
    """A real 16-bit greyscale PNG (PIL mode ``I;16``) of one value out of 65535."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I;16"
    return buffer.getvalue()


def test_a_16_bit_png_keeps_its_grey_through_the_image_layout(tmp_path):
    # Mid-grey (32768 of 65535) must come out mid-grey, and black and white stay black and white; clipping
    # the 16-bit values into 8 bits would make all three white.
    rows = [{"caption": "grey", "chosen": grey16_png(value), "rejected": png("red")} for value in (32768, 0, 65535)]
    batch = first_batch(make_dm(write_parquet(tmp_path / "t.parquet", rows), batch_size=3))
    assert [im.mode for im in batch["chosen"]] == ["RGB"] * 3
    assert [im.getpixel((1, 1)) for im in batch["chosen"]] == [(128, 128, 128), (0, 0, 0), (255, 255, 255)]
    pixels, _, _ = to_tensor(Image.open(io.BytesIO(grey16_png())), 4)
    assert pixels.abs().max().item() < 0.01  # mid-grey is 0 in [-1, 1]


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16B", [0, 32768, 65535], [0, 128, 255]),
    ("I", [0, 32768, 65535], [0, 128, 255]),
    ("F", [0.0, 0.5, 1.0], [0, 128, 255]),
])
def test_16_bit_and_float_modes_scale_by_their_range(mode, values, expected):
    from alignsuite.data.pixels import rgb

    if mode == "I;16B":
        image = Image.frombytes(mode, (3, 1), np.array(values, dtype=">u2").tobytes())  # big-endian 16-bit
    else:
        image = Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32), mode=mode)
    assert image.mode == mode
    out = rgb(image)
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(3)] == [(v, v, v) for v in expected]


@pytest.mark.parametrize("mode, value", [("I", 70000), ("F", 1.5), ("F", float("nan"))])
def test_values_beyond_the_range_of_their_mode_are_refused_not_clipped(mode, value):
    image = Image.fromarray(np.array([[0, value]], dtype=np.int32 if mode == "I" else np.float32), mode=mode)
    row = {"caption": "x", "chosen": image, "rejected": png("red")}
    with pytest.raises(DataError, match=rf"{SRC}: row 0: field 'chosen': .*mode {mode}"):
        PreferenceDataModule(layout=ImagePairs()).collate([dict(normalize_image_pair(row, 0, SRC), index=0)])


# --- image folders -----------------------------------------------------------------------------------


def image_folder(tmp_path, n=3):
    folder = tmp_path / "pairs"
    (folder / "img").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (4, 4), COLOURS["green"]).save(folder / "img" / f"win{i}.png")
        Image.new("RGB", (4, 4), COLOURS["red"]).save(folder / "img" / f"lose{i}.jpg")
    return folder


def test_image_folder_with_metadata_jsonl(tmp_path):
    folder = image_folder(tmp_path)
    rows = [{"caption": f"c{i}", "chosen": f"img/win{i}.png", "rejected": f"img/lose{i}.jpg"} for i in range(3)]
    write_jsonl(folder / "metadata.jsonl", rows)
    dm = make_dm(str(folder))
    assert dm.train_set[0]["chosen"] == {"bytes": None, "path": str((folder / "img" / "win0.png").resolve())}
    assert dm.train_set[0]["_source"] == str(folder / "metadata.jsonl")
    batch = first_batch(dm)
    assert batch["prompt"] == ["c0", "c1", "c2"]
    assert [colour_of(im) for im in batch["chosen"]] == ["green"] * 3
    assert all(max(abs(a - b) for a, b in zip(im.getpixel((1, 1)), COLOURS["red"])) < 8 for im in batch["rejected"])  # jpeg


def test_image_folder_with_metadata_csv_pickapic_columns(tmp_path):
    folder = image_folder(tmp_path)
    (folder / "metadata.csv").write_text(
        "caption,jpg_0,jpg_1,label_0\n"
        "c0,img/win0.png,img/lose0.jpg,1\n"
        "c1,img/lose1.jpg,img/win1.png,0\n"
        "c2,img/win2.png,img/lose2.jpg,0.5\n"
    )
    with pytest.warns(UserWarning, match="dropped 1 tied pairs"):
        dm = make_dm(str(folder))
    assert dm.train_set["prompt"] == ["c0", "c1"]
    assert [colour_of(im) for im in first_batch(dm)["chosen"]] == ["green", "green"]
    assert dm.train_set["_chosen_column"] == ["jpg_0", "jpg_1"]


def test_metadata_file_given_directly_resolves_paths_beside_it(tmp_path):
    folder = image_folder(tmp_path, n=1)
    path = write_jsonl(folder / "pairs.jsonl", [{"caption": "c", "chosen": "img/win0.png", "rejected": "img/lose0.jpg"}])
    assert colour_of(first_batch(make_dm(path))["chosen"][0]) == "green"


def test_missing_image_file_names_metadata_file_row_and_field(tmp_path):
    folder = image_folder(tmp_path)
    rows = [{"caption": f"c{i}", "chosen": f"img/win{i}.png", "rejected": f"img/lose{i}.jpg"} for i in range(3)]
    rows[1]["rejected"] = "img/gone.jpg"
    write_jsonl(folder / "metadata.jsonl", rows)
    with pytest.raises(DataError) as err:
        make_dm(str(folder))
    assert (err.value.source, err.value.row, err.value.field) == (str(folder / "metadata.jsonl"), 1, "rejected")
    assert "img/gone.jpg" in str(err.value) and "there is no file at" in str(err.value)


# --- unpaired (Diffusion-KTO) --------------------------------------------------------------------------


def test_unpaired_layout_native(tmp_path):
    rows = [{"caption": f"c{i}", "image": png("red" if i % 2 else "blue"), "label": 1 - i % 2} for i in range(4)]
    dm = make_dm(write_parquet(tmp_path / "k.parquet", rows), ImageUnpaired(), batch_size=2)
    assert dm.train_set["label"] == [True, False, True, False]
    assert dm.train_set["_completion_column"] == ["image"] * 4
    batch = first_batch(dm)
    assert set(batch) == {"prompt", "completion", "label", "index"}
    assert [colour_of(im) for im in batch["completion"]] == ["blue", "red", "blue", "red"]
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert normalize_image_unpaired(rows[0], 0, SRC) == {
        "prompt": "c0", "completion": {"bytes": png("blue"), "path": None}, "label": True,
        "_source": SRC, "_row": 0, "_completion_column": "image",
    }
    for label, expected in ((True, True), (False, False), (1.0, True), (0, False)):
        assert normalize_image_unpaired(dict(rows[0], label=label), 0, SRC)["label"] is expected


def test_unpaired_bad_label_is_named():
    with pytest.raises(DataError, match=r"row 2: field 'label': expected a boolean label .*got 0.5"):
        normalize_image_unpaired({"caption": "c", "image": png("red"), "label": 0.5}, 2, SRC)


def test_pairs_become_winner_and_loser_rows(tmp_path):
    dm = make_dm(write_parquet(tmp_path / "t.parquet", pickapic_rows(2)), ImageUnpaired(), batch_size=2)
    ds = dm.train_set
    assert ds["prompt"] == ["c0", "c0", "c1", "c1"]
    assert ds["label"] == [True, False, True, False]
    assert ds["_completion_column"] == ["jpg_0", "jpg_1", "jpg_1", "jpg_0"]
    assert ds["reward"] == [0.0, 10.0, 11.0, 1.0]
    batch = first_batch(dm)
    assert [colour_of(im) for im in batch["completion"]] == ["red", "blue", "blue", "red"]
    assert batch["reward"].dtype == torch.float32


def test_unpaired_data_with_pairs_layout_hints(tmp_path):
    path = write_parquet(tmp_path / "k.parquet", [{"caption": "c", "image": png("red"), "label": 1}])
    with pytest.raises(DataError, match=r"row 0: field 'jpg_0': expected pair data; this looks unpaired .*"
                                         r"use the layout alignsuite\.data\.ImageUnpaired"):
        make_dm(path)


# --- decoding at collate ------------------------------------------------------------------------------


def test_undecodable_image_passes_setup_and_fails_at_collate_naming_row_and_column(tmp_path):
    rows = pickapic_rows(4, {3: {"jpg_0": b"not an image at all"}})  # row 3: label_0 0, so jpg_0 is rejected
    path = write_parquet(tmp_path / "t.parquet", rows)
    dm = make_dm(path, batch_size=4)
    with pytest.raises(DataError) as err:
        next(iter(dm.train_dataloader()))
    assert (err.value.source, err.value.row, err.value.field) == (path, 3, "jpg_0")
    assert str(err.value).startswith(f"{path}: row 3: field 'jpg_0': expected an image that decodes, got 'UnidentifiedImageError")


def test_truncated_image_file_is_named_with_its_path(tmp_path):
    folder = image_folder(tmp_path, n=1)
    (folder / "img" / "win0.png").write_bytes(png("green")[:30])
    write_jsonl(folder / "metadata.jsonl", [{"caption": "c", "chosen": "img/win0.png", "rejected": "img/lose0.jpg"}])
    dm = make_dm(str(folder))
    with pytest.raises(DataError, match=r"row 0: field 'chosen': expected an image that decodes \(.*win0.png\)"):
        first_batch(dm)


def test_skip_bad_images_shrinks_the_batch_and_counts(tmp_path):
    rows = pickapic_rows(6, {1: {"jpg_1": b"garbage"}, 4: {"jpg_0": b"\x89PNG broken"}})
    path = write_parquet(tmp_path / "t.parquet", rows)
    dm = make_dm(path, ImagePairs(skip_bad_images=True), batch_size=6)
    with pytest.warns(UserWarning, match=rf"skipping rows whose image does not decode.*{path}: row 1: field 'jpg_1'"):
        batch = first_batch(dm)
    assert batch["index"].tolist() == [0, 2, 3, 5]
    assert batch["prompt"] == ["c0", "c2", "c3", "c5"]
    assert len(batch["chosen"]) == len(batch["rejected"]) == 4 and batch["reward_chosen"].shape == (4,)
    assert dm.bad_images == {path: 2}
    first_batch(dm)  # counted again, warned only once
    assert dm.bad_images == {path: 4}


def test_all_bad_rows_give_an_empty_batch(tmp_path):
    rows = pickapic_rows(2, {0: {"jpg_0": b"x"}, 1: {"jpg_1": b"y"}})
    dm = make_dm(write_parquet(tmp_path / "t.parquet", rows), ImagePairs(skip_bad_images=True))
    with pytest.warns(UserWarning):
        batch = first_batch(dm)
    assert batch["prompt"] == [] and batch["chosen"] == [] and batch["index"].shape == (0,)
    assert batch["reward_chosen"].dtype == torch.float32 and batch["reward_chosen"].shape == (0,)


def test_workers_decode_images(tmp_path):
    dm = make_dm(write_parquet(tmp_path / "t.parquet", pickapic_rows(8)), batch_size=4, num_workers=2)
    seen = []
    for batch in dm.train_dataloader():
        seen += batch["index"].tolist()
        assert all(isinstance(im, Image.Image) for im in batch["chosen"])
    assert sorted(seen) == list(range(8))


# --- rewards ------------------------------------------------------------------------------------------


def test_rewards_follow_the_swap_into_float_tensors(tmp_path):
    dm = make_dm(write_parquet(tmp_path / "t.parquet", pickapic_rows(4)), batch_size=4)
    batch = first_batch(dm)
    # label_0 = 1, 0, 1, 0: rows 1 and 3 swap
    assert batch["reward_chosen"].dtype == torch.float32 and batch["reward_rejected"].dtype == torch.float32
    assert batch["reward_chosen"].tolist() == [0.0, 11.0, 2.0, 13.0]
    assert batch["reward_rejected"].tolist() == [10.0, 1.0, 12.0, 3.0]


def test_custom_reward_columns_and_bad_reward(tmp_path):
    rows = [{"caption": "c", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": 0, "ps_0": 0.2, "ps_1": 0.3}]
    dm = make_dm(write_parquet(tmp_path / "t.parquet", rows), ImagePairs(reward_0_field="ps_0", reward_1_field="ps_1"))
    assert dm.train_set["reward_chosen"] == [0.3] and dm.train_set["reward_rejected"] == [0.2]
    rows[0]["ps_1"] = None
    with pytest.raises(DataError, match=r"row 0: field 'ps_1': expected a finite number, got None"):
        make_dm(write_parquet(tmp_path / "u.parquet", rows), ImagePairs(reward_0_field="ps_0", reward_1_field="ps_1"))


def test_no_reward_columns_no_reward_keys(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("reward")} for r in pickapic_rows(2)]
    dm = make_dm(write_parquet(tmp_path / "t.parquet", rows))
    assert set(first_batch(dm)) == {"prompt", "chosen", "rejected", "index"}


def test_sources_must_agree_on_reward_columns(tmp_path):
    with_rewards = write_parquet(tmp_path / "a.parquet", pickapic_rows(2))
    without = write_parquet(tmp_path / "b.parquet", [{k: v for k, v in r.items() if not k.startswith("reward")} for r in pickapic_rows(2)])
    with pytest.raises(DataError, match=rf"{without}: row 0: field 'reward_0': expected the same columns"):
        make_dm([with_rewards, without])


# --- the data module -----------------------------------------------------------------------------------


def test_text_layout_on_image_data_hints(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", pickapic_rows(2))
    with pytest.raises(DataError, match=r"row 0: field 'chosen': expected TextPairs rows; this looks like Pick-a-Pic"
                                         r" image data: use the layout alignsuite\.data\.ImagePairs"):
        PreferenceDataModule(train=path).setup("fit")


@pytest.mark.parametrize("old", ["image", "unpaired", "pairs"])
def test_the_old_layout_and_modality_strings_name_the_layout_classes(old):
    with pytest.raises(TypeError, match=rf"data.layout must be a layout object such as alignsuite.data.TextPairs\(\).*got '{old}'"):
        PreferenceDataModule(layout=old)


def test_val_fraction_caps_predict_and_hidden_score_columns(tmp_path):
    dm = make_dm(write_parquet(tmp_path / "t.parquet", pickapic_rows(10)), val_fraction=0.2, max_train_rows=5, batch_size=8)
    assert len(dm.train_set) == 5 and len(dm.val_set) == 2
    assert dm.val_set["index"] == [0, 1]
    batch = next(iter(dm.val_dataloader()))
    assert [colour_of(im) for im in batch["chosen"]] == [
        "red" if int(c[1:]) % 2 == 0 else "blue" for c in batch["prompt"]
    ]
    assert set(next(iter(dm.predict_dataloader()))) == {"prompt", "index"}
    dm.add_columns("train", {"ref_chosen": [float(i) for i in range(5)]})
    assert first_batch(dm)["ref_chosen"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="not a score column"):
        dm.add_columns("train", {"_row": [0.0] * 5})


def test_subclass_rows_with_pil_images():
    class Generated(PreferenceDataModule):
        def load_rows(self, split):
            return [{"caption": "c", "jpg_0": Image.new("RGB", (2, 2), COLOURS["red"]), "jpg_1": png("blue"), "label_0": 0}]

    dm = Generated(layout=ImagePairs())
    dm.setup("fit")
    assert dm.train_set[0]["_source"] == "Generated.load_rows('train')"
    assert colour_of(first_batch(dm)["chosen"][0]) == "blue"


# --- to_tensor -------------------------------------------------------------------------------------------


def gradient_image(width, height):
    """Pixel (x, y) = (10 x, 10 y, 7) so every crop has known values."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = (10 * np.arange(width))[None, :]
    array[..., 1] = (10 * np.arange(height))[:, None]
    array[..., 2] = 7
    return Image.fromarray(array)


def scaled(array):
    return (torch.from_numpy(np.asarray(array, dtype=np.float32)).permute(2, 0, 1) / 255.0 - 0.5) / 0.5


def test_to_tensor_centre_crop_gives_known_pixels():
    image = gradient_image(6, 4)  # shorter side already 4: no resize
    tensor, crop, size = to_tensor(image, 4)
    assert crop == (0, 1) and size == (4, 6)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, scaled(np.asarray(image)[:, 1:5]))
    assert tensor[0, 0, 0].item() == pytest.approx(10 / 127.5 - 1)  # pixel x = 1 of the source


def test_to_tensor_resizes_shorter_side_then_crops():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8))  # h 16, w 8
    tensor, crop, size = to_tensor(image, 4)
    assert tensor.shape == (3, 4, 4) and size == (16, 8) and crop == (2, 0)  # resized to 4 x 8, centred
    assert tensor.min() >= -1 and tensor.max() <= 1
    resized = image.resize((4, 8), Image.BILINEAR)
    assert torch.allclose(tensor, scaled(np.asarray(resized)[2:6]))
    wide, crop, size = to_tensor(Image.fromarray(rng.integers(0, 256, (5, 11, 3), dtype=np.uint8)).convert("L"), 3)
    assert wide.shape == (3, 3, 3) and size == (5, 11) and crop == (0, 2)  # 3 x int(3 * 11 / 5) = 3 x 6


def test_to_tensor_random_crop_is_seeded():
    image = gradient_image(10, 4)
    outs = [to_tensor(image, 4, random_crop=True, generator=torch.Generator().manual_seed(s)) for s in range(12)]
    again = to_tensor(image, 4, random_crop=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(outs[3][0], again[0]) and outs[3][1] == again[1]
    lefts = {crop[1] for _, crop, _ in outs}
    assert len(lefts) > 1 and lefts <= set(range(7))
    for tensor, (top, left), _ in outs:
        assert top == 0 and torch.allclose(tensor, scaled(np.asarray(image)[:, left:left + 4]))


def test_to_tensor_flip_is_deterministic_under_a_seeded_generator():
    image = gradient_image(4, 4)
    plain, _, _ = to_tensor(image, 4)
    flipped_seeds = []
    for seed in range(10):
        out, crop, _ = to_tensor(image, 4, random_flip=True, generator=torch.Generator().manual_seed(seed))
        flip = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item() < 0.5
        assert torch.equal(out, plain.flip(-1) if flip else plain) and crop == (0, 0)
        assert torch.equal(out, to_tensor(image, 4, random_flip=True, generator=torch.Generator().manual_seed(seed))[0])
        flipped_seeds.append(flip)
    assert any(flipped_seeds) and not all(flipped_seeds)


def test_to_tensor_rejects_non_images():
    with pytest.raises(TypeError, match="expected a PIL image"):
        to_tensor(torch.zeros(3, 4, 4), 4)


# --- layouts seen from the data module ----------------------------------------------------------------


def test_all_ties_say_so_instead_of_no_train_data(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", pickapic_rows(3, {i: {"label_0": 0.5} for i in range(3)}))
    with pytest.warns(UserWarning, match="dropped 3 tied pairs"), pytest.raises(DataError) as err:
        make_dm(path)
    assert str(err.value) == (
        f"{path}: all 3 rows were skipped because they are tied pairs (label_0 == 0.5; set drop_ties: false in"
        " data.layout to keep them); no train rows are left"
    )


def test_row_kind_and_columns_of_the_image_layouts(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", pickapic_rows(4))
    pairs, unpaired = make_dm(path), make_dm(path, ImageUnpaired(), batch_size=2)
    assert pairs.row_kind == "pairs" and unpaired.row_kind == "unpaired"
    assert pairs.columns() == {"prompt", "chosen", "rejected", "reward_chosen", "reward_rejected", "index"}
    assert unpaired.columns() == {"prompt", "completion", "label", "reward", "index"}
    assert repr(unpaired.layout) == "ImageUnpaired()" and repr(ImagePairs(drop_ties=False)) == "ImagePairs(drop_ties=False)"


def test_unpaired_layout_mixes_pair_and_unpaired_sources(tmp_path):
    pairs = write_parquet(tmp_path / "p.parquet", [{k: v for k, v in r.items() if not k.startswith("reward")} for r in pickapic_rows(2)])
    single = write_parquet(tmp_path / "k.parquet", [{"caption": "k", "image": png("green"), "label": 0}])
    dm = make_dm([pairs, single], ImageUnpaired(), batch_size=2)
    assert dm.train_set["prompt"] == ["c0", "c0", "c1", "c1", "k"]
    assert dm.train_set["label"] == [True, False, True, False, False]
    assert [colour_of(im) for im in first_batch(dm)["completion"]] == ["red", "blue", "blue", "red", "green"]


@pytest.mark.parametrize("unpaired, layout", [(False, ImagePairs), (True, ImageUnpaired)])
def test_toy_world_picks_the_layout_of_its_modality(unpaired, layout):
    from alignsuite.toy.data import ToyPreferenceData

    dm = ToyPreferenceData(world="diffusion", num_train=4, num_val=2, batch_size=2, unpaired=unpaired)
    dm.setup("fit")
    assert type(dm.layout) is layout
    assert dm.skipped == {}  # the toy world draws no ties
    assert len(dm.train_set) == (8 if unpaired else 4)
    assert isinstance(first_batch(dm)["completion" if unpaired else "chosen"][0], Image.Image)
