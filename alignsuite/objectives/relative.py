"""Relative Preference Optimisation: every chosen answer of a batch against every rejected one, across prompts.

Notation as in :mod:`alignsuite.objectives.pairwise`: ``u_w(i)``, ``u_l(j)`` the log-ratios of pair i's chosen and
pair j's rejected answer, ``b`` = ``beta``, ``s`` the logistic sigmoid.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, register
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores

Variant = Literal["embedding", "diagonal"]


@register("rpo_relative")
class RelativePO(PairwiseObjective):
    """Relative Preference Optimization: contrasts across the prompts of a batch, weighted by prompt similarity.

    With ``logits_ij = u_w(i) - u_l(j)`` over the batch's pairs i, j:

    - ``embedding`` (RPO-paired): ``d_ij = 1 - cos(e_i, e_j)`` between prompt embeddings, ``w_ij = softmax_j(-d_ij /
      tau)``, ``L_i = mean_j -log s(b * w_ij * logits_ij)`` (``tau`` = ``distance_temperature``);
    - ``diagonal`` (RPO-diagonal, no embeddings): ``l_ij = -log s(b * logits_ij)``,
      ``L_i = omega * l_ii + (1 - omega) * mean_{j != i} l_ij`` (``omega`` = ``diagonal_weight``).

    Yin et al. 2024, "Relative Preference Optimization: Enhancing LLM Alignment through Contrasting Responses
    across Identical and Diverse Prompts". Follows the official code (yinyueqin/relative-preference-optimization,
    ``trainers.py``: ``RPOTrainer.loss``, ``RPODiagonalTrainer.loss``; ``config/loss/rpo-paired.yaml``,
    ``rpo-diagonal.yaml``), which puts the weight *inside* the sigmoid; the paper writes it on the per-pair
    losses. Defaults are the code's: beta 0.1, tau 0.5, omega 0.8.

    The prompt embeddings come as a data column, ``prompt_embedding`` (one vector per pair; the code embeds the
    prompts with the sentence transformer ``all-MiniLM-L6-v2``): precomputed, so the objective stays a function of
    its scores. Under DDP each process contrasts only the pairs it holds (no gather), as the official code does:
    the loss depends on the per-device batch, and since the weights of a row sum to 1 inside the sigmoid, the
    effective beta shrinks roughly as 1/B; a different per-device batch size is a different objective. With one
    pair per device both variants are DPO.
    """

    family = "pairwise"
    paper = "Yin et al. 2024, arXiv 2402.10958"
    convention = "official code: similarity weight inside the sigmoid (the paper weights the losses); per-device batch"

    def __init__(self, beta: float = 0.1, distance_temperature: float = 0.5, variant: Variant = "embedding",
                 diagonal_weight: float = 0.8, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if variant not in get_args(Variant):
            raise ValueError(f"rpo_relative: variant must be one of {get_args(Variant)}, got {variant!r}")
        if distance_temperature <= 0:
            raise ValueError(f"rpo_relative: distance_temperature must be > 0, got {distance_temperature}")
        if not 0 <= diagonal_weight <= 1:
            raise ValueError(f"rpo_relative: diagonal_weight must be in [0, 1], got {diagonal_weight}")
        self.distance_temperature = distance_temperature
        self.variant = variant
        self.diagonal_weight = diagonal_weight
        # Only the embedding variant reads a column beyond the pair.
        self.extra_columns = ("prompt_embedding",) if variant == "embedding" else ()

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        logits = u_w[:, None] - u_l[None, :]
        if self.variant == "embedding":
            weights = prompt_weights(s, self.distance_temperature)
            losses = -F.logsigmoid(self.beta * weights * logits).mean(dim=1)
        else:
            per_pair = -F.logsigmoid(self.beta * logits)
            diagonal, n = per_pair.diagonal(), per_pair.shape[0]
            if n == 1:
                losses = diagonal
            else:
                eye = torch.eye(n, dtype=torch.bool, device=per_pair.device)
                off = torch.where(eye, 0.0, per_pair).sum(dim=1) / (n - 1)
                losses = self.diagonal_weight * diagonal + (1 - self.diagonal_weight) * off
        return losses, self.beta * u_w, self.beta * u_l


def prompt_weights(s: PairScores, temperature: float) -> Tensor:
    """``softmax_j(-(1 - cos(e_i, e_j)) / temperature)`` (``[B, B]``) from ``extra["prompt_embedding"]`` (``[B, D]``)."""
    embedding = s.extra.get("prompt_embedding")
    batch = s.chosen.shape[0]
    if embedding is None or embedding.dim() != 2 or embedding.shape[0] != batch:
        shape = None if embedding is None else tuple(embedding.shape)
        raise ValueError(
            f"rpo_relative (variant='embedding') needs one prompt embedding per pair in the data column "
            f"'prompt_embedding', shape [{batch}, D]; got {shape}. Precompute the prompts' sentence embeddings "
            "into that column, or use variant='diagonal'"
        )
    unit = F.normalize(embedding.float(), dim=1)
    distance = 1 - unit @ unit.T
    return torch.softmax(-distance / temperature, dim=1)


__all__ = ["RelativePO", "prompt_weights"]
