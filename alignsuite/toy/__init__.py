"""Toy worlds: tiny models, generated preference data and a programmatic reward, for every modality.

A toy model is named ``toy:<world>`` wherever a checkpoint path goes. Each world's base model ships with the
package as an ordinary ``save_pretrained`` folder (``bases/<world>-<version>/``), so it loads through exactly
the code a real checkpoint takes and is the same model on every machine: trained on one CPU, its figures
reproduce on any other. ``python -m alignsuite.toy.rebuild`` trains them again from their code. A world whose
base is not shipped (a new version being worked on) is trained once, on first use, and kept in
``$ALIGNSUITE_CACHE`` (default ``~/.cache/alignsuite``).
"""

from __future__ import annotations

from alignsuite.toy.worlds import (
    SHIPPED, build_base_model, cache_root, get_world, known_worlds, resolve_toy_model, shipped_path,
)
from alignsuite.toy.llm import EchoWorld
from alignsuite.toy.squares import SquaresWorld
from alignsuite.toy.tts import SpeechFlowWorld, SpeechTokenWorld
from alignsuite.toy.vlm import ShapesWorld


def __getattr__(name: str):
    # The datamodule imports Lightning and datasets; keep `import alignsuite.toy` light for the backbone.
    if name == "ToyPreferenceData":
        from alignsuite.toy.data import ToyPreferenceData

        return ToyPreferenceData
    raise AttributeError(name)


__all__ = ["SHIPPED", "EchoWorld", "ShapesWorld", "SpeechFlowWorld", "SpeechTokenWorld", "SquaresWorld", "ToyPreferenceData",
           "build_base_model", "cache_root", "get_world", "known_worlds", "resolve_toy_model", "shipped_path"]
