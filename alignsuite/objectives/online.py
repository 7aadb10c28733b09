"""The objectives the online loop fits with: regressions of log-ratios onto targets that a judge's numbers set.

Each reads the numbers the loop writes beside every built pair as batch columns (``extra_columns``; a text layout
carries them with ``TextPairs(number_fields={...})``): SPPO's estimated win rates ``chosen_win_rate`` and
``rejected_win_rate``, or a preference probability ``preference`` (``P(y_w > y_l)``, from a pairwise judge). INPO
reads a second reference instead, the previous iterate, as the extra reference ``previous``. Notation as in
:mod:`alignsuite.objectives.pairwise`: ``u = log pi(y) - log pi_ref(y)`` summed over the answer's tokens, ``b`` =
``beta``.
"""

from __future__ import annotations

import math

from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, as_float, register
from alignsuite.objectives.pairwise import float_log_ratios, probability_column
from alignsuite.scores import PairScores


@register("sppo")
class SPPO(PairwiseObjective):
    """Self-Play Preference Optimization with estimated win rates: each side's log-ratio regressed onto its
    win rate against the policy, centred and scaled by ``eta = 1/b``:

        L = 1/2 [ (u_w - (P_w - 1/2) / b)^2 + (u_l - (P_l - 1/2) / b)^2 ]

    with ``P_w``, ``P_l`` the columns ``chosen_win_rate`` and ``rejected_win_rate``: each answer's mean win
    probability against the K samples of its prompt (the loop's SPPO build rule; the research notes record that
    the official ``scripts/compute_prob.py`` counts the answer against itself too, one half over K). Logged
    rewards ``b * u``.

    Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment". The form is the official
    code's (uclaml/SPPO ``sppo/trainer.py``, ``loss_type="sppo"``): summed log-probs, the half in front, and the
    reference is the round's starting model (``sppo/run_sppo.py`` loads the reference from the same checkpoint
    as the policy), so the recipe gives a reference that the loop moves to each round's start. Default
    ``beta = 0.001``, the paper's ``eta = 1000``: the targets are hundreds of nats, which the paper pairs with a
    learning rate of 5e-7. With win rates 1 and 0 this is exactly half of ``sppo_hard`` (TRL's form, no half).
    """

    family = "online"
    paper = "Wu et al. 2024, arXiv 2405.00675"
    convention = ("official code (uclaml/SPPO, loss_type 'sppo'): halved sum of squares, summed log-probs; reference"
                  " = the round's starting model; win rates 1/0 give sppo_hard / 2")
    extra_columns = ("chosen_win_rate", "rejected_win_rate")

    def __init__(self, beta: float = 0.001) -> None:
        super().__init__(beta=beta)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        p_w = probability_column(s, "chosen_win_rate", "sppo")
        p_l = probability_column(s, "rejected_win_rate", "sppo")
        u_w, u_l = float_log_ratios(s)
        losses = 0.5 * ((u_w - (p_w - 0.5) / self.beta) ** 2 + (u_l - (p_l - 0.5) / self.beta) ** 2)
        return losses, self.beta * u_w, self.beta * u_l


@register("sppo_single")
class SPPOSingle(PairwiseObjective):
    """SPPO with one preference probability per pair in place of two win rates:

        L = 1/2 [ (u_w - (P - 1/2) / b)^2 + (u_l + (P - 1/2) / b)^2 ]

    with ``P`` the column ``preference``, ``P(y_w > y_l)``. Logged rewards ``b * u``.

    Wu et al. 2024 (arXiv 2405.00675); the official code's ``loss_type="sppo_single"`` (uclaml/SPPO
    ``sppo/trainer.py``). It is ``sppo`` with win rates ``P`` and ``1 - P``; at ``P = 1``, half of ``sppo_hard``.
    """

    family = "online"
    paper = "Wu et al. 2024, arXiv 2405.00675"
    convention = "official code (uclaml/SPPO, loss_type 'sppo_single'); P = 1 gives sppo_hard / 2"
    extra_columns = ("preference",)

    def __init__(self, beta: float = 0.001) -> None:
        super().__init__(beta=beta)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        shift = (probability_column(s, "preference", "sppo_single") - 0.5) / self.beta
        u_w, u_l = float_log_ratios(s)
        return 0.5 * ((u_w - shift) ** 2 + (u_l + shift) ** 2), self.beta * u_w, self.beta * u_l


@register("inpo")
class INPO(PairwiseObjective):
    """Iterative Nash Policy Optimization: one online mirror-descent step on the KL-regularised preference game,
    fitted as a regression on pairs from the previous iterate ``pi_t``:

        h = log pi(y_w)/pi(y_l) - eta*tau * log pi_ref(y_w)/pi_ref(y_l) - (1 - eta*tau) * log pi_t(y_w)/pi_t(y_l)
        L = (h - eta/2)^2

    (summed log-probs). ``pi_ref`` is the reference (the initial model); ``pi_t``, the previous iterate, is the
    extra reference ``previous`` (``model.extra_references.previous``, read as ``ref_previous_chosen`` and
    ``ref_previous_rejected``). The minimiser is the update ``pi_{t+1} ∝ pi_t^(1 - eta tau) pi_ref^(eta tau)
    exp(eta P(y > pi_t))``, so each side's logged reward is its share of ``h / eta``,
    ``(log pi(y) - eta tau log pi_ref(y) - (1 - eta tau) log pi_t(y)) / eta``, an estimate of ``P(y > pi_t)`` up
    to a constant; with ``pi_t = pi_ref`` it is ``u / eta``.

    Zhang et al. 2025, "Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret
    Learning" (ICLR 2025). The paper's text could not be read here: the equation follows the project's research
    notes (derived from the update above), and an independent public implementation of INPO on a bandit puts the
    coefficients in the same places. ``eta * tau`` must lie in [0, 1]: at 1 the previous iterate drops out and
    this is summed-log-prob IPO against ``pi_ref`` with ``beta = 1/eta``; at 0 the KL to the initial model
    drops out. Defaults (not the paper's, which were not read): ``eta = 10``, a target ``eta/2 = 5`` nats, IPO's
    at the suite's ``beta = 0.1``; ``tau = 0.01``, so ``eta tau = 0.1`` of each step pulls back to the initial
    model (the paper's ablation finds the KL term keeps answers from growing long).
    """

    family = "online"
    paper = "Zhang et al. 2025, arXiv 2407.00617"
    convention = ("research notes' equation (paper not read); summed log-probs; previous iterate = extra reference"
                  " `previous`; eta tau = 1 is summed-log-prob ipo with beta = 1/eta")
    extra_references = ("previous",)

    def __init__(self, eta: float = 10.0, tau: float = 0.01) -> None:
        if not (eta > 0 and math.isfinite(eta)):
            raise ValueError(f"eta must be a finite number > 0, got {eta}")
        if not (tau >= 0 and eta * tau <= 1):
            raise ValueError(f"tau must be >= 0 with eta * tau <= 1 (the weight on the initial model), got tau={tau}"
                             f" and eta={eta} (eta * tau = {eta * tau})")
        super().__init__(beta=1 / eta)
        self.eta, self.tau = eta, tau

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        for key in ("ref_previous_chosen", "ref_previous_rejected"):
            if key not in s.extra:
                raise ValueError(f"objective 'inpo' needs the previous iterate's scores {key!r} in scores.extra; give"
                                 " model.extra_references.previous (the round's starting checkpoint)")
        c, r, ref_c, ref_r = as_float(s.chosen, s.rejected, s.ref_chosen, s.ref_rejected)
        prev_c, prev_r = as_float(s.extra["ref_previous_chosen"].detach(), s.extra["ref_previous_rejected"].detach())
        k = self.eta * self.tau
        # Differences first: log pi - k log pi_ref - (1 - k) log pi_t = (log pi - log pi_t) + k (log pi_t - log pi_ref).
        g_w = (c - prev_c) + k * (prev_c - ref_c)
        g_l = (r - prev_r) + k * (prev_r - ref_r)
        return (g_w - g_l - self.eta / 2) ** 2, g_w / self.eta, g_l / self.eta


@register("online_ipo")
class OnlineIPO(PairwiseObjective):
    """Online IPO, the loss of EGPO (extragradient preference optimisation): the per-token mean log-ratio margin
    regressed onto the judge's centred preference:

        L = ( [m(y_w) - m(y_l)] - [m_ref(y_w) - m_ref(y_l)] - (P - 1/2) / b )^2

    with ``m = log pi / |y|`` the per-token mean and ``P`` the column ``preference``, ``P(y_w > y_l)`` from a
    pairwise judge. Logged rewards ``b * u / |y|``.

    Zhou, Fazel and Du 2025, "Extragradient Preference Optimization (EGPO): Beyond Last-Iterate Convergence for
    Nash Learning from Human Feedback" (COLM 2025). Follows the official code (zhourunlong/EGPO
    ``lms/trainers/extragradient_trainer.py``, ``ExtragradientTrainer._compute_losses`` with
    ``normalize_logprobs``): per-token means, and, for two samples drawn alike, the variance-reduced target
    ``(P(y > y') - 1/2) / b`` (``_compute_prefs`` pairs the judge's ``P(y > y')`` with 1/2); its rewards are
    ``b`` times the per-token mean log-ratios, as here. The code can also score prefixes of each answer
    (``prefix_chunk_num`` > 1) and average over them; here the whole answer is scored (one chunk). The
    extragradient step itself (snapshot, step, restore, optimiser state included) belongs to the loop. At
    ``P = 1`` this is ``ipo`` (length-normalised) with the same ``beta``. Default ``beta = 0.1``, the notes'.
    """

    family = "online"
    paper = "Zhou et al. 2025, arXiv 2503.08942"
    convention = ("official code (zhourunlong/EGPO _compute_losses, normalize_logprobs): per-token mean log-probs,"
                  " target (P - 1/2)/beta, whole answers (no prefix chunks); P = 1 gives ipo")
    extra_columns = ("preference",)

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__(beta=beta)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        p = probability_column(s, "preference", "online_ipo")
        u_w, u_l = float_log_ratios(s)
        len_w, len_l = as_float(s.chosen_len.clamp(min=1), s.rejected_len.clamp(min=1))
        u_w, u_l = u_w / len_w, u_l / len_l
        return (u_w - u_l - (p - 0.5) / self.beta) ** 2, self.beta * u_w, self.beta * u_l


__all__ = ["INPO", "OnlineIPO", "SPPO", "SPPOSingle"]
