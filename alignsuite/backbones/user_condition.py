"""A user condition for a diffusion denoiser: decoupled cross-attention over user tokens (PPD).

PPD (Dang et al. 2025, "Personalized Preference Fine-tuning of Diffusion Models") conditions the denoiser on a
user embedding (a vision-language model's hidden states over a few of the user's choices) through extra
cross-attention layers, IP-Adapter style (Ye et al. 2023), and trains it with Diffusion-DPO on many users' pairs
at once, each pair under its own user's embedding. Here, for every cross-attention layer of a UNet:

    tokens = LayerNorm(reshape(W_p e + b_p, [num_tokens, C]))         # e: the user embedding, C: the text width
    out    = Attn(q, K_text, V_text) + scale * W_o Attn(q, W_k' tokens, W_v' tokens)

``q`` is the layer's own query; ``W_k'``/``W_v'`` start as copies of the layer's text key/value projections (as
IP-Adapter initialises them) and ``W_o`` at zero, so an untrained adapter, or ``scale`` 0, leaves the denoiser
exactly as it was. The text branch is the layer's own attention processor, called unchanged.

The embedding comes from a data column per row (``user_embedding``: a list of ``embedding_dim`` floats), not from
a table of user ids: a vector serves users never seen in training (embed their few choices the same way), and an
interpolation between two users' vectors steers between them; a table knows only the users it was trained on.
:func:`few_shot_embedding` gives one cheap encoder for such vectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignsuite.components import read_settings, save_settings

USER_COLUMN = "user_embedding"  # the batch and row column that holds each row's user embedding
CONFIG_FILE, WEIGHTS_FILE = "user_condition.json", "user_condition.safetensors"  # beside an exported pipeline
# diffusers' attention layers pass this cross-attention keyword to their processor and drop it, without a
# warning, for processors that do not take it: the layers without a user branch (self-attention, a reference
# copy of the denoiser) ignore the tokens.
TOKENS_KWARG = "ip_hidden_states"


@dataclass
class UserCondition:
    """A user embedding through decoupled cross-attention (module docstring).

    Args:
        embedding_dim: the length of each row's ``user_embedding``.
        num_tokens: how many tokens the embedding is projected to.
        scale: the weight of the user branch beside the text branch (0: the base model).
        adapter_only: train the user branch alone, the denoiser frozen (as IP-Adapter trains), instead of beside
            the denoiser's full weights or its LoRA.
    """

    embedding_dim: int
    num_tokens: int = 4
    scale: float = 1.0
    adapter_only: bool = False

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"backbone.user_condition.embedding_dim must be at least 1, got {self.embedding_dim}")
        if self.num_tokens < 1:
            raise ValueError(f"backbone.user_condition.num_tokens must be at least 1, got {self.num_tokens}")


class UserBranch:
    """The attention processor of one cross-attention layer: its own processor's output plus the user branch.
    A plain object (not a module), so the denoiser's weights and saved folder stay those of the base; its
    weights live in :class:`UserAdapter`."""

    def __init__(self, base, layer: nn.ModuleDict, adapter: "UserAdapter") -> None:
        self.base, self.layer, self.adapter = base, layer, adapter

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 ip_hidden_states: Tensor | None = None) -> Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask, temb=temb)
        if ip_hidden_states is None or not self.adapter.active:
            return out
        if hidden_states.dim() != 3:
            raise ValueError(f"the user condition attends from [batch, tokens, channels] states; this layer gets"
                             f" shape {tuple(hidden_states.shape)}")
        tokens = ip_hidden_states.to(hidden_states.dtype)
        n, b = hidden_states.shape[0], tokens.shape[0]
        if n == b:
            return out + self._user(attn, hidden_states, tokens)
        if n % b == 0:  # classifier-free guidance stacks [unconditional, conditional]: the same users in each half
            # (guiding the user too, with the user on the conditional half alone, lost one user's reward on the toy
            # world: 0.74 -> 0.51 between steps 200 and 300, where conditioning both halves kept rising)
            return out + self._user(attn, hidden_states, tokens.repeat(n // b, 1, 1))
        raise ValueError(f"{b} users' tokens for a batch of {n} samples: give one user_embedding per prompt")

    def _user(self, attn, hidden_states: Tensor, tokens: Tensor) -> Tensor:
        """``scale * W_o Attn(q, W_k' tokens, W_v' tokens)`` for ``[n, L, C]`` states and ``[n, T, C]`` tokens."""
        n, heads = hidden_states.shape[0], attn.heads

        def split(x: Tensor) -> Tensor:
            return x.view(n, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q = split(attn.to_q(hidden_states))
        k, v = split(self.layer["to_k"](tokens)), split(self.layer["to_v"](tokens))
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, q.shape[1] * q.shape[-1])
        return self.adapter.scale * self.layer["to_out"](mixed) / attn.rescale_output_factor


class UserAdapter(nn.Module):
    """The user tokens' projection and, per cross-attention layer of a UNet, its user key, value and output."""

    def __init__(self, spec: UserCondition, denoiser: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.scale = spec.scale
        self.active = True
        layers = cross_attention_layers(denoiser)
        if not layers:
            raise ValueError(f"backbone.user_condition: {type(denoiser).__name__} has no cross-attention layers to add"
                             " a user branch to; the user condition works on UNet pipelines (SD 1.5, SDXL)")
        width = next(iter(layers.values())).to_k.in_features
        self.width = width
        self.project = nn.Linear(spec.embedding_dim, spec.num_tokens * width)
        self.norm = nn.LayerNorm(width)
        self.layers = nn.ModuleDict()
        for name, attn in layers.items():
            layer = nn.ModuleDict({
                "to_k": nn.Linear(width, attn.to_k.out_features, bias=False),
                "to_v": nn.Linear(width, attn.to_v.out_features, bias=False),
                "to_out": nn.Linear(attn.to_q.out_features, attn.to_out[0].out_features, bias=False),
            })
            with torch.no_grad():
                layer["to_k"].weight.copy_(attn.to_k.weight)
                layer["to_v"].weight.copy_(attn.to_v.weight)
                layer["to_out"].weight.zero_()
            self.layers[name.replace(".", "_")] = layer
        self.install(denoiser)

    def install(self, denoiser: nn.Module) -> None:
        """Give every cross-attention layer of ``denoiser`` (this one, or a copy) its user branch."""
        for name, attn in cross_attention_layers(denoiser).items():
            base = attn.processor.base if isinstance(attn.processor, UserBranch) else attn.processor
            attn.set_processor(UserBranch(base, self.layers[name.replace(".", "_")], self))

    def tokens(self, embedding: Tensor) -> Tensor:
        """``[B, embedding_dim]`` embeddings -> ``[B, num_tokens, C]`` user tokens."""
        weight = self.project.weight
        x = self.project(embedding.to(weight.device, weight.dtype))
        return self.norm(x.view(x.shape[0], self.spec.num_tokens, self.width))

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()},
                  os.path.join(path, WEIGHTS_FILE))
        save_settings(self.spec, path, CONFIG_FILE)

    def load(self, path: str) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(load_file(os.path.join(path, WEIGHTS_FILE)))


def cross_attention_layers(denoiser: nn.Module) -> dict[str, nn.Module]:
    """The denoiser's cross-attention layers (diffusers ``Attention`` over the text), by module name."""
    return {name: m for name, m in denoiser.named_modules()
            if type(m).__name__ == "Attention" and getattr(m, "is_cross_attention", False)}


def saved_condition(path: str) -> UserCondition | None:
    """The user condition saved beside a pipeline in folder ``path``; ``None`` where there is none."""
    return read_settings(UserCondition, path, CONFIG_FILE)


def user_embeddings(batch: dict, rows: int, spec: UserCondition) -> Tensor:
    """The batch's ``user_embedding`` column as ``[rows, embedding_dim]`` floats; a ``ValueError`` that names the
    column, the rows (dataset indices where the batch has them) and the option when it is missing or the wrong length."""
    where = f"dataset rows {batch['index'].tolist()}" if "index" in batch else f"the batch's {rows} rows"
    if USER_COLUMN not in batch:
        raise ValueError(f"backbone.user_condition is set and {where} have no {USER_COLUMN!r} column: give every row"
                         f" its user's embedding ({spec.embedding_dim} floats), or leave user_condition out")
    try:
        values = torch.as_tensor(batch[USER_COLUMN], dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"column {USER_COLUMN!r} of {where}: expected lists of backbone.user_condition.embedding_dim"
                         f" = {spec.embedding_dim} floats ({e})") from e
    if values.dim() != 2 or values.shape[0] != rows or values.shape[1] != spec.embedding_dim:
        raise ValueError(f"column {USER_COLUMN!r} of {where}: expected {rows} embeddings of"
                         f" backbone.user_condition.embedding_dim = {spec.embedding_dim} floats, got shape"
                         f" {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"column {USER_COLUMN!r} of {where} holds a non-finite value")
    return values


@torch.no_grad()
def few_shot_embedding(backbone, chosen: list, rejected: list) -> list[float]:
    """A user embedding from a few of the user's choices, with the backbone's frozen VAE as the encoder: the mean
    over the pairs of the chosen image's latent mean minus the rejected one's, pooled over the latent grid per
    channel and concatenated with the same pooled over its four quadrants (``5 * latent_channels`` floats). What
    the user keeps choosing (a colour, a side of the picture) survives the mean; what varies from pair to pair
    cancels. A cheap stand-in for the paper's vision-language encoder (PPD embeds the choices with a VLM)."""
    if not chosen or len(chosen) != len(rejected):
        raise ValueError(f"few_shot_embedding needs as many chosen as rejected images, at least one;"
                         f" got {len(chosen)} and {len(rejected)}")
    pixels, _, _ = backbone._pixels([list(chosen), list(rejected)])
    mean, _ = backbone.latent_moments(pixels.to(backbone.device))
    diff = (mean[: len(chosen)] - mean[len(chosen):]).float().mean(0)  # [C, h, w]
    h, w = diff.shape[-2] // 2, diff.shape[-1] // 2
    parts = [diff.mean((1, 2))] + [diff[:, i * h:(i + 1) * h, j * w:(j + 1) * w].mean((1, 2)) for i in (0, 1) for j in (0, 1)]
    return torch.cat(parts).cpu().tolist()


__all__ = ["USER_COLUMN", "UserAdapter", "UserBranch", "UserCondition", "cross_attention_layers", "few_shot_embedding",
           "saved_condition", "user_embeddings"]
