"""Flow-matching text-to-speech (F5-TTS style): the mel-infilling backbone.

A sample is the speaker prompt's mel frames followed by the completion's, ``x0 = concat(P, C)``; the model
sees ``cond = concat(P, zeros)`` and the text ``prompt_text + " " + text`` (F5 concatenates the reference and
target transcripts), and infills the completion frames (:mod:`alignsuite.backbones.flow_tts_model`).

Score convention: ``-0.5 * mean((prediction - target)**2)`` over the completion frames only (never the
speaker prompt's, never padding: F5's own loss is on the infilled span alone), for one noise draw and one
timestep per row shared by every view of the row, by the policy and by the reference
(:mod:`alignsuite.backbones.denoising`: rectified flow ``x_s = (1 - s) x0 + s noise``, target ``noise - x0``).
So Diffusion-DPO for speech is ``dpo`` over these scores, with a diffusion-sized beta (thousands).
``length`` is the number of scored elements (frames times mel bins).

Generation integrates the ODE with Euler steps from pure noise (``s = 1``) to data (``s = 0``) on F5's
sway-sampled time grid, ``t -> t + c (cos(pi t / 2) - 1 + t)`` in F5's time ``t = 1 - s``.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from alignsuite.backbones.base import Backbone, SequenceScores, ViewInputs
from alignsuite.backbones.denoising import (
    DenoisingBatch, FlowMatching, SeededDraws, TimestepSampling, denoising_score, draw,
)
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.pipelines import AdaptersOff, cast_to, empty_model
from alignsuite.backbones.vocoding import Vocoded, is_audio
from alignsuite.lazy import optional
from alignsuite.precision import compute_dtype
from alignsuite.sources import resolve_model_path

if TYPE_CHECKING:
    from alignsuite.backbones.flow_tts_model import FlowTTSModel

Precision = Literal["float32", "bfloat16", "float16"]
# "all-linear" for this model: attention, feed-forward and the adaLN modulations of the DiT blocks.
LORA_TARGETS = ["to_qkv", "to_out", "ff.0", "ff.2", "modulation"]
WHAT = "the flow-matching TTS backbone (FlowMatchingTTS)"  # in the error when diffusers is missing


def model_module():
    """:mod:`alignsuite.backbones.flow_tts_model`, imported when a model is built or read: its model is a diffusers
    model, and diffusers comes with the ``speech`` extra."""
    with optional("speech", WHAT):
        from alignsuite.backbones import flow_tts_model
    return flow_tts_model


def sway(t: Tensor, coef: float | None) -> Tensor:
    """F5's sway sampling of the time grid (``t = 0`` noise, ``t = 1`` data): steps crowd near the noise end
    for a negative ``coef``; the end points stay."""
    return t if coef is None else t + coef * (torch.cos(math.pi / 2 * t) - 1 + t)


class FlowMatchingTTS(SeededDraws, Vocoded, Backbone):
    """A :class:`FlowTTSModel` from a ``save_pretrained`` folder, fully fine-tuned or with LoRA.

    Args:
        model_name_or_path: a folder from ``FlowTTSModel.save_pretrained``, a hub id, or ``toy:<world>``.
        dtype: the model's weights at load; mixed precision is the Trainer's.
        timestep_sampling: "uniform" or "logit_normal" (SD3's weighting) training timesteps.
        scheduler_config: the ``FlowMatchEulerDiscreteScheduler`` config the timesteps come from
            (default: 1000 timesteps, shift 1).
        seed: seeds the noise and timesteps, step by step (and rank by rank).
        sample_steps: Euler steps of ``generate``.
        sway_sampling_coef: F5's sway sampling coefficient (-1 in F5's inference); None for a uniform grid.
        cfg_strength: classifier-free guidance at sampling, ``v + w (v - v_uncond)`` with the unconditional
            velocity from no speaker prompt and an all-filler text (F5's); 0 turns it off. Only meaningful for
            a model trained with dropped conditions.
        frames_per_byte: the duration of a row with no speaker prompt to scale from (frames per UTF-8 byte).
        vocoder: ``"package.module.Class"`` (or ``{"class_path", "init_args"}``) turning mel frames into audio.
        lora: train a LoRA adapter (peft) on the DiT blocks instead of the full weights.
    """

    deterministic_inputs = False  # new noise and timesteps every step: reference scores cannot be stored
    modality = "text_to_speech"
    generation_columns = ("prompt_speech", "prompt_text", "num_frames")

    def __init__(
        self,
        model_name_or_path: str,
        dtype: Precision = "float32",
        timestep_sampling: TimestepSampling = "uniform",
        scheduler_config: dict | None = None,
        seed: int = 0,
        sample_steps: int = 16,
        sway_sampling_coef: float | None = -1.0,
        cfg_strength: float = 0.0,
        frames_per_byte: float | None = None,
        vocoder: str | dict | None = None,
        lora: LoraSpec | None = None,
    ) -> None:
        super().__init__()
        if sample_steps < 1:
            raise ValueError(f"backbone.sample_steps must be >= 1, got {sample_steps}")
        if frames_per_byte is not None and frames_per_byte <= 0:
            raise ValueError(f"backbone.frames_per_byte must be positive, got {frames_per_byte}")
        self.model_name_or_path, self.dtype, self.lora = model_name_or_path, dtype, lora
        self.timestep_sampling = timestep_sampling
        self.scheduler_config = dict(scheduler_config or {"num_train_timesteps": 1000, "shift": 1.0})
        with optional("speech", WHAT):  # diffusers' scheduler
            self.noising = FlowMatching(self.scheduler_config, timestep_sampling)  # checks timestep_sampling early
        self.seed, self.sample_steps, self.sway_sampling_coef = seed, sample_steps, sway_sampling_coef
        self.cfg_strength, self.frames_per_byte, self.vocoder = cfg_strength, frames_per_byte, vocoder
        self.draws = 0  # see SeededDraws
        self.rank = 0

    # ---------------------------------------------------------------- building
    def _load(self, source: str | None, dtype: str) -> FlowTTSModel:
        path = resolve_model_path(source if source is not None else self.model_name_or_path)
        model_class = model_module().FlowTTSModel
        model = empty_model(model_class, path) if self.empty_weights else model_class.from_pretrained(path)
        return cast_to(model, dtype)

    def configure(self) -> None:
        if self.policy is not None:
            return
        model = self._load(None, self.dtype)
        if self.lora is not None:
            model.requires_grad_(False)
            targets = LORA_TARGETS if self.lora.target_modules == "all-linear" else self.lora.target_modules
            spec = LoraSpec(self.lora.r, self.lora.alpha, self.lora.dropout, targets, self.lora.modules_to_save)
            model.add_adapter(spec.to_peft(None))  # in the model's dtype: the module casts what trains to float32
        self.policy = model.train()

    def on_setup(self, datamodule: Any) -> None:
        """Hand the model's mel width and sampling rate (read from its config; no weights load) to the data
        layout, whose checks of each row's frames and audio name its file, row and field."""
        config = self.config if self.policy is not None else model_module().FlowTTSModel.load_config(
            resolve_model_path(self.model_name_or_path))
        get = config.get if isinstance(config, dict) else lambda name: getattr(config, name)
        datamodule.layout.use_model(n_mels=get("n_mels"), sampling_rate=get("sampling_rate"))

    def load_reference(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        """A frozen eval copy of the starting weights, or of the folder ``source``."""
        return self._load(source, self.dtype if dtype in (None, "auto") else dtype).eval().requires_grad_(False)

    def adapters_disabled(self):
        if not self.has_adapters:
            return super().adapters_disabled()
        return AdaptersOff(self.policy)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def config(self):
        return self.policy.config

    # ---------------------------------------------------------------- inputs
    def mel(self, speech: Any, row: Any, column: str) -> Tensor:
        """``[frames, n_mels]`` float32 mel frames of one utterance: features as they are, ``Audio`` through
        :func:`mel_spectrogram`. Anything else is an error naming the row, the column and what was expected."""
        n_mels, rate = self.config.n_mels, self.config.sampling_rate
        where = f"row {row}, column {column!r}"
        if is_audio(speech):
            if speech.sampling_rate != rate:
                raise ValueError(f"{where}: audio at {speech.sampling_rate} Hz, but the model's mel front end expects"
                                 f" {rate} Hz; resample the audio to {rate} Hz")
            return model_module().mel_spectrogram(torch.as_tensor(speech.waveform).float().reshape(-1), self.config)
        if not isinstance(speech, Tensor) or not speech.is_floating_point():
            kind = f"{speech.dtype} tensor (codec tokens?)" if isinstance(speech, Tensor) else type(speech).__name__
            raise ValueError(f"{where}: expected mel features (a float tensor [frames, {n_mels}]) or Audio, got a {kind};"
                             " the flow-matching TTS backbone has no codec")
        if speech.dim() != 2 or speech.shape[1] != n_mels:
            raise ValueError(f"{where}: expected mel features of shape [frames, {n_mels}] (the model's n_mels),"
                             f" got {list(speech.shape)}")
        return speech.float()

    def _rows(self, batch: dict, b: int) -> tuple[list, list[str], list]:
        """Per row: the speaker prompt (or None), its transcript and a name for errors (the dataset row)."""
        speech = batch.get("prompt_speech") or [None] * b
        texts = batch.get("prompt_text") or [""] * b
        index = batch.get("index")
        names = index.tolist() if isinstance(index, Tensor) else list(index) if index is not None else list(range(b))
        return list(speech), [t or "" for t in texts], names

    @staticmethod
    def full_text(prompt_text: str, text: str) -> str:
        """The transcript the model reads: F5 concatenates the reference and target texts."""
        return f"{prompt_text} {text}" if prompt_text else text

    def _inputs(self, prompts: list[Tensor], completions: list[Tensor | int], texts: list[str]) -> dict[str, Tensor]:
        """Padded ``x0`` (``[N, T, n_mels]``: prompt then completion frames; zeros for an int completion, a
        frame count to generate), ``cond`` (prompt frames, zeros after), ``text``, ``frame_mask`` and the
        completion-frame ``mask``, ``[N, T, 1]``."""
        n_mels = self.config.n_mels
        spans = [(len(p), c if isinstance(c, int) else len(c)) for p, c in zip(prompts, completions)]
        t = max((p + c for p, c in spans), default=0)
        x0, cond = torch.zeros(len(spans), t, n_mels), torch.zeros(len(spans), t, n_mels)
        frame_mask, mask = torch.zeros(len(spans), t, dtype=torch.bool), torch.zeros(len(spans), t, 1)
        for i, ((p, c), prompt, completion) in enumerate(zip(spans, prompts, completions)):
            x0[i, :p], cond[i, :p] = prompt, prompt
            if not isinstance(completion, int):
                x0[i, p : p + c] = completion
            frame_mask[i, : p + c] = True
            mask[i, p : p + c] = 1.0
        frames = [p + c for p, c in spans]
        text = model_module().encode_text(texts, frames) if spans else torch.zeros(0, 0, dtype=torch.long)
        device = self.device
        return {"x0": x0.to(device), "cond": cond.to(device), "text": text.to(device),
                "frame_mask": frame_mask.to(device), "mask": mask.to(device)}

    def prepare(self, views: list[ViewInputs]) -> DenoisingBatch:
        """Mel frames of every view's rows, padded to the longest, and one noise and timestep per row."""
        k, b = len(views), len(views[0].prompts)
        speech, prompt_texts, names = self._rows(views[0].batch, b)
        prompts = [self.mel(s, names[i], "prompt_speech") if s is not None else torch.zeros(0, self.config.n_mels)
                   for i, s in enumerate(speech)]
        completions, texts = [], []
        for j, view in enumerate(views):
            column = ("chosen", "rejected")[j] if k == 2 else f"completion of view {j}"
            completions += [self.mel(c, names[i], column) for i, c in enumerate(view.completions)]
            texts += [self.full_text(prompt_texts[i], view.prompts[i]) for i in range(b)]
        inputs = self._inputs(prompts * k, completions, texts)
        timesteps, noisy, target = draw(self.noising, inputs["x0"], k, self._generator())
        self.draws += 1
        cond = {"cond": inputs["cond"], "text": inputs["text"], "frame_mask": inputs["frame_mask"]}
        return DenoisingBatch(noisy, target, timesteps, cond, inputs["mask"])

    # ---------------------------------------------------------------- scoring
    @staticmethod
    def predict(model: nn.Module, noisy: Tensor, cond: dict[str, Tensor], timesteps: Tensor) -> Tensor:
        dtype = compute_dtype(model)
        return model(noisy.to(dtype), cond["cond"].to(dtype), cond["text"], timesteps.float(), cond["frame_mask"])

    def score(self, prepared: DenoisingBatch, model: nn.Module | None = None) -> SequenceScores:
        """``-0.5 * mean((prediction - target)**2)`` over each sample's completion frames (and mel bins);
        ``length`` the number of elements averaged."""
        model = model if model is not None else self.policy
        pred = self.predict(model, prepared.noisy, prepared.cond, prepared.timesteps)
        score, length = denoising_score(pred, prepared.target, prepared.mask)
        return SequenceScores(score, length)

    # ---------------------------------------------------------------- sampling and export
    def durations(self, texts: list[str], prompts: list[Tensor], prompt_texts: list[str],
                  num_frames: list[int] | None) -> list[int]:
        """Frames to generate per row: its ``num_frames`` (``None`` for a row without), else F5's estimate (the
        prompt's frames per byte of its transcript times the text's bytes), else ``frames_per_byte`` times the
        text's bytes."""
        if num_frames is not None and len(num_frames) != len(texts):
            raise ValueError(f"num_frames has {len(num_frames)} entries for {len(texts)} prompts")
        given = list(num_frames) if num_frames is not None else [None] * len(texts)
        out = []
        for i, (text, prompt, prompt_text, n) in enumerate(zip(texts, prompts, prompt_texts, given)):
            size, ref = len(text.encode("utf-8")), len(prompt_text.encode("utf-8"))
            if n is not None:
                out.append(max(1, int(n)))
            elif len(prompt) and ref:
                out.append(max(1, round(len(prompt) / ref * size)))
            elif self.frames_per_byte is not None:
                out.append(max(1, round(self.frames_per_byte * size)))
            else:
                raise ValueError(f"prompt {i} has no speaker prompt with a transcript to scale its duration from:"
                                 " pass num_frames, or set backbone.frames_per_byte")
        return out

    def time_grid(self, steps: int) -> Tensor:
        """The sigmas of the Euler steps, from 1 (noise) down to 0 (data), sway-sampled in F5's time."""
        return 1.0 - sway(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64), self.sway_sampling_coef)

    @torch.no_grad()
    def generate(self, prompts: list[str], model: nn.Module | None = None, seed: int | None = None,
                 prompt_speech: list | None = None, prompt_text: list[str] | None = None,
                 num_frames: list[int] | None = None, steps: int | None = None, **kwargs) -> list[Tensor]:
        """One ``[frames, n_mels]`` float32 mel per text (the generated frames only, on the CPU), from the
        policy (or ``model``), integrating ``dx/ds = v`` with Euler steps ``x_{s'} = x_s + (s' - s) v`` from
        noise drawn with a private generator seeded by ``seed`` (0 when None): the global RNG is untouched."""
        n = len(prompts)
        model = model if model is not None else self.policy
        speech, texts_before = list(prompt_speech or [None] * n), [t or "" for t in (prompt_text or [""] * n)]
        mels = [self.mel(s, i, "prompt_speech") if s is not None else torch.zeros(0, self.config.n_mels)
                for i, s in enumerate(speech)]
        frames = self.durations(list(prompts), mels, texts_before, num_frames)
        inputs = self._inputs(mels, frames, [self.full_text(p, t) for p, t in zip(texts_before, prompts)])
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        x = torch.randn(inputs["x0"].shape, generator=generator).to(self.device)
        cond = {k: inputs[k] for k in ("cond", "text", "frame_mask")}
        null = {"cond": torch.zeros_like(cond["cond"]), "text": torch.zeros_like(cond["text"]),
                "frame_mask": cond["frame_mask"]}
        was_training = model.training
        model.eval()
        try:
            sigmas = self.time_grid(steps or self.sample_steps).tolist()
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                t = torch.full((n,), 1000.0 * s, device=x.device)
                v = self.predict(model, x, cond, t).float()
                if self.cfg_strength:
                    v = v + self.cfg_strength * (v - self.predict(model, x, null, t).float())
                x = x + (s_next - s) * v
        finally:
            model.train(was_training)
        return [x[i, len(p) : len(p) + f].float().cpu() for i, (p, f) in enumerate(zip(mels, frames))]

    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        """The model's ``save_pretrained`` folder (LoRA merged in), or the LoRA adapter alone, with its rank and
        alpha: ``FlowTTSModel.load_lora_adapter(path, prefix=None, weight_name="pytorch_lora_weights.safetensors")``
        reads it back onto the base weights."""
        model = self.policy
        if self.has_adapters and not merge_adapters:
            model.save_lora_adapter(path)
            return
        if self.has_adapters:
            model = copy.deepcopy(model)
            model.fuse_lora()
            model.unload_lora()
        model.save_pretrained(path)


__all__ = ["FlowMatchingTTS", "sway"]
