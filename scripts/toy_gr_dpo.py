"""Group-robust DPO on the two-group language toy world (`recipes/toy/llm_gr_dpo.yaml`): the step size of the group
weights swept against plain DPO, over seeds.

    python scripts/toy_gr_dpo.py --step-sizes 0 0.01 0.05 0.2 1 --seeds 0 1 2

For each seed, the recipe runs once per step size (``--model.objective.step_size``) and once with ``dpo``; each run
is measured as ``tests/test_group_robust.py`` measures it: the worst group's reward on greedy answers at the last
validation (the lower of `val/reward_caps`, group 0's, and `val/reward_lower`, group 1's), and each group's DPO
loss and implicit-reward accuracy on the recipe's held-out pairs against the base model (``held_out_groups``). It
prints one row per run and, per step size, the mean over seeds.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import statistics
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "llm_gr_dpo.yaml")


def fit(folder: str, *args: str) -> tuple[str, float]:
    """The export of the recipe run with ``args``, and its worst-group reward at the last validation: the lower of
    group 0's (capitals) and group 1's (lower case) on greedy answers."""
    from alignsuite.cli import main

    main(["fit", "--config", RECIPE, "--trainer.logger.init_args.save_dir", folder,
          "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", os.path.join(folder, "ckpt"), *args])
    with open(glob.glob(os.path.join(folder, "*", "version_*", "metrics.csv"))[0]) as f:
        last = [r for r in csv.DictReader(f) if r.get("val/reward_caps")][-1]
    return (glob.glob(os.path.join(folder, "*", "version_*", "export"))[0],
            min(float(last["val/reward_caps"]), float(last["val/reward_lower"])))


def held_out_groups(model: str, seed: int, folder: str) -> dict[str, float]:
    """Each group's mean DPO loss and implicit-reward accuracy on the recipe's held-out pairs (one batch holding
    them all), for ``model`` against the base model: the paper's per-group measures, whatever objective trained it."""
    import lightning as L

    from alignsuite.backbones import CausalLM
    from alignsuite.data import TextPairs
    from alignsuite.data.procedures import GroupPairs
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import GroupRobustDPO
    from alignsuite.reference import FrozenCopy
    from alignsuite.toy.data import ToyPreferenceData

    groups = GroupPairs({"caps": ["caps_0", "caps_1"], "lower": ["lower_0", "lower_1"]}, shares=[0.85, 0.15])
    module = PreferenceModule(CausalLM(model, max_length=32, max_prompt_length=16), GroupRobustDPO(),
                              reference=FrozenCopy("toy:llm"))
    data = ToyPreferenceData(world="llm_case", num_train=16, num_val=256, batch_size=16, eval_batch_size=512,
                             seed=seed, procedures=[groups], layout=TextPairs(number_fields={"group": "group"}))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=folder)
    (metrics,) = trainer.validate(module, data, verbose=False)
    return {k.removeprefix("val/"): float(v) for k, v in metrics.items() if "group_" in k}


def measure(folder: str, seed: int, *args: str) -> dict[str, float]:
    """One run's worst-group reward, loss and accuracy."""
    export, reward = fit(folder, "--seed_everything", str(seed), "--data.init_args.seed", str(seed), *args)
    m = held_out_groups(export, seed, folder)
    return {"reward": reward, "loss": max(m["loss/group_0"], m["loss/group_1"]),
            "accuracy": min(m["rewards/accuracies_group_0"], m["rewards/accuracies_group_1"])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--step-sizes", type=float, nargs="+", default=[0.0, 0.01, 0.05, 0.2, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    arms = [(f"gr_dpo step {s:g}", ["--model.objective.step_size", str(s)]) for s in args.step_sizes]
    arms.append(("dpo", ["--model.objective", "DPO"]))
    rows: dict[str, list[dict]] = {name: [] for name, _ in arms}
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for k, (name, extra) in enumerate(arms):
                r = measure(os.path.join(root, f"s{seed}_{k}"), seed, *extra)
                rows[name].append(r)
                print(f"seed {seed}  {name:<18} worst-group reward {r['reward']:.3f}  held-out worst-group loss"
                      f" {r['loss']:.3f}  accuracy {r['accuracy']:.3f}", flush=True)
    print("\nmean over seeds " + " ".join(map(str, args.seeds)))
    for name, got in rows.items():
        print(f"  {name:<18} " + "  ".join(f"{k} {statistics.mean(r[k] for r in got):.3f}"
                                           for k in ("reward", "loss", "accuracy")))


if __name__ == "__main__":
    main()
