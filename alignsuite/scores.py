"""The scores every backbone produces and every objective consumes.

A backbone turns a batch into one score per sequence: the summed log-probability of the completion
tokens for token models, ``-0.5 * mean((prediction - target)**2)`` for denoising models. The module
splits those into the views an objective needs and packs them here. Objectives read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SequenceScores:
    """``score[i]`` is row i's log-likelihood (or surrogate); ``length[i]`` counts its scored units.

    ``prompt``/``prompt_length`` hold the prompt tokens' summed log-likelihood and count for rows whose view
    asked for them (``score_prompt``), 0 elsewhere; ``None`` when no view asked.
    """

    score: Tensor
    length: Tensor
    prompt: Tensor | None = None
    prompt_length: Tensor | None = None

    def split(self, k: int) -> list["SequenceScores"]:
        def parts(t):
            return t.chunk(k) if t is not None else [None] * k

        return [SequenceScores(*p) for p in zip(parts(self.score), parts(self.length), parts(self.prompt), parts(self.prompt_length))]


@dataclass
class PairScores:
    """Scores of a batch of preference pairs; every tensor has shape ``[B]``.

    ``ref_chosen``/``ref_rejected`` are ``None`` when the objective runs without a reference.
    ``chosen_len``/``rejected_len`` count the scored units (tokens, or averaged elements) so that
    length-normalised objectives can divide by them. ``extra`` carries any further ``[B]`` tensors an
    objective needs (mDPO's corrupted-image scores, a soft preference label, ...).
    """

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("PairScores: give both ref_chosen and ref_rejected, or neither")
        if self.chosen_len is None:
            self.chosen_len = torch.ones_like(self.chosen)
        if self.rejected_len is None:
            self.rejected_len = torch.ones_like(self.rejected)

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None

    def named(self) -> dict[str, Tensor | None]:
        """The summed log-likelihoods by name, as logged under ``logps/``."""
        return {"chosen": self.chosen, "rejected": self.rejected, "ref_chosen": self.ref_chosen, "ref_rejected": self.ref_rejected}

    @property
    def batch_size(self) -> int:
        return self.chosen.shape[0]


@dataclass
class UnpairedScores:
    """Scores of a batch of unpaired examples (KTO); every tensor has shape ``[B]``.

    ``label`` is 1.0 for a desirable completion and 0.0 for an undesirable one. ``kl``/``ref_kl`` score
    mismatched (prompt, completion) pairs built inside the batch, from which KTO estimates its
    reference point; they are ``None`` for objectives that need no such estimate.
    """

    logps: Tensor
    label: Tensor
    ref_logps: Tensor | None = None
    kl: Tensor | None = None
    ref_kl: Tensor | None = None
    length: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.length is None:
            self.length = torch.ones_like(self.logps)

    @property
    def has_reference(self) -> bool:
        return self.ref_logps is not None

    def named(self) -> dict[str, Tensor | None]:
        """The summed log-likelihoods by name, as logged under ``logps/``."""
        return {"policy": self.logps, "ref": self.ref_logps}

    @property
    def batch_size(self) -> int:
        return self.logps.shape[0]
