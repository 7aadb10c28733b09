"""Pairwise objectives whose target comes from a number per row: an empirical preference, or a reward per side.

The numbers are batch columns (``extra_columns``), which a text layout carries with
``TextPairs(number_fields={...})``: ``preference`` (the probability that the chosen answer is preferred, e.g. the
share of annotators who preferred it) for ``irepo``; ``reward_chosen``/``reward_rejected`` (the names SmPO reads)
for ``nca_pair_reward``. Notation as in :mod:`alignsuite.objectives.pairwise`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, register
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores


def _column(s: PairScores, name: str, objective: str) -> Tensor:
    if name not in s.extra:
        raise ValueError(
            f"{objective} needs the batch column {name!r} in scores.extra; give the data that column (TextPairs"
            f" number_fields: {{{name}: <field>}})"
        )
    return s.extra[name].detach().float()


@register("irepo")
class IREPO(PairwiseObjective):
    """iREPO, offline form: regress the implicit reward margin on the logit of an empirical preference.

    With ``p`` the row's ``preference`` (the empirical probability that ``y_w`` beats ``y_l``), clipped to
    ``[clip, 1 - clip]``: ``L = (b D - log(p / (1 - p)))**2``; logged rewards ``b * u``.

    Le, Shu, Nguyen, Hong and Tran 2024, "iREPO: implicit Reward Pairwise Difference based Empirical Preference
    Optimization" (arXiv 2405.15230). The paper iterates (generate, annotate, fit); this is one fit on given data.
    The equation is the paper's as recorded in the project's research notes (no official code was found to
    check it against). ``p`` of 0 or 1 (every annotator agreed) has an infinite logit: it is clipped, by
    ``clip`` (default 1e-3, a target of at most ``log 999 = 6.9``). With ``p = s(1/2)`` the target is 1/2 and
    the loss is ``b**2`` times summed-log-prob IPO's ``(D - 1/(2b))**2``.
    """

    family = "pairwise"
    paper = "Le et al. 2024, arXiv 2405.15230"
    convention = "offline form (one fit on given soft labels); p clipped to [clip, 1 - clip]"
    extra_columns = ("preference",)

    def __init__(self, beta: float = 0.1, clip: float = 1e-3) -> None:
        super().__init__(beta=beta)
        if not 0 < clip < 0.5:
            raise ValueError(f"clip must be in (0, 0.5), got {clip}")
        self.clip = clip

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        p = _column(s, "preference", "irepo")
        bad = ((p < 0) | (p > 1) | ~torch.isfinite(p)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"irepo: the preference column must hold probabilities in [0, 1]; batch position(s) {bad}"
                             f" hold {p[bad].tolist()}")
        u_w, u_l = float_log_ratios(s)
        p = p.double().clamp(self.clip, 1 - self.clip)  # in float32, 1 - p near 1 keeps only a few digits
        target = (torch.log(p) - torch.log1p(-p)).to(u_w.dtype)
        return (self.beta * (u_w - u_l) - target) ** 2, self.beta * u_w, self.beta * u_l


@register("nca_pair_reward")
class NCAPairReward(PairwiseObjective):
    """Noise Contrastive Alignment with explicit rewards, on pairs (the K = 2 case of NCA's reward form).

    With ``r = b u`` and the soft label ``p = softmax([r*_w, r*_l] / temperature_alpha)`` from the rewards
    ``r*`` of each side (columns ``reward_chosen``/``reward_rejected``):

        L = -1/2 [log s(-r_w) + log s(-r_l)] - p_w log s(r_w) - p_l log s(r_l)

    logged rewards ``b * u``. ``nca_pair`` is the case of a hard label (``p_w = 1``): its
    ``-log s(r_w) - 1/2 log s(-r_w) - 1/2 log s(-r_l)``.

    Chen, Lu, Zhang, Zhu and Zhu 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"
    (arXiv 2402.05369). Follows the official code (thu-ml/Noise-Contrastive-Alignment ``reward_trainer.py``,
    ``NCATrainer.nca_loss``, ``loss_type="NCA"``, there with K = 4): ``temperature_alpha`` divides the rewards
    (the code's, the inverse of the paper's alpha) and defaults to the trainer's 1e-3, at which rewards that
    differ by more than ~0.02 give a one-hot label (the recipe's 1e-4 even more so); raise it to the rewards'
    scale for soft labels. The code adds 0.01 to the best answer's reward (so that a tie still ranks it first);
    ``chosen_bonus`` (default 0, the paper's equation) does the same here.
    """

    family = "pairwise"
    paper = "Chen et al. 2024, arXiv 2402.05369"
    convention = "official code's temperature_alpha (divides the rewards); its +0.01 on the best answer is off by default"
    extra_columns = ("reward_chosen", "reward_rejected")

    def __init__(self, beta: float = 0.1, temperature_alpha: float = 1e-3, chosen_bonus: float = 0.0) -> None:
        super().__init__(beta=beta)
        if temperature_alpha <= 0 or not math.isfinite(temperature_alpha):
            raise ValueError(f"temperature_alpha must be > 0, got {temperature_alpha}")
        self.temperature_alpha = temperature_alpha
        self.chosen_bonus = chosen_bonus

    def soft_label(self, s: PairScores) -> Tensor:
        """``[B, 2]``: each row's ``(p_w, p_l)``."""
        rewards = torch.stack([_column(s, "reward_chosen", "nca_pair_reward") + self.chosen_bonus,
                               _column(s, "reward_rejected", "nca_pair_reward")], dim=-1)
        return (rewards / self.temperature_alpha).softmax(dim=-1)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        r_w, r_l = self.beta * u_w, self.beta * u_l
        p = self.soft_label(s).to(r_w.dtype)
        noise = -0.5 * (F.logsigmoid(-r_w) + F.logsigmoid(-r_l))
        return noise - p[:, 0] * F.logsigmoid(r_w) - p[:, 1] * F.logsigmoid(r_l), r_w, r_l


__all__ = ["IREPO", "NCAPairReward"]
