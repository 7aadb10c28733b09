"""Pairs that truncation makes identical, dropped from the data at setup.

Once a token backbone truncates a pair's rows, chosen and rejected may be the same tokens. Their DPO-family loss
is then ``ln 2`` with no gradient at every step, like the pairs with chosen == rejected the data layer skips, so
they are dropped before training, counted per split, and named in one warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from alignsuite.data.errors import DataError, source_names


def drop_identical_pairs(datamodule: Any, find: Callable[[Any], list[int]], limits: str, dropped: dict[str, int],
                         checked: dict[str, str]) -> None:
    """Drop from the data module's train and val sets the pairs ``find(dataset)`` names (their positions).

    Each split's ``index`` column is renumbered afterwards, since it means "row position" (precomputed reference
    scores are stored and found by it). ``limits`` names the truncation lengths in messages. ``dropped`` (counts
    per split) and ``checked`` (the fingerprint of each split already filtered: setup runs once per stage) are
    updated in place.
    """
    newly: dict[str, list[int]] = {}
    for split in ("train", "val"):
        ds = getattr(datamodule, f"{split}_set", None)
        if ds is None or len(ds) == 0 or not {"prompt", "chosen", "rejected"} <= set(ds.column_names):
            continue
        fingerprint = getattr(ds, "_fingerprint", None)
        if fingerprint is not None and checked.get(split) == fingerprint:
            continue  # setup runs once per stage; the data is already filtered
        same = find(ds)
        if same:
            if len(same) == len(ds):
                raise DataError(
                    source_names(ds) or f"the {split} data",
                    problem=f"every {split} pair ({len(ds)}) has identical chosen and rejected tokens once truncated"
                    f" to {limits}; nothing is left to learn from: raise the lengths",
                )
            newly[split] = (same, named_rows(ds, same))
            drop = set(same)
            ds = ds.select([i for i in range(len(ds)) if i not in drop])
            if "index" in ds.column_names:
                ds = ds.remove_columns("index").add_column("index", list(range(len(ds))))
            setattr(datamodule, f"{split}_set", ds)
        dropped[split] = dropped.get(split, 0) + len(same)
        checked[split] = getattr(ds, "_fingerprint", None)
    if newly:
        parts = "; ".join(f"{len(ids)} {split} pair(s) ({where})" for split, (ids, where) in newly.items())
        rank_zero_warn(
            f"dropped {parts} whose chosen and rejected answers are the same tokens once truncated to"
            f" {limits}: they would train at loss ln 2 with no gradient. Counts are in backbone.dropped_identical."
        )


def named_rows(ds, positions: list[int], most: int = 10) -> str:
    """Where the rows at ``positions`` of ``ds`` came from, for a message: ``train.jsonl rows 0, 3`` by file and row
    when the rows keep their provenance (``_source``, ``_row``), else ``rows 0, 3`` by position; the first ``most``."""
    shown, more = positions[:most], (", ..." if len(positions) > most else "")
    if not {"_source", "_row"} <= set(ds.column_names):
        return f"rows {', '.join(map(str, shown))}{more}"
    origin = ds.select(shown).select_columns(["_source", "_row"])
    by_source: dict[str, list[str]] = {}
    for source, row in zip(origin["_source"], origin["_row"]):
        by_source.setdefault(source, []).append(str(row))
    return "; ".join(f"{source} rows {', '.join(rows)}" for source, rows in by_source.items()) + more


__all__ = ["drop_identical_pairs", "named_rows"]
