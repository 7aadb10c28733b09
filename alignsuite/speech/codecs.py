"""Neural audio codecs from transformers as a speech-token LM's ``codec`` (audio rows -> codes) and ``vocoder``
(generated codes -> audio), through the models' ``encode``/``decode``. Tested on DAC; EnCodec, Mimi and
X-codec2 have the same interface (EnCodec's chunked codes and scales are handled) but are untested here.

A recipe names them like any class::

    backbone:
      class_path: alignsuite.backbones.SpeechTokenLM
      init_args:
        codec: {class_path: alignsuite.speech.codecs.CodecEncoder, init_args: {model_name_or_path: descript/dac_16khz}}
        vocoder: {class_path: alignsuite.speech.codecs.CodecDecoder, init_args: {model_name_or_path: descript/dac_16khz}}

Codes come out frame-major, ``[frames]`` for one codebook and ``[frames, codebooks]`` for several, as
``SpeechTokenLM`` takes them (its ``num_codebooks`` must match the codec's). Audio at another rate is
resampled to the codec's (its feature extractor's ``sampling_rate``) first.
"""

from __future__ import annotations

import inspect

import torch


class _Codec:
    def __init__(self, model_name_or_path: str, device: str | None = None) -> None:
        self.model_name_or_path, self.device = model_name_or_path, device
        self._model = self._extractor = None

    def _load(self):
        if self._model is None:
            from alignsuite.speech.asr import load_audio_model

            self._model, self._extractor = load_audio_model("AutoModel", self.model_name_or_path, self.device, "codec")
        return self._model, self._extractor

    @property
    def sampling_rate(self) -> int:
        return int(self._load()[1].sampling_rate)


def frame_major(codes: torch.Tensor) -> torch.Tensor:
    """A codec's ``audio_codes`` of one utterance (``[1, K, T]``, or EnCodec's ``[chunks=1, 1, K, T]``) as
    ``[T]`` (K = 1) or ``[T, K]``."""
    while codes.dim() > 3:
        codes = codes[0]
    codes = codes[0].transpose(0, 1)  # [T, K]
    return codes[:, 0] if codes.shape[1] == 1 else codes


class CodecEncoder(_Codec):
    """``codec(waveform, sampling_rate) -> codes`` of a transformers audio codec (its ``encode``)."""

    @torch.no_grad()
    def __call__(self, waveform: torch.Tensor, sampling_rate: int) -> torch.Tensor:
        from alignsuite.data.audio import resample

        model, extractor = self._load()
        wave = resample(waveform.float().reshape(-1).cpu(), int(sampling_rate), self.sampling_rate)
        inputs = extractor(wave.numpy(), sampling_rate=self.sampling_rate, return_tensors="pt")
        accepted = inspect.signature(model.encode).parameters
        inputs = {k: v.to(model.device) for k, v in inputs.items() if k in accepted}
        return frame_major(model.encode(**inputs).audio_codes).long().cpu()


class CodecDecoder(_Codec):
    """``vocoder(codes) -> waveforms`` of a transformers audio codec (its ``decode``), at ``sampling_rate``."""

    @torch.no_grad()
    def __call__(self, speech: list) -> list[torch.Tensor]:
        model, _ = self._load()
        accepted = inspect.signature(model.decode).parameters
        out = []
        for codes in speech:
            codes = torch.as_tensor(codes).long()
            codes = (codes[:, None] if codes.dim() == 1 else codes).transpose(0, 1)[None].to(model.device)  # [1, K, T]
            if "audio_scales" in accepted:  # EnCodec: chunked codes, one scale per chunk
                audio = model.decode(codes[None], [None]).audio_values
            else:
                audio = model.decode(audio_codes=codes).audio_values
            out.append(audio.reshape(-1).float().clamp(-1, 1).cpu())
        return out


__all__ = ["CodecDecoder", "CodecEncoder", "frame_major"]
