"""Stopping on a signal and resuming where the run stopped.

A stop signal during fit writes ``last.ckpt`` at the next step boundary, then exits with 128 + the signal.

Lightning's signal connector handles SIGTERM (a scheduler's preemption, ``kill``) by setting
``trainer.received_sigterm`` and stopping after the current batch, with exit status 0 and nothing saved: a
wrapper script cannot tell a preempted run from a finished one, and the steps since the last checkpoint are
lost. Here the run's own ``ModelCheckpoint`` writes its ``last.ckpt`` first (atomically, through the
trainer's save path), then the process exits with status 143 (128 + SIGTERM) and says so on stderr.

SIGUSR1 is treated the same (without SLURM Python's default would kill the process with nothing saved).
Under SLURM it is the requeue signal (``#SBATCH --signal=USR1@90``): ``last.ckpt`` is written at the next
step boundary, then the first process calls ``scontrol requeue <job>`` and every process exits with 138.
Lightning's own requeue handler saves inside the signal handler, in the middle of whatever collective the
ranks were running, which can deadlock a multi-process job; the CLI turns it off (``SLURMEnvironment(
auto_requeue=False)``) and this callback does the work at a point where every rank stands at the same step.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import threading

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from alignsuite.checkpoint_io import META, CheckpointError, load_checkpoint_file


SLURM_JOB_KEY = "slurm_job_id"  # the SLURM job that wrote a checkpoint


class Preempted(SystemExit):
    """The run stopped on a signal; its code is 128 + the signal number, as a shell reports a killed process."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.message = int(signum), message


class CheckpointOnPreemption(Callback):
    """On SIGTERM (or an unhandled SIGUSR1) during fit: save ``last.ckpt`` after the current batch, then exit.

    While training runs, this callback's handler owns SIGTERM. Lightning's own handler sets a flag that its loops
    check at several points of a step, some after ``on_train_batch_end``: a signal landing there (while the
    loggers write, say) stopped the run with nothing saved. This handler only records the signal (and forwards
    it to the processes Lightning launched, as Lightning does), so the stop always happens here, at the next step
    boundary. A signal during validation stops at its end, where Lightning's own checkpoint would be written:
    raising Lightning's flag there would stop validation in its middle, with nothing saved.
    """

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal this callback caught
        self._previous: dict[int, object] = {}
        self._trainer = None

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning registered its handlers: under SLURM with auto-requeue it owns SIGUSR1.
        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._caught)
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._caught)

    def _caught(self, signum, frame) -> None:
        trainer = self._trainer
        if self.signum is None and signum == signal.SIGTERM and trainer is not None:
            launcher = trainer.strategy.launcher
            if launcher is not None:  # processes Lightning started hear of it as they would from Lightning
                launcher.kill(signum)
        self.signum = self.signum or signum

    def on_train_end(self, trainer, pl_module) -> None:
        # Before Lightning puts back the handlers it found (a teardown hook would run after it and undo that).
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        self._trainer = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Marks the job's own checkpoints: its requeued run resumes them even without --ckpt_path.
        if os.environ.get("SLURM_JOB_ID"):
            checkpoint[SLURM_JOB_KEY] = os.environ["SLURM_JOB_ID"]

    def on_validation_end(self, trainer, pl_module) -> None:
        # A signal during validation within fit: validation has run to its end, so the checkpoint is the
        # one Lightning's own ModelCheckpoint writes here (it resumes past this validation, exactly).
        if self._trainer is not None and not trainer.sanity_checking:
            self._stop_if_signalled(trainer, in_step=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer, in_step=True)

    def _stop_if_signalled(self, trainer, in_step: bool) -> None:
        signum = self.signum or (signal.SIGTERM if trainer.received_sigterm else None)
        stop = signum is not None
        if trainer.world_size > 1:  # every rank saves (a sharded save is collective) and stops at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = signum or signal.SIGTERM
        name = signal.Signals(signum).name
        if in_step:  # this step's metrics: Lightning hands them to the loggers after this hook, which the exit skips
            trainer._logger_connector.update_train_step_metrics()
        for logger in trainer.loggers:
            logger.save()
        saved = self._save_last(trainer)
        step = trainer.global_step
        if saved:
            message = (f"stopped by {name} at global step {step}; wrote {saved}. Resume with --ckpt_path {saved}"
                       " (or --ckpt_path last)")
        else:
            message = f"stopped by {name} at global step {step}; no checkpoint written (checkpointing is off)"
        if signum == signal.SIGUSR1 and os.environ.get("SLURM_JOB_ID") and trainer.is_global_zero:
            message += "; " + requeue_slurm_job()
        if trainer.is_global_zero:
            sys.stderr.write(f"{message}\n")
            sys.stderr.flush()
        raise Preempted(signum, message)

    @staticmethod
    def _save_last(trainer) -> str | None:
        """The run's ModelCheckpoint writes its last checkpoint now, unless it just wrote one at this step."""
        callback = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        if callback is None or callback.dirpath is None:
            return None
        if callback.save_last and callback._last_global_step_saved == trainer.global_step and callback.last_model_path:
            return callback.last_model_path
        if not callback.save_last:
            callback.save_last = True  # a preempted run always leaves a checkpoint to resume from
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        return callback.last_model_path


def requeue_slurm_job() -> str:
    """``scontrol requeue`` this job (an array job's own task); what happened, in words."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        return f"not requeued: SLURM job id {job!r} is not a job id"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not requeue SLURM job {job} ({error}); resubmit it, with --ckpt_path last"
    if result.returncode:
        return f"scontrol requeue {job} failed ({result.returncode}: {result.stderr.strip()}); resubmit it"
    return f"requeued SLURM job {job}; it resumes with --ckpt_path last"


def _number(path: str, pattern: str) -> int:
    match = re.fullmatch(pattern, os.path.basename(path))
    return int(match.group(1)) if match else -1


def newest_last_checkpoint(dirpath: str | None, log_root: str, name: str = "last.ckpt",
                           run_dirs: tuple[str, ...] = ()) -> str | None:
    """``dirpath/last.ckpt`` when the checkpoint folder is fixed; otherwise the ``last.ckpt`` of the highest
    ``log_root/version_N`` that has one (every launch logs into a new version folder). Another file ``name``
    is looked for the same way, first in ``run_dirs/checkpoints/`` (the run whose saved config.yaml was given)."""
    if dirpath:
        path = os.path.join(dirpath, name)
        return path if os.path.exists(path) else None  # a file, or a sharded checkpoint's folder
    for run_dir in reversed(run_dirs):
        if os.path.exists(path := os.path.join(run_dir, "checkpoints", name)):
            return path
    found = glob.glob(os.path.join(glob.escape(log_root), "*", "checkpoints", glob.escape(name)))
    key = lambda p: (_number(os.path.dirname(os.path.dirname(p)), r"version_(\d+)"), os.path.getmtime(p))  # noqa: E731
    return max(found, key=key) if found else None


def hpc_checkpoint(root: str) -> str | None:
    """The newest of Lightning's SLURM requeue checkpoints ``root/hpc_ckpt_<N>.ckpt``, or None."""
    found = glob.glob(os.path.join(glob.escape(str(root)), "hpc_ckpt_*.ckpt"))
    return max(found, key=lambda p: _number(p, r"hpc_ckpt_(\d+)\.ckpt")) if found else None


def _stored(path: str, key: str, default=None):
    """One top-level entry of a checkpoint (``default`` when it cannot be read). A sharded checkpoint is a
    folder whose ``meta.pt`` holds everything but the weights and optimizer states."""
    try:
        if os.path.isdir(path):
            path = os.path.join(path, META)
        return load_checkpoint_file(path, mmap=True).get(key, default)
    except (CheckpointError, OSError):
        return default


def global_step(path: str) -> int:
    """A checkpoint's global step (-1 when it cannot be read: the other candidate wins)."""
    return int(_stored(path, "global_step", -1))


def own_job_checkpoint(last: str | None, searched: str) -> tuple[str | None, str]:
    """Under SLURM, for a fit given no checkpoint: ``last`` when this job wrote it or the job was requeued (as
    Lightning's own SLURM requeue resumes without being asked), else None; with a sentence saying which."""
    job = os.environ.get("SLURM_JOB_ID", "")
    restarts = os.environ.get("SLURM_RESTART_COUNT", "")
    requeued = restarts.isdigit() and int(restarts) > 0
    if last is not None and (requeued or (job and _stored(last, SLURM_JOB_KEY) == job)):
        why = f"requeued (SLURM_RESTART_COUNT={restarts})" if requeued else "it wrote that checkpoint"
        return last, f"SLURM job {job} resumes its own checkpoint {last}: {why}"
    if requeued:
        return None, f"SLURM job {job} was requeued but there is no last.ckpt in {searched}; training from the start"
    return None, ""


def newer_checkpoint(last: str | None, hpc: str | None, doing: str = "resuming from") -> tuple[str | None, str]:
    """Of ``last.ckpt`` and a SLURM requeue checkpoint, the one at the later global step (last.ckpt on a tie),
    with a sentence saying which and why (``doing`` what with it: "exporting" for the export command)."""
    if hpc is None or last is None:
        chosen = last or hpc
        return chosen, f"{doing} {chosen} (global step {global_step(chosen)})" if chosen else ""
    steps = {last: global_step(last), hpc: global_step(hpc)}
    chosen, other = (hpc, last) if steps[hpc] > steps[last] else (last, hpc)
    return chosen, (f"resuming from {chosen} (global step {steps[chosen]}), newer than or as new as {other}"
                    f" (global step {steps[other]})")
