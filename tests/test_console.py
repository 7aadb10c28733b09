"""What a normal run prints: the toy language recipe, run as a user runs it, prints none of the lines nobody acts
on (device lines for absent hardware, weight loading and writing bars, a FLOPs count of 0, the logger's version
in the progress bar, datasets' bars, the logging-interval hint), and still prints a real data warning."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("GPU available", "TPU available", "Loading weights", "Writing model shards", "Total FLOPs", "FLOPs", "v_num",
         "Flattening the indices", "smaller than the logging interval", "Trainer already configured")


def test_a_toy_fit_prints_no_noise_and_still_warns_about_its_data(tmp_path):
    args = [sys.executable, "-m", "alignsuite", "fit", "--config", os.path.join(REPO, "recipes/toy/llm_dpo.yaml"),
            "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2",
            "--trainer.log_every_n_steps", "50", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.callbacks.init_args.num_prompts", "4", "--data.init_args.num_train", "64",
            "--data.init_args.num_val", "16",
            # a real data warning: truncated this short, some pairs become identical and are dropped
            "--model.init_args.backbone.init_args.max_length", "4",
            "--model.init_args.backbone.init_args.max_prompt_length", "2"]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": REPO, "COLUMNS": "200"})
    printed = run.stdout + run.stderr
    assert run.returncode == 0, printed
    assert [line for line in NOISE if line in printed] == [], printed
    assert "whose chosen and rejected answers are the same tokens" in printed  # the data warning
    assert "exported the policy to" in printed and "Trainable params" in printed  # the run still reports itself
    assert os.path.isfile(tmp_path / "runs" / "toy_llm_dpo" / "version_0" / "metrics.csv")


def test_a_one_line_fit_without_validation_data_prints_no_noise(tmp_path):
    """The one-line run on a file with no validation split, bounded by max_steps: Lightning warned about the empty
    validation list and drew the bar's epoch as "Epoch 1/-2" (max_epochs -1)."""
    import json

    from alignsuite.toy import shipped_path

    with open(tmp_path / "pairs.jsonl", "w") as f:
        for c in "abcdefghijklmnop":
            f.write(json.dumps({"prompt": f"echo {c}", "chosen": c.upper(), "rejected": c}) + "\n")
    args = [sys.executable, "-m", "alignsuite", "fit", "--model.backbone.model_name_or_path", shipped_path("llm"),
            "--data.train", "pairs.jsonl", "--trainer.max_steps", "3", "--export.enabled", "false"]
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": REPO, "COLUMNS": "200"})
    printed = run.stdout + run.stderr
    assert run.returncode == 0, printed
    assert "across ranks is zero" not in printed and "/-2" not in printed, printed
    assert "Epoch 1" in printed  # the bar still says where the run is
