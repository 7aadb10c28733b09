"""Where a run of the online loop keeps what it made, and how it is written so that nothing is lost.

One folder per round under the run's ``output_dir``::

    round_00/heldout.jsonl       the base model's outputs on the held-out prompts, judged (round 0 has no fit)
    round_00/round.json          its summary: the judge's mean and spread there
    round_01/samples/00000.jsonl K samples per prompt of the first prompt shard (prompt, sample, seed, output,
                                 and the output of each rewrite the judge declares, drawn with the same seed)
    round_01/judged/00000.jsonl  the same samples with every value the judge gave (and its raw output)
    round_01/lists.jsonl         one row per prompt: prompt, responses, scores (what the build rule reads)
    round_01/pairs.jsonl         the rule's output (pairs, lists or soft labels) and build.json its counts
    round_01/fit/                the round's fit: Lightning's logs and checkpoints (last.ckpt resumes it)
    round_01/heldout.jsonl       the fitted policy's outputs on the held-out prompts, judged
    round_01/round.json          written last: the round is finished, and never regenerated
    prompt_images/               the images prompt rows hold (their input images), as PNG files the rounds' rows
                                 point to, named by their pixels: written once, whichever rounds use them

Every file is written to a temporary name in its folder and renamed when complete, so a run killed at any
point leaves whole files or none; a shard file that exists is finished.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Iterable

IMAGE_KIND, TEXT_KIND, VALUE_KIND = "image", "text", "value"
PROMPT_IMAGES = "prompt_images"  # the run's folder of prompt rows' images


def round_dir(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, f"round_{index:02d}")


def shard_name(index: int) -> str:
    return f"{index:05d}.jsonl"


def write_atomic(path: str, text: str) -> None:
    """``text`` to ``path``, through a temporary file in the same folder renamed over it when written."""
    _write_via_temp(path, lambda f: f.write(text.encode("utf-8")))


def _write_via_temp(path: str, write, sync: bool = True) -> None:
    """``write(f)`` into a temporary file (binary) beside ``path``, synced (unless not ``sync``) and renamed over
    ``path``; on any failure the temporary file is removed and ``path`` is as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_rows(path: str, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=_plain) + "\n" for row in rows))


def write_json(path: str, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, default=_plain) + "\n")


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _plain(value):
    """What ``json`` cannot write itself: tensors and numpy values as numbers or lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to a round's files")


def finite(value) -> float | None:
    """A judged value as a float, or None where it is missing or not finite (a failed judgement)."""
    if value is None or isinstance(value, (str, bool)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def encode_output(output: Any, folder: str, name: str) -> tuple[str, Any]:
    """``(kind, value)`` of a generated output as a round's files keep it: text as it is, an image as a PNG file
    beside the shard (its path, relative to the round folder), anything else (speech codes, numbers) as JSON."""
    if output is None or isinstance(output, str):
        return TEXT_KIND, output
    if _is_image(output):  # a PIL image
        path = os.path.join(folder, "images", f"{name}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        output.save(path, format="PNG")
        return IMAGE_KIND, os.path.relpath(path, os.path.dirname(folder))
    return VALUE_KIND, _plain(output) if hasattr(output, "tolist") else output


def decode_output(kind: str, value: Any, round_folder: str) -> Any:
    """The output :func:`encode_output` wrote, as the judge reads it (a PIL image for an image)."""
    if kind == IMAGE_KIND and value is not None:
        from PIL import Image

        with Image.open(os.path.join(round_folder, value)) as image:
            return image.convert("RGB")
    return value


def _is_image(value: Any) -> bool:
    return hasattr(value, "save") and hasattr(value, "size") and not isinstance(value, (str, bytes))


def _save_png(image, path: str) -> None:
    """``image`` as a PNG at ``path``, written whole or not at all (a killed run leaves none half written).

    Not synced file by file (a sync is most of the time of a small image's write): the prompt images are written
    by a round's gathering of its lists, which a resumed run does again until the round's ``build.json`` is
    written, synced, after them; an empty file (what an unsynced write can leave after a crash) is written again."""
    _write_via_temp(path, lambda f: image.save(f, format="PNG"), sync=False)


def image_name(image) -> str:
    """A file name for ``image`` that only the same pixels (size, mode and bytes) share."""
    import hashlib

    digest = hashlib.sha1(f"{image.mode} {image.size[0]}x{image.size[1]} ".encode())
    digest.update(image.tobytes())
    return f"{digest.hexdigest()}.png"


def encode_row(row: dict, folder: str) -> dict:
    """A prompt row as the round's files keep it: every column holding an image (or a list of images, such as a
    prompt's input ``images``) has them saved as PNG files under ``folder``, named by their pixels, and holds
    their absolute paths, which the data layouts read back; every other column as it is. An image already
    there (another round's prompt, or another column's) is not written again."""
    import copy

    import torch

    out = {}
    for column, value in row.items():
        many = isinstance(value, (list, tuple))
        found = list(value) if many else [value]
        if found and all(_is_image(v) for v in found):
            paths = [os.path.abspath(os.path.join(folder, image_name(image))) for image in found]
            for image, path in zip(found, paths):
                if not (os.path.isfile(path) and os.path.getsize(path) > 0):
                    _save_png(image, path)
            out[column] = paths if many else paths[0]
        else:  # a tensor (a prompt's speech) cloned: a tenth of deepcopy's time
            out[column] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    return out


def data_value(kind: str, value: Any, round_folder: str) -> Any:
    """The output as the training data holds it: an image by its absolute path, the rest as it is."""
    if kind == IMAGE_KIND and value is not None:
        return os.path.abspath(os.path.join(round_folder, value))
    return value


__all__ = ["PROMPT_IMAGES", "decode_output", "data_value", "encode_output", "encode_row", "finite", "image_name",
           "read_json", "read_rows", "round_dir", "shard_name", "write_atomic", "write_json", "write_rows"]
