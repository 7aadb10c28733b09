"""Group-robust DPO: per-group DPO losses weighted towards the groups that fare worst (an offline objective in
MaxMin-RLHF's max-min spirit).

Notation as in `alignsuite.objectives.pairwise`; each row belongs to one of ``G`` groups (annotators, users,
demographics: the data column ``group``, ``0 .. G - 1``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, Reducer, register, reward_metrics
from alignsuite.objectives.pairwise import DPO
from alignsuite.scores import PairScores, SequenceScores

GROUP = "group"  # the batch column holding each row's group


@register("gr_dpo")
class GroupRobustDPO(DPO):
    """Group-robust DPO: ``min_pi max_{alpha in simplex} sum_g alpha_g L_g(pi)``, ``L_g`` the mean DPO loss
    ``-log s(b D)`` over group ``g``'s rows, solved by alternating an exponentiated-gradient (mirror ascent) step on
    the group weights with a gradient step on the policy:

        L_g   = mean over the batch's rows of group g of -log s(b D)        (0 for a group the batch lacks)
        alpha_g <- alpha_g exp(step_size * L_g) / sum_h alpha_h exp(step_size * L_h)      (training steps only)
        L     = sum_g alpha_g L_g                                            (with the updated alpha)

    A group whose loss stays high gains weight, so the policy is not left to the majority's preference as plain
    DPO's mean over rows leaves it; at ``step_size = 0`` the weights stay uniform and ``L`` is the mean of the
    group means (DPO exactly when the groups are equally many in the batch).

    Ramesh et al. 2024, "Group Robust Preference Optimization in Reward-free RLHF" (NeurIPS 2024), GR-DPO.
    Follows the official code (``rsshyam/Group-robust-preference-optimization``, ``GroupTrainer``'s ``rdpo``
    loss: uniform start, weights multiplied by ``exp(step_size * group loss)`` and renormalised before the loss
    that they weigh, per optimizer micro-batch) with its ``divide_by_totalcount: false`` group loss, the group's
    mean over the batch, rather than its default that scales each group's batch sum by ``N / N_g`` (the train
    set's size over the group's), which needs the train set's group counts and makes ``step_size`` depend on the
    batch size. The official default ``step_size`` is 0.01.

    The weights are objective state: saved in checkpoints (:meth:`state`), and under several processes updated
    from the global batch's group means (``reduce``, the module's mean over processes), so every process holds the
    same weights; each process's loss divides its group sums by the global counts, so the averaged gradient is the
    global batch's. Validation (calls without gradients) reads the weights without moving them.

    Logged: DPO's rewards, ``group_weight/<g>``, ``loss/group_<g>`` (the batch's group means) and
    ``rewards/accuracies_group_<g>`` (this process's rows of group ``g``; 0 where it has none).

    Args:
        beta: DPO's KL weight.
        num_groups: ``G``; every row's ``group`` is a whole number in ``0 .. G - 1``.
        step_size: the exponentiated-gradient step of the group weights (``eta_alpha``), ``>= 0``.
        sft_weight: weight of the chosen side's NLL (RPO).
    """

    family = "multi-objective"
    paper = "Ramesh et al. 2024, arXiv 2405.20304"
    convention = ("the official rdpo loss with divide_by_totalcount false (group means over the batch, not N/N_g-scaled"
                  " sums); weights updated before the loss, from the global batch under several processes")
    extra_columns = (GROUP,)

    def __init__(self, beta: float = 0.1, num_groups: int = 2, step_size: float = 0.01, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"gr_dpo: num_groups must be a whole number >= 1, got {num_groups!r}")
        if not (math.isfinite(step_size) and step_size >= 0):
            raise ValueError(f"gr_dpo: step_size must be finite and >= 0, got {step_size}")
        self.num_groups, self.step_size = num_groups, float(step_size)
        self.group_weights = [1.0 / num_groups] * num_groups

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> PairScores:
        if GROUP in batch:
            groups, rows = torch.as_tensor(batch[GROUP]).tolist(), batch.get("index")
            for i, g in enumerate(groups):
                if not (float(g).is_integer() and 0 <= g < self.num_groups):
                    row = f"data row {int(rows[i])}" if rows is not None else f"batch row {i}"
                    raise ValueError(f"gr_dpo: {row} has {GROUP} = {g}; expected a whole number in 0 .. "
                                     f"{self.num_groups - 1} (num_groups = {self.num_groups})")
        return super().pack(policy, ref, batch)

    def state(self) -> dict:
        return {"group_weights": list(self.group_weights)}

    def load_state(self, state: dict) -> None:
        weights = [float(w) for w in state["group_weights"]]
        if len(weights) != self.num_groups:
            raise ValueError(f"gr_dpo: the checkpoint holds {len(weights)} group weights, and num_groups is"
                             f" {self.num_groups}")
        self.group_weights = weights

    def group_means(self, losses: Tensor, groups: Tensor, reduce: Reducer | None = None) -> tuple[Tensor, Tensor]:
        """Each group's loss sum over this process's rows (with grad) and its row count over the global batch, as
        means over processes (their ratio is the global group mean)."""
        onehot = F.one_hot(groups, self.num_groups).T.to(losses.dtype)  # [G, B]
        sums, counts = onehot @ losses, onehot.sum(1)
        if reduce is not None:
            counts = torch.stack([reduce(counts[g : g + 1]) for g in range(self.num_groups)]).to(losses.dtype)
        return sums, counts

    @torch.no_grad()
    def update(self, means: Tensor) -> None:
        """One exponentiated-gradient step: ``alpha_g <- alpha_g exp(step_size * L_g)``, renormalised (in log space,
        so a large step cannot overflow)."""
        logits = torch.tensor(self.group_weights, dtype=torch.float64).log() + self.step_size * means.double().cpu()
        self.group_weights = torch.softmax(logits, 0).tolist()

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        if GROUP not in scores.extra:
            raise ValueError("gr_dpo reads each row's group from the data column 'group', which the batch lacks")
        losses, chosen_rewards, rejected_rewards = self.pair_losses(scores)
        sums, counts = self.group_means(losses, scores.extra[GROUP].long().to(losses.device), reduce)
        present = counts > 0
        global_sums = sums.detach() if reduce is None else torch.stack(
            [reduce(sums.detach()[g : g + 1]) for g in range(self.num_groups)]).to(sums.dtype)
        means = torch.where(present, global_sums / counts.clamp(min=1e-12), torch.zeros_like(sums))
        if torch.is_grad_enabled():  # a training step; validation reads the weights without moving them
            self.update(means)
        weights = torch.tensor(self.group_weights, dtype=losses.dtype, device=losses.device)
        loss = (weights * torch.where(present, sums / counts.clamp(min=1e-12), torch.zeros_like(sums))).sum()
        metrics = reward_metrics(chosen_rewards, rejected_rewards)
        won = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
        won_sums, here = self.group_means(won.detach().to(losses.dtype), scores.extra[GROUP].long().to(losses.device))
        for g in range(self.num_groups):
            metrics[f"group_weight/{g}"] = weights[g].detach()
            metrics[f"loss/group_{g}"] = means[g].detach()
            metrics[f"rewards/accuracies_group_{g}"] = won_sums[g] / here[g].clamp(min=1)
        return ObjectiveOutput(self.with_sft(loss, scores, metrics), metrics)


__all__ = ["GROUP", "GroupRobustDPO"]
