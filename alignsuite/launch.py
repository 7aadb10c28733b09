"""The Trainer's process layout, checked before any process starts.

Lightning finds these mistakes late or never: a GPU fragment on a machine without one stops with a bare "No
supported gpu backend found!"; ``num_nodes`` above 1 with no launcher waits forever for ranks that never
come; FSDP2's mesh sizes that do not multiply to the world size fail only once every rank has started.
"""

from __future__ import annotations

import os

import torch
import yaml
from lightning.fabric.plugins.environments import (
    LSFEnvironment, MPIEnvironment, SLURMEnvironment, TorchElasticEnvironment,
)

from alignsuite.slurm import apply_slurm_layout, given_devices

# A fragment that needs GPUs, and the one that does the same on CPUs.
CPU_FRAGMENT = {
    "fsdp2.yaml": "configs/strategy/fsdp2_cpu2.yaml",
    "fsdp.yaml": "configs/strategy/fsdp2_cpu2.yaml",
    "ddp.yaml": "configs/strategy/ddp_cpu2.yaml",
}
LAUNCHERS = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)  # Kubeflow: given as a plugin


def launch_problem(trainer: dict, config_files: list[str]) -> str | None:
    """What keeps ``trainer`` (the parsed trainer section, as a dict) from starting, in words; None if nothing."""
    trainer = dict(trainer)
    if SLURMEnvironment.detect():
        try:
            apply_slurm_layout(trainer)
        except ValueError:
            return None  # said later, with the allocation
    return gpu_problem(trainer, config_files) or nodes_problem(trainer) or mesh_problem(trainer)


def gpu_problem(trainer: dict, config_files: list[str]) -> str | None:
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return None
    if accelerator == "gpu" and torch.backends.mps.is_available():
        return None
    given = [path for path in config_files if _sets_accelerator(path)]
    source = f" (set by {given[-1]})" if given else ""
    cpu = CPU_FRAGMENT.get(os.path.basename(given[-1])) if given else None
    instead = (f" instead of {given[-1]}" if cpu else "") if given else ""
    advice = (f"--config {cpu}{instead}" if cpu else
              "--trainer.accelerator cpu, or --config configs/strategy/ddp_cpu2.yaml (two CPU processes)")
    return f"trainer.accelerator {accelerator}{source} needs a GPU and this machine has none; on CPUs use {advice}"


def _sets_accelerator(path: str) -> bool:
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return False
    section = config.get("trainer") if isinstance(config, dict) else None
    return isinstance(section, dict) and str(section.get("accelerator")) in ("gpu", "cuda")


def nodes_problem(trainer: dict) -> str | None:
    num_nodes = trainer.get("num_nodes", 1)
    if not isinstance(num_nodes, int) or num_nodes < 2:
        return None
    if any(env.detect() for env in LAUNCHERS) or os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK"):
        return None
    plugins = trainer.get("plugins") or []
    if any("Environment" in str(p.get("class_path", "") if isinstance(p, dict) else p) for p in
           (plugins if isinstance(plugins, list) else [plugins])):
        return None  # a cluster environment given by the recipe
    return (f"trainer.num_nodes {num_nodes} but no launcher started this process: the other nodes' ranks would never"
            " come. Start the run on every node with srun under SLURM (recipes/slurm/multi_node.sbatch) or with"
            " torchrun --nnodes (which sets the ranks), or leave trainer.num_nodes at 1")


def mesh_problem(trainer: dict) -> str | None:
    strategy = trainer.get("strategy")
    init = strategy.get("init_args") or {} if isinstance(strategy, dict) else {}
    dp, tp = init.get("data_parallel_size", "auto"), init.get("tensor_parallel_size", "auto")
    devices = devices_per_node(trainer.get("devices", "auto"), str(trainer.get("accelerator") or "auto"))
    num_nodes = trainer.get("num_nodes", 1)
    if not (isinstance(dp, int) and isinstance(tp, int)) or devices is None or not isinstance(num_nodes, int):
        return None
    if dp * tp == devices * num_nodes:
        return None
    return (f"trainer.strategy.init_args.data_parallel_size {dp} x tensor_parallel_size {tp} = {dp * tp} must equal"
            f" trainer.devices {devices} x trainer.num_nodes {num_nodes} = {devices * num_nodes} (the processes"
            " started): set data_parallel_size to that product over tensor_parallel_size, or to auto (the world"
            " size over tensor_parallel_size)")


def devices_per_node(value, accelerator: str) -> int | None:
    """The processes per node ``trainer.devices`` starts: Lightning's count for "auto" and -1 (one on a CPU,
    every CUDA device otherwise); None where it cannot be told here."""
    count = given_devices(value)
    if count is not None or str(value).strip() not in ("auto", "-1"):
        return count
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return 1
    return torch.cuda.device_count() or None
