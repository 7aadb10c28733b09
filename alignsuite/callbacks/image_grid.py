"""Watch a diffusion model change: sample fixed prompts with a fixed seed and log the grid."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from alignsuite.callbacks.samples import ValidationSamples
from alignsuite.callbacks.writers import ImageWriter, make_grid


class ImageGrid(ValidationSamples):
    """Every ``every_n_steps`` optimizer steps (and before training), sample one image per prompt from
    ``seed`` and write the grid as ``<log dir>/images/step_NNNNNN.png`` and to TensorBoard if present.
    Under gradient accumulation a grid is sampled once per optimizer step, not once per micro-batch. A
    setting of :class:`ValidationSamples` with no judge, the image writer, and steps instead of validations.

    Args:
        prompts: the captions to sample; or take ``num_prompts`` fixed prompts of toy world ``world``.
    """

    tolerant = False

    def __init__(
        self, prompts: list[str] | None = None, world: str | None = None, num_prompts: int = 16,
        every_n_steps: int = 100, seed: int = 0,
    ) -> None:
        if prompts is None:
            if world is None:
                raise ValueError("ImageGrid needs prompts, or a toy world to draw them from")
            from alignsuite.toy import get_world

            prompts = get_world(world).eval_prompts(num_prompts, 4321)
        prompts = list(prompts)
        super().__init__(seed=seed, batch_size=max(len(prompts), 1))  # one call: every image from the one seed
        self.prompts, self.every_n_steps = prompts, every_n_steps
        # A world's rows may carry more than the caption (diffusion_users: the user's embedding, which generate reads).
        self.rows = [dict(p) if isinstance(p, dict) else {"prompt": p} for p in prompts]
        self._last_step: int | None = None  # the global step at the last batch end seen

    def make_writer(self, backbone):
        return ImageWriter()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step
        super().on_train_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Grids follow optimizer steps, not validations."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch that only accumulated gradients: no optimizer step
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)


__all__ = ["ImageGrid", "make_grid"]
