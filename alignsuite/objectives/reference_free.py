"""Pairwise objectives without a reference model: SimPO, ORPO, CPO.

They read only the policy's scores: ``l_w``/``l_l`` summed log-probs, ``m_w = l_w/|y_w|`` and
``m_l = l_l/|y_l|`` per-token means. Reference scores, if the batch has them, are ignored, and the module
loads no reference weights for them (``needs_reference = False``). ``NLL(y_w)`` is the batch mean of the
chosen answer's per-token negative log-likelihood (:func:`chosen_nll`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import (
    ObjectiveOutput,
    PairwiseObjective,
    Reducer,
    as_float,
    check_label_smoothing,
    mean_logps,
    register,
    smoothed_logistic,
)
from alignsuite.scores import PairScores


@register("simpo")
class SimPO(PairwiseObjective):
    """Simple Preference Optimization: length-normalised likelihood margin with a target gap, no reference.

    ``L = -log s(b (m_w - m_l) - gamma)`` (+ ``sft_weight * NLL(y_w)`` if set); logged rewards ``b * m``.

    Meng, Xia and Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward".
    ``gamma`` is the paper's absolute margin. The official code instead takes ``gamma_beta_ratio`` = gamma/b;
    give ``gamma = ratio * beta`` to reproduce a recipe. Defaults: ``beta = 2.0`` (official trainer; the README
    recommends 2.0-2.5, up to 10) and ``gamma = 1.0``, i.e. gamma/beta = 0.5, the README's suggested start
    (the tuned Llama3/Gemma settings use 0.5-0.55). TRL's SimPO keeps CPO's beta = 0.1, which is far too
    small for a reference-free per-token margin; we do not follow it.
    """

    needs_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if gamma < 0:
            raise ValueError(f"gamma (the SimPO target margin) must be >= 0, got {gamma}")
        self.gamma = gamma

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        losses = -F.logsigmoid(self.beta * (m_w - m_l) - self.gamma)
        return losses, self.beta * m_w, self.beta * m_l


# A per-token mean log-prob of exactly 0 (probability 1) would make log(1 - p) = -inf; stopping a hair short
# of it bounds the odds without changing any realistic value.
_LOG1MEXP_MAX = -1e-6


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends.

    Following Maechler 2012, "Accurately Computing log(1 - exp(-|a|))": ``log(-expm1(x))`` near 0, where
    ``1 - exp(x)`` cancels; ``log1p(-exp(x))`` below ``-ln 2``. Each branch sees only inputs from its own
    range, so neither puts a NaN or inf into the other's gradient.
    """
    x = x.float().clamp(max=_LOG1MEXP_MAX)
    cut = -math.log(2.0)
    near_zero = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near_zero, far)


@register("orpo")
class ORPO(PairwiseObjective):
    """Odds Ratio Preference Optimization: SFT plus a log-odds-ratio penalty, in one stage and without a reference.

    With ``p = exp(m)`` the per-token-mean likelihood and ``odds = p / (1 - p)``:
    ``log_odds = (m_w - m_l) - [log(1 - e^m_w) - log(1 - e^m_l)]``,
    ``L = NLL(y_w) - lambda * log s(log_odds)``; logged rewards ``lambda * m`` (as TRL does).

    Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
    (``L_SFT + lambda * L_OR``).
    The paper's lambda is the hyper-parameter ``beta`` here (TRL's name), default 0.1 (TRL, and the official
    Mistral-ORPO-beta recipe; the official script's bare default is 1.0). The NLL term is part of ORPO and is
    always on. ``log(1 - e^m)`` is computed in float32 with :func:`log1mexp`.
    Extra metrics: ``log_odds_chosen`` (mean log odds ratio of chosen over rejected) and ``log_odds_ratio``
    (mean ``log s(log_odds)``, the quantity the penalty maximises).
    """

    needs_reference = False

    def __init__(self, beta: float = 0.1) -> None:
        # The NLL is ORPO's own SFT term with weight 1: the base class adds it and logs loss/sft, loss/preference.
        super().__init__(beta=beta, sft_weight=1.0)

    @staticmethod
    def log_odds(s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        return (m_w - m_l) - (log1mexp(m_w) - log1mexp(m_l)), m_w, m_l

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        log_odds, m_w, m_l = self.log_odds(s)
        return -self.beta * F.logsigmoid(log_odds), self.beta * m_w, self.beta * m_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores)
        with torch.no_grad():
            log_odds = self.log_odds(scores)[0]
        out.metrics["log_odds_ratio"] = F.logsigmoid(log_odds).mean()
        out.metrics["log_odds_chosen"] = log_odds.mean()
        return out


@register("cpo")
class CPO(PairwiseObjective):
    """Contrastive Preference Optimization: reference-free DPO on summed log-probs plus an NLL anchor.

    ``L = -(1 - eps) log s(b (l_w - l_l)) - eps log s(-b (l_w - l_l)) + cpo_alpha * NLL(y_w)``;
    logged rewards ``b * l``.

    Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in Machine
    Translation" (the paper adds the NLL with weight 1; ``cpo_alpha`` scales it, as in TRL).
    The NLL is per token (the same convention as every SFT term here); the preference term uses summed
    log-probs, as the paper and TRL do. Defaults: beta 0.1, cpo_alpha 1.0, no label smoothing.
    """

    needs_reference = False

    def __init__(self, beta: float = 0.1, cpo_alpha: float = 1.0, label_smoothing: float = 0.0) -> None:
        if cpo_alpha < 0:
            raise ValueError(f"cpo_alpha must be >= 0, got {cpo_alpha}")
        check_label_smoothing(label_smoothing)
        super().__init__(beta=beta, sft_weight=cpo_alpha)  # the base class adds cpo_alpha * NLL(y_w)
        self.cpo_alpha = cpo_alpha
        self.label_smoothing = label_smoothing

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        l_w, l_l = as_float(s.chosen, s.rejected)
        losses = smoothed_logistic(self.beta * (l_w - l_l), self.label_smoothing)
        return losses, self.beta * l_w, self.beta * l_l


__all__ = ["CPO", "ORPO", "SimPO", "log1mexp"]
