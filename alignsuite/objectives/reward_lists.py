"""List objectives that read the labels as rewards: their values matter, not only their order.

Notation as in :mod:`alignsuite.objectives.listwise`: ``u_k`` the log-ratio of response k, ``r_k = beta * u_k``
its implicit reward, ``r*_k`` its label (a reward-model score or a rating). Padded entries take no part: they
are left out of every softmax, sum and mean, and a list's size ``n`` counts only the responses that exist.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, Reducer, register
from alignsuite.objectives.listwise import MASKED, ListObjective, clean_labels, label_order, list_metrics, log_ratios
from alignsuite.scores import ListScores


def masked_log_softmax(values: Tensor, mask: Tensor) -> Tensor:
    """``log softmax`` over the entries that exist; padded entries come out as 0 (they must be masked again)."""
    return torch.where(mask, torch.log_softmax(torch.where(mask, values, MASKED), dim=1), 0.0)


def reward_targets(labels: Tensor, mask: Tensor, temperature: float, best_bonus: float = 0.0) -> Tensor:
    """``softmax_k((r*_k + bonus_k) / temperature)`` over the responses that exist, where ``bonus`` is
    ``best_bonus`` on the best response by label (the first of equal best labels, in data order) and 0 elsewhere."""
    if best_bonus:
        best = label_order(labels, mask)[:, :1]
        labels = labels.scatter_add(1, best, torch.full_like(best, best_bonus, dtype=labels.dtype))
    return masked_log_softmax(labels / temperature, mask).exp() * mask


@register("pro")
class PRO(ListObjective):
    """Preference Ranking Optimisation: a softmax over each prefix of the reward ranking, reference-free.

    Responses sorted best first by reward ``r*_1 >= ... >= r*_n``, ``s_k = l(y_k) / |y_k|`` (per-token mean
    log-probability), temperatures ``T_kj = r*_k - r*_j`` and ``T_k+ = max_{j>k} T_kj``:

        L_k = log( 1e-10 + exp(s_k T_k+) + sum_{j>k} exp(s_j T_kj) ) - s_k T_k+
        L   = sum_{k=1..n-1} L_k  +  sft_weight * (n - 1)^2 * ( -l(y_1) )

    Song et al. 2023, "Preference Ranking Optimization for Human Alignment" (AAAI 2024). Follows the official
    code (AlibabaResearch/DAMO-ConvAI, ``PRO/train/utils/process_manager.py``, ``compute_loss``): the SFT term
    uses the *summed* log-probability of the best response and the factor ``(n - 1)^2``, while the ranking terms
    use per-token means; default ``sft_weight`` 0.05 (its launchers; its argparse default is 2).

    Differences from that code: (1) the rows are sorted by label here, where the code trusts the data to list
    them best first; equal rewards keep their data order and give ``T = 0`` terms, as in the code; (2) a padded
    entry takes no part and ``n`` is each list's own size (the code scores a fixed n, and its eos padding
    lets a row's own end token be scored only where another row is longer); with every list full, the sum
    over k of batch means equals the batch mean of the sums taken here. The loss scales with the rewards' scale.
    """

    needs_reference = False
    paper = "Song et al. 2023, arXiv 2306.17492"
    convention = (
        "official code's (n-1)^2 and summed log-prob SFT term; rows sorted by label rather than trusting data order"
    )

    def __init__(self, list_size: int = 4, sft_weight: float = 0.05) -> None:
        if sft_weight < 0:
            raise ValueError(f"pro: sft_weight must be >= 0, got {sft_weight}")
        self._set_list_size(list_size)
        self.sft_weight = sft_weight

    def ranking_losses(self, s: ListScores) -> tuple[Tensor, Tensor, Tensor]:
        """``(ranking losses [B], summed log-prob of each list's best response [B], mean log-probs [B, K])``."""
        means = s.scores.float() / s.lengths.float().clamp(min=1)
        order = label_order(s.labels, s.mask)
        m, r, present = means.gather(1, order), clean_labels(s).gather(1, order), s.mask.gather(1, order)
        k = torch.arange(m.shape[1], device=m.device)
        later = (k[None, :, None] < k[None, None, :]) & present[:, :, None] & present[:, None, :]  # j after k
        temps = r[:, :, None] - r[:, None, :]  # T_kj >= 0: sorted best first
        top = torch.where(later, temps, -math.inf).amax(dim=2)  # T_k+; -inf where no j follows k
        has_later = later.any(dim=2)
        top = torch.where(has_later, top, 0.0)
        positive = m * top  # s_k T_k+
        negatives = torch.where(later, m[:, None, :] * temps, MASKED)  # s_j T_kj
        floor = torch.full_like(positive, math.log(1e-10))
        terms = torch.cat([floor[..., None], positive[..., None], negatives], dim=2)
        per_k = torch.logsumexp(terms, dim=2) - positive
        best = s.scores.float().gather(1, order[:, :1]).squeeze(1)
        return torch.where(has_later, per_k, 0.0).sum(dim=1), best, means

    def __call__(self, scores: ListScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        ranking, best, means = self.ranking_losses(scores)
        loss = ranking.mean()
        metrics = list_metrics(means, scores.labels, scores.mask)
        if self.sft_weight > 0:
            n = scores.mask.sum(dim=1).float()
            sft = ((n - 1) ** 2 * -best).mean()
            metrics["loss/preference"], metrics["loss/sft"] = loss.detach(), sft.detach()
            loss = loss + self.sft_weight * sft
        return ObjectiveOutput(loss, metrics)


class RewardSoftmax(ListObjective):
    """What InfoNCA and NCA share: the target ``p = softmax(r* / temperature_alpha)`` over a list's responses."""

    def __init__(self, beta: float = 0.1, list_size: int = 4, temperature_alpha: float = 1e-3,
                 best_bonus: float = 0.0) -> None:
        super().__init__(beta=beta, list_size=list_size)
        if temperature_alpha <= 0:
            raise ValueError(f"{self.name}: temperature_alpha must be > 0, got {temperature_alpha}")
        if best_bonus < 0:
            raise ValueError(f"{self.name}: best_bonus must be >= 0, got {best_bonus}")
        self.temperature_alpha = temperature_alpha
        self.best_bonus = best_bonus

    def targets(self, s: ListScores) -> Tensor:
        return reward_targets(clean_labels(s), s.mask, self.temperature_alpha, self.best_bonus)


@register("infonca")
class InfoNCA(RewardSoftmax):
    """InfoNCA: cross-entropy from the rewards' softmax to the implicit rewards' softmax over K responses.

        p_k = softmax_k(r*_k / temperature_alpha),   L = - sum_k p_k log softmax_k(r_k),   r = beta * u

    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards", following the
    official code (thu-ml/Noise-Contrastive-Alignment, ``reward_trainer.py``), whose ``temperature_alpha``
    divides the rewards (the paper's alpha is its inverse). Defaults are the trainer's (beta 0.1,
    temperature_alpha 1e-3); the UltraFeedback recipe uses beta 0.01 and 1e-4, where ``p`` is one-hot on the
    best response. The code adds 0.01 to the first (best) response's reward so that a tie for best still gives
    it the most weight: ``best_bonus=0.01`` does that here, on the best response by label (off by default).
    Equal labels otherwise share weight. At K = 2 with a one-hot ``p`` it is DPO.
    """

    paper = "Chen et al. 2024, arXiv 2402.05369"
    convention = "official code's temperature_alpha (divides the rewards); its +0.01 on the best is best_bonus=0.01"

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards = self.beta * log_ratios(s)
        return -(self.targets(s) * masked_log_softmax(rewards, s.mask)).sum(dim=1), rewards


@register("nca")
class NCA(RewardSoftmax):
    """NCA with explicit rewards over K responses: each implicit reward judged on its own, not only relatively.

        p_k = softmax_k(r*_k / temperature_alpha),   L = - (1/n) sum_k log s(-r_k) - sum_k p_k log s(r_k)

    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards", as the official
    code's ``NCATrainer.nca_loss`` (thu-ml/Noise-Contrastive-Alignment, ``reward_trainer.py``): the first term
    averaged over the list, the second summed; ``n`` is the list's own size. The first term lowers every
    response's reward; the second keeps the high-``p`` ones up. Options as ``infonca``. At K = 2 with a one-hot
    ``p`` it is ``nca_pair``.
    """

    paper = "Chen et al. 2024, arXiv 2402.05369"
    convention = "official code's temperature_alpha (divides the rewards); its +0.01 on the best is best_bonus=0.01"

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards = self.beta * log_ratios(s)
        present = torch.where(s.mask, rewards, 0.0)
        noise = torch.where(s.mask, F.logsigmoid(-present), 0.0).sum(dim=1) / s.mask.sum(dim=1)
        data = (self.targets(s) * torch.where(s.mask, F.logsigmoid(present), 0.0)).sum(dim=1)
        return -noise - data, rewards


@register("exo")
class EXO(ListObjective):
    """Efficient Exact Optimization over K responses: the reverse KL from the model's distribution over the list
    to the rewards' distribution.

        L = KL( softmax_k(beta * u_k) || softmax_k(r*_k / beta_r) )

    Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment" (ICML 2024), the loss
    for K samples with rewards, as the official code computes it (haozheji/exact-optimization,
    ``src/align_stage/loss.py``, ``exact_loss`` with ``loss_type="exo-rw"``): its ``beta_pi`` is ``beta`` here and
    ``beta_r`` the reward temperature. Default ``beta_r`` 0.5, the code's HH-RLHF launcher's
    (``exp/hh_exp/train_exo.sh``, which also sets ``beta_pi`` 0.5; ``beta`` stays 0.1 here, as for ``exo_pair``).
    The pairwise ``exo_pair`` is the K = 2 case with the target ``(1 - eps, eps)``: labels ``[log(1 - eps),
    log eps]`` with ``beta_r = 1`` give it exactly. (The code's own preference form, ``exo-pref``, takes the
    unnormalised log-target ``[0, -10]`` instead.)
    """

    paper = "Ji et al. 2024, arXiv 2402.00856"
    convention = "official code's exo-rw form: KL(softmax(beta u) || softmax(r*/beta_r)); default beta_r 0.5 (its HH launcher)"

    def __init__(self, beta: float = 0.1, list_size: int = 4, beta_r: float = 0.5) -> None:
        super().__init__(beta=beta, list_size=list_size)
        if beta_r <= 0:
            raise ValueError(f"exo: beta_r must be > 0, got {beta_r}")
        self.beta_r = beta_r

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards = self.beta * log_ratios(s)
        log_p = masked_log_softmax(rewards, s.mask)
        log_q = masked_log_softmax(clean_labels(s) / self.beta_r, s.mask)
        return (log_p.exp() * (log_p - log_q) * s.mask).sum(dim=1), rewards


__all__ = ["EXO", "InfoNCA", "NCA", "PRO", "RewardSoftmax", "masked_log_softmax", "reward_targets"]
