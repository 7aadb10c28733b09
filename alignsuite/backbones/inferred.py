"""Which backbone trains a model, read from the files it was saved with: the default of ``model.backbone`` when a
run names only the model (``--model.backbone.model_name_or_path M``).

A diffusers pipeline folder has a ``model_index.json``; the flow-matching TTS model's ``config.json`` names its
class; a transformers model's ``config.json`` names its ``model_type``, which transformers' own tables place
among the causal LMs or the image-text-to-text models (or, for its ``trust_remote_code`` models, its
``auto_map``). A model both tables hold, or neither, is not guessed: the error lists the backbones to choose from.
"""

from __future__ import annotations

import json
import os

from alignsuite.sources import resolve_model_path

# The backbones a run chooses from, by the name ``--model.backbone`` takes, and what each trains.
BACKBONES: dict[str, str] = {
    "CausalLM": "a transformers causal LM, on text",
    "VisionLanguage": "a transformers vision-language model, on images and text",
    "TextToImage": "a diffusers text-to-image pipeline",
    "SpeechTokenLM": "a causal LM whose vocabulary holds speech-codec tokens",
    "FlowMatchingTTS": "a flow-matching text-to-speech model (F5-TTS style)",
}
CAUSAL_LM_CLASSES = ("AutoModelForCausalLM",)  # auto_map keys of a trust_remote_code model
VISION_LANGUAGE_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")


class BackboneChoiceError(ValueError):
    """The model's files do not say which backbone trains it."""


def infer_backbone(name_or_path: str) -> str:
    """The class path of the backbone for the model at ``name_or_path`` (a folder, a hub id or ``toy:<world>``)."""
    path = resolve_model_path(name_or_path)
    if model_file(path, "model_index.json") is not None:
        return "alignsuite.backbones.TextToImage"
    config_path = model_file(path, "config.json")
    if config_path is None:
        raise BackboneChoiceError(f"{name_or_path}: found neither a config.json nor a model_index.json to tell its kind"
                                  f" (offline, a hub model must be in the hub's cache). {choices()}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("_class_name") == "FlowTTSModel":
        return "alignsuite.backbones.FlowMatchingTTS"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type, auto_map = config.get("model_type"), config.get("auto_map") or {}
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or any(k in auto_map for k in CAUSAL_LM_CLASSES)
    vision = (model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
              or any(k in auto_map for k in VISION_LANGUAGE_CLASSES))
    if causal != vision:
        return "alignsuite.backbones.CausalLM" if causal else "alignsuite.backbones.VisionLanguage"
    what = ("both a causal LM and a vision-language model to transformers" if causal
            else "neither a causal LM nor a vision-language model to transformers")
    raise BackboneChoiceError(f"{name_or_path}: its config.json (model_type {model_type!r}) is {what}. {choices()}")


def choices() -> str:
    listed = "; ".join(f"--model.backbone {name} ({what})" for name, what in BACKBONES.items())
    return f"Choose its backbone: {listed}"


def model_file(path: str, name: str) -> str | None:
    """``name`` in the model's local folder, or fetched from the hub (its cache when offline); None when absent."""
    if os.path.isdir(path):
        found = os.path.join(path, name)
        return found if os.path.isfile(found) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(path, name)
    except EntryNotFoundError:  # not in the repository, or offline and not in the cache
        return None
    except (OSError, ValueError) as error:  # no such repository, no network and not cached, a gated model
        raise BackboneChoiceError(f"{path}: cannot read its {name} to tell its kind ({error}). {choices()}") from error


__all__ = ["BACKBONES", "BackboneChoiceError", "infer_backbone"]
