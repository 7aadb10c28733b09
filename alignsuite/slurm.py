"""The Trainer's process layout under SLURM: taken from the allocation, or checked against it.

Lightning reads each process's rank from the environment ``srun`` gives it, but also requires
``trainer.num_nodes`` and ``trainer.devices`` to describe the same layout; a mismatch would start too few
or too many ranks, or hang waiting for ones that never come.
"""

from __future__ import annotations

import os


def _count(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None  # "2(x3)" (uneven nodes) is left to Lightning


def given_devices(value) -> int | None:
    """How many processes per node ``trainer.devices`` starts; None where Lightning decides ("auto", -1)."""
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, str):
        value = value.strip()
        if "," in value:
            return len([v for v in value.split(",") if v.strip()])
        value = int(value) if value.lstrip("-").isdigit() else None
    return value if isinstance(value, int) and value > 0 else None


def apply_slurm_layout(config: dict) -> None:
    """Under SLURM, set ``num_nodes`` and ``devices`` left at their defaults from the allocation, and refuse
    values that do not match its task layout."""
    nodes = _count("SLURM_NNODES") or _count("SLURM_JOB_NUM_NODES")
    per_node, tasks = _count("SLURM_NTASKS_PER_NODE"), _count("SLURM_NTASKS")
    if nodes is not None and config.get("num_nodes", 1) == 1:
        config["num_nodes"] = nodes
    if per_node is not None and config.get("devices", "auto") == "auto":
        config["devices"] = per_node
    devices, num_nodes = given_devices(config.get("devices", "auto")), config.get("num_nodes", 1)
    if devices is None:
        return
    layout = ", ".join(f"{name}={value}" for name, value in
                       (("SLURM_NTASKS", tasks), ("SLURM_NNODES", nodes), ("SLURM_NTASKS_PER_NODE", per_node))
                       if value is not None)
    if (tasks is not None and devices * num_nodes != tasks) or (nodes is not None and num_nodes != nodes) or (
            per_node is not None and devices != per_node):
        raise ValueError(
            f"trainer.devices {devices} x trainer.num_nodes {num_nodes} = {devices * num_nodes} processes does not match"
            f" the SLURM job's task layout ({layout}): one process per device, so set --ntasks-per-node to the"
            " devices per node and --nodes to trainer.num_nodes in the sbatch script, or leave trainer.devices and"
            " trainer.num_nodes at their defaults to follow the allocation"
        )
