"""The squares world judged under two rewards that conflict ("diffusion_colours"): the square red, or blue.

The images, captions and base model are the diffusion world's (:mod:`alignsuite.toy.squares`), which draws a red
or a blue square at the captioned place about half the time each. Two rewards score an image: ``red``, the
diffusion world's ``red * clean``, and ``blue``, the same for a blue square (the two users' rewards of
:mod:`alignsuite.toy.squares_users`). A square is one colour or the other, so no image scores well on both: over
the evaluation captions the two sum to at most about 1, and a model's mean rewards lie on a front from all red to
all blue. The base sits between: 0.37 (red) and 0.62 (blue) over the 64 evaluation captions.

Every pair sets a red square against a blue one at the same place. Pairs are labelled under ``red`` by an annotator
who is right three times in four: the label follows a Bradley-Terry draw on the ``red`` rewards,
``p = s(ln 3 * (R_a - R_b))``; ``blue`` comes as a score per image. As in the vision-language world with two
rewards (:mod:`alignsuite.toy.vlm_prior`), a finite preference under the primary is what lets MODPO trade it
against the other: its optimum moves ``beta * (log-ratio of red - log-ratio of blue)`` to
``w_0 ln 3 - w_1 (R_blue(blue) - R_blue(red))``, toward red at ``w = (0.8, 0.2)`` and toward blue at
``(0.2, 0.8)``.

The colours conflict rather than the place and the colour: the base model puts the square where the caption says,
so a reward for another place would fight the caption, and a red square at the right place earns both a colour
and a place reward, so those two do not conflict. Rows are Pick-a-Pic rows (``caption``, ``jpg_0``, ``jpg_1``)
with the label column (``red_id``) and score columns (``blue_0``, ``blue_1``), read by
`alignsuite.data.ImageDimensionPairs`.
"""

from __future__ import annotations

import random

from alignsuite.toy.labels import bradley_terry_label
from alignsuite.toy.squares import POSITIONS, SquaresWorld, caption_for, draw_square, encode_png
from alignsuite.toy.squares_users import UserSquaresWorld



class ColourSquaresWorld(SquaresWorld):
    """:class:`SquaresWorld` judged under ``red`` (labels) and ``blue`` (scores) (module docstring)."""

    base_world = "diffusion"  # the squares world's base model, captions and images
    dimensions = ("red", "blue")
    colours = UserSquaresWorld()  # each colour's reward: a user's of the two-user world

    def layout(self):
        from alignsuite.data.layouts.images import ImageDimensionPairs

        return ImageDimensionPairs({"red": "red_id", "blue": ["blue_0", "blue_1"]})

    def rewards(self, prompt: str, output) -> dict[str, float]:
        """Both rewards of one image for caption ``prompt``, each in [0, 1]."""
        return self.colours.rewards(prompt, output)

    def reward(self, prompt: str, output) -> float:
        """The primary's (``red``) reward: the diffusion world's."""
        return SquaresWorld.reward(self, prompt, output)

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` rows: ``caption``, a red and a blue square at its place in a drawn order (``jpg_0``, ``jpg_1``),
        the ``red`` label (``red_id``: the index of the preferred image, a Bradley-Terry draw) and each image's
        ``blue`` reward (``blue_0``, ``blue_1``); each image's ``red`` reward too (``red_0``, ``red_1``), which the
        layout does not read."""
        rng = random.Random(f"colours-pairs-{seed}")
        rows = []
        for _ in range(n):
            position = rng.choice(list(POSITIONS))
            caption = caption_for(position)
            red, blue = draw_square(position, "red", rng), draw_square(position, "blue", rng)
            image_0, image_1 = (red, blue) if rng.random() < 0.5 else (blue, red)
            r0, r1 = self.rewards(caption, image_0), self.rewards(caption, image_1)
            rows.append({"caption": caption, "jpg_0": encode_png(image_0), "jpg_1": encode_png(image_1),
                         "red_id": bradley_terry_label(r0["red"] - r1["red"], rng), "blue_0": r0["blue"], "blue_1": r1["blue"],
                         "red_0": r0["red"], "red_1": r1["red"]})
        return rows

    def make_lists(self, n: int, seed: int, list_size: int = 4) -> list[dict]:
        raise ValueError("the diffusion_colours world makes pairs judged under two dimensions; it makes no lists")
