"""Panacea's loss: one DPO term per preference dimension, aggregated by the step's preference vector.

Notation as in `alignsuite.objectives.pairwise`; ``D = u_w - u_l`` the log-ratio margin of the row's chosen over
its rejected answer (ordered by the primary dimension), ``pref_i`` in {+1, 0, -1} whether dimension ``i`` prefers
the chosen answer, the rejected one, or neither (the ``pref_<d>`` columns of `alignsuite.data.DimensionPairs`),
``lambda`` the step's preference vector (``batch["preference_vector"]``, set with the policy's by
``alignsuite.callbacks.PreferenceSampler``).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, PairwiseObjective, Reducer, chosen_nll, register, reward_metrics
from alignsuite.objectives.multi_objective import check_dimensions
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores

Aggregation = Literal["linear", "tchebycheff"]
PREFERENCE_COLUMN = "preference_vector"


@register("panacea")
class Panacea(PairwiseObjective):
    """Per-dimension DPO losses ``L_i = mean(-log s(b * D * pref_i))``, aggregated by ``lambda``:

    - ``linear`` (scalarisation): ``L = sum_i lambda_i L_i``;
    - ``tchebycheff``: ``L = max_i lambda_i (L_i - z_i)``, ``z`` the ideal point (``ideal``), over the batch's means.

    Without named dimensions (scores built by hand, no layout) the pair's own order is the one dimension: DPO.
    With a one-hot ``lambda`` on dimension ``i`` both are DPO on dimension ``i``'s labels (a tie, ``pref_i = 0``,
    contributes the constant ``ln 2``). The logged rewards are DPO's, ``b * u`` of the primary's chosen and
    rejected; ``loss/<d>`` and ``rewards/accuracies_<d>`` are per dimension. Train it on a `PanaceaLM` with
    `alignsuite.callbacks.PreferenceSampler`, which draws ``lambda`` each step and sets it on both.

    Zhong et al. 2024, "Panacea: Pareto Alignment via Preference Adaptation for LLMs" (NeurIPS 2024), the DPO
    variant with linear or Tchebycheff aggregation.

    Args:
        beta: the KL weight of every dimension's DPO term.
        aggregation: ``linear`` or ``tchebycheff``.
        ideal: ``z``, one value per dimension (Tchebycheff); zeros when None.
        dimensions: the data's dimension names, primary first; read from the data's layout at setup when None.
        sft_weight: weight of the chosen side's NLL (RPO).
    """

    family = "multi-objective"
    paper = "Zhong et al. 2024, arXiv 2402.02030"
    convention = ("the paper's DPO variant; the Tchebycheff maximum is taken over the batch means of the per-dimension"
                  " losses, and the preference vector is one per step, the same on every process")

    def __init__(
        self,
        beta: float = 0.1,
        aggregation: Aggregation = "linear",
        ideal: list[float] | None = None,
        dimensions: list[str] | None = None,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if aggregation not in get_args(Aggregation):
            raise ValueError(f"aggregation must be one of {get_args(Aggregation)}, got {aggregation!r}")
        if ideal is not None and not all(math.isfinite(z) for z in ideal):
            raise ValueError(f"ideal must be finite numbers, got {ideal}")
        self.aggregation, self.ideal = aggregation, None if ideal is None else [float(z) for z in ideal]
        self.dimensions = None if dimensions is None else list(dimensions)
        self._declare()

    def _declare(self) -> None:
        if self.dimensions is not None and self.ideal is not None and len(self.ideal) != len(self.dimensions):
            raise ValueError(f"panacea: the option ideal has {len(self.ideal)} values and the data has"
                             f" {len(self.dimensions)} preference dimensions ({', '.join(self.dimensions)})")
        self.extra_columns = tuple(f"pref_{d}" for d in self.dimensions or ())

    def use_data(self, layout) -> None:
        dims = list(layout.preference_dimensions)
        if not dims:
            raise ValueError(f"panacea needs data judged under named preference dimensions; the layout {layout.name}"
                             " names none (use alignsuite.data.DimensionPairs)")
        check_dimensions(self.name, self.dimensions, dims, layout.name)
        self.dimensions = dims
        self._declare()

    def pack(self, policy, ref, batch) -> PairScores:
        s = super().pack(policy, ref, batch)
        if PREFERENCE_COLUMN in batch:  # set per step by the sampler, not a data column
            s.extra[PREFERENCE_COLUMN] = torch.as_tensor(batch[PREFERENCE_COLUMN], dtype=torch.float32,
                                                         device=s.chosen.device)
        return s

    def dimension_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair losses ``[B, M]`` of every dimension, and the primary's chosen and rejected rewards."""
        u_w, u_l = float_log_ratios(s)
        margin = self.beta * (u_w - u_l)
        if not self.dimensions:  # no layout (scores built by hand): the pair's own order, one dimension
            return -F.logsigmoid(margin)[:, None], self.beta * u_w, self.beta * u_l
        prefs = torch.stack([s.extra[f"pref_{d}"].to(margin) for d in self.dimensions], dim=-1)
        return -F.logsigmoid(margin[:, None] * prefs), self.beta * u_w, self.beta * u_l

    def preference(self, s: PairScores) -> Tensor:
        if not self.dimensions:
            return s.chosen.new_ones(1, dtype=torch.float32)
        lam = s.extra.get(PREFERENCE_COLUMN)
        if lam is None:
            raise ValueError("panacea: the batch has no preference vector; train with the callback"
                             " alignsuite.callbacks.PreferenceSampler, which draws one each step")
        if lam.shape != (len(self.dimensions),):
            raise ValueError(f"panacea: the preference vector has shape {tuple(lam.shape)}, the data"
                             f" {len(self.dimensions)} dimensions ({', '.join(self.dimensions)})")
        return lam

    def aggregate(self, per_dimension: Tensor, lam: Tensor) -> Tensor:
        """``per_dimension``: the ``[M]`` mean losses; the loss ``lambda`` makes of them."""
        if self.aggregation == "linear":
            return (lam * per_dimension).sum()
        z = per_dimension.new_tensor(self.ideal) if self.ideal is not None else torch.zeros_like(per_dimension)
        return (lam * (per_dimension - z)).max()

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair losses under linear scalarisation (``sum_i lambda_i L_i`` per pair)."""
        losses, chosen, rejected = self.dimension_losses(s)
        return losses @ self.preference(s), chosen, rejected

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        losses, chosen, rejected = self.dimension_losses(scores)
        means = losses.mean(0)
        loss = self.aggregate(means, self.preference(scores))
        metrics = reward_metrics(chosen, rejected)
        margin = (chosen - rejected).detach()
        for i, d in enumerate(self.dimensions or ()):
            pref = scores.extra[f"pref_{d}"].to(margin)
            metrics[f"loss/{d}"] = means[i].detach()
            agree = (margin * pref > 0).float() + 0.5 * (margin * pref == 0).float()
            metrics[f"rewards/accuracies_{d}"] = agree.mean()
        if self.sft_weight > 0:
            nll = chosen_nll(scores, self.nll)
            metrics["loss/preference"], metrics["loss/sft"] = loss.detach(), nll.detach()
            loss = loss + self.sft_weight * nll
        return ObjectiveOutput(loss, metrics)


__all__ = ["Panacea"]
