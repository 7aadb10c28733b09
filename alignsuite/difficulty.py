"""How hard a preference pair is for a model: its held-out DPO loss, for Selective DPO's data selection.

A scorer here is handed to `alignsuite.data.procedures.SelectiveDPO` as its ``difficulty``; the procedure
stays on the data floor and the model pass lives up here, with the backbones it loads. Its `identity` (the
models' folders, file names and sizes, the hash of their small files, and the settings) keys the stored
output, so another model recomputes it.
"""

from __future__ import annotations

import hashlib
import math
import os

import torch

from alignsuite.backbones.base import shared_prompts
from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.components import default_device
from alignsuite.data.fields import PairFields
from alignsuite.data.preference import normalize_pair
from alignsuite.sources import resolve_model_path

SMALL_FILE = 1 << 20  # files hashed whole (configs, tokenizers); larger ones (weights) by name and size


def model_identity(name_or_path: str) -> dict:
    """What identifies a model folder without reading its weights: its path, every file's name and size, and
    the hash of the small files (config, tokenizer). A hub id that is not downloaded is identified by its name."""
    path = resolve_model_path(name_or_path)
    if not os.path.isdir(path):
        return {"model": name_or_path}
    files = {}
    for root, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(root, name)
            size = os.path.getsize(full)
            if size <= SMALL_FILE:
                with open(full, "rb") as f:
                    files[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
            else:
                files[os.path.relpath(full, path)] = size
    return {"model": name_or_path, "files": dict(sorted(files.items()))}


class HeldOutDPOLoss:
    """Each pair's DPO loss under trained models, averaged over them: Selective DPO's difficulty (Gao et al.
    2025, arXiv 2502.09650).

        difficulty = mean over models m of  -log s(beta * [(l_m(y_w) - l_ref(y_w)) - (l_m(y_l) - l_ref(y_l))])

    with ``l`` the summed completion log-probs through the causal LM backbone (the suite's score convention).
    In the official code the models are DPO runs trained on the *other* half of the data (3 runs x 5
    checkpoints, each row scored only by the runs that did not see it): give here the runs that did not see
    these rows (score each half with the other half's runs, in two passes, or precompute the column and read it
    with ``difficulty_field``). Without ``reference`` the margin is the model's own, ``l_m(y_w) - l_m(y_l)`` (a
    reference-free difficulty). A row whose chosen equals its rejected gets NaN (SelectiveDPO drops it).

    Args:
        models: the trained models (folders, hub ids, or ``toy:<world>``).
        reference: the model they were trained from; null: reference-free.
        beta: the DPO beta of the loss (0.01 in the paper's runs).
        max_length, max_prompt_length: tokenisation limits, as the backbone's.
        batch_size: pairs per forward pass.
        device: where the models run (default: the first GPU, else the CPU).
        prompt_field, chosen_field, rejected_field: the pair row's fields.
    """

    def __init__(self, models: list[str] | str, reference: str | None = None, beta: float = 0.01, max_length: int = 1024,
                 max_prompt_length: int = 512, batch_size: int = 8, device: str | None = None,
                 prompt_field: str = "prompt", chosen_field: str = "chosen", rejected_field: str = "rejected") -> None:
        self.models = [models] if isinstance(models, str) else list(models)
        if not self.models:
            raise ValueError("HeldOutDPOLoss.models must name at least one model")
        self.reference, self.beta = reference, beta
        self.max_length, self.max_prompt_length, self.batch_size = max_length, max_prompt_length, batch_size
        self.device = device
        self.fields = PairFields(prompt_field, chosen_field, rejected_field)

    def identity(self) -> dict:
        return {"scorer": "HeldOutDPOLoss", "models": [model_identity(m) for m in self.models],
                "reference": None if self.reference is None else model_identity(self.reference), "beta": self.beta,
                "max_length": self.max_length, "max_prompt_length": self.max_prompt_length,
                "fields": [self.fields.prompt, self.fields.chosen, self.fields.rejected]}

    @torch.no_grad()
    def __call__(self, rows: list[dict]) -> list[float]:
        pairs = [normalize_pair(row, row.get("_row", i), row.get("_source", "rows"), self.fields) for i, row in enumerate(rows)]
        scored = [i for i, p in enumerate(pairs) if p is not None]
        device = default_device(self.device)
        ref_margins = self._margins(self.reference, [pairs[i] for i in scored], device) if self.reference else None
        total = torch.zeros(len(scored), dtype=torch.float64)
        for model in self.models:
            margin = self._margins(model, [pairs[i] for i in scored], device)
            if ref_margins is not None:
                margin = margin - ref_margins
            total += -torch.nn.functional.logsigmoid(self.beta * margin)
        out = [math.nan] * len(rows)
        for i, value in zip(scored, (total / len(self.models)).tolist()):
            out[i] = value
        return out

    def _margins(self, model: str, pairs: list[dict], device: torch.device) -> torch.Tensor:
        """``l(y_w) - l(y_l)`` of every pair under ``model``."""
        backbone = CausalLM(model, max_length=self.max_length, max_prompt_length=self.max_prompt_length)
        backbone.configure()
        backbone.policy.to(device).eval()
        margins = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            views = shared_prompts([p["prompt"] for p in chunk], [p["chosen"] for p in chunk],
                                   [p["rejected"] for p in chunk])
            chosen, rejected = backbone.score(backbone.prepare(views)).score.double().cpu().chunk(2)
            margins.append(chosen - rejected)
        del backbone
        return torch.cat(margins) if margins else torch.zeros(0, dtype=torch.float64)


__all__ = ["HeldOutDPOLoss", "model_identity"]
