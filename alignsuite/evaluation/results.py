"""What an evaluation produces: per-prompt outputs of the base and the aligned model, and per scorer the
per-prompt scores of both, their means and the aligned-over-base win rate with its confidence interval.

This is the contract between ``evaluate`` (which fills it) and the report (which draws it); ``results.json`` holds it
(:func:`write_results`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# Where ``evaluate`` writes by default, beside the aligned model's run, and its numbers' file there.
EVAL_FOLDER, RESULTS_FILE = "eval", "results.json"


@dataclass
class ScorerResult:
    """One scorer's numbers, in the unit papers report (PickScore x100, aesthetic 1-10 ...).

    ``base[i]`` and ``aligned[i]`` score prompt ``i`` (``None`` where its generation failed or the scorer
    could not score it; such prompts are left out of the means and the win rate). ``higher_is_better`` is
    False for error rates (WER, CER), for which a win is a lower score.

    A scorer of held-out preference pairs rather than of generations (``per="pair"``,
    :class:`~alignsuite.evaluation.heldout.ImplicitRewardAccuracy`) holds one entry per pair: ``aligned`` its
    outcome (1, 0 or 1/2), ``base`` the base model's 1/2 (its own reference, by construction). Its number is the
    accuracy ``mean_aligned`` with its interval in ``ci_low`` and ``ci_high``; it has no ``win_rate``.
    """

    name: str
    unit: str
    base: list[float | None]
    aligned: list[float | None]
    higher_is_better: bool = True
    mean_base: float | None = None
    mean_aligned: float | None = None
    win_rate: float | None = None  # aligned over base, ties counted as half
    ci_low: float | None = None  # 95% bootstrap interval over prompts
    ci_high: float | None = None
    # What one entry of base/aligned scores: "prompt" (a generation) or "pair" (a held-out preference pair).
    per: str = "prompt"


@dataclass
class EvalResults:
    """Everything an evaluation measured.

    ``modality`` is the backbone's (``text``, ``vision_language``, ``text_to_image``). ``prompts`` are the
    prompts as generated from (text, or chat messages); ``conditions`` their images for vision-language
    models (one list per prompt), else ``None``. ``base_outputs`` / ``aligned_outputs`` are the generations
    (text, or PIL images), ``None`` where generation failed. ``failures`` counts failed generations per
    model; ``details`` holds anything else worth printing (model paths, seeds, prompt file).
    """

    modality: str
    prompts: list[Any]
    base_outputs: list[Any]
    aligned_outputs: list[Any]
    scores: list[ScorerResult] = field(default_factory=list)
    conditions: list[list[Any]] | None = None
    failures: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    heard: dict[str, list] = field(default_factory=dict)  # "base" / "aligned": the first outputs as audio (speech)


def jsonable(value, output_dir: str, name: str):
    """Text as it is; an image as a PNG file under ``output_dir/images``, referenced by its relative path; an
    integer tensor or array (speech codes) as nested lists; a float one (a mel spectrogram) as a ``.npy`` file
    under ``output_dir/arrays``, referenced by its relative path."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "detach") or hasattr(value, "dtype"):  # a torch tensor or a NumPy array
        import numpy as np

        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if array.ndim and array.dtype.kind in "iub":
            return array.tolist()
        if array.ndim:
            rel = os.path.join("arrays", f"{name}.npy")
            os.makedirs(os.path.join(output_dir, "arrays"), exist_ok=True)
            np.save(os.path.join(output_dir, rel), array)
            return rel
        return array.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v, output_dir, f"{name}_{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: jsonable(v, output_dir, f"{name}_{k}") for k, v in value.items()}
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        rel = os.path.join("images", f"{name}.png")
        os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
        value.save(os.path.join(output_dir, rel))
        return rel
    return repr(value)


def write_results(results: EvalResults, output_dir: str) -> str:
    """``results.json``: the details, failures, every scorer's numbers and per-prompt scores, and the prompts
    and outputs (images as PNG files beside it)."""
    os.makedirs(output_dir, exist_ok=True)
    data = {
        "modality": results.modality,
        "details": jsonable(results.details, output_dir, "details"),
        "failures": results.failures,
        "scores": [vars(s) for s in results.scores],
        "prompts": jsonable(results.prompts, output_dir, "prompt"),
        "conditions": jsonable(results.conditions, output_dir, "condition"),
        "base_outputs": jsonable(results.base_outputs, output_dir, "base"),
        "aligned_outputs": jsonable(results.aligned_outputs, output_dir, "aligned"),
    }
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return path


__all__ = ["EvalResults", "ScorerResult", "jsonable", "write_results"]
