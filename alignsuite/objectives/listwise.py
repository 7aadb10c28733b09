"""Listwise objectives: K graded responses per prompt (:class:`~alignsuite.scores.ListScores`).

Notation (as ``research/families.md`` §0.1): ``u_k = log pi(y_k) - log pi_ref(y_k)``, ``s_k = beta * u_k``,
labels ``psi_k`` higher better, and a mask of the responses that exist (padded entries take no part).
A list objective scores the K views ``response_0 .. response_{K-1}`` of the data's ``responses`` column in one
stacked forward, and reads the grades from the ``labels`` column.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import Objective, ObjectiveOutput, Reducer, register
from alignsuite.scores import ListScores, SequenceScores
from alignsuite.views import View

# A padded entry's score before a softmax or logsumexp: exp() of it is exactly 0 in float32.
MASKED = -1e9


def response_views(list_size: int) -> tuple[View, ...]:
    """The K views of a list row: ``response_k`` is item k of the ``responses`` column."""
    return tuple(View(f"response_{k}", column="responses", item=k) for k in range(list_size))


class ListObjective(Objective):
    """An objective over K responses per prompt.

    Subclasses implement :meth:`list_losses` (per-list losses ``[B]`` and the implicit rewards ``[B, K]``).
    ``list_size`` is K, the number of responses each row of the data holds (lists shorter than K are padded by
    the layout and masked). The metrics compare the best and the worst existing response of each list under
    the labels, so that they read as the pairwise ``rewards/*`` do; ``rewards/accuracies`` is the fraction of
    label-ordered pairs (ties in the label excluded) that the implicit reward orders the same way.

    ``sft_weight`` adds the best existing response's per-token NLL by label (:func:`best_nll`, the list form of
    the pairwise ``sft_weight``: RPO's ``alpha * NLL(y_w) / |y_w|``, per sequence), logged as ``loss/sft`` beside
    ``loss/preference``; off (0) by default. Subclasses that take no ``sft_weight`` never add it.
    """

    family = "listwise"
    row_kind = "lists"
    extra_columns = ("labels",)
    sft_weight: float = 0.0

    def __init__(self, beta: float = 0.1, list_size: int = 4, sft_weight: float = 0.0) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
        self.beta = beta
        self.sft_weight = sft_weight
        self._set_list_size(list_size)

    def _set_list_size(self, list_size: int) -> None:
        # Apart from __init__ so that an objective without a KL weight (PRO) need not take a beta.
        if list_size < 2:
            raise ValueError(f"list_size must be at least 2, got {list_size}")
        self.list_size = list_size
        self.views = response_views(list_size)

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        """``(losses [B], rewards [B, K])``."""
        raise NotImplementedError

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> ListScores:
        names = [v.name for v in self.views]
        scores = torch.stack([policy[n].score for n in names], dim=1)
        lengths = torch.stack([policy[n].length for n in names], dim=1)
        reference = torch.stack([ref[n] for n in names], dim=1) if ref.get(names[0]) is not None else None
        labels = torch.as_tensor(batch["labels"], dtype=torch.float, device=scores.device)
        mask = batch.get("mask")
        mask = torch.as_tensor(mask, device=scores.device).bool() if mask is not None else torch.isfinite(labels)
        extra = self._extra(policy, ref, batch, (*names, "labels"))
        return ListScores(scores, labels, reference, lengths, mask, extra)

    def __call__(self, scores: ListScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        losses, rewards = self.list_losses(scores)
        loss = losses.mean()
        metrics = list_metrics(rewards, scores.labels, scores.mask)
        if self.sft_weight > 0:
            nll = best_nll(scores)
            metrics["loss/preference"], metrics["loss/sft"] = loss.detach(), nll.detach()
            loss = loss + self.sft_weight * nll
        return ObjectiveOutput(loss, metrics)


def best_nll(s: ListScores) -> Tensor:
    """``mean_i(-l_i / n_i)`` over each list's best existing response by label (the first in data order among
    equal labels): the pairwise ``chosen_nll`` per sequence, with the list's best in place of the winner."""
    best = label_order(s.labels, s.mask)[:, :1]
    logps = s.scores.float().gather(1, best).squeeze(1)
    return (-logps / s.lengths.gather(1, best).squeeze(1).float().clamp(min=1)).mean()


def log_ratios(s: ListScores) -> Tensor:
    """``u [B, K]`` in float32 (cast before subtracting: two large bf16 log-probs lose the difference)."""
    return s.scores.float() - s.ref.float()


def list_metrics(rewards: Tensor, labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``rewards/chosen``/``rejected``: the mean implicit reward of each list's best and worst existing response
    by label; ``rewards/margins`` their difference; ``rewards/accuracies`` the fraction of pairs with different
    labels that the rewards order as the labels do (a tie in the reward counts one half)."""
    rewards, labels = rewards.detach().float(), labels.float()
    low, high = torch.finfo(labels.dtype).min, torch.finfo(labels.dtype).max
    best = torch.where(mask, labels, low).argmax(dim=1, keepdim=True)
    worst = torch.where(mask, labels, high).argmin(dim=1, keepdim=True)
    chosen, rejected = rewards.gather(1, best).squeeze(1), rewards.gather(1, worst).squeeze(1)
    ordered = (labels[:, :, None] > labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    gap = rewards[:, :, None] - rewards[:, None, :]
    won = (gap > 0).float() + 0.5 * (gap == 0).float()
    accuracy = (won * ordered).sum() / ordered.sum().clamp(min=1)
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": accuracy,
    }


def label_order(labels: Tensor, mask: Tensor) -> Tensor:
    """Indices ``[B, K]`` that sort each list best first by label, padded entries last (a stable sort, so equal
    labels keep their data order)."""
    key = torch.where(mask, labels.float(), torch.finfo(torch.float32).min)
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def clean_labels(s: ListScores) -> Tensor:
    """The labels in float32 with padded entries set to 0 (a padded label may be NaN, which would poison every sum
    and softmax it enters even under a mask)."""
    return torch.where(s.mask, s.labels.float(), 0.0)


def ordered_pairs(labels: Tensor, mask: Tensor) -> Tensor:
    """``[B, K, K]``, True at ``(i, j)`` where both responses exist and ``psi_i > psi_j`` (equal labels make no pair)."""
    labels = torch.where(mask, labels.float(), 0.0)
    return (labels[:, :, None] > labels[:, None, :]) & mask[:, :, None] & mask[:, None, :]


def plackett_luce(rewards: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Per-list ``- sum_k [ s_tau(k) - log sum_{j >= k} exp(s_tau(j)) ]`` over the label order ``tau``."""
    order = label_order(labels, mask)
    ranked, present = rewards.gather(1, order), mask.gather(1, order)
    masked = torch.where(present, ranked, MASKED)
    # log sum_{j >= k} exp(s_j): a log-cumsum-exp from the end of the list.
    tails = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
    return -(torch.where(present, ranked - tails, 0.0)).sum(dim=1)


@register("list_mle")
class ListMLE(ListObjective):
    """DPO under the Plackett-Luce model (DPO-PL, LiPO's list-MLE) over the label order ``tau`` (best first):

        L = - sum_{k=1..K} [ s_tau(k) - log sum_{j=k..K} exp(s_tau(j)) ],   s = beta * u

    Rafailov et al. 2023, "Direct Preference Optimization", appendix A.3 (the Plackett-Luce model); at K = 2 it
    is DPO exactly. Padded entries are left out of every sum. Plackett-Luce has no ties: equal labels are
    ordered as the data lists them.
    """

    paper = "Rafailov et al. 2023, arXiv 2305.18290 (appendix A.3); LiPO's list-MLE, arXiv 2402.01878"
    convention = "ties in the label kept in data order (Plackett-Luce has no ties)"

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards = self.beta * log_ratios(s)
        return plackett_luce(rewards, s.labels, s.mask), rewards


LiPOLoss = Literal["lambda", "pair_logistic", "pair_hinge", "list_mle", "softmax"]
Discount = Literal["log2", "ln"]


def model_ranks(rewards: Tensor, mask: Tensor) -> Tensor:
    """``[B, K]`` 1-based rank of each response when its list is sorted by ``rewards``, highest first (a stable
    sort: equal rewards keep their data order; padded entries rank last). Detached: a rank has no gradient."""
    key = torch.where(mask, rewards.detach().float(), -math.inf)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    positions = torch.arange(1, key.shape[1] + 1, device=key.device, dtype=torch.float).expand_as(key)
    return torch.empty_like(key).scatter_(1, order, positions)


def lambda_weights(rewards: Tensor, labels: Tensor, mask: Tensor, discount: str) -> Tensor:
    """LiPO-lambda's ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|`` (``[B, K, K]``, no gradient), with
    ``G = 2^psi - 1`` and ``D(tau) = log(1 + tau)`` over the model's current ranks ``tau``."""
    gain = torch.exp2(labels) - 1
    ranks = model_ranks(rewards, mask)
    inverse = 1 / (torch.log2(1 + ranks) if discount == "log2" else torch.log1p(ranks))
    return ((gain[:, :, None] - gain[:, None, :]).abs() * (inverse[:, :, None] - inverse[:, None, :]).abs()).detach()


@register("lipo")
class LiPO(ListObjective):
    """LiPO: listwise preference optimisation as learning to rank, over ``s_i = beta * u_i`` and labels ``psi``.

    Per list, summed over the pairs with ``psi_i > psi_j`` (equal labels make no pair), by ``loss_type``:

    - ``lambda`` (LiPO-lambda, the paper's method): ``sum Delta_ij * -log s(s_i - s_j)`` with the LambdaMART weight
      ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|``, ``G = 2^psi - 1``, ``D(tau) = log(1 + tau)``, where
      ``tau_i`` is the rank of response i under the model's *current* scores ``s`` (1 = highest), not the labels:
      mis-ordered pairs near the top weigh most. The weights are constants (no gradient); ties in ``s`` are
      ranked in data order (a stable sort).
    - ``pair_logistic`` (DPO on every pair): ``sum -log s(s_i - s_j)``; ``pair_hinge`` (SLiC on every pair):
      ``sum max(0, 1 - (s_i - s_j))``; ``list_mle`` (DPO-PL, as ``list_mle``);
    - ``softmax``: ``- sum_i (psi_i / sum_j psi_j) log softmax(s)_i``; the labels must be >= 0.

    Liu, Qin et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank" (NAACL 2025),
    checked against the paper's text: ``s_i = beta log pi(y_i)/pi_ref(y_i)`` (its equation (2): beta scales each
    log-ratio before any loss, so the model's ranks in the lambda weight are those of the log-ratios), losses
    (5)-(8) and (11) summed over a list's pairs with ``psi_i > psi_j``, ``Delta_ij = |G_i - G_j| |1/D(tau_i) -
    1/D(tau_j)|``, ``G = 2^psi - 1``, ``D(tau) = log(1 + tau)``, and beta = 0.05 for every method (section 5).
    ``discount`` picks the logarithm of ``D``: ``log2`` (the default; the RAX library the paper computes its losses
    with, ``rax.dcg_lambdaweight``, discounts by ``1/log2(1 + rank)``) or ``ln``, which multiplies every lambda
    weight by ``1/ln 2`` (a constant rescaling of the loss). At K = 2, lambda is DPO times ``|G_1 - G_2| (1 -
    1/log2 3)``, pair_logistic is DPO and pair_hinge is ``hinge``.
    """

    paper = "Liu, Qin et al. 2024, arXiv 2402.01878"
    convention = (
        "the paper's equations (2), (5)-(8), (11) and beta 0.05 (checked; no official code): lambda weights "
        "|G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|, gain 2^psi - 1, D = log2(1 + rank) by default, summed over a "
        "list's pairs; RAX's dcg_lambdaweight, which the paper calls, also multiplies each weight by the list size"
    )

    def __init__(self, beta: float = 0.05, list_size: int = 4, loss_type: LiPOLoss = "lambda",
                 discount: Discount = "log2") -> None:
        super().__init__(beta=beta, list_size=list_size)
        if loss_type not in get_args(LiPOLoss):
            raise ValueError(f"lipo: loss_type must be one of {get_args(LiPOLoss)}, got {loss_type!r}")
        if discount not in get_args(Discount):
            raise ValueError(f"lipo: discount must be one of {get_args(Discount)}, got {discount!r}")
        self.loss_type = loss_type
        self.discount = discount

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards = self.beta * log_ratios(s)
        if self.loss_type == "list_mle":
            return plackett_luce(rewards, s.labels, s.mask), rewards
        labels = clean_labels(s)
        if self.loss_type == "softmax":
            return softmax_cross_entropy(rewards, labels, s.mask), rewards
        pairs = ordered_pairs(labels, s.mask)
        present = torch.where(s.mask, rewards, 0.0)
        gap = present[:, :, None] - present[:, None, :]
        if self.loss_type == "pair_hinge":
            per_pair = torch.relu(1 - gap)
        else:
            per_pair = -F.logsigmoid(gap)
            if self.loss_type == "lambda":
                per_pair = per_pair * lambda_weights(rewards, labels, s.mask, self.discount)
        return torch.where(pairs, per_pair, 0.0).sum(dim=(1, 2)), rewards


def softmax_cross_entropy(rewards: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """``- sum_i (psi_i / sum_j psi_j) log softmax(s)_i`` over the responses that exist; refuses negative labels."""
    negative = ((labels < 0) & mask).any(dim=1).nonzero().flatten().tolist()
    if negative:
        raise ValueError(
            f"lipo loss_type='softmax' weighs each response by psi_i / sum_j psi_j, so the labels must be >= 0; "
            f"the labels of batch row(s) {negative} hold a negative value. Shift the labels to be >= 0, or choose "
            "another loss_type"
        )
    # A list whose labels are all 0 says nothing: its targets are all 0 and so is its loss.
    target = labels / labels.sum(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    log_p = torch.log_softmax(torch.where(mask, rewards, MASKED), dim=1)
    return -torch.where(mask, target * log_p, 0.0).sum(dim=1)


__all__ = ["LiPO", "ListMLE", "ListObjective", "MASKED", "best_nll", "clean_labels", "label_order", "lambda_weights",
           "list_metrics", "log_ratios", "model_ranks", "ordered_pairs", "plackett_luce", "response_views",
           "softmax_cross_entropy"]
