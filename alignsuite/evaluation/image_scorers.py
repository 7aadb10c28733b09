"""Image scorers: what ``evaluate`` and the validation callbacks measure a text-to-image model's samples with,
one :class:`alignsuite.judging.Scorer` each, in the unit papers report (CLIP score, PickScore and HPSv2 x100,
LAION aesthetic 1-10). Weights load from a local path or a hub id on first use; a local path that is not
there is refused at construction, naming it and where the weights come from.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from alignsuite.components import default_device
from alignsuite.judging import Scorer, check_weights, load_pretrained, prompt_text
from alignsuite.lazy import optional


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


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


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

    with optional("eval", "the open_clip scorers (HPSv2, Aesthetic)"):
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


__all__ = ["Aesthetic", "AestheticMLP", "ClipScore", "HPSv2", "PickScore", "as_rgb"]
