"""Per-token statistics over the full vocabulary, a chunk of tokens at a time: the policy's token log-probs, the
full-vocabulary ``KL_t(ref || policy)`` against a reference's distribution, and ``log sum_v pi(v)^2`` (WPO).

Inputs are what the LM heads see at the scored positions: the policy's final hidden states ``h [M, H]`` with its
head ``W, b``, and the reference's ``h_ref [M, H]`` with its head. Forward keeps the policy's and the reference's
log-normalisers only (``[M]`` each); backward recomputes each chunk's logits of both, so no ``M x V`` tensor
lives beyond one ``chunk x V`` block, in forward or backward. With ``z`` the policy's logits at a token,
``p = softmax(z)``, ``q`` the reference's distribution and ``y`` the token:

    d log p_y / dz = onehot(y) - p,        d KL(q || p) / dz = p - q   (since sum_v q_v = 1)

The ``self_norm`` output carries no gradient (WPO's weights are constants).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _head(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, exact: torch.dtype) -> Tensor:
    b = bias.to(dtype) if bias is not None else None
    return nn.functional.linear(hidden.to(dtype), weight.to(dtype), b).to(exact)


class ChunkedTokenStats(torch.autograd.Function):
    """``(log p_y [M], KL(q || p) [M], log sum_v p_v^2 [M])`` for ``M`` positions, ``chunk`` at a time; the
    reference's inputs may be ``None`` (then the KL is zeros) and ``want_norm`` False (then ``self_norm`` is)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, ref_hidden: Tensor | None,
                ref_weight: Tensor | None, ref_bias: Tensor | None, chunk: int, want_norm: bool):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        exact = torch.promote_types(dtype, torch.float32)
        m = hidden.shape[0]
        logps, kl, norm = (torch.zeros(m, dtype=exact, device=hidden.device) for _ in range(3))
        lse = torch.empty(m, dtype=exact, device=hidden.device)
        ref_lse = torch.empty_like(lse) if ref_hidden is not None else None
        ref_dtype = ref_weight.dtype if ref_weight is not None else dtype
        with torch.autocast(device, enabled=False):
            for s in range(0, m, chunk):
                # In place where it can be: a handful of chunk x V blocks at a time, whatever M.
                logp = _head(hidden[s : s + chunk], weight, bias, dtype, exact)
                lse[s : s + chunk] = torch.logsumexp(logp, dim=-1)
                logp.sub_(lse[s : s + chunk, None])
                logps[s : s + chunk] = logp.gather(-1, labels[s : s + chunk, None]).squeeze(-1)
                if want_norm:
                    norm[s : s + chunk] = torch.logsumexp(logp * 2, dim=-1)
                if ref_hidden is not None:
                    ref_logp = _head(ref_hidden[s : s + chunk], ref_weight, ref_bias, torch.promote_types(ref_dtype, dtype), exact)
                    ref_lse[s : s + chunk] = torch.logsumexp(ref_logp, dim=-1)
                    ref_logp.sub_(ref_lse[s : s + chunk, None])
                    q = ref_logp.exp()
                    kl[s : s + chunk] = torch.linalg.vecdot(q, ref_logp.sub_(logp))  # sum_v q (log q - log p)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, ref_hidden, ref_weight, ref_bias, ref_lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        ctx.mark_non_differentiable(norm)
        return logps, kl, norm

    @staticmethod
    def backward(ctx, grad_logps: Tensor | None, grad_kl: Tensor | None, grad_norm: Tensor | None):
        hidden, weight, bias, labels, lse, ref_hidden, ref_weight, ref_bias, ref_lse = ctx.saved_tensors
        dtype, chunk, exact = ctx.dtype, ctx.chunk, lse.dtype
        device = hidden.device.type
        use_kl = grad_kl is not None and ref_hidden is not None
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if ctx.needs_input_grad[1] else None
        grad_bias = (torch.zeros(bias.shape, dtype=exact, device=bias.device)
                     if bias is not None and ctx.needs_input_grad[2] else None)
        ref_dtype = torch.promote_types(ref_weight.dtype, dtype) if ref_weight is not None else dtype
        with torch.autocast(device, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s : s + chunk]
                g_lp = grad_logps[s : s + chunk].to(exact) if grad_logps is not None else None
                g_kl = grad_kl[s : s + chunk].to(exact) if use_kl else None
                # dz = g_lp * (onehot - p) + g_kl * (p - q), built in the block that held p.
                dz = (_head(h, weight, bias, dtype, exact) - lse[s : s + chunk, None]).exp_()
                coef = (g_kl if g_kl is not None else 0) - (g_lp if g_lp is not None else 0)
                dz.mul_(coef[:, None] if isinstance(coef, Tensor) else coef)
                if g_lp is not None:
                    dz.scatter_add_(-1, labels[s : s + chunk, None], g_lp[:, None])
                if g_kl is not None:
                    q = (_head(ref_hidden[s : s + chunk], ref_weight, ref_bias, ref_dtype, exact)
                         - ref_lse[s : s + chunk, None]).exp_()
                    dz.addcmul_(q, g_kl[:, None], value=-1)
                dz = dz.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[s : s + chunk] = (dz @ weight.to(dtype)).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (dz.t() @ h.to(dtype)).to(exact)
                if grad_bias is not None:
                    grad_bias += dz.to(exact).sum(0)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


__all__ = ["ChunkedTokenStats"]
