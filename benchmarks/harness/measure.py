"""What a worker measures while it trains: resident and GPU memory, each step's clock, the machine's load.

Only the standard library at import: the driver imports this too, and a worker's memory is what is
measured.
"""

from __future__ import annotations

import os
import resource
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def cuda_sync() -> bool:
    """Wait for the GPU's queued kernels, if this process uses one; says whether it does."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        return True
    return False


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


class MemoryProbe:
    """RSS at the start of training, the peak before it, and the peak during it.

    Writing ``5`` to ``/proc/self/clear_refs`` resets the process's RSS high-water mark (VmHWM, which
    ``ru_maxrss`` reads), so the peak after the reset is the training phase's alone. Where the reset is
    not allowed, the training peak is the whole-process peak and ``train_peak_is_whole_process`` says so.
    """

    def __init__(self) -> None:
        self.rss_at_train_start_mb = None
        self.peak_before_train_mb = None
        self.peak_during_train_mb = None
        self.reset_ok = False
        self.cuda_at_train_start_mb = None  # GPU runs: allocated at the start of training, and the peak over it
        self.cuda_peak_mb = None

    def train_start(self) -> None:
        import torch

        if cuda_sync():
            torch.cuda.reset_peak_memory_stats()
            self.cuda_at_train_start_mb = torch.cuda.memory_allocated() / 2**20
        self.peak_before_train_mb = _maxrss_mb()
        rss = _proc_status_kb("VmRSS")
        self.rss_at_train_start_mb = rss / 1024.0 if rss is not None else None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False

    def train_end(self) -> None:
        import torch

        self.peak_during_train_mb = _maxrss_mb()
        if self.cuda_at_train_start_mb is not None:
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20

    def report(self) -> dict:
        peak = max(self.peak_before_train_mb or 0.0, self.peak_during_train_mb or 0.0)
        out = {
            "peak_rss_mb": peak,
            "peak_before_train_mb": self.peak_before_train_mb,
            "rss_at_train_start_mb": self.rss_at_train_start_mb,
            "peak_during_train_mb": self.peak_during_train_mb,
            "train_peak_is_whole_process": not self.reset_ok,
        }
        if self.cuda_peak_mb is not None:
            out["cuda_peak_mb"] = self.cuda_peak_mb
            out["cuda_at_train_start_mb"] = self.cuda_at_train_start_mb
        if self.rss_at_train_start_mb is not None and self.peak_during_train_mb is not None:
            out["train_growth_mb"] = self.peak_during_train_mb - self.rss_at_train_start_mb
        return out


def cpu_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies summed over the machine's CPUs, from ``/proc/stat``: time any process
    ran, time the hypervisor gave this VM's vCPUs to other guests, and all time. Zeros without /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0, 0
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return user + nice + system + irq + softirq, steal, sum(v)


class StepClock:
    """At the end of every optimizer step: wall time (``perf_counter``), the process's CPU time (all
    threads), and the machine's busy, steal and total jiffies, so each step can be told clean or not."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.busy: list[int] = []
        self.steal: list[int] = []
        self.total: list[int] = []

    def tick(self) -> None:
        cuda_sync()  # the step's kernels are done before its end is timed
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        busy, steal, total = cpu_jiffies()
        self.busy.append(busy)
        self.steal.append(steal)
        self.total.append(total)

    def __len__(self) -> int:
        return len(self.wall)

    def state(self) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "busy": self.busy, "steal": self.steal, "total": self.total}


class StepProfiler:
    """With ``--profile N``: ``torch.profiler`` over N steps after the warm-up; keeps the top ops by self CPU time.

    The profiled steps are slower than the others, so a profiled run's pairs/s is not a figure to report.
    """

    def __init__(self, cfg: dict) -> None:
        self.steps, self.start = cfg.get("profile", 0), cfg["warmup"]
        self.prof, self.table = None, None

    def step(self, done: int) -> None:
        if not self.steps:
            return
        if done == self.start:
            import torch.profiler as tp

            self.prof = tp.profile(activities=[tp.ProfilerActivity.CPU])
            self.prof.__enter__()
        elif self.prof is not None and done == self.start + self.steps:
            self.prof.__exit__(None, None, None)
            averages = self.prof.key_averages()
            self.table = averages.table(sort_by="self_cpu_time_total", row_limit=30)
            self.prof = None


def wait_for_idle(limit_s: float) -> float:
    """Wait (up to ``limit_s``) until the machine's CPUs have been under 5% busy, steal included, over 3 s;
    returns the busy share seen last. On a shared machine this makes a clean run likelier, not certain."""
    deadline = time.monotonic() + limit_s
    while True:
        b0, s0, t0 = cpu_jiffies()
        time.sleep(3.0)
        b1, s1, t1 = cpu_jiffies()
        share = (b1 - b0 + s1 - s0) / max(t1 - t0, 1)
        if share < 0.05 or time.monotonic() > deadline:
            return share
