"""The denoising core every denoising backbone shares, whatever it denoises (image latents, mel frames).

One step of a denoising backbone, for K views of B rows (view-major, ``[K * B, ...]``):

1. one noise draw and one timestep per row, shared by all K views of that row (winner and loser), by the
   policy and by the reference (:func:`row_noise`, :meth:`Noising.timesteps`);
2. the noisy input and the regression target for the clean sample ``x0`` (:class:`DDPM`: epsilon or
   v-prediction; :class:`FlowMatching`: rectified flow);
3. the score ``-0.5 * mean((prediction - target)**2)`` over the scored elements of a sample
   (:func:`denoising_score`), a unit Gaussian's log-density up to a constant (the score
   convention of ``alignsuite.scores``), with an optional element mask (a flow-matching speech model scores only the infilled
   mel frames).

Nothing here knows pipelines, images or captions: those belong to the backbone that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

TimestepSampling = Literal["uniform", "logit_normal"]


@dataclass
class DenoisingBatch:
    """Everything a step scores, prepared once and shared by the policy and the reference.

    ``mask`` (same shape as ``target``, or broadcastable to it) marks the scored elements; ``None`` scores
    them all. ``cond`` holds the denoiser's conditioning (text embeddings ...), each ``[N, ...]``.
    """

    noisy: Tensor  # [N, ...]
    target: Tensor  # [N, ...]
    timesteps: Tensor  # [N]
    cond: dict[str, Tensor]
    mask: Tensor | None = None


def row_noise(shape: tuple[int, ...], rows: int, views: int, generator: torch.Generator, device) -> Tensor:
    """Standard normal noise ``[views * rows, *shape]``: one draw per row, repeated for each of its views."""
    noise = torch.randn((rows, *shape), generator=generator).to(device)
    return noise.repeat(views, *[1] * len(shape))


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``[N]`` values shaped to broadcast over ``like``'s ``[N, ...]`` samples."""
    return values.view(-1, *[1] * (like.dim() - 1))


class DDPM:
    """Discrete-time diffusion (Ho et al. 2020): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``, ``t ~ U{0..T-1}``.

    The target is the noise (``epsilon``) or the velocity ``sqrt(a_t) noise - sqrt(1 - a_t) x0``
    (``v_prediction``, Salimans & Ho 2022), both from diffusers' ``DDPMScheduler``.
    """

    def __init__(self, scheduler_config: dict, prediction_type: Literal["epsilon", "v_prediction"]) -> None:
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(dict(scheduler_config, prediction_type=prediction_type))
        self.prediction_type = prediction_type

    def timesteps(self, rows: int, views: int, generator: torch.Generator, device) -> Tensor:
        n = self.scheduler.config.num_train_timesteps
        return torch.randint(0, n, (rows,), generator=generator).to(device).repeat(views)

    def inputs(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """``(noisy, target)``."""
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        if self.prediction_type == "epsilon":
            return noisy, noise
        return noisy, self.scheduler.get_velocity(x0, noise, timesteps)


class FlowMatching:
    """Rectified flow (Liu et al. 2022; SD3, Esser et al. 2024): ``x_t = (1 - s) x0 + s noise``, target
    ``noise - x0``, with ``s`` the scheduler's sigma at the drawn timestep (its ``shift`` applied).

    Timesteps: ``u`` uniform, or logit-normal (``sigmoid`` of a standard normal, SD3's default weighting),
    drawn by diffusers' ``compute_density_for_timestep_sampling`` (the same numbers as
    ``sigmoid(randn)``/``rand`` from the same generator); index ``floor(u * T)`` into the scheduler's
    timesteps and sigmas, as diffusers' SD3 and Flux training scripts index them.
    """

    def __init__(self, scheduler_config: dict, timestep_sampling: TimestepSampling = "uniform") -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep_sampling must be uniform or logit_normal, got {timestep_sampling!r}")
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.timestep_sampling = timestep_sampling

    def timesteps(self, rows: int, views: int, generator: torch.Generator, device) -> Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(self.timestep_sampling, rows, logit_mean=0.0, logit_std=1.0,
                                                  generator=generator)
        schedule = self.scheduler.timesteps
        index = (u * self.scheduler.config.num_train_timesteps).long().clamp(max=len(schedule) - 1)
        return schedule[index].to(device).repeat(views)

    def sigmas(self, timesteps: Tensor) -> Tensor:
        """The sigma of each of ``timesteps``, looked up in the scheduler's own (distinct) timesteps."""
        schedule = self.scheduler.timesteps.to(timesteps.device)
        index = (schedule[None, :] == timesteps[:, None]).int().argmax(dim=1)
        return self.scheduler.sigmas.to(timesteps.device)[index]

    def inputs(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """``(noisy, target)``."""
        sigma = _per_sample(self.sigmas(timesteps).to(x0.device, x0.dtype), x0)
        return (1 - sigma) * x0 + sigma * noise, noise - x0


Noising = DDPM | FlowMatching


def draw(noising: Noising, x0: Tensor, views: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``(timesteps, noisy, target)`` for ``x0`` holding ``views`` views of its rows (view-major): one noise
    draw, then one timestep, per row, from ``generator`` in that order."""
    rows = len(x0) // views
    noise = row_noise(tuple(x0.shape[1:]), rows, views, generator, x0.device)
    timesteps = noising.timesteps(rows, views, generator, x0.device)
    noisy, target = noising.inputs(x0, noise, timesteps)
    return timesteps, noisy, target


class SeededDraws:
    """The random draws of a denoising backbone, seeded step by step and rank by rank (a mixin beside
    ``Backbone``): ``_generator(salt)`` is a fresh generator for (``seed``, ``draws``, ``rank``, ``salt``),
    ``draws`` counts the steps drawn so far and goes through checkpoints (``state``/``load_state``), so a
    resumed run draws what the uninterrupted one would have. Subclasses set ``seed`` and call ``_next_draw``
    once per prepared step."""

    seed: int = 0
    draws: int = 0  # prepare() calls so far: the step's seed offset, saved in checkpoints
    rank: int = 0  # this process's data-parallel rank: each rank draws its own noise

    def state(self) -> dict:
        return {"draws": self.draws}

    def load_state(self, state: dict) -> None:
        self.draws = state.get("draws", self.draws)

    def on_fit_start(self, trainer) -> None:
        # Every rank sees other rows but the same step count: without the rank in the seed, rank r's row i
        # would get rank 0's noise, timestep and flip for its row i. The data-parallel rank (the global one
        # under DDP) so that processes sharing a batch (tensor parallelism) keep sharing its draws.
        self.rank = (trainer.distributed_sampler_kwargs or {}).get("rank", trainer.global_rank)

    def _generator(self, salt: int = 0) -> torch.Generator:
        # Rank 0 keeps the single-process seeds.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws * 7919 + salt + self.rank * 15_485_863)


def denoising_score(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(score, length)``, each ``[N]``: ``score = -0.5 * mean((prediction - target)**2)`` over each
    sample's scored elements (all of them, or where ``mask`` is nonzero), in float32; ``length`` how many
    elements were scored. Every published Diffusion-DPO beta assumes this mean, never the sum."""
    error = (prediction.float() - target.float()).pow(2)
    dims = tuple(range(1, error.dim()))
    if mask is None:
        count = error[0].numel() if len(error) else 0
        return -0.5 * error.mean(dim=dims), torch.full((len(error),), float(count), device=error.device)
    mask = mask.to(error.dtype).expand_as(error)
    length = mask.sum(dim=dims)
    return -0.5 * (error * mask).sum(dim=dims) / length.clamp(min=1), length


__all__ = ["DDPM", "DenoisingBatch", "FlowMatching", "Noising", "SeededDraws", "TimestepSampling", "denoising_score", "draw", "row_noise"]
