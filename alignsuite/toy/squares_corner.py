"""The squares world with a graded reward: a red square pushed into the captioned corner ("diffusion_corner").

The images, captions and base model are the diffusion world's (:mod:`alignsuite.toy.squares`): a 5x5 square in
the captioned quadrant, moved by up to one pixel each way, red or blue about half the time each. This world reads
"a square at the top left" more strictly: the square should sit as far into the image's top-left corner as the
world lets it (one pixel up and one left of its nominal place). The reward is the diffusion world's times how close
the red square's centre is to that spot:

    place  = clip(1 - distance(centre, target) / 2, 0, 1)   # pixels; centre: the redness-weighted mean of the quadrant
    reward = red * clean * place                             # red, clean: the diffusion world's

The base model places its squares anywhere in the allowed 3x3 pixel range, so it rarely earns the full reward:
about 0.15 on average, and the best of four samples of a caption is usually a red square one pixel off. Pairs
built from the base's samples mostly say "red, not blue"; once a policy draws red, its own pairs say "further
into the corner", which no base pair does. Offline pairs fix the colour; the place takes rounds.
"""

from __future__ import annotations

import numpy as np

from alignsuite.toy.squares import JITTER, POSITIONS, SQUARE, SquaresWorld, _nominal_corner, as_array, position_of
from alignsuite.toy.squares_base import IMAGE_SIZE

REACH = 2.0  # pixels from the target at which ``place`` reaches 0


def corner_target(position: str) -> tuple[float, float]:
    """The centre (row, column) of the square pushed one pixel towards the image's corner at ``position``."""
    qy, qx = POSITIONS[position]
    y, x = _nominal_corner(position)
    centre = (SQUARE - 1) / 2
    return y + centre + (JITTER if qy else -JITTER), x + centre + (JITTER if qx else -JITTER)


def red_centre(image: np.ndarray, position: str) -> tuple[float, float] | None:
    """The redness-weighted centre (row, column) of the captioned quadrant of a float ``[16, 16, 3]`` image;
    None where the quadrant holds no red."""
    qy, qx = POSITIONS[position]
    half = IMAGE_SIZE // 2
    quadrant = image[qy * half : (qy + 1) * half, qx * half : (qx + 1) * half]
    weight = np.clip(quadrant[..., 0] - quadrant[..., 1:].max(-1), 0.0, None)
    total = float(weight.sum())
    if total < 1e-6:
        return None
    rows, cols = np.mgrid[0:half, 0:half]
    return qy * half + float((weight * rows).sum()) / total, qx * half + float((weight * cols).sum()) / total


class CornerSquaresWorld(SquaresWorld):
    """:class:`SquaresWorld` judged by a graded reward the base model rarely fully earns (module docstring)."""

    base_world = "diffusion"  # the squares world's base model, captions and images

    def place(self, prompt: str, output) -> float:
        """In [0, 1]: 1 when the red square's centre is at the corner target, 0 at :data:`REACH` pixels or no red."""
        position = position_of(prompt)
        centre = red_centre(as_array(output), position)
        if centre is None:
            return 0.0
        ty, tx = corner_target(position)
        distance = float(np.hypot(centre[0] - ty, centre[1] - tx))
        return float(np.clip(1.0 - distance / REACH, 0.0, 1.0))

    def reward(self, prompt: str, output) -> float:
        """The diffusion world's ``red * clean`` times :meth:`place`, in [0, 1]."""
        base = super().reward(prompt, output)
        return base * self.place(prompt, output) if base > 0 else 0.0
