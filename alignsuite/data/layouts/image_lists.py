"""Image lists (text-to-image): K graded images per caption, as ranked sets (HPD, Pick-a-Pic-style rankings) give
them, for the listwise objectives over denoising scores.

Each image is read as the pair layouts read theirs (`alignsuite.data.images.image_ref`: bytes, a path relative
to the source, a ``{bytes, path}`` dict, a PIL image) and decoded at collate (`decode_image`), with the same
errors and ``skip_bad_images``. A padded entry is stored as no image and reaches the batch as a black image of
the list's size, which the mask keeps out of every loss.
"""

from __future__ import annotations

import datasets

from alignsuite.data import images
from alignsuite.data.errors import DataError
from alignsuite.data.layouts.images import DecodesImages
from alignsuite.data.layouts.lists import ListLayout
from alignsuite.data.lists import INVALID, ListGrades, build_list, row_labels


def _image_key(ref: dict) -> tuple:
    return ref.get("bytes"), ref.get("path")


class ImageLists(ListLayout, DecodesImages):
    """Text-to-image lists: a caption with K graded images. Read as they come: ``caption``, ``images`` (a list), and
    ``scores`` (higher better) or ``ranks`` (1 = best), or no grades with ``ranked: true`` (images best first);
    Pick-a-Pic pairs (``jpg_0``/``jpg_1``/``label_0``, ties dropped) and ordered pairs (``chosen``/``rejected``)
    as lists of two. Padding, dropped entries and refusals as `alignsuite.data.TextLists`.

    Args:
        list_size: K, the length every list is padded to; the objective's ``list_size`` must equal it.
        caption_field: column of the caption (the prompt).
        images_field: column of the images.
        scores_field: column of one grade per image, higher better.
        labels_field: another name looked for when ``scores_field`` is absent.
        ranks_field: column of one rank per image, 1 = best.
        ranked: rows without grades list their images best first.
        skip_bad_images: drop a row whose image does not decode from its batch (counted) instead of stopping.
    """

    modality = "text_to_image"
    chunk_rows = 1000

    def __init__(
        self,
        list_size: int = 4,
        caption_field: str = "caption",
        images_field: str = "images",
        scores_field: str = "scores",
        labels_field: str = "labels",
        ranks_field: str = "ranks",
        ranked: bool = False,
        skip_bad_images: bool = False,
    ) -> None:
        ListLayout.__init__(self, list_size)
        DecodesImages.__init__(self, skip_bad_images)
        self.caption_field, self.images_field = caption_field, images_field
        self.scores_field, self.labels_field, self.ranks_field, self.ranked = scores_field, labels_field, ranks_field, ranked
        self.grades = ListGrades(scores_field, labels_field, ranks_field, ranked)
        self.fields = images.ImageFields(caption=caption_field)

    list_columns = frozenset({"prompt", "responses"})

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        field = self.images_field
        if field not in row and self.fields.is_pair(row):
            pair = images.normalize_image_pair(row, index, source, self.fields, base_dir, rewards=False)
            if pair is None:
                return None
            prompt, refs, labels = pair["prompt"], [pair["chosen"], pair["rejected"]], [1.0, 0.0]
        else:
            prompt = images._caption(row, self.fields, index, source)
            values = row.get(field)
            if not isinstance(values, (list, tuple)):
                raise DataError(source, index, field, "a list of images", values)
            refs = [INVALID if v is None else images.image_ref(v, field, index, source, base_dir) for v in values]
            labels = row_labels(row, len(values), self.grades, index, source)
        canon, dropped = build_list(refs, labels, self.list_size, None, field, index, source, key=_image_key)
        self._count_dropped(source, dropped)
        if canon is None:
            return None
        return {"prompt": prompt, **canon, "_source": source, "_row": index, "_responses_column": field}

    def features(self, first: dict) -> datasets.Features:
        return datasets.Features({
            "prompt": datasets.Value("string"),
            "responses": datasets.List(datasets.Image(decode=False)),
            "labels": datasets.List(datasets.Value("float64")),
            "mask": datasets.List(datasets.Value("bool")),
            "_source": datasets.Value("string"), "_row": datasets.Value("int64"),
            "_responses_column": datasets.Value("string"),
        })

    def decode_images(self, row: dict) -> dict:
        from PIL import Image

        column, decoded = row["_responses_column"], []
        for ref in row["responses"]:
            decoded.append(None if ref is None else images.decode_image(ref, column, row["_row"], row["_source"]))
        size = next(image.size for image in decoded if image is not None)
        return {"responses": [Image.new("RGB", size) if image is None else image for image in decoded]}


__all__ = ["ImageLists"]
