"""Preference trees as lists: the full reasoning paths of a tree (its leaves), each with its score and where its
steps begin, for the tree objective (``tpo_tree``).

A tree row is a list row (`TextLists`: ``prompt``, ``responses``, ``scores`` or ``ranks``) with one more column,
``step_starts``: for every path, the indices of the answer tokens at which its steps begin (the first 0), in the
tokenizer of the model that trains; the tokens from one start to the next are a step, and the last step runs to
the answer's end token. A tree builder that samples a model step by step knows these counts. Paths that share a
prefix are full paths still (the prefix repeated in each); the objective compares step s of every path with step s
of the best one.

Stored rows carry ``step_starts`` aligned with ``responses`` (a padded entry gets ``[0]``); a batch carries it as
one python list per row.
"""

from __future__ import annotations

import math

from alignsuite.data.errors import DataError
from alignsuite.data.layouts.lists import TextLists
from alignsuite.data.lists import INVALID, row_labels


class TextTrees(TextLists):
    """The paths of preference trees: a prompt, K paths (text or chat answers) with one score each, and
    ``step_starts`` (one list of answer-token indices per path, increasing from 0: where each step begins).

    Read as `TextLists` reads its generic rows (``prompt``, ``responses``, ``scores``/``labels``/``ranks`` or
    ``ranked``); a path that `TextLists` drops (blank, no grade) drops its ``step_starts`` with it. Missing or
    malformed step boundaries are refused, naming the file, row and field.

    Args:
        list_size: K, the paths every row is padded to; the objective's ``list_size`` must equal it.
        step_starts_field: column of the step boundaries.
        **kwargs: the other `TextLists` arguments (field names, ``ranked``).
    """

    list_columns = frozenset({*TextLists.list_columns, "step_starts"})

    def __init__(self, list_size: int = 4, step_starts_field: str = "step_starts", **kwargs) -> None:
        super().__init__(list_size=list_size, **kwargs)
        self.step_starts_field = step_starts_field

    def check_first(self, row: dict, source: str) -> None:
        for field, what in ((self.responses_field, "a list of paths (the tree's leaves, as text or messages)"),
                            (self.step_starts_field, "one list of step starts (answer-token indices) per path")):
            if field not in row:
                raise DataError(source, 0, field, f"{what}; the row has columns {sorted(row)}")

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        values = self._list(row, self.responses_field, index, source)
        starts = self._starts(row.get(self.step_starts_field), len(values), index, source)
        canon = super().normalize(row, index, source, base_dir)
        if canon is None:
            return None
        # The paths TextLists kept, in order: present, with a finite grade (as `build_list` keeps them).
        labels = row_labels(row, len(values), self.grades, index, source)
        kept = [k for k, (v, y) in enumerate(zip(values, labels))
                if self._answer(v, self.responses_field, index, source) is not INVALID and math.isfinite(y)]
        canon["step_starts"] = [starts[k] for k in kept] + [[0]] * (self.list_size - len(kept))
        return canon

    def _starts(self, value, paths: int, index: int, source: str) -> list[list[int]]:
        field = self.step_starts_field
        if not isinstance(value, (list, tuple)) or len(value) != paths:
            raise DataError(source, index, field, f"a list of {paths} lists of step starts, one per path", value)
        for k, starts in enumerate(value):
            ok = isinstance(starts, (list, tuple)) and len(starts) > 0 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in starts)
            if not (ok and starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:]))):
                raise DataError(source, index, f"{field}[{k}]",
                                "increasing answer-token indices starting at 0 (where each step begins)", starts)
        return [list(s) for s in value]


__all__ = ["TextTrees"]
