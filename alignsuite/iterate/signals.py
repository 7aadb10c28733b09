"""A stop signal between the rounds' fits (while generating, judging or judging the held-out prompts).

During a fit the fit's own handling stops at the next step boundary, writes ``last.ckpt`` and exits 143 (SIGTERM)
or, under SLURM, requeues the job and exits 138 (SIGUSR1): :class:`alignsuite.callbacks.CheckpointOnPreemption`.
Between fits the loop's own handler records the signal, and the loop stops at the next shard it has written (on
one process) or at the next phase's end (on several, where every process must agree to stop): the files written
so far are whole, so the same command continues from there. SIGUSR1 under SLURM requeues the job first, as a
fit's stop does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from alignsuite.callbacks.preemption import Preempted, requeue_slurm_job

STOPS = (signal.SIGTERM, signal.SIGUSR1)


class LoopSignals:
    """Owns SIGTERM (and SIGUSR1 unless something else handles it) while the loop runs outside a fit, records
    the first that arrives, and stops the loop at the next :meth:`check`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "LoopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOPS:
                if signum == signal.SIGTERM or signal.getsignal(signum) in (signal.SIG_DFL, None):
                    self._previous[signum] = signal.signal(signum, self._caught)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _caught(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def check(self, procs, where: str) -> None:
        """Stop here (:class:`Preempted`, status 128 + the signal) if a signal arrived; ``where`` says what is
        written. On several processes every one calls it at the same point (the decision is shared)."""
        if not procs.any(self.signum is not None):
            return
        signum = self.signum or signal.SIGTERM
        message = (f"stopped by {signal.Signals(signum).name} {where}; the files written so far are kept: run the"
                   " same command again to continue")
        if signum == signal.SIGUSR1 and os.environ.get("SLURM_JOB_ID") and procs.first:
            message += "; " + requeue_slurm_job().replace("; it resumes with --ckpt_path last", "")
        if procs.first:
            sys.stderr.write(f"{message}\n")
            sys.stderr.flush()
        raise Preempted(signum, message)


__all__ = ["LoopSignals"]
