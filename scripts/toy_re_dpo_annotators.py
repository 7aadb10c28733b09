"""RE-PO with three annotators of unequal reliability on the language toy world
(`recipes/toy/llm_re_dpo_annotators.yaml`: 10%, 30% and 45% of each annotator's training pairs flipped): the
plain base objective, its RE form with one reliability for everyone and with one per annotator, over seeds.

    python scripts/toy_re_dpo_annotators.py --seeds 0 1 2
    python scripts/toy_re_dpo_annotators.py --rates 0.2 0.4 0.6    # noisier annotators than the recipe's
    python scripts/toy_re_dpo_annotators.py --objective simpo --arms base "per annotator" --rates 0.2 0.4 0.6

``--objective`` picks the base (``dpo``, as the recipe ships, ``ipo``, ``simpo`` or ``cpo``, each at the
hyper-parameters of its toy recipe or its defaults: IPO and CPO ``beta`` 0.1, SimPO ``beta`` 2 and ``gamma`` 1)
and its RE form (``re_ipo`` ...) with the recipe's ``eta0`` 0.9 and ``alpha`` 0.1. ``--arms`` takes ``base``,
``one eta`` and ``per annotator`` (or the arm's full name, as printed); ``--hparams`` replaces the base's
hyper-parameters in both arms (``--objective cpo --hparams "beta: 0.1, cpo_alpha: 0.0"``: CPO without its NLL).

Each seed sets the run's seed, the toy world's draw and both FlipPairs draws; ``--rates`` replaces the recipe's
flip rates (one per annotator, three as the recipe has). Each run is measured by its last `val/toy_reward` and,
for RE-DPO, each reliability's last logged value (`train/eta`, or `train/eta/<k>` per annotator), printed beside
``1 - rate``, the share of the annotator's labels left right. It prints one row per run and, per arm, the mean
over seeds.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "llm_re_dpo_annotators.yaml")
RATES = (0.1, 0.3, 0.45)
OBJECTIVE = "--model.init_args.objective"
# Each base: its class, its RE form's class and the hyper-parameters both take.
BASES = {
    "dpo": ("DPO", "REDPO", "beta: 0.1"),
    "ipo": ("IPO", "REIPO", "beta: 0.1"),
    "simpo": ("SimPO", "RESimPO", "beta: 2.0, gamma: 1.0"),
    "cpo": ("CPO", "RECPO", "beta: 0.1"),
}
KINDS = ("base", "one eta", "per annotator")


def arms(objective: str = "dpo", hparams: str | None = None) -> dict[str, list[str]]:
    """The arms for one base: ``{name: extra arguments to the recipe}``, named ``dpo``, ``re_dpo one eta`` and
    ``re_dpo per annotator`` for DPO (and so on for the others); ``hparams`` replaces the base's hyper-parameters
    (``"beta: 0.1, cpo_alpha: 0.0"``), in both arms."""
    base, robust, default = BASES[objective]
    hparams = hparams or default
    em = "eta0: 0.9, alpha: 0.1"

    def objective_argument(cls: str, args: str) -> list[str]:
        return [OBJECTIVE, "{class_path: alignsuite.objectives.%s, init_args: {%s}}" % (cls, args)]

    return {
        objective: objective_argument(base, hparams),
        f"re_{objective} one eta": objective_argument(
            robust, f"{hparams}, {em}, annotator_column: null, num_annotators: 1"),
        f"re_{objective} per annotator": objective_argument(
            robust, f"{hparams}, {em}, annotator_column: annotator, num_annotators: 3"),
    }


ARMS = arms("dpo")


def run(folder: str, seed: int, arm: str, rates=RATES, objective: str = "dpo",
        hparams: str | None = None) -> dict[str, float]:
    """The recipe with ``seed``, ``arm`` (of :func:`arms` of ``objective``) and flip ``rates``: ``{"reward": last
    val/toy_reward, "eta/<k>" or "eta": last value}``."""
    from alignsuite.cli import main

    flips = ("[{class_path: alignsuite.data.procedures.FlipPairs, init_args: {annotator_rates: [%s], seed: %d}},"
             " {class_path: alignsuite.data.procedures.FlipPairs, init_args: {annotator_rates: [0, 0, 0], seed: %d,"
             " splits: [val]}}]" % (", ".join(map(str, rates)), seed, seed))
    main(["fit", "--config", RECIPE, "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
          "--data.init_args.procedures", flips, *arms(objective, hparams)[arm], "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", folder, "--checkpoint.dirpath", os.path.join(folder, "ckpt")])
    with open(glob.glob(os.path.join(folder, "*", "version_*", "metrics.csv"))[0]) as f:
        rows = list(csv.DictReader(f))
    out = {"reward": [float(r["val/toy_reward"]) for r in rows if r.get("val/toy_reward")][-1]}
    for key in ("train/eta", *(f"train/eta/{k}" for k in range(len(rates)))):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values and (key == "train/eta") == arm.endswith("one eta"):
            out[key.removeprefix("train/")] = values[-1]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--objective", choices=list(BASES), default="dpo", help="the base objective and its RE form")
    p.add_argument("--hparams", help="the base's hyper-parameters in both arms, as YAML mapping entries"
                   " (\"beta: 0.1, cpo_alpha: 0.0\"; default: the base's own, above)")
    p.add_argument("--arms", nargs="+", help=f"which arms to run: {', '.join(KINDS)} (default: all)")
    p.add_argument("--rates", type=float, nargs=len(RATES), default=list(RATES))
    args = p.parse_args(argv)
    names = list(arms(args.objective))
    chosen = []
    for arm in args.arms or names:
        if arm not in names and arm not in KINDS:
            p.error(f"--arms: {arm!r} is none of {', '.join(KINDS)} (or {', '.join(names)})")
        chosen.append(arm if arm in names else names[KINDS.index(arm)])
    args.arms = chosen
    got: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for k, arm in enumerate(args.arms):
                r = run(os.path.join(root, f"s{seed}_{k}"), seed, arm, args.rates, args.objective, args.hparams)
                got[arm].append(r)
                etas = "  ".join(f"{key} {v:.3f}" for key, v in r.items() if key != "reward")
                print(f"seed {seed}  {arm:<23} val/toy_reward {r['reward']:.3f}  {etas}", flush=True)
    print(f"\nmean over seeds {' '.join(map(str, args.seeds))}; the share of each annotator's labels left right:"
          f" {', '.join(f'{1 - r:g}' for r in args.rates)} (all: {1 - sum(args.rates) / len(args.rates):.3f})")
    for arm, rs in got.items():
        print(f"  {arm:<23} " + "  ".join(f"{key} {statistics.mean(r[key] for r in rs):.3f}" for key in rs[0]))


if __name__ == "__main__":
    main()
