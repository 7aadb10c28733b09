"""Speech-specific tools around the text-to-speech backbones: recognisers and speaker similarity for
judging samples (:mod:`alignsuite.speech.asr`), and building preference pairs from a model's own samples
(:mod:`alignsuite.speech.pairs`, the ``build_pairs`` command), and transformers audio codecs as a speech-token
LM's codec and vocoder (:mod:`alignsuite.speech.codecs`). Each module is imported when one of its names is first
used."""

from alignsuite.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "CodecDecoder": "codecs",
    "CodecEncoder": "codecs",
    **{name: "asr" for name in ("Recogniser", "SpeakerSimilarity", "TransformersASR", "TransformersSpeakerSimilarity",
                                "Utterance")},
})

__all__ = ["CodecDecoder", "CodecEncoder", "Recogniser", "SpeakerSimilarity", "TransformersASR", "TransformersSpeakerSimilarity", "Utterance"]
