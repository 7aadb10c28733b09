"""Text-to-image preference layouts (diffusion): image pairs, the same judged under several dimensions, and
unpaired images for Diffusion-KTO.

Rows are normalised by `alignsuite.data.images`: images stay encoded in the dataset and are decoded
per batch into RGB ``PIL.Image`` lists (resizing and cropping belong to the backbone,
`images.to_tensor`). A source may be a file, a hub id, or an image folder: a directory with the images
and a ``metadata.jsonl`` (or ``.csv``/``.parquet``) whose image columns hold file names relative to it.

Labels, captions, image presence and file existence are checked when the rows are built; whether an
image decodes is checked at collate (decoding every image up front is too slow), where a bad one raises
``DataError`` naming source, row and column, or with ``skip_bad_images`` drops its row from the batch
and is counted in ``bad_images``.
"""

from __future__ import annotations

import warnings

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn

from alignsuite.data import images
from alignsuite.data.errors import DataError
from alignsuite.data.fields import TIE_COLUMN
from alignsuite.data.layouts.base import HIDDEN_PREFIX, Layout, Rows, Table
from alignsuite.data.layouts.dimensions import Dimensions
from alignsuite.data.loading import load_table


class DecodesImages(Layout):
    """Base of the layouts whose rows carry images (`_ImageLayout`, `VisionPairs`): sources are read
    with their images undecoded, relative paths resolve against the source's folder, and `collate`
    decodes each row's images (`decode_images`), dropping a row whose image does not decode when
    ``skip_bad_images`` is set."""

    chunk_rows = 1000  # canonical image rows held as python objects at once before they go to Arrow

    def __init__(self, skip_bad_images: bool) -> None:
        self.skip_bad_images = skip_bad_images
        # Rows dropped at collate per source. With DataLoader workers each worker process holds its own
        # copy of the counts, so only the warning reaches the console.
        self.bad_images: dict[str, int] = {}
        self._warned = False

    def open(self, source: str, split: str, rows: Rows | None = None) -> Table:
        # An image folder is read through its metadata file, which is also what errors name.
        table_source = images.metadata_file(source) or source
        rows = load_table(table_source, split) if rows is None else rows
        table = images.undecoded(rows) if isinstance(rows, datasets.Dataset) else rows
        return table_source, table, images.image_base_dir(table_source)

    def decode_images(self, row: dict) -> dict:
        """The image columns of a stored row, decoded; ``DataError`` naming the source row and column
        for an image that does not decode."""
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> dict:
        """Decode every image to an RGB ``PIL.Image``, then batch as any layout does. An image that does
        not decode raises ``DataError`` naming its source, source row and source column (``jpg_0``,
        ``image`` ...); with ``skip_bad_images`` its row leaves the batch instead (possibly all rows:
        lists of length 0 and tensors of shape ``[0]``), ``bad_images`` counts it per source and one
        warning is given per process."""
        kept = []
        for row in rows:
            try:
                decoded = self.decode_images(row)
            except DataError as err:
                if not self.skip_bad_images:
                    raise
                self._skip(err)
                continue
            kept.append({**row, **decoded})
        if kept:
            return super().collate(kept)
        # Every row was bad: an empty batch with the usual keys, for the step to skip.
        return {
            key: [] if key in self.list_columns else torch.zeros(0, dtype=torch.long if key == "index" else torch.float)
            for key in rows[0] if not key.startswith(HIDDEN_PREFIX)
        }

    def _skip(self, err: DataError) -> None:
        self.bad_images[err.source] = self.bad_images.get(err.source, 0) + 1
        if not self._warned:
            self._warned = True
            # Each rank and worker sees different rows, so this is not rank-zero only.
            warnings.warn(f"skipping rows whose image does not decode (skip_bad_images); first: {err}", stacklevel=3)


class _ImageLayout(DecodesImages):
    modality = "text_to_image"

    def __init__(self, fields: images.ImageFields, drop_ties: bool, skip_bad_images: bool,
                 tie_column: bool = False) -> None:
        self.fields, self.drop_ties, self.tie_column = fields, drop_ties, tie_column
        super().__init__(skip_bad_images)

    @property
    def skip_reason(self) -> str:
        return f"they are tied pairs ({self.fields.label_0} == 0.5; set drop_ties: false in data.layout to keep them)"

    def warn_skipped(self, source: str, skipped: list[int]) -> None:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        rank_zero_warn(
            f"{source}: dropped {len(skipped)} tied pairs ({self.fields.label_0} == 0.5; rows {shown});"
            " set drop_ties: false in data.layout to keep them with the first image as chosen"
        )

    def _pair(self, row: dict, index: int, source: str, base_dir: str | None) -> dict | None:
        return images.normalize_image_pair(row, index, source, self.fields, base_dir, self.drop_ties,
                                           tie_column=self.tie_column)

    def check_row(self, canon: dict, first: dict, index: int, source: str) -> None:
        user, field = images.USER_EMBEDDING, self.fields.user_embedding
        if (user in canon) != (user in first):  # every row has its user, or none does
            raise DataError(source, index, field, "a user embedding, as the first row has" if user in first else
                            "no user embedding, as the first row (rows with users and rows without cannot mix)")
        if user in canon and len(canon[user]) != len(first[user]):
            raise DataError(source, index, field, f"{len(first[user])} numbers, as the first row's", len(canon[user]))
        # One Arrow schema for all sources: rewards in every source or in none. Pair and unpaired rows
        # may mix where the layout turns pairs into unpaired rows, so compare the rows as stored.
        if canon.keys() != first.keys() and self.expand([canon])[0].keys() != self.expand([first])[0].keys():
            shown = lambda row: sorted(k for k in row if not k.startswith(HIDDEN_PREFIX))  # noqa: E731
            raise DataError(source, index, self.fields.reward_0,
                            f"the same columns as the sources before it ({shown(first)})", shown(canon))

    def features(self, first: dict) -> datasets.Features:
        return images.image_features("completion" in first, "reward" in first or "reward_chosen" in first,
                                     TIE_COLUMN in first, images.USER_EMBEDDING in first)

    def decode_images(self, row: dict) -> dict:
        return {
            key: images.decode_image(row[key], row.get(f"_{key}_column", key), row["_row"], row["_source"])
            for key in images.IMAGE_COLUMNS
            if key in row
        }


class ImagePairs(_ImageLayout):
    """Text-to-image preference pairs (Diffusion-DPO, MaPO, SmPO, SePPO): a caption with a preferred and
    a dispreferred image. Read as they come: Pick-a-Pic v2 (``caption``, ``jpg_0``, ``jpg_1``,
    ``label_0`` in {0, 0.5, 1}: 1 means jpg_0 won, 0.5 is a tie), or ordered pairs (``caption``,
    ``chosen``, ``rejected``), e.g. an image folder's ``metadata.jsonl``. Per-image reward columns, when
    present, reach the batch as ``reward_chosen``/``reward_rejected`` float tensors, swapped with the
    images (SmPO). A ``user_embedding`` column (a list of floats per row, the same length in every row) reaches
    the batch as a ``[B, D]`` float tensor, for a backbone with a user condition (PPD).

    Args:
        caption_field: column of the caption (the prompt).
        image_0_field: Pick-a-Pic rows: first image (encoded bytes, a path, a {bytes, path} dict or a PIL image).
        image_1_field: Pick-a-Pic rows: second image.
        label_0_field: Pick-a-Pic rows: 1 if the first image won, 0 if the second did, 0.5 for a tie.
        chosen_field: ordered rows: the preferred image.
        rejected_field: ordered rows: the dispreferred image.
        reward_0_field: optional reward of the first (ordered rows: the chosen) image.
        reward_1_field: optional reward of the second (ordered rows: the rejected) image.
        drop_ties: drop tied pairs (counted and reported), as Diffusion-DPO and MaPO do; false keeps them
            with the first image as chosen, as the diffusers training scripts do.
        skip_bad_images: drop a row whose image does not decode from its batch (counted) instead of stopping.
        user_embedding_field: optional column of the pair's user as a vector (personalised diffusion).
        tie_column: keep tied pairs whatever ``drop_ties`` says and give every row a ``tie`` column (1.0 for a
            tie, 0.0 otherwise), for the objectives that read ties (``todo``); any other objective is refused
            such data at setup.
    """

    row_kind = "pairs"

    def __init__(
        self,
        caption_field: str = "caption",
        image_0_field: str = "jpg_0",
        image_1_field: str = "jpg_1",
        label_0_field: str = "label_0",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        reward_0_field: str = "reward_0",
        reward_1_field: str = "reward_1",
        drop_ties: bool = True,
        skip_bad_images: bool = False,
        tie_column: bool = False,
        user_embedding_field: str = "user_embedding",
    ) -> None:
        self.caption_field, self.image_0_field, self.image_1_field = caption_field, image_0_field, image_1_field
        self.label_0_field, self.chosen_field, self.rejected_field = label_0_field, chosen_field, rejected_field
        self.reward_0_field, self.reward_1_field = reward_0_field, reward_1_field
        self.user_embedding_field = user_embedding_field
        fields = images.ImageFields(caption=caption_field, image_0=image_0_field, image_1=image_1_field,
                                    label_0=label_0_field, chosen=chosen_field, rejected=rejected_field,
                                    reward_0=reward_0_field, reward_1=reward_1_field, user_embedding=user_embedding_field)
        super().__init__(fields, drop_ties, skip_bad_images, tie_column)

    def check_first(self, row: dict, source: str) -> None:
        if self.fields.is_unpaired(row):
            raise DataError(source, 0, self.fields.image_0, "pair data; this looks unpaired (caption/image/label):"
                            " use the layout alignsuite.data.ImageUnpaired")

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        return self._pair(row, index, source, base_dir)


class ImageUnpaired(_ImageLayout):
    """Unpaired text-to-image rows for Diffusion-KTO: a caption, one image and whether it is desirable
    (``caption``, ``image``, ``label``). Pair rows (any layout `ImagePairs` reads) become the winner
    (desirable, with its reward as ``reward`` if any) then the loser (undesirable). A ``user_embedding`` column
    reaches the batch as in `ImagePairs` (a pair's two rows both carry its user), for a backbone with a user
    condition (PPD trained with ``diffusion_kto``).

    Args:
        caption_field: column of the caption (the prompt).
        image_field: column of the image (encoded bytes, a path, a {bytes, path} dict or a PIL image).
        label_field: column of the label: true/false or 1/0 (desirable or not).
        image_0_field: Pick-a-Pic pair rows: first image.
        image_1_field: Pick-a-Pic pair rows: second image.
        label_0_field: Pick-a-Pic pair rows: 1 if the first image won, 0 if the second did, 0.5 for a tie.
        chosen_field: ordered pair rows: the preferred image.
        rejected_field: ordered pair rows: the dispreferred image.
        reward_0_field: pair rows: optional reward of the first (or chosen) image.
        reward_1_field: pair rows: optional reward of the second (or rejected) image.
        drop_ties: drop tied pairs (counted and reported); false keeps them with the first image as winner.
        skip_bad_images: drop a row whose image does not decode from its batch (counted) instead of stopping.
        user_embedding_field: optional column of the row's (or pair's) user as a vector (personalised diffusion).
    """

    row_kind = "unpaired"

    def __init__(
        self,
        caption_field: str = "caption",
        image_field: str = "image",
        label_field: str = "label",
        image_0_field: str = "jpg_0",
        image_1_field: str = "jpg_1",
        label_0_field: str = "label_0",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        reward_0_field: str = "reward_0",
        reward_1_field: str = "reward_1",
        drop_ties: bool = True,
        skip_bad_images: bool = False,
        user_embedding_field: str = "user_embedding",
    ) -> None:
        self.caption_field, self.image_field, self.label_field = caption_field, image_field, label_field
        self.image_0_field, self.image_1_field, self.label_0_field = image_0_field, image_1_field, label_0_field
        self.chosen_field, self.rejected_field = chosen_field, rejected_field
        self.reward_0_field, self.reward_1_field = reward_0_field, reward_1_field
        self.user_embedding_field = user_embedding_field
        fields = images.ImageFields(caption=caption_field, image_0=image_0_field, image_1=image_1_field,
                                    label_0=label_0_field, chosen=chosen_field, rejected=rejected_field,
                                    image=image_field, label=label_field, reward_0=reward_0_field, reward_1=reward_1_field,
                                    user_embedding=user_embedding_field)
        super().__init__(fields, drop_ties, skip_bad_images)

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        if self.fields.is_unpaired(row):
            return images.normalize_image_unpaired(row, index, source, self.fields, base_dir)
        return self._pair(row, index, source, base_dir)

    def expand(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            out += images.image_pairs_to_unpaired([row]) if "chosen" in row else [row]
        return out


class ImageDimensionPairs(Dimensions, ImagePairs):
    """Two images per caption, judged under several named dimensions, the first the primary: `DimensionPairs` for
    text-to-image rows. The dimensions are read as there (a label column: the index, 0 or 1, of the image it
    prefers; or a score column per image, higher better); the caption and the images as `ImagePairs` reads them.
    The primary dimension picks ``chosen``; rows where it ties are skipped and counted. Batches add ``pref_<d>``
    per dimension and ``reward_chosen_<d>``/``reward_rejected_<d>`` per scored one (MODPO's margin rewards).

    Args:
        dimensions: ``{dimension: label column}`` or ``{dimension: [score column of image 0, of image 1]}``,
            in order, the primary first.
        responses: the two image columns, in the order the labels and scores count them.
        caption_field: as `ImagePairs`.
        skip_bad_images: as `ImagePairs`.
        user_embedding_field: as `ImagePairs`.
    """

    skip_reason = "the primary dimension ties"
    warn_skipped = Layout.warn_skipped  # not ImagePairs' word on ties: no Pick-a-Pic label is read

    def __init__(
        self,
        dimensions: dict[str, str | list[str]],
        responses: tuple[str, str] | list[str] = ("jpg_0", "jpg_1"),
        caption_field: str = "caption",
        skip_bad_images: bool = False,
        user_embedding_field: str = "user_embedding",
    ) -> None:
        self._set_dimensions(dimensions, responses)
        super().__init__(caption_field=caption_field, image_0_field=self.responses[0], image_1_field=self.responses[1],
                         skip_bad_images=skip_bad_images, user_embedding_field=user_embedding_field)

    def check_first(self, row: dict, source: str) -> None:
        if self.responses[0] not in row:
            raise DataError(source, 0, self.responses[0], f"the image column {self.responses[0]!r} (option responses);"
                            f" the row has columns {sorted(row)}")

    def _read_pair(self, row: dict, index: int, source: str, base_dir: str | None,
                   order: tuple[str, str]) -> dict | None:
        return images.normalize_image_pair(row, index, source, self.fields, base_dir, order=order)

