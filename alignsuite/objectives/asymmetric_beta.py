"""DPO with one ``beta`` per side: Flex-DPO, the "3D-properties" regulariser of Yan et al.

Notation as in :mod:`alignsuite.objectives.pairwise`: ``u_w = log pi(y_w) - log pi_ref(y_w)`` for the chosen
answer, ``u_l`` likewise for the rejected one, ``s`` the logistic sigmoid.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, register
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores


@register("flex_dpo")
class FlexDPO(PairwiseObjective):
    """Flex-DPO: DPO whose rejected log-ratio has its own, smaller ``beta``, so the rejected answer's
    likelihood falls more slowly; with ``sft_weight`` it is the paper's second remedy too (DPO plus an SFT
    term on the chosen answers).

    With ``b+`` = ``beta`` and ``b-`` = ``beta_rejected``:

        L = -log s(b+ u_w - b- u_l)   (+ sft_weight * NLL(y_w) / |y_w|)

    ``dL/du_w = -b+ s(-z)`` and ``dL/du_l = b- s(-z)`` for the logit ``z``: the push on the rejected answer is
    ``b-/b+`` times the pull on the chosen one, where DPO pushes both alike. Logged rewards are the implicit
    reward ``b+ u`` of both answers: ``b-`` reweighs the rejected side's gradient and is not a second reward
    scale, and one scale keeps the metrics symmetric (a tie has margin 0, swapping the pair mirrors them).
    At ``beta_rejected = beta`` this is ``dpo`` exactly (loss, gradient and metrics; tested).

    Yan et al. 2024, "3D-Properties: Identifying Challenges in DPO and Charting a Path Forward" (ICLR 2025,
    arXiv 2406.07327). The paper traces DPO's drastic drop of the rejected likelihood to the rejected side's
    gradient outgrowing the chosen side's, and proposes two regularisers: Flex-DPO, which lowers ``beta`` for
    the rejected answers (its experiment fixes ``beta+`` and sweeps ``beta-`` downward), and an SFT term added
    to DPO. The paper's own equation could not be read here: the form above (one ``beta`` per log-ratio in
    DPO's logit) follows the paper's public ICLR 2025 reviews (openreview.net/forum?id=9Hxdixed7p), which name
    the two parameters ``beta+`` and ``beta-``, describe the method as adjusting ``beta`` for the rejected
    responses independently and report the best ``beta-`` about 0.02 below ``beta+``; that is the default
    here (``beta`` 0.1, ``beta_rejected`` 0.08). The reviews also say the ``beta-`` of the experiments is a
    fixed value per run, although the paper calls it adaptive: no schedule is offered. The SFT term is the
    suite's ``sft_weight`` (per-sequence mean NLL of the chosen answers); the paper's weighting and
    normalisation of it were not read.
    """

    family = "pairwise"
    paper = "Yan et al. 2024, arXiv 2406.07327"
    convention = ("one beta per log-ratio in DPO's logit, from the paper's public reviews (its equation not read);"
                  " fixed beta_rejected, no schedule; rewards logged as beta * u on both sides; SFT term is the"
                  " suite's sft_weight")

    def __init__(self, beta: float = 0.1, beta_rejected: float = 0.08, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        number = isinstance(beta_rejected, (int, float)) and not isinstance(beta_rejected, bool)
        if not (number and math.isfinite(beta_rejected) and beta_rejected > 0):
            raise ValueError(f"flex_dpo: beta_rejected (the rejected log-ratio's beta) must be a finite number > 0,"
                             f" got {beta_rejected!r}")
        self.beta_rejected = float(beta_rejected)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        # z = b+ (u_w - (b-/b+) u_l), written as DPO writes its logit so that equal betas give DPO's bits exactly
        logit = self.beta * (u_w - (self.beta_rejected / self.beta) * u_l)
        return -F.logsigmoid(logit), self.beta * u_w, self.beta * u_l


__all__ = ["FlexDPO"]
