"""Listwise objectives: K graded responses per prompt (:class:`~alignsuite.scores.ListScores`).

Notation (as ``research/families.md`` §0.1): ``u_k = log pi(y_k) - log pi_ref(y_k)``, ``s_k = beta * u_k``,
labels ``psi_k`` higher better, and a mask of the responses that exist (padded entries take no part).
A list objective scores the K views ``response_0 .. response_{K-1}`` of the data's ``responses`` column in one
stacked forward, and reads the grades from the ``labels`` column.
"""

from __future__ import annotations

import torch
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
    """

    family = "listwise"
    row_kind = "lists"
    extra_columns = ("labels",)

    def __init__(self, beta: float = 0.1, list_size: int = 4) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if list_size < 2:
            raise ValueError(f"list_size must be at least 2, got {list_size}")
        self.beta = beta
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
        return ObjectiveOutput(losses.mean(), list_metrics(rewards, scores.labels, scores.mask))


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
        order = label_order(s.labels, s.mask)
        ranked, present = rewards.gather(1, order), s.mask.gather(1, order)
        masked = torch.where(present, ranked, MASKED)
        # log sum_{j >= k} exp(s_j): a log-cumsum-exp from the end of the list.
        tails = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
        losses = -(torch.where(present, ranked - tails, 0.0)).sum(dim=1)
        return losses, rewards


__all__ = ["ListMLE", "ListObjective", "MASKED", "label_order", "list_metrics", "log_ratios", "response_views"]
