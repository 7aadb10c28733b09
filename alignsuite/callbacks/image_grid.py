"""Watch a diffusion model change: sample fixed prompts with a fixed seed and log the grid."""

from __future__ import annotations

import math
import os

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger


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


class ImageGrid(Callback):
    """Every ``every_n_steps`` optimizer steps (and before training), sample one image per prompt from
    ``seed`` and write the grid as ``<log dir>/images/step_NNNNNN.png`` and to TensorBoard if present.
    Under gradient accumulation a grid is sampled once per optimizer step, not once per micro-batch.

    Args:
        prompts: the captions to sample; or take ``num_prompts`` fixed prompts of toy world ``world``.
    """

    def __init__(
        self, prompts: list[str] | None = None, world: str | None = None, num_prompts: int = 16,
        every_n_steps: int = 100, seed: int = 0,
    ) -> None:
        if prompts is None:
            if world is None:
                raise ValueError("ImageGrid needs prompts, or a toy world to draw them from")
            from alignsuite.toy import get_world

            prompts = get_world(world).eval_prompts(num_prompts, 4321)
        self.prompts, self.every_n_steps, self.seed = list(prompts), every_n_steps, seed
        self.written: list[str] = []
        self._last_step: int | None = None  # the global step at the last batch end seen

    def log_grid(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every process samples (a sharded model needs all of them in each forward); the first one writes.
        images = pl_module.backbone.generate(self.prompts, seed=self.seed)
        root = trainer.log_dir or trainer.default_root_dir  # a collective under some strategies: every rank asks
        if trainer.is_global_zero:
            self.write(trainer, make_grid(images), root)

    def write(self, trainer: Trainer, grid, root: str) -> None:
        folder = os.path.join(root, "images")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{trainer.global_step:06d}.png")
        grid.save(path)
        self.written.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", np.asarray(grid), trainer.global_step, dataformats="HWC")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step
        if trainer.global_step == 0:
            self.log_grid(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch that only accumulated gradients: no optimizer step
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)
