"""ARPO (X-ALMA's Adaptive-Rejection Preference Optimization): CPO whose rejected term is weighed by how far
the two translations' per-token likelihoods lie apart.

A translation pair is often two close paraphrases; pushing the rejected one down as hard as CPO does then
pushes the chosen one down with it ("over-rejection"). ARPO relaxes the rejected term where the policy's
per-token log-likelihoods of the two answers are close, and keeps CPO's full push where they are far apart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignsuite.objectives.base import (
    ObjectiveOutput,
    Reducer,
    as_float,
    mean_logps,
    register,
    smoothed_logistic,
)
from alignsuite.objectives.reference_free import CPO, CompletionNLL
from alignsuite.scores import PairScores


@register("arpo")
class ARPO(CPO):
    """Adaptive-Rejection Preference Optimization: CPO with the rejected log-likelihood weighed by ``w``.

    With ``l`` summed and ``m = l / |y|`` per-token-mean log-probs of the completions, ``c1``/``c2`` the
    options ``relax_coefficient_1``/``relax_coefficient_2``:

    ``d = |m_w - m_l|``,  ``w = min(c1 exp(c2 d) - 1, 1)``,
    ``L = -(1 - eps) log s(b (l_w - w l_l)) - eps log s(-b (l_w - w l_l)) + cpo_alpha * NLL(y_w)``;

    logged rewards ``b * l`` (unweighted, as ``cpo``'s); ``rejected_weight`` logs the batch mean of ``w``.

    At the defaults (``c1 = 0.9``, ``c2 = 0.4``) ``w`` rises from ``-0.1`` at ``d = 0`` through 0 at
    ``d = ln(1/c1)/c2 = 0.263`` to 1 (plain CPO) from ``d = ln(2/c1)/c2 = 1.996`` on. Below ``d = 0.263`` the
    weight is negative: with ``w`` held fixed, the term then rewards raising a rejected answer that the policy
    finds almost as likely as the chosen one. ``w`` is not detached, as in the official code: the gradient also
    flows through ``d`` and pushes the two per-token likelihoods apart while ``w < 1`` (``z`` grows with ``w``,
    as ``l_l < 0``). The loss then falls as the rejected answer rises where ``-s m_l c2 (w + 1) > w``,
    ``s = sign(m_l - m_w)``: for a rejected answer more likely per token than the chosen, at ``w > 0`` too; for
    one less likely, only at ``w < 0`` and ``|m_l|`` small. ``detach_weight=True`` holds ``w`` fixed in the backward pass instead (a CPO with a weight
    per pair; the same loss value); the official code has no such switch.

    Xu et al. 2024, "X-ALMA: Plug & Play Modules and Adaptive Rejection for Quality Translation at Scale".
    The paper's text could not be read here; the form and defaults follow the official code (fe1ixxu/ALMA,
    ``utils/cpo_trainer.py``, ``CPOTrainer.cpo_loss``, and ``utils/cpo_config.py``, whose options are spelled
    ``relax_cofficient_1`` = 0.9 and ``relax_cofficient_2`` = 0.4): the length ``|y|`` of ``d`` is the
    completion's token count (the labels that are not padding), the preference term's log-probs are summed,
    the NLL is ``cpo``'s pooled one (``nll="completion_pooled"``), beta 0.1, cpo_alpha 1.0. The exponent is
    capped where ``w`` reaches 1 (``c2 d <= ln(2/c1)``), which changes no value but keeps the gradient finite
    where ``exp(c2 d)`` would overflow.

    Reduction: at ``relax_coefficient_1 >= 2`` (``c1 exp(c2 d) - 1 >= 1`` for every ``d``, since ``c2 >= 0``)
    ``w = 1`` and ARPO is ``cpo`` with the same ``beta``, ``cpo_alpha``, ``label_smoothing`` and ``nll``,
    exactly, gradient included (``w`` is then a constant).
    """

    family = "reference-free"
    paper = "Xu et al. 2024, arXiv 2410.03115"
    convention = ("the official code's (fe1ixxu/ALMA cpo_trainer): summed log-probs, per-token distance, the "
                  "weight not detached, cpo's pooled NLL; relax coefficients 0.9 and 0.4; the paper's text not read")

    def __init__(self, beta: float = 0.1, cpo_alpha: float = 1.0, label_smoothing: float = 0.0,
                 nll: CompletionNLL = "completion_pooled", relax_coefficient_1: float = 0.9,
                 relax_coefficient_2: float = 0.4, detach_weight: bool = False) -> None:
        if not (math.isfinite(relax_coefficient_1) and relax_coefficient_1 > 0):
            raise ValueError(f"relax_coefficient_1 (the scale c1 of ARPO's rejected weight c1 exp(c2 d) - 1) must be "
                             f"a finite number > 0, got {relax_coefficient_1}")
        if not (math.isfinite(relax_coefficient_2) and relax_coefficient_2 >= 0):
            raise ValueError(f"relax_coefficient_2 (the rate c2 of ARPO's rejected weight c1 exp(c2 d) - 1) must be "
                             f"a finite number >= 0 (the weight grows with the distance d), got {relax_coefficient_2}")
        super().__init__(beta=beta, cpo_alpha=cpo_alpha, label_smoothing=label_smoothing, nll=nll)
        self.relax_coefficient_1 = relax_coefficient_1
        self.relax_coefficient_2 = relax_coefficient_2
        self.detach_weight = detach_weight

    def rejected_weight(self, s: PairScores) -> Tensor:
        """``w = min(c1 exp(c2 |m_w - m_l|) - 1, 1)`` per pair."""
        m_w, m_l = as_float(*mean_logps(s))
        c1, c2 = self.relax_coefficient_1, self.relax_coefficient_2
        # Past ln(2/c1) the weight is 1 whatever the exponent; capping there keeps exp finite, so the zero
        # gradient of the min never meets an infinite one (0 * inf = NaN).
        exponent = (c2 * (m_w - m_l).abs()).clamp(max=max(math.log(2.0 / c1), 0.0))
        w = (c1 * torch.exp(exponent) - 1.0).clamp(max=1.0)
        return w.detach() if self.detach_weight else w

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        l_w, l_l = as_float(s.chosen, s.rejected)
        losses = smoothed_logistic(self.beta * (l_w - self.rejected_weight(s) * l_l), self.label_smoothing)
        return losses, self.beta * l_w, self.beta * l_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores)
        with torch.no_grad():
            out.metrics["rejected_weight"] = self.rejected_weight(scores).mean()
        return out


__all__ = ["ARPO"]
