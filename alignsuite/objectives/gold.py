"""Triple Preference Optimisation: a preference term on chosen and rejected plus the NLL of a third, gold answer.

Rows hold three answers to one prompt: ``gold`` (the best, e.g. UltraFeedback's highest rated), ``chosen`` and
``rejected``; the data layout names the gold column (``TextPairs(answer_fields={"gold": "reference"})``). The
objective scores the view ``View("gold")`` beside the pair and reads its scores from ``extra["gold"]`` and
``extra["gold_len"]``. No reference model: TPO's "reference" is the gold answer, not a reference policy.

``NLL(y_gold)`` is pooled over the batch's gold tokens, ``-sum l_gold / sum |y_gold|``: what
``torch.nn.CrossEntropyLoss`` over the gold labels computes in the official code and in TRL.
"""

from __future__ import annotations

import torch
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
from alignsuite.views import View


def gold_nll(s: PairScores) -> Tensor:
    """``-sum l_gold / sum |y_gold|`` over the batch (float32 or wider), from the gold view's scores."""
    if "gold" not in s.extra or "gold_len" not in s.extra:
        raise ValueError(
            "the gold answer's NLL needs its scores (extra['gold'], extra['gold_len']) from the view View('gold');"
            " give the data a gold column (TextPairs answer_fields: {gold: <field>})"
        )
    logps, count = s.extra["gold"], s.extra["gold_len"]
    dtype = torch.promote_types(logps.dtype, torch.float32)
    return -logps.to(dtype).sum() / count.to(dtype).sum().clamp(min=1)


class _Triple(PairwiseObjective):
    """What TPO and TPO-L share: the gold view, its NLL weighted by ``alpha``, the reference-free flags."""

    family = "reference-free"
    paper = "Saeidi et al. 2024, arXiv 2405.16681"
    needs_reference = False

    def __init__(self, beta: float, alpha: float, label_smoothing: float) -> None:
        super().__init__(beta=beta)
        if alpha < 0:
            raise ValueError(f"alpha (the gold NLL's weight) must be >= 0, got {alpha}")
        check_label_smoothing(label_smoothing)
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    @property
    def views(self) -> tuple[View, ...]:
        # With alpha = 0 the gold answer takes no part: it is not scored (TRL skips its forward too).
        gold = (View("gold"),) if self.alpha > 0 else ()
        return (View("chosen"), View("rejected"), *gold)

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores)
        if self.alpha == 0:
            return out
        nll = gold_nll(scores)
        out.metrics["loss/preference"] = out.loss.detach()
        out.metrics["loss/gold_nll"] = nll.detach()
        return ObjectiveOutput(out.loss + self.alpha * nll, out.metrics)


@register("tpo")
class TPO(_Triple):
    """Triple Preference Optimisation: reference-free DPO on summed log-probs plus the gold answer's NLL.

    ``L = -(1 - eps) log s(b (l_w - l_l)) - eps log s(-b (l_w - l_l)) + alpha * NLL(y_gold)``; logged rewards
    ``b * l``.

    Saeidi, Verma, RRV and Baral 2024, "Triple Preference Optimization: Achieving Better Alignment using a
    Single Step Optimization" (the ``sigmoid`` loss of ``utils/tpo_trainer.py``, ``TPOTrainer.tpo_loss``, plus
    ``alpha`` times the gold answer's cross-entropy). ``eps`` = ``label_smoothing`` (TRL's addition; 0 in the
    official code).

    Defaults follow the official launcher ``run_tpo.sh``: ``beta = 0.1``, ``alpha = 0.5``. TRL's experimental
    ``TPOTrainer`` (``trl/experimental/tpo``, ``loss_type="sigmoid"``) computes the same loss with the same
    pooled gold NLL, but defaults to ``beta = 0.01``, ``tpo_alpha = 1.0``; the official trainer's bare defaults
    are 1.0 / 1.0.
    """

    convention = ("official launcher's defaults (beta 0.1, alpha 0.5); TRL's TPOConfig: beta 0.01, tpo_alpha 1.0;"
                  " gold NLL pooled over the batch's tokens, as both codes")

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__(beta, alpha, label_smoothing)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        l_w, l_l = as_float(s.chosen, s.rejected)
        return smoothed_logistic(self.beta * (l_w - l_l), self.label_smoothing), self.beta * l_w, self.beta * l_l


@register("tpo_l")
class TPOL(_Triple):
    """TPO-L: TPO with length-normalised likelihoods and a target margin (SimPO's preference term).

    ``L = -(1 - eps) log s(b (m_w - m_l) - gamma) - eps log s(-(b (m_w - m_l) - gamma)) + alpha * NLL(y_gold)``,
    ``m = l / |y|``; logged rewards ``b * m``.

    The length-normalised variant of the later versions of Saeidi et al. (arXiv 2405.16681), as TRL implements
    it (``trl/experimental/tpo``, ``loss_type="tpo-l"``, ``tpo_l_gamma``): at ``alpha = 0`` it is ``simpo``.

    Defaults: ``gamma = 0.5`` (TRL's ``tpo_l_gamma``), ``alpha = 0.5`` (as TPO's launcher), ``beta = 2.0`` (the
    scale a per-token margin needs, SimPO's default here). TRL keeps one ``beta`` for every loss type, 0.01, at
    which ``b (m_w - m_l)`` is negligible beside gamma; give ``beta = 0.01, alpha = 1.0`` to reproduce it.
    """

    convention = ("loss as TRL's loss_type='tpo-l'; defaults beta 2.0 (TRL 0.01), gamma 0.5 (TRL's), alpha 0.5"
                  " (TRL 1.0)")

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, alpha: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__(beta, alpha, label_smoothing)
        if gamma < 0:
            raise ValueError(f"gamma (the target margin) must be >= 0, got {gamma}")
        self.gamma = gamma

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        z = self.beta * (m_w - m_l) - self.gamma
        return smoothed_logistic(z, self.label_smoothing), self.beta * m_w, self.beta * m_l


__all__ = ["TPO", "TPOL", "gold_nll"]
