"""Objects a config names by import path rather than as modules of the run (a codec, a vocoder, a recogniser's
transcribe function), the device such a helper runs on by default, and the settings a saved component keeps
beside its weights (a JSON file of its dataclass's fields)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any

import torch


def import_object(path: str) -> Any:
    """The object ``"package.module.name"`` names; an error that says what was expected otherwise."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import {path!r} (give 'package.module.Class'): {e}") from e


def build_object(spec: Any) -> Any:
    """An object from ``"package.module.Class"`` (built with no arguments) or ``{"class_path", "init_args"}``;
    anything else (an object already built, ``None``) is returned as it is."""
    if not isinstance(spec, (str, dict)):
        return spec
    path, args = (spec, {}) if isinstance(spec, str) else (spec["class_path"], dict(spec.get("init_args") or {}))
    return import_object(path)(**args)


def default_device(device: str | None) -> torch.device:
    """``device``, or the first GPU when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def save_settings(settings: Any, folder: str, name: str) -> None:
    """A dataclass's fields as the JSON file ``folder/name``, beside the weights they describe."""
    with open(os.path.join(folder, name), "w") as f:
        json.dump(dataclasses.asdict(settings), f, indent=2)
        f.write("\n")


def read_settings(cls: type, folder: str, name: str) -> Any:
    """The dataclass ``cls`` that :func:`save_settings` wrote to ``folder/name``; ``None`` where there is none."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return cls(**json.load(f))


__all__ = ["build_object", "default_device", "import_object", "read_settings", "save_settings"]
