"""The console tables: one row per arm of a repeat, its ratios to a base arm, and the sameness checks."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.harness.figures import LN2, contended

Column = tuple[str, int, Callable[[dict], object], str]  # header, width, value of an arm's result, format


def fmt(x, spec: str, width: int = 0) -> str:
    return f"{'-' if x is None else format(x, spec):>{width}}"


HEAD: list[Column] = [
    ("pairs/s", 8, lambda r: r["pairs_per_s"], ".2f"),
    ("med ms/st", 10, lambda r: r["median_step_ms"], ".1f"),
    ("peak MB", 9, lambda r: r["memory"]["peak_rss_mb"], ".0f"),
    ("train +MB", 10, lambda r: r["memory"].get("train_growth_mb"), ".0f"),
]
TAIL: list[Column] = [
    ("loss@1", 10, lambda r: r["losses"][0], ".6f"),
    ("loss@last", 11, lambda r: r["losses"][-1], ".6g"),
    ("CPU/wall", 9, lambda r: r["cpu_per_wall"], ".2f"),
    ("others%", 8, lambda r: 100 * r["others"], ".1f"),
    ("steal%", 7, lambda r: 100 * r["steal"], ".1f"),
]


def print_arms(title: str, results: dict, columns: list[Column], name_width: int = 17) -> None:
    """One row per arm: ``HEAD``, the script's ``columns``, ``TAIL``, the clean steps, and CONTENDED where
    others or steal took 5% of the machine or more."""
    cols = HEAD + columns + TAIL
    print(f"\n{title}")
    print(f"  {'arm':<{name_width}}" + "".join(f"{h:>{w}}" for h, w, _, _ in cols) + f"{'clean':>8}")
    for arm, r in results.items():
        print(f"  {arm:<{name_width}}" + "".join(fmt(value(r), spec, w) for _, w, value, spec in cols)
              + f"{len(r['clean_steps']):>4}/{r['timed_steps']:<3}" + ("  <- CONTENDED" if contended(r) else ""))


def print_ratios(arm: str, base: str, q: dict) -> None:
    """An arm's `ratios` to the base arm's, as one line."""
    print(f"  ratio {arm} / {base}: pairs/s {q['pairs_per_s']:.3f} (clean steps only {fmt(q['clean_pairs_per_s'], '.3f')}),"
          f" median step {q['median_step']:.3f}, peak RSS {q['peak_rss']:.3f}, training growth"
          f" {fmt(q['train_growth'], '.3f')}" + (f", GPU peak {q['cuda_peak']:.3f}" if q["cuda_peak"] else ""))


def print_first_losses(first: dict, ok: bool) -> None:
    print(f"  first-step loss {', '.join(f'{a} {x:.6f}' for a, x in first.items())} (ln 2 = {LN2:.6f})"
          f" -> {'OK' if ok else 'MISMATCH'}")
