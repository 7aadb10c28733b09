"""The toy worlds by name, and where each one's base model is: shipped with the package, else trained once.

The worlds are named by import path and imported when asked for, so a world's own module can use what is
here (where its base model is, the cache) without the two importing each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from alignsuite.components import import_object
from alignsuite.sources import cache_root

WORLDS = {
    "llm": "alignsuite.toy.llm.EchoWorld",
    "llm_case": "alignsuite.toy.llm_case.CaseEchoWorld",  # two conflicting rules; the base model is llm's
    "diffusion": "alignsuite.toy.squares.SquaresWorld",
    "diffusion_corner": "alignsuite.toy.squares_corner.CornerSquaresWorld",  # graded reward; the base model is diffusion's
    "diffusion_users": "alignsuite.toy.squares_users.UserSquaresWorld",  # two users, opposite colours; diffusion's base
    "diffusion_colours": "alignsuite.toy.squares_colours.ColourSquaresWorld",  # red vs blue, two dimensions; diffusion's base
    "vlm": "alignsuite.toy.vlm.ShapesWorld",
    "vlm_prior": "alignsuite.toy.vlm_prior.PriorShapesWorld",  # seen colour vs the prior's; the base model is vlm's
    "tts": "alignsuite.toy.tts.SpeechTokenWorld",
    "tts_flow": "alignsuite.toy.tts.SpeechFlowWorld",
    "tts_pace": "alignsuite.toy.tts_pace.PacedSpeechWorld",  # every word said vs few frames; the base model is tts's
}
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bases")


def known_worlds() -> list[str]:
    return sorted(WORLDS)


def base_world(name: str) -> str:
    """The world whose base model ``name`` starts from: its own, unless it declares another's (``base_world``)."""
    return getattr(get_world(name), "base_world", name)


def base_worlds() -> list[str]:
    """The worlds that have a base model of their own (the shipped folders)."""
    return sorted({base_world(name) for name in WORLDS})


def get_world(name: str):
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; known: {', '.join(known_worlds())}")
    return import_object(WORLDS[name])()


def shipped_path(name: str, suffix: str = "") -> str:
    """Where the package keeps toy world ``name``'s base model (or, with ``suffix``, a file made from it)."""
    name = base_world(name)
    return os.path.join(SHIPPED, f"{name}-{get_world(name).version}{suffix}")


def resolve_toy_model(name: str) -> str:
    """The folder of toy world ``name``'s base model: the shipped one, else one trained here once and cached."""
    name = base_world(name)
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


__all__ = ["SHIPPED", "WORLDS", "base_world", "base_worlds", "build_base_model", "cache_root", "get_world", "known_worlds", "resolve_toy_model",
           "shipped_path"]
