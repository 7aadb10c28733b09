"""Shared fixtures."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

# Under pytest-xdist the workers share the machine's cores: one share each, not every core per worker.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def run_toy_recipe(tmp_path, name, *overrides):
    """A shipped toy recipe (``recipes/toy/<name>.yaml``) through the CLI, its logs and checkpoints under
    ``tmp_path``; returns ``(step, val/toy_reward)`` at each validation."""
    import csv
    import glob

    from alignsuite.cli import main

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(["fit", "--config", os.path.join(repo, "recipes", "toy", f"{name}.yaml"),
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
          "--checkpoint.dirpath", str(tmp_path / "ckpt"), *overrides])
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "*" / "version_*" / "metrics.csv"))[0])))
    return [(int(r["step"]), float(r["val/toy_reward"])) for r in rows if r.get("val/toy_reward")]


class FirstBatch(L.Callback):
    """Keeps the batch a fit's training step starts on (its first, in a one-step fit), as ``batch``."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = dict(batch)


def fit_two_rewards(recipe, dimensions: tuple[str, str], tmp_path, *overrides,
                    num_prompts: int | None = None) -> list[tuple[int, float, float]]:
    """A two-dimension toy recipe through the CLI, its logs under ``tmp_path`` (``num_prompts``: fewer evaluation
    prompts, its first callback's, rewritten); returns ``(step, val/reward_<first>, val/reward_<second>)`` at each
    validation."""
    import csv
    import glob

    import yaml

    from alignsuite.cli import main

    if num_prompts is not None:
        with open(recipe) as f:
            config = yaml.safe_load(f)
        config["trainer"]["callbacks"][0]["init_args"]["num_prompts"] = num_prompts
        os.makedirs(tmp_path, exist_ok=True)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(recipe), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(tmp_path / "ckpt"), *overrides])
    first, second = (f"val/reward_{d}" for d in dimensions)
    with open(glob.glob(os.path.join(str(tmp_path), "*", "version_*", "metrics.csv"))[0]) as f:
        return [(int(r["step"]), float(r[first]), float(r[second])) for r in csv.DictReader(f) if r.get(first)]


def perturb_panacea(backbone, seed: int = 0) -> None:
    """Move a Panacea backbone's adapters off their start (``U`` from 0, the shared singular values from 1), so that
    the adapter changes the outputs and what it does can be told apart from the base."""
    from alignsuite.backbones.svd_lora import adapters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters(backbone.policy).values():
            a.U.normal_(0, 0.2, generator=g)
            a.sigma.normal_(1, 0.5, generator=g)


def copy_panacea_into_lora(panacea, lora) -> None:
    """Set a PEFT LoRA backbone's adapters to a Panacea backbone's shared part (``B = U diag(sigma)``, ``A = V``):
    with no preference singular values the two then compute the same (LoRA alpha = r)."""
    from alignsuite.backbones.svd_lora import adapters

    peft_modules = dict(lora.policy.named_modules())
    with torch.no_grad():
        for name, a in adapters(panacea.policy).items():
            target = peft_modules["base_model.model." + name.rsplit(".panacea", 1)[0]]
            target.lora_B["default"].weight.copy_(a.U * a.sigma)
            target.lora_A["default"].weight.copy_(a.V)


def evaluate_front_of_short_runs(recipe, front_config, dimensions: tuple[str, str], tmp_path, weights, *overrides,
                                 num_prompts: int = 8, panacea=None) -> tuple[dict, str]:
    """MODPO runs of a two-dimension toy recipe, one per weight of ``weights`` (the first dimension's; the recipe
    shortened by ``overrides``), then ``evaluate`` with the shipped front config ``front_config`` on them, on its
    first ``num_prompts`` prompts and without its comparison runs; returns ``results.json`` and the page's text.
    The config's own points are checked to be the weights its commands train. ``panacea``: the world's Panacea
    recipe, run shortened the same way and swept at the config's ``preferences`` (its ``aligned``); without it,
    a config's Panacea run is left out."""
    import glob
    import json

    import yaml

    from alignsuite.cli import main

    with open(front_config) as f:
        shipped = yaml.safe_load(f)["evaluate"]
    assert [p["weights"] for p in shipped["front"]] == [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]]
    assert len(shipped["comparisons"]) == 1 and shipped["reference_point"] == [0.0, 0.0]
    front = []
    for w in weights:
        other = f"{1 - w:.1f}"
        fit_two_rewards(recipe, dimensions, tmp_path / f"w{w}", *overrides, "--model.objective.init_args.weights",
                        f"[{w}, {other}]", num_prompts=num_prompts)
        export = glob.glob(str(tmp_path / f"w{w}" / "*" / "version_*" / "export"))[0]
        front.append(f'{{label: "w{w}", aligned: {export}, weights: [{w}, {other}]}}')
    swept = ["--evaluate.aligned", "null", "--evaluate.preferences", "null"] if shipped.get("aligned") else []
    if panacea is not None:
        assert shipped["preferences"] == [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]]
        fit_two_rewards(panacea, dimensions, tmp_path / "panacea", *overrides, num_prompts=num_prompts)
        swept = ["--evaluate.aligned", glob.glob(str(tmp_path / "panacea" / "*" / "version_*" / "export"))[0]]
    out = tmp_path / "front"
    main(["evaluate", "--config", str(recipe), "--config", str(front_config), "--evaluate.front",
          f"[{', '.join(front)}]", "--evaluate.comparisons", "[]", "--evaluate.num_prompts", str(num_prompts),
          "--evaluate.num_resamples", "200", "--evaluate.output_dir", str(out), *swept])
    return json.loads((out / "results.json").read_text()), (out / "report.html").read_text()


def modpo_moves(recipe, dimensions: tuple[str, str], tmp_path, seed: int) -> dict[float, tuple[float, float]]:
    """The shipped two-dimension MODPO ``recipe`` at w = (0.8, 0.2) and (0.2, 0.8), data seed and seed_everything
    ``seed``: for each first weight, how far each reward moved from the base model's point (the validation at step
    0) to the last validation."""
    moves = {}
    for w in (0.8, 0.2):
        rewards = fit_two_rewards(recipe, dimensions, tmp_path / str(w), "--seed_everything", str(seed),
                                  "--data.init_args.seed", str(seed), "--model.objective.init_args.weights",
                                  f"[{w}, {round(1 - w, 1)}]")
        (step, base_first, base_second), (_, first, second) = rewards[0], rewards[-1]
        assert step == 0
        moves[w] = (first - base_first, second - base_second)
    return moves


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> str:
    """A random-init tiny Llama and the toy word-level tokenizer, written with ``save_pretrained``.

    Loads through the same ``from_pretrained`` path a real checkpoint takes, in well under a second.
    The weights are seeded (without touching the global RNG) so every run sees the same model. The
    init is wider than Llama's default so that next-token distributions depend clearly on the context:
    a near-uniform model would make "the prompt changes the score" a difference in the fourth decimal.
    """
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=1234, initializer_range=0.2)


def save_tiny_lm(path, seed: int, **config_overrides) -> str:
    """Save a seeded random-init tiny Llama (toy config and tokenizer, ``config_overrides`` applied)."""
    from transformers import LlamaForCausalLM

    from alignsuite.toy.llm import EchoWorld

    world = EchoWorld()
    tok = world.build_tokenizer()
    config = world.build_config(tok)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def save_tiny_pipeline(path, kind: str, seed: int = 0) -> str:
    """Save a seeded random-init tiny diffusers pipeline: "sd" (SD 1.5 layout), "sdxl", "sd3" or "flux"."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from alignsuite.toy.squares_base import SquaresBase

    parts = SquaresBase()  # the diffusion toy world's pipeline parts
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = parts.build_tokenizer()
        config = parts.text_config(tok)
        vae = parts.build_vae()
        if kind == "sd":
            pipe = diffusers.StableDiffusionPipeline(
                vae=vae, text_encoder=CLIPTextModel(config), tokenizer=tok, unet=parts.build_unet(32),
                scheduler=parts.build_scheduler(), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
        elif kind == "sdxl":
            unet = diffusers.UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=vae, text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
                tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=parts.build_scheduler())
        elif kind == "sd3":
            vae.register_to_config(shift_factor=0.1, scaling_factor=1.5)  # SD3's VAEs shift their latents
            transformer = diffusers.SD3Transformer2DModel(
                sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64)
            pipe = diffusers.StableDiffusion3Pipeline(
                vae=vae, text_encoder=CLIPTextModelWithProjection(config), text_encoder_2=CLIPTextModelWithProjection(config),
                text_encoder_3=None, tokenizer=tok, tokenizer_2=tok, tokenizer_3=None, transformer=transformer,
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
        elif kind == "flux":
            from transformers import T5Config, T5EncoderModel

            vae.register_to_config(shift_factor=0.1, scaling_factor=1.5)
            t5 = T5EncoderModel(T5Config(vocab_size=config.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                         num_heads=4, pad_token_id=config.pad_token_id))
            transformer = diffusers.FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(2, 2, 4))
            pipe = diffusers.FluxPipeline(
                vae=vae, text_encoder=CLIPTextModel(config), text_encoder_2=t5, tokenizer=tok, tokenizer_2=tok,
                transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
        else:
            raise ValueError(kind)
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> str:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"), "sd")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> str:
    """A seeded random-init tiny LLaVA (CLIP tower, projector, Llama) and its processor, saved with
    ``save_pretrained``; 32x32 images become 16 ``<image>`` tokens."""
    from alignsuite.toy.vlm import build_tiny_vlm

    return build_tiny_vlm("llava", tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_vl_dir(tmp_path_factory) -> str:
    """A seeded random-init tiny Qwen2.5-VL and its processor, saved with ``save_pretrained``; 32x32 images
    become 16 ``<|image_pad|>`` tokens. Skips without torchvision, which Qwen-VL processors need."""
    pytest.importorskip("torchvision", reason="transformers' Qwen2.5-VL processor needs torchvision")
    from alignsuite.toy.vlm import build_tiny_vlm

    return build_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("tiny_qwen_vl"), seed=0)
