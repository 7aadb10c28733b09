"""Watch a vision-language model answer: the same validation images and questions, at every validation."""

from __future__ import annotations

import base64
import html
import io
import json
import os

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from alignsuite.data.messages import messages_text, prompt_text


def thumbnail(image, size: int = 256) -> str:
    """A PNG data URI of ``image``, at most ``size`` pixels on its longer side."""
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class VisionSamples(Callback):
    """At every validation (and before training), answer the first ``num_rows`` validation rows' questions
    about their images and write a table: ``<log dir>/samples/step_NNNNNN.html`` (images inline) and
    ``.jsonl`` (question, chosen answer, generated answer), and to TensorBoard (a text table and the
    images) when it is a logger.

    Every process generates (a sharded model needs all of them in its forward); the first one writes.

    Args:
        num_rows: how many validation rows (the first ones, the same every time).
        max_new_tokens: the longest answer generated.
    """

    def __init__(self, num_rows: int = 8, max_new_tokens: int = 64) -> None:
        self.num_rows, self.max_new_tokens = num_rows, max_new_tokens
        self.written: list[str] = []
        self._rows: dict | None = None
        self._last_step: int | None = None

    def rows(self, trainer: Trainer) -> dict:
        if self._rows is None:
            data = trainer.datamodule
            ds = data.val_set if data.val_set is not None else data.train_set
            self._rows = data.collate([ds[i] for i in range(min(self.num_rows, len(ds)))])
        return self._rows

    def write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step or not self.num_rows:
            return
        self._last_step = step
        batch = self.rows(trainer)
        answers = pl_module.backbone.generate(batch["prompt"], images=batch.get("images"),
                                              max_new_tokens=self.max_new_tokens)
        root = trainer.log_dir or trainer.default_root_dir  # a collective under some strategies: every rank asks
        if not trainer.is_global_zero:
            return
        records = [{"index": int(i), "question": prompt_text(p, placeholders=True).strip(), "chosen": messages_text(c), "generated": a}
                   for i, p, c, a in zip(batch["index"], batch["prompt"], batch["chosen"], answers)]
        folder = os.path.join(root, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{step:06d}")
        with open(path + ".jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        cells = "".join(
            f"<tr><td>{''.join(f'<img src={thumbnail(im)!r}>' for im in images)}</td>"
            f"<td>{html.escape(r['question'])}</td><td>{html.escape(r['generated'])}</td>"
            f"<td>{html.escape(r['chosen'])}</td></tr>"
            for r, images in zip(records, batch.get("images") or [[] for _ in records])
        )
        with open(path + ".html", "w") as f:
            f.write(f"<!doctype html><meta charset=utf-8><title>step {step}</title><h1>Answers at step {step}</h1>"
                    "<table border=1 cellpadding=4><tr><th>image</th><th>question</th><th>generated</th>"
                    f"<th>chosen in the data</th></tr>{cells}</table>")
        self.written.append(path + ".html")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                table = "| row | question | generated | chosen |\n|---|---|---|---|\n" + "".join(
                    f"| {r['index']} | {r['question']} | {r['generated']} | {r['chosen']} |\n" for r in records)
                logger.experiment.add_text("samples", table, step)
                import numpy as np

                for r, images in zip(records, batch.get("images") or []):
                    for k, im in enumerate(images):
                        logger.experiment.add_image(f"samples/row_{r['index']}_{k}", np.asarray(im.convert("RGB")),
                                                    step, dataformats="HWC")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:
            self.write(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.write(trainer, pl_module)
