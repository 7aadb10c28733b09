"""Reward-augmented relabelling: every pair twice, conditioned on a target score (or one per dimension), once in
each order."""

from __future__ import annotations

from typing import Any, Literal

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import Procedure, Report, Row, as_score, carry, get_field, origin
from alignsuite.data.procedures.condition import place_condition

TARGET_HEAD = ("You are an assistant that generates responses for the instruction while implicitly achieving the"
               " following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):")
TARGET = TARGET_HEAD + "\nOverall score: {score}."


def dimensions_target(dimensions: list[str]) -> str:
    """The official head followed by one line per dimension (``Helpfulness score: {helpfulness}.``)."""
    return TARGET_HEAD + "".join(f"\n{d.replace('_', ' ').capitalize()} score: {{{d}}}." for d in dimensions)


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

    Several dimensions (``dimensions``: UltraFeedback's aspects, a multi-objective condition): each copy is
    conditioned on one answer's score in every dimension, the template with a field per dimension (by default the
    official head and one line per dimension, ``Helpfulness score: 8.``), and the output carries ``target_<d>``
    per dimension instead of ``target_score``. Unless the filter fields are set, the filter compares the mean of
    the dimensions' scores (the official fine-grained average). With one dimension this is the one-score form.

    Args:
        score_chosen_field: column of the chosen answer's overall score.
        score_rejected_field: column of the rejected answer's overall score.
        filter_chosen_field: column compared for the filter (chosen side); null: ``score_chosen_field``.
        filter_rejected_field: column compared for the filter (rejected side); null: ``score_rejected_field``.
        template: the condition, with ``{score}`` where the target score goes (with ``dimensions``: a field per
            dimension, ``{helpfulness}``; left at the one-score default, a line per dimension is written).
        place: ``system`` (a system message) or ``user`` (prepended to the first user message).
        prompt_field, chosen_field, rejected_field: the pair row's fields.
        splits: the splits it runs on.
        dimensions: ``{dimension: [chosen's score column, rejected's score column]}``, in order; null: the one
            overall score of ``score_chosen_field``/``score_rejected_field``.
    """

    extra_columns = ("target_score", "swapped")

    def __init__(self, score_chosen_field: str = "score_chosen", score_rejected_field: str = "score_rejected",
                 filter_chosen_field: str | None = None, filter_rejected_field: str | None = None,
                 template: str = TARGET, place: Literal["system", "user"] = "system", prompt_field: str = "prompt",
                 chosen_field: str = "chosen", rejected_field: str = "rejected",
                 splits: tuple[str, ...] | list[str] = ("train",),
                 dimensions: dict[str, list[str]] | None = None) -> None:
        super().__init__(splits)
        if place not in ("system", "user"):
            raise ValueError(f"RewardAugmented.place must be 'system' or 'user', got {place!r}")
        if dimensions is not None:
            if not dimensions or any(not d.isidentifier() for d in dimensions):
                raise ValueError(f"RewardAugmented.dimensions: name at least one dimension, each a name the template"
                                 f" can hold as a field ({{helpfulness}}); got {list(dimensions or [])}")
            for d, fields in dimensions.items():
                if isinstance(fields, str) or len(fields) != 2 or not all(isinstance(f, str) for f in fields):
                    raise ValueError(f"RewardAugmented.dimensions: {d!r} takes two score columns, the chosen's and"
                                     f" the rejected's; got {fields!r}")
            dimensions = {d: list(f) for d, f in dimensions.items()}
            template = dimensions_target(list(dimensions)) if template == TARGET else template
        wanted = list(dimensions or ["score"])
        missing = [d for d in wanted if "{" + d + "}" not in template]
        if missing:
            raise ValueError(f"RewardAugmented.template must contain {', '.join('{' + d + '}' for d in missing)}, where"
                             " the target score goes")
        self.dimensions = dimensions
        targets = tuple(f"target_{d}" for d in dimensions) if dimensions else ("target_score",)
        self.extra_columns = (*targets, "swapped")
        self.score_chosen_field, self.score_rejected_field = score_chosen_field, score_rejected_field
        self.filter_chosen_field, self.filter_rejected_field = filter_chosen_field, filter_rejected_field
        self.template, self.place = template, place
        self.prompt_field, self.chosen_field, self.rejected_field = prompt_field, chosen_field, rejected_field

    @property
    def score_fields(self) -> dict[str, list[str]]:
        """``{name: [chosen's column, rejected's column]}``: the dimensions, or ``score`` for the one overall score."""
        return self.dimensions or {"score": [self.score_chosen_field, self.score_rejected_field]}

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        kept, fields = [], self.score_fields
        for row in rows:
            scores = {d: [as_score(get_field(row, f, "a score (a number)")) for f in pair] for d, pair in fields.items()}
            filters = self._filter_values(row, scores)
            if None in filters or any(None in v for v in scores.values()):
                report.drop(row, "a score is NaN or missing")
            elif filters[0] < filters[1]:
                report.drop(row, "the chosen scores below the rejected")
            else:
                kept.append((row, scores))
        first = [self._conditioned(row, {d: v[0] for d, v in scores.items()}, swap=False) for row, scores in kept]
        second = [self._conditioned(row, {d: v[1] for d, v in scores.items()}, swap=True) for row, scores in kept]
        report.count("swapped (conditioned on the rejected's score)", len(second))
        return first + second

    def _filter_values(self, row: Row, scores: dict[str, list[float | None]]) -> list[float | None]:
        """The chosen's and the rejected's value for the filter: the filter fields' (each side falling back to the
        first score column of its side), else the mean of the scores (the official fine-grained average)."""
        if self.filter_chosen_field is None and self.filter_rejected_field is None:
            sides = [[v[side] for v in scores.values()] for side in (0, 1)]
            return [None if None in v else sum(v) / len(v) for v in sides]
        first = next(iter(self.score_fields.values()))
        return [as_score(get_field(row, f or d, "a score (a number)")) for f, d in
                ((self.filter_chosen_field, first[0]), (self.filter_rejected_field, first[1]))]

    def _conditioned(self, row: Row, target: dict[str, float], swap: bool) -> Row:
        text = self.template.format(**{d: score_text(v) for d, v in target.items()})
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
        scores = {}
        for c, r in self.score_fields.values():  # the score columns follow the swap
            scores[c], scores[r] = (row[r], row[c]) if swap else (row[c], row[r])
        targets = {f"target_{d}": v for d, v in target.items()} if self.dimensions else {"target_score": target["score"]}
        return carry(row, (), **out, **{self.chosen_field: chosen, self.rejected_field: rejected}, **scores,
                     **targets, swapped=float(swap))

    def _condition(self, row: Row, field: str, value: Any, text: str) -> Any:
        return place_condition(value, text, self.place, *origin(row), field)


__all__ = ["TARGET", "RewardAugmented", "dimensions_target", "score_text"]
