"""What every data layout is: the kind of row it yields, how it reads one raw row, how it batches.

A layout is one kind of preference row (text pairs, unpaired text, image pairs ...). The data module
knows nothing of fields or modalities: it hands the layout each source's rows and batches what comes
back. A new modality is a new layout, not new data-module options.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn

from alignsuite.data.errors import DataError
from alignsuite.data.images import HIDDEN_PREFIX  # provenance columns (images'): never reach a batch
from alignsuite.data.loading import load_table

Rows = list[dict] | datasets.Dataset
Table = tuple[str, Rows, "str | None"]  # (source name for errors, raw rows, folder relative paths start from)


class Layout:
    """Base of the data layouts, chosen in a recipe by ``data.init_args.layout.class_path``.

    Subclasses set ``row_kind`` (``"pairs"``: ``prompt``/``chosen``/``rejected``; ``"unpaired"``:
    ``prompt``/``completion``/``label``), implement `normalize` (one raw row -> one canonical row, or
    ``None`` to skip it, counted and reported with ``skip_reason``) and may override `open` (where the
    rows of a source come from), `expand` (canonical rows -> stored rows, e.g. a pair into two unpaired
    rows), `features` (a fixed Arrow schema) and `collate` (stored rows -> one batch).
    """

    row_kind: ClassVar[str]
    # What a row holds, checked against the backbone's ``modality`` at setup: text, vision_language, text_to_image.
    modality: ClassVar[str] = "text"
    skip_reason: ClassVar[str] = "chosen equals rejected"
    # Canonical rows held as python objects before they go to Arrow; 0: all rows of a split at once,
    # with the schema inferred from all of them (text, whose message keys vary from row to row).
    chunk_rows: ClassVar[int] = 0

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def preference_dimensions(self) -> tuple[str, ...]:
        """The named preference dimensions a row is judged under, the primary first (batches carry ``pref_<d>``
        per dimension); ``()`` for data with one preference."""
        return ()

    def __repr__(self) -> str:
        # The options that differ from their defaults: what a recipe would have to say.
        params = inspect.signature(type(self).__init__).parameters.values()
        args = ", ".join(f"{p.name}={getattr(self, p.name)!r}" for p in params
                         if hasattr(self, p.name) and getattr(self, p.name) != p.default)
        return f"{self.name}({args})"

    # --- reading ---------------------------------------------------------------------------------

    def open(self, source: str, split: str, rows: Rows | None = None) -> Table:
        """The raw rows of a configured source (file, folder, hub id) and its split name. ``rows``: its rows read
        already, taken as they are: rows a caller has just written to the file (the data module's ``use_rows``),
        or rows a data module generated (``load_rows``; ``source`` is then a name for errors)."""
        return source, load_table(source, split) if rows is None else rows, None

    def check_first(self, row: dict, source: str) -> None:
        """Look at the first raw row of a source, to point at the right layout when it is not this one."""

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        raise NotImplementedError

    def use_model(self, **settings: Any) -> None:
        """Settings of the model the rows are for (the image token, the codebook size, the mel width, the
        sampling rate ...), handed over by the backbone at setup (``on_setup``), so that the layout checks
        rows against them where it still knows each row's file, row and field. A layout ignores what it
        does not read."""

    def check_row(self, canon: dict, first: dict, index: int, source: str) -> None:
        """Refuse a canonical row that cannot share a column with the first one."""

    def expand(self, rows: list[dict]) -> list[dict]:
        return rows

    def features(self, first: dict) -> datasets.Features | None:
        """A fixed Arrow schema for stored rows like ``first``; ``None`` lets Arrow infer it."""
        return None

    def warn_skipped(self, source: str, skipped: list[int]) -> None:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        rank_zero_warn(f"{source}: skipped {len(skipped)} rows where {self.skip_reason} (rows {shown})")

    def build(self, tables: list[Table]) -> tuple[datasets.Dataset | None, dict[str, tuple[int, int]]]:
        """The stored rows of all ``tables`` as one dataset (``None``: no rows), and per source with
        skipped rows, ``(rows skipped, rows read)``."""
        parts, chunk, first, skipped = [], [], None, {}

        def flush():
            if chunk:
                rows = self.expand(chunk)
                parts.append(datasets.Dataset.from_list(rows, features=self.features(rows[0])))
                chunk.clear()

        for source, rows, base_dir in tables:
            dropped = []
            for i, row in enumerate(rows):
                if i == 0:
                    self.check_first(row, source)
                canon = self.normalize(row, i, source, base_dir)
                if canon is None:
                    dropped.append(i)
                    continue
                if first is None:
                    first = canon
                else:
                    self.check_row(canon, first, i, source)
                chunk.append(canon)
                if self.chunk_rows and len(chunk) >= self.chunk_rows:
                    flush()
            if dropped:
                skipped[source] = (len(dropped), len(rows))
                self.warn_skipped(source, dropped)
        flush()
        joined = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else None
        return joined, skipped

    # --- batching --------------------------------------------------------------------------------

    # Columns a batch carries as python lists (text, messages, images); any other but ``index`` is numeric.
    list_columns: ClassVar[frozenset[str]] = frozenset({"prompt", "chosen", "rejected", "completion"})

    def decode(self, key: str, value: Any) -> Any:
        """A stored list-column value as the batch carries it (text layouts: JSON text back to objects)."""
        return value

    def collate(self, rows: list[dict]) -> dict:
        """Columns of a list of stored rows: python lists for `list_columns`, ``index`` as a long tensor,
        every other column (``label``, rewards, reference scores) as a float tensor. Hidden
        (provenance) columns are dropped."""
        batch = {}
        for key in rows[0]:
            if key.startswith(HIDDEN_PREFIX):
                continue
            values = [row[key] for row in rows]
            if key == "index":
                batch[key] = torch.tensor(values, dtype=torch.long)
            elif key in self.list_columns:
                batch[key] = [self.decode(key, v) for v in values]
            else:
                batch[key] = torch.tensor(values, dtype=torch.float)
        return batch


def all_skipped_error(layout: Layout, split: str, skipped: dict[str, tuple[int, int]]) -> DataError:
    """The error for a split whose sources were read and whose every row was skipped."""
    (first, (n, _)), *others = skipped.items()
    also = "".join(f"; so were all {m} rows of {s}" for s, (m, _) in others)
    return DataError(first, problem=f"all {n} rows were skipped because {layout.skip_reason}{also}; no {split} rows are left")
