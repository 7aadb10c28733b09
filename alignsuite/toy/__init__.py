"""Toy worlds: tiny models, generated preference data and a programmatic reward, for every modality.

A toy model is named ``toy:<world>`` wherever a checkpoint path goes. It is trained once, on first use,
and kept as an ordinary ``save_pretrained`` folder in ``$ALIGNSUITE_CACHE`` (default
``~/.cache/alignsuite``), so from then on it loads through exactly the code a real checkpoint takes.
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


def resolve_toy_model(name: str) -> str:
    """The folder of toy world ``name``'s base model, building it first if it is not there yet."""
    from filelock import FileLock

    world = get_world(name)
    path = os.path.join(cache_root(), "toy", f"{name}-{world.version}")
    if os.path.isdir(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path + ".lock"):  # several processes may ask at once; one builds
        if not os.path.isdir(path):
            tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{name}-")
            try:
                world.build_base_model(tmp)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return path


__all__ = ["EchoWorld", "ShapesWorld", "SpeechFlowWorld", "SpeechTokenWorld", "SquaresWorld", "ToyPreferenceData", "cache_root", "get_world", "resolve_toy_model"]
