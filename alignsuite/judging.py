"""The one judge interface: a :class:`Scorer` turns prompts and the outputs generated for them into one or
several named values per sample. Every judge implements it: the toy worlds' rewards, WER and speaker
similarity, reward models, image scorers (:mod:`alignsuite.evaluation`, :mod:`alignsuite.speech.judges`);
``evaluate``, the validation callbacks and pair building use it.

Text helpers every judge shares live here too: :func:`normalise` (text as an error rate compares it) and the
one word error rate, :func:`word_error_rate`; a prompt's text is the one chat renderer's
(:func:`alignsuite.data.messages.prompt_text`, handed on from here).
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from typing import Any, Sequence

from alignsuite.data.messages import prompt_text

Score = float | None
ASCII_MARKS = str.maketrans({mark: " " for mark in string.punctuation if mark != "'"})


class Scorer:
    """Named values per (prompt, output): ``judge(prompts, outputs, conditions, rows) -> [{name: value} | None]``.

    ``prompts`` are the prompts as generated from (text, or chat messages), ``outputs`` the generations
    (text, PIL images, speech), ``conditions`` their input images for vision-language models (one list per
    prompt) and ``rows`` the prompt set's full rows (dicts; columns a scorer may need, such as a reference
    transcript or a speaker prompt). ``None`` in ``outputs`` (a failed generation) judges ``None``.

    A judge that reads a counterfactual generation beside the output declares it in ``rewrites``:
    ``{name: {generation column: row column}}``, the same prompt generated again with the row's other column in
    place of a conditioning one (the toy vision-language world's swapped image); the caller generates it
    (:func:`alignsuite.generation.generate_rewrites`) and hands it in each row under ``name``.

    A scorer's main value is the one named ``name``: :meth:`score` returns it alone. ``values`` names all it
    returns (``(name,)`` when it returns one); a value may be ``None`` where it does not apply to a sample
    (a mean leaves it out). A subclass implements :meth:`score_batch`, returning a number per sample (its
    main value) or a dict of named values.
    """

    name: str = "score"
    unit: str = ""
    higher_is_better: bool = True
    modalities: tuple[str, ...] = ()
    batch_size: int = 16
    values: tuple[str, ...] = ()
    rewrites: dict[str, dict[str, str]] = {}

    def value_names(self) -> tuple[str, ...]:
        return self.values or (self.name,)

    def columns(self, modality: str) -> dict[str, str]:
        """The prompt set's columns this scorer reads for a model of ``modality``, each with what it holds (``{}``:
        none); a prompt set whose row lacks one is refused before anything generates."""
        return {}

    def check_modality(self, modality: str, option: str = "evaluate.scorers") -> None:
        """Refuse a model of ``modality`` this scorer does not fit, naming the config ``option`` that chose it."""
        check_modality(self, modality, option)

    def judge(self, prompts: Sequence[Any], outputs: Sequence[Any], conditions: Sequence[Any] | None = None,
              rows: Sequence[dict] | None = None) -> list[dict[str, Any] | None]:
        """Every named value of the outputs that exist, ``batch_size`` at a time; ``None`` for the missing ones."""
        keep = [i for i, out in enumerate(outputs) if out is not None]
        judged: list[dict | None] = [None] * len(outputs)
        for start in range(0, len(keep), self.batch_size):
            idx = keep[start : start + self.batch_size]
            batch = self.score_batch(
                [prompts[i] for i in idx], [outputs[i] for i in idx],
                None if conditions is None else [conditions[i] for i in idx],
                None if rows is None else [rows[i] for i in idx],
            )
            for i, value in zip(idx, batch):
                judged[i] = self._named(value)
        return judged

    def score(self, prompts: Sequence[Any], outputs: Sequence[Any], conditions: Sequence[Any] | None = None,
              rows: Sequence[dict] | None = None) -> list[Score]:
        """The main value of each output, as a float (``None`` for missing outputs)."""
        return [None if v is None or v.get(self.name) is None else float(v[self.name])
                for v in self.judge(prompts, outputs, conditions, rows)]

    def means(self, judged: Sequence[dict | None]) -> dict[str, float]:
        """The mean of each named value over the samples that have it (NaN where none does)."""
        out = {}
        for name in self.value_names():
            have = [float(v[name]) for v in judged if v is not None and v.get(name) is not None]
            out[name] = sum(have) / len(have) if have else float("nan")
        return out

    def _named(self, value) -> dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, dict):
            return dict(value)
        return {self.name: float(value)}

    def score_batch(self, prompts: list, outputs: list, conditions: list | None, rows: list | None) -> list:
        raise NotImplementedError


def check_modality(judge: Any, modality: str, option: str) -> None:
    """A judge (a :class:`Scorer`, or a pairwise one of :mod:`alignsuite.judges`) whose ``modalities`` leave out
    ``modality`` is refused, naming it and the config ``option`` to change; empty ``modalities`` fit every model."""
    modalities = tuple(getattr(judge, "modalities", ()) or ())
    if modalities and modality not in modalities:
        raise ValueError(
            f"{'scorer' if isinstance(judge, Scorer) else 'judge'} {judge.name!r} ({type(judge).__name__}) scores {', '.join(modalities)} outputs, not"
            f" {modality}; remove it from {option}"
        )


# ------------------------------------------------------------------------------------------ weights
class MissingWeightsError(FileNotFoundError, ValueError):
    """A scorer's weights are not where the config says (a ValueError too: the CLI reports it in one line)."""


def check_weights(path: str | None, what: str, how: str) -> None:
    """A local path that does not exist is refused now, naming it and how to get the weights (a hub id is
    left to the loader)."""
    if path is None:
        raise MissingWeightsError(f"{what}: give the weights' path ({how})")
    looks_local = path.startswith((".", "/", "~")) or path.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise MissingWeightsError(f"{what}: weights not found at {path!r}; {how}")


def load_pretrained(loader, path: str, what: str, how: str, **kwargs):
    """``loader.from_pretrained(path)``; a folder that is not there and no hub id that loads is named with how
    to get the weights."""
    try:
        return loader.from_pretrained(os.path.expanduser(path), **kwargs)
    except OSError as error:
        raise MissingWeightsError(f"{what}: cannot load {path!r}, neither a local folder nor a hub id that loads"
                                  f" here ({error}); {how}") from error


# ------------------------------------------------------------------------------------------ text
def checked_transcripts(recogniser: Any, transcripts: Any, n: int) -> list[str]:
    """``transcripts``, what ``recogniser`` answered for ``n`` utterances, as a list of ``n`` texts; anything
    else (``None``, too few or too many, a non-text entry) is a ``ValueError`` naming the recogniser, what it
    returned and what was expected, rather than a ``TypeError`` deep inside or candidates dropped by a zip."""
    name = getattr(recogniser, "__name__", None) or type(recogniser).__name__
    if transcripts is None or isinstance(transcripts, str) or not hasattr(transcripts, "__len__"):
        got = "None" if transcripts is None else f"a {type(transcripts).__name__}"
    elif len(transcripts) != n:
        got = f"{len(transcripts)} transcripts"
    else:
        bad = next((i for i, t in enumerate(transcripts) if not isinstance(t, str)), None)
        if bad is None:
            return list(transcripts)
        got = f"a list whose transcript {bad} is {transcripts[bad]!r}"
    raise ValueError(f"the recogniser {name} returned {got} for {n} utterances; expected {n} transcripts (one text"
                     " per utterance, in order)")


def normalise(text: str) -> str:
    """Lower case, punctuation (Unicode category P*) and symbols replaced by spaces, whitespace collapsed."""
    if text.isascii():  # the same, without a category lookup per character: ASCII's marks are string.punctuation
        text = text.lower().translate(ASCII_MARKS)
    else:
        text = unicodedata.normalize("NFKC", text).lower()
        text = "".join(" " if unicodedata.category(ch)[0] in "PS" and ch != "'" else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def word_error_rate(transcripts: str | Sequence[str], references: str | Sequence[str], normalised: bool = False,
                    unit: str = "word") -> float:
    """The word error rate (torchmetrics): edits over all utterances divided by the references' words, a
    fraction; one utterance as strings (:func:`error_rates` of it), a corpus as lists. ``normalised`` compares
    :func:`normalise`-d text (an ASR's capitals and commas are no errors); ``unit="char"`` gives the character
    error rate."""
    from torchmetrics.functional.text import char_error_rate, word_error_rate as wer

    if isinstance(transcripts, str):
        return error_rates([transcripts], [references], normalised, unit)[0]
    hyp, ref = list(transcripts), list(references)
    if normalised:
        hyp, ref = [normalise(t) for t in hyp], [normalise(t) for t in ref]
    rate = {"word": wer, "char": char_error_rate}[unit]
    return float(rate(hyp, ref))


def error_rates(transcripts: Sequence[str], references: Sequence[str], normalised: bool = False,
                unit: str = "word") -> list[float]:
    """Each utterance's own error rate, as :func:`word_error_rate` gives it for that utterance alone (the same
    float32 quotient, so the same figures), computed for all of them at once: one edit-distance recursion over
    the padded batch, a hyp token per step, where :func:`word_error_rate` would run torchmetrics' Python one per
    utterance (about 25 us each: most of judging a round of speech samples). An empty reference gives inf, or
    NaN against an empty transcript (torchmetrics' quotient); ``normalised`` refuses one, naming its position."""
    import torch

    if len(transcripts) != len(references):
        raise ValueError(f"{len(transcripts)} transcripts for {len(references)} references")
    if normalised:
        transcripts, references = [normalise(t) for t in transcripts], [normalise(t) for t in references]
        empty = next((k for k, r in enumerate(references) if not r), None)
        if empty is not None:
            raise ValueError(f"reference transcript {empty} is empty; WER needs at least one word")
    split = str.split if unit == "word" else list
    ids: dict[str, int] = {}
    hyps = [[ids.setdefault(t, len(ids)) for t in split(text)] for text in transcripts]
    refs = [[ids.setdefault(t, len(ids)) for t in split(text)] for text in references]
    if not hyps:
        return []
    ref_len, hyp_len = torch.as_tensor([len(r) for r in refs]), torch.as_tensor([len(h) for h in hyps])
    width, depth = int(ref_len.max()), int(hyp_len.max())
    ref = torch.as_tensor([r + [-1] * (width - len(r)) for r in refs])  # padding never matches, not even padding
    hyp = torch.as_tensor([h + [-2] * (depth - len(h)) for h in hyps]).reshape(len(hyps), depth)
    edits = ref_len.clone()  # against an empty transcript: every reference token inserted
    column = torch.arange(ref.shape[1] + 1)
    row = column.expand(len(refs), -1)  # the edits from the first i hyp tokens to each reference prefix
    for i in range(1, hyp.shape[1] + 1):
        step = torch.minimum(row[:, 1:] + 1, row[:, :-1] + (hyp[:, i - 1:i] != ref))  # a deletion, a substitution
        step = torch.cat([torch.full((len(refs), 1), i), step], 1)
        row = (step - column).cummin(1).values + column  # then insertions, left to right
        done = hyp_len == i
        edits[done] = row[done].gather(1, ref_len[done, None])[:, 0]
    return (edits.float() / ref_len.float()).tolist()


__all__ = ["MissingWeightsError", "Score", "Scorer", "check_modality", "check_weights", "checked_transcripts", "error_rates",
           "load_pretrained", "normalise", "prompt_text", "word_error_rate"]
