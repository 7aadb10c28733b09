"""Speech-specific tools around the text-to-speech backbones: recognisers and speaker similarity for
judging samples (:mod:`alignsuite.speech.asr`), and building preference pairs from a model's own samples
(:mod:`alignsuite.speech.pairs`, the ``build_pairs`` command), and transformers audio codecs as a speech-token
LM's codec and vocoder (:mod:`alignsuite.speech.codecs`)."""

from alignsuite.speech.codecs import CodecDecoder, CodecEncoder
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity, TransformersASR, TransformersSpeakerSimilarity, Utterance

__all__ = ["CodecDecoder", "CodecEncoder", "Recogniser", "SpeakerSimilarity", "TransformersASR", "TransformersSpeakerSimilarity", "Utterance"]
