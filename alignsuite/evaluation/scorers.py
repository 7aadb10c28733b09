"""Scorers: what an evaluation measures each generation with, one small class each behind one interface.

A scorer turns prompts and the outputs generated for them into one number per prompt, in the unit papers
report (PickScore x100, HPSv2 x100, aesthetic 1-10, WER as a fraction). Weights load from a local path
or a hub id on first use; a local path that is not there is refused at construction, naming it and where
the weights come from. ``modalities`` lists the backbones' modalities a scorer fits (``text``,
``vision_language``, ``text_to_image``, ``text_to_speech``); ``evaluate`` refuses the others at start.

A user adds their own by subclassing :class:`Scorer` and naming it by ``class_path`` in ``evaluate.scorers``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from alignsuite.components import default_device, import_object
from alignsuite.data.messages import prompt_text

Score = float | None


class Scorer:
    """One number per (prompt, output): ``score(prompts, outputs, conditions, rows) -> list[float | None]``.

    ``prompts`` are the prompts as generated from (text, or chat messages), ``outputs`` the generations
    (text or PIL images), ``conditions`` their input images for vision-language models (one list per
    prompt) and ``rows`` the prompt set's full rows (dicts; columns a scorer may need, such as a reference
    transcript). ``None`` in ``outputs`` (a failed generation) scores ``None``.
    """

    name: str = "score"
    unit: str = ""
    higher_is_better: bool = True
    modalities: tuple[str, ...] = ()
    batch_size: int = 16

    def check_modality(self, modality: str) -> None:
        if self.modalities and modality not in self.modalities:
            raise ValueError(
                f"scorer {self.name!r} ({type(self).__name__}) scores {', '.join(self.modalities)} outputs, not"
                f" {modality}; remove it from evaluate.scorers"
            )

    def score(self, prompts: Sequence[Any], outputs: Sequence[Any], conditions: Sequence[Any] | None = None,
              rows: Sequence[dict] | None = None) -> list[Score]:
        """Scores of the outputs that exist, batched; ``None`` for the missing ones."""
        keep = [i for i, out in enumerate(outputs) if out is not None]
        scores: list[Score] = [None] * len(outputs)
        for start in range(0, len(keep), self.batch_size):
            idx = keep[start : start + self.batch_size]
            batch = self.score_batch(
                [prompts[i] for i in idx], [outputs[i] for i in idx],
                None if conditions is None else [conditions[i] for i in idx],
                None if rows is None else [rows[i] for i in idx],
            )
            for i, value in zip(idx, batch):
                scores[i] = None if value is None else float(value)
        return scores

    def score_batch(self, prompts: list, outputs: list, conditions: list | None, rows: list | None) -> list[Score]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ helpers
class MissingWeightsError(FileNotFoundError, ValueError):
    """A scorer's weights are not where the config says (a ValueError too: the CLI reports it in one line)."""


def check_weights(path: str | None, what: str, how: str) -> None:
    """A local path that does not exist is refused now, naming it and how to get the weights (a hub id is
    left to the loader)."""
    if path is None:
        raise MissingWeightsError(f"{what}: give the weights' path ({how})")
    looks_local = path.startswith((".", "/", "~")) or path.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise MissingWeightsError(f"{what}: weights not found at {path!r}; {how}")


def as_rgb(image) -> Any:
    """A PIL RGB image from a PIL image, an ``[H, W, 3]`` array or a ``[3, H, W]`` tensor in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def load_pretrained(loader, path: str, what: str, how: str, **kwargs):
    """``loader.from_pretrained(path)``; a folder that is not there and no hub id that loads is named with how
    to get the weights."""
    try:
        return loader.from_pretrained(os.path.expanduser(path), **kwargs)
    except OSError as error:
        raise MissingWeightsError(f"{what}: cannot load {path!r}, neither a local folder nor a hub id that loads"
                                  f" here ({error}); {how}") from error


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------ images
class ClipScore(Scorer):
    """CLIP score (Hessel et al. 2021, as ``torchmetrics.multimodal.CLIPScore``): ``100 * max(cos(text, image), 0)``.

    Args:
        model_name_or_path: a transformers CLIP folder (``save_pretrained``) or hub id
            (``openai/clip-vit-large-patch14``, torchmetrics' default).
        device: where to score (the GPU when there is one).
    """

    name, unit, modalities = "clip_score", "x100", ("text_to_image",)

    def __init__(self, model_name_or_path: str = "openai/clip-vit-large-patch14", device: str | None = None,
                 batch_size: int = 16) -> None:
        check_weights(model_name_or_path, "ClipScore", CLIP_HOW)
        self.model_name_or_path, self.device, self.batch_size = model_name_or_path, default_device(device), batch_size
        self.metric = None

    def load(self):
        if self.metric is None:
            from torchmetrics.multimodal import CLIPScore
            from transformers import CLIPModel, CLIPProcessor

            class FeaturesCLIP(CLIPModel):
                """torchmetrics 1.9 takes ``get_*_features`` as tensors; transformers 5 returns model outputs."""

                def get_image_features(self, *args, **kwargs):
                    return PickScore._features(super().get_image_features(*args, **kwargs))

                def get_text_features(self, *args, **kwargs):
                    return PickScore._features(super().get_text_features(*args, **kwargs))

            path = os.path.expanduser(self.model_name_or_path)
            # torchmetrics takes only its listed hub ids by name; any other folder through a loader.
            self.metric = CLIPScore(model_name_or_path=lambda: (
                load_pretrained(FeaturesCLIP, path, "ClipScore", CLIP_HOW).eval(),
                load_pretrained(CLIPProcessor, path, "ClipScore", CLIP_HOW)))
            self.metric.model.to(self.device)
        return self.metric

    @torch.no_grad()
    def score_batch(self, prompts, outputs, conditions, rows):
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        metric = self.load()
        images = [torch.from_numpy(np.array(as_rgb(o))).permute(2, 0, 1).to(self.device) for o in outputs]
        # Per image: the metric's own update, before it averages (CLIPScore.compute also clamps at 0).
        scores, _ = _clip_score_update(images, [prompt_text(p) for p in prompts], metric.model, metric.processor)
        return scores.clamp(min=0).tolist()


PICKSCORE_HOW = ("download it with `huggingface-cli download yuvalkirstain/PickScore_v1 --local-dir <folder>` (and its"
                 " processor, laion/CLIP-ViT-H-14-laion2B-s32B-b79K) and give the folders")
CLIP_HOW = ("download a CLIP model with `huggingface-cli download openai/clip-vit-large-patch14 --local-dir <folder>`"
            " and give that folder")


class PickScore(Scorer):
    """PickScore (Kirstain et al. 2023): ``exp(logit_scale) * cos(text, image)`` of a CLIP model fine-tuned on
    Pick-a-Pic, through transformers. PickScore's ``exp(logit_scale)`` is 100, so this is the x100 unit papers
    report (about 21-23 for SDXL).

    Args:
        model_name_or_path: the PickScore CLIP (``yuvalkirstain/PickScore_v1``) as a folder or hub id.
        processor_name_or_path: its processor (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``); the model's when None.
    """

    name, unit, modalities = "pickscore", "x100", ("text_to_image",)

    def __init__(self, model_name_or_path: str = "yuvalkirstain/PickScore_v1",
                 processor_name_or_path: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device: str | None = None,
                 batch_size: int = 16) -> None:
        check_weights(model_name_or_path, "PickScore", PICKSCORE_HOW)
        check_weights(processor_name_or_path or model_name_or_path, "PickScore processor", PICKSCORE_HOW)
        self.model_name_or_path = model_name_or_path
        self.processor_name_or_path = processor_name_or_path or model_name_or_path
        self.device, self.batch_size = default_device(device), batch_size
        self.model = self.processor = None

    def load(self):
        if self.model is None:
            from transformers import AutoProcessor, CLIPModel

            self.model = load_pretrained(CLIPModel, self.model_name_or_path, "PickScore", PICKSCORE_HOW).eval().to(self.device)
            self.processor = load_pretrained(AutoProcessor, self.processor_name_or_path, "PickScore processor", PICKSCORE_HOW)
        return self.model, self.processor

    @staticmethod
    def _features(output) -> torch.Tensor:  # transformers 5 returns a model output where 4 returned a tensor
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def score_batch(self, prompts, outputs, conditions, rows):
        model, processor = self.load()
        images = processor(images=[as_rgb(o) for o in outputs], return_tensors="pt").to(self.device)
        texts = processor(text=[prompt_text(p) for p in prompts], padding=True, truncation=True,
                          max_length=77, return_tensors="pt").to(self.device)
        image = _normalise(self._features(model.get_image_features(**images)))
        text = _normalise(self._features(model.get_text_features(**texts)))
        return (model.logit_scale.exp() * (image * text).sum(-1)).float().tolist()


def _open_clip(model_name: str, checkpoint: str | None, model_config: dict | None):
    """An open_clip model, its image transform and tokenizer: architecture ``model_name`` (a built-in config,
    or ``model_config``, a config dict registered under that name), weights from ``checkpoint`` (a state
    dict, or a dict holding one under ``state_dict``, as HPSv2's)."""
    import json
    import tempfile

    import open_clip

    if model_config is not None:  # open_clip reads configs from files: register this one from a file
        folder = tempfile.mkdtemp(prefix="open_clip_config_")
        with open(os.path.join(folder, f"{model_name}.json"), "w") as f:
            json.dump(model_config, f)
        open_clip.add_model_config(folder)
    model = open_clip.create_model(model_name, pretrained=None, load_weights=False)
    if checkpoint is not None:
        state = torch.load(os.path.expanduser(checkpoint), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model.load_state_dict(state)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                           mean=getattr(model.visual, "image_mean", None),
                                           std=getattr(model.visual, "image_std", None))
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


class HPSv2(Scorer):
    """Human Preference Score v2 (Wu et al. 2023): ``100 * cos(text, image)`` of an open_clip ViT-H-14
    fine-tuned on HPD v2 (the official ``hps_score`` is the cosine; papers report it x100, about 27-29).

    Args:
        checkpoint: ``HPS_v2.1_compressed.pt`` (or v2.0), from ``huggingface-cli download xswu/HPSv2``.
        model_name: the open_clip architecture (``ViT-H-14``).
        model_config: an open_clip model config dict registered as ``model_name`` (for architectures open_clip
            does not ship; tests build a tiny one).
    """

    name, unit, modalities = "hpsv2", "x100", ("text_to_image",)

    def __init__(self, checkpoint: str | None = None, model_name: str = "ViT-H-14", model_config: dict | None = None,
                 device: str | None = None, batch_size: int = 16) -> None:
        check_weights(checkpoint, "HPSv2", "download HPS_v2.1_compressed.pt with `huggingface-cli download xswu/HPSv2"
                      " HPS_v2.1_compressed.pt --local-dir <folder>` and give evaluate.scorers' checkpoint")
        self.checkpoint, self.model_name, self.model_config = checkpoint, model_name, model_config
        self.device, self.batch_size = default_device(device), batch_size
        self.parts = None

    def load(self):
        if self.parts is None:
            model, preprocess, tokenizer = _open_clip(self.model_name, self.checkpoint, self.model_config)
            self.parts = model.to(self.device), preprocess, tokenizer
        return self.parts

    @torch.no_grad()
    def score_batch(self, prompts, outputs, conditions, rows):
        model, preprocess, tokenizer = self.load()
        images = torch.stack([preprocess(as_rgb(o)) for o in outputs]).to(self.device)
        image = _normalise(model.encode_image(images))
        text = _normalise(model.encode_text(tokenizer([prompt_text(p) for p in prompts]).to(self.device)))
        return (100 * (image * text).sum(-1)).float().tolist()


class AestheticMLP(nn.Module):
    """The LAION improved aesthetic predictor's head (``sac+logos+ava1-l14-linearMSE.pth``): an MLP from a
    normalised CLIP ViT-L/14 image embedding (768) to a 1-10 rating. Dropouts as in the original, so the
    state dict's keys (``layers.0`` ... ``layers.7``) load as they are."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2), nn.Linear(128, 64),
            nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Aesthetic(Scorer):
    """LAION aesthetic score (Schuhmann 2022; the "improved aesthetic predictor"), 1-10: an MLP on the
    L2-normalised open_clip ViT-L-14 (OpenAI) image embedding.

    Args:
        head: the MLP's state dict (``sac+logos+ava1-l14-linearMSE.pth``, from
            github.com/christophschuhmann/improved-aesthetic-predictor).
        clip_checkpoint: the CLIP ViT-L/14 weights for open_clip (``open_clip_pytorch_model.bin`` of
            ``timm/vit_large_patch14_clip_224.openai``).
        model_name, model_config: the open_clip architecture, as for :class:`HPSv2`.
    """

    name, unit, modalities = "aesthetic", "1-10", ("text_to_image",)

    def __init__(self, head: str | None = None, clip_checkpoint: str | None = None, model_name: str = "ViT-L-14",
                 model_config: dict | None = None, device: str | None = None, batch_size: int = 16) -> None:
        check_weights(head, "Aesthetic", "download sac+logos+ava1-l14-linearMSE.pth from"
                      " github.com/christophschuhmann/improved-aesthetic-predictor and give evaluate.scorers' head")
        check_weights(clip_checkpoint, "Aesthetic CLIP", "download open_clip_pytorch_model.bin with `huggingface-cli"
                      " download timm/vit_large_patch14_clip_224.openai --local-dir <folder>` and give clip_checkpoint")
        self.head_path, self.clip_checkpoint = head, clip_checkpoint
        self.model_name, self.model_config = model_name, model_config
        self.device, self.batch_size = default_device(device), batch_size
        self.parts = None

    def load(self):
        if self.parts is None:
            model, preprocess, _ = _open_clip(self.model_name, self.clip_checkpoint, self.model_config)
            state = torch.load(os.path.expanduser(self.head_path), map_location="cpu", weights_only=True)
            head = AestheticMLP(state["layers.0.weight"].shape[1])
            head.load_state_dict(state)
            self.parts = model.to(self.device), preprocess, head.eval().to(self.device)
        return self.parts

    @torch.no_grad()
    def score_batch(self, prompts, outputs, conditions, rows):
        model, preprocess, head = self.load()
        images = torch.stack([preprocess(as_rgb(o)) for o in outputs]).to(self.device)
        return head(_normalise(model.encode_image(images)).float()).squeeze(-1).tolist()


# ------------------------------------------------------------------------------------------ speech and text
class WER(Scorer):
    """Word error rate of a transcript against the prompt's text (``torchmetrics.text``), a fraction; lower
    is better. For speech, ``transcribe`` (an ASR: a callable, or the import path of one, taking the outputs
    and returning their transcripts) runs first; without it the outputs are taken as the transcripts.

    Args:
        transcribe: ``audio outputs -> transcripts``; ``None`` when the outputs are text already.
        reference_column: the prompt set's column holding the reference text (the prompt itself when absent).
    """

    name, unit, higher_is_better, modalities = "wer", "fraction", False, ("text_to_speech", "text")

    def __init__(self, transcribe: str | Callable | None = None, reference_column: str = "reference",
                 batch_size: int = 16) -> None:
        self.transcribe = import_object(transcribe) if isinstance(transcribe, str) else transcribe
        self.reference_column, self.batch_size = reference_column, batch_size

    @staticmethod
    def rate(pred: str, target: str) -> float:
        from torchmetrics.functional.text import word_error_rate

        return float(word_error_rate(pred, target))

    def score_batch(self, prompts, outputs, conditions, rows):
        transcripts = list(self.transcribe(outputs)) if self.transcribe is not None else outputs
        targets = [(row or {}).get(self.reference_column) or prompt_text(p)
                   for p, row in zip(prompts, rows or [None] * len(prompts))]
        return [self.rate(str(t), str(r)) for t, r in zip(transcripts, targets)]


class CER(WER):
    """Character error rate, as :class:`WER` with characters for words."""

    name = "cer"

    @staticmethod
    def rate(pred: str, target: str) -> float:
        from torchmetrics.functional.text import char_error_rate

        return float(char_error_rate(pred, target))


class RewardModel(Scorer):
    """A sequence-classification reward model (``AutoModelForSequenceClassification``, one logit) on the
    prompt and answer: as a chat (user prompt, assistant answer) through the tokenizer's chat template when
    it has one, else ``prompt + "\\n" + answer``. The unit is the model's own.

    Args:
        model_name_or_path: a reward model folder or hub id (``Skywork/Skywork-Reward-Llama-3.1-8B-v0.2`` ...).
        max_length: longer inputs are truncated.
    """

    name, unit, modalities = "reward_model", "logit", ("text", "vision_language")

    def __init__(self, model_name_or_path: str, max_length: int = 2048, dtype: str = "auto",
                 device: str | None = None, batch_size: int = 8) -> None:
        check_weights(model_name_or_path, "RewardModel", "give a folder written by save_pretrained, or a hub id")
        self.model_name_or_path, self.max_length, self.dtype = model_name_or_path, max_length, dtype
        self.device, self.batch_size = default_device(device), batch_size
        self.model = self.tokenizer = None

    def load(self):
        if self.model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path, how = self.model_name_or_path, "give a folder written by save_pretrained, or a hub id"
            model = load_pretrained(AutoModelForSequenceClassification, path, "RewardModel", how, dtype=self.dtype)
            self.model = model.eval().to(self.device)
            self.tokenizer = load_pretrained(AutoTokenizer, path, "RewardModel tokenizer", how)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        return self.model, self.tokenizer

    def texts(self, prompts, outputs) -> list[str]:
        _, tok = self.load()
        if tok.chat_template:
            return [tok.apply_chat_template([{"role": "user", "content": prompt_text(p)},
                                             {"role": "assistant", "content": o}], tokenize=False)
                    for p, o in zip(prompts, outputs)]
        return [f"{prompt_text(p)}\n{o}" for p, o in zip(prompts, outputs)]

    @torch.no_grad()
    def score_batch(self, prompts, outputs, conditions, rows):
        model, tok = self.load()
        enc = tok(self.texts(prompts, outputs), return_tensors="pt", padding=True, truncation=True,
                  max_length=self.max_length, add_special_tokens=not tok.chat_template).to(self.device)
        return model(**enc).logits[:, 0].float().tolist()


# ------------------------------------------------------------------------------------------ the toy worlds
class ToyReward(Scorer):
    """A toy world's programmatic reward (``alignsuite.toy.get_world(world).reward``), in [0, 1]: so
    ``evaluate`` runs on every toy recipe with no download. The vision-language world scores against the
    prompt set's row (its ``answer``), which the toy prompts hold.

    Args:
        world: ``llm``, ``diffusion`` or ``vlm``.
    """

    unit = "reward"
    WORLD_MODALITY = {"llm": "text", "diffusion": "text_to_image", "vlm": "vision_language"}

    def __init__(self, world: str = "llm") -> None:
        from alignsuite.toy import get_world

        self.world_name, self.world = world, get_world(world)
        self.name = f"toy_reward_{world}"
        self.modalities = (self.WORLD_MODALITY[world],)
        self.batch_size = 256

    def score_batch(self, prompts, outputs, conditions, rows):
        if self.world_name == "vlm":
            if rows is None or any("answer" not in (r or {}) for r in rows):
                raise ValueError("ToyReward(vlm) scores against the toy world's items: use evaluate.prompts toy:vlm")
            return [self.world.reward(row, out) for row, out in zip(rows, outputs)]
        return [self.world.reward(prompt_text(p), out) for p, out in zip(prompts, outputs)]


# ------------------------------------------------------------------------------------------ held-out pairs
class ImplicitRewardAccuracy(Scorer):
    """Held-out preference accuracy of the implicit reward ``r = log pi/pi_ref`` (Rafailov et al. 2023): per
    pair, 1 when ``r(chosen) > r(rejected)``, 0 when below, 1/2 on a tie (as ``rewards/accuracy`` in
    training). Any backbone: the module's ``compute_scores`` (the backbone's own prepare and score, one draw
    of noise and timestep shared by policy and reference for denoising backbones) with the aligned model as
    policy and the base as a frozen reference. It scores preference pairs, not generations: ``evaluate``
    runs it on the recipe's data (its validation split) through :meth:`measure`. The base model, its own
    reference, has every margin zero: 1/2 per pair.

    Args:
        max_pairs: score at most this many held-out pairs (all when None).
    """

    name, unit = "implicit_reward_accuracy", "fraction of pairs"
    needs_pairs = True

    def __init__(self, max_pairs: int | None = None) -> None:
        self.max_pairs = max_pairs

    def score_batch(self, prompts, outputs, conditions, rows):
        raise ValueError("ImplicitRewardAccuracy scores preference pairs, not generations: call measure()")

    @torch.no_grad()
    def measure(self, backbone, base_model_name_or_path: str, dataloader) -> list[float]:
        """Per held-out pair: 1, 0 or 1/2 for ``backbone``'s policy over a frozen copy of the base."""
        from alignsuite.module import PreferenceModule
        from alignsuite.objectives import get_objective
        from alignsuite.reference import FrozenCopy

        module = PreferenceModule(backbone, get_objective("dpo"), FrozenCopy(base_model_name_or_path))
        module.reference.build(backbone)
        won: list[float] = []
        try:
            for batch in dataloader:
                scores = module.compute_scores(batch, "val")
                margin = (scores.chosen - scores.ref_chosen) - (scores.rejected - scores.ref_rejected)
                won += ((margin > 0).float() + 0.5 * (margin == 0).float()).tolist()
                if self.max_pairs is not None and len(won) >= self.max_pairs:
                    return won[: self.max_pairs]
        finally:
            module.reference.model = None  # the base copy's memory back before anything else loads
        return won


__all__ = [
    "CER", "WER", "Aesthetic", "AestheticMLP", "ClipScore", "HPSv2", "ImplicitRewardAccuracy", "MissingWeightsError",
    "PickScore", "RewardModel", "Scorer", "ToyReward", "check_weights", "prompt_text",
]
