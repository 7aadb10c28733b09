"""Diffusion through the CLI and the Trainer: a tiny pipeline saved with ``save_pretrained`` and
Pick-a-Pic-layout parquet data train, the exported folder loads into ``DiffusionPipeline`` and samples, the
weights moved; the sampling callbacks sample once per optimizer step."""

from __future__ import annotations

import csv

import datasets
import pytest
import torch
import yaml
from conftest import save_tiny_pipeline

from alignsuite.cli import main
from alignsuite.toy.squares import SquaresWorld


def unet_weights(path):
    from diffusers import UNet2DConditionModel

    return {k: v.clone() for k, v in UNet2DConditionModel.from_pretrained(path, subfolder="unet").state_dict().items()}


def pickapic_parquet(path, n):
    rows = SquaresWorld().make_pairs(n, seed=0)
    datasets.Dataset.from_list([{k: r[k] for k in ("caption", "jpg_0", "jpg_1", "label_0")} for r in rows]).to_parquet(str(path))
    return str(path)


def diffusion_recipe(tmp_path, pipeline, train, objective, extra_backbone=None, reference=None):
    model = {
        "backbone": {"class_path": "alignsuite.backbones.TextToImage",
                     "init_args": {"model_name_or_path": pipeline, "resolution": 16, "num_inference_steps": 2,
                                   **(extra_backbone or {})}},
        "objective": objective,
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    }
    if reference:
        model["reference"] = reference
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 3, "limit_val_batches": 1, "val_check_interval": 3,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
                    "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "t", "version": 0}}},
        "model": {"class_path": "alignsuite.module.PreferenceModule", "init_args": model},
        "data": {"class_path": "alignsuite.data.PreferenceDataModule",
                 "init_args": {"layout": {"class_path": "alignsuite.data.ImagePairs"}, "train": train, "val_fraction": 0.25, "batch_size": 4}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def losses(tmp_path):
    with open(tmp_path / "runs" / "t" / "version_0" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("method", ["dpo", "mapo"])
def test_fit_exports_a_pipeline_that_loads_and_samples(tmp_path, method):
    from diffusers import DiffusionPipeline

    pipeline = save_tiny_pipeline(tmp_path / "sd", "sd")
    train = pickapic_parquet(tmp_path / "pickapic.parquet", 17)
    if method == "dpo":
        objective = {"class_path": "alignsuite.objectives.DPO", "init_args": {"beta": 2000.0}}
    else:
        objective = {"class_path": "alignsuite.objectives.MaPO"}
    main(["fit", "--config", diffusion_recipe(tmp_path, pipeline, train, objective,
                                              extra_backbone={"cache_dir": str(tmp_path / "enc")})])
    seen = losses(tmp_path)
    assert len(seen) == 3 and all(torch.isfinite(torch.tensor(seen)))
    if method == "dpo":
        assert seen[0] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at the first step

    export = tmp_path / "runs" / "t" / "version_0" / "export"
    before, after = unet_weights(pipeline), unet_weights(str(export))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    pipe = DiffusionPipeline.from_pretrained(str(export))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a red square at the top left"], num_inference_steps=2, height=16, width=16,
                  generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (16, 16)
    # The checkpoint holds the UNet only: no VAE, text encoder or reference weights.
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in ckpt["state_dict"] if k.startswith(("reference.", "backbone.frozen."))]


def accumulating_fit(tmp_path, callback, **trainer_args):
    """Two optimizer steps of 4 micro-batches each on the tiny SD pipeline, with ``callback``."""
    import lightning as L

    from alignsuite.backbones import TextToImage
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.toy.data import ToyPreferenceData

    backbone = TextToImage(save_tiny_pipeline(tmp_path / "sd", "sd"), resolution=16, random_flip=False,
                           num_inference_steps=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[callback], default_root_dir=str(tmp_path), **trainer_args)
    trainer.fit(PreferenceModule(backbone, DPO(beta=50.0)),
                ToyPreferenceData(world="diffusion", num_train=32, num_val=4, batch_size=2))


def test_image_grid_samples_once_per_optimizer_step(tmp_path):
    """With gradient accumulation a grid was sampled at every micro-batch (128 times per grid in the
    Flux recipe): before training, then at steps 1 and 2 only."""
    from alignsuite.callbacks import ImageGrid

    grid = ImageGrid(prompts=["a square at the top left", "a square at the bottom right"], every_n_steps=1)
    accumulating_fit(tmp_path, grid, limit_val_batches=0)
    assert [p.rsplit("/", 1)[-1] for p in grid.written] == ["step_000000.png", "step_000001.png", "step_000002.png"]


def test_generation_reward_is_measured_once_per_optimizer_step(tmp_path):
    """A validation after every micro-batch (val_check_interval counts batches) generated and scored again
    each time; now once per global step, the value reused by validations at the same step."""
    from alignsuite.callbacks import GenerationReward

    reward = GenerationReward(world="diffusion", num_prompts=2, batch_size=2)
    calls = []
    evaluate = reward.evaluate
    reward.evaluate = lambda module: calls.append(module.global_step) or evaluate(module)
    accumulating_fit(tmp_path, reward, limit_val_batches=1, val_check_interval=1)
    assert calls == [0, 1, 2]
    assert [step for step, _ in reward.history] == [0, 1, 2]


def test_the_flux_recipe_as_shipped_starts(tmp_path):
    """recipes/diffusion/flux_dpo_lora.yaml on a tiny Flux pipeline, on the CPU: bfloat16 transformer beside
    float32 text encoders and VAE, bf16-mixed, LoRA, the encoding cache, and its image grid (which could not
    sample outside autocast). Only what a CPU and a tiny model need is overridden."""
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    backbone = "--model.init_args.backbone.init_args."
    main(["fit", "--config", os.path.join(repo, "recipes", "diffusion", "flux_dpo_lora.yaml"),
          f"{backbone}model_name_or_path", save_tiny_pipeline(tmp_path / "flux", "flux"), f"{backbone}resolution", "16",
          f"{backbone}cache_dir", str(tmp_path / "enc"), "--trainer.accelerator", "cpu", "--trainer.strategy", "auto",
          "--trainer.devices", "1", "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "2",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks.init_args.every_n_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--checkpoint.dirpath", str(tmp_path / "ckpt"),
          "--data.init_args.train", pickapic_parquet(tmp_path / "pickapic.parquet", 8), "--data.init_args.val", "null",
          "--data.init_args.num_workers", "0"])
    grids = sorted(p.name for p in (tmp_path / "runs").rglob("step_*.png"))
    assert grids == ["step_000000.png", "step_000001.png", "step_000002.png"]
    assert (tmp_path / "runs" / "flux_dpo_lora" / "version_0" / "export").is_dir()
