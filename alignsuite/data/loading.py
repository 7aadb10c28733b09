"""Load one table of rows from wherever it lives, through `datasets`.

`datasets` already reads every format we accept and caches the Arrow it builds; this file only decides
which of its entry points a source string means, so that a typo in a local path fails here with the
path in the message instead of as a confusing hub lookup.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import datasets

# File suffix -> the `datasets` packaged builder that reads it.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


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
    matches nothing raises ``FileNotFoundError`` naming it.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _pick_split(datasets.load_from_disk(str(path)), source, split)
        return datasets.load_dataset(str(path), split=split)

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
        return datasets.load_dataset(builders.pop(), data_files=files, split="train")

    if _looks_local(source):
        raise FileNotFoundError(f"no data file or directory at {source!r}")
    return datasets.load_dataset(source, split=split)
