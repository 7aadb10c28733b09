"""What a judge's values are to the rules that build rows from them: a failed judgement (``None`` or NaN), a win
probability, a vote count, the votes several annotators' scores make, and the logistic that turns a score gap into
a win probability. The judges (:mod:`alignsuite.judges`) use the same definitions."""

from __future__ import annotations

import math
from typing import Any


def sigmoid(z: float) -> float:
    """``1 / (1 + exp(-z))`` without overflow at either end."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def failed(value: Any) -> bool:
    """A judgement that failed or was not made: ``None`` or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def probability(v: Any) -> float | None:
    """A win probability in [0, 1], or ``None`` for a missing (NaN) judgement."""
    if failed(v):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(v)
    return float(v)


def count(v: Any) -> float:
    """A vote count: a finite number >= 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(v)
    return float(v)


def count_votes(annotator_scores: list[list[float | None]]) -> list[list[float]]:
    """The K x K ``votes`` matrix from several annotators' scores of the same K responses (one list per
    annotator): ``votes[i][j]`` annotators scored ``i`` above ``j``; a tie counts a half to each; a pair one
    annotator left unscored (``None`` or NaN) gets nothing from that annotator."""
    k = len(annotator_scores[0]) if annotator_scores else 0
    if any(len(scores) != k for scores in annotator_scores):
        raise ValueError(f"every annotator must score the same {k} responses, got lists of lengths "
                         f"{[len(s) for s in annotator_scores]}")
    votes = [[0.0] * k for _ in range(k)]
    for scores in annotator_scores:
        for i in range(k):
            for j in range(k):
                a, b = scores[i], scores[j]
                if i != j and not failed(a) and not failed(b):
                    votes[i][j] += 1.0 if a > b else 0.5 if a == b else 0.0
    return votes


__all__ = ["count", "count_votes", "failed", "probability", "sigmoid"]
