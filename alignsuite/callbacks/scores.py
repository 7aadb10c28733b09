"""The evaluation's scorers during fit: a few fixed prompts generated and scored at validations."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer

from alignsuite.callbacks.reward import ValidationMetrics
from alignsuite.evaluation.run import generate_all, row_conditions
from alignsuite.judging import Scorer


class ValidationScores(ValidationMetrics):
    """Every ``every_n_validations``-th validation (and before training), generate from ``num_prompts``
    fixed prompts with a fixed seed and log each scorer's mean as ``val/<scorer name>``: the same scorers
    ``evaluate`` uses (``alignsuite.evaluation.scorers``: PickScore, HPSv2, a reward model, WER ...), on
    the policy as it trains.

    Every process generates and scores (a sharded model needs all of them); failed generations are left out
    of the mean and counted in ``val/<name>_failed``. Scored once per optimizer step, like the toy reward.

    Args:
        scorers: the scorers (``class_path`` each, as in ``evaluate.scorers``).
        prompts: a prompt file (one per line, jsonl/csv/parquet with a prompt column, PartiPrompts, HPSv2's
            json), ``toy:<world>``, or ``heldout`` (the data's validation rows).
        num_prompts: how many of them (the first ones).
        seed: generation seed (batch ``k`` samples from ``seed + k``).
        batch_size: prompts generated at once.
        every_n_validations: score at every n-th validation.
        generation_kwargs: passed to the backbone's ``generate`` (``max_new_tokens`` ...).
    """

    def __init__(self, scorers: list[Scorer], prompts: str = "heldout", num_prompts: int = 8, seed: int = 0,
                 batch_size: int = 8, every_n_validations: int = 1, generation_kwargs: dict | None = None) -> None:
        if not scorers:
            raise ValueError("ValidationScores needs at least one scorer")
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.scorers, self.source, self.num_prompts = list(scorers), prompts, num_prompts
        self.seed, self.batch_size, self.every = seed, batch_size, every_n_validations
        self.generation_kwargs = dict(generation_kwargs or {})
        self.rows: list[dict] | None = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for scorer in self.scorers:  # refused at start, not after the first hours of training
            scorer.check_modality(pl_module.backbone.modality)

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        if self.rows is None:
            from alignsuite.evaluation.prompts import load_prompts

            self.rows = load_prompts(self.source, self.num_prompts, self.seed, datamodule=trainer.datamodule)
        outputs, _ = generate_all(pl_module.backbone, self.rows, self.seed, self.batch_size, self.generation_kwargs)
        prompts = [r["prompt"] for r in self.rows]
        conditions = row_conditions(self.rows, pl_module.backbone)
        metrics = {}
        for scorer in self.scorers:
            values = [v for v in scorer.score(prompts, outputs, conditions, self.rows) if v is not None]
            metrics[f"val/{scorer.name}"] = sum(values) / len(values) if values else float("nan")
            metrics[f"val/{scorer.name}_failed"] = float(len(outputs) - len(values))
        return metrics
