"""What a frozen model needs to store under mixed precision.

Under autocast (``bf16-mixed``) the matrix products of linear and convolution layers run in the autocast
dtype: autocast casts their weights (and inputs) to bfloat16 at every call, and computes everything else
(embeddings, norms, residual sums, softmax) in float32. A frozen model that only runs forwards can store those
weights in bfloat16 once: autocast then has nothing to cast, and the results are the same, bit for bit, as a
float32 copy's under autocast, at about half its memory. Storing the whole model in bfloat16 instead would also
round the embeddings and norms, and run the float32 parts in bfloat16: different scores (a reference equal to
the policy would no longer give a DPO loss of ln 2), and, on a CPU, slower elementwise work.
"""

from __future__ import annotations

import torch
from torch import nn

# Layers whose forward is one matrix product that autocast runs in its low dtype (linear, convolution).
AUTOCAST_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model``'s inputs should be given in: its parameters' (the first one's), or, for a model whose
    autocast layers alone were cast (``store_for_autocast``), the dtype the rest of it kept."""
    kept = getattr(model, "_dtype_outside_autocast", None)
    return kept if kept is not None else next(model.parameters()).dtype


def store_for_autocast(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Casts to ``dtype`` the weights and biases of ``model``'s linear and convolution layers, in place, and
    leaves every other tensor's values as they are; returns how many tensors were cast.

    A tensor one of those layers shares with another module (an LM head tied to the input embeddings) keeps
    its dtype: the embedding lookup is not a product autocast would cast. The tensors kept are copied out of
    the checkpoint file they may still be mapped from (``from_pretrained`` maps safetensors files): while one of
    them pointed into the file, the whole float32 file stayed mapped and resident beside the bfloat16 copies.
    """
    elsewhere = {
        id(p)
        for m in model.modules()
        if not isinstance(m, AUTOCAST_LAYERS)
        for p in m.parameters(recurse=False)
    }
    cast = 0
    for module in model.modules():
        if not isinstance(module, AUTOCAST_LAYERS):
            continue
        for param in module.parameters(recurse=False):
            if id(param) in elsewhere or not param.is_floating_point() or param.dtype == dtype:
                continue
            param.data = param.data.to(dtype)
            cast += 1
    if cast:
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype != dtype:
                tensor.data = tensor.data.clone()
        model._dtype_outside_autocast = next((p.dtype for p in model.parameters() if p.dtype != dtype), None)
    return cast
