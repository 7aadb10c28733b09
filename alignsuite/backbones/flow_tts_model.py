"""A compact F5-TTS-style flow-matching text-to-speech model (a DiT over mel frames), and its mel front end.

The design follows F5-TTS (Chen et al. 2024, SWivid/F5-TTS ``src/f5_tts/model/backbones/dit.py``):

- text: characters (here UTF-8 bytes + 1; 0 is the filler token) padded with the filler to the mel length,
  embedded, given a sinusoidal position and refined by ConvNeXt-V2 blocks (:class:`TextEmbedding`);
- input: ``Linear(concat(noisy mel, condition mel, text embedding))`` per frame plus a convolutional position
  embedding (:class:`InputEmbedding`);
- DiT blocks with adaLN-zero modulation (shift, scale, gate for attention and feed-forward) from a sinusoidal
  timestep embedding (:class:`FlowTTSBlock`), then an adaptive final norm and a linear to ``n_mels``.

Convention: alignsuite's rectified flow (:mod:`alignsuite.backbones.denoising`), ``x_s = (1 - s) x0 + s noise``
with ``timestep = 1000 s`` (diffusers' ``FlowMatchEulerDiscreteScheduler``), and the model predicts the
velocity ``noise - x0``. That is F5's convention mirrored (F5: ``t = 1 - s``, velocity ``x0 - noise``).

Padded frames (``frame_mask`` False) are ignored by attention and zeroed before every convolution and
every statistic over time, so a row's output on its own frames does not depend on how far the batch pads it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin
from torch import Tensor, nn

FILLER = 0  # the text id that pads a transcript to the mel length (F5's filler token)


def encode_text(texts: list[str], frames: list[int] | int) -> Tensor:
    """``LongTensor [N, T]``: each text's UTF-8 bytes + 1, padded with the filler (0) to ``T = max(frames)``.

    Row i keeps its first ``frames[i]`` ids (truncated when longer, as F5 truncates text to the mel length)
    and the filler beyond them."""
    lengths = [frames] * len(texts) if isinstance(frames, int) else list(frames)
    if len(lengths) != len(texts):
        raise ValueError(f"encode_text: {len(texts)} texts but {len(lengths)} frame counts")
    out = torch.full((len(texts), max(lengths, default=0)), FILLER, dtype=torch.long)
    for i, (text, n) in enumerate(zip(texts, lengths)):
        ids = [b + 1 for b in text.encode("utf-8")][:n]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _config_value(config, name: str):
    return config[name] if isinstance(config, dict) else getattr(config, name)


def mel_spectrogram(waveform: Tensor, config) -> Tensor:
    """Log mel magnitudes, ``[frames, n_mels]`` for a ``[samples]`` waveform (``[N, frames, n_mels]`` for
    ``[N, samples]``), as F5's vocos front end: a centred STFT (Hann window), magnitude (power 1), an HTK mel
    bank without normalisation from 0 Hz to Nyquist, ``log(clamp(., 1e-5))``.

    ``config`` is the model's config (or a dict) with ``n_mels, sampling_rate, n_fft, hop_length, win_length``.
    """
    from transformers.audio_utils import mel_filter_bank

    n_mels, rate = _config_value(config, "n_mels"), _config_value(config, "sampling_rate")
    n_fft, hop, win = (_config_value(config, k) for k in ("n_fft", "hop_length", "win_length"))
    single = waveform.dim() == 1
    wave = waveform.float().reshape(1, -1) if single else waveform.float()
    spec = torch.stft(wave, n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win, device=wave.device),
                      center=True, pad_mode="reflect", return_complex=True).abs()  # [N, n_fft // 2 + 1, frames]
    bank = mel_filter_bank(n_fft // 2 + 1, n_mels, 0.0, rate / 2, rate, norm=None, mel_scale="htk")
    mel = torch.einsum("nft,fm->ntm", spec, torch.as_tensor(bank, dtype=spec.dtype, device=spec.device))
    mel = mel.clamp(min=1e-5).log()
    return mel[0] if single else mel


def sinusoid(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[..., dim]`` sinusoidal embedding of ``positions`` (cos then sin halves, as diffusers' timestep
    embedding), always computed in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    args = positions.float()[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x [N, T, D]`` with padded frames zeroed."""
    return x if mask is None else x.masked_fill(~mask[..., None], 0.0)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2, Woo et al. 2023) over time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        gx = torch.norm(_masked(x, mask), p=2, dim=1, keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv (kernel 7), LayerNorm, pointwise expand, GELU, GRN, pointwise project; residual."""

    def __init__(self, dim: int, mult: int = 2) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, dim * mult)
        self.grn = GRN(dim * mult)
        self.pwconv2 = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.dwconv(_masked(x, mask).transpose(1, 2)).transpose(1, 2)
        h = F.gelu(self.pwconv1(self.norm(h)))
        return x + self.pwconv2(self.grn(h, mask))


class TextEmbedding(nn.Module):
    """Byte ids ``[N, T]`` (already padded to the mel length) -> ``[N, T, text_dim]``."""

    def __init__(self, vocab: int, dim: int, conv_layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(ConvNeXtV2Block(dim) for _ in range(conv_layers))

    def forward(self, text: Tensor, mask: Tensor | None) -> Tensor:
        x = self.embed(text)
        x = x + sinusoid(torch.arange(text.shape[1], device=text.device), x.shape[-1]).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x


class ConvPositionEmbedding(nn.Module):
    """Two grouped convolutions (kernel 31, Mish) added to the input: F5's relative position signal."""

    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16) -> None:
        super().__init__()
        groups = math.gcd(groups, dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = F.mish(self.conv1(_masked(x, mask).transpose(1, 2))).transpose(1, 2)
        h = F.mish(self.conv2(_masked(h, mask).transpose(1, 2))).transpose(1, 2)
        return _masked(h, mask)


class InputEmbedding(nn.Module):
    """``Linear(concat(noisy, cond, text))`` per frame, plus :class:`ConvPositionEmbedding` of it."""

    def __init__(self, n_mels: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * n_mels + text_dim, dim)
        self.conv_pos = ConvPositionEmbedding(dim)

    def forward(self, noisy: Tensor, cond: Tensor, text: Tensor, mask: Tensor | None) -> Tensor:
        x = self.proj(torch.cat([noisy, cond, text], dim=-1))
        return x + self.conv_pos(x, mask)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the timestep (``1000 s``, so frequencies span its range) and a SiLU MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timestep: Tensor) -> Tensor:
        dtype = self.mlp[0].weight.dtype
        return self.mlp(sinusoid(timestep, self.freq_dim).to(dtype))


class FlowTTSBlock(nn.Module):
    """A DiT block: adaLN-zero (shift, scale, gate) around self-attention and a GELU feed-forward."""

    def __init__(self, dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.modulation = nn.Linear(dim, 6 * dim)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = nn.Sequential(nn.Linear(dim, dim * ff_mult), nn.GELU(approximate="tanh"), nn.Linear(dim * ff_mult, dim))

    def attention(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.to_qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(n, t, d))

    def forward(self, x: Tensor, t_emb: Tensor, key_mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(t_emb))[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attention(self.norm1(x) * (1 + scale1) + shift1, key_mask)
        return x + gate2 * self.ff(self.norm2(x) * (1 + scale2) + shift2)


class FlowTTSModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The denoiser: ``forward(noisy, cond, text, timestep, frame_mask) -> velocity [N, T, n_mels]``.

    ``save_pretrained``/``from_pretrained`` come from diffusers' ``ModelMixin``; LoRA (``add_adapter``,
    ``fuse_lora``, ``disable_adapters``) from its ``PeftAdapterMixin``. The audio settings (``sampling_rate``,
    ``n_fft``, ``hop_length``, ``win_length``) are the mel front end's (:func:`mel_spectrogram`), kept with the
    weights so that audio is always featurised as the model was trained.
    """

    _no_split_modules = ["FlowTTSBlock"]  # FSDP2 shards block by block

    @register_to_config
    def __init__(self, n_mels: int = 100, dim: int = 256, depth: int = 4, heads: int = 4, ff_mult: int = 2,
                 text_dim: int = 128, text_conv_layers: int = 2, text_vocab_size: int = 257,
                 sampling_rate: int = 24000, n_fft: int = 1024, hop_length: int = 256, win_length: int = 1024) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"FlowTTSModel: dim ({dim}) must be divisible by heads ({heads})")
        self.text_embed = TextEmbedding(text_vocab_size, text_dim, text_conv_layers)
        self.input_embed = InputEmbedding(n_mels, text_dim, dim)
        self.time_embed = TimestepEmbedding(dim)
        self.blocks = nn.ModuleList(FlowTTSBlock(dim, heads, ff_mult) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_out_modulation = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, n_mels)

    def forward(self, noisy: Tensor, cond: Tensor, text: Tensor, timestep: Tensor,
                frame_mask: Tensor | None = None) -> Tensor:
        """``noisy, cond [N, T, n_mels]``, ``text [N, T]`` long, ``timestep [N]`` (``1000 s``), ``frame_mask
        [N, T]`` bool (True on real frames; None: all real) -> the predicted velocity ``noise - x0``."""
        mask = None
        if frame_mask is not None:
            # A row with no real frame at all would make attention softmax over nothing (NaN): let it see itself.
            mask = frame_mask.bool() | ~frame_mask.bool().any(dim=1, keepdim=True)
        t_emb = self.time_embed(timestep.reshape(-1).expand(len(noisy)))
        x = self.input_embed(noisy, cond, self.text_embed(text, mask), mask)
        for block in self.blocks:
            x = block(x, t_emb, mask)
        shift, scale = self.norm_out_modulation(F.silu(t_emb))[:, None].chunk(2, dim=-1)
        return self.proj_out(self.norm_out(x) * (1 + scale) + shift)


__all__ = ["FILLER", "FlowTTSBlock", "FlowTTSModel", "encode_text", "mel_spectrogram"]
