"""Weak-to-strong objectives: the policy learns what aligning a weaker model changed, read from two extra references
(:mod:`alignsuite.extra_references`) that share its tokenizer."""

from __future__ import annotations

from alignsuite.objectives.base import register
from alignsuite.objectives.token_level import TokenObjective, token_ratios
from alignsuite.scores import TokenScores


@register("wspo")
class WSPO(TokenObjective):
    """Weak-to-strong preference optimisation: per token of the chosen answer, the policy's log-ratio to its
    reference (scaled by ``beta``) is regressed onto the weak pair's log-ratio, the weak aligned model's token
    log-prob minus its own pre-alignment base's:

        L = (1 / |y_w|) * sum_t ( beta * [l_t - l_ref,t] - [l^aligned_t - l^base_t] )^2

    Zhu et al. 2025, "Weak-to-Strong Preference Optimization: Stealing Reward from Weak Aligned Model" (ICLR). The
    weak pair are the extra references ``weak_base`` and ``weak_aligned`` (``model.extra_references``): checkpoints
    with the policy's tokenizer, so their tokens line up with its own. Only the chosen answer enters the loss; the
    rejected one is scored for the reward metrics. ``beta`` scales the strong side: at 0.1 the policy moves ten
    times the weak model's shift.
    """

    family = "token-level"
    paper = "Zhu et al. 2025, ICLR (OpenReview f7KxfUrRSb)"
    convention = ("official code (zwhong714/weak-to-strong-preference-optimization, compute_preference_loss_wspo):"
                  " squared error summed over the chosen answer's tokens over its length, batch mean; rewards are"
                  " beta * (policy - reference) log-ratios per side (the official code logs beta * log pi(y_w))")
    extra_references = ("weak_base", "weak_aligned")

    def token_losses(self, s: TokenScores):
        for key in ("ref_weak_base_chosen", "ref_weak_aligned_chosen"):
            if key not in s.extra:
                raise ValueError(f"objective 'wspo' needs the weak pair's per-token scores {key!r} in scores.extra;"
                                 " give model.extra_references weak_base and weak_aligned")
        u_w, u_l = token_ratios(s)
        weak = (s.extra["ref_weak_aligned_chosen"].float() - s.extra["ref_weak_base_chosen"].float())
        weak = weak.masked_fill(~s.chosen_mask, 0)
        error = (self.beta * u_w - weak).masked_fill(~s.chosen_mask, 0)
        losses = error.pow(2).sum(1) / s.chosen_mask.sum(1).clamp(min=1)
        metrics = {"wspo/weak_ratio": (weak.sum(1) / s.chosen_mask.sum(1).clamp(min=1)).mean().detach()}
        return losses, self.beta * u_w.sum(1).detach(), self.beta * u_l.sum(1).detach(), metrics


__all__ = ["WSPO"]
