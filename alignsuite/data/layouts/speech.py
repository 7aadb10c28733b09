"""Text-to-speech preference pairs (INTP's layout): a text to speak, an optional speaker prompt (its
speech and transcript), and a chosen and a rejected utterance of the text.

An utterance (``Speech``, what the batch carries and the TTS backbones read) is one of, per the layout's
``speech`` option: codec tokens, a ``LongTensor`` ``[frames]`` (one codebook) or ``[frames, codebooks]``
with codes 0-based within their codebook; features, a ``FloatTensor`` ``[frames, dims]`` (mel frames);
or audio, an `alignsuite.data.audio.Audio` decoded at collate.

Canonical (stored) row: ``prompt`` (the text), ``prompt_text`` (the speaker prompt's transcript, ``""``
when none), ``prompt_speech`` (``None`` when none), ``chosen``, ``rejected``, and the provenance columns
``_source``/``_row`` that name a row in an error raised at collate. Tokens are stored as int64 lists
(``[frames]`` with one codebook, ``[frames][codebooks]`` with more), features as float32
``[frames][dims]``, audio encoded as a ``{bytes, path}`` struct; one Arrow schema per layout options.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import datasets
import numpy as np
import torch

from alignsuite.data import audio, images
from alignsuite.data.errors import DataError, _show
from alignsuite.data.layouts.base import Layout, Rows, Table
from alignsuite.data.loading import load_table

SPEECH_COLUMNS = ("prompt_speech", "chosen", "rejected")
SpeechKind = Literal["tokens", "features", "audio"]
_KINDS = ("tokens", "features", "audio")
_TEXT_HINT = "a text answer is read by the layout alignsuite.data.TextPairs; audio files by speech: audio"


class SpeechPairs(Layout):
    """Text-to-speech preference pairs: each row a text, an optional speaker prompt, and a chosen and a
    rejected utterance of the text (INTP: ``text``, ``prompt_speech``, ``prompt_text``, ``chosen``,
    ``rejected``). A ``prompt`` column is read as the text when there is no ``text_field`` column
    (TRL's naming).

    An utterance is, per ``speech``: ``tokens``, a list of integer codes (one codebook) or a list of
    frames of ``num_codebooks`` codes each (integral floats count: one float in a JSON column makes
    `datasets` read all its numbers as floats); ``features``, a list of frames of numbers, all of one width;
    ``audio``, encoded bytes, a file path (relative to the data file's folder), a ``{'bytes', 'path'}``
    dict or an ``{'array', 'sampling_rate'}`` dict. A missing or empty speaker prompt means none.

    Refused with a `DataError` naming source, row and field: a missing or blank text; a missing chosen or
    rejected column; an empty utterance; token codes that are not integers, negative, or not below
    ``codebook_size``; frames with another number of codebooks than ``num_codebooks``; feature frames of
    different widths (in a row or across rows) or not finite; an audio file that does not exist, and at
    collate one that does not decode or is not at ``sampling_rate`` (without ``resample``); a
    ``chosen_text``/``rejected_text`` other than the text; a prompt transcript with no prompt speech.
    Rows whose chosen equals rejected are skipped, counted and reported.

    Args:
        text_field: column of the text to speak (``prompt`` is read when the row has no such column).
        chosen_field: column of the preferred utterance.
        rejected_field: column of the dispreferred utterance.
        prompt_speech_field: optional column of the speaker prompt (an utterance like chosen's).
        prompt_text_field: optional column of the speaker prompt's transcript.
        speech: what an utterance is: ``tokens`` (codec codes), ``features`` (mel frames) or ``audio``.
        codebook_size: tokens: codes per codebook; each code is checked to be in ``[0, codebook_size)``.
        num_codebooks: tokens: codes per frame (1: a batch carries ``[frames]``, else ``[frames, K]``).
        sampling_rate: audio: the rate every utterance must have (``None``: each keeps its own).
        resample: audio: resample an utterance at another rate to ``sampling_rate`` instead of refusing it.
        chosen_text_field: optional column of the text the chosen utterance speaks; must equal the text.
        rejected_text_field: optional column of the text the rejected utterance speaks; must equal the text.
    """

    row_kind = "pairs"
    modality = "text_to_speech"
    chunk_rows = 1000  # canonical rows held as python objects at once (utterances are long lists)
    list_columns = frozenset({"prompt", "prompt_text", *SPEECH_COLUMNS})

    def __init__(
        self,
        text_field: str = "text",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        prompt_speech_field: str = "prompt_speech",
        prompt_text_field: str = "prompt_text",
        speech: SpeechKind = "tokens",
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        sampling_rate: int | None = None,
        resample: bool = False,
        chosen_text_field: str = "chosen_text",
        rejected_text_field: str = "rejected_text",
    ) -> None:
        if speech not in _KINDS:
            raise ValueError(f"SpeechPairs: speech must be one of {list(_KINDS)}, got {speech!r}")
        for name, value in (("codebook_size", codebook_size), ("sampling_rate", sampling_rate)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"SpeechPairs: {name} must be a positive integer or null, got {value!r}")
        if isinstance(num_codebooks, bool) or not isinstance(num_codebooks, int) or num_codebooks < 1:
            raise ValueError(f"SpeechPairs: num_codebooks must be a positive integer, got {num_codebooks!r}")
        # Options of another kind of speech would be silently ignored; a recipe that sets them meant something.
        if speech != "tokens" and (codebook_size is not None or num_codebooks != 1):
            raise ValueError(f"SpeechPairs: codebook_size and num_codebooks describe speech: tokens, not {speech}")
        if speech != "audio" and (sampling_rate is not None or resample):
            raise ValueError(f"SpeechPairs: sampling_rate and resample describe speech: audio, not {speech}")
        if resample and sampling_rate is None:
            raise ValueError("SpeechPairs: resample: true needs the sampling_rate to resample to")
        self.text_field, self.chosen_field, self.rejected_field = text_field, chosen_field, rejected_field
        self.prompt_speech_field, self.prompt_text_field = prompt_speech_field, prompt_text_field
        self.speech, self.codebook_size, self.num_codebooks = speech, codebook_size, num_codebooks
        self.sampling_rate, self.resample = sampling_rate, resample
        self.chosen_text_field, self.rejected_text_field = chosen_text_field, rejected_text_field
        # The model's settings, handed over by the backbone at setup (`use_model`); None: not known.
        self.model_codebooks: tuple[int, int] | None = None  # (codebook_size, num_codebooks)
        self.model_n_mels: int | None = None
        self.model_sampling_rate: int | None = None

    def use_model(self, codebook_size: int | None = None, num_codebooks: int | None = None, n_mels: int | None = None,
                  sampling_rate: int | None = None, **settings: Any) -> None:
        """The backbone's settings, checked at collate where the row's file, row and field are known: codes
        within the model's ``codebook_size`` and ``num_codebooks`` (tokens), frames ``n_mels`` wide
        (features), audio at the model's ``sampling_rate`` (audio; resampled when ``resample``). A layout
        ``sampling_rate`` other than the model's is refused here."""
        if sampling_rate is not None and self.speech == "audio":
            if self.sampling_rate is not None and self.sampling_rate != sampling_rate:
                raise ValueError(f"SpeechPairs: data.layout.sampling_rate is {self.sampling_rate} Hz, and the model"
                                 f" expects {sampling_rate} Hz; set it to {sampling_rate} (with resample: true to"
                                 " resample audio at other rates)")
            self.model_sampling_rate = sampling_rate
        if codebook_size is not None and num_codebooks is not None:
            self.model_codebooks = (codebook_size, num_codebooks)
        if n_mels is not None:
            self.model_n_mels = n_mels

    # --- reading ---------------------------------------------------------------------------------

    def open(self, source: str, split: str, rows: Rows | None = None) -> Table:
        # Audio columns stay encoded (no torchcodec); relative audio paths start at the data file's folder.
        table_source = images.metadata_file(source) or source
        rows = load_table(table_source, split) if rows is None else rows
        table = audio.undecoded(rows) if isinstance(rows, datasets.Dataset) else rows
        return table_source, table, images.image_base_dir(table_source)

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        return self._pair(row, index, source, base_dir, self.chosen_field, self.rejected_field)

    def _pair(self, row: dict, index: int, source: str, base_dir: str | None, chosen_field: str,
              rejected_field: str) -> dict | None:
        """The stored row with the utterances of columns ``chosen_field`` and ``rejected_field`` as chosen and
        rejected (``None``: the two are equal)."""
        text, text_field = self._text(row, index, source)
        self._check_spoken_texts(row, text, text_field, index, source)
        chosen, rejected = (self._utterance(row, field, index, source, base_dir, required=True)
                            for field in (chosen_field, rejected_field))
        if chosen == rejected:
            return None
        prompt_speech = self._utterance(row, self.prompt_speech_field, index, source, base_dir, required=False)
        prompt_text = self._prompt_text(row, prompt_speech is not None, index, source)
        canon = {"prompt": text, "prompt_text": prompt_text, "prompt_speech": prompt_speech,
                 "chosen": chosen, "rejected": rejected, "_source": source, "_row": index}
        if self.speech == "features":
            self._check_widths(canon, canon, "this row's", index, source)
        return canon

    def check_row(self, canon: dict, first: dict, index: int, source: str) -> None:
        if self.speech == "features":  # one feature width (n_mels) for the whole dataset
            self._check_widths(canon, first, "the first row's", index, source)

    def _text(self, row: dict, index: int, source: str) -> tuple[str, str]:
        field = self.text_field if self.text_field in row or "prompt" not in row else "prompt"
        if field not in row:
            raise DataError(source, index, self.text_field, f"a column named {self.text_field!r} (or 'prompt'),"
                            f" the text to speak; the row has columns {sorted(row)}")
        value = row[field]
        if not (isinstance(value, str) and value.strip()):
            raise DataError(source, index, field, "a non-empty text to speak (the transcript)", value)
        return value, field

    def _check_spoken_texts(self, row: dict, text: str, text_field: str, index: int, source: str) -> None:
        # A pair is a preference between two readings of one text; another text's utterance is a bad row.
        spoken = {f: row[f] for f in (self.chosen_text_field, self.rejected_text_field) if row.get(f) is not None}
        for field, value in spoken.items():
            if not isinstance(value, str):
                raise DataError(source, index, field, "text (the transcript of the utterance)", value)
        wrong = [f for f, value in spoken.items() if value.strip() != text.strip()]
        if wrong:
            texts = ", ".join(f"{f} is {_show(v)}" for f, v in spoken.items())
            raise DataError(source, index, wrong[0], problem=f"chosen and rejected are for different texts: {texts};"
                            f" both must speak {text_field} {_show(text)}")

    def _prompt_text(self, row: dict, has_speech: bool, index: int, source: str) -> str:
        value = row.get(self.prompt_text_field)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise DataError(source, index, self.prompt_text_field, "text (the speaker prompt's transcript)", value)
        if value.strip() and not has_speech:
            raise DataError(source, index, self.prompt_text_field, f"a speaker prompt in {self.prompt_speech_field!r}"
                            " for the transcript", problem="the row has a prompt transcript but no prompt speech")
        return value

    def _utterance(self, row: dict, field: str, index: int, source: str, base_dir: str | None, required: bool):
        """The stored form of one utterance; ``None`` for an absent optional one (the speaker prompt)."""
        if field not in row and required:
            raise DataError(source, index, field, f"a column named {field!r}; the row has columns {sorted(row)}")
        value = row.get(field)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not required and (value is None or isinstance(value, (list, str, bytes)) and len(value) == 0):
            return None
        if self.speech == "audio":
            return audio.audio_ref(value, field, index, source, base_dir)
        if not isinstance(value, (list, tuple)):
            raise DataError(source, index, field, self._expected(), value,
                            problem=_TEXT_HINT if isinstance(value, str) else None)
        if not value:
            raise DataError(source, index, field, "a non-empty utterance (at least one frame)", value)
        if self.speech == "tokens":
            return self._tokens(value, field, index, source)
        return _features(value, field, index, source)

    def _expected(self) -> str:
        if self.speech == "features":
            return "features: a list of frames, each a list of numbers"
        if self.num_codebooks == 1:
            return "codec tokens: a list of integer codes"
        return f"codec tokens: a list of frames of {self.num_codebooks} integer codes"

    def _tokens(self, value: list, field: str, index: int, source: str) -> list:
        """Codes as stored: ``[frames]`` for one codebook (``[[c], ...]`` is accepted), else ``[frames][K]``."""
        k = self.num_codebooks
        nested = any(isinstance(frame, (list, tuple)) for frame in value)
        if nested or k > 1:
            for t, frame in enumerate(value):
                if not isinstance(frame, (list, tuple)) or len(frame) != k:
                    count = f"{len(frame)} codes" if isinstance(frame, (list, tuple)) else "one code, not a list"
                    raise DataError(source, index, field, f"frames of {k} codes (num_codebooks: {k})", frame,
                                    problem=f"frame {t} has {count}; set num_codebooks to the codec's codebook count")
        frames = value if nested or k > 1 else [[code] for code in value]
        codes = _array(frames, "iuf", _is_int, "integer codes", "codebook", field, index, source)
        if codes.dtype.kind == "f":  # one float anywhere in a JSON column makes `datasets` read every code as float
            fractional = ~(np.isfinite(codes) & (codes == np.round(codes)))
            if fractional.any():
                t, c = np.argwhere(fractional)[0]
                raise DataError(source, index, field, "integer codes", float(codes[t, c]),
                                problem=f"at frame {t}, codebook {c}")
        codes = codes.astype(np.int64)
        high = self.codebook_size
        bad = (codes < 0) | (codes >= high) if high is not None else codes < 0
        if bad.any():
            t, c = np.argwhere(bad)[0]
            expected = f"codes in [0, {high}) (codebook_size: {high})" if high is not None else "non-negative codes"
            raise DataError(source, index, field, expected, int(codes[t, c]), problem=f"at frame {t}, codebook {c}")
        return codes[:, 0].tolist() if k == 1 else codes.tolist()

    def _check_widths(self, canon: dict, first: dict, whose: str, index: int, source: str) -> None:
        width = len(first["chosen"][0])
        for key in SPEECH_COLUMNS:
            if canon[key] is not None and len(canon[key][0]) != width:
                raise DataError(source, index, self._field(key), f"feature frames of width {width}, as {whose}"
                                f" {self.chosen_field!r}", problem=f"its frames have width {len(canon[key][0])}")

    def features(self, first: dict) -> datasets.Features:
        if self.speech == "audio":
            speech = audio.audio_feature()
        elif self.speech == "features":
            speech = datasets.List(datasets.List(datasets.Value("float32")))
        elif self.num_codebooks == 1:
            speech = datasets.List(datasets.Value("int64"))
        else:
            speech = datasets.List(datasets.List(datasets.Value("int64")))
        text = datasets.Value("string")
        return datasets.Features({"prompt": text, "prompt_text": text, "prompt_speech": speech, "chosen": speech,
                                  "rejected": speech, "_source": text, "_row": datasets.Value("int64")})

    # --- batching --------------------------------------------------------------------------------

    def _field(self, key: str) -> str:
        return {"prompt_speech": self.prompt_speech_field, "chosen": self.chosen_field,
                "rejected": self.rejected_field}[key]

    def to_speech(self, value: Any, key: str, row: dict):
        """One stored utterance as the batch carries it: a tensor, or `Audio` decoded (and resampled)."""
        field, index, source = self._field(key), row.get("_row"), row.get("_source", "?")
        if self.speech == "tokens":
            codes = torch.tensor(value, dtype=torch.long)
            if self.model_codebooks is not None:
                self._check_model_codes(codes, field, index, source)
            return codes
        if self.speech == "features":
            frames = torch.tensor(value, dtype=torch.float32)
            if self.model_n_mels is not None and frames.shape[1] != self.model_n_mels:
                raise DataError(source, index, field, f"feature frames of width {self.model_n_mels} (the model's"
                                " n_mels)", problem=f"its frames have width {frames.shape[1]}")
            return frames
        return audio.decode_audio(value, field, index, source, self.sampling_rate or self.model_sampling_rate,
                                  self.resample)

    def _check_model_codes(self, codes: torch.Tensor, field: str, index: int, source: str) -> None:
        size, k = self.model_codebooks
        frames = codes.unsqueeze(-1) if codes.dim() == 1 else codes
        if frames.shape[1] != k:
            raise DataError(source, index, field, f"frames of {k} code{'s' if k > 1 else ''} (the model's"
                            f" num_codebooks)", problem=f"the row's frames have {frames.shape[1]}; set num_codebooks"
                            f" in data.layout to {k}")
        bad = (frames < 0) | (frames >= size)
        if bad.any():
            t, c = (int(i) for i in bad.nonzero()[0])
            raise DataError(source, index, field, f"codes in [0, {size}) (the model's codebook_size)",
                            int(frames[t, c]), problem=f"at frame {t}, codebook {c}")

    def collate(self, rows: list[dict]) -> dict:
        """As any layout's, with each utterance as a ``Speech`` (``None`` for no speaker prompt); audio is
        decoded here, and one that does not decode or has the wrong rate raises ``DataError`` naming the
        source, row, field and file."""
        decoded = [{**row, **{key: None if row[key] is None else self.to_speech(row[key], key, row)
                              for key in SPEECH_COLUMNS if key in row}} for row in rows]
        return super().collate(decoded)


def _array(frames: list, kinds: str, ok, expected: str, axis: str, field: str, index: int, source: str) -> np.ndarray:
    """``frames`` (lists of equal length) as a 2-D array whose dtype kind is in ``kinds``; otherwise (bools,
    text, nulls, nested lists, a mix) a ``DataError`` at the first value ``ok`` refuses."""
    try:
        array = np.asarray(frames)
    except (ValueError, OverflowError):
        array = None
    if array is not None and array.ndim == 2 and array.dtype.kind in kinds:
        return array
    for t, frame in enumerate(frames):
        for i, value in enumerate(frame):
            if not ok(value):
                raise DataError(source, index, field, expected, value, problem=f"at frame {t}, {axis} {i}")
    raise DataError(source, index, field, expected, problem="the values do not fit a 64-bit number")


def _is_int(code: object) -> bool:
    if isinstance(code, (float, np.floating)):
        return math.isfinite(code) and float(code).is_integer()  # 3.0: how a code reads in a float column
    return isinstance(code, (int, np.integer)) and not isinstance(code, (bool, np.bool_))


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _features(value: list, field: str, index: int, source: str) -> list:
    """Feature frames as stored: float32 ``[frames][dims]``, every frame of the first one's width, finite."""
    for t, frame in enumerate(value):
        if not isinstance(frame, (list, tuple)) or not frame:
            raise DataError(source, index, field, "features: frames that are non-empty lists of numbers", frame,
                            problem=f"at frame {t}")
        if len(frame) != len(value[0]):
            raise DataError(source, index, field, f"frames of one width ({len(value[0])}, frame 0's)",
                            problem=f"frame {t} has width {len(frame)}")
    wide = _array(value, "iuf", _is_number, "features that are numbers", "dim", field, index, source).astype(np.float64)
    stored = wide.astype(np.float32)  # a finite value beyond float32's range becomes inf: refused as well
    finite = np.isfinite(stored)
    if not finite.all():
        t, d = np.argwhere(~finite)[0]
        raise DataError(source, index, field, "finite float32 features (no NaN or inf)", float(wide[t, d]),
                        problem=f"at frame {t}, dim {d}")
    return stored.tolist()
