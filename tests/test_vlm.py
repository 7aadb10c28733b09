"""Vision-language alignment: mDPO against hand-worked values, the image corruption, and the VisionLanguage
backbone's scores against a direct computation on tiny LLaVA and Qwen2.5-VL models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from alignsuite.backbones import LoraSpec, VisionLanguage
from alignsuite.backbones.base import ViewInputs
from alignsuite.backbones.image_views import corrupt_images
from alignsuite.objectives import MDPO, ImageCorruption, get_objective
from alignsuite.scores import PairScores


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------ mDPO by hand
# (chosen, rejected, chosen_corrupted, ref_chosen, ref_rejected, ref_chosen_corrupted)
ROWS = [(-3.0, -5.0, -4.0, -3.5, -4.5, -3.0), (-6.0, -4.0, -5.5, -5.0, -4.5, -6.5)]


def mdpo_scores(rows=ROWS) -> PairScores:
    c, r, cc, rc, rr, rcc = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    ones = torch.ones(len(rows), dtype=torch.float64)
    return PairScores(c, r, rc, rr, ones, ones, {"chosen_corrupted": cc, "ref_chosen_corrupted": rcc})


def mdpo_hand(rows, beta=0.1, w=(1.0, 1.0, 1.0), delta=0.0) -> float:
    total = 0.0
    for c, r, cc, rc, rr, rcc in rows:
        u_w, u_l, u_m = c - rc, r - rr, cc - rcc
        total += (-w[0] * logsig(beta * (u_w - u_l)) - w[1] * logsig(beta * (u_w - u_m))
                  - w[2] * logsig(beta * u_w - delta))
    return total / len(rows)


@pytest.mark.parametrize("kwargs, w, delta", [
    ({}, (1.0, 1.0, 1.0), 0.0),
    ({"dpo_weight": 0.5, "conditional_weight": 2.0, "anchor_weight": 0.0, "anchor": 0.3}, (0.5, 2.0, 0.0), 0.3),
    ({"beta": 0.7, "anchor": -0.2}, (1.0, 1.0, 1.0), -0.2),
])
def test_mdpo_against_hand_worked_values(kwargs, w, delta):
    beta = kwargs.get("beta", 0.1)
    out = get_objective("mdpo", **kwargs)(mdpo_scores())
    assert out.loss.item() == pytest.approx(mdpo_hand(ROWS, beta, w, delta), rel=1e-6)
    # pair 0: u_w = 0.5, u_corrupted = -1.0: the chosen answer gains more with the true image
    imageless = [beta * (cc - rcc) for _, _, cc, _, _, rcc in ROWS]
    assert out.metrics["rewards/imageless_chosen"].item() == pytest.approx(sum(imageless) / 2)
    assert out.metrics["rewards/imageless_accuracies"].item() == pytest.approx(0.5)  # row 1: -0.1 < 0.1
    assert out.metrics["loss/conditional"].item() == pytest.approx(
        -sum(logsig(beta * ((c - rc) - (cc - rcc))) for c, _, cc, rc, _, rcc in ROWS) / 2)


def test_mdpo_without_its_terms_is_dpo():
    s = mdpo_scores()
    mdpo = get_objective("mdpo", conditional_weight=0.0, anchor_weight=0.0)(s).loss
    assert mdpo.item() == pytest.approx(get_objective("dpo")(s).loss.item(), rel=1e-7)


def test_mdpo_gradient_pushes_the_chosen_answer_away_from_its_corrupted_score():
    s = mdpo_scores()
    s.extra["chosen_corrupted"].requires_grad_(True)
    get_objective("mdpo", dpo_weight=0.0, anchor_weight=0.0)(s).loss.backward()
    assert (s.extra["chosen_corrupted"].grad > 0).all()  # descent lowers the score under the corrupted image


def test_mdpo_declares_the_corrupted_view_with_its_settings():
    m = MDPO(corruption="noise", noise_step=300, corruption_seed=4)
    view = m.views[2]
    assert (view.name, view.source, view.condition_name) == ("chosen_corrupted", "chosen", "corrupt_image")
    assert view.condition == ImageCorruption("noise", (0.01, 0.2), 300, 4)
    with pytest.raises(ValueError, match="keep"):
        MDPO(crop_keep=(0.3, 0.1))


# ------------------------------------------------------------------------------------------ the corruption
def gradient_image(w=32, h=24, shift=0):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 8 + shift) % 256, (y * 10) % 256, (x * y) % 256) for y in range(h) for x in range(w)])
    return img


def pixels(img) -> torch.Tensor:
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float()


@pytest.mark.parametrize("kind", ["crop", "noise"])
def test_corruption_is_drawn_per_row_and_is_the_same_every_time(kind):
    c = ImageCorruption(kind)
    images = [[gradient_image()], [gradient_image()], [gradient_image(), gradient_image(shift=3)]]
    first = corrupt_images(c, images, [5, 9, 2])
    again = corrupt_images(c, [images[1], images[0], images[2]], [9, 5, 2])  # another batch order: the row decides
    assert pixels(first[0][0]).equal(pixels(again[1][0])) and pixels(first[1][0]).equal(pixels(again[0][0]))
    assert not pixels(first[0][0]).equal(pixels(first[1][0]))  # rows 5 and 9 draw differently
    assert first[0][0].size == (32, 24)
    assert not pixels(first[0][0]).equal(pixels(images[0][0]))  # it did corrupt
    assert not pixels(first[2][0]).equal(pixels(first[2][1]))  # each image of a row draws its own
    assert not pixels(corrupt_images(ImageCorruption(kind, seed=1), images, [5, 9, 2])[0][0]).equal(pixels(first[0][0]))


def test_crop_keeps_a_small_region_and_noise_follows_the_ddpm_forward_process():
    # A crop keeping <= 20% of a horizontal ramp spans at most ~sqrt(0.2 * 4/3) of its columns' values.
    ramp = Image.new("RGB", (100, 100))
    ramp.putdata([(x * 2, 0, 0) for _ in range(100) for x in range(100)])
    for row in range(20):
        red = pixels(corrupt_images(ImageCorruption("crop"), [[ramp]], [row])[0][0]).view(-1, 3)[:, 0]
        assert red.max() - red.min() <= 2 * 100 * math.sqrt(0.2 * 4 / 3) + 4
    # At step 100 the noise rarely reaches the clamp: x_t = sqrt(a) x_0 + sqrt(1 - a) e on [-1, 1] pixels.
    dark = Image.new("RGB", (64, 64), (64, 64, 64))
    noisy = pixels(corrupt_images(ImageCorruption("noise", noise_step=100), [[dark]], [0])[0][0]) / 127.5 - 1
    alpha = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[100].item()
    assert noisy.std().item() == pytest.approx(math.sqrt(1 - alpha), rel=0.05)
    assert noisy.mean().item() == pytest.approx(math.sqrt(alpha) * (64 / 127.5 - 1), abs=0.02)


def test_mismatched_takes_the_next_rows_images_and_needs_two_rows():
    a, b = [gradient_image()], [gradient_image(shift=7)]
    assert corrupt_images(ImageCorruption("mismatched"), [a, b], [0, 1]) == [b, a]
    assert not ImageCorruption("mismatched").per_row
    with pytest.raises(ValueError, match="batch size of at least 2"):
        corrupt_images(ImageCorruption("mismatched"), [a], [0])


# ------------------------------------------------------------------------------------------ the backbone
def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def vlm_batch(n: int = 2) -> dict:
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    return {
        "prompt": [ask("what colour is the shape ?") for _ in range(n)],
        "chosen": [answer(["red", "blue", "green"][i % 3]) for i in range(n)],
        "rejected": [answer(["blue", "red", "red"][i % 3]) for i in range(n)],
        "images": [[gradient_image(shift=40 * i).point(lambda v, i=i: (v + colours[i % 3][0]) % 256)] for i in range(n)],
        "index": torch.arange(n) + 10,
    }


@pytest.fixture(params=["llava", "qwen"])
def tiny_vlm(request, tiny_llava_dir, tiny_qwen_vl_dir):
    return {"llava": tiny_llava_dir, "qwen": tiny_qwen_vl_dir}[request.param]


def views_of(objective, backbone, batch):
    out = []
    for v in objective.views:
        inputs = ViewInputs(batch["prompt"], v.completions(batch), batch)
        out.append(backbone.transform(v.condition, inputs) if v.condition is not None else inputs)
    return out


def test_scores_are_the_answer_tokens_log_probs_only(tiny_vlm):
    """Against a direct computation: the processor on prompt + answer text, one row at a time, the
    answer's tokens found at the end, log-softmax summed over them alone."""
    torch.manual_seed(0)
    backbone = VisionLanguage(tiny_vlm, max_length=512, max_prompt_length=400)
    backbone.configure()
    batch = vlm_batch(3)
    prepared = backbone.prepare(views_of(get_objective("dpo"), backbone, batch))
    scores = backbone.score(prepared)
    proc, model = backbone.processor, backbone.policy.eval()
    image_id = backbone.tokenizer.convert_tokens_to_ids(proc.image_token)
    for k, column in enumerate(["chosen", "rejected"]):
        for i in range(3):
            prompt_text = proc.apply_chat_template(batch["prompt"][i], add_generation_prompt=True, tokenize=False)
            full = proc.apply_chat_template(batch["prompt"][i] + batch[column][i], tokenize=False)
            n_answer = len(backbone.tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"])
            enc = proc(text=[full], images=batch["images"][i], return_tensors="pt")
            assert (enc["input_ids"] == image_id).sum() > 1  # placeholders expanded into image tokens
            with torch.no_grad():
                logits = model(**enc).logits[0, :-1].float()
            ids = enc["input_ids"][0, 1:]
            token_logps = logits.log_softmax(-1).gather(-1, ids[:, None])[:, 0]
            expected = token_logps[-n_answer:].sum().item()
            row = k * 3 + i
            assert scores.length[row].item() == n_answer
            assert scores.score[row].item() == pytest.approx(expected, abs=1e-4)


def test_policy_reference_and_precomputed_reference_see_the_same_corrupted_pixels(tiny_llava_dir):
    backbone = VisionLanguage(tiny_llava_dir, max_length=512, max_prompt_length=400)
    backbone.configure()
    objective = MDPO()
    batch = vlm_batch(2)
    first = backbone.prepare(views_of(objective, backbone, batch))
    # The same rows in another batch order, as a precomputed pass or another epoch would see them.
    order = [1, 0]
    swapped = {k: [v[i] for i in order] if isinstance(v, list) else v[order] for k, v in batch.items()}
    second = backbone.prepare(views_of(objective, backbone, swapped))
    pv1, pv2 = first.extra["pixel_values"], second.extra["pixel_values"]
    assert pv1[4].equal(pv2[5]) and pv1[5].equal(pv2[4])  # corrupted view: rows 4, 5 of [chosen, rejected, corrupted]
    assert not pv1[4].equal(pv1[0])  # the corrupted pixels differ from the true image
    ref = backbone.load_reference()
    with torch.no_grad():
        s_policy, s_ref = backbone.score(first).score, backbone.score(first, model=ref).score
    assert torch.allclose(s_policy, s_ref, atol=1e-5)  # identical weights on identical inputs


def test_full_fine_tuning_freezes_the_vision_tower_and_lora_stays_on_the_language_model(tiny_vlm):
    full = VisionLanguage(tiny_vlm)
    full.configure()
    trained = {n for n, p in full.policy.named_parameters() if p.requires_grad}
    assert trained and all("language_model" in n or "lm_head" in n for n in trained)
    assert not any(("vision" in n or "visual" in n) for n in trained)
    lora = VisionLanguage(tiny_vlm, lora=LoraSpec(r=4), train_projector=True)
    lora.configure()
    trained = [n for n, p in lora.policy.named_parameters() if p.requires_grad]
    adapters = [n for n in trained if "lora_" in n]
    assert adapters and all("language_model" in n for n in adapters)
    assert any("modules_to_save" in n for n in trained)  # the projector, in full


def test_a_prompt_too_long_for_its_image_tokens_is_an_error_naming_the_row(tiny_llava_dir):
    backbone = VisionLanguage(tiny_llava_dir, max_length=12, max_prompt_length=8)
    backbone.configure()
    with pytest.raises(ValueError, match=r"dataset row 10 .* never cut"):
        backbone.prepare(views_of(get_objective("dpo"), backbone, vlm_batch(2)))


def test_a_processor_of_another_model_is_refused(tiny_llava_dir, tiny_qwen_vl_dir):
    backbone = VisionLanguage(tiny_llava_dir, processor_name_or_path=tiny_qwen_vl_dir)
    with pytest.raises(ValueError, match="processor belongs to another model"):
        backbone.configure()


def test_generate_answers_each_prompt_with_its_images(tiny_vlm):
    backbone = VisionLanguage(tiny_vlm)
    backbone.configure()
    batch = vlm_batch(2)
    greedy = backbone.generate(batch["prompt"], images=batch["images"], max_new_tokens=4)
    assert len(greedy) == 2 and greedy == backbone.generate(batch["prompt"], images=batch["images"], max_new_tokens=4)
    sampled = backbone.generate(batch["prompt"], images=batch["images"], max_new_tokens=4, seed=3)
    assert sampled == backbone.generate(batch["prompt"], images=batch["images"], max_new_tokens=4, seed=3)



@pytest.fixture(scope="module")
def bos_llava_dir(tiny_llava_dir, tmp_path_factory) -> str:
    """The tiny LLaVA with a tokenizer that adds a bos and a chat template that writes one too, as LLaVA-1.5,
    Gemma 3 and Llama 3.2 Vision do."""
    import shutil

    from transformers import AutoProcessor

    path = tmp_path_factory.mktemp("bos_llava") / "model"
    shutil.copytree(tiny_llava_dir, path)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.add_bos_token = True
    processor.chat_template = processor.tokenizer.chat_template = "<bos> " + processor.chat_template
    processor.save_pretrained(path)
    reloaded = AutoProcessor.from_pretrained(path)
    assert reloaded.tokenizer("what")["input_ids"][0] == reloaded.tokenizer.bos_token_id  # the tokenizer adds one
    assert reloaded.apply_chat_template(ask("what"), tokenize=False).startswith("<bos>")  # and the template writes one
    return str(path)


def test_rows_get_one_bos_in_training_and_in_generation(bos_llava_dir):
    # With the processor's special tokens on, the template's bos and the tokenizer's would make two, as TRL avoids
    # with add_special_tokens=False; the text backbone does the same for chat rows.
    backbone = VisionLanguage(bos_llava_dir, max_length=512, max_prompt_length=400)
    backbone.configure()
    bos = backbone.tokenizer.bos_token_id
    batch = vlm_batch(2)
    prepared = backbone.prepare(views_of(get_objective("dpo"), backbone, batch))
    assert (prepared.input_ids == bos).sum(1).tolist() == [1] * 4
    assert prepared.input_ids[:, 0].tolist() == [bos] * 4
    enc = backbone.generation_inputs(batch["prompt"], batch["images"])
    assert (enc["input_ids"] == bos).sum(1).tolist() == [1, 1]



def test_the_backbone_hands_its_image_token_to_the_layout_at_setup(tmp_path, tiny_qwen_vl_dir):
    from alignsuite.data import DataError, PreferenceDataModule, VisionPairs

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "q", "images": [], "chosen": "a <|image_pad|>", "rejected": "b"}) + "\n")
    data = PreferenceDataModule(train=str(path), layout=VisionPairs(keep_text_only=True))
    with pytest.warns(UserWarning, match="text-only"):
        data.setup("fit")
    VisionLanguage(tiny_qwen_vl_dir).on_setup(data)  # loads the processor only
    with pytest.raises(DataError, match=rf"^{path}: row 0: field 'chosen': .*'<\|image_pad\|>'"):
        data.collate([data.train_set[0]])


def test_a_precomputed_reference_refuses_the_mismatched_corruption(tiny_llava_dir):
    from alignsuite.reference import Precomputed

    Precomputed().check(MDPO(corruption="crop"), VisionLanguage(tiny_llava_dir))
    with pytest.raises(ValueError, match="chosen_corrupted"):
        Precomputed().check(MDPO(corruption="mismatched"), VisionLanguage(tiny_llava_dir))
