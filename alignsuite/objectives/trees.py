"""Preference trees: the K full reasoning paths of a tree of thoughts (its leaves, each a path of steps), ranked
by their scores, learnt from as one list (:class:`~alignsuite.scores.ListScores`), each path's steps weighted by
how close they are to the same step of the best path.

Step boundaries come from the data (``step_starts``: the answer-token index at which each step of a path begins,
see `alignsuite.data.layouts.trees`); the step weights read the policy's hidden states per token, so with step
weights the objective asks a token backbone for per-token scores (``token_needs``) and a reference that scores
tokens in the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, Reducer, register
from alignsuite.objectives.listwise import (
    Discount,
    ListObjective,
    clean_labels,
    label_order,
    lambda_weights,
    list_metrics,
    log_ratios,
    ordered_pairs,
)
from alignsuite.scores import ListScores, TokenNeeds, TokenOutputs

# What ``pack`` adds to ``ListScores.extra`` when the step weights are on: per-token ``[B, K, T]`` tensors.
TOKEN_EXTRAS = ("token_logps", "ref_token_logps", "token_mask", "hidden", "step_index")


def lambda_rank(rewards: Tensor, s: ListScores, discount: str) -> Tensor:
    """LiPO-lambda per list: ``sum_{psi_i > psi_j} Delta_ij * -log s(r_i - r_j)`` (``lipo``'s ``lambda``)."""
    labels = clean_labels(s)
    pairs = ordered_pairs(labels, s.mask)
    present = torch.where(s.mask, rewards, 0.0)
    gap = present[:, :, None] - present[:, None, :]
    per_pair = -F.logsigmoid(gap) * lambda_weights(rewards, labels, s.mask, discount)
    return torch.where(pairs, per_pair, 0.0).sum(dim=(1, 2))


def step_means(values: Tensor, steps: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """``(means [B, K, S, ...], tokens [B, K, S])``: the mean of ``values [B, K, T, ...]`` over each step's tokens
    (``steps [B, K, T]``, the 0-based step of each token, -1 off the path) and how many tokens each step has."""
    onehot = F.one_hot(steps.clamp(min=0), count).to(values.dtype) * (steps >= 0)[..., None].to(values.dtype)
    tokens = onehot.sum(dim=2)
    flat = values.reshape(*values.shape[:3], -1)
    sums = torch.einsum("bkts,bktd->bksd", onehot, flat).reshape(*onehot.shape[:2], count, *values.shape[3:])
    scale = tokens.clamp(min=1).reshape(*tokens.shape, *([1] * (values.dim() - 3)))
    return sums / scale, tokens


def step_weights(hidden: Tensor, steps: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(w [B, K, S], present [B, K, S])``: ``w_ks = cos(h_ks, h_best,s) + 1``, where ``h_ks`` is path k's mean
    hidden state over its step s and ``best`` the list's best path by label; 0 where path k or the best path
    lacks step s (``present`` False)."""
    count = max(int(steps.max().item()), 0) + 1
    h, tokens = step_means(hidden.float(), steps, count)
    best = label_order(labels, mask)[:, 0]
    rows = torch.arange(h.shape[0], device=h.device)
    h_best, best_tokens = h[rows, best], tokens[rows, best]
    present = (tokens > 0) & (best_tokens > 0)[:, None, :] & mask[:, :, None]
    w = F.cosine_similarity(h, h_best[:, None], dim=-1) + 1
    return torch.where(present, w, 0.0), present


def weighted_step_rewards(u: Tensor, steps: Tensor, w: Tensor) -> Tensor:
    """``x_k = sum_s w_ks * mean_{t in s} u_t / sum_s w_ks`` (``[B, K]``; 0 for a path whose weights are all 0)."""
    means, _ = step_means(u, steps, w.shape[-1])
    total = w.sum(dim=-1)
    return torch.where(total > 0, (w * means).sum(dim=-1) / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


@register("tpo_tree")
class TPOTree(ListObjective):
    """Tree Preference Optimization (TPO): LiPO-lambda over the ranked paths of a preference tree, with adaptive
    step weights.

    Each of a list's K paths (labels ``psi``, higher better) gets the reward ``r_k = beta * x_k`` and the list the
    loss ``sum_{psi_i > psi_j} Delta_ij * -log s(r_i - r_j)``, ``Delta_ij`` LiPO-lambda's weight over the model's
    current ranks (as ``lipo`` with ``loss_type: lambda``). Without step weights ``x_k = u_k``, the path's summed
    log-ratio, and the objective *is* ``lipo`` (lambda) exactly. With them (``step_weights``, the default):

        h_ks = mean_{t in step s of path k} h_t          (the policy's hidden states of ``layer``)
        w_ks = cos(h_ks, h_best,s) + 1                    (0 where path k or the best path has no step s)
        x_k  = sum_s w_ks * mean_{t in s} u_t / sum_s w_ks

    Steps come from the data's ``step_starts``; every path's steps past the fewest steps of its list are merged
    into its last one, so that step s means the same place in every path. The best path weighs all its steps 2.

    Liao, Chu, Wang 2025, "TPO: Aligning Large Language Models with Multi-branch & Multi-step Preference Trees"
    (ICLR 2025). Sources, part by part: the ranking loss is LiPO-lambda, as the paper describes its preference
    list ranking; the released code (MrBlankness/TPO, ``loss.py``) instead averages ``-log s(sign(psi_i - psi_j)
    (x_i - x_j))`` over all N(N-1) ordered pairs, the i = j terms included (log 2 each), without lambda weights,
    and returns ``-log s(beta * that)``, which decreases as the ranking loss grows. The step weights (cos + 1 of
    mean last-layer hidden states against the best path's same step, gradient flowing through them), the
    weighted mean of per-step mean log-ratios and the merging of surplus steps follow the released code
    (``compute_step_weights``, ``compute_weighted_logits``, ``dataset.py``); the paper's own form of the step
    reward was not checked. ``beta = 0.5`` is the released code's. Hidden states are read at the position that
    predicts each token (the released code reads them at the token's own position).
    """

    family = "listwise"
    paper = "Liao, Chu, Wang 2025, arXiv 2410.12854 (ICLR 2025)"
    convention = (
        "LiPO-lambda over the paths (the paper's list ranking; the released code's rank loss has no lambda weights, "
        "counts i = j and flips its sign through -log s(beta * loss)); step weights cos + 1 and the weighted mean of "
        "per-step mean log-ratios as the released code; without step_weights it is lipo (lambda) exactly"
    )

    def __init__(self, beta: float = 0.5, list_size: int = 4, discount: Discount = "log2", step_weights: bool = True,
                 layer: int = -1) -> None:
        super().__init__(beta=beta, list_size=list_size)
        if discount not in ("log2", "ln"):
            raise ValueError(f"tpo_tree: discount must be 'log2' or 'ln', got {discount!r}")
        self.discount, self.step_weights, self.layer = discount, step_weights, layer
        # Instance attributes: only the step weights read tokens, hidden states and step boundaries.
        self.token_needs = TokenNeeds(policy_hidden_layer=layer) if step_weights else None
        self.extra_columns = ("labels", "step_starts") if step_weights else ("labels",)

    # ------------------------------------------------------------------ packing
    def pack(self, policy, ref, batch: dict) -> ListScores:
        if not isinstance(policy, TokenOutputs):
            return super().pack(policy, ref, batch)
        k = self.list_size

        def lists(t: Tensor) -> Tensor:  # view-major [K * B, T, ...] -> [B, K, T, ...]
            return t.reshape(k, t.shape[0] // k, *t.shape[1:]).transpose(0, 1)

        logps, token_mask = (lists(t) for t in policy.laid_out())
        hidden = lists(policy.laid_out("hidden")[0])
        ref_logps = lists(ref.laid_out()[0].to(logps.device)) if ref is not None else None
        labels = torch.as_tensor(batch["labels"], dtype=torch.float, device=logps.device)
        mask = batch.get("mask")
        mask = torch.as_tensor(mask, device=logps.device).bool() if mask is not None else torch.isfinite(labels)
        steps = step_index(batch.get("step_starts"), token_mask, mask)
        total = logps.masked_fill(~token_mask, 0).sum(dim=2)
        ref_total = ref_logps.masked_fill(~token_mask, 0).sum(dim=2) if ref_logps is not None else None
        extra = {"token_logps": logps, "token_mask": token_mask, "hidden": hidden, "step_index": steps}
        if ref_logps is not None:
            extra["ref_token_logps"] = ref_logps
        return ListScores(total, labels, ref_total, token_mask.sum(dim=2).to(total.dtype), mask, extra)

    # ------------------------------------------------------------------ the loss
    def path_rewards(self, s: ListScores) -> tuple[Tensor, dict[str, Tensor]]:
        """``(beta * x [B, K], further metrics)``."""
        if not self.step_weights:
            return self.beta * log_ratios(s), {}
        missing = [name for name in TOKEN_EXTRAS if name not in s.extra]
        if missing:
            raise ValueError(
                f"objective 'tpo_tree' with step_weights needs per-token scores, hidden states and step boundaries"
                f" (scores.extra {missing} are missing): use a token backbone (CausalLM), a reference that scores"
                " tokens in the step (FrozenCopy, or AdapterDisabled under lora) and a tree layout with step_starts"
                " (alignsuite.data.TextTrees); or set step_weights: false"
            )
        e = s.extra
        u = (e["token_logps"].float() - e["ref_token_logps"].float()).masked_fill(~e["token_mask"], 0)
        w, present = step_weights(e["hidden"], e["step_index"], s.labels, s.mask)
        others = present & (torch.arange(s.list_size, device=w.device) != label_order(s.labels, s.mask)[:, :1])[..., None]
        mean_w = (w * others).sum() / others.sum().clamp(min=1)
        return self.beta * weighted_step_rewards(u, e["step_index"], w), {"tree/step_weight": mean_w.detach()}

    def list_losses(self, s: ListScores) -> tuple[Tensor, Tensor]:
        rewards, _ = self.path_rewards(s)
        return lambda_rank(rewards, s, self.discount), rewards

    def __call__(self, scores: ListScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        rewards, further = self.path_rewards(scores)
        loss = lambda_rank(rewards, scores, self.discount).mean()
        return ObjectiveOutput(loss, {**list_metrics(rewards, scores.labels, scores.mask), **further})


def step_index(step_starts, token_mask: Tensor, mask: Tensor) -> Tensor:
    """``[B, K, T]`` 0-based step of every scored token from ``step_starts`` (per batch row, one list per path of
    the answer-token indices where its steps begin, the first 0), -1 off the path. A path's steps past the fewest
    steps among its list's paths are merged into its last (the same step number means the same depth in every
    path). Refuses missing or malformed boundaries, naming the batch row, the path and the field."""
    b, k, t = token_mask.shape
    if step_starts is None:
        raise ValueError("objective 'tpo_tree' with step_weights needs the data column 'step_starts' (where each path's"
                         " steps begin, in answer tokens), which the batch lacks; use the layout"
                         " alignsuite.data.TextTrees, or set step_weights: false")
    if len(step_starts) != b:
        raise ValueError(f"objective 'tpo_tree': step_starts holds {len(step_starts)} rows for a batch of {b}")
    out = torch.full((b, k, t), -1, dtype=torch.long, device=token_mask.device)
    positions = torch.arange(t, device=token_mask.device)
    lengths = token_mask.sum(dim=2).tolist()
    for row in range(b):
        starts = step_starts[row]
        if not isinstance(starts, (list, tuple)) or len(starts) != k:
            raise ValueError(f"objective 'tpo_tree': batch row {row}: step_starts must hold one list per path ({k}),"
                             f" got {starts!r}")
        kept = [p for p in range(k) if mask[row, p]]
        for path in kept:
            check_starts(starts[path], lengths[row][path], row, path)
        fewest = min(len(starts[p]) for p in kept)
        for path in kept:
            bounds = torch.tensor(starts[path], dtype=torch.long, device=token_mask.device)
            steps = torch.searchsorted(bounds, positions, right=True) - 1
            out[row, path] = torch.where(token_mask[row, path], steps.clamp(max=fewest - 1), -1)
    return out


def check_starts(starts, tokens: int, row: int, path: int) -> None:
    """Step starts must be integers, the first 0, strictly increasing, each within the path's scored tokens."""
    ok = (isinstance(starts, (list, tuple)) and len(starts) > 0 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                      for x in starts))
    ok = ok and starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:])) and starts[-1] < tokens
    if not ok:
        raise ValueError(
            f"objective 'tpo_tree': batch row {row}, path {path}: step_starts {starts!r} must be increasing answer-token"
            f" indices starting at 0, each below the path's {tokens} scored tokens (the answer's tokens and its end"
            " token, in the backbone's tokenizer)"
        )


__all__ = ["TPOTree", "lambda_rank", "step_index", "step_means", "step_weights", "weighted_step_rewards"]
