"""What a data procedure is: a transform of a split's raw rows that a recipe names, run once before training.

A procedure takes the rows as they were read (python dicts, each carrying ``_source`` and ``_row``, the file
and the 0-based row it came from) and returns new rows, in the order training should see them when it
`orders_rows`. It counts in a :class:`Report` what it kept, dropped (and why, naming the rows), swapped and
reordered. It knows nothing of the data module, the cache or the layouts: ``procedures/run.py`` chains them,
keys their output by their inputs and stores it; the layout then reads the output like a file's rows.

Rows with K scored responses are read through :func:`scored_responses` (fields ``prompt``/``responses``/
``scores`` by default, renamed per procedure), so every list procedure refuses and drops the same way: a
missing field or a list of the wrong shape raises ``DataError`` naming file, row and field; a score that is
NaN or missing drops that response (counted); a row left with fewer than 2 scored responses is dropped
(counted, the rows named in the log).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from alignsuite.data.errors import DataError

Row = dict[str, Any]
PROVENANCE = ("_source", "_row")  # the file and row an input row came from; carried into every row made from it
SHOWN_ROWS = 5  # rows named per reason in a log line


def origin(row: Row) -> tuple[str, int | None]:
    """``(source, row)`` that names ``row`` in an error or a log line."""
    return row.get("_source", "rows"), row.get("_row")


def where(row: Row) -> str:
    source, index = origin(row)
    return source if index is None else f"{source}:{index}"


def missing_field(row: Row, name: str, expected: str) -> DataError:
    source, index = origin(row)
    columns = sorted(k for k in row if k not in PROVENANCE)
    return DataError(source, index, name, f"{expected}; the row has columns {columns}")


def get_field(row: Row, name: str, expected: str) -> Any:
    """``row[name]``, or a ``DataError`` naming the file, row and field."""
    if name not in row:
        raise missing_field(row, name, expected)
    return row[name]


def as_score(value: Any) -> float | None:
    """A finite float, or ``None`` for a missing or NaN score (bools and text are not scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def carry(row: Row, drop: tuple[str, ...] = (), **values: Any) -> Row:
    """A new row made from ``row``: its columns (provenance included) but ``drop``, then ``values``."""
    return {**{k: v for k, v in row.items() if k not in drop}, **values}


@dataclass
class Report:
    """What one procedure did to one split: rows in and out, named counts, and which rows each drop reason hit."""

    procedure: str
    rows_in: int = 0
    rows_out: int = 0
    counts: Counter = field(default_factory=Counter)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> the first rows it dropped
    reordered: str = ""  # how the output order was set, empty when the input order is kept

    def drop(self, row: Row, reason: str) -> None:
        """Count ``row`` as dropped because of ``reason``, naming it in the log."""
        self.counts[f"dropped: {reason}"] += 1
        shown = self.dropped.setdefault(reason, [])
        if len(shown) < SHOWN_ROWS:
            shown.append(where(row))

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def summary(self) -> str:
        parts = [f"{self.procedure}: {self.rows_in} rows in, {self.rows_out} out"]
        for what, n in sorted(self.counts.items()):
            rows = self.dropped.get(what.removeprefix("dropped: "))
            named = f" ({', '.join(rows)}{', ...' if n > len(rows) else ''})" if what.startswith("dropped: ") and rows else ""
            parts.append(f"{what} {n}{named}")
        if self.reordered:
            parts.append(f"reordered: {self.reordered}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"procedure": self.procedure, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "counts": dict(self.counts), "dropped": self.dropped, "reordered": self.reordered}

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        return cls(d["procedure"], d["rows_in"], d["rows_out"], Counter(d["counts"]), d["dropped"], d["reordered"])


class Procedure:
    """Base of the data procedures, named in a recipe under ``data.init_args.procedures``.

    Subclasses implement `apply` and set ``orders_rows`` (their output order is the training order: the data
    module then keeps it instead of shuffling) and ``extra_columns`` (numeric columns they add, which batches
    carry beside the layout's). Every ``__init__`` argument is a setting: it keys the stored output, so a changed
    setting recomputes it. ``splits`` says which splits a procedure runs on.
    """

    orders_rows: ClassVar[bool] = False
    extra_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        bad = [s for s in splits if s not in ("train", "val")]
        if bad:
            raise ValueError(f"{type(self).__name__}.splits takes 'train' and 'val', got {bad}")
        self.splits = tuple(splits)

    @property
    def name(self) -> str:
        return type(self).__name__

    def settings(self) -> dict:
        """Every ``__init__`` argument and its value (objects by their own ``identity``): what keys the output."""
        out = {}
        for cls in type(self).__mro__:
            if "__init__" not in vars(cls) or cls is object:
                continue
            for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in out or not hasattr(self, p.name):
                    continue
                value = getattr(self, p.name)
                out[p.name] = value.identity() if hasattr(value, "identity") else value
        return out

    def identity(self) -> dict:
        """What the output depends on besides the rows: the class and its settings (a model's identity where
        one is used, through its scorer's ``identity``)."""
        return {"procedure": f"{type(self).__module__}.{type(self).__qualname__}", "settings": self.settings()}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        raise NotImplementedError


class ListProcedure(Procedure):
    """A procedure over rows with K scored responses (``prompt``/``responses``/``scores``; the field names are
    settings), usually making pair rows ``prompt``/``chosen``/``rejected`` with ``score_chosen``/``score_rejected``."""

    extra_columns = ("score_chosen", "score_rejected")

    def __init__(self, prompt_field: str = "prompt", responses_field: str = "responses", scores_field: str = "scores",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(splits)
        self.prompt_field, self.responses_field, self.scores_field = prompt_field, responses_field, scores_field

    def needs(self) -> tuple[str, ...]:
        """The judge fields it reads, of which a row must carry at least one: what a loop checks its judge gives
        before a round starts."""
        return (self.scores_field,)

    def scored_responses(self, row: Row, report: Report) -> list[tuple[int, Any, float]] | None:
        """``(position, response, score)`` of each response of ``row`` with a finite score, in list order;
        ``None`` (the row dropped and counted) when fewer than 2 remain."""
        get_field(row, self.prompt_field, "a prompt (text or chat messages)")
        responses = get_field(row, self.responses_field, "a list of responses")
        scores = get_field(row, self.scores_field, "a list of scores, one per response")
        source, index = origin(row)
        if not isinstance(responses, list):
            raise DataError(source, index, self.responses_field, "a list of responses", responses)
        if not isinstance(scores, list) or len(scores) != len(responses):
            n = len(scores) if isinstance(scores, list) else None
            raise DataError(source, index, self.scores_field, f"a list of {len(responses)} scores, one per response",
                            scores if n is None else f"{n} scores")
        valid = []
        for k, (response, raw) in enumerate(zip(responses, scores)):
            score = as_score(raw)
            if score is None:
                report.count(f"responses dropped: NaN or missing value in {self.scores_field!r}")
            else:
                valid.append((k, response, score))
        if len(valid) < 2:
            report.drop(row, f"fewer than 2 responses with a finite value in {self.scores_field!r}")
            return None
        return valid

    @staticmethod
    def moments(valid: list[tuple[int, Any, float]]) -> tuple[float, float]:
        """The mean and the population variance of the scores of ``valid`` (as :meth:`scored_responses` gives)."""
        scores = [s for _, _, s in valid]
        mean = sum(scores) / len(scores)
        return mean, sum((s - mean) ** 2 for s in scores) / len(scores)

    def pair(self, row: Row, chosen: tuple[int, Any, float], rejected: tuple[int, Any, float], **values: Any) -> Row:
        """A pair row made from a list row: its other columns, ``prompt``/``chosen``/``rejected`` and the scores."""
        return carry(row, (self.responses_field, self.scores_field, self.prompt_field),
                     prompt=row[self.prompt_field], chosen=chosen[1], rejected=rejected[1],
                     score_chosen=chosen[2], score_rejected=rejected[2], **values)


__all__ = ["PROVENANCE", "ListProcedure", "Procedure", "Report", "Row", "as_score", "carry", "get_field", "origin", "where"]
