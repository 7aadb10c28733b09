"""What a judge could not judge, counted rather than hidden: a score the judge's text did not hold, a value
that came back ``None`` or NaN. The count covers every row judged since the judge was built (or since
:meth:`Failures.reset`); the first few rows are kept with what went wrong, for the report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Failures:
    """A running count of failed rows.

    Attributes:
        what: what failed, for the report ("judge outputs without a score").
        unit: what an index counts, for the report ("row", "output").
        keep: how many failing rows are kept with their details.
        count: rows that failed.
        seen: rows judged (the next row's index).
        rows: the first ``keep`` failing rows' indices (positions in the sequence judged since the last reset).
        details: what went wrong with each of ``rows``.
    """

    what: str
    unit: str = "row"
    keep: int = 5
    count: int = 0
    seen: int = 0
    rows: list[int] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, row: int, detail: str) -> None:
        self.count += 1
        if len(self.rows) < self.keep:
            self.rows.append(row)
            self.details.append(detail)

    def reset(self) -> None:
        self.count = self.seen = 0
        self.rows, self.details = [], []

    def report(self) -> str:
        """One line (``""`` when nothing failed): the count out of the rows judged, then the first rows."""
        if not self.count:
            return ""
        first = "; ".join(f"{self.unit} {r}: {d}" for r, d in zip(self.rows, self.details))
        more = f" (the first {len(self.rows)})" if self.count > len(self.rows) else ""
        return f"{self.count} of {self.seen} {self.what}{more}: {first}"


def clip(text: str, width: int = 80) -> str:
    """``text`` on one line, at most ``width`` characters, for a report."""
    one = " ".join(str(text).split())
    return repr(one if len(one) <= width else one[: width - 3] + "...")


__all__ = ["Failures", "clip"]
