"""Audio for text-to-speech preference data: where an utterance's audio is (`audio_ref`), its decoded
value (`Audio`, from `decode_audio`) and writing one to a WAV file (`write_wav`, for sample logging).

Like images (`alignsuite.data.images`), audio stays encoded in the dataset as ``{"bytes", "path"}``
and is decoded per batch, at collate: a dataset of 100k utterances costs its file size, not its sample
count, and a file that does not decode is found when its batch is built, named by source, row, field
and path.

Decoding is `soundfile` (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 ...), the one decoder here; `datasets`
decodes its ``Audio`` feature with torchcodec, which this package does not need: its columns are read
undecoded (`undecoded`). A decoded utterance is mono float32 in [-1, 1] (PCM scaled by libsndfile;
channels averaged, as librosa's ``to_mono`` does); NaN or inf samples, which a float WAV can hold, are
refused naming the file, row and field. A rate other than the configured one is either
refused (the default: resampling changes what the model hears, so it is asked for) or resampled with
`scipy.signal.resample_poly`, the polyphase filter (up by ``target/g``, down by ``rate/g``,
``g = gcd``; what librosa's ``res_type="polyphase"`` calls); the output has
``ceil(samples * target / rate)`` samples.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from alignsuite.data.errors import DataError
from alignsuite.data.refs import encoded_ref
from alignsuite.lazy import optional

AudioRef = dict  # {"bytes": bytes | None, "path": str | None}
_EXPECT_AUDIO = ("encoded audio bytes, an audio file path, a {'bytes', 'path'} dict"
                 " or an {'array', 'sampling_rate'} dict")


@dataclass  # not frozen: Lightning moves a batch to the device by rebuilding its dataclasses' tensor fields
class Audio:
    """One decoded utterance: ``waveform`` float32 mono ``[samples]`` in [-1, 1] at ``sampling_rate``
    Hz; ``source`` says where it came from (a file path, or ``"source: row N: field 'chosen'"``)."""

    waveform: torch.Tensor
    sampling_rate: int
    source: str = ""

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sampling_rate


def audio_feature() -> dict:
    """Arrow type of a stored audio ref: a struct of encoded bytes and an absolute path (not
    ``datasets.Audio``, which needs torchcodec even to store bytes)."""
    return {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}


def undecoded(table: datasets.Dataset) -> datasets.Dataset:
    """``table`` with every ``datasets.Audio`` column cast to ``decode=False``: rows then hold
    ``{"bytes", "path"}`` dicts, and nothing is decoded (or needs torchcodec) to read them."""
    for name, feature in table.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            table = table.cast_column(name, datasets.Audio(decode=False))
    return table


def soundfile():
    """soundfile (libsndfile), the one audio decoder and writer: it comes with the ``speech`` extra."""
    with optional("speech", "reading and writing audio"):
        import soundfile

    return soundfile


def _wav_bytes(array: object, sampling_rate: object, field: str, index: int, source: str) -> bytes:
    """An ``{"array", "sampling_rate"}`` value (how `datasets` used to decode an ``Audio`` feature:
    ``[samples]``, or ``[channels, samples]``) as lossless float WAV bytes."""
    sf = soundfile()

    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise DataError(source, index, field, "a positive integer 'sampling_rate' with the 'array'", sampling_rate)
    try:
        samples = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(source, index, field, "an 'array' of numbers (audio samples)", array) from err
    if samples.ndim not in (1, 2) or samples.shape[-1] == 0:
        raise DataError(source, index, field, "a non-empty 'array' of shape [samples] or [channels, samples]",
                        problem=f"it has shape {list(samples.shape)}")
    _check_finite(samples.reshape(-1) if samples.ndim == 1 else samples.T, "", field, index, source)
    buffer = io.BytesIO()
    sf.write(buffer, samples.T, int(sampling_rate), format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def audio_ref(value: object, field: str, index: int, source: str, base_dir: str | None = None) -> AudioRef:
    """The canonical ``{"bytes", "path"}`` of one audio value: encoded bytes, a file path (relative to
    ``base_dir``, the data file's folder; it must exist), a ``{"bytes", "path"}`` dict (bytes win when
    both are set) or an ``{"array", "sampling_rate"}`` dict (encoded to WAV). ``DataError`` otherwise."""
    if isinstance(value, dict) and "array" in value:
        return {"bytes": _wav_bytes(value["array"], value.get("sampling_rate"), field, index, source),
                "path": value.get("path") if isinstance(value.get("path"), str) else None}
    return encoded_ref(value, "audio", _EXPECT_AUDIO, field, index, source, base_dir)


def _polyphase(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    with optional("speech", "resampling audio"):
        from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(waveform, target // g, rate // g).astype(np.float32)


def resample(waveform: torch.Tensor | np.ndarray, rate: int, target: int) -> torch.Tensor | np.ndarray:
    """``waveform`` ``[samples]`` from ``rate`` to ``target`` Hz by polyphase filtering (module docstring),
    float32, as a tensor (on the input's device) for a tensor and an array for an array; unchanged at
    the same rate."""
    if rate == target:
        return waveform
    if isinstance(waveform, torch.Tensor):
        out = _polyphase(waveform.detach().float().cpu().numpy(), int(rate), int(target))
        return torch.from_numpy(out).to(waveform.device)
    return _polyphase(np.asarray(waveform, dtype=np.float32), int(rate), int(target))


def decode_audio(
    ref: AudioRef, field: str, index: int, source: str, sampling_rate: int | None = None, resample: bool = False
) -> Audio:
    """The mono float32 `Audio` of a canonical audio ref, at ``sampling_rate`` when one is given
    (resampled if ``resample``, else a rate that differs is a ``DataError``). A file that does not
    decode, or holds no samples, is a ``DataError`` naming source, row, field, the file and soundfile's
    reason."""
    sf = soundfile()

    data, path = ref.get("bytes"), ref.get("path")
    where = f" ({path})" if path else ""
    try:
        samples, rate = sf.read(io.BytesIO(data) if data else path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, TypeError, OSError ...
        raise DataError(source, index, field, f"an audio file that decodes{where}", f"{type(err).__name__}: {err}") from err
    if samples.shape[0] == 0:
        raise DataError(source, index, field, f"a non-empty utterance{where}", problem="the audio has 0 samples")
    _check_finite(samples, where, field, index, source)
    waveform = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sampling_rate is not None and rate != sampling_rate:
        if not resample:
            raise DataError(source, index, field, f"audio at {sampling_rate} Hz{where}",
                            problem=f"the file is at {rate} Hz; set resample: true in data.layout to resample it")
        waveform, rate = _polyphase(waveform, rate, sampling_rate), sampling_rate
    label = path or f"{source}: row {index}: field {field!r}"
    return Audio(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)), int(rate), label)


def _check_finite(samples: np.ndarray, where: str, field: str, index: int, source: str) -> None:
    """Refuse NaN or inf samples (a float WAV holds them as written): they would reach the model and stop the
    run with a NaN loss that looks like a learning-rate problem."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = tuple(np.argwhere(~finite)[0])  # [samples] or [samples, channels]
        raise DataError(source, index, field, f"finite samples (no NaN or inf){where}", float(samples[bad]),
                        problem=f"at sample {int(bad[0])}")


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sampling_rate: int) -> None:
    """Write mono ``waveform`` ``[samples]`` as a 16-bit PCM WAV at ``path``, atomically: a temporary file
    in the same folder, then ``os.replace``, so a reader (a logger, a viewer) never sees half a file."""
    sf = soundfile()

    samples = waveform.detach().float().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    samples = np.clip(samples.astype(np.float32).reshape(-1), -1.0, 1.0)  # PCM cannot hold more; clip, not wrap
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, samples, int(sampling_rate), format="WAV", subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
