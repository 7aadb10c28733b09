"""The evaluation's scorers as a validation callback: logged as val/<scorer> before training and at
validations, refused at start when they do not fit the backbone's modality."""

from __future__ import annotations

import csv
import os

import pytest

from alignsuite.cli import main
from test_cli import REPO


def run(tmp_path, scorer_world="llm", every=1):
    recipe = os.path.join(REPO, "recipes/toy/llm_dpo.yaml")
    callback = {"class_path": "alignsuite.callbacks.ValidationScores", "init_args": {
        "scorers": [{"class_path": "alignsuite.evaluation.scorers.ToyReward", "init_args": {"world": scorer_world}}],
        "prompts": "toy:llm", "num_prompts": 16, "seed": 3, "every_n_validations": every,
        "generation_kwargs": {"max_new_tokens": 8}}}
    override = tmp_path / "callback.yaml"
    import yaml

    override.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    main(["fit", "--config", recipe, "--config", str(override), "--trainer.max_steps", "4",
          "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
          "false", "--trainer.logger.init_args.save_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "c")])
    with open(tmp_path / "toy_llm_dpo" / "version_0" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("val/toy_reward_llm")]


def test_scorers_are_logged_before_training_and_at_validations(tmp_path):
    from alignsuite.backbones import CausalLM
    from alignsuite.evaluation.prompts import load_prompts
    from alignsuite.evaluation.run import generate_all
    from alignsuite.toy import get_world

    rows = run(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 1, 3]  # before training, then the validations at steps 2 and 4
    assert all(float(r["val/toy_reward_llm_failed"]) == 0 for r in rows)
    # Step 0 is the base model: the same prompts, seed and generation, scored directly.
    base = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    base.configure()
    prompts = load_prompts("toy:llm", 16, 3)
    outputs, _ = generate_all(base, prompts, 3, 8, {"max_new_tokens": 8})
    world = get_world("llm")
    expected = sum(world.reward(p["prompt"], o) for p, o in zip(prompts, outputs)) / 16
    assert float(rows[0]["val/toy_reward_llm"]) == pytest.approx(expected, abs=1e-6)


def test_a_scorer_for_another_modality_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="scores text_to_image outputs, not text"):
        run(tmp_path, scorer_world="diffusion")
