"""The text-to-speech toy worlds end to end: base models that stumble on hard texts, pairs built from their own
samples, and both toy recipes run as shipped, each lowering val/wer."""

import csv
import glob
import json
import os
import random

import pytest
import torch

from alignsuite.cli import main
from alignsuite.speech.pairs import synthesise
from alignsuite.toy import get_world, speech

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus_wer(world, backbone, items) -> float:
    out = synthesise(backbone, items, 64, None, world.generation_kwargs)
    return speech.word_error_rate([speech.transcribe(o) for o in out], [it["text"] for it in items])


@pytest.mark.parametrize("name", ["tts", "tts_flow"])
def test_base_model_stumbles_on_hard_texts_only(name):
    """Like a real zero-shot TTS model: short texts read almost perfectly, long ones and repeated words not.

    The base model is trained on this machine, and its figures move with the CPU's float kernels (easy WER
    0.05 on an AMD EPYC, 0.067 on an Intel Xeon): the bound keeps a margin for that."""
    world = get_world(name)
    backbone = world.backbone()
    backbone.configure()
    short = [world.item(random.Random(f"short-{k}"), hard=False) for k in range(48)]
    hard = world.eval_prompts(48, seed=7)
    easy_wer, hard_wer = corpus_wer(world, backbone, short), corpus_wer(world, backbone, hard)
    assert easy_wer < 0.1 < hard_wer and hard_wer > 2 * easy_wer, (easy_wer, hard_wer)


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


@pytest.mark.parametrize("recipe,drop", [("tts_dpo.yaml", 0.15), ("tts_flow_dpo.yaml", 0.3)])
def test_toy_recipe_lowers_wer_as_shipped(tmp_path, recipe, drop):
    """The shipped toy recipe, whole: val/wer at the end is at least ``drop`` (relative) below step 0's. Measured:
    tts 0.200 -> 0.159, tts_flow 0.159 -> 0.094."""
    run, wer = run_recipe(tmp_path, recipe)
    assert wer[0][0] == 0 and len(wer) >= 3
    assert wer[-1][1] < (1 - drop) * wer[0][1], wer
    first = sorted(glob.glob(os.path.join(run, "speech_samples", "step_*")))[0]
    samples = [json.loads(line) for line in open(os.path.join(first, "samples.jsonl"))]
    assert len(samples) == 4 and all(os.path.isfile(os.path.join(first, s["file"])) for s in samples)
    assert os.listdir(os.path.join(run, "export"))
