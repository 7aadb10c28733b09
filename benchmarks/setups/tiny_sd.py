"""What every arm of ``bench_diffusion_dpo`` trains on: the diffusion toy world's tiny Stable Diffusion
pipeline (or a larger one of the same layout), saved once with ``save_pretrained``, and toy-world pairs
in the Pick-a-Pic v2 layout in one parquet.

Nothing is downloaded. The toy world is imported in `toy_world` only.
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path


def toy_world():
    """The diffusion toy world, whose pipeline layout and preference rows this benchmark trains on (taken
    from the package, not from the module that defines it, which may move)."""
    from alignsuite.toy import SquaresWorld

    return SquaresWorld()


def _ints(text: str | None) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split(",")) if text else None


# Stable Diffusion 1.5's UNet, VAE and text encoder (CLIP ViT-L/14's) as their published configs give them,
# for a random-init pipeline at SD-1.5 scale (``--sd15``); the text encoder keeps the toy tokenizer's vocabulary.
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 512, "scaling_factor": 0.18215,
}
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "projection_dim": 768, "hidden_act": "quick_gelu"}


def build_pipeline(path: Path, args) -> dict:
    """The toy world's tiny SD pipeline (with channel options, a larger one of the same layout; with
    ``args.sd15``, SD 1.5's UNet, VAE and text encoder), random init under ``args.seed``, saved with
    ``save_pretrained``; returns its sizes."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = toy_world().base  # the pipeline's parts
    vae_channels, unet_channels = _ints(args.vae_channels), _ints(args.unet_channels)
    sd15 = getattr(args, "sd15", False)
    if sd15 and (vae_channels or unet_channels or args.resolution % 64):
        raise SystemExit("--sd15 sets the UNet and VAE itself (leave out --unet-channels and --vae-channels) and"
                         " needs a --resolution divisible by 64 (SD 1.5 trains at 512)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        tok = parts.build_tokenizer()
        text_config = parts.text_config(tok)
        if sd15:
            text_config = CLIPTextConfig(**{**text_config.to_dict(), **SD15_TEXT})
        text_encoder = CLIPTextModel(text_config)
        if sd15:
            vae = AutoencoderKL(**SD15_VAE)
        elif vae_channels is None:
            vae = parts.build_vae()
        else:
            vae = AutoencoderKL.from_config(dict(parts.build_vae().config, block_out_channels=vae_channels,
                                                 down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                                                 up_block_types=("UpDecoderBlock2D",) * len(vae_channels)))
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latent = args.resolution // factor
        n = len(SD15_UNET["block_out_channels"] if sd15 else unet_channels or (32, 64))
        if args.resolution % factor or latent % 2 ** (n - 1):
            raise SystemExit(f"--resolution {args.resolution}: the VAE divides it by {factor}, and the UNet must"
                             f" halve the {latent}x{latent} latents {n - 1} times")
        if sd15:
            unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": latent})
        elif unet_channels is None and args.layers_per_block == 1:
            unet = parts.build_unet(text_encoder.config.hidden_size)
        else:
            # The toy's layout: no attention at the finest level, self and cross attention below it.
            unet = UNet2DConditionModel(
                sample_size=latent, in_channels=4, out_channels=4, layers_per_block=args.layers_per_block,
                block_out_channels=unet_channels or (32, 64),
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=8, norm_num_groups=8)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                       scheduler=parts.build_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    return {"unet_parameters": count(unet), "vae_parameters": count(vae), "text_encoder_parameters": count(text_encoder),
            "unet_channels": list(unet.config.block_out_channels), "layers_per_block": unet.config.layers_per_block,
            "vae_channels": list(vae.config.block_out_channels), "latent_size": latent}


def write_pairs(path: Path, n: int, resolution: int, seed: int) -> dict:
    """``n`` toy-world Pick-a-Pic rows, images upscaled (nearest) to ``resolution``, as one parquet file."""
    import datasets
    from PIL import Image

    def sized(png: bytes) -> bytes:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if image.size == (resolution, resolution):
            return png
        out = io.BytesIO()
        image.resize((resolution, resolution), Image.NEAREST).save(out, format="PNG")
        return out.getvalue()

    rows = [{"caption": r["caption"], "jpg_0": sized(r["jpg_0"]), "jpg_1": sized(r["jpg_1"]),
             "label_0": r["label_0"], "label_1": r["label_1"]} for r in toy_world().make_pairs(n, seed)]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return {"rows": n, "image_size": resolution, "mean_png_bytes": statistics.mean(len(r[k]) for r in rows for k in ("jpg_0", "jpg_1"))}
