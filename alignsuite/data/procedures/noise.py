"""Simulated label noise: a seeded fraction of the pairs with chosen and rejected swapped, for robustness studies."""

from __future__ import annotations

import random

from alignsuite.data.procedures.base import Procedure, Report, Row, carry, get_field


class FlipPairs(Procedure):
    """Flip the preference label of a seeded fraction of the pairs: chosen and rejected swapped.

    Exactly ``round(fraction * n)`` of a split's ``n`` rows are flipped, drawn without replacement by a
    ``random.Random(seed)``: the same rows for the same input and settings. Each row keeps its place and gains a
    ``flipped`` column (1 for a flipped row, 0 otherwise), which batches carry, so a run can tell the noisy rows
    (say, how much weight a robust objective gives them). Score columns, where a row has both, follow the swap.
    Runs on the training rows only by default: the validation rows stay clean.

    Args:
        fraction: the share of rows flipped, in [0, 1].
        seed: seeds the draw of the flipped rows.
        chosen_field, rejected_field: the pair row's answers.
        score_chosen_field, score_rejected_field: score columns swapped with them when a row has both.
        splits: the splits it runs on.
    """

    extra_columns = ("flipped",)

    def __init__(self, fraction: float = 0.3, seed: int = 0, chosen_field: str = "chosen",
                 rejected_field: str = "rejected", score_chosen_field: str = "score_chosen",
                 score_rejected_field: str = "score_rejected", splits: tuple[str, ...] | list[str] = ("train",)) -> None:
        super().__init__(splits)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ValueError(f"FlipPairs.fraction must be a share of the rows in [0, 1], got {fraction!r}")
        self.fraction, self.seed = float(fraction), seed
        self.chosen_field, self.rejected_field = chosen_field, rejected_field
        self.score_chosen_field, self.score_rejected_field = score_chosen_field, score_rejected_field

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        flipped = set(random.Random(self.seed).sample(range(len(rows)), round(self.fraction * len(rows))))
        out = []
        for i, row in enumerate(rows):
            chosen = get_field(row, self.chosen_field, "an answer (the chosen side)")
            rejected = get_field(row, self.rejected_field, "an answer (the rejected side)")
            if i not in flipped:
                out.append(carry(row, flipped=0.0))
                continue
            swap = {self.chosen_field: rejected, self.rejected_field: chosen}
            if self.score_chosen_field in row and self.score_rejected_field in row:
                swap[self.score_chosen_field] = row[self.score_rejected_field]
                swap[self.score_rejected_field] = row[self.score_chosen_field]
            out.append(carry(row, **swap, flipped=1.0))
        report.count("flipped", len(flipped))
        return out


__all__ = ["FlipPairs"]
