"""The vision-language toy world and the tiny VLMs of two families it is tested with."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from alignsuite.toy.vlm import COLOURS, PRIOR, ShapesWorld, draw_shape, generate_answers, prompt_for

CANONICAL = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle ?"}]}]
ANSWER = [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]


def colour_in(image) -> str:
    """The colour of the one shape in an image, read off its pixels: an answerer that sees perfectly."""
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    shape = pixels[np.abs(pixels - pixels[0]).sum(-1) > 60]  # the corner is background
    names = list(COLOURS)
    return names[int(np.argmin([np.abs(shape.mean(0) - np.array(COLOURS[c])).sum() for c in names]))]


def perfect(prompts, images, **kwargs):
    return [colour_in(imgs[0]) for imgs in images]


def prior_only(prompts, images, **kwargs):  # what a text-only guess says: blind to the image
    return [PRIOR[p[0]["content"][1]["text"].split()[-2]] for p in prompts]


@pytest.mark.parametrize("family, fixture, model_class, marker, image_token", [
    ("llava", "tiny_llava_dir", "LlavaForConditionalGeneration", "<image>", "<image>"),
    ("qwen2_5_vl", "tiny_qwen_vl_dir", "Qwen2_5_VLForConditionalGeneration", "<|vision_start|><|image_pad|><|vision_end|>",
     "<|image_pad|>"),
])
def test_tiny_vlm_loads_back_renders_expands_and_runs(request, family, fixture, model_class, marker, image_token):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = request.getfixturevalue(fixture)
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == model_class
    assert sum(p.numel() for p in model.parameters()) < 300_000
    text = processor.apply_chat_template(CANONICAL, add_generation_prompt=True, tokenize=False)
    assert text.count(marker) == 1 and "what colour is the circle ?" in text
    full = processor.apply_chat_template(CANONICAL + ANSWER, tokenize=False)
    assert full.startswith(text)  # the prompt is a prefix of prompt + answer: it can be masked out

    image = draw_shape("circle", "red", "large", random.Random(0))
    enc = processor(text=[text, full], images=[[image], [image]], return_tensors="pt", padding=True)
    image_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    assert (enc["input_ids"] == image_id).sum(-1).tolist() == [16, 16]  # 32x32 pixels: 16 image tokens each
    assert processor.tokenizer.unk_token_id not in enc["input_ids"][0].tolist()
    with torch.no_grad():
        logits = model(**enc, logits_to_keep=1).logits
    assert logits.shape == (2, 1, model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()
    outputs = generate_answers(model, processor, [CANONICAL], [[image]], max_new_tokens=2)
    assert len(outputs) == 1 and isinstance(outputs[0], str)


def test_the_world_is_registered_as_vlm():
    from alignsuite.toy import get_world

    world = get_world("vlm")
    assert isinstance(world, ShapesWorld) and world.modality == "vision_language"


def test_pairs_are_deterministic_rlaif_v_rows_whose_rejected_answer_is_the_prior_the_image_contradicts():
    world = ShapesWorld()
    rows = world.make_pairs(24, seed=3)
    assert rows == world.make_pairs(24, seed=3)
    assert rows != world.make_pairs(24, seed=4)
    for row in rows:
        assert set(row) == {"image", "question", "chosen", "rejected"}
        shape = row["question"].split()[-2]
        assert Image.open(io.BytesIO(row["image"])).size == (32, 32)
        assert row["rejected"] == PRIOR[shape]  # plausible without the image ...
        assert colour_in(row["image"]) == row["chosen"] != row["rejected"]  # ... and wrong with it


def test_eval_items_are_fixed_and_balanced():
    world = ShapesWorld()
    items = world.eval_prompts(48, seed=1)
    again = world.eval_prompts(48, seed=1)
    assert [i["answer"] for i in items] == [i["answer"] for i in again]
    assert all(np.array_equal(np.asarray(a["images"][0]), np.asarray(b["images"][0])) for a, b in zip(items, again))
    assert sorted(i["answer"] for i in items) == sorted(list(COLOURS) * 12)
    assert prompt_for("circle") == CANONICAL  # the layout VisionPairs yields
    assert all(item["prompt"] == prompt_for(item["shape"]) for item in items)
    for item in items:  # the swapped image: same shape and size, another colour
        assert colour_in(item["swap_images"][0]) != item["answer"] == colour_in(item["images"][0])


def test_reward_and_image_sensitivity_of_a_perfect_and_an_image_blind_answerer():
    world = ShapesWorld()
    items = world.eval_prompts(48, seed=1)
    assert world.evaluate(perfect, items) == {"reward": 1.0, "image_sensitivity": 1.0, "hallucination": 0.0}
    # four colours, balanced: the prior is right for a quarter of the items, and never changes its answer
    assert world.evaluate(prior_only, items) == {"reward": 0.25, "image_sensitivity": 0.0, "hallucination": 1.0}
    assert world.reward(items[0], f" {items[0]['answer']} it is") == 1.0


def test_generation_reward_logs_every_metric_of_a_world_that_evaluates(tmp_path):
    from alignsuite.callbacks import GenerationReward

    sizes = []

    def generate(prompts, images, max_new_tokens):
        sizes.append(len(prompts))
        assert len(images) == len(prompts)
        return perfect(prompts, images)

    callback = GenerationReward(world="vlm", num_prompts=8, batch_size=3)
    module = SimpleNamespace(backbone=SimpleNamespace(generate=generate, generation_columns=("images",)))
    metrics = callback.evaluate(module)
    assert metrics == {"val/toy_reward": 1.0, "val/image_sensitivity": 1.0, "val/hallucination": 0.0}
    assert sizes == [3, 3, 2] * 2  # the real images, then the swapped ones, in chunks of batch_size


def test_the_toy_datamodule_reads_the_world_with_the_vision_pairs_layout():
    from alignsuite.toy.data import layout_for

    from alignsuite.data import VisionPairs

    assert isinstance(layout_for("vision_language", False), VisionPairs)


def test_mdpo_makes_the_toy_vlm_look_at_the_image(tmp_path):
    """The toy mDPO recipe as shipped, to its first validation (16 steps), from the shipped base (reward 0.646,
    image sensitivity 0.542, hallucination 0.472 on greedy answers, the same on any CPU up to a near tie).

    Seeds 0-3 (``--seed_everything N --data.init_args.seed N``: other pairs, another shuffle) raised the image
    sensitivity by 0.094 / 0.042 / 0.156 / 0.177 and lowered hallucination by 0.069 / 0.194 / 0.236 / 0.208:
    both moved the right way in every seed, and together by at least 0.163. A seed changes far more than a
    CPU's float kernels do, so the bound keeps half the smallest sum. The README compares DPO and mDPO over
    the whole run."""
    import csv
    import glob
    import os

    from alignsuite.cli import main

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes/toy/vlm_mdpo.yaml")
    main(["fit", "--config", recipe, "--trainer.max_steps", "16", "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "*" / "version_0" / "metrics.csv"))[0])))
    measured = [(int(r["step"]), float(r["val/image_sensitivity"]), float(r["val/hallucination"]))
                for r in rows if r.get("val/image_sensitivity")]
    (step0, sensitivity0, hallucination0), (step, sensitivity, hallucination) = measured[0], measured[-1]
    assert (step0, step) == (0, 15)
    assert (sensitivity0, hallucination0) == pytest.approx((0.542, 0.472), abs=0.03), measured[0]
    assert sensitivity > sensitivity0 and hallucination < hallucination0, measured
    assert (sensitivity - sensitivity0) + (hallucination0 - hallucination) > 0.08, measured
    assert [float(r["train/rewards/imageless_accuracies"]) for r in rows if r.get("train/rewards/imageless_accuracies")]
