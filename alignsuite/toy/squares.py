"""The diffusion toy world ("squares"): a coloured square at the captioned place, and red is preferred.

Images are 16x16 RGB: one 5x5 square on a dark background, in the quadrant the caption names
("a square at the top left", "... top right", "... bottom left", "... bottom right"), moved by up to one
pixel. The caption never names a colour. The base model, a real, tiny ``StableDiffusionPipeline`` trained
on an even mix of red and blue squares (its parts and training: :mod:`alignsuite.toy.squares_base`, which
the world holds and hands its images), draws each about half the time. Preference pairs, in the Pick-a-Pic v2 layout, prefer the red square over the blue one at the same
place.

The reward looks where the caption says the square is. Over the 3x3 core that every allowed position of
the square covers it takes the mean colour ``(r, g, b)``; over the pixels no allowed square touches it
takes the mean brightness above a dark-background allowance:

    red   = clip((r - max(g, b)) / 0.5, 0, 1)                      # 1 for saturated red; 0 for blue, grey, dark
    stray = mean over outside pixels of max(max(R, G, B) - 0.25, 0)
    clean = clip(1 - stray / 0.05, 0, 1)                           # 0 for noise, a second square, a flood fill
    reward = red * clean

So it is 1 only for a clearly red square in the right place on a clean background, 0 for a blue one,
for a square elsewhere, for a blank or a noisy image, and about 0.5 for the base model.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from alignsuite.toy.squares_base import IMAGE_SIZE, SquaresBase

SQUARE = 5
JITTER = 1  # the square's offset from its nominal place, in pixels, each axis
POSITIONS = {  # caption words -> (row, column) of the quadrant
    "top left": (0, 0),
    "top right": (0, 1),
    "bottom left": (1, 0),
    "bottom right": (1, 1),
}
TEMPLATE = "a square at the {}"
COLOURS = ("red", "blue")


def caption_for(position: str) -> str:
    return TEMPLATE.format(position)


def position_of(caption: str) -> str:
    for position in POSITIONS:
        if caption.strip().lower().endswith(position):
            return position
    raise ValueError(f"caption {caption!r} names no position; expected one of {', '.join(POSITIONS)}")


def _nominal_corner(position: str) -> tuple[int, int]:
    """Top-left pixel of the unjittered square: centred in its quadrant."""
    qy, qx = POSITIONS[position]
    half = IMAGE_SIZE // 2
    pad = (half - SQUARE) // 2
    return qy * half + pad, qx * half + pad


def _regions(position: str) -> tuple[tuple[slice, slice], np.ndarray]:
    """The core every allowed square covers, and a mask of the pixels no allowed square touches."""
    y, x = _nominal_corner(position)
    core = (slice(y + JITTER, y + SQUARE - JITTER), slice(x + JITTER, x + SQUARE - JITTER))
    outside = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    outside[max(y - JITTER, 0) : y + SQUARE + JITTER, max(x - JITTER, 0) : x + SQUARE + JITTER] = False
    return core, outside


def draw_square(position: str, colour: str, rng: random.Random, redness: float | None = None) -> np.ndarray:
    """A ``[16, 16, 3]`` uint8 image: a red or blue square, jittered, on a dark background; with ``redness`` in
    [0, 1] a mix instead (1 red, 0 blue, between them purples), whatever ``colour`` says."""
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {COLOURS}, got {colour!r}")
    dark = rng.uniform(0.03, 0.12)
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), dark, dtype=np.float32)
    strong, weak = rng.uniform(0.8, 1.0), [rng.uniform(0.0, 0.15) for _ in range(2)]
    rgb = (strong, weak[0], weak[1]) if colour == "red" else (weak[0], weak[1], strong)
    if redness is not None:
        rgb = (max(strong * redness, weak[1]), weak[0], max(strong * (1 - redness), weak[1]))
    y, x = _nominal_corner(position)
    y += rng.randint(-JITTER, JITTER)
    x += rng.randint(-JITTER, JITTER)
    image[y : y + SQUARE, x : x + SQUARE] = rgb
    return np.round(image * 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def as_array(image) -> np.ndarray:
    """A PIL image, encoded bytes, an ``[H, W, 3]`` array (uint8 or float in [0, 1]) or a ``[3, H, W]``
    tensor in [0, 1] as a float ``[16, 16, 3]`` array in [0, 1] (other sizes are box-resized)."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        image = image.permute(1, 2, 0).numpy() if image.dim() == 3 and image.shape[0] in (1, 3) else image.numpy()
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    if array.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        pil = Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))
        array = np.asarray(pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32) / 255.0
    return np.clip(array, 0.0, 1.0)


def square_colour(caption: str, image) -> str:
    """"red", "blue" or "none": what the core of the captioned place holds (for reports)."""
    core, _ = _regions(position_of(caption))
    r, g, b = as_array(image)[core].reshape(-1, 3).mean(0)
    if r - max(g, b) > 0.3:
        return "red"
    if b - max(r, g) > 0.3:
        return "blue"
    return "none"


class SquaresWorld:
    """Prompts, preference pairs, the reward, and the images the base model trains on; the base model's parts
    and training are :attr:`base`'s."""

    base = SquaresBase()  # holds no state: the parts are built from configs on each call
    version = "v1"
    modality = "image"  # its pairs are images in the Pick-a-Pic layout
    image_size = IMAGE_SIZE
    generation_kwargs = {"num_inference_steps": 20, "guidance_scale": 3.0, "height": IMAGE_SIZE, "width": IMAGE_SIZE}

    # ------------------------------------------------------------- data
    def eval_prompts(self, n: int, seed: int) -> list[str]:
        """``n`` captions, every position equally often (up to one), in an order fixed by ``seed``."""
        rng = random.Random(f"eval-{seed}")
        names = list(POSITIONS)
        prompts = [caption_for(names[i % len(names)]) for i in range(n)]
        rng.shuffle(prompts)
        return prompts

    def make_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` Pick-a-Pic v2 rows: ``caption``, ``jpg_0``/``jpg_1`` (PNG bytes: lossless, whatever the
        column says), ``label_0``/``label_1``, and ``reward_0``/``reward_1``, each image's score under
        :meth:`reward` (the per-image reward SmPO weighs pairs by, as PickScore is in its data). The winner
        is the red square; which column holds it is drawn per row."""
        rng = random.Random(f"pairs-{seed}")
        rows = []
        for _ in range(n):
            position = rng.choice(list(POSITIONS))
            caption = caption_for(position)
            red, blue = draw_square(position, "red", rng), draw_square(position, "blue", rng)
            first = rng.random() < 0.5
            image_0, image_1 = (red, blue) if first else (blue, red)
            rows.append({
                "caption": caption,
                "jpg_0": encode_png(image_0),
                "jpg_1": encode_png(image_1),
                "label_0": 1.0 if first else 0.0,
                "label_1": 0.0 if first else 1.0,
                "reward_0": self.reward(caption, image_0),  # PNG is lossless: the same as scoring the bytes
                "reward_1": self.reward(caption, image_1),
            })
        return rows

    def make_lists(self, n: int, seed: int, list_size: int = 4) -> list[dict]:
        """``n`` ranked sets (HPD style): ``caption``, ``images`` (``list_size`` PNGs of the square at the captioned
        place, from red through purples to blue, in a random order) and ``ranks`` (1 = the reddest: the order of
        their rewards)."""
        rng = random.Random(f"lists-{seed}")
        rows = []
        for _ in range(n):
            position = rng.choice(list(POSITIONS))
            redness = [1.0 - k / (list_size - 1) for k in range(list_size)]  # 1: red ... 0: blue
            rng.shuffle(redness)
            drawn = [draw_square(position, "red", rng, redness=r) for r in redness]
            order = sorted(range(list_size), key=lambda k: -redness[k])
            ranks = [order.index(k) + 1 for k in range(list_size)]
            rows.append({"caption": caption_for(position), "images": [encode_png(d) for d in drawn], "ranks": ranks})
        return rows

    def reward(self, prompt: str, output) -> float:
        """``red * clean`` at the captioned place, in [0, 1] (see the module docstring)."""
        core, outside = _regions(position_of(prompt))
        image = as_array(output)
        r, g, b = image[core].reshape(-1, 3).mean(0)
        red = float(np.clip((r - max(g, b)) / 0.5, 0.0, 1.0))
        stray = float(np.clip(image[outside].max(-1) - 0.25, 0.0, None).mean())
        clean = float(np.clip(1.0 - stray / 0.05, 0.0, 1.0))
        return red * clean

    # ------------------------------------------------------------- the base model
    def training_images(self, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """``n`` squares at random places as ``[n, 3, 16, 16]`` in [-1, 1]: red ones, then their twins with
        red and blue swapped (``pixels[i + n // 2]`` is ``pixels[i]`` in blue)."""
        rng = random.Random(f"train-{seed}")
        positions = [rng.choice(list(POSITIONS)) for _ in range(n // 2)]
        red = torch.from_numpy(np.stack([draw_square(p, "red", rng) for p in positions]))
        red = red.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return torch.cat([red, red.flip(1)]), [caption_for(p) for p in positions] * 2

    def build_base_model(self, path: str, **settings) -> None:
        """The base pipeline trained on :meth:`training_images`, saved to ``path``; ``settings`` are
        :meth:`SquaresBase.build_base_model`'s (steps, batch size, number of images, seed)."""
        self.base.build_base_model(path, self.training_images, **settings)
