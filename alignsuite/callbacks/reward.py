"""Watch alignment work: generate from fixed prompts and score what comes out."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class ValidationMetrics(Callback):
    """Base of the callbacks that generate and score at validations: ``compute(trainer, pl_module)`` returns
    ``{logged name: value}``; it runs before training (logged at step 0) and at every ``every``-th
    validation, at most once per optimizer step (a validation again at the same global step, as under
    gradient accumulation, logs the values already measured there). ``history`` holds ``(step, metrics)``."""

    every: int = 1
    history: list[tuple[int, dict[str, float]]]

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        raise NotImplementedError

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """The metrics at this global step: generated and scored once, then reused."""
        if self.history and self.history[-1][0] == trainer.global_step:
            return self.history[-1][1]
        metrics = self.compute(trainer, pl_module)
        self.history.append((trainer.global_step, metrics))
        rank_zero_info(", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()) + f" at step {trainer.global_step}")
        return metrics

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:  # the starting point, before any update
            metrics = self.measure(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations = getattr(self, "_validations", 0) + 1
        if (self._validations - 1) % self.every:
            return
        for key, value in self.measure(trainer, pl_module).items():
            pl_module.log(key, value, sync_dist=False, rank_zero_only=False)


class GenerationReward(ValidationMetrics):
    """Log the mean programmatic reward of greedy generations, before training and at each validation.

    A world scores its generations one of two ways: ``world.reward(prompt, output)`` per prompt, averaged
    here; or, when it needs more than one generation per item (the vision-language world also generates
    with swapped images), ``world.evaluate(generate, items) -> {metric: value}``, given the backbone's
    ``generate`` (batched here). Its ``reward`` is logged as ``name``, every other metric beside it
    (``val/image_sensitivity``).

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
        self.history: list[tuple[int, dict[str, float]]] = []  # (global step, {logged name: value})

    def evaluate(self, pl_module: LightningModule) -> dict[str, float]:
        """Every metric, under its logged name, for the model as it is now."""
        generate_all = pl_module.backbone.generate

        def generate(prompts, **kwargs):  # in chunks of batch_size, each keyword argument split alongside
            outputs = []
            for start in range(0, len(prompts), self.batch_size):
                chunk = {k: v[start : start + self.batch_size] for k, v in kwargs.items()}
                outputs += generate_all(prompts[start : start + self.batch_size], **chunk, **self.world.generation_kwargs)
            return outputs

        if hasattr(self.world, "evaluate"):
            metrics = self.world.evaluate(generate, self.prompts)
        else:
            outputs = generate(self.prompts)
            metrics = {"reward": sum(self.world.reward(p, o) for p, o in zip(self.prompts, outputs)) / len(self.prompts)}
        prefix = self.name.rsplit("/", 1)[0] + "/" if "/" in self.name else ""
        return {self.name if key == "reward" else prefix + key: float(value) for key, value in metrics.items()}

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        return self.evaluate(pl_module)
