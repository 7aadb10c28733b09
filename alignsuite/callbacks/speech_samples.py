"""Hear a TTS model improve: synthesise fixed texts before training and at validations, log their WER and
write their audio."""

from __future__ import annotations

import json
import math
import os

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from alignsuite.callbacks.reward import ValidationMetrics
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity, normalise
from alignsuite.speech.pairs import audio_of, judge, synthesise


class SpeechSamples(ValidationMetrics):
    """Synthesise the same texts at every validation (and at step 0); log their corpus word error rate as
    ``name`` (word edits over all items / reference words, on normalised text), and the mean speaker
    similarity to each item's prompt as ``val/speaker_similarity`` when a similarity judge is given.

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

    def __init__(self, world: str | None = None, items: str | None = None, num_items: int = 64, seed: int = 1234,
                 asr: Recogniser | None = None, similarity: SpeakerSimilarity | None = None, num_audio: int = 4,
                 batch_size: int = 32, name: str = "val/wer", generation_kwargs: dict | None = None) -> None:
        if (world is None) == (items is None):
            raise ValueError("SpeechSamples: give exactly one of world (a toy world) and items (a file of texts)")
        if world is not None:
            from alignsuite.toy import get_world

            judge = get_world(world)
            self.items = judge.eval_prompts(num_items, seed)
            asr = asr or judge.recogniser()
            similarity = similarity or judge.similarity()
            generation_kwargs = judge.generation_kwargs if generation_kwargs is None else generation_kwargs
        else:
            from alignsuite.speech.pairs import load_items

            self.items = load_items(items)
        if asr is None:
            raise ValueError("SpeechSamples: give asr (a recogniser, e.g. alignsuite.speech.TransformersASR)")
        self.asr, self.similarity = asr, similarity
        self.num_audio, self.batch_size, self.name = num_audio, batch_size, name
        self.generation_kwargs = dict(generation_kwargs or {})
        self.history: list[tuple[int, dict[str, float]]] = []
        self.written: list[str] = []

    def compute(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        from torchmetrics.functional.text import word_error_rate

        backbone = pl_module.backbone
        speech = synthesise(backbone, self.items, self.batch_size, None, self.generation_kwargs)
        judged = [c for [c] in judge(self.items, [[s] for s in speech], self.asr, self.similarity, audio_of(backbone))]
        texts = [it["text"] for it in self.items]
        transcripts = [c.transcript for c in judged]
        metrics = {self.name: float(word_error_rate([normalise(t) for t in transcripts], [normalise(t) for t in texts]))}
        sims = [c.similarity for c in judged if not math.isnan(c.similarity)]
        if sims:
            prefix = self.name.rsplit("/", 1)[0] + "/" if "/" in self.name else ""
            metrics[prefix + "speaker_similarity"] = sum(sims) / len(sims)
        root = trainer.log_dir or trainer.default_root_dir  # a collective under some strategies: every rank asks
        if trainer.is_global_zero and self.num_audio and judged[0].audio is not None:
            self.write(trainer, root, texts, judged)
        return metrics

    def write(self, trainer: Trainer, root: str, texts: list[str], judged: list) -> None:
        from alignsuite.data.audio import write_wav

        step = trainer.global_step
        folder = os.path.join(root, "speech_samples", f"step_{step:06d}")
        os.makedirs(folder, exist_ok=True)
        records = []
        for i, c in enumerate(judged[: self.num_audio]):
            path = os.path.join(folder, f"{i:03d}.wav")
            write_wav(path, c.audio.waveform, c.audio.sampling_rate)
            records.append({"item": i, "text": texts[i], "transcript": c.transcript, "wer": c.wer,
                            "file": os.path.basename(path)})
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_audio(f"speech/item_{i}", c.audio.waveform.float().cpu().reshape(1, -1), step,
                                                sample_rate=c.audio.sampling_rate)
                    logger.experiment.add_text(f"speech/item_{i}", f"text: {texts[i]}  \ntranscript: {c.transcript}"
                                               f"  \nWER: {c.wer:.3f}", step)
        with open(os.path.join(folder, "samples.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        self.written.append(folder)
