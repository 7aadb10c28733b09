"""A token backbone's forward over a :class:`~.token_batch.TokenBatch`, read per scored token.

:func:`forward_tokens` runs the model with its LM head applied at the scored positions only (see
:func:`.token_scoring.head_at`) and gives each scored token's log-prob: what sequence scores sum. For token-level
objectives :func:`score_tokens` gives them per token (:class:`~alignsuite.scores.TokenOutputs`), with what the
objective declared (:class:`~alignsuite.scores.TokenNeeds`):

- the reference's pass (no grad) keeps, where the KL is needed, its final hidden states at the scored positions
  and its LM head (``[M, H]``, never its ``[M, V]`` logits), and where asked its hidden states of every layer at
  those positions (``[M, L, H]``);
- the policy's pass then computes its log-probs, the full-vocabulary ``KL_t(ref || policy)`` and WPO's
  ``log sum_v pi(v)^2`` in one fused head, a chunk of tokens at a time (:mod:`.token_kl`), so that neither model's
  ``tokens x vocabulary`` logits are kept for backward. Without them it is the sequence path's head exactly, so
  the per-token log-probs summed are the sequence scores to the last bit.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from alignsuite.backbones.token_kl import ChunkedTokenStats
from alignsuite.backbones.token_scoring import head_at, selective_log_softmax
from alignsuite.scores import TokenNeeds, TokenOutputs

# The fused statistics' blocks when backbone.lm_head_chunk is null: about 2^25 logits (128 MiB in float32) each.
STATS_BLOCK = 1 << 25


def forward_tokens(backbone, prepared, model: nn.Module | None = None, compute=None, hidden_states: bool = False):
    """``(token log-probs [M], targets, returned)`` of ``prepared`` through the policy (or ``model``): ``returned``
    holds the head's input at the scored positions (``"input"``), what ``compute`` returned (``"out"``) and, with
    ``hidden_states``, the model's hidden states of every layer (``"hidden_states"``)."""
    model = model if model is not None else backbone.policy
    device = next(model.parameters()).device
    batch = prepared.to(device)
    targets = batch.targets
    kwargs = {"use_cache": False}
    if hidden_states:
        kwargs["output_hidden_states"] = True
    keep = batch.logits_to_keep
    offset = 0  # the head sees positions from `offset` on
    if backbone._accepts_logits_to_keep:
        kwargs["logits_to_keep"] = keep
        offset = batch.input_ids.shape[1] - keep
    attention_mask = batch.attention_mask
    if batch.segments is not None:
        attention_mask = batch.packed_mask(model.config._attn_implementation, model.dtype)
        kwargs["position_ids"] = batch.position_ids
    chunk = backbone.lm_head_chunk
    fused = bool(chunk) or compute is not None
    head = (head_at(model, targets, offset, chunk, compute) if backbone.lm_head_at_scored_only or fused
            else contextlib.nullcontext({}))
    with head as returned:
        outputs = model(input_ids=batch.input_ids, attention_mask=attention_mask, **batch.extra, **kwargs)
    logits = outputs.logits
    if hidden_states:
        returned["hidden_states"] = outputs.hidden_states
    if fused:
        if logits is not returned["out"]:
            raise ValueError(
                f"backbone.lm_head_chunk: {type(model).__name__} changes its LM head's output before returning it"
                " (logit soft-capping or scaling), which the fused head cannot follow; set lm_head_chunk: null"
            )
        token_logps = logits
    elif backbone.lm_head_at_scored_only:
        token_logps = selective_log_softmax(logits, targets.label)
    else:
        token_logps = selective_log_softmax(logits[targets.row, targets.pos - offset], targets.label)
    return token_logps, targets, returned


def score_tokens(backbone, prepared, model: nn.Module | None = None, needs: TokenNeeds | None = None,
                 reference: TokenOutputs | None = None, of_reference: bool = False) -> TokenOutputs:
    """Per-token scores of ``prepared``: the reference's pass with ``of_reference`` (run it first, without grad),
    then the policy's with the reference's outputs as ``reference`` (see the module docstring). Where the policy's
    pass uses the fused head, the reference's log-probs come from the same head code, so that a policy equal to
    its reference has log-ratios of exactly 0."""
    needs = needs or TokenNeeds()
    fused = needs.kl or needs.self_norm
    if needs.kl and not of_reference and (reference is None or reference.head is None):
        raise ValueError("the full-vocabulary KL needs the reference's pass first, with TokenNeeds(kl=True)")
    ref_head = reference.head if needs.kl and not of_reference else (None, None, None)
    vocabulary = (model if model is not None else backbone.policy).get_output_embeddings().weight.shape[0]
    chunk = backbone.lm_head_chunk or max(1, STATS_BLOCK // vocabulary)
    stats = {}

    def compute(hidden, head):
        labels = prepared.to(hidden.device).targets.label
        ref_hidden, ref_weight, ref_bias = ref_head
        ref_hidden = ref_hidden.to(hidden.device) if ref_hidden is not None else None
        stats["logps"], stats["kl"], stats["norm"] = ChunkedTokenStats.apply(
            hidden, head.weight, head.bias, labels, ref_hidden, ref_weight, ref_bias, chunk,
            needs.self_norm and not of_reference)
        return stats["logps"]

    layer = needs.policy_hidden_layer
    hidden_states = needs.reference_hidden if of_reference else layer is not None
    logps, targets, returned = forward_tokens(backbone, prepared, model, compute if fused else None, hidden_states)
    out = TokenOutputs(logps, functools.partial(targets.matrix))
    if of_reference:
        if needs.kl:
            head = (model if model is not None else backbone.policy).get_output_embeddings()
            bias = head.bias.detach() if head.bias is not None else None
            out.head = (returned["input"].detach(), head.weight.detach(), bias)
        if hidden_states:
            out.hidden = torch.stack([h[targets.row, targets.pos] for h in returned["hidden_states"]], dim=1)
        return out
    if layer is not None:
        out.hidden = returned["hidden_states"][layer][targets.row, targets.pos]
    out.kl = stats["kl"] if needs.kl else None
    out.self_norm = stats["norm"] if needs.self_norm else None
    return out


__all__ = ["STATS_BLOCK", "forward_tokens", "score_tokens"]
