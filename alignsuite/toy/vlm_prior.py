"""The vision-language toy world with two rewards that conflict: say the colour the image shows, or the shape's
prior colour.

The same images, questions and base model as the "vlm" world (`alignsuite.toy.vlm`), which reads the colour
of large shapes and says the prior for most small ones. Two rewards score an answer: ``seen``, 1 when its first
word is the colour the image shows (the "vlm" world's reward), and ``prior``, 1 when it is the shape's prior
colour (circles red, squares green, triangles blue: what a text-only guess says). They agree on images of the
prior colour and conflict on every other image, so no answer scores well on both over the evaluation items
(balanced over colour: a prior colour a quarter of the time). The two make a front.

Pairs are labelled under ``seen`` by an annotator who is right three times in four: the label follows a
Bradley-Terry draw on the ``seen`` rewards, ``p = s(ln 3 * (R_a - R_b))``; ``prior`` comes as a score per
answer. As in the language world with two rules (`alignsuite.toy.llm_case`), a finite preference under the
primary is what lets a multi-objective method trade it against the other. Rows are RLAIF-V rows (``image``,
``question``) with two answers (``response_0``, ``response_1``), the label column and score columns, read by
`alignsuite.data.VisionDimensionPairs`.
"""

from __future__ import annotations

import random

from alignsuite.toy.labels import bradley_terry_label
from alignsuite.toy.vlm import COLOURS, PRIOR, QUESTION, SHAPES, SIZES, ShapesWorld, draw_shape, first_word, png_bytes

CONFLICT = 0.7  # the share of pairs that set the seen colour against the prior one


class PriorShapesWorld(ShapesWorld):
    base_world = "vlm"  # the "vlm" world's base model, half grounded
    dimensions = ("seen", "prior")

    def layout(self):
        from alignsuite.data.layouts.vision import VisionDimensionPairs

        return VisionDimensionPairs({"seen": "seen_id", "prior": ["prior_0", "prior_1"]})

    def rewards(self, item: dict, completion: str) -> dict[str, float]:
        """Both rewards of an answer to evaluation item ``item``: ``seen`` (the colour shown, ``item["answer"]``)
        and ``prior`` (the shape's prior colour, ``item["prior"]``), each 0 or 1."""
        word = first_word(completion)
        return {"seen": float(word == item["answer"]), "prior": float(word == item["prior"])}

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` rows: ``image`` (PNG bytes), ``question``, two answers (``response_0``, ``response_1``), the
        ``seen`` label (``seen_id``: the index of the preferred answer) and the ``prior`` reward of each answer
        (``prior_0``, ``prior_1``); the ``seen`` reward of each (``seen_0``, ``seen_1``) too, which the layout
        does not read.

        ``CONFLICT`` of the rows show a shape in a colour that is not its prior and set that colour against the
        prior; the others set the right colour against a third, wrong one (no rule prefers it), on an image of
        the prior colour half the time, so content matters under both rewards."""
        rng = random.Random(f"prior-pairs-{seed}")
        rows = []
        for _ in range(n):
            shape, size = rng.choice(SHAPES), rng.choice(list(SIZES))
            prior = PRIOR[shape]
            if rng.random() < CONFLICT:
                colour = rng.choice([c for c in COLOURS if c != prior])
                a, b = colour, prior
            else:
                colour = prior if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != prior])
                a, b = colour, rng.choice([c for c in COLOURS if c not in (colour, prior)])
            if rng.random() < 0.5:
                a, b = b, a
            item = {"answer": colour, "prior": prior}
            ra, rb = self.rewards(item, a), self.rewards(item, b)
            rows.append({"image": png_bytes(draw_shape(shape, colour, size, rng)), "question": QUESTION.format(shape),
                         "response_0": a, "response_1": b, "seen_id": bradley_terry_label(ra["seen"] - rb["seen"], rng),
                         "prior_0": ra["prior"], "prior_1": rb["prior"], "seen_0": ra["seen"], "seen_1": rb["seen"]})
        return rows
