"""Generation throughput of the online loop: K samples per prompt, alignsuite's round against plain ``transformers``.

    python -m benchmarks.bench_generation --out generation.json                     # the tiny Llama, CPU
    python -m benchmarks.bench_generation --prompts-per-call 4 --samples 8 --new-tokens 32
    python -m benchmarks.bench_generation --device cuda --size qwen2.5-0.5b --prompts-per-call 16 --new-tokens 128

The arms draw the same number of samples of the same prompts from the same random-init model (the tiny Llama
of ``benchmarks.setups.tiny_llama``, or a real checkpoint's shape), each in its own subprocess:

- ``transformers``: ``model.generate`` on ``--prompts-per-call`` left-padded prompts at a time, with
  ``num_return_sequences`` K and the KV cache: what a hand-written loop over ``transformers`` does.
- ``alignsuite``: the loop's own round (``alignsuite.iterate.rounds.generate_round`` through ``CausalLM``'s
  ``generate``: shards written to files, seeds per call) with ``iterate.draws_per_call`` K: the same calls.
- ``alignsuite-apart``: the same with ``draws_per_call`` 1, the loop's default: K calls of one sample per prompt.

Every arm samples (``do_sample``, temperature 1) exactly ``--new-tokens`` tokens per sample (``min_new_tokens`` =
``max_new_tokens``), so tokens/s is samples/s times ``--new-tokens``. One timed step is one chunk of prompts (all
K samples of ``--prompts-per-call`` prompts); the first ``--warmup`` chunks are not timed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter

from benchmarks import harness
from benchmarks.harness.tables import print_arms, print_ratios
from benchmarks.setups.tiny_llama import add_size_options, build_model, resolve_size, tokenizer_dir, write_pairs

PACKAGES = ("torch", "transformers", "lightning")


def _kwargs(cfg: dict) -> dict:
    return {"max_new_tokens": cfg["new_tokens"], "min_new_tokens": cfg["new_tokens"], "do_sample": True,
            "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def _prompts(cfg: dict) -> list[str]:
    with open(cfg["data"]) as f:
        return [json.loads(line)["prompt"] for line in f]


def run_transformers(cfg: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    memory, clock = harness.MemoryProbe(), harness.StepClock()
    tok = AutoTokenizer.from_pretrained(cfg["tokenizer_dir"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32).to(cfg["device"]).eval()
    prompts, b, k = _prompts(cfg), cfg["prompts_per_call"], cfg["samples"]
    memory.train_start()
    tokens = 0
    with torch.inference_mode():
        for start in range(0, len(prompts), b):
            enc = tok(prompts[start : start + b], return_tensors="pt", padding=True).to(cfg["device"])
            torch.manual_seed(cfg["seed"] + start)
            out = model.generate(**enc, num_return_sequences=k, pad_token_id=tok.pad_token_id, **_kwargs(cfg))
            tokens += out[:, enc["input_ids"].shape[1] :].numel()
            harness.cuda_sync()
            clock.tick()
    memory.train_end()
    return {"clock": clock.state(), "memory": memory.report(), "tokens": tokens, "losses": [0.0]}


def _run_loop(cfg: dict, draws_per_call: int) -> dict:
    import torch

    from alignsuite.backbones import CausalLM
    from alignsuite.evaluation import ToyReward
    from alignsuite.iterate import Iterate, rounds
    from alignsuite.iterate.files import read_rows

    memory, clock = harness.MemoryProbe(), harness.StepClock()
    backbone = CausalLM(cfg["model_dir"], tokenizer_name_or_path=cfg["tokenizer_dir"], dtype="float32",
                        max_length=4096, max_prompt_length=4095)
    backbone.configure()
    backbone.policy.to(cfg["device"])
    items = [{"prompt": p} for p in _prompts(cfg)]
    folder = tempfile.mkdtemp(dir=cfg["workdir"])
    settings = Iterate("unused", ToyReward("llm"), num_samples=cfg["samples"], shard_size=cfg["prompts_per_call"],
                       batch_size=cfg["prompts_per_call"], draws_per_call=draws_per_call, seed=cfg["seed"],
                       generation_kwargs=_kwargs(cfg), output_dir=folder)

    def written(where: str) -> None:  # after each shard: one chunk of prompts, all its samples on disk
        harness.cuda_sync()
        clock.tick()

    memory.train_start()
    with torch.inference_mode():
        rounds.generate_round(backbone, items, settings, 1, folder, Counter(), written=written)
    memory.train_end()
    ids = backbone.tokenizer
    tokens = sum(len(ids(r["output"], add_special_tokens=False)["input_ids"])
                 for name in sorted(os.listdir(os.path.join(folder, "samples")))
                 for r in read_rows(os.path.join(folder, "samples", name)))
    return {"clock": clock.state(), "memory": memory.report(), "tokens_decoded": tokens, "losses": [0.0]}


def run_alignsuite(cfg: dict) -> dict:
    return _run_loop(cfg, cfg["samples"])


def run_alignsuite_apart(cfg: dict) -> dict:
    return _run_loop(cfg, 1)


ARMS = {"transformers": run_transformers, "alignsuite": run_alignsuite, "alignsuite-apart": run_alignsuite_apart}
BENCH = harness.Bench(module=__spec__.name, name="generation", arms=ARMS, label="arm", packages=PACKAGES)


def parse_args(argv=None):
    p = harness.parser(BENCH, __doc__)
    p.set_defaults(steps=12, warmup=2)
    p.add_argument("--prompts-per-call", type=int, default=16, help="prompts in one generate call (each K times)")
    p.add_argument("--samples", type=int, default=4, help="K: samples per prompt")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per sample")
    p.add_argument("--max-length", type=int, default=64, help="sets the prompts' lengths, as the DPO benchmark's")
    add_size_options(p)
    args = harness.parse_args(p, BENCH, "--arms", argv)
    resolve_size(args)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.batch_size = args.prompts_per_call * args.samples  # samples per timed step
    with harness.scratch(BENCH, args.keep_workdir) as workdir:
        model_dir, data = workdir / "model", workdir / "pairs.jsonl"
        model = build_model(model_dir, args)
        words = model.pop("words")
        data_info = write_pairs(data, words, args.steps * args.prompts_per_call, args.max_length, args.seed, None, None)
        data_info.pop("pair_tokens")
        cfg = {"model_dir": str(model_dir), "tokenizer_dir": str(tokenizer_dir(model_dir)), "data": str(data),
               "workdir": str(workdir), "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
               "prompts_per_call": args.prompts_per_call, "samples": args.samples, "new_tokens": args.new_tokens,
               "threads": args.threads, "seed": args.seed, "device": args.device}
        print(f"model: {model['arch']} ({args.size}), {model['parameters'] / 1e6:.2f}M parameters; {args.steps} chunks"
              f" of {args.prompts_per_call} prompts (mean {data_info['mean_prompt_tokens']:.1f} tokens) x"
              f" {args.samples} samples x {args.new_tokens} new tokens, {args.warmup} chunks warm-up, {args.device},"
              f" {args.threads} threads")
        vers = harness.versions(PACKAGES)
        runs = []
        for rep, order, results in harness.repeats(BENCH, cfg, workdir, args):
            for r in results.values():
                r["tokens_per_s"] = r["pairs_per_s"] * args.new_tokens
            print_arms(f"repeat {rep} (pairs/s here: samples/s)", results,
                       [("tokens/s", 10, lambda r: r["tokens_per_s"], ".0f")], name_width=16)
            base = results.get("transformers")
            for arm, r in results.items():
                if base is not None and arm != "transformers":
                    print_ratios(arm, "transformers", harness.ratios(r, base))
            runs.append({"order": order, "loadavg_after": os.getloadavg(), **results})
        summary = {arm: {"best_samples_per_s": harness.best_of_repeats(runs, arm, args.batch_size)}
                   for arm in args.arm_list}
        if "transformers" in summary:
            for arm in summary:
                summary[arm]["ratio_to_transformers"] = (summary[arm]["best_samples_per_s"]
                                                         / summary["transformers"]["best_samples_per_s"])
        print("\nbest of repeats, samples/s: " + ", ".join(
            f"{arm} {v['best_samples_per_s']:.1f} ({v.get('ratio_to_transformers', 1.0):.2f}x)" for arm, v in summary.items()))
        harness.write_report(BENCH, args, vers, model, data_info, cfg, runs, summary)


if __name__ == "__main__":
    harness.main(BENCH, main)
