"""Pairs labelled by groups of annotators who judge by different rules: each row drawn into one group, ordered by
that group's dimension, with its ``group`` column (what group-robust objectives read, ``gr_dpo``).

Rows hold a prompt, two answers and, per dimension, a label or a score per answer (the rows
`alignsuite.data.DimensionPairs` reads). Group ``g`` judges by the ``g``-th dimension and holds a ``shares[g]``
part of the rows: unequal shares make a majority whose preference a plain mean over rows follows, and minorities it
neglects (MaxMin-RLHF's setting, Chakraborty et al. 2024). With ``annotators`` the groups are groups of people: each
row goes to one annotator, who belongs to one group, and the row says who (``annotator``), as a dataset of many
users' labels does; `alignsuite.data.procedures.MixtureGroups` finds the groups again from that column alone.
"""

from __future__ import annotations

import math
import random

from alignsuite.data.procedures.base import Procedure, Report, Row, carry, get_field, where
from alignsuite.data.procedures.conditioned import TIE, answer_rewards


class GroupPairs(Procedure):
    """Each row goes to group ``g`` with probability ``shares[g]`` (seeded by ``seed`` and the row's file and index)
    and becomes the pair its group prefers: ``chosen`` the answer with the higher ``g``-th dimension's reward, and
    ``group = g``. A row that ties under its group's dimension is dropped (counted). With ``annotators`` (A > 0)
    each row goes to one of A annotators instead (seeded by the row), each annotator to one group (with probability
    ``shares[g]``, seeded by its number), and the row is ordered by its annotator's group.

    Output rows: ``prompt``, ``chosen``, ``rejected``, ``group``, with ``annotators`` ``annotator``, every
    dimension's reward of the chosen and the rejected answer (``score_chosen_<d>``, ``score_rejected_<d>``) and the
    row's other columns; read them with ``TextPairs(number_fields: {group: group})``.

    Args:
        dimensions: one per group, in group order: ``{dimension: label column}`` or ``{dimension: [score column of
            response 0, of response 1]}`` (as `DimensionPairs`).
        shares: each group's part of the rows (non-negative, summing to 1).
        responses: the two answer columns.
        prompt_field: the prompt column.
        seed: seed of the draws.
        annotators: how many annotators share the rows (0: none, each row drawn into a group on its own).
        splits: the splits it runs on (both by default: validation rows keep their groups too).
    """

    extra_columns = ("group",)

    def __init__(self, dimensions: dict[str, str | list[str]], shares: list[float],
                 responses: tuple[str, str] | list[str] = ("response_0", "response_1"), prompt_field: str = "prompt",
                 seed: int = 0, annotators: int = 0, splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(splits)
        if not dimensions:
            raise ValueError("GroupPairs.dimensions: name one dimension per group")
        if len(shares) != len(dimensions) or any(not math.isfinite(s) or s < 0 for s in shares) \
                or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"GroupPairs.shares: one non-negative share per group ({len(dimensions)}: "
                             f"{', '.join(dimensions)}), summing to 1; got {list(shares)}")
        if len(responses) != 2:
            raise ValueError(f"GroupPairs.responses names two answer columns, got {list(responses)}")
        if isinstance(annotators, bool) or not isinstance(annotators, int) or annotators < 0:
            raise ValueError(f"GroupPairs.annotators must be a number of annotators (0: none), got {annotators!r}")
        self.dimensions = {d: f if isinstance(f, str) else list(f) for d, f in dimensions.items()}
        self.shares, self.responses, self.prompt_field, self.seed = [float(s) for s in shares], tuple(responses), \
            prompt_field, seed
        self.annotators = annotators

    def group_of(self, key: str) -> int:
        """The group drawn for ``key`` (a row's place, or an annotator's number)."""
        return random.Random(f"{self.seed}-{key}").choices(range(len(self.dimensions)), weights=self.shares)[0]

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        names, out = list(self.dimensions), []
        for row in rows:
            answers = [get_field(row, f, "an answer") for f in self.responses]
            get_field(row, self.prompt_field, "a prompt (text or chat messages)")
            who = {}
            if self.annotators:
                who["annotator"] = random.Random(f"{self.seed}-annotator-{where(row)}").randrange(self.annotators)
                group = self.group_of(f"annotator-{who['annotator']}")
            else:
                group = self.group_of(where(row))
            r0, r1 = answer_rewards(row, self.dimensions)
            d = names[group]
            if abs(r0[d] - r1[d]) <= TIE:
                report.drop(row, f"the two answers tie under group {group}'s dimension ({d})")
                continue
            first = 0 if r0[d] > r1[d] else 1
            report.count(f"group {group} ({d})")
            won, lost = (r0, r1) if first == 0 else (r1, r0)
            scores = {**{f"score_chosen_{k}": won[k] for k in names}, **{f"score_rejected_{k}": lost[k] for k in names}}
            out.append(carry(row, self.responses, chosen=answers[first], rejected=answers[1 - first], group=group,
                             **who, **scores))
        return out


__all__ = ["GroupPairs"]
