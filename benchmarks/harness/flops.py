"""Model FLOPs of a decoder's DPO step and model-FLOPs utilisation (MFU) against a device's peak.

Model FLOPs count the work the step's algorithm needs, the same for every framework given the same rows,
whatever a framework does to save or waste work (so MFU ratios are pairs/s ratios). The convention is
PaLM's (Chowdhery et al. 2022, appendix B) applied to each sequence of a pair, chosen and rejected, as its
own ``T`` unpadded tokens (prompt and completion):

    forward(T) = 2 * N_matmul * T  +  2 * L * d_attn * T * (T + 1)

where ``N_matmul`` counts the weights every token multiplies (every layer's projections and MLP, and the
LM head, which the input embedding is not), and the second term is causal attention (``QK^T`` and ``AV``,
each ``2 * d_attn`` per query-key pair, over the ``T (T + 1) / 2`` pairs a causal mask keeps). The policy
costs ``3 * forward`` (forward, and backward for activations and for weights); under LoRA ``2 * forward``
(the frozen weights get no weight gradient; the adapters' own FLOPs are left out). The reference costs one
forward, none when precomputed. A framework that shares a pair's prompt or runs the LM head only at
completion positions does less than this: its MFU says how fast the step's work gets done, not how busy
the device was.

Standard library only, like the rest of the harness's driver side.
"""

from __future__ import annotations

# Dense bfloat16 tensor-core peaks (TFLOP/s, without sparsity) from the vendor's data sheets, matched
# against ``torch.cuda.get_device_name`` in order: the first entry whose every word is in the name.
BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.4),  # SXM
    (("H200",), 989.4),
    (("H800",), 989.4),
    (("GH200",), 989.4),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.1),
    (("L4",), 121.0),
)


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its name, or ``None`` for a device not in the table."""
    if not device_name:
        return None
    for words, peak in BF16_PEAK_TFLOPS:
        if all(w in device_name for w in words):
            return peak
    return None


def decoder_matmul_parameters(model: dict) -> int:
    """``N_matmul`` of a decoder from the benchmark's model record: every parameter but the input embedding,
    with the LM head counted once more when it is tied to that embedding (it is still a matmul per token)."""
    embedding = model["vocab_size"] * model["hidden_size"]
    return model["parameters"] - embedding + (embedding if model["tied_embeddings"] else 0)


def sequence_forward_flops(model: dict, tokens: int) -> float:
    """Forward FLOPs of one sequence of ``tokens`` tokens (see the module docstring)."""
    d_attn = model["heads"] * model["head_dim"]
    return 2.0 * decoder_matmul_parameters(model) * tokens + 2.0 * model["layers"] * d_attn * tokens * (tokens + 1)


def dpo_step_flops(model: dict, pairs: list[tuple[int, int, int]], lora: bool, reference: bool) -> float:
    """Model FLOPs of one DPO step over ``pairs`` of ``(prompt, chosen, rejected)`` token counts."""
    passes = (2.0 if lora else 3.0) + (1.0 if reference else 0.0)
    forward = sum(sequence_forward_flops(model, p + c) + sequence_forward_flops(model, p + r) for p, c, r in pairs)
    return passes * forward


def utilisation(step_flops: list[float], timed: dict[int, float], peak_tflops: float | None) -> dict:
    """Achieved TFLOP/s over an arm's timed steps (``timed``: step index -> ms; ``step_flops[i]`` is step i's
    model FLOPs) and the MFU against ``peak_tflops`` (``None`` without a peak)."""
    seconds = sum(timed.values()) / 1000.0
    achieved = sum(step_flops[i] for i in timed) / seconds / 1e12
    return {"model_tflops_per_s": achieved, "mfu": achieved / peak_tflops if peak_tflops else None,
            "peak_tflops": peak_tflops}
