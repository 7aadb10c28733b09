"""Backbones: turn a batch into scores, and generate or sample. Each modality's module is imported when one of its
names is first used, so a language run does not load the diffusion and speech libraries.

``__all__`` lists what a config names (the command line imports all of it, see ``commands.NAMED_IN_CONFIGS``);
``FlowTTSModel``, a diffusers model (the ``speech`` extra), is importable from here but left out of it."""

from alignsuite.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "Backbone": "base",
    "SequenceScores": "base",
    "CausalLM": "causal_lm",
    "FlowMatchingTTS": "flow_tts",
    "FlowTTSModel": "flow_tts_model",
    "LoraSpec": "lora",
    "PAD": "pad",
    "PanaceaLM": "panacea",
    "PanaceaSpec": "svd_lora",
    "PanaceaSpeechLM": "panacea",
    "PanaceaVLM": "panacea",
    "SpeechTokenLM": "speech_tokens",
    "TextToImage": "text_to_image",
    "VisionLanguage": "vision_language",
})

__all__ = ["Backbone", "CausalLM", "FlowMatchingTTS", "LoraSpec", "PAD", "PanaceaLM", "PanaceaSpec", "PanaceaSpeechLM",
           "PanaceaVLM", "SequenceScores", "SpeechTokenLM", "TextToImage", "VisionLanguage"]
