"""Objectives for unpaired data: each example is one completion labelled desirable or undesirable."""

from __future__ import annotations

import torch
from torch import Tensor

from alignsuite.objectives.base import Objective, ObjectiveOutput, Reducer, as_float, register
from alignsuite.scores import SequenceScores, UnpairedScores
from alignsuite.views import View


@register("kto")
class KTO(Objective):
    """Kahneman-Tversky Optimization: a prospect-theoretic value of each example's reward against a reference point.

    With ``u = log pi(y|x) - log pi_ref(y|x)`` and the reference point
    ``z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))`` (detached):

        desirable:    L = w_D * (1 - s(b (u - z0)))
        undesirable:  L = w_U * (1 - s(b (z0 - u)))

    and the loss is the batch mean of the per-example losses. Ethayarajh et al. 2024, "KTO: Model Alignment
    as Prospect Theoretic Optimization"; ``w_D`` = ``desirable_weight``, ``w_U`` =
    ``undesirable_weight``, b = ``beta``. The paper advises ``w_D n_D / (w_U n_U)`` in [1, 4/3] (its Eq. 8).

    ``z0`` estimates KL(pi || pi_ref) from mismatched pairs ``(x, y')`` built inside the batch (the backbone
    scores them into ``scores.kl`` / ``scores.ref_kl``). No gradient flows through it. Under multi-process
    training the estimate must be the mean over all processes, which only the module can compute: it passes
    ``reduce``, a function from the local per-example values ``kl - ref_kl`` to their global mean. The
    default is the local mean.

    Metrics: ``rewards/chosen`` and ``rewards/rejected`` are the mean ``b * u`` over the desirable and over the
    undesirable examples (0 when a batch has none, with ``count/desirable`` and ``count/undesirable`` logged so
    the 0 can be read), ``rewards/margins`` their difference, ``rewards/accuracies`` the fraction of examples on
    the right side of z0 (a tie counts one half), and ``kl`` the reference point z0.
    """

    family = "unpaired"
    paper = "Ethayarajh et al. 2024, arXiv 2402.01306"
    convention = "TRL's: reference point from mismatched pairs in the batch, mean over processes"

    row_kind = "unpaired"
    # The completion, and each prompt with the next row's completion: the mismatched pairs of z0.
    views = (View("completion"), View("mismatched", column="completion", shift=1))

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if desirable_weight <= 0:
            raise ValueError(f"desirable_weight must be > 0, got {desirable_weight}")
        if undesirable_weight <= 0:
            raise ValueError(f"undesirable_weight must be > 0, got {undesirable_weight}")
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> UnpairedScores:
        s = policy["completion"]
        label = batch["label"].to(s.score.device, torch.float)
        mismatched = policy.get("mismatched")
        kl = mismatched.score.detach() if mismatched is not None else None
        extra = self._extra(policy, ref, batch, ("completion", "mismatched"))
        return UnpairedScores(s.score, label, ref.get("completion"), kl, ref.get("mismatched"), s.length, extra)

    def reference_point(self, scores: UnpairedScores, reduce: Reducer | None = None) -> Tensor:
        """``z0 = max(0, mean(kl - ref_kl))``, detached; ``reduce`` takes the mean (over every process)."""
        if scores.kl is None or scores.ref_kl is None:
            raise ValueError("kto needs scores.kl and scores.ref_kl (mismatched pairs for the KL reference point)")
        reduce = reduce or torch.mean
        with torch.no_grad():
            kl, ref_kl = as_float(scores.kl.detach(), scores.ref_kl.detach())
            return reduce(kl - ref_kl).clamp(min=0)

    def __call__(self, scores: UnpairedScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        z0 = self.reference_point(scores, reduce)
        logps, ref_logps = as_float(scores.logps, scores.ref_logps)
        u = logps - ref_logps
        desirable = scores.label > 0.5
        margin = self.beta * (u - z0)
        # 1 - s(x) is written s(-x): exact in float32 where 1 - s(x) would round to 0.
        losses = torch.where(
            desirable,
            self.desirable_weight * torch.sigmoid(-margin),
            self.undesirable_weight * torch.sigmoid(margin),
        )
        return ObjectiveOutput(losses.mean(), self._metrics(u, margin, desirable, z0))

    def _metrics(self, u: Tensor, margin: Tensor, desirable: Tensor, z0: Tensor) -> dict[str, Tensor]:
        rewards, margin = (self.beta * u).detach(), margin.detach()
        n_d, n_u = desirable.sum().float(), (~desirable).sum().float()
        chosen = (rewards * desirable).sum() / n_d.clamp(min=1)
        rejected = (rewards * ~desirable).sum() / n_u.clamp(min=1)
        right_side = torch.where(desirable, margin > 0, margin < 0).float() + 0.5 * (margin == 0).float()
        return {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": right_side.mean(),
            "kl": z0.detach().float(),
            "count/desirable": n_d,
            "count/undesirable": n_u,
        }


__all__ = ["KTO"]
