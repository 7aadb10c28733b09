"""Two CPU processes (DDP over gloo): the same recipes train, gather and export as on one."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import lightning as L
import pytest
import yaml

from test_cli import pair_file, recipe  # noqa: F401  (fixture and recipe builder)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.distributed


def run_ddp(path, *extra):
    cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", path,
           "--config", os.path.join(REPO, "configs/strategy/ddp_cpu2.yaml"), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("objective, reference, layout", [
    ("DPO", "alignsuite.reference.Precomputed", "pairs"),
    ("KTO", None, "unpaired"),
])
def test_two_process_fit(tmp_path, tiny_lm_dir, pair_file, objective, reference, layout):  # noqa: F811
    extra = {"reference": {"class_path": reference}} if reference else None
    path = recipe(tmp_path, tiny_lm_dir, pair_file, objective=objective, extra_model=extra)
    config = yaml.safe_load(open(path))
    config["data"]["init_args"]["layout"] = {"class_path": {"pairs": "alignsuite.data.TextPairs", "unpaired": "alignsuite.data.TextUnpaired"}[layout]}
    open(path, "w").write(yaml.safe_dump(config))
    run_ddp(path)
    rows = list(csv.DictReader(open(tmp_path / "runs" / "t" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4
    first = 0.6931 if objective == "DPO" else 0.5  # policy == reference at the first step
    assert losses[0] == pytest.approx(first, abs=1e-3)
    assert os.path.exists(tmp_path / "runs" / "t" / "version_0" / "export" / "config.json")


class RowLog(L.Callback):
    """Appends each training step's rows and loss to one file per rank; kills the run before step
    ``crash_at`` (a preempted node). Loaded by the subprocesses from this file."""

    def __init__(self, path: str, crash_at: int = -1):
        self.path, self.crash_at = path, crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.crash_at:
            raise RuntimeError("node lost")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps([batch["index"].tolist(), float(outputs["loss"])]) + "\n")


def test_two_process_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    """36 train rows, 2 processes of 2 rows: 9 steps an epoch. Killed before step 6 and resumed from
    last.ckpt, each rank trains on the same rows with the same losses as a run that never stopped, and
    the two ranks together see every row of the interrupted epoch once, in the order of data.seed."""
    def run(name, *extra, crash_at=-1):
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        path = recipe(root, tiny_lm_dir, pair_file, max_steps=12,
                      extra_model={"lr_schedule": "constant", "warmup_ratio": 0.0})
        config = yaml.safe_load(open(path))
        config["trainer"].update(limit_val_batches=0, callbacks=[{
            "class_path": "test_distributed.RowLog", "init_args": {"path": str(root / "rows"), "crash_at": crash_at}}])
        config["data"]["init_args"].update(batch_size=2, seed=7)
        config["checkpoint"].update(every_n_train_steps=1)
        open(path, "w").write(yaml.safe_dump(config))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", path,
               "--config", os.path.join(REPO, "configs/strategy/ddp_cpu2.yaml"), *extra]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert (proc.returncode != 0) == (crash_at >= 0), proc.stderr[-4000:]
        return root

    full = run("full")
    interrupted = run("interrupted", crash_at=5)
    run("interrupted", "--ckpt_path", str(interrupted / "ckpt" / "last.ckpt"))
    steps = {}
    for name, root in (("full", full), ("interrupted", interrupted)):
        steps[name] = [[json.loads(line) for line in open(f"{root / 'rows'}.rank{r}")] for r in (0, 1)]
    for full_rank, resumed_rank in zip(steps["full"], steps["interrupted"]):
        assert len(resumed_rank) == 12
        assert [rows for rows, _ in resumed_rank] == [rows for rows, _ in full_rank]
        assert [loss for _, loss in resumed_rank] == pytest.approx([loss for _, loss in full_rank], abs=1e-5)
    epoch = sorted(i for rank in steps["interrupted"] for rows, _ in rank[:9] for i in rows)
    assert epoch == list(range(36))


class ObjectiveStateLog(L.Callback):
    """Appends the objective's state after each training step to one file per rank."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(pl_module.objective.state()) + "\n")


def objective_states(tmp_path, path: str, **data) -> list[list[dict]]:
    """Run the recipe at ``path`` on two processes with ``data`` in its data section, logging the objective's
    state after every step: each rank's states, in order."""
    config = yaml.safe_load(open(path))
    config["trainer"].update(limit_val_batches=0, callbacks=[{
        "class_path": "test_distributed.ObjectiveStateLog", "init_args": {"path": str(tmp_path / "state")}}])
    config["data"]["init_args"].update(batch_size=2, **data)
    open(path, "w").write(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", path,
           "--config", os.path.join(REPO, "configs/strategy/ddp_cpu2.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [[json.loads(line) for line in open(f"{tmp_path / 'state'}.rank{r}")] for r in (0, 1)]


def test_two_process_bco_keeps_one_running_mean(tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    """Unpaired BCO's running reward mean is the mean over both processes' rows: the ranks hold different
    rows, and still the same delta after every step."""
    path = recipe(tmp_path, tiny_lm_dir, pair_file, objective="BCO")
    ranks = objective_states(tmp_path, path, layout={"class_path": "alignsuite.data.TextUnpaired"})
    assert [s["count"] for s in ranks[0]] == [s["count"] for s in ranks[1]] == [2.0, 4.0, 6.0, 8.0]
    assert [s["delta"] for s in ranks[0]] == pytest.approx([s["delta"] for s in ranks[1]], abs=1e-9)
    assert ranks[0][0]["delta"] == 0.0 and ranks[0][-1]["delta"] != 0.0  # policy == reference at the first step


def test_two_process_gr_dpo_keeps_one_set_of_group_weights(tmp_path, tiny_lm_dir):
    """Group-robust DPO's group weights move with the global batch's group means: the ranks hold different rows
    (and different groups), and still the same weights after every step."""
    from alignsuite.toy.llm import EchoWorld

    rows = [{**r, "group": int(i % 3 == 0)} for i, r in enumerate(EchoWorld().make_pairs(48, seed=3))]
    train = tmp_path / "groups.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = recipe(tmp_path, tiny_lm_dir, str(train), objective="GroupRobustDPO",
                  objective_args={"num_groups": 2, "step_size": 1.0})
    ranks = objective_states(tmp_path, path, layout={
        "class_path": "alignsuite.data.TextPairs", "init_args": {"number_fields": {"group": "group"}}})
    weights = [[s["group_weights"] for s in rank] for rank in ranks]
    assert len(weights[0]) == len(weights[1]) == 4
    for w0, w1 in zip(*weights):
        assert w0 == pytest.approx(w1, abs=1e-9) and sum(w0) == pytest.approx(1.0)
    assert weights[0][-1] != [0.5, 0.5]


def test_two_process_re_dpo_keeps_one_reliability(tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    """RE-DPO's annotator reliability moves with the mean weight of the global batch: the ranks hold different
    pairs, and still the same eta after every step."""
    path = recipe(tmp_path, tiny_lm_dir, pair_file, objective="REDPO", objective_args={"beta": 1.0, "alpha": 0.5})
    ranks = objective_states(tmp_path, path)
    assert [s["steps"] for s in ranks[0]] == [s["steps"] for s in ranks[1]] == [1, 2, 3, 4]
    assert [s["eta"][0] for s in ranks[0]] == pytest.approx([s["eta"][0] for s in ranks[1]], abs=1e-9)
    assert ranks[0][0]["eta"] == [pytest.approx(0.9)]  # policy == reference at the first step: w = eta
    assert ranks[0][-1]["eta"][0] != pytest.approx(0.9, abs=1e-9)
