"""The benchmark harness's model-FLOPs count (``benchmarks/harness/flops.py``), against PyTorch's FLOP counter
on the model the DPO benchmark builds."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from benchmarks.harness.flops import bf16_peak_tflops, dpo_step_flops, sequence_forward_flops, utilisation
from benchmarks.setups.tiny_llama import SIZES, build_model


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A two-layer Qwen2 with grouped-query attention and tied embeddings, as the benchmark saves it."""
    path = tmp_path_factory.mktemp("qwen")
    args = argparse.Namespace(**{**SIZES["qwen2.5-0.5b"], "hidden": 64, "intermediate": 96, "layers": 2, "heads": 4,
                                 "kv_heads": 2, "vocab": 300, "max_length": 32, "seed": 0})
    record = build_model(path, args)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    return record, model


def test_a_forward_counts_the_matmuls_and_the_causal_half_of_attention(qwen):
    record, model = qwen
    tokens = 11
    with FlopCounterMode(display=False) as counter:
        model(torch.arange(4, 4 + tokens)[None])
    counts = counter.get_flop_counts()["Global"]
    matmuls = sum(v for op, v in counts.items() if "mm" in str(op) and "bmm" not in str(op))
    d_attn = record["heads"] * record["head_dim"]
    full_attention = 2 * (2 * tokens * tokens * d_attn) * record["layers"]  # eager attention: QK^T and AV, unmasked
    assert counts[torch.ops.aten.bmm] >= full_attention  # (plus rotary's small product)
    causal_attention = 2 * record["layers"] * d_attn * tokens * (tokens + 1)
    # N_matmul counts norms and biases too (2 * T FLOPs each), which the counter does not: 0.5% here.
    assert sequence_forward_flops(record, tokens) == pytest.approx(matmuls + causal_attention, rel=0.01)
    assert sequence_forward_flops(record, tokens) >= matmuls + causal_attention


def test_a_dpo_step_is_three_policy_passes_and_one_reference_pass_per_sequence(qwen):
    record, _ = qwen
    pairs = [(5, 3, 7), (2, 4, 4)]
    forward = sum(sequence_forward_flops(record, p + c) + sequence_forward_flops(record, p + r) for p, c, r in pairs)
    assert dpo_step_flops(record, pairs, lora=False, reference=True) == 4 * forward
    assert dpo_step_flops(record, pairs, lora=True, reference=True) == 3 * forward  # no weight gradients of frozen
    assert dpo_step_flops(record, pairs, lora=False, reference=False) == 3 * forward  # precomputed reference


def test_utilisation_is_the_timed_steps_flops_over_their_time_and_the_peak():
    out = utilisation([9e12, 2e12, 4e12], {1: 500.0, 2: 1500.0}, peak_tflops=10.0)  # step 0 was warm-up
    assert out["model_tflops_per_s"] == pytest.approx(3.0) and out["mfu"] == pytest.approx(0.3)
    assert utilisation([1e12], {0: 1000.0}, None)["mfu"] is None
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4 and bf16_peak_tflops("cpu") is None
