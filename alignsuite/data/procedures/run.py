"""Running a split's procedures once: chained, their output stored in the cache keyed by their inputs, and logged.

The key is a hash of the rows as read (every field of every row, and which file and row each came from), the
split, and each procedure's `identity` (its class, its settings, and a model's identity where one is used). A
second run, or a resumed one, with the same inputs reads the stored rows instead of computing them again; any
changed setting or row gives another key, so it recomputes. The output goes to
``<cache>/procedures/<key>/rows.jsonl`` beside ``report.json``, written to a temporary file and renamed.

Under several processes (DDP) the first to take the folder's file lock computes and writes while the others
wait, then read: on one machine, or nodes sharing the cache folder, one process computes. Nodes that do not
share it each compute on their first process; every procedure is deterministic (seeded where it draws), so
they write the same rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import Procedure, Report, Row, origin
from alignsuite.sources import cache_root

FORMAT = 1  # bump when the stored layout changes, so that old entries are not read
TABLE_ROWS = 5  # output rows shown in the log's table


def _plain(value, row: Row, column: str):
    """``value`` as JSON can store it, or an error naming the row: procedures work on text, numbers and lists."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_plain(v, row, column) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, row, column) for k, v in value.items()}
    source, index = origin(row)
    raise DataError(source, index, column, "text, numbers, lists or chat messages (data procedures store their"
                    " rows as JSON)", f"a {type(value).__name__}")


def rows_of(tables: Sequence[tuple[str, object, object]]) -> list[Row]:
    """The raw rows of ``tables`` (``(source, rows, base_dir)``) as dicts carrying where each came from."""
    out = []
    for source, rows, _ in tables:
        if hasattr(rows, "to_list"):  # a datasets.Dataset: read column-wise at once, not row by row
            rows = rows.to_list()
        for i, row in enumerate(rows):
            out.append({**{k: _plain(v, {"_source": source, "_row": i}, k) for k, v in row.items()},
                        "_source": source, "_row": i})
    return out


def cache_key(rows: list[Row], split: str, procedures: Sequence[Procedure]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "split": split, "procedures": [p.identity() for p in procedures]},
                        sort_keys=True, default=repr).encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def run_procedures(procedures: Sequence[Procedure], split: str, rows: list[Row],
                   cache_dir: str | None = None) -> tuple[list[Row], list[Report], str, bool]:
    """``procedures`` applied in turn to ``rows``: ``(rows out, one report per procedure, stored folder,
    whether the rows were read from the cache)``."""
    key = cache_key(rows, split, procedures)
    folder = os.path.join(cache_dir or os.path.join(cache_root(), "procedures"), key)
    if os.path.isfile(os.path.join(folder, "report.json")):
        return *_read(folder), folder, True
    from filelock import FileLock

    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        if os.path.isfile(os.path.join(folder, "report.json")):  # another process wrote it while this one waited
            return *_read(folder), folder, True
        reports = []
        for procedure in procedures:
            report = Report(procedure.name, rows_in=len(rows))
            rows = [{k: _plain(v, r, k) for k, v in r.items()} for r in procedure.apply(rows, report)]
            report.rows_out = len(rows)
            reports.append(report)
        _write(folder, rows, reports)
    return rows, reports, folder, False


def _write(folder: str, rows: list[Row], reports: list[Report]) -> None:
    tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=f".{os.path.basename(folder)}-")
    with open(os.path.join(tmp, "rows.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as f:
        json.dump([r.to_dict() for r in reports], f, indent=1)
    os.replace(tmp, folder)


def _read(folder: str) -> tuple[list[Row], list[Report]]:
    with open(os.path.join(folder, "rows.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
        reports = [Report.from_dict(d) for d in json.load(f)]
    return rows, reports


def log_reports(split: str, reports: list[Report], rows: list[Row], columns: Sequence[str], folder: str,
                cached: bool) -> str:
    """One log entry for a split's procedures: a line per procedure, then a table of the first output rows
    (where each came from, and the columns the procedures added). Returned, and logged on the first process."""
    how = "read from" if cached else "computed and stored in"
    lines = [f"data procedures on the {split} rows ({how} {folder}):"] + [f"  {r.summary()}" for r in reports]
    if rows:
        shown = [c for c in columns if c in rows[0]]
        lines.append("  first rows:  " + "  ".join(["from".ljust(32)] + [c.rjust(14) for c in shown]))
        for row in rows[:TABLE_ROWS]:
            source, index = origin(row)
            name = f"{os.path.basename(str(source))}:{index}"
            name = name if len(name) <= 32 else "..." + name[-29:]
            cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in shown]
            lines.append("               " + "  ".join([name.ljust(32)] + [c.rjust(14) for c in cells]))
    text = "\n".join(lines)
    rank_zero_info(text)
    return text





def keeps_order(procedures: Sequence[Procedure], shuffle: bool | None, group_by_length: int) -> bool:
    """Whether the data module keeps the training rows in order (``shuffle`` false, or null with a procedure
    that sets the order), after checking the procedures and that nothing else reorders them."""
    bad = [p for p in procedures if not isinstance(p, Procedure)]
    if bad:
        raise TypeError("data.procedures must be procedure objects such as alignsuite.data.procedures.SelectiveDPO()"
                        f" (in a recipe: procedures: [{{class_path: ..., init_args: ...}}]), got {bad[0]!r}")
    ordering = [p.name for p in procedures if p.orders_rows]
    if shuffle and ordering:
        rank_zero_warn(f"data.shuffle is true: the order {', '.join(ordering)} set is lost")
    ordered = shuffle is False or (shuffle is None and bool(ordering))
    if ordered and group_by_length:
        raise ValueError("data.group_by_length reorders the rows; it cannot be used with rows kept in order"
                         f" ({', '.join(ordering) or 'data.shuffle: false'})")
    return ordered


def build_split(layout, procedures: Sequence[Procedure], split: str, tables: list) -> tuple:
    """The layout's build of ``tables`` after ``procedures``: ``(dataset, skipped, log text)`` like
    ``Layout.build`` plus the log. The layout reads the procedures' output as one table; its stored rows get
    back the file and row each came from (``_source``/``_row``, so later errors name the original row) and the
    numeric columns the procedures added (their ``extra_columns``). An error the layout raises on an output
    row names that row's origin too."""
    import datasets

    rows, reports, folder, cached = run_procedures(procedures, split, rows_of(tables))
    columns = list(dict.fromkeys(c for p in procedures for c in p.extra_columns))
    text = log_reports(split, reports, rows, columns, folder, cached)
    name = f"the {split} rows after {', '.join(p.name for p in procedures)}"
    try:
        ds, skipped = layout.build([(name, rows, None)])
    except DataError as err:
        if err.source != name or err.row is None or not 0 <= err.row < len(rows):
            raise
        source, index = origin(rows[err.row])
        named = DataError(source, index, problem=str(err).replace(f"{name}: row {err.row}", f"(row {err.row} of {name})", 1))
        named.field = err.field
        raise named from None
    if ds is None or "_row" not in ds.column_names:
        return ds, skipped, text
    at = ds["_row"]
    ds = ds.remove_columns(["_source", "_row"])
    ds = ds.add_column("_source", [str(rows[i]["_source"]) for i in at])
    ds = ds.add_column("_row", [int(rows[i]["_row"]) for i in at])
    for column in columns:
        if column in ds.column_names:
            continue  # a column the layout keeps itself
        values = [rows[i].get(column) for i in at]
        if all(v is None or isinstance(v, (int, float)) for v in values):
            ds = ds.add_column(column, [float("nan") if v is None else float(v) for v in values],
                               feature=datasets.Value("float64"))
    return ds, skipped, text
__all__ = ["build_split", "keeps_order", "cache_key", "log_reports", "rows_of", "run_procedures"]
