"""What the text-to-speech backbones share around their speech: audio values in a batch, and audio out of
generated speech through a configured vocoder."""

from __future__ import annotations

from typing import Any

from alignsuite.components import build_object


def is_audio(speech: Any) -> bool:
    """Duck-typed ``alignsuite.data.audio.Audio``: a waveform and its sampling rate."""
    return hasattr(speech, "waveform") and hasattr(speech, "sampling_rate")


class Vocoded:
    """Mixin beside ``Backbone``: ``to_audio`` through ``self.vocoder`` (``"package.module.Class"`` or
    ``{"class_path", "init_args"}``: an object with a ``sampling_rate`` that turns a list of generated utterances
    into waveforms), built on first use and never a sub-module, so never in a checkpoint."""

    vocoder: str | dict | None = None

    def to_audio(self, speech: list) -> list | None:
        """``alignsuite.data.audio.Audio`` for each utterance; ``None`` when there is no vocoder."""
        if self.vocoder is None:
            return None
        from alignsuite.data.audio import Audio

        built = self.__dict__.get("_vocoder")
        if built is None:
            built = build_object(self.vocoder)
            object.__setattr__(self, "_vocoder", built)
        rate = int(built.sampling_rate)
        return [Audio(wave.float().reshape(-1), rate) for wave in built(list(speech))]


__all__ = ["Vocoded", "is_audio"]
