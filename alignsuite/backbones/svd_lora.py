"""SVD-LoRA with a preference vector among its singular values (Panacea, Zhong et al. 2024, arXiv 2402.02030).

On every adapted linear layer ``W0`` (``out x in``):

    W = W0 + U · diag(sigma_1..sigma_k, s·lambda_1, ..., s·lambda_M) · V

``U`` (``out x (k + M p)``), ``V`` (``(k + M p) x in``) and ``sigma`` are learned, ``lambda`` is the preference vector
(on the simplex, an input shared by every layer, never trained), each of its entries repeated ``p`` times (the
rank per preference), and ``s`` a learned scale per layer. PEFT has no such layer: the adapter is a child module
``panacea`` of each target ``nn.Linear``, added to its output by a forward hook, so the base model's parameter names
stay as they were and its weights save and load as a plain ``save_pretrained`` folder; the adapter goes beside them
(:func:`save_adapter`, :func:`load_adapter`).

Initialisation: ``U = 0`` (the model starts as its base, as LoRA's ``B = 0``), ``V`` as LoRA's ``A`` (Kaiming uniform),
``sigma = 1``, ``s = scale_init``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignsuite.components import read_settings, save_settings

ADAPTER_FILE = "panacea_adapter.safetensors"
CONFIG_FILE = "panacea.json"


@dataclass
class PanaceaSpec:
    """An SVD-LoRA adapter with the preference vector as singular values.

    Args:
        r: ``k``, the singular values shared by every preference (``sigma``, learned).
        preference_rank: ``p``, how many singular values each preference entry fills (``s * lambda_i``, repeated).
        preference_dim: ``M``, the length of the preference vector; read from the data's dimensions at setup when
            None (``alignsuite.data.DimensionPairs``).
        target_modules: "all-linear" (every linear layer but the output head) or module names such as
            ``[q_proj, k_proj, v_proj, o_proj]``.
        scale_init: the initial per-layer scale ``s`` of the preference singular values.
    """

    r: int = 8
    preference_rank: int = 1
    preference_dim: int | None = None
    target_modules: str | list[str] = "all-linear"
    scale_init: float = 1.0

    def __post_init__(self) -> None:
        if self.r < 0 or self.preference_rank < 0 or self.r + self.preference_rank == 0:
            raise ValueError(f"panacea: r and preference_rank must be >= 0 and not both 0, got r={self.r},"
                             f" preference_rank={self.preference_rank}")
        if self.preference_dim is not None and self.preference_dim < 1:
            raise ValueError(f"panacea.preference_dim must be >= 1 (or null: the data's dimensions), got {self.preference_dim}")
        if not math.isfinite(self.scale_init):
            raise ValueError(f"panacea.scale_init must be finite, got {self.scale_init}")


class PreferenceState:
    """What every adapted layer of one model reads: the preference vector and whether the adapters are on."""

    def __init__(self, vector: Tensor) -> None:
        self.vector, self.enabled = vector, True


class SVDAdapter(nn.Module):
    """The low-rank update of one linear layer; ``state`` is shared with the model's other adapted layers."""

    def __init__(self, in_features: int, out_features: int, spec: PanaceaSpec, state: PreferenceState) -> None:
        super().__init__()
        rank = spec.r + spec.preference_dim * spec.preference_rank
        self.r, self.preference_rank, self.state = spec.r, spec.preference_rank, state
        self.U = nn.Parameter(torch.zeros(out_features, rank))
        self.V = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
        self.sigma = nn.Parameter(torch.ones(spec.r))
        self.scale = nn.Parameter(torch.tensor(float(spec.scale_init)))

    def singular_values(self) -> Tensor:
        pref = self.state.vector.to(self.sigma).repeat_interleave(self.preference_rank)
        return torch.cat([self.sigma, self.scale * pref])

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(x.to(self.V.dtype), self.V) * self.singular_values()
        return F.linear(h, self.U)


def _add_update(linear: nn.Linear, args: tuple, output: Tensor) -> Tensor:
    adapter = linear.panacea
    if not adapter.state.enabled:
        return output
    return output + adapter(args[0]).to(output.dtype)


def _targets(model: nn.Module, target_modules: str | list[str],
             scopes: tuple[str, ...] | None = None) -> list[tuple[str, nn.Linear]]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or m is head:
            continue
        if scopes is not None and not any(name.startswith(s + ".") for s in scopes):
            continue
        if target_modules == "all-linear" or name.rsplit(".", 1)[-1] in target_modules:
            out.append((name, m))
    if not out:
        within = "" if scopes is None else f" within {', '.join(scopes)}"
        raise ValueError(f"panacea.target_modules {target_modules!r} matches no linear layer of the model{within}")
    return out


def apply_adapter(model: nn.Module, spec: PanaceaSpec, scopes: tuple[str, ...] | None = None) -> PreferenceState:
    """Freeze ``model`` and add an `SVDAdapter` to each target linear layer (of the sub-modules named in
    ``scopes`` only, when given: a vision-language model's language model); returns the state they share, its
    preference uniform until set."""
    if spec.preference_dim is None:
        raise ValueError("panacea.preference_dim is unknown: give it, or train on data that names its preference"
                         " dimensions (alignsuite.data.DimensionPairs)")
    model.requires_grad_(False)
    state = PreferenceState(torch.full((spec.preference_dim,), 1.0 / spec.preference_dim))
    for _, linear in _targets(model, spec.target_modules, scopes):
        adapter = SVDAdapter(linear.in_features, linear.out_features, spec, state)
        linear.add_module("panacea", adapter.to(linear.weight.device))
        linear.register_forward_hook(_add_update)
    return state


def adapters(model: nn.Module) -> dict[str, SVDAdapter]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SVDAdapter)}


def is_adapter_key(key: str) -> bool:
    return ".panacea." in f".{key}"


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if not is_adapter_key(k)}


def save_adapter(model: nn.Module, spec: PanaceaSpec, folder: str) -> None:
    """The adapter's weights and settings into ``folder`` (beside the base model's ``save_pretrained`` files)."""
    from safetensors.torch import save_file

    weights = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items() if is_adapter_key(k)}
    save_file(weights, os.path.join(folder, ADAPTER_FILE))
    save_settings(spec, folder, CONFIG_FILE)


def is_export(folder: str) -> bool:
    """Whether ``folder`` holds a Panacea adapter beside its base model (``save_adapter``'s files)."""
    return os.path.isfile(os.path.join(folder, CONFIG_FILE))


def saved_spec(folder: str) -> PanaceaSpec | None:
    """The adapter settings saved in ``folder``, or None when it holds no Panacea adapter."""
    return read_settings(PanaceaSpec, folder, CONFIG_FILE)


def load_adapter(model: nn.Module, folder: str) -> None:
    """Load the adapter weights saved by :func:`save_adapter` into ``model`` (already adapted with the same spec)."""
    from safetensors.torch import load_file

    weights = load_file(os.path.join(folder, ADAPTER_FILE))
    own = {k for k in model.state_dict() if is_adapter_key(k)}
    if set(weights) != own:
        raise ValueError(f"{os.path.join(folder, ADAPTER_FILE)}: the adapter's weights do not match the model's"
                         f" ({len(set(weights) - own)} unexpected, {len(own - set(weights))} missing)")
    model.load_state_dict(weights, strict=False)


__all__ = ["PanaceaSpec", "PreferenceState", "SVDAdapter", "adapters", "apply_adapter", "base_state_dict",
           "load_adapter", "save_adapter", "saved_spec"]
