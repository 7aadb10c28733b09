"""The text-to-speech toy worlds end to end: pairs built from the base models' own samples, and both toy recipes
run as shipped, each lowering val/wer (the base models themselves: ``test_toy_bases.py``)."""

import csv
import glob
import json
import os

import pytest
import torch

from alignsuite.cli import main
from alignsuite.toy import get_world, speech

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,n", [("tts", 1024), ("tts_flow", 512)])  # the recipes' pairs: built once
def test_toy_pairs_prefer_the_samples_the_recogniser_hears_right(name, n):
    world = get_world(name)
    rows = world.make_pairs(n, seed=0)
    assert len(rows) == n
    for row in rows:
        assert row["chosen_wer"] <= row["rejected_wer"] and row["chosen"] != row["rejected"]
        assert speech.transcribe(torch.tensor(row["chosen"])) == row["chosen_transcript"]
    mean = {k: sum(r[f"{k}_wer"] for r in rows) / len(rows) for k in ("chosen", "rejected")}
    assert mean["rejected"] > mean["chosen"] + 0.15, mean


def run_recipe(tmp_path, recipe):
    main(["fit", "--config", os.path.join(REPO, "recipes", "toy", recipe), "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    run = glob.glob(str(tmp_path / "*" / "version_0"))[0]
    with open(os.path.join(run, "metrics.csv")) as f:
        wer = [(int(r["step"]), float(r["val/wer"])) for r in csv.DictReader(f) if r.get("val/wer")]
    return run, wer


@pytest.mark.parametrize("recipe,drop", [("tts_dpo.yaml", 0.15), ("tts_flow_dpo.yaml", 0.25)])
def test_toy_recipe_lowers_wer_as_shipped(tmp_path, recipe, drop):
    """The shipped toy recipe, whole, from the shipped base and pairs: val/wer at the end is at least ``drop``
    (relative) below step 0's. Measured: tts 0.220 -> 0.155 (30%; the same on one thread or two; data seeds 1 and 2:
    0.152, 0.155), tts_flow
    0.159 -> 0.095 / 0.096 / 0.097 / 0.102 over the backbone's noise seeds 0-3 (35-40%)."""
    run, wer = run_recipe(tmp_path, recipe)
    assert wer[0][0] == 0 and len(wer) >= 3
    assert wer[-1][1] < (1 - drop) * wer[0][1], wer
    first = sorted(glob.glob(os.path.join(run, "speech_samples", "step_*")))[0]
    samples = [json.loads(line) for line in open(os.path.join(first, "samples.jsonl"))]
    assert len(samples) == 4 and all(os.path.isfile(os.path.join(first, s["file"])) for s in samples)
    assert os.listdir(os.path.join(run, "export"))
