"""The graded squares world (diffusion_corner): the diffusion world's reward times how far into the captioned
corner the red square sits; the diffusion world itself is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from alignsuite.evaluation import ToyReward
from alignsuite.toy import get_world
from alignsuite.toy.squares import POSITIONS, SquaresWorld, caption_for
from alignsuite.toy.squares_corner import CornerSquaresWorld, corner_target
from alignsuite.toy.worlds import base_world, shipped_path

RED, BLUE = (0.9, 0.05, 0.05), (0.05, 0.05, 0.9)


def square_at(position: str, dy: int, dx: int, rgb=RED, background: float = 0.08) -> np.ndarray:
    """A float image with a 5x5 square of colour ``rgb`` at ``position``, moved ``dy``, ``dx`` pixels."""
    image = np.full((16, 16, 3), background, np.float32)
    qy, qx = POSITIONS[position]
    y, x = qy * 8 + 1 + dy, qx * 8 + 1 + dx
    image[y : y + 5, x : x + 5] = rgb
    return image


def into_corner(position: str) -> tuple[int, int]:
    qy, qx = POSITIONS[position]
    return (1 if qy else -1), (1 if qx else -1)


def test_registered_with_the_diffusion_worlds_base_and_captions():
    world = get_world("diffusion_corner")
    assert isinstance(world, CornerSquaresWorld) and isinstance(world, SquaresWorld)
    assert base_world("diffusion_corner") == "diffusion"
    assert shipped_path("diffusion_corner") == shipped_path("diffusion")
    assert world.eval_prompts(16, 3) == SquaresWorld().eval_prompts(16, 3)


@pytest.mark.parametrize("position", list(POSITIONS))
def test_reward_is_graded_by_how_far_into_the_corner_the_red_square_sits(position):
    world, plain = CornerSquaresWorld(), SquaresWorld()
    caption = caption_for(position)
    dy, dx = into_corner(position)
    assert corner_target(position) == (POSITIONS[position][0] * 8 + 3 + dy, POSITIONS[position][1] * 8 + 3 + dx)
    assert world.reward(caption, square_at(position, dy, dx)) == pytest.approx(1.0)
    # The nominal place is sqrt(2) pixels off: 1 - sqrt(2) / 2; one pixel off, 1/2; the far corner, nothing.
    assert world.reward(caption, square_at(position, 0, 0)) == pytest.approx(1 - 2**0.5 / 2, abs=1e-5)
    assert world.reward(caption, square_at(position, dy, 0)) == pytest.approx(0.5, abs=1e-5)
    assert world.reward(caption, square_at(position, -dy, -dx)) == 0.0
    # Every square the diffusion world rewards fully is still red and clean here; blue, blank, noise stay 0.
    for shift in [(0, 0), (dy, dx), (-dy, -dx)]:
        assert plain.reward(caption, square_at(position, *shift)) == 1.0
    assert world.reward(caption, square_at(position, dy, dx, BLUE)) == 0.0
    assert world.reward(caption, np.full((16, 16, 3), 0.08, np.float32)) == 0.0
    noise = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
    assert world.reward(caption, noise) == 0.0


def test_the_diffusion_worlds_reward_is_unchanged():
    caption = caption_for("top left")
    assert SquaresWorld().reward(caption, square_at("top left", 1, 1)) == 1.0
    assert get_world("diffusion").reward(caption, square_at("top left", 1, 1)) == 1.0


def test_toy_reward_judges_the_world_as_text_to_image():
    judge = ToyReward(world="diffusion_corner")
    assert judge.name == "toy_reward_diffusion_corner" and judge.modalities == ("text_to_image",)
    caption = caption_for("bottom right")
    scores = judge.score_batch([caption] * 2, [square_at("bottom right", 1, 1), square_at("bottom right", -1, -1)],
                               None, None)
    assert scores == [pytest.approx(1.0), 0.0]
