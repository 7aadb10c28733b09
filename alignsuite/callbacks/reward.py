"""Watch alignment work: generate from fixed prompts and score what comes out."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class GenerationReward(Callback):
    """Log the mean programmatic reward of greedy generations, before training and at each validation.

    Args:
        world: the toy world whose prompts and reward to use (``alignsuite.toy.get_world``).
        num_prompts: how many fixed evaluation prompts (drawn once, from ``seed``).
        seed: seed of the prompt draw; the same prompts are scored every time.
        batch_size: prompts generated at once.
        name: the metric's name.
    """

    def __init__(
        self, world: str = "llm", num_prompts: int = 64, seed: int = 1234, batch_size: int = 64, name: str = "val/toy_reward"
    ) -> None:
        from alignsuite.toy import get_world

        self.world = get_world(world)
        self.prompts = self.world.eval_prompts(num_prompts, seed)
        self.batch_size = batch_size
        self.name = name
        self.history: list[tuple[int, float]] = []

    def evaluate(self, pl_module: LightningModule) -> float:
        total = 0.0
        for start in range(0, len(self.prompts), self.batch_size):
            prompts = self.prompts[start : start + self.batch_size]
            outputs = pl_module.backbone.generate(prompts, **self.world.generation_kwargs)
            total += sum(self.world.reward(p, o) for p, o in zip(prompts, outputs))
        return total / len(self.prompts)

    def _record(self, trainer: Trainer, value: float) -> None:
        self.history.append((trainer.global_step, value))
        rank_zero_info(f"{self.name} = {value:.3f} at step {trainer.global_step}")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:  # the starting point, before any update
            value = self.evaluate(pl_module)
            self._record(trainer, value)
            for logger in trainer.loggers:
                logger.log_metrics({self.name: value}, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = self.evaluate(pl_module)
        self._record(trainer, value)
        pl_module.log(self.name, value, sync_dist=False, rank_zero_only=False)
