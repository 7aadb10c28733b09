"""Sharded (FSDP2) checkpoint folders read safely: an index (``.metadata``) that would run code is refused before
it runs, and a damaged folder is one error that names the folder and the file, for export and for a resume."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from alignsuite.checkpoint_io import CheckpointError, SafeFileSystemReader, read_sharded_weights
from alignsuite.cli import main
from alignsuite.sharding import AtomicModelParallelStrategy
from test_cli import weights, write_jsonl
from test_fsdp import fsdp_recipe, run_fsdp2
from test_safety import RunsCode

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_lm_dir):
    """One FSDP2 run of 2 steps on two CPU processes: its recipe and its sharded last.ckpt folder."""
    from alignsuite.toy.llm import EchoWorld

    root = tmp_path_factory.mktemp("sharded")
    train = write_jsonl(root / "pairs.jsonl", EchoWorld().make_pairs(48, seed=3))
    path = fsdp_recipe(root, tiny_lm_dir, train, max_steps=2)
    run_fsdp2(path)
    return {"recipe": path, "folder": root / "ckpt" / "last.ckpt", "export": root / "runs/t/version_0/export"}


def copy_of(sharded, tmp_path):
    folder = tmp_path / "last.ckpt"
    shutil.copytree(sharded["folder"], folder)
    return folder


def resume(sharded, folder, tmp_path, fails):
    """Resume the run from ``folder`` under FSDP2 on two processes, to step 3, writing beside ``tmp_path``."""
    return run_fsdp2(sharded["recipe"], "--ckpt_path", str(folder), "--trainer.max_steps", "3",
                     "--checkpoint.dirpath", str(tmp_path / "resumed"), "--export.enabled", "false", fails=fails)


def export(sharded, folder, tmp_path):
    main(["export", "--config", sharded["recipe"], "--ckpt_path", str(folder), "--export.dirpath", str(tmp_path / "out")])


def test_an_index_that_would_run_code_is_refused_by_export_and_resume(sharded, tmp_path, capsys):
    folder, ran = copy_of(sharded, tmp_path), tmp_path / "code_ran"
    index = FileSystemReader(str(sharded["folder"])).read_metadata()  # the real index, one object planted in it
    index.planner_data = {"note": RunsCode(ran)}
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(index, f)
    refused = f"{folder}/.metadata: refused to read this sharded checkpoint's index: it holds pickled objects that" \
              " could run code when loaded (posix.mkdir)"

    with pytest.raises(SystemExit) as e:
        export(sharded, folder, tmp_path)
    assert e.value.code == 2
    assert f"error: {refused}" in capsys.readouterr().err
    assert not ran.exists() and not (tmp_path / "out").exists()

    proc = resume(sharded, folder, tmp_path, fails=True)
    assert proc.stderr.count(f"error: {refused}") == 1  # said once, before a second process starts
    assert not ran.exists() and not (tmp_path / "resumed").exists()

    # Below the command line, every reader of a sharded folder refuses it too.
    with pytest.raises(CheckpointError, match="refused to read this sharded checkpoint's index"):
        AtomicModelParallelStrategy().load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="refused to read this sharded checkpoint's index"):
        read_sharded_weights(str(folder), {})
    with pytest.raises(CheckpointError, match="refused to read this sharded checkpoint's index"):
        SafeFileSystemReader(str(folder)).read_metadata()  # what torch.distributed.checkpoint.load is given
    assert not ran.exists()


def cut_short(folder):
    shard = folder / "__1_0.distcp"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    return f"{folder}: shard file __1_0.distcp is cut short ({size // 2} bytes, its index needs {size})"


def shard_missing(folder):
    os.remove(folder / "__1_0.distcp")
    return f"{folder}: shard file __1_0.distcp is missing"


def index_missing(folder):
    os.remove(folder / ".metadata")
    return f"{folder}: not a complete sharded checkpoint: its index .metadata is missing"


@pytest.mark.parametrize("damage", [cut_short, shard_missing, index_missing])
def test_a_damaged_sharded_checkpoint_names_the_folder_and_the_file(sharded, tmp_path, capsys, damage):
    folder = copy_of(sharded, tmp_path)
    message = damage(folder)
    with pytest.raises(SystemExit) as e:
        export(sharded, folder, tmp_path)
    assert e.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    proc = resume(sharded, folder, tmp_path, fails=True)
    assert proc.stderr.count(f"error: {message}") == 1  # once, not from every rank
    assert "Traceback" not in proc.stderr
    with pytest.raises(CheckpointError) as error:
        AtomicModelParallelStrategy().load_checkpoint(folder)
    assert str(error.value) == message


def test_a_sound_sharded_checkpoint_still_exports_and_resumes(sharded, tmp_path):
    from alignsuite.checkpoint_io import read_index

    folder = copy_of(sharded, tmp_path)
    assert len(read_index(folder / ".metadata").state_dict_metadata) > 21  # the policy's weights and AdamW state
    export(sharded, folder, tmp_path)
    exported, at_end = weights(tmp_path / "out"), weights(sharded["export"])
    assert exported.keys() == at_end.keys() and all(torch.equal(exported[k], at_end[k]) for k in at_end)

    resume(sharded, folder, tmp_path, fails=False)
    meta = torch.load(tmp_path / "resumed" / "last.ckpt" / "meta.pt", weights_only=True)
    assert meta["global_step"] == 3  # resumed at step 2, trained one more
