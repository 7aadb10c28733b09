"""Watch alignment work: a toy world's prompts generated and scored at validations, its reward logged."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from alignsuite.callbacks.samples import ValidationMetrics, ValidationSamples
from alignsuite.evaluation.text_scorers import ToyReward


class GenerationReward(ValidationSamples):
    """Log the mean programmatic reward of greedy generations, before training and at each validation.

    A setting of :class:`ValidationSamples`: the world's evaluation prompts, judged by
    :class:`alignsuite.evaluation.scorers.ToyReward`. Its reward is logged as ``name``, every other value it
    judges beside it (the vision-language world's ``val/image_sensitivity`` and ``val/hallucination``, which
    read a second generation with swapped images, a rewrite the judge declares).

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

    tolerant = False

    def __init__(
        self, world: str = "llm", num_prompts: int = 64, seed: int = 1234, batch_size: int = 64, name: str = "val/toy_reward"
    ) -> None:
        from alignsuite.toy import get_world

        self.world = get_world(world)
        super().__init__(scorers=[ToyReward(world)], seed=None, batch_size=batch_size,
                         generation_kwargs=self.world.generation_kwargs, write=False)
        self.prompts = self.world.eval_prompts(num_prompts, seed)
        self.rows = [dict(p) if isinstance(p, dict) else {"prompt": p} for p in self.prompts]
        self.name = name

    def metrics(self, judged: dict[str, list], outputs: list) -> dict[str, float]:
        scorer = self.scorers[0]
        means = scorer.means(judged[scorer.name])
        return {self.name if key == scorer.name else self.logged_name(key): float(value) for key, value in means.items()}

    def evaluate(self, pl_module: LightningModule) -> dict[str, float]:
        """Every metric, under its logged name, for the model as it is now."""
        return self.judge(pl_module.backbone, self.rows)[0]

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        return self.evaluate(pl_module)


__all__ = ["GenerationReward", "ValidationMetrics"]
