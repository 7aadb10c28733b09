"""Each arm runs in a subprocess of its own, so that its peak memory is its own.

The driver writes the run's settings to a JSON file and starts ``python -m <script> --worker <arm>
<settings> <result>`` from the repository root (so the worker imports this checkout's alignsuite); the
worker trains, turns its clock into figures and writes its result as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness.figures import throughput

REPO = Path(__file__).resolve().parents[2]
WORKER_FLAG = "--worker"


def worker_env(cfg: dict, workdir: Path, arm: str | None = None) -> dict:
    """The worker's environment: its thread count, nothing from the network, no progress bars, and the arm's
    own import folder first on its path where the settings name one (``import_paths``: a pinned peer)."""
    env = dict(os.environ)
    first = cfg.get("import_paths", {}).get(arm)
    if first:
        env["PYTHONPATH"] = os.pathsep.join([first, *filter(None, [env.get("PYTHONPATH")])])
    env.update({
        "OMP_NUM_THREADS": str(cfg["threads"]),
        "MKL_NUM_THREADS": str(cfg["threads"]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(workdir / "datasets_cache"),
        "PYTHONWARNINGS": "ignore",
        "TQDM_DISABLE": "1",
    })
    return env


def run_worker(module: str, arm: str, cfg: dict, workdir: Path, tag: str, quiet: bool) -> dict:
    """Runs ``arm`` of the script ``module`` in a subprocess on ``cfg``; returns its result and wall time."""
    cfg_path, result_path = workdir / "config.json", workdir / f"result_{arm}_{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", module, WORKER_FLAG, arm, str(cfg_path), str(result_path)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=worker_env(cfg, workdir, arm), capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{arm} worker failed (exit {proc.returncode})")
    if not quiet and proc.stderr.strip():
        sys.stderr.write(f"--- {arm} stderr (tail) ---\n{proc.stderr[-2000:]}\n")
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def worker_main(arms: dict[str, Callable[[dict], dict]], label: str, argv: list[str]) -> None:
    """In the subprocess: seed, set the threads, train ``argv[0]``'s arm, write its figures to ``argv[2]``.

    An arm returns its record: ``clock`` (a ``StepClock``'s state), ``losses``, ``memory`` and whatever
    its script compares; the result names the arm under ``label``.
    """
    import torch

    arm, cfg_path, result_path = argv
    cfg = json.loads(Path(cfg_path).read_text())
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    result = arms[arm](cfg)
    result[label] = arm
    result.setdefault("torch_threads", torch.get_num_threads())
    result.update(throughput(result.pop("clock"), cfg["batch_size"], cfg["warmup"], cfg["threads"]))
    Path(result_path).write_text(json.dumps(result))


def is_worker(argv: list[str]) -> bool:
    return len(argv) == 4 and argv[0] == WORKER_FLAG
