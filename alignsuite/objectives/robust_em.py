"""RE-PO: pairwise losses with each label weighted by the posterior that it is right, inferred by
expectation-maximisation, for DPO, IPO, SimPO and CPO.

Notation as in :mod:`alignsuite.objectives.pairwise`, ``s`` the logistic sigmoid. Each recorded label ("``y_w``
beats ``y_l``") is right with probability ``eta``, the annotator's reliability; the objective keeps ``eta`` across
steps as state (saved in checkpoints, like unpaired BCO's running mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, PairwiseObjective, Reducer, register, reward_metrics
from alignsuite.objectives.pairwise import DPO, IPO
from alignsuite.objectives.reference_free import CPO, CompletionNLL, SimPO
from alignsuite.scores import PairScores

PAPER = "Cao et al. 2026, arXiv 2509.24159"
EM_ORDER = "EM order: weights from the previous eta, then eta <- (1 - alpha) eta + alpha mean(w) over the global batch"


def flipped(s: PairScores) -> PairScores:
    """The same pairs under the other label: chosen and rejected swapped, with their reference scores and lengths."""
    return PairScores(s.rejected, s.chosen, s.ref_rejected, s.ref_chosen, s.rejected_len, s.chosen_len, s.extra)


class RobustEM(PairwiseObjective):
    """RE-PO's robust form of the pairwise loss of the class it is mixed into (``class REIPO(RobustEM, IPO)``).

    With ``l`` the base's per-pair loss under the recorded label, ``l'`` its loss under the flipped one (chosen
    and rejected swapped), ``x`` the margin of the base's logged rewards (chosen minus rejected: ``b D`` for DPO),
    ``p(x)`` the probability that the recorded label is right as the base reads its margin, and ``eta`` the
    reliability of the row's annotator:

        E-step:  w = p eta / (p eta + (1 - p)(1 - eta)) = s(logit(p) + logit(eta))      (detached)
        loss:    L = w l + (1 - w) l'
        M-step:  eta <- (1 - alpha) eta + alpha * mean(w)       (mean over the global batch's rows)

    ``p`` is the probability the base's loss is calibrated to: the one for which the expected loss over the two
    labels, ``p l + (1 - p) l'``, is stationary at ``x`` (``p = l'_x / (l'_x - l_x)``, the derivatives in
    ``x``). For a logistic loss ``-log s(x)`` it is the base's own model, ``s(x)``, and RE-PO is exactly EM on
    that likelihood (DPO, CPO); each other base says its own (:meth:`log_odds`). With it,
    ``dL/dx = (l'_x - l_x)(p - w)``: the base's gradient with the label's 1 replaced by ``w``, and since
    ``w > p`` whenever ``eta > 1/2``, the margin always widens (short of a target the base regresses onto, as
    IPO's); a pair the model finds unlikely (``p`` small) gets ``w`` near ``1 - eta``, so it pulls less.

    The order is EM's: this step's weights use the ``eta`` the previous steps left, and ``eta`` is then updated
    with them, so the next step sees the new value. ``w`` is computed in its logistic form, and is 1 at
    ``eta`` = 1 whatever ``p`` (the ratio form would give 0/0 for a saturated ``p``): with ``eta0: 1`` every
    weight is 1 and so is every later ``eta``, and the loss, its gradient and the base's metrics are the base's
    exactly. A term the base adds to the batch mean (``sft_weight``, CPO's NLL) is added as the base adds it, on
    the recorded chosen answers and unweighted: the posterior weighs the preference term.

    ``eta`` moves only in training (calls with gradients enabled; validation reads it). Under several processes
    ``mean(w)`` is the global batch's, through ``reduce`` (the module's mean over processes), so every process
    keeps the same ``eta``. The state (``eta`` and the number of updates, ``steps``) is saved with each
    checkpoint and restored on resume.

    Several annotators (the paper's multi-annotator setting, one reliability each): ``annotator_column`` names a
    batch column of integer annotator ids in ``[0, num_annotators)``; each row's ``w`` uses its annotator's
    ``eta``, and each ``eta_k`` moves with the mean ``w`` of its own rows in the global batch (left as it is
    when the batch has none of them). The data must carry the column in validation too (``FlipPairs`` with
    ``annotator_rates`` deals the annotators out).

    Metrics: the base's, ``weight_mean`` (this process's mean ``w``), ``eta`` (after this step's update; the mean
    over annotators when there are several, each also as ``eta/<k>``).
    """

    def reliability(self, eta0: float, alpha: float, annotator_column: str | None, num_annotators: int) -> None:
        """Check and keep the options of the reliabilities (``alpha`` is kept as ``eta_step``: DPO's ``alpha``,
        of its alpha-divergence, is another thing), and start every ``eta`` at ``eta0``."""
        name = self.name
        if not 0 < eta0 <= 1:
            raise ValueError(f"{name}: eta0 (the initial annotator reliability) must be in (0, 1], got {eta0}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"{name}: alpha (the step of eta's moving average) must be in [0, 1], got {alpha}")
        if isinstance(num_annotators, bool) or not isinstance(num_annotators, int) or num_annotators < 1:
            raise ValueError(f"{name}: num_annotators must be an integer >= 1, got {num_annotators!r}")
        if annotator_column is not None and (not isinstance(annotator_column, str) or not annotator_column):
            raise ValueError(f"{name}: annotator_column must name a batch column of annotator ids, got"
                             f" {annotator_column!r}")
        if num_annotators > 1 and annotator_column is None:
            raise ValueError(f"{name}: num_annotators is {num_annotators}: give annotator_column, the batch column"
                             " that says which annotator labelled each row")
        self.eta0, self.eta_step = float(eta0), float(alpha)
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
            raise ValueError(f"{self.name}: the checkpoint holds {len(eta)} annotator reliabilities, and this run"
                             f" has num_annotators {self.num_annotators}")
        self.eta, self.steps = eta, int(state["steps"])

    def annotators(self, s: PairScores) -> Tensor:
        """Each row's annotator id (all 0 without ``annotator_column``); a bad id is an error naming the positions."""
        if self.annotator_column is None:
            return torch.zeros(s.chosen.shape[0], dtype=torch.long, device=s.chosen.device)
        name = self.annotator_column
        if name not in s.extra:
            raise ValueError(f"{self.name} needs the batch column {name!r} (annotator_column) in scores.extra; give"
                             f" the data that column (TextPairs number_fields: {{{name}: <field>}}, or FlipPairs'"
                             " annotator_rates)")
        ids = s.extra[name].detach()
        bad = ((ids != ids.round()) | (ids < 0) | (ids >= self.num_annotators) | ~torch.isfinite(ids.double()))
        if bad.any():
            positions = bad.nonzero().flatten().tolist()
            raise ValueError(f"{self.name}: the column {name!r} must hold annotator ids, integers in"
                             f" [0, {self.num_annotators}) (num_annotators); batch position(s) {positions} hold"
                             f" {ids[positions].tolist()}")
        return ids.long().to(s.chosen.device)

    def log_odds(self, margin: Tensor) -> Tensor:
        """``logit(p)``, the log-odds that the recorded label is right, from the margin of the base's rewards:
        the margin itself for a logistic loss."""
        return margin

    def weights(self, log_odds: Tensor, ids: Tensor) -> Tensor:
        """E-step: ``w = s(log_odds + logit(eta))``, the posterior that each row's label is right (detached);
        1 where ``eta`` is 1 and 0 where it is 0, whatever the model says (an infinite ``log_odds`` included)."""
        eta = torch.tensor(self.eta, dtype=log_odds.dtype, device=log_odds.device)[ids]
        w = torch.sigmoid(log_odds.detach() + torch.logit(eta))
        return torch.where(eta >= 1, 1.0, torch.where(eta <= 0, 0.0, w)).to(log_odds.dtype)

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
                self.eta[k] += self.eta_step * (float(total) / float(n) - self.eta[k])
        self.steps += 1

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair robust losses and the base's rewards at the current ``eta`` (which this does not move)."""
        losses, _, _, chosen, rejected = self._losses(s)
        return losses, chosen, rejected

    def _losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        recorded, chosen, rejected = super().pair_losses(s)
        other, _, _ = super().pair_losses(flipped(s))
        ids = self.annotators(s)
        w = self.weights(self.log_odds((chosen - rejected).detach()), ids)
        return w * recorded + (1 - w) * other, w, ids, chosen, rejected

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


@register("re_dpo")
class REDPO(RobustEM, DPO):
    """RE-DPO: DPO where each pair's label is weighted by the posterior probability that it is correct
    (:class:`RobustEM` over ``dpo``'s reverse-KL loss; its f-divergences are not offered here).

    With ``z = b (u_w - u_l)`` and the row's annotator's ``eta``: ``p = s(z)``, ``w = s(z + logit(eta))``,
    ``L = -[w log s(z) + (1 - w) log s(-z)]``, ``eta <- (1 - alpha) eta + alpha mean(w)``.

    Cao et al. 2026, "RE-PO: Robust Enhanced Policy Optimization as a General Framework for LLM Alignment"
    (ICLR 2026, arXiv 2509.24159; first titled LCPO). The paper's text could not be read here: the equations,
    the moving-average M-step for ``eta`` and its defaults (``eta0`` 0.9, ``alpha`` 0.1) follow the project's
    research note on the paper; its abstract and project page confirm the EM posterior per label, the
    per-annotator reliabilities with a moving-average update, and the four bases (DPO, IPO, SimPO, CPO).
    """

    family = "pairwise"
    paper = PAPER
    convention = f"{EM_ORDER}; equations from a note on the paper (its text not read)"

    def __init__(self, beta: float = 0.1, eta0: float = 0.9, alpha: float = 0.1, annotator_column: str | None = None,
                 num_annotators: int = 1, sft_weight: float = 0.0) -> None:
        DPO.__init__(self, beta=beta, sft_weight=sft_weight)
        self.reliability(eta0, alpha, annotator_column, num_annotators)


@register("re_ipo")
class REIPO(RobustEM, IPO):
    """RE-IPO: ``ipo`` made robust by :class:`RobustEM`.

    With ``D'`` the margin ``ipo`` regresses (per token with ``length_normalize``) and ``c = 1/(2 b)``:
    ``l = (D' - c)^2``, ``l' = (D' + c)^2``, ``p = clip(1/2 + b D', 0, 1)``, ``w = s(logit(p) + logit(eta))``
    and ``L = w (D' - c)^2 + (1 - w)(D' + c)^2``, whose gradient ``dL/dD' = 4 c (p - w)`` is IPO's
    (``4 c (p - 1)``) with the label's 1 replaced by ``w``.

    Cao et al. 2026 (arXiv 2509.24159), whose abstract robustifies "a broad class of preference losses" through
    the probabilistic models they induce, exactly for the likelihood-style ones; its IPO form could not be read.
    IPO's squared loss is not a likelihood. The probability taken here is the one IPO's margin is calibrated to:
    IPO's expected loss under a label right with probability ``p`` is least at ``D' = c (2p - 1)`` (Azar et al.
    2023), so a margin ``D'`` reads as ``p = 1/2 + b D'``; past the target (``|D'| >= c``) the model is sure
    and ``w`` is 1 or 0 whatever ``eta`` (but 1 at ``eta`` 1). The other reading, ``P(label) ∝ exp(-loss)``,
    gives ``p = s(2 D'/b)``, far steeper (s(20 D') at ``b`` 0.1): a pair whose margin is a little negative
    would count as flipped at once and be pushed further the wrong way.
    """

    family = "pairwise"
    paper = PAPER
    convention = (f"{EM_ORDER}; p = clip(1/2 + b D', 0, 1), the preference IPO's margin is calibrated to (the"
                  " paper's IPO posterior not read)")

    def __init__(self, beta: float = 0.1, length_normalize: bool = True, sft_weight: float = 0.0, eta0: float = 0.9,
                 alpha: float = 0.1, annotator_column: str | None = None, num_annotators: int = 1) -> None:
        IPO.__init__(self, beta=beta, length_normalize=length_normalize, sft_weight=sft_weight)
        self.reliability(eta0, alpha, annotator_column, num_annotators)

    def log_odds(self, margin: Tensor) -> Tensor:
        return torch.logit((0.5 + margin).clamp(0.0, 1.0))  # margin = b D'


@register("re_simpo")
class RESimPO(RobustEM, SimPO):
    """RE-SimPO: ``simpo`` made robust by :class:`RobustEM` (no reference).

    With ``x = b (m_w - m_l)``: ``l = -log s(x - gamma)``, ``l' = -log s(-x - gamma)``,
    ``p = s(x + gamma) / (s(x + gamma) + s(gamma - x))``, ``w = s(logit(p) + logit(eta))``, ``L = w l + (1 - w) l'``.

    Cao et al. 2026 (arXiv 2509.24159; its SimPO posterior could not be read). SimPO's Bradley-Terry model with a
    target margin, ``s(x - gamma)``, and its flipped twin ``s(-x - gamma)`` do not sum to one, so neither is
    the probability of the recorded label: ``s(x - gamma)`` would call a tie (``x = 0``) more likely wrong than
    right and pull every weight, and so ``eta``, down until the margins pass ``gamma``. ``p`` here is the one
    SimPO's loss is calibrated to (its expected loss over the two labels is stationary at ``x``): 1/2 at a tie,
    ``s(x)`` at ``gamma = 0``, and ``w > p`` still widens every margin.
    """

    family = "reference-free"
    paper = PAPER
    convention = (f"{EM_ORDER}; p = s(x + gamma) / (s(x + gamma) + s(gamma - x)), the preference SimPO's margin is"
                  " calibrated to (1/2 at a tie; the paper's SimPO posterior not read)")

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, sft_weight: float = 0.0,
                 nll: CompletionNLL = "completion_pooled", eta0: float = 0.9, alpha: float = 0.1,
                 annotator_column: str | None = None, num_annotators: int = 1) -> None:
        SimPO.__init__(self, beta=beta, gamma=gamma, sft_weight=sft_weight, nll=nll)
        self.reliability(eta0, alpha, annotator_column, num_annotators)

    def log_odds(self, margin: Tensor) -> Tensor:
        return F.logsigmoid(margin + self.gamma) - F.logsigmoid(self.gamma - margin)  # margin = b (m_w - m_l)


@register("re_cpo")
class RECPO(RobustEM, CPO):
    """RE-CPO: ``cpo`` made robust by :class:`RobustEM` (no reference).

    With ``z = b (l_w - l_l)``: ``p = s(z)``, CPO's own model, ``w = s(z + logit(eta))`` and
    ``L = -[w log s(z) + (1 - w) log s(-z)] + cpo_alpha * NLL(y_w)``: the NLL anchor stays on the recorded
    chosen answers, pooled as ``cpo``'s, and unweighted. No label smoothing: it is a fixed flip rate, which
    ``eta`` estimates here.

    Cao et al. 2026 (arXiv 2509.24159; how its RE-CPO treats the NLL term could not be read). Weighing the NLL
    by ``w`` too would need a per-pair NLL, while ``cpo``'s (TRL's) pools tokens over the batch; keeping it as
    the base has it also keeps the reduction to ``cpo`` at ``eta0: 1`` exact.
    """

    family = "reference-free"
    paper = PAPER
    convention = (f"{EM_ORDER}; the posterior weighs the preference term, cpo's pooled NLL stays on the recorded"
                  " chosen answers (the paper's RE-CPO not read); no label smoothing")

    def __init__(self, beta: float = 0.1, cpo_alpha: float = 1.0, nll: CompletionNLL = "completion_pooled",
                 eta0: float = 0.9, alpha: float = 0.1, annotator_column: str | None = None,
                 num_annotators: int = 1) -> None:
        CPO.__init__(self, beta=beta, cpo_alpha=cpo_alpha, nll=nll)
        self.reliability(eta0, alpha, annotator_column, num_annotators)


__all__ = ["RECPO", "REDPO", "REIPO", "RESimPO", "RobustEM", "flipped"]
