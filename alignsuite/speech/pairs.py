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

``python -m alignsuite build_pairs --config recipe.yaml --pairs.items texts.jsonl --pairs.output pairs.jsonl``
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.data.errors import DataError
from alignsuite.speech.asr import Recogniser, SpeakerSimilarity, Utterance, utterance_wer


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
    """When a best/worst pair of candidates is kept (see the module docstring)."""

    min_wer_gap: float = 0.0
    min_similarity_gap: float = 0.0
    max_chosen_wer: float | None = None
    min_chosen_similarity: float | None = None

    def keep(self, best: Candidate, worst: Candidate) -> bool:
        if self.max_chosen_wer is not None and best.wer > self.max_chosen_wer:
            return False
        if self.min_chosen_similarity is not None and not best.similarity >= self.min_chosen_similarity:
            return False
        if worst.wer - best.wer > self.min_wer_gap:
            return True
        sims = (best.similarity, worst.similarity)
        return worst.wer == best.wer and not any(map(math.isnan, sims)) and sims[0] - sims[1] > self.min_similarity_gap


def select(candidates: list[Candidate], rule: SelectionRule) -> tuple[Candidate, Candidate] | None:
    """``(chosen, rejected)``: the best and the worst non-empty candidate by :meth:`Candidate.key`, or ``None``.
    An empty sample (the model stopped at once) is left out: no data layout can hold an utterance of no frames."""
    ranked = sorted((c for c in candidates if len(c.speech)), key=Candidate.key)  # nothing to train on in silence
    if not ranked:
        return None
    best, worst = ranked[0], ranked[-1]
    return (best, worst) if best is not worst and rule.keep(best, worst) else None


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
    out: list[torch.Tensor] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        extra = {"num_frames": [it["num_frames"] for it in chunk]} if all("num_frames" in it for it in chunk) else {}
        out += backbone.generate(
            [it["text"] for it in chunk], seed=None if seed is None else seed + start,
            prompt_speech=[it["prompt_speech"] for it in chunk], prompt_text=[it["prompt_text"] for it in chunk],
            **extra, **(generation_kwargs or {}),
        )
    return out


def sample_candidates(backbone, items: list[dict], num_samples: int, seed: int, batch_size: int,
                      generation_kwargs: dict | None = None) -> list[list[torch.Tensor]]:
    """``num_samples`` sampled utterances per item; sample ``j`` of a batch starting at item ``s`` uses seed
    ``seed + 1_000_003 * j + s``, so that a run is repeatable and every candidate is its own draw."""
    draws = [synthesise(backbone, items, batch_size, seed + 1_000_003 * j, generation_kwargs) for j in range(num_samples)]
    return [list(row) for row in zip(*draws)]


def audio_of(backbone):
    """The backbone's speech-to-audio function, or ``None`` when it has no vocoder."""
    return backbone.to_audio if getattr(backbone, "vocoder", None) else None


def judge(items: list[dict], samples: list[list[torch.Tensor]], asr: Recogniser, similarity: SpeakerSimilarity | None,
          to_audio=None) -> list[list[Candidate]]:
    """Every sample transcribed (and compared with its prompt speaker) as a :class:`Candidate`; ``to_audio``
    (speech -> ``Audio``) gives recognisers that listen their audio."""
    flat = [(i, j, s) for i, row in enumerate(samples) for j, s in enumerate(row)]
    speech = [s for _, _, s in flat]
    audio = to_audio(speech) if to_audio else None
    utterances = [Utterance(s, audio[k] if audio else None) for k, s in enumerate(speech)]
    transcripts = asr.transcribe(utterances)
    sims = [float("nan")] * len(flat)
    if similarity is not None:
        prompts = [items[i]["prompt_speech"] for i, _, _ in flat]
        prompt_audio = to_audio([p for p in prompts if p is not None]) if audio else None
        it = iter(prompt_audio or [])
        prompt_utts = [Utterance(p, next(it) if prompt_audio else None) if p is not None else None for p in prompts]
        sims = similarity.similarity(utterances, prompt_utts)
    out: list[list[Candidate]] = [[] for _ in items]
    for k, ((i, j, s), text, sim) in enumerate(zip(flat, transcripts, sims)):
        out[i].append(Candidate(s, text, utterance_wer(text, items[i]["text"]), float(sim), j, utterances[k].audio))
    return out


def pair_rows(items: list[dict], candidates: list[list[Candidate]], rule: SelectionRule) -> list[dict]:
    rows = []
    for item, cands in zip(items, candidates):
        picked = select(cands, rule)
        if picked is None:
            continue
        best, worst = picked
        row = {"text": item["text"], "prompt_text": item["prompt_text"],
               "prompt_speech": as_list(item["prompt_speech"]) if torch.is_tensor(item["prompt_speech"]) else None,
               "chosen": as_list(best.speech), "rejected": as_list(worst.speech),
               "chosen_transcript": best.transcript, "rejected_transcript": worst.transcript,
               "chosen_wer": best.wer, "rejected_wer": worst.wer}
        if not math.isnan(best.similarity):
            row.update(chosen_similarity=best.similarity, rejected_similarity=worst.similarity)
        rows.append(row)
    return rows


def summary(candidates: list[list[Candidate]], rows: list[dict]) -> dict:
    """Mean WER of all samples, of the best and of the worst per item, and how many pairs were kept."""
    flat = [c.wer for cands in candidates for c in cands]
    return {"items": len(candidates), "samples": len(flat), "pairs": len(rows),
            "mean_wer": sum(flat) / max(len(flat), 1),
            "best_wer": sum(min(c.wer for c in cands) for cands in candidates) / max(len(candidates), 1),
            "worst_wer": sum(max(c.wer for c in cands) for cands in candidates) / max(len(candidates), 1)}


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically: a crash leaves the old file (or none), never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pairs-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_pairs(backbone, items: list[dict], asr: Recogniser, similarity: SpeakerSimilarity | None = None,
                num_samples: int = 8, rule: SelectionRule | None = None, seed: int = 0, batch_size: int = 16,
                generation_kwargs: dict | None = None) -> tuple[list[dict], dict]:
    """``(rows, summary)``: sample, judge and select (see the module docstring)."""
    if num_samples < 2:
        raise ValueError(f"pairs.num_samples must be at least 2 to have a best and a worst, got {num_samples}")
    samples = sample_candidates(backbone, items, num_samples, seed, batch_size, generation_kwargs)
    candidates = judge(items, samples, asr, similarity, audio_of(backbone))
    rows = pair_rows(items, candidates, rule or SelectionRule())
    return rows, summary(candidates, rows)


@dataclass
class PairBuilding:
    """The ``build_pairs`` command's settings (the ``pairs`` section).

    Args:
        items: texts to synthesise: ``.txt`` (one per line) or ``.jsonl``/``.json`` rows with ``text`` and
            optional ``prompt_text``, ``prompt_speech`` (codes/frames as lists, or an audio file) and ``num_frames``.
        output: the ``.jsonl`` file the pairs are written to (atomically).
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
    """

    items: str
    output: str
    asr: Recogniser
    similarity: SpeakerSimilarity | None = None
    num_samples: int = 8
    min_wer_gap: float = 0.0
    min_similarity_gap: float = 0.0
    max_chosen_wer: float | None = None
    min_chosen_similarity: float | None = None
    seed: int = 0
    batch_size: int = 16
    generation_kwargs: dict = field(default_factory=dict)

    def run(self, backbone) -> dict:
        rule = SelectionRule(self.min_wer_gap, self.min_similarity_gap, self.max_chosen_wer, self.min_chosen_similarity)
        rows, stats = build_pairs(backbone, load_items(self.items), self.asr, self.similarity, self.num_samples, rule,
                                  self.seed, self.batch_size, self.generation_kwargs)
        write_jsonl(self.output, rows)
        rank_zero_info(
            f"wrote {stats['pairs']} pairs from {stats['items']} items ({stats['samples']} samples) to {self.output}:"
            f" mean WER {stats['mean_wer']:.3f}, best per item {stats['best_wer']:.3f}, worst {stats['worst_wer']:.3f}"
        )
        return stats


__all__ = ["Candidate", "PairBuilding", "SelectionRule", "build_pairs", "judge", "load_items", "pair_rows",
           "sample_candidates", "select", "summary", "synthesise", "write_jsonl"]
