"""Hear a TTS model improve: synthesise fixed texts before training and at validations, log their WER and
write their audio."""

from __future__ import annotations

import math

from alignsuite.callbacks.samples import ValidationSamples
from alignsuite.callbacks.writers import AudioWriter
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity
from alignsuite.speech.judges import SpeechJudge, audio_of


class SpeechSamples(ValidationSamples):
    """Synthesise the same texts at every validation (and at step 0); log their corpus word error rate as
    ``name`` (word edits over all items / reference words, on normalised text), and the mean speaker
    similarity to each item's prompt as ``val/speaker_similarity`` when a similarity judge is given. A setting
    of :class:`ValidationSamples` judged by :class:`alignsuite.speech.judges.SpeechJudge`.

    The first ``num_audio`` items are written as ``.wav`` under ``<log dir>/speech_samples/step_NNNNNN/``
    with a ``samples.jsonl`` (text, transcript, WER, file), and to TensorBoard as audio when it is a logger;
    this needs a backbone with a vocoder. Every process synthesises (a sharded model needs all of them);
    the first one writes. Generation is greedy for token models and from a fixed noise seed for flow
    models, so two validations differ only by the model.

    Args:
        world: a toy world (``tts``, ``tts_flow``) whose evaluation items and judges to use.
        items: a file of items instead (``.txt`` or ``.jsonl`` as ``build_pairs`` reads them).
        num_items: how many of the world's evaluation items.
        seed: seed of the world's item draw.
        asr: the recogniser; the world's by default.
        similarity: the speaker-similarity judge; the world's by default, else none.
        num_audio: items written as audio at each validation.
        batch_size: items synthesised at once.
        name: the WER metric's name.
        generation_kwargs: passed to the backbone's ``generate`` (the world's by default).
    """

    prompt_key, seed_step, tolerant = "text", "offset", False

    def __init__(self, world: str | None = None, items: str | None = None, num_items: int = 64, seed: int = 1234,
                 asr: Recogniser | None = None, similarity: SpeakerSimilarity | None = None, num_audio: int = 4,
                 batch_size: int = 32, name: str = "val/wer", generation_kwargs: dict | None = None) -> None:
        if (world is None) == (items is None):
            raise ValueError("SpeechSamples: give exactly one of world (a toy world) and items (a file of texts)")
        if world is not None:
            from alignsuite.toy import get_world

            judge = get_world(world)
            rows = judge.eval_prompts(num_items, seed)
            asr = asr or judge.recogniser()
            similarity = similarity or judge.similarity()
            generation_kwargs = judge.generation_kwargs if generation_kwargs is None else generation_kwargs
        else:
            from alignsuite.speech.pairs import load_items

            rows = load_items(items)
        if asr is None:
            raise ValueError("SpeechSamples: give asr (a recogniser, e.g. alignsuite.speech.TransformersASR)")
        super().__init__(scorers=[SpeechJudge(asr, similarity)], seed=None, batch_size=batch_size,
                         generation_kwargs=generation_kwargs)
        self.items = self.rows = rows
        self.asr, self.similarity = asr, similarity
        self.num_audio, self.name = num_audio, name

    def generate(self, backbone, rows):
        self.scorers[0].to_audio = audio_of(backbone)  # recognisers that listen hear the backbone's vocoder
        return super().generate(backbone, rows)

    def metrics(self, judged: dict[str, list], outputs: list) -> dict[str, float]:
        means = self.scorers[0].means(judged[self.scorers[0].name])  # the corpus WER, the mean similarity
        metrics = {self.name: means["wer"]}
        if not math.isnan(means["speaker_similarity"]):
            metrics[self.logged_name("speaker_similarity")] = means["speaker_similarity"]
        return metrics

    def make_writer(self, backbone):
        return AudioWriter(num_audio=self.num_audio)


__all__ = ["SpeechSamples"]
