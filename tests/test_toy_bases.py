"""The toy worlds' base models ship with the package, so a fresh clone trains nothing and every machine starts
from the same weights; the code that trained them still does, into the documented band."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from alignsuite.toy import get_world, resolve_toy_model, shipped_path
from alignsuite.toy.worlds import base_worlds, known_worlds
from alignsuite.toy.rebuild import rebuild


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache that must stay empty: whatever a test needs comes from the package."""
    monkeypatch.setenv("ALIGNSUITE_CACHE", str(tmp_path / "cache"))
    yield tmp_path / "cache"
    assert not os.path.exists(tmp_path / "cache"), os.listdir(tmp_path / "cache")


@pytest.mark.parametrize("name", known_worlds())
def test_every_world_ships_a_saved_base_that_loads_without_training(empty_cache, name):
    path = resolve_toy_model(name)
    assert path == shipped_path(name) and os.path.isdir(path)
    files = os.listdir(path) + [f for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                                for f in os.listdir(os.path.join(path, d))]
    assert any(f.endswith(".safetensors") for f in files), files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".lock")) for f in files), files  # nothing that unpickles
    for root, _, names in os.walk(path):  # no config records the folder of the machine that built it
        for f in names:
            if f.endswith(".json"):
                text = open(os.path.join(root, f)).read()
                assert '"_name_or_path": "/' not in text and '"name_or_path": "/' not in text, (root, f)


@pytest.mark.parametrize("name", ["tts", "tts_flow"])
def test_speech_worlds_ship_their_recipes_pairs(empty_cache, name):
    world = get_world(name)
    assert world.shipped_pairs
    for n, seed in world.shipped_pairs:
        assert os.path.isfile(shipped_path(name, f"-pairs-{n}-{seed}.jsonl"))
        rows = world.make_pairs(n, seed)
        assert len(rows) == n and all(r["chosen_wer"] <= r["rejected_wer"] for r in rows)


def llm_reward(path: str) -> float:
    from alignsuite.backbones import CausalLM

    world = get_world("llm")
    backbone = CausalLM(path)
    backbone.configure()
    prompts = world.eval_prompts(128, 1234)
    outputs = backbone.generate(prompts, **world.generation_kwargs)
    return sum(world.reward(p, o) for p, o in zip(prompts, outputs)) / len(prompts)


def vlm_metrics(path: str) -> dict[str, float]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from alignsuite.toy.vlm import generate_answers

    world = get_world("vlm")
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    return world.evaluate(lambda p, images: generate_answers(model, processor, p, images), world.eval_prompts(96, 1234))


def diffusion_figures(path: str) -> tuple[float, float, float]:
    """(share of red squares, share of blue squares, reward) over the 64 evaluation prompts, one seeded draw."""
    from diffusers import DiffusionPipeline

    from alignsuite.toy.squares import square_colour

    world = get_world("diffusion")
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    prompts = world.eval_prompts(64, seed=1234)
    images = pipe(prompts, generator=torch.Generator().manual_seed(0), **world.generation_kwargs).images
    colours = [square_colour(p, im) for p, im in zip(prompts, images)]
    reward = float(np.mean([world.reward(p, im) for p, im in zip(prompts, images)]))
    return colours.count("red") / 64, colours.count("blue") / 64, reward


def tts_wers(name: str, path: str) -> tuple[float, float]:
    """Corpus WER of 48 short texts and of 48 hard ones (long, repeated words)."""
    from alignsuite.speech.pairs import synthesise
    from alignsuite.toy import speech

    world = get_world(name)
    backbone = world.backbone(path)
    backbone.configure()

    def wer(items):
        out = synthesise(backbone, items, 64, None, world.generation_kwargs)
        return speech.word_error_rate([speech.transcribe(o) for o in out], [it["text"] for it in items])

    return wer([world.item(random.Random(f"short-{k}"), hard=False) for k in range(48)]), wer(world.eval_prompts(48, seed=7))


# The documented band of each base: what the README's tables start from, wide enough for a base trained on
# another CPU (the shipped ones were trained on an AMD EPYC; the figures in the comments are theirs).
def check_llm(path):
    assert 0.2 <= llm_reward(path) <= 0.5  # shipped: 0.42; one trained earlier on another CPU: 0.35


def check_vlm(path):
    metrics = vlm_metrics(path)  # right on large shapes, the prior on most small ones; shipped: 0.646 / 0.542 / 0.472
    assert 0.4 <= metrics["reward"] <= 0.75 and 0.3 <= metrics["image_sensitivity"] <= 0.85, metrics
    assert metrics["hallucination"] >= 0.4, metrics


def check_diffusion(path):
    red, blue, reward = diffusion_figures(path)  # either colour about half the time; shipped: 0.375 / 0.625 / 0.373
    assert 0.3 <= red <= 0.7 and 0.3 <= blue <= 0.7 and 0.3 <= reward <= 0.7, (red, blue, reward)


def check_tts(name, path):
    easy, hard = tts_wers(name, path)  # reads short texts, not hard ones; shipped: 0.047 / 0.170, flow 0.0 / 0.158
    assert easy < 0.1 < hard and hard > 2 * easy, (easy, hard)


CHECKS = {"llm": check_llm, "vlm": check_vlm, "diffusion": check_diffusion,
          "tts": lambda path: check_tts("tts", path), "tts_flow": lambda path: check_tts("tts_flow", path)}


@pytest.mark.parametrize("name", base_worlds())
def test_the_shipped_base_is_in_its_documented_band(empty_cache, name):
    CHECKS[name](shipped_path(name))


def test_the_rebuilt_language_base_lands_in_its_band(tmp_path):
    """The training code itself, run here (well under a minute): whatever this CPU's kernels do to the weights,
    the base it gives reads like the shipped one."""
    path = rebuild(["llm"], str(tmp_path))["llm"]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(shipped_path("llm"))]  # the folder, nothing else
    check_llm(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vlm", "diffusion", "tts", "tts_flow"])
def test_every_rebuilt_base_lands_in_its_band(tmp_path, name):
    """Minutes each on 2 cores: the vision-language, diffusion and speech bases trained again from their code."""
    CHECKS[name](rebuild([name], str(tmp_path), pairs=False)[name])
