"""The evaluation's scorers as a validation callback: logged as val/<scorer> before training and at
validations, refused at start when they do not fit the backbone's modality."""

from __future__ import annotations

import csv
import os

import pytest

from alignsuite.cli import main
from test_cli import REPO


def run(tmp_path, scorer_world="llm", every=1, callback_class="ValidationScores", max_steps=4, scorer=None):
    recipe = os.path.join(REPO, "recipes/toy/llm_dpo.yaml")
    scorer = scorer or {"class_path": "alignsuite.evaluation.scorers.ToyReward", "init_args": {"world": scorer_world}}
    callback = {"class_path": f"alignsuite.callbacks.{callback_class}", "init_args": {
        "scorers": [scorer],
        "prompts": "toy:llm", "num_prompts": 16, "seed": 3, "every_n_validations": every,
        "generation_kwargs": {"max_new_tokens": 8}}}
    override = tmp_path / "callback.yaml"
    import yaml

    override.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    main(["fit", "--config", recipe, "--config", str(override), "--trainer.max_steps", str(max_steps),
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


def test_wer_of_a_text_model_without_references_is_refused_before_generating(tmp_path, capsys):
    wer = {"class_path": "alignsuite.evaluation.scorers.WER"}
    with pytest.raises(SystemExit) as stop:  # a data error: its message alone, exit status 1
        run(tmp_path, scorer=wer, max_steps=1)  # before: val/wer of each answer against its own prompt
    assert stop.value.code == 1
    assert "alignsuite: error: toy:llm: row 0: field 'reference': expected the reference text scorer 'wer'" in \
        capsys.readouterr().err


def test_the_one_validation_samples_callback_logs_its_judges_and_writes_the_samples_table(tmp_path):
    """ValidationSamples, of which ValidationScores is a setting, keeps what it judged with the text writer:
    one table per measurement, each generated answer beside its prompt."""
    import json

    rows = run(tmp_path, callback_class="ValidationSamples", max_steps=2)
    assert [int(r["step"]) for r in rows] == [0, 1]
    folder = tmp_path / "toy_llm_dpo" / "version_0" / "samples"
    tables = sorted(p.name for p in folder.glob("*.jsonl"))
    assert tables == ["step_000000.jsonl", "step_000002.jsonl"] and len(list(folder.glob("*.html"))) == 2
    written = [json.loads(line) for line in (folder / "step_000000.jsonl").read_text().splitlines()]
    assert len(written) == 16 and all(set(r) == {"index", "question", "generated"} for r in written)
    from alignsuite.toy import get_world

    world = get_world("llm")
    mean = sum(world.reward(r["question"], r["generated"]) for r in written) / 16
    assert float(rows[0]["val/toy_reward_llm"]) == pytest.approx(mean, abs=1e-6)
