"""Data layer: layouts normalise to exact canonical rows, every file format loads the same rows, bad
rows name their file, row and field, and batches carry what the backbones and references expect."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from alignsuite.data import (
    DataError,
    PairFields,
    PreferenceDataModule,
    TextPairs,
    TextUnpaired,
    load_table,
    normalize_pair,
    normalize_unpaired,
    pairs_to_unpaired,
)

SRC = "data/train.jsonl"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- normalize_pair: one test per layout, with the canonical row written out ----------------------


def test_text_layout():
    row = {"prompt": "2+2?", "chosen": " 4", "rejected": " 5", "id": 3}
    assert normalize_pair(row, 0, SRC, PairFields()) == {"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}


def test_text_layout_allows_empty_or_missing_value_prompt():
    assert normalize_pair({"prompt": "", "chosen": "a", "rejected": "b"}, 0, SRC, PairFields()) == {
        "prompt": "",
        "chosen": "a",
        "rejected": "b",
    }
    # csv and parquet give None for an empty cell
    assert normalize_pair({"prompt": None, "chosen": "a", "rejected": "b"}, 0, SRC, PairFields())["prompt"] == ""


def test_custom_field_names():
    row = {"question": "q", "good": "yes", "bad": "no"}
    fields = PairFields(prompt="question", chosen="good", rejected="bad")
    assert normalize_pair(row, 0, SRC, fields) == {"prompt": "q", "chosen": "yes", "rejected": "no"}


def test_ultrafeedback_binarized_layout():
    row = {
        "prompt": "Name a colour.",
        "chosen": [user("Name a colour."), assistant("Blue.")],
        "rejected": [user("Name a colour."), assistant("Seven.")],
        "score_chosen": 9.0,
    }
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": [user("Name a colour.")],
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Seven.")],
    }


def test_ultrafeedback_multi_turn_keeps_shared_turns_in_prompt():
    system = {"role": "system", "content": "Be brief."}
    shared = [system, user("hi"), assistant("hello"), user("colour?")]
    row = {"prompt": "hi", "chosen": shared + [assistant("Blue.")], "rejected": shared + [assistant("Loud.")]}
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": shared,
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Loud.")],
    }


def test_trl_conversational_layout():
    row = {
        "prompt": [user("What is 2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }
    assert normalize_pair(row, 0, SRC, PairFields()) == row


def test_message_prompt_with_string_answers():
    row = {"prompt": [user("What is 2+2?")], "chosen": "4", "rejected": "5"}
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": [user("What is 2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }


def test_message_prompt_with_full_conversation_answers_drops_repeated_prompt():
    row = {
        "prompt": [user("q")],
        "chosen": [user("q"), assistant("good")],
        "rejected": [user("q"), assistant("bad")],
    }
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": [user("q")],
        "chosen": [assistant("good")],
        "rejected": [assistant("bad")],
    }


def test_text_prompt_with_assistant_messages_becomes_user_turn():
    row = {"prompt": "q", "chosen": [assistant("good")], "rejected": [assistant("bad")]}
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": [user("q")],
        "chosen": [assistant("good")],
        "rejected": [assistant("bad")],
    }


def test_extra_message_keys_are_dropped():
    row = {
        "prompt": [{"role": "user", "content": "q", "name": None}],
        "chosen": [{"role": "assistant", "content": "a", "tool_calls": None}],
        "rejected": [assistant("b")],
    }
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": [user("q")],
        "chosen": [assistant("a")],
        "rejected": [assistant("b")],
    }


def test_hh_rlhf_layout():
    convo = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant:"
    row = {"chosen": convo + " Why did the chicken cross the road?", "rejected": convo + " Why should I?"}
    assert normalize_pair(row, 0, SRC, PairFields()) == {
        "prompt": convo,
        "chosen": " Why did the chicken cross the road?",
        "rejected": " Why should I?",
    }


def test_answers_that_merely_start_alike_share_no_prompt():
    # RLAIF-V without its image: the old common-prefix rule made 'It is' the prompt and dropped the question.
    row = {"question": "What colour is the car?", "chosen": "It is red.", "rejected": "It is blue."}
    with pytest.raises(DataError) as err:
        normalize_pair(row, 3, SRC, PairFields())
    assert str(err.value).startswith(
        "data/train.jsonl: row 3: field 'prompt': expected a column named 'prompt'; the row has columns"
        " ['chosen', 'question', 'rejected']; without a prompt column, chosen/rejected must be HH-RLHF transcripts"
    )
    assert "set prompt_field" in str(err.value)
    assert normalize_pair(row, 3, SRC, PairFields(prompt="question"))["prompt"] == "What colour is the car?"


def test_hh_transcripts_that_diverge_before_any_assistant_turn_are_an_error():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Yo\n\nAssistant: Hey"}
    with pytest.raises(DataError, match=r"row 0: field 'chosen': expected HH-RLHF transcripts that share the conversation"):
        normalize_pair(row, 0, SRC, PairFields())


def test_chosen_equal_rejected_gives_none():
    assert normalize_pair({"prompt": "p", "chosen": "same", "rejected": "same"}, 0, SRC, PairFields()) is None
    convo = [user("q"), assistant("a")]
    assert normalize_pair({"prompt": "q", "chosen": convo, "rejected": list(convo)}, 0, SRC, PairFields()) is None


# --- normalize_pair: errors ------------------------------------------------------------------------


def test_missing_field_names_source_row_field_and_columns():
    with pytest.raises(DataError) as err:
        normalize_pair({"prompt": "p", "answer": "a", "rejected": "r"}, 17, SRC, PairFields())
    msg = str(err.value)
    assert msg.startswith("data/train.jsonl: row 17: field 'chosen': expected a column named 'chosen'")
    assert "['answer', 'prompt', 'rejected']" in msg


@pytest.mark.parametrize("bad", ["", "   \n", None, []])
def test_empty_chosen_is_an_error(bad):
    with pytest.raises(DataError, match=r"row 4: field 'chosen': expected non-empty text or a list of chat messages"):
        normalize_pair({"prompt": "p", "chosen": bad, "rejected": "r"}, 4, SRC, PairFields())


def test_exact_error_message_for_empty_chosen():
    with pytest.raises(DataError) as err:
        normalize_pair({"prompt": "p", "chosen": "", "rejected": "r"}, 17, SRC, PairFields())
    assert str(err.value) == (
        "data/train.jsonl: row 17: field 'chosen': expected non-empty text or a list of chat messages, got ''"
    )
    assert (err.value.source, err.value.row, err.value.field) == (SRC, 17, "chosen")


def test_empty_completion_part_of_conversation_is_an_error():
    row = {"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a"), user("more")]}
    with pytest.raises(DataError, match=r"row 2: field 'chosen': expected a non-empty answer"):
        normalize_pair(row, 2, SRC, PairFields())


def test_blank_assistant_message_is_an_error():
    row = {"prompt": [user("q")], "chosen": [assistant("  ")], "rejected": [assistant("b")]}
    with pytest.raises(DataError, match=r"row 0: field 'chosen'"):
        normalize_pair(row, 0, SRC, PairFields())


@pytest.mark.parametrize("message", ["just text", {"role": "user"}, {"role": 1, "content": "x"}, {"content": "x"}])
def test_malformed_message_is_an_error(message):
    row = {"prompt": [message], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    with pytest.raises(DataError, match=r"row 5: field 'prompt': expected chat messages that are dicts"):
        normalize_pair(row, 5, SRC, PairFields())


def test_prompt_of_wrong_type_is_an_error():
    with pytest.raises(DataError, match=r"row 1: field 'prompt': expected text or a list of chat messages, got 42"):
        normalize_pair({"prompt": 42, "chosen": "a", "rejected": "b"}, 1, SRC, PairFields())


def test_hh_rlhf_empty_answer_is_an_error():
    convo = "\n\nHuman: Hi\n\nAssistant:"
    with pytest.raises(DataError, match=r"row 3: field 'rejected'"):
        normalize_pair({"chosen": convo + " Hello", "rejected": convo + " "}, 3, SRC, PairFields())


# --- unpaired --------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, expected", [(True, True), (False, False), (1, True), (0, False), (1.0, True), (0.0, False)])
def test_unpaired_text_labels(label, expected):
    row = {"prompt": "p", "completion": "c", "label": label}
    assert normalize_unpaired(row, 0, SRC) == {"prompt": "p", "completion": "c", "label": expected}


def test_unpaired_chat():
    row = {"prompt": [user("q")], "completion": "a", "label": 1}
    assert normalize_unpaired(row, 0, SRC) == {"prompt": [user("q")], "completion": [assistant("a")], "label": True}
    row = {"prompt": "", "completion": [user("q"), assistant("a")], "label": False}
    assert normalize_unpaired(row, 0, SRC) == {"prompt": [user("q")], "completion": [assistant("a")], "label": False}


@pytest.mark.parametrize("label", ["yes", 2, 0.5, None])
def test_bad_kto_label_names_value(label):
    with pytest.raises(DataError) as err:
        normalize_unpaired({"prompt": "p", "completion": "c", "label": label}, 9, SRC)
    assert f"row 9: field 'label': expected a boolean label (true/false or 0/1), got {label!r}" in str(err.value)


def test_pairs_to_unpaired():
    pairs = [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    assert pairs_to_unpaired(pairs) == [
        {"prompt": "p", "completion": "c", "label": True},
        {"prompt": "p", "completion": "r", "label": False},
    ]


# --- loading ---------------------------------------------------------------------------------------

ROWS = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_formats_load_the_same_rows(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    jsonl = write_jsonl(tmp_path / "t.jsonl", ROWS)
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ds.to_csv(str(tmp_path / "t.csv"), index=False)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    arrow_file = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "train.jsonl", ROWS)

    sources = [jsonl, str(tmp_path / "t.parquet"), str(tmp_path / "t.csv"), str(tmp_path / "saved"),
               str(tmp_path / "saved_dict"), str(arrow_file), str(tmp_path / "dir"), str(tmp_path / "t.p*")]
    for source in sources:
        assert load_table(source).to_list() == ROWS, source
    assert load_table(str(tmp_path / "saved_dict"), split="test").to_list() == ROWS[:1]


def test_glob_of_files_concatenates(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    assert load_table(str(tmp_path / "*.jsonl")).to_list() == ROWS


def test_chat_columns_survive_jsonl_and_parquet(tmp_path):
    rows = [{"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    assert load_table(write_jsonl(tmp_path / "c.jsonl", rows)).to_list() == rows
    assert load_table(str(tmp_path / "c.parquet")).to_list() == rows


@pytest.mark.parametrize("source", ["./nope/train.jsonl", "/no/such/dir", "missing.parquet", "data/*.jsonl"])
def test_missing_local_path_raises_file_not_found(source):
    with pytest.raises(FileNotFoundError, match=source.replace("*", r"\*").replace(".", r"\.")):
        load_table(source)


def test_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or "table")
    assert load_table("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs") == "table"
    assert calls == [(("HuggingFaceH4/ultrafeedback_binarized",), {"split": "train_prefs"})]


def test_missing_split_of_saved_dict_names_splits(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"no split 'test'; it has splits \['train'\]"):
        load_table(str(tmp_path / "d"), split="test")


# --- the data module -------------------------------------------------------------------------------


def make_dm(train, **kwargs):
    dm = PreferenceDataModule(train=train, **kwargs)
    dm.setup("fit")
    return dm


def test_missing_column_error_names_file_row_field(tmp_path):
    rows = [{"prompt": r["prompt"], "answer": r["chosen"], "rejected": r["rejected"]} for r in ROWS]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        make_dm(path)
    assert str(err.value) == (
        f"{path}: row 0: field 'chosen': expected a column named 'chosen'; "
        "the row has columns ['answer', 'prompt', 'rejected']"
    )


def test_key_missing_in_one_row_of_a_file_names_that_row(tmp_path):
    # datasets gives every row every column, so a key absent from one row arrives as None.
    rows = [dict(r) for r in ROWS]
    del rows[3]["chosen"]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}: row 3: field 'chosen': expected non-empty text .*, got None$"):
        make_dm(path)


def test_empty_chosen_in_file_names_file_row_field(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["chosen"] = ""
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        make_dm(path)
    assert str(err.value) == f"{path}: row 4: field 'chosen': expected non-empty text or a list of chat messages, got ''"


def test_csv_missing_value_in_chosen_names_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,chosen,rejected\np0,a,b\np1,,b\n")
    with pytest.raises(DataError, match=rf"{path}: row 1: field 'chosen'.*got None"):
        make_dm(str(path))


def test_chosen_equal_rejected_rows_are_skipped_counted_and_warned(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["rejected"] = rows[1]["chosen"]
    rows[4]["rejected"] = rows[4]["chosen"]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.warns(UserWarning, match=rf"{path}: skipped 2 rows where chosen equals rejected \(rows 1, 4\)"):
        dm = make_dm(path)
    assert dm.skipped == {path: 2}
    assert len(dm.train_set) == 4
    assert dm.train_set["prompt"] == ["p0", "p2", "p3", "p5"]


def test_mixed_text_and_chat_rows_name_the_row():
    class Mixed(PreferenceDataModule):
        def load_rows(self, split):
            if split == "val":
                return None
            return [ROWS[0], {"prompt": [user("q")], "chosen": "a", "rejected": "b"}]

    with pytest.raises(DataError, match=r"Mixed.load_rows\('train'\): row 1: field 'prompt': expected plain text"):
        Mixed().setup("fit")


def test_subclass_rows_are_normalised_and_chat_survives_arrow():
    convo = [user("q"), assistant("a")]

    class Generated(PreferenceDataModule):
        def load_rows(self, split):
            return [{"prompt": "q", "chosen": convo, "rejected": [user("q"), assistant(f"b{i}")]} for i in range(3)]

    dm = Generated(batch_size=2)
    dm.setup("fit")
    assert dm.train_set[0] == {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b0")], "index": 0}
    assert len(dm.val_set) == 3
    batch = next(iter(dm.val_dataloader()))
    assert batch["chosen"] == [[assistant("a")], [assistant("a")]]
    assert batch["prompt"] == [[user("q")], [user("q")]]


def test_setup_is_idempotent(tmp_path):
    dm = make_dm(write_jsonl(tmp_path / "t.jsonl", ROWS))
    first = dm.train_set
    dm.setup("validate")
    assert dm.train_set is first


def test_val_fraction_is_seeded_and_disjoint(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(50)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    a, b, c = (make_dm(path, val_fraction=0.2, seed=s) for s in (7, 7, 8))
    assert len(a.val_set) == 10 and len(a.train_set) == 40
    assert a.val_set["prompt"] == b.val_set["prompt"]
    assert a.train_set["prompt"] == b.train_set["prompt"]
    assert a.val_set["prompt"] != c.val_set["prompt"]
    assert set(a.val_set["prompt"]).isdisjoint(a.train_set["prompt"])
    assert set(a.val_set["prompt"]) | set(a.train_set["prompt"]) == {r["prompt"] for r in rows}
    # index is the position in each split's own dataset
    assert a.train_set["index"] == list(range(40)) and a.val_set["index"] == list(range(10))


def test_val_source_and_row_caps(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    val = write_jsonl(tmp_path / "val.jsonl", ROWS[:3])
    dm = make_dm(train, val=val, max_train_rows=4, max_val_rows=2)
    assert dm.train_set["prompt"] == ["p0", "p1", "p2", "p3"]
    assert dm.val_set["prompt"] == ["p0", "p1"]


def test_collate_lists_for_text_tensors_for_numbers(tmp_path):
    dm = make_dm(write_jsonl(tmp_path / "t.jsonl", ROWS), val=write_jsonl(tmp_path / "v.jsonl", ROWS), batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    assert batch["prompt"] == ["p0", "p1", "p2", "p3"]
    assert batch["chosen"] == ["good 0", "good 1", "good 2", "good 3"]
    assert batch["rejected"] == ["bad 0", "bad 1", "bad 2", "bad 3"]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2, 3]
    assert set(batch) == {"prompt", "chosen", "rejected", "index"}
    # val does not drop the last partial batch
    assert [len(b["prompt"]) for b in dm.val_dataloader()] == [4, 2]
    assert [len(b["prompt"]) for b in dm.test_dataloader()] == [4, 2]
    predict = next(iter(dm.predict_dataloader()))
    assert set(predict) == {"prompt", "index"}


def test_train_shuffle_is_seeded(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    order = [torch.cat([b["index"] for b in make_dm(path, seed=s, batch_size=8).train_dataloader()]).tolist() for s in (1, 1, 2)]
    assert order[0] == order[1] != order[2]
    assert sorted(order[0]) == list(range(40)) and order[0] != list(range(40))


def test_add_columns_reach_the_batch_by_index(tmp_path):
    dm = make_dm(write_jsonl(tmp_path / "t.jsonl", ROWS), batch_size=4)
    n = len(dm.train_set)
    dm.add_columns("train", {"ref_chosen": [-10.0 * i for i in range(n)], "ref_rejected": [float(i) for i in range(n)]})
    dm.add_columns("train", {"ref_chosen": [-100.0 * i for i in range(n)]})  # overwrite
    for batch in dm.train_dataloader():
        assert batch["ref_chosen"].dtype == torch.float32
        assert torch.equal(batch["ref_chosen"], -100.0 * batch["index"].float())
        assert torch.equal(batch["ref_rejected"], batch["index"].float())
    with pytest.raises(ValueError, match=r"'ref_chosen' has 2 values, the train set has 6 rows"):
        dm.add_columns("train", {"ref_chosen": [1.0, 2.0]})
    with pytest.raises(ValueError, match="not a score column"):
        dm.add_columns("train", {"chosen": [0.0] * n})


def test_unpaired_layout_from_pairs_doubles_rows(tmp_path):
    dm = make_dm(write_jsonl(tmp_path / "t.jsonl", ROWS), layout=TextUnpaired(), val_fraction=0.0, batch_size=4)
    assert len(dm.train_set) == 2 * len(ROWS)
    assert dm.train_set[0] == {"prompt": "p0", "completion": "good 0", "label": True, "index": 0}
    assert dm.train_set[1] == {"prompt": "p0", "completion": "bad 0", "label": False, "index": 1}
    assert dm.train_set["label"] == [True, False] * len(ROWS)
    batches = list(dm.train_dataloader())
    assert all(len(b["completion"]) == 4 for b in batches)  # trailing partial batch dropped for KTO
    for b in batches:
        assert b["label"].dtype == torch.float32
        assert b["label"].tolist() == [1.0 if c.startswith("good") else 0.0 for c in b["completion"]]


def test_unpaired_layout_native(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": 1}, {"prompt": "q", "completion": "d", "label": 0}]
    dm = make_dm(write_jsonl(tmp_path / "k.jsonl", rows), layout=TextUnpaired(), batch_size=2)
    assert dm.train_set.to_list() == [
        {"prompt": "p", "completion": "c", "label": True, "index": 0},
        {"prompt": "q", "completion": "d", "label": False, "index": 1},
    ]


def test_bad_kto_label_in_file(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": "maybe"}]
    path = write_jsonl(tmp_path / "k.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}: row 0: field 'label'.*got 'maybe'"):
        make_dm(path, layout=TextUnpaired(), batch_size=2)


def test_unpaired_with_batch_size_one_errors():
    with pytest.raises(ValueError, match=r"data\.batch_size must be at least 2 for an unpaired layout \(TextUnpaired: KTO\), got 1"):
        PreferenceDataModule(layout=TextUnpaired(), batch_size=1)


def test_unpaired_data_with_pairs_layout_hints(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "completion": "c", "label": 1}])
    with pytest.raises(DataError, match=r"row 0: field 'chosen': expected pair data; this looks unpaired .*"
                                         r"use the layout alignsuite\.data\.TextUnpaired"):
        make_dm(path)


def test_no_train_data_errors_clearly():
    dm = PreferenceDataModule()
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="no train data: set data.train"):
        dm.train_dataloader()
    assert dm.val_dataloader() == []


def test_trainer_fit_reads_batches(tmp_path):
    """The module plugs into a real Trainer: every train and val row arrives once per epoch."""
    import lightning as L

    seen = {"train": [], "val": []}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, _):
            seen["train"] += batch["index"].tolist()
            return self.w * 0 + batch["index"].float().mean() * self.w

        def validation_step(self, batch, _):
            seen["val"] += batch["index"].tolist()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(20)]
    dm = PreferenceDataModule(train=write_jsonl(tmp_path / "t.jsonl", rows), val_fraction=0.25, batch_size=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(Probe(), datamodule=dm)
    assert sorted(seen["train"]) == list(range(15))
    assert sorted(seen["val"]) == list(range(5))
