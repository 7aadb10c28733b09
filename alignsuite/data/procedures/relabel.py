"""Reward-augmented relabelling: every pair twice, conditioned on a target score, once in each order."""

from __future__ import annotations

from typing import Any, Literal

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import Procedure, Report, Row, as_score, carry, get_field, origin
from alignsuite.data.procedures.condition import place_condition

TARGET = ("You are an assistant that generates responses for the instruction while implicitly achieving the following"
          " target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\nOverall score: {score}.")


def score_text(score: float) -> str:
    """An integer score without decimals (``8``), any other as it is (``7.5``), as the official code prints it."""
    return str(int(score)) if float(score).is_integer() else str(score)


class RewardAugmented(Procedure):
    """Reward-augmented data (Zhang et al. 2024, arXiv 2410.08067; official code
    `shenao-zhang/reward-augmented-preference`, ``scripts/reward_augmentation.py``): condition each pair on a
    target score and train plain DPO on the doubled set.

    Pairs whose chosen scores below the rejected (by ``filter_chosen_field``/``filter_rejected_field``, the
    fine-grained averages in the official code; by the overall scores when they are not set) are dropped; ties
    are kept. Every kept pair then appears twice: first all pairs conditioned on the chosen's score in their
    order, then all pairs conditioned on the rejected's score with chosen and rejected swapped (the official
    code concatenates the two sets in that order). The condition is ``template`` with ``{score}`` filled in
    (an integer without decimals), as a system message first (``place: system``) or, the official "nosys"
    variant, prepended to the first user turn with a blank line (``place: user``). A text prompt becomes
    chat messages for ``system``. Rows whose chosen/rejected are whole conversations (no prompt column, or the
    prompt repeated in them) are conditioned in those conversations. The score columns follow the swap; the
    output carries ``target_score`` and ``swapped`` (1 for the swapped copy). Runs on the training rows only
    by default, as the official code does.

    Args:
        score_chosen_field: column of the chosen answer's overall score.
        score_rejected_field: column of the rejected answer's overall score.
        filter_chosen_field: column compared for the filter (chosen side); null: ``score_chosen_field``.
        filter_rejected_field: column compared for the filter (rejected side); null: ``score_rejected_field``.
        template: the condition, with ``{score}`` where the target score goes.
        place: ``system`` (a system message) or ``user`` (prepended to the first user message).
        prompt_field, chosen_field, rejected_field: the pair row's fields.
        splits: the splits it runs on.
    """

    extra_columns = ("target_score", "swapped")

    def __init__(self, score_chosen_field: str = "score_chosen", score_rejected_field: str = "score_rejected",
                 filter_chosen_field: str | None = None, filter_rejected_field: str | None = None,
                 template: str = TARGET, place: Literal["system", "user"] = "system", prompt_field: str = "prompt",
                 chosen_field: str = "chosen", rejected_field: str = "rejected",
                 splits: tuple[str, ...] | list[str] = ("train",)) -> None:
        super().__init__(splits)
        if place not in ("system", "user"):
            raise ValueError(f"RewardAugmented.place must be 'system' or 'user', got {place!r}")
        if "{score}" not in template:
            raise ValueError("RewardAugmented.template must contain {score}, where the target score goes")
        self.score_chosen_field, self.score_rejected_field = score_chosen_field, score_rejected_field
        self.filter_chosen_field, self.filter_rejected_field = filter_chosen_field, filter_rejected_field
        self.template, self.place = template, place
        self.prompt_field, self.chosen_field, self.rejected_field = prompt_field, chosen_field, rejected_field

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        kept = []
        for row in rows:
            scores = [as_score(get_field(row, f, "a score (a number)"))
                      for f in (self.score_chosen_field, self.score_rejected_field)]
            filters = [as_score(get_field(row, f or d, "a score (a number)")) for f, d in (
                (self.filter_chosen_field, self.score_chosen_field), (self.filter_rejected_field, self.score_rejected_field))]
            if None in scores or None in filters:
                report.drop(row, "a score is NaN or missing")
            elif filters[0] < filters[1]:
                report.drop(row, "the chosen scores below the rejected")
            else:
                kept.append((row, *scores))
        first = [self._conditioned(row, chosen, swap=False) for row, chosen, _ in kept]
        second = [self._conditioned(row, rejected, swap=True) for row, _, rejected in kept]
        report.count("swapped (conditioned on the rejected's score)", len(second))
        return first + second

    def _conditioned(self, row: Row, score: float, swap: bool) -> Row:
        text = self.template.format(score=score_text(score))
        chosen, rejected = (get_field(row, f, "an answer") for f in (self.chosen_field, self.rejected_field))
        out: dict[str, Any] = {}
        conversations = all(isinstance(v, list) and v and isinstance(v[0], dict) and v[0].get("role") != "assistant"
                            for v in (chosen, rejected))
        if conversations:
            chosen = self._condition(row, self.chosen_field, chosen, text)
            rejected = self._condition(row, self.rejected_field, rejected, text)
        if self.prompt_field in row and (not conversations or isinstance(row[self.prompt_field], list)):
            out[self.prompt_field] = self._condition(row, self.prompt_field, row[self.prompt_field], text)
        elif not conversations:
            raise DataError(*origin(row), self.prompt_field, "a prompt column, or chosen/rejected as whole conversations")
        if swap:
            chosen, rejected = rejected, chosen
        sc, sr = row[self.score_chosen_field], row[self.score_rejected_field]
        return carry(row, (), **out, **{self.chosen_field: chosen, self.rejected_field: rejected,
                                        self.score_chosen_field: sr if swap else sc,
                                        self.score_rejected_field: sc if swap else sr},
                     target_score=score, swapped=float(swap))

    def _condition(self, row: Row, field: str, value: Any, text: str) -> Any:
        return place_condition(value, text, self.place, *origin(row), field)


__all__ = ["TARGET", "RewardAugmented", "score_text"]
