"""The driver's side: shared options, the scratch folder, the repeats over the arms, and the JSON report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.measure import gpu_name, wait_for_idle
from benchmarks.harness.workers import REPO, is_worker, run_worker, worker_main


@dataclass(frozen=True)
class Bench:
    """What the harness needs to know of a script.

    ``module``: the script as ``python -m`` runs it (workers are started that way); ``name``: the report's
    ``benchmark``; ``arms``: each arm's name and the function a worker runs for it, in the default order;
    ``label``: the key that names the arm in a worker's result; ``packages``: whose versions the report
    records.
    """

    module: str
    name: str
    arms: dict[str, Callable[[dict], dict]]
    label: str
    packages: tuple[str, ...]


def parser(bench: Bench, doc: str) -> argparse.ArgumentParser:
    """A script's parser, with the options every script has first: steps, warm-up and batch size."""
    p = argparse.ArgumentParser(prog=f"python -m {bench.module}", description=doc.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per step")
    return p


def parse_args(p: argparse.ArgumentParser, bench: Bench, arms_flag: str, argv=None) -> argparse.Namespace:
    """Adds the options on where and how often the arms run and where the report goes, and parses; the
    arms chosen with ``arms_flag`` are checked and listed in ``args.arm_list``."""
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads in every arm")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="run every arm this many times, alternating the order")
    p.add_argument(arms_flag, default=",".join(bench.arms), help="the arms to run, comma-separated")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each worker, wait up to this many seconds for the machine to be idle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None, help="write the figures as JSON here")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--quiet", action="store_true", help="do not echo the workers' stderr")
    args = p.parse_args(argv)
    args.arm_list = [a.strip() for a in getattr(args, arms_flag.lstrip("-").replace("-", "_")).split(",") if a.strip()]
    if not args.arm_list or not set(args.arm_list) <= set(bench.arms):
        raise SystemExit(f"{arms_flag}: choose from {tuple(bench.arms)}")
    if args.steps <= args.warmup:
        raise SystemExit("--steps must be larger than --warmup")
    return args


@contextlib.contextmanager
def scratch(bench: Bench, keep: bool) -> Iterator[Path]:
    """A temporary folder for the model, the data and the workers' files; removed after unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench_{bench.name}_"))
    try:
        yield workdir
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def versions(packages: tuple[str, ...], pinned: dict[str, str] | None = None) -> dict:
    """Python's and each package's version (``pinned``'s where a peer's arm imports its own, checked when
    its worker reports), and the commit of the checkout the workers import."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out.update({k: v for k, v in (pinned or {}).items() if v != "installed"})
    try:
        out["alignsuite_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                                  capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["alignsuite_commit"] = None
    print("versions: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def repeats(bench: Bench, cfg: dict, workdir: Path, args) -> Iterator[tuple[int, list[str], dict]]:
    """Runs the chosen arms ``args.repeats`` times, in the given order and then reversed, alternately;
    yields each repeat's index, order and results (by arm) as it completes."""
    arms = args.arm_list
    for rep in range(args.repeats):
        order = arms if rep % 2 == 0 else arms[::-1]
        results = {}
        for arm in order:
            if args.wait_idle:
                share = wait_for_idle(args.wait_idle)
                print(f"  [{rep}] machine {100 * share:.0f}% busy before {arm}", flush=True)
            r = results[arm] = run_worker(bench.module, arm, cfg, workdir, str(rep), args.quiet)
            if r.get("profile"):
                print(f"--- {arm}: top ops over {cfg['profile']} profiled steps ---\n{r['profile']}")
            print(f"  [{rep}] {arm}: {r['pairs_per_s']:.2f} pairs/s, peak {r['memory']['peak_rss_mb']:.0f} MB,"
                  f" first loss {r['losses'][0]:.6f}, CPU/wall {r['cpu_per_wall']:.2f}, others {100 * r['others']:.0f}%,"
                  f" steal {100 * r['steal']:.0f}%, clean steps {len(r['clean_steps'])}/{r['timed_steps']},"
                  f" wall {r['wall_s']:.0f}s, load average now {os.getloadavg()[0]:.2f}", flush=True)
        yield rep, order, results


def write_report(bench: Bench, args, vers: dict, model: dict, data: dict, cfg: dict, runs: list, summary: dict) -> dict:
    """The report every script writes (``--out``): machine, versions, model, data, settings, runs, summary."""
    report = {
        "benchmark": bench.name,
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "gpu": gpu_name() if args.device == "cuda" else None},
        "versions": vers,
        "model": model,
        "data": data,
        "settings": {k: v for k, v in cfg.items() if k not in ("model_dir", "tokenizer_dir", "data", "workdir", "import_paths")},
        "runs": runs,
        "summary": summary,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    return report


def main(bench: Bench, drive: Callable[[], None]) -> None:
    """A script's entry point: a worker when started as one, else the driver ``drive``."""
    if is_worker(sys.argv[1:]):
        worker_main(bench.arms, bench.label, sys.argv[2:])
    else:
        drive()
