"""Watch alignment work: generate from fixed prompts and score what comes out."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class GenerationReward(Callback):
    """Log the mean programmatic reward of greedy generations, before training and at each validation.

    Generations are scored once per optimizer step: a validation that runs again at the same global step
    (``val_check_interval`` counts batches, so under gradient accumulation it can fall several times
    within one step) logs the value already measured there instead of generating again.

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

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """The reward at this global step: generated and scored once, then reused."""
        if self.history and self.history[-1][0] == trainer.global_step:
            return self.history[-1][1]
        value = self.evaluate(pl_module)
        self.history.append((trainer.global_step, value))
        rank_zero_info(f"{self.name} = {value:.3f} at step {trainer.global_step}")
        return value

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:  # the starting point, before any update
            value = self.measure(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics({self.name: value}, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        pl_module.log(self.name, self.measure(trainer, pl_module), sync_dist=False, rank_zero_only=False)
