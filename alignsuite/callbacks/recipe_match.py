"""Whether a checkpoint was written by the recipe now resuming from it.

Lightning stores the module's hyper-parameters (the parsed ``model`` section) in every checkpoint. A resume
that changed the model's identity (another backbone, starting weights, LoRA, objective or reference) would
load the weights of one run into another's step, or fail deep inside strict loading; the schedule (learning
rate, ``max_steps``, loss weights) may change, as when a run is resumed to train longer.
"""

from __future__ import annotations

import os

from alignsuite.checkpoint_io import read_checkpoint

# The keys that make a run what it is, as paths into the ``model`` section.
IDENTITY = (
    ("class_path",),
    ("backbone", "class_path"),
    ("backbone", "init_args", "model_name_or_path"),
    ("backbone", "init_args", "lora"),
    ("objective", "class_path"),
    ("reference", "class_path"),
    ("reference", "init_args", "model_name_or_path"),
)


def stored_hyperparameters(path: str, weights_only: bool | None = None) -> dict | None:
    """The ``hyper_parameters`` of a checkpoint file, or of a sharded checkpoint folder's ``meta.pt``."""
    return read_checkpoint(path, weights_only, mmap=True).get("hyper_parameters")


def _get(node, keys: tuple[str, ...]):
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _same(key: tuple[str, ...], old, new) -> bool:
    if key[-1] == "model_name_or_path" and isinstance(old, str) and isinstance(new, str):
        return os.path.realpath(old) == os.path.realpath(new) if os.path.exists(old) else old == new
    return old == new


def recipe_differences(stored: dict, model: dict) -> list[str]:
    """``model.<key>: old -> new`` for each identity key in which the module's config ``model`` (a class path
    and init args) differs from a checkpoint's stored hyper-parameters (the init args, its ``_class_path``)."""
    stored = {**stored, "class_path": stored.get("_class_path")}
    init_args = model.get("init_args") or {}
    current = {**init_args, "class_path": model.get("class_path")}
    if stored["class_path"] is None:  # a module built outside the CLI: nothing comparable was stored
        return []
    differences = []
    for key in IDENTITY:
        old, new = _get(stored, key), _get(current, key)
        if not _same(key, old, new):
            where = key if key == ("class_path",) else ("init_args",) + key
            differences.append(f"model.{'.'.join(where)}: {old} -> {new}")
    return differences
