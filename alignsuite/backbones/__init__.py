from alignsuite.backbones.base import Backbone, SequenceScores
from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.backbones.text_to_image import TextToImage
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.vision_language import VisionLanguage

__all__ = ["Backbone", "CausalLM", "LoraSpec", "SequenceScores", "TextToImage", "VisionLanguage"]
