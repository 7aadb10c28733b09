"""The evaluation report: one HTML page that opens from disk (no server, no scripts) with the settings, the
score table, the win rates with their intervals, the held-out pair accuracy apart from them, the training
curves, the per-prompt score distributions and the samples side by side (an answer table for text and
vision-language models, a before/after grid for images, audio players for speech).

Paths are shown by their place in the run folder (the report folder's parent), or by their name: the page
reads the same on another machine.

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
img.sample { height: auto; } img.thumb { height: auto; display: block; margin-top: .3em; }
img.pixelated { image-rendering: pixelated; image-rendering: crisp-edges; }
.muted { color: #666; font-size: .9em; }
"""
SAMPLE_WIDTH, THUMB_WIDTH = 256, 128  # display widths in CSS pixels; a smaller image is scaled up, pixel for pixel
WIN_RATE_NOTE = (
    "Win rate: the share of prompts on which the aligned model's score beats the base model's (for error rates a"
    " lower score wins); ties count as half a win, so 50% is no change. In brackets: its 95% bootstrap interval"
    " over prompts."
)
PAIRS_NOTE = (
    "Measured on the data's held-out preference pairs, not on the generations: per pair 1 when the aligned model's"
    " implicit reward (its log-likelihood ratio to the base model) ranks the chosen answer above the rejected one, 0"
    " when below, 1/2 on a tie. This is not a win rate: the base model is its own reference, so it scores 50% by"
    " construction."
)
DETAIL_LABELS = {  # evaluate's details (results.json keys) as the page names them; None: shown elsewhere
    "base": "base model", "aligned": "aligned model", "prompts": "prompt set", "num_prompts": None, "seed": "seed",
    "generation_kwargs": "generation", "errors": "first errors", "output_dir": None, "title": None,
}


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
    body = [f"<h1>{_esc(title)}</h1>", _details(results, assets.run_dir)]
    generation_scores = [s for s in results.scores if s.per == "prompt"]
    body += ["<h2>Scores</h2>", _score_table(results, generation_scores)]
    if generation_scores:
        body.append(f'<p class="muted">{_esc(WIN_RATE_NOTE)}</p>')
    win_png = plots.win_rates(
        [(s.name, s.win_rate, s.ci_low, s.ci_high) for s in generation_scores], assets.figure_path("win_rates.png")
    )
    if win_png:
        body.append(_figures(assets, [("win rates", win_png)]))
    pair_scores = [s for s in results.scores if s.per == "pair"]
    if pair_scores:
        body.append(_pairs_section(pair_scores))
    distributions = []
    for s in generation_scores:
        png = plots.score_distribution(
            s.name, s.unit, s.base, s.aligned, assets.figure_path(f"scores_{plots.slug(s.name)}.png")
        )
        if png:
            distributions.append((s.name, png))
    if distributions:
        body += ["<h2>Per-prompt scores</h2>", _figures(assets, distributions)]
    if metrics_csv:
        body.append(_training_section(assets, metrics_csv))
    body.append(_samples_section(assets, results, generation_scores, max_samples))
    return _write_page(output_dir, title, body)


def write_training_report(metrics_csv: str, output_dir: str, *, embed: bool = False, title: str | None = None) -> str:
    """A page of a finished run's training curves and its metrics' first and last values, from its
    ``metrics.csv`` alone; returns the page's path."""
    assets = _Assets(output_dir, embed)
    run = os.path.dirname(os.path.abspath(metrics_csv))
    title = title or f"Training report: {os.path.basename(os.path.dirname(run))}/{os.path.basename(run)}"
    body = [f"<h1>{_esc(title)}</h1>", _training_section(assets, metrics_csv)]
    return _write_page(output_dir, title, body)


# ------------------------------------------------------------------ sections
def _details(results: EvalResults, run_dir: str) -> str:
    """The settings as ``label | value`` rows: evaluate's keys by their labels, values as YAML-like text."""
    errors = results.details.get("errors")
    rows = [("modality", results.modality)]
    for key, value in results.details.items():
        label = DETAIL_LABELS.get(key, key)
        if label and key != "errors":
            rows.append((label, value))
        if key == "prompts":  # the prompt set, then how many of its prompts were evaluated
            rows.append(("prompts", len(results.prompts)))
    if "prompts" not in results.details:
        rows.insert(1, ("prompts", len(results.prompts)))
    failures = ", ".join(f"{model} {n}" for model, n in results.failures.items()) or "none"
    rows.append(("failed generations", failures))
    if errors:
        rows.append((DETAIL_LABELS["errors"], errors))
    cells = "".join(f"<tr><td>{_esc(k)}</td><td>{_setting(v, run_dir)}</td></tr>" for k, v in rows)
    return f'<table class="details">{cells}</table>'


def _pairs_section(scores: list[ScorerResult]) -> str:
    """Scorers of held-out preference pairs (the implicit-reward accuracy): their accuracy and its interval, with
    what it measures; apart from the win rates, whose base is the other model's generations."""
    rows = []
    for s in scores:
        interval = f" [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]" if s.ci_low is not None and s.ci_high is not None else ""
        accuracy = "–" if s.mean_aligned is None else f"{100 * s.mean_aligned:.1f}%{interval}"
        rows.append(f"<tr><td>{_esc(s.name.replace('_', ' '))} on held-out pairs</td>"
                    f'<td class="num">{accuracy}</td><td class="num">{len(s.aligned)} pairs</td></tr>')
    head = "<tr><th>measure</th><th>aligned [95% CI]</th><th>scored</th></tr>"
    return (f"<h2>Held-out preference pairs</h2><table>{head}{''.join(rows)}</table>"
            f'<p class="muted">{_esc(PAIRS_NOTE)}</p>')


def _score_table(results: EvalResults, scores: list[ScorerResult]) -> str:
    if not scores:
        return '<p class="muted">No scorer of generations was run.</p>'
    head = (
        "<tr><th>scorer</th><th>unit</th><th>better</th><th>base mean</th><th>aligned mean</th>"
        "<th>aligned win rate [95% CI]</th><th>prompts scored</th>"
        + "".join(f"<th>failed: {_esc(m)}</th>" for m in results.failures)
        + "</tr>"
    )
    rows = []
    for s in scores:
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
    note = f'<p class="muted">From {_esc(_shown_path(os.path.abspath(metrics_csv), assets.run_dir))}.</p>'
    return f"<h2>Training</h2>{note}{_figures(assets, curves)}{table}"


def _samples_section(assets: _Assets, results: EvalResults, scores: list[ScorerResult], max_samples: int | None) -> str:
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
            parts.append(f'<p class="muted">The first prompts as one figure ({_esc(assets.shown(grid))}):</p>')
            parts.append(_figures(assets, [("before / after", grid)]))
    rows = []
    for i in range(n):
        prompt = f"<pre>{_esc(_prompt_text(results.prompts[i]))}</pre>"
        if results.conditions is not None:
            prompt += "".join(
                assets.img_tag(c, f"condition_{i:04d}_{j}", "thumb", THUMB_WIDTH, "condition")
                for j, c in enumerate(results.conditions[i] or [])
            )
        cells = [_output_cell(assets, results, scores, side, i) for side in ("base", "aligned")]
        rows.append(f'<tr><td class="num">{i}</td><td>{prompt}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>')
    parts.append(f"<table><tr><th>#</th><th>prompt</th><th>base</th><th>aligned</th></tr>{''.join(rows)}</table>")
    return "".join(parts)


def _output_cell(assets: _Assets, results: EvalResults, scores: list[ScorerResult], side: str, i: int) -> str:
    output = (results.base_outputs if side == "base" else results.aligned_outputs)[i]
    heard = results.heard.get(side) or []
    body = output_body(assets, output, heard[i] if i < len(heard) else None, f"{side}_{i:04d}", SAMPLE_WIDTH,
                       f"{side} sample {i}")
    shown = []
    for s in scores:
        b, a = (s.base[i] if i < len(s.base) else None), (s.aligned[i] if i < len(s.aligned) else None)
        mine, other = (b, a) if side == "base" else (a, b)
        css = ""
        if side == "aligned" and mine is not None and other is not None and mine != other:
            css = "better" if (mine > other) == s.higher_is_better else "worse"
        shown.append(f'{_esc(s.name)} <span class="{css}">{_num(mine)}</span>')
    return body + (f'<div class="scores">{" · ".join(shown)}</div>' if shown else "")


def output_body(assets: _Assets, output, heard, name: str, width: int, alt: str) -> str:
    """One generation as the page shows it: text as text, an image as an image, speech as an audio player (a
    ``(waveform, sample_rate)`` pair, or ``heard``: the output vocoded, an ``alignsuite.data.audio.Audio``) with
    its length, or as its length in frames alone where it was not vocoded."""
    if output is None:
        return '<span class="failed">generation failed</span>'
    if isinstance(output, tuple) and len(output) == 2:  # (waveform, sample_rate): speech
        return f'<audio controls src="{_wav_data_uri(*output)}"></audio>'
    if hasattr(output, "save") and hasattr(output, "size"):  # a PIL image
        return assets.img_tag(output, name, "sample", width, alt)
    if hasattr(output, "shape") and len(output.shape):  # speech as codes or frames
        if heard is None:
            return f'<div class="muted">{int(output.shape[0])} frames</div>'
        return (f'<audio controls src="{_wav_data_uri(heard.waveform, heard.sampling_rate)}"></audio>'
                f'<div class="muted">{int(output.shape[0])} frames, {heard.seconds:.2f} s</div>')
    return f"<pre>{_esc(output)}</pre>"


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
        self.run_dir = os.path.dirname(os.path.abspath(root))
        self.figures_dir = os.path.join(root, "figures")
        os.makedirs(self.figures_dir, exist_ok=True)

    def figure_path(self, name: str) -> str:
        return os.path.join(self.figures_dir, name)

    def file(self, path: str) -> str:
        if self.embed:
            with open(path, "rb") as f:
                return _data_uri(f.read(), "image/png")
        return html.escape(os.path.relpath(path, self.root).replace(os.sep, "/"))

    def shown(self, path: str) -> str:
        """``path`` relative to the page, as a reader finds it beside ``report.html``."""
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def img_tag(self, image, name: str, css: str, width: int, alt: str) -> str:
        """An ``<img>`` of a PIL image at ``width`` CSS pixels; one narrower than that (a 16x16 toy sample) is
        scaled up pixel for pixel (``img.pixelated``) rather than blurred or left a speck."""
        if image.size[0] < width:
            css += " pixelated"
        src = self.image(image, name, thumb=css.startswith("thumb"))
        return f'<img class="{css}" width="{width}" src="{src}" alt="{_esc(alt)}">'

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


def _shown_path(path: str, run_dir: str) -> str:
    """An absolute path by its place in the run folder, or by its name when it lies outside; others as given."""
    if not os.path.isabs(path):
        return path
    rel = os.path.relpath(path, run_dir)
    return os.path.basename(path) if rel.startswith("..") else rel.replace(os.sep, "/")


def _setting(value, run_dir: str, nested: bool = False) -> str:
    """A setting as escaped text a reader takes in at a glance: ``key: value`` for a mapping (one per line at the
    top), lists joined by commas, ``true``/``false`` for booleans, paths by :func:`_shown_path`."""
    if isinstance(value, dict):
        if not value:
            return "defaults" if not nested else "–"
        items = [f"{_esc(k)}: {_setting(v, run_dir, True)}" for k, v in value.items()]
        many_lines = not nested and any(isinstance(v, (list, tuple, dict)) for v in value.values())
        return ("<br>" if many_lines else ", ").join(items)
    if isinstance(value, (list, tuple)):
        return "; ".join(_setting(v, run_dir, True) for v in value) or "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "–"
    return _esc(_shown_path(value, run_dir) if isinstance(value, str) else value)


__all__ = ["write_report", "write_training_report"]
