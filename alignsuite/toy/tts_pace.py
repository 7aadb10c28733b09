"""The text-to-speech toy world with two rewards that conflict: say every word, or say it in few frames.

The same texts, speaker prompts and base model as the speech-token world (`alignsuite.toy.tts`), whose greedy
reading holds a little over half of its units one frame and skips or doubles words on hard texts. Two rewards
score an utterance of a text:

- ``clear``: intelligibility, ``1 - WER`` of what a listener catches against the text (0 at a WER of 1 or more):
  the world's recogniser, except that a word with every unit held a single frame goes by too fast to catch and
  is heard as no word (:func:`caught`);
- ``brief``: the frames saved, ``(S - F) / (S - Q)`` for an utterance of ``F`` frames, where ``S`` and ``Q`` are
  the frames of the whole text held two frames a unit and one frame a unit: 0 for the slow reading, 1 for the
  quick one; a dropped word raises it (above 1 only by dropping words), an added one lowers it.

A dropped word costs under ``clear`` and saves frames under ``brief``; so does a word hurried through (both its
units one frame), which ``clear`` misses; a unit held long costs under ``brief`` alone. So the quick reading (every
unit one frame) scores 0 under ``clear`` and 1 under ``brief``, the slow one the other way round, and a reading
that holds one unit of each word two frames is caught whole at half the frames saved. The pairs tie pace to care:
each sets a careful reading (every unit held two frames, every word said) against a rushed one (one frame a unit,
one word dropped), so ``clear`` prefers the careful one and ``brief`` the rushed one. An annotator labels them under ``clear`` and is right three times in four
(``p = s(ln 3 * sign(R_a - R_b))``); ``brief`` comes as a score per utterance. As in the language and
vision-language worlds with two rewards (`alignsuite.toy.llm_case`, `alignsuite.toy.vlm_prior`), the finite
preference under the primary is what lets a multi-objective method trade it against the other. Rows are INTP rows
(``text``, ``prompt_text``, ``prompt_speech``) with two utterances (``response_0``, ``response_1``), the label
column and score columns, read by `alignsuite.data.SpeechDimensionPairs`.
"""

from __future__ import annotations

import math
import random

from alignsuite.toy.labels import bradley_terry_label
from alignsuite.toy import speech
from alignsuite.toy.tts import SpeechTokenWorld



def caught(codes) -> str:
    """What a listener catches of an utterance: the world's recogniser (``speech.transcribe_codes``), but a word
    with every unit held a single frame is heard as ``?``."""
    units = speech.spoken_words(speech.as_codes(codes))
    return " ".join("?" if all(held == 1 for _, held in word) else speech.word_of(word) for word in units)


def reading_frames(words: list[str], frames_per_unit: int) -> int:
    """Frames of ``words`` with every unit held ``frames_per_unit`` frames, a silence between words."""
    return len(speech.speak(words, 0, None, (frames_per_unit,)))


class PacedSpeechWorld(SpeechTokenWorld):
    """``toy:tts_pace``: intelligibility against brevity on the speech-token world."""

    name = "tts_pace"
    base_world = "tts"  # the speech-token world's base model, which reads at a middling pace
    dimensions = ("clear", "brief")
    shipped_pairs = ()  # the pairs are drawn, not sampled from the base: nothing to ship
    # Room for the slow reading of the longest text (12 words: 59 frames) and its end token: a cut utterance
    # would lose words under clear for want of tokens, not of care.
    generation_kwargs = {"max_new_tokens": 64}

    def layout(self):
        from alignsuite.data.layouts.dimensions import SpeechDimensionPairs

        return SpeechDimensionPairs({"clear": "clear_id", "brief": ["brief_0", "brief_1"]}, codebook_size=speech.CODEBOOK_SIZE)

    def rewards(self, item: dict, codes) -> dict[str, float]:
        """Both rewards of utterance ``codes`` (a sequence of codes) of evaluation item ``item`` (its ``text``)."""
        words = item["text"].split()
        wer = speech.word_error_rate([caught(codes)], [item["text"]])
        slow, quick = reading_frames(words, 2), reading_frames(words, 1)
        return {"clear": max(0.0, 1.0 - wer), "brief": (slow - len(codes)) / (slow - quick)}

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` rows: a hard item (``text``, ``prompt_text``, ``prompt_speech`` as codes), its careful and its
        rushed reading in random order (``response_0``, ``response_1``), the ``clear`` label (``clear_id``: the
        index of the preferred utterance) and the ``brief`` reward of each (``brief_0``, ``brief_1``); the
        ``clear`` reward of each (``clear_0``, ``clear_1``) too, which the layout does not read."""
        rng = random.Random(f"pace-pairs-{seed}")
        rows = []
        for _ in range(n):
            item = self.item(rng)
            words = item["text"].split()
            dropped = rng.randrange(len(words))
            careful = speech.speak(words, item["speaker"], None, (2,))
            rushed = speech.speak(words[:dropped] + words[dropped + 1:], item["speaker"], None, (1,))
            a, b = (careful, rushed) if rng.random() < 0.5 else (rushed, careful)
            ra, rb = self.rewards(item, a), self.rewards(item, b)
            rows.append({"text": item["text"], "prompt_text": item["prompt_text"],
                         "prompt_speech": item["prompt_speech"].tolist(), "response_0": a, "response_1": b,
                         "clear_id": bradley_terry_label(math.copysign(1.0, ra["clear"] - rb["clear"]), rng), "brief_0": ra["brief"], "brief_1": rb["brief"],
                         "clear_0": ra["clear"], "clear_1": rb["clear"]})
        return rows


__all__ = ["PacedSpeechWorld", "caught", "reading_frames"]
