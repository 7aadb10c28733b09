"""The online loop against offline pairs on the language toy world: the table and the figure of the README.

    python scripts/toy_iterate.py --seeds 0 1 2
    python scripts/toy_iterate.py --diffusion --seeds 0 1 2    # text-to-image: the graded squares world

For each seed it runs ``recipes/toy/llm_iterate_{dpo,sppo,dno}.yaml`` (3 rounds of 256 fresh prompts, 4 samples
each, from the current policy) and the offline arm: the DPO recipe for one round on all 768 prompts at once, i.e.
pairs sampled once from the base model and fitted in one pass (more pairs and more steps than any online arm
keeps). Every arm is judged on the same 128 held-out prompts with the same seed. The runs resume: a finished run is
read, not run again. It prints the held-out reward by round (mean over the prompts) and the pairs kept, and draws
``--figure``.

With ``--diffusion`` the arms are ``recipes/toy/diffusion_iterate_corner.yaml`` (3 rounds of 32 fresh captions) and
its offline arm (one round on all 96 captions: pairs built once from the base's samples, one fit of the online
arm's 60 steps), each with
``--seed_everything`` and ``--iterate.seed`` set to the seed; the runs go under ``runs/toy_iterate_diffusion``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONLINE = ("dpo", "sppo", "dno")
# per world: the recipe of each online arm, the offline arm's prompts, the labels of the figure
WORLDS = {
    "llm": {"recipe": "llm_iterate_{}.yaml", "offline_prompts": 768, "offline_extra": [], "seed_everything": False,
            "online": "3 rounds of 256 prompts", "title": "language toy world"},
    # the offline fit takes exactly the online arm's 3 x 20 steps, however many of its 96 captions give a pair
    "diffusion": {"recipe": "diffusion_iterate_corner.yaml", "offline_prompts": 96, "seed_everything": True,
                  "offline_extra": ["--trainer.max_steps", "60", "--trainer.max_epochs", "20"],
                  "online": "3 rounds of 32 captions", "title": "text-to-image toy world (graded)"},
}


def run(arm: str, seed: int, out: str, world: str = "llm") -> list[dict]:
    """Every round's summary of ``arm`` (an online method, or ``offline``) at ``seed``."""
    from alignsuite.cli import main

    spec = WORLDS[world]
    folder = os.path.join(out, f"{arm}_s{seed}")
    recipe = os.path.join(REPO, "recipes", "toy", spec["recipe"].format("dpo" if arm == "offline" else arm))
    extra = (["--iterate.rounds", "1", "--iterate.prompts_per_round", str(spec["offline_prompts"]), *spec["offline_extra"]]
             if arm == "offline" else [])
    if spec["seed_everything"]:
        extra += ["--seed_everything", str(seed)]
    if not os.path.exists(os.path.join(folder, "rounds.json")):
        main(["iterate", "--config", recipe, "--iterate.seed", str(seed), "--iterate.output_dir", folder, *extra])
    with open(os.path.join(folder, "rounds.json")) as f:
        return json.load(f)


def draw(results: dict, path: str, world: str = "llm") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    spec = WORLDS[world]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for arm, runs in results.items():
        means = np.array([[r["heldout"]["mean"] for r in rounds] for rounds in runs.values()])
        if arm == "offline":  # one fit on pairs sampled once from the base: a point at the end, the seeds' range
            y = means[:, -1].mean()
            ax.errorbar([3.08], [y], yerr=[[y - means[:, -1].min()], [means[:, -1].max() - y]], fmt="s", capsize=3,
                        color="black", label=f"offline: one fit on base samples of all {spec['offline_prompts']} prompts"
                                                  f" ({len(runs)} seeds)")
            continue
        x, y = np.arange(means.shape[1]), means.mean(axis=0)
        ax.plot(x, y, marker="o", label=f"{arm}, {spec['online']} ({len(runs)} seeds)")
        ax.fill_between(x, means.min(axis=0), means.max(axis=0), alpha=0.15)
    ax.set(xlabel="round", ylabel="held-out toy reward", title=f"{spec['title']}: online rounds vs offline pairs",
           xticks=[0, 1, 2, 3])
    ax.legend(loc="lower right", fontsize=8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=None, help="default: dpo sppo dno offline (dpo offline with --diffusion)")
    parser.add_argument("--diffusion", action="store_true", help="the text-to-image arms (diffusion_iterate_corner.yaml)")
    parser.add_argument("--out", default=None, help="default: runs/toy_iterate (runs/toy_iterate_diffusion)")
    parser.add_argument("--figure", default=None, help="default: rounds.png under --out")
    args = parser.parse_args(argv)
    world = "diffusion" if args.diffusion else "llm"
    arms = args.arms or (["dpo", "offline"] if args.diffusion else [*ONLINE, "offline"])
    if args.diffusion and set(arms) - {"dpo", "offline"}:
        parser.error("--diffusion runs the arms dpo and offline")
    out = args.out or ("runs/toy_iterate_diffusion" if args.diffusion else "runs/toy_iterate")
    figure = args.figure or os.path.join(out, "rounds.png")
    results = {arm: {s: run(arm, s, out, world) for s in args.seeds} for arm in arms}
    print(f"{'arm':<8} {'seed':>4}  held-out reward by round          pairs kept")
    for arm, runs in results.items():
        for seed, rounds in runs.items():
            means = " ".join(f"{r['heldout']['mean']:.3f}" for r in rounds)
            pairs = "+".join(str(r["build"]["rows"]) for r in rounds[1:])
            print(f"{arm:<8} {seed:>4}  {means:<32}  {pairs} = {sum(r['build']['rows'] for r in rounds[1:])}")
    draw(results, figure, world)
    print(f"figure: {figure}")


if __name__ == "__main__":
    sys.exit(main())
