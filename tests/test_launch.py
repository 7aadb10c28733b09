"""Process layouts Lightning would refuse late, or wait on forever, are refused before anything starts."""

from __future__ import annotations

import os

import pytest
import torch

from alignsuite.cli import AlignCLI
from test_cli import REPO, pair_file, recipe  # noqa: F401  (fixture and recipe builder)

CLUSTER_VARIABLES = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "GROUP_RANK",
                     "NODE_RANK", "LSB_JOBID", "KUBERNETES_PORT", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


@pytest.fixture
def no_cluster(monkeypatch):
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def refused(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        AlignCLI(args=args, run=False)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_fsdp2_mesh_sizes_that_do_not_make_the_world_are_refused_naming_the_options(
        tmp_path, tiny_lm_dir, pair_file, capsys, no_cluster):  # noqa: F811
    err = refused(["--config", recipe(tmp_path, tiny_lm_dir, pair_file),
                   "--config", os.path.join(REPO, "configs/strategy/fsdp2_cpu2.yaml"),
                   "--trainer.strategy.init_args.data_parallel_size", "8"], capsys)
    assert ("error: trainer.strategy.init_args.data_parallel_size 8 x tensor_parallel_size 1 = 8 must equal"
            " trainer.devices 2 x trainer.num_nodes 1 = 2") in err


@pytest.mark.parametrize("devices", [2, 3])
def test_the_fsdp2_fragments_follow_the_number_of_devices(tmp_path, tiny_lm_dir, pair_file, no_cluster,  # noqa: F811
                                                          devices):
    cli = AlignCLI(args=["--config", recipe(tmp_path, tiny_lm_dir, pair_file),
                         "--config", os.path.join(REPO, "configs/strategy/fsdp2_cpu2.yaml"),
                         "--trainer.devices", str(devices)], run=False)
    assert cli.trainer.strategy.mesh_sizes() == (devices, 1)


def test_the_gpu_fsdp2_fragment_follows_two_cpu_devices(tmp_path, tiny_lm_dir, pair_file, no_cluster):  # noqa: F811
    cli = AlignCLI(args=["--config", recipe(tmp_path, tiny_lm_dir, pair_file),
                         "--config", os.path.join(REPO, "configs/strategy/fsdp2.yaml"),
                         "--trainer.accelerator", "cpu", "--trainer.devices", "2"], run=False)
    assert cli.trainer.strategy.mesh_sizes() == (2, 1)


def test_several_nodes_without_a_launcher_are_refused_naming_srun_and_torchrun(
        tmp_path, tiny_lm_dir, pair_file, capsys, no_cluster):  # noqa: F811
    err = refused(["--config", recipe(tmp_path, tiny_lm_dir, pair_file), "--trainer.num_nodes", "2"], capsys)
    assert "error: trainer.num_nodes 2 but no launcher started this process" in err
    assert "srun under SLURM" in err and "torchrun" in err


def test_several_nodes_under_torchrun_are_left_to_it(tmp_path, tiny_lm_dir, pair_file, no_cluster,  # noqa: F811
                                                     monkeypatch):
    for name, value in {"TORCHELASTIC_RUN_ID": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                        "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512"}.items():
        monkeypatch.setenv(name, value)
    cli = AlignCLI(args=["--config", recipe(tmp_path, tiny_lm_dir, pair_file), "--trainer.num_nodes", "2"], run=False)
    assert cli.trainer.num_nodes == 2


@pytest.mark.parametrize(("fragment", "cpu"), [
    ("configs/strategy/fsdp2.yaml", "configs/strategy/fsdp2_cpu2.yaml"),
    ("configs/strategy/fsdp.yaml", "configs/strategy/fsdp2_cpu2.yaml"),
])
def test_a_gpu_fragment_on_a_machine_without_one_points_at_the_cpu_fragment(
        tmp_path, tiny_lm_dir, pair_file, capsys, monkeypatch, no_cluster, fragment, cpu):  # noqa: F811
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    given = os.path.join(REPO, fragment)
    err = refused(["--config", recipe(tmp_path, tiny_lm_dir, pair_file), "--config", given], capsys)
    assert f"error: trainer.accelerator gpu (set by {given}) needs a GPU and this machine has none" in err
    assert f"on CPUs use --config {cpu} instead of {given}" in err
