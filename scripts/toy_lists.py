"""Lists against pairs on the language toy world, at the same number of scored completions.

    python scripts/toy_lists.py --prompts 256 --seeds 0 1 2

runs ``recipes/toy/llm_dpo.yaml`` on N prompts with 2 answers each (batches of 16 pairs) and
``recipes/toy/llm_list_mle.yaml`` on N/2 prompts with 4 graded answers each (batches of 8 lists): both score
2N completions in N/16 steps of 32 sequences. It prints the greedy reward (``val/toy_reward``) each reaches at
the end, per seed (``--seed_everything`` and ``--data.init_args.seed``: other data, another shuffle).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_reward(recipe: str, prompts: int, batch_size: int, seed: int, workdir: str) -> float:
    """The last ``val/toy_reward`` of ``recipes/toy/<recipe>.yaml`` trained on ``prompts`` prompts."""
    from alignsuite.cli import main

    steps = prompts // batch_size
    main(["fit", "--config", os.path.join(REPO, "recipes", "toy", f"{recipe}.yaml"),
          "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
          "--data.init_args.num_train", str(prompts), "--data.init_args.batch_size", str(batch_size),
          "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", workdir, "--checkpoint.dirpath", os.path.join(workdir, "ckpt"),
          "--trainer.callbacks.init_args.num_prompts", "128"])
    path = glob.glob(os.path.join(workdir, "*", "version_*", "metrics.csv"))[0]
    with open(path) as f:
        rewards = [float(r["val/toy_reward"]) for r in csv.DictReader(f) if r.get("val/toy_reward")]
    return rewards[-1]


def compare(prompts: int, seed: int) -> tuple[float, float]:
    """``(dpo, list_mle)``: DPO on ``prompts`` pairs, list-MLE on ``prompts // 2`` lists of 4."""
    with tempfile.TemporaryDirectory() as pairs, tempfile.TemporaryDirectory() as lists:
        return final_reward("llm_dpo", prompts, 16, seed, pairs), final_reward("llm_list_mle", prompts // 2, 8, seed, lists)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256, help="N: the DPO run's prompts (list-MLE gets N/2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    results = [(seed, *compare(args.prompts, seed)) for seed in args.seeds]
    print(f"| seed | DPO, {args.prompts} prompts x 2 | list-MLE, {args.prompts // 2} prompts x 4 |")
    print("|---|---|---|")
    for seed, dpo, lists in results:
        print(f"| {seed} | {dpo:.3f} | {lists:.3f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
