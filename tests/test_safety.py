"""Checkpoints and exports that cannot hurt: no code run from a pickle, no half-written or non-finite
checkpoint vouched for, no folder overwritten that an export does not own, errors that name the file."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from lightning.pytorch import Trainer

from alignsuite.checkpoint_io import AtomicCheckpointIO, CheckpointError, last_checkpoint_note
from alignsuite.cli import main
from test_cli import pair_file, recipe  # noqa: F401  (fixture and recipe builder)


class RunsCode:
    """Unpickling this calls os.mkdir(path): a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_lm_dir):
    """One short fit: its recipe, checkpoint, run folder and final export."""
    from alignsuite.toy.llm import EchoWorld

    root = tmp_path_factory.mktemp("trained")
    with open(root / "pairs.jsonl", "w") as f:
        for row in EchoWorld().make_pairs(48, seed=3):
            f.write(json.dumps(row) + "\n")
    path = recipe(root, tiny_lm_dir, str(root / "pairs.jsonl"), max_steps=2)
    main(["fit", "--config", path])
    return {"recipe": path, "ckpt": str(root / "ckpt" / "last.ckpt"), "run": root / "runs" / "t" / "version_0",
            "root": root}


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, trained, capsys):
    evil = tmp_path / "evil.ckpt"
    ran = tmp_path / "code_ran"
    torch.save({"state_dict": {}, "global_step": 1, "payload": RunsCode(ran)}, evil)
    for command in (["export", "--export.dirpath", str(tmp_path / "out")], ["fit"]):
        with pytest.raises(SystemExit) as e:
            main([command[0], "--config", trained["recipe"], "--ckpt_path", str(evil), *command[1:]])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"error: {evil}: refused to load this checkpoint: it holds pickled objects that could run code" in err
        assert "posix.mkdir" in err  # what it would have called
        assert not ran.exists()
    assert not (tmp_path / "out").exists()
    # the path Lightning takes to resume a run refuses it too
    with pytest.raises(CheckpointError, match="refused to load"):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not ran.exists()


def test_a_truncated_checkpoint_is_named(tmp_path, trained, capsys):
    cut = tmp_path / "cut.ckpt"
    data = open(trained["ckpt"], "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    for command in (["export", "--export.dirpath", str(tmp_path / "out")], ["fit"]):
        with pytest.raises(SystemExit) as e:
            main([command[0], "--config", trained["recipe"], "--ckpt_path", str(cut), *command[1:]])
        assert e.value.code == 2
        assert f"error: {cut}: cannot read this checkpoint, it is truncated or corrupt" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=f"{cut}: cannot read this checkpoint"):
        AtomicCheckpointIO().load_checkpoint(cut)


def test_export_never_overwrites_a_folder_it_does_not_own(tmp_path, trained, tiny_lm_dir, capsys):
    base = tmp_path / "base_model"
    shutil.copytree(tiny_lm_dir, base)
    before = {name: (base / name).read_bytes() for name in os.listdir(base)}
    args = ["export", "--config", trained["recipe"], "--ckpt_path", trained["ckpt"], "--export.dirpath", str(base)]

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"export: refusing to overwrite {base}: it holds files and no alignsuite_export.json" in err
    assert {name: (base / name).read_bytes() for name in os.listdir(base)} == before

    # an export of another run is not this run's either
    other = tmp_path / "other_export"
    other.mkdir()
    (other / "alignsuite_export.json").write_text(json.dumps({"run": "/elsewhere/version_3"}))
    with pytest.raises(SystemExit):
        main(args[:-1] + [str(other)])
    assert "it is an export of another run (/elsewhere/version_3)" in capsys.readouterr().err

    # an earlier export of this run is replaced; export.overwrite replaces anything
    main(args[:-1] + [str(trained["run"] / "export")])
    main(args + ["--export.overwrite", "true"])
    marker = json.loads((base / "alignsuite_export.json").read_text())
    assert os.path.normpath(base / marker["checkpoint"]) == trained["ckpt"] and marker["global_step"] == 2
    assert "model.safetensors" in os.listdir(base)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-export")]  # the temporary folder moved in


def test_fit_refuses_a_foreign_export_folder_before_training(tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    from alignsuite.callbacks import ExportError

    base = tmp_path / "base_model"
    shutil.copytree(tiny_lm_dir, base)
    with pytest.raises(ExportError, match=f"refusing to overwrite {base}"):
        main(["fit", "--config", recipe(tmp_path, tiny_lm_dir, pair_file), "--export.dirpath", str(base)])
    assert not os.path.exists(tmp_path / "ckpt")  # not one step was trained
    assert "alignsuite_export.json" not in os.listdir(base)


def test_a_save_removes_its_stale_temporary_files_and_honours_the_umask(tmp_path):
    stale = tmp_path / ".tmp-k1l2m3.ckpt"
    stale.write_bytes(b"\0" * 1024)  # what a kill during torch.save leaves
    others = [tmp_path / ".tmp-notes.txt", tmp_path / "tmp-x.ckpt", tmp_path / "epoch=0.ckpt"]
    for other in others:
        other.write_text("keep")
    old = os.umask(0o027)
    try:
        io = AtomicCheckpointIO()
        io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 5}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert not stale.exists()
    assert all(other.exists() for other in others)
    assert stat.S_IMODE(os.stat(tmp_path / "last.ckpt").st_mode) == 0o640
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5


def test_non_finite_weights_are_never_written(tmp_path):
    io = AtomicCheckpointIO()
    trainer = Trainer(accelerator="cpu", plugins=[io], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    assert last_checkpoint_note(trainer) == "No checkpoint with finite weights was written by this run."
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"a.weight": torch.ones(3), "step": torch.tensor(1)}, "global_step": 10}, path)
    bad = {"a.weight": torch.tensor([1.0, float("nan"), 2.0]), "step": torch.tensor(2)}
    with pytest.warns(RuntimeWarning, match=rf"not writing checkpoint {path} at global step 20: parameter 'a.weight'"
                                            rf" holds NaN or infinite values; {path} \(global step 10\) is kept"):
        io.save_checkpoint({"state_dict": bad, "global_step": 20}, path)
    with pytest.warns(RuntimeWarning, match="parameter 'b' holds NaN or infinite"):
        io.save_checkpoint({"state_dict": {"b": torch.tensor([float("inf")])}, "global_step": 30}, tmp_path / "b.ckpt")
    assert not (tmp_path / "b.ckpt").exists()
    assert torch.load(path, weights_only=True)["global_step"] == 10  # the previous one, intact
    note = last_checkpoint_note(trainer)
    assert note == f"The last checkpoint written with finite weights is {path} (global step 10)."
