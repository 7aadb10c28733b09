"""Set-level contrasts: a chosen set against a rejected set of responses to one prompt (MPO), and AMPO's choice
of which few responses of a large scored pool to train on.

Notation as in :mod:`alignsuite.objectives.listwise`: ``s_k = beta * u_k``, labels ``r*_k`` are rewards.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
from torch import Tensor

from alignsuite.objectives.base import register
from alignsuite.objectives.listwise import MASKED, ListObjective, clean_labels, log_ratios
from alignsuite.scores import ListScores


Deviation = Literal["signed", "absolute"]


@register("mpo")
class MPO(ListObjective):
    """Multi-Preference Optimization: Bradley-Terry between a chosen and a rejected *set*, with deviation weights.

    With ``m = mean_k r*_k`` over the list, the chosen set ``Y+ = {k : r*_k > m}``, the rejected set the rest,
    and weights ``w_k = exp(alpha * (r*_k - m))``:

        L = - log [ sum_{k in Y+} w_k exp(s_k) / sum_k w_k exp(s_k) ],   s = beta * u

    i.e. a softmax over the logits ``s_k + alpha (r*_k - m)`` whose chosen mass is maximised; the mean cancels
    between numerator and denominator, so only the reward gaps count. The chosen responses furthest above the
    mean weigh most in the numerator, the rejected ones furthest below it least in the denominator.

    Gupta et al., "Multi-Preference Optimization: Generalizing DPO via Set-Level Contrasts" (first titled SWEPO,
    arXiv 2412.04628; not the "Mixed Preference Optimization" of InternVL and NeMo-RL, a DPO + BCO + SFT mixture).
    The paper's own text could not be read here. The form follows the same authors' restatement
    of MPO in "REFA: Reference Free Alignment" (Gupta et al., COLM 2025, its equation (5): ``w_y = e^{alpha (r_y -
    r_mean)}`` over every response, ``s = beta log pi/pi_ref``), which matches a summary of SWEPO v1 (``w_i^+ =
    exp(alpha Delta S_i)`` for the chosen) and the AMPO paper's score ``s + alpha (r - r_mean)``. ``alpha`` = 1 by
    default (the paper's value not found). A list whose labels are all equal has no chosen set and contributes 0.
    At K = 2 it is ``-log s(beta D + alpha (r*_w - r*_l))``: DPO at ``alpha = 0``.

    ``deviation="absolute"`` weighs every response by ``exp(alpha |r*_k - m|)`` instead, so that the rejected
    responses furthest *below* the mean weigh most, as the abstract's "emphasises outlier responses" can also be
    read (the SWEPO summary lists the rejected responses' weight apart from the chosen ones'; its text was cut
    off). At K = 2 both weights are then equal and cancel: DPO for any ``alpha``.
    """

    paper = "Gupta et al. 2024, arXiv 2412.04628"
    convention = ("paper's text not read: the authors' restatement in REFA (eq. 5), weights exp(alpha (r - mean)) on "
                  "every response, split at the mean reward (deviation='absolute': exp(alpha |r - mean|)); alpha 1 "
                  "(paper's value not found)")

    def __init__(self, beta: float = 0.1, list_size: int = 4, alpha: float = 1.0,
                 deviation: Deviation = "signed") -> None:
        super().__init__(beta=beta, list_size=list_size)
        if alpha < 0:
            raise ValueError(f"mpo: alpha must be >= 0, got {alpha}")
        if deviation not in get_args(Deviation):
            raise ValueError(f"mpo: deviation must be one of {get_args(Deviation)}, got {deviation!r}")
        self.alpha = alpha
        self.deviation = deviation

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards = self.beta * log_ratios(s)
        labels = clean_labels(s)
        mean = labels.sum(dim=1, keepdim=True) / s.mask.sum(dim=1, keepdim=True)
        deviation = labels - mean
        chosen = s.mask & (deviation > 0)
        shift = deviation.abs() if self.deviation == "absolute" else deviation
        logits = rewards + self.alpha * shift  # log(w_k exp(s_k))
        log_chosen = torch.logsumexp(torch.where(chosen, logits, MASKED), dim=1)
        log_all = torch.logsumexp(torch.where(s.mask, logits, MASKED), dim=1)
        return torch.where(chosen.any(dim=1), log_all - log_chosen, 0.0), rewards


def select_active_subset(rewards: Sequence[float], size: int, embeddings: Sequence[Sequence[float]] | None = None,
                         positives: int = 1, iterations: int = 10) -> list[int]:
    """AMPO's active selection: which ``size`` of a prompt's scored pool of responses to train on, best first.

    The ``positives`` highest-reward responses are kept; the rest of the subset covers the low end of the pool.
    Without ``embeddings`` it is the lowest rewards (AMPO's bottom-k). With them (one vector per response), the
    remaining pool is clustered into ``size - positives`` groups (k-means on cosine-normalised vectors, seeded
    deterministically by farthest-point choice) and each group gives its lowest-reward response, so that the
    rejected responses are both bad and semantically distinct. Ties keep pool order. Returns indices into the pool.

    Gupta et al. 2025, "AMPO: Active Multi-Preference Optimization for Self-play Preference Selection" (ICML
    2025), arXiv 2502.18293: select a small subset "covering reward extremes and distinct semantic clusters".
    The paper's method section and code were not read here: its summary names k-medoids where this uses
    k-means, and taking each group's lowest-reward member is this implementation's reading. Usable as a data
    step: it reads numbers and vectors, not a model.
    """
    n = len(rewards)
    if not 2 <= size <= n:
        raise ValueError(f"select_active_subset: size must be between 2 and the pool size {n}, got {size}")
    if not 1 <= positives < size:
        raise ValueError(f"select_active_subset: positives must be between 1 and size - 1 ({size - 1}), got {positives}")
    values = torch.as_tensor(rewards, dtype=torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError(f"select_active_subset: rewards must be finite, got {list(rewards)}")
    ranked = torch.sort(values, descending=True, stable=True).indices.tolist()
    top, rest = ranked[:positives], ranked[positives:]
    k = size - positives
    if embeddings is None:
        return top + rest[-k:]  # rest is sorted best first
    vectors = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float64), dim=1)
    if vectors.shape[0] != n:
        raise ValueError(f"select_active_subset: {vectors.shape[0]} embeddings for a pool of {n} rewards")
    groups = kmeans(vectors[rest], k, iterations)
    picks = []
    for g in range(k):
        members = [rest[i] for i in range(len(rest)) if groups[i] == g]
        picks.append(min(members, key=lambda i: (values[i].item(), i)))
    return top + sorted(picks, key=lambda i: (-values[i].item(), i))


def kmeans(points: Tensor, k: int, iterations: int) -> list[int]:
    """Group index of each point: Lloyd's k-means from a farthest-point start (deterministic; no group left empty)."""
    centres = [0]
    for _ in range(1, k):
        distance = torch.cdist(points, points[centres]).min(dim=1).values
        distance[centres] = -1  # never pick a chosen centre twice, even among duplicate points
        centres.append(int(distance.argmax()))
    means = points[centres].clone()
    groups = torch.cdist(points, means).argmin(dim=1)
    for _ in range(iterations):
        groups[centres] = torch.arange(k)  # each seed stays in its own group, so none empties
        means = torch.stack([points[groups == g].mean(dim=0) for g in range(k)])
        new = torch.cdist(points, means).argmin(dim=1)
        new[centres] = torch.arange(k)
        if torch.equal(new, groups):
            break
        groups = new
    groups[centres] = torch.arange(k)
    return groups.tolist()


__all__ = ["MPO", "kmeans", "select_active_subset"]
