"""Multi-objective DPO: one preference label, the other objectives as a margin, a weight vector per run.

Notation as in `alignsuite.objectives.pairwise`; ``w = (w_0, ..., w_{n-1})`` the weights of the data's
preference dimensions (the primary first, the one whose labels order the pair), ``R_i(y)`` the reward of
answer ``y`` under dimension ``i``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, register
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores

MarginSource = Literal["rewards", "columns", "labels", "reference"]
ONE_MARGIN = ("columns", "reference")  # margin sources that give one margin reward: two dimensions
ModpoLoss = Literal["sigmoid", "hinge"]


def check_dimensions(objective: str, given: list[str] | None, data: list[str], layout: str) -> None:
    """Refuse an objective's ``dimensions`` option that names other dimensions than the data's layout."""
    if given is not None and given != data:
        raise ValueError(f"{objective}: the option dimensions {given} differs from the data's dimensions {data}"
                         f" (layout {layout}); leave it out to use the data's")


@register("modpo")
class MODPO(PairwiseObjective):
    """Multi-objective DPO: DPO on the primary dimension's labels, with the other dimensions' rewards as a
    per-pair margin, scaled by the weights.

    ``rhat(y) = (b * u(y) - sum_{i>=1} w_i R_i(y)) / w_0``,  ``L = -log s(rhat(y_w) - rhat(y_l))``
    (``loss_type="hinge"``: ``relu(1 - (rhat(y_w) - rhat(y_l)))``). The logged rewards are ``rhat``. At
    ``w = (1, 0, ..., 0)`` this is DPO exactly. One run per weight vector traces the front.

    Zhou et al. 2024, "Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct Preference
    Optimization" (ACL 2024 Findings), Eq. 6; the official ``MODPOTrainer.modpo_loss`` offers both losses.

    Where ``R_i`` comes from (``margin``):

    - ``rewards``: the data's scores, ``reward_chosen_<d>``/``reward_rejected_<d>`` of each non-primary
      dimension ``d`` (a layout that names its dimensions, `alignsuite.data.DimensionPairs`, gives them);
    - ``columns``: ``margin_chosen``/``margin_rejected``, one margin reward per side for two dimensions, weighted
      by ``w_1``: the official recipe's, the implicit reward ``b * (log pi_m(y) - log pi_ref(y))`` of a DPO model
      trained on the second dimension's labels, computed once and stored with the data;
    - ``reference``: that implicit reward computed in the step, ``R(y) = b * (log pi_m(y) - log pi_ref(y))``, from
      the margin model given as the extra reference ``margin`` (``model.extra_references.margin``, a
      ``FrozenCopy`` of the DPO model; ``ref_margin_<view>`` in the scores), weighted by ``w_1``: the official
      recipe's margin without a pass over the data beforehand;
    - ``labels``: the other dimensions' labels alone, ``R_i(y_w) - R_i(y_l) = label_reward * pref_i`` (+1, 0, -1
      from ``pref_<d>``): a stand-in where no scores or margin model exist (PKU-SafeRLHF's labels).

    Margin rewards must be on the implicit reward's scale (an external reward model's need rescaling), and a
    small ``w_0`` raises the effective beta to ``b / w_0``.

    Args:
        beta: the KL weight of the primary dimension's DPO term.
        weights: one weight per dimension of the data, the primary first: ``w_0 > 0``, the others ``>= 0``;
            ``None``: the primary alone (DPO). Checked against the data's dimensions at setup.
        margin: where the non-primary rewards come from: ``rewards``, ``columns``, ``reference`` or ``labels``.
        label_reward: ``margin="labels"``: the reward gap a label stands for.
        loss_type: ``sigmoid`` (the paper's) or ``hinge``.
        dimensions: the data's dimension names, primary first; read from the data's layout at setup when
            ``None`` (needed only without a data module, for ``margin="rewards"`` or ``"labels"``).
        sft_weight: weight of the chosen side's NLL (RPO).
    """

    family = "multi-objective"
    paper = "Zhou et al. 2024, arXiv 2310.03708"
    convention = ("the official MODPOTrainer's loss with the margin reward given per side (data columns) or scored"
                  " in the step by a margin model (an extra reference) rather than from a second adapter; `labels` margins are this suite's stand-in for data without scores")

    def __init__(
        self,
        beta: float = 0.1,
        weights: list[float] | None = None,
        margin: MarginSource = "rewards",
        label_reward: float = 1.0,
        loss_type: ModpoLoss = "sigmoid",
        dimensions: list[str] | None = None,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if margin not in get_args(MarginSource):
            raise ValueError(f"margin must be one of {get_args(MarginSource)}, got {margin!r}")
        if loss_type not in get_args(ModpoLoss):
            raise ValueError(f"loss_type must be one of {get_args(ModpoLoss)}, got {loss_type!r}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or not all(math.isfinite(w) for w in weights) or weights[0] <= 0 or min(weights[1:] or [0]) < 0:
                raise ValueError(f"weights must be finite, the first (the primary dimension's) > 0 and the others >= 0,"
                                 f" got {weights}")
        if not label_reward > 0:
            raise ValueError(f"label_reward must be > 0, got {label_reward}")
        self.weights, self.margin, self.label_reward, self.loss_type = weights, margin, label_reward, loss_type
        self.dimensions = None if dimensions is None else list(dimensions)
        if self.dimensions is not None:
            self._check_length(self.dimensions, "its option dimensions")
        self.extra_columns = self._columns()
        self.extra_references = ("margin",) if margin == "reference" else ()

    # --- what it reads --------------------------------------------------------------------------------

    def _check_length(self, dimensions: list[str], where: str) -> None:
        if self.weights is not None and len(self.weights) != len(dimensions):
            raise ValueError(f"modpo: the option weights has {len(self.weights)} values and the data has"
                             f" {len(dimensions)} preference dimensions ({', '.join(dimensions)}, from {where});"
                             " give one weight per dimension, the primary first")
        if self.margin in ONE_MARGIN and len(dimensions) != 2:
            raise ValueError(f"modpo: margin={self.margin!r} reads one margin reward (margin_chosen/margin_rejected, or"
                             f" the margin model's), for two dimensions; the data has {len(dimensions)} ({', '.join(dimensions)}): use"
                             " margin='rewards'")

    def _weighted(self) -> list[tuple[int, float]]:
        """``(i, w_i)`` of the non-primary dimensions with a non-zero weight: the only ones read."""
        return [(i, w) for i, w in enumerate(self.weights or []) if i > 0 and w != 0]

    def _columns(self) -> tuple[str, ...]:
        used = self._weighted()
        if not used or self.margin == "reference":
            return ()
        if self.margin == "columns":
            return ("margin_chosen", "margin_rejected")
        if self.dimensions is None:
            return ()  # named at setup, from the data's layout
        if self.margin == "labels":
            return tuple(f"pref_{self.dimensions[i]}" for i, _ in used)
        return tuple(c for i, _ in used for c in (f"reward_chosen_{self.dimensions[i]}", f"reward_rejected_{self.dimensions[i]}"))

    def use_data(self, layout) -> None:
        dims = list(layout.preference_dimensions)
        if not dims:
            if self.margin in ONE_MARGIN and self.weights is not None and len(self.weights) != 2:
                raise ValueError(f"modpo: the option weights has {len(self.weights)} values; with margin={self.margin!r} on"
                                 f" data of one preference (layout {layout.name}) it takes two: the primary's and the"
                                 " margin reward's")
            if self.margin not in ONE_MARGIN and self._weighted() and self.dimensions is None:
                raise ValueError(f"modpo: the option weights weighs dimensions beyond the primary, and the data layout"
                                 f" {layout.name} names none; use a layout that names its dimensions"
                                 " (alignsuite.data.DimensionPairs) or margin='columns'")
            return
        check_dimensions(self.name, self.dimensions, dims, layout.name)
        self._check_length(dims, f"layout {layout.name}")
        self.dimensions = dims
        self.extra_columns = self._columns()

    # --- the loss -------------------------------------------------------------------------------------

    def margins(self, s: PairScores) -> tuple[Tensor, Tensor]:
        """``sum_{i>=1} w_i R_i(y)`` for the chosen and the rejected side, each ``[B]``."""
        zero = torch.zeros_like(s.chosen, dtype=torch.float32)
        chosen, rejected = zero, zero
        for i, w in self._weighted():
            if self.margin == "columns":
                rc, rr = s.extra["margin_chosen"], s.extra["margin_rejected"]
            elif self.margin == "reference":
                rc, rr = self._model_margin(s)
            elif self.dimensions is None:
                raise ValueError("modpo: weights beyond the primary need the data's dimension names (set at setup from"
                                 " the layout, or the option dimensions)")
            elif self.margin == "labels":
                half = 0.5 * self.label_reward * s.extra[f"pref_{self.dimensions[i]}"].float()
                rc, rr = half, -half
            else:
                d = self.dimensions[i]
                rc, rr = s.extra[f"reward_chosen_{d}"], s.extra[f"reward_rejected_{d}"]
            chosen, rejected = chosen + w * rc.float(), rejected + w * rr.float()
        return chosen, rejected

    def _model_margin(self, s: PairScores) -> tuple[Tensor, Tensor]:
        """The margin model's implicit reward ``b * (log pi_m(y) - log pi_ref(y))`` per side."""
        if "ref_margin_chosen" not in s.extra or s.ref_chosen is None:
            raise ValueError("modpo: margin='reference' reads the margin model's scores (ref_margin_chosen/"
                             "ref_margin_rejected) and the reference's; give model.extra_references.margin")
        return (self.beta * (s.extra["ref_margin_chosen"].float() - s.ref_chosen.float()),
                self.beta * (s.extra["ref_margin_rejected"].float() - s.ref_rejected.float()))

    def _terms(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
        """``(u_w, u_l, margin_w, margin_l, w_0)``."""
        u_w, u_l = float_log_ratios(s)
        return u_w, u_l, *self.margins(s), self.weights[0] if self.weights else 1.0

    def rewards(self, s: PairScores) -> tuple[Tensor, Tensor]:
        """``rhat`` of the chosen and the rejected side, each ``[B]``."""
        u_w, u_l, m_w, m_l, w0 = self._terms(s)
        return (self.beta * u_w - m_w) / w0, (self.beta * u_l - m_l) / w0

    def logistic_or_hinge(self, z: Tensor) -> Tensor:
        """The per-pair loss of ``z = rhat(y_w) - rhat(y_l)``, as ``loss_type`` says."""
        return F.relu(1 - z) if self.loss_type == "hinge" else -F.logsigmoid(z)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l, m_w, m_l, w0 = self._terms(s)
        # The gap formed as DPO forms it, b * (u_w - u_l): at w = (1, 0) the loss is DPO's to the last bit on any
        # scores (rhat_w - rhat_l differs from it by a rounding on denoising scores).
        z = (self.beta * (u_w - u_l) - (m_w - m_l)) / w0
        return self.logistic_or_hinge(z), (self.beta * u_w - m_w) / w0, (self.beta * u_l - m_l) / w0


__all__ = ["MODPO", "check_dimensions"]
