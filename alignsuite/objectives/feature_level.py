"""Feature-level objectives: the policy kept near its reference in the features of a sparse autoencoder (SAE) over
one layer's hidden states, rather than token by token (:class:`~alignsuite.scores.TokenScores`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from alignsuite.components import build_object
from alignsuite.objectives.base import register
from alignsuite.objectives.token_level import TokenObjective, token_ratios
from alignsuite.scores import TokenNeeds, TokenScores


@register("fpo")
class FPO(TokenObjective, nn.Module):
    """DPO on length-normalised log-ratios with a sparse feature-level constraint (FPO):

        dm(y)    = mean_t l_t - mean_t l_ref,t
        f(y)     = mean_t SAE(h_t),  f_ref(y) likewise from the reference   (h: hidden states of ``layer``)
        Dfeat(y) = mean_{i in S(y)} (f_ref,i(y) - f_i(y))^2,  S(y) the ``top_k`` largest entries of f(y)
        L = -log s( beta * [ (dm(y_w) - dm(y_l)) - alpha * (Dfeat(y_l) - sg(Dfeat(y_w))) ] )

    Yin et al. 2024, "Direct Preference Optimization Using Sparse Feature-Level Constraints". ``sae`` names the
    encoder by import path (``"package.module.Class"``, or ``{class_path, init_args}``): a module from a
    layer's hidden states ``[..., H]`` to its features ``[..., F]``, frozen, built when the module configures the
    models (it is a sub-module of the objective, so it moves to the policy's device). Left out, the features are
    the hidden units themselves. Hidden states are read at the position that predicts each answer token.
    """

    paper = 'Yin et al. 2024, "Direct Preference Optimization Using Sparse Feature-Level Constraints"'
    convention = ("official code's runnable path (FPO-code TDPOKLTrainer): top-k on the policy's features, the"
                  " chosen side's feature distance without gradient; rewards beta * dm")

    def __init__(self, beta: float = 0.1, alpha: float = 0.5, top_k: int = 100, layer: int = -1,
                 sae: str | dict | None = None) -> None:
        nn.Module.__init__(self)
        TokenObjective.__init__(self, beta)
        if alpha < 0 or top_k < 1:
            raise ValueError(f"alpha must be >= 0 and top_k >= 1, got alpha {alpha}, top_k {top_k}")
        self.alpha, self.top_k, self.layer, self.sae_spec = alpha, top_k, layer, sae
        self.token_needs = TokenNeeds(reference_hidden=True, policy_hidden_layer=layer)
        self.sae: nn.Module | None = None

    def configure(self, backbone) -> None:
        self.build()

    def build(self, *shapes) -> None:
        """The frozen SAE encoder (identity when ``sae`` is left out); idempotent."""
        if self.sae is None:
            sae = build_object(self.sae_spec) if self.sae_spec is not None else nn.Identity()
            self.sae = sae.requires_grad_(False).eval()

    def features(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """``mean_t SAE(h_t)`` over each answer's tokens: ``[B, F]``."""
        if self.sae is None:
            raise ValueError("objective 'fpo': its SAE is not built; the module builds it in configure_model")
        f = self.sae(hidden.float()).float() * mask[..., None]
        return f.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    def distance(self, s: TokenScores, side: str) -> Tensor:
        mask = getattr(s, f"{side}_mask")
        f = self.features(s.extra[f"{side}_hidden"], mask)
        f_ref = self.features(s.extra[f"{side}_ref_hidden"][:, :, self.layer], mask)
        top = f.detach().topk(min(self.top_k, f.shape[-1]), dim=-1).indices
        return (f_ref.gather(-1, top) - f.gather(-1, top)).pow(2).mean(-1)

    def token_losses(self, s: TokenScores):
        u_w, u_l = token_ratios(s)
        dm_w = u_w.sum(1) / s.chosen_mask.sum(1).clamp(min=1)
        dm_l = u_l.sum(1) / s.rejected_mask.sum(1).clamp(min=1)
        d_w, d_l = self.distance(s, "chosen"), self.distance(s, "rejected")
        losses = -F.logsigmoid(self.beta * ((dm_w - dm_l) - self.alpha * (d_l - d_w.detach())))
        metrics = {"features/chosen": d_w.detach().mean(), "features/rejected": d_l.detach().mean()}
        return losses, self.beta * dm_w.detach(), self.beta * dm_l.detach(), metrics

    def __repr__(self) -> str:
        return (f"FPO(beta={self.beta}, alpha={self.alpha}, top_k={self.top_k}, layer={self.layer},"
                f" sae={self.sae_spec!r})")


__all__ = ["FPO"]
