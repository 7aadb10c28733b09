"""Objectives for ternary preferences: pairs where one answer wins, and pairs where neither does (ties).

A tie is read from the batch column ``tie`` (1.0: tied, 0.0: the first answer is preferred), which a layout
gives only when asked (``TextPairs(tie_field=..., tie_column=True)``, ``ImagePairs(tie_column=True)``); every
objective that does not declare the column is refused such data at setup, so a tie never trains as a
preference by accident.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.data.fields import TIE_COLUMN
from alignsuite.objectives.base import (
    ObjectiveOutput,
    PairwiseObjective,
    Reducer,
    check_label_smoothing,
    register,
)
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores


def tie_flags(s: PairScores) -> Tensor:
    """The batch's ``tie`` column as a bool ``[B]`` tensor; all False when the scores carry none (scores built
    by hand: through the module the column is always there, since a missing one is refused at setup)."""
    tie = s.extra.get(TIE_COLUMN)
    if tie is None:
        return torch.zeros_like(s.chosen, dtype=torch.bool)
    return tie.to(s.chosen.device) > 0.5


@register("todo")
class TODO(PairwiseObjective):
    """Tie-rank Oriented DPO: DPO under the Rao-Kupper tie model, which gives ties a likelihood of their own.

    With ``z = b D`` and the tie threshold ``alpha > 0``:

        preference (y_w > y_l):  L = -log s(z - alpha)
        tie        (y_1 ~ y_2):  L = -log[ (e^{2 alpha} - 1) s(z - alpha) s(-z - alpha) ]

    The tie loss is symmetric in ``z`` (the order of a tied pair does not matter) and smallest at ``z = 0``: it
    pulls the two answers' implicit rewards together. ``label_smoothing`` eps smooths the preference term only,
    against the flipped preference's likelihood in the same model: ``-(1 - eps) log s(z - alpha) - eps log s(-z -
    alpha)`` (default 0). As ``alpha -> 0`` the preference term is DPO (and a
    tie becomes impossible), so on rows without ties this is DPO with the margin shifted by ``alpha``.

    Guo, Yin, Jiang and Zhang 2025, "TODO: Enhancing LLM Alignment with Ternary Preferences" (ICLR 2025),
    arXiv 2411.02442. The official code (XXares/TODO, ``utils/dpo_tie_trainer.py``, ``loss_type="tie_loss"``)
    takes ``theta = -alpha`` (``dpo_theta = -0.5``) with ``dpo_beta = 0.01``; here ``alpha`` is the positive
    threshold and its default, 0.5, is the official one; ``beta`` keeps the suite's 0.1 (the official 7B/8B
    recipes use 0.01). Logged rewards are ``b * u`` over every row; ``ties`` is the fraction of tied rows.
    """

    family = "pairwise"
    paper = "Guo et al. 2025, arXiv 2411.02442"
    convention = ("official code (XXares/TODO), with alpha = -theta > 0 (default 0.5 as there); beta defaults to 0.1,"
                  " the official recipes use 0.01")
    extra_columns = (TIE_COLUMN,)

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, label_smoothing: float = 0.0,
                 sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if alpha <= 0:
            raise ValueError(f"alpha (TODO's tie threshold, -theta of the official code) must be > 0, got {alpha}:"
                             " the tie likelihood has the factor e^(2 alpha) - 1")
        check_label_smoothing(label_smoothing)
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        z, a = self.beta * (u_w - u_l), self.alpha
        preference = -F.logsigmoid(z - a)
        if self.label_smoothing > 0:  # the flipped label y_l > y_w has, in the same model, likelihood s(-z - alpha)
            eps = self.label_smoothing
            preference = (1 - eps) * preference - eps * F.logsigmoid(-z - a)
        # log(e^{2a} - 1) = 2a + log(1 - e^{-2a}), finite for every a > 0.
        tie = -(2 * a + math.log(-math.expm1(-2 * a))) - F.logsigmoid(z - a) - F.logsigmoid(-z - a)
        return torch.where(tie_flags(s), tie, preference), self.beta * u_w, self.beta * u_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores, reduce)
        out.metrics["ties"] = tie_flags(scores).float().mean()
        return out


__all__ = ["TODO", "tie_flags"]
