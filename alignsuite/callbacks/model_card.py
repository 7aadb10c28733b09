"""The model card of an export: ``README.md`` in the Hugging Face format (YAML metadata, then Markdown).

It says what the folder holds and how it was made: the base model as the user named it (a local folder by its
name alone, never a path of this machine), the objective and its settings, the data, the optimizer steps, and
the headline numbers of the run's evaluation when ``evaluate`` has written one. The metadata (``base_model``,
``library_name``, ``tags``, ``datasets``) is written by ``huggingface_hub``'s own ``ModelCard``.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field

from alignsuite.evaluation.results import EVAL_FOLDER, RESULTS_FILE

CARD = "README.md"
# What the written folder holds says which library loads it.
LIBRARIES = (("model_index.json", "diffusers"), ("adapter_config.json", "peft"), ("config.json", "transformers"))


def hub_id(name: str | None) -> str | None:
    """``name`` when it is a hub repository id (``owner/name``, not a local path nor a ``scheme:`` source)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or ":" in name or name.count("/") != 1 or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def base_model_name(name: str | None) -> str | None:
    """The base model as the user gave it; a local folder or file by its own name, without the path to it."""
    if not name or hub_id(name) or not os.path.exists(name):
        return name
    return os.path.basename(os.path.normpath(name))


def objective_settings(objective) -> dict:
    """The objective's hyper-parameters by their constructor names, as the objective holds them."""
    settings = {}
    for name in inspect.signature(type(objective).__init__).parameters:
        value = getattr(objective, name, None)
        if name != "self" and isinstance(value, (bool, int, float, str)):
            settings[name] = value
    return settings


def data_sources(datamodule) -> list[str]:
    """The training (and validation) data as named in the recipe: files by their names, hub ids as they are; a
    data module without files (a toy world's) by its class."""
    if datamodule is None:
        return []
    named = []
    given = getattr(datamodule, "hparams", None) or {}
    for attribute in ("train", "val"):
        value = given.get(attribute)
        if isinstance(value, str):
            value = [value]
        named += [base_model_name(v) for v in value or [] if isinstance(v, str)]
    return named or [type(datamodule).__name__]


@dataclass
class CardFacts:
    """What the card says; every field optional."""

    base_model: str | None = None
    objective: str | None = None
    settings: dict = field(default_factory=dict)
    reference: str | None = None
    data: list[str] = field(default_factory=list)
    steps: int | None = None
    adapters: str | None = None  # "merged" or "adapter only" for a LoRA run
    results: dict | None = None  # an evaluation's results.json
    results_from: str | None = None  # which model that evaluation scored, by name


def facts_of(module, datamodule, steps: int | None, merge_adapters: bool) -> CardFacts:
    """The card's facts from the trained module and its data module."""
    backbone = module.backbone
    reference = getattr(module, "reference", None)
    return CardFacts(
        base_model=base_model_name(getattr(backbone, "model_name_or_path", None)),
        objective=getattr(module.objective, "name", type(module.objective).__name__),
        settings=objective_settings(module.objective),
        reference=type(reference).__name__ if reference is not None else None,
        data=data_sources(datamodule), steps=steps,
        adapters=("merged" if merge_adapters else "adapter only") if getattr(backbone, "has_adapters", False) else None,
    )


def find_results(folders: list[str | None]) -> tuple[dict | None, str | None]:
    """The first ``eval/results.json`` among ``folders`` (the export's and the run's), and the name of the model
    it scored."""
    for folder in folders:
        path = os.path.join(folder, EVAL_FOLDER, RESULTS_FILE) if folder else None
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    results = json.load(f)
            except (OSError, ValueError):
                continue
            aligned = (results.get("details") or {}).get("aligned")
            return results, os.path.basename(os.path.normpath(aligned)) if isinstance(aligned, str) else None
    return None, None


def _number(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def card_text(facts: CardFacts, library: str | None, repo_id: str | None, architecture: str | None = None) -> str:
    """The Markdown body under the metadata; ``architecture``: the transformers class that loads the folder."""
    base = f" from **{facts.base_model}**" if facts.base_model else ""
    lines = [f"# {repo_id or facts.base_model or 'alignsuite export'}", "",
             f"Preference-aligned{base} with **{facts.objective}** (alignsuite).",
             "", "## Training", "", "| setting | value |", "|---|---|", f"| objective | {facts.objective} |"]
    lines += [f"| {name} | {value} |" for name, value in facts.settings.items()]
    if facts.reference:
        lines.append(f"| reference | {facts.reference} |")
    lines += [f"| data | {name} |" for name in facts.data]
    if facts.steps is not None:
        lines.append(f"| optimizer steps | {facts.steps} |")
    if facts.adapters:
        lines.append(f"| LoRA adapters | {facts.adapters} |")
    scores = (facts.results or {}).get("scores") or []
    if scores:
        scored = f" of `{facts.results_from}`" if facts.results_from else ""
        lines += ["", "## Evaluation", "", f"`alignsuite evaluate`{scored} against the base model"
                  f" ({(facts.results.get('details') or {}).get('num_prompts', '?')} prompts). A win counts a tie as"
                  " one half.", "", "| scorer | unit | base | aligned | aligned wins over base |", "|---|---|---|---|---|"]
        for s in scores:
            win = "–" if s.get("win_rate") is None else f"{100 * s['win_rate']:.0f}%"
            lines.append(f"| {s.get('name')} | {s.get('unit')} | {_number(s.get('mean_base'))} |"
                         f" {_number(s.get('mean_aligned'))} | {win} |")
    model_class = architecture or "AutoModel"
    loader = {"transformers": f"from transformers import {model_class}\n\nmodel = {model_class}.from_pretrained",
              "diffusers": "from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained",
              "peft": "from peft import AutoPeftModel\n\nmodel = AutoPeftModel.from_pretrained"}.get(library or "")
    if loader:
        lines += ["", "## Use", "", "```python", f'{loader}("{repo_id or "path/to/this/folder"}")', "```"]
    return "\n".join(lines) + "\n"


def write_card(folder: str, facts: CardFacts, repo_id: str | None = None) -> str:
    """Write ``folder``/README.md; returns its path."""
    from huggingface_hub import ModelCard, ModelCardData

    library = next((name for marker, name in LIBRARIES if os.path.isfile(os.path.join(folder, marker))), None)
    datasets = [d for d in (hub_id(name) for name in facts.data) if d]
    data = ModelCardData(base_model=hub_id(facts.base_model), library_name=library,
                         tags=["alignsuite", *([facts.objective] if facts.objective else [])], datasets=datasets or None)
    architecture = None
    if library == "transformers":
        with open(os.path.join(folder, "config.json")) as f:
            architecture = (json.load(f).get("architectures") or [None])[0]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(facts, library, repo_id, architecture)}")
    path = os.path.join(folder, CARD)
    card.save(path)
    return path


def push_folder(folder: str, repo_id: str, private: bool | None = None) -> None:
    """Upload ``folder`` to the hub repository ``repo_id`` (created when missing), with ``huggingface_hub``."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload an alignsuite export")
