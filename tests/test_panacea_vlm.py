"""Panacea on a vision-language model (`PanaceaVLM`): the adapter on the language model only, the base bit for bit
at the start, the reference as the adapter off, the export and how plain backbones and evaluate read it, and the
toy recipe on the two-reward vision-language world (its front against MODPO's runs: the slow test)."""

from __future__ import annotations

import glob
import os

import pytest
import torch

from alignsuite.backbones import LoraSpec, PanaceaSpec, PanaceaVLM, VisionLanguage
from alignsuite.backbones.base import ViewInputs
from alignsuite.backbones.svd_lora import adapters, apply_adapter
from alignsuite.reference import FrozenCopy
from alignsuite.toy.fronts import preference_front
from conftest import copy_panacea_into_lora, fit_two_rewards, perturb_panacea

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "vlm_panacea.yaml")
SPEC = dict(r=4, preference_rank=2, preference_dim=2)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def images(n: int) -> list[list]:
    from PIL import Image

    return [[Image.new("RGB", (32, 32), colour)] for colour in [(200, 30, 30), (30, 30, 200)][:n]]


def batch_scores(bb, model=None) -> torch.Tensor:
    prompts = [ask("what colour is the circle ?"), ask("what colour is the square ?")]
    batch = {"images": images(2), "index": torch.tensor([0, 1])}
    views = [ViewInputs(prompts, [answer("red"), answer("blue")], batch),
             ViewInputs(prompts, [answer("green"), answer("red")], batch)]
    with torch.no_grad():
        return bb.score(bb.prepare(views), model).score


def built(path: str, spec: PanaceaSpec | None = None, **kw) -> PanaceaVLM:
    bb = PanaceaVLM(path, panacea=spec or PanaceaSpec(**SPEC), max_length=64, max_prompt_length=48, **kw)
    bb.configure()
    bb.keep_trainable_float32()
    return bb


def plain(path: str, **kw) -> VisionLanguage:
    bb = VisionLanguage(path, max_length=64, max_prompt_length=48, **kw)
    bb.configure()
    return bb



@pytest.fixture(params=["llava", "qwen"])
def tiny_vlm(request, tiny_llava_dir, tiny_qwen_vl_dir):
    return {"llava": tiny_llava_dir, "qwen": tiny_qwen_vl_dir}[request.param]


def test_the_adapter_sits_on_the_language_model_only_and_starts_as_the_base_bit_for_bit(tiny_vlm):
    """"all-linear" over the whole model would put the adapter on the vision tower and the projector too; here
    it is on the language model's linear layers alone, the rest frozen, and the model is its base, bit for bit."""
    bb, base = built(tiny_vlm), plain(tiny_vlm)
    vision, projector, language = base._parts(base.policy)
    names = list(adapters(bb.policy))
    linear = [n for n, m in bb.policy.named_modules() if isinstance(m, torch.nn.Linear)]
    assert names and all(n.startswith(language + ".") for n in names)
    assert len(names) == len([n for n in linear if n.startswith(language + ".")])
    trainable = {n for n, p in bb.policy.named_parameters() if p.requires_grad}
    assert {n.rsplit(".", 1)[-1] for n in trainable} == {"U", "V", "sigma", "scale"}
    assert all(n.startswith(language + ".") for n in trainable)
    whole = plain(tiny_vlm).policy  # what "all-linear" hits without the language model's scope
    apply_adapter(whole, PanaceaSpec(**SPEC))
    hit = list(adapters(whole))
    assert any(n.startswith(vision + ".") for n in hit)
    if projector is not None and any(n.startswith(projector + ".") for n in linear):
        assert any(n.startswith(projector + ".") for n in hit)
    assert torch.equal(batch_scores(bb), batch_scores(base))


def test_named_targets_are_looked_for_in_the_language_model_too(tiny_llava_dir):
    bb = built(tiny_llava_dir, PanaceaSpec(r=2, preference_dim=2, target_modules=["q_proj", "v_proj"]))
    names = list(adapters(bb.policy))  # the CLIP tower has q_proj and v_proj too
    assert len(names) == 4 and all(".language_model." in n for n in names)
    with pytest.raises(ValueError, match=r"panacea.target_modules \['fc1'\] matches no linear layer of the model"
                                         r" within model.language_model"):
        built(tiny_llava_dir, PanaceaSpec(r=2, preference_dim=2, target_modules=["fc1"]))


def test_the_reference_is_the_adapter_off_and_the_preference_changes_the_model(tiny_llava_dir):
    bb, base = built(tiny_llava_dir), plain(tiny_llava_dir)
    perturb_panacea(bb)
    assert not torch.allclose(batch_scores(bb), batch_scores(base), atol=1e-3)
    with bb.adapters_disabled():
        assert torch.equal(batch_scores(bb), batch_scores(base))
        with bb.adapters_disabled():  # a block inside (the reference's scores) leaves it off when it ends
            pass
        assert torch.equal(batch_scores(bb), batch_scores(base))
    assert not torch.allclose(batch_scores(bb), batch_scores(base), atol=1e-3)
    bb.set_preference([1.0, 0.0])
    first = batch_scores(bb)
    bb.set_preference([0.0, 1.0])
    assert not torch.allclose(first, batch_scores(bb), atol=1e-4)


def test_rank_zero_preference_part_is_vision_language_lora(tiny_llava_dir):
    """With no singular values for the preferences the adapter is `VisionLanguage`'s LoRA on the language model
    (``B = U diag(sigma)``, ``A = V``, alpha = r): the same scores, adapter on and off, at any vector."""
    targets = ["q_proj", "v_proj"]
    pan = built(tiny_llava_dir, PanaceaSpec(r=4, preference_rank=0, preference_dim=2, target_modules=targets))
    perturb_panacea(pan)
    lora = plain(tiny_llava_dir, lora=LoraSpec(r=4, alpha=4, target_modules=targets))
    copy_panacea_into_lora(pan, lora)
    for vector in ([1.0, 0.0], [0.3, 0.7]):
        pan.set_preference(vector)
        assert torch.allclose(batch_scores(pan), batch_scores(lora), atol=1e-5)
    with pan.adapters_disabled(), lora.adapters_disabled():
        assert torch.allclose(batch_scores(pan), batch_scores(lora), atol=1e-5)


def test_bad_preferences_are_refused_naming_the_option(tiny_llava_dir):
    bb = built(tiny_llava_dir)
    for bad, match in (([1.0], "has 1 entries.*takes a preference vector of 2"), ([1.5, -0.5], ">= 0"),
                       ([0.6, 0.6], "sum to 1")):
        with pytest.raises(ValueError, match=match):
            bb.set_preference(bad)
    with pytest.raises(ValueError, match="backbone.preference has 3 entries"):
        built(tiny_llava_dir, preference=[0.5, 0.25, 0.25])
    assert built(tiny_llava_dir, preference=[0.25, 0.75]).preference == [0.25, 0.75]
    with pytest.raises(ValueError, match="this model was not trained with a preference vector"):
        VisionLanguage(tiny_llava_dir).set_preference([1.0])


def test_export_loads_back_is_refused_by_a_plain_backbone_and_read_as_panacea_in_evaluate(tiny_llava_dir, tmp_path):
    from transformers import AutoProcessor

    from alignsuite.evaluation.run import aligned_backbone

    bb = built(tiny_llava_dir)
    perturb_panacea(bb)
    bb.set_preference([0.3, 0.7])
    want = batch_scores(bb)
    bb.save_pretrained(str(tmp_path), merge_adapters=True)
    assert AutoProcessor.from_pretrained(str(tmp_path)).image_token == bb.processor.image_token
    back = PanaceaVLM(str(tmp_path), max_length=64, max_prompt_length=48)
    back.configure()
    assert back.preference_dim == 2 and back.panacea.r == 4 and back.panacea.preference_rank == 2
    back.set_preference([0.3, 0.7])
    assert torch.equal(batch_scores(back), want)
    with bb.adapters_disabled(), back.adapters_disabled():  # the folder's base weights are the base model's
        assert torch.equal(batch_scores(back), batch_scores(plain(tiny_llava_dir)))
    with pytest.raises(ValueError, match=r"is a Panacea export.*PanaceaVLM for a vision-language model"):
        plain(str(tmp_path))
    with pytest.raises(ValueError, match="is a Panacea export"):  # nor as a plain policy's reference
        FrozenCopy(str(tmp_path)).build(plain(tiny_llava_dir))
    recipe = VisionLanguage(tiny_llava_dir, max_length=64, max_prompt_length=48, processor_kwargs={})
    read = aligned_backbone(recipe, str(tmp_path))
    assert type(read) is PanaceaVLM and read.max_length == 64 and read.preference_dim == 2
    read.set_preference([0.3, 0.7])
    assert torch.equal(batch_scores(read), want)
    prompts = [ask("what colour is the circle ?")]
    first = read.generate(prompts, images=images(1), max_new_tokens=3, preference=[1.0, 0.0])
    assert read.preference == [1.0, 0.0] and first == back.generate(prompts, images=images(1), max_new_tokens=3,
                                                                     preference=[1.0, 0.0])


def test_a_reference_export_follows_the_policys_preference(tiny_llava_dir, tmp_path):
    trained = built(tiny_llava_dir)
    perturb_panacea(trained)
    trained.save_pretrained(str(tmp_path))
    policy = built(tiny_llava_dir)
    ref = FrozenCopy(str(tmp_path))
    ref.build(policy)
    assert not any(p.requires_grad for p in ref.model.parameters())
    for vector in ([0.3, 0.7], [1.0, 0.0]):
        policy.set_preference(vector)
        trained.set_preference(vector)
        assert torch.equal(batch_scores(policy, ref.model), batch_scores(trained))
    assert all(".language_model." in n for n in adapters(ref.model))


# ------------------------------------------------------------------------------------------ the toy recipe


def test_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened (three epochs of two steps): both rewards at step 0 and after each epoch,
    an export that loads back with its adapter and answers at any preference vector."""
    rewards = fit_two_rewards(RECIPE, ("seen", "prior"), tmp_path, "--data.init_args.num_train", "32",
                              "--data.init_args.num_val", "16", "--trainer.val_check_interval", "2", num_prompts=16)
    assert len(rewards) == 4 and rewards[0][0] == 0
    assert all(0 <= seen <= 1 and 0 <= prior <= 1 for _, seen, prior in rewards)
    bb = PanaceaVLM(glob.glob(str(tmp_path / "*" / "version_0" / "export"))[0], max_length=64, max_prompt_length=48)
    bb.configure()
    assert bb.preference_dim == 2 and all(".language_model." in n for n in adapters(bb.policy))
    points = preference_front("vlm_prior", bb, [[1.0, 0.0], [0.0, 1.0]], num_prompts=8)
    assert all(0 <= p["seen"] <= 1 and 0 <= p["prior"] <= 1 for p in points)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_panacea_vlm_spans_the_front_and_passes_modpo_on_the_prior_side(tmp_path, seed):
    """One run of the shipped recipe: the preference moves the model across the (seen, prior) plane, and at
    (0.2, 0.8) it says the usual colour more often than MODPO's runs at that weight (0.708 to 0.802 over seeds 0-2,
    docs/vision-language.md), its (0.5, 0.5) and (0.2, 0.8) points near the line no answerer can pass
    (``seen + prior <= 1.25``). Measured over seeds 0-2: seen 0.406 apart or more between (0.8, 0.2) and (0.2, 0.8),
    prior 0.521 apart or more, prior 0.896 or more at (0.2, 0.8), ``seen + prior`` 1.146 or more at both points;
    asserted: 0.25, 0.35, 0.85, 1.05. Not asserted, as it does not hold on every seed: the seen side, where MODPO's
    runs at (0.8, 0.2) say the colour shown more often."""
    fit_two_rewards(RECIPE, ("seen", "prior"), tmp_path, "--seed_everything", str(seed), "--data.init_args.seed",
                    str(seed))
    bb = PanaceaVLM(glob.glob(str(tmp_path / "*" / "version_0" / "export"))[0], max_length=64, max_prompt_length=48)
    bb.configure()
    seen_first, even, prior_first = preference_front("vlm_prior", bb, [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]],
                                                     num_prompts=96)
    assert seen_first["seen"] - prior_first["seen"] > 0.25, (seen_first, prior_first)
    assert prior_first["prior"] - seen_first["prior"] > 0.35, (seen_first, prior_first)
    assert prior_first["prior"] > 0.85, prior_first
    assert all(p["seen"] + p["prior"] > 1.05 for p in (even, prior_first)), (even, prior_first)
