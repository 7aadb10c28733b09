"""The diffusion toy world: Pick-a-Pic-layout pairs, the reward, the tokenizer, and the pipeline builder."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from conftest import run_toy_recipe
from PIL import Image

from alignsuite.toy import get_world
from alignsuite.toy.squares import IMAGE_SIZE, POSITIONS, SquaresWorld, caption_for, draw_square, square_colour
from alignsuite.toy.squares_base import MAX_TOKENS, WORDS, SquaresBase

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def square_image(position: str, rgb, background: float = 0.08) -> np.ndarray:
    """A float image with an unjittered 5x5 square of colour ``rgb`` at ``position``."""
    image = draw_square(position, "red", random.Random(0)).astype(np.float32) / 255.0
    image[:] = background
    qy, qx = POSITIONS[position]
    y, x = qy * 8 + 1, qx * 8 + 1
    image[y : y + 5, x : x + 5] = rgb
    return image


def test_registered_as_diffusion():
    assert isinstance(get_world("diffusion"), SquaresWorld)


def test_make_pairs_has_the_pick_a_pic_layout():
    rows = SquaresWorld().make_pairs(32, seed=3)
    assert len(rows) == 32
    for row in rows:
        assert set(row) == {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "reward_0", "reward_1"}
        assert row["caption"] in {caption_for(p) for p in POSITIONS}
        for key in ("jpg_0", "jpg_1"):
            assert isinstance(row[key], bytes) and row[key].startswith(PNG_MAGIC)
            assert decode(row[key]).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert row["label_0"] in (0.0, 1.0) and row["label_1"] == 1.0 - row["label_0"]
    # The winner sits in either column, so a loader's swap logic is exercised.
    assert 0 < sum(row["label_0"] for row in rows) < 32


def test_make_pairs_is_deterministic_per_seed():
    world = SquaresWorld()
    assert world.make_pairs(8, seed=5) == world.make_pairs(8, seed=5)
    assert world.make_pairs(8, seed=5) != world.make_pairs(8, seed=6)


def test_the_labelled_winner_is_the_red_square_at_the_captioned_place():
    world = SquaresWorld()
    for row in world.make_pairs(64, seed=0):
        winner, loser = (row["jpg_0"], row["jpg_1"]) if row["label_0"] == 1.0 else (row["jpg_1"], row["jpg_0"])
        assert square_colour(row["caption"], winner) == "red"
        assert square_colour(row["caption"], loser) == "blue"
        assert world.reward(row["caption"], winner) == 1.0  # every drawn red square, any jitter, scores 1
        assert world.reward(row["caption"], loser) == 0.0
        # The per-image reward columns (SmPO's) are the world's reward of each column's image.
        assert (row["reward_0"], row["reward_1"]) == (row["label_0"], row["label_1"])


@pytest.mark.parametrize("position", list(POSITIONS))
def test_reward_on_synthetic_images(position):
    world = SquaresWorld()
    caption = caption_for(position)
    other = next(p for p in POSITIONS if p != position)
    assert world.reward(caption, square_image(position, (0.9, 0.05, 0.05))) == 1.0
    assert world.reward(caption, square_image(position, (0.05, 0.05, 0.9))) == 0.0
    assert world.reward(caption, square_image(other, (0.9, 0.05, 0.05))) == 0.0  # red, but in the wrong place
    assert world.reward(caption, np.full((16, 16, 3), 0.08, np.float32)) == 0.0  # blank
    assert world.reward(caption, np.full((16, 16, 3), (0.9, 0.05, 0.05), np.float32)) == 0.0  # red everywhere
    noise = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
    assert world.reward(caption, noise) == 0.0
    # Continuous in between: r - max(g, b) = 0.25 is half-way red; a stray second square costs everything.
    assert world.reward(caption, square_image(position, (0.6, 0.05, 0.35))) == pytest.approx(0.5, abs=1e-5)
    two = np.maximum(square_image(position, (0.9, 0.05, 0.05)), square_image(other, (0.9, 0.05, 0.05)))
    assert world.reward(caption, two) == 0.0


def test_reward_accepts_the_formats_a_sampler_returns():
    world = SquaresWorld()
    caption = caption_for("bottom right")
    image = draw_square("bottom right", "red", random.Random(1))
    pil = Image.fromarray(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    big = pil.resize((64, 64), Image.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    for form in (image, pil, tensor, big, buffer.getvalue()):
        assert world.reward(caption, form) == 1.0


def test_reward_needs_a_position_in_the_caption():
    with pytest.raises(ValueError, match="names no position"):
        SquaresWorld().reward("a red square", np.zeros((16, 16, 3), np.float32))


def test_eval_prompts_are_fixed_and_cover_every_position():
    world = SquaresWorld()
    prompts = world.eval_prompts(64, seed=1234)
    assert prompts == world.eval_prompts(64, seed=1234)
    assert prompts != world.eval_prompts(64, seed=1)
    assert {p: prompts.count(p) for p in set(prompts)} == {caption_for(p): 16 for p in POSITIONS}


def test_generation_kwargs():
    kwargs = SquaresWorld.generation_kwargs
    assert kwargs["height"] == kwargs["width"] == IMAGE_SIZE
    assert 20 <= kwargs["num_inference_steps"] <= 25 and kwargs["guidance_scale"] >= 1.0


def test_tokenizer_files_load_back_with_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    SquaresBase.write_tokenizer_files(str(tmp_path))
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert tok.model_max_length == MAX_TOKENS
    for word in WORDS:  # every caption word is one token
        assert tok.convert_ids_to_tokens(tok(word, add_special_tokens=False).input_ids) == [word + "</w>"]
    ids = tok("A square at the BOTTOM left", padding="max_length", max_length=tok.model_max_length).input_ids
    assert tok.convert_ids_to_tokens(ids) == (
        ["<|startoftext|>", "a</w>", "square</w>", "at</w>", "the</w>", "bottom</w>", "left</w>"]
        + ["<|endoftext|>"] * 3
    )
    # Anything else falls back to characters instead of failing.
    assert tok.convert_ids_to_tokens(tok("xyz", add_special_tokens=False).input_ids) == ["x", "y", "z</w>"]


def test_untrained_pipeline_saves_loads_and_samples(tmp_path):
    from diffusers import DiffusionPipeline

    world = SquaresWorld()
    world.build_base_model(str(tmp_path), vae_steps=0, unet_steps=0, num_images=64)
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert pipe.scheduler.config.prediction_type == "epsilon" and pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.safety_checker is None
    pipe.set_progress_bar_config(disable=True)
    prompts = world.eval_prompts(2, seed=0)
    kwargs = dict(world.generation_kwargs, num_inference_steps=2)
    images = pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert [im.size for im in images] == [(IMAGE_SIZE, IMAGE_SIZE)] * 2
    assert all(0.0 <= world.reward(p, im) <= 1.0 for p, im in zip(prompts, images))
    again = pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in again]


def test_diffusion_dpo_recipe_raises_the_reward(tmp_path):
    """The default diffusion recipe, cut to its first 100 steps, from the shipped base: 0.373 -> 0.998. With these
    pairs, noise seeds 0-3 and one thread or two all end at 0.985-0.998, far from the bound (other data seeds
    can fail: the README says which)."""
    reward = run_toy_recipe(tmp_path, "diffusion_dpo", "--trainer.max_steps", "100")
    assert reward[0][0] == 0 and reward[0][1] < 0.6
    assert reward[-1][1] >= 0.8, reward
    assert glob_images(tmp_path), "the image grid was not written"


def glob_images(tmp_path):
    import glob

    return glob.glob(str(tmp_path / "**" / "*.png"), recursive=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffusion_dpo", "diffusion_mapo", "diffusion_kto", "diffusion_smpo", "diffusion_seppo",
                                  "diffusion_list_mle"])
def test_every_diffusion_toy_recipe_raises_the_reward(tmp_path, name):
    reward = run_toy_recipe(tmp_path, name)
    assert reward[0][0] == 0 and reward[0][1] < 0.6
    assert reward[-1][1] >= 0.8, reward


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_listwise_diffusion_recipe_raises_the_reward_on_every_data_seed(tmp_path, seed):
    """The listwise recipe (list_mle, beta 500), cut to its first 100 steps, with data seed N (and
    ``seed_everything`` N), from the shipped base: 0.373 -> 0.64-0.69 at step 100 on seeds 0-3 (docs/diffusion.md).
    At beta 50 seed 2 fell to 0.28 and seed 3 reached only 0.42."""
    reward = run_toy_recipe(tmp_path, "diffusion_list_mle", "--trainer.max_steps", "100",
                            "--seed_everything", str(seed), "--data.init_args.seed", str(seed))
    assert reward[0][0] == 0 and reward[0][1] < 0.4
    assert reward[-1][0] > 0 and reward[-1][1] >= 0.5, reward
