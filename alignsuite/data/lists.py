"""K graded responses per prompt, whatever a response is (text, chat messages, an image, speech).

A canonical list row holds ``responses`` (exactly ``list_size`` entries), ``labels`` (one grade per entry,
higher better) and ``mask`` (True where a response exists). A list shorter than ``list_size`` is padded with
entries the mask excludes and whose label is NaN, so that an objective that forgot the mask fails loudly
rather than read a padded entry as a response; the padding is never a copy of a response, which would add
pairs and change every listwise loss.

What the data may say about the grades, in the order they are looked for: a score per response (ratings,
rewards: higher better), a rank per response (1 = best, as ranked image sets give them), or nothing, with
the responses listed best first (``ranked``): then the first gets the highest label.

Invalid entries (a blank response, a missing or NaN grade) are dropped from their list and counted; a list
left with fewer than two valid responses with different grades carries no preference and is skipped, counted
and reported like a pair whose chosen equals its rejected. Malformed data (grades of the wrong length, a list
longer than ``list_size``, a grade that is not a number) is refused with a `DataError` naming the source, row
and field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alignsuite.data.errors import DataError

INVALID = object()  # what a response reader returns for an entry to drop (blank, missing)


@dataclass(frozen=True)
class ListGrades:
    """Where a list row's grades are: ``scores`` (higher better), else ``ranks`` (1 = best), else the order of
    the responses when ``ranked`` (best first)."""

    scores: str = "scores"
    labels: str = "labels"
    ranks: str = "ranks"
    ranked: bool = False


def grade(value: Any, field: str, index: int, source: str) -> float:
    """A grade as a float: a number, or numeric text (UltraFeedback's ratings are strings); ``None``, ``"N/A"``
    and NaN are NaN (the entry is dropped); anything else is refused."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("", "N/A", "NA", "NAN")):
        return math.nan
    if isinstance(value, bool):
        raise DataError(source, index, field, "a number (a rating, a score or a rank)", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(source, index, field, "a number (a rating, a score or a rank)", value) from None


def row_labels(row: dict, n: int, grades: ListGrades, index: int, source: str) -> list[float]:
    """The ``n`` labels of a list row, higher better, from its scores, its ranks or its order (`ListGrades`)."""
    for field, sign in ((grades.scores, 1.0), (grades.labels, 1.0), (grades.ranks, -1.0)):
        if field in row and row[field] is not None:
            values = row[field]
            if not isinstance(values, (list, tuple)) or len(values) != n:
                raise DataError(source, index, field, f"a list of {n} numbers, one per response", values)
            return [sign * grade(v, field, index, source) for v in values]
    if grades.ranked:
        return [float(n - 1 - k) for k in range(n)]
    raise DataError(
        source, index, grades.scores,
        f"a column of grades ({grades.scores!r} or {grades.labels!r}: higher better; {grades.ranks!r}: 1 = best);"
        f" the row has columns {sorted(row)}",
        problem="if the responses are listed best first, set ranked: true in data.layout",
    )


def build_list(responses: list, labels: list[float], list_size: int, pad: Any, field: str, index: int,
               source: str, key: Callable[[Any], Any] = repr) -> tuple[dict | None, int]:
    """``({"responses", "labels", "mask"}, dropped)``: the valid entries (not `INVALID`, finite label) padded to
    ``list_size`` with ``pad``, and how many entries were dropped; ``None`` for a list left with fewer than two
    distinct responses (by ``key``) with different labels. A list with more valid responses than ``list_size``
    is refused."""
    kept = [(r, y) for r, y in zip(responses, labels) if r is not INVALID and math.isfinite(y)]
    dropped = len(responses) - len(kept)
    if len(kept) > list_size:
        raise DataError(source, index, field, f"at most {list_size} valid responses (data.layout list_size)",
                        len(kept), problem="raise list_size to the longest list, and the objective's with it")
    if len({key(r) for r, _ in kept}) < 2 or len({y for _, y in kept}) < 2:
        return None, dropped
    pads = list_size - len(kept)
    return {
        "responses": [r for r, _ in kept] + [pad] * pads,
        "labels": [y for _, y in kept] + [math.nan] * pads,
        "mask": [True] * len(kept) + [False] * pads,
    }, dropped


SKIP_REASON = "the list has fewer than 2 valid responses (present, with a finite grade) that differ, with different grades"


def check_list_size(list_size: int) -> None:
    if isinstance(list_size, bool) or not isinstance(list_size, int) or list_size < 2:
        raise ValueError(f"data.layout list_size must be an integer of at least 2, got {list_size!r}")


__all__ = ["INVALID", "ListGrades", "SKIP_REASON", "build_list", "check_list_size", "grade", "row_labels"]
