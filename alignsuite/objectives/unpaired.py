"""Objectives for unpaired data: each example is one completion labelled desirable or undesirable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        metrics = unpaired_metrics(self.beta * u, margin, desirable)
        metrics["kl"] = z0.detach().float()
        return ObjectiveOutput(losses.mean(), metrics)


def unpaired_metrics(rewards: Tensor, margin: Tensor, desirable: Tensor) -> dict[str, Tensor]:
    """``rewards/*`` of unpaired rows: the mean reward of the desirable and of the undesirable ones (0 when a batch
    has none, with ``count/*`` logged so the 0 can be read), their difference, and the fraction of rows on the right
    side of the reference point (``margin`` = reward minus it; a tie counts one half)."""
    rewards, margin = rewards.detach(), margin.detach()
    n_d, n_u = desirable.sum().float(), (~desirable).sum().float()
    chosen = (rewards * desirable).sum() / n_d.clamp(min=1)
    rejected = (rewards * ~desirable).sum() / n_u.clamp(min=1)
    right_side = torch.where(desirable, margin > 0, margin < 0).float() + 0.5 * (margin == 0).float()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": right_side.mean(),
        "count/desirable": n_d,
        "count/undesirable": n_u,
    }


@register("bco")
class BCO(Objective):
    """Binary Classifier Optimization, unpaired: each reward classified against a running mean of the rewards.

    With ``r = b u`` (``u = log pi(y|x) - log pi_ref(y|x)``) and ``delta`` the mean of every reward seen in
    training so far, this batch's included:

        desirable:    L = -log s(r - delta)
        undesirable:  L = -log s(-(r - delta))

    and the loss is the batch mean. Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment" (arXiv 2404.04656). Follows TRL's ``BCOTrainer`` (``trl/experimental/bco/bco_trainer.py``,
    ``bco_loss`` with ``RunningMoments``): ``delta`` is updated with the batch's rewards (detached) *before* the
    loss, as a running mean weighted by counts; evaluation does not update it (here: calls without gradients,
    ``torch.no_grad`` / ``inference_mode``, as Lightning's validation, do not). ``bco_pair`` is the paired form
    with ``delta = 0``.

    Under several processes the batch's mean and count are those of the global batch, through ``reduce`` (the
    module's mean over processes): every process keeps the same ``delta``. The running mean and its count are
    objective state, saved in checkpoints (:meth:`state`), so a resumed run continues with the same ``delta``;
    the count is kept per process, so resume with the same number of processes.

    Not built: the paper's underlying distribution matching (UDM), which reweights undesirable examples by
    ``clamp(p / (1 - p), 0.5, 10)`` from a classifier over prompt embeddings; it needs an embedding model.

    Metrics as KTO's, with ``delta`` (TRL's name) in place of ``kl``.
    """

    family = "unpaired"
    paper = "Jung et al. 2024, arXiv 2404.04656"
    convention = "TRL's BCOTrainer: running mean delta updated with the batch before the loss; no UDM"
    row_kind = "unpaired"
    views = (View("completion"),)

    def __init__(self, beta: float = 0.1) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = beta
        self.delta, self.count = 0.0, 0.0  # the running mean of the rewards, and how many it averages

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> UnpairedScores:
        s = policy["completion"]
        label = batch["label"].to(s.score.device, torch.float)
        return UnpairedScores(s.score, label, ref.get("completion"), length=s.length,
                              extra=self._extra(policy, ref, batch, ("completion",)))

    def state(self) -> dict:
        return {"delta": self.delta, "count": self.count}

    def load_state(self, state: dict) -> None:
        self.delta, self.count = float(state["delta"]), float(state["count"])

    @torch.no_grad()
    def update(self, rewards: Tensor, reduce: Reducer | None = None) -> None:
        """Fold ``rewards`` (this process's) into the running mean; ``reduce`` gives the means over processes,
        from which the global batch's mean (``sum / count``) follows whatever each process holds."""
        rewards = rewards.detach().double()
        n = rewards.new_full((1,), float(rewards.numel()))
        if reduce is None:
            count, mean = n.sum(), rewards.mean()
        else:  # mean over processes of each one's count, and of each one's sum: their ratio is the global mean
            count = reduce(n)
            mean = reduce(rewards * n) / count
        count, mean = float(count), float(mean)
        self.count += count
        self.delta += (mean - self.delta) * count / self.count

    def __call__(self, scores: UnpairedScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        logps, ref_logps = as_float(scores.logps, scores.ref_logps)
        rewards = self.beta * (logps - ref_logps)
        if torch.is_grad_enabled():  # a training step; evaluation reads delta without moving it
            self.update(rewards, reduce)
        delta = torch.tensor(self.delta, dtype=rewards.dtype, device=rewards.device)
        desirable = scores.label > 0.5
        margin = rewards - delta
        losses = torch.where(desirable, -F.logsigmoid(margin), -F.logsigmoid(-margin))
        metrics = unpaired_metrics(rewards, margin, desirable)
        metrics["delta"] = delta.detach()
        return ObjectiveOutput(losses.mean(), metrics)


__all__ = ["BCO", "KTO", "unpaired_metrics"]
