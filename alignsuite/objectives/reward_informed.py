"""Pairwise objectives that read a reward per answer from the data: MaPPO and Reward-aware PO.

The rewards come in the batch columns ``reward_chosen`` and ``reward_rejected`` (the names SmPO reads; a layout
gives them from per-answer reward columns, e.g. ``ImagePairs``' ``reward_0``/``reward_1``). ``dr`` is their gap,
``r*(y_w) - r*(y_l)``; notation otherwise as in `alignsuite.objectives.pairwise`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, as_float, register
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores

REWARD_COLUMNS = ("reward_chosen", "reward_rejected")


def reward_gap(s: PairScores, name: str) -> Tensor:
    """``r*(y_w) - r*(y_l)`` from the batch's reward columns, in float32."""
    missing = [c for c in REWARD_COLUMNS if c not in s.extra]
    if missing:
        raise ValueError(f"objective {name!r} needs the reward column(s) {', '.join(missing)} in scores.extra")
    r_w, r_l = as_float(s.extra["reward_chosen"], s.extra["reward_rejected"])
    return (r_w - r_l).to(s.chosen.device)


@register("mappo")
class MaPPO(PairwiseObjective):
    """Maximum a Posteriori Preference Optimization: DPO whose rejected side is weighted by a prior reward gap.

    ``L = -log s(b u_w - dr * b u_l)`` with ``dr = r*(y_w) - r*(y_l)``, the rewards normalised to [0, 1] (a reward
    model's scores): at ``dr = 1`` it is DPO; when both answers are about as good (``dr`` near 0) the rejected
    answer is barely pushed down. No hyper-parameter beyond DPO's.

    Lan et al. 2025, "MaPPO: Maximum a Posteriori Preference Optimization with Prior Knowledge", arXiv 2507.21183.
    Checked against the paper's text (v5): the loss is its equation (8), ``-log s(b log pi/pi_ref(y_w) - dr b log
    pi/pi_ref(y_l))``, with ``dr = r_w - r_l`` from prior rewards in [0, 1] (a reward model's score through a
    logistic function, appendix D.2.4), DPO again at ``r_w = 1, r_l = 0`` (equation (9)); its default beta is DPO's
    0.1 (Table 4). No official code was read. The rewards are used as given (no clamping): the paper takes
    ``y_w`` as the higher-reward answer so that ``dr`` is in [0, 1]; a negative gap, where the reward model
    disagrees with the label, pulls the rejected answer up. The paper's plug-ins for SimPO, IPO and CPO (appendix
    B.2, the same ``dr`` on the rejected term) are not built here.
    """

    family = "pairwise"
    paper = "Lan et al. 2025, arXiv 2507.21183"
    convention = "the paper's equation (8) (v5, checked); rewards used as given, not clamped to a gap in [0, 1]"
    extra_columns = REWARD_COLUMNS

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        dr = reward_gap(s, self.name)
        return -F.logsigmoid(self.beta * u_w - dr * self.beta * u_l), self.beta * u_w, self.beta * u_l


Distance = Literal["sq", "bwd_kl", "fwd_kl"]


@register("reward_aware_po")
class RewardAwarePO(PairwiseObjective):
    """Reward-aware Preference Optimization: match the implicit reward margin to the given reward gap.

    With ``z = b D`` (``D`` from summed log-ratios, or per-token means with ``average_log_probs``) and
    ``g = gt_reward_scale * dr``, ``distance`` picks:

        sq:      (z - g)^2
        bwd_kl:  KL(Bern(s(g)) || Bern(s(z))) = sum_{c=+1,-1} s(c g) [log s(c g) - log s(c z)]
        fwd_kl:  KL(Bern(s(z)) || Bern(s(g))) = sum_{c=+1,-1} s(c z) [log s(c z) - log s(c g)]

    Sun et al. 2025, "Reward-aware Preference Optimization: A Unified Mathematical Framework for Model
    Alignment", arXiv 2502.00203 (NVIDIA's "RPO"; not the RPO of ``sft_weight``). Follows the official code,
    NeMo-Aligner ``megatron_gpt_dpo_model.py`` (``loss_func``, ``preference_loss`` ``rpo_sq``/``rpo_bwd_kl``/
    ``rpo_fwd_kl``), and its defaults: ``beta`` (``ref_policy_kl_penalty``) 0.2, ``gt_reward_scale`` 1, summed
    log-probs. Each loss is smallest where the margin equals the reward gap, so, unlike DPO, it lowers a margin
    that has overshot. The paper's form over more than two responses needs list scores and is not here.
    Logged rewards are ``b u`` (summed, or per token with ``average_log_probs``).
    """

    family = "pairwise"
    paper = "Sun et al. 2025, arXiv 2502.00203"
    convention = "official code (NeMo-Aligner rpo_sq / rpo_bwd_kl / rpo_fwd_kl) and its defaults, beta 0.2"
    extra_columns = REWARD_COLUMNS

    def __init__(self, beta: float = 0.2, distance: Distance = "sq", gt_reward_scale: float = 1.0,
                 average_log_probs: bool = False, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if distance not in get_args(Distance):
            raise ValueError(f"distance must be one of {', '.join(map(repr, get_args(Distance)))}, got {distance!r}")
        if gt_reward_scale <= 0:
            raise ValueError(f"gt_reward_scale must be > 0, got {gt_reward_scale}")
        self.distance = distance
        self.gt_reward_scale = gt_reward_scale
        self.average_log_probs = average_log_probs

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        if self.average_log_probs:
            len_w, len_l = as_float(s.chosen_len.clamp(min=1), s.rejected_len.clamp(min=1))
            u_w, u_l = u_w / len_w, u_l / len_l
        z, g = self.beta * (u_w - u_l), self.gt_reward_scale * reward_gap(s, self.name)
        if self.distance == "sq":
            losses = (z - g) ** 2
        elif self.distance == "bwd_kl":
            losses = sum(F.logsigmoid(c * g).exp() * (F.logsigmoid(c * g) - F.logsigmoid(c * z)) for c in (1, -1))
        else:
            losses = sum(F.logsigmoid(c * z).exp() * (F.logsigmoid(c * z) - F.logsigmoid(c * g)) for c in (1, -1))
        return losses, self.beta * u_w, self.beta * u_l


__all__ = ["MaPPO", "REWARD_COLUMNS", "RewardAwarePO", "reward_gap"]
