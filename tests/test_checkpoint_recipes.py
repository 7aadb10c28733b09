"""Every command that reads a checkpoint into the recipe's model (export, validate, test, predict, evaluate)
checks first that the recipe wrote it, as a resume does: one short line naming the checkpoint and each key
that differs, never a state-dict error of a few thousand characters or a model silently loaded wrongly."""

from __future__ import annotations

import pytest
import yaml

from alignsuite.cli import main
from test_safety import trained  # noqa: F401  (fixture: one short fit of the DPO recipe)

TOY_REWARD = '[{"class_path": "alignsuite.evaluation.scorers.ToyReward", "init_args": {"world": "llm"}}]'
DIFFERS = "model.init_args.backbone.init_args.lora: None -> {'r': 4, 'alpha': 8, 'dropout': 0.0,"


def lora_recipe(trained, tmp_path, **checkpoint):  # noqa: F811
    """The trained recipe with a LoRA adapter on its backbone: another run's recipe."""
    config = yaml.safe_load(open(trained["recipe"]))
    config["model"]["init_args"]["backbone"]["init_args"]["lora"] = {"r": 4, "alpha": 8}
    config["trainer"]["default_root_dir"] = str(tmp_path)
    config["trainer"]["logger"] = False
    config["checkpoint"].update(checkpoint)
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def refused(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alignsuite: error:")]
    assert len(errors) == 1 and len(errors[0]) < 700, errors
    return errors[0]


COMMANDS = {
    "export": lambda tmp_path: ["--export.dirpath", str(tmp_path / "out")],
    "validate": lambda tmp_path: [],
    "test": lambda tmp_path: [],
    "predict": lambda tmp_path: [],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_of_another_recipe_is_refused_naming_what_differs(trained, tmp_path, capsys, command):  # noqa: F811
    other = lora_recipe(trained, tmp_path)
    err = refused([command, "--config", other, "--ckpt_path", trained["ckpt"], *COMMANDS[command](tmp_path)], capsys)
    assert err.startswith(f"alignsuite: error: --ckpt_path {trained['ckpt']} was written by a different recipe: {DIFFERS}")
    assert f"{command} reads it into the recipe's model" in err
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_checkpoint_of_another_recipe(trained, tmp_path, capsys):  # noqa: F811
    other = lora_recipe(trained, tmp_path)
    err = refused(["evaluate", "--config", other, "--evaluate.aligned", trained["ckpt"], "--evaluate.prompts", "toy:llm",
                   "--evaluate.scorers", TOY_REWARD, "--evaluate.num_prompts", "4", "--evaluate.output_dir",
                   str(tmp_path / "eval")], capsys)
    assert err.startswith(f"alignsuite: error: evaluate.aligned {trained['ckpt']} was written by a different recipe: {DIFFERS}")
    assert not (tmp_path / "eval").exists()


def test_last_outside_fit_never_takes_another_recipes_checkpoint(trained, tmp_path, capsys):  # noqa: F811
    """Another variant whose checkpoint folder is the trained run's: its `last` is the other run's file."""
    other = lora_recipe(trained, tmp_path, dirpath=str(trained["root"] / "ckpt"))
    err = refused(["validate", "--config", other, "--ckpt_path", "last"], capsys)
    assert err.startswith(f"alignsuite: error: --ckpt_path {trained['ckpt']} was written by a different recipe: {DIFFERS}")


def test_the_recipe_that_wrote_a_checkpoint_reads_it(trained, tmp_path):  # noqa: F811
    main(["validate", "--config", trained["recipe"], "--ckpt_path", "last", "--trainer.logger", "false"])
    main(["export", "--config", trained["recipe"], "--ckpt_path", trained["ckpt"], "--export.dirpath", str(tmp_path / "o")])
    assert (tmp_path / "o" / "alignsuite_export.json").is_file()
