"""Means and the aligned-over-base win rate of one scorer, with a 95% bootstrap interval over prompts."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alignsuite.evaluation.results import ScorerResult


def outcomes(base: Sequence[float | None], aligned: Sequence[float | None], higher_is_better: bool = True) -> np.ndarray:
    """Per prompt scored by both: 1 where the aligned model wins, 0 where it loses, 1/2 on a tie (lower
    wins when ``higher_is_better`` is False). Prompts either model has no score for are left out."""
    pairs = [(b, a) for b, a in zip(base, aligned) if b is not None and a is not None]
    if not pairs:
        return np.zeros(0)
    b, a = np.asarray(pairs, dtype=np.float64).T
    if not higher_is_better:
        a, b = -a, -b
    return (a > b) + 0.5 * (a == b)


def bootstrap_interval(values: np.ndarray, num_resamples: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values``: ``num_resamples`` resamples of as many
    prompts, drawn with replacement by ``numpy.random.default_rng(seed).integers``; the interval's ends are
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (numpy's default, linear) of the
    resampled means."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(num_resamples, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(result: ScorerResult, num_resamples: int = 2000, seed: int = 0) -> ScorerResult:
    """Fill ``result``'s means (each over the prompts it scored), win rate and interval (over the prompts
    both scored); ``None`` where nothing was scored."""
    result.mean_base, result.mean_aligned = _mean(result.base), _mean(result.aligned)
    wins = outcomes(result.base, result.aligned, result.higher_is_better)
    if len(wins):
        result.win_rate = float(wins.mean())
        result.ci_low, result.ci_high = bootstrap_interval(wins, num_resamples, seed)
    else:
        result.win_rate = result.ci_low = result.ci_high = None
    return result


__all__ = ["bootstrap_interval", "outcomes", "summarise"]
