"""The scores every backbone produces and every objective consumes.

A backbone turns a batch into one score per sequence: the summed log-probability of the completion
tokens for token models, ``-0.5 * mean((prediction - target)**2)`` for denoising models. The module
splits those into the views an objective needs and packs them here. Objectives read nothing else.

Every packed score type is a :class:`Scores`: pairs (:class:`PairScores`), unpaired examples
(:class:`UnpairedScores`), lists of K responses per prompt (:class:`ListScores`, ``[B, K]``) and the per-token
scores of pairs (:class:`TokenScores`, ``[B, T]``) for objectives that weigh tokens: they declare what they read
(:class:`TokenNeeds`), and a token backbone hands it over per scored token (:class:`TokenOutputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

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


class Scores:
    """What every packed score type shares, and all the module and the objectives' common checks read.

    A subclass is a dataclass of tensors whose first dimension is the batch. It names its first policy
    field (``policy_field``, which gives the batch size) and the reference field that is ``None`` exactly
    when the scores come without a reference (``reference_field``), lists its policy and reference scores
    for logging (:meth:`named`), and carries ``extra``: further tensors an objective declared (a view
    beyond the type's own, a batch column). The base holds no dataclass fields, so each subclass keeps its
    own field order for positional construction.
    """

    policy_field: ClassVar[str]
    reference_field: ClassVar[str]
    extra: dict[str, Tensor]

    @property
    def has_reference(self) -> bool:
        return getattr(self, self.reference_field) is not None

    @property
    def batch_size(self) -> int:
        return getattr(self, self.policy_field).shape[0]

    def named(self) -> dict[str, Tensor | None]:
        """The summed log-likelihoods by name, as logged under ``logps/``."""
        raise NotImplementedError


@dataclass
class PairScores(Scores):
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

    policy_field: ClassVar[str] = "chosen"
    reference_field: ClassVar[str] = "ref_chosen"

    def __post_init__(self) -> None:
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("PairScores: give both ref_chosen and ref_rejected, or neither")
        if self.chosen_len is None:
            self.chosen_len = torch.ones_like(self.chosen)
        if self.rejected_len is None:
            self.rejected_len = torch.ones_like(self.rejected)

    def named(self) -> dict[str, Tensor | None]:
        return {"chosen": self.chosen, "rejected": self.rejected, "ref_chosen": self.ref_chosen, "ref_rejected": self.ref_rejected}


@dataclass
class UnpairedScores(Scores):
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

    policy_field: ClassVar[str] = "logps"
    reference_field: ClassVar[str] = "ref_logps"

    def __post_init__(self) -> None:
        if self.length is None:
            self.length = torch.ones_like(self.logps)

    def named(self) -> dict[str, Tensor | None]:
        return {"policy": self.logps, "ref": self.ref_logps}


@dataclass
class ListScores(Scores):
    """Scores of a batch of K responses per prompt; every tensor has shape ``[B, K]``.

    ``scores``/``ref`` are the policy's and the reference's log-likelihoods of each response (``ref`` is ``None``
    without a reference), ``lengths`` the scored units of each. ``labels`` grade the responses, higher better (a
    rating, a reward, or minus a rank). ``mask`` is True where a response exists: a list shorter than K is padded,
    and a padded entry must take no part in any loss (padding a list with copies of its responses would add
    pairs and change every listwise loss). Each row needs at least two responses. ``extra`` carries further
    tensors an objective declared, ``[B]`` or ``[B, K]``.

    Pairs are the K = 2 case: ``scores = [chosen, rejected]``, ``labels = [1, 0]``.
    """

    scores: Tensor
    labels: Tensor
    ref: Tensor | None = None
    lengths: Tensor | None = None
    mask: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    policy_field: ClassVar[str] = "scores"
    reference_field: ClassVar[str] = "ref"

    def __post_init__(self) -> None:
        if self.scores.dim() != 2:
            raise ValueError(f"ListScores: scores must be [B, K], got shape {tuple(self.scores.shape)}")
        shape = self.scores.shape
        for name in ("labels", "ref", "lengths", "mask"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"ListScores: {name} has shape {tuple(value.shape)}, scores {tuple(shape)}")
        if self.lengths is None:
            self.lengths = torch.ones_like(self.scores)
        if self.mask is None:
            self.mask = torch.ones(shape, dtype=torch.bool, device=self.scores.device)
        self.mask = self.mask.bool()
        short = (self.mask.sum(dim=1) < 2).nonzero().flatten().tolist()
        if short:
            raise ValueError(f"ListScores: batch row(s) {short} hold fewer than 2 responses; a list needs at least 2")

    @property
    def list_size(self) -> int:
        return self.scores.shape[1]

    def named(self) -> dict[str, Tensor | None]:
        # Only the responses that exist: a padded entry's score means nothing.
        return {"policy": self.scores[self.mask], "ref": self.ref[self.mask] if self.ref is not None else None}


@dataclass(frozen=True)
class TokenNeeds:
    """What a token-level objective reads besides the policy's per-token log-probs (its ``token_needs``).

    - ``reference``: the reference's per-token log-probs;
    - ``kl``: the full-vocabulary ``KL_t(ref || policy)`` at every scored token, which needs the reference's
      distribution in the same step as the policy's (a live reference, never stored scores);
    - ``reference_hidden``: the reference's hidden states of every layer at the position that predicts each
      scored token (SparsePO's mask network reads them);
    - ``self_norm``: the policy's ``log sum_v pi(v)^2`` at every scored token, without grad (WPO's weights);
    - ``policy_hidden_layer``: the policy's hidden states of this one layer (an index into the model's hidden
      states: 0 the embeddings, -1 the last) at the same positions, with grad (FPO's features).
    """

    reference: bool = True
    kl: bool = False
    reference_hidden: bool = False
    self_norm: bool = False
    policy_hidden_layer: int | None = None

    @property
    def live_reference(self) -> bool:
        """Whether the reference must compute in the same step (its distribution or hidden states)."""
        return self.kl or self.reference_hidden


@dataclass
class TokenOutputs:
    """What a token backbone returns per scored token, flattened over the ``n_out`` sequences of a step
    (view-major, as :class:`SequenceScores`): ``logps [M]`` and, where asked, ``kl [M]``, ``self_norm [M]``,
    ``hidden`` (the reference's ``[M, L, H]``, every layer; the policy's ``[M, H]``, one layer). ``matrix`` lays any of them out as ``[n_out, T]`` (each sequence's tokens in order,
    0 after its last) with the mask of its tokens, ``lengths`` counts them. ``head`` is the backbone's own
    business: what the policy needs of the reference to compute the KL (its final hidden states and LM head)."""

    logps: Tensor
    matrix: Callable[[Tensor], tuple[Tensor, Tensor]]
    kl: Tensor | None = None
    self_norm: Tensor | None = None
    hidden: Tensor | None = None
    head: Any = None

    def laid_out(self, name: str = "logps") -> tuple[Tensor, Tensor]:
        """``getattr(self, name)`` as ``[n_out, T, ...]`` and the ``[n_out, T]`` mask."""
        return self.matrix(getattr(self, name))


@dataclass
class TokenScores(Scores):
    """Per-token scores of a batch of preference pairs: ``[B, T]`` tensors (``T`` the longest answer of the
    batch), each answer's scored tokens in order and 0 after its last.

    ``chosen``/``rejected``: the policy's token log-probs; ``chosen_mask``/``rejected_mask``: True on an
    answer's tokens; ``ref_chosen``/``ref_rejected``: the reference's (``None`` without one);
    ``chosen_kl``/``rejected_kl``: ``KL_t(ref || policy)`` over the full vocabulary at each token, for the
    objectives that declare it (``None`` otherwise). ``extra`` carries further tensors an objective declared
    (``[B]`` or ``[B, T, ...]``: the reference's hidden states, WPO's ``log sum_v pi(v)^2``).

    :meth:`summed` is the sequence view: the same numbers as the sequence scores of the same answers.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_mask: Tensor
    rejected_mask: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_kl: Tensor | None = None
    rejected_kl: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    policy_field: ClassVar[str] = "chosen"
    reference_field: ClassVar[str] = "ref_chosen"

    def __post_init__(self) -> None:
        shape = self.chosen.shape
        if self.chosen.dim() != 2:
            raise ValueError(f"TokenScores: chosen must be [B, T], got shape {tuple(shape)}")
        for name in ("rejected", "chosen_mask", "rejected_mask", "ref_chosen", "ref_rejected", "chosen_kl", "rejected_kl"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"TokenScores: {name} has shape {tuple(value.shape)}, chosen {tuple(shape)}")
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("TokenScores: give both ref_chosen and ref_rejected, or neither")
        self.chosen_mask, self.rejected_mask = self.chosen_mask.bool(), self.rejected_mask.bool()

    @property
    def has_kl(self) -> bool:
        return self.chosen_kl is not None

    def summed(self) -> PairScores:
        """The sequence view: every ``[B, T]`` score summed over its answer's tokens."""
        def total(t: Tensor | None, mask: Tensor) -> Tensor | None:
            return None if t is None else t.masked_fill(~mask, 0).sum(dim=1)

        c, r = self.chosen_mask, self.rejected_mask
        return PairScores(total(self.chosen, c), total(self.rejected, r), total(self.ref_chosen, c),
                          total(self.ref_rejected, r), c.sum(dim=1).to(self.chosen.dtype),
                          r.sum(dim=1).to(self.rejected.dtype), dict(self.extra))

    def named(self) -> dict[str, Tensor | None]:
        return self.summed().named()
