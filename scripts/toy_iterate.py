"""The online loop against offline pairs on the language toy world: the table and the figure of the README.

    python scripts/toy_iterate.py --seeds 0 1 2

For each seed it runs ``recipes/toy/llm_iterate_{dpo,sppo,dno}.yaml`` (3 rounds of 256 fresh prompts, 4 samples
each, from the current policy) and the offline arm: the DPO recipe for one round on all 768 prompts at once, i.e.
pairs sampled once from the base model and fitted in one pass (more pairs and more steps than any online arm
keeps). Every arm is judged on the same 128 held-out prompts with the same seed. The runs resume: a finished run is
read, not run again. It prints the held-out reward by round (mean over the prompts) and the pairs kept, and draws
``--figure``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONLINE = ("dpo", "sppo", "dno")


def run(arm: str, seed: int, out: str) -> list[dict]:
    """Every round's summary of ``arm`` (an online method, or ``offline``) at ``seed``."""
    from alignsuite.cli import main

    folder = os.path.join(out, f"{arm}_s{seed}")
    recipe = os.path.join(REPO, "recipes", "toy", f"llm_iterate_{'dpo' if arm == 'offline' else arm}.yaml")
    extra = ["--iterate.rounds", "1", "--iterate.prompts_per_round", "768"] if arm == "offline" else []
    if not os.path.exists(os.path.join(folder, "rounds.json")):
        main(["iterate", "--config", recipe, "--iterate.seed", str(seed), "--iterate.output_dir", folder, *extra])
    with open(os.path.join(folder, "rounds.json")) as f:
        return json.load(f)


def draw(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for arm, runs in results.items():
        means = np.array([[r["heldout"]["mean"] for r in rounds] for rounds in runs.values()])
        if arm == "offline":  # one fit on pairs sampled once from the base: a point at the end, the seeds' range
            y = means[:, -1].mean()
            ax.errorbar([3.08], [y], yerr=[[y - means[:, -1].min()], [means[:, -1].max() - y]], fmt="s", capsize=3,
                        color="black", label=f"offline: one fit on base samples of all 768 prompts ({len(runs)} seeds)")
            continue
        x, y = np.arange(means.shape[1]), means.mean(axis=0)
        ax.plot(x, y, marker="o", label=f"{arm}, 3 rounds of 256 prompts ({len(runs)} seeds)")
        ax.fill_between(x, means.min(axis=0), means.max(axis=0), alpha=0.15)
    ax.set(xlabel="round", ylabel="held-out toy reward", title="language toy world: online rounds vs offline pairs",
           xticks=[0, 1, 2, 3])
    ax.legend(loc="lower right", fontsize=8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=[*ONLINE, "offline"])
    parser.add_argument("--out", default="runs/toy_iterate")
    parser.add_argument("--figure", default="runs/toy_iterate/rounds.png")
    args = parser.parse_args(argv)
    results = {arm: {s: run(arm, s, args.out) for s in args.seeds} for arm in args.arms}
    print(f"{'arm':<8} {'seed':>4}  held-out reward by round          pairs kept")
    for arm, runs in results.items():
        for seed, rounds in runs.items():
            means = " ".join(f"{r['heldout']['mean']:.3f}" for r in rounds)
            pairs = "+".join(str(r["build"]["rows"]) for r in rounds[1:])
            print(f"{arm:<8} {seed:>4}  {means:<32}  {pairs} = {sum(r['build']['rows'] for r in rounds[1:])}")
    draw(results, args.figure)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    sys.exit(main())
