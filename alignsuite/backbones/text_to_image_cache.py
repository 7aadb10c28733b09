"""The text-to-image backbone's encoding cache: VAE latent moments and caption embeddings, encoded once.

The frozen encoders give the same output for the same input, so before fit one pass (:func:`warm`) encodes
every training and validation image (both orientations under ``random_flip``) and caption, and stores the
VAE's latent mean and standard deviation and the text embeddings in an :class:`EncodingCache`. Steps then
read them instead of running the VAE and text encoders, and skip resizing (:func:`latents`,
:func:`prompt_embeddings`); the latent is still sampled afresh (``mean + std * noise``) with the same draw
as without the cache, so a cached run trains as an uncached one up to float rounding (the VAE's output
differs in its last bits with the images that share its batch). Entries are keyed by the decoded image and
flip, and the caption text; the folder is keyed by the encoders' weights, resolution, flip setting and
dtypes, so changing any of those starts a fresh cache. Inputs first seen during training (SePPO's
generated losers) are encoded and not stored. ``random_crop`` draws a new crop each step and cannot be
cached.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from alignsuite.backbones.encoding_cache import EncodingCache, fingerprint, image_key, text_key


def open_cache(backbone) -> EncodingCache:
    """The cache folder for ``backbone``'s frozen encoders and settings, under its ``cache_dir``."""
    settings = {
        "format": 2, "pipeline": type(backbone.pipe).__name__, "resolution": backbone.resolution,
        "random_flip": backbone.random_flip, "random_crop": backbone.random_crop, "vae_dtype": backbone.vae_dtype,
        "cache_dtype": backbone.cache_dtype,
    }
    key = fingerprint(dict(backbone.frozen.items()), settings)
    return EncodingCache(backbone.cache_dir, key, dict(settings, model_name_or_path=backbone.model_name_or_path))


def _image_key(image, flipped: bool) -> str:
    return image_key(image) + (":flipped" if flipped else "")


def _pixels(backbone, image, flipped: bool) -> Tensor:
    from alignsuite.data.images import to_tensor

    pixels = to_tensor(image, backbone.resolution)[0]  # centre crop: caching needs random_crop off
    return pixels.flip(-1) if flipped else pixels  # the same pixels as flipping the cropped image


@torch.no_grad()
def warm(backbone, data, strategy=None) -> None:
    """The one encoding pass: every image (both orientations under ``random_flip``) and caption of
    ``data``'s train and val sets that the cache lacks. Each process encodes its share; all then read
    every process's shards."""
    from torch.utils.data import DataLoader

    from alignsuite.data.images import IMAGE_COLUMNS

    if data is None:
        raise ValueError("backbone.cache_dir needs a PreferenceDataModule (data.class_path) to encode in one pass")
    cache = backbone.cache
    world, rank = (strategy.world_size, strategy.global_rank) if strategy is not None else (1, 0)
    before, encoded = len(cache), 0
    store = getattr(torch, backbone.cache_dtype)
    captions = {""} if backbone.proportion_empty_prompts > 0 else set()
    for ds in (data.train_set, data.val_set):
        if ds is None or len(ds) == 0:
            continue
        share = ds.shard(num_shards=world, index=rank, contiguous=True) if world > 1 else ds
        loader = DataLoader(share, batch_size=data.batch_size, collate_fn=data.collate, num_workers=data.num_workers)
        for batch in loader:
            captions.update(batch["prompt"])
            todo = {}  # key -> (image, flipped)
            for column in IMAGE_COLUMNS:
                for image in batch.get(column, []):
                    for flipped in (False, True) if backbone.random_flip else (False,):
                        key = _image_key(image, flipped)
                        if key not in cache and key not in todo:
                            todo[key] = (image, flipped)
            keys = list(todo)
            for start in range(0, len(keys), data.batch_size):
                chunk = keys[start:start + data.batch_size]
                pixels = torch.stack([_pixels(backbone, *todo[k]) for k in chunk])
                mean, std = backbone.latent_moments(pixels.to(backbone.device))
                for k, m, s in zip(chunk, mean, std):
                    cache.put(k, {"mean": m.to(store), "std": s.to(store)})
                encoded += len(chunk)
    todo = sorted(c for c in captions if text_key(c) not in cache)
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        embeds = backbone.encode_prompts(chunk)
        for j, caption in enumerate(chunk):
            cache.put(text_key(caption), {name: value[j].to(store) for name, value in embeds.items()})
        encoded += len(chunk)
    cache.flush()
    if strategy is not None:
        strategy.barrier("alignsuite-encoding-cache")
    cache.rescan()
    cache.hits = cache.misses = 0
    rank_zero_info(f"encoding cache {cache.dir}: {before} entries found, {encoded} encoded by rank {rank}, {len(cache)} now")


def latents(backbone, views: list[list[Any]]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """The backbone's ``_pixels`` + ``encode_images`` through the cache: an image is looked up by its decoded
    pixels and flip, so a hit skips resizing and the VAE; the flip is drawn as ``to_tensor`` draws it."""
    from alignsuite.data.images import centre_crop_offsets

    images, flips, crops, sizes = [], [], [], []
    for view in views:
        for row, image in enumerate(view):
            images.append(image)
            flips.append(backbone.random_flip and float(torch.rand(1, generator=backbone._generator(row))) < 0.5)
            sizes.append((image.height, image.width))
            crops.append(centre_crop_offsets(image.height, image.width, backbone.resolution))
    entries = [backbone.cache.get(_image_key(im, f)) for im, f in zip(images, flips)]
    missing = [i for i, e in enumerate(entries) if e is None]
    if missing:
        pixels = torch.stack([_pixels(backbone, images[i], flips[i]) for i in missing])
        mean, std = backbone.latent_moments(pixels.to(backbone.device))
        for j, i in enumerate(missing):
            entries[i] = {"mean": mean[j].cpu(), "std": std[j].cpu()}
    dtype = backbone.frozen["vae"].dtype
    mean = torch.stack([e["mean"] for e in entries]).to(backbone.device, dtype)  # one copy to the device
    std = torch.stack([e["std"] for e in entries]).to(backbone.device, dtype)
    return backbone.sample_latents(mean, std), crops, sizes


def prompt_embeddings(backbone, prompts: list[str]) -> dict[str, Tensor]:
    """The backbone's ``encode_prompts``, read from the cache where it holds the captions."""
    entries = [backbone.cache.get(text_key(p)) for p in prompts]
    missing = [i for i, e in enumerate(entries) if e is None]
    if missing:
        fresh = backbone.encode_prompts([prompts[i] for i in missing])
        for j, i in enumerate(missing):
            entries[i] = {name: value[j] for name, value in fresh.items()}
    dtype = next(m.dtype for n, m in backbone.frozen.items() if n.startswith("text_encoder"))
    return {name: torch.stack([e[name] for e in entries]).to(backbone.device, dtype) for name in entries[0]}
