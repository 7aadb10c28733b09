"""Judging synthesised speech: what it says (a recogniser, for WER) and whose voice it is (speaker similarity).

Both take :class:`Utterance` objects: the speech as the backbone made it (codec tokens or mel frames) and,
when the backbone has a vocoder, its audio. Real recognisers read the audio; the toy worlds' read the
tokens or frames directly (:mod:`alignsuite.toy.speech`).

- :class:`TransformersASR`: any transformers speech-recognition checkpoint (Whisper, wav2vec 2.0 CTC,
  Parakeet ...) through ``transformers.pipeline("automatic-speech-recognition")``; INTP scores English with
  Whisper-large-v3 and Chinese with Paraformer-zh, NeMo's MagpieTTS with Parakeet.
- :class:`TransformersSpeakerSimilarity`: cosine similarity of x-vector embeddings
  (``AutoModelForAudioXVector``: WavLM / UniSpeech-SAT speaker verification) between a sample and the
  prompt speech, as SPK-SIM is usually reported (WavLM-TDNN in Seed-TTS-eval and INTP).

WER compares normalised text (:func:`alignsuite.judging.normalise`: lower case, punctuation dropped) so that an ASR's
capitals and commas do not count as errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from alignsuite.components import default_device
from alignsuite.judging import normalise, word_error_rate
from alignsuite.sources import resolve_model_path


@dataclass
class Utterance:
    """One utterance: ``speech`` as the backbone gives it, ``audio`` (``alignsuite.data.audio.Audio``) when there is a vocoder."""

    speech: Any
    audio: Any = None


def utterance_wer(transcript: str, reference: str) -> float:
    """Word error rate of one utterance (edits / reference words) on normalised text
    (:func:`alignsuite.judging.word_error_rate`)."""
    return word_error_rate(transcript, reference, normalised=True)


class Recogniser:
    """Speech to text: ``transcribe(utterances) -> transcripts``, one per utterance."""

    def transcribe(self, utterances: list[Utterance]) -> list[str]:
        raise NotImplementedError


class SpeakerSimilarity:
    """``similarity(utterances, prompts) -> [float]``: how much each utterance sounds like its prompt's
    speaker (NaN where a row has no prompt speech)."""

    def similarity(self, utterances: list[Utterance], prompts: list[Utterance | None]) -> list[float]:
        raise NotImplementedError


def _audio(utterances: list[Utterance], who: str) -> list:
    missing = [i for i, u in enumerate(utterances) if u is None or u.audio is None]
    if missing:
        raise ValueError(
            f"{who} listens to audio, and utterance(s) {missing[:5]} have none: give the backbone a vocoder"
            " (backbone.init_args.vocoder) so that its speech can be heard"
        )
    return [u.audio for u in utterances]


def load_audio_model(auto_class: str, model_name_or_path: str, device: str | None, what: str):
    """``(model, feature extractor)`` of a transformers audio checkpoint (a folder or a hub id), the model by
    ``transformers.<auto_class>``, in eval mode on ``device`` (the first GPU when there is one)."""
    import transformers

    path = resolve_model_path(model_name_or_path)
    try:
        extractor = transformers.AutoFeatureExtractor.from_pretrained(path)
        model = getattr(transformers, auto_class).from_pretrained(path).to(default_device(device)).eval()
    except OSError as e:
        raise OSError(f"cannot load the {what} {model_name_or_path!r}: not a local folder, nor a reachable hub id ({e})") from e
    return model, extractor


class TransformersASR(Recogniser):
    """A transformers speech-recognition model from a local folder or a hub id.

    Args:
        model_name_or_path: e.g. ``openai/whisper-large-v3`` or a folder written by ``save_pretrained``.
        language: Whisper's decoding language (``"english"``); ``None`` lets the model detect it.
        batch_size: utterances per forward. Padding a batch changes what some models hear (wav2vec 2.0 with group
            norm transcribes a padded batch differently from its rows one by one); 1 is exact for every model.
        device: ``cuda``/``cpu``; the first GPU when there is one.
    """

    def __init__(self, model_name_or_path: str, language: str | None = None, batch_size: int = 8,
                 device: str | None = None) -> None:
        self.model_name_or_path, self.language, self.batch_size, self.device = model_name_or_path, language, batch_size, device
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            from transformers import pipeline

            try:
                self._pipe = pipeline("automatic-speech-recognition", model=resolve_model_path(self.model_name_or_path),
                                      device=default_device(self.device))
            except OSError as e:
                raise OSError(f"cannot load the ASR model {self.model_name_or_path!r}: not a local folder, nor a"
                              f" reachable hub id ({e})") from e
        return self._pipe

    def transcribe(self, utterances: list[Utterance]) -> list[str]:
        pipe = self._pipeline()
        inputs = [{"raw": a.waveform.float().cpu().numpy(), "sampling_rate": a.sampling_rate}
                  for a in _audio(utterances, "TransformersASR")]
        kwargs = {"generate_kwargs": {"language": self.language}} if self.language else {}
        out = pipe(inputs, batch_size=self.batch_size, **kwargs)
        return [o["text"] for o in out]


class TransformersSpeakerSimilarity(SpeakerSimilarity):
    """Cosine similarity of speaker embeddings from an ``AutoModelForAudioXVector`` checkpoint (e.g.
    ``microsoft/wavlm-base-plus-sv``), resampled to its feature extractor's rate."""

    def __init__(self, model_name_or_path: str, device: str | None = None) -> None:
        self.model_name_or_path, self.device = model_name_or_path, device
        self._model = self._extractor = None

    def _load(self):
        if self._model is None:
            self._model, self._extractor = load_audio_model("AutoModelForAudioXVector", self.model_name_or_path,
                                                            self.device, "speaker model")
        return self._model, self._extractor

    @torch.no_grad()
    def embed(self, audio: list) -> torch.Tensor:
        from alignsuite.data.audio import resample

        model, extractor = self._load()
        rate = extractor.sampling_rate
        waves = [resample(a.waveform.float(), a.sampling_rate, rate).cpu().numpy() for a in audio]
        inputs = extractor(waves, sampling_rate=rate, return_tensors="pt", padding=True)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        return torch.nn.functional.normalize(model(**inputs).embeddings.float(), dim=-1).cpu()

    def similarity(self, utterances: list[Utterance], prompts: list[Utterance | None]) -> list[float]:
        have = [i for i, p in enumerate(prompts) if p is not None and p.audio is not None]
        out = [float("nan")] * len(utterances)
        if have:
            a = self.embed(_audio([utterances[i] for i in have], "TransformersSpeakerSimilarity"))
            b = self.embed([prompts[i].audio for i in have])
            for j, i in enumerate(have):
                out[i] = float((a[j] * b[j]).sum())
        return out


__all__ = ["Recogniser", "SpeakerSimilarity", "TransformersASR", "TransformersSpeakerSimilarity", "Utterance",
           "normalise", "utterance_wer"]
