"""Simulated label noise: a seeded fraction of the pairs with chosen and rejected swapped, for robustness studies."""

from __future__ import annotations

import random

from alignsuite.data.procedures.base import Procedure, Report, Row, carry, get_field


def _share(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"FlipPairs.{what} must be a share of the rows in [0, 1], got {value!r}")
    return float(value)


class FlipPairs(Procedure):
    """Flip the preference label of a seeded fraction of the pairs: chosen and rejected swapped.

    Exactly ``round(fraction * n)`` of a split's ``n`` rows are flipped, drawn without replacement by a
    ``random.Random(seed)``: the same rows for the same input and settings. Each row keeps its place and gains a
    ``flipped`` column (1 for a flipped row, 0 otherwise), which batches carry, so a run can tell the noisy rows
    (say, how much weight a robust objective gives them). Score columns, where a row has both, follow the swap.
    Runs on the training rows only by default: the validation rows stay clean.

    Several annotators of unequal reliability: ``annotator_rates`` gives one flip rate per annotator (and then
    replaces ``fraction``). The rows are dealt out to the annotators in a seeded random order, as evenly as the
    count allows (the first ``n mod K`` annotators get one row more), each row's annotator id ``0 .. K-1`` is
    written in the column ``annotator_column``, and exactly ``round(rate_k * n_k)`` of annotator ``k``'s ``n_k``
    rows are flipped. Rates of 0 only deal the annotators out: a validation split that must carry the column
    for an objective that reads it (``re_dpo``'s ``annotator_column``), with its labels clean.

    Args:
        fraction: the share of rows flipped, in [0, 1].
        seed: seeds the draw of the flipped rows (and of the annotators).
        chosen_field, rejected_field: the pair row's answers.
        score_chosen_field, score_rejected_field: score columns swapped with them when a row has both.
        splits: the splits it runs on.
        annotator_rates: one flip rate in [0, 1] per simulated annotator, or None for one ``fraction``.
        annotator_column: the column that holds each row's annotator id (with ``annotator_rates``).
    """

    extra_columns = ("flipped",)

    def __init__(self, fraction: float = 0.3, seed: int = 0, chosen_field: str = "chosen",
                 rejected_field: str = "rejected", score_chosen_field: str = "score_chosen",
                 score_rejected_field: str = "score_rejected", splits: tuple[str, ...] | list[str] = ("train",),
                 annotator_rates: list[float] | None = None, annotator_column: str = "annotator") -> None:
        super().__init__(splits)
        self.fraction, self.seed = _share(fraction, "fraction"), seed
        self.chosen_field, self.rejected_field = chosen_field, rejected_field
        self.score_chosen_field, self.score_rejected_field = score_chosen_field, score_rejected_field
        self.annotator_rates, self.annotator_column = None, annotator_column
        if annotator_rates is not None:
            if isinstance(annotator_rates, (str, bytes)) or not hasattr(annotator_rates, "__len__") or not annotator_rates:
                raise ValueError(f"FlipPairs.annotator_rates must list one flip rate per annotator, got {annotator_rates!r}")
            self.annotator_rates = [_share(r, f"annotator_rates[{k}]") for k, r in enumerate(annotator_rates)]
            if not isinstance(annotator_column, str) or not annotator_column:
                raise ValueError(f"FlipPairs.annotator_column must name a column, got {annotator_column!r}")
            self.extra_columns = ("flipped", annotator_column)

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        rng = random.Random(self.seed)
        annotator: dict[int, float] = {}
        if self.annotator_rates is None:
            flipped = set(rng.sample(range(len(rows)), round(self.fraction * len(rows))))
        else:
            order, flipped = rng.sample(range(len(rows)), len(rows)), set()
            for k, rate in enumerate(self.annotator_rates):
                mine = order[k::len(self.annotator_rates)]
                annotator.update((i, float(k)) for i in mine)
                flipped.update(rng.sample(mine, round(rate * len(mine))))
                report.count(f"flipped (annotator {k})", len(flipped & set(mine)))
        out = []
        for i, row in enumerate(rows):
            chosen = get_field(row, self.chosen_field, "an answer (the chosen side)")
            rejected = get_field(row, self.rejected_field, "an answer (the rejected side)")
            more = {self.annotator_column: annotator[i]} if annotator else {}
            if i not in flipped:
                out.append(carry(row, flipped=0.0, **more))
                continue
            swap = {self.chosen_field: rejected, self.rejected_field: chosen}
            if self.score_chosen_field in row and self.score_rejected_field in row:
                swap[self.score_chosen_field] = row[self.score_rejected_field]
                swap[self.score_rejected_field] = row[self.score_chosen_field]
            out.append(carry(row, **swap, flipped=1.0, **more))
        report.count("flipped", len(flipped))
        return out


__all__ = ["FlipPairs"]
