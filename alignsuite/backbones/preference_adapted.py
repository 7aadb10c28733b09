"""What makes a token backbone a Panacea model (Zhong et al. 2024, arXiv 2402.02030), whatever its modality.

The policy is the base model with an SVD-LoRA adapter (:mod:`.svd_lora`) on its target linear layers, the
preference vector among the adapter's singular values. ``set_preference(w)`` chooses the trade-off (training:
a per-step draw, ``alignsuite.callbacks.PreferenceSampler``; inference: ``generate(..., preference=w)``). The
reference is the base, the adapter off (``AdapterDisabled``).

Export: a preference vector cannot be merged into the weights without fixing it, so ``save_pretrained`` writes
the base model unmerged and the adapter beside it (``panacea_adapter.safetensors``, ``panacea.json``), whatever
``merge_adapters`` says; the Panacea model given that folder as ``model_name_or_path`` loads both back.

A reference other than the base (``FrozenCopy(model_name_or_path=...)``, a frozen copy of an export the policy starts
from) is read as what it is: a plain model as it is, a Panacea export with its adapter, at the policy's preference
vector (``load_reference``): the reference of the model at ``w`` is the other model at ``w``.

The models, one per token backbone, are in :mod:`.panacea`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.backbones.svd_lora import (
    PanaceaSpec,
    PreferenceState,
    adapters,
    apply_adapter,
    base_state_dict,
    is_export,
    load_adapter,
    save_adapter,
    saved_spec,
)
from alignsuite.sources import resolve_model_path

SIMPLEX_TOLERANCE = 1e-6


def check_preference(vector: Sequence[float], dim: int, option: str = "preference") -> list[float]:
    """``vector`` as floats when it is on the simplex of ``dim`` entries; else an error naming ``option``."""
    try:
        values = [float(v) for v in vector]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{option} must be a sequence of {dim} floats, got {vector!r}") from e
    if len(values) != dim:
        raise ValueError(f"{option} has {len(values)} entries and the model takes a preference vector of {dim}"
                         " (one per preference dimension it was trained on)")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{option} must have finite entries >= 0 (a point of the simplex), got {values}")
    if abs(sum(values) - 1.0) > SIMPLEX_TOLERANCE:
        raise ValueError(f"{option} must sum to 1 (a point of the simplex), got {values} (sum {sum(values)})")
    return values


class FollowedPreference(PreferenceState):
    """A reference's adapters' state: the policy's preference vector (read at each forward, so the reference
    follows every draw), with its own switch (the policy's ``adapters_disabled`` leaves it on)."""

    def __init__(self, policy: PreferenceState) -> None:
        self.policy, self.enabled = policy, True

    @property
    def vector(self) -> torch.Tensor:
        return self.policy.vector


class PreferenceAdapted:
    """What makes a token backbone (`CausalLM` or a subclass) a Panacea model, whatever its modality: the adapter
    and its preference state, ``set_preference``, ``generate(preference=)``, the reference as the adapter off, the
    export (base unmerged + adapter), a Panacea reference following the policy's vector, and the preference length
    read from the data's dimensions. It sits in front of the plain backbone (``class PanaceaLM(PreferenceAdapted,
    CausalLM)``), whose ``__init__`` the subclass calls before `_init_preference`."""

    reads_preference_adapter = True

    def _init_preference(self, panacea: PanaceaSpec | None, preference: list[float] | None) -> None:
        self.panacea = panacea if panacea is not None else PanaceaSpec()
        self.initial_preference = None if preference is None else [float(v) for v in preference]
        self._state: PreferenceState | None = None

    def adapter_scopes(self, model: nn.Module) -> tuple[str, ...] | None:
        """The sub-modules whose linear layers the adapter may target; None: the whole model."""
        return None

    @property
    def has_adapters(self) -> bool:
        return True

    @classmethod
    def reading(cls, backbone: CausalLM, folder: str) -> PreferenceAdapted:
        """A Panacea model with ``backbone``'s settings (a plain backbone's: its tokenizer or processor, lengths and
        dtype) loading the export ``folder``: how a recipe without a preference adapter evaluates one that has it."""
        names = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "model_name_or_path",
                                                                                    "panacea", "preference")]
        return cls(folder, **{n: getattr(backbone, n) for n in names})

    @property
    def preference_dim(self) -> int:
        return self.panacea.preference_dim or 0

    def _export_folder(self) -> str | None:
        path = resolve_model_path(self.model_name_or_path)
        return path if os.path.isdir(path) and is_export(path) else None

    def on_setup(self, datamodule) -> None:
        dims = tuple(getattr(datamodule.layout, "preference_dimensions", ()) or ())
        given = self.panacea.preference_dim
        if dims and given is not None and given != len(dims):
            raise ValueError(f"backbone.panacea.preference_dim is {given} and the data layout {datamodule.layout.name}"
                             f" has {len(dims)} preference dimensions ({', '.join(dims)}); leave it out to use the data's")
        if dims and given is None:
            self.panacea = replace(self.panacea, preference_dim=len(dims))
        super().on_setup(datamodule)

    def configure(self) -> None:
        if self.policy is not None:
            return
        folder = self._export_folder()
        if folder is not None:  # an export: its adapter's settings win; they must agree with the data's length
            spec = saved_spec(folder)
            if self.panacea.preference_dim not in (None, spec.preference_dim):
                raise ValueError(f"{folder} holds a Panacea adapter for {spec.preference_dim} preferences, and the data"
                                 f" has {self.panacea.preference_dim}")
            self.panacea = spec
        super().configure()  # loads the base (lora is None: no PEFT)
        self._state = apply_adapter(self.policy, self.panacea, self.adapter_scopes(self.policy))
        if folder is not None:
            load_adapter(self.policy, folder)
        if self.initial_preference is not None:
            values = check_preference(self.initial_preference, self.preference_dim, "backbone.preference")
            self._state.vector = torch.tensor(values, dtype=torch.float32)
        if self.gradient_checkpointing:
            self.policy.enable_input_require_grads()

    def load_reference(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        """A frozen model for reference scores: ``source`` (the starting weights when None) read as what it is. A
        plain model as it is; a Panacea export with its adapter, which reads the policy's preference vector (one
        model for a whole front, as the policy: at ``w`` the reference is that model at ``w``). Loaded as a plain
        model, an export would silently be its base alone; the base under the policy's own adapter is
        ``AdapterDisabled``, with no second copy."""
        model = super().load_reference(source, dtype)
        path = resolve_model_path(source or self.model_name_or_path)
        if not (os.path.isdir(path) and is_export(path)):
            return model
        spec = saved_spec(path)
        where = f"the reference {path}" + ("" if source else " (the policy's starting weights)")
        if self._state is None:
            raise ValueError(f"{where} is a Panacea export, whose adapter reads the policy's preference vector: build"
                             " the policy first (configure)")
        if spec.preference_dim != self.preference_dim:
            raise ValueError(f"{where} is a Panacea export for {spec.preference_dim} preferences and the policy takes"
                             f" {self.preference_dim}: its adapter could not follow the policy's preference vector;"
                             " give a reference trained on the same dimensions, or its base (a plain model)")
        apply_adapter(model, spec, self.adapter_scopes(model))
        load_adapter(model, path)
        state = FollowedPreference(self._state)  # one switch for the whole reference, as the policy's
        for adapter in adapters(model).values():
            adapter.state = state
        return model.eval().requires_grad_(False)

    def adapters_disabled(self):
        """The adapter off (the base model) until the block ends, then as it was: a block inside another (the
        reference's scores within a caller's own ``adapters_disabled``) leaves it off."""
        @contextlib.contextmanager
        def off():
            was, self._state.enabled = self._state.enabled, False
            try:
                yield
            finally:
                self._state.enabled = was

        return off()

    # ---------------------------------------------------------------- the preference
    def set_preference(self, vector: Sequence[float]) -> None:
        if self.preference_dim == 0:
            super().set_preference(vector)
        values = check_preference(vector, self.preference_dim)
        if self._state is None:
            raise ValueError("set_preference: the model is not built yet (configure it first)")
        device = next(iter(adapters(self.policy).values())).sigma.device
        self._state.vector = torch.tensor(values, dtype=torch.float32, device=device)

    @property
    def preference(self) -> list[float]:
        return self._state.vector.tolist()

    def scales(self) -> torch.Tensor:
        """Every adapted layer's preference scale ``s`` (watch that it does not collapse to 0)."""
        return torch.stack([a.scale.detach() for a in adapters(self.policy).values()])

    @torch.no_grad()
    def generate(self, prompts: list, *args, preference: Sequence[float] | None = None, **kwargs) -> list[str]:
        """As the plain backbone's ``generate``; ``preference`` sets the preference vector first (and it stays set);
        a guide (where the backbone takes one) guides the model at that vector."""
        if preference is not None:
            self.set_preference(preference)
        return super().generate(prompts, *args, **kwargs)

    # ---------------------------------------------------------------- export
    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        """The base model (unmerged: merging would fix the preference), the adapter beside it, and what turns
        inputs into the model's tokens (the tokenizer, the processor, a speech model's token settings)."""
        self.policy.save_pretrained(path, state_dict=base_state_dict(self.policy))
        save_adapter(self.policy, self.panacea, path)
        self.save_preprocessing(path)


__all__ = ["FollowedPreference", "PreferenceAdapted", "check_preference"]
