"""The language toy world with two rules that conflict: echo the prompt's letters in capitals, or in lower case.

The same prompts and the same base model as the echo world (`alignsuite.toy.llm`), which answers in either case
about half the time. Two rewards score a generation: ``caps``, the echo world's (right capital letters over the
longer length) and ``lower``, the same count for lower-case letters; no answer scores well on both, so the two
make a front. The base model sits near (0.5, 0.5).

Pairs are labelled under ``caps`` by an annotator who is right three times in four on a capital echo against a
lower-case one: the label follows a Bradley-Terry draw on the ``caps`` rewards, ``p = s(ln 3 * (R_a - R_b))``.
``lower`` comes as a score per answer (its reward). A finite preference under the primary is what lets a
multi-objective method trade it against the other: with labels that never waver, every weighting would still
learn capitals. Rows are in PKU-SafeRLHF's shape (``response_0``, ``response_1``, a label column) with score
columns, read by `alignsuite.data.DimensionPairs`.
"""

from __future__ import annotations

import random

from alignsuite.toy import fronts
from alignsuite.toy.labels import bradley_terry_label
from alignsuite.toy.llm import LETTERS, EchoWorld



class CaseEchoWorld(EchoWorld):
    base_world = "llm"  # the echo world's base model, which answers in either case
    dimensions = ("caps", "lower")

    def layout(self):
        from alignsuite.data.layouts.dimensions import DimensionPairs

        return DimensionPairs({"caps": "caps_id", "lower": ["lower_0", "lower_1"]})

    def rewards(self, prompt: str, completion: str) -> dict[str, float]:
        """Both rules' rewards, each in [0, 1]: right capital letters, right lower-case letters (per longer length)."""
        letters = prompt.split()[1:]
        got = completion.split()
        n = max(len(got), len(letters), 1)
        return {"caps": sum(a == b.upper() for a, b in zip(got, letters)) / n,
                "lower": sum(a == b for a, b in zip(got, letters)) / n}

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` rows: a prompt, two answers, the ``caps`` label (``caps_id``: the index of the preferred answer)
        and the ``lower`` reward of each (``lower_0``, ``lower_1``); the ``caps`` reward of each (``caps_0``,
        ``caps_1``) too, for the methods that label pairs from rewards (`DirectionalPairs`), which the layout
        does not read."""
        rng = random.Random(f"case-pairs-{seed}")
        rows = []
        for _ in range(n):
            letters = self._letters(rng)
            prompt = "echo " + " ".join(letters)
            upper, lower = " ".join(x.upper() for x in letters), " ".join(letters)
            if rng.random() < 0.7:
                a, b = upper, lower
            else:  # the right case with a wrong letter: content matters under both rules
                wrong = list(letters)
                i = rng.randrange(len(wrong))
                wrong[i] = rng.choice([x for x in LETTERS if x != wrong[i]])
                a, b = (upper, " ".join(x.upper() for x in wrong)) if rng.random() < 0.5 else (lower, " ".join(wrong))
            if rng.random() < 0.5:
                a, b = b, a
            ra, rb = self.rewards(prompt, a), self.rewards(prompt, b)
            rows.append({"prompt": prompt, "response_0": a, "response_1": b, "caps_id": bradley_terry_label(ra["caps"] - rb["caps"], rng),
                         "lower_0": ra["lower"], "lower_1": rb["lower"], "caps_0": ra["caps"], "caps_1": rb["caps"]})
        return rows


def preference_front(backbone, vectors: list[list[float]], num_prompts: int = 128, seed: int = 1234
                     ) -> list[dict[str, float]]:
    """Both rewards (``caps``, ``lower``, each with its 95% half-interval ``caps_ci``, ``lower_ci``) of
    ``backbone``'s greedy generations on this world's evaluation prompts, once per preference vector
    (`alignsuite.toy.fronts.preference_front` on this world)."""
    return fronts.preference_front("llm_case", backbone, vectors, num_prompts, seed)
