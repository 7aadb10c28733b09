"""The diffusion toy world's base model: a real, tiny ``StableDiffusionPipeline`` built and trained here.

A 2x-downsampling ``AutoencoderKL`` trained briefly on the world's 16x16 images, a 2-layer ``CLIPTextModel``
with a word-level CLIP tokenizer written here, a ``UNet2DConditionModel`` on 8x8x4 latents and a DDIM
scheduler. The UNet trains on the images the world gives it (:mod:`alignsuite.toy.squares`: an even mix of
red and blue squares, so it draws each about half the time). The package ships the folder it saves;
``python -m alignsuite.toy.rebuild diffusion`` trains it again.

The parts know nothing of the world: the world holds a :class:`SquaresBase` and hands it its training images,
so this module imports nothing of the world's.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable

import torch

# The tokenizer: whole words (with CLIP's end-of-word suffix) built by merges, over a character fallback.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ["a", "square", "at", "the", "top", "bottom", "left", "right", "red", "blue", "in", "corner"]
MAX_TOKENS = 10  # BOS + up to 8 words + EOS
IMAGE_SIZE = 16  # the world's images, 16x16 RGB


class SquaresBase:
    """The base pipeline's parts, each built from a config, and its training (:meth:`build_base_model`) on the
    images a world gives it."""

    @staticmethod
    def write_tokenizer_files(path: str) -> None:
        """``vocab.json``/``merges.txt``/``tokenizer_config.json`` of a word-level CLIP BPE tokenizer.

        Each word is merged left to right from its characters into one token ("square</w>"); any other
        text falls back to characters.
        """
        chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,'-"))
        vocab = [BOS, EOS] + chars + [c + "</w>" for c in chars]
        merges: list[tuple[str, str]] = []
        for word in WORDS:
            # Merge whatever the earlier merges leave of this word, left to right. Appended merges rank after
            # all earlier ones, so they never change how an earlier word splits.
            pieces = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], merges)
            while len(pieces) > 1:
                merges.append((pieces[0], pieces[1]))
                if pieces[0] + pieces[1] not in vocab:
                    vocab.append(pieces[0] + pieces[1])
                pieces = _apply_merges(pieces, merges)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "vocab.json"), "w") as f:
            json.dump({token: i for i, token in enumerate(vocab)}, f, indent=0)
        with open(os.path.join(path, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "bos_token": BOS,
                       "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, f, indent=1)

    def build_tokenizer(self):
        from transformers import CLIPTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            self.write_tokenizer_files(tmp)
            return CLIPTokenizer.from_pretrained(tmp)

    @staticmethod
    def text_config(tokenizer):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )

    def build_text_encoder(self, tokenizer):
        """A random 2-layer CLIP text encoder, frozen from here on, as SD's pretrained one is.

        Its token embeddings are drawn at unit scale: at CLIP's init scale (0.02) the shared start token
        and position embeddings dominate, and the four captions' hidden states agree to a cosine of 0.99,
        which leaves the UNet almost nothing to condition on.
        """
        from transformers import CLIPTextModel

        model = CLIPTextModel(self.text_config(tokenizer))
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=1.0)
        return model.eval().requires_grad_(False)

    @staticmethod
    def build_vae():
        from diffusers import AutoencoderKL

        return AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
        )

    @staticmethod
    def build_unet(cross_attention_dim: int = 32):
        """8x8x4 latents; attention (self and cross) only at 4x4 and in the mid block. Attention at 8x8
        doubled the step time on CPU, and the caption only needs to pick a quadrant, 2x2 cells at 4x4."""
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(
            sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
            attention_head_dim=8, norm_num_groups=8,
        )

    @staticmethod
    def build_scheduler():
        from diffusers import DDIMScheduler

        # SD 1.5's noise schedule and epsilon prediction over 1000 steps (a training backbone rebuilds a DDPM
        # scheduler from this config); no clipping of x0, since latents are not bounded to [-1, 1]; "trailing"
        # spacing starts sampling at t = 999 (steps_offset then plays no part).
        return DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
            clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing", steps_offset=1,
        )

    # ------------------------------------------------------------- the base model
    def build_base_model(
        self, path: str, training_images: Callable[[int, int], tuple[torch.Tensor, list[str]]], vae_steps: int = 200,
        unet_steps: int = 700, batch_size: int = 32, num_images: int = 4096, seed: int = 0, log: bool = False,
    ) -> None:
        """Train the autoencoder, then the UNet on its latents (text encoder frozen at its seeded init),
        and save a ``StableDiffusionPipeline`` folder. ``vae_steps=unet_steps=0`` saves the random init.

        ``training_images(n, seed)`` gives ``n`` images as ``[n, 3, 16, 16]`` in [-1, 1] and their captions."""
        from diffusers import StableDiffusionPipeline

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tokenizer = self.build_tokenizer()
            text_encoder = self.build_text_encoder(tokenizer)
            vae, unet, scheduler = self.build_vae(), self.build_unet(text_encoder.config.hidden_size), self.build_scheduler()
            pixels, captions = training_images(num_images, seed)
            gen = torch.Generator().manual_seed(seed)
            _train_vae(vae, pixels, vae_steps, batch_size, gen, log)
            _train_unet(unet, vae, text_encoder, tokenizer, scheduler, pixels, captions, unet_steps, batch_size, gen, log)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(path)


def _apply_merges(pieces: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair merging as the tokenizer does it: always the best-ranked adjacent pair first."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(pieces) > 1:
        best = min(range(len(pieces) - 1), key=lambda i: rank.get((pieces[i], pieces[i + 1]), len(rank)))
        if (pieces[best], pieces[best + 1]) not in rank:
            break
        pieces = pieces[:best] + [pieces[best] + pieces[best + 1]] + pieces[best + 2 :]
    return pieces


def _train_vae(vae, pixels: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator, log: bool) -> None:
    """Reconstruction MSE plus a tiny KL (SD's weight, 1e-6 on the summed KL), then set the latent scale."""
    # Fix the posterior's std at e^-4 ~ 0.02, near-deterministic as a trained SD VAE's is: a few hundred
    # steps would leave it near its initial std of 1 (and Adam random-walks it on the reparameterisation's
    # noisy gradient), and latent noise that size swamps what the UNet can learn.
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:] = 0.0
        vae.quant_conv.bias[c:] = -8.0
    logvar_rows = torch.ones_like(vae.quant_conv.bias, dtype=torch.bool)
    logvar_rows[:c] = False
    optim = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    vae.train()
    for step in range(steps):
        x = pixels[torch.randint(0, len(pixels), (batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        mse = (recon - x).pow(2).mean()
        loss = mse + 1e-6 * posterior.kl().mean()
        loss.backward()
        vae.quant_conv.weight.grad[logvar_rows] = 0.0
        vae.quant_conv.bias.grad[logvar_rows] = 0.0
        optim.step()
        optim.zero_grad()
        decay.step()
        if log and step % 50 == 0:
            print(f"vae {step}: mse {mse.item():.5f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = vae.encode(pixels[:1024]).latent_dist.mean
    # Unit-variance latents, as SD's 0.18215 gives its VAE.
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


def _train_unet(unet, vae, text_encoder, tokenizer, scheduler, pixels, captions, steps, batch_size, gen, log) -> None:
    """Epsilon-prediction loss weighted as v-prediction's, ``(1 + SNR) / SNR`` capped at 20; 15% of
    captions dropped to "" so classifier-free guidance works.

    Which quadrant the square lands in is decided at high noise (SNR ~0.01-0.3), where the plain epsilon
    loss weighs the clean image's error by SNR alone: trained that way for 700 steps the UNet ignored its
    caption (the same loss under the right, a wrong and the empty caption; 31% of samples in the right
    quadrant). With this weight 89% are, in the same steps.
    """
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(scheduler.config)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        mean, std = posterior.mean, posterior.std
        texts = sorted(set(captions)) + [""]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        embeds = text_encoder(ids)[0]
    index = {t: i for i, t in enumerate(texts)}
    caption_ids = torch.tensor([index[c] for c in captions])
    optim = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))
    )
    unet.train()
    sf = vae.config.scaling_factor
    half, twin = batch_size // 2, len(pixels) // 2
    for step in range(steps):
        # Every red square comes with its blue twin under the same noise, timestep and caption (dropped or
        # not): the batches are exactly balanced, so the last steps leave no drift towards either colour.
        pick = torch.randint(0, twin, (half,), generator=gen)
        pick = torch.cat([pick, pick + twin])
        latents = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * sf
        cond = caption_ids[pick].masked_fill((torch.rand(half, generator=gen) < 0.15).repeat(2), index[""])
        noise = torch.randn((half, *latents.shape[1:]), generator=gen).repeat(2, 1, 1, 1)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (half,), generator=gen).repeat(2)
        pred = unet(ddpm.add_noise(latents, noise, t), t, embeds[cond]).sample
        snr = ddpm.alphas_cumprod[t] / (1 - ddpm.alphas_cumprod[t])
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * ((1 + snr) / snr).clamp(max=20.0)).mean()
        loss.backward()
        optim.step()
        optim.zero_grad()
        warmup.step()
        if log and step % 100 == 0:
            print(f"unet {step}: loss {loss.item():.4f}")
    unet.eval()
