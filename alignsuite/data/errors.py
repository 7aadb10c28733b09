"""The one error bad data raises.

A preference run fails on row 41,317 of a file someone else wrote; the message must let them find
that row without a debugger, so it always names the source and, where there is one, the line, the row
and the field, and says what was expected there.
"""

from __future__ import annotations

_NOTHING = object()  # distinguishes "no value to show" from a value that is None


def _show(value: object, limit: int = 80) -> str:
    # A whole conversation in an error message buries the point; the start is enough to find it.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataError(ValueError):
    """Data that cannot become canonical preference rows.

    ``DataError("data/train.jsonl", 17, "chosen", "non-empty text or a list of chat messages", "")``
    reads ``data/train.jsonl: row 17: field 'chosen': expected non-empty text or a list of chat
    messages, got ''``. ``row`` is 0-based within its source. Without ``got`` the message ends after
    the expectation, for problems that are not about one value (a missing column).

    Problems of a file rather than a row leave ``row``/``field`` out and give ``line`` (1-based, as
    editors count) or a free-form ``problem``: ``data/train.jsonl: line 57: expected one JSON object
    per line, got ...`` or ``data/train.jsonl: all 6 rows were skipped because chosen equals rejected``.
    """

    def __init__(
        self,
        source: str,
        row: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        got: object = _NOTHING,
        *,
        line: int | None = None,
        problem: str | None = None,
    ):
        self.source, self.row, self.field, self.line = source, row, field, line
        where = [source]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        message = ": ".join(where)
        if expected is not None:
            message += f": expected {expected}"
            if got is not _NOTHING:
                message += f", got {_show(got)}"
        if problem is not None:
            message += f"{';' if expected is not None else ':'} {problem}"
        super().__init__(message)


def row_origin(rows, position: int) -> tuple[str, int | None]:
    """``(source, row)`` of the stored row at ``position`` of ``rows`` (a dataset), from its provenance columns
    ``_source``/``_row``; ``("dataset row <position>", None)`` for rows without them."""
    if "_source" not in rows.column_names:
        return f"dataset row {position}", None
    row = rows.select_columns(["_source", "_row"])[position]
    return row["_source"], row["_row"]


def source_names(rows) -> str:
    """The sources (files, hub ids) the stored ``rows`` (a dataset) came from, sorted and joined by commas; ``""``
    for rows without provenance."""
    if "_source" not in rows.column_names:
        return ""
    return ", ".join(sorted(rows.select_columns(["_source"]).unique("_source")))
