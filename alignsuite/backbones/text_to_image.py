"""diffusers text-to-image pipelines (SD 1.5, SDXL, SD3, Flux): the text-to-image backbone.

Score convention: ``-0.5 * mean((prediction - target)**2)`` over a sample's latent elements, for one draw
of noise and timestep shared by every view of a row (winner and loser), by the policy and by the
reference (:mod:`alignsuite.backbones.denoising`). That is a unit Gaussian's log-density up to a constant,
so Diffusion-DPO is ``dpo`` over these scores with the official code's beta (5000 for SDXL, 2000 for SD
1.5), and MaPO's bounded score is a function of the score alone. The supported pipelines and what differs
between them are the table in :mod:`alignsuite.backbones.pipelines`; anything else is an error that names
the class.

Only the denoiser trains (fully, or through LoRA); the VAE and text encoders are frozen, kept out of
checkpoints and rebuilt from the pipeline folder on resume. The VAE encodes in float32 whatever the
training precision: SDXL's VAE overflows in float16 (NaN losses); keep ``vae_dtype: float32`` or load a
float16-safe VAE. ``cache_dir`` reads the frozen encoders' outputs from an on-disk cache filled in one pass
before fit (:mod:`alignsuite.backbones.text_to_image_cache`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignsuite.backbones import text_to_image_cache as cached
from alignsuite.backbones.base import Backbone, SequenceScores, ViewInputs
from alignsuite.backbones.denoising import (
    DDPM, DenoisingBatch, FlowMatching, SeededDraws, TimestepSampling, denoising_score, draw,
)
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.pipelines import (
    AdaptersOff, cast_to, empty_model, in_own_dtype, load_pipeline, save_pipeline,
)
from alignsuite.backbones.user_condition import (
    TOKENS_KWARG, USER_COLUMN, UserAdapter, UserCondition, saved_condition, user_embeddings,
)
from alignsuite.precision import compute_dtype
from alignsuite.sources import resolve_model_path

PredictionType = Literal["auto", "epsilon", "v_prediction", "flow_matching"]
Precision = Literal["float32", "bfloat16", "float16"]


class TextToImage(SeededDraws, Backbone):
    """A diffusers text-to-image pipeline from a local folder or a hub id, fully fine-tuned or with LoRA.

    Args:
        model_name_or_path: a ``save_pretrained`` pipeline folder, a hub id, or ``toy:diffusion``.
        resolution: training images are resized and cropped to ``resolution`` squared; it must be a
            multiple of the VAE's downsampling factor (times Flux's 2x2 latent packing).
        lora: train a LoRA adapter on the denoiser instead of its full weights.
        prediction_type: "auto" reads the scheduler (flow matching for SD3 and Flux); set it to override.
        random_crop: random instead of centre crop (as in the reference code's option).
        random_flip: horizontal flip with probability 0.5, the same for both images of a pair.
        proportion_empty_prompts: share of captions replaced by "" (keeps classifier-free guidance working).
        timestep_sampling: flow matching only: "uniform" or "logit_normal" (SD3's default weighting).
        dtype: the denoiser's weights at load; mixed precision is the Trainer's.
        vae_dtype: the VAE's weights; float32 avoids the SDXL VAE's float16 overflow.
        gradient_checkpointing: trade compute for activation memory in the denoiser.
        seed: seeds noise, timesteps, augmentation and empty prompts, step by step.
        num_inference_steps, guidance_scale: how ``generate`` samples.
        cache_dir: keep VAE latents and text embeddings here, computed in one pass before fit; the same
            folder serves many runs and datasets.
        cache_dtype: precision of the stored latents and embeddings (float16 halves the disk).
        user_condition: condition the denoiser on each row's ``user_embedding`` too, through decoupled
            cross-attention (PPD; :mod:`alignsuite.backbones.user_condition`); its weights train with the
            denoiser (or beside its LoRA). A pipeline exported with one brings it back when this is left out.
    """

    # The frozen parts are rebuilt from the pipeline folder; checkpoints hold only what trains.
    not_checkpointed = ("frozen.",)
    deterministic_inputs = False  # new noise and timesteps every step: reference scores cannot be stored
    modality = "text_to_image"

    def __init__(
        self,
        model_name_or_path: str,
        resolution: int = 512,
        lora: LoraSpec | None = None,
        prediction_type: PredictionType = "auto",
        random_crop: bool = False,
        random_flip: bool = True,
        proportion_empty_prompts: float = 0.0,
        timestep_sampling: TimestepSampling = "uniform",
        dtype: Precision = "float32",
        vae_dtype: Precision = "float32",
        gradient_checkpointing: bool = False,
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        cache_dir: str | None = None,
        cache_dtype: Precision = "float32",
        user_condition: UserCondition | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"backbone.proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
        if cache_dir is not None and random_crop:
            raise ValueError(
                "backbone.cache_dir cannot be combined with backbone.random_crop: a random crop differs at every "
                "step, so its latents cannot be cached; set random_crop: false (centre crop) or drop cache_dir"
            )
        self.model_name_or_path, self.resolution, self.lora = model_name_or_path, resolution, lora
        self.prediction_type, self.timestep_sampling = prediction_type, timestep_sampling
        self.random_crop, self.random_flip, self.proportion_empty_prompts = random_crop, random_flip, proportion_empty_prompts
        self.dtype, self.vae_dtype, self.gradient_checkpointing = dtype, vae_dtype, gradient_checkpointing
        self.seed, self.num_inference_steps, self.guidance_scale = seed, num_inference_steps, guidance_scale
        self.cache_dir, self.cache_dtype = cache_dir, cache_dtype
        self.cache = None
        self.user_condition = user_condition
        self.user_adapter: UserAdapter | None = None
        self.pipe = None
        self.frozen = nn.ModuleDict()  # VAE and text encoders: moved to the device with the module
        self.draws = 0  # see SeededDraws
        self.rank = 0

    def on_fit_start(self, trainer) -> None:
        super().on_fit_start(trainer)  # the rank, for the draws
        if self.cache is not None:  # one pass of the frozen encoders over the data
            self.warm_cache(trainer.datamodule, trainer.strategy)

    # ---------------------------------------------------------------- building
    def configure(self) -> None:
        if self.pipe is not None:
            return
        pipe, self.family = load_pipeline(resolve_model_path(self.model_name_or_path), self.empty_weights)
        self.denoiser_name = self.family.denoiser
        self.prediction = self._resolve_prediction_type(pipe)
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1) * self.family.packing
        if self.resolution % factor:
            packing = f" times {type(pipe).__name__}'s {self.family.packing}x{self.family.packing} latent packing"
            raise ValueError(f"backbone.resolution ({self.resolution}) must be divisible by {factor}, the VAE's"
                             f" downsampling factor" + (packing if self.family.packing > 1 else ""))
        cast_to(pipe.vae, self.vae_dtype).requires_grad_(False).eval()
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(pipe, name, None) is not None:
                self.frozen[name] = getattr(pipe, name).requires_grad_(False).eval()
        self.frozen["vae"] = pipe.vae
        denoiser = cast_to(getattr(pipe, self.denoiser_name), self.dtype)
        if self.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self._add_user_condition(denoiser, resolve_model_path(self.model_name_or_path))  # before LoRA wraps to_k, to_v
        if self.lora is not None:
            denoiser.requires_grad_(False)
            targets = self.lora.target_modules
            if targets == "all-linear":  # the diffusers convention for attention LoRA
                targets = ["to_q", "to_k", "to_v", "to_out.0"]
            config = LoraSpec(self.lora.r, self.lora.alpha, self.lora.dropout, targets, self.lora.modules_to_save).to_peft(None)
            denoiser.add_adapter(config)  # in the denoiser's dtype: the module casts what trains to float32
        self.policy = denoiser.train()
        pipe.set_progress_bar_config(disable=True)  # sampling inside validation: Lightning's bar is enough
        self.pipe = pipe
        if self.prediction == "flow_matching":
            self.noising = FlowMatching(pipe.scheduler.config, self.timestep_sampling)
        else:
            self.noising = DDPM(pipe.scheduler.config, self.prediction)
        self.train_scheduler = self.noising.scheduler
        if self.cache_dir is not None:
            self.cache = cached.open_cache(self)

    def _add_user_condition(self, denoiser: nn.Module, path: str) -> None:
        """The user branch (``user_condition``), or the one exported beside the pipeline in ``path`` with its weights."""
        saved = saved_condition(path) if os.path.isdir(path) else None
        if saved is not None and self.user_condition is not None and (
                saved.embedding_dim, saved.num_tokens) != (self.user_condition.embedding_dim, self.user_condition.num_tokens):
            raise ValueError(f"backbone.user_condition asks for embedding_dim {self.user_condition.embedding_dim} and"
                             f" num_tokens {self.user_condition.num_tokens}; the pipeline {path} was exported with"
                             f" {saved.embedding_dim} and {saved.num_tokens}: leave user_condition out to use its own")
        spec = self.user_condition or saved
        if spec is None:
            return
        if saved is not None and self.user_condition is not None:
            spec = replace(saved, scale=self.user_condition.scale, adapter_only=self.user_condition.adapter_only)
        if self.empty_weights:
            raise ValueError("backbone.user_condition is not supported under FSDP2 (the model parallel strategy): its"
                             " branches are installed on the full denoiser; use DDP")
        self.user_condition = spec
        if spec.adapter_only and self.lora is not None:
            raise ValueError("backbone.user_condition.adapter_only trains the user branch alone, and backbone.lora asks"
                             " for a LoRA on the denoiser too: leave one of them out")
        self.user_adapter = UserAdapter(spec, denoiser)
        if spec.adapter_only:
            denoiser.requires_grad_(False)
        if saved is not None:
            self.user_adapter.load(path)

    @property
    def generation_columns(self) -> tuple[str, ...]:
        """``user_embedding`` when the model has a user condition; nothing else conditions its images."""
        return (USER_COLUMN,) if self.user_condition is not None else ()

    def on_setup(self, datamodule) -> None:
        if self.user_condition is not None and USER_COLUMN not in datamodule.columns():
            raise ValueError(f"backbone.user_condition is set and the data ({datamodule.layout.name}) has no"
                             f" {USER_COLUMN!r} column: give every row its user's embedding, or leave user_condition out")

    def _resolve_prediction_type(self, pipe) -> str:
        scheduler_kind = type(pipe.scheduler).__name__
        found = "flow_matching" if "FlowMatch" in scheduler_kind else pipe.scheduler.config.get("prediction_type", "epsilon")
        chosen = found if self.prediction_type == "auto" else self.prediction_type
        if chosen not in ("epsilon", "v_prediction", "flow_matching"):
            raise ValueError(f"unsupported prediction type {chosen!r}; expected epsilon, v_prediction or flow_matching")
        if (chosen == "flow_matching") != self.family.flow:
            raise ValueError(f"prediction type {chosen!r} does not fit a {type(pipe).__name__}")
        return chosen

    def load_reference(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        """The denoiser alone (no second VAE or text encoders) of this pipeline or of pipeline ``source``."""
        path = resolve_model_path(source if source is not None else self.model_name_or_path)
        if self.empty_weights:
            model = empty_model(type(self.policy), path, self.denoiser_name)
        else:
            model = type(self.policy).from_pretrained(path, subfolder=self.denoiser_name, dtype=torch.float32)
        # "auto" (the checkpoint's dtype) is a transformers notion; diffusers models load in float32 here.
        return cast_to(model, self.dtype if dtype in (None, "auto") else dtype).eval().requires_grad_(False)

    def adapters_disabled(self):
        if not self.has_adapters:
            return super().adapters_disabled()
        return AdaptersOff(self.policy, self.user_adapter)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    # ---------------------------------------------------------------- inputs
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

    def sample_latents(self, mean: Tensor, std: Tensor) -> Tensor:
        """One posterior draw, scaled (and shifted) as the denoiser expects; the draw is the one
        ``latent_dist.sample`` makes with this step's generator, cached moments or not."""
        vae = self.frozen["vae"]
        noise = torch.randn(mean.shape, generator=self._generator(-1), dtype=mean.dtype).to(mean.device)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((mean + std * noise - shift) * vae.config.scaling_factor).float()

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Latents of preprocessed ``[N, 3, R, R]`` pixels (the uncached path)."""
        return self.sample_latents(*self.latent_moments(pixels.to(self.device)))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        return self.family.encode(self.pipe, prompts, self.device)

    def prompt_embeddings(self, prompts: list[str]) -> dict[str, Tensor]:
        """``encode_prompts``, read from the encoding cache where it holds the captions."""
        return self.encode_prompts(prompts) if self.cache is None else cached.prompt_embeddings(self, prompts)

    def _drop_prompts(self, prompts: list[str], rows: int) -> list[str]:
        """Captions replaced by "" with probability ``proportion_empty_prompts``; one draw per row, so a
        row's views (``prompts`` holds K views of B rows, view-major) drop together."""
        if self.proportion_empty_prompts <= 0:
            return list(prompts)
        draw_ = torch.rand(rows, generator=self._generator(-2)).tolist()
        return ["" if draw_[i % rows] < self.proportion_empty_prompts else p for i, p in enumerate(prompts)]

    def prepare(self, views: list[ViewInputs]) -> DenoisingBatch:
        """Encode images and captions, and draw one noise and timestep per row for all its views."""
        k, b = len(views), len(views[0].prompts)
        images = [view.completions for view in views]
        if self.cache is None:
            pixels, crops, sizes = self._pixels(images)
            latents = self.encode_images(pixels)
        else:
            latents, crops, sizes = cached.latents(self, images)
        embed = self.prompt_embeddings
        if all(view.prompts == views[0].prompts for view in views):  # the usual case: encode the captions once
            embeds = embed(self._drop_prompts(views[0].prompts, b))
            cond = {key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in embeds.items()}
        else:
            cond = dict(embed(self._drop_prompts([p for view in views for p in view.prompts], b)))
        if self.family.size_conditioning:
            r = self.resolution
            cond["time_ids"] = torch.tensor([[*size, *crop, r, r] for size, crop in zip(sizes, crops)],
                                            device=self.device, dtype=torch.float32)
        if self.user_condition is not None:  # a row's views are one user's
            cond[USER_COLUMN] = user_embeddings(views[0].batch, b, self.user_condition).to(self.device).repeat(k, 1)
        timesteps, noisy, target = draw(self.noising, latents, k, self._generator(-3))
        self.draws += 1
        return DenoisingBatch(noisy, target, timesteps, cond)

    # ---------------------------------------------------------------- scoring
    def score(self, prepared: DenoisingBatch, model: nn.Module | None = None) -> SequenceScores:
        """``-0.5 * mean((prediction - target)**2)`` per image. Its length is 1: the score is already the mean
        over the latent elements, so what objectives divide by length (an SFT term per scored unit) is the
        score itself; the count of elements averaged is ``denoising_score``'s second value."""
        model = model if model is not None else self.policy
        dtype = compute_dtype(model)
        if self.user_adapter is not None and model is self.policy and USER_COLUMN in prepared.cond:
            # The user tokens, computed with grad, go to the policy alone: a reference copy is the base, without users.
            prepared = replace(prepared, cond={**prepared.cond, TOKENS_KWARG: self.user_adapter.tokens(prepared.cond[USER_COLUMN])})
        pred = self.family.forward(model, prepared, dtype, self.guidance_scale, self.pipe.vae_scale_factor)
        score, _ = denoising_score(pred, prepared.target, prepared.mask)
        return SequenceScores(score, torch.ones_like(score))

    # ---------------------------------------------------------------- sampling and export
    @torch.no_grad()
    def generate(self, prompts: list[str], model: nn.Module | None = None, seed: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 output_type: str = "pil", user_embedding: list | None = None, without_user: bool = False,
                 **kwargs) -> list:
        """One image per prompt from the policy (or ``model``), sampled from ``seed`` (0 when None). The
        denoiser and the VAE each compute in their own weights' dtype, so a bfloat16 denoiser samples beside
        float32 text encoders outside the Trainer's autocast. ``user_embedding`` (one per prompt, a model with a
        user condition only) steers each image to its user; the policy of a model with a user condition refuses a
        call without it, unless ``without_user`` asks for the user branch silent (no user: the images of the
        denoiser alone). A reference given as ``model`` generates as it is (a reference has no user branch)."""
        pipe = self.pipe
        if without_user and user_embedding is not None:
            raise ValueError(f"generate: without_user and a {USER_COLUMN!r} were both given; give one of them")
        own = model is None or model is self.policy
        if user_embedding is None and not without_user and self.user_adapter is not None and own:
            raise ValueError(f"this model has a user condition (backbone.user_condition) and generate was given no"
                             f" {USER_COLUMN!r}: give one per prompt (the prompts' {USER_COLUMN!r} column), or"
                             " without_user: true to generate with the user branch silent")
        if user_embedding is not None:
            kwargs["cross_attention_kwargs"] = {**kwargs.get("cross_attention_kwargs", {}),
                                                TOKENS_KWARG: self._generation_tokens(user_embedding, len(prompts))}
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
                "generator": torch.Generator().manual_seed(0 if seed is None else seed), **kwargs,
            }
            with in_own_dtype(denoiser, "forward"), in_own_dtype(pipe.vae, "decode", cast_inputs=True):
                out = pipe(list(prompts), **call)
        finally:
            setattr(pipe, self.denoiser_name, saved)
            denoiser.train(was_training)
        return list(out.images)

    def _generation_tokens(self, embeddings: list, rows: int):
        if self.user_adapter is None:
            raise ValueError(f"a user_embedding was given to generate, and this model has no user condition (it was"
                             f" trained without backbone.user_condition): leave the {USER_COLUMN!r} column out")
        missing = [i for i, e in enumerate(embeddings) if e is None]
        if missing:
            raise ValueError(f"rows {missing[:10]} of this generation have no {USER_COLUMN!r} while others have one:"
                             " give every row its user's embedding, or none")
        return self.user_adapter.tokens(user_embeddings({USER_COLUMN: embeddings}, rows, self.user_condition))

    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        """A pipeline folder ``DiffusionPipeline.from_pretrained`` loads, or the LoRA weights alone, with
        the adapter's config (rank, alpha, targets) so that ``load_lora_weights`` scales it as trained."""
        denoiser = self.policy
        if self.user_adapter is not None:  # beside the pipeline (or the LoRA weights): a load of the folder finds it
            self.user_adapter.save(path)
        if self.has_adapters and not merge_adapters:
            from peft.utils import get_peft_model_state_dict

            name = self.denoiser_name
            type(self.pipe).save_lora_weights(path, **{
                f"{name}_lora_layers": get_peft_model_state_dict(denoiser),
                f"{name}_lora_adapter_metadata": denoiser.peft_config["default"].to_dict(),
            })
            return
        if self.has_adapters:
            denoiser = copy.deepcopy(denoiser)
            denoiser.fuse_lora()
            denoiser.unload_lora()
        save_pipeline(self.pipe, path, **{self.denoiser_name: denoiser})

    @torch.no_grad()
    def warm_cache(self, data, strategy=None) -> None:
        """The one encoding pass over ``data`` before fit (see :mod:`alignsuite.backbones.text_to_image_cache`)."""
        cached.warm(self, data, strategy)
