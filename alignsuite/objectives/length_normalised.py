"""Pairwise objectives on per-token (length-normalised) margins: LN-DPO, with a reference, and RePO, without.

Notation as in `alignsuite.objectives.pairwise`: ``u = log pi(y) - log pi_ref(y)`` summed over the answer's
tokens, ``|y|`` its token count, ``m = l / |y|`` the per-token mean log-likelihood, ``b`` = ``beta``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import (
    ObjectiveOutput,
    PairwiseObjective,
    Reducer,
    as_float,
    check_nll,
    mean_logps,
    register,
)
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.objectives.reference_free import CompletionNLL
from alignsuite.scores import PairScores


@register("ln_dpo")
class LNDPO(PairwiseObjective):
    """Length-normalised DPO: DPO on per-token log-ratios, so that long answers do not dominate the margin.

    ``L = -log s(b (u_w/|y_w| - u_l/|y_l|))``; logged rewards ``b u/|y|``, the log-ratios the loss sees (as
    ``ipo`` logs them), so the accuracy matches the loss.

    Ahrabian et al. 2024, "The Hitchhiker's Guide to Human Alignment with *PO" (NAACL 2025 Findings: "A Practical
    Analysis of Human Alignment with *PO"), arXiv 2407.15229. TRL 1.13 has it as
    ``DPOConfig(loss_type="sigmoid_norm")`` (dividing by the completion's token count, as here): same loss and
    gradient (tested); TRL logs the unnormalised ``b u`` as rewards. It keeps the reference and has no target
    margin, so it is not SimPO.
    """

    family = "pairwise"
    paper = "Ahrabian et al. 2024, arXiv 2407.15229"
    convention = "TRL's sigmoid_norm (loss and gradient equal); rewards logged per token, as the loss sees them"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        len_w, len_l = as_float(s.chosen_len.clamp(min=1), s.rejected_len.clamp(min=1))
        u_w, u_l = u_w / len_w, u_l / len_l
        return -F.logsigmoid(self.beta * (u_w - u_l)), self.beta * u_w, self.beta * u_l


@register("repo")
class RePO(PairwiseObjective):
    """ReLU-based Preference Optimization: a hinge on SimPO's per-token margin, without a reference.

    ``L = max(0, gamma - (m_w - m_l))`` (+ ``sft_weight * NLL(y_w)`` if set); logged rewards ``b m``.

    Wu et al. 2025, "RePO: ReLU-based Preference Optimization", arXiv 2503.07426: SimPO's ``b -> inf`` limit,
    with the one hyper-parameter ``gamma`` (the official code's ``gamma_beta_ratio``). ``beta`` does not enter the
    loss; it only scales the logged rewards (as in the official code, junkangwu/RePO ``scripts/simpo_trainer.py``,
    ``loss_type == "repo"``). Pairs already beyond the margin get no gradient, by design: ``active`` logs the
    fraction of pairs that still have one. Defaults: ``gamma = 0.4`` (the official Mistral-7B and Gemma-2-9B
    configs; Llama-3-8B uses 0.6) and ``beta = 2.0`` for the rewards (SimPO's). The optional SFT term follows the
    official (SimPO) code: pooled over the batch's answer tokens.
    """

    family = "reference-free"
    paper = "Wu et al. 2025, arXiv 2503.07426"
    convention = "official code (junkangwu/RePO); gamma 0.4 as its Mistral and Gemma configs; beta only scales rewards"
    needs_reference = False

    def __init__(self, gamma: float = 0.4, beta: float = 2.0, sft_weight: float = 0.0,
                 nll: CompletionNLL = "completion_pooled") -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if gamma < 0:
            raise ValueError(f"gamma (the RePO margin) must be >= 0, got {gamma}")
        check_nll(nll, ("completion_pooled", "completion_per_sequence"))
        self.gamma = gamma
        self.nll = nll

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        return torch.relu(self.gamma - (m_w - m_l)), self.beta * m_w, self.beta * m_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores, reduce)
        with torch.no_grad():
            m_w, m_l = as_float(*mean_logps(scores))
            out.metrics["active"] = (m_w - m_l < self.gamma).float().mean()
        return out


__all__ = ["LNDPO", "RePO"]
