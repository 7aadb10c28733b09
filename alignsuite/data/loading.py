"""Load one table of rows from wherever it lives, through `datasets`.

`datasets` already reads every format we accept and caches the Arrow it builds; this file only decides
which of its entry points a source string means, so that a typo in a local path fails here with the
path in the message instead of as a confusing hub lookup, and what is wrong with a local file that
`datasets` cannot read (or, for bytes that are not UTF-8, reads without complaint and fails on later):
an empty file, a malformed JSON line, a CSV line with more fields than its header (an unquoted comma), text in
another encoding. Each becomes a `DataError` naming the
file and the line.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import os
from pathlib import Path

import datasets

from alignsuite.data.errors import DataError

# File suffix -> the `datasets` packaged builder that reads it.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_TEXT_SUFFIXES = (".jsonl", ".json", ".csv")  # formats whose bytes we can check before `datasets` reads them
_EXPECT_ROWS = "at least one row"


def _looks_local(source: str) -> bool:
    # Hub ids are "name" or "org/name": never absolute, never dotted-relative, never a file name
    # with a data suffix, never a glob.
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in _BUILDERS
        or any(c in source for c in "*?[")
    )


def _pick_split(table: datasets.Dataset | datasets.DatasetDict, source: str, split: str) -> datasets.Dataset:
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise ValueError(f"{source}: no split {split!r}; it has splits {sorted(table)}")
        return table[split]
    return table


def load_table(source: str, split: str = "train") -> datasets.Dataset:
    """Return the rows of ``source`` as a `datasets.Dataset`.

    ``source`` is, in the order tried:
    - a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (``split``
      picks from a DatasetDict);
    - any other directory: its data files, split by file name as `datasets` does;
    - a ``.jsonl``/``.json``/``.parquet``/``.arrow``/``.csv`` file, or a glob of such files (all
      rows form one table; ``split`` does not apply);
    - otherwise a hub id, loaded with ``datasets.load_dataset(source, split=split)``.
    A source that looks local (starts with ``.``, ``/`` or ``~``, has a data suffix, or is a glob) but
    matches nothing raises ``FileNotFoundError`` naming it. A local ``.jsonl``/``.json``/``.csv`` file
    must be UTF-8 text; a table with no rows, an empty file, a line that is not JSON and a CSV line with
    another number of fields than its header raise ``DataError`` naming the file (and the line).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _nonempty(_pick_split(datasets.load_from_disk(str(path)), source, split), source)
        files = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in _TEXT_SUFFIXES)
        return _nonempty(_read(lambda: datasets.load_dataset(str(path), split=split), files, source), source)

    files = sorted(glob.glob(os.path.expanduser(source))) if any(c in source for c in "*?[") else []
    if path.is_file():
        files = [str(path)]
    if files:
        builders = {_BUILDERS.get(Path(f).suffix.lower()) for f in files}
        if len(builders) != 1 or None in builders:
            raise ValueError(
                f"{source}: expected files of one of the kinds {sorted(_BUILDERS)}, "
                f"got {[Path(f).name for f in files[:5]]}"
            )
        # One table from all files; their own split names mean nothing here, so "train" is just the
        # name `datasets` gives a data_files list.
        builder = builders.pop()
        return _nonempty(_read(lambda: datasets.load_dataset(builder, data_files=files, split="train"), files, source), source)

    if _looks_local(source):
        raise FileNotFoundError(f"no data file or directory at {source!r}")
    return _nonempty(datasets.load_dataset(source, split=split), source)


def _read(load, files: list[str], source: str) -> datasets.Dataset:
    text_files = [f for f in files if Path(f).suffix.lower() in _TEXT_SUFFIXES]
    # Arrow stores bytes that are not UTF-8 without complaint and fails with a bare UnicodeDecodeError
    # when the row is read, mid-run; so the bytes are checked first, every time (a fast C-level decode).
    for f in text_files:
        check_text_file(f)
    try:
        return load()
    except Exception as err:
        # `datasets` reports a bad line as DatasetGenerationError (details only in a log line) and an
        # empty file as StopIteration; find the line ourselves, on this rare path only.
        for f in text_files:
            find_bad_line(f)
        if "corresponds to no data" in str(err):  # what `datasets` says of files with no rows (parquet ...)
            raise DataError(source, expected=_EXPECT_ROWS, problem="the table has none") from err
        raise


def _nonempty(table: datasets.Dataset, source: str) -> datasets.Dataset:
    if len(table) == 0:
        raise DataError(source, expected=_EXPECT_ROWS, problem="the table has none")
    return table


_BLOCK = 1 << 24


def check_text_file(path: str) -> None:
    """Raise ``DataError`` if ``path`` is empty (or blank), or is not UTF-8 (naming the line and byte)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    blank = True
    with open(path, "rb") as f:
        try:
            while block := f.read(_BLOCK):
                blank = blank and not block.strip()
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            _find_bad_bytes(path)
    if blank:
        raise DataError(path, expected=_EXPECT_ROWS, problem="the file is empty")


def _find_bad_bytes(path: str) -> None:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    path, line=number, expected="UTF-8 text",
                    problem=f"byte 0x{raw[err.start]:02x} at column {err.start + 1} is not UTF-8 (the file looks "
                    "Latin-1 or Windows-1252 encoded); save it as UTF-8",
                ) from None


def find_bad_line(path: str) -> None:
    """Raise ``DataError`` naming the first line of ``path`` that keeps `datasets` from reading it: a
    line of a ``.jsonl`` (or JSON-lines ``.json``) that is not one JSON object, a JSON array document
    that does not parse, a ``.csv`` with a header and no rows or a line with more or fewer fields than
    its header (:func:`check_delimited`). Returns if it finds none."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        check_delimited(path)
    with open(path, encoding="utf-8") as f:
        if suffix == ".csv":
            if sum(1 for line in f if line.strip()) <= 1:
                raise DataError(path, expected=_EXPECT_ROWS, problem="the file has a header line and no rows")
            return
        first = f.read(1)
        while first.isspace():
            first = f.read(1)
        f.seek(0)
        if suffix == ".json" and first == "[":
            try:
                json.load(f)
            except json.JSONDecodeError as err:
                raise DataError(path, line=err.lineno, expected="a JSON array of row objects",
                                problem=f"{err.msg} at column {err.colno}") from None
            return
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, line=number, expected="one JSON object per line", got=line,
                                problem=f"{err.msg} at column {err.colno}") from None
            if not isinstance(value, dict):
                raise DataError(path, line=number, expected="one JSON object per line", got=line)



_SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon"}


def check_delimited(path: str, delimiter: str = ",") -> None:
    """Raise ``DataError`` naming the first line of a delimited text file (``.csv``, ``.tsv``) whose fields
    are more or fewer than its header's: an unquoted separator inside a value, which a reader would otherwise
    cut the value at (or, reading with pandas, report only inside a chained traceback). Blank lines pass."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        for fields in reader if header is not None else ():
            if fields and len(fields) != len(header):
                separator = _SEPARATORS.get(delimiter, repr(delimiter))
                raise DataError(path, line=reader.line_num, expected=f"{len(header)} fields as in the header line",
                                got=len(fields), problem=f"a {separator} inside a value needs the value in double quotes")
