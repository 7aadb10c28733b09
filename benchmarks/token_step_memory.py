"""Memory of one token-level preference step against one DPO step, on a tiny model with a real vocabulary.

Not a comparison with a peer. A tiny random Qwen2 (hidden 64, 2 layers) with Qwen2.5's vocabulary (151,936
tokens, so that the LM head's ``tokens x vocabulary`` blocks dominate as they do at scale) scores 8 pairs of long
answers (about ``--answer`` tokens each) with a frozen-copy reference. Each arm runs one forward and backward of
the step (``PreferenceModule.compute_scores``, the objective, ``backward``) in its own subprocess, and reports:

- the bytes of the tensors autograd keeps for backward (``saved_tensors_hooks``; parameters not counted): what a
  step holds between its forward and its backward;
- the process's peak resident memory during the step, above what it held before it (``ru_maxrss``).

    python benchmarks/token_step_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch

ARMS = {
    "dpo": ("dpo", {}),
    "dpo, lm_head_chunk 1024": ("dpo", {"lm_head_chunk": 1024}),
    "tdpo1 (full-vocabulary KL)": ("tdpo1", {}),
    "sparsepo (KL + reference hidden states)": ("sparsepo", {}),
    "wpo (self norm)": ("wpo", {}),
    "ld_dpo (token log-probs only)": ("ld_dpo", {}),
}


def build_model(path: str, vocab: int) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alignsuite.toy.llm import EchoWorld

    tok = EchoWorld().build_tokenizer()
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def run_arm(path: str, objective: str, options: dict, answer: int) -> dict:
    from alignsuite.backbones import CausalLM
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import get_objective

    letters = "abcdefghij"
    batch = {"prompt": [f"echo {letters[i]} {letters[i + 1]}" for i in range(8)],
             "chosen": [" ".join(letters[(i + j) % 10].upper() for j in range(answer)) for i in range(8)],
             "rejected": [" ".join(letters[(i + 2 * j) % 10] for j in range(answer - i)) for i in range(8)]}
    module = PreferenceModule(CausalLM(path, max_length=2 * answer + 16, max_prompt_length=16, **options),
                              get_objective(objective))
    module.configure_model()
    saved: dict[int, int] = {}
    params = {p.data_ptr() for p in module.parameters()} | {p.data_ptr() for p in module.reference.parameters()}

    def pack(t):
        if t.data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scores = module.compute_scores(batch)
        loss = module.objective(scores).loss
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"saved_for_backward_mib": sum(saved.values()) / 2**20, "peak_rss_growth_mib": (peak - before) / 1024,
            "scored_tokens": int(scores.batch_size and (scores.summed().chosen_len.sum() + scores.summed().rejected_len.sum()))
            if hasattr(scores, "summed") else int(scores.chosen_len.sum() + scores.rejected_len.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--answer", type=int, default=200, help="tokens per answer (about)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        objective, options = ARMS[args.arm]
        print(json.dumps(run_arm(args.model, objective, options, args.answer)))
        return
    with tempfile.TemporaryDirectory() as folder:
        build_model(folder, args.vocab)
        print(f"{'arm':42s} {'kept for backward (MiB)':>24s} {'peak RSS growth (MiB)':>22s} {'scored tokens':>14s}")
        for arm in ARMS:
            out = subprocess.run([sys.executable, __file__, "--arm", arm, "--model", folder, "--answer", str(args.answer)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"{arm:42s} {r['saved_for_backward_mib']:24.1f} {r['peak_rss_growth_mib']:22.1f} {r['scored_tokens']:14d}")


if __name__ == "__main__":
    main()
