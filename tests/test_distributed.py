"""Two CPU processes (DDP over gloo): the same recipes train, gather and export as on one."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import yaml

from test_cli import pair_file, recipe  # noqa: F401  (fixture and recipe builder)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.distributed


def run_ddp(path, *extra):
    cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", path,
           "--config", os.path.join(REPO, "configs/strategy/ddp_cpu2.yaml"), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("objective, reference, layout", [
    ("DPO", "alignsuite.reference.Precomputed", "pairs"),
    ("KTO", None, "unpaired"),
])
def test_two_process_fit(tmp_path, tiny_lm_dir, pair_file, objective, reference, layout):  # noqa: F811
    extra = {"reference": {"class_path": reference}} if reference else None
    path = recipe(tmp_path, tiny_lm_dir, pair_file, objective=objective, extra_model=extra)
    config = yaml.safe_load(open(path))
    config["data"]["init_args"]["layout"] = {"class_path": {"pairs": "alignsuite.data.TextPairs", "unpaired": "alignsuite.data.TextUnpaired"}[layout]}
    open(path, "w").write(yaml.safe_dump(config))
    run_ddp(path)
    rows = list(csv.DictReader(open(tmp_path / "runs" / "t" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4
    first = 0.6931 if objective == "DPO" else 0.5  # policy == reference at the first step
    assert losses[0] == pytest.approx(first, abs=1e-3)
    assert os.path.exists(tmp_path / "runs" / "t" / "version_0" / "export" / "config.json")
