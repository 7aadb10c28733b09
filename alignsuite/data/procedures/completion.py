"""CURATRON-style completion: every pair of a prompt's responses labelled from a ranking fitted to the
comparisons that were made, including the pairs never compared and those whose comparisons were noisy."""

from __future__ import annotations

import math
from collections import Counter

import torch

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import Procedure, Report, Row, carry, get_field, origin


def btl_scores(k: int, comparisons: list[tuple[int, int]], l2: float, steps: int = 50) -> list[float]:
    """Bradley-Terry-Luce strengths ``theta`` of ``k`` items maximising
    ``sum_(w, l) log s(theta_w - theta_l) - l2 / 2 * |theta|^2`` over the ``(winner, loser)`` comparisons, by
    Newton's method (the objective is concave; strictly so with ``l2 > 0``, which keeps items that only ever
    win finite). With ``l2 = 0`` and two items, ``theta_0 - theta_1 = log(wins_0 / wins_1)``."""
    theta = torch.zeros(k, dtype=torch.float64)
    if not comparisons:
        return theta.tolist()
    w = torch.tensor([c[0] for c in comparisons])
    lo = torch.tensor([c[1] for c in comparisons])
    diff = torch.zeros(len(comparisons), k, dtype=torch.float64)
    diff[torch.arange(len(comparisons)), w] += 1.0
    diff[torch.arange(len(comparisons)), lo] -= 1.0
    for _ in range(steps):
        p = torch.sigmoid(diff @ theta)
        grad = diff.T @ (1 - p) - l2 * theta
        hess = -(diff.T * (p * (1 - p))) @ diff - l2 * torch.eye(k, dtype=torch.float64)
        # Without l2 the strengths are defined up to a shift: solve in the least-squares sense, then centre.
        step = torch.linalg.lstsq(hess, grad[:, None]).solution[:, 0]
        theta = theta - step
        theta = theta - theta.mean() if l2 == 0 else theta
        if step.abs().max() < 1e-12:
            break
    return theta.tolist()


class CuratronPairs(Procedure):
    """CURATRON's completion step ("CURATRON: Complete Robust Preference Data for Robust Alignment
    of Large Language Models", 2024; from the paper, no code read), reduced to a small algorithm: per prompt,
    fit Bradley-Terry-Luce strengths to the pairwise comparisons that were made (regularised maximum likelihood,
    `btl_scores`), then label every pair of responses by the fitted strengths: pairs never compared are
    completed, and a pair whose own comparisons mostly disagree with the fitted ranking is relabelled.

    What this is not: the paper's polynomial-time robust ranking with guarantees against adversarial flips
    (up to O(n) per response) and its low-rank completion; this fit is robust only as a majority over the
    other comparisons is. Say so when comparing with the paper.

    Input rows: ``prompt``, ``responses`` (K of them), ``comparisons`` (a list of ``[winner, loser]`` positions
    in ``responses``, repeats allowed: several annotators or judges). Output: one pair row per pair of
    responses whose strengths differ by more than ``min_gap``, the stronger chosen, with ``score_chosen``/
    ``score_rejected`` (the strengths), ``observed`` (how many comparisons the pair had) and ``flipped`` (1 when
    the fitted order disagrees with the majority of them). Rows with fewer than 2 responses or no comparison
    are dropped and counted; a comparison that is not two different positions in range is an error naming the
    file, row and field.

    Args:
        l2: the ridge on the strengths (0: plain maximum likelihood, infinite for a response that only wins).
        min_gap: least strength difference for a pair to be kept.
        prompt_field, responses_field, comparisons_field: the row's fields.
        splits: the splits it runs on.
    """

    extra_columns = ("score_chosen", "score_rejected", "observed", "flipped")

    def __init__(self, l2: float = 0.1, min_gap: float = 0.0, prompt_field: str = "prompt",
                 responses_field: str = "responses", comparisons_field: str = "comparisons",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(splits)
        if l2 < 0:
            raise ValueError(f"CuratronPairs.l2 must be >= 0, got {l2}")
        self.l2, self.min_gap = l2, min_gap
        self.prompt_field, self.responses_field, self.comparisons_field = prompt_field, responses_field, comparisons_field

    def _comparisons(self, row: Row, k: int) -> list[tuple[int, int]]:
        raw = get_field(row, self.comparisons_field, "a list of [winner, loser] response positions")
        if not isinstance(raw, list):
            raise DataError(*origin(row), self.comparisons_field, "a list of [winner, loser] response positions", raw)
        out = []
        for c in raw:
            ok = (isinstance(c, list) and len(c) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in c)
                  and c[0] != c[1] and all(0 <= i < k for i in c))
            if not ok:
                raise DataError(*origin(row), self.comparisons_field,
                                f"[winner, loser]: two different response positions in 0..{k - 1}", c)
            out.append((c[0], c[1]))
        return out

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            get_field(row, self.prompt_field, "a prompt (text or chat messages)")
            responses = get_field(row, self.responses_field, "a list of responses")
            if not isinstance(responses, list):
                raise DataError(*origin(row), self.responses_field, "a list of responses", responses)
            if len(responses) < 2:
                report.drop(row, "fewer than 2 responses")
                continue
            comparisons = self._comparisons(row, len(responses))
            if not comparisons:
                report.drop(row, "no comparisons")
                continue
            report.count("comparisons read", len(comparisons))
            theta = btl_scores(len(responses), comparisons, self.l2)
            votes = Counter(comparisons)
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    if math.isclose(theta[i], theta[j], abs_tol=1e-12) or abs(theta[i] - theta[j]) <= self.min_gap:
                        report.count("pairs not made: strengths within min_gap")
                        continue
                    a, b = (i, j) if theta[i] > theta[j] else (j, i)
                    agree, disagree = votes[(a, b)], votes[(b, a)]
                    observed = agree + disagree
                    report.count("pairs completed (never compared)" if observed == 0 else "pairs compared")
                    flipped = disagree > agree
                    if flipped:
                        report.count("pairs relabelled against their comparisons' majority")
                    out.append(carry(row, (self.responses_field, self.comparisons_field, self.prompt_field),
                                     prompt=row[self.prompt_field], chosen=responses[a], rejected=responses[b],
                                     score_chosen=theta[a], score_rejected=theta[b], observed=float(observed),
                                     flipped=float(flipped)))
        return out


__all__ = ["CuratronPairs", "btl_scores"]
