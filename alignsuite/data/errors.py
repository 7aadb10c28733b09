"""The one error a bad data row raises.

A preference run fails on row 41,317 of a file someone else wrote; the message must let them find
that row without a debugger, so it always names the source, the row and the field, and says what was
expected there.
"""

from __future__ import annotations

_NOTHING = object()  # distinguishes "no value to show" from a value that is None


def _show(value: object, limit: int = 80) -> str:
    # A whole conversation in an error message buries the point; the start is enough to find it.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataError(ValueError):
    """A row that cannot become a canonical preference row.

    ``DataError("data/train.jsonl", 17, "chosen", "non-empty text or a list of chat messages", "")``
    reads ``data/train.jsonl: row 17: field 'chosen': expected non-empty text or a list of chat
    messages, got ''``. ``row`` is 0-based within its source. Without ``got`` the message ends after
    the expectation, for problems that are not about one value (a missing column).
    """

    def __init__(self, source: str, row: int, field: str, expected: str, got: object = _NOTHING):
        self.source, self.row, self.field = source, row, field
        message = f"{source}: row {row}: field {field!r}: expected {expected}"
        if got is not _NOTHING:
            message += f", got {_show(got)}"
        super().__init__(message)
