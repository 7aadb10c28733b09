"""Data procedures in the data module: their output stored once and read back (a changed setting or row
recomputes it), the order they set kept by the sampler, their columns in the batches, errors on their output
naming the original file and row, and one process computing while the others wait and read."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest
import torch

from alignsuite.data import DataError, PreferenceDataModule
from alignsuite.data.procedures import CurryPairs, Procedure, SelectiveDPO, SweetSpotPairs, run_procedures


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNSUITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


class Counted(Procedure):
    """Keeps every row whose ``keep`` column is at least ``least``; counts its calls in a file."""

    extra_columns = ("keep",)

    def __init__(self, least: int = 0, calls: str = "", splits=("train", "val")) -> None:
        super().__init__(splits)
        self.least, self.calls = least, calls

    def apply(self, rows, report):
        with open(self.calls, "a") as f:
            f.write("call\n")
        out = [r for r in rows if r["keep"] >= self.least]
        report.count("dropped: below least", len(rows) - len(out))
        return out


def calls(path):
    return len(open(path).read().split()) if os.path.exists(path) else 0


def pairs(n):
    return [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "keep": i % 3} for i in range(n)]


def test_output_is_stored_once_and_recomputed_when_a_setting_or_row_changes(tmp_path, cache):
    data, counter = write_jsonl(tmp_path / "train.jsonl", pairs(9)), str(tmp_path / "calls")

    def build(least=1, source=data):
        dm = PreferenceDataModule(train=source, procedures=[Counted(least, counter)])
        dm.setup()
        return dm

    first = build()
    assert calls(counter) == 1 and len(first.train_set) == 6
    assert "computed and stored in" in first.procedure_logs["train"] and "dropped: below least 3" in first.procedure_logs["train"]
    again = build()  # a second run, or a resumed one: read, not computed
    assert calls(counter) == 1 and again.train_set.to_list() == first.train_set.to_list()
    assert "read from" in again.procedure_logs["train"] and "dropped: below least 3" in again.procedure_logs["train"]
    assert len(build(least=2).train_set) == 3 and calls(counter) == 2  # a changed setting
    changed = write_jsonl(tmp_path / "other.jsonl", pairs(8))
    assert len(build(source=changed).train_set) == 5 and calls(counter) == 3  # changed rows
    assert len(os.listdir(cache / "procedures")) == 3 * 2  # each output folder and its lock


def test_order_is_kept_through_the_sampler_and_extra_columns_reach_the_batch(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "difficulty": d} for i, d in enumerate([5, 1, 4, 2, 3, 0])]
    dm = PreferenceDataModule(train=write_jsonl(tmp_path / "t.jsonl", rows), procedures=[SelectiveDPO(fraction=1.0)],
                              batch_size=2)
    dm.setup()
    assert dm.ordered
    batches = [b for _ in range(2) for b in dm.train_dataloader()]  # two epochs: the same order
    assert [p for b in batches for p in b["prompt"]] == ["p5", "p1", "p3", "p4", "p2", "p0"] * 2
    assert batches[0]["difficulty"].tolist() == [0.0, 1.0]
    assert dm.train_set["_row"] == [5, 1, 3, 4, 2, 0]  # errors later still name the file's rows
    with pytest.warns(UserWarning, match="the order SelectiveDPO set is lost"):
        shuffled = PreferenceDataModule(train=str(tmp_path / "t.jsonl"), procedures=[SelectiveDPO()], shuffle=True)
    assert not shuffled.ordered
    with pytest.raises(ValueError, match="group_by_length reorders the rows.*SelectiveDPO"):
        PreferenceDataModule(train=str(tmp_path / "t.jsonl"), procedures=[SelectiveDPO()], group_by_length=2)


def test_ordered_rows_keep_their_order_when_validation_is_held_out(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r", "difficulty": 20 - i} for i in range(20)]
    dm = PreferenceDataModule(train=write_jsonl(tmp_path / "t.jsonl", rows), procedures=[SelectiveDPO(fraction=1.0)],
                              val_fraction=0.25)
    dm.setup()
    difficulty = dm.train_set["difficulty"]
    assert len(difficulty) == 15 and difficulty == sorted(difficulty) and len(dm.val_set) == 5


def test_lists_become_pairs_that_the_pair_layout_reads(tmp_path):
    rows = [{"prompt": "q", "responses": ["a", "b", "c"], "scores": [1, 3, 2]},
            {"prompt": "q2", "responses": ["a", "b"], "scores": [float("nan"), 1]}]
    dm = PreferenceDataModule(train=write_jsonl(tmp_path / "l.jsonl", rows), procedures=[CurryPairs()], batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert (batch["chosen"], batch["rejected"], batch["stage"].tolist()) == (["b", "b"], ["a", "c"], [0.0, 1.0])
    assert "fewer than 2 responses" in dm.procedure_logs["train"] and "l.jsonl:1" in dm.procedure_logs["train"]


def test_a_bad_row_after_a_procedure_names_the_original_file_and_row(tmp_path):
    rows = [{"prompt": "q", "responses": ["a", "b"], "scores": [1, 2]},
            {"prompt": "q", "responses": ["  ", "b"], "scores": [5, 2]}]
    source = write_jsonl(tmp_path / "l.jsonl", rows)
    with pytest.raises(DataError, match=r"l.jsonl: row 1: \(row 1 of the train rows after SweetSpotPairs\): field 'chosen'"):
        PreferenceDataModule(train=source, procedures=[SweetSpotPairs()]).setup()


def test_procedures_run_on_the_splits_they_name(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", pairs(6))
    val = write_jsonl(tmp_path / "v.jsonl", pairs(6))
    dm = PreferenceDataModule(train=train, val=val, procedures=[Counted(2, str(tmp_path / "c"), splits=["train"])])
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (2, 6) and set(dm.procedure_logs) == {"train"}
    with pytest.raises(TypeError, match="data.procedures must be procedure objects"):
        PreferenceDataModule(train=train, procedures=["SelectiveDPO"])


class Slow(Counted):
    def apply(self, rows, report):
        time.sleep(0.5)  # long enough for the other process to find the lock taken
        return super().apply(rows, report)


def _one_process(counter, queue):
    rows = [{**r, "_source": "t", "_row": i} for i, r in enumerate(pairs(6))]
    out, _, _, cached = run_procedures([Slow(1, counter)], "train", rows)
    queue.put((len(out), cached))


def test_one_process_computes_while_the_others_wait_and_read(tmp_path):
    counter = str(tmp_path / "calls")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_one_process, args=(counter, queue)) for _ in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    results = sorted(queue.get(timeout=5) for _ in processes)
    assert calls(counter) == 1 and results == [(4, False), (4, True)]


def test_the_ordered_sampler_shards_the_order_across_processes():
    from alignsuite.data import EpochRandomSampler

    shards = [list(EpochRandomSampler(list(range(7)), seed=0, num_replicas=2, rank=r, ordered=True)) for r in (0, 1)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5, 0]]  # rank r takes rows r, r + 2, ...; padded as DistributedSampler pads


# --- Selective DPO's difficulty from a model pass ------------------------------------------------------


def test_held_out_dpo_loss(tiny_lm_dir, tmp_path):
    import math

    from alignsuite.backbones import CausalLM
    from alignsuite.backbones.base import shared_prompts
    from alignsuite.difficulty import HeldOutDPOLoss, model_identity
    from conftest import save_tiny_lm

    rows = [{"prompt": "echo a b", "chosen": "A B", "rejected": "a b", "_source": "t", "_row": 0},
            {"prompt": "echo c", "chosen": "C", "rejected": "c d", "_source": "t", "_row": 1},
            {"prompt": "echo c", "chosen": "C", "rejected": "C", "_source": "t", "_row": 2}]
    # The model as its own reference: every margin is 0, every loss log 2. A pair with nothing to prefer: NaN.
    same = HeldOutDPOLoss(tiny_lm_dir, reference=tiny_lm_dir, max_length=16, max_prompt_length=8)(rows)
    assert same[:2] == pytest.approx([math.log(2)] * 2, abs=1e-6) and math.isnan(same[2])
    # Reference-free: -log s(beta (l(y_w) - l(y_l))) from the backbone's own scores; two models average.
    backbone = CausalLM(tiny_lm_dir, max_length=16, max_prompt_length=8)
    backbone.configure()
    with torch.no_grad():
        s = backbone.score(backbone.prepare(shared_prompts([r["prompt"] for r in rows[:2]], [r["chosen"] for r in rows[:2]],
                                                            [r["rejected"] for r in rows[:2]]))).score.double()
    expected = [-math.log(1 / (1 + math.exp(-0.5 * (s[i] - s[i + 2]).item()))) for i in range(2)]
    free = HeldOutDPOLoss([tiny_lm_dir, tiny_lm_dir], beta=0.5, max_length=16, max_prompt_length=8)(rows)
    assert free[:2] == pytest.approx(expected, rel=1e-6)
    other = save_tiny_lm(tmp_path / "other", seed=7)
    assert model_identity(other) != model_identity(tiny_lm_dir)  # another model keys another stored output
    assert HeldOutDPOLoss(other).identity() != HeldOutDPOLoss(tiny_lm_dir).identity()
