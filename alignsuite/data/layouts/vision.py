"""Vision-language preference pairs (DPO on a VLM, mDPO): a prompt with its image(s), a chosen and a
rejected answer.

Canonical row, what backbones read: ``prompt`` is a list of chat messages ``{"role", "content"}``
whose content is always a list of parts, ``{"type": "image"}`` (where the next image of the row goes)
or ``{"type": "text", "text": str}``; ``chosen``/``rejected`` are assistant messages in the same form,
text parts only; ``images`` holds the row's images in the order of the prompt's image parts, one image
part per image. The three message columns are stored as JSON text and the images encoded
(``List(Image(decode=False))``), with the provenance columns ``_source``, ``_row`` and
``_images_column``; a batch carries the messages as python lists and ``images`` as one list of RGB
``PIL.Image`` per row, decoded at collate (`DecodesImages`).
"""

from __future__ import annotations

import json
from typing import Any

import datasets
from lightning.pytorch.utilities import rank_zero_warn

from alignsuite.data import images
from alignsuite.data.errors import DataError
from alignsuite.data.layouts.base import Table
from alignsuite.data.layouts.dimensions import Dimensions
from alignsuite.data.layouts.images import DecodesImages

PLACEHOLDER = "<image>"  # where an image goes in a plain-text prompt (LLaVA, mDPO, LLaMA-Factory)
_IMAGE = {"type": "image"}
_EXPECT_PARTS = "text, or a list of content parts {'type': 'image'} / {'type': 'text', 'text': str}"
_EXPECT_MESSAGES = "text, or chat messages that are dicts with a string 'role' and a 'content'"


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _parts(content: object, field: str, index: int, source: str, placeholders: bool) -> list[dict]:
    """Content parts of a message's content; a string is split at ``<image>`` when ``placeholders``."""
    if isinstance(content, str):
        if not placeholders:
            return [_text(content)] if content else []
        pieces = content.split(PLACEHOLDER)
        out = [_text(pieces[0])] if pieces[0] else []
        for piece in pieces[1:]:
            out += [_IMAGE, _text(piece)] if piece else [_IMAGE]
        return out
    if not isinstance(content, list):
        raise DataError(source, index, field, _EXPECT_PARTS, content)
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            out.append(_IMAGE)  # the image itself is in the row's image column
        elif kind == "text" and isinstance(part.get("text"), str):
            out.append(_text(part["text"]))
        else:
            raise DataError(source, index, field, _EXPECT_PARTS, part)
    return out


def _messages(value: object, field: str, index: int, source: str, role: str, placeholders: bool) -> list[dict]:
    """Messages in parts form; a string becomes one message of ``role``, a single dict a list of one."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}]
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(source, index, field, _EXPECT_MESSAGES, value)
    out = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
            raise DataError(source, index, field, _EXPECT_MESSAGES, m)
        out.append({"role": m["role"], "content": _parts(m.get("content"), field, index, source, placeholders)})
    return out


def _is_null(value: object) -> bool:
    """An image value that holds no image: null, empty text, or a ``{'bytes', 'path'}`` dict of neither
    (how `datasets` stores a null ``Image``)."""
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        return not value.get("bytes") and not value.get("path")
    return value is None or value == ""


def _refuse_image_text(messages: list[dict], tokens: tuple[str, ...], what: str, field: str, index: int,
                       source: str) -> None:
    """Refuse an image token typed in a text part: the processor would expand it into image features with no
    image to match ("Image features and image tokens do not match" deep inside transformers)."""
    for token in tokens:
        if any(token in part["text"] for m in messages for part in m["content"] if part["type"] == "text"):
            raise DataError(source, index, field, f"text without {what} {token!r}", problem=(
                "it is typed in a text part (an answer, or a prompt message's text); an image goes in a prompt"
                " as an {'type': 'image'} part, or as '<image>' in a text prompt, one per image of the row"))


def _count_images(messages: list[dict]) -> int:
    return sum(part["type"] == "image" for m in messages for part in m["content"])


class VisionPairs(DecodesImages):
    """Vision-language preference pairs: each row a prompt with its image(s) and a chosen and a rejected
    answer. Read as they come, detected per row by the columns present:

    - TRL's vision-language layout: ``prompt`` chat messages whose content is text or a list of parts
      (``{"type": "image"}``, ``{"type": "text", "text": ...}``), ``chosen``/``rejected`` assistant
      messages in the same form (or text), and an ``images`` list (or a single ``image``); several
      images per row (MIA-DPO) are one image part each.
    - RLAIF-V: ``image``, ``question``, ``chosen``, ``rejected`` text.
    - mDPO's released data (``vlfeedback_llava_10k``; fields as in luka-group/mDPO's
      ``data/sample_data.json`` and its collator): ``prompt`` text with a ``<image>`` placeholder,
      ``chosen``, ``rejected`` text and ``img_path``. Its prompts already carry Bunny's conversation
      template (``"... USER: <image>\\nquestion ASSISTANT:"``); the text is kept as it is.

    A text prompt (or text message content) becomes parts split at each ``<image>``; a prompt with no
    image part at all gets one per image, first in its first user message. An image is encoded bytes,
    a file path (relative to the data file's folder), a ``{'bytes', 'path'}`` dict or a PIL image, and
    an image column holds one or a list. A row with no image (``None``, ``""``, ``[]``, ``[None]``) is
    refused: trained as a text-only pair it teaches the answer without looking, the image-blind signal
    mDPO exists to avoid; ``keep_text_only`` keeps such rows, counted (``text_only``) and reported.
    Refused, naming source, row and column: a missing column, an image file that does not exist, a null
    among a row's images, a prompt whose image parts are not one per image, image parts in an answer,
    and at collate an image that does not decode. Rows whose chosen equals rejected are skipped,
    counted and reported.

    Args:
        prompt_field: column of the prompt: text (``<image>`` marks where images go) or chat messages.
        chosen_field: column of the preferred answer: text or assistant message(s).
        rejected_field: column of the dispreferred answer, like ``chosen_field``.
        question_field: RLAIF-V rows (no prompt column): the question, text.
        images_field: column of the row's images, a list (TRL).
        image_field: column of the row's image (RLAIF-V), or a list of them; read when there is no ``images_field``.
        image_path_field: column of the image's file path (mDPO); read when there is neither of the above.
        skip_bad_images: drop a row whose image does not decode from its batch (counted) instead of stopping.
        keep_text_only: keep a row with no image (a null or empty image column) as a text-only pair, counted
            per source in ``text_only`` and reported, instead of refusing it.
    """

    row_kind = "pairs"
    modality = "vision_language"
    list_columns = frozenset({"prompt", "chosen", "rejected", "images"})

    def __init__(
        self,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        question_field: str = "question",
        images_field: str = "images",
        image_field: str = "image",
        image_path_field: str = "img_path",
        skip_bad_images: bool = False,
        keep_text_only: bool = False,
    ) -> None:
        self.prompt_field, self.chosen_field, self.rejected_field = prompt_field, chosen_field, rejected_field
        self.question_field, self.images_field = question_field, images_field
        self.image_field, self.image_path_field = image_field, image_path_field
        self.keep_text_only = keep_text_only
        self.text_only: dict[str, int] = {}  # rows kept with no image (keep_text_only), per source
        self.image_tokens: tuple[str, ...] = ()  # the model's, handed over at setup (`use_model`)
        self._text_only_rows: dict[str, list[int]] = {}  # while building: the rows kept with no image, per source
        super().__init__(skip_bad_images)

    def build(self, tables: list[Table]) -> tuple[datasets.Dataset | None, dict[str, tuple[int, int]]]:
        # The rows kept with no image (normalize notes them) are counted and reported per source.
        self._text_only_rows = {}
        built = super().build(tables)
        for source, rows in self._text_only_rows.items():
            self._warn_text_only(source, rows)
        return built

    def use_model(self, image_tokens: list[str] | tuple[str, ...] = (), **settings: Any) -> None:
        """``image_tokens``: the processor's image token(s), which the processor expands into image features;
        typed in a row's text they would not match its images, so `collate` refuses them naming the row."""
        self.image_tokens = tuple(t for t in image_tokens if t)

    def collate(self, rows: list[dict]) -> dict:
        for row in rows if self.image_tokens else ():
            fields = {"prompt": row.get("_prompt_column", self.prompt_field), "chosen": self.chosen_field,
                      "rejected": self.rejected_field}
            for key, field in fields.items():
                if key in row:  # predict reads the prompts alone
                    _refuse_image_text(json.loads(row[key]), self.image_tokens, "the model's image token", field,
                                       row.get("_row"), row.get("_source", self.name))
        return super().collate(rows)

    def _warn_text_only(self, source: str, rows: list[int]) -> None:
        self.text_only[source] = len(rows)
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        rank_zero_warn(f"{source}: kept {len(rows)} rows with no image as text-only pairs (rows {shown});"
                       " their answers are learnt without an image (keep_text_only)")

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        return self._pair(row, index, source, base_dir, self.chosen_field, self.rejected_field)

    def _pair(self, row: dict, index: int, source: str, base_dir: str | None, chosen_field: str,
              rejected_field: str) -> dict | None:
        """The canonical row with the answers of columns ``chosen_field`` and ``rejected_field``."""
        chosen, rejected = (self._answer(row, field, index, source) for field in (chosen_field, rejected_field))
        if chosen == rejected:
            return None
        refs, column = self._images(row, index, source, base_dir)
        prompt, field = self._prompt(row, index, source)
        # Text prompts were split at each placeholder; one left is typed inside a text part of a message.
        _refuse_image_text(prompt, (PLACEHOLDER,), "the image placeholder", field, index, source)
        if refs and not _count_images(prompt):
            first = next((m for m in prompt if m["role"] == "user"), prompt[0])
            first["content"][:0] = [_IMAGE] * len(refs)
        if _count_images(prompt) != len(refs):
            raise DataError(source, index, field, "one image part per image of the row",
                            problem=f"the prompt has {_count_images(prompt)} image parts, column {column!r} has {len(refs)} images")
        if not refs:
            if not self.keep_text_only:
                raise DataError(source, index, column, "an image", row.get(column),
                                problem="the row has no image; a text-only pair would teach the answer without the"
                                " image. Set keep_text_only: true in data.layout to keep such rows (counted)")
            self._text_only_rows.setdefault(source, []).append(index)
        return {"prompt": json.dumps(prompt), "chosen": json.dumps(chosen), "rejected": json.dumps(rejected),
                "images": refs, "_source": source, "_row": index, "_images_column": column, "_prompt_column": field}

    def _answer(self, row: dict, field: str, index: int, source: str) -> list[dict]:
        if field not in row:
            raise DataError(source, index, field, f"a column named {field!r}; the row has columns {sorted(row)}")
        answer = _messages(row[field], field, index, source, "assistant", placeholders=False)
        if _count_images(answer):
            raise DataError(source, index, field, "an answer of text parts only", problem="it has image parts")
        _refuse_image_text(answer, (PLACEHOLDER,), "the image placeholder", field, index, source)
        if not any(part["text"].strip() for m in answer for part in m["content"]):
            raise DataError(source, index, field, "a non-empty answer", row[field])
        return answer

    def _prompt(self, row: dict, index: int, source: str) -> tuple[list[dict], str]:
        for field in (self.prompt_field, self.question_field):
            if field in row:
                return _messages(row[field], field, index, source, "user", placeholders=True), field
        raise DataError(source, index, self.prompt_field, f"a column named {self.prompt_field!r} (or"
                        f" {self.question_field!r}, RLAIF-V); the row has columns {sorted(row)}")

    def _images(self, row: dict, index: int, source: str, base_dir: str | None) -> tuple[list[dict], str]:
        for column in (self.images_field, self.image_field, self.image_path_field):
            if column in row:
                value = row[column]
                values = value if isinstance(value, list) else [value]
                missing = [i for i, v in enumerate(values) if _is_null(v)]
                if len(missing) == len(values):  # no image at all: a text-only row (refused unless kept)
                    return [], column
                if missing:
                    raise DataError(source, index, column, "an image in every entry", value,
                                    problem=f"image {missing[0]} of the row is null")
                return [images.image_ref(v, column, index, source, base_dir) for v in values], column
        columns = f"{self.images_field!r}, {self.image_field!r} or {self.image_path_field!r}"
        raise DataError(source, index, self.images_field, f"an image column ({columns}); the row has columns {sorted(row)}",
                        problem="text-only pairs are read by the layout alignsuite.data.TextPairs")

    def features(self, first: dict) -> datasets.Features:
        text = datasets.Value("string")
        return datasets.Features({"prompt": text, "chosen": text, "rejected": text,
                                  "images": datasets.List(datasets.Image(decode=False)),
                                  "_source": text, "_row": datasets.Value("int64"), "_images_column": text,
                                  "_prompt_column": text})

    def decode(self, key: str, value: Any) -> Any:
        return value if key == "images" else json.loads(value)

    def decode_images(self, row: dict) -> dict:
        if "images" not in row:  # a selection of columns without the images (predict's prompts)
            return {}
        column, at = row["_images_column"], (row["_row"], row["_source"])
        return {"images": [images.decode_image(ref, column, *at) for ref in row["images"]]}


class VisionDimensionPairs(Dimensions, VisionPairs):
    """Two answers to a question about an image, judged under several named dimensions, the first the primary:
    `DimensionPairs` for vision-language rows. The dimensions are read as there (a label column, or a score
    column per answer); the image and the question as `VisionPairs` reads them. The primary dimension picks
    ``chosen``; rows where it ties, or whose two answers are equal, are skipped and counted. Batches add
    ``pref_<d>`` per dimension and ``reward_chosen_<d>``/``reward_rejected_<d>`` per scored one.

    Args:
        dimensions: ``{dimension: label column}`` or ``{dimension: [score column of response 0, of response 1]}``,
            in order, the primary first.
        responses: the two answer columns, text or assistant message(s).
        prompt_field: as `VisionPairs`.
        question_field: as `VisionPairs`.
        images_field: as `VisionPairs`.
        image_field: as `VisionPairs`.
        image_path_field: as `VisionPairs`.
        skip_bad_images: as `VisionPairs`.
        keep_text_only: as `VisionPairs`.
    """

    def __init__(
        self,
        dimensions: dict[str, str | list[str]],
        responses: tuple[str, str] | list[str] = ("response_0", "response_1"),
        prompt_field: str = "prompt",
        question_field: str = "question",
        images_field: str = "images",
        image_field: str = "image",
        image_path_field: str = "img_path",
        skip_bad_images: bool = False,
        keep_text_only: bool = False,
    ) -> None:
        self._set_dimensions(dimensions, responses)
        super().__init__(prompt_field=prompt_field, question_field=question_field, images_field=images_field,
                         image_field=image_field, image_path_field=image_path_field, skip_bad_images=skip_bad_images,
                         keep_text_only=keep_text_only)
        self.chosen_field, self.rejected_field = self.responses  # what collate names in its errors
