"""Objectives for denoising backbones (diffusion, flow matching): MaPO, Diffusion-KTO, SmPO, SePPO.

A denoising backbone scores a sample by ``s = -0.5 * e``, where ``e`` is the mean squared error of the
prediction against its target over the sample's elements, for one draw of noise and timestep shared by
both sides of a pair, policy and reference (the project's score convention, ``alignsuite.scores``). So ``e = -2 s`` and the
log-ratio is ``u = s - s_ref = -0.5 (e - e_ref)``.

**Diffusion-DPO is ``dpo``; it is not registered again.** Wallace et al. 2023, "Diffusion Model Alignment
Using Direct Preference Optimization": the official code computes
``-log s(-0.5 b [(e_w - e_l) - (e_w,ref - e_l,ref)])`` with ``b = 5000`` (its launchers ``launchers/sd15.sh``
and ``launchers/sdxl.sh`` both pass ``--beta_dpo 5000``). In scores that is exactly ``-log s(b (u_w - u_l))``,
i.e. ``dpo`` with ``beta=5000``. diffusers' SDXL script (``train_diffusion_dpo_sdxl.py``) keeps the -0.5
factor, so its default 5000 equals ours; only its SD 1.5 script (``train_diffusion_dpo.py``) drops the 0.5
and halves the default (``beta_dpo=2500``): the same loss as ours at 5000. Every published
beta assumes the *mean* over elements, never the sum.

Notation below: ``s`` the logistic sigmoid, ``b`` = ``beta``; ``e_w``/``e_l`` the errors of the chosen and
rejected image; ``u_w``/``u_l`` their log-ratios.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, PairwiseObjective, Reducer, as_float, register, reward_metrics
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.objectives.unpaired import KTO
from alignsuite.scores import PairScores, UnpairedScores
from alignsuite.views import View

# x / (e^x - 1) loses every digit to cancellation as x -> 0; below this |x| its Taylor series
# 1 - x/2 + x^2/12 is exact to ~1e-15 (the next term is -x^4/720).
_SERIES_CUT = 1e-3


def mapo_bounded_score(error: Tensor, snr_value: float) -> Tensor:
    """MaPO's bounded likelihood score ``g(e) = k e / (exp(k e) - 1)``, ``k`` = ``snr_value``; ``g(0) = 1``.

    In (0, 1] for ``e >= 0`` and decreasing. Each branch of the ``where`` sees only inputs from its own range
    (``clamp``), so neither puts an inf or a NaN into the gradient of the other: ``x e^-x / (1 - e^-x)`` for
    large positive ``x`` (no overflow), ``x / expm1(x)`` for negative ``x``, the series near 0.
    """
    x = snr_value * error.float()
    pos = x.clamp(min=_SERIES_CUT)
    neg = x.clamp(max=-_SERIES_CUT)
    positive = pos * torch.exp(-pos) / -torch.expm1(-pos)
    negative = neg / torch.expm1(neg)
    near = x.clamp(-_SERIES_CUT, _SERIES_CUT)
    series = 1 - near / 2 + near * near / 12
    return torch.where(x.abs() < _SERIES_CUT, series, torch.where(x > 0, positive, negative))


@register("mapo")
class MaPO(PairwiseObjective):
    """Margin-aware Preference Optimization: an SFT term on the winner plus a margin between bounded scores.

    With ``e = -2 s`` and ``g(e) = k e / (exp(k e) - 1)`` (:func:`mapo_bounded_score`), ``m = g(e_w) - g(e_l)``:

        L = mean(e_w) - b * mean(log s(T * m))

    Hong, Paul et al. 2024, "Margin-aware Preference Optimization for Aligning Diffusion Models without
    Reference" (code ``mapo-t2i/mapo``, ``utils.compute_loss``). No reference model: reference scores are
    ignored and the module loads none. Defaults are the official ones: ``beta`` (``beta_mapo``) 0.1,
    ``snr_value`` k = 0.5, ``num_train_timesteps`` T = 1000 (the scheduler's; T scales the margin "to maximize
    it throughout the denoising process"). With T = 1000 the logistic saturates once ``|m|`` passes ~0.01,
    after which only the SFT term moves the winner.

    Metrics: ``rewards/chosen`` = mean ``g(e_w)``, ``rewards/rejected`` = mean ``g(e_l)`` (and their margin and
    accuracy), ``mapo/winner_error`` and ``mapo/loser_error`` the mean errors, ``mapo/margin_loss`` the second
    term ``-b mean(log s(T m))``.
    """

    family = "denoising"
    paper = "Hong et al. 2024, arXiv 2406.06424"
    convention = "the official code's defaults (beta_mapo 0.1)"

    needs_reference = False

    def __init__(self, beta: float = 0.1, snr_value: float = 0.5, num_train_timesteps: int = 1000) -> None:
        super().__init__(beta=beta)
        if snr_value <= 0:
            raise ValueError(f"snr_value must be > 0, got {snr_value}")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        self.snr_value = snr_value
        self.num_train_timesteps = num_train_timesteps

    def _terms(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        chosen, rejected = as_float(s.chosen, s.rejected)
        e_w, e_l = -2 * chosen, -2 * rejected
        g_w, g_l = mapo_bounded_score(e_w, self.snr_value), mapo_bounded_score(e_l, self.snr_value)
        margin_losses = -self.beta * F.logsigmoid(self.num_train_timesteps * (g_w - g_l))
        return e_w, e_l, g_w, g_l, margin_losses

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        e_w, _, g_w, g_l, margin_losses = self._terms(s)
        return e_w + margin_losses, g_w, g_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        e_w, e_l, g_w, g_l, margin_losses = self._terms(scores)
        metrics = reward_metrics(g_w, g_l)
        metrics["mapo/winner_error"] = e_w.detach().mean()
        metrics["mapo/loser_error"] = e_l.detach().mean()
        metrics["mapo/margin_loss"] = margin_losses.detach().mean()
        return ObjectiveOutput((e_w + margin_losses).mean(), metrics)


def _in_error_units(s: UnpairedScores) -> UnpairedScores:
    """The same scores times 2, i.e. ``-e`` instead of ``-0.5 e``: their log-ratio is Diffusion-KTO's ``g``."""
    return UnpairedScores(2 * s.logps, s.label, ref_logps=2 * s.ref_logps, length=s.length, extra=s.extra)


@register("diffusion_kto")
class DiffusionKTO(KTO):
    """Diffusion-KTO: KTO on the denoising errors, its reference point taken from the batch's own rewards.

    With the implicit reward ``g_i = e_ref,i - e_i`` (``= 2 u_i``), labels ``y_i = +1`` (desirable) or ``-1``,
    the reference point ``z0 = max(0, mean_batch g)`` (detached, a mean over every process) and
    ``h_i = s(b y_i (g_i - z0))``:

        L = mean_i lambda_{y_i} (1 - h_i)

    Li et al. 2024, "Aligning Diffusion Models by Optimizing Human Utility" (NeurIPS 2024; code
    ``jacklishufan/diffusion-kto``, ``train_kto_sd_v1.5.py``, its default ``--halo sigmoid``). ``lambda_D`` =
    ``desirable_weight``, ``lambda_U`` = ``undesirable_weight`` (both 1 officially).

    **Beta convention**: ``beta`` multiplies ``g = 2u``, as in the official code (``beta_dpo``, default 1000).
    Since ``b (g - z0) = 2b (u - z0_u)``, ``diffusion_kto`` with ``beta = b`` is ``kto``'s loss with
    ``beta = 2b`` on the same scores, with z0 estimated from the batch's own examples instead of mismatched
    pairs: the default 1000 is KTO's 2000.

    Unlike ``kto`` it scores no mismatched pairs (its only view is the completion): the official z0 is the
    batch mean of ``g`` itself, all-reduced. This class reuses :class:`KTO`'s loss and metrics on scores
    rescaled to error units (``-e``), so ``reduce`` (the module's cross-process mean) receives the
    per-example ``g``. Noise and timestep are drawn independently per image there (unpaired data);
    that is the backbone's business.

    Metrics as ``kto``'s, in g units: ``rewards/chosen``/``rewards/rejected`` the mean ``b g`` over desirable
    and undesirable examples, ``rewards/accuracies`` the fraction with ``y b (g - z0) > 0`` (a tie counts one
    half; the official code counts ties as wrong), ``kl`` = z0, ``count/desirable``/``count/undesirable``.
    """

    family = "denoising"
    paper = "Li et al. 2024, arXiv 2404.04465"
    convention = "the official code's beta on g = 2u (1000); ties count one half (the code counts them wrong)"

    views = (View("completion"),)

    def __init__(self, beta: float = 1000.0, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__(beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)

    def reference_point(self, scores: UnpairedScores, reduce: Reducer | None = None) -> Tensor:
        """``z0 = max(0, mean(g))`` over the (global) batch, detached.

        ``scores`` are in error units (see :meth:`__call__`), so ``g = logps - ref_logps``.
        """
        reduce = reduce or torch.mean
        with torch.no_grad():
            neg_error, neg_ref_error = as_float(scores.logps.detach(), scores.ref_logps.detach())
            return reduce(neg_error - neg_ref_error).clamp(min=0)

    def __call__(self, scores: UnpairedScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        return super().__call__(_in_error_units(scores), reduce)


# The official PickScore bounds (JaydenLyh/SmPO train.py, ``min_val``/``max_val``): raw CLIP cosines, not x100.
PICKSCORE_MIN = 0.11543526500463486
PICKSCORE_MAX = 0.28201571106910706


@register("smpo")
class SmPO(PairwiseObjective):
    """Smoothed Preference Optimization: DPO weighted by how strongly a reward model prefers the chosen image.

    Each image's reward ``r`` is normalised ``r' = (r - reward_min) / (reward_max - reward_min)``; the pair's
    smoothed preference is ``p = exp(r'_w) / (exp(r'_w) + exp(r'_l))`` and, with ``D = u_w - u_l``:

        L = -log s(b * scale * (2p - 1) * D)

    Lu et al., ICML 2025, "Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion
    Models with Varied Human Preferences" (code ``JaydenLyh/SmPO``: the DPO logit scaled by
    ``-0.5 * beta_dpo * (2p - 1) * 10``, the code form of the paper's ``(2 alpha - gamma) beta``). ``scale`` = 10
    is that factor. ``beta`` default 5000 (the SDXL recipe; the SD 1.5 recipe uses 2000, from an SFT model).
    ``reward_min``/``reward_max`` default to the official PickScore bounds (raw cosines, 0.11544 / 0.28202).
    The loss goes to ``ln 2`` with no gradient as ``p -> 1/2`` (pairs the reward cannot tell apart).

    The rewards come from the batch columns ``reward_chosen``/``reward_rejected`` (``extra_columns``), which the
    module copies into ``scores.extra``. The official preprocessing re-orders each pair by the reward, so
    ``p >= 1/2``; if the columns disagree with the pair's order, ``2p - 1 < 0`` and the reward overrides the label.

    **Not implemented here: ReNoise inversion.** SmPO obtains each image's noise by inverting it with the
    current policy (a few DDIM-inverse steps, two predictions averaged per step, no grad) instead of forward
    noising; that is a backbone-side step (how noise is drawn), left for later. With forward noising this
    objective is the smoothed-label half of SmPO only.

    Metrics: the DPO reward metrics (``b u``) and ``smpo/preference`` = mean p.
    """

    family = "denoising"
    paper = 'Lu et al. 2025, "Smoothed Preference Optimization via ReNoise Inversion" (ICML 2025)'
    convention = "the official PickScore bounds as raw cosines"

    extra_columns = ("reward_chosen", "reward_rejected")

    def __init__(
        self,
        beta: float = 5000.0,
        scale: float = 10.0,
        reward_min: float = PICKSCORE_MIN,
        reward_max: float = PICKSCORE_MAX,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if not reward_max > reward_min:
            raise ValueError(f"reward_max must be > reward_min, got reward_min={reward_min}, reward_max={reward_max}")
        self.scale = scale
        self.reward_min = reward_min
        self.reward_max = reward_max

    def preference(self, s: PairScores) -> Tensor:
        """``p = exp(r'_w) / (exp(r'_w) + exp(r'_l)) = s(r'_w - r'_l)``, detached (a label, not a model output)."""
        missing = [c for c in self.extra_columns if c not in s.extra]
        if missing:
            raise ValueError(
                f"smpo needs a reward per image in scores.extra[{', '.join(map(repr, self.extra_columns))}]; "
                f"missing {', '.join(map(repr, missing))}. Give the data these columns (the module copies "
                "SmPO.extra_columns from each batch)."
            )
        r_w, r_l = as_float(s.extra["reward_chosen"].detach(), s.extra["reward_rejected"].detach())
        span = self.reward_max - self.reward_min
        return torch.sigmoid((r_w - self.reward_min) / span - (r_l - self.reward_min) / span)

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        p = self.preference(s)
        u_w, u_l = float_log_ratios(s)
        z = self.beta * self.scale * (2 * p - 1) * (u_w - u_l)
        return -F.logsigmoid(z), self.beta * u_w, self.beta * u_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores, reduce)
        out.metrics["smpo/preference"] = self.preference(scores).mean()
        return out


SePPOCriterion = Literal["anchor_fit", "always_loser"]


@register("seppo")
class SePPO(PairwiseObjective):
    """Semi-Policy Preference Optimization: the winner against a sample from a past checkpoint, which may win.

    Each pair is a winning image (chosen; the anchor) and a sample the reference model generated for the same
    prompt (rejected); the module provides both, and the reference is a past checkpoint (SePPO samples it
    uniformly from all earlier ones). With ``c`` in {+1, 0, -1} the anchor criterion's verdict (detached):

        L = -log s(b (u_w - c * u_l))

    ``c = +1``, the reference sample judged a loser: DPO, ``-log s(b (u_w - u_l))``. ``c = -1``, judged a
    winner: the sign of its term flips, ``-log s(b (u_w + u_l))``, which raises the likelihood of both images
    (SFT-like).

    Zhang, Lan et al. 2024, arXiv 2410.05255 v1, "SePPO: Semi-Policy Preference Optimization for Diffusion
    Alignment" ("Anchor-based Adaptive Flipper", AAF); v2 (2025), "Bridging SFT and DPO for Diffusion Model
    Alignment with Self-Sampling Preference Optimization" ("Self-Sampling Regularization").

    ``criterion``:
      - ``anchor_fit`` (default): ``c = sign(e_w,ref - e_w) = sign(u_w)``. The reference sample is a loser when
        the policy fits the anchor better than the reference does (``u_w > 0``), a winner when the reference
        fits it better (``u_w < 0``); at an exact tie ``c = 0`` (the reference-sample term drops out: there is
        no evidence either way).
      - ``always_loser``: ``c = +1``, plain DPO against self-generated losers (SPIN-Diffusion-like; the
        paper's "w/o AAF" ablation).

    **Source of the criterion, and what is unverified.** The training code was never released and the
    paper's text could not be read here. What was followed: the abstracts (the winning image is the anchor
    that judges whether the reference sample is likely a winner or a loser; when likely a winner the loss
    "switches from DPO to SFT"), and public reviews of the ICLR 2025 submission, which state that (i) the
    sign is computed from the current and reference models' prediction errors on the *winning* image, for
    the same noise draw, (ii) it multiplies the reference sample's term, so with sign -1 the logit becomes
    ``-b T w(t) (d_w + d_ref)`` (the two error differences added), and (iii) an ablation replaces the sign by
    an indicator ``1(x > 0)`` with nearly the same result. The direction (loser when the policy fits the
    anchor better, following the paper's Theorem 1 that lower expected error means a better model), the sign
    of the tie and the paper's own beta are inferences, not read from the paper. ``beta`` defaults to 5000,
    Diffusion-DPO's official value (SePPO builds on that code), in the same convention as ``dpo``.

    Metrics: the DPO reward metrics (``b u``) and ``seppo/flipped``, the fraction of pairs treated as winners
    (``c = -1``).
    """

    family = "denoising"
    paper = "Zhang et al. 2024, arXiv 2410.05255"
    convention = "Diffusion-DPO's official beta, in `dpo`'s convention"

    views = (View("chosen"), View("rejected", sampled=True))  # the losers: the reference's own samples

    def __init__(self, beta: float = 5000.0, criterion: SePPOCriterion = "anchor_fit", sft_weight: float = 0.0) -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if criterion not in get_args(SePPOCriterion):
            raise ValueError(f"criterion must be one of {get_args(SePPOCriterion)}, got {criterion!r}")
        self.criterion = criterion

    def reference_sign(self, u_w: Tensor) -> Tensor:
        """``c``: +1 where the reference sample is judged a loser, -1 a winner, 0 a tie; never differentiated."""
        if self.criterion == "always_loser":
            return torch.ones_like(u_w)
        return torch.sign(u_w.detach())

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        c = self.reference_sign(u_w)
        return -F.logsigmoid(self.beta * (u_w - c * u_l)), self.beta * u_w, self.beta * u_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores, reduce)
        u_w, _ = float_log_ratios(scores)
        out.metrics["seppo/flipped"] = (self.reference_sign(u_w) < 0).float().mean()
        return out


__all__ = ["DiffusionKTO", "MaPO", "SePPO", "SmPO", "mapo_bounded_score"]
