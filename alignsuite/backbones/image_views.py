"""The pixels of an image view: a view's images replaced as its condition's settings say (mDPO's corrupted
image, ``alignsuite.objectives.multimodal.ImageCorruption``).

The objective declares the corruption (which, how strong, the seed); the backbone draws it here. Draws come
from ``random.Random((seed, row index, image position))``: the row's index in its split, not its place in a
batch, so a row's corrupted image does not depend on the shuffle, the batch or the process, and the policy,
the reference and a precomputed reference see the same pixels.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch


def corrupt_images(corruption: Any, images: list[list], rows: list[int]) -> list[list]:
    """Each row's images replaced as ``corruption`` says (its ``kind``, ``keep``, ``noise_step`` and ``seed``):

    - ``crop``: `crop` to a random region covering a fraction in ``keep`` of the area;
    - ``noise``: `noise` to DDPM step ``noise_step``;
    - ``mismatched``: the images of the next row of the batch.
    """
    if corruption.kind == "mismatched":
        if len(images) < 2:
            raise ValueError("the mismatched corruption takes the next row's images, and the batch has one row;"
                             " use a batch size of at least 2")
        return images[1:] + images[:1]
    draw = crop if corruption.kind == "crop" else noise
    strength = corruption.keep if corruption.kind == "crop" else corruption.noise_step
    return [[draw(image, random.Random(f"{corruption.seed}-{row}-{k}"), strength) for k, image in enumerate(row_images)]
            for row, row_images in zip(rows, images)]


def crop(image, rng: random.Random, keep: tuple[float, float]):
    """A random region covering a fraction in ``keep`` of the area (aspect ratio in [3/4, 4/3]), resized
    back to the full size (mDPO's default corruption, ``keep = (0.01, 0.2)``)."""
    from PIL import Image

    w, h = image.size
    area = rng.uniform(*keep) * w * h
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR)


def noise(image, rng: random.Random, noise_step: int):
    """The image after ``noise_step`` of 1000 steps of the DDPM forward process (linear betas 1e-4 to 0.02):
    ``sqrt(a) x + sqrt(1 - a) e`` on RGB pixels in [-1, 1], clamped."""
    from PIL import Image

    w, h = image.size
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[noise_step].item()
    pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8).float()
    x = pixels / 127.5 - 1
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(rng.getrandbits(63)))
    noisy = math.sqrt(alpha_bar) * x + math.sqrt(1 - alpha_bar) * e
    out = ((noisy.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.frombytes("RGB", (w, h), out.numpy().tobytes())


__all__ = ["corrupt_images", "crop", "noise"]
