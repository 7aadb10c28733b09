"""PAD (personalised alignment at decoding time) as a generation guide: the guided score against hand-worked values,
its reductions to the base model's greedy decoding, the reward model's cache against re-encoding its prefix, a
reward model with another vocabulary refused, and the toy world's reward raised by a DPO-trained reward model with
no training of the base."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from alignsuite.backbones import PAD, CausalLM
from alignsuite.guidance import guided_scores
from alignsuite.toy import get_world
from alignsuite.toy.llm import EchoWorld

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = get_world("llm")
PROMPTS = WORLD.eval_prompts(32, 1234)  # 3 to 5 letters: left padding in every batch


def toy(path: str = "toy:llm") -> CausalLM:
    backbone = CausalLM(path, max_length=32, max_prompt_length=16)
    backbone.configure()
    return backbone


@pytest.fixture(scope="module")
def base() -> CausalLM:
    return toy()


@pytest.fixture(scope="module")
def nudged(tmp_path_factory) -> str:
    """The toy base with every weight nudged: a reward model that disagrees with the base now and then."""
    path = tmp_path_factory.mktemp("nudged")
    backbone = toy()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in backbone.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    backbone.save_pretrained(str(path))
    return str(path)


# ----------------------------------------------------------------------------------------- the score, by hand
def by_hand(z: list[float], m: list[float], w: float, k: int) -> list[float]:
    top = sorted(range(len(z)), key=lambda v: -z[v])[:k]
    lse_z = math.log(sum(math.exp(z[v]) for v in top))
    lse_m = math.log(sum(math.exp(m[v]) for v in top))
    return [z[v] + w * ((m[v] - lse_m) - (z[v] - lse_z)) if v in top else -math.inf for v in range(len(z))]


def test_guided_score_against_hand_worked_values():
    z, m = [2.0, 1.0, 0.5, -1.0], [0.0, 1.0, 3.0, 5.0]
    # k = 3, w = 0.8: lse_z = ln(e^2 + e + e^0.5) = 2.464369, lse_m = ln(1 + e + e^3) = 3.169846;
    # r = (-2.705477, -0.705477, 1.794523), score = (-0.164382, 0.435618, 1.935618), token 3 (the RM's favourite,
    # outside the base's top 3) never chosen; the base alone picks token 0, the guide token 2.
    got = guided_scores(torch.tensor([z, m]), torch.tensor([m, z]), 0.8, 3)
    assert got[0].tolist() == pytest.approx([-0.164382, 0.435618, 1.935618, -math.inf], abs=1e-5)
    assert got[0].tolist() == pytest.approx(by_hand(z, m, 0.8, 3))
    assert got[1].tolist() == pytest.approx(by_hand(m, z, 0.8, 3))  # rows are independent
    assert int(got[0].argmax()) == 2
    # w = 1: the reward model's choice among the base's top k, up to a constant per row
    one = guided_scores(torch.tensor([z]), torch.tensor([m]), 1.0, 3)[0, :3]
    assert (one - torch.tensor(m[:3])).tolist() == pytest.approx([math.log(math.exp(2) + math.exp(1) + math.exp(.5))
                                                                   - math.log(1 + math.e + math.exp(3))] * 3)
    # w = 0: the base logits on the top k, the reward model unread (None); top_k past the vocabulary: all of it
    assert guided_scores(torch.tensor([z]), None, 0.0, 2)[0].tolist() == [2.0, 1.0, -math.inf, -math.inf]
    assert guided_scores(torch.tensor([z]), torch.tensor([m]), 0.5, 99)[0].tolist() == pytest.approx(by_hand(z, m, .5, 4))


def test_a_reward_model_with_a_wider_or_narrower_head():
    z, m = torch.tensor([[2.0, 1.0, 0.5, -1.0]]), torch.tensor([[0.0, 1.0, 3.0, 5.0]])
    wider = guided_scores(z, torch.cat([m, torch.tensor([[9.0, 9.0]])], 1), 0.8, 3)  # padded rows never count
    assert wider.tolist() == guided_scores(z, m, 0.8, 3).tolist()
    narrower = guided_scores(z, m[:, :2], 0.8, 3)  # a token the reward model lacks: r = -inf
    assert narrower[0, 2].item() == -math.inf and narrower[0, :2].isfinite().all()


def test_tokens_the_base_rules_out_stay_out_and_take_no_share():
    """A constraint before the guide (a speech-token model's codebook rule) leaves fewer than k tokens: V_k is the
    allowed ones. z = (2, -inf, 0.5, -inf), m = (0, 5, 3, 9), k = 3, w = 0.8: lse_z = ln(e^2 + e^0.5) = 2.201413,
    lse_m = ln(1 + e^3) = 3.048587 (tokens 1 and 3 take no share), score = (-0.277739, -inf, 1.822261, -inf)."""
    inf = math.inf
    got = guided_scores(torch.tensor([[2.0, -inf, 0.5, -inf]]), torch.tensor([[0.0, 5.0, 3.0, 9.0]]), 0.8, 3)[0]
    assert got.tolist() == pytest.approx([-0.277739, -inf, 1.822261, -inf], abs=1e-5)


# ----------------------------------------------------------------------------------------- reductions
def test_weight_zero_and_top_k_one_are_the_base_models_greedy_decoding(base, nudged):
    plain = base.generate(PROMPTS, max_new_tokens=8)
    assert base.generate(PROMPTS, max_new_tokens=8, guide=PAD(nudged, weight=0.0)) == plain
    for w in (0.8, 3.0, -2.0):
        assert base.generate(PROMPTS, max_new_tokens=8, guide=PAD(nudged, weight=w, top_k=1)) == plain
    assert base.generate(PROMPTS, max_new_tokens=8, guide=PAD(nudged, weight=3.0)) != plain  # not vacuous


def test_the_reward_models_cache_gives_the_tokens_of_re_encoding_its_prefix(base, nudged):
    guide = PAD(nudged, weight=1.5, preference="echo echo")  # a preference: the RM's prompts are longer
    for kwargs in ({}, {"seed": 3, "temperature": 0.7}):
        cached = base.generate(PROMPTS, max_new_tokens=8, guide=guide, **kwargs)
        assert cached == base.generate(PROMPTS, max_new_tokens=8, guide=guide.but(cache=False), **kwargs)
        assert cached != base.generate(PROMPTS, max_new_tokens=8, **kwargs)
    # beam search reorders rows between steps: the cache notices and re-encodes, giving what re-encoding gives
    beams = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 6}
    assert base.generate(PROMPTS[:8], guide=guide, **beams) == base.generate(PROMPTS[:8], guide=guide.but(cache=False),
                                                                            **beams)
    # one prompt at a time (no padding) gives what the batch gives
    assert [base.generate([p], max_new_tokens=8, guide=guide)[0] for p in PROMPTS[:6]] == \
        base.generate(PROMPTS[:6], max_new_tokens=8, guide=guide)


def test_the_guide_set_on_the_backbone_guides_every_generate(nudged):
    guided = toy()
    guided.guide = PAD(nudged, weight=1.5)
    assert guided.generate(PROMPTS, max_new_tokens=8) == toy().generate(PROMPTS, max_new_tokens=8, guide=guided.guide)


def panacea(**kwargs):
    """A toy Panacea model whose adapter is nudged: its generations depend on the preference vector."""
    from alignsuite.backbones import PanaceaLM, PanaceaSpec
    from alignsuite.backbones.svd_lora import adapters

    backbone = PanaceaLM("toy:llm", panacea=PanaceaSpec(r=4, preference_rank=2, preference_dim=2), max_length=32,
                         max_prompt_length=16, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the adapter's other weights are drawn at configure: the same in every call
        backbone.configure()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a in adapters(backbone.policy).values():
            a.U.normal_(0, 0.5, generator=g)
            a.sigma.normal_(1, 1.0, generator=g)
    return backbone


def test_panacea_generates_guided_at_its_preference_vector(reward_model, tmp_path):
    guide = PAD(reward_model)
    guided, plain = panacea(guide=guide), panacea()  # backbone.guide: a PanaceaLM init option
    outputs = {}
    for w in ([1.0, 0.0], [0.0, 1.0]):
        unguided = plain.generate(PROMPTS, max_new_tokens=8, preference=w)
        outputs[tuple(w)] = guided.generate(PROMPTS, max_new_tokens=8, preference=w)
        assert outputs[tuple(w)] == plain.generate(PROMPTS, max_new_tokens=8, preference=w, guide=guide) != unguided
        assert plain.generate(PROMPTS, max_new_tokens=8, preference=w, guide=guide.but(top_k=1)) == unguided
    assert outputs[1.0, 0.0] != outputs[0.0, 1.0]  # the guide acts on the model at each vector
    # evaluate reads a Panacea export beside a plain recipe with the recipe's settings, its guide among them
    plain.save_pretrained(str(tmp_path))
    from alignsuite.backbones import PanaceaLM

    assert PanaceaLM.reading(toy_guided(guide), str(tmp_path)).guide is guide
    # a Panacea export is no reward model: read as a plain model, its adapter would be dropped
    with pytest.raises(ValueError, match=r"guide\.reward_model: .* is a Panacea export"):
        plain.generate(PROMPTS[:2], guide=PAD(str(tmp_path)))


def toy_guided(guide) -> CausalLM:
    return CausalLM("toy:llm", max_length=32, max_prompt_length=16, guide=guide)


# ----------------------------------------------------------------------------------------- bad input
def test_a_reward_model_with_another_vocabulary_is_refused(base, tmp_path):
    from transformers import LlamaForCausalLM

    world = EchoWorld()
    tok = world.build_tokenizer()
    tok.add_tokens(["xyz"])
    LlamaForCausalLM(world.build_config(tok)).save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"guide\.reward_model: .* has another tokenizer than the policy's"):
        base.generate(PROMPTS[:2], guide=PAD(str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"guide\.reward_model"):
        base.generate(PROMPTS[:2], guide=PAD(str(tmp_path / "nothing")))
    from alignsuite.backbones import TextToImage, VisionLanguage

    with pytest.raises(ValueError, match=r"guide: VisionLanguage takes no decoding-time guide.*depend on images"):
        VisionLanguage("toy:vlm").generate(["a"], guide=PAD("toy:llm"))  # refused before any model loads
    with pytest.raises(ValueError, match=r"guide: TextToImage takes no decoding-time guide.*no next-token logits"):
        PAD("toy:llm").check(TextToImage("toy:diffusion"))
    with pytest.raises(ValueError, match=r"guide: VisionLanguage takes no decoding-time guide.*depend on images"):
        VisionLanguage("toy:vlm", guide=PAD("toy:llm"))  # at init too, where CausalLM takes one
    with pytest.raises(ValueError, match=r"guide\.top_k must be at least 1"):
        PAD("toy:llm", top_k=0)
    with pytest.raises(ValueError, match=r"guide\.weight must be a finite number"):
        PAD("toy:llm", weight=float("nan"))


# ----------------------------------------------------------------------------------------- the toy world
def script():
    """scripts/toy_pad.py: the reward model's training and the guided rewards, as the docs' figures were measured."""
    spec = importlib.util.spec_from_file_location("toy_pad", os.path.join(REPO, "scripts", "toy_pad.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WEIGHTS = (0.0, 0.2, 0.4, 0.8)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("dpo_reward_model"))
    script().train_reward_model(path, seed=0)
    return path


def test_a_dpo_reward_model_raises_the_toy_reward_monotonically_in_w(base, reward_model):
    """Measured on 128 prompts over reward models trained with seeds 0-3 (docs/evaluation.md): 0.422 at w = 0 (the
    base), 0.78-0.81 at 0.2, 0.93-0.95 at 0.4, 0.96-0.97 at 0.8; the smallest rise between neighbours 0.021 (0.4 to
    0.8). Asserted: each rise above a third of the smallest seen, 0.8 above the base by 0.4."""
    before = [p.detach().clone() for p in base.policy.parameters()]
    rewards = script().guided_rewards(base, reward_model, WEIGHTS)
    minimum = (0.2, 0.07, 0.007)
    for (a, b), least in zip(zip(rewards, rewards[1:]), minimum):
        assert b - a > least, rewards
    assert rewards[-1] > rewards[0] + 0.4, rewards
    assert all(torch.equal(a, b) for a, b in zip(before, base.policy.parameters()))  # no training of the base


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rise_holds_for_reward_models_of_other_seeds(base, tmp_path, seed):
    toy_pad = script()
    toy_pad.train_reward_model(str(tmp_path), seed)
    rewards = toy_pad.guided_rewards(base, str(tmp_path), WEIGHTS)
    assert all(b > a for a, b in zip(rewards, rewards[1:])) and rewards[-1] > rewards[0] + 0.4, rewards


# ----------------------------------------------------------------------------------------- predict and evaluate
def test_evaluate_and_predict_reach_the_guide(base, reward_model, tmp_path):
    from alignsuite.cli import main

    out = tmp_path / "eval"
    main(["evaluate", "--config", "recipes/toy/llm_dpo.yaml", "--config", "configs/eval/toy_llm_pad.yaml",
          "--evaluate.guide.init_args.reward_model", reward_model, "--evaluate.num_prompts", "16",
          "--evaluate.output_dir", str(out), "--evaluate.report", "false"])
    results = json.loads((out / "results.json").read_text())
    assert results["details"]["aligned"] == "the base, guided" and "weight=0.8" in results["details"]["guide"]
    prompts = WORLD.eval_prompts(16, 0)
    assert results["aligned_outputs"] == base.generate(prompts, max_new_tokens=8, guide=PAD(reward_model))
    assert results["base_outputs"] == base.generate(prompts, max_new_tokens=8)
    toy_reward = next(s for s in results["scores"] if s["name"] == "toy_reward_llm")
    assert toy_reward["mean_aligned"] > toy_reward["mean_base"] + 0.2

    main(["predict", "--config", "recipes/toy/llm_dpo.yaml", "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--data.init_args.num_val", "8", "--trainer.enable_progress_bar", "false",
          "--model.backbone.init_args.guide", json.dumps({"class_path": "alignsuite.backbones.PAD",
                                                          "init_args": {"reward_model": reward_model}})])
    rows = [json.loads(line) for line in open(next(tmp_path.glob("toy_llm_dpo/version_*/predictions.jsonl")))]
    assert [r["generation"] for r in rows] == base.generate([r["prompt"] for r in rows], guide=PAD(reward_model))


def test_a_front_of_guide_weights_on_the_two_rule_world(reward_model, tmp_path):
    """``evaluate.guide_weights``: the base guided at each weight is a point of the (caps, lower) front; a capitals
    reward model moves it from the base towards the capitals corner as w grows."""
    from alignsuite.cli import main

    out = tmp_path / "front"
    main(["evaluate", "--config", "recipes/toy/llm_modpo.yaml", "--config", "configs/eval/toy_llm_case_pad.yaml",
          "--evaluate.guide.init_args.reward_model", reward_model, "--evaluate.num_prompts", "64",
          "--evaluate.guide_weights", "[0.2, 0.8]", "--evaluate.output_dir", str(out), "--evaluate.report", "false"])
    points = {p["label"]: p for p in json.loads((out / "results.json").read_text())["front"]["points"]}
    assert list(points) == ["base", "guide w=0.2", "guide w=0.8"]
    assert points["guide w=0.2"]["kind"] == "guided" and points["guide w=0.2"]["source"] == reward_model
    caps = [points[k]["means"]["reward_caps"] for k in points]
    lower = [points[k]["means"]["reward_lower"] for k in points]
    assert caps[0] < caps[1] < caps[2] and lower[0] > lower[1] > lower[2], (caps, lower)


def test_a_recipes_guide_guides_the_aligned_side_and_never_the_base(base, nudged, reward_model, tmp_path):
    """``backbone.guide`` in the recipe: ``evaluate``'s aligned model generates with it, its base without it (the
    unguided base, in the two-model comparison and as a front's base point); ``evaluate.guide`` guides a base."""
    from alignsuite.cli import main

    guide = json.dumps({"class_path": "alignsuite.backbones.PAD", "init_args": {"reward_model": reward_model}})
    out = tmp_path / "eval"
    main(["evaluate", "--config", "recipes/toy/llm_dpo.yaml", "--config", "configs/eval/toy_llm_pad.yaml",
          "--model.backbone.init_args.guide", guide, "--evaluate.guide", "null", "--evaluate.aligned", nudged,
          "--evaluate.num_prompts", "16", "--evaluate.output_dir", str(out), "--evaluate.report", "false"])
    results = json.loads((out / "results.json").read_text())
    prompts = WORLD.eval_prompts(16, 0)
    assert results["base_outputs"] == base.generate(prompts, max_new_tokens=8)
    assert results["base_outputs"] != base.generate(prompts, max_new_tokens=8, guide=PAD(reward_model))  # not vacuous
    guided = toy(nudged).generate(prompts, max_new_tokens=8, guide=PAD(reward_model))
    assert results["aligned_outputs"] == guided != toy(nudged).generate(prompts, max_new_tokens=8)
    assert "weight=0.8" in results["details"]["guide"]

    out = tmp_path / "front"
    main(["evaluate", "--config", "recipes/toy/llm_modpo.yaml", "--config", "configs/eval/toy_llm_case_pad.yaml",
          "--model.backbone.init_args.guide", guide, "--evaluate.guide.init_args.reward_model", reward_model,
          "--evaluate.num_prompts", "16", "--evaluate.guide_weights", "[0.4]", "--evaluate.output_dir", str(out),
          "--evaluate.report", "false"])
    outputs = json.loads((out / "results.json").read_text())["outputs"]
    case_prompts = get_world("llm_case").eval_prompts(16, 0)
    assert outputs["base"] == base.generate(case_prompts, max_new_tokens=8)
    assert outputs["guide w=0.4"] == base.generate(case_prompts, max_new_tokens=8, guide=PAD(reward_model, weight=0.4))


def test_bad_guide_settings_for_evaluate(tmp_path, capsys):
    from alignsuite.cli import main

    base = ["evaluate", "--config", "recipes/toy/llm_modpo.yaml", "--config", "configs/eval/toy_llm_case_pad.yaml",
            "--evaluate.output_dir", str(tmp_path)]
    for args, message in (
        (["--evaluate.guide.init_args.reward_model", str(tmp_path / "none")], "evaluate.guide.reward_model: model path"),
        (["--evaluate.guide", "null"], "evaluate.guide_weights sweeps a decoding-time guide's weight: give evaluate.guide"),
    ):
        with pytest.raises(SystemExit) as e:  # the command line: the message alone (status 2 for a missing path)
            main([*base, *args])
        assert e.value.code in (1, 2) and message in capsys.readouterr().err, args


def test_a_vision_language_recipe_refuses_a_guide_naming_it_and_why(capsys):
    from alignsuite.cli import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", os.path.join(REPO, "recipes", "toy", "vlm_modpo.yaml"),
              "--model.backbone.init_args.guide", "{reward_model: toy:llm}"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "model.backbone: guide: VisionLanguage takes no decoding-time guide" in err
    assert "answers depend on images its reward model would not read" in err


def test_a_sweeps_copies_share_the_loaded_reward_model_unless_it_changes(base, nudged):
    guide = PAD(nudged, weight=0.5)
    base.generate(PROMPTS[:2], max_new_tokens=2, guide=guide)
    assert guide.but(weight=1.0)._model is guide._model is not None
    assert guide.but(reward_model="toy:llm")._model is None and guide.but(dtype="bfloat16")._model is None
    with pytest.raises(ValueError, match=r"guide\.top_k must be at least 1"):
        guide.but(top_k=0)
    with pytest.raises(ValueError, match=r"guide: no option \['temperature'\]"):
        guide.but(temperature=0.7)


def test_a_preference_sweep_writes_each_vector_into_the_reward_models_prompt(base, nudged, tmp_path):
    """``evaluate.preferences`` with ``evaluate.guide``: the condition of each vector is the guide's preference (the
    reward model's prompt), the base answers the plain prompts; the points are 'guided' ones with their vectors."""
    from alignsuite.cli import main

    out = tmp_path / "front"
    main(["evaluate", "--config", "recipes/toy/llm_dpa.yaml", "--config", "configs/eval/toy_llm_case_pad_dpa.yaml",
          "--evaluate.guide.init_args.reward_model", nudged, "--evaluate.guide.init_args.weight", "1.5",
          "--evaluate.num_prompts", "16", "--evaluate.preferences", "[[1.0, 0.0], [0.0, 1.0]]",
          "--evaluate.output_dir", str(out), "--evaluate.report", "false"])
    results = json.loads((out / "results.json").read_text())
    kinds = {p["label"]: (p["kind"], p["vector"]) for p in results["front"]["points"]}
    assert kinds == {"base": ("base", None), "pref (1, 0)": ("guided", [1.0, 0.0]), "pref (0, 1)": ("guided", [0.0, 1.0])}
    prompts = get_world("llm_case").eval_prompts(16, 0)
    for label, words in (("pref (1, 0)", 5), ("pref (0, 1)", 1)):  # the DPA levels: 1 to 5 words "echo"
        guide = PAD(nudged, weight=1.5, preference=" ".join(["echo"] * words))
        assert results["outputs"][label] == base.generate(prompts, max_new_tokens=8, guide=guide)
    assert results["outputs"]["pref (1, 0)"] != results["outputs"]["pref (0, 1)"]
