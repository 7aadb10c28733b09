"""Image preference rows (text-to-image diffusion alignment): the layouts found in the wild, turned into
one canonical row. The pixel helpers the diffusion backbones share (`to_tensor` ...) live in
`alignsuite.data.pixels` and are importable from here too.

Layouts recognised (column names configurable through `ImageFields`):
- Pick-a-Pic v2: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` in {0, 0.5, 1}. ``label_0 == 1``: jpg_0
  won; ``0``: jpg_1 won; ``0.5``: a tie, dropped by default (Diffusion-DPO and MaPO drop them; the
  diffusers scripts keep them as if jpg_0 had won, which ``drop_ties=False`` reproduces). ``label_1`` is
  not read: in Pick-a-Pic it is always ``1 - label_0``. Optional per-image reward columns (PickScore,
  for SmPO) ``reward_0``/``reward_1`` follow the same swap to ``reward_chosen``/``reward_rejected``.
- Ordered pairs: ``caption``, ``chosen``, ``rejected`` (an image-folder ``metadata.jsonl`` or ``.csv``).
- Unpaired (Diffusion-KTO): ``caption``, ``image``, ``label`` (bool or 0/1).

An image value may be encoded bytes, a file path (relative paths are relative to the folder or file the
table came from), a ``{"bytes": ..., "path": ...}`` dict (how `datasets` stores an ``Image`` feature;
bytes win when both are set) or a ``PIL.Image`` (encoded once to PNG, losslessly).

Canonical rows keep each image as ``{"bytes": bytes | None, "path": str | None}`` (stored as a
``datasets.Image(decode=False)`` column): encoded, never decoded arrays, so a large dataset costs its
file size, not its pixel count, and decoding happens per batch (`decode_image`, called at collate).
Cheap checks (labels, captions, that an image is there, that its file exists) run when the rows are
built; whether the bytes decode is found out at collate, since decoding 100k images up front would take
longer than many runs. So that a decode error can still name its source, row and column, every
canonical row carries hidden provenance columns: ``_source`` (file or hub id), ``_row`` (0-based row in
it) and ``_<column>_column`` (the source column each image came from, e.g. ``_chosen_column: "jpg_1"``).
The collate function drops them; backbones never see them.

Canonical pair: ``{"prompt": caption, "chosen": image, "rejected": image, ["reward_chosen": float,
"reward_rejected": float], "_source", "_row", "_chosen_column", "_rejected_column"}``.
Canonical unpaired: ``{"prompt": caption, "completion": image, "label": bool, ["reward": float],
"_source", "_row", "_completion_column"}``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets

from alignsuite.data.errors import DataError
from alignsuite.data.fields import TIE_COLUMN
from alignsuite.data.refs import encoded_ref
from alignsuite.data.pixels import centre_crop_offsets, resized_size, rgb, to_tensor  # noqa: F401 (re-exported)
from alignsuite.data.preference import _get, _label

ImageRef = dict  # {"bytes": bytes | None, "path": str | None}

IMAGE_COLUMNS = ("chosen", "rejected", "completion")
HIDDEN_PREFIX = "_"  # canonical columns that are provenance, not data: dropped at collate
_EXPECT_IMAGE = "encoded image bytes, an image file path, a {'bytes', 'path'} dict or a PIL image"
_TIE = 0.5
USER_EMBEDDING = "user_embedding"  # a pair's user, as a vector (personalised diffusion, PPD)


@dataclass(frozen=True)
class ImageFields:
    """Column names of an image preference dataset, for datasets that do not use the usual ones."""

    caption: str = "caption"
    image_0: str = "jpg_0"
    image_1: str = "jpg_1"
    label_0: str = "label_0"
    chosen: str = "chosen"
    rejected: str = "rejected"
    image: str = "image"
    label: str = "label"
    reward_0: str = "reward_0"
    reward_1: str = "reward_1"
    user_embedding: str = "user_embedding"

    def has_rewards(self, row: dict) -> bool:
        return self.reward_0 in row or self.reward_1 in row

    def is_unpaired(self, row: dict) -> bool:
        return self.image in row and not self.is_pair(row)

    def is_pair(self, row: dict) -> bool:
        return self.image_0 in row or self.chosen in row


# --- single values ---------------------------------------------------------------------------------


def _caption(row: dict, fields: ImageFields, index: int, source: str) -> str:
    value = _get(row, fields.caption, index, source)
    # Diffusion training blanks captions on purpose (proportion_empty_prompts, in the backbone); a blank
    # caption in the data is a broken row, not that.
    if isinstance(value, str) and value.strip():
        return value
    raise DataError(source, index, fields.caption, "a non-empty caption", value)


def image_ref(value: object, field: str, index: int, source: str, base_dir: str | None = None) -> ImageRef:
    """The canonical ``{"bytes", "path"}`` of one image value; a path is made absolute against
    ``base_dir`` and must name an existing file. Raises ``DataError`` for anything else."""
    from PIL import Image

    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        if value.mode in ("I", "F"):  # PNG cannot hold these: scaled to 8 bits now, as decoding would
            try:
                value = rgb(value)
            except ValueError as err:
                raise DataError(source, index, field, "an image whose values lie in its mode's range", problem=str(err)) from err
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    return encoded_ref(value, "image", _EXPECT_IMAGE, field, index, source, base_dir)


def decode_image(ref: ImageRef, field: str, index: int, source: str):
    """The ``PIL.Image`` (8-bit RGB, fully loaded; 16-bit and float images scaled by their range, `rgb`) of a
    canonical image; ``DataError`` if it does not decode or its values lie outside its mode's range."""
    from PIL import Image

    try:
        data = ref.get("bytes")
        with Image.open(io.BytesIO(data) if data else ref["path"]) as image:
            image.load()  # truncated files fail here
            return rgb(image)
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError ...
        where = f" ({ref['path']})" if ref.get("path") else ""
        raise DataError(source, index, field, f"an image that decodes{where}", f"{type(err).__name__}: {err}") from err


def _number(row: dict, field: str, index: int, source: str) -> float:
    value = _get(row, field, index, source)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise DataError(source, index, field, "a finite number", value)


def _label_0(row: dict, field: str, index: int, source: str) -> float:
    value = _get(row, field, index, source)
    if isinstance(value, (int, float)) and value in (0, _TIE, 1):
        return float(value)
    raise DataError(source, index, field, "a Pick-a-Pic label in {0, 0.5, 1}", value)


# --- rows ------------------------------------------------------------------------------------------


def normalize_image_pair(
    row: dict,
    index: int,
    source: str,
    fields: ImageFields = ImageFields(),
    base_dir: str | None = None,
    drop_ties: bool = True,
    rewards: bool | None = None,
    tie_column: bool = False,
    order: tuple[str, str] | None = None,
) -> dict | None:
    """Canonical image pair of one row (module docstring), or ``None`` for a tie that ``drop_ties``
    drops (the caller counts and reports those). With ``tie_column`` ties are kept whatever ``drop_ties``
    says, and the row gets ``tie``: 1.0 for a tie (``label_0`` 0.5), else 0.0 (ordered rows: never a tie).

    ``rewards``: whether to map ``reward_0``/``reward_1`` (default: when the row has either column;
    then both must be finite numbers). ``order``: the row's two image columns as (chosen, rejected) where the
    caller judged the pair (a layout with several preference dimensions): no label and no reward is read.
    Raises ``DataError`` naming ``source``, ``index`` and the field for a missing column, a blank caption, a
    label outside {0, 0.5, 1}, a missing image or image file.
    """
    prompt = _caption(row, fields, index, source)
    label = None
    if order is not None:  # judged by the caller: per-image rewards are its business too
        rewards, reward_order = False, order
    elif fields.image_0 in row:
        label = _label_0(row, fields.label_0, index, source)
        if label == _TIE and drop_ties and not tie_column:
            return None
        # label 1 or a kept tie: jpg_0 first, as the diffusers scripts order a tie.
        order = (fields.image_0, fields.image_1) if label != 0 else (fields.image_1, fields.image_0)
        reward_order = (fields.reward_0, fields.reward_1) if label != 0 else (fields.reward_1, fields.reward_0)
    elif fields.chosen in row:
        order = (fields.chosen, fields.rejected)
        reward_order = (fields.reward_0, fields.reward_1)
    else:
        raise DataError(
            source, index, fields.image_0,
            f"image columns {fields.image_0!r}/{fields.image_1!r} (Pick-a-Pic) or {fields.chosen!r}/{fields.rejected!r}; "
            f"the row has columns {sorted(row)}",
        )
    chosen = image_ref(_get(row, order[0], index, source), order[0], index, source, base_dir)
    rejected = image_ref(_get(row, order[1], index, source), order[1], index, source, base_dir)
    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if fields.has_rewards(row) if rewards is None else rewards:
        out["reward_chosen"] = _number(row, reward_order[0], index, source)
        out["reward_rejected"] = _number(row, reward_order[1], index, source)
    if tie_column:
        out[TIE_COLUMN] = 1.0 if label == _TIE else 0.0
    if fields.user_embedding in row:
        out[USER_EMBEDDING] = _vector(row[fields.user_embedding], fields.user_embedding, index, source)
    out.update({"_source": source, "_row": index, "_chosen_column": order[0], "_rejected_column": order[1]})
    return out


def _vector(value, field: str, index: int, source: str) -> list[float]:
    """A non-empty list of finite numbers (a user embedding)."""
    ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise DataError(source, index, field, "a non-empty list of finite numbers (the user's embedding)",
                        value if not isinstance(value, (list, tuple)) or len(value) <= 8 else f"{list(value[:8])}...")
    return [float(v) for v in value]


def normalize_image_unpaired(
    row: dict, index: int, source: str, fields: ImageFields = ImageFields(), base_dir: str | None = None
) -> dict:
    """Canonical unpaired image row (Diffusion-KTO): ``caption``, ``image``, ``label`` (bool or 0/1), and the
    row's ``user_embedding`` where it has one."""
    prompt = _caption(row, fields, index, source)
    image = image_ref(_get(row, fields.image, index, source), fields.image, index, source, base_dir)
    label = _label(_get(row, fields.label, index, source), fields.label, index, source)
    out = {"prompt": prompt, "completion": image, "label": label}
    if fields.user_embedding in row:
        out[USER_EMBEDDING] = _vector(row[fields.user_embedding], fields.user_embedding, index, source)
    return {**out, "_source": source, "_row": index, "_completion_column": fields.image}


def image_pairs_to_unpaired(rows: Iterable[dict]) -> list[dict]:
    """Canonical image pairs -> unpaired rows: the winner (``label`` True) then the loser (False),
    each with its reward (if any) as ``reward``, the pair's user (if any) and its provenance."""
    out = []
    for row in rows:
        for side, label in (("chosen", True), ("rejected", False)):
            item = {"prompt": row["prompt"], "completion": row[side], "label": label}
            if f"reward_{side}" in row:
                item["reward"] = row[f"reward_{side}"]
            if USER_EMBEDDING in row:  # both rows are the pair's user's
                item[USER_EMBEDDING] = row[USER_EMBEDDING]
            item.update({"_source": row["_source"], "_row": row["_row"], "_completion_column": row[f"_{side}_column"]})
            out.append(item)
    return out


def image_features(unpaired: bool, rewards: bool, tie: bool = False, user: bool = False) -> datasets.Features:
    """Arrow schema of canonical image rows: images as ``Image(decode=False)`` (encoded bytes or a path)."""
    image = datasets.Image(decode=False)
    columns: dict = {"prompt": datasets.Value("string")}
    if unpaired:
        columns.update(completion=image, label=datasets.Value("bool"))
        if rewards:
            columns["reward"] = datasets.Value("float64")
        image_columns = ("completion",)
    else:
        columns.update(chosen=image, rejected=image)
        if rewards:
            columns.update(reward_chosen=datasets.Value("float64"), reward_rejected=datasets.Value("float64"))
        if tie:
            columns[TIE_COLUMN] = datasets.Value("float64")
        image_columns = ("chosen", "rejected")
    if user:
        columns[USER_EMBEDDING] = datasets.Sequence(datasets.Value("float32"))
    columns.update({"_source": datasets.Value("string"), "_row": datasets.Value("int64")})
    columns.update({f"_{c}_column": datasets.Value("string") for c in image_columns})
    return datasets.Features(columns)


def undecoded(table: datasets.Dataset) -> datasets.Dataset:
    """``table`` with every ``datasets.Image`` column, and every list of them (TRL's ``images``), cast
    to ``decode=False``: rows then hold ``{"bytes", "path"}`` dicts, and building canonical rows decodes
    nothing."""
    for name, feature in table.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            table = table.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.Image) and feature.feature.decode:
            table = table.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return table


def image_base_dir(source: str) -> str | None:
    """The folder relative image paths in ``source`` are relative to: the folder itself, the folder of a
    file or of a glob's files; ``None`` (the working directory) for a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file() or any(c in source for c in "*?["):
        return str(path.parent)
    return None


METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def metadata_file(source: str) -> str | None:
    """The metadata table of an image folder (a directory with ``metadata.jsonl``/``.csv``/``.parquet``
    that is not a saved dataset), else ``None``."""
    path = Path(source).expanduser()
    if not path.is_dir() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return None
    for name in METADATA_FILES:
        if (path / name).is_file():
            return str(Path(source) / name)
    return None
