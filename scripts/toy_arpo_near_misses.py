"""ARPO against CPO on the language toy world when every rejected answer is a near miss: the chosen answer is the
capital echo and the rejected one the same echo with one letter wrong (the toy world's pairs of that kind, the
lower-case rejections left out), so the two answers share all tokens but one, as close translations do.

    python scripts/toy_arpo_near_misses.py --seeds 0 1 2 --num_train 512
    python scripts/toy_arpo_near_misses.py --seeds 0 1 2 --num_train 512 --lr 5e-5    # slower: off the ceiling

Each run is `recipes/toy/llm_simpo.yaml` (the same model, optimiser, schedule and one epoch) with the objective
swapped for ``cpo`` or ``arpo`` at their defaults (``beta`` 0.1, ``cpo_alpha`` 1; ARPO's ``relax_coefficient_1``
0.9 and ``relax_coefficient_2`` 0.4) and the data for ``--num_train`` near-miss pairs drawn with the seed (and
128 validation pairs of the same kind, drawn apart). It prints each run's last `val/toy_reward` (greedy answers to
128 fixed prompts), `val/rewards/chosen` and `val/rewards/rejected` (``beta`` times the summed log-likelihood of
the validation pairs' answers: over-rejection shows as a falling chosen likelihood) and, for ARPO, the last logged
mean rejected weight (`train/rejected_weight`), then the means over seeds.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "llm_simpo.yaml")
ARMS = {"cpo": "alignsuite.objectives.CPO", "arpo": "alignsuite.objectives.ARPO"}


def near_misses(n: int, seed: str) -> list[dict]:
    """``n`` toy pairs whose rejected answer is the chosen capital echo with one wrong letter."""
    from alignsuite.toy.llm import EchoWorld

    world, rows, draw = EchoWorld(), [], 0
    while len(rows) < n:
        for row in world.make_pairs(4 * n, seed=f"{seed}-{draw}"):
            if row["rejected"] != row["chosen"].lower() and len(rows) < n:
                rows.append(row)
        draw += 1
    return rows


def write(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def run(folder: str, seed: int, arm: str, num_train: int = 2048, lr: float | None = None) -> dict[str, float]:
    """One run's last logged values: ``reward`` (val/toy_reward), ``rewards/chosen`` and ``rewards/rejected`` (on
    the validation pairs: ``beta`` times each answer's summed log-likelihood) and, for ARPO, ``rejected_weight``
    (the mean weight of the rejected term in the last logged training step)."""
    from alignsuite.cli import main

    os.makedirs(folder, exist_ok=True)
    train = write(os.path.join(folder, "train.jsonl"), near_misses(num_train, f"train-{seed}"))
    val = write(os.path.join(folder, "val.jsonl"), near_misses(128, f"val-{seed}"))
    data = ("{class_path: alignsuite.data.PreferenceDataModule, init_args: {train: %s, val: %s, batch_size: 16,"
            " seed: %d}}" % (train, val, seed))
    objective = "{class_path: %s, init_args: {beta: 0.1, cpo_alpha: 1.0}}" % ARMS[arm]  # not SimPO's beta
    main(["fit", "--config", RECIPE, "--seed_everything", str(seed), "--model.init_args.objective", objective,
          "--data", data, "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", folder,
          "--checkpoint.dirpath", os.path.join(folder, "ckpt"),
          *(["--model.init_args.optimizer.init_args.lr", str(lr)] if lr is not None else [])])
    with open(glob.glob(os.path.join(folder, "*", "version_*", "metrics.csv"))[0]) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for key in ("val/toy_reward", "val/rewards/chosen", "val/rewards/rejected", "train/rejected_weight"):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            out[key.split("/", 1)[1].replace("toy_reward", "reward")] = values[-1]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--num_train", type=int, default=2048)
    p.add_argument("--lr", type=float, default=None, help="the learning rate (the recipe's 5e-4 if not given)")
    args = p.parse_args(argv)
    got: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for arm in args.arms:
                r = run(os.path.join(root, f"s{seed}_{arm}"), seed, arm, args.num_train, args.lr)
                got[arm].append(r)
                print(f"seed {seed}  {arm:<5} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    print(f"\nmean over seeds {' '.join(map(str, args.seeds))}")
    for arm, rs in got.items():
        print(f"  {arm:<5} " + "  ".join(f"{k} {statistics.mean(r[k] for r in rs):.3f}" for k in rs[0]))


if __name__ == "__main__":
    main()
