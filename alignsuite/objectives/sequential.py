"""Sequential alignment across preference dimensions: stage ``k`` aligns dimension ``k`` against the model stage
``k - 1`` ended with, and keeps the earlier stages' implicit rewards.

Notation as in `alignsuite.objectives.pairwise`; ``pi_k`` the model stage ``k`` starts from (``pi_0`` the SFT
model), ``l_k(y) = log pi_k(y|x)``, ``r_j(y) = b * (l_{j+1}(y) - l_j(y))`` the implicit reward stage ``j`` learned
(DPO's reward, up to a function of the prompt that cancels in a pair).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignsuite.data.stages import STAGE
from alignsuite.objectives.base import ObjectiveOutput, Reducer, register
from alignsuite.objectives.multi_objective import MODPO, ModpoLoss, check_dimensions
from alignsuite.scores import PairScores, SequenceScores


@register("spo")
class SPO(MODPO):
    """SPO: stage ``k`` is MODPO against the stage-``k - 1`` model, its margin the earlier stages' implicit rewards.

    ``rhat(y) = b * (log pi(y) - l_k(y)) - sum_{j<k} lambda_j r_j(y)``,  ``L = -log s(rhat(y_w) - rhat(y_l))``

    over the pairs ordered by dimension ``k`` (``loss_type="hinge"``: MODPO's hinge). Stage 0 is DPO on dimension
    0; with every ``lambda_j = 0`` stage ``k`` is DPO on dimension ``k`` against ``pi_k`` exactly (sDPO over the
    dimensions: "plain sequential DPO"). The logged rewards are ``rhat``, oriented by dimension ``k``.

    **Derivation** (the paper's loss could not be read here; this is derived from its stated problem, not copied).
    Stage ``k`` maximises dimension ``k``'s reward while the earlier ones' stay above what the earlier stages
    reached, near ``pi_k``:

        max_pi  E_pi[R_k] - b KL(pi || pi_k)   subject to   E_pi[R_j] >= c_j  (j < k)

    Its Lagrangian with multipliers ``lambda_j >= 0`` is ``E_pi[R_k + sum_j lambda_j R_j] - b KL(pi || pi_k)`` (+ a
    constant), maximised in closed form by ``pi*(y) = pi_k(y) exp((R_k(y) + sum_j lambda_j R_j(y)) / b) / Z(x)``.
    Solving for ``R_k``: ``R_k(y) = b log(pi*(y) / pi_k(y)) - sum_j lambda_j R_j(y) + b log Z(x)``; in the
    Bradley-Terry likelihood of dimension ``k``'s labels ``Z`` cancels, and with ``R_j`` the implicit reward stage
    ``j`` learned (``r_j``, from stage ``j``'s own closed form ``pi_{j+1} ∝ pi_j exp(R_j / b)``) the loss above
    follows. The multipliers are fixed hyper-parameters (the paper's own tuning of them: not read). Derived here:
    the loss as written, one ``b`` for every stage (each ``r_j`` uses this run's ``b``), and ties under dimension
    ``k`` (``pref = 0``) giving the constant ``ln 2`` as in `Panacea`.

    **Where the models come from.** ``l_k`` is the reference: `alignsuite.stage_reference.StageSync` in one run
    over ``data.stages`` (stage ``k``'s rows are stage ``k``'s, the reference the policy at the stage boundary),
    or a `FrozenCopy` of the stage-``k - 1`` model in a fit of one stage (``stage: k``). The earlier models are
    extra references ``stage_<j>`` (``model.extra_references.stage_0``: a `FrozenCopy` of the starting weights,
    ``pi_0``; ``stage_<j>`` for ``j >= 1``: a `alignsuite.stage_reference.StageSnapshot`, the policy as stage ``j``
    began, kept frozen from then on), scored as ``ref_stage_<j>_<view>``; only those a non-zero ``lambda`` reads are
    declared. So one run holds every stage (stage ``k`` reads ``stage_0 .. stage_{k-1}`` and the reference ``pi_k``),
    at one frozen copy of the weights per snapshot; or one fit per stage, each earlier model a `FrozenCopy`.

    **Which pairs.** With a layout that names its dimensions (`alignsuite.data.DimensionPairs`) stage ``k`` reads
    ``pref_<d_k>`` and trains on each pair ordered by dimension ``k``; without, each row's own order is its stage's
    preference (one file per dimension, ``data.stages: sources``).

    Lou et al. 2025, "SPO: Multi-Dimensional Preference Sequential Alignment With Implicit Reward Modeling"
    (AAAI 2025).

    Args:
        beta: the KL weight of every stage, and the scale of the earlier stages' implicit rewards.
        lambdas: ``lambda_j >= 0`` for the earlier dimensions ``j = 0, 1, ...``; stage ``k`` reads the first ``k``.
        stage: the stage of every batch (a fit of one stage); None: each batch's ``stage`` column
            (``data.stages``), and in validation the stage last trained.
        loss_type: ``sigmoid`` or ``hinge`` (MODPO's).
        dimensions: the data's dimension names in stage order; read from the layout at setup when None.
    """

    family = "multi-objective"
    paper = "Lou et al. 2025, arXiv 2405.12739"
    convention = ("loss derived from the paper's constrained problem (Lagrangian, closed-form optimum), not read from"
                  " it: MODPO with w_0 = 1 and the margin sum_j lambda_j r_j of the earlier stages' implicit rewards,"
                  " one beta for all stages, fixed lambdas, a tie under the stage's dimension a constant ln 2")

    def __init__(
        self,
        beta: float = 0.1,
        lambdas: list[float] | None = None,
        stage: int | None = None,
        loss_type: ModpoLoss = "sigmoid",
        dimensions: list[str] | None = None,
    ) -> None:
        super().__init__(beta=beta, loss_type=loss_type)
        lambdas = [float(x) for x in (lambdas or [])]
        if not all(math.isfinite(x) and x >= 0 for x in lambdas):
            raise ValueError(f"spo: lambdas are Lagrange multipliers, finite and >= 0, got {lambdas}")
        if stage is not None and (isinstance(stage, bool) or not isinstance(stage, int) or stage < 0):
            raise ValueError(f"spo: stage must be a whole number >= 0 or None (read from the data), got {stage!r}")
        if stage is not None and stage > len(lambdas):
            raise ValueError(f"spo: stage {stage} keeps the {stage} earlier dimensions, and the option lambdas gives"
                             f" {len(lambdas)} value(s); give one per earlier dimension")
        self.lambdas, self.fixed_stage = lambdas, stage
        self.stage = stage or 0  # the stage being trained: the last training batch's without a fixed one
        self.dimensions = None if dimensions is None else list(dimensions)
        self.extra_columns = self._columns()
        self.extra_references = self._references()

    # --- what it reads --------------------------------------------------------------------------------

    @property
    def last_stage(self) -> int:
        return self.fixed_stage if self.fixed_stage is not None else len(self.lambdas)

    def _references(self) -> tuple[str, ...]:
        """``stage_<j>`` for every earlier model a non-zero lambda reads (the last one is the reference)."""
        names = set()
        for j, lam in enumerate(self.lambdas[: self.last_stage]):
            if lam != 0:
                names |= {f"stage_{i}" for i in (j, j + 1) if i < self.last_stage}
        return tuple(sorted(names, key=lambda n: int(n.split("_")[1])))

    def _columns(self) -> tuple[str, ...]:
        return () if self.dimensions is None else tuple(f"pref_{d}" for d in self.dimensions[: self.last_stage + 1])

    def use_data(self, layout) -> None:
        dims = list(layout.preference_dimensions)
        if not dims:
            return  # each row's order is its stage's preference
        check_dimensions(self.name, self.dimensions, dims, layout.name)
        if self.last_stage >= len(dims):
            raise ValueError(f"spo: stage {self.last_stage} aligns dimension {self.last_stage} (the option "
                             f"{'stage' if self.fixed_stage is not None else 'lambdas, one per earlier stage,'} says so), and the data has"
                             f" {len(dims)} preference dimension(s) ({', '.join(dims)}, layout {layout.name})")
        self.dimensions = dims
        self.extra_columns = self._columns()

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> PairScores:
        s = super().pack(policy, ref, batch)
        if self.fixed_stage is None and STAGE in batch:
            s.extra[STAGE] = torch.as_tensor(batch[STAGE]).to(s.chosen.device)
        return s

    def state(self) -> dict:
        return {} if self.fixed_stage is not None else {"stage": self.stage}

    def load_state(self, state: dict) -> None:
        self.stage = int(state.get("stage", self.stage))

    # --- the loss -------------------------------------------------------------------------------------

    def current_stage(self, s: PairScores) -> int:
        """The batch's stage: the fixed one, the rows' ``stage`` (remembered in training), or the last trained."""
        if self.fixed_stage is not None:
            return self.fixed_stage
        if STAGE not in s.extra:
            return self.stage
        stages = sorted({int(v) for v in s.extra[STAGE].tolist()})
        if len(stages) != 1:
            raise ValueError(f"spo: a batch holds rows of stages {stages}; set data.stages so that each stage fills"
                             " whole steps")
        if stages[0] > len(self.lambdas):
            raise ValueError(f"spo: stage {stages[0]} keeps the {stages[0]} earlier dimensions, and the option lambdas"
                             f" gives {len(self.lambdas)} value(s); give one per earlier dimension")
        if torch.is_grad_enabled():  # a training step; validation reads the stage last trained
            self.stage = stages[0]
        return stages[0]

    def _scores_of(self, s: PairScores, i: int, k: int) -> tuple[Tensor, Tensor]:
        """``l_i`` of each side: the reference's for ``i = k``, else the extra reference ``stage_<i>``'s."""
        if i == k:
            return s.ref_chosen.float(), s.ref_rejected.float()
        key = f"ref_stage_{i}"
        if f"{key}_chosen" not in s.extra:
            raise ValueError(f"spo: stage {k} reads the model stage {i} started from (the extra reference 'stage_{i}',"
                             f" scores {key}_chosen/{key}_rejected); give model.extra_references.stage_{i}")
        return s.extra[f"{key}_chosen"].float(), s.extra[f"{key}_rejected"].float()

    def margins(self, s: PairScores) -> tuple[Tensor, Tensor]:
        """``sum_{j<k} lambda_j r_j(y)`` for the chosen and the rejected side, each ``[B]``."""
        k = self.current_stage(s)
        chosen = rejected = torch.zeros_like(s.chosen, dtype=torch.float32)
        for j, lam in enumerate(self.lambdas[:k]):
            if lam == 0:
                continue
            (later_c, later_r), (earlier_c, earlier_r) = self._scores_of(s, j + 1, k), self._scores_of(s, j, k)
            chosen = chosen + lam * self.beta * (later_c - earlier_c)
            rejected = rejected + lam * self.beta * (later_r - earlier_r)
        return chosen, rejected

    def preference(self, s: PairScores, k: int) -> Tensor:
        """+1 where dimension ``k`` prefers the row's chosen answer, -1 the rejected, 0 neither."""
        if self.dimensions is None:
            return torch.ones_like(s.chosen, dtype=torch.float32)
        if k >= len(self.dimensions):
            raise ValueError(f"spo: stage {k} aligns dimension {k}, and the data has {len(self.dimensions)}"
                             f" ({', '.join(self.dimensions)})")
        return s.extra[f"pref_{self.dimensions[k]}"].float()

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        chosen, rejected = self.rewards(s)
        sign = self.preference(s, self.current_stage(s))
        swap = sign < 0
        chosen, rejected = torch.where(swap, rejected, chosen), torch.where(swap, chosen, rejected)
        return self.logistic_or_hinge((chosen - rejected) * sign.abs()), chosen, rejected

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores, reduce)
        out.metrics["stage"] = torch.tensor(float(self.current_stage(scores)))
        return out


__all__ = ["SPO"]
