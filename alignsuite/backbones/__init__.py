from alignsuite.backbones.base import Backbone, SequenceScores
from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.backbones.flow_tts import FlowMatchingTTS
from alignsuite.backbones.flow_tts_model import FlowTTSModel
from alignsuite.backbones.speech_tokens import SpeechTokenLM
from alignsuite.backbones.text_to_image import TextToImage
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.vision_language import VisionLanguage

__all__ = ["Backbone", "CausalLM", "FlowMatchingTTS", "FlowTTSModel", "LoraSpec", "SequenceScores", "SpeechTokenLM",
           "TextToImage", "VisionLanguage"]
