"""The evaluation's scorers during fit: a few fixed prompts generated and scored at validations."""

from __future__ import annotations

from alignsuite.callbacks.samples import ValidationSamples
from alignsuite.judging import Scorer


class ValidationScores(ValidationSamples):
    """Every ``every_n_validations``-th validation (and before training), generate from ``num_prompts``
    fixed prompts with a fixed seed and log each scorer's mean as ``val/<scorer name>``: the same scorers
    ``evaluate`` uses (``alignsuite.evaluation.scorers``: PickScore, HPSv2, a reward model, WER ...), on
    the policy as it trains. A setting of :class:`ValidationSamples` that writes no samples by default.

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
        write: also keep the samples with the backbone's writer.
    """

    def __init__(self, scorers: list[Scorer], prompts: str = "heldout", num_prompts: int = 8, seed: int = 0,
                 batch_size: int = 8, every_n_validations: int = 1, generation_kwargs: dict | None = None,
                 write: bool = False) -> None:
        if not scorers:
            raise ValueError("ValidationScores needs at least one scorer")
        super().__init__(prompts, scorers, num_prompts, seed, batch_size, every_n_validations, generation_kwargs, write)


__all__ = ["ValidationScores"]
