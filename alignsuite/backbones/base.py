"""The backbone interface: turn a batch into one score per sequence.

A backbone owns everything modality-specific (tokenizer, chat template, prompt masking, image or audio
processing, noise and timestep draws). The module calls it in one fixed order each step:

    prepared = backbone.prepare(prompts, views)     # once per step, shared by policy and reference
    policy   = backbone.score(prepared)              # with grad, through the policy
    ref      = backbone.score(prepared, model=m)     # no grad, through a reference model

``views`` is a list of K lists of B completions (chosen and rejected for pairs; a completion and a
mismatched one for KTO). Scores come back flat, ``[K * B]``, view-major.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


@dataclass
class SequenceScores:
    """``score[i]`` is row i's log-likelihood (or surrogate); ``length[i]`` counts its scored units."""

    score: Tensor
    length: Tensor

    def split(self, k: int) -> list["SequenceScores"]:
        return [SequenceScores(s, n) for s, n in zip(self.score.chunk(k), self.length.chunk(k))]


class Backbone(nn.Module):
    """Base class of every backbone. The trainable model lives in ``self.policy`` once built."""

    policy: nn.Module | None
    # Sub-module prefixes (relative to the backbone) rebuilt from their source, never checkpointed.
    not_checkpointed: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.policy = None

    def configure(self) -> None:
        """Build or load the policy (idempotent; called from ``LightningModule.configure_model``)."""
        raise NotImplementedError

    def load_reference(self, source: str | None = None) -> nn.Module:
        """A frozen copy of the starting weights (or of ``source``) to score the reference with."""
        raise NotImplementedError

    @property
    def has_adapters(self) -> bool:
        return False

    def adapters_disabled(self) -> contextlib.AbstractContextManager:
        """Context in which the policy computes with its adapters off, i.e. as its base model."""
        raise ValueError(f"{type(self).__name__} has no adapters to disable; configure `lora` first")

    def prepare(self, prompts: list[Any], views: list[list[Any]]) -> Any:
        raise NotImplementedError

    def score(self, prepared: Any, model: nn.Module | None = None) -> SequenceScores:
        raise NotImplementedError

    def generate(self, prompts: list[Any], **kwargs) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot generate")

    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        raise NotImplementedError
