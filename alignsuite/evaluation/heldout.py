"""Held-out preference accuracy of the implicit reward: how often the aligned model prefers the data's chosen
answer more than the base model does, on pairs it did not train on."""

from __future__ import annotations

import torch

from alignsuite.backbones.base import shared_prompts
from alignsuite.judging import Scorer


class ImplicitRewardAccuracy(Scorer):
    """Held-out preference accuracy of the implicit reward ``r = log pi/pi_ref`` (Rafailov et al. 2023): per
    pair, 1 when ``r(chosen) > r(rejected)``, 0 when below, 1/2 on a tie (as ``rewards/accuracies`` in
    training). Any backbone, through its own contract: ``prepare`` once for the chosen and rejected views (one
    draw of noise and timestep shared by policy and reference for denoising backbones), ``score`` with the
    aligned model as policy and with the base loaded as a frozen reference (``load_reference``). It scores
    preference pairs, not generations: ``evaluate`` runs it on the recipe's data (its validation split)
    through :meth:`measure`. The base model, its own reference, has every margin zero: 1/2 per pair.

    Args:
        max_pairs: score at most this many held-out pairs (all when None).
    """

    name, unit = "implicit_reward_accuracy", "fraction of pairs"
    needs_pairs = True

    def __init__(self, max_pairs: int | None = None) -> None:
        self.max_pairs = max_pairs

    def score_batch(self, prompts, outputs, conditions, rows):
        raise ValueError("ImplicitRewardAccuracy scores preference pairs, not generations: call measure()")

    @staticmethod
    def outcomes(backbone, base, batch: dict) -> list[float]:
        """Per pair of ``batch``: 1, 0 or 1/2 for ``backbone``'s policy over the reference model ``base``."""
        prepared = backbone.prepare(shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"], batch=batch))
        ref_chosen, ref_rejected = backbone.score(prepared, model=base).score.chunk(2)
        chosen, rejected = (s.score for s in backbone.score(prepared).split(2))
        ref_chosen, ref_rejected = ref_chosen.to(chosen.device), ref_rejected.to(chosen.device)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        return ((margin > 0).float() + 0.5 * (margin == 0).float()).tolist()

    @torch.no_grad()
    def measure(self, backbone, base_model_name_or_path: str, dataloader) -> list[float]:
        """Per held-out pair: 1, 0 or 1/2 for ``backbone``'s policy over a frozen copy of the base."""
        base = backbone.load_reference(base_model_name_or_path, None)
        won: list[float] = []
        try:
            for batch in dataloader:
                won += self.outcomes(backbone, base, batch)
                if self.max_pairs is not None and len(won) >= self.max_pairs:
                    return won[: self.max_pairs]
        finally:
            del base  # the base copy's memory back before anything else loads
        return won


__all__ = ["ImplicitRewardAccuracy"]
