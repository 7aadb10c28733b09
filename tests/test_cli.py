"""The CLI end to end: recipes parse, a tiny saved model trains, exports and loads back."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import warnings

import pytest
import torch
import yaml
from conftest import run_toy_recipe

from alignsuite.cli import AlignCLI, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture
def pair_file(tmp_path):
    from alignsuite.toy.llm import EchoWorld

    return write_jsonl(tmp_path / "pairs.jsonl", EchoWorld().make_pairs(48, seed=3))


def recipe(tmp_path, model_dir, train, objective="DPO", objective_args=None, extra_model=None, max_steps=4):
    """A complete recipe for a tiny saved model, as a user would write it."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": max_steps,
            "limit_val_batches": 2,
            "val_check_interval": 2,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "default_root_dir": str(tmp_path),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "t", "version": 0},
            },
        },
        "model": {
            "class_path": "alignsuite.module.PreferenceModule",
            "init_args": {
                "backbone": {
                    "class_path": "alignsuite.backbones.CausalLM",
                    "init_args": {"model_name_or_path": model_dir, "max_length": 24, "max_prompt_length": 12},
                },
                "objective": {"class_path": f"alignsuite.objectives.{objective}", "init_args": objective_args or {}},
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
                **(extra_model or {}),
            },
        },
        "data": {
            "class_path": "alignsuite.data.PreferenceDataModule",
            "init_args": {"train": train, "val_fraction": 0.25, "batch_size": 4},
        },
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def metrics(tmp_path):
    with open(tmp_path / "runs" / "t" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def weights(path):
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    assert "--model.help" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", os.path.join(REPO, "recipes/toy/llm_dpo.yaml"), "--print_config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    backbone = printed["model"]["init_args"]["backbone"]
    assert backbone["class_path"] == "alignsuite.backbones.CausalLM"
    assert backbone["init_args"]["max_length"] == 32
    assert printed["model"]["init_args"]["objective"]["init_args"]["beta"] == 0.1
    assert printed["checkpoint"]["save_last"] is True


def test_later_config_wins(capsys, tmp_path):
    override = tmp_path / "o.yaml"
    override.write_text("model:\n  init_args:\n    objective:\n      init_args: {beta: 0.5}\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", os.path.join(REPO, "recipes/toy/llm_dpo.yaml"), "--config", str(override), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["objective"]["init_args"]["beta"] == 0.5


@pytest.mark.parametrize(
    "args, named",
    [
        (["--model.init_args.objective.init_args.betta", "0.2"], "betta"),
        (["--trainer.max_stepz", "3"], "max_stepz"),
        (["--data.init_args.batch_sise", "3"], "batch_sise"),
    ],
)
def test_mistyped_key_is_an_error_that_names_it(capsys, args, named):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", os.path.join(REPO, "recipes/toy/llm_dpo.yaml"), *args])
    assert e.value.code != 0
    assert named in capsys.readouterr().err


def test_every_shipped_recipe_parses(capsys):
    recipes = sorted(glob.glob(os.path.join(REPO, "recipes", "*", "*.yaml")))
    assert len(recipes) >= 6
    for path in recipes:
        command = "iterate" if "\niterate:" in open(path).read() else "fit"  # the online loop's recipes
        with pytest.raises(SystemExit) as e:
            main([command, "--config", path, "--print_config"])
        assert e.value.code == 0, path
        capsys.readouterr()


@pytest.mark.parametrize("recipe", ["recipes/toy/llm_dpo.yaml", "recipes/toy/llm_iterate_dpo.yaml",
                                    "recipes/toy/diffusion_ppd.yaml", "recipes/llm/qwen2.5-0.5b_lipo_lora.yaml"])
def test_configs_are_written_by_libyaml_as_the_pure_python_emitter_writes_them(recipe, capsys, monkeypatch):
    import alignsuite.cli as cli_module
    from jsonargparse import set_dumper
    from jsonargparse._loaders_dumpers import yaml_dump

    command = "iterate" if "\niterate:" in open(os.path.join(REPO, recipe)).read() else "fit"
    texts = []
    for _ in range(2):
        with pytest.raises(SystemExit):
            main([command, "--config", os.path.join(REPO, recipe), "--print_config"])
        texts.append(capsys.readouterr().out)
        monkeypatch.setattr(cli_module, "use_libyaml_dumper", lambda: None)
        set_dumper("yaml", yaml_dump)  # jsonargparse's own, pure-Python emitter
    assert yaml.__with_libyaml__ and texts[0] == texts[1] and len(texts[0]) > 500
    cli_module.use_libyaml_dumper()


def test_fit_exports_a_folder_transformers_loads_with_changed_weights(tmp_path, tiny_lm_dir, pair_file):
    before = weights(tiny_lm_dir)
    main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file)])
    export_dir = tmp_path / "runs" / "t" / "version_0" / "export"
    after = weights(str(export_dir))
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"

    rows = metrics(tmp_path)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the first step: ln 2
    # TRL's DPOTrainer names (under alignsuite's train/ and val/ prefixes), so dashboards line up.
    for stage in ("train", "val"):
        for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                    "logps/rejected", "logps/ref_chosen"):
            assert any(r.get(f"{stage}/{key}") for r in rows), f"{stage}/{key}"
    assert not [k for k in rows[0] if k.endswith(("rewards/accuracy", "rewards/margin"))]

    # The learning rate is logged by default, every logged step, following the schedule.
    lrs = [float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(1e-2)

    # The checkpoint holds the policy and no reference weights; exporting it gives the same folder.
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert not [k for k in ckpt["state_dict"] if k.startswith("reference.")]
    out = tmp_path / "from_ckpt"
    main(["export", "--config", str(tmp_path / "recipe.yaml"), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt"),
          "--export.dirpath", str(out)])
    again = weights(str(out))
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_export_takes_the_runs_own_saved_config(tmp_path, tiny_lm_dir, pair_file):
    """The config a run saves (with Lightning's `weights_only: null`) is a valid `export` config; without
    --export.dirpath the export goes beside the run's other outputs, named by the checkpoint's step."""
    main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2)])
    run = tmp_path / "runs" / "t" / "version_0"
    assert "weights_only" in yaml.safe_load((run / "config.yaml").read_text())
    main(["export", "--config", str(run / "config.yaml"), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    final, exported = weights(str(run / "export")), weights(str(run / "export-step2"))
    assert all(torch.equal(final[k], exported[k]) for k in final)
    marker = json.loads((run / "export-step2" / "alignsuite_export.json").read_text())
    # Paths relative to the export folder: the export names no path of this machine.
    assert marker["run"] == ".." and marker["global_step"] == 2
    assert os.path.normpath(run / "export-step2" / marker["checkpoint"]) == str(tmp_path / "ckpt" / "last.ckpt")
    assert marker["config"] == os.path.join("..", "config.yaml")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "export"):
        assert f"    {command} " in out, command


def test_the_command_table_is_what_the_cli_runs(capsys):
    from alignsuite.commands import COMMANDS, AlignTrainer

    assert set(AlignCLI.subcommands()) == set(COMMANDS)
    for name, command in COMMANDS.items():
        assert getattr(AlignTrainer, name) is command.function, name
        assert (command.section is None) == (command.settings is None) == (command.argument is None), name
        assert command.argument is None or command.argument in command.given, name
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name} " in out, name


def test_lora_fit_exports_merged_and_adapter_only(tmp_path, tiny_lm_dir, pair_file):
    extra = {"backbone": {"class_path": "alignsuite.backbones.CausalLM", "init_args": {
        "model_name_or_path": tiny_lm_dir, "max_length": 24, "max_prompt_length": 12, "lora": {"r": 4, "alpha": 8}}}}
    path = recipe(tmp_path, tiny_lm_dir, pair_file, extra_model=extra)
    main(["fit", "--config", path, "--export.dirpath", str(tmp_path / "merged")])
    before, merged = weights(tiny_lm_dir), weights(str(tmp_path / "merged"))
    assert before.keys() == merged.keys()  # a plain model: the adapter is merged in
    assert any(not torch.equal(before[k], merged[k]) for k in before)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    main(["export", "--config", path, "--ckpt_path", str(ckpt), "--export.dirpath", str(tmp_path / "adapter"),
          "--export.merge_adapters", "false"])
    assert os.path.exists(tmp_path / "adapter" / "adapter_config.json")


def test_reference_free_objective_loads_no_reference(tmp_path, tiny_lm_dir, pair_file):
    main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, objective="SimPO", max_steps=2)])
    rows = metrics(tmp_path)
    assert any(r.get("train/loss") for r in rows)
    assert not any(r.get("train/logps/ref_chosen") for r in rows)


@pytest.mark.parametrize("flags, option", [
    (["--checkpoint.monitor", "val/rewards/accuracy", "--checkpoint.mode", "max"], "checkpoint.monitor"),
    (["--trainer.callbacks+", "EarlyStopping", "--trainer.callbacks.monitor", "val/rewards/margin"],
     "trainer.callbacks"),
])
def test_a_monitor_on_an_old_metric_name_is_an_error_naming_the_new_one(tmp_path, tiny_lm_dir, pair_file, capsys,
                                                                        flags, option):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    new = "val/rewards/accuracies" if "accuracy" in flags[1 if option == "checkpoint.monitor" else 3] else \
        "val/rewards/margins"
    assert f"{option}" in err and f"is now logged as '{new}' (TRL's name)" in err, err
    assert not os.path.exists(tmp_path / "ckpt")  # refused before training


def test_reference_free_objective_with_a_reference_is_an_error(tmp_path, tiny_lm_dir, pair_file, capsys):
    extra = {"reference": {"class_path": "alignsuite.reference.FrozenCopy"}}
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, objective="SimPO", extra_model=extra)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"^alignsuite: error: model: objective 'simpo' is reference-free.*remove model.reference$", err, re.M), err


@pytest.mark.parametrize("objective, args, reason", [
    ("DPO", {"beta": -1}, "model.objective: beta must be > 0, got -1"),
    ("RobustDPO", {"label_smoothing": 1.0}, "model.objective: label_smoothing must be in "),
])
def test_a_bad_hyperparameter_is_a_clean_error_with_its_reason(tmp_path, tiny_lm_dir, pair_file, capsys,
                                                               objective, args, reason):
    """The objective's own ValueError, named by its config key: not jsonargparse's list of Union subtypes."""
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, objective=objective, objective_args=args)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alignsuite: error: {reason}"), err
    assert "Union subtypes" not in err and "Traceback" not in err


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    objective:\n      init_args: {beta: 0.2\n")
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", os.path.join(REPO, "recipes/toy/llm_dpo.yaml"), "--config", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: invalid YAML at line 5, column 1: " in err, err
    assert "line 4, column 18" in err  # where the unclosed mapping starts


def test_lora_fragment_makes_the_reference_the_adapter_disabled_policy(tmp_path, tiny_lm_dir, pair_file):
    """Composed over a full fine-tuning recipe that says FrozenCopy, LoRA gets no second model."""
    from alignsuite.cli import AlignCLI
    from alignsuite.reference import AdapterDisabled

    lora = os.path.join(REPO, "configs/peft/lora.yaml")
    frozen = {"reference": {"class_path": "alignsuite.reference.FrozenCopy"}}
    cli = AlignCLI(args=["--config", recipe(tmp_path, tiny_lm_dir, pair_file, extra_model=frozen), "--config", lora],
                   run=False)
    assert type(cli.model.reference) is AdapterDisabled
    cli = AlignCLI(args=["--config", recipe(tmp_path, tiny_lm_dir, pair_file, objective="SimPO"), "--config", lora],
                   run=False)
    assert cli.model.reference is None  # reference-free objectives still get none


def test_null_on_the_command_line_is_none_two_classes_deep(tmp_path, tiny_lm_dir, pair_file):
    """jsonargparse turned `null` two classes deep into the text "None" (a folder named None)."""
    from alignsuite.cli import AlignCLI

    path = recipe(tmp_path, tiny_lm_dir, pair_file)
    cli = AlignCLI(args=["--config", path, "--model.init_args.backbone.init_args.tokenizer_name_or_path", tiny_lm_dir,
                         "--model.init_args.backbone.init_args.tokenizer_name_or_path", "null",
                         "--model.init_args.backbone.init_args.attn_implementation=null"], run=False)
    assert cli.model.backbone.tokenizer_name_or_path is None
    assert cli.model.backbone.attn_implementation is None
    # a later flag still wins over the null
    cli = AlignCLI(args=["--config", path, "--model.init_args.backbone.init_args.tokenizer_name_or_path", "null",
                         "--model.init_args.backbone.init_args.tokenizer_name_or_path", tiny_lm_dir], run=False)
    assert cli.model.backbone.tokenizer_name_or_path == tiny_lm_dir


def test_checkpointing_can_be_turned_off(tmp_path, tiny_lm_dir, pair_file):
    main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2),
          "--trainer.enable_checkpointing", "false"])
    assert not os.path.exists(tmp_path / "ckpt")
    assert os.path.exists(tmp_path / "runs" / "t" / "version_0" / "export" / "config.json")


def test_tensorboard_fragment_logs_into_the_same_run_folder(tmp_path, tiny_lm_dir, pair_file):
    path = recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2)
    config = yaml.safe_load(open(path))
    config["trainer"]["logger"]["init_args"]["version"] = None  # numbered by the loggers, as in a recipe
    open(path, "w").write(yaml.safe_dump(config))
    main(["fit", "--config", path, "--config", os.path.join(REPO, "configs/logger/tensorboard.yaml")])
    runs = sorted(os.listdir(tmp_path / "runs" / "t"))
    assert runs == ["version_0"], runs
    files = os.listdir(tmp_path / "runs" / "t" / "version_0")
    assert "metrics.csv" in files and any(f.startswith("events.out.tfevents") for f in files), files


def test_bad_row_names_file_row_and_field(tmp_path, tiny_lm_dir, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "echo a", "chosen": "A", "rejected": "a"},
                                               {"prompt": "echo b", "chosen": "", "rejected": "b"}])
    with pytest.raises(SystemExit) as e:  # the command line: the message alone, status 1 (tests/test_cli_errors.py)
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, bad)])
    assert e.value.code == 1
    assert re.search(r"bad\.jsonl: row 1: field 'chosen'", capsys.readouterr().err)


def test_missing_model_path_is_named(tmp_path, pair_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", recipe(tmp_path, "./no/such/model", pair_file)])
    assert e.value.code == 1
    assert "no/such/model" in capsys.readouterr().err


def test_validate_test_and_predict(tmp_path, tiny_lm_dir, pair_file, capsys):
    path = recipe(tmp_path, tiny_lm_dir, pair_file)
    main(["validate", "--config", path])
    main(["test", "--config", path])
    main(["predict", "--config", path])
    out = capsys.readouterr().out
    assert "val/loss" in out and "test/loss" in out

    # predict keeps what it generates: one JSON object per held-out row, with its prompt
    held_out = {}
    for row in (json.loads(line) for line in open(pair_file)):
        held_out.setdefault(row["prompt"], row)
    with open(tmp_path / "runs" / "t" / "version_0" / "predictions.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 12  # val_fraction 0.25 of 48 rows
    assert sorted(r["index"] for r in rows) == sorted({r["index"] for r in rows})
    for r in rows:
        assert r["prompt"] in held_out and isinstance(r["generation"], str)


def test_a_run_prints_no_lightning_noise(tmp_path, tiny_lm_dir, pair_file, caplog):
    """Neither the args-and-sys.argv warning (main passes the command line on), the eval-mode one (the
    reference is in eval mode on purpose), Lightning's own pytree deprecation nor its product tip; other
    warnings and Lightning's other messages still show."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=1)])
        warnings.warn("still shown", UserWarning, stacklevel=2)
    messages = [str(w.message) for w in caught]
    noise = ("args parameter", "in eval mode", "LeafSpec")
    assert not [m for m in messages if any(n in m for n in noise)], messages
    assert "still shown" in messages
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "Tip" in m], logged
    assert any("max_steps=1" in m for m in logged), logged


@pytest.mark.parametrize("name", ["llm_dpo"])
def test_toy_recipe_raises_the_reward(tmp_path, name):
    """The default recipe, unchanged: the reward of greedy generations must clearly rise."""
    reward = run_toy_recipe(tmp_path, name)
    assert reward[0][0] == 0 and reward[0][1] < 0.6
    assert reward[-1][1] >= 0.8, reward


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llm_simpo", "llm_orpo", "llm_kto", "llm_ipo"])
def test_other_toy_recipes_raise_the_reward(tmp_path, name):
    test_toy_recipe_raises_the_reward(tmp_path, name)


def test_prediction_writer_takes_plain_generations_and_images(tmp_path):
    """predict_step may return bare generations (index and prompt then come from the batch); an image
    generation is saved as a PNG beside the file, and the row holds its relative path."""
    from lightning.pytorch import LightningModule, Trainer
    from PIL import Image

    from alignsuite.callbacks import PredictionWriter

    class Echo(LightningModule):
        def predict_step(self, batch, batch_idx):
            if batch_idx == 0:
                return [p.upper() for p in batch["prompt"]]
            return [Image.new("RGB", (4, 4), (255, 0, 0)) for _ in batch["prompt"]]

    rows = [{"prompt": f"echo {c}", "index": 10 + i} for i, c in enumerate("abcd")]
    loader = torch.utils.data.DataLoader(rows, batch_size=2)
    writer = PredictionWriter()
    Trainer(accelerator="cpu", logger=False, default_root_dir=str(tmp_path), callbacks=[writer],
            enable_progress_bar=False, enable_model_summary=False).predict(Echo(), loader, return_predictions=False)
    written = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert written[:2] == [{"index": 10, "prompt": "echo a", "generation": "ECHO A"},
                           {"index": 11, "prompt": "echo b", "generation": "ECHO B"}]
    assert written[2] == {"index": 12, "prompt": "echo c", "generation": os.path.join("predictions", "12.png")}
    assert Image.open(tmp_path / written[3]["generation"]).getpixel((0, 0)) == (255, 0, 0)


def test_a_checkpoint_loads_back_with_load_from_checkpoint(tmp_path, tiny_lm_dir, pair_file):
    """The run's hyper-parameters travel in its checkpoint, so the module rebuilds from the file alone:
    the same backbone, objective and reference, and the trained weights."""
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import IPO
    from alignsuite.reference import FrozenCopy

    main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, objective="IPO", objective_args={"beta": 0.3})])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    module = PreferenceModule.load_from_checkpoint(ckpt, weights_only=True)
    assert isinstance(module.objective, IPO) and module.objective.beta == 0.3
    assert isinstance(module.reference, FrozenCopy)
    trained = weights(tmp_path / "runs" / "t" / "version_0" / "export")
    for name, value in module.backbone.policy.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    assert any(not torch.equal(module.backbone.policy.state_dict()[k], v) for k, v in weights(tiny_lm_dir).items())


def test_resuming_from_another_recipes_checkpoint_names_what_differs(tmp_path, tiny_lm_dir, pair_file, capsys):
    quick = ["--export.enabled", "false", "--trainer.limit_val_batches", "0", "--trainer.logger", "false"]
    main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=1), *quick])
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    other = recipe(tmp_path, tiny_lm_dir, pair_file, objective="IPO", max_steps=2)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", other, "--ckpt_path", ckpt, *quick])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "different recipe" in err
    assert "model.init_args.objective.class_path: alignsuite.objectives.DPO -> alignsuite.objectives.IPO" in err
    assert "backbone" not in err.split("different recipe")[1].split("Resuming")[0]  # only what differs is named
    # A longer schedule at another learning rate is the same run, resumed: step 2 trains.
    same = recipe(tmp_path, tiny_lm_dir, pair_file, max_steps=2)
    main(["fit", "--config", same, "--ckpt_path", ckpt, "--model.init_args.optimizer.init_args.lr", "5e-3", *quick])
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    # What the recipe changes beyond the run's identity holds on resume, from a file as from `last`.
    longer = recipe(tmp_path, tiny_lm_dir, pair_file, objective_args={"beta": 0.5}, max_steps=3)
    cli = AlignCLI(args=["fit", "--config", longer, "--ckpt_path", ckpt, *quick])
    assert cli.model.objective.beta == 0.5 and torch.load(ckpt, weights_only=True)["global_step"] == 3
