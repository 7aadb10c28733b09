"""Preference pairs from a model's own samples, for every backbone: sample K outputs per item, judge each
with a scorer, keep a best-vs-worst pair per item by a named rule, write the rows.

The steps are separate functions so that a modality's builder (:mod:`alignsuite.speech.pairs`, INTP's intra
pairs) or an online loop can use them: :func:`sample` (the seeded, chunked generation path,
:mod:`alignsuite.generation`), :func:`judge_samples` (any :class:`alignsuite.judging.Scorer`),
:func:`select_pairs` (a :class:`BestVsWorst` rule, or any object with its ``rank`` and ``why_dropped``) and
:func:`write_pairs`.

Writing never loses data: rows go to a temporary file renamed over the output only when every row is
written; an output that already holds rows, or the items file itself, is refused unless ``overwrite`` is
given; and a run that keeps no pair raises :class:`NoPairsError` with the counts (items, candidates, pairs
kept, dropped by which rule) instead of writing an empty file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lightning.pytorch.utilities import rank_zero_info

from alignsuite.data.errors import DataError
from alignsuite.generation import generate_chunked
from alignsuite.judging import Scorer


class PairBuildingError(ValueError):
    """A ``build_pairs`` run that cannot or must not write (reported on the command line as one line)."""


class NoPairsError(PairBuildingError):
    """No item gave a pair: nothing is written, and the counts say which rule dropped what."""


class OutputExistsError(PairBuildingError):
    """The output holds rows (or is the items file) and ``overwrite`` was not given."""


# ------------------------------------------------------------------------------------------ candidates and rules
@dataclass
class Candidate:
    """One sampled output of an item and its judged values (``scores[name]``)."""

    output: Any
    scores: dict[str, float]
    sample: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class BestVsWorst:
    """The best candidate is chosen over the worst by ``score`` (the judge's value of that name), kept only
    when it says something: the chosen beats the rejected by more than ``min_margin``, and the chosen's value
    is at least ``min_chosen`` (at most, for a lower-is-better score). Ties are broken by the earlier sample.

    Args:
        score: the judged value that ranks the candidates.
        higher_is_better: the direction of ``score`` (False for an error rate).
        min_margin: keep a pair only if the values differ by more than this.
        min_chosen: keep a pair only if the chosen is at least this good (``None``: no bound).
    """

    score: str = "reward"
    higher_is_better: bool = True
    min_margin: float = 0.0
    min_chosen: float | None = None

    def value(self, candidate: Candidate) -> float:
        return candidate.scores[self.score] if self.higher_is_better else -candidate.scores[self.score]

    def rank(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Best first; a candidate without a value (a failed judgement) is left out."""
        valid = [c for c in candidates if c.scores.get(self.score) is not None and not math.isnan(c.scores[self.score])]
        return sorted(valid, key=lambda c: (-self.value(c), c.sample))

    def why_dropped(self, best: Candidate, worst: Candidate) -> str | None:
        if self.min_chosen is not None:
            good = self.value(best) >= (self.min_chosen if self.higher_is_better else -self.min_chosen)
            if not good:
                return "min_chosen"
        gap = self.value(best) - self.value(worst)
        if gap == 0:
            return "tie"
        return None if gap > self.min_margin else "min_margin"


def pick(candidates: Sequence[Candidate], rule) -> tuple[tuple[Any, Any] | None, str | None]:
    """``((chosen, rejected), None)``, or ``(None, the reason it was dropped)``: ``no_candidate`` when nothing
    could be ranked, ``single_candidate`` when one, else the rule's own reason (``tie``, a threshold's name)."""
    ranked = rule.rank(candidates)
    if not ranked:
        return None, "no_candidate"
    best, worst = ranked[0], ranked[-1]
    if best is worst:
        return None, "single_candidate"
    reason = rule.why_dropped(best, worst)
    return (None, reason) if reason else ((best, worst), None)


def select_pairs(candidates: Sequence[Sequence[Any]], rule) -> tuple[list[tuple[int, Any, Any]], Counter]:
    """``([(item index, chosen, rejected)], {reason: items dropped})`` over every item's candidates."""
    kept, dropped = [], Counter()
    for i, cands in enumerate(candidates):
        pair, reason = pick(cands, rule)
        if pair is None:
            dropped[reason] += 1
        else:
            kept.append((i, *pair))
    return kept, dropped


def counts(num_items: int, num_candidates: int, num_pairs: int, dropped: Counter | dict) -> dict:
    """What a build did, for its log line and its error: items, candidates, pairs kept, dropped by rule."""
    return {"items": num_items, "candidates": num_candidates, "pairs": num_pairs, "dropped": dict(dropped)}


def describe(stats: dict) -> str:
    dropped = ", ".join(f"{n} by {why}" for why, n in sorted(stats.get("dropped", {}).items())) or "none"
    return (f"{stats['items']} items, {stats['candidates']} candidates, {stats['pairs']} pairs kept;"
            f" items dropped: {dropped}")


# ------------------------------------------------------------------------------------------ sampling and judging
def sample(generate: Callable, items: list[dict], num_samples: int, seed: int, batch_size: int,
           columns: Sequence[str] = (), generation_kwargs: dict | None = None, prompt_key: str = "prompt") -> list[list]:
    """``num_samples`` outputs per item: draw ``j`` of the chunk starting at item ``s`` uses seed
    ``seed + 1_000_003 * j + s``, so that a run is repeatable and every candidate is its own draw. ``columns``
    are the item keys that condition generation (the backbone's ``generation_columns``)."""
    draws = [generate_chunked(generate, items, batch_size, seed + 1_000_003 * j, columns, generation_kwargs,
                              prompt_key=prompt_key, seed_step="offset")
             for j in range(num_samples)]
    return [list(row) for row in zip(*draws)]


def judge_samples(scorer: Scorer, items: list[dict], samples: list[list], prompt_key: str = "prompt",
                  candidate: Callable | None = None) -> list[list]:
    """Every sample judged by ``scorer`` (all named values) as a candidate: ``candidate(output, values,
    sample index)`` (a :class:`Candidate` by default; a modality's own, such as the speech builder's)."""
    make = candidate or (lambda output, values, j: Candidate(output, values, j))
    flat = [(i, j, s) for i, row in enumerate(samples) for j, s in enumerate(row)]
    rows = [items[i] for i, _, _ in flat]
    values = scorer.judge([r.get(prompt_key) for r in rows], [s for _, _, s in flat], None, rows)
    out: list[list] = [[] for _ in items]
    for (i, j, s), v in zip(flat, values):
        out[i].append(make(s, dict(v or {}), j))
    return out


def value_summary(candidates: Sequence[Sequence[Any]], value: Callable, name: str, higher_is_better: bool) -> dict:
    """The mean of ``value(candidate)`` over all candidates, and over the best and the worst of each item."""
    per_item = [[value(c) for c in cands] for cands in candidates if cands]
    flat = [v for vs in per_item for v in vs]
    best, worst = (max, min) if higher_is_better else (min, max)
    n = max(len(per_item), 1)
    return {f"mean_{name}": sum(flat) / max(len(flat), 1), f"best_{name}": sum(best(vs) for vs in per_item) / n,
            f"worst_{name}": sum(worst(vs) for vs in per_item) / n}


def build_pairs(backbone, items: list[dict], scorer: Scorer, num_samples: int = 4, rule=None, seed: int = 0,
                batch_size: int = 16, generation_kwargs: dict | None = None, prompt_key: str = "prompt",
                row: Callable | None = None, candidate: Callable | None = None,
                summarise: Callable | None = None) -> tuple[list[dict], dict]:
    """``(rows, counts)`` for any backbone: sample ``num_samples`` per item (the backbone's
    ``generation_columns`` of each item condition it), judge with ``scorer``, keep a pair per item by ``rule``
    (best vs worst by the scorer's main value by default). ``row(item, chosen, rejected)`` makes a written row
    (the item's prompt, the two outputs and their values by default); ``candidate`` makes a candidate from an
    output, its values and its sample index (see :func:`judge_samples`). Beside the counts, ``summarise
    (candidates)`` adds what it returns: by default the mean of the scorer's main value over all candidates,
    and over each item's best and worst (:func:`value_summary`)."""
    if num_samples < 2:
        raise ValueError(f"pairs.num_samples must be at least 2 to have a best and a worst, got {num_samples}")
    rule = rule or BestVsWorst(scorer.name, scorer.higher_is_better)
    samples = sample(backbone.generate, items, num_samples, seed, batch_size,
                     backbone.generation_columns, generation_kwargs, prompt_key)
    candidates = judge_samples(scorer, items, samples, prompt_key, candidate)
    kept, dropped = select_pairs(candidates, rule)
    make = row or default_row
    rows = [make(items[i], best, worst) for i, best, worst in kept]
    stats = counts(len(items), sum(map(len, candidates)), len(rows), dropped)
    if summarise is None:
        def summarise(cands):
            judged = [[c for c in row if c.scores.get(scorer.name) is not None] for row in cands]
            return value_summary(judged, lambda c: c.scores[scorer.name], scorer.name, scorer.higher_is_better)
    return rows, {**stats, **summarise(candidates)}


def default_row(item: dict, chosen: Candidate, rejected: Candidate, prompt_key: str = "prompt") -> dict:
    """``prompt``, ``chosen``, ``rejected`` (the outputs as they are: text for language models) and each side's
    judged numbers and text (``chosen_<value>``, ``rejected_<value>``)."""
    row = {"prompt": item.get(prompt_key), "chosen": chosen.output, "rejected": rejected.output}
    for name, value in chosen.scores.items():
        if value is None or isinstance(value, (int, float, str)):
            row[f"chosen_{name}"], row[f"rejected_{name}"] = value, rejected.scores.get(name)
    return row


# ------------------------------------------------------------------------------------------ the command
def load_items(path: str, prompt_key: str = "prompt") -> list[dict]:
    """Prompts to sample from: a ``.txt`` file (one per line) or ``.jsonl``/``.json`` rows holding
    ``prompt_key`` (and any columns the backbone's generation or the judge reads)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs.items: {path!r} does not exist (expected .txt, .jsonl or .json)")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".txt"):
            rows = [{prompt_key: line.strip()} for line in f if line.strip()]
        elif path.endswith(".json"):
            rows = json.load(f)
        else:
            rows = []
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(path, line=i + 1, expected="one JSON object per line", problem=str(error)) from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get(prompt_key) in (None, ""):
            raise DataError(path, line=i + 1, expected=f"a row with a non-empty {prompt_key!r}", got=row)
    if not rows:
        raise DataError(path, problem="no items: nothing to sample")
    return rows


@dataclass
class PairBuilding:
    """The ``build_pairs`` command's settings (the ``pairs`` section), for any backbone.

    Args:
        items: prompts: ``.txt`` (one per line) or ``.jsonl``/``.json`` rows with ``prompt`` (and the columns
            the backbone's generation reads, its ``generation_columns``).
        output: the ``.jsonl`` file the pairs are written to (atomically, and only when at least one pair is
            kept: a run that keeps none fails with the counts and leaves an earlier file as it was).
        judge: the scorer that ranks the candidates (any ``alignsuite.judging.Scorer``: a reward model, an
            image scorer, a toy world's reward ...).
        num_samples: candidates sampled per prompt.
        min_margin: keep a pair only if the judge's values of chosen and rejected differ by more than this.
        min_chosen: keep a pair only if the chosen's value is at least this good (``None``: no bound).
        seed: seed of the samples.
        batch_size: prompts generated at once.
        generation_kwargs: passed to the backbone's ``generate``.
        overwrite: replace an output that already holds rows, or is the items file (refused otherwise).
    """

    items: str
    output: str
    judge: Scorer | None = None
    num_samples: int = 4
    min_margin: float = 0.0
    min_chosen: float | None = None
    seed: int = 0
    batch_size: int = 16
    generation_kwargs: dict = field(default_factory=dict)
    overwrite: bool = False

    def run(self, backbone) -> dict:
        """Build and write the pairs: best vs worst by the judge's main value."""
        if self.judge is None:
            raise PairBuildingError("pairs.judge: give the scorer that ranks the candidates (a class_path), or"
                                    " pairs.asr for a text-to-speech model")
        check_output(self.output, self.items, self.overwrite)
        rule = BestVsWorst(self.judge.name, self.judge.higher_is_better, self.min_margin, self.min_chosen)
        rows, stats = build_pairs(backbone, load_items(self.items), self.judge, self.num_samples, rule, self.seed,
                                  self.batch_size, self.generation_kwargs)
        write_pairs(self.output, rows, stats)
        rank_zero_info(f"wrote {stats['pairs']} pairs to {self.output}: {describe(stats)}")
        return stats


# ------------------------------------------------------------------------------------------ writing
def check_output(output: str, items: str | None = None, overwrite: bool = False) -> None:
    """Refuse, before any sampling, to write over the items file or over an output that holds rows, unless
    ``overwrite``."""
    if overwrite:
        return
    if items is not None and os.path.exists(output) and os.path.samefile(output, items):
        raise OutputExistsError(f"pairs.output {output} is the items file (pairs.items): writing the pairs would"
                                " replace the texts they are built from; give another output, or pairs.overwrite"
                                " true to replace it")
    if os.path.isfile(output) and os.path.getsize(output) > 0:
        raise OutputExistsError(f"pairs.output {output} already holds rows; give another output, or pairs.overwrite"
                                " true to replace it")


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically: a crash leaves the old file (or none), never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pairs-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_pairs(path: str, rows: list[dict], stats: dict) -> None:
    """The rows, atomically; none kept is an error that names the counts, and the old file stays as it was."""
    if not rows:
        raise NoPairsError(f"no pair kept, nothing written to {path} (an earlier file there is left as it was):"
                           f" {describe(stats)}")
    write_jsonl(path, rows)


__all__ = ["BestVsWorst", "Candidate", "NoPairsError", "OutputExistsError", "PairBuilding", "PairBuildingError", "build_pairs", "load_items", "check_output", "counts",
           "default_row", "describe", "judge_samples", "pick", "sample", "select_pairs", "value_summary", "write_jsonl",
           "write_pairs"]
