"""What the loop reports per round: the judge's mean and spread on the held-out prompts, the win rate against
round 0 with its interval, the rows kept, the time per phase; a table in the log and a page with the curves."""

from __future__ import annotations

import html
import math
import os

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.evaluation.winrate import bootstrap_interval, outcomes
from alignsuite.iterate.files import write_atomic, write_json

PHASES = ("generate", "judge", "build", "fit", "heldout")


def loop_overhead(seconds: dict) -> float | None:
    """The share of a round's seconds that is the loop's own work: the round less its generation, its training
    loop and its held-out report, i.e. judging, building rows, loading policies, setting fits up and whatever
    no phase accounts for. None for a round without a fit (round 0) or without its total."""
    if not seconds.get("round") or "train" not in seconds:
        return None
    own = seconds["round"] - seconds.get("generate", 0.0) - seconds["train"] - seconds.get("heldout", 0.0)
    return max(own, 0.0) / seconds["round"]


def round_summary(summary: dict, first: dict | None) -> dict:
    """``summary`` with the held-out statistics: mean, standard deviation and win rate against round 0 (ties
    count one half; 95% bootstrap interval over the prompts both rounds scored)."""
    held = summary.get("heldout")
    if held:
        scores = [s for s in held["scores"] if s is not None]
        held["mean"] = float(np.mean(scores)) if scores else None
        held["std"] = float(np.std(scores)) if scores else None
        held["failed"] = sum(s is None for s in held["scores"])
        base = (first or {}).get("heldout", {}).get("scores") if first is not None else None
        if base is not None:
            wins = outcomes(base, held["scores"], True)
            if len(wins):
                low, high = bootstrap_interval(wins, 2000, 0)
                held["win_rate"], held["win_interval"] = float(wins.mean()), [low, high]
    parts = [f"round {summary['round']}"]
    if "build" in summary:
        parts.append(f"{summary['build']['rows']} rows kept of {summary['build']['prompts']} prompts")
    if held and held.get("mean") is not None:
        parts.append(f"held-out {held['mean']:.3f} ± {held['std']:.3f}")
    if held and "win_rate" in held:
        parts.append(f"win rate vs round 0 {held['win_rate']:.3f} [{held['win_interval'][0]:.3f}, {held['win_interval'][1]:.3f}]")
    overhead = loop_overhead(summary.get("seconds", {}))
    if overhead is not None:
        summary["loop_overhead"] = overhead
        parts.append(f"loop overhead {100 * overhead:.1f}% of {summary['seconds']['round']:.1f} s")
    summary["line"] = "; ".join(parts)
    return summary


def table(summaries: list[dict]) -> str:
    """The rounds as a text table, one line per round."""
    head = "  ".join([f"{'round':>5}", f"{'rows':>6}", f"{'held-out mean':>13}", f"{'std':>6}", f"{'win vs 0':>9}",
                      f"{'interval':>15}", *(f"{p + ' s':>10}" for p in PHASES), f"{'overhead':>9}"])
    lines = [head]
    for s in summaries:
        held = s.get("heldout") or {}
        win = held.get("win_rate")
        interval = held.get("win_interval")
        cells = [f"{s['round']:>5}", f"{s.get('build', {}).get('rows', ''):>6}", _num(held.get("mean"), 13),
                 _num(held.get("std"), 6), _num(win, 9),
                 f"{'' if interval is None else f'[{interval[0]:.2f}, {interval[1]:.2f}]':>15}"]
        cells += [_num(s.get("seconds", {}).get(p), 10, 1) for p in PHASES]
        overhead = s.get("loop_overhead")
        cells.append(" " * 9 if overhead is None else f"{100 * overhead:>8.1f}%")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def write_run_report(settings, summaries: list[dict]) -> str:
    """``rounds.json``, the table in the log, and ``report.html`` with the held-out curve; returns the page."""
    out = settings.output_dir
    write_json(os.path.join(out, "rounds.json"), summaries)
    text = table(summaries)
    rank_zero_info(f"iterate: {settings.judge.name} by round\n{text}")
    figure = _curve(summaries, settings, os.path.join(out, "figures", "rounds.png"))
    body = [f"<h1>Online loop: {html.escape(settings.judge.name)} by round</h1>",
            f"<p>{len(summaries) - 1} rounds of {settings.num_samples} samples per prompt; build rule"
            f" {html.escape(type(settings.build).__name__ if settings.build else 'lists')}; reference"
            f" {html.escape(settings.reference)}.</p>"]
    if figure:
        body.append(f'<img src="{html.escape(os.path.relpath(figure, out))}" alt="held-out score by round">')
    body.append(f"<pre>{html.escape(text)}</pre>")
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Online loop</title><style>'
            "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
            "img{max-width:100%}pre{background:#f6f6f6;padding:1rem;overflow-x:auto}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = os.path.join(out, "report.html")
    write_atomic(path, page)
    return path


def _curve(summaries: list[dict], settings, path: str) -> str | None:
    """The held-out mean ± one standard deviation and the win rate against round 0, by round."""
    rounds = [s["round"] for s in summaries if (s.get("heldout") or {}).get("mean") is not None]
    if not rounds:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = [s["heldout"] for s in summaries if (s.get("heldout") or {}).get("mean") is not None]
    means = np.array([h["mean"] for h in held])
    # The mean's 95% interval (normal, over the prompts judged); the spread itself is the table's sd.
    half = np.array([1.96 * h["std"] / max(len([x for x in h["scores"] if x is not None]), 1) ** 0.5 for h in held])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    axes[0].errorbar(rounds, means, yerr=half, marker="o", capsize=3)
    axes[0].set(xlabel="round", ylabel=settings.score, title="held-out mean (95% interval)")
    wins = [(s["round"], s["heldout"]["win_rate"], *s["heldout"]["win_interval"]) for s in summaries
            if "win_rate" in (s.get("heldout") or {})]
    if wins:
        r, w, lo, hi = map(np.array, zip(*wins))
        axes[1].errorbar(r, w, yerr=[w - lo, hi - w], marker="o", capsize=3)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[1].set(xlabel="round", ylabel="win rate", title="against round 0 (95% interval)", ylim=(0, 1))
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(value, width: int, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return " " * width
    return f"{value:>{width}.{digits}f}"


__all__ = ["round_summary", "table", "write_run_report"]
