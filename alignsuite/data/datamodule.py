"""Preference data for the Trainer: canonical rows in a `datasets.Dataset`, batches of python lists.

Tokenizing, image processing and noise drawing are the backbone's job (`backbone.prepare`), so a batch
here is still text or chat messages: ``prompt``/``chosen``/``rejected`` (pairs) or
``prompt``/``completion``/``label`` (unpaired), each numeric column as a float tensor, and ``index``,
the row's position in its dataset, so scores computed once (a precomputed reference) can be stored back
with `add_columns` and found again.

With ``modality="image"`` (text-to-image diffusion) the rows are those of `alignsuite.data.images`:
captions, and images kept encoded in the dataset and decoded per batch into RGB ``PIL.Image`` lists
(resizing and cropping belong to the backbone, `images.to_tensor`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import datasets
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler

from alignsuite.data import images
from alignsuite.data.errors import DataError
from alignsuite.data.loading import load_table
from alignsuite.data.preference import (
    PairFields,
    UnpairedFields,
    normalize_pair,
    normalize_unpaired,
    pairs_to_unpaired,
)

Split = Literal["train", "val"]
_TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion")


def collate_rows(rows: list[dict]) -> dict:
    """Columns of a list of canonical rows: text/messages as lists, ``index`` as a long tensor, every
    other column (``label``, reference scores) as a float tensor."""
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if key == "index":
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif key in _TEXT_COLUMNS:
            batch[key] = values
        else:
            batch[key] = torch.tensor(values, dtype=torch.float)
    return batch


class ImageCollator:
    """`collate_rows` for canonical image rows: decodes every image to an RGB ``PIL.Image`` and drops
    the hidden provenance columns.

    An image that does not decode raises ``DataError`` naming its source, source row and source column
    (``jpg_0``, ``image`` ...). With ``skip_bad_images`` the row leaves the batch instead (the batch
    shrinks, possibly to no rows: lists of length 0 and tensors of shape ``[0]``), ``bad_images`` counts
    it per source and one warning is given per process. With DataLoader workers each worker process
    holds its own copy of the counts, so only the warning reaches the console.
    """

    def __init__(self, skip_bad_images: bool = False) -> None:
        self.skip_bad_images = skip_bad_images
        self.bad_images: dict[str, int] = {}
        self._warned = False

    def __call__(self, rows: list[dict]) -> dict:
        kept = []
        for row in rows:
            try:
                decoded = {
                    key: images.decode_image(row[key], row.get(f"_{key}_column", key), row["_row"], row["_source"])
                    for key in images.IMAGE_COLUMNS
                    if key in row
                }
            except DataError as err:
                if not self.skip_bad_images:
                    raise
                self._skip(err)
                continue
            kept.append({k: decoded.get(k, v) for k, v in row.items() if not k.startswith(images.HIDDEN_PREFIX)})
        if kept:
            return collate_rows(kept)
        # Every row was bad: an empty batch with the usual keys, for the step to skip.
        template = {k: v for k, v in rows[0].items() if not k.startswith(images.HIDDEN_PREFIX)}
        return {
            key: [] if key in _TEXT_COLUMNS else torch.zeros(0, dtype=torch.long if key == "index" else torch.float)
            for key in template
        }

    def _skip(self, err: DataError) -> None:
        self.bad_images[err.source] = self.bad_images.get(err.source, 0) + 1
        if not self._warned:
            self._warned = True
            # Each rank and worker sees different rows, so this is not rank-zero only.
            warnings.warn(f"skipping rows whose image does not decode (skip_bad_images); first: {err}", stacklevel=2)


def _is_chat(row: dict) -> bool:
    return isinstance(row["prompt"], list) or isinstance(row.get("chosen", row.get("completion")), list)


class PreferenceDataModule(L.LightningDataModule):
    """Loads, validates and batches preference data.

    ``train``/``val`` are sources for `load_table` (a file, a glob, a saved dataset, a directory or a
    hub id), or lists of them. Without ``val``, ``val_fraction`` of the train rows (seeded by ``seed``)
    is held out. ``layout="unpaired"`` trains KTO-style objectives; pair data is then split into one
    desirable and one undesirable row per pair. ``split``/``val_split`` name the split to take from a
    hub dataset or a saved DatasetDict. ``max_train_rows``/``max_val_rows`` keep the first rows only
    (for smoke runs). Subclasses generate data by overriding `load_rows`.

    ``modality="image"`` reads text-to-image preference data instead (`alignsuite.data.images`): the
    Pick-a-Pic v2 layout (``caption_field``, ``image_0_field``, ``image_1_field``, ``label_0_field``),
    ordered pairs (``caption_field``, ``chosen_field``, ``rejected_field``) or, with ``layout="unpaired"``
    (Diffusion-KTO), ``caption_field``, ``image_field``, ``label_field``. A source may also be an image
    folder: a directory with the images and a ``metadata.jsonl`` (or ``.csv``/``.parquet``) whose image
    columns hold file names relative to it. The modality is an explicit option, not guessed from the
    columns, so that a text dataset with a stray ``image`` column cannot silently become an image run,
    and text data given to an image run fails naming the missing column.

    Image rules: ties (``label_0 == 0.5``) are dropped, counted in ``skipped`` and warned about unless
    ``drop_ties=False``, which keeps them with ``jpg_0`` as chosen (as the diffusers scripts do).
    ``reward_0_field``/``reward_1_field`` columns, when present, become ``reward_chosen``/
    ``reward_rejected`` (swapped with the images) and reach the batch as float tensors (SmPO). Labels,
    captions, image presence and file existence are checked at `setup`; whether an image decodes is
    checked at collate (decoding every image up front is too slow), where a bad one raises ``DataError``
    naming source, row and column, or with ``skip_bad_images=True`` drops its row from the batch and is
    counted in ``bad_images``.
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        val_fraction: float = 0.0,
        layout: Literal["pairs", "unpaired"] = "pairs",
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        completion_field: str = "completion",
        label_field: str = "label",
        split: str = "train",
        val_split: str = "test",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_rows: int | None = None,
        max_val_rows: int | None = None,
        seed: int = 0,
        modality: Literal["text", "image"] = "text",
        caption_field: str = "caption",
        image_0_field: str = "jpg_0",
        image_1_field: str = "jpg_1",
        label_0_field: str = "label_0",
        image_field: str = "image",
        reward_0_field: str = "reward_0",
        reward_1_field: str = "reward_1",
        drop_ties: bool = True,
        skip_bad_images: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if layout == "unpaired":
            # KTO estimates its KL term from mismatched (prompt, completion) pairs inside a batch;
            # a batch of one has none.
            for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
                if size is not None and size < 2:
                    raise ValueError(f"data.{name} must be at least 2 for layout 'unpaired' (KTO), got {size}")
        self.sources = {"train": _as_list(train), "val": _as_list(val)}
        self.split_names = {"train": split, "val": val_split}
        self.val_fraction = val_fraction
        self.layout = layout
        self.pair_fields = PairFields(prompt_field, chosen_field, rejected_field)
        self.unpaired_fields = UnpairedFields(prompt_field, completion_field, label_field)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_rows = {"train": max_train_rows, "val": max_val_rows}
        self.seed = seed
        if modality not in ("text", "image"):
            raise ValueError(f"data.modality must be 'text' or 'image', got {modality!r}")
        self.modality = modality
        self.image_fields = images.ImageFields(
            caption=caption_field, image_0=image_0_field, image_1=image_1_field, label_0=label_0_field,
            chosen=chosen_field, rejected=rejected_field, image=image_field, label=label_field,
            reward_0=reward_0_field, reward_1=reward_1_field,
        )
        self.drop_ties = drop_ties
        self.collate = ImageCollator(skip_bad_images) if modality == "image" else collate_rows
        self.train_set: datasets.Dataset | None = None
        self.val_set: datasets.Dataset | None = None
        self.skipped: dict[str, int] = {}
        self._built = False

    # --- building ------------------------------------------------------------------------------

    def load_rows(self, split: Split) -> list[dict] | datasets.Dataset | None:
        """Raw rows of ``split`` (``None``: none). The default loads and concatenates the configured
        sources; a subclass that generates its data (a toy world) overrides this, and its rows are
        normalised and validated like a file's."""
        tables = [load_table(s, self.split_names[split]) for s in self.sources[split]]
        return datasets.concatenate_datasets(tables) if tables else None

    def _named_tables(self, split: Split) -> list[tuple[str, list[dict] | datasets.Dataset]]:
        # Each configured source is normalised on its own so that an error names the file and the row
        # within it; rows from an overridden `load_rows` have no file, so they are named by the method.
        if type(self).load_rows is not PreferenceDataModule.load_rows:
            rows = self.load_rows(split)
            return [] if rows is None else [(f"{type(self).__name__}.load_rows({split!r})", rows)]
        return [(s, load_table(s, self.split_names[split])) for s in self.sources[split]]

    def _canonical(self, source: str, rows: list[dict] | datasets.Dataset) -> list[dict]:
        first = rows[0] if len(rows) else {}
        pairs = self.pair_fields.chosen in first and self.unpaired_fields.completion not in first
        if self.pair_fields.chosen not in first and self.image_fields.image_0 in first:
            raise DataError(source, 0, self.pair_fields.chosen, "text pair data; this looks like Pick-a-Pic image data, set data.modality: image")
        if self.layout == "pairs" and not pairs and self.unpaired_fields.completion in first:
            raise DataError(source, 0, self.pair_fields.chosen, "pair data; this looks unpaired, set data.layout: unpaired")
        out, skipped = [], []
        for i, row in enumerate(rows):
            if self.layout == "unpaired" and not pairs:
                canon = normalize_unpaired(row, i, source, self.unpaired_fields)
            else:
                canon = normalize_pair(row, i, source, self.pair_fields)
            if canon is None:
                skipped.append(i)
                continue
            # Arrow needs one type per column, and a backbone one format per batch.
            if out and _is_chat(canon) != _is_chat(out[0]):
                kind = "chat messages" if _is_chat(out[0]) else "plain text"
                raise DataError(source, i, self.pair_fields.prompt, f"{kind} like the rows before it", canon["prompt"])
            out.append(canon)
        if skipped:
            self.skipped[source] = len(skipped)
            shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
            rank_zero_warn(f"{source}: skipped {len(skipped)} rows where chosen equals rejected (rows {shown})")
        if self.layout == "unpaired" and pairs:
            out = pairs_to_unpaired(out)
        return out

    # --- building image data ---------------------------------------------------------------------

    def _named_image_tables(self, split: Split) -> list[tuple[str, list[dict] | datasets.Dataset, str | None]]:
        # Like `_named_tables`, with the folder relative image paths start from. An image folder is read
        # through its metadata file, which is also what errors name.
        if type(self).load_rows is not PreferenceDataModule.load_rows:
            return [(name, images.undecoded(rows) if isinstance(rows, datasets.Dataset) else rows, None)
                    for name, rows in self._named_tables(split)]
        out = []
        for source in self.sources[split]:
            table_source = images.metadata_file(source) or source
            table = images.undecoded(load_table(table_source, self.split_names[split]))
            out.append((table_source, table, images.image_base_dir(table_source)))
        return out

    _CHUNK = 1000  # canonical image rows held as python objects at once before they go to Arrow

    def _canonical_images(self, source: str, rows: list[dict] | datasets.Dataset, base_dir: str | None) -> datasets.Dataset | None:
        if not len(rows):
            return None
        fields, first = self.image_fields, rows[0]
        unpaired_rows = fields.is_unpaired(first)
        if self.layout == "pairs" and unpaired_rows:
            raise DataError(source, 0, fields.image_0, "pair data; this looks unpaired, set data.layout: unpaired")
        rewards = not unpaired_rows and fields.has_rewards(first)
        unpaired_out = self.layout == "unpaired"
        features = images.image_features(unpaired_out, rewards)
        parts, chunk, ties = [], [], []

        def flush():
            if chunk:
                canon = images.image_pairs_to_unpaired(chunk) if unpaired_out and not unpaired_rows else chunk
                parts.append(datasets.Dataset.from_list(canon, features=features))
                chunk.clear()

        for i, row in enumerate(rows):
            if unpaired_rows:
                canon = images.normalize_image_unpaired(row, i, source, fields, base_dir)
            else:
                canon = images.normalize_image_pair(row, i, source, fields, base_dir, self.drop_ties, rewards)
            if canon is None:
                ties.append(i)
                continue
            chunk.append(canon)
            if len(chunk) >= self._CHUNK:
                flush()
        flush()
        if ties:
            self.skipped[source] = len(ties)
            shown = ", ".join(map(str, ties[:5])) + (", ..." if len(ties) > 5 else "")
            rank_zero_warn(
                f"{source}: dropped {len(ties)} tied pairs ({fields.label_0} == 0.5; rows {shown});"
                " set data.drop_ties: false to keep them with the first image as chosen"
            )
        return datasets.concatenate_datasets(parts) if parts else None

    def _build_images(self, split: Split) -> datasets.Dataset | None:
        parts = []
        for source, table, base_dir in self._named_image_tables(split):
            ds = self._canonical_images(source, table, base_dir)
            if ds is None:
                continue
            if parts and ds.features != parts[0].features:
                raise DataError(source, 0, self.image_fields.reward_0,
                                f"the same columns as the sources before it ({sorted(parts[0].column_names)})",
                                sorted(ds.column_names))
            parts.append(ds)
        return datasets.concatenate_datasets(parts) if parts else None

    def _build(self, split: Split) -> datasets.Dataset | None:
        if self.modality == "image":
            return self._build_images(split)
        rows: list[dict] = []
        for source, table in self._named_tables(split):
            canon = self._canonical(source, table)
            if rows and canon and _is_chat(canon[0]) != _is_chat(rows[0]):
                raise DataError(source, 0, "prompt", "the same format (text or chat) as the sources before it")
            rows += canon
        if not rows:
            return None
        return datasets.Dataset.from_list(rows)

    def setup(self, stage: str | None = None) -> None:
        # Lightning calls setup once per stage (fit, validate, ...); the data is the same for all.
        if self._built:
            return
        train, val = self._build("train"), self._build("val")
        if val is None and train is not None and self.val_fraction > 0:
            parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed, shuffle=True)
            train, val = parts["train"], parts["test"]
        self.train_set, self.val_set = (self._finish(ds, s) for ds, s in ((train, "train"), (val, "val")))
        self._built = True

    def _finish(self, ds: datasets.Dataset | None, split: Split) -> datasets.Dataset | None:
        if ds is None:
            return None
        cap = self.max_rows[split]
        if cap is not None and cap < len(ds):
            ds = ds.select(range(cap))
        return ds.add_column("index", list(range(len(ds))))

    # --- storing scores with the data ------------------------------------------------------------

    def add_columns(self, split: Split, columns: dict[str, list[float]]) -> None:
        """Add or overwrite numeric columns of the built ``split`` set (reference scores computed once);
        each column has one value per row, in row (``index``) order."""
        ds = self._dataset(split)
        for name, values in columns.items():
            if name in _TEXT_COLUMNS or name in ("label", "index") or name.startswith(images.HIDDEN_PREFIX):
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

    @property
    def bad_images(self) -> dict[str, int]:
        """Rows dropped at collate because an image did not decode (``skip_bad_images``), per source;
        counted in this process (DataLoader workers keep their own counts)."""
        return getattr(self.collate, "bad_images", {})

    # --- loaders ---------------------------------------------------------------------------------

    def _loader(self, ds: datasets.Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            # Under DDP Lightning swaps a RandomSampler for a DistributedSampler seeded by the Trainer.
            sampler=EpochRandomSampler(ds, self.seed) if shuffle else None,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._dataset("train")
        # A trailing batch of one row gives KTO no mismatched pair for its KL estimate.
        drop_last = self.layout == "unpaired" and len(ds) > self.batch_size
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
        ds = self._dataset("val").select_columns(["prompt", "index"])
        return self._loader(ds, self.eval_batch_size, shuffle=False)


class EpochRandomSampler(RandomSampler):
    """A shuffle that depends on (seed, epoch) alone, so a run resumed at an epoch boundary sees the
    same order as one that never stopped (Lightning calls ``set_epoch`` at every epoch)."""

    def __init__(self, data_source, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


def _as_list(sources: str | list[str] | None) -> list[str]:
    if sources is None:
        return []
    return [sources] if isinstance(sources, str) else list(sources)
