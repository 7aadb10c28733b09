"""Pixels: any decoded image as 8-bit RGB (`rgb`, what every layout and backbone sees), and for the
diffusion backbones the diffusers training scripts' resize, crop and flip, without torchvision, so that
every backbone preprocesses an image the same way."""

from __future__ import annotations

import numpy as np
import torch


# Modes whose values are not 8-bit, and the value that is white in each. ``convert("RGB")`` clips them to
# 255 instead of scaling, so a 16-bit PNG (``I;16``) would come out white. ``I`` is how older Pillow (and
# ``convert("I")``) reads 16-bit images; float images are taken to lie in [0, 1].
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def rgb(image):
    """``image`` (a ``PIL.Image``) as 8-bit RGB. The 16-bit and float modes of `WIDE_MODES` are scaled from
    their range (0 to white) to 0-255 and rounded; a value outside that range (or not finite) is a
    ``ValueError`` naming the mode, not clipped. Other modes go through ``convert("RGB")``."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    white = WIDE_MODES.get(image.mode)
    if white is None:
        return image.convert("RGB")
    values = np.asarray(image).astype(np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= white):
        raise ValueError(f"an image of mode {image.mode} has values from {values.min()} to {values.max()},"
                         f" outside the mode's range [0, {white}] that is scaled to 8 bits")
    grey = np.round(values * (255.0 / white)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(width, height)`` after resizing the shorter side to ``resolution`` (the longer side to
    ``int(resolution * long / short)``)."""
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


def centre_crop_offsets(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(top, left)`` of the centred ``resolution`` square crop in the resized image."""
    w, h = resized_size(height, width, resolution)
    return int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))


def to_tensor(
    image,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """A PIL image as the ``[3, resolution, resolution]`` float tensor in [-1, 1] a VAE encodes, with
    the crop's ``(top, left)`` and the ``(height, width)`` of the input, which SDXL's time ids need.

    The diffusers training scripts' preprocessing, without torchvision: resize the shorter side to
    ``resolution`` (bilinear; the longer side to ``int(resolution * long / short)``), crop
    ``resolution`` square (random offsets drawn with ``torch.randint`` from ``generator``, top then
    left; else centred, ``round((size - resolution) / 2)``), then flip horizontally with probability 0.5
    (one ``torch.rand`` draw from ``generator``) when ``random_flip``. The crop offsets are those in the
    resized image before the flip.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"to_tensor: expected a PIL image, got {type(image).__name__}")
    image = rgb(image)
    height, width = image.height, image.width
    size = resized_size(height, width, resolution)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    if random_crop:
        top = int(torch.randint(0, h - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - resolution + 1, (1,), generator=generator))
    else:
        top, left = centre_crop_offsets(height, width, resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    if random_flip and float(torch.rand(1, generator=generator)) < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    return (pixels - 0.5) / 0.5, (top, left), (height, width)
