"""What the command line says when it stops: one line naming the option or the row, a suggestion, an exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import yaml
from test_cli import recipe, write_jsonl

from alignsuite.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "recipes/toy/llm_dpo.yaml")


def refused(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", TOY, *args, "--print_config"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # no usage dump, no nested report
    assert err.startswith("alignsuite: error: "), err
    return err


@pytest.mark.parametrize("args, says", [
    (["--model.objective.betta", "0.2"], "model.objective.betta: DPO has no option 'betta'; did you mean 'beta'?"),
    (["--model.init_args.objective.init_args.betta", "0.2"], "did you mean 'beta'?"),
    (["--data.batch_sise", "3"], "has no option 'batch_sise'; did you mean 'batch_size'?"),
    (["--trainer.max_stepz", "3"], "unknown option --trainer.max_stepz; did you mean '--trainer.max_steps'?"),
    (["--model.objective.beta", "abc"], "model.objective.beta: Expected a <class 'float'>. Got value: abc"),
])
def test_a_mistyped_option_is_one_line_with_a_suggestion(capsys, args, says):
    assert says in refused(capsys, *args)


def test_a_mistyped_key_in_a_config_file_is_one_line_with_a_suggestion(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_stepz: 3\n")
    assert "trainer.max_stepz: trainer has no option 'max_stepz'; did you mean 'max_steps'?" in refused(
        capsys, "--config", str(typo))
    typo.write_text("model:\n  init_args:\n    objective:\n      init_args: {betta: 0.2}\n")
    assert "model.objective.betta: DPO has no option 'betta'; did you mean 'beta'?" in refused(capsys, "--config", str(typo))


def test_an_unknown_objective_lists_the_objectives(capsys):
    err = refused(capsys, "--model.objective", "DPOO")
    assert "model.objective: no class 'DPOO'; did you mean 'DPO'?" in err
    listed = err.split("choose from: ")[1].split(")")[0].split(", ")
    assert {"DPO", "IPO", "SimPO", "KTO", "ORPO"} <= set(listed)
    assert "Objective" not in listed and "PairwiseObjective" not in listed  # bases are no choice


@pytest.mark.parametrize("option", ["--trainer.max_step", "--checkpoint.dirpat"])
def test_an_abbreviated_option_is_an_error_not_the_option_it_starts(capsys, option):
    """argparse would take a prefix as the one option it starts: --trainer.max_step 5 ran 5 max_steps."""
    assert "did you mean '" + option + ("s" if option.endswith("step") else "h") + "'?" in refused(capsys, option, "5")


def test_environment_variables_do_not_change_a_run(capsys, monkeypatch):
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_STEPS", "7")
    monkeypatch.setenv("PL_FIT__MODEL__INIT_ARGS__OBJECTIVE", '{"class_path": "IPO"}')
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", TOY, "--print_config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] == -1  # the Trainer's default: the recipe sets none
    assert printed["model"]["init_args"]["objective"]["class_path"] == "alignsuite.objectives.DPO"


def bad_data(tmp_path) -> str:
    return write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "echo a", "chosen": "A", "rejected": "a"},
                                                {"prompt": "echo b", "chosen": "", "rejected": "b"}])


def test_a_data_error_is_its_message_alone_with_exit_status_1(tmp_path, tiny_lm_dir):
    """Run as a user runs it: ``python -m alignsuite fit`` on a file with an empty answer in row 1."""
    path = recipe(tmp_path, tiny_lm_dir, bad_data(tmp_path))
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ALIGNSUITE_TRACEBACK", None)
    done = subprocess.run([sys.executable, "-m", "alignsuite", "fit", "--config", path], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # Lines that say something went wrong (the test's folder name holds "error", so match the words' forms).
    errors = [line for line in done.stderr.splitlines() if "error:" in line.lower() or "exception" in line.lower()]
    assert errors == [f"alignsuite: error: {tmp_path / 'bad.jsonl'}: row 1: field 'chosen': expected non-empty text"
                      " or a list of chat messages, got ''"], done.stderr


def test_the_traceback_is_behind_an_environment_variable(tmp_path, tiny_lm_dir, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNSUITE_TRACEBACK", "1")
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, bad_data(tmp_path))])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "DataError" in err
    assert err.rstrip().splitlines()[-1].startswith("alignsuite: error: ")  # the message still ends it


def test_a_missing_model_is_one_line_with_exit_status_1(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "echo a", "chosen": "A", "rejected": "a"}] * 8)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", recipe(tmp_path, "./no/such/model", pairs)])
    assert e.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("alignsuite: error: model path './no/such/model'")


def test_a_failed_run_leaves_no_empty_version_folder(tmp_path, tiny_lm_dir, capsys):
    """The run that failed on its data had written nothing: its version_1 goes; the earlier run's folder stays."""
    path = recipe(tmp_path, tiny_lm_dir, bad_data(tmp_path))
    config = yaml.safe_load(open(path))
    del config["trainer"]["logger"]["init_args"]["version"]  # the next free version_N, as by default
    open(path, "w").write(yaml.safe_dump(config))
    earlier = tmp_path / "runs" / "t" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("step\n")
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", path])
    assert e.value.code == 1
    assert os.listdir(tmp_path / "runs" / "t") == ["version_0"]
    assert os.listdir(earlier) == ["metrics.csv"]


def default_folders_recipe(tmp_path, tiny_lm_dir) -> tuple[str, dict]:
    """A one-step recipe on eight pairs that logs and checkpoints where a run does by default: a new
    runs/t/version_N/ each launch, its checkpoints in version_N/checkpoints/. The path and the config to edit."""
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"echo {c}", "chosen": c.upper(), "rejected": c}
                                               for c in "abcdefgh"])
    path = recipe(tmp_path, tiny_lm_dir, pairs, max_steps=1)
    config = yaml.safe_load(open(path))
    del config["trainer"]["logger"]["init_args"]["version"]
    del config["checkpoint"]
    return path, config


def test_export_takes_the_checkpoint_file_name_the_readme_gives(tmp_path, tiny_lm_dir, caplog):
    """``export --config runs/<name>/version_N/config.yaml --ckpt_path last.ckpt``: the name is that run's file
    (not the newest run's), and the command says it exports, not that it resumes."""
    path, config = default_folders_recipe(tmp_path, tiny_lm_dir)
    config["trainer"]["limit_val_batches"] = 0
    open(path, "w").write(yaml.safe_dump(config))
    quick = ["--export.enabled", "false"]
    main(["fit", "--config", path, *quick])
    main(["fit", "--config", path, *quick, "--trainer.max_steps", "2"])  # a later run, version_1
    run = tmp_path / "runs" / "t" / "version_0"
    caplog.clear()
    with caplog.at_level("INFO"):
        main(["export", "--config", str(run / "config.yaml"), "--ckpt_path", "last.ckpt"])
    out = "\n".join(r.getMessage() for r in caplog.records)
    assert f"exporting {run / 'checkpoints' / 'last.ckpt'} (global step 1)" in out, out
    assert "resuming" not in out
    assert json.load(open(run / "export-step1" / "alignsuite_export.json"))["global_step"] == 1


@pytest.mark.parametrize("extra, reference", [
    ([], {"class_path": "alignsuite.reference.FrozenCopy", "init_args": {"model_name_or_path": None, "dtype": None}}),
    (["--config", os.path.join(REPO, "configs/peft/lora.yaml")], {"class_path": "alignsuite.reference.AdapterDisabled"}),
    (["--model.objective", "SimPO"], None),
])
def test_print_config_shows_the_reference_that_will_run(capsys, extra, reference):
    """Left out, the reference is the module's default: printed as that class, not as ``reference: null``."""
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", TOY, *extra, "--print_config"])
    assert e.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["reference"]
    assert printed == reference


def test_predict_of_a_runs_checkpoint_writes_beside_it_without_a_new_run_or_a_warning(tmp_path, tiny_lm_dir):
    path, config = default_folders_recipe(tmp_path, tiny_lm_dir)
    open(path, "w").write(yaml.safe_dump(config))
    main(["fit", "--config", path, "--export.enabled", "false"])
    run = tmp_path / "runs" / "t" / "version_0"
    before = sorted(os.listdir(run))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["predict", "--config", path, "--ckpt_path", "last"])
        assert os.listdir(tmp_path / "runs" / "t") == ["version_0"]  # no new run for a prediction
        main(["validate", "--config", path, "--ckpt_path", "last"])
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    predicted = [json.loads(line) for line in open(run / "predictions-step1.jsonl")]
    assert len(predicted) == 2 and all(isinstance(r["generation"], str) for r in predicted)
    assert sorted(os.listdir(run)) == sorted(before + ["predictions-step1.jsonl"])  # nothing else changed there


def test_under_two_processes_a_data_error_is_said_once(tmp_path, tiny_lm_dir):
    path = recipe(tmp_path, tiny_lm_dir, bad_data(tmp_path), max_steps=1)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("ALIGNSUITE_TRACEBACK", None)
    done = subprocess.run([sys.executable, "-m", "alignsuite", "fit", "--config", path, "--config",
                           os.path.join(REPO, "configs/strategy/ddp_cpu2.yaml")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("alignsuite: error: ") == 1, done.stderr[-3000:]
    assert done.stderr.count("row 1: field 'chosen'") == 1 and "Traceback" not in done.stderr
