"""The evaluation report: one HTML page that opens from disk (no server, no scripts) with the score table,
the win rates with their intervals, the training curves, the per-prompt score distributions and the
samples side by side (an answer table for text and vision-language models, a before/after grid for
images, audio players for speech).

Every figure is also a PNG file under ``<output_dir>/figures/`` for papers; the page references those
files by relative path, or embeds everything as data URIs with ``embed=True`` (one file to send).
"""

from __future__ import annotations

import base64
import html
import io
import os
import wave

from alignsuite.data.messages import messages_text
from alignsuite.evaluation import plots
from alignsuite.evaluation.results import EvalResults, ScorerResult

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; vertical-align: top; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.details td { border: none; padding: .1em .8em .1em 0; } .details td:first-child { color: #666; }
.figures { display: flex; flex-wrap: wrap; gap: .8em; } .figures img { max-width: 100%; border: 1px solid #eee; }
pre { white-space: pre-wrap; margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; }
.scores { font-size: .82em; color: #555; margin-top: .3em; }
.better { color: #1a7f37; font-weight: 600; } .worse { color: #c62828; font-weight: 600; }
.failed { color: #c62828; font-style: italic; }
img.sample { max-width: 320px; max-height: 320px; } img.thumb { max-width: 96px; max-height: 96px; display: block; }
.muted { color: #666; font-size: .9em; }
"""


def write_report(
    results: EvalResults, output_dir: str, metrics_csv: str | None = None, *, embed: bool = False,
    title: str | None = None, max_samples: int | None = None,
) -> str:
    """Write ``<output_dir>/report.html`` (and its figures) for ``results``; return the page's path.

    Args:
        metrics_csv: a Lightning CSVLogger ``metrics.csv`` whose training curves the page shows too.
        embed: put every image into the page as a data URI instead of referencing the files.
        title: the page's heading; ``results.details["title"]`` or a default when left out.
        max_samples: show only the first this many prompts' outputs (all by default).
    """
    assets = _Assets(output_dir, embed)
    title = title or str(results.details.get("title", "Evaluation report"))
    body = [f"<h1>{_esc(title)}</h1>", _details(results)]
    body += ["<h2>Scores</h2>", _score_table(results)]
    win_png = plots.win_rates(
        [(s.name, s.win_rate, s.ci_low, s.ci_high) for s in results.scores], assets.figure_path("win_rates.png")
    )
    if win_png:
        body.append(_figures(assets, [("win rates", win_png)]))
    distributions = []
    for s in results.scores:
        png = plots.score_distribution(
            s.name, s.unit, s.base, s.aligned, assets.figure_path(f"scores_{plots.slug(s.name)}.png")
        )
        if png:
            distributions.append((s.name, png))
    if distributions:
        body += ["<h2>Per-prompt scores</h2>", _figures(assets, distributions)]
    if metrics_csv:
        body.append(_training_section(assets, metrics_csv))
    body.append(_samples_section(assets, results, max_samples))
    return _write_page(output_dir, title, body)


def write_training_report(metrics_csv: str, output_dir: str, *, embed: bool = False, title: str | None = None) -> str:
    """A page of a finished run's training curves and its metrics' first and last values, from its
    ``metrics.csv`` alone; returns the page's path."""
    assets = _Assets(output_dir, embed)
    title = title or f"Training report: {os.path.dirname(os.path.abspath(metrics_csv))}"
    body = [f"<h1>{_esc(title)}</h1>", _training_section(assets, metrics_csv)]
    return _write_page(output_dir, title, body)


# ------------------------------------------------------------------ sections
def _details(results: EvalResults) -> str:
    rows = [("modality", results.modality), ("prompts", len(results.prompts))]
    failures = ", ".join(f"{model} {n}" for model, n in results.failures.items()) or "none"
    rows.append(("failed generations", failures))
    rows += [(k, v) for k, v in results.details.items() if k != "title"]
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="details">{cells}</table>'


def _score_table(results: EvalResults) -> str:
    if not results.scores:
        return '<p class="muted">No scorer was run.</p>'
    head = (
        "<tr><th>scorer</th><th>unit</th><th>better</th><th>base mean</th><th>aligned mean</th>"
        "<th>aligned win rate [95% CI]</th><th>prompts scored</th>"
        + "".join(f"<th>failed: {_esc(m)}</th>" for m in results.failures)
        + "</tr>"
    )
    rows = []
    for s in results.scores:
        scored = sum(b is not None and a is not None for b, a in zip(s.base, s.aligned))
        rows.append(
            f"<tr><td>{_esc(s.name)}</td><td>{_esc(s.unit)}</td><td>{'higher' if s.higher_is_better else 'lower'}</td>"
            f'<td class="num">{_num(s.mean_base)}</td><td class="num">{_num(s.mean_aligned)}</td>'
            f'<td class="num">{_win(s)}</td><td class="num">{scored} / {len(s.base)}</td>'
            + "".join(f'<td class="num">{n}</td>' for n in results.failures.values())
            + "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _training_section(assets: _Assets, metrics_csv: str) -> str:
    curves = plots.training_curves(metrics_csv, assets.figures_dir)
    if not curves:
        return f'<h2>Training</h2><p class="muted">No curves to draw in {_esc(metrics_csv)}.</p>'
    series = plots.read_metrics_csv(metrics_csv)
    rows = []
    for _, members in plots.curve_groups(list(series)):
        for name in members:
            (s0, v0), (s1, v1) = series[name][0], series[name][-1]
            rows.append(
                f'<tr><td>{_esc(name)}</td><td class="num">{_num(v0)} <span class="muted">(step {s0})</span></td>'
                f'<td class="num">{_num(v1)} <span class="muted">(step {s1})</span></td></tr>'
            )
    table = f"<table><tr><th>metric</th><th>first</th><th>last</th></tr>{''.join(rows)}</table>"
    note = f'<p class="muted">From {_esc(metrics_csv)}.</p>'
    return f"<h2>Training</h2>{note}{_figures(assets, curves)}{table}"


def _samples_section(assets: _Assets, results: EvalResults, max_samples: int | None) -> str:
    n = len(results.prompts) if max_samples is None else min(max_samples, len(results.prompts))
    heading = "Before / after" if results.modality == "text_to_image" else "Answers"
    parts = [f"<h2>{heading}</h2>"]
    if n < len(results.prompts):
        parts.append(f'<p class="muted">The first {n} of {len(results.prompts)} prompts.</p>')
    if results.modality == "text_to_image":
        grid = plots.before_after_grid(
            [_prompt_text(p) for p in results.prompts[:8]], results.base_outputs[:8], results.aligned_outputs[:8],
            assets.figure_path("before_after.png"),
        )
        if grid:
            rel = _esc(os.path.relpath(grid, assets.root).replace(os.sep, "/"))
            parts.append(f'<p class="muted">The first prompts as one figure: <a href="{rel}">{rel}</a></p>')
    rows = []
    for i in range(n):
        prompt = f"<pre>{_esc(_prompt_text(results.prompts[i]))}</pre>"
        if results.conditions is not None:
            prompt += "".join(
                f'<img class="thumb" src="{assets.image(c, f"condition_{i:04d}_{j}", thumb=True)}" alt="condition">'
                for j, c in enumerate(results.conditions[i] or [])
            )
        cells = [_output_cell(assets, results, side, i) for side in ("base", "aligned")]
        rows.append(f'<tr><td class="num">{i}</td><td>{prompt}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>')
    parts.append(f"<table><tr><th>#</th><th>prompt</th><th>base</th><th>aligned</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _output_cell(assets: _Assets, results: EvalResults, side: str, i: int) -> str:
    output = (results.base_outputs if side == "base" else results.aligned_outputs)[i]
    if output is None:
        body = '<span class="failed">generation failed</span>'
    elif isinstance(output, tuple) and len(output) == 2:  # (waveform, sample_rate): speech
        body = f'<audio controls src="{_wav_data_uri(*output)}"></audio>'
    elif hasattr(output, "save") and hasattr(output, "size"):  # a PIL image
        body = f'<img class="sample" src="{assets.image(output, f"{side}_{i:04d}")}" alt="{side} sample {i}">'
    else:
        body = f"<pre>{_esc(output)}</pre>"
    scores = []
    for s in results.scores:
        b, a = (s.base[i] if i < len(s.base) else None), (s.aligned[i] if i < len(s.aligned) else None)
        mine, other = (b, a) if side == "base" else (a, b)
        css = ""
        if side == "aligned" and mine is not None and other is not None and mine != other:
            css = "better" if (mine > other) == s.higher_is_better else "worse"
        scores.append(f'{_esc(s.name)} <span class="{css}">{_num(mine)}</span>')
    return body + (f'<div class="scores">{" · ".join(scores)}</div>' if scores else "")


def _figures(assets: _Assets, figures: list[tuple[str, str]]) -> str:
    imgs = "".join(f'<img src="{assets.file(path)}" alt="{_esc(title)}">' for title, path in figures)
    return f'<div class="figures">{imgs}</div>'


def _write_page(output_dir: str, title: str, body: list[str]) -> str:
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    path = os.path.join(output_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


# ------------------------------------------------------------------ assets and formatting
class _Assets:
    """Where the page's images go: PNG files under ``figures/`` referenced relatively, or data URIs."""

    def __init__(self, root: str, embed: bool) -> None:
        self.root, self.embed = root, embed
        self.figures_dir = os.path.join(root, "figures")
        os.makedirs(self.figures_dir, exist_ok=True)

    def figure_path(self, name: str) -> str:
        return os.path.join(self.figures_dir, name)

    def file(self, path: str) -> str:
        if self.embed:
            with open(path, "rb") as f:
                return _data_uri(f.read(), "image/png")
        return html.escape(os.path.relpath(path, self.root).replace(os.sep, "/"))

    def image(self, image, name: str, thumb: bool = False) -> str:
        """A PIL image saved as ``figures/samples/<name>.png`` (full size: papers take these)."""
        if thumb:
            image = image.copy()
            image.thumbnail((192, 192))
        path = os.path.join(self.figures_dir, "samples", f"{name}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, format="PNG")
        return self.file(path)


def _wav_data_uri(waveform, sample_rate: int) -> str:
    """A 16-bit PCM WAV of ``waveform`` (``[T]`` or ``[channels, T]``, floats in [-1, 1]) as a data URI."""
    import numpy as np

    if hasattr(waveform, "detach"):
        waveform = waveform.detach().float().cpu().numpy()
    samples = np.asarray(waveform, dtype=np.float32)
    samples = samples[None] if samples.ndim == 1 else samples
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").T  # frames x channels, interleaved
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(samples.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return _data_uri(buffer.getvalue(), "audio/wav")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _prompt_text(prompt) -> str:
    """A prompt as plain text: a string as is, chat messages as ``role: text`` lines (images as ``<image>``)."""
    return messages_text(prompt, roles=True, placeholders=True)


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    magnitude = abs(x)
    return f"{x:.1f}" if magnitude >= 100 else f"{x:.2f}" if magnitude >= 10 else f"{x:.3f}" if magnitude >= 1e-3 or x == 0 else f"{x:.2e}"


def _win(s: ScorerResult) -> str:
    if s.win_rate is None:
        return "–"
    interval = f" [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]" if s.ci_low is not None and s.ci_high is not None else ""
    return f"{100 * s.win_rate:.1f}%{interval}"


def _esc(x) -> str:
    return html.escape(str(x))


__all__ = ["write_report", "write_training_report"]
