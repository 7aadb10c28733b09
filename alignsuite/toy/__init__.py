"""Toy worlds: tiny models, generated preference data and a programmatic reward, for every modality.

A toy model is named ``toy:<world>`` wherever a checkpoint path goes. Each world's base model ships with the
package as an ordinary ``save_pretrained`` folder (``bases/<world>-<version>/``), so it loads through exactly
the code a real checkpoint takes and is the same model on every machine: trained on one CPU, its figures
reproduce on any other. ``python -m alignsuite.toy.rebuild`` trains them again from their code. A world whose
base is not shipped (a new version being worked on) is trained once, on first use, and kept in
``$ALIGNSUITE_CACHE`` (default ``~/.cache/alignsuite``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from alignsuite.toy.squares import SquaresWorld
from alignsuite.toy.llm import EchoWorld
from alignsuite.toy.tts import SpeechFlowWorld, SpeechTokenWorld
from alignsuite.toy.vlm import ShapesWorld

_WORLDS = {"llm": EchoWorld, "diffusion": SquaresWorld, "vlm": ShapesWorld, "tts": SpeechTokenWorld, "tts_flow": SpeechFlowWorld}


def known_worlds() -> list[str]:
    return sorted(_WORLDS)


def get_world(name: str):
    try:
        return _WORLDS[name]()
    except KeyError:
        raise ValueError(f"unknown toy world {name!r}; known: {', '.join(sorted(_WORLDS))}") from None


def __getattr__(name: str):
    # The datamodule imports Lightning and datasets; keep `import alignsuite.toy` light for the backbone.
    if name == "ToyPreferenceData":
        from alignsuite.toy.data import ToyPreferenceData

        return ToyPreferenceData
    raise AttributeError(name)


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("ALIGNSUITE_CACHE", "~/.cache/alignsuite"))


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bases")


def shipped_path(name: str, suffix: str = "") -> str:
    """Where the package keeps toy world ``name``'s base model (or, with ``suffix``, a file made from it)."""
    return os.path.join(SHIPPED, f"{name}-{get_world(name).version}{suffix}")


def resolve_toy_model(name: str) -> str:
    """The folder of toy world ``name``'s base model: the shipped one, else one trained here once and cached."""
    shipped = shipped_path(name)
    if os.path.isdir(shipped):
        return shipped
    path = os.path.join(cache_root(), "toy", os.path.basename(shipped))
    if not os.path.isdir(path):
        build_base_model(name, path)
    return path


def build_base_model(name: str, path: str) -> str:
    """Train toy world ``name``'s base model into the folder ``path`` (replaced whole only once it is done)."""
    from filelock import FileLock

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with FileLock(path + ".lock"):  # several processes may ask at once; one builds
        if not os.path.isdir(path):
            tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}-")
            try:
                get_world(name).build_base_model(tmp)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return path


__all__ = ["EchoWorld", "ShapesWorld", "SpeechFlowWorld", "SpeechTokenWorld", "SquaresWorld", "ToyPreferenceData", "build_base_model", "cache_root", "get_world", "known_worlds",
           "resolve_toy_model", "shipped_path"]
