"""How validation samples are kept, one writer per kind of output: text (a table, with the input images of a
vision-language model inline), images (a grid) and audio (``.wav`` files). :func:`writer_for` picks the
backbone's; :class:`alignsuite.callbacks.samples.ValidationSamples` calls it on the first process.

``write(trainer, root, rows, outputs, judged)`` gets the prompt rows, the generations and the judges' values
(one dict per row, or ``None``) and writes under ``root`` (the run's log folder); ``written`` lists the paths.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from alignsuite.data.messages import messages_text, prompt_text


def tensorboards(trainer: Trainer) -> list:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


# ------------------------------------------------------------------------------------------ text
def thumbnail(image, size: int = 256) -> str:
    """A PNG data URI of ``image``, at most ``size`` pixels on its longer side."""
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class TextWriter:
    """``<root>/<folder>/step_NNNNNN.jsonl`` (index, question, the data's chosen answer when the rows hold one,
    generated) and ``.html`` (the rows' ``image_column`` images inline), and to TensorBoard a text table and
    the images.

    Args:
        folder: the folder under the run's log folder.
        image_column: the rows' column of input images (the backbone's ``image_column``), or ``None``.
    """

    def __init__(self, folder: str = "samples", image_column: str | None = None) -> None:
        self.folder, self.image_column = folder, image_column
        self.written: list[str] = []

    def write(self, trainer: Trainer, root: str, rows: list[dict], outputs: list, judged: list | None = None) -> str:
        step = trainer.global_step
        records = []
        for i, (row, out) in enumerate(zip(rows, outputs)):
            record = {"index": int(row.get("index", i)), "question": prompt_text(row["prompt"], placeholders=True).strip()}
            if "chosen" in row:
                record["chosen"] = messages_text(row["chosen"])
            records.append({**record, "generated": out})
        folder = os.path.join(root, self.folder)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{step:06d}")
        with open(path + ".jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        images = [row.get(self.image_column) or [] for row in rows] if self.image_column else [[] for _ in rows]
        cells = "".join(
            f"<tr><td>{''.join(f'<img src={thumbnail(im)!r}>' for im in ims)}</td>"
            f"<td>{html.escape(r['question'])}</td><td>{html.escape(str(r['generated']))}</td>"
            f"<td>{html.escape(r.get('chosen', ''))}</td></tr>"
            for r, ims in zip(records, images)
        )
        with open(path + ".html", "w") as f:
            f.write(f"<!doctype html><meta charset=utf-8><title>step {step}</title><h1>Answers at step {step}</h1>"
                    "<table border=1 cellpadding=4><tr><th>image</th><th>question</th><th>generated</th>"
                    f"<th>chosen in the data</th></tr>{cells}</table>")
        self.written.append(path + ".html")
        for board in tensorboards(trainer):
            table = "| row | question | generated | chosen |\n|---|---|---|---|\n" + "".join(
                f"| {r['index']} | {r['question']} | {r['generated']} | {r.get('chosen', '')} |\n" for r in records)
            board.add_text("samples", table, step)
            for r, ims in zip(records, images):
                for k, im in enumerate(ims):
                    board.add_image(f"samples/row_{r['index']}_{k}", np.asarray(im.convert("RGB")), step,
                                    dataformats="HWC")
        return path + ".html"


# ------------------------------------------------------------------------------------------ images
def make_grid(images: list, columns: int | None = None):
    """Paste equally sized PIL images into one grid image, row by row."""
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * w, (i // columns) * h))
    return grid


class ImageWriter:
    """``<root>/<folder>/step_NNNNNN.png``: the generated images as one grid, and to TensorBoard."""

    def __init__(self, folder: str = "images") -> None:
        self.folder = folder
        self.written: list[str] = []

    def write(self, trainer: Trainer, root: str, rows: list[dict], outputs: list, judged: list | None = None) -> str:
        grid = make_grid(outputs)
        folder = os.path.join(root, self.folder)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{trainer.global_step:06d}.png")
        grid.save(path)
        self.written.append(path)
        for board in tensorboards(trainer):
            board.add_image("samples", np.asarray(grid), trainer.global_step, dataformats="HWC")
        return path


# ------------------------------------------------------------------------------------------ audio
class AudioWriter:
    """The first ``num_audio`` utterances as ``<root>/<folder>/step_NNNNNN/NNN.wav`` with a ``samples.jsonl``
    (text, transcript, WER, file), and to TensorBoard as audio: the audio a speech judge heard (its ``audio``
    value; nothing is written for a backbone without a vocoder)."""

    def __init__(self, folder: str = "speech_samples", num_audio: int = 4, text_column: str = "text") -> None:
        self.folder, self.num_audio, self.text_column = folder, num_audio, text_column
        self.written: list[str] = []

    def write(self, trainer: Trainer, root: str, rows: list[dict], outputs: list, judged: list | None = None) -> str | None:
        from alignsuite.data.audio import write_wav

        judged = judged or [None] * len(rows)
        if not self.num_audio or not judged or judged[0] is None or judged[0].get("audio") is None:
            return None
        step = trainer.global_step
        folder = os.path.join(root, self.folder, f"step_{step:06d}")
        os.makedirs(folder, exist_ok=True)
        records = []
        for i, (row, v) in enumerate(zip(rows[: self.num_audio], judged)):
            path, audio, text = os.path.join(folder, f"{i:03d}.wav"), v["audio"], row[self.text_column]
            write_wav(path, audio.waveform, audio.sampling_rate)
            records.append({"item": i, "text": text, "transcript": v["transcript"], "wer": v["wer"],
                            "file": os.path.basename(path)})
            for board in tensorboards(trainer):
                board.add_audio(f"speech/item_{i}", audio.waveform.float().cpu().reshape(1, -1), step,
                                sample_rate=audio.sampling_rate)
                board.add_text(f"speech/item_{i}", f"text: {text}  \ntranscript: {v['transcript']}"
                               f"  \nWER: {v['wer']:.3f}", step)
        with open(os.path.join(folder, "samples.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        self.written.append(folder)
        return folder


def writer_for(backbone):
    """The writer of ``backbone``'s outputs: a grid for images, audio files for speech, else a text table (with
    the input images of a backbone that declares an ``image_column``)."""
    modality = getattr(backbone, "modality", "text")
    if modality == "text_to_image":
        return ImageWriter()
    if modality == "text_to_speech":
        return AudioWriter()
    return TextWriter(image_column=getattr(backbone, "image_column", None))


__all__ = ["AudioWriter", "ImageWriter", "TextWriter", "make_grid", "thumbnail",
           "writer_for"]
