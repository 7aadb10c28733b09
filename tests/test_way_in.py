"""The way in: the one-line fit of a model on a file, the help a first run reads, and ``--optimizer``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from test_cli import pair_file, recipe  # noqa: F401  (fixture and recipe builder)

from alignsuite.backbones.inferred import BackboneChoiceError, infer_backbone
from alignsuite.cli import AlignCLI, main
from alignsuite.objectives import available_objectives

QUICK = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--data.batch_size", "4", "--model.backbone.max_length", "24",
         "--model.backbone.max_prompt_length", "12", "--export.enabled", "false"]


# ------------------------------------------------------------------ the one line
def test_one_line_fit_of_a_model_on_a_file(tmp_path, tiny_lm_dir, pair_file, monkeypatch, caplog):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        cli = AlignCLI(args=["fit", "--model.backbone.model_name_or_path", tiny_lm_dir, "--data.train", pair_file,
                             *QUICK])
    module = cli.model
    assert type(module.backbone).__name__ == "CausalLM"  # read from the saved Llama's config
    assert module.objective.name == "dpo" and module.objective.beta == 0.1
    assert type(module.reference).__name__ == "FrozenCopy"
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 1e-6  # TRL's DPOConfig default
    assert cli.trainer.global_step == 2
    # A named run folder, not runs/lightning_logs: the model's and the data's names, and the objective.
    folder = os.path.join("runs", f"{os.path.basename(tiny_lm_dir)}_pairs_dpo", "version_0")
    assert os.path.isfile(os.path.join(folder, "checkpoints", "last.ckpt"))
    with open(os.path.join(folder, "config.yaml")) as f:  # the run's config says what ran
        saved = yaml.safe_load(f)["model"]["init_args"]
    assert saved["backbone"]["class_path"] == "alignsuite.backbones.CausalLM"
    assert not os.path.exists(os.path.join("runs", "lightning_logs"))
    assert f"run folder: {folder}" in caplog.text


def test_the_backbone_is_inferred_from_the_model_folder(tiny_lm_dir, tiny_llava_dir, tiny_sd_dir):
    assert infer_backbone(tiny_lm_dir) == "alignsuite.backbones.CausalLM"
    assert infer_backbone(tiny_llava_dir) == "alignsuite.backbones.VisionLanguage"
    assert infer_backbone(tiny_sd_dir) == "alignsuite.backbones.TextToImage"  # model_index.json: a diffusers pipeline


@pytest.mark.parametrize("config, named", [
    ({"model_type": "gemma3"}, "gemma3"),  # transformers' causal-LM and image-text-to-text model alike
    ({"model_type": "t5"}, "t5"),  # neither (an encoder-decoder)
])
def test_an_ambiguous_or_unknown_model_names_the_backbones_to_choose(tmp_path, config, named):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneChoiceError) as e:
        infer_backbone(str(tmp_path))
    message = str(e.value)
    assert str(tmp_path) in message and named in message
    for backbone in ("CausalLM", "VisionLanguage", "TextToImage", "SpeechTokenLM", "FlowMatchingTTS"):
        assert f"--model.backbone {backbone}" in message


def test_an_unknown_model_is_one_clean_error_on_the_command_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(SystemExit) as e:
        main(["fit", "--model.backbone.model_name_or_path", str(tmp_path), "--data.train", "x.jsonl", "--print_config"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("alignsuite: error: ") and "--model.backbone CausalLM" in err and "Traceback" not in err


def test_a_given_backbone_is_kept(tiny_lm_dir, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.backbone", "VisionLanguage", "--model.backbone.model_name_or_path", tiny_lm_dir,
              "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["backbone"]["class_path"] == "alignsuite.backbones.VisionLanguage"


def test_the_one_line_takes_options_of_the_default_classes(tiny_lm_dir, capsys):
    """``--model.objective.beta`` and ``--optimizer.lr`` alone: DPO and AdamW are the classes they set."""
    with pytest.raises(SystemExit) as e:
        main(["fit", "--model.backbone.model_name_or_path", tiny_lm_dir, "--data.train", "x.jsonl",
              "--model.objective.beta", "0.3", "--optimizer.lr", "0.02", "--print_config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    objective = printed["model"]["init_args"]["objective"]
    assert objective["class_path"] == "alignsuite.objectives.DPO" and objective["init_args"]["beta"] == 0.3
    assert printed["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert printed["optimizer"]["init_args"]["lr"] == 0.02
    with pytest.raises(SystemExit):  # the optimizer's other options keep the suite's learning rate
        main(["fit", "--model.backbone.model_name_or_path", tiny_lm_dir, "--model.optimizer.weight_decay", "0",
              "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    optimizer = printed["model"]["init_args"]["optimizer"]
    assert optimizer["init_args"]["lr"] == 1e-6 and optimizer["init_args"]["weight_decay"] == 0
    assert printed["optimizer"] is None  # which would replace it


# ------------------------------------------------------------------ --optimizer
@pytest.mark.parametrize("name, cls", [("AdamW", torch.optim.AdamW), ("SGD", torch.optim.SGD)])
def test_the_optimizer_flag_trains_with_that_optimizer_and_rate(tmp_path, tiny_lm_dir, pair_file, name, cls):  # noqa: F811
    path = recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2)  # its model.optimizer: AdamW at 1e-2
    cli = AlignCLI(args=["fit", "--config", path, "--optimizer", name, "--optimizer.lr", "0.03",
                         "--export.enabled", "false"])
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["initial_lr"] == 0.03  # before the module's schedule scales it
    trainable = [p for p in cli.model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable) > 0
    assert cli.trainer.global_step == 2


# ------------------------------------------------------------------ --help
def help_text(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_is_the_suites(capsys):
    out = help_text(["--help"], capsys)
    assert out.startswith("usage: alignsuite ")
    assert "__main__" not in out and "Lightning Trainer command line tool" not in out
    assert "preference" in out.split("\n\n")[1].lower()  # the description, right after the usage
    commands = re.findall(r"^    (\w+) +(.+)$", out, re.M)
    assert {name for name, _ in commands} >= {"fit", "validate", "test", "predict", "export", "evaluate",
                                              "build_pairs"}
    for name, summary in commands:  # one line each, not cut mid-sentence
        assert summary.endswith("."), (name, summary)


def test_nested_help_names_the_program():
    """``python -m alignsuite``, as the installed ``alignsuite`` script: jsonargparse's nested help takes its name."""
    out = subprocess.run([sys.executable, "-m", "alignsuite", "fit", "--model.objective.help", "SimPO"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: alignsuite ") and "--objective.gamma" in out


def test_fit_help_shows_the_suites_options_first(capsys):
    out = help_text(["fit", "--help"], capsys)
    assert out.startswith("usage: alignsuite fit ")
    head = out.split("\noptions:\n")[0]  # what comes before the parser's own listing (the Trainer's ...)
    # a screenful besides the list of objectives, which grows with the registry
    listing = re.search(r"^  --model\.objective NAME\n((?: {20,}.*\n)+)", head, re.M).group(1)
    assert len(head.splitlines()) - len(listing.splitlines()) < 66
    for option in ("--model.objective", "--model.objective.beta", "--model.backbone.model_name_or_path",
                   "--model.backbone", "--model.reference", "--optimizer", "--data.train"):
        assert re.search(rf"^  {re.escape(option)} ", head, re.M), option
    for name in available_objectives():  # every objective of the registry, by the name the option takes
        assert re.search(rf"\b{name}\b", head, re.I), name
    assert "--model.objective.help" in head and "--print_config" in head and "--trainer." in head  # the rest
    # Each option's description is whole: it ends its sentence, with its brackets closed.
    entries = re.findall(r"^  (--\S+).*\n((?: {20,}.*\n)+)", head, re.M)
    assert len(entries) >= 10
    for option, text in entries:
        text = " ".join(text.split())
        assert text.endswith(".") and text.count("(") == text.count(")"), (option, text)
