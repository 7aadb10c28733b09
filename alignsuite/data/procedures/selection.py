"""Procedures that keep some rows and drop the rest: Selective DPO (the easiest rows, easy to hard) and AIR's
pair selection (stable instructions, moderate margins, high scores)."""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

from alignsuite.data.procedures.base import ListProcedure, Procedure, Report, Row, as_score, carry, get_field


@runtime_checkable
class DifficultyScorer(Protocol):
    """Computes one difficulty per pair row (higher = harder), for `SelectiveDPO`. A model-based scorer
    lives above the data layer (``alignsuite.difficulty.HeldOutDPOLoss``) and is named in the recipe."""

    def identity(self) -> dict:
        """What its values depend on (the models' identity and the settings), for the cache key."""

    def __call__(self, rows: list[dict]) -> list[float]:
        """One difficulty per row of ``rows`` (raw pair rows, as read)."""


class SelectiveDPO(Procedure):
    """Selective DPO (Gao et al. 2025, arXiv 2502.09650): keep the easiest ``fraction`` of the rows and train on
    them from easy to hard, without shuffling.

    A row's difficulty is its held-out DPO loss: in the official code the mean, over 3 runs x 5 evaluation
    points, of the loss of a DPO model trained on the *other* half of the data (`glorgao/SelectiveDPO`,
    ``curriculum-lens``). It is read from the column ``difficulty_field`` (computed elsewhere, e.g. those
    runs), or computed by ``difficulty``, a scorer such as ``alignsuite.difficulty.HeldOutDPOLoss`` (the
    held-out DPO loss under given models). Rows are sorted by ascending difficulty (ties keep their input
    order) and the first ``floor(fraction x rows)`` are kept (at least one). A row whose difficulty is missing
    or NaN is dropped and counted. The output carries a ``difficulty`` column. It runs on the training rows
    only by default: validation keeps every row.

    Args:
        fraction: share of the rows kept, the easiest (0.5 in the paper; 0.6 for Gemma-2-9B).
        difficulty_field: column holding each row's difficulty, read when no ``difficulty`` scorer is given.
        difficulty: a scorer computing the difficulties (overrides ``difficulty_field``).
        splits: the splits it runs on.
    """

    orders_rows = True
    extra_columns = ("difficulty",)

    def __init__(self, fraction: float = 0.5, difficulty_field: str = "difficulty", difficulty: DifficultyScorer | None = None,
                 splits: tuple[str, ...] | list[str] = ("train",)) -> None:
        super().__init__(splits)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"SelectiveDPO.fraction must be in (0, 1], got {fraction}")
        if difficulty is not None and not isinstance(difficulty, DifficultyScorer):
            raise TypeError(f"SelectiveDPO.difficulty must be a scorer with identity() and __call__(rows), got {difficulty!r}")
        self.fraction, self.difficulty_field, self.difficulty = fraction, difficulty_field, difficulty

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        if self.difficulty is not None:
            values = list(self.difficulty(rows))
            if len(values) != len(rows):
                raise ValueError(f"the difficulty scorer gave {len(values)} values for {len(rows)} rows")
            report.count(f"difficulty computed by {type(self.difficulty).__name__}", len(rows))
        else:
            values = [get_field(row, self.difficulty_field, "a difficulty (a number)") for row in rows]
        valid = []
        for i, (row, value) in enumerate(zip(rows, values)):
            d = as_score(value)
            if d is None:
                report.drop(row, f"NaN or missing value in {self.difficulty_field!r}")
            else:
                valid.append((d, i))
        valid.sort()  # by difficulty, then input position
        keep = max(1, math.floor(self.fraction * len(valid))) if valid else 0
        if len(valid) > keep:
            report.count(f"dropped: harder than the easiest {self.fraction:g}", len(valid) - keep)
        report.reordered = "easy to hard (ascending difficulty)"
        return [carry(rows[i], difficulty=d) for d, i in valid[:keep]]


class AIRPairs(ListProcedure):
    """AIR's instruction and pair selection ("AIR: A Systematic Analysis of Annotations, Instructions, and
    Response Pairs in Preference Dataset", 2025; from the paper's findings, no code read), where it reduces to a filter over judged
    lists: keep an instruction whose responses' scores are stable (their variance at most ``max_variance``),
    then take the pair with a moderate margin (``min_margin <= s_chosen - s_rejected <= max_margin``) and the
    highest scores (the largest ``s_chosen + s_rejected``; ties to the earlier responses). The paper's
    annotation step (point-wise scoring by a judge with simple guidelines) is the judge's job, upstream.

    The paper gives no thresholds that could be read here: the defaults (a margin of at least 1 on the
    judge's scale, no upper bound, no variance filter) are this suite's choice; set them for your judge's
    scale. Rows with no pair in range are dropped and counted. Adds ``score_variance``.

    Args:
        max_variance: most variance (population) of a row's scores; null: no instruction filter.
        min_margin: least score margin of the pair kept.
        max_margin: most score margin of the pair kept; null: no upper bound.
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    extra_columns = ("score_chosen", "score_rejected", "score_variance")

    def __init__(self, max_variance: float | None = None, min_margin: float = 1.0, max_margin: float | None = None,
                 prompt_field: str = "prompt", responses_field: str = "responses", scores_field: str = "scores",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        if max_margin is not None and max_margin < min_margin:
            raise ValueError(f"AIRPairs.max_margin ({max_margin}) is below min_margin ({min_margin})")
        self.max_variance, self.min_margin, self.max_margin = max_variance, min_margin, max_margin

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            valid = self.scored_responses(row, report)
            if valid is None:
                continue
            mean, variance = self.moments(valid)
            if self.max_variance is not None and variance > self.max_variance:
                report.drop(row, "score variance above max_variance")
                continue
            best: Any = None
            for a in valid:
                for b in valid:
                    margin = a[2] - b[2]
                    if margin < self.min_margin or (self.max_margin is not None and margin > self.max_margin):
                        continue
                    if best is None or a[2] + b[2] > best[0][2] + best[1][2]:
                        best = (a, b)
            if best is None:
                report.drop(row, "no pair with a margin in range")
                continue
            out.append(self.pair(row, *best, score_variance=variance))
        return out


__all__ = ["AIRPairs", "DifficultyScorer", "SelectiveDPO"]
