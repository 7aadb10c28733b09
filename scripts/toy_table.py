"""Run toy recipes and print val/toy_reward at each validation, for the README's table.

    python scripts/toy_table.py llm_dpo llm_ipo llm_simpo llm_orpo llm_kto
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name: str) -> tuple[list[tuple[int, float]], float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "alignsuite", "fit", "--config", os.path.join(REPO, "recipes", "toy", f"{name}.yaml"),
             "--trainer.logger.init_args.save_dir", out, "--trainer.enable_progress_bar", "false",
             "--checkpoint.dirpath", os.path.join(out, "ckpt")],
            check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        path = glob.glob(os.path.join(out, "*", "version_*", "metrics.csv"))[0]
        with open(path) as f:
            rows = list(csv.DictReader(f))
    reward = [(int(r["step"]), float(r["val/toy_reward"])) for r in rows if r.get("val/toy_reward")]
    return reward, seconds


if __name__ == "__main__":
    for name in sys.argv[1:]:
        reward, seconds = run(name)
        trajectory = " → ".join(f"{v:.2f}" for _, v in reward)
        print(f"| `recipes/toy/{name}.yaml` | {trajectory} (steps {', '.join(str(s) for s, _ in reward)}) | {seconds:.0f} s |",
              flush=True)
