"""Robust DPO with label-correctness weights inferred by expectation-maximisation (RE-PO / RE-DPO).

Notation as in :mod:`alignsuite.objectives.pairwise`: ``z = b (u_w - u_l)``, ``s`` the logistic sigmoid. Each
recorded label ("``y_w`` beats ``y_l``") is right with probability ``eta``, the annotator's reliability; the
objective keeps ``eta`` across steps as state (saved in checkpoints, like unpaired BCO's running mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, PairwiseObjective, Reducer, register, reward_metrics
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores


@register("re_dpo")
class REDPO(PairwiseObjective):
    """RE-DPO: DPO where each pair's label is weighted by the posterior probability that it is correct.

    With ``p = s(z)``, the model's probability that the recorded label is right, and ``eta`` the reliability of
    the row's annotator:

        E-step:  w = p eta / (p eta + (1 - p)(1 - eta)) = s(z + log(eta / (1 - eta)))      (detached)
        loss:    L = -[w log s(z) + (1 - w) log s(-z)]
        M-step:  eta <- (1 - alpha) eta + alpha * mean(w)       (mean over the global batch's rows)

    Cao et al. 2026, "RE-PO: Robust Enhanced Policy Optimization as a General Framework for LLM Alignment"
    (ICLR 2026, arXiv 2509.24159; first titled LCPO). The paper's text could not be read here: the equations,
    the moving-average M-step for ``eta`` and its defaults (``eta0`` 0.9, ``alpha`` 0.1) follow the project's
    research note on the paper, and the order is EM's: this step's weights use the ``eta`` the previous steps
    left, and ``eta`` is then updated with them, so the next step sees the new value. ``w`` is computed in its
    logistic form, exact at ``eta`` = 1 (``w`` = 1) where the ratio form would give 0/0 for a saturated ``p``.
    With ``eta0: 1`` the weights are all 1 and so is every later ``eta``: the loss is ``dpo``'s exactly. For
    ``eta`` > 1/2, ``w`` > ``p`` and the gradient always widens the margin; a pair the model finds unlikely
    (``p`` small) gets ``w`` near ``1 - eta`` of its weight on the flipped label, so it pulls less or not at all.

    ``eta`` moves only in training (calls with gradients enabled; validation reads it). Under several processes
    ``mean(w)`` is the global batch's, through ``reduce`` (the module's mean over processes), so every process
    keeps the same ``eta``. The state (``eta`` and the number of updates, ``steps``) is saved with each
    checkpoint and restored on resume.

    Several annotators (the paper's multi-annotator setting, one reliability each): ``annotator_column`` names a
    batch column of integer annotator ids in ``[0, num_annotators)``; each row's ``w`` uses its annotator's
    ``eta``, and each ``eta_k`` moves with the mean ``w`` of its own rows in the global batch (left as it is
    when the batch has none of them).

    Metrics: the reward metrics, ``weight_mean`` (this process's mean ``w``), ``eta`` (after this step's update;
    the mean over annotators when there are several, each also as ``eta/<k>``).
    """

    family = "pairwise"
    paper = "Cao et al. 2026, arXiv 2509.24159"
    convention = ("EM order: weights from the previous eta, then eta <- (1 - alpha) eta + alpha mean(w) over the"
                  " global batch; equations from a note on the paper (its text not read)")

    def __init__(self, beta: float = 0.1, eta0: float = 0.9, alpha: float = 0.1, annotator_column: str | None = None,
                 num_annotators: int = 1, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if not 0 < eta0 <= 1:
            raise ValueError(f"eta0 (the initial annotator reliability) must be in (0, 1], got {eta0}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha (the step of eta's moving average) must be in [0, 1], got {alpha}")
        if isinstance(num_annotators, bool) or not isinstance(num_annotators, int) or num_annotators < 1:
            raise ValueError(f"num_annotators must be an integer >= 1, got {num_annotators!r}")
        if annotator_column is not None and (not isinstance(annotator_column, str) or not annotator_column):
            raise ValueError(f"annotator_column must name a batch column of annotator ids, got {annotator_column!r}")
        if num_annotators > 1 and annotator_column is None:
            raise ValueError(f"num_annotators is {num_annotators}: give annotator_column, the batch column that says"
                             " which annotator labelled each row")
        self.eta0, self.alpha = float(eta0), float(alpha)
        self.annotator_column, self.num_annotators = annotator_column, num_annotators
        if annotator_column is not None:
            self.extra_columns = (annotator_column,)
        self.eta = [self.eta0] * num_annotators  # one reliability per annotator
        self.steps = 0  # how many training steps have updated eta

    def state(self) -> dict:
        return {"eta": list(self.eta), "steps": self.steps}

    def load_state(self, state: dict) -> None:
        eta = [float(e) for e in state["eta"]]
        if len(eta) != self.num_annotators:
            raise ValueError(f"re_dpo: the checkpoint holds {len(eta)} annotator reliabilities, and this run has"
                             f" num_annotators {self.num_annotators}")
        self.eta, self.steps = eta, int(state["steps"])

    def annotators(self, s: PairScores) -> Tensor:
        """Each row's annotator id (all 0 without ``annotator_column``); a bad id is an error naming the positions."""
        if self.annotator_column is None:
            return torch.zeros(s.chosen.shape[0], dtype=torch.long, device=s.chosen.device)
        name = self.annotator_column
        if name not in s.extra:
            raise ValueError(f"re_dpo needs the batch column {name!r} (annotator_column) in scores.extra; give the"
                             f" data that column (TextPairs number_fields: {{{name}: <field>}})")
        ids = s.extra[name].detach()
        bad = ((ids != ids.round()) | (ids < 0) | (ids >= self.num_annotators) | ~torch.isfinite(ids.double()))
        if bad.any():
            positions = bad.nonzero().flatten().tolist()
            raise ValueError(f"re_dpo: the column {name!r} must hold annotator ids, integers in [0, {self.num_annotators})"
                             f" (num_annotators); batch position(s) {positions} hold {ids[positions].tolist()}")
        return ids.long().to(s.chosen.device)

    def weights(self, z: Tensor, ids: Tensor) -> Tensor:
        """E-step: ``w = s(z + logit(eta))``, the posterior that each row's label is right (detached)."""
        eta = torch.tensor(self.eta, dtype=z.dtype, device=z.device)[ids]
        return torch.sigmoid(z.detach() + torch.logit(eta))

    @torch.no_grad()
    def update(self, w: Tensor, ids: Tensor, reduce: Reducer | None = None) -> None:
        """M-step for the reliabilities: each ``eta_k`` moves toward the mean ``w`` of its rows in the global batch
        (``reduce``: the mean over processes of each one's count and sum, whose ratio is the global mean)."""
        w = w.detach().double()
        for k in range(self.num_annotators):
            mine = ids == k
            n, total = mine.sum().double().reshape(1), (w * mine).sum().reshape(1)
            if reduce is not None:  # every process makes the same calls, whatever rows it holds
                n, total = reduce(n), reduce(total)
            if float(n) > 0:
                self.eta[k] += self.alpha * (float(total) / float(n) - self.eta[k])
        self.steps += 1

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair losses and rewards at the current ``eta`` (which this does not move)."""
        losses, _, _, chosen, rejected = self._losses(s)
        return losses, chosen, rejected

    def _losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        z = self.beta * (u_w - u_l)
        ids = self.annotators(s)
        w = self.weights(z, ids)
        losses = -w * F.logsigmoid(z) - (1 - w) * F.logsigmoid(-z)
        return losses, w, ids, self.beta * u_w, self.beta * u_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        losses, w, ids, chosen, rejected = self._losses(scores)
        if torch.is_grad_enabled():  # a training step; evaluation reads eta without moving it
            self.update(w, ids, reduce)
        loss = losses.mean()
        metrics = reward_metrics(chosen, rejected)
        metrics["weight_mean"] = w.detach().float().mean()
        metrics["eta"] = torch.tensor(sum(self.eta) / len(self.eta), device=loss.device)
        if self.num_annotators > 1:
            metrics.update({f"eta/{k}": torch.tensor(e, device=loss.device) for k, e in enumerate(self.eta)})
        return ObjectiveOutput(self.with_sft(loss, scores, metrics), metrics)


__all__ = ["REDPO"]
