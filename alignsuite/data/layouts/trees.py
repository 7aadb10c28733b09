"""Preference trees as lists: the full reasoning paths of a tree (its leaves), each with its score and where its
steps begin, for the tree objective (``tpo_tree``).

A tree row is a list row (`TextLists`: ``prompt``, ``responses``, ``scores`` or ``ranks``) with one more column
that says where each path's steps are, in one of two forms:

- ``step_starts``: for every path, the indices of the answer tokens at which its steps begin (the first 0), in the
  tokenizer of the model that trains; the tokens from one start to the next are a step, and the last step runs to
  the answer's end token. A tree builder that samples a model step by step knows these counts.
- ``steps``: for every path, its steps as text (a list of non-empty strings), whose concatenation is the path's
  answer (a chat answer: the content of its last message), as the released trees of TPO give them. The token
  backbone hands the layout its tokenizer at setup (``use_model(step_tokens=...)``, a
  `alignsuite.backbones.steps.StepTokens`) and the layout turns each path's steps into its ``step_starts`` when
  it collates a batch: a step begins at the first answer token that ends past the step's first character.

Paths that share a prefix are full paths still (the prefix repeated in each); the objective compares step s of
every path with step s of the best one.

Stored rows carry ``step_starts`` aligned with ``responses`` (a padded entry gets ``[0]``; a path given as text
``[0]`` until collate) and, hidden, ``_steps`` (the text steps as JSON, with each path's index in its file row;
``"null"`` for a row given as tokens); a batch carries ``step_starts`` as one python list per row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from alignsuite.data.errors import DataError
from alignsuite.data.layouts.lists import TextLists
from alignsuite.data.lists import INVALID, row_labels


class TextTrees(TextLists):
    """The paths of preference trees: a prompt, K paths (text or chat answers) with one score each, and where each
    path's steps begin: ``step_starts`` (one list of answer-token indices per path, increasing from 0) or ``steps``
    (one list of step texts per path, which concatenate to the path).

    Read as `TextLists` reads its generic rows (``prompt``, ``responses``, ``scores``/``labels``/``ranks`` or
    ``ranked``); a path that `TextLists` drops (blank, no grade) drops its steps with it. Missing or malformed
    step boundaries, and steps that do not concatenate to their path, are refused, naming the file, row and field;
    so are text steps that the model's tokenizer cannot split (two steps in one token), when a batch is made.

    Args:
        list_size: K, the paths every row is padded to; the objective's ``list_size`` must equal it.
        step_starts_field: column of the step boundaries in answer tokens.
        steps_field: column of the steps as text (read when a row has no ``step_starts_field``).
        **kwargs: the other `TextLists` arguments (field names, ``ranked``).
    """

    list_columns = frozenset({*TextLists.list_columns, "step_starts"})

    def __init__(self, list_size: int = 4, step_starts_field: str = "step_starts", steps_field: str = "steps",
                 **kwargs) -> None:
        super().__init__(list_size=list_size, **kwargs)
        self.step_starts_field, self.steps_field = step_starts_field, steps_field
        self.step_tokens: Callable[[Any, Any, list[str]], list[int]] | None = None  # the backbone's, at setup

    def use_model(self, step_tokens: Callable | None = None, **settings: Any) -> None:
        """``step_tokens(prompt, answer, steps) -> step_starts``: the backbone's count of a path's steps in its
        answer tokens (a `alignsuite.backbones.steps.StepTokens`), for the rows that give their steps as text."""
        if step_tokens is not None:
            self.step_tokens = step_tokens

    def check_first(self, row: dict, source: str) -> None:
        if self.responses_field not in row:
            raise DataError(source, 0, self.responses_field, "a list of paths (the tree's leaves, as text or messages);"
                            f" the row has columns {sorted(row)}")
        if self.step_starts_field not in row and self.steps_field not in row:
            raise DataError(source, 0, self.step_starts_field,
                            f"one list of step starts (answer-token indices) per path, or {self.steps_field!r}: one"
                            f" list of step texts per path; the row has columns {sorted(row)}")

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        values = self._list(row, self.responses_field, index, source)
        as_text = row.get(self.step_starts_field) is None and self.steps_field in row
        if as_text:
            given = self._texts(row.get(self.steps_field), values, index, source)
        else:
            given = self._starts(row.get(self.step_starts_field), len(values), index, source)
        canon = super().normalize(row, index, source, base_dir)
        if canon is None:
            return None
        # The paths TextLists kept, in order: present, with a finite grade (as `build_list` keeps them).
        labels = row_labels(row, len(values), self.grades, index, source)
        kept = [k for k, (v, y) in enumerate(zip(values, labels))
                if self._answer(v, self.responses_field, index, source) is not INVALID and math.isfinite(y)]
        pad = self.list_size - len(kept)
        if as_text:
            canon["step_starts"] = [[0] for _ in kept] + [[0]] * pad  # counted at collate
            canon["_steps"] = json.dumps([[k, given[k]] for k in kept] + [None] * pad)
        else:
            canon["step_starts"] = [given[k] for k in kept] + [[0]] * pad
            canon["_steps"] = "null"
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

    def _texts(self, value, answers: list, index: int, source: str) -> list[list[str]]:
        """Each path's steps as text, checked against the path's answer (blank answers, dropped later, unchecked)."""
        field = self.steps_field
        if not isinstance(value, (list, tuple)) or len(value) != len(answers):
            raise DataError(source, index, field, f"a list of {len(answers)} lists of step texts, one per path", value)
        for k, (steps, raw) in enumerate(zip(value, answers)):
            answer = self._answer(raw, self.responses_field, index, source)
            if answer is INVALID:
                continue
            if not (isinstance(steps, (list, tuple)) and steps and all(isinstance(x, str) and x for x in steps)):
                raise DataError(source, index, f"{field}[{k}]", "a list of non-empty step texts", steps)
            text = answer[-1].get("content") if isinstance(answer, list) else answer
            if "".join(steps) != text:
                what = "the path's answer" if isinstance(answer, str) else "the content of the path's last message"
                raise DataError(source, index, f"{field}[{k}]", f"steps that concatenate to {what}, {text!r}",
                                "".join(steps))
        return [list(s) for s in value]

    def collate(self, rows: list[dict]) -> dict:
        if any(row.get("_steps", "null") != "null" for row in rows):
            rows = [self._count_steps(row) for row in rows]
        return super().collate(rows)

    def _count_steps(self, row: dict) -> dict:
        """``row`` with the ``step_starts`` of its paths given as text, counted by the backbone's tokenizer."""
        paths = json.loads(row.get("_steps", "null"))
        if paths is None:
            return row
        source, index = row.get("_source", self.name), row.get("_row")
        if self.step_tokens is None:
            raise DataError(source, index, self.steps_field,
                            problem="steps given as text are counted in the model's tokens, and no backbone handed"
                                    " this layout its tokenizer (use_model(step_tokens=...)): train with a token"
                                    " backbone (alignsuite.backbones.CausalLM), or give step_starts")
        prompt, answers = self.decode("prompt", row["prompt"]), self.decode("responses", row["responses"])
        starts = list(row["step_starts"])
        for position, path in enumerate(paths):
            if path is None:
                continue
            k, steps = path
            try:
                starts[position] = self.step_tokens(prompt, answers[position], steps)
            except ValueError as e:
                raise DataError(source, index, f"{self.steps_field}[{k}]", problem=str(e)) from None
        return {**row, "step_starts": starts}


__all__ = ["TextTrees"]
