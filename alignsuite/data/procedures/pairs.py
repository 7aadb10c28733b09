"""Procedures that turn rows of K scored responses into pair rows: the "sweet spot" pair (best vs the response
nearest mu - 2 sigma), RSO's statistical rejection sampling, and Curry-DPO's curriculum of best-vs-each pairs.

Each reads ``prompt``/``responses``/``scores`` (the field names are settings) and writes ``prompt``/``chosen``/
``rejected`` with ``score_chosen``/``score_rejected`` and the row's other columns, which the text pair layout
reads like any pair file. Responses are text or chat messages, as the layout takes them.
"""

from __future__ import annotations

import math
import random

from alignsuite.data.procedures.base import ListProcedure, Report, Row, where


class SweetSpotPairs(ListProcedure):
    """"Finding the Sweet Spot: Preference Data Construction for Scaling Preference Optimization" (2025; from
    the paper, no code read): chosen = the highest-scored response, rejected = the response whose score is
    nearest ``mu - sigmas x sigma``, with ``mu`` and ``sigma`` the mean and population standard deviation of the
    row's finite scores (not the minimum, which degrades as K grows).

    Ties: the best is the earliest of the highest; the rejected is the nearest, then the lower-scored, then the
    earlier. A row whose scores are all equal, or whose nearest response scores as high as the best, is dropped
    and counted.

    Args:
        sigmas: how many standard deviations below the mean the rejected response is sought (2 in the paper).
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    def __init__(self, sigmas: float = 2.0, prompt_field: str = "prompt", responses_field: str = "responses",
                 scores_field: str = "scores", splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        self.sigmas = sigmas

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            valid = self.scored_responses(row, report)
            if valid is None:
                continue
            mu, variance = self.moments(valid)
            sigma = math.sqrt(variance)
            best = max(valid, key=lambda r: (r[2], -r[0]))
            if sigma == 0:
                report.drop(row, "all scores equal")
                continue
            target = mu - self.sigmas * sigma
            rejected = min((r for r in valid if r is not best), key=lambda r: (abs(r[2] - target), r[2], r[0]))
            if rejected[2] >= best[2]:
                report.drop(row, "the response nearest the target scores as high as the best")
                continue
            out.append(self.pair(row, best, rejected))
        return out


class RejectionSampling(ListProcedure):
    """RSO's statistical rejection sampling (Liu et al., ICLR 2024, arXiv 2309.06657; the paper's algorithm, no
    code read) over responses already sampled and scored: pairs drawn as if from the optimal policy
    ``pi* ~ pi_sft exp(r / beta)`` rather than from the sampler.

    Per row, rounds over the remaining responses (in list order): each is accepted with probability
    ``exp((r - r_max) / beta)``, ``r_max`` the highest remaining score (so the best remaining is always
    accepted), until ``num_samples`` are accepted (or all, with fewer). Accepted responses are paired in the
    order they were accepted (1st with 2nd, 3rd with 4th, ...), each pair labelled by score (the higher is
    chosen; a tied pair is dropped and counted). ``beta -> 0`` keeps the top scores, ``beta -> inf`` the first
    responses. The draws are seeded per row by ``seed`` and the row's file and row number, so they do not
    depend on which other rows are read.

    Args:
        num_samples: responses accepted per row (2: one pair).
        beta: the rejection temperature, in the scores' units (the paper ties it to the loss's beta; its value
            for a given reward model is a choice).
        seed: seed of the acceptance draws.
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    def __init__(self, num_samples: int = 2, beta: float = 0.5, seed: int = 0, prompt_field: str = "prompt",
                 responses_field: str = "responses", scores_field: str = "scores",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        if num_samples < 2:
            raise ValueError(f"RejectionSampling.num_samples must be at least 2 (one pair), got {num_samples}")
        if not beta > 0:
            raise ValueError(f"RejectionSampling.beta must be positive, got {beta}")
        self.num_samples, self.beta, self.seed = num_samples, beta, seed

    def accept(self, valid: list[tuple], rng: random.Random) -> list[tuple]:
        """The accepted responses of one row, in the order they were accepted."""
        remaining, accepted = list(valid), []
        wanted = min(self.num_samples, len(valid))
        while len(accepted) < wanted:
            top = max(r[2] for r in remaining)
            kept = []
            for r in remaining:
                if len(accepted) < wanted and rng.random() < math.exp((r[2] - top) / self.beta):
                    accepted.append(r)
                else:
                    kept.append(r)
            remaining = kept
        return accepted

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            valid = self.scored_responses(row, report)
            if valid is None:
                continue
            accepted = self.accept(valid, random.Random(f"rso-{self.seed}-{where(row)}"))
            report.count("responses accepted", len(accepted))
            for a, b in zip(accepted[0::2], accepted[1::2]):
                if a[2] == b[2]:
                    report.drop(row, "an accepted pair with equal scores")
                    continue
                out.append(self.pair(row, *((a, b) if a[2] > b[2] else (b, a))))
        return out


class CurryPairs(ListProcedure):
    """Curry-DPO's curriculum (Pattnaik et al. 2024, arXiv 2403.07230; the paper, no code read): from K rated
    responses, the best one paired with each of the others (``(R1, RK), ..., (R1, R2)``), ordered from easy to
    hard by the rating gap; training order is stage by stage, stage ``i`` holding the ``i``-th easiest pair of
    every prompt (prompts in their input order), so the data module keeps this order instead of shuffling.

    Adds ``stage`` (0 first) and ``gap`` (``score_chosen - score_rejected``). A response tied with the best
    gives no pair (counted). The paper also resets the reference to the model at the end of each stage: that
    is a callback's job at the ``stage`` boundaries, not this procedure's.

    Args:
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    orders_rows = True
    extra_columns = ("score_chosen", "score_rejected", "stage", "gap")

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        staged = []
        for position, row in enumerate(rows):
            valid = self.scored_responses(row, report)
            if valid is None:
                continue
            best = max(valid, key=lambda r: (r[2], -r[0]))
            others = sorted((r for r in valid if r is not best), key=lambda r: (r[2], r[0]))  # largest gap first
            tied = [r for r in others if r[2] == best[2]]
            if tied:
                report.count("pairs not made: a response tied with the best", len(tied))
            others = [r for r in others if r[2] < best[2]]
            if not others:
                report.drop(row, "every response tied with the best")
                continue
            for stage, r in enumerate(others):
                staged.append((stage, position, self.pair(row, best, r, stage=stage, gap=best[2] - r[2])))
        staged.sort(key=lambda t: (t[0], t[1]))
        for stage in sorted({s for s, _, _ in staged}):
            report.count(f"stage {stage} pairs", sum(1 for s, _, _ in staged if s == stage))
        report.reordered = "by stage (each prompt's pairs from the largest rating gap to the smallest)"
        return [row for _, _, row in staged]


__all__ = ["CurryPairs", "RejectionSampling", "SweetSpotPairs"]
