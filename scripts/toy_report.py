"""Write the toy report shown in the docs (Evaluation and reports): the language toy base against a DPO run.

    python -m alignsuite fit --config recipes/toy/llm_dpo.yaml      # about a minute on a CPU
    python scripts/toy_report.py runs/toy_llm_dpo/version_0            # -> runs/toy_llm_dpo/version_0/report/

Both models answer the same fixed evaluation prompts greedily; the world's programmatic reward scores
every answer. The docs page's screenshot is this page in headless Chromium:

    chromium --headless --disable-gpu --no-sandbox --screenshot=docs/images/toy_report.png --window-size=1200,2000 \
        file://$PWD/runs/toy_llm_dpo/version_0/report/report.html
"""

from __future__ import annotations

import argparse
import os

from alignsuite.backbones import CausalLM
from alignsuite.evaluation.report import write_report
from alignsuite.evaluation.results import EvalResults, ScorerResult
from alignsuite.toy import get_world


def generate(model: str, prompts: list[str]) -> list[str]:
    backbone = CausalLM(model)
    backbone.configure()
    backbone.policy.eval()
    return backbone.generate(prompts, max_new_tokens=8)


def summarise(result: ScorerResult) -> ScorerResult:
    try:
        from alignsuite.evaluation.winrate import summarise as bootstrap_summary
    except ImportError:  # the evaluation package without its win rates: the plain win rate, no interval
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        result.mean_base, result.mean_aligned = mean(result.base), mean(result.aligned)
        result.win_rate = mean([(a > b) + 0.5 * (a == b) for b, a in zip(result.base, result.aligned)])
        return result
    return bootstrap_summary(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished toy DPO run: runs/toy_llm_dpo/version_N")
    parser.add_argument("--out", help="where the report goes (default: <run>/report)")
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)  # not the seed of the validation prompts
    args = parser.parse_args()

    world = get_world("llm")
    prompts = world.eval_prompts(args.num_prompts, args.seed)
    aligned_model = os.path.join(args.run, "export")
    base, aligned = generate("toy:llm", prompts), generate(aligned_model, prompts)
    scored = [[world.reward(p, o) for p, o in zip(prompts, outputs)] for outputs in (base, aligned)]
    reward = ScorerResult("toy_reward", "fraction of letters", *scored)
    exact = ScorerResult("exact_echo", "fraction", [float(r == 1.0) for r in reward.base],
                         [float(r == 1.0) for r in reward.aligned])
    results = EvalResults(
        "text", prompts, base, aligned, scores=[summarise(reward), summarise(exact)],
        failures={"base": 0, "aligned": 0},
        details={"title": "Toy report: DPO on the language toy world", "base model": "toy:llm",
                 "aligned model": aligned_model, "prompt set": f"toy world llm, eval_prompts({args.num_prompts}, seed={args.seed})",
                 "decoding": "greedy, 8 new tokens"},
    )
    out = args.out or os.path.join(args.run, "report")
    print(write_report(results, out, metrics_csv=os.path.join(args.run, "metrics.csv")))


if __name__ == "__main__":
    main()
