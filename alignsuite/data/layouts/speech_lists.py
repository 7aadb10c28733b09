"""Speech lists (text-to-speech): K graded utterances of one text, for the listwise objectives on a speech-token LM.

Each utterance is read and checked as the pair layout reads chosen and rejected (`SpeechPairs`: codec tokens,
feature frames or audio, with the same options and errors); the speaker prompt likewise. A padded entry is stored
as no utterance and reaches the batch as an utterance of no frames, which a speech-token LM scores as its end token
alone and the mask keeps out of every loss; only codec tokens may be padded (lists of features or audio must be
full).
"""

from __future__ import annotations

import datasets
import torch

from alignsuite.data.errors import DataError
from alignsuite.data.layouts.lists import ListLayout
from alignsuite.data.layouts.speech import SpeechKind, SpeechPairs
from alignsuite.data.lists import INVALID, ListGrades, build_list, row_labels


class SpeechLists(ListLayout, SpeechPairs):
    """Text-to-speech lists: a text, an optional speaker prompt, and K graded utterances of the text (``text``,
    ``responses``, and ``scores`` (higher better) or ``ranks`` (1 = best), or ``ranked: true`` for utterances
    listed best first). A missing or empty utterance, or one with a NaN grade, is dropped and counted; padding,
    skipped lists and refusals as `alignsuite.data.TextLists`; utterances as `alignsuite.data.SpeechPairs`.

    Args:
        list_size: K, the length every list is padded to; the objective's ``list_size`` must equal it.
        text_field: column of the text to speak (``prompt`` is read when the row has no such column).
        responses_field: column of the utterances.
        scores_field: column of one grade per utterance, higher better.
        labels_field: another name looked for when ``scores_field`` is absent.
        ranks_field: column of one rank per utterance, 1 = best.
        ranked: rows without grades list their utterances best first.
        prompt_speech_field: optional column of the speaker prompt.
        prompt_text_field: optional column of the speaker prompt's transcript.
        speech: what an utterance is: ``tokens`` (codec codes), ``features`` (mel frames) or ``audio``.
        codebook_size: tokens: codes per codebook.
        num_codebooks: tokens: codes per frame.
        sampling_rate: audio: the rate every utterance must have.
        resample: audio: resample an utterance at another rate instead of refusing it.
    """

    list_columns = frozenset({"prompt", "prompt_text", "prompt_speech", "responses"})

    def __init__(
        self,
        list_size: int = 4,
        text_field: str = "text",
        responses_field: str = "responses",
        scores_field: str = "scores",
        labels_field: str = "labels",
        ranks_field: str = "ranks",
        ranked: bool = False,
        prompt_speech_field: str = "prompt_speech",
        prompt_text_field: str = "prompt_text",
        speech: SpeechKind = "tokens",
        codebook_size: int | None = None,
        num_codebooks: int = 1,
        sampling_rate: int | None = None,
        resample: bool = False,
    ) -> None:
        SpeechPairs.__init__(self, text_field=text_field, prompt_speech_field=prompt_speech_field,
                             prompt_text_field=prompt_text_field, speech=speech, codebook_size=codebook_size,
                             num_codebooks=num_codebooks, sampling_rate=sampling_rate, resample=resample)
        ListLayout.__init__(self, list_size)
        self.responses_field = responses_field
        self.scores_field, self.labels_field, self.ranks_field, self.ranked = scores_field, labels_field, ranks_field, ranked
        self.grades = ListGrades(scores_field, labels_field, ranks_field, ranked)

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        text, _ = self._text(row, index, source)
        field = self.responses_field
        values = row.get(field)
        if not isinstance(values, (list, tuple)):
            raise DataError(source, index, field, "a list of utterances", values)
        utterances = [INVALID if v is None or (isinstance(v, (list, str, bytes)) and len(v) == 0)
                      else self._utterance({field: v}, field, index, source, base_dir, required=True) for v in values]
        labels = row_labels(row, len(values), self.grades, index, source)
        canon, dropped = build_list(utterances, labels, self.list_size, None, field, index, source)
        self._count_dropped(source, dropped)
        if canon is None:
            return None
        if self.speech != "tokens" and not all(canon["mask"]):
            raise DataError(source, index, field, f"{self.list_size} valid utterances (list_size): lists of {self.speech}"
                            " cannot be padded; only codec tokens can", sum(canon["mask"]))
        prompt_speech = self._utterance(row, self.prompt_speech_field, index, source, base_dir, required=False)
        prompt_text = self._prompt_text(row, prompt_speech is not None, index, source)
        return {"prompt": text, "prompt_text": prompt_text, "prompt_speech": prompt_speech, **canon,
                "_source": source, "_row": index}

    def check_row(self, canon: dict, first: dict, index: int, source: str) -> None:
        """Feature widths are checked against the model's ``n_mels`` at collate."""

    def _field(self, key: str) -> str:
        return self.responses_field if key == "responses" else super()._field(key)

    def features(self, first: dict) -> datasets.Features:
        pairs = super().features(first)
        speech = pairs["chosen"]
        return datasets.Features({
            "prompt": pairs["prompt"], "prompt_text": pairs["prompt_text"], "prompt_speech": speech,
            "responses": datasets.List(speech), "labels": datasets.List(datasets.Value("float64")),
            "mask": datasets.List(datasets.Value("bool")), "_source": pairs["_source"], "_row": pairs["_row"],
        })

    def _padding(self) -> torch.Tensor:
        """A padded entry: codec tokens of no frames."""
        return torch.zeros((0,) if self.num_codebooks == 1 else (0, self.num_codebooks), dtype=torch.long)

    def collate(self, rows: list[dict]) -> dict:
        decoded = [{**row, "responses": [self._padding() if v is None else self.to_speech(v, "responses", row)
                                         for v in row["responses"]]} for row in rows]
        return super().collate(decoded)


__all__ = ["SpeechLists"]
