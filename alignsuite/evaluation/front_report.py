"""The front's report page: objective-vs-objective plots (one point per setting with its 95% intervals, the base
and comparison models marked, the front line, the hypervolume's region and reference point), the table of
points, the summaries, and the samples per point side by side (beside each prompt its input images, a
vision-language model's). Figures are PNG files under ``figures/`` drawn on
matplotlib's Agg canvas, as the evaluation report's are (:mod:`alignsuite.evaluation.plots`).
"""

from __future__ import annotations

import itertools
import os

from alignsuite.evaluation import plots
from alignsuite.evaluation.front import BASE, COMPARISON, GUIDED, PREFERENCE, SWEPT, WEIGHTS, FrontPoint, \
    FrontResults, interval, summary_lines
from alignsuite.evaluation.report import THUMB_WIDTH, _Assets, _esc, _figures, _num, _prompt_text, _setting, \
    _write_page, output_body

STYLE = {  # kind: (marker, colour, legend)
    BASE: ("s", "#555555", "base model"),
    COMPARISON: ("D", "#2ca02c", "comparison (one objective)"),
    WEIGHTS: ("o", "#1f77b4", "aligned at a weight vector"),
    PREFERENCE: ("^", "#ff7f0e", "preference-conditioned model"),
    GUIDED: ("v", "#9467bd", "guided at decoding time (PAD)"),
}
FRONT_NOTE = (
    "Each point is one model at one setting, at its mean per dimension over the prompts; the bars are the means'"
    " 95% bootstrap intervals over prompts. The line joins the swept points that no other swept point dominates"
    " (the front); the shaded region is what they dominate beyond the reference point, whose area is the"
    " hypervolume. Base and comparison models are drawn for reference and are not part of the front."
)


@plots._plain_text
def front_plot(results: FrontResults, x: int, y: int, path: str) -> str:
    """Dimension ``x`` against dimension ``y``: every point with its interval bars, the front line, the reference
    point and (for two dimensions) the hypervolume's region; the PNG's path."""
    fig, ax = plots._figure((6.4, 5.0))
    dx, dy = results.dimensions[x], results.dimensions[y]
    ref = results.reference_point
    if len(results.dimensions) == 2:  # the dominated region: a staircase from the reference point
        front = sorted((p for p in results.swept() if p.non_dominated), key=lambda p: p.means[dx])
        sx, sy = (1 if results.higher_is_better[x] else -1), (1 if results.higher_is_better[y] else -1)
        inside = sorted((p for p in front if sx * (p.means[dx] - ref[x]) > 0 and sy * (p.means[dy] - ref[y]) > 0),
                        key=lambda p: sx * p.means[dx])
        if inside:  # the union of the boxes as one staircase: up the reference's side, along the points, down
            xs, ys = [ref[x]], [ref[y]]
            for p in inside:
                xs += [xs[-1], p.means[dx]]
                ys += [p.means[dy], p.means[dy]]
            ax.fill(xs + [xs[-1]], ys + [ref[y]], color="#1f77b4", alpha=0.1, linewidth=0,
                    label="dominated beyond the reference (hypervolume)")
        if len(front) >= 2:
            ax.plot([p.means[dx] for p in front], [p.means[dy] for p in front], "--", color="#1f77b4",
                    linewidth=1.2, alpha=0.7, label="front (non-dominated)", zorder=1)
    ax.plot([ref[x]], [ref[y]], "+", color="#c62828", markersize=12, mew=2,
            label="reference point" + (" (base)" if results.reference == BASE else ""), zorder=2)
    drawn = set()
    shown = [p for p in results.points if p.means.get(dx) is not None and p.means.get(dy) is not None]
    for p in shown:
        marker, colour, legend = STYLE[p.kind]
        ax.errorbar([p.means[dx]], [p.means[dy]],
                    xerr=[[p.means[dx] - p.ci_low[dx]], [p.ci_high[dx] - p.means[dx]]],
                    yerr=[[p.means[dy] - p.ci_low[dy]], [p.ci_high[dy] - p.means[dy]]],
                    fmt=marker, color=colour, markersize=8, capsize=3, elinewidth=1,
                    label=None if p.kind in drawn else legend, zorder=3)
        drawn.add(p.kind)
    arrow = {True: "", False: " (lower is better)"}
    ax.set_xlabel(dx + arrow[results.higher_is_better[x]], fontsize=10)
    ax.set_ylabel(dy + arrow[results.higher_is_better[y]], fontsize=10)
    ax.set_title(f"{dx} vs {dy} ({len(results.prompts)} prompts; hypervolume {results.hypervolume:.4f})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.12)  # room on the right for the labels of the rightmost points
    ax.tick_params(labelsize=9)
    place_labels(fig, ax, [(p.label, (p.means[dx], p.means[dy]), STYLE[p.kind][1]) for p in shown])
    ax.legend(fontsize=8, frameon=False, loc="best")
    plots._save(fig, path)
    return path


# Where a point's label may go, in points from the point: (dx, dy, horizontal alignment, vertical alignment), tried
# in this order; the first that overlaps no other label and no point is taken, else the one that overlaps least.
LABEL_SPOTS = [(8, 6, "left", "bottom"), (8, -6, "left", "top"), (-8, 6, "right", "bottom"), (-8, -6, "right", "top"),
               (0, 10, "center", "bottom"), (0, -10, "center", "top"), (12, 18, "left", "bottom"),
               (12, -18, "left", "top"), (-12, 18, "right", "bottom"), (-12, -18, "right", "top")]


def place_labels(fig, ax, labels: list[tuple[str, tuple[float, float], str]], marker_px: float = 10.0) -> list:
    """Annotate each ``(text, (x, y), colour)`` at the first of `LABEL_SPOTS` where its box overlaps no label
    placed before it, no point's marker and stays inside the axes (the least overlap where none is free); the
    annotations. The axes' limits must be final (they are read in pixels); the layout is made tight first, as the
    figure is saved, so that the pixels are the saved figure's."""
    from matplotlib.transforms import Bbox

    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [Bbox.from_bounds(*(ax.transData.transform(xy) - marker_px), 2 * marker_px, 2 * marker_px)
               for _, xy, _ in labels]

    def overlap(a, b) -> float:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return w * h if w > 0 and h > 0 else 0.0

    placed, out = [], []
    for i, (text, xy, colour) in enumerate(labels):
        best = None
        for ox, oy, ha, va in LABEL_SPOTS:
            note = ax.annotate(text, xy, xytext=(ox, oy), textcoords="offset points", fontsize=9, color=colour,
                               ha=ha, va=va, zorder=5,  # above the interval bars, on a light ground: readable
                               bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none",
                                     "alpha": 0.75})
            box = note.get_window_extent(renderer)
            outside = box.width * box.height - overlap(box, frame)
            cost = sum(overlap(box, b) for b in placed) + sum(overlap(box, m) for j, m in enumerate(markers) if j != i)
            cost += 2 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, note, box)
            else:
                note.remove()
            if cost == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def front_figures(results: FrontResults, figures_dir: str) -> list[tuple[str, str]]:
    """One plot per pair of dimensions (the first two alone for two; at most three pairs)."""
    pairs = list(itertools.combinations(range(len(results.dimensions)), 2))[:3]
    out = []
    for x, y in pairs:
        name = f"front_{plots.slug(results.dimensions[x])}_{plots.slug(results.dimensions[y])}.png"
        out.append((f"{results.dimensions[x]} vs {results.dimensions[y]}",
                    front_plot(results, x, y, os.path.join(figures_dir, name))))
    return out


def write_front_report(results: FrontResults, output_dir: str, *, embed: bool = False, title: str | None = None,
                       max_samples: int | None = 16) -> str:
    """``<output_dir>/report.html``: the front plot(s), the table of points, the summaries and the samples per
    point (the first ``max_samples`` prompts; all when None)."""
    assets = _Assets(output_dir, embed)
    title = title or "Front evaluation"
    settings = [("modality", results.modality)] + [(k, v) for k, v in results.details.items()]
    details = "".join(f"<tr><td>{_esc(k)}</td><td>{_setting(v, assets.run_dir)}</td></tr>" for k, v in settings)
    body = [f"<h1>{_esc(title)}</h1>", f'<table class="details">{details}</table>', "<h2>The front</h2>",
            _figures(assets, front_figures(results, assets.figures_dir)), f'<p class="muted">{_esc(FRONT_NOTE)}</p>',
            _points_table(results), "<ul>" + "".join(f"<li>{_esc(line)}</li>" for line in summary_lines(results))
            + "</ul>", _samples(assets, results, max_samples)]
    return _write_page(output_dir, title, body)


def _vector(p: FrontPoint) -> str:
    return "–" if p.vector is None else "(" + ", ".join(f"{x:g}" for x in p.vector) + ")"


def _points_table(results: FrontResults) -> str:
    head = ("<tr><th>point</th><th>kind</th><th>vector</th>"
            + "".join(f"<th>{_esc(d)} mean [95% CI]</th>" for d in results.dimensions)
            + "<th>non-dominated</th><th>failed</th></tr>")
    rows = []
    for p in results.points:
        front = "yes" if p.non_dominated else "no" if p.kind in SWEPT else "–"
        rows.append(f'<tr><td>{_esc(p.label)}</td><td>{_esc(p.kind)}</td><td class="num">{_vector(p)}</td>'
                    + "".join(f'<td class="num">{_esc(interval(p, d))}</td>' for d in results.dimensions)
                    + f'<td>{front}</td><td class="num">{p.failures}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _samples(assets: _Assets, results: FrontResults, max_samples: int | None) -> str:
    n = len(results.prompts) if max_samples is None else min(max_samples, len(results.prompts))
    parts = ["<h2>Samples per point</h2>"]
    if n < len(results.prompts):
        parts.append(f'<p class="muted">The first {n} of {len(results.prompts)} prompts, the same seeds for every'
                     " point.</p>")
    head = "<tr><th>#</th><th>prompt</th>" + "".join(
        f"<th>{_esc(p.label)}<br><span class=\"muted\">{_vector(p)}</span></th>" for p in results.points) + "</tr>"
    rows = []
    for i in range(n):
        cells = []
        for j, p in enumerate(results.points):
            out = p.outputs[i] if i < len(p.outputs) else None
            heard = p.heard[i] if i < len(p.heard) else None
            text = output_body(assets, out, heard, f"point{j}_{i:04d}", THUMB_WIDTH, f"{p.label} sample {i}")
            scores = " · ".join(f"{_esc(d)} {_num(p.values[d][i])}" for d in results.dimensions)
            cells.append(f'<td>{text}<div class="scores">{scores}</div></td>')
        images = (results.conditions[i] if results.conditions else None) or []  # what a VLM's question is about
        prompt = f"<pre>{_esc(_prompt_text(results.prompts[i]))}</pre>" + "".join(
            assets.img_tag(c, f"condition_{i:04d}_{k}", "thumb", THUMB_WIDTH, "condition") for k, c in enumerate(images))
        rows.append(f'<tr><td class="num">{i}</td><td>{prompt}</td>' + "".join(cells) + "</tr>")
    parts.append(f"<table>{head}{''.join(rows)}</table>")
    return "".join(parts)


__all__ = ["front_figures", "front_plot", "write_front_report"]
