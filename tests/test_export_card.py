"""What an export folder holds besides the weights: ordinary file modes, a marker without machine paths, a model
card (base model, objective and its settings, data, steps, the evaluation's numbers), and an optional push."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import save_tiny_pipeline
from huggingface_hub import HfApi, ModelCard
from test_cli import pair_file, recipe  # noqa: F401  (fixture and recipe builder)
from test_diffusion_cli import diffusion_recipe, pickapic_parquet

from alignsuite.cli import main
from alignsuite.evaluation.results import EvalResults, ScorerResult
from alignsuite.evaluation.run import write_results


def fit_under_umask(args):
    old = os.umask(0o022)
    try:
        main(args)
    finally:
        os.umask(old)


def modes(folder):
    """Every file's and folder's permission bits under ``folder``, by relative path."""
    found = {".": stat.S_IMODE(os.stat(folder).st_mode)}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def check_export(folder, library):
    """The checks every export passes: modes, a marker without absolute paths, a card in the hub's format."""
    found = modes(folder)
    assert {k: oct(v) for k, v in found.items() if v != (0o755 if os.path.isdir(os.path.join(folder, k)) else 0o644)} == {}
    weights = [k for k in found if k.endswith(".safetensors")]
    assert weights  # the weights are among the files checked
    marker = json.loads((folder / "alignsuite_export.json").read_text())
    assert not [s for s in strings(marker) if os.path.isabs(s)], marker
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == library
    assert "alignsuite" in card.data.tags and "dpo" in card.data.tags
    return marker, card


def test_a_language_export_has_ordinary_modes_a_relative_marker_and_a_card(tmp_path, tiny_lm_dir, pair_file,  # noqa: F811
                                                                             monkeypatch):
    pushed = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: pushed.append(("create", a, k)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: pushed.append(("upload", a, k)))
    path = recipe(tmp_path, tiny_lm_dir, pair_file, objective_args={"beta": 0.25}, max_steps=2)
    fit_under_umask(["fit", "--config", path])
    run = tmp_path / "runs" / "t" / "version_0"
    marker, card = check_export(run / "export", "transformers")
    assert marker["run"] == ".." and marker["config"] == os.path.join("..", "config.yaml")
    assert pushed == []  # nothing goes to a hub unless asked
    base = os.path.basename(tiny_lm_dir)
    assert card.data.base_model is None  # a local folder is no hub id
    text = card.text
    assert f"**{base}**" in text and tiny_lm_dir not in text and "dpo" in text
    assert "| beta | 0.25 |" in text and "| optimizer steps | 2 |" in text and "| data | pairs.jsonl |" in text
    assert "## Evaluation" not in text

    # An evaluation of the run is in the card of a later export, and --export.push_to_hub uploads the folder.
    scores = [ScorerResult("toy_reward", "reward", [0.1, 0.3], [0.6, 0.8], mean_base=0.2, mean_aligned=0.7,
                           win_rate=1.0, ci_low=1.0, ci_high=1.0)]
    write_results(EvalResults("text", ["a", "b"], ["x", "y"], ["z", "w"], scores=scores,
                              details={"aligned": str(run / "export"), "num_prompts": 2}), str(run / "eval"))
    fit_under_umask(["export", "--config", path, "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"),
                     "--export.push_to_hub", "someone/tiny-dpo"])
    marker, card = check_export(run / "export-step2", "transformers")
    assert marker["checkpoint"] == os.path.join("..", "..", "..", "..", "ckpt", "last.ckpt")
    assert "## Evaluation" in card.text and "| toy_reward | reward | 0.2 | 0.7 | 100% |" in card.text
    assert [(kind, k.get("repo_id")) for kind, _, k in pushed] == [("create", "someone/tiny-dpo"),
                                                                   ("upload", "someone/tiny-dpo")]
    assert pushed[1][2]["folder_path"] == str(run / "export-step2")


def test_a_diffusion_export_has_ordinary_modes_a_relative_marker_and_a_card(tmp_path):
    pipeline = save_tiny_pipeline(tmp_path / "sd", "sd")
    train = pickapic_parquet(tmp_path / "pickapic.parquet", 17)
    objective = {"class_path": "alignsuite.objectives.DPO", "init_args": {"beta": 2000.0}}
    fit_under_umask(["fit", "--config", diffusion_recipe(tmp_path, pipeline, train, objective)])
    export = tmp_path / "runs" / "t" / "version_0" / "export"
    marker, card = check_export(export, "diffusers")
    assert "| beta | 2000.0 |" in card.text and "**sd**" in card.text and "pickapic.parquet" in card.text
    for config in ("model_index.json", "unet/config.json", "vae/config.json"):
        assert str(tmp_path) not in (export / config).read_text(), config


@pytest.mark.parametrize("name, shown, hub", [
    ("someone/llama-3-8b", "someone/llama-3-8b", "someone/llama-3-8b"),
    ("toy:llm", "toy:llm", None),
])
def test_the_card_names_a_base_as_the_user_gave_it(name, shown, hub):
    from alignsuite.callbacks.model_card import base_model_name, hub_id

    assert base_model_name(name) == shown and hub_id(name) == hub
