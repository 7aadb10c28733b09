"""On a CUDA device: scores agree with the CPU's, and fits through the CLI in mixed precision work.

Run with ``python -m pytest -m gpu``; skipped where no CUDA device is visible.
"""

from __future__ import annotations

import io

import pytest
import torch
import yaml

from alignsuite.cli import main
from alignsuite.backbones.base import shared_prompts

from conftest import save_tiny_pipeline
from test_cli import metrics, recipe, weights, write_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = ["echo a b c", "echo d e"]
CHOSEN = ["A B C", "D E"]
REJECTED = ["a b c", "D x"]


def test_causal_lm_scores_match_the_cpu(tiny_lm_dir):
    from alignsuite.backbones import CausalLM

    backbone = CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12)
    backbone.configure()
    backbone.policy.eval()
    prepared = backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    on_cpu = backbone.score(prepared).score
    backbone.policy.cuda()
    on_gpu = backbone.score(prepared.to("cuda")).score.cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


def test_flex_attention_trains_the_packed_layout_as_sdpa_does(tiny_lm_dir):
    """The packed layout under flex attention's block mask: the scores and gradients of SDPA's dense mask."""
    from alignsuite.backbones import CausalLM

    out = {}
    for attention in ("sdpa", "flex_attention"):
        backbone = CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12, attn_implementation=attention)
        backbone.configure()
        backbone.policy.cuda()
        prepared = backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
        assert prepared.segments is not None
        score = backbone.score(prepared).score
        (score * torch.linspace(-1, 2, score.numel(), device=score.device)).sum().backward()
        out[attention] = score.detach().cpu(), {n: p.grad.cpu() for n, p in backbone.policy.named_parameters()}
    (a, grads_a), (b, grads_b) = out["sdpa"], out["flex_attention"]
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_diffusion_scores_match_the_cpu(tmp_path):
    from PIL import Image

    from alignsuite.backbones import TextToImage
    from alignsuite.toy.squares import SquaresWorld

    folder = save_tiny_pipeline(tmp_path / "sd", "sd")
    backbone = TextToImage(folder, resolution=16, random_flip=False)
    backbone.configure()
    backbone.policy.eval()
    pairs = SquaresWorld().make_pairs(2, seed=0)
    views = [[Image.open(io.BytesIO(p[k])).convert("RGB") for p in pairs] for k in ("jpg_0", "jpg_1")]
    prompts = [p["caption"] for p in pairs]
    prepared = backbone.prepare(shared_prompts(prompts, *views))
    on_cpu = backbone.score(prepared).score
    backbone.policy.cuda()
    backbone.frozen.cuda()
    moved = type(prepared)(prepared.noisy.cuda(), prepared.target.cuda(), prepared.timesteps.cuda(),
                           {k: v.cuda() for k, v in prepared.cond.items()})
    on_gpu = backbone.score(moved).score.cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def test_bf16_fit_on_the_gpu_exports_changed_weights(tmp_path, tiny_lm_dir):
    from alignsuite.toy.llm import EchoWorld

    pairs = write_jsonl(tmp_path / "pairs.jsonl", EchoWorld().make_pairs(48, seed=3))
    path = recipe(tmp_path, tiny_lm_dir, pairs)
    config = yaml.safe_load(open(path))
    config["trainer"].update(accelerator="gpu", devices=1, precision="bf16-mixed")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    before = weights(tiny_lm_dir)
    main(["fit", "--config", path])
    after = weights(str(tmp_path / "runs" / "t" / "version_0" / "export"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    losses = [float(r["train/loss"]) for r in metrics(tmp_path) if r.get("train/loss")]
    assert len(losses) == 4 and losses[0] == pytest.approx(0.6931, abs=5e-3)  # ln 2, to bf16 rounding


def test_diffusion_dpo_fit_on_the_gpu(tmp_path):
    from alignsuite.toy.squares import SquaresWorld

    folder = save_tiny_pipeline(tmp_path / "sd", "sd")
    rows = SquaresWorld().make_pairs(32, seed=0)
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "max_steps": 4,
                    "limit_val_batches": 1, "val_check_interval": 2, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "t", "version": 0}}},
        "model": {"class_path": "alignsuite.module.PreferenceModule", "init_args": {
            "backbone": {"class_path": "alignsuite.backbones.TextToImage",
                         "init_args": {"model_name_or_path": folder, "resolution": 16}},
            "objective": {"class_path": "alignsuite.objectives.DPO", "init_args": {"beta": 2000.0}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4}}}},
        "data": {"class_path": "alignsuite.toy.data.ToyPreferenceData",
                 "init_args": {"world": "diffusion", "num_train": len(rows), "num_val": 8, "batch_size": 4}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    losses = [float(r["train/loss"]) for r in metrics(tmp_path) if r.get("train/loss")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(0.6931, abs=5e-3)
