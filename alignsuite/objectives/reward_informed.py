"""Pairwise objectives that read a reward per answer from the data: MaPPO and Reward-aware PO.

The rewards come in the batch columns ``reward_chosen`` and ``reward_rejected`` (the names SmPO reads; a layout
gives them from per-answer reward columns, e.g. ``ImagePairs``' ``reward_0``/``reward_1``). ``dr`` is their gap,
``r*(y_w) - r*(y_l)``; notation otherwise as in `alignsuite.objectives.pairwise`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, as_float, mean_logps, register
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


MaPPOBase = Literal["dpo", "ipo", "simpo", "cpo"]


@register("mappo")
class MaPPO(PairwiseObjective):
    """Maximum a Posteriori Preference Optimization: a preference loss whose rejected side is weighted by a prior
    reward gap ``dr = r*(y_w) - r*(y_l)``, the rewards in [0, 1] (a reward model's scores).

    ``base`` picks the loss it plugs into (the paper's equations (8), (14), (12), (16)):

    - ``dpo`` (default): ``-log s(b u_w - dr * b u_l)``;
    - ``ipo``: ``(u_w - dr * u_l - 1/(2 b))^2`` (summed log-ratios, as the paper writes IPO);
    - ``simpo`` (no reference): ``-log s(b m_w - dr * b m_l - gamma)``, ``m = l/|y|``;
    - ``cpo`` (no reference): ``-log s(b l_w - dr * b l_l) + cpo_alpha * NLL(y_w)``.

    At ``dr = 1`` each is its base (``dpo``; ``ipo`` without length normalisation; ``simpo``; ``cpo``); when both
    answers are about as good (``dr`` near 0) the rejected answer is barely pushed down. No hyper-parameter beyond
    the base's. Logged rewards are ``b`` times what the loss reads of each side (``u``, ``m`` or ``l``).

    Lan et al. 2025, "MaPPO: Maximum a Posteriori Preference Optimization with Prior Knowledge", arXiv 2507.21183.
    Checked against the paper's text (v5): equation (8) for DPO, ``dr = r_w - r_l`` from prior rewards in [0, 1] (a
    reward model's score through a logistic function, appendix D.2.4), DPO again at ``r_w = 1, r_l = 0`` (equation
    (9)), the plug-ins of appendix B.2, beta 0.1 (Table 4) for all, SimPO's gamma 1 and CPO's lambda 0.2 (Table 5).
    No official code was read. The rewards are used as given (no clamping): the paper takes ``y_w`` as the
    higher-reward answer so that ``dr`` is in [0, 1]; a negative gap, where the reward model disagrees with the
    label, pulls the rejected answer up. CPO's NLL term is the ``cpo`` objective's (TRL's per-token NLL pooled over
    the batch; the paper writes ``lambda log pi(y_w|x)``).
    """

    family = "pairwise"
    paper = "Lan et al. 2025, arXiv 2507.21183"
    convention = ("the paper's equations (8), (12), (14), (16) (v5, checked); rewards used as given, not clamped to a "
                  "gap in [0, 1]; cpo's NLL as the cpo objective's (TRL's, pooled)")
    extra_columns = REWARD_COLUMNS

    def __init__(self, beta: float = 0.1, base: MaPPOBase = "dpo", gamma: float = 1.0, cpo_alpha: float = 0.2,
                 sft_weight: float = 0.0) -> None:
        if base not in get_args(MaPPOBase):
            raise ValueError(f"mappo: base must be one of {', '.join(map(repr, get_args(MaPPOBase)))}, got {base!r}")
        if gamma < 0:
            raise ValueError(f"mappo: gamma (SimPO's target margin, base='simpo') must be >= 0, got {gamma}")
        if cpo_alpha < 0:
            raise ValueError(f"mappo: cpo_alpha (CPO's NLL weight, base='cpo') must be >= 0, got {cpo_alpha}")
        if base == "cpo" and sft_weight > 0:
            raise ValueError("mappo: with base='cpo' the NLL weight is cpo_alpha; leave sft_weight at 0")
        super().__init__(beta=beta, sft_weight=cpo_alpha if base == "cpo" else sft_weight)
        self.base, self.gamma, self.cpo_alpha = base, gamma, cpo_alpha
        self.needs_reference = base in ("dpo", "ipo")
        if base == "cpo":
            self.nll = "completion_pooled"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        dr = reward_gap(s, self.name)
        if self.base in ("dpo", "ipo"):
            x_w, x_l = float_log_ratios(s)
        elif self.base == "simpo":
            x_w, x_l = as_float(*mean_logps(s))
        else:
            x_w, x_l = as_float(s.chosen, s.rejected)
        b = self.beta
        if self.base == "ipo":
            losses = (x_w - dr * x_l - 1 / (2 * b)) ** 2
        else:
            losses = -F.logsigmoid(b * x_w - dr * b * x_l - (self.gamma if self.base == "simpo" else 0.0))
        return losses, b * x_w, b * x_l


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
