"""Pairs judged under several named preference dimensions (helpful and harmless, UltraFeedback's aspects).

Each row holds a prompt, two answers and, per dimension, either a label (the index of the preferred answer:
PKU-SafeRLHF's ``better_response_id``/``safer_response_id``) or one score per answer (UltraFeedback's aspect
ratings). The first dimension is the primary: it orders the row's ``chosen``/``rejected``. Batches carry, for
every dimension ``d``, ``pref_<d>`` (+1 when ``chosen`` is preferred under ``d``, -1 when ``rejected`` is, 0
for a tie) and, for a scored dimension, ``reward_chosen_<d>``/``reward_rejected_<d>``: the columns MODPO and
the other multi-objective methods read.
"""

from __future__ import annotations

import math

import datasets

from alignsuite.data.errors import DataError
from alignsuite.data.fields import PairFields
from alignsuite.data.layouts.speech import SpeechKind, SpeechPairs
from alignsuite.data.layouts.text import _stored, _TextLayout
from alignsuite.data.preference import check_text_only, normalize_pair

def _label(value: object, field: str, index: int, source: str, responses: tuple[str, str]) -> int:
    # 0/1 as int or float (a bool would pass as 1/0 and hide a broken column, so it is refused).
    if not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    expected = f"the index of the preferred answer: 0 ({responses[0]}) or 1 ({responses[1]})"
    raise DataError(source, index, field, expected, value)


def _score(row: dict, field: str, index: int, source: str) -> float:
    if field not in row:
        raise DataError(source, index, field, f"a column named {field!r}; the row has columns {sorted(row)}")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(source, index, field, "a finite number (the answer's score)", value)
    return float(value)


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


class Dimensions:
    """What a layout that names its preference dimensions shares, whatever the row holds (text: `DimensionPairs`;
    an image and a question: `alignsuite.data.VisionDimensionPairs`; a caption and two images:
    `alignsuite.data.ImageDimensionPairs`; speech: `SpeechDimensionPairs`): the dimensions' option, checked; each
    row's judgement under them; and the batch columns that judgement gives, in the order chosen, rejected."""

    skip_reason = "the two answers are equal or the primary dimension ties"

    def _set_dimensions(self, dimensions: dict[str, str | list[str]], responses: tuple[str, str] | list[str]) -> None:
        who = type(self).__name__
        if not dimensions:
            raise ValueError(f"{who}: dimensions names at least one dimension ({{name: label column}} or"
                             " {name: [score column of response 0, of response 1]})")
        for name, fields in dimensions.items():
            if not name.isidentifier():
                raise ValueError(f"{who}: dimension names become batch columns (pref_<name>); got {name!r}")
            if not isinstance(fields, str) and (len(fields) != 2 or not all(isinstance(f, str) for f in fields)):
                raise ValueError(f"{who}: dimension {name!r} takes a label column or two score columns,"
                                 f" got {fields!r}")
        if len(responses) != 2:
            raise ValueError(f"{who}: responses names two answer columns, got {list(responses)}")
        self.dimensions = {name: f if isinstance(f, str) else list(f) for name, f in dimensions.items()}
        self.responses = tuple(responses)

    @property
    def preference_dimensions(self) -> tuple[str, ...]:
        return tuple(self.dimensions)

    def _judgement(self, row: dict, index: int, source: str) -> dict[str, tuple[float, float | None, float | None]]:
        """Per dimension: (preference of response 0 over response 1 in {+1, 0, -1}, score 0, score 1)."""
        out = {}
        for name, fields in self.dimensions.items():
            if isinstance(fields, str):
                if fields not in row or row[fields] is None:
                    raise DataError(source, index, fields, f"the label of dimension {name!r} (a column named {fields!r})")
                best = _label(row[fields], fields, index, source, self.responses)
                out[name] = (1.0 if best == 0 else -1.0, None, None)
            else:
                s0, s1 = (_score(row, f, index, source) for f in fields)
                out[name] = (_sign(s0 - s1), s0, s1)
        return out

    def _ordered(self, row: dict, index: int, source: str) -> tuple[tuple[str, str] | None, dict[str, float]]:
        """The two answer columns as (chosen, rejected) under the primary dimension (``None`` where it ties)
        and the row's batch columns per dimension in that order (``pref_<d>``, ``reward_chosen_<d>`` ...)."""
        judged = self._judgement(row, index, source)
        primary = judged[next(iter(self.dimensions))][0]
        if primary == 0:
            return None, {}
        columns = {}
        for name, (pref, s0, s1) in judged.items():
            columns[f"pref_{name}"] = pref * primary + 0.0  # in the order chosen, rejected (+ 0.0: no -0.0)
            if s0 is not None:
                chosen, rejected = (s0, s1) if primary > 0 else (s1, s0)
                columns[f"reward_chosen_{name}"], columns[f"reward_rejected_{name}"] = chosen, rejected
        return (self.responses if primary > 0 else self.responses[::-1]), columns

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        """The row's pair, chosen first under the primary dimension, with its dimensions' batch columns (``None``:
        skipped, the primary ties or the two responses are equal)."""
        order, columns = self._ordered(row, index, source)
        if order is None:
            return None
        canon = self._read_pair(row, index, source, base_dir, order)
        return None if canon is None else {**canon, **columns}

    def _read_pair(self, row: dict, index: int, source: str, base_dir: str | None,
                   order: tuple[str, str]) -> dict | None:
        """The row read by the layout's own pair reader with the columns ``order`` as chosen and rejected."""
        return self._pair(row, index, source, base_dir, *order)

    def features(self, first: dict) -> datasets.Features | None:
        """The layout's own schema (``None``: inferred) with the judgement's columns as float64."""
        out = super().features(first)
        if out is not None:
            for key in first:
                if key.startswith(("pref_", "reward_chosen_", "reward_rejected_")):
                    out[key] = datasets.Value("float64")
        return out


class DimensionPairs(Dimensions, _TextLayout):
    """Two answers per prompt, judged under several named dimensions, the first the primary.

    A dimension is given by a label column (the index, 0 or 1, of the answer it prefers: PKU-SafeRLHF) or by
    two score columns (one per answer, in the order of ``responses``: UltraFeedback's aspect ratings); a
    higher score is better. The primary dimension picks ``chosen``; rows where it ties, or whose two answers
    are equal, are skipped and counted. A dimension missing from a row, a label that is neither answer, or a
    score that is not a finite number is an error naming the file, row and field.

    Batches add, per dimension ``d``: ``pref_<d>`` (+1 chosen preferred, -1 rejected preferred, 0 tie), and
    for scored dimensions ``reward_chosen_<d>``/``reward_rejected_<d>``.

    Args:
        dimensions: ``{dimension: label column}`` or ``{dimension: [score column of response 0, of response 1]}``,
            in order, the primary first (PKU-SafeRLHF: ``{better: better_response_id, safer: safer_response_id}``).
        responses: the two answer columns, text or chat messages (PKU-SafeRLHF: ``response_0``, ``response_1``;
            already ordered data: ``chosen``, ``rejected``).
        prompt_field: column of the prompt: text, or chat messages up to the answer.
        tools_field: optional tool schemas of the row, passed to the batch as ``tools``.
    """

    row_kind = "pairs"

    def __init__(
        self,
        dimensions: dict[str, str | list[str]],
        responses: tuple[str, str] | list[str] = ("response_0", "response_1"),
        prompt_field: str = "prompt",
        tools_field: str = "tools",
    ) -> None:
        self._set_dimensions(dimensions, responses)
        self.prompt_field, self.tools_field = prompt_field, tools_field

    def check_first(self, row: dict, source: str) -> None:
        if self.responses[0] not in row:
            self._hint(row, source, self.responses[0])

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        check_text_only(row, index, source)
        for field in self.responses:
            if field not in row:
                raise DataError(source, index, field, f"a column named {field!r}; the row has columns {sorted(row)}")
        return super().normalize(row, index, source, base_dir)

    def _read_pair(self, row: dict, index: int, source: str, base_dir: str | None,
                   order: tuple[str, str]) -> dict | None:
        # Read through the pair reader with the row's own columns as chosen/rejected, so its errors name them.
        fields = PairFields(self.prompt_field, *order, tools=self.tools_field)
        canon = normalize_pair(row, index, source, fields)
        return None if canon is None else _stored(canon, source, index)


class SpeechDimensionPairs(Dimensions, SpeechPairs):
    """Two utterances of one text, judged under several named dimensions, the first the primary: `DimensionPairs`
    for text-to-speech rows. The dimensions are read as there (a label column, or a score column per utterance);
    the text, the speaker prompt and the utterances as `alignsuite.data.SpeechPairs` reads them. The primary
    dimension picks ``chosen``; rows where it ties, or whose two utterances are equal, are skipped and counted.
    Batches add ``pref_<d>`` per dimension and ``reward_chosen_<d>``/``reward_rejected_<d>`` per scored one.

    Args:
        dimensions: ``{dimension: label column}`` or ``{dimension: [score column of response 0, of response 1]}``,
            in order, the primary first.
        responses: the two utterance columns.
        text_field: as `SpeechPairs`.
        prompt_speech_field: as `SpeechPairs`.
        prompt_text_field: as `SpeechPairs`.
        speech: as `SpeechPairs`.
        codebook_size: as `SpeechPairs`.
        num_codebooks: as `SpeechPairs`.
        sampling_rate: as `SpeechPairs`.
        resample: as `SpeechPairs`.
    """

    def __init__(
        self,
        dimensions: dict[str, str | list[str]],
        responses: tuple[str, str] | list[str] = ("response_0", "response_1"),
        text_field: str = "text",
        prompt_speech_field: str = "prompt_speech",
        prompt_text_field: str = "prompt_text",
        speech: SpeechKind = "tokens",
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        sampling_rate: int | None = None,
        resample: bool = False,
    ) -> None:
        self._set_dimensions(dimensions, responses)
        super().__init__(text_field=text_field, chosen_field=self.responses[0], rejected_field=self.responses[1],
                         prompt_speech_field=prompt_speech_field, prompt_text_field=prompt_text_field, speech=speech,
                         codebook_size=codebook_size, num_codebooks=num_codebooks, sampling_rate=sampling_rate,
                         resample=resample)


__all__ = ["DimensionPairs", "Dimensions", "SpeechDimensionPairs"]
