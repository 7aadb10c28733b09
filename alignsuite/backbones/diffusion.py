"""diffusers text-to-image pipelines: the diffusion backbone.

Score convention: ``-0.5 * mean((prediction - target)**2)`` over a sample's latent elements, for one
draw of noise and timestep shared by every view of a row (winner and loser), by the policy and by the
reference. That is a unit Gaussian's log-density up to a constant, so Diffusion-DPO is ``dpo`` over these
scores with the official code's beta (5000 for SDXL, 2000 for SD 1.5), and MaPO's bounded score is a
function of the score alone.

Supported pipelines (anything else is an error that names the class):

==========================  ==================  =================================================
pipeline                    denoiser            target
==========================  ==================  =================================================
StableDiffusionPipeline     ``unet``            noise (epsilon) or velocity (v_prediction)
StableDiffusionXLPipeline   ``unet``            same; two text encoders, size/crop time ids
StableDiffusion3Pipeline    ``transformer``     flow matching: ``noise - x0`` at ``x_t = (1-s) x0 + s noise``
FluxPipeline                ``transformer``     flow matching, on 2x2-packed latents; guidance-distilled
                                                models (FLUX.1-dev) get ``guidance_scale`` as their
                                                guidance input in training as in sampling
==========================  ==================  =================================================

Only the denoiser trains (fully, or through LoRA); the VAE and text encoders are frozen, kept out of
checkpoints and rebuilt from the pipeline folder on resume. The VAE encodes in float32 whatever the
training precision: SDXL's VAE overflows in float16 (NaN losses); keep ``vae_dtype: float32`` or load
a float16-safe VAE.

Encoding cache (``cache_dir``): the frozen encoders give the same output for the same input, so before
fit one pass encodes every training and validation image (both orientations under ``random_flip``) and
caption, and stores the VAE's latent mean and standard deviation and the text embeddings on disk. Steps
then read them instead of running the VAE and text encoders, and skip resizing; the latent is still
sampled afresh (``mean + std * noise``) with the same draw as without the cache, so a cached run trains
as an uncached one up to float rounding (the VAE's output differs in its last bits with the images that
share its batch). Entries are keyed by the decoded image and flip, and the caption text; the folder is keyed by
the encoders' weights, resolution, flip setting and dtypes, so changing any of those starts a fresh
cache. Inputs first seen during training (SePPO's generated losers) are encoded and not stored.
``random_crop`` draws a new crop each step and cannot be cached.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from alignsuite.backbones.base import Backbone, SequenceScores, ViewInputs
from alignsuite.backbones.encoding_cache import image_key, text_key
from alignsuite.backbones.causal_lm import resolve_model_path
from alignsuite.backbones.lora import LoraSpec

_FAMILIES = {
    "StableDiffusionPipeline": ("unet", "sd"),
    "StableDiffusionXLPipeline": ("unet", "sdxl"),
    "StableDiffusion3Pipeline": ("transformer", "sd3"),
    "FluxPipeline": ("transformer", "flux"),
}
_FLOW_FAMILIES = ("sd3", "flux")
PredictionType = Literal["auto", "epsilon", "v_prediction", "flow_matching"]


@dataclass
class DenoisingBatch:
    noisy: Tensor  # [N, C, h, w]
    target: Tensor  # [N, C, h, w]
    timesteps: Tensor  # [N]
    cond: dict[str, Tensor]  # conditioning passed to the denoiser, each [N, ...]


class TextToImage(Backbone):
    """A diffusers text-to-image pipeline from a local folder or a hub id, fully fine-tuned or with LoRA.

    Args:
        model_name_or_path: a ``save_pretrained`` pipeline folder, a hub id, or ``toy:diffusion``.
        resolution: training images are resized and cropped to ``resolution`` squared; it must be a
            multiple of the VAE's downsampling factor.
        lora: train a LoRA adapter on the denoiser instead of its full weights.
        prediction_type: "auto" reads the scheduler (flow matching for SD3); set it to override.
        random_crop: random instead of centre crop (as in the reference code's option).
        random_flip: horizontal flip with probability 0.5, the same for both images of a pair.
        proportion_empty_prompts: share of captions replaced by "" (keeps classifier-free guidance working).
        timestep_sampling: flow matching only: "uniform" or "logit_normal" (SD3's default weighting).
        dtype: the denoiser's weights at load; mixed precision is the Trainer's.
        vae_dtype: the VAE's weights; float32 avoids the SDXL VAE's float16 overflow.
        gradient_checkpointing: trade compute for activation memory in the denoiser.
        seed: seeds noise, timesteps, augmentation and empty prompts, step by step.
        num_inference_steps, guidance_scale: how ``generate`` samples.
        cache_dir: keep VAE latents and text embeddings here, computed in one pass before fit (see the
            module's docstring); the same folder serves many runs and datasets.
        cache_dtype: precision of the stored latents and embeddings (float16 halves the disk).
    """

    def __init__(
        self,
        model_name_or_path: str,
        resolution: int = 512,
        lora: LoraSpec | None = None,
        prediction_type: PredictionType = "auto",
        random_crop: bool = False,
        random_flip: bool = True,
        proportion_empty_prompts: float = 0.0,
        timestep_sampling: Literal["uniform", "logit_normal"] = "uniform",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        cache_dir: str | None = None,
        cache_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    ) -> None:
        super().__init__()
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"backbone.proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
        self.model_name_or_path = model_name_or_path
        self.resolution = resolution
        self.lora = lora
        self.prediction_type = prediction_type
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.proportion_empty_prompts = proportion_empty_prompts
        self.timestep_sampling = timestep_sampling
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.seed = seed
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        if cache_dir is not None and random_crop:
            raise ValueError(
                "backbone.cache_dir cannot be combined with backbone.random_crop: a random crop differs at every "
                "step, so its latents cannot be cached; set random_crop: false (centre crop) or drop cache_dir"
            )
        self.cache_dir = cache_dir
        self.cache_dtype = cache_dtype
        self.cache = None
        self.pipe = None
        self.frozen = nn.ModuleDict()  # VAE and text encoders: moved to the device with the module
        self.draws = 0  # prepare() calls so far: the step's seed offset

    # The frozen parts are rebuilt from the pipeline folder; checkpoints hold only what trains.
    not_checkpointed = ("frozen.",)
    deterministic_inputs = False  # new noise and timesteps every step

    def on_fit_start(self, trainer) -> None:
        if self.cache is not None:  # one pass of the frozen encoders over the data
            self.warm_cache(trainer.datamodule, trainer.strategy)

    # ---------------------------------------------------------------- building
    def _load_pipeline(self):
        from diffusers import DiffusionPipeline

        path = resolve_model_path(self.model_name_or_path)
        try:
            pipe = DiffusionPipeline.from_pretrained(path, dtype=torch.float32, **_absent_components(path))
        except OSError as e:
            raise OSError(f"cannot load pipeline {path!r}: not a local save_pretrained folder, nor a reachable hub id ({e})") from e
        name = type(pipe).__name__
        if name not in _FAMILIES:
            raise ValueError(
                f"{path!r} holds a {name}; the TextToImage backbone supports {', '.join(sorted(_FAMILIES))}"
            )
        return pipe

    def configure(self) -> None:
        if self.pipe is not None:
            return
        pipe = self._load_pipeline()
        self.denoiser_name, self.family = _FAMILIES[type(pipe).__name__]
        self.prediction = self._resolve_prediction_type(pipe)
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if self.family == "flux":
            factor *= 2  # Flux packs 2x2 latent patches into one token
        if self.resolution % factor:
            raise ValueError(
                f"backbone.resolution ({self.resolution}) must be divisible by {factor}, the VAE's downsampling factor"
                + (" times Flux's 2x2 latent packing" if self.family == "flux" else "")
            )
        _cast(pipe.vae, self.vae_dtype).requires_grad_(False).eval()
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                encoder.requires_grad_(False).eval()
                self.frozen[name] = encoder
        self.frozen["vae"] = pipe.vae
        denoiser = _cast(getattr(pipe, self.denoiser_name), self.dtype)
        if self.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if self.lora is not None:
            denoiser.requires_grad_(False)
            targets = self.lora.target_modules
            if targets == "all-linear":  # the diffusers convention for attention LoRA
                targets = ["to_q", "to_k", "to_v", "to_out.0"]
            spec = LoraSpec(self.lora.r, self.lora.alpha, self.lora.dropout, targets, self.lora.modules_to_save)
            config = spec.to_peft(task_type=None)
            config.task_type = None
            denoiser.add_adapter(config)
        self.policy = denoiser.train()
        pipe.set_progress_bar_config(disable=True)  # sampling inside validation: Lightning's bar is enough
        self.pipe = pipe
        self.train_scheduler = self._training_scheduler(pipe)
        if self.cache_dir is not None:
            self.cache = self._open_cache()

    def _open_cache(self):
        from alignsuite.backbones.encoding_cache import EncodingCache, fingerprint

        settings = {
            "format": 1, "pipeline": type(self.pipe).__name__, "resolution": self.resolution,
            "random_flip": self.random_flip, "random_crop": self.random_crop, "vae_dtype": self.vae_dtype,
            "cache_dtype": self.cache_dtype,
        }
        key = fingerprint(dict(self.frozen.items()), settings)
        return EncodingCache(self.cache_dir, key, dict(settings, model_name_or_path=self.model_name_or_path))

    def _resolve_prediction_type(self, pipe) -> str:
        scheduler_kind = type(pipe.scheduler).__name__
        found = "flow_matching" if "FlowMatch" in scheduler_kind else pipe.scheduler.config.get("prediction_type", "epsilon")
        chosen = found if self.prediction_type == "auto" else self.prediction_type
        if chosen not in ("epsilon", "v_prediction", "flow_matching"):
            raise ValueError(f"unsupported prediction type {chosen!r}; expected epsilon, v_prediction or flow_matching")
        if (chosen == "flow_matching") != (self.family in _FLOW_FAMILIES):
            raise ValueError(f"prediction type {chosen!r} does not fit a {type(pipe).__name__}")
        return chosen

    def _training_scheduler(self, pipe):
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        if self.prediction == "flow_matching":
            return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        config = dict(pipe.scheduler.config, prediction_type=self.prediction)
        return DDPMScheduler.from_config(config)

    def load_reference(self, source: str | None = None) -> nn.Module:
        """The denoiser alone (no second VAE or text encoders) of this pipeline or of pipeline ``source``."""
        path = resolve_model_path(source if source is not None else self.model_name_or_path)
        model = type(self.policy).from_pretrained(path, subfolder=self.denoiser_name, dtype=torch.float32)
        return _cast(model, self.dtype).eval().requires_grad_(False)

    @property
    def has_adapters(self) -> bool:
        return self.lora is not None

    def adapters_disabled(self):
        if not self.has_adapters:
            return super().adapters_disabled()
        return _AdaptersOff(self.policy)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    # ---------------------------------------------------------------- inputs
    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws * 7919 + salt)

    def _pixels(self, views: list[list[Any]]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """Every view's images as one ``[K*B, 3, R, R]`` tensor; a row's views share crop and flip."""
        from alignsuite.data.images import to_tensor

        tensors, crops, sizes = [], [], []
        for view in views:
            for row, image in enumerate(view):
                t, crop, size = to_tensor(image, self.resolution, self.random_crop, self.random_flip, self._generator(row))
                tensors.append(t)
                crops.append(crop)
                sizes.append(size)
        return torch.stack(tensors), crops, sizes

    @torch.no_grad()
    def latent_moments(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE's posterior mean and standard deviation for ``[N, 3, R, R]`` pixels in [-1, 1]."""
        vae = self.frozen["vae"]
        with torch.autocast(pixels.device.type, enabled=False):
            dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mean, dist.std

    def _sample_latents(self, mean: Tensor, std: Tensor) -> Tensor:
        """One posterior draw, scaled (and shifted) as the denoiser expects; the draw is the one
        ``latent_dist.sample`` makes with this step's generator, cached moments or not."""
        vae = self.frozen["vae"]
        noise = torch.randn(mean.shape, generator=self._generator(-1), dtype=mean.dtype).to(mean.device)
        latents = mean + std * noise
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float()

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Latents of preprocessed ``[N, 3, R, R]`` pixels (the uncached path)."""
        return self._sample_latents(*self.latent_moments(pixels.to(self.device)))

    def _cache_pixels(self, image, flipped: bool) -> Tensor:
        from alignsuite.data.images import to_tensor

        pixels = to_tensor(image, self.resolution)[0]  # centre crop: caching needs random_crop off
        return pixels.flip(-1) if flipped else pixels  # the same pixels as flipping the cropped image

    def _cached_latents(self, views: list[list[Any]]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """``_pixels`` + ``encode_images`` through the encoding cache: an image is looked up by its decoded
        pixels and flip, so a hit skips resizing and the VAE; the flip is drawn as ``to_tensor`` draws it."""
        from alignsuite.data.images import centre_crop_offsets

        images, flips, crops, sizes = [], [], [], []
        for view in views:
            for row, image in enumerate(view):
                images.append(image)
                flips.append(self.random_flip and float(torch.rand(1, generator=self._generator(row))) < 0.5)
                sizes.append((image.height, image.width))
                crops.append(centre_crop_offsets(image.height, image.width, self.resolution))
        entries = [self.cache.get(image_key(im) + (":flipped" if f else "")) for im, f in zip(images, flips)]
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            mean, std = self.latent_moments(torch.stack([self._cache_pixels(images[i], flips[i]) for i in missing]).to(self.device))
            for j, i in enumerate(missing):
                entries[i] = {"mean": mean[j].cpu(), "std": std[j].cpu()}
        dtype = self.frozen["vae"].dtype
        mean = torch.stack([e["mean"] for e in entries]).to(self.device, dtype)  # one copy to the device
        std = torch.stack([e["std"] for e in entries]).to(self.device, dtype)
        return self._sample_latents(mean, std), crops, sizes

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        pipe, device = self.pipe, self.device
        if self.family == "sd":
            embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
            return {"encoder_hidden_states": embeds}
        if self.family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds, "text_embeds": pooled}
        if self.family == "flux":
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def prompt_embeddings(self, prompts: list[str]) -> dict[str, Tensor]:
        """``encode_prompts``, read from the encoding cache where it holds the captions."""
        if self.cache is None:
            return self.encode_prompts(prompts)
        entries = [self.cache.get(text_key(p)) for p in prompts]
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            fresh = self.encode_prompts([prompts[i] for i in missing])
            for j, i in enumerate(missing):
                entries[i] = {name: value[j] for name, value in fresh.items()}
        dtype = next(m.dtype for n, m in self.frozen.items() if n.startswith("text_encoder"))
        return {name: torch.stack([e[name] for e in entries]).to(self.device, dtype) for name in entries[0]}

    @torch.no_grad()
    def warm_cache(self, data, strategy=None) -> None:
        """The one encoding pass: every image (both orientations under ``random_flip``) and caption of
        ``data``'s train and val sets that the cache lacks. Each process encodes its share; all then
        read every process's shards."""
        from torch.utils.data import DataLoader

        from alignsuite.data.images import IMAGE_COLUMNS

        if data is None or not hasattr(data, "collate"):
            raise ValueError("backbone.cache_dir needs a PreferenceDataModule (data.class_path) to encode in one pass")
        cache = self.cache
        world, rank = (strategy.world_size, strategy.global_rank) if strategy is not None else (1, 0)
        before, encoded = len(cache), 0
        store = getattr(torch, self.cache_dtype)
        captions = {""} if self.proportion_empty_prompts > 0 else set()
        for split in ("train", "val"):
            ds = getattr(data, f"{split}_set", None)
            if ds is None or len(ds) == 0:
                continue
            share = ds.shard(num_shards=world, index=rank, contiguous=True) if world > 1 else ds
            loader = DataLoader(share, batch_size=data.batch_size, collate_fn=data.collate, num_workers=data.num_workers)
            for batch in loader:
                captions.update(batch["prompt"])
                todo = {}  # key -> (image, flipped)
                for column in IMAGE_COLUMNS:
                    for image in batch.get(column, []):
                        key = image_key(image)
                        for flipped in (False, True) if self.random_flip else (False,):
                            full = key + (":flipped" if flipped else "")
                            if full not in cache and full not in todo:
                                todo[full] = (image, flipped)
                for start in range(0, len(todo), data.batch_size):
                    keys = list(todo)[start:start + data.batch_size]
                    pixels = torch.stack([self._cache_pixels(*todo[k]) for k in keys])
                    mean, std = self.latent_moments(pixels.to(self.device))
                    for k, m, s in zip(keys, mean, std):
                        cache.put(k, {"mean": m.to(store), "std": s.to(store)})
                    encoded += len(keys)
        todo = sorted(c for c in captions if text_key(c) not in cache)
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            embeds = self.encode_prompts(chunk)
            for j, caption in enumerate(chunk):
                cache.put(text_key(caption), {name: value[j].to(store) for name, value in embeds.items()})
            encoded += len(chunk)
        cache.flush()
        if strategy is not None:
            strategy.barrier("alignsuite-encoding-cache")
        cache.rescan()
        cache.hits = cache.misses = 0
        rank_zero_info(f"encoding cache {cache.dir}: {before} entries found, {encoded} encoded by rank {rank}, {len(cache)} now")

    def _drop_prompts(self, prompts: list[str], rows: int) -> list[str]:
        """Captions replaced by "" with probability ``proportion_empty_prompts``; one draw per row, so a
        row's views (``prompts`` holds K views of B rows, view-major) drop together."""
        if self.proportion_empty_prompts <= 0:
            return list(prompts)
        draw = torch.rand(rows, generator=self._generator(-2)).tolist()
        return ["" if draw[i % rows] < self.proportion_empty_prompts else p for i, p in enumerate(prompts)]

    def prepare(self, views: list[ViewInputs]) -> DenoisingBatch:
        """Encode images and captions, and draw one noise and timestep per row for all its views."""
        k, b = len(views), len(views[0].prompts)
        device = self.device
        images = [view.completions for view in views]
        if self.cache is None:
            pixels, crops, sizes = self._pixels(images)
            latents = self.encode_images(pixels)
        else:
            latents, crops, sizes = self._cached_latents(images)
        if all(view.prompts == views[0].prompts for view in views):  # the usual case: encode the captions once
            embeds = self.prompt_embeddings(self._drop_prompts(views[0].prompts, b))
            cond = {key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in embeds.items()}
        else:
            embeds = self.prompt_embeddings(self._drop_prompts([p for view in views for p in view.prompts], b))
            cond = dict(embeds)
        if self.family == "sdxl":
            r = self.resolution
            cond["time_ids"] = torch.tensor([[*size, *crop, r, r] for size, crop in zip(sizes, crops)], device=device, dtype=torch.float32)
        gen = self._generator(-3)
        noise = torch.randn((b, *latents.shape[1:]), generator=gen).to(device).repeat(k, 1, 1, 1)
        self.draws += 1
        if self.prediction == "flow_matching":
            timesteps, noisy, target = self._flow_inputs(latents, noise, b, k, gen)
        else:
            n = self.train_scheduler.config.num_train_timesteps
            timesteps = torch.randint(0, n, (b,), generator=gen).to(device).repeat(k)
            noisy = self.train_scheduler.add_noise(latents, noise, timesteps)
            target = noise if self.prediction == "epsilon" else self.train_scheduler.get_velocity(latents, noise, timesteps)
        return DenoisingBatch(noisy, target, timesteps, cond)

    def _flow_inputs(self, latents, noise, b, k, gen):
        scheduler = self.train_scheduler
        if self.timestep_sampling == "logit_normal":
            u = torch.sigmoid(torch.randn(b, generator=gen))
        else:
            u = torch.rand(b, generator=gen)
        index = (u * scheduler.config.num_train_timesteps).long().clamp(max=len(scheduler.timesteps) - 1)
        timesteps = scheduler.timesteps[index].to(latents.device).repeat(k)
        sigma = scheduler.sigmas[index].to(latents.device, latents.dtype).repeat(k).view(-1, 1, 1, 1)
        return timesteps, (1 - sigma) * latents + sigma * noise, noise - latents

    # ---------------------------------------------------------------- scoring
    def score(self, prepared: DenoisingBatch, model: nn.Module | None = None) -> SequenceScores:
        model = model if model is not None else self.policy
        dtype = next(model.parameters()).dtype
        cond = prepared.cond
        if self.family == "flux":
            pred = self._flux_forward(model, prepared, dtype)
        elif self.family == "sd3":
            pred = model(hidden_states=prepared.noisy.to(dtype), timestep=prepared.timesteps,
                         encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                         pooled_projections=cond["pooled_projections"].to(dtype)).sample
        else:
            extra = {}
            if self.family == "sdxl":
                extra["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
            pred = model(prepared.noisy.to(dtype), prepared.timesteps, cond["encoder_hidden_states"].to(dtype), **extra).sample
        error = (pred.float() - prepared.target.float()).pow(2).mean(dim=tuple(range(1, pred.dim())))
        return SequenceScores(-0.5 * error, torch.ones_like(error))

    def _flux_forward(self, model: nn.Module, prepared: DenoisingBatch, dtype: torch.dtype) -> Tensor:
        """Flux's transformer on 2x2-packed latent tokens with their (row, column) position ids; the
        prediction is unpacked back to the latent grid. Timesteps enter in [0, 1]."""
        from diffusers import FluxPipeline

        n, c, h, w = prepared.noisy.shape
        cond, device = prepared.cond, prepared.noisy.device
        packed = FluxPipeline._pack_latents(prepared.noisy.to(dtype), n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if model.config.guidance_embeds:
            guidance = torch.full((n,), float(self.guidance_scale), device=device, dtype=torch.float32)
        pred = model(hidden_states=packed, timestep=prepared.timesteps.to(dtype) / 1000, guidance=guidance,
                     pooled_projections=cond["pooled_projections"].to(dtype),
                     encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                     txt_ids=txt_ids, img_ids=img_ids).sample
        scale = self.pipe.vae_scale_factor
        return FluxPipeline._unpack_latents(pred, h * scale, w * scale, scale)

    # ---------------------------------------------------------------- sampling and export
    @torch.no_grad()
    def generate(self, prompts: list[str], num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, model: nn.Module | None = None, output_type: str = "pil", **kwargs) -> list:
        """Sample one image per prompt with the policy (or ``model``), from a fixed seed."""
        pipe = self.pipe
        denoiser = model if model is not None else self.policy
        was_training = denoiser.training
        saved = getattr(pipe, self.denoiser_name)
        setattr(pipe, self.denoiser_name, denoiser)
        denoiser.eval()
        try:
            call = {
                "num_inference_steps": num_inference_steps or self.num_inference_steps,
                "guidance_scale": self.guidance_scale if guidance_scale is None else guidance_scale,
                "height": self.resolution, "width": self.resolution, "output_type": output_type,
                "generator": torch.Generator().manual_seed(seed), **kwargs,
            }
            out = pipe(list(prompts), **call)
        finally:
            setattr(pipe, self.denoiser_name, saved)
            denoiser.train(was_training)
        return list(out.images)

    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        """A pipeline folder ``DiffusionPipeline.from_pretrained`` loads, or the LoRA weights alone."""
        denoiser = self.policy
        if self.has_adapters and not merge_adapters:
            from peft.utils import get_peft_model_state_dict

            layers = get_peft_model_state_dict(denoiser)
            type(self.pipe).save_lora_weights(path, **{f"{self.denoiser_name}_lora_layers": layers})
            return
        if self.has_adapters:
            denoiser = copy.deepcopy(denoiser)
            denoiser.fuse_lora()
            denoiser.unload_lora()
        components = dict(self.pipe.components, **{self.denoiser_name: denoiser})
        type(self.pipe)(**components).save_pretrained(path)


def _absent_components(path: str) -> dict[str, None]:
    """Components a local folder saved as absent (SD3 without its T5 encoder): they load as None."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return {}
    with open(index) as f:
        return {k: None for k, v in json.load(f).items() if v == [None, None]}


def _cast(model: nn.Module, dtype: str) -> nn.Module:
    # Loaded in float32; cast only when asked, so float32 runs keep diffusers' own dtype handling.
    return model if dtype == "float32" else model.to(getattr(torch, dtype))


class _AdaptersOff:
    """Context in which a diffusers model computes without its LoRA adapters."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        self.model.disable_adapters()

    def __exit__(self, *exc) -> None:
        self.model.enable_adapters()

