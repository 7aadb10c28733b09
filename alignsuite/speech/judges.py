"""Synthesised speech as a judge sees it: :class:`SpeechJudge` is the :class:`alignsuite.judging.Scorer` of
TTS outputs, a recogniser's WER against the text and the speaker similarity to the prompt speech.

It is what the ``build_pairs`` command ranks candidates by, what the speech validation samples log and what
``evaluate`` can score a TTS model with; the recogniser and the similarity judge are any
:class:`alignsuite.speech.asr.Recogniser` and :class:`alignsuite.speech.asr.SpeakerSimilarity` (the toy
worlds' or transformers checkpoints).
"""

from __future__ import annotations

import math
from typing import Callable

from alignsuite.judging import Scorer, checked_transcripts, error_rates, word_error_rate
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity, Utterance


class SpeechJudge(Scorer):
    """Per utterance: ``wer`` (on normalised text, against the row's ``text``), ``speaker_similarity`` to the
    row's ``prompt_speech`` (NaN without a similarity judge or a prompt), and what was read along the way
    (``transcript``; ``audio`` when the backbone has a vocoder).

    Args:
        asr: the recogniser.
        similarity: the speaker-similarity judge, or ``None``.
        to_audio: speech -> ``Audio`` (a backbone's vocoder, :func:`audio_of`), for judges that listen.
        reference_column: the row's column holding the text said.
        batch_size: utterances judged at once.
    """

    name, unit, higher_is_better, modalities = "wer", "fraction", False, ("text_to_speech",)
    values = ("wer", "speaker_similarity")

    def __init__(self, asr: Recogniser, similarity: SpeakerSimilarity | None = None, to_audio: Callable | None = None,
                 reference_column: str = "text", batch_size: int = 1 << 30) -> None:
        self.asr, self.similarity, self.to_audio = asr, similarity, to_audio
        self.reference_column, self.batch_size = reference_column, batch_size

    def score_batch(self, prompts, outputs, conditions, rows) -> list[dict]:
        rows = rows or [{self.reference_column: p} for p in prompts]
        audio = self.to_audio(list(outputs)) if self.to_audio else None
        utterances = [Utterance(s, audio[k] if audio else None) for k, s in enumerate(outputs)]
        transcripts = checked_transcripts(self.asr, self.asr.transcribe(utterances), len(utterances))
        sims = [float("nan")] * len(outputs)
        if self.similarity is not None:
            prompts_speech = [r.get("prompt_speech") for r in rows]
            prompt_audio = self.to_audio([p for p in prompts_speech if p is not None]) if audio else None
            it = iter(prompt_audio or [])
            prompt_utts = [Utterance(p, next(it) if prompt_audio else None) if p is not None else None
                           for p in prompts_speech]
            sims = self.similarity.similarity(utterances, prompt_utts)
        references = [row[self.reference_column] for row in rows]
        wers = error_rates(transcripts, references, normalised=True)
        return [{"wer": wer, "speaker_similarity": float(sim), "transcript": text, "reference": reference,
                 "audio": u.audio}
                for u, text, wer, sim, reference in zip(utterances, transcripts, wers, sims, references)]

    def means(self, judged) -> dict[str, float]:
        """The corpus WER (word edits over all utterances / all reference words, on normalised text) and the
        mean speaker similarity where there is one (NaN where there is none)."""
        have = [v for v in judged if v is not None]
        similarity = mean_similarity(have)
        wer = word_error_rate([v["transcript"] for v in have], [v["reference"] for v in have], normalised=True)
        return {"wer": wer if have else float("nan"), "speaker_similarity": float("nan") if similarity is None else similarity}


def audio_of(backbone):
    """The backbone's speech-to-audio function, or ``None`` when it has no vocoder."""
    return backbone.to_audio if getattr(backbone, "vocoder", None) else None


def mean_similarity(judged: list[dict]) -> float | None:
    sims = [v["speaker_similarity"] for v in judged if v is not None and not math.isnan(v["speaker_similarity"])]
    return sum(sims) / len(sims) if sims else None


__all__ = ["SpeechJudge", "audio_of", "mean_similarity"]
