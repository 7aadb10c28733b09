"""The backbone interface: turn the views of a batch into one score per sequence.

A backbone owns everything modality-specific (tokenizer, chat template, prompt masking, image or audio
processing, noise and timestep draws). The module calls it in one fixed order each step:

    views    = [ViewInputs(prompts, completions, batch), ...]   # one per view the objective declares
    prepared = backbone.prepare(views)                          # once per step, shared by policy and reference
    policy   = backbone.score(prepared)                         # with grad, through the policy
    ref      = backbone.score(prepared, model=m)                # no grad, through a reference model

Every view holds B rows; scores come back flat, ``[K * B]``, view-major. A denoising backbone draws one
noise and timestep per row, shared by all K views of that row.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from alignsuite.data.protocol import PreferenceData
from alignsuite.scores import SequenceScores


@dataclass
class ViewInputs:
    """One view of B rows: each row's prompt (or condition) and the completion to score under it.

    ``batch`` is the batch the rows come from, for whatever else a backbone reads per row (a ``tools``
    column, images, the row ``index`` that seeds a per-row transform). ``score_prompt`` asks a token
    backbone to score the prompt's tokens too (``SequenceScores.prompt``); ``joint`` to score prompt and
    completion as one sequence (``log pi(x, y)``: every token after the first), in the completion's score.
    """

    prompts: list
    completions: list
    batch: dict = field(default_factory=dict)
    score_prompt: bool = False
    joint: bool = False

    def replace(self, **changes) -> "ViewInputs":
        return replace(self, **changes)


def shared_prompts(prompts: list, *completions: list, batch: dict | None = None) -> list[ViewInputs]:
    """Views that share ``prompts``: one per list of completions (chosen, rejected ...)."""
    return [ViewInputs(list(prompts), list(c), batch or {}) for c in completions]


class Backbone(nn.Module):
    """Base class of every backbone. The trainable model lives in ``self.policy`` once built.

    Class attributes:
        modality: the kind of rows it takes (``text``, ``vision_language``, ``text_to_image``), checked
            against the data layout's ``modality`` at setup.
        conditions: the names of the condition transforms ``transform`` applies (views may ask for them).
        generation_columns: the row (or batch) columns that condition ``generate`` besides the prompt, passed
            to it under their own names (``alignsuite.generation``): callers never name a modality's columns.
        image_column: the one of them that holds input images (shown beside a prompt in reports, and given to
            scorers as ``conditions``), or ``None``.
        joint_views: ``prepare`` honours ``ViewInputs.joint`` (scores a view's prompt with its completion).
        deterministic_inputs: ``prepare`` gives the same inputs for the same rows at every step (token
            backbones), so reference scores may be computed once and stored; denoising backbones draw new
            noise every step and set this False.
        scores_tokens: ``score_tokens`` gives per-token scores (token backbones), for token-level objectives;
            denoising backbones score whole samples and set this False.
        guided_generation: ``generate`` takes a decoding-time guide (``guide``, `alignsuite.backbones.PAD`): a
            causal language model's generate over token ids alone.
        not_checkpointed: sub-module prefixes (relative to the backbone) rebuilt from their source.
        shard_blocks: class names of the model's repeated blocks that FSDP2 shards one by one, for models
            that list none in ``_no_split_modules`` (transformers and diffusers models list theirs).
    """

    policy: nn.Module | None
    lora: Any = None  # an adapter spec (``LoraSpec``) in backbones that train adapters
    modality: ClassVar[str] = "text"
    conditions: ClassVar[tuple[str, ...]] = ()
    generation_columns: ClassVar[tuple[str, ...]] = ()
    image_column: ClassVar[str | None] = None
    joint_views: ClassVar[bool] = False
    deterministic_inputs: ClassVar[bool] = True
    scores_tokens: ClassVar[bool] = False
    guided_generation: ClassVar[bool] = False
    not_checkpointed: ClassVar[tuple[str, ...]] = ()
    shard_blocks: ClassVar[tuple[str, ...]] = ()
    # Set by the module under FSDP2 on every process but the first: build the sharded models (policy and
    # reference) on the meta device from their configs, reading no weights; the first process sends them.
    empty_weights: bool = False
    # The length of the preference vector the policy takes (a Panacea adapter's); 0: it takes none.
    preference_dim: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.policy = None

    # ---------------------------------------------------------------- building
    def configure(self) -> None:
        """Build or load the policy (idempotent; called from ``LightningModule.configure_model``)."""
        raise NotImplementedError

    def load_reference(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        """A frozen copy of the starting weights (or of ``source``) to score the reference with, in ``dtype``
        ("auto", "float32", "bfloat16", "float16"; the backbone's own ``dtype`` when None)."""
        raise NotImplementedError

    # Whether the policy is what load_reference reads of the starting weights, in train mode (frozen in parts or not).
    policy_is_read = False

    def reference_from_policy(self) -> nn.Module | None:
        """What :meth:`load_reference` would read of the starting weights, copied from the policy (in eval mode and
        frozen), for a caller that knows the policy still holds them (the online loop's first fit): no second read.
        None where a copy could differ from that read: adapters, or a policy built otherwise (``policy_is_read``)."""
        if self.policy is None or self.has_adapters or not self.policy_is_read:
            return None
        return copy.deepcopy(self.policy).eval().requires_grad_(False)

    def check_same_tokenizer(self, source: str, option: str) -> None:
        """Raise if the checkpoint ``source`` (given as ``option``) reads inputs differently from the policy, so
        that its scores would not line up with the policy's; nothing to check for a backbone without tokens."""

    @property
    def has_adapters(self) -> bool:
        """Whether the policy trains adapters (``lora``) on frozen base weights."""
        return self.lora is not None

    def adapters_disabled(self) -> contextlib.AbstractContextManager:
        """Context in which the policy computes with its adapters off, i.e. as its base model."""
        raise ValueError(f"{type(self).__name__} has no adapters to disable; configure `lora` first")

    def keep_trainable_float32(self) -> None:
        """Cast every trainable parameter to float32 (the frozen ones keep their dtype), as diffusers'
        ``cast_training_params`` does after ``add_adapter``, for every backbone.

        Optimizer updates smaller than a weight's precision are lost: in bfloat16 (8 bits of mantissa) an
        AdamW step of lr 5e-7 changes almost no weight. Mixed precision computes in the low dtype anyway.
        """
        for p in self.parameters():
            if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()

    def set_preference(self, vector) -> None:
        """Condition the policy on a preference vector (``preference_dim`` floats on the simplex), until set again."""
        raise ValueError(f"this model was not trained with a preference vector ({type(self).__name__} has no"
                         " preference adapter): leave the preference out")

    # ---------------------------------------------------------------- lifecycle hooks
    def on_setup(self, datamodule: PreferenceData) -> None:
        """Called at ``setup`` with the built data, before any model loads (filter or check rows here)."""

    def on_fit_start(self, trainer: Any) -> None:
        """Called once the models are built, before the first step (warm an encoding cache here)."""

    def loader_transform(self, views: list) -> Callable[[dict], dict] | None:
        """Work on each collated batch that the DataLoader can do, in its worker processes, instead of the
        training step (tokenising the ``views``' rows); ``None``: nothing. The module installs it at setup."""
        return None

    def state(self) -> dict:
        """What the backbone must carry through a checkpoint besides weights (a draw counter); saved
        under ``checkpoint["backbone_state"]`` and handed back to `load_state` on resume."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned."""

    # ---------------------------------------------------------------- the step
    def transform(self, condition: Any, view: ViewInputs) -> ViewInputs:
        """``view`` with its prompts/conditions transformed as ``condition`` (a name, or an object with a
        ``name`` and settings; see ``conditions``) says."""
        name = condition if isinstance(condition, str) else getattr(condition, "name", condition)
        raise ValueError(f"{type(self).__name__} has no condition {name!r}; it supports: {self.conditions or 'none'}")

    def prepare(self, views: list[ViewInputs]) -> Any:
        raise NotImplementedError

    def score(self, prepared: Any, model: nn.Module | None = None) -> SequenceScores:
        raise NotImplementedError

    def score_tokens(self, prepared: Any, model: nn.Module | None = None, needs: Any = None, reference: Any = None,
                     of_reference: bool = False) -> Any:
        """Per-token scores (``alignsuite.scores.TokenOutputs``) for objectives that weigh tokens; token backbones
        only (``scores_tokens``)."""
        raise ValueError(f"{type(self).__name__} scores whole samples, not tokens")

    def generate(self, prompts: list[Any], model: nn.Module | None = None, seed: int | None = None, **kwargs) -> list[Any]:
        """One completion per prompt from the policy, or from ``model`` (a reference) when given; ``seed``
        makes sampling repeatable. Every backbone that generates honours both."""
        raise NotImplementedError(f"{type(self).__name__} cannot generate")

    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        raise NotImplementedError
