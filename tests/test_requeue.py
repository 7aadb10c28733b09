"""A SLURM job stopped by a signal and requeued continues the run exactly, on one process and on two.

200 pairs (150 train rows), batch 4, 30 steps, validation every 2 steps: one epoch holds 38 steps, so a
signal during step 12, or during the validation after it, lands mid-epoch and two periodic checkpoints
(every 5 steps) after the start. A resume that replayed the epoch from its start would train the first
steps' rows again: every step's rows and loss are compared with an uninterrupted run of the same job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml

from test_cli import REPO, recipe, write_jsonl
from test_signals import edit, fake_scontrol

STEPS, SIGNAL_AFTER, EVERY = 30, 12, 5  # signalled during step 12: two periodic checkpoints into the epoch
TESTS = os.path.dirname(os.path.abspath(__file__))


class StepLog(L.Callback):
    """Appends each training step's number (from 0: the global step before its optimizer step), rows and
    loss to one file per rank, and sends this process ``signum`` during step ``signal_at`` or during the
    validation after it, as srun passes a signal to every task (loaded by the subprocesses from this file)."""

    def __init__(self, path: str, signum: int = 0, signal_at: int = -1, in_validation: bool = False):
        self.path, self.signum, self.signal_at, self.in_validation = path, signum, signal_at, in_validation

    def _signal(self, step: int) -> None:
        if self.signum and step == self.signal_at:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.in_validation:
            self._signal(trainer.global_step)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.in_validation and batch_idx == 0:
            self._signal(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps([trainer.global_step - 1, batch["index"].tolist(), float(outputs["loss"])]) + "\n")


def slurm_env(tmp_path, job: str, rank: int, ranks: int, **extra) -> dict:
    """What srun gives task ``rank`` of a one-node job of ``ranks`` tasks, with a recording ``scontrol``."""
    return {**os.environ, **fake_scontrol(tmp_path),
            "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
            "SLURM_JOB_ID": job, "SLURM_JOB_NAME": "align", "SLURM_NTASKS": str(ranks), "SLURM_NNODES": "1",
            "SLURM_NTASKS_PER_NODE": str(ranks), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0", "SLURM_NODELIST": "127.0.0.1", **extra}


def job_recipe(root, model_dir, pairs, ranks: int, **signal) -> str:
    path = recipe(root, model_dir, pairs, max_steps=STEPS)  # validation every 2 steps, 2 batches
    config = yaml.safe_load(open(path))
    config["trainer"]["callbacks"] = [
        {"class_path": "test_requeue.StepLog", "init_args": {"path": str(root / "steps"), **signal}}]
    if ranks > 1:
        config["trainer"]["strategy"] = "ddp"
    config["checkpoint"].update(every_n_train_steps=EVERY)
    open(path, "w").write(yaml.safe_dump(config))
    return path


def launch(root, path, ranks: int, job: str, args=(), **extra) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "alignsuite", "fit", "--config", path, *args], cwd=REPO,
                             env=slurm_env(root, job, rank, ranks, **extra), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for rank in range(ranks)]


def finish(processes, timeout: float = 300) -> tuple[list[int], str]:
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in processes], errs[0][-4000:]


def logged(root, rank: int = 0) -> list[list]:
    path = f"{root / 'steps'}.rank{rank}"
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def run_whole(root, model_dir, pairs, ranks: int, job: str) -> list[list[list]]:
    codes, err = finish(launch(root, job_recipe(root, model_dir, pairs, ranks), ranks, job))
    assert codes == [0] * ranks, err
    return [logged(root, rank) for rank in range(ranks)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    from alignsuite.toy.llm import EchoWorld

    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", EchoWorld().make_pairs(200, seed=3))


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory, tiny_lm_dir, pairs):
    """The uninterrupted run, by number of processes (each computed once, when first asked for)."""
    cache = {}

    def whole(ranks: int):
        if ranks not in cache:
            cache[ranks] = run_whole(tmp_path_factory.mktemp(f"whole{ranks}"), tiny_lm_dir, pairs, ranks, "9090")
        return cache[ranks]
    return whole


def stop_and_requeue(tmp_path, tiny_lm_dir, pairs, ranks: int, signum: int, in_validation: bool, requeue_args,
                     requeue_env):
    """Run the job, signal every task during step SIGNAL_AFTER (or the validation after it), then run the
    requeued command; return every rank's logged steps, the step it stopped at and the requeued run's stderr."""
    job = "7373"
    path = job_recipe(tmp_path, tiny_lm_dir, pairs, ranks, signum=int(signum), signal_at=SIGNAL_AFTER,
                      in_validation=in_validation)
    codes, err = finish(launch(tmp_path, path, ranks, job, ["--ckpt_path", "last"]))
    assert codes == [128 + signum] * ranks, err
    stopped = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"]
    assert stopped == SIGNAL_AFTER + (0 if in_validation else 1)  # two periodic checkpoints into the epoch
    assert f"stopped by {signal.Signals(signum).name} at global step {stopped}" in err
    interrupted = [logged(tmp_path, rank) for rank in range(ranks)]
    for rank in range(ranks):
        os.rename(f"{tmp_path / 'steps'}.rank{rank}", f"{tmp_path / 'steps'}.first.rank{rank}")
    edit(path, lambda config: config["trainer"]["callbacks"][0]["init_args"].update(signum=0))
    codes, err = finish(launch(tmp_path, path, ranks, job, requeue_args, **requeue_env))
    assert codes == [0] * ranks, err
    resumed = [logged(tmp_path, rank) for rank in range(ranks)]
    return interrupted, resumed, stopped, err


def assert_continues_exactly(interrupted, resumed, stopped, whole):
    for rank, (before, after, expected) in enumerate(zip(interrupted, resumed, whole)):
        assert [step for step, _, _ in before] == list(range(stopped)), rank
        assert [step for step, _, _ in after] == list(range(stopped, STEPS)), rank  # the next step, not step 0
        assert [rows for _, rows, _ in before + after] == [rows for _, rows, _ in expected], rank
        assert [loss for _, _, loss in before + after] == [loss for _, _, loss in expected], rank  # bit for bit


# (signal, the requeued command's extra arguments, its extra environment)
AS_SBATCH_RUNS_IT = (["--ckpt_path", "last"], {})
REQUEUED_BY_SLURM = ([], {"SLURM_RESTART_COUNT": "1"})  # no --ckpt_path: the job's own checkpoint is found
SAME_JOB_ID = ([], {})  # no --ckpt_path and no restart count: the checkpoint names this job
# The default run keeps the one-task job (about a minute); the others run under -m slow.


@pytest.mark.parametrize(("tasks", "signum", "in_validation", "requeue"), [
    (1, signal.SIGUSR1, True, SAME_JOB_ID),
    pytest.param(1, signal.SIGTERM, False, REQUEUED_BY_SLURM, marks=pytest.mark.slow),
    pytest.param(2, signal.SIGUSR1, True, AS_SBATCH_RUNS_IT, marks=[pytest.mark.distributed, pytest.mark.slow]),
    pytest.param(2, signal.SIGTERM, False, AS_SBATCH_RUNS_IT, marks=[pytest.mark.distributed, pytest.mark.slow]),
], ids=["one-task-SIGUSR1-in-validation", "one-task-SIGTERM-in-a-step", "two-task-ddp-SIGUSR1-in-validation",
        "two-task-ddp-SIGTERM-in-a-step"])
def test_job_stopped_mid_epoch_and_requeued_continues_exactly(tmp_path, tiny_lm_dir, pairs, whole_runs, tasks, signum,
                                                              in_validation, requeue):
    """Step for step as the uninterrupted run; SIGUSR1 requeued the job once (from the first task only), and a
    command without --ckpt_path said it resumed the job's own checkpoint."""
    interrupted, resumed, stopped, err = stop_and_requeue(tmp_path, tiny_lm_dir, pairs, tasks, signum, in_validation,
                                                          *requeue)
    assert_continues_exactly(interrupted, resumed, stopped, whole_runs(tasks))
    if signum == signal.SIGUSR1:
        assert (tmp_path / "scontrol.log").read_text() == "requeue 7373\n"
    if not requeue[0]:
        assert f"SLURM job 7373 resumes its own checkpoint {tmp_path / 'ckpt' / 'last.ckpt'}" in err
