"""Preference pairs from a TTS model's own samples, judged by a recogniser (INTP's intra pairs).

For every item (a text, optionally a speaker prompt and its transcript) the model samples ``num_samples``
candidates; a recogniser transcribes each, its WER against the text ranks them, and speaker similarity
to the prompt (when configured) breaks ties. The lowest-WER candidate is chosen, the highest-WER one
rejected. A pair is kept only when it says something: the rejected WER exceeds the chosen one by more
than ``min_wer_gap`` (or, at equal WER, the chosen is more similar by more than ``min_similarity_gap``),
the chosen WER is at most ``max_chosen_wer`` and its similarity at least ``min_chosen_similarity``
(NeMo's MagpieTTS recipe keeps chosen samples under 1% CER).

Written rows follow the INTP layout :class:`alignsuite.data.SpeechPairs` reads: ``text``, ``prompt_text``,
``prompt_speech``, ``chosen``, ``rejected`` (codec tokens or mel frames as nested lists), plus each side's
``*_transcript``, ``*_wer`` and ``*_similarity``. Train on them, export, and build again from the aligned
model for the iterative alignment INTP reports.

It is a use of the pair builder every backbone shares (:mod:`alignsuite.pairs`): the same seeded sampling
and safe writing, judged by :class:`alignsuite.speech.judges.SpeechJudge` and selected by this module's
:class:`SelectionRule`, which names the threshold that drops each item.

``python -m alignsuite build_pairs --config recipe.yaml --pairs.items texts.jsonl --pairs.output pairs.jsonl``
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from alignsuite import pairs
from alignsuite.data.errors import DataError
from alignsuite.generation import generate_chunked
from alignsuite.pairs import write_jsonl
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity
from alignsuite.speech.judges import SpeechJudge, audio_of


@dataclass
class Candidate:
    speech: torch.Tensor
    transcript: str
    wer: float
    similarity: float = float("nan")
    sample: int = 0
    audio: Any = None  # alignsuite.data.audio.Audio, when the backbone has a vocoder

    def key(self) -> tuple:
        """Lower is better: WER first, then higher similarity, then the earlier sample."""
        sim = -self.similarity if not math.isnan(self.similarity) else 0.0
        return (self.wer, sim, self.sample)


@dataclass
class SelectionRule:
    """When a best/worst pair of candidates is kept (see the module docstring); a rule of
    :func:`alignsuite.pairs.select_pairs`, naming the threshold that drops a pair."""

    min_wer_gap: float = 0.0
    min_similarity_gap: float = 0.0
    max_chosen_wer: float | None = None
    min_chosen_similarity: float | None = None

    def rank(self, candidates: list[Candidate]) -> list[Candidate]:
        """Best first by :meth:`Candidate.key`. An empty sample (the model stopped at once) is left out: no data
        layout can hold an utterance of no frames, and there is nothing to train on in silence."""
        return sorted((c for c in candidates if len(c.speech)), key=Candidate.key)

    def why_dropped(self, best: Candidate, worst: Candidate) -> str | None:
        if self.max_chosen_wer is not None and best.wer > self.max_chosen_wer:
            return "max_chosen_wer"
        if self.min_chosen_similarity is not None and not best.similarity >= self.min_chosen_similarity:
            return "min_chosen_similarity"
        if worst.wer - best.wer > self.min_wer_gap:
            return None
        if worst.wer != best.wer:
            return "min_wer_gap"
        sims = (best.similarity, worst.similarity)
        if any(map(math.isnan, sims)) or sims[0] == sims[1]:
            return "tie"
        return None if sims[0] - sims[1] > self.min_similarity_gap else "min_similarity_gap"


def select(candidates: list[Candidate], rule: SelectionRule) -> tuple[Candidate, Candidate] | None:
    """``(chosen, rejected)``: the best and the worst non-empty candidate by :meth:`Candidate.key`, or ``None``."""
    return pairs.pick(candidates, rule)[0]


def as_list(speech) -> list:
    """Speech as JSON: nested lists of ints (codes) or of floats rounded to 5 digits (frames)."""
    speech = torch.as_tensor(speech)
    if speech.is_floating_point():
        return [[round(float(x), 5) for x in frame] for frame in speech.reshape(len(speech), -1)]
    return speech.tolist()


# ------------------------------------------------------------------------------------------ items
def _speech_value(value, path: str, line: int, base_dir: str):
    if isinstance(value, str):  # an audio file, relative to the items file
        from alignsuite.data.audio import decode_audio

        ref = {"bytes": None, "path": value if os.path.isabs(value) else os.path.join(base_dir, value)}
        if not os.path.isfile(ref["path"]):
            raise DataError(path, line=line, problem=f"field 'prompt_speech': audio file {ref['path']!r} does not exist")
        return decode_audio(ref, "prompt_speech", line - 1, path, None, False)
    tensor = torch.tensor(value)
    if tensor.numel() == 0:
        raise DataError(path, line=line, problem="field 'prompt_speech': an empty utterance")
    return tensor


def load_items(path: str) -> list[dict]:
    """Items from a ``.txt`` file (one text per line) or ``.jsonl``/``.json`` rows with ``text`` and optional
    ``prompt_text``, ``prompt_speech`` (codes or frames as lists, or an audio file path) and ``num_frames``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs.items: {path!r} does not exist (expected .txt, .jsonl or .json)")
    base_dir = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        if path.endswith(".txt"):
            rows = [(i + 1, {"text": line.strip()}) for i, line in enumerate(f) if line.strip()]
        elif path.endswith(".json"):
            rows = [(i + 1, r) for i, r in enumerate(json.load(f))]
        else:
            rows = []
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append((i + 1, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(path, line=i + 1, expected="one JSON object per line", problem=str(e)) from None
    items = []
    for line, row in rows:
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, line=line, expected="a row with a non-empty 'text'", got=row)
        item = {"text": text, "prompt_text": row.get("prompt_text") or "", "prompt_speech": None}
        if row.get("prompt_speech") is not None:
            item["prompt_speech"] = _speech_value(row["prompt_speech"], path, line, base_dir)
        if row.get("num_frames") is not None:
            item["num_frames"] = int(row["num_frames"])
        items.append(item)
    if not items:
        raise DataError(path, problem="no items: nothing to synthesise")
    return items


# ------------------------------------------------------------------------------------------ sampling and judging
def synthesise(backbone, items: list[dict], batch_size: int, seed: int | None = None,
               generation_kwargs: dict | None = None) -> list[torch.Tensor]:
    """One utterance per item, ``batch_size`` items at a time (greedy for token models when ``seed`` is None);
    the batch starting at item ``s`` uses seed ``seed + s``."""
    return generate_chunked(backbone.generate, items, batch_size, seed, backbone.generation_columns, generation_kwargs,
                            prompt_key="text", seed_step="offset")


def judge(items: list[dict], samples: list[list[torch.Tensor]], asr: Recogniser, similarity: SpeakerSimilarity | None,
          to_audio=None) -> list[list[Candidate]]:
    """Every sample judged by a :class:`SpeechJudge` (transcribed, and compared with its prompt speaker) as a
    :class:`Candidate`; ``to_audio`` (speech -> ``Audio``) gives recognisers that listen their audio."""
    return pairs.judge_samples(SpeechJudge(asr, similarity, to_audio), items, samples, "text", as_candidate)


def intp_row(item: dict, best: Candidate, worst: Candidate) -> dict:
    """The INTP row of an item's chosen and rejected candidates."""
    row = {"text": item["text"], "prompt_text": item["prompt_text"],
           "prompt_speech": as_list(item["prompt_speech"]) if torch.is_tensor(item["prompt_speech"]) else None,
           "chosen": as_list(best.speech), "rejected": as_list(worst.speech),
           "chosen_transcript": best.transcript, "rejected_transcript": worst.transcript,
           "chosen_wer": best.wer, "rejected_wer": worst.wer}
    if not math.isnan(best.similarity):
        row.update(chosen_similarity=best.similarity, rejected_similarity=worst.similarity)
    return row


def pair_rows(items: list[dict], candidates: list[list[Candidate]], rule: SelectionRule,
              dropped: dict | None = None) -> list[dict]:
    """The INTP rows of the items that give a pair; ``dropped`` (a dict), when given, counts the others by the
    reason they were dropped."""
    kept, why = pairs.select_pairs(candidates, rule)
    if dropped is not None:
        dropped.update(why)
    return [intp_row(items[i], best, worst) for i, best, worst in kept]


def summary(candidates: list[list[Candidate]], rows: list[dict] | None = None, dropped: dict | None = None) -> dict:
    """The mean WER of all samples, of the best and of the worst per item (and, given ``rows``, the counts of
    :func:`alignsuite.pairs.counts`: items, candidates, pairs kept, items dropped by rule)."""
    stats = pairs.value_summary(candidates, lambda c: c.wer, "wer", higher_is_better=False)
    stats["samples"] = sum(map(len, candidates))
    if rows is not None:
        stats.update(pairs.counts(len(candidates), stats["samples"], len(rows), dropped or {}))
    return stats


def as_candidate(speech, values: dict, sample: int) -> Candidate:
    """A :class:`Candidate` from a :class:`SpeechJudge`'s values."""
    return Candidate(speech, values["transcript"], values["wer"], values["speaker_similarity"], sample, values["audio"])


def build_pairs(backbone, items: list[dict], asr: Recogniser, similarity: SpeakerSimilarity | None = None,
                num_samples: int = 8, rule: SelectionRule | None = None, seed: int = 0, batch_size: int = 16,
                generation_kwargs: dict | None = None) -> tuple[list[dict], dict]:
    """``(rows, summary)``: sample, judge and select (see the module docstring), through the pair builder of
    every backbone (:func:`alignsuite.pairs.build_pairs`) with a :class:`SpeechJudge` and this module's rule
    and rows."""
    judge_ = SpeechJudge(asr, similarity, audio_of(backbone))
    return pairs.build_pairs(backbone, items, judge_, num_samples, rule or SelectionRule(), seed, batch_size,
                             generation_kwargs, prompt_key="text", row=intp_row, candidate=as_candidate,
                             summarise=summary)


@dataclass
class PairBuilding(pairs.PairBuilding):
    """The ``build_pairs`` command's settings (the ``pairs`` section): INTP's speech pairs when ``asr`` is
    given, else the pairs of any backbone ranked by ``judge`` (:class:`alignsuite.pairs.PairBuilding`, whose
    settings it shares).

    Args:
        items: texts to synthesise: ``.txt`` (one per line) or ``.jsonl``/``.json`` rows with ``text`` and
            optional ``prompt_text``, ``prompt_speech`` (codes/frames as lists, or an audio file) and ``num_frames``
            (for another backbone: its prompts, see :class:`alignsuite.pairs.PairBuilding`).
        output: the ``.jsonl`` file the pairs are written to (atomically, and only when at least one pair is
            kept: a run that keeps none fails with the counts and leaves an earlier file as it was).
        asr: the recogniser whose WER ranks the candidates (``alignsuite.speech.TransformersASR``, or a toy
            world's ``alignsuite.toy.speech.ToyRecogniser``).
        similarity: speaker similarity to the prompt speech, breaking WER ties; ``None`` for none.
        num_samples: candidates sampled per item (NeMo's MagpieTTS recipe draws 6).
        min_wer_gap: keep a pair only if the rejected WER exceeds the chosen one by more than this.
        min_similarity_gap: at equal WER, keep a pair if the chosen similarity exceeds the rejected one by more than this.
        max_chosen_wer: keep a pair only if the chosen WER is at most this (``None``: no limit).
        min_chosen_similarity: keep a pair only if the chosen similarity is at least this.
        seed: seed of the samples.
        batch_size: items generated at once.
        generation_kwargs: passed to the backbone's ``generate`` (``temperature``, ``top_p``, ``steps`` ...).
        overwrite: replace an output that already holds rows, or is the items file (refused otherwise).
        judge, min_margin, min_chosen: without ``asr``, the scorer and thresholds of the pair builder of any
            backbone.
    """

    asr: Recogniser | None = None
    similarity: SpeakerSimilarity | None = None
    num_samples: int = 8
    min_wer_gap: float = 0.0
    min_similarity_gap: float = 0.0
    max_chosen_wer: float | None = None
    min_chosen_similarity: float | None = None

    def run(self, backbone) -> dict:
        """Build and write the pairs; :class:`alignsuite.pairs.OutputExistsError` before any sampling when the
        output may not be written, :class:`alignsuite.pairs.NoPairsError` (with the counts) when none is kept."""
        if self.asr is None:
            return super().run(backbone)
        pairs.check_output(self.output, self.items, self.overwrite)
        rule = SelectionRule(self.min_wer_gap, self.min_similarity_gap, self.max_chosen_wer, self.min_chosen_similarity)
        rows, stats = build_pairs(backbone, load_items(self.items), self.asr, self.similarity, self.num_samples, rule,
                                  self.seed, self.batch_size, self.generation_kwargs)
        pairs.write_pairs(self.output, rows, stats)
        rank_zero_info(
            f"wrote {stats['pairs']} pairs from {stats['items']} items ({stats['samples']} samples) to {self.output}:"
            f" mean WER {stats['mean_wer']:.3f}, best per item {stats['best_wer']:.3f}, worst {stats['worst_wer']:.3f};"
            f" {pairs.describe(stats)}"
        )
        return stats


__all__ = ["Candidate", "PairBuilding", "SelectionRule", "as_candidate", "build_pairs", "intp_row", "judge", "load_items",
           "pair_rows", "select", "summary", "synthesise", "write_jsonl"]
