"""Preemption and resuming: SIGTERM saves and exits 143, ``--ckpt_path last`` finds the run's newest
``last.ckpt``, and under SLURM the requeue checkpoint wins only when it is newer."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from alignsuite.callbacks.preemption import newer_checkpoint
from alignsuite.cli import AlignCLI, main
from test_cli import REPO, pair_file, recipe  # noqa: F401  (fixture and recipe builder)

SLURM_ONE_TASK = {
    "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "align",
}


def edit(path, change):
    config = yaml.safe_load(open(path))
    change(config)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def step_of(path):
    return torch.load(path, weights_only=True)["global_step"]


def logged_steps(metrics_file):
    if not os.path.isfile(metrics_file):
        return []
    with open(metrics_file) as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("step")]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGUSR1, 128 + signal.SIGUSR1)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_saves_last_ckpt_exits_128_plus_it_and_the_run_resumes(
        tmp_path, tiny_lm_dir, pair_file, signum, status):  # noqa: F811
    """SIGTERM (a scheduler's preemption) and, outside SLURM, SIGUSR1."""
    def long_run(config):
        config["trainer"].update(max_steps=100_000, limit_val_batches=0)
        config["trainer"]["logger"]["init_args"]["flush_logs_every_n_steps"] = 1

    path = edit(recipe(tmp_path, tiny_lm_dir, pair_file), long_run)
    metrics_file = tmp_path / "runs" / "t" / "version_0" / "metrics.csv"
    process = subprocess.Popen([sys.executable, "-m", "alignsuite", "fit", "--config", path], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not any(step >= 2 for step in logged_steps(metrics_file)):
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline, "no training step logged in time"
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, err
    last = tmp_path / "ckpt" / "last.ckpt"
    step = step_of(last)
    assert step >= 2 and step < 100_000
    assert f"stopped by {signum.name} at global step {step}; wrote {last}" in err
    assert not [n for n in os.listdir(tmp_path / "ckpt") if n.startswith(".tmp-")]  # written atomically

    main(["fit", "--config", path, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last"])
    assert step_of(last) == step + 2


def test_a_sigterm_just_after_the_step_boundary_check_saves_at_the_next_one(
        tmp_path, tiny_lm_dir, pair_file, monkeypatch, capsys):  # noqa: F811
    """The signal lands just after ``on_train_batch_end`` looked for one (while the loggers write, say), where
    Lightning's own flag used to stop the run with nothing saved."""
    from alignsuite.callbacks import CheckpointOnPreemption

    look, sent = CheckpointOnPreemption.on_train_batch_end, []

    def look_then_signal(self, trainer, *args):
        look(self, trainer, *args)
        if trainer.global_step == 2:
            sent.append(2)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(CheckpointOnPreemption, "on_train_batch_end", look_then_signal)
    path = edit(recipe(tmp_path, tiny_lm_dir, pair_file),
                lambda config: config["trainer"].update(max_steps=50, limit_val_batches=0))
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", path])
    assert e.value.code == 143 and sent
    last = tmp_path / "ckpt" / "last.ckpt"
    assert step_of(last) == 3  # the next step boundary
    assert f"stopped by SIGTERM at global step 3; wrote {last}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)  # handlers put back


def test_ckpt_path_last_finds_the_newest_version_folder(tmp_path, tiny_lm_dir, pair_file, caplog):  # noqa: F811
    def follow_the_logger(config):
        del config["checkpoint"]  # checkpoints go to runs/t/version_N/checkpoints
        del config["trainer"]["logger"]["init_args"]["version"]  # every launch a new version_N

    path = edit(recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2), follow_the_logger)
    runs = tmp_path / "runs" / "t"
    with caplog.at_level("INFO"):
        main(["fit", "--config", path, "--ckpt_path", "last"])  # nothing yet: from the start, and it says so
    assert any("--ckpt_path last: no last.ckpt in" in r.getMessage() and "training from the start" in r.getMessage()
               for r in caplog.records)
    assert step_of(runs / "version_0" / "checkpoints" / "last.ckpt") == 2
    caplog.clear()
    with caplog.at_level("INFO"):
        main(["fit", "--config", path, "--ckpt_path", "last", "--trainer.max_steps", "3"])
    first = runs / "version_0" / "checkpoints" / "last.ckpt"
    assert any(f"resuming from {first} (global step 2)" in r.getMessage() for r in caplog.records)
    assert step_of(runs / "version_1" / "checkpoints" / "last.ckpt") == 3  # the resumed run's own folder
    main(["fit", "--config", path, "--ckpt_path", "last", "--trainer.max_steps", "4"])  # from version_1's
    assert step_of(runs / "version_2" / "checkpoints" / "last.ckpt") == 4


def test_a_missing_explicit_checkpoint_or_last_to_evaluate_is_an_error(tmp_path, tiny_lm_dir, pair_file,  # noqa: F811
                                                                       capsys):
    path = recipe(tmp_path, tiny_lm_dir, pair_file)
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", path, "--ckpt_path", str(missing)])
    assert e.value.code == 2
    assert f"error: --ckpt_path {missing}: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["validate", "--config", path, "--ckpt_path", "last"])
    assert e.value.code == 2
    assert f"error: --ckpt_path last: no last.ckpt in {tmp_path / 'ckpt'}" in capsys.readouterr().err


def test_simulated_slurm_single_task_runs_on_one_node(tmp_path, tiny_lm_dir, pair_file, monkeypatch,  # noqa: F811
                                                       caplog):
    for key, value in SLURM_ONE_TASK.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level("INFO"):
        cli = AlignCLI(args=["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2)])
    # Lightning's SLURM environment, with its in-handler requeue off: CheckpointOnPreemption requeues instead.
    env = cli.trainer._accelerator_connector.cluster_environment
    assert type(env).__name__ == "SLURMEnvironment" and not env.auto_requeue
    assert not any("SLURM auto-requeueing enabled" in r.getMessage() for r in caplog.records)
    assert cli.trainer.num_nodes == 1 and cli.trainer.num_devices == 1
    assert step_of(tmp_path / "ckpt" / "last.ckpt") == 2


def test_slurm_allocation_sets_num_nodes_and_devices_left_at_their_defaults(tmp_path, tiny_lm_dir, pair_file,  # noqa: F811
                                                                           monkeypatch):
    env = {**SLURM_ONE_TASK, "SLURM_NNODES": "2", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = recipe(tmp_path, tiny_lm_dir, pair_file)
    cli = AlignCLI(args=["--config", path, "--config", os.path.join(REPO, "configs/strategy/ddp.yaml")], run=False)
    assert cli.trainer.num_nodes == 2 and cli.trainer.num_devices == 2 and cli.trainer.world_size == 4


def test_under_slurm_the_newer_of_requeue_and_last_checkpoint_is_resumed(tmp_path, tiny_lm_dir, pair_file,  # noqa: F811
                                                                        monkeypatch, caplog):
    path = recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2)
    main(["fit", "--config", path])
    last = tmp_path / "ckpt" / "last.ckpt"
    stale = torch.load(last, weights_only=True)
    stale["global_step"] = 1
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's requeue checkpoint, in the default root dir
    torch.save(stale, hpc)

    assert newer_checkpoint(str(last), str(hpc))[0] == str(last)
    stale["global_step"] = 5
    newer = tmp_path / "hpc_ckpt_2.ckpt"
    torch.save(stale, newer)
    chosen, how = newer_checkpoint(str(last), str(newer))
    assert chosen == str(newer) and f"resuming from {newer} (global step 5)" in how
    os.remove(newer)

    for key, value in SLURM_ONE_TASK.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level("INFO"):
        main(["fit", "--config", path, "--trainer.max_steps", "3"])  # no --ckpt_path: Lightning would take hpc
    said = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert said == [f"resuming from {last} (global step 2), newer than or as new as {hpc} (global step 1)"]
    assert step_of(last) == 3


@pytest.mark.parametrize(("layout", "devices", "named"), [
    ({"SLURM_NNODES": "1", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}, "1",
     "trainer.devices 1 x trainer.num_nodes 1 = 1 processes does not match the SLURM job's task layout"
     " (SLURM_NTASKS=2, SLURM_NNODES=1, SLURM_NTASKS_PER_NODE=2)"),
    ({"SLURM_NNODES": "2", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2"}, "4",
     "trainer.devices 4 x trainer.num_nodes 2 = 8 processes does not match the SLURM job's task layout"
     " (SLURM_NTASKS=4, SLURM_NNODES=2, SLURM_NTASKS_PER_NODE=2)"),
], ids=["one-node", "two-nodes"])
def test_devices_that_do_not_match_the_slurm_tasks_are_an_error_naming_both(tmp_path, tiny_lm_dir, pair_file,  # noqa: F811
                                                                          monkeypatch, capsys, layout, devices, named):
    for key, value in {**SLURM_ONE_TASK, **layout}.items():
        monkeypatch.setenv(key, value)
    path = recipe(tmp_path, tiny_lm_dir, pair_file)
    with pytest.raises(SystemExit) as e:
        AlignCLI(args=["--config", path, "--trainer.devices", devices], run=False)
    assert e.value.code == 2
    assert named in capsys.readouterr().err


def fake_scontrol(tmp_path) -> dict:
    """An environment whose ``scontrol`` records its arguments in ``tmp_path/scontrol.log``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def train_losses(metrics_file) -> dict[int, float]:
    with open(metrics_file) as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def requeue_once(path, env, metrics_file, after_step: int, timeout: float = 240) -> subprocess.CompletedProcess:
    """Start ``fit --ckpt_path last`` as the requeued sbatch script would, send SIGUSR1 once a step past
    ``after_step`` is logged, and return the finished process."""
    process = subprocess.Popen([sys.executable, "-m", "alignsuite", "fit", "--config", path, "--ckpt_path", "last"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not any(step > after_step for step in logged_steps(metrics_file)):
            if process.poll() is not None:
                return subprocess.CompletedProcess(process.args, process.returncode, *process.communicate())
            assert time.time() < deadline, "no training step logged in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGUSR1)
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            raise AssertionError("the run hung after SIGUSR1")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def requeue_setup(tmp_path, tiny_lm_dir, pair_file, steps: int):  # noqa: F811
    def fixed_run(config):
        config["trainer"].update(max_steps=steps, limit_val_batches=0)
        config["trainer"]["logger"]["init_args"].update(flush_logs_every_n_steps=1)
        config["trainer"]["logger"]["init_args"].pop("version", None)  # every launch logs into a new version

    path = edit(recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=steps), fixed_run)
    env = {**os.environ, **SLURM_ONE_TASK, **fake_scontrol(tmp_path)}
    return path, env


def test_under_slurm_sigusr1_saves_at_a_step_requeues_and_the_requeued_run_continues_exactly(
        tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    steps = 8
    path, env = requeue_setup(tmp_path, tiny_lm_dir, pair_file, steps)
    runs = tmp_path / "runs" / "t"
    done = requeue_once(path, env, runs / "version_0" / "metrics.csv", after_step=1)
    assert done.returncode == 128 + signal.SIGUSR1, done.stderr[-3000:]
    stopped = step_of(tmp_path / "ckpt" / "last.ckpt")
    assert 2 <= stopped < steps
    assert f"stopped by SIGUSR1 at global step {stopped}" in done.stderr
    assert "requeued SLURM job 4242" in done.stderr
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert not list(tmp_path.glob("hpc_ckpt_*"))  # no save inside Lightning's handler

    again = subprocess.run([sys.executable, "-m", "alignsuite", "fit", "--config", path, "--ckpt_path", "last"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = {**train_losses(runs / "version_0" / "metrics.csv"), **train_losses(runs / "version_1" / "metrics.csv")}
    main(["fit", "--config", edit(path, lambda c: c["trainer"]["logger"]["init_args"].update(name="whole")),
          "--checkpoint.dirpath", str(tmp_path / "whole_ckpt")])
    whole = train_losses(tmp_path / "runs" / "whole" / "version_0" / "metrics.csv")
    assert sorted(resumed) == sorted(whole) == list(range(steps))
    assert resumed == whole  # bit for bit: data position, optimizer, scheduler and RNG all came back


@pytest.mark.slow
def test_twenty_slurm_requeues_in_a_row_never_hang_and_lose_no_step(tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    steps = 24
    path, env = requeue_setup(tmp_path, tiny_lm_dir, pair_file, steps)
    runs = tmp_path / "runs" / "t"
    for attempt in range(20):
        done = requeue_once(path, env, runs / f"version_{attempt}" / "metrics.csv",
                            after_step=step_of(tmp_path / "ckpt" / "last.ckpt") if attempt else 0, timeout=120)
        if done.returncode == 0:  # finished before the signal
            break
        assert done.returncode == 128 + signal.SIGUSR1, done.stderr[-3000:]
    final = subprocess.run([sys.executable, "-m", "alignsuite", "fit", "--config", path, "--ckpt_path", "last"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert step_of(tmp_path / "ckpt" / "last.ckpt") == steps
    assert (tmp_path / "scontrol.log").read_text().count("requeue 4242") >= min(attempt, 19)


@pytest.mark.slow
def test_a_simulated_two_node_slurm_job_requeues_on_sigusr1_and_continues_exactly(tmp_path, tiny_lm_dir,
                                                                                   pair_file):  # noqa: F811
    """Two processes given the environment srun gives each task of a 2-node x 1-task job: num_nodes comes from
    it, SIGUSR1 to both stops them at one step, the first requeues, and the requeued job's losses continue
    the interrupted run's exactly (compared with an uninterrupted 2-node run)."""
    steps = 8

    def fixed_run(config):
        config["trainer"].update(max_steps=steps, limit_val_batches=0, accelerator="cpu", strategy="ddp")
        config["trainer"]["logger"]["init_args"].update(flush_logs_every_n_steps=1)
        config["trainer"]["logger"]["init_args"].pop("version", None)

    path = edit(recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=steps), fixed_run)

    def launch(extra_args=(), job="5151", name="t"):
        processes = []
        for rank in range(2):
            env = {**os.environ, **fake_scontrol(tmp_path), "SLURM_NTASKS": "2", "SLURM_NNODES": "2",
                   "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
                   "SLURM_NODEID": str(rank), "SLURM_JOB_ID": job, "SLURM_JOB_NAME": "align",
                   "SLURM_NODELIST": "127.0.0.1"}
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "alignsuite", "fit", "--config", path, "--ckpt_path", "last",
                 "--trainer.logger.init_args.name", name, *extra_args],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return processes

    def finish(processes, timeout=300):
        out = [p.communicate(timeout=timeout) for p in processes]
        return [p.returncode for p in processes], out

    runs = tmp_path / "runs" / "t"
    first = launch()
    deadline = time.time() + 300
    while not any(step >= 2 for step in logged_steps(runs / "version_0" / "metrics.csv")):
        assert all(p.poll() is None for p in first) and time.time() < deadline, "no step logged in time"
        time.sleep(0.05)
    for p in first:
        p.send_signal(signal.SIGUSR1)
    codes, out = finish(first)
    assert codes == [128 + signal.SIGUSR1] * 2, out[0][1][-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 5151\n"  # the first rank only
    codes, out = finish(launch())
    assert codes == [0, 0], out[0][1][-3000:]
    resumed = {**train_losses(runs / "version_0" / "metrics.csv"), **train_losses(runs / "version_1" / "metrics.csv")}
    codes, out = finish(launch(["--checkpoint.dirpath", str(tmp_path / "whole_ckpt")], job="6161", name="whole"))
    assert codes == [0, 0], out[0][1][-3000:]
    whole = train_losses(tmp_path / "runs" / "whole" / "version_0" / "metrics.csv")
    assert sorted(resumed) == sorted(whole) == list(range(steps))
    assert resumed == whole
