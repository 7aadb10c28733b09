"""What the workers' records become: pairs/s over the timed steps, clean steps, contention, and ratios
between arms, over one repeat or over all of them."""

from __future__ import annotations

import math
import statistics

from benchmarks.harness.measure import _TICK

LN2 = math.log(2.0)  # the DPO loss when the policy is the reference: every arm's first step


def throughput(clock: dict, batch_size: int, warmup: int, threads: int) -> dict:
    """pairs/s over the steps after ``warmup``: from the end of step ``warmup`` to the end of the last
    (with no warm-up, from the end of step 1).

    Also, per timed step: its duration; ``cpu_per_wall``, this process's CPU seconds per wall second;
    ``others``, the share of the machine's CPU time that other processes used (the machine's busy time
    minus this process's), and ``steal``, the share the hypervisor gave to other guests. A step is *clean*
    when both shares are under 5%; ``clean_*`` figures use those steps only. (``cpu_per_wall`` alone does
    not tell: OpenMP threads spin while they wait, and spinning counts as CPU time.)
    """
    wall, cpu, busy, steal, total = (clock[k] for k in ("wall", "cpu", "busy", "steal", "total"))
    first = max(warmup, 1) - 1
    if len(wall) < first + 2:
        raise RuntimeError(f"only {len(wall)} steps were timed; need at least --warmup + 1")

    def shares(i: int, j: int) -> tuple[float, float]:
        jiffies = max(total[j] - total[i], 1)
        mine = (cpu[j] - cpu[i]) * _TICK
        return max(busy[j] - busy[i] - mine, 0.0) / jiffies, (steal[j] - steal[i]) / jiffies

    steps = range(first + 1, len(wall))
    step_s = [wall[i] - wall[i - 1] for i in steps]
    step_cpu = [(cpu[i] - cpu[i - 1]) / (wall[i] - wall[i - 1]) for i in steps]
    step_others, step_steal = zip(*(shares(i - 1, i) for i in steps))
    clean = [i for i, o, st in zip(steps, step_others, step_steal) if o < 0.05 and st < 0.05]
    clean_s = [wall[i] - wall[i - 1] for i in clean]
    elapsed = wall[-1] - wall[first]
    others, stolen = shares(first, len(wall) - 1)
    return {
        "timed_steps": len(step_s),
        "timed_seconds": elapsed,
        "pairs_per_s": len(step_s) * batch_size / elapsed,
        "median_step_ms": 1000.0 * statistics.median(step_s),
        "min_step_ms": 1000.0 * min(step_s),
        "cpu_per_wall": (cpu[-1] - cpu[first]) / elapsed,
        "others": others,
        "steal": stolen,
        "step_index": list(steps),
        "step_ms": [1000.0 * x for x in step_s],
        "step_cpu_per_wall": step_cpu,
        "step_others": list(step_others),
        "step_steal": list(step_steal),
        "clean_steps": clean,
        "clean_pairs_per_s": len(clean) * batch_size / sum(clean_s) if clean else None,
        "clean_median_step_ms": 1000.0 * statistics.median(clean_s) if clean else None,
    }


def contended(r: dict) -> bool:
    """Over the timed window other processes used, or the hypervisor gave to other guests, 5% or more of
    the machine's CPU time: the worker's whole-run figures are not clean."""
    return r["others"] >= 0.05 or r["steal"] >= 0.05


def _ratio(x, y):
    return x / y if x and y else None


def ratios(r: dict, base: dict) -> dict:
    """One arm's figures over another's (``base``), from one repeat; ``None`` where either lacks one."""
    m, bm = r["memory"], base["memory"]
    return {
        "pairs_per_s": r["pairs_per_s"] / base["pairs_per_s"],
        "median_step": r["median_step_ms"] / base["median_step_ms"],
        "clean_pairs_per_s": _ratio(r["clean_pairs_per_s"], base["clean_pairs_per_s"]),
        "peak_rss": m["peak_rss_mb"] / bm["peak_rss_mb"],
        "train_growth": _ratio(m.get("train_growth_mb"), bm.get("train_growth_mb")),
        "cuda_peak": _ratio(m.get("cuda_peak_mb"), bm.get("cuda_peak_mb")),
    }


def step_ms(r: dict) -> dict[int, float]:
    """An arm's timed steps, by index: step i holds the same batch in every arm and every repeat."""
    return dict(zip(r["step_index"], r["step_ms"]))


def pairs_per_s(steps_ms: list[float], batch_size: int) -> float:
    return 1000.0 * len(steps_ms) * batch_size / sum(steps_ms)


def best_of_repeats(runs: list[dict], arm: str, batch_size: int) -> float:
    """pairs/s from each step's fastest time over the repeats. Noise on a shared machine only ever adds
    time, and step i holds the same batch in every run, so this estimates the uncontended time."""
    per_step = [step_ms(run[arm]) for run in runs]
    return pairs_per_s([min(d[i] for d in per_step) for i in per_step[0]], batch_size)


def median_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def first_losses(results: dict) -> tuple[dict, bool]:
    """Each arm's first loss, and whether all are ln 2: every arm starts with the policy equal to the reference."""
    first = {arm: r["losses"][0] for arm, r in results.items()}
    return first, all(abs(x - LN2) < 1e-4 for x in first.values())
