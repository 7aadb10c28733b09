"""Data layer: layouts normalise to exact canonical rows, every file format loads the same rows, bad
rows name their file, row and field, and batches carry what the backbones and references expect."""

from __future__ import annotations

import json
import random

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
    origin = {"_source": "Generated.load_rows('train')", "_row": 0}  # where it came from, for errors
    assert dm.train_set[0] == {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b0")],
                               **origin, "index": 0}
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


def test_sampler_shards_one_seeded_permutation_per_epoch():
    from alignsuite.data import EpochRandomSampler

    rows = list(range(10))
    whole = list(EpochRandomSampler(rows, seed=3))
    shards = [EpochRandomSampler(rows, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    assert [list(s) for s in shards] == [whole[0::2], whole[1::2]]  # each rank its half of the same order
    assert list(EpochRandomSampler(rows, seed=4)) != whole  # data.seed is honoured on every rank
    for s in shards:
        s.set_epoch(1)
    assert sorted(list(shards[0]) + list(shards[1])) == rows and list(shards[0]) != whole[0::2]
    odd = [list(EpochRandomSampler(list(range(5)), seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 3 and set(odd[0] + odd[1]) == set(range(5))  # padded to equal shards


def test_length_grouped_steps_hold_rows_of_similar_length_on_every_rank():
    from alignsuite.data import EpochRandomSampler

    rng = random.Random(0)
    lengths = [rng.randint(1, 1000) for _ in range(96)]
    rows = list(range(96))

    def steps(seed, epoch, replicas=1, group=4):
        shards = [EpochRandomSampler(rows, seed, replicas, r, lengths, batch_size=4, group_batches=group) for r in range(replicas)]
        for s in shards:
            s.set_epoch(epoch)
        orders = [list(s) for s in shards]
        return [sum((o[i : i + 4] for o in orders), []) for i in range(0, len(orders[0]), 4)]  # one list per step

    grouped, plain = steps(0, 0), steps(0, 0, group=0)
    assert sorted(sum(grouped, [])) == rows  # every row once
    assert plain == [list(EpochRandomSampler(rows, 0))[i : i + 4] for i in range(0, 96, 4)]  # 0: the plain shuffle

    def spread(step_rows):  # mean over steps of (longest - shortest) in a step
        return sum(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in step_rows) / len(step_rows)

    assert spread(grouped) < spread(plain) / 3
    assert steps(0, 0) == grouped and steps(0, 1) != grouped and steps(1, 0) != grouped  # (seed, epoch) alone
    # Each window of 4 steps holds the same rows as the plain shuffle's window, its steps in shuffled order.
    plain_order, longest_first = sum(plain, []), 0
    for w in range(0, 24, 4):
        window = sum(grouped[w : w + 4], [])
        assert sorted(window) == sorted(plain_order[w * 4 : (w + 4) * 4])
        longest_first += sorted(window, key=lambda i: -lengths[i]) == window
    assert longest_first < 6  # the steps are shuffled, not always longest first
    # Two processes: every global step is one length-sorted slice, shared between the ranks.
    two = steps(0, 0, replicas=2)
    assert sorted(sum(two, [])) == rows and spread(two) < spread(steps(0, 0, replicas=2, group=0)) / 3


def test_group_by_length_reaches_the_train_loader(tmp_path):
    rows = [{"prompt": "p" * (i % 7), "chosen": "c" * (3 * i + 1), "rejected": "r"} for i in range(40)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    loader = make_dm(path, batch_size=4, group_by_length=5).train_dataloader()
    assert loader.sampler.lengths == [i % 7 + 3 * i + 1 for i in range(40)]  # prompt + the longer answer
    batches = [b["index"].tolist() for b in loader]
    assert sorted(sum(batches, [])) == list(range(40))
    assert all(max(b) - min(b) < 20 for b in batches)  # here a row's length grows with its index
    with pytest.raises(ValueError, match="data.group_by_length must be 0"):
        make_dm(path, group_by_length=-1)


def test_row_lengths_read_text_and_chat_columns_only():
    from alignsuite.data.datamodule import row_lengths

    chat = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                        "chosen": [{"role": "assistant", "content": "abc"}],
                                        "rejected": [{"role": "assistant", "content": "a"}]}])
    assert row_lengths(chat) == [2 + 3]
    tokens = datasets.Dataset.from_list([{"prompt": "abcd", "chosen": [1, 2, 3], "rejected": [4]}])
    assert row_lengths(tokens) == [4]  # speech tokens (or images, audio) are not text: the prompt alone


@pytest.mark.parametrize("group_by_length", [0, 2])
def test_train_loader_resumes_after_the_batches_it_handed_out(tmp_path, group_by_length):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}" * (i % 5 + 1), "rejected": f"r{i}"} for i in range(20)]
    dm = make_dm(write_jsonl(tmp_path / "t.jsonl", rows), batch_size=4, group_by_length=group_by_length)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    full = [b["index"].tolist() for b in loader]
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2, "batch_size": 4, "num_replicas": 1}
    resumed = make_dm(write_jsonl(tmp_path / "t.jsonl", rows), batch_size=4,
                      group_by_length=group_by_length).train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [b["index"].tolist() for b in resumed] == full[2:]
    assert resumed.state_dict()["batches"] == 5
    assert [b["index"].tolist() for b in resumed] == full  # the next pass starts the epoch again


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
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    dm = make_dm(path, layout=TextUnpaired(), val_fraction=0.0, batch_size=4)
    assert len(dm.train_set) == 2 * len(ROWS)
    origin = {"_source": path, "_row": 0}  # both rows name the pair they came from
    assert dm.train_set[0] == {"prompt": "p0", "completion": "good 0", "label": True, **origin, "index": 0}
    assert dm.train_set[1] == {"prompt": "p0", "completion": "bad 0", "label": False, **origin, "index": 1}
    assert dm.train_set["label"] == [True, False] * len(ROWS)
    batches = list(dm.train_dataloader())
    assert all(len(b["completion"]) == 4 for b in batches)  # trailing partial batch dropped for KTO
    for b in batches:
        assert b["label"].dtype == torch.float32
        assert b["label"].tolist() == [1.0 if c.startswith("good") else 0.0 for c in b["completion"]]


def test_unpaired_layout_native(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": 1}, {"prompt": "q", "completion": "d", "label": 0}]
    path = write_jsonl(tmp_path / "k.jsonl", rows)
    dm = make_dm(path, layout=TextUnpaired(), batch_size=2)
    assert dm.train_set.to_list() == [
        {"prompt": "p", "completion": "c", "label": True, "_source": path, "_row": 0, "index": 0},
        {"prompt": "q", "completion": "d", "label": False, "_source": path, "_row": 1, "index": 1},
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


# --- rows a text layout cannot interpret ----------------------------------------------------------

VLM_HINT = "vision-language pairs are read by the layout alignsuite.data.VisionPairs"


def png_bytes():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_rlaif_v_rows_are_refused_naming_file_row_and_image(tmp_path):
    # RLAIF-V: an image, a question, two answers that start alike. Trained as text they used to lose
    # the question and the image, with 'It is' as the prompt.
    rows = [{"image": {"bytes": png_bytes(), "path": None}, "question": f"What colour is car {i}?",
             "chosen": "It is red.", "rejected": "It is blue."} for i in range(3)]
    path = str(tmp_path / "rlaif.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    with pytest.raises(DataError) as err:
        make_dm(path)
    assert (err.value.source, err.value.row, err.value.field) == (path, 0, "image")
    assert str(err.value) == (
        f"{path}: row 0: field 'image': expected text-only rows; the row has an 'image' value (RLAIF-V or TRL"
        f" vision-language data); {VLM_HINT}"
    )
    with pytest.raises(DataError, match=rf"{path}: row 0: field 'image'.*{VLM_HINT}"):
        make_dm(path, layout=TextUnpaired(), batch_size=2)  # pairs split for KTO: the same check


def test_trl_vision_language_rows_are_refused():
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    chosen = [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]
    rejected = [{"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]
    row = {"images": [png_bytes()], "prompt": prompt, "chosen": chosen, "rejected": rejected}
    with pytest.raises(DataError, match=rf"^{SRC}: row 2: field 'images': expected text-only rows; .*{VLM_HINT}$"):
        normalize_pair(row, 2, SRC)
    # Without the images column the image part in the messages is still found.
    del row["images"]
    with pytest.raises(DataError) as err:
        normalize_pair(row, 2, SRC)
    assert str(err.value) == (
        f"{SRC}: row 2: field 'prompt': expected text-only rows; a user message has content parts"
        f" ['image', 'text']; {VLM_HINT}"
    )


def test_empty_image_column_is_not_an_image():
    # Mixed datasets give text-only rows None or [] there; those rows are text.
    for empty in (None, []):
        row = {"prompt": "p", "chosen": "a", "rejected": "b", "images": empty}
        assert normalize_pair(row, 0, SRC) == {"prompt": "p", "chosen": "a", "rejected": "b"}


# --- layouts users bring (LLaMA-Factory, tool calls) --------------------------------------------------


def test_llama_factory_alpaca_joins_instruction_and_input():
    row = {"instruction": "Translate to English.", "input": "bonjour", "chosen": "hello", "rejected": "goodbye"}
    assert normalize_pair(row, 0, SRC) == {
        "prompt": [user("Translate to English.\nbonjour")],
        "chosen": [assistant("hello")],
        "rejected": [assistant("goodbye")],
    }
    for empty in ("", None):
        assert normalize_pair(dict(row, input=empty), 0, SRC)["prompt"] == [user("Translate to English.")]


def test_llama_factory_alpaca_system_and_history():
    row = {"instruction": "And 3+3?", "input": "", "system": "Be brief.", "history": [["2+2?", "4"]],
           "chosen": "6", "rejected": "7"}
    assert normalize_pair(row, 0, SRC)["prompt"] == [
        {"role": "system", "content": "Be brief."}, user("2+2?"), assistant("4"), user("And 3+3?"),
    ]
    with pytest.raises(DataError, match=r"row 4: field 'history': expected a list of \[query, answer\] text pairs"):
        normalize_pair(dict(row, history=[["only a question"]]), 4, SRC)
    with pytest.raises(DataError, match=r"row 4: field 'instruction': expected a non-empty instruction"):
        normalize_pair(dict(row, instruction=" ", input=None), 4, SRC)


def test_llama_factory_alpaca_file_through_the_data_module(tmp_path):
    rows = [{"instruction": f"Say {w}.", "input": "politely" if i % 2 else "", "chosen": w, "rejected": w[::-1]}
            for i, w in enumerate(["yes", "no", "maybe"])]
    dm = make_dm(write_jsonl(tmp_path / "alpaca.jsonl", rows), batch_size=3)
    batch = dm.collate([dm.train_set[i] for i in range(3)])
    assert batch["prompt"] == [[user("Say yes.")], [user("Say no.\npolitely")], [user("Say maybe.")]]
    assert batch["chosen"] == [[assistant("yes")], [assistant("no")], [assistant("maybe")]]


def test_sharegpt_preference_rows():
    row = {
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                          {"from": "human", "value": "A joke?"}],
        "chosen": {"from": "gpt", "value": "Why did the chicken cross the road?"},
        "rejected": {"from": "gpt", "value": "No."},
        "system": "You are funny.",
    }
    assert normalize_pair(row, 0, SRC) == {
        "prompt": [{"role": "system", "content": "You are funny."}, user("Hi"), assistant("Hello!"), user("A joke?")],
        "chosen": [assistant("Why did the chicken cross the road?")],
        "rejected": [assistant("No.")],
    }
    with pytest.raises(DataError, match=r"row 1: field 'conversations': expected a ShareGPT 'from' among .*'human'.*got 'bot'"):
        normalize_pair(dict(row, conversations=[{"from": "bot", "value": "x"}]), 1, SRC)


def test_sharegpt_function_call_and_observation_become_tool_messages():
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    row = {
        "conversations": [{"from": "human", "value": "Weather in Paris?"},
                          {"from": "function_call", "value": json.dumps(call)},
                          {"from": "observation", "value": "{\"temp\": 21}"}],
        "chosen": {"from": "gpt", "value": "It is 21 degrees."},
        "rejected": {"from": "gpt", "value": "It is snowing."},
        "tools": json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}]),
    }
    out = normalize_pair(row, 0, SRC)
    assert out["prompt"] == [
        user("Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
    ]
    assert json.loads(out["tools"]) == [{"name": "get_weather", "parameters": {"type": "object"}}]
    bad = dict(row, conversations=[{"from": "function_call", "value": "get_weather(Paris)"}])
    with pytest.raises(DataError, match=r"row 0: field 'conversations': expected a function_call value that is JSON"):
        normalize_pair(bad, 0, SRC)


def tool_rows():
    """TRL-style tool rows: row 0 answers with a tool call, row 1 has no tools at all."""
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    return [
        {"prompt": [user("2+3?")],
         "chosen": [{"role": "assistant", "tool_calls": [call]}, {"role": "tool", "name": "add", "content": "5"},
                    assistant("5")],
         "rejected": [assistant("6")], "tools": tools},
        {"prompt": [user("hi")], "chosen": [assistant("hello")], "rejected": [assistant("go away")], "tools": None},
    ], call, tools


def test_tool_calls_and_tools_reach_the_batch(tmp_path):
    rows, call, tools = tool_rows()
    dm = make_dm(write_jsonl(tmp_path / "tools.jsonl", rows), batch_size=2)
    assert dm.columns() == {"prompt", "chosen", "rejected", "tools", "index"}
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])
    assert batch["tools"] == [tools, None]
    assert batch["chosen"][0] == [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "5", "name": "add"},
        assistant("5"),
    ]
    # Arrow gave every message of the column every key; the batch has only each message's own.
    assert batch["chosen"][1] == [assistant("hello")]
    assert batch["prompt"] == [[user("2+3?")], [user("hi")]]
    unpaired = make_dm(write_jsonl(tmp_path / "tools.jsonl", rows), layout=TextUnpaired(), batch_size=4)
    batch = unpaired.collate([unpaired.train_set[i] for i in range(4)])
    assert batch["tools"] == [tools, tools, None, None] and batch["label"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_data_without_tools_has_no_tools_column(tmp_path):
    assert make_dm(write_jsonl(tmp_path / "t.jsonl", ROWS)).columns() == {"prompt", "chosen", "rejected", "index"}


@pytest.mark.parametrize("tools", ["not json", 5, [1, 2]])
def test_bad_tools_value_names_the_field(tools):
    with pytest.raises(DataError, match=r"row 1: field 'tools': expected tool schemas: a list of dicts, or its JSON text"):
        normalize_pair({"prompt": "p", "chosen": "a", "rejected": "b", "tools": tools}, 1, SRC)


def test_assistant_message_needs_content_or_tool_calls():
    row = {"prompt": [user("q")], "chosen": [{"role": "assistant", "content": None}], "rejected": [assistant("b")]}
    with pytest.raises(DataError, match=r"row 0: field 'chosen': expected chat messages that are dicts"):
        normalize_pair(row, 0, SRC)


# --- bad files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, text", [("t.jsonl", ""), ("t.jsonl", "\n\n"), ("t.csv", ""), ("t.json", "")])
def test_empty_file_is_named(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as err:
        make_dm(str(path))
    assert str(err.value) == f"{path}: expected at least one row; the file is empty"


def test_csv_with_only_a_header_is_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=rf"^{path}: expected at least one row; the file has a header line and no rows$"):
        make_dm(str(path))


def test_csv_line_with_a_stray_comma_names_file_and_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,chosen,rejected\np0,a,b\n"p1, quoted",a,b\np2,hello, world,b\np3,a,b\n')
    with pytest.raises(DataError) as err:
        make_dm(str(path))
    assert (err.value.source, err.value.line) == (str(path), 4)
    assert str(err.value) == (
        f"{path}: line 4: expected 3 fields as in the header line, got 4; a comma inside a value needs the value"
        " in double quotes"
    )


def test_malformed_json_line_names_file_and_line(tmp_path):
    lines = [json.dumps({"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"}) for i in range(100)]
    lines[56] = '{"prompt": "p56", "chosen": "c56", "rejected": '
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        make_dm(str(path))
    assert (err.value.source, err.value.line) == (str(path), 57)
    assert str(err.value) == (
        f"{path}: line 57: expected one JSON object per line, got '{lines[56]}'; Expecting value at column 48"
    )


def test_json_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=rf"^{path}: line 2: expected one JSON object per line, got '\[1, 2\]'$"):
        make_dm(str(path))


def test_malformed_json_array_document_names_the_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "b"},\n  {"prompt": "q" "chosen": "a"}\n]\n')
    with pytest.raises(DataError, match=rf"^{path}: line 3: expected a JSON array of row objects; Expecting ',' delimiter"):
        make_dm(str(path))


@pytest.mark.parametrize("suffix, data", [
    (".jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'),
    (".csv", b"prompt,chosen,rejected\na,b,c\ncaf\xe9,b,c\n"),
])
def test_latin1_bytes_name_file_line_and_encoding(tmp_path, suffix, data):
    path = tmp_path / f"t{suffix}"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        make_dm(str(path))
    column = 16 if suffix == ".jsonl" else 4  # 1-based byte of the \xe9
    assert str(err.value) == (
        f"{path}: line {2 if suffix == '.jsonl' else 3}: expected UTF-8 text; byte 0xe9 at column {column} is not UTF-8"
        " (the file looks Latin-1 or Windows-1252 encoded); save it as UTF-8"
    )


def test_utf8_multibyte_text_loads(tmp_path):
    rows = [{"prompt": "café ☕", "chosen": "über", "rejected": "naïve"}]
    assert make_dm(write_jsonl(tmp_path / "t.jsonl", rows)).train_set["prompt"] == ["café ☕"]


def test_empty_parquet_table_is_named(tmp_path):
    path = str(tmp_path / "t.parquet")
    datasets.Dataset.from_list(ROWS).select([]).to_parquet(path)
    with pytest.raises(DataError, match=rf"^{path}: expected at least one row; the table has none$"):
        make_dm(path)


def test_all_rows_skipped_says_so_instead_of_no_train_data(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "same", "rejected": "same"} for i in range(6)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.warns(UserWarning, match="skipped 6 rows"), pytest.raises(DataError) as err:
        make_dm(path)
    assert str(err.value) == f"{path}: all 6 rows were skipped because chosen equals rejected; no train rows are left"
    other = write_jsonl(tmp_path / "more.jsonl", rows[:2])
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"all 6 rows were .*; so were all 2 rows of .*more.jsonl"):
        make_dm([path, other])


@pytest.mark.parametrize("option", ["max_train_rows", "max_val_rows", "batch_size", "eval_batch_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_counts_below_one_name_the_option(option, value):
    with pytest.raises(ValueError, match=rf"^data\.{option} must be >= 1, got {value}$"):
        PreferenceDataModule(**{option: value})


# --- the layout seen from the data module --------------------------------------------------------------


def test_row_kind_columns_and_layout_name(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    pairs, unpaired = make_dm(path), make_dm(path, layout=TextUnpaired(label_field="ok"), batch_size=2)
    assert (pairs.row_kind, pairs.layout.name, repr(pairs.layout)) == ("pairs", "TextPairs", "TextPairs()")
    assert (unpaired.row_kind, repr(unpaired.layout)) == ("unpaired", "TextUnpaired(label_field='ok')")
    assert pairs.columns() == {"prompt", "chosen", "rejected", "index"}
    assert unpaired.columns() == {"prompt", "completion", "label", "index"}
    with pytest.raises(RuntimeError, match="call setup"):
        PreferenceDataModule(train=path).columns()


def test_custom_fields_through_the_layout(tmp_path):
    rows = [{"question": f"q{i}", "good": f"yes {i}", "bad": f"no {i}"} for i in range(3)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    dm = make_dm(path, layout=TextPairs(prompt_field="question", chosen_field="good", rejected_field="bad"))
    assert dm.train_set[2] == {"prompt": "q2", "chosen": "yes 2", "rejected": "no 2", "_source": path, "_row": 2,
                               "index": 2}


def test_one_renderer_turns_chat_messages_into_text():
    from alignsuite.data.messages import content_text, messages_text, prompt_text

    image, text = {"type": "image"}, {"type": "text", "text": "What shape?"}
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [image, text]},
            {"role": "assistant", "content": "A circle."}, {"role": "user", "content": "And its colour?"}]
    assert content_text([image, text]) == "What shape?"
    assert content_text([image, text], placeholders=True) == "<image> What shape?"
    assert prompt_text("plain") == "plain"
    assert prompt_text(chat) == "And its colour?"
    assert prompt_text(chat[:2], placeholders=True) == "<image> What shape?"
    with pytest.raises(ValueError, match="no user message"):
        prompt_text(chat[:1])
    assert messages_text(chat) == "Be brief. What shape? A circle. And its colour?"
    assert messages_text(chat, roles=True, placeholders=True) == (
        "system: Be brief.\nuser: <image> What shape?\nassistant: A circle.\nuser: And its colour?")


def test_rows_given_for_a_text_source_build_what_reading_its_file_builds(tmp_path):
    """``use_rows`` on the text layout: chat rows whose message keys vary, a number column that is an int
    in one row and a float in others: the same stored rows, schema and batches as the file read through
    `datasets`."""
    rows = [
        {"prompt": [user("2+2?")], "chosen": [assistant("4")], "rejected": [assistant("5")], "win_rate": 1},
        {"prompt": [{"role": "system", "content": "Be brief.", "name": "sys"}, user("Sky?")],
         "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")], "win_rate": 0.75},
        {"prompt": [user("Yes?")], "chosen": [{"role": "assistant", "content": "yes", "weight": 1}],
         "rejected": [assistant("no")], "win_rate": 0.5},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)

    def built(given: bool) -> PreferenceDataModule:
        dm = PreferenceDataModule(train=path, layout=TextPairs(number_fields={"win_rate": "win_rate"}), batch_size=3)
        if given:
            dm.use_rows(path, [json.loads(line) for line in open(path)])
        dm.setup("fit")
        return dm

    from_file, given = built(False), built(True)
    assert given.train_set.features == from_file.train_set.features
    assert given.train_set.to_list() == from_file.train_set.to_list()
    a, b = (dm.collate([dm.train_set[i] for i in range(3)]) for dm in (given, from_file))
    assert a["prompt"] == b["prompt"] and a["chosen"] == b["chosen"] and torch.equal(a["win_rate"], b["win_rate"])
