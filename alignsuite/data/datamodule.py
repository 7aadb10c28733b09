"""Preference data for the Trainer: canonical rows in a `datasets.Dataset`, batches of python lists.

What a row is (text pairs, unpaired text, image pairs ...) is the layout's business
(`alignsuite.data.layouts`); this module only loads sources, holds out validation rows, caps, indexes
and batches. Tokenizing, image processing and noise drawing are the backbone's job
(`backbone.prepare`), so a batch is still text, chat messages or images, each numeric column a float
tensor, and ``index``, the row's position in its dataset, by which scores computed once (a precomputed
reference) are found again. A backbone may do part of that work as batches are collated, in the loader's
worker processes (``batch_transform``, from `Backbone.loader_transform`: a token backbone's tokenising).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import datasets
import lightning as L
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch.utils.data import DataLoader

from alignsuite.data.layouts import Layout, TextPairs
from alignsuite.data.layouts.base import HIDDEN_PREFIX, Table, all_skipped_error
from alignsuite.data.lengths import row_lengths
from alignsuite.data.loading import load_table
from alignsuite.data.procedures.base import Procedure
from alignsuite.data.procedures.run import build_split, keeps_order
from alignsuite.data.protocol import PreferenceData
from alignsuite.data.samplers import EpochRandomSampler, ResumableDataLoader
from alignsuite.data.stages import STAGE, StageSampler, train_stages

Split = Literal["train", "val"]


class PreferenceDataModule(L.LightningDataModule, PreferenceData):
    """Loads, validates and batches preference data.

    Args:
        train: training data: a file (``.jsonl``/``.json``/``.parquet``/``.arrow``/``.csv``), a glob, a
            ``save_to_disk`` folder, an image folder, a hub id, or a list of them.
        val: validation data, like ``train``.
        layout: what a row is, e.g. ``alignsuite.data.TextPairs`` (the default), ``TextUnpaired`` (KTO),
            ``ImagePairs`` or ``ImageUnpaired`` (diffusion); its options name the fields.
        val_fraction: without ``val``, the share of train rows held out for validation (seeded by ``seed``).
        split: split to take from a hub dataset or a saved DatasetDict for ``train``.
        val_split: split to take for ``val``.
        batch_size: rows per training batch (at least 2 for unpaired layouts: KTO compares rows).
        eval_batch_size: rows per validation/test/predict batch (default ``batch_size``).
        num_workers: DataLoader worker processes.
        group_by_length: 0 shuffles rows freely. N > 0 puts rows of similar length (characters of the prompt
            and its longest answer) in the same training step: the shuffle is sorted by length within windows
            of N steps, whose steps are then shuffled (see `EpochRandomSampler`). Batches of one row per
            sequence carry less padding; steps are less mixed. Transformers' ``group_by_length`` uses 50.
        max_train_rows: keep only the first rows of the train set (smoke runs).
        max_val_rows: keep only the first rows of the validation set.
        seed: seed of the held-out split and of the shuffle (one order per epoch).
        procedures: data procedures run on each split's rows after they are read and before the layout makes
            them canonical, in turn (``alignsuite.data.procedures``: Selective DPO, reward-augmented relabelling,
            pairs from scored lists ...); their output is stored once in the cache, keyed by its inputs.
        shuffle: shuffle the training rows each epoch; null: shuffle unless a procedure sets the order (Selective
            DPO's easy to hard, Curry-DPO's stages), whose order is then kept (under DDP rank r takes rows
            r, r + W, ...).
        stages: train in stages (sDPO, Curry-DPO), stage 0's rows first, each stage shuffled on its own (kept in
            order with ``shuffle: false``) and padded to fill whole steps on every process (`data.stages`): the
            name of the train rows' stage column (``stage``, which `CurryPairs` writes), a number of equal
            consecutive chunks of the rows, or ``sources`` (each train source a stage, in order). Batches then
            carry ``stage``, at whose change a stage-following reference re-syncs (``StageSync``).

    Subclasses generate their rows by overriding `load_rows`; the layout validates them like a file's. What
    the rest of the suite reads from it is declared by `PreferenceData` (``data/protocol.py``).
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        layout: Layout | None = None,
        val_fraction: float = 0.0,
        split: str = "train",
        val_split: str = "test",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: int = 0,
        max_train_rows: int | None = None,
        max_val_rows: int | None = None,
        seed: int = 0,
        procedures: list[Procedure] | None = None,
        shuffle: bool | None = None,
        stages: str | int | None = None,
    ):
        super().__init__()
        # Under the CLI Lightning stores the parsed config (the layout's class path and options); built
        # by hand, the layout object stays out of the checkpoint's hyper-parameters.
        self.save_hyperparameters(ignore=None if _given_hyperparameters.get() is not None else ["layout", "procedures"])
        layout = TextPairs() if layout is None else layout
        if not isinstance(layout, Layout):
            raise TypeError(
                f"data.layout must be a layout object such as alignsuite.data.TextPairs() (TextUnpaired, ImagePairs,"
                f" ImageUnpaired; in a recipe: layout: {{class_path: alignsuite.data.TextPairs}}), got {layout!r}"
            )
        self.layout = layout
        self.procedures = list(procedures or [])
        self.ordered = keeps_order(self.procedures, shuffle, group_by_length)
        if stages is not None and group_by_length:
            raise ValueError("data.group_by_length reorders the rows; it cannot be used with data.stages")
        self.stages, self.shuffle_stages = stages, shuffle is not False
        _check_counts(batch_size=batch_size, eval_batch_size=eval_batch_size, max_train_rows=max_train_rows,
                      max_val_rows=max_val_rows)
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if isinstance(group_by_length, bool) or not isinstance(group_by_length, int) or group_by_length < 0:
            raise ValueError(f"data.group_by_length must be 0 (off) or a number of steps per window, got {group_by_length!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if layout.row_kind == "unpaired":
            # KTO estimates its KL term from mismatched (prompt, completion) pairs inside a batch;
            # a batch of one has none.
            for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
                if size is not None and size < 2:
                    raise ValueError(f"data.{name} must be at least 2 for an unpaired layout ({layout.name}: KTO), got {size}")
        self.sources = {"train": _as_list(train), "val": _as_list(val)}
        self.split_names = {"train": split, "val": val_split}
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.max_rows = {"train": max_train_rows, "val": max_val_rows}
        self.seed = seed
        self.train_set: datasets.Dataset | None = None
        self.val_set: datasets.Dataset | None = None
        self.skipped: dict[str, int] = {}
        self.procedure_logs: dict[str, str] = {}  # split -> what the procedures kept, dropped and reordered
        # Work on each collated batch the loaders' workers do for the backbone (tokenising); the module
        # sets it at setup from `backbone.loader_transform`.
        self.batch_transform: Callable[[dict], dict] | None = None
        self.given_rows: dict[str, list[dict]] = {}  # source -> its rows, read already (use_rows)
        self._built = False

    @property
    def row_kind(self) -> str:
        """``"pairs"`` or ``"unpaired"``, from the layout."""
        return self.layout.row_kind

    @property
    def collate(self):
        return self.layout.collate

    @property
    def bad_images(self) -> dict[str, int]:
        """Rows dropped at collate because an image did not decode (``skip_bad_images``), per source;
        counted in this process (DataLoader workers keep their own counts)."""
        return getattr(self.layout, "bad_images", {})

    def columns(self) -> set[str]:
        """The columns batches carry (``index`` included), empty without data; valid after `setup`."""
        if not self._built:
            raise RuntimeError("data.columns() is known after setup(); call setup() first")
        ds = self.train_set if self.train_set is not None else self.val_set
        return set() if ds is None else {c for c in ds.column_names if not c.startswith(HIDDEN_PREFIX)}

    # --- building ------------------------------------------------------------------------------

    def load_rows(self, split: Split) -> list[dict] | datasets.Dataset | None:
        """Raw rows of ``split`` (``None``: none). The default loads and concatenates the configured
        sources; a subclass that generates its data (a toy world) overrides this, and its rows are
        normalised and validated like a file's."""
        tables = [load_table(s, self.split_names[split]) for s in self.sources[split]]
        return datasets.concatenate_datasets(tables) if tables else None

    def _tables(self, split: Split) -> list[Table]:
        # Each configured source is normalised on its own so that an error names the file and the row
        # within it; rows from an overridden `load_rows` have no file, so they are named by the method.
        if type(self).load_rows is not PreferenceDataModule.load_rows:
            rows = self.load_rows(split)
            name = f"{type(self).__name__}.load_rows({split!r})"
            return [] if rows is None else [self.layout.open(name, self.split_names[split], rows)]
        return [self.layout.open(s, self.split_names[split], self.given_rows.get(s)) for s in self.sources[split]]

    def use_rows(self, source: str, rows: list[dict]) -> None:
        """Take ``rows`` as the rows of the configured source ``source`` instead of reading it through `datasets`:
        rows a caller has just written to that file and read back as they are (the online loop's round rows).
        They are normalised and checked as the file's would be, and errors name the source and row."""
        if not any(source in sources for sources in self.sources.values()):
            raise ValueError(f"data.use_rows: {source} is not a configured source (train: {self.sources['train']},"
                             f" val: {self.sources['val']})")
        if self._built:
            raise RuntimeError("data.use_rows: the data is built already; give rows before setup()")
        self.given_rows[source] = rows

    def _build(self, split: Split) -> datasets.Dataset | None:
        tables, procedures = self._tables(split), [p for p in self.procedures if split in p.splits]
        if procedures and tables:
            ds, skipped, self.procedure_logs[split] = build_split(self.layout, procedures, split, tables)
        else:
            ds, skipped = self.layout.build(tables)
        self.skipped.update({source: n for source, (n, _) in skipped.items()})
        if ds is None and skipped:
            raise all_skipped_error(self.layout, split, skipped)
        return ds

    def setup(self, stage: str | None = None) -> None:
        # Lightning calls setup once per stage (fit, validate, ...); the data is the same for all.
        if self._built:
            return
        train, val = self._build("train"), self._build("val")
        if val is None and train is not None and self.val_fraction > 0:
            if self.ordered:  # the held-out rows are drawn at random; the training rows keep their order
                train = train.add_column("_order", list(range(len(train))))
            parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed, shuffle=True)
            train, val = parts["train"], parts["test"]
            if self.ordered:
                order = train["_order"]
                train = train.select(sorted(range(len(order)), key=order.__getitem__)).remove_columns("_order")
                val = val.remove_columns("_order")
        self.train_set, self.val_set = (self._finish(ds, s) for ds, s in ((train, "train"), (val, "val")))
        self._built = True

    def _finish(self, ds: datasets.Dataset | None, split: Split) -> datasets.Dataset | None:
        if ds is None:
            return None
        cap = self.max_rows[split]
        if cap is not None and cap < len(ds):
            ds = ds.select(range(cap))
        if split == "train" and self.stages is not None:
            values = train_stages(ds, self.stages, self.sources["train"])
            ds = ds.remove_columns(STAGE) if STAGE in ds.column_names else ds
            ds = ds.add_column(STAGE, [float(v) for v in values])
        return ds.add_column("index", list(range(len(ds))))

    # --- storing scores with the data ------------------------------------------------------------

    def add_columns(self, split: Split, columns: dict[str, list[float]]) -> None:
        """Add or overwrite numeric columns of the built ``split`` set (reference scores computed once);
        each column has one value per row, in row (``index``) order."""
        ds = self._dataset(split)
        for name, values in columns.items():
            if name in self.layout.list_columns or name in ("label", "index") or name.startswith(HIDDEN_PREFIX):
                raise ValueError(f"add_columns: {name!r} is a data column, not a score column")
            values = [float(v) for v in values]
            if len(values) != len(ds):
                raise ValueError(f"add_columns: column {name!r} has {len(values)} values, the {split} set has {len(ds)} rows")
            if name in ds.column_names:
                ds = ds.remove_columns(name)
            ds = ds.add_column(name, values)
        setattr(self, f"{split}_set", ds)

    def _dataset(self, split: Split) -> datasets.Dataset:
        ds = getattr(self, f"{split}_set")
        if ds is None:
            raise RuntimeError(
                f"no {split} data: set data.{split}"
                + (" or data.val_fraction" if split == "val" else "")
                + ("" if self._built else ", and call setup() first")
            )
        return ds

    # --- loaders ---------------------------------------------------------------------------------

    def _loader(self, ds: datasets.Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        if shuffle:
            # Lightning leaves a DistributedSampler in place, so under DDP each rank takes its shard of the
            # permutation of (data.seed, epoch) rather than the Trainer-seeded sampler Lightning would inject.
            shard = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
            lengths = row_lengths(ds) if self.group_by_length else None
            replicas, rank = shard.get("num_replicas", 1), shard.get("rank", 0)
            if self.stages is not None:  # every process crosses a stage boundary at the same optimizer step
                step_rows = batch_size * replicas * (self.trainer.accumulate_grad_batches if self.trainer else 1)
                sampler = StageSampler(ds, [int(s) for s in ds[STAGE]], self.seed, step_rows, replicas, rank,
                                       self.shuffle_stages)
            else:
                sampler = EpochRandomSampler(ds, self.seed, replicas, rank, lengths, batch_size, self.group_by_length,
                                             ordered=self.ordered)
            loader = ResumableDataLoader
        else:
            sampler, loader = None, DataLoader
        return loader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collate if self.batch_transform is None else Collate(self.collate, self.batch_transform),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        # A trailing batch of one row gives KTO no mismatched pair for its KL estimate.
        drop_last = self.row_kind == "unpaired" and len(ds) > self.batch_size
        return self._loader(ds, self.batch_size, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader | list:
        # No validation data is a valid setup; Lightning skips validation for an empty list.
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The validation prompts, for generation and reward scoring."""
        ds = self._dataset("val")
        # The prompt and what conditions it (images, and where they came from for errors), not the answers.
        keep = ["prompt", "index", "images", "tools", "prompt_speech", "prompt_text"]
        ds = ds.select_columns([c for c in ds.column_names if c in keep or c.startswith(HIDDEN_PREFIX)])
        return self._loader(ds, self.eval_batch_size, shuffle=False)


class Collate:
    """The layout's collate, then a transform of the batch (picklable, for DataLoader workers)."""

    def __init__(self, collate: Callable[[list[dict]], dict], transform: Callable[[dict], dict]) -> None:
        self.collate, self.transform = collate, transform

    def __call__(self, rows: list[dict]) -> dict:
        return self.transform(self.collate(rows))


def _check_counts(**counts: int | None) -> None:
    # Checked up front: a cap of 0 would otherwise surface as "no train data" after all rows were read.
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"data.{name} must be >= 1, got {value!r}")


def _as_list(sources: str | list[str] | None) -> list[str]:
    if sources is None:
        return []
    return [sources] if isinstance(sources, str) else list(sources)
