"""The diffusers text-to-image pipelines the ``TextToImage`` backbone trains: one row per pipeline class.

==========================  ===============  ====================================================
pipeline                    denoiser         target
==========================  ===============  ====================================================
StableDiffusionPipeline     ``unet``         noise (epsilon) or velocity (v_prediction)
StableDiffusionXLPipeline   ``unet``         same; two text encoders, size/crop time ids
StableDiffusion3Pipeline    ``transformer``  flow matching: ``noise - x0`` at ``x_t = (1-s) x0 + s noise``
FluxPipeline                ``transformer``  flow matching, on 2x2-packed latents; guidance-distilled
                                             models (FLUX.1-dev) get ``guidance_scale`` as their
                                             guidance input in training as in sampling
==========================  ===============  ====================================================

A row says what differs between them: the denoiser's attribute, flow matching or not, the latent packing,
how the pipeline encodes a caption and how the denoiser is called on a :class:`DenoisingBatch`. Adding a
pipeline is adding a row. Below the table: loading a pipeline folder, and running its models beside
components of other dtypes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from alignsuite.backbones.denoising import DenoisingBatch
from alignsuite.lazy import optional


@dataclass(frozen=True)
class Family:
    """How one pipeline class trains.

    Attributes:
        name: a short name (sd, sdxl, sd3, flux).
        denoiser: the pipeline attribute that holds the denoiser.
        flow: rectified flow (flow-matching targets) rather than DDPM.
        packing: latent patch side packed into one token (Flux: 2); the resolution must divide by it too.
        size_conditioning: SDXL's micro-conditioning: original size, crop offsets and target size.
        encode: ``(pipe, prompts, device) -> {name: tensor}``, the conditioning the denoiser takes.
        forward: ``(model, batch, dtype, guidance_scale, vae_scale_factor) -> prediction`` on the latent grid.
    """

    name: str
    denoiser: str
    flow: bool
    packing: int
    size_conditioning: bool
    encode: Callable[[Any, list[str], torch.device], dict[str, Tensor]]
    forward: Callable[[nn.Module, DenoisingBatch, torch.dtype, float, int], Tensor]


# ---------------------------------------------------------------- captions
def _encode_sd(pipe, prompts: list[str], device) -> dict[str, Tensor]:
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"encoder_hidden_states": embeds}


def _encode_sdxl(pipe, prompts: list[str], device) -> dict[str, Tensor]:
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "text_embeds": pooled}


def _encode_sd3(pipe, prompts: list[str], device) -> dict[str, Tensor]:
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device, do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _encode_flux(pipe, prompts: list[str], device) -> dict[str, Tensor]:
    embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


# ---------------------------------------------------------------- denoiser calls
def _unet(model, batch: DenoisingBatch, dtype, guidance_scale: float, vae_scale_factor: int) -> Tensor:
    c = batch.cond
    extra = {}
    if "time_ids" in c:  # SDXL
        extra["added_cond_kwargs"] = {"text_embeds": c["text_embeds"].to(dtype), "time_ids": c["time_ids"].to(dtype)}
    if "ip_hidden_states" in c:  # a user condition's tokens (alignsuite.backbones.user_condition)
        extra["cross_attention_kwargs"] = {"ip_hidden_states": c["ip_hidden_states"].to(dtype)}
    return model(batch.noisy.to(dtype), batch.timesteps, c["encoder_hidden_states"].to(dtype), **extra).sample


def _sd3(model, batch: DenoisingBatch, dtype, guidance_scale: float, vae_scale_factor: int) -> Tensor:
    c = batch.cond
    return model(hidden_states=batch.noisy.to(dtype), timestep=batch.timesteps,
                 encoder_hidden_states=c["encoder_hidden_states"].to(dtype),
                 pooled_projections=c["pooled_projections"].to(dtype)).sample


def _flux(model, batch: DenoisingBatch, dtype, guidance_scale: float, vae_scale_factor: int) -> Tensor:
    """Flux's transformer on 2x2-packed latent tokens with their (row, column) position ids; the prediction
    is unpacked back to the latent grid. Timesteps enter in [0, 1]."""
    from diffusers import FluxPipeline

    n, c, h, w = batch.noisy.shape
    cond, device = batch.cond, batch.noisy.device
    packed = FluxPipeline._pack_latents(batch.noisy.to(dtype), n, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, device, dtype)
    txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=device, dtype=dtype)
    guidance = None
    if model.config.guidance_embeds:
        guidance = torch.full((n,), float(guidance_scale), device=device, dtype=torch.float32)
    pred = model(hidden_states=packed, timestep=batch.timesteps.to(dtype) / 1000, guidance=guidance,
                 pooled_projections=cond["pooled_projections"].to(dtype),
                 encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                 txt_ids=txt_ids, img_ids=img_ids).sample
    return FluxPipeline._unpack_latents(pred, h * vae_scale_factor, w * vae_scale_factor, vae_scale_factor)


FAMILIES = {
    "StableDiffusionPipeline": Family("sd", "unet", False, 1, False, _encode_sd, _unet),
    "StableDiffusionXLPipeline": Family("sdxl", "unet", False, 1, True, _encode_sdxl, _unet),
    "StableDiffusion3Pipeline": Family("sd3", "transformer", True, 1, False, _encode_sd3, _sd3),
    "FluxPipeline": Family("flux", "transformer", True, 2, False, _encode_flux, _flux),
}


# ---------------------------------------------------------------- loading and running
def load_pipeline(path: str, empty_denoiser: bool = False) -> tuple[Any, Family]:
    """The pipeline saved in ``path`` (float32) and its row; any other pipeline is an error that names it.
    ``empty_denoiser``: the denoiser is built on the meta device from its config, its weights left unread."""
    with optional("diffusion", "the text-to-image backbone (TextToImage)"):
        import diffusers
        from diffusers import DiffusionPipeline

    try:
        given = absent_components(path)
        if empty_denoiser:
            index = DiffusionPipeline.load_config(path)
            family = FAMILIES.get(index.get("_class_name"))
            if family is not None:
                denoiser_class = getattr(diffusers, index[family.denoiser][1])
                given[family.denoiser] = empty_model(denoiser_class, path, family.denoiser)
        with components_bar_off():
            pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.float32, **given)
    except OSError as e:
        raise OSError(f"cannot load pipeline {path!r}: not a local save_pretrained folder, nor a reachable hub id ({e})") from e
    name = type(pipe).__name__
    if name not in FAMILIES:
        raise ValueError(f"{path!r} holds a {name}; the TextToImage backbone supports {', '.join(sorted(FAMILIES))}")
    return pipe, FAMILIES[name]


@contextlib.contextmanager
def components_bar_off():
    """diffusers' bar over loading a pipeline's few components, off (its own switch, put back after): a run loads
    its pipeline once, and the bar said nothing the next line does not."""
    from diffusers.utils import logging as diffusers_logging

    was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            diffusers_logging.enable_progress_bar()


def empty_model(model_class: type, path: str, subfolder: str | None = None) -> nn.Module:
    """A diffusers model of ``path`` (``subfolder``) on the meta device, built from its config alone."""
    config = model_class.load_config(path, subfolder=subfolder)
    with torch.device("meta"):
        return model_class.from_config(config)


def absent_components(path: str) -> dict[str, None]:
    """Components a local folder saved as absent (SD3 without its T5 encoder): they load as None."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return {}
    with open(index) as f:
        return {k: None for k, v in json.load(f).items() if v == [None, None]}


def save_pipeline(pipe, path: str, **replaced: nn.Module) -> None:
    """Save ``pipe`` with some of its components replaced (the trained denoiser). The loaded pipeline is saved
    rather than its class built anew, so its settings stay the base's: a new SD 1.5 pipeline takes
    ``requires_safety_checker=True``, and every load of the export would warn of a missing safety checker."""
    kept = {name: getattr(pipe, name) for name in replaced}
    for name, module in replaced.items():
        setattr(pipe, name, module)
    try:
        pipe.save_pretrained(path)
    finally:
        for name, module in kept.items():
            setattr(pipe, name, module)
    # diffusers records the folder each part was loaded from (a path of this machine); an export names none.
    for config in glob.glob(os.path.join(glob.escape(path), "*.json")) + glob.glob(
            os.path.join(glob.escape(path), "*", "config.json")):
        with open(config) as f:
            values = json.load(f)
        if values.pop("_name_or_path", None) is not None:
            with open(config, "w") as f:
                json.dump(values, f, indent=2, sort_keys=True)
                f.write("\n")


def cast_to(model: nn.Module, dtype: str) -> nn.Module:
    # Loaded in float32; cast only when asked, so float32 runs keep diffusers' own dtype handling.
    return model if dtype == "float32" else model.to(getattr(torch, dtype))


@contextlib.contextmanager
def in_own_dtype(module: nn.Module, method: str, cast_inputs: bool = False):
    """``module.<method>`` computes in its weights' dtype whatever the dtype of what a pipeline hands it
    (prompt embeddings in the text encoders' float32, latents in a bfloat16 transformer's dtype): under
    autocast to that dtype when it is a low precision, or with its floating tensor arguments cast to it
    (``cast_inputs``: what diffusers' own pipelines do before decoding, ``latents.to(vae.dtype)``)."""
    original = module.__dict__.get(method)  # an instance attribute already there (an offload hook) stays
    bound = getattr(module, method)

    def run(*args, **kwargs):
        weight = next(module.parameters())  # read at call time: a pipeline may upcast its VAE meanwhile
        if cast_inputs:
            def to(v):
                return v.to(weight.dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
            return bound(*map(to, args), **{k: to(v) for k, v in kwargs.items()})
        if weight.dtype == torch.float32:
            return bound(*args, **kwargs)
        with torch.autocast(weight.device.type, dtype=weight.dtype):
            return bound(*args, **kwargs)

    object.__setattr__(module, method, run)
    try:
        yield
    finally:
        if original is None:
            object.__delattr__(module, method)
        else:
            object.__setattr__(module, method, original)


class AdaptersOff:
    """Context in which a diffusers model computes without its LoRA adapters (and without ``extra``'s, any object
    with an ``active`` switch: a user condition's branches)."""

    def __init__(self, model, extra=None) -> None:
        self.model, self.extra = model, extra

    def __enter__(self):
        self.model.disable_adapters()
        if self.extra is not None:
            self.extra.active = False

    def __exit__(self, *exc) -> None:
        self.model.enable_adapters()
        if self.extra is not None:
            self.extra.active = True


__all__ = [
    "FAMILIES", "AdaptersOff", "Family", "absent_components", "cast_to", "in_own_dtype", "load_pipeline", "save_pipeline",
]
