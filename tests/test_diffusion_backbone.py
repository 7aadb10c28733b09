"""The diffusion backbone against direct computations on tiny SD 1.5-, SDXL-, SD3- and Flux-style pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alignsuite.backbones import LoraSpec
from alignsuite.backbones import TextToImage
from alignsuite.backbones.pipelines import absent_components
from alignsuite.reference import AdapterDisabled, FrozenCopy
from alignsuite.backbones.base import shared_prompts
from conftest import save_tiny_pipeline


@pytest.fixture(scope="module", params=["sd", "sdxl", "sd3", "flux"])
def pipeline_dir(request, tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp(request.param), request.param)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]


def backbone(path, **kwargs):
    kwargs = {"resolution": 16, "num_inference_steps": 3, "guidance_scale": 1.0, "random_flip": False, **kwargs}
    b = TextToImage(path, **kwargs)
    b.configure()
    return b


CAPTIONS = ["a square at the top left", "a square at the bottom right"]


def direct_error(b, prepared, model):
    """The per-sample mean squared error, computed here from the prepared tensors and the raw model."""
    c = prepared.cond
    if b.family.name == "flux":
        from diffusers import FluxPipeline

        n, ch, h, w = prepared.noisy.shape
        tokens = prepared.noisy.reshape(n, ch, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w // 4, ch * 4)
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1], ids[..., 2] = torch.arange(h // 2)[:, None], torch.arange(w // 2)[None, :]
        out = model(hidden_states=tokens, timestep=prepared.timesteps / 1000, guidance=torch.full((n,), b.guidance_scale),
                    pooled_projections=c["pooled_projections"], encoder_hidden_states=c["encoder_hidden_states"],
                    txt_ids=torch.zeros(c["encoder_hidden_states"].shape[1], 3), img_ids=ids.reshape(-1, 3)).sample
        pred = out.reshape(n, h // 2, w // 2, ch, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, ch, h, w)
        assert torch.equal(FluxPipeline._unpack_latents(out, h * b.pipe.vae_scale_factor, w * b.pipe.vae_scale_factor,
                                                        b.pipe.vae_scale_factor), pred)
    elif b.family.name == "sd3":
        pred = model(hidden_states=prepared.noisy, timestep=prepared.timesteps,
                     encoder_hidden_states=c["encoder_hidden_states"], pooled_projections=c["pooled_projections"]).sample
    elif b.family.name == "sdxl":
        pred = model(prepared.noisy, prepared.timesteps, c["encoder_hidden_states"],
                     added_cond_kwargs={"text_embeds": c["text_embeds"], "time_ids": c["time_ids"]}).sample
    else:
        pred = model(prepared.noisy, prepared.timesteps, c["encoder_hidden_states"]).sample
    return torch.stack([((pred[i] - prepared.target[i]) ** 2).mean() for i in range(len(pred))])


def test_score_is_minus_half_the_mean_squared_error(pipeline_dir):
    b = backbone(pipeline_dir)
    prepared = b.prepare(shared_prompts(CAPTIONS, images(2), images(2, seed=1)))
    out = b.score(prepared)
    torch.testing.assert_close(out.score, -0.5 * direct_error(b, prepared, b.policy), atol=1e-6, rtol=1e-5)
    assert out.length.tolist() == [1.0] * 4


def test_views_of_a_row_share_noise_and_timestep(pipeline_dir, monkeypatch):
    b = backbone(pipeline_dir)
    winners, losers = images(2), images(2, seed=1)
    prepared = b.prepare(shared_prompts(CAPTIONS, winners, losers))
    t = prepared.timesteps
    assert torch.equal(t[:2], t[2:]) and t[0] != t[1]
    # With a deterministic encoder, the same image in both views gives identical noisy inputs: the image
    # is the only difference between the views of a row.
    monkeypatch.setattr(b, "encode_images", lambda pixels: pixels[:, :, ::2, ::2].repeat(1, 2, 1, 1)[:, :4].float())
    same = b.prepare(shared_prompts(CAPTIONS, winners, winners))
    torch.testing.assert_close(same.noisy[:2], same.noisy[2:])
    torch.testing.assert_close(same.target[:2], same.target[2:])
    assert not torch.allclose(same.noisy[0], same.noisy[1])
    # A fresh draw each step.
    assert not torch.equal(b.prepare(shared_prompts(CAPTIONS, winners, losers)).timesteps, t)


def test_targets_match_the_prediction_type(tiny_sd_dir):
    eps = backbone(tiny_sd_dir, seed=3)
    v = backbone(tiny_sd_dir, seed=3, prediction_type="v_prediction")
    pe, pv = eps.prepare(shared_prompts(CAPTIONS, images(2))), v.prepare(shared_prompts(CAPTIONS, images(2)))
    torch.testing.assert_close(pe.noisy, pv.noisy)
    latents = eps.encode_images  # the noise is the epsilon target; v = alpha * noise - sigma * x0
    alphas = eps.train_scheduler.alphas_cumprod[pe.timesteps].view(-1, 1, 1, 1)
    x0 = (pe.noisy - (1 - alphas).sqrt() * pe.target) / alphas.sqrt()
    torch.testing.assert_close(pv.target, alphas.sqrt() * pe.target - (1 - alphas).sqrt() * x0, atol=1e-5, rtol=1e-4)
    del latents


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_flow_matching_interpolates_and_targets_velocity(tmp_path, kind, monkeypatch):
    b = backbone(save_tiny_pipeline(tmp_path / kind, kind))
    assert b.prediction == "flow_matching"
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(b, "encode_images", lambda pixels: x0)  # known clean latents
    p = b.prepare(shared_prompts(CAPTIONS, images(2)))
    sigma = (p.timesteps / 1000).view(-1, 1, 1, 1)  # FlowMatchEuler: t = 1000 * sigma
    assert ((sigma > 0) & (sigma <= 1)).all()
    noise = (p.noisy - (1 - sigma) * x0) / sigma  # x_t = (1 - s) x0 + s noise
    assert noise.std() == pytest.approx(1.0, abs=0.3)  # a standard normal draw, not x0 again
    torch.testing.assert_close(p.target, noise - x0, atol=1e-4, rtol=1e-4)  # the velocity target


def test_bad_settings_are_named(tiny_sd_dir, tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        backbone(tiny_sd_dir, resolution=15)
    with pytest.raises(ValueError, match="does not fit"):
        backbone(tiny_sd_dir, prediction_type="flow_matching")
    with pytest.raises(ValueError, match="unsupported prediction type"):
        backbone(tiny_sd_dir, prediction_type="sample")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    DDPMPipeline(UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                             down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")),
                 DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="DDPMPipeline; the TextToImage backbone supports"):
        backbone(str(tmp_path / "ddpm"))
    with pytest.raises(FileNotFoundError, match="no/such/pipe"):
        backbone("./no/such/pipe")


@pytest.mark.parametrize("alpha", [4, 16])  # alpha != r: the adapter alone must carry its scale alpha / r
def test_lora_reference_and_exports(tiny_sd_dir, tmp_path, alpha):
    from diffusers import DiffusionPipeline

    b = backbone(tiny_sd_dir, lora=LoraSpec(r=4, alpha=alpha))
    trainable = [n for n, p in b.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    with torch.no_grad():
        for n, p in b.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    prepared = b.prepare(shared_prompts(CAPTIONS, images(2), images(2, seed=1)))
    policy = b.score(prepared).score
    with torch.no_grad():
        off = AdapterDisabled().score(b, prepared, {})
        frozen = FrozenCopy()
        frozen.build(b)
        torch.testing.assert_close(off, frozen.score(b, prepared, {}))
    assert not torch.allclose(policy, off)

    b.save_pretrained(str(tmp_path / "merged"))
    merged = DiffusionPipeline.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(b.score(prepared, model=merged.unet).score, policy, atol=1e-5, rtol=1e-5)
    b.save_pretrained(str(tmp_path / "adapter"), merge_adapters=False)
    base = DiffusionPipeline.from_pretrained(tiny_sd_dir)
    base.load_lora_weights(str(tmp_path / "adapter"))
    torch.testing.assert_close(b.score(prepared, model=base.unet).score, policy, atol=1e-5, rtol=1e-5)


def test_export_loads_and_samples(pipeline_dir, tmp_path):
    from diffusers import DiffusionPipeline

    b = backbone(pipeline_dir)
    first = b.generate(CAPTIONS, seed=7)
    assert [im.size for im in first] == [(16, 16), (16, 16)]
    assert all(np.array_equal(np.asarray(a), np.asarray(c)) for a, c in zip(first, b.generate(CAPTIONS, seed=7)))
    b.save_pretrained(str(tmp_path / "out"))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "out", **absent_components(str(tmp_path / "out")))
    assert type(pipe).__name__ == type(b.pipe).__name__
    out = pipe(CAPTIONS[:1], num_inference_steps=2, height=16, width=16, guidance_scale=1.0).images
    assert out[0].size == (16, 16)
    assert os.path.exists(tmp_path / "out" / "model_index.json")


def test_export_keeps_the_base_pipeline_settings(pipeline_dir, tmp_path):
    """The exported model_index.json says what the base's says (components and settings alike): rebuilt with the
    pipeline class's defaults, an SD 1.5 export claimed ``requires_safety_checker: true`` over a base without a
    safety checker, and every later load printed diffusers' warning about it."""
    import json

    b = backbone(pipeline_dir)
    b.save_pretrained(str(tmp_path / "out"))
    base, out = (json.loads((p / "model_index.json").read_text()) for p in (Path(pipeline_dir), tmp_path / "out"))
    base.pop("_diffusers_version"), out.pop("_diffusers_version")
    assert out == base


def test_an_export_of_a_pipeline_without_safety_checker_loads_without_its_warning(tiny_sd_dir, tmp_path, capfd,
                                                                                   caplog):
    import json

    from diffusers import DiffusionPipeline

    backbone(tiny_sd_dir, lora=LoraSpec(r=4, alpha=8)).save_pretrained(str(tmp_path / "out"))  # merged
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["requires_safety_checker"] is False
    capfd.readouterr()
    caplog.clear()
    DiffusionPipeline.from_pretrained(tmp_path / "out")
    captured = capfd.readouterr()
    assert "safety checker" not in (captured.out + captured.err + caplog.text).lower()


@pytest.mark.parametrize("dtype, vae_dtype", [("bfloat16", "float32"), ("float32", "bfloat16")])
def test_generate_whatever_the_dtypes(pipeline_dir, dtype, vae_dtype):
    """Outside the Trainer's autocast (an image-grid callback) the text encoders stay float32 beside a
    bfloat16 denoiser or VAE: Flux's recipe ships this way, and sampling failed on the dtype mismatch."""
    b = backbone(pipeline_dir, dtype=dtype, vae_dtype=vae_dtype, lora=LoraSpec(r=4, alpha=8), guidance_scale=2.0)
    b.keep_trainable_float32()  # as the module does after configure
    first = b.generate(CAPTIONS, seed=3)
    assert [im.size for im in first] == [(16, 16), (16, 16)]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first, b.generate(CAPTIONS, seed=3)))
    assert "forward" not in b.policy.__dict__ and "decode" not in b.frozen["vae"].__dict__  # nothing left patched


def test_lora_on_a_bfloat16_denoiser_trains_in_float32(tiny_sd_dir, tmp_path):
    """LoRA added by diffusers on a bfloat16 UNet is bfloat16 (weights of ~0.02 do not move at lr 5e-5):
    under a real Trainer with bf16-mixed the adapters must be float32, and move."""
    import lightning as L

    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.toy.data import ToyPreferenceData

    b = TextToImage(tiny_sd_dir, resolution=16, random_flip=False, dtype="bfloat16", lora=LoraSpec(r=4, alpha=8))
    module = PreferenceModule(b, DPO(beta=50.0), optimizer=lambda params: torch.optim.AdamW(params, lr=5e-5),
                              lr_schedule="constant", warmup_ratio=0.0)
    start = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            start.update({n: p.detach().clone() for n, p in b.policy.named_parameters() if p.requires_grad})

    trainer = L.Trainer(accelerator="cpu", max_steps=3, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Snapshot()],
                        default_root_dir=str(tmp_path))
    trainer.fit(module, ToyPreferenceData(world="diffusion", num_train=12, num_val=4, batch_size=4))
    lora = {n: p for n, p in b.policy.named_parameters() if p.requires_grad}
    assert lora and all("lora" in n for n in lora) and start.keys() == lora.keys()
    assert {p.dtype for p in lora.values()} == {torch.float32}
    assert {p.dtype for n, p in b.policy.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    moved = [n for n in lora if "lora_A" in n and not torch.equal(start[n], lora[n].detach())]
    assert len(moved) == len([n for n in lora if "lora_A" in n])  # every A matrix moved (B starts at zero)


def test_each_rank_draws_its_own_noise_timesteps_and_flips(tiny_sd_dir):
    from types import SimpleNamespace

    draws = []
    for rank in (None, 0, 1):
        b = backbone(tiny_sd_dir, random_flip=True)
        if rank is not None:  # what Lightning's Trainer tells the backbone under two-process DDP
            b.on_fit_start(SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}, global_rank=rank))
            assert b.rank == rank
        draws.append(b.prepare(shared_prompts(CAPTIONS, images(2), images(2, seed=1))))
    alone, rank0, rank1 = draws
    assert torch.equal(alone.noisy, rank0.noisy) and torch.equal(alone.timesteps, rank0.timesteps)  # one process: unchanged
    assert not torch.equal(rank0.target, rank1.target)  # the noise (the epsilon target)
    assert not torch.equal(rank0.noisy, rank1.noisy)


def test_resumed_run_draws_the_noise_of_one_that_never_stopped(tiny_sd_dir, tmp_path):
    """Killed after step 3 of 4 in an epoch and resumed from last.ckpt, a diffusion run draws the same
    noise, timesteps and flips (the draw counter travels in the checkpoint) on the same rows: the same
    losses, step for step."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.toy.data import ToyPreferenceData

    class Recorder(L.Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    class CrashAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                raise RuntimeError("node lost")

    def fit(root, callbacks, ckpt_path=None):
        L.seed_everything(0)
        module = PreferenceModule(TextToImage(tiny_sd_dir, resolution=16), DPO(beta=2000.0),
                                  optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), warmup_ratio=0.0)
        trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            default_root_dir=str(root), callbacks=callbacks,
                            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
        trainer.fit(module, ToyPreferenceData(world="diffusion", num_train=8, num_val=4, batch_size=2), ckpt_path=ckpt_path)

    full = Recorder()
    fit(tmp_path / "a", [full])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(RuntimeError, match="node lost"):
        fit(tmp_path / "b", [ckpt, CrashAt()])
    assert torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)["backbone_state"] == {"draws": 3}
    resumed = Recorder()
    fit(tmp_path / "b", [resumed, ckpt], ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert len(resumed.losses) == 3 and len(set(full.losses)) == 6
    assert resumed.losses == pytest.approx(full.losses[3:], abs=1e-6)


def test_denoising_score_masks_elements_and_counts_them():
    from alignsuite.backbones.denoising import denoising_score

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)  # e.g. 5 mel frames of 4 bins
    score, length = denoising_score(pred, target)
    torch.testing.assert_close(score, -0.5 * ((pred - target) ** 2).mean(dim=(1, 2)))
    assert length.tolist() == [20.0] * 3
    frames = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])[:, :, None]  # the scored frames
    score, length = denoising_score(pred, target, frames)
    assert length.tolist() == [8.0, 12.0, 20.0]
    for i, _n in enumerate([2, 3, 5]):
        keep = frames[i, :, 0].bool()
        torch.testing.assert_close(score[i], -0.5 * ((pred[i][keep] - target[i][keep]) ** 2).mean())


def test_flow_matching_core_on_any_shape_and_its_timestep_densities():
    """The core knows no images: ``[N, T, D]`` frames noise as ``[N, C, H, W]`` latents do. Its logit-normal
    draw is diffusers' ``compute_density_for_timestep_sampling`` (``sigmoid`` of a standard normal, SD3's
    convention), the very numbers ``sigmoid(randn)`` gives from the same generator."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from alignsuite.backbones.denoising import FlowMatching, draw

    config = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    for n in (1, 7, 64):
        drawn = compute_density_for_timestep_sampling("logit_normal", n, 0.0, 1.0, generator=torch.Generator().manual_seed(n))
        assert torch.equal(drawn, torch.sigmoid(torch.randn(n, generator=torch.Generator().manual_seed(n))))
    x0 = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(1))  # 2 views of 2 rows
    timesteps, noisy, target = draw(FlowMatching(config, "logit_normal"), x0, 2, torch.Generator().manual_seed(2))
    assert torch.equal(timesteps[:2], timesteps[2:])
    sigma = (timesteps / 1000).view(-1, 1, 1)
    noise = (noisy - (1 - sigma) * x0) / sigma
    torch.testing.assert_close(noise[:2], noise[2:])  # one draw per row, shared by its views
    torch.testing.assert_close(target, noise - x0, atol=1e-5, rtol=1e-5)


def test_an_autocast_reference_scores_a_float32_copys_scores_under_autocast(pipeline_dir):
    """The frozen copy's default under bf16-mixed (its linear and convolution weights stored in bfloat16) computes
    what a float32 copy computes under autocast, for every pipeline family's denoiser."""
    b = backbone(pipeline_dir)
    prepared = b.prepare(shared_prompts(CAPTIONS, images(2), images(2, seed=1)))
    scores = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for dtype in ("float32", "autocast"):
            reference = FrozenCopy(dtype=dtype)
            reference.build(b)
            scores[dtype] = reference.score(b, prepared, {}).float()
    torch.testing.assert_close(scores["autocast"], scores["float32"], rtol=0, atol=0)
