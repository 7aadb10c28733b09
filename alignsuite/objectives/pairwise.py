"""Reference-based pairwise objectives: DPO and the losses built from the same log-ratios.

Notation: ``u_w = log pi(y_w) - log pi_ref(y_w)`` for the
chosen answer, ``u_l`` likewise for the rejected one, ``D = u_w - u_l``, ``s`` the logistic sigmoid,
``b`` = ``beta`` and ``eps`` = ``label_smoothing``. Each class returns per-pair losses and the implicit
rewards ``b * u``; :class:`PairwiseObjective` takes the batch mean, logs the reward metrics and adds the
optional RPO term ``sft_weight * NLL(y_w)``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import (
    PairwiseObjective,
    as_float,
    check_label_smoothing,
    register,
    smoothed_logistic,
)
from alignsuite.scores import PairScores

# exp() of a log-ratio overflows float32 past ~88. A ratio beyond e^50 (~5e21) means training has already
# diverged, so clamping the exponent there changes nothing a sane run sees and keeps loss and grad finite.
EXP_CAP = 50.0


def capped_exp(x: Tensor) -> Tensor:
    return torch.exp(x.clamp(max=EXP_CAP))


def float_log_ratios(s: PairScores) -> tuple[Tensor, Tensor]:
    """``(u_w, u_l)`` in float32; cast *before* subtracting, since two large bf16 log-probs lose the difference."""
    c, r, rc, rr = as_float(s.chosen, s.rejected, s.ref_chosen, s.ref_rejected)
    return c - rc, r - rr


def probability_column(s: PairScores, name: str, objective: str) -> Tensor:
    """The batch column ``name`` as float32 probabilities (a soft label per row); a missing column, or a value
    outside [0, 1] or not finite, is an error naming the column and the batch positions."""
    if name not in s.extra:
        raise ValueError(f"{objective} needs the batch column {name!r} in scores.extra; give the data that column"
                         f" (TextPairs number_fields: {{{name}: <field>}})")
    p = s.extra[name].detach().float()
    bad = ((p < 0) | (p > 1) | ~torch.isfinite(p)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{objective}: the column {name!r} must hold probabilities in [0, 1]; batch position(s)"
                         f" {bad} hold {p[bad].tolist()}")
    return p


FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]


def f_prime(u: Tensor, divergence: str, alpha: float) -> Tensor:
    """``f'(pi/pi_ref)`` of f-DPO, written in the log-ratio ``u``, up to an additive constant (it cancels in D)."""
    if divergence == "reverse_kl":  # f(r) = r log r,            f'(r) = log r + 1
        return u
    if divergence == "forward_kl":  # f(r) = -log r,             f'(r) = -1/r
        return -capped_exp(-u)
    if divergence == "js_divergence":  # f'(r) = log(2r / (1 + r)) = log 2 + log s(u)
        return F.logsigmoid(u)
    # alpha: f(r) = (r^(1-a) - (1-a) r - a) / (a (a-1)),  f'(r) = (1 - r^(-a)) / a
    return -capped_exp(-alpha * u) / alpha


@register("dpo")
class DPO(PairwiseObjective):
    """Direct Preference Optimization, and its f-divergence generalisation (f-DPO).

    ``L = -log s(b * [f'(r_w) - f'(r_l)])`` with ``r = pi/pi_ref``; for the default reverse KL
    ``f'(r) = log r + 1`` and this is DPO's ``-log s(b D)``.

    - DPO: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
      Model", Eq. 7.
    - f-DPO: Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
      Divergence Constraints", Table 1 / Eq. for the f-DPO loss. ``f_divergence`` picks f'(r), in ``u = log r``
      and up to constants that cancel: ``reverse_kl`` u; ``forward_kl`` ``-e^-u``; ``js_divergence``
      ``log s(u)``; ``alpha_divergence`` ``(1 - e^(-alpha u)) / alpha`` with ``alpha`` in (0, 1).

    Convention followed for alpha: the paper's, where alpha -> 0 recovers reverse KL and alpha -> 1 forward KL.
    Some implementations write ``e^((alpha-1) u) / (alpha-1)``, the mirrored parameterisation (alpha <-> 1-alpha);
    both agree at the default alpha = 0.5. Exponentials are capped (``EXP_CAP``) so extreme ratios stay finite.

    No label smoothing here (the current TRL meaning of ``sigmoid``); see ``robust`` and ``cdpo``.
    Logged rewards are ``b * u`` whatever the divergence.

    Over denoising scores (``s = -0.5 * mse``) this is Diffusion-DPO (Wallace et al. 2023) with the official
    beta, 5000: the official code writes ``-log s(-0.5 * beta_dpo * [(e_w - e_l) - (e_w,ref - e_l,ref)])``
    (SalesforceAIResearch/DiffusionDPO ``train.py``) and its launchers pass ``--beta_dpo 5000`` for SD 1.5
    and SDXL alike (``launchers/sd15.sh``, ``launchers/sdxl.sh``). diffusers' SDXL script
    (``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py``) keeps the -0.5 factor, so its
    default 5000 equals ours; only its SD 1.5 script (``train_diffusion_dpo.py``) drops the 0.5 and halves
    the beta (default 2500), the same loss as ours at 5000.
    """

    family = "pairwise"
    paper = "Rafailov et al. 2023, arXiv 2305.18290; f-DPO: Wang et al. 2023, arXiv 2309.16240"
    convention = "TRL's `sigmoid` (no label smoothing); over denoising scores it is Diffusion-DPO with the official beta 5000"

    def __init__(
        self,
        beta: float = 0.1,
        f_divergence: FDivergence = "reverse_kl",
        alpha: float = 0.5,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if f_divergence not in get_args(FDivergence):
            raise ValueError(f"f_divergence must be one of {get_args(FDivergence)}, got {f_divergence!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha (of the alpha-divergence) must be in (0, 1), got {alpha}")
        self.f_divergence = f_divergence
        self.alpha = alpha

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        margin = f_prime(u_w, self.f_divergence, self.alpha) - f_prime(u_l, self.f_divergence, self.alpha)
        return -F.logsigmoid(self.beta * margin), self.beta * u_w, self.beta * u_l


@register("robust")
class RobustDPO(PairwiseObjective):
    """Robust DPO: the unbiased loss under preference labels flipped with probability ``eps``.

    ``L = [-(1 - eps) log s(b D) + eps log s(-b D)] / (1 - 2 eps)``, ``eps`` in [0, 0.5).

    Chowdhury, Kini and Natarajan 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback"
    (ICML 2024). Unbiased means ``(1 - eps) L(D) + eps L(-D) = -log s(b D)``: in expectation over the label
    noise it is DPO. It is unbounded below for eps > 0 (that is the paper's loss, not a bug).
    Default eps = 0.1 (the typical value; at eps = 0 this is ``dpo``).
    """

    family = "pairwise"
    paper = "Chowdhury et al. 2024, arXiv 2403.00409"
    convention = "TRL's `robust`"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        z, eps = self.beta * (u_w - u_l), self.label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
        return losses, self.beta * u_w, self.beta * u_l


@register("cdpo")
class CDPO(PairwiseObjective):
    """Conservative DPO: DPO against a label that is wrong with probability ``eps``.

    ``L = -(1 - eps) log s(b D) - eps log s(-b D)``, ``eps`` in [0, 0.5).

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO". This is what TRL <= 0.28
    computed for ``sigmoid`` with ``label_smoothing``. Unlike ``robust`` it is bounded below and its optimum
    keeps ``s(b D) = 1 - eps`` instead of pushing the margin to infinity. Default eps = 0.1.

    ``label_column`` names a batch column of soft labels ``p`` (the probability that ``y_w`` is preferred, one per
    row): the label is then ``p`` rather than 1, and ``L = -[q log s(b D) + (1 - q) log s(-b D)]`` with
    ``q = (1 - eps) p + eps (1 - p)``, that label flipped with probability ``eps``. With ``label_smoothing: 0``
    it is the soft-preference cross-entropy of online self-preferring (OSP; "Online Self-Preferring Language
    Models", 2024), ``p`` the self-judged preference strength; a column of ones gives back plain cDPO.
    """

    family = "pairwise"
    paper = 'Mitchell 2023, "A note on DPO with noisy preferences"'
    convention = "TRL <= 0.28's `sigmoid` with label smoothing; label_column: per-row soft labels (OSP)"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1, sft_weight: float = 0.0,
                 label_column: str | None = None) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        check_label_smoothing(label_smoothing)
        if label_column is not None and (not isinstance(label_column, str) or not label_column):
            raise ValueError(f"label_column must name a batch column, got {label_column!r}")
        self.label_smoothing = label_smoothing
        self.label_column = label_column
        if label_column is not None:
            self.extra_columns = (label_column,)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        z = self.beta * (u_w - u_l)
        if self.label_column is None:
            return smoothed_logistic(z, self.label_smoothing), self.beta * u_w, self.beta * u_l
        p = probability_column(s, self.label_column, f"cdpo (label_column {self.label_column!r})")
        q = ((1 - self.label_smoothing) * p + self.label_smoothing * (1 - p)).to(z.dtype)
        return -q * F.logsigmoid(z) - (1 - q) * F.logsigmoid(-z), self.beta * u_w, self.beta * u_l


@register("ipo")
class IPO(PairwiseObjective):
    """Identity Preference Optimization: regress the log-ratio margin onto a fixed target.

    ``L = (D' - 1/(2 b))**2``, where ``b`` is the paper's tau and, with ``length_normalize`` (default),
    ``D' = u_w/|y_w| - u_l/|y_l|``; without it ``D' = D`` (summed log-ratios, as OpenRLHF does).

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", Eq. 17.
    The paper does not say how to reduce over tokens; length normalisation is TRL's choice, which its code
    says was confirmed with the authors. Logged rewards are ``b`` times the log-ratios the loss sees
    (per token when normalised), so the accuracy matches the loss.
    """

    family = "pairwise"
    paper = "Azar et al. 2023, arXiv 2310.12036"
    convention = "length-normalised log-ratios (TRL's choice; the paper does not say)"

    def __init__(self, beta: float = 0.1, length_normalize: bool = True, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        self.length_normalize = length_normalize

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        if self.length_normalize:
            len_w, len_l = as_float(s.chosen_len.clamp(min=1), s.rejected_len.clamp(min=1))
            u_w, u_l = u_w / len_w, u_l / len_l
        losses = (u_w - u_l - 1 / (2 * self.beta)) ** 2
        return losses, self.beta * u_w, self.beta * u_l


@register("hinge")
class Hinge(PairwiseObjective):
    """Hinge (SLiC-HF calibration loss, in RSO's reference-normalised form).

    ``L = max(0, 1 - b D)``.

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (margin delta, no
    reference); Liu et al. 2024, "Statistical Rejection Sampling Improves Preference Optimization" (hinge on
    the log-ratios, ``b = 1/delta``). We follow RSO: the reference is used, and ``b`` is the inverse margin.
    """

    family = "pairwise"
    paper = "Zhao et al. 2023, arXiv 2305.10425; Liu et al. 2023, arXiv 2309.06657"
    convention = "TRL's `hinge`"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        return torch.relu(1 - self.beta * (u_w - u_l)), self.beta * u_w, self.beta * u_l


@register("nca_pair")
class NCAPair(PairwiseObjective):
    """Noise Contrastive Alignment, pairwise form: rewards judged one by one, not only by their difference.

    ``L = -log s(b u_w) - 1/2 log s(-b u_w) - 1/2 log s(-b u_l)``.

    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards" (NCA with K = 2
    and a binary preference). Unlike DPO it keeps the chosen likelihood from falling.
    """

    family = "pairwise"
    paper = "Chen et al. 2024, arXiv 2402.05369"
    convention = "TRL's `nca_pair`"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        r_w, r_l = self.beta * u_w, self.beta * u_l
        losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
        return losses, r_w, r_l


@register("bco_pair")
class BCOPair(PairwiseObjective):
    """Binary Classifier Optimization on pairs: chosen classified as good, rejected as bad.

    ``L = -log s(b u_w - delta) - log s(-(b u_l - delta))`` with ``delta = 0``.

    Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment". The paper's
    ``delta`` is a running mean of the rewards; we follow current TRL and drop it (delta = 0), which keeps the
    objective a pure function of the batch (a running mean would be state that DDP ranks must agree on).
    """

    family = "pairwise"
    paper = "Jung et al. 2024, arXiv 2404.04656"
    convention = "TRL's `bco_pair`: the running reward shift is dropped (delta = 0)"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        r_w, r_l = self.beta * u_w, self.beta * u_l
        return -F.logsigmoid(r_w) - F.logsigmoid(-r_l), r_w, r_l


@register("sppo_hard")
class SPPOHard(PairwiseObjective):
    """Self-Play Preference Optimization with hard win probabilities.

    ``L = (u_w - eta/2)**2 + (u_l + eta/2)**2`` with ``eta = 1/b``.

    Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment": the SPPO loss
    ``(u - eta (P - 1/2))**2`` with the win probability P set to 1 for the chosen and 0 for the rejected answer.
    """

    family = "pairwise"
    paper = "Wu et al. 2024, arXiv 2405.00675"
    convention = "TRL's `sppo_hard`"

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        half_eta = 1 / (2 * self.beta)
        return (u_w - half_eta) ** 2 + (u_l + half_eta) ** 2, self.beta * u_w, self.beta * u_l


@register("exo_pair")
class EXOPair(PairwiseObjective):
    """Efficient Exact Optimization, pairwise: reverse KL from the model's preference to a smoothed label.

    With ``p = s(b D)``: ``L = p [log p - log(1 - eps)] + (1 - p) [log(1 - p) - log eps]``
    = KL(Bernoulli(p) || Bernoulli(1 - eps)).

    Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment", Eq. 16 (K = 2).
    ``eps`` must be > 0 (log eps); 1e-3 is the recommended value. Older TRL silently replaced eps = 0 by 1e-3;
    we raise instead.
    """

    family = "pairwise"
    paper = "Ji et al. 2024, arXiv 2402.00856"
    convention = "TRL's `exo_pair`; label_smoothing must be > 0"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 1e-3, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if label_smoothing <= 0:
            raise ValueError(
                f"exo_pair needs label_smoothing > 0 (its loss takes log(label_smoothing)); got {label_smoothing}. "
                "The EXO paper recommends 1e-3."
            )
        check_label_smoothing(label_smoothing, positive=True)
        self.label_smoothing = label_smoothing

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        z, eps = self.beta * (u_w - u_l), self.label_smoothing
        log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)
        losses = log_p.exp() * (log_p - math.log1p(-eps)) + log_q.exp() * (log_q - math.log(eps))
        return losses, self.beta * u_w, self.beta * u_l


@register("discopop")
class DiscoPOP(PairwiseObjective):
    """DiscoPOP, the log-ratio modulated loss (LRML) found by LLM-driven objective discovery.

    With ``z = b D`` and ``m = s(z / tau)``: ``L = (1 - m) * (-log s(z)) + m * exp(-z)``, ``tau`` = ``discopop_tau``.

    Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language Models",
    Eq. 5 (tau = 0.05). A blend of the logistic (DPO) and exponential losses, switched by the sign of the
    margin. The loss is non-convex: for ``|z|`` within a few tau of 0 its gradient in z is positive
    (checked in the tests), so it does not push every margin up. ``m * exp(-z)`` is evaluated as
    ``exp(log s(z/tau) - z)`` so that 0 * inf never happens at large negative margins.
    """

    family = "pairwise"
    paper = "Lu et al. 2024, arXiv 2406.08414"
    convention = "TRL's `discopop`"

    def __init__(self, beta: float = 0.1, discopop_tau: float = 0.05, sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if discopop_tau <= 0:
            raise ValueError(f"discopop_tau must be > 0, got {discopop_tau}")
        self.discopop_tau = discopop_tau

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        z = self.beta * (u_w - u_l)
        logistic = torch.sigmoid(-z / self.discopop_tau) * -F.logsigmoid(z)  # (1 - m) = s(-z/tau), exactly
        exponential = capped_exp(F.logsigmoid(z / self.discopop_tau) - z)
        return logistic + exponential, self.beta * u_w, self.beta * u_l


__all__ = [
    "BCOPair",
    "CDPO",
    "DPO",
    "DiscoPOP",
    "EXOPair",
    "Hinge",
    "IPO",
    "NCAPair",
    "RobustDPO",
    "SPPOHard",
    "probability_column",
]
