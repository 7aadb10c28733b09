"""Toy worlds: tiny models, generated preference data and a programmatic reward, for every modality.

A toy model is named ``toy:<world>`` wherever a checkpoint path goes. Each world's base model ships with the
package as an ordinary ``save_pretrained`` folder (``bases/<world>-<version>/``), so it loads through exactly
the code a real checkpoint takes and is the same model on every machine: trained on one CPU, its figures
reproduce on any other. ``python -m alignsuite.toy.rebuild`` trains them again from their code. A world whose
base is not shipped (a new version being worked on) is trained once, on first use, and kept in
``$ALIGNSUITE_CACHE`` (default ``~/.cache/alignsuite``).
"""

from __future__ import annotations

from alignsuite.lazy import lazy_exports

# A world's module is imported when its name is first used; the datamodule imports Lightning and datasets.
__getattr__, __dir__ = lazy_exports(__name__, {
    **{name: "worlds" for name in ("SHIPPED", "build_base_model", "cache_root", "get_world", "known_worlds",
                                   "resolve_toy_model", "shipped_path")},
    "EchoWorld": "llm",
    "CaseEchoWorld": "llm_case",
    "SquaresWorld": "squares",
    "CornerSquaresWorld": "squares_corner",
    "ColourSquaresWorld": "squares_colours",
    "SpeechFlowWorld": "tts",
    "SpeechTokenWorld": "tts",
    "ShapesWorld": "vlm",
    "PriorShapesWorld": "vlm_prior",
    "PacedSpeechWorld": "tts_pace",
    "ToyPreferenceData": "data",
})


__all__ = ["SHIPPED", "CaseEchoWorld", "ColourSquaresWorld", "CornerSquaresWorld", "EchoWorld", "PacedSpeechWorld", "PriorShapesWorld", "ShapesWorld", "SpeechFlowWorld", "SpeechTokenWorld", "SquaresWorld", "ToyPreferenceData",
           "build_base_model", "cache_root", "get_world", "known_worlds", "resolve_toy_model", "shipped_path"]
