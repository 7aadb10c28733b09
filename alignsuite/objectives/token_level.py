"""Token-level objectives: losses that weigh, mask or regularise the tokens of each answer
(:class:`~alignsuite.scores.TokenScores`, ``[B, T]`` per side).

Notation (``research/families.md`` §0.1, §3): per token ``u_t = l_t - l_ref,t``, ``KL_t = KL(ref || policy)`` over the
full vocabulary at token t, ``u = sum_t u_t``, ``K(y) = sum_t KL_t``. Each objective declares what it reads per token
(``token_needs``): the module asks a token backbone and a live reference for exactly that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignsuite.objectives.base import Objective, ObjectiveOutput, Reducer, register, reward_metrics
from alignsuite.scores import TokenNeeds, TokenOutputs, TokenScores


class TokenObjective(Objective):
    """A pairwise objective over per-token scores. Subclasses implement :meth:`token_losses`."""

    family = "token-level"
    token_needs = TokenNeeds()

    def __init__(self, beta: float = 0.1) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = beta

    def token_losses(self, s: TokenScores) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``(losses [B], chosen_rewards [B], rejected_rewards [B], further metrics)``."""
        raise NotImplementedError

    def pack(self, policy: TokenOutputs, ref: TokenOutputs | None, batch: dict) -> TokenScores:
        """The backbone's per-token outputs (view-major: chosen rows, then rejected) as ``[B, T]`` per side;
        ``extra`` gets ``chosen_self_norm``/``rejected_self_norm`` (``[B, T]``, WPO), ``chosen_ref_hidden``/
        ``rejected_ref_hidden`` (``[B, T, L, H]``, the reference's every layer: SparsePO, FPO) and ``chosen_hidden``/
        ``rejected_hidden`` (``[B, T, H]``, the policy's one layer: FPO) where the objective declared them."""
        def halves(name: str, outputs: TokenOutputs | None) -> tuple[Tensor | None, Tensor | None]:
            if outputs is None or getattr(outputs, name) is None:
                return None, None
            return outputs.laid_out(name)[0].to(logps.device).chunk(2)

        logps, mask = policy.laid_out()
        chosen, rejected = logps.chunk(2)
        chosen_mask, rejected_mask = mask.chunk(2)
        extra = {}
        for name, source, key in (("self_norm", policy, "self_norm"), ("hidden", ref, "ref_hidden"),
                                  ("hidden", policy, "hidden")):
            c, r = halves(name, source)
            if c is not None:
                extra[f"chosen_{key}"], extra[f"rejected_{key}"] = c, r
        return TokenScores(chosen, rejected, chosen_mask, rejected_mask, *halves("logps", ref), *halves("kl", policy),
                           extra=extra)

    def __call__(self, scores: TokenScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        if self.token_needs.kl and not scores.has_kl:
            raise ValueError(f"objective {self.name!r} needs the per-token KL (chosen_kl/rejected_kl), which the scores lack")
        losses, chosen_rewards, rejected_rewards, metrics = self.token_losses(scores)
        return ObjectiveOutput(losses.mean(), {**reward_metrics(chosen_rewards, rejected_rewards), **metrics})


def token_ratios(s: TokenScores) -> tuple[Tensor, Tensor]:
    """``u_t`` per side, ``[B, T]`` in float32, 0 after each answer's last token."""
    return ((s.chosen.float() - s.ref_chosen.float()).masked_fill(~s.chosen_mask, 0),
            (s.rejected.float() - s.ref_rejected.float()).masked_fill(~s.rejected_mask, 0))


def token_kl(s: TokenScores) -> tuple[Tensor, Tensor]:
    """``KL_t(ref || policy)`` per side, ``[B, T]`` in float32, 0 after each answer's last token."""
    return s.chosen_kl.float().masked_fill(~s.chosen_mask, 0), s.rejected_kl.float().masked_fill(~s.rejected_mask, 0)


@register("tdpo1")
class TDPO1(TokenObjective):
    """Token-level DPO with the KL of both answers in the margin (TDPO1):

        L = -log s( beta * [ (u_w - u_l) - (K(y_l) - K(y_w)) ] ),   K(y) = sum_t KL_t(ref || theta)

    Zeng et al. 2024, "Token-level Direct Preference Optimization". Rewards ``beta * (u + K)`` per side.
    """

    paper = "Zeng et al. 2024, arXiv 2404.11999"
    convention = "the paper's equations; rewards beta * (u + K) per side (the sequence reward plus its KL)"
    token_needs = TokenNeeds(kl=True)

    def kl_term(self, k_w: Tensor, k_l: Tensor) -> Tensor:
        return k_l - k_w

    def token_losses(self, s: TokenScores):
        (u_w, u_l), (kl_w, kl_l) = token_ratios(s), token_kl(s)
        u_w, u_l, k_w, k_l = u_w.sum(1), u_l.sum(1), kl_w.sum(1), kl_l.sum(1)
        losses = -F.logsigmoid(self.beta * ((u_w - u_l) - self.kl_term(k_w, k_l)))
        metrics = {"kl/chosen": k_w.detach().mean(), "kl/rejected": k_l.detach().mean()}
        return losses, self.beta * (u_w + k_w).detach(), self.beta * (u_l + k_l).detach(), metrics


@register("tdpo2")
class TDPO2(TDPO1):
    """TDPO2: the chosen answer's KL carries no gradient and the KL difference is scaled by ``alpha``:

        L = -log s( beta * [ (u_w - u_l) - alpha * (K(y_l) - sg(K(y_w))) ] )

    Zeng et al. 2024 (defaults of the official code: beta 0.1, alpha 0.5).
    """

    def __init__(self, beta: float = 0.1, alpha: float = 0.5) -> None:
        super().__init__(beta)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def kl_term(self, k_w: Tensor, k_l: Tensor) -> Tensor:
        return self.alpha * (k_l - k_w.detach())


@register("wpo")
class WPO(TokenObjective):
    """DPO with each pair weighted by how likely the policy is to produce both answers (WPO's eq. 2):

        L = w(y_w) * w(y_l) * -log s(beta * (u_w - u_l)),
        w(y) = sg exp( mean_t [ l_t - log sum_v pi_theta(v | x, y_<t)^2 ] )

    Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization". The weights are constants
    (no gradient), as TRL's ``use_weighting`` computes them.
    """

    paper = "Zhou et al. 2024, arXiv 2406.11827"
    convention = "TRL DPOConfig(use_weighting=True) with the sigmoid loss: weights without gradient"
    token_needs = TokenNeeds(self_norm=True)

    def token_losses(self, s: TokenScores):
        (u_w, u_l) = token_ratios(s)
        u_w, u_l = u_w.sum(1), u_l.sum(1)

        def weight(logps: Tensor, norm: Tensor, mask: Tensor) -> Tensor:
            aligned = (logps.detach().float() - norm.float()).masked_fill(~mask, 0)
            # At most e^80: finite in float32 even for log-probs no model gives (above 0).
            return torch.exp((aligned.sum(1) / mask.sum(1).clamp(min=1)).clamp(max=80))

        w = weight(s.chosen, s.extra["chosen_self_norm"], s.chosen_mask) * weight(
            s.rejected, s.extra["rejected_self_norm"], s.rejected_mask)
        losses = w * -F.logsigmoid(self.beta * (u_w - u_l))
        return losses, self.beta * u_w.detach(), self.beta * u_l.detach(), {"wpo/weight": w.mean()}


@register("ld_dpo")
class LDDPO(TokenObjective):
    """DPO on length-desensitised log-probs: the tokens past the shorter answer's length count ``alpha`` times,

        l~(y) = sum_{t <= min(|y_w|, |y_l|)} l_t + alpha * sum_{t > min(|y_w|, |y_l|)} l_t   (policy and reference)
        L = -log s(beta * [(l~(y_w) - l~_ref(y_w)) - (l~(y_l) - l~_ref(y_l))])

    Liu et al. 2024, "LD-DPO: Length Desensitization in DPO". ``alpha = 1`` is DPO exactly.
    """

    paper = "Liu et al. 2024, arXiv 2409.06411"
    convention = "TRL DPOConfig(ld_alpha=alpha) with the sigmoid loss"

    def __init__(self, beta: float = 0.1, alpha: float = 0.5) -> None:
        super().__init__(beta)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def token_losses(self, s: TokenScores):
        shared = torch.minimum(s.chosen_mask.sum(1), s.rejected_mask.sum(1))[:, None]
        place = torch.arange(s.chosen.shape[1], device=s.chosen.device)[None, :]
        weights = torch.where(place < shared, 1.0, self.alpha)  # every answer's tokens start at place 0
        u_w, u_l = token_ratios(s)
        u_w, u_l = (u_w * weights).sum(1), (u_l * weights).sum(1)
        losses = -F.logsigmoid(self.beta * (u_w - u_l))
        return losses, self.beta * u_w.detach(), self.beta * u_l.detach(), {}


class TokenMasks(nn.Module):
    """SparsePO's mask network (``simple_all``): from the reference's hidden states of every layer at a token,
    ``a_l = ReLU(w_l . LayerNorm_l(h_l) + b_l)`` per layer (then dropout), and the mask ``m = ReLU(sum_l c_l a_l)``
    (then dropout): one non-negative number per token. The mixer starts at ``c_l = 1 / L``."""

    def __init__(self, layers: int, width: int, dropout: float) -> None:
        super().__init__()
        self.norm_weight = nn.Parameter(torch.ones(layers, width))
        self.norm_bias = nn.Parameter(torch.zeros(layers, width))
        bound = width ** -0.5  # nn.Linear's initialisation, one row per layer
        self.weight = nn.Parameter(torch.empty(layers, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(layers).uniform_(-bound, bound))
        self.mix = nn.Parameter(torch.full((layers,), 1.0 / layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden [..., L, H]`` -> masks ``[...]``."""
        h = F.layer_norm(hidden.to(self.weight.dtype), hidden.shape[-1:]) * self.norm_weight + self.norm_bias
        a = self.dropout(F.relu((h * self.weight).sum(-1) + self.bias))
        return self.dropout(F.relu((a * self.mix).sum(-1)))


@register("sparsepo")
class SparsePO(TokenObjective, nn.Module):
    """Token-level DPO whose log-ratios and KL are weighed by learned, sparse token masks ``m^u``, ``m^d`` >= 0:

        U(y) = sum_t m^u_t u_t,   K(y) = sum_t m^d_t KL_t(ref || theta)
        L = -log s( beta * [ (U(y_w) - U(y_l)) - (K(y_l) - K(y_w)) ] )
            + lambda_u * (|m^u|_1(y_w) + |m^u|_1(y_l)) + lambda_d * (|m^d|_1(y_w) + |m^d|_1(y_l))

    Christopoulou et al. 2024, "SparsePO: Controlling Preference Alignment of LLMs via Sparse Token Masks". The
    masks come from :class:`TokenMasks` over the reference's hidden states of every layer (one network for both
    terms, "sparse-common"; two with ``independent``). With every mask 1 it is ``tdpo1`` exactly.

    The mask network is trainable and belongs to the loss, so the objective owns it: an ``nn.Module`` that the
    preference module holds as a sub-module, so that the optimizer, device placement, DDP's gradient
    synchronisation and checkpoints see it like the policy. It is built (``configure``) once the backbone's model
    gives the number and width of its hidden states. ``mask_dropout`` acts in training only.
    """

    paper = "Christopoulou et al. 2024, arXiv 2410.05102"
    convention = ("official code (huawei-noah/HEBO SparsePO, mask_model simple_all): rewards beta * (U - K); masks"
                  " read the reference's hidden states at the position that predicts each token")
    token_needs = TokenNeeds(kl=True, reference_hidden=True)

    def __init__(self, beta: float = 0.1, independent: bool = False, l1_u: float = 0.0, l1_d: float = 0.0,
                 mask_dropout: float = 0.01) -> None:
        nn.Module.__init__(self)
        TokenObjective.__init__(self, beta)
        if l1_u < 0 or l1_d < 0:
            raise ValueError(f"l1_u and l1_d must be >= 0, got {l1_u}, {l1_d}")
        if not 0 <= mask_dropout < 1:
            raise ValueError(f"mask_dropout must be in [0, 1), got {mask_dropout}")
        self.independent, self.l1_u, self.l1_d, self.mask_dropout = independent, l1_u, l1_d, mask_dropout
        self.reward_masks: TokenMasks | None = None
        self.kl_masks: TokenMasks | None = None

    def configure(self, backbone) -> None:
        self.build(*backbone.hidden_states_shape())

    def build(self, layers: int, width: int) -> None:
        """The mask network(s) for ``layers`` hidden states of ``width`` units (idempotent)."""
        if self.reward_masks is None:
            self.reward_masks = TokenMasks(layers, width, self.mask_dropout)
            self.kl_masks = TokenMasks(layers, width, self.mask_dropout) if self.independent else None

    def masks(self, s: TokenScores) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(m^u_w, m^u_l, m^d_w, m^d_l)``, each ``[B, T]`` and 0 after its answer's last token."""
        if self.reward_masks is None:
            raise ValueError("objective 'sparsepo': its mask network is not built; the module builds it in"
                             " configure_model (SparsePO.configure(backbone)), or call build(layers, width)")
        hidden = (s.extra["chosen_ref_hidden"], s.extra["rejected_ref_hidden"])
        u = [self.reward_masks(h) for h in hidden]
        d = [self.kl_masks(h) for h in hidden] if self.kl_masks is not None else u
        c, r = s.chosen_mask, s.rejected_mask
        return u[0] * c, u[1] * r, d[0] * c, d[1] * r

    def token_losses(self, s: TokenScores):
        mu_w, mu_l, md_w, md_l = self.masks(s)
        (u_w, u_l), (kl_w, kl_l) = token_ratios(s), token_kl(s)
        big_u_w, big_u_l = (mu_w * u_w).sum(1), (mu_l * u_l).sum(1)
        k_w, k_l = (md_w * kl_w).sum(1), (md_l * kl_l).sum(1)
        losses = -F.logsigmoid(self.beta * ((big_u_w - big_u_l) - (k_l - k_w)))
        losses = losses + self.l1_u * (mu_w.sum(1) + mu_l.sum(1)) + self.l1_d * (md_w.sum(1) + md_l.sum(1))
        tokens = s.chosen_mask.sum() + s.rejected_mask.sum()
        metrics = {"mask/mean": ((mu_w.sum() + mu_l.sum()) / tokens).detach(),
                   "mask/nonzero": (((mu_w > 0).sum() + (mu_l > 0).sum()) / tokens).detach(),
                   "kl/chosen": k_w.detach().mean(), "kl/rejected": k_l.detach().mean()}
        return losses, self.beta * (big_u_w - k_w).detach(), self.beta * (big_u_l - k_l).detach(), metrics

    def __repr__(self) -> str:
        return (f"SparsePO(beta={self.beta}, independent={self.independent}, l1_u={self.l1_u}, l1_d={self.l1_d},"
                f" mask_dropout={self.mask_dropout})")


def activation_masks(hidden: Tensor, mask: Tensor) -> Tensor:
    """Parameter-free masks from activations ``hidden [B, T, L, H]``: each token's mean absolute activation over
    layers and units, z-normalised over its answer's tokens, then min-max rescaled to [0, 1] per answer (an answer
    whose tokens are all alike gets masks of 1). ``[B, T]``, 0 after the answer's last token."""
    a = hidden.float().abs().mean(dim=(-1, -2))
    n = mask.sum(1, keepdim=True).clamp(min=1)
    mean = (a * mask).sum(1, keepdim=True) / n
    std = (((a - mean) ** 2 * mask).sum(1, keepdim=True) / n).sqrt()
    z = (a - mean) / std.clamp(min=1e-6)
    low = z.masked_fill(~mask, float("inf")).amin(1, keepdim=True)
    high = z.masked_fill(~mask, float("-inf")).amax(1, keepdim=True)
    span = high - low
    scaled = torch.where(span > 1e-6, (z - low) / span.clamp(min=1e-6), torch.ones_like(z))
    return scaled * mask


@register("sparsepo_activation")
class SparsePOActivation(SparsePO):
    """SparsePO with parameter-free masks (:func:`activation_masks`): the reference's activations, z-normalised
    then min-max rescaled to [0, 1] per answer, one mask for both terms. Same loss as ``sparsepo``, no L1 terms.

    Christopoulou et al. 2024 (their "activation" masks, ``activation_mapping = zn_rescale``; named apart from
    the diffusion ``mapo``).
    """

    convention = ("activation per token: the mean absolute hidden state over the reference's layers and units (the"
                  " official choice of activation was not read); rewards beta * (U - K)")

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__(beta)

    def configure(self, backbone) -> None:
        """No trainable parts."""

    def masks(self, s: TokenScores):
        m_w = activation_masks(s.extra["chosen_ref_hidden"], s.chosen_mask)
        m_l = activation_masks(s.extra["rejected_ref_hidden"], s.rejected_mask)
        return m_w, m_l, m_w, m_l

    def __repr__(self) -> str:
        return f"SparsePOActivation(beta={self.beta})"


__all__ = ["LDDPO", "SparsePO", "SparsePOActivation", "TDPO1", "TDPO2", "TokenMasks", "TokenObjective", "WPO",
           "activation_masks", "token_kl", "token_ratios"]
