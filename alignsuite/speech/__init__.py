"""Speech-specific tools around the text-to-speech backbones: recognisers and speaker similarity for
judging samples (:mod:`alignsuite.speech.asr`), and building preference pairs from a model's own samples
(:mod:`alignsuite.speech.pairs`, the ``build_pairs`` command)."""

from alignsuite.speech.asr import Recogniser, SpeakerSimilarity, TransformersASR, TransformersSpeakerSimilarity, Utterance

__all__ = ["Recogniser", "SpeakerSimilarity", "TransformersASR", "TransformersSpeakerSimilarity", "Utterance"]
