"""The report's figures as PNG files: training curves from a Lightning ``metrics.csv``, per-prompt score
distributions, win rates with their intervals and a before/after image grid.

Each function writes one PNG and returns its path (or ``None`` when it has nothing to draw), so a paper
can take the same files the HTML report shows. Figures are drawn on matplotlib's Agg canvas without pyplot:
no display needed, and no global backend switched under a user's notebook. Text is drawn as it is: captions,
prompts and names are the users', and a ``$`` in them is a dollar, not the start of math (matplotlib's
math parser would fail on ``$_$``, or garble ``$5 off, was $10``).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from collections import Counter

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, ScalarFormatter

BASE_COLOR, ALIGNED_COLOR = "#8c8c8c", "#1f77b4"
DPI = 100


def _plain_text(draw):
    """Draw with every text artist taken literally (``text.parse_math`` off), labels and ticks alike."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def slug(name: str) -> str:
    """A file-name-safe form of a metric or scorer name (``train/rewards/margins`` -> ``train_rewards_margins``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "metric"


def read_metrics_csv(path: str) -> dict[str, list[tuple[int, float]]]:
    """Each column of a CSVLogger ``metrics.csv`` as ``(step, value)`` points, empty cells skipped.

    Lightning writes one sparse row per logging call (train metrics, the learning rate and validation
    metrics land on different rows of the same step), so every column is read on its own.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for name, value in row.items():
                if name in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    series.setdefault(name, []).append((int(float(step)), float(value)))
                except ValueError:
                    continue  # a non-numeric cell (a user's string metric) is not a curve
    return series


def curve_groups(names: list[str]) -> list[tuple[str, list[str]]]:
    """Which columns share a plot: train and val of the same metric together (loss, reward accuracy,
    reward margin), the learning rates together, every other top-level ``val/*`` metric on its own and
    nested ones by their folder (``val/logps/*``). Columns outside these are not plotted."""
    present = set(names)
    groups: list[tuple[str, list[str]]] = []
    for title, key in (("loss", "loss"), ("reward accuracy", "rewards/accuracies"), ("reward margin", "rewards/margins")):
        members = [n for n in (f"train/{key}", f"val/{key}") if n in present]
        if members:
            groups.append((title, members))
    lrs = sorted(n for n in names if n.startswith("lr-"))
    if lrs:
        groups.append(("learning rate", lrs))
    taken = {n for _, members in groups for n in members}
    rest = [n for n in names if n.startswith("val/") and n not in taken]
    groups += [(n, [n]) for n in rest if n.count("/") == 1]  # val/toy_reward, val/image_sensitivity ...
    folders: dict[str, list[str]] = {}
    for n in rest:
        if n.count("/") > 1:
            folders.setdefault(n.rsplit("/", 1)[0], []).append(n)
    groups += list(folders.items())
    return groups


@_plain_text
def training_curves(metrics_csv: str, figures_dir: str) -> list[tuple[str, str]]:
    """One PNG per curve group of ``metrics_csv`` (x = optimizer step); ``[(title, path)]``."""
    series = read_metrics_csv(metrics_csv)
    os.makedirs(figures_dir, exist_ok=True)
    written = []
    for title, members in curve_groups(list(series)):
        fig, ax = _figure((3.6, 2.5))
        for name in members:
            steps, values = zip(*series[name])
            sparse = len(steps) <= 20  # validation points: mark each one
            ax.plot(steps, values, marker="o" if sparse else None, markersize=3, linewidth=1.2, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if title == "learning rate":  # from 0, ticks as 5e-6, 1e-5: a constant rate is a flat line at its value
            ax.set_ylim(0, 1.1 * max(v for name in members for _, v in series[name]) or None)
            ax.yaxis.set_major_formatter(FuncFormatter(_short_number))
        else:  # no "+6.9e-1" offset above the axis: each tick its own value
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.legend(fontsize=6, frameon=False)
        path = os.path.join(figures_dir, f"curve_{slug(title)}.png")
        _save(fig, path)
        written.append((title, path))
    return written


@_plain_text
def score_distribution(name: str, unit: str, base: list, aligned: list, path: str) -> str | None:
    """Per-prompt scores of base and aligned: their histograms (left) and each prompt's pair (right,
    above the diagonal = aligned scored higher; a marker's size counts the prompts at that point)."""
    pairs = [(b, a) for b, a in zip(base, aligned) if b is not None and a is not None]
    b_all = [float(b) for b in base if b is not None]
    a_all = [float(a) for a in aligned if a is not None]
    if not b_all and not a_all:
        return None
    fig, (hist, pair) = _figure((5.4, 2.6), 1, 2)
    lo, hi = min(b_all + a_all), max(b_all + a_all)
    distinct = sorted(set(b_all + a_all))
    if len(distinct) <= 12:  # a discrete score (a toy reward in thirds, a 0/1 match): one pair of bars per value
        xs = range(len(distinct))
        for shift, values, color, side in ((-0.2, b_all, BASE_COLOR, "base"), (0.2, a_all, ALIGNED_COLOR, "aligned")):
            counts = Counter(values)
            hist.bar([x + shift for x in xs], [counts[v] for v in distinct], width=0.4, color=color, label=side)
        hist.set_xticks(list(xs), _distinct_labels(distinct), fontsize=7, rotation=45 if len(distinct) > 4 else 0)
        hist.set_title("prompts per score", fontsize=9)
    else:
        hist.hist([b_all, a_all], bins=min(20, max(5, int(math.sqrt(len(b_all + a_all))) + 1)),
                  color=[BASE_COLOR, ALIGNED_COLOR], label=["base", "aligned"])
        for values, color in ((b_all, BASE_COLOR), (a_all, ALIGNED_COLOR)):
            if values:
                hist.axvline(sum(values) / len(values), color=color, linestyle="--", linewidth=1)
        hist.set_title("prompts per score (dashed: means)", fontsize=9)
    label = f"{name} ({unit})" if unit else name
    hist.set_ylabel("prompts", fontsize=8)
    hist.legend(fontsize=7, frameon=False)
    if pairs:
        counts = Counter((float(b), float(a)) for b, a in pairs)
        xs, ys = zip(*counts)
        pair.scatter(xs, ys, s=[12 + 8 * c for c in counts.values()], color=ALIGNED_COLOR, alpha=0.5)
        pad = (hi - lo) * 0.05 or 0.5
        pair.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color=BASE_COLOR, linewidth=1)
        pair.set_xlim(lo - pad, hi + pad)
        pair.set_ylim(lo - pad, hi + pad)
    pair.set_xlabel("base", fontsize=8)
    pair.set_ylabel("aligned", fontsize=8)
    pair.set_title("per prompt\n(above the line: aligned higher)", fontsize=8)
    for ax in (hist, pair):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(label, fontsize=10)
    _save(fig, path)
    return path


@_plain_text
def win_rates(rows: list[tuple[str, float, float | None, float | None]], path: str) -> str | None:
    """Aligned-over-base win rate of each scorer, ``rows = [(name, win_rate, ci_low, ci_high)]`` in
    [0, 1], as horizontal bars with the 95% interval and the 50% line (no change)."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return None
    fig, ax = _figure((6.0, 0.5 + 0.45 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    rates = [100 * r[1] for r in rows]
    ax.barh(ys, rates, color=ALIGNED_COLOR, height=0.6)
    for y, (_, rate, lo, hi) in zip(ys, rows):
        if lo is not None and hi is not None:
            ax.errorbar(100 * rate, y, xerr=[[100 * (rate - lo)], [100 * (hi - rate)]], color="black", capsize=3)
    ax.axvline(50, color=BASE_COLOR, linestyle="--", linewidth=1)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("aligned-over-base win rate (%), 95% interval", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return path


@_plain_text
def before_after_grid(prompts: list[str], base: list, aligned: list, path: str) -> str | None:
    """Rows of (base image | aligned image), each titled with its prompt; a missing image stays blank."""
    rows = [(p, b, a) for p, b, a in zip(prompts, base, aligned) if b is not None or a is not None]
    if not rows:
        return None
    fig, axes = _figure((5.4, 0.2 + 1.9 * len(rows)), len(rows), 2, squeeze=False)  # square images, little margin
    for (prompt, b, a), (left, right) in zip(rows, axes):
        for ax, image, side in ((left, b, "base"), (right, a, "aligned")):
            if image is not None:
                ax.imshow(image.convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(side, fontsize=8)
        left.set_ylabel(_wrap(prompt, 28), fontsize=8, rotation=0, ha="right", va="center")
    _save(fig, path)
    return path


def _distinct_labels(values: list[float]) -> list[str]:
    """Labels of sorted distinct values with as many significant digits as it takes to tell them apart (3 at
    least): 0.9996, 0.99999 and 1 must not all read "1"."""
    for digits in range(3, 17):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(v) for v in values]


def _short_number(value: float, _position=None) -> str:
    """A tick as short as it reads: ``0``, ``0.5``, ``2.5e-6``, ``1e-5`` (no zero-padded exponent)."""
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{value:.3g}")


def _wrap(text: str, width: int) -> str:
    words, lines, line = str(text).split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:4]) + ("..." if len(lines) > 4 else "")


def _figure(figsize: tuple[float, float], *grid, **kwargs):
    """A figure on its own Agg canvas and its axes (``grid`` and ``kwargs`` as for ``Figure.subplots``)."""
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
