"""Peak host memory of each process while an FSDP2 run builds its models, with and without ``load_on_rank0``.

Two CPU processes (gloo, ``configs/strategy/fsdp2_cpu2.yaml``) start a DPO fit of a random-init Llama with a
frozen-copy reference and stop before the first step. Each process reports its peak resident set size
(``ru_maxrss``) once the policy and the reference are built and sharded. With ``model.load_on_rank0``
(the default) only the first process reads the weights; the second builds both models on the meta device
and receives its shards. Without it, each process reads the full weights twice (policy and reference).
The checkpoint is saved in bfloat16 by default, as most hub checkpoints are, and loads in float32 (the
backbone's default ``dtype``): a converted copy, which ``--checkpoint-dtype float32`` avoids (the loaded
tensors can then stay views of the memory-mapped file, which the page cache shares between processes).

    python -m benchmarks.fsdp2_load_memory --hidden 1024 --layers 16 --out fsdp2_load.json
    python -m benchmarks.fsdp2_load_memory --checkpoint-dtype float32 --out fsdp2_load_fp32.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from lightning.pytorch import Callback

from benchmarks.setups.tiny_llama import build_model, build_tokenizer, write_pairs

REPO = Path(__file__).resolve().parent.parent


class PeakMemoryAtStart(Callback):
    """Writes this process's peak RSS (MiB) when training starts, then stops the run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        with open(f"{self.path}.rank{trainer.global_rank}", "w") as f:
            json.dump({"rank": trainer.global_rank, "peak_rss_mib": round(peak_mib, 1)}, f)
        trainer.should_stop = True


def recipe(root: Path, model_dir: Path, pairs: Path, probe: str) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "logger": False, "default_root_dir": str(root),
            "callbacks": [{"class_path": "benchmarks.fsdp2_load_memory.PeakMemoryAtStart",
                           "init_args": {"path": probe}}],
        },
        "model": {
            "class_path": "alignsuite.module.PreferenceModule",
            "init_args": {
                "backbone": {"class_path": "alignsuite.backbones.CausalLM",
                             "init_args": {"model_name_or_path": str(model_dir), "max_length": 64,
                                           "max_prompt_length": 32}},
                "reference": {"class_path": "alignsuite.reference.FrozenCopy"},
            },
        },
        "data": {"class_path": "alignsuite.data.PreferenceDataModule",
                 "init_args": {"train": str(pairs), "batch_size": 2}},
        "checkpoint": {"dirpath": str(root / "ckpt")},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def resave(path: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(path).to(getattr(torch, dtype)).save_pretrained(path)


def measure(path: Path, probe: str, load_on_rank0: bool) -> list[dict]:
    cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", str(path), "--config",
           str(REPO / "configs/strategy/fsdp2_cpu2.yaml"), "--model.init_args.load_on_rank0", str(load_on_rank0).lower()]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"the run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [json.load(open(f"{probe}.rank{rank}")) for rank in (0, 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="the saved weights' dtype (hub checkpoints are mostly bfloat16); they load in float32")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = {k: v for k, v in build_model(root / "model", args).items() if k != "words"}
        if args.checkpoint_dtype != "float32":
            resave(root / "model", args.checkpoint_dtype)
        _, words = build_tokenizer(args.vocab, args.seed)
        write_pairs(root / "pairs.jsonl", words, 16, args.max_length, args.seed)
        fp32_mib = size["parameters"] * 4 / 2**20
        report = {"model": size, "checkpoint_dtype": args.checkpoint_dtype, "weights_float32_mib": round(fp32_mib, 1),
                  "runs": {}}
        print(f"Llama, {size['parameters'] / 1e6:.1f}M parameters saved in {args.checkpoint_dtype}: {fp32_mib:.0f} MiB"
              " per float32 copy (policy + frozen-copy reference: two copies)")
        for on in (True, False):
            probe = str(root / f"probe-{on}")
            path = recipe(root, root / "model", root / "pairs.jsonl", probe)
            ranks = measure(path, probe, on)
            report["runs"][f"load_on_rank0={on}"] = ranks
            print(f"load_on_rank0 {str(on).lower():5}: " + ", ".join(
                f"rank {r['rank']} peak RSS {r['peak_rss_mib']:.0f} MiB" for r in ranks))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
