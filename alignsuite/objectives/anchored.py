"""Pairwise objectives that shape each side's reward, or the distribution of the rewards, rather than the margin
of each pair alone: APO anchors each side against zero (``apo_zero``, ``apo_down``), AOT makes the chosen rewards'
distribution dominate the rejected rewards' (``aot``, ``aot_unpaired``).

Notation as in :mod:`alignsuite.objectives.pairwise`: ``u_w``, ``u_l`` the chosen and rejected log-ratios, ``b`` =
``beta``, ``s`` the logistic sigmoid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, as_float, check_label_smoothing, register, smoothed_logistic
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores

@register("aot")
class AOT(PairwiseObjective):
    """Alignment via Optimal Transport, paired: the policy's margins must dominate the reference's.

    ``d = sort(l_w - l_l) - sort(ref_w - ref_l)`` (ascending over the batch, i.e. matched quantiles), then
    ``L_i = -(1 - eps) log s(b d_i) - eps log s(-b d_i)``.

    Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport" (first-order
    stochastic dominance of the margin distribution, solved in 1-D by sorting). The loss of a slot depends on
    the whole batch: larger per-device batches estimate the quantiles better.
    """

    family = "pairwise"
    paper = "Melnyk et al. 2024, arXiv 2406.05882"
    convention = "TRL's `aot`"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        c, r, rc, rr = as_float(s.chosen, s.rejected, s.ref_chosen, s.ref_rejected)
        d = torch.sort(c - r).values - torch.sort(rc - rr).values
        return smoothed_logistic(self.beta * d, self.label_smoothing), self.beta * (c - rc), self.beta * (r - rr)


@register("aot_unpaired")
class AOTUnpaired(AOT):
    """Alignment via Optimal Transport, unpaired: the chosen log-ratios must dominate the rejected ones.

    ``d = sort(u_w) - sort(u_l)`` (ascending over the batch), ``L_i = -(1 - eps) log s(b d_i) - eps log s(-b d_i)``.

    Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport" (the unpaired
    variant, which never uses which rejected answer went with which chosen one). TRL called it ``aot_pair``
    before renaming it.
    """

    family = "pairwise"
    paper = "Melnyk et al. 2024, arXiv 2406.05882"
    convention = "TRL's `aot_unpaired` (once `aot_pair`)"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        d = torch.sort(u_w).values - torch.sort(u_l).values
        return smoothed_logistic(self.beta * d, self.label_smoothing), self.beta * u_w, self.beta * u_l


@register("apo_zero")
class APOZero(PairwiseObjective):
    """Anchored Preference Optimization, zero variant: raise the chosen, lower the rejected likelihood.

    ``L = [1 - s(b u_w)] + s(b u_l)``.

    D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions: Addressing
    Underspecification in Alignment", Eq. 7. Meant for when the chosen answers are better than the model's.
    """

    family = "pairwise"
    paper = "D'Oosterlinck et al. 2024, arXiv 2408.06266"
    convention = "TRL's `apo_zero`"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        r_w, r_l = self.beta * u_w, self.beta * u_l
        return (1 - torch.sigmoid(r_w)) + torch.sigmoid(r_l), r_w, r_l


@register("apo_down")
class APODown(PairwiseObjective):
    """Anchored Preference Optimization, down variant: lower both likelihoods, the rejected one more.

    ``L = s(b u_w) + [1 - s(b D)]``.

    D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions: Addressing
    Underspecification in Alignment", Eq. 8. Meant for when the model is already better than the chosen
    answers. By design its gradient can *lower* the chosen likelihood (whenever ``|u_w| < |D|``); only the
    margin and the rejected side always move the DPO way.
    """

    family = "pairwise"
    paper = "D'Oosterlinck et al. 2024, arXiv 2408.06266"
    convention = "TRL's `apo_down`"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        r_w, r_l = self.beta * u_w, self.beta * u_l
        return torch.sigmoid(r_w) + (1 - torch.sigmoid(r_w - r_l)), r_w, r_l


__all__ = ["AOT", "AOTUnpaired", "APODown", "APOZero"]
