"""Panacea: the SVD-LoRA adapter with the preference among its singular values, the backbone's preference hook,
the per-step preference draw, and the loss that aggregates one DPO term per dimension."""

from __future__ import annotations

import glob
import math
import os

import pytest
import torch

from alignsuite.backbones import CausalLM, LoraSpec, PanaceaLM, PanaceaSpec
from alignsuite.backbones.base import ViewInputs
from alignsuite.backbones.svd_lora import adapters
from conftest import copy_panacea_into_lora, perturb_panacea
from alignsuite.callbacks.preference import PreferenceSampler, draw_preference
from alignsuite.checkpoint_io import read_checkpoint
from alignsuite.cli import main
from alignsuite.objectives import get_objective
from alignsuite.reference import FrozenCopy
from alignsuite.scores import PairScores
from alignsuite.toy.llm_case import preference_front

HAND_WORKED = ("panacea",)
DIMS = ["helpful", "safe"]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def scores(u_w, u_l, lam=None, **prefs) -> PairScores:
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    extra = {f"pref_{k}": t(*v) for k, v in prefs.items()}
    if lam is not None:
        extra["preference_vector"] = torch.tensor(lam, dtype=torch.float32)
    n = len(u_w)
    return PairScores(t(*u_w), t(*u_l), t(*[0.0] * n), t(*[0.0] * n), t(*[3] * n), t(*[2] * n), extra)


# ------------------------------------------------------------------------------------------------ the loss


def test_hand_worked_linear_and_tchebycheff():
    # beta 0.1, u_w 1, u_l -1: b D = 0.2. helpful prefers the chosen (+1), safe the rejected (-1):
    # L_helpful = -log s(0.2) = 0.598139, L_safe = -log s(-0.2) = 0.798139.
    s = scores([1.0], [-1.0], [0.7, 0.3], helpful=[1.0], safe=[-1.0])
    l_h, l_s = -logsig(0.2), -logsig(-0.2)
    assert (l_h, l_s) == pytest.approx((0.598139, 0.798139), abs=1e-6)
    linear = get_objective("panacea", dimensions=DIMS)(s)
    assert linear.loss.item() == pytest.approx(0.7 * l_h + 0.3 * l_s, rel=1e-6)  # 0.658139
    assert linear.metrics["loss/safe"].item() == pytest.approx(l_s, rel=1e-6)
    assert linear.metrics["rewards/accuracies_helpful"].item() == 1.0
    assert linear.metrics["rewards/accuracies_safe"].item() == 0.0
    assert linear.metrics["rewards/chosen"].item() == pytest.approx(0.1)
    # Tchebycheff, z = 0: max(0.7 * 0.598139, 0.3 * 0.798139) = 0.418697; z = (0.5, 0): max(0.068697, 0.239442).
    tch = get_objective("panacea", dimensions=DIMS, aggregation="tchebycheff")(s)
    assert tch.loss.item() == pytest.approx(0.418697, abs=1e-6)
    tz = get_objective("panacea", dimensions=DIMS, aggregation="tchebycheff", ideal=[0.5, 0.0])(s)
    assert tz.loss.item() == pytest.approx(0.3 * l_s, rel=1e-6)


def test_tchebycheff_takes_the_maximum_over_batch_means():
    s = scores([1.0, 0.0], [-1.0, 2.0], [0.5, 0.5], helpful=[1.0, 1.0], safe=[-1.0, 1.0])
    means = [(-logsig(0.2) - logsig(-0.2)) / 2, (-logsig(-0.2) - logsig(-0.2)) / 2]
    out = get_objective("panacea", dimensions=DIMS, aggregation="tchebycheff")(s)
    assert out.loss.item() == pytest.approx(0.5 * max(means), rel=1e-6)


@pytest.mark.parametrize("aggregation", ["linear", "tchebycheff"])
def test_one_hot_preference_is_dpo_on_that_dimensions_labels(aggregation):
    u_w, u_l, safe = [1.0, -0.3, 0.4], [-1.0, 0.2, 0.9], [-1.0, 1.0, -1.0]
    dpo = get_objective("dpo", beta=0.1)
    on_helpful = get_objective("panacea", dimensions=DIMS, aggregation=aggregation)(
        scores(u_w, u_l, [1.0, 0.0], helpful=[1.0] * 3, safe=safe))
    assert on_helpful.loss.item() == pytest.approx(dpo(scores(u_w, u_l)).loss.item(), rel=1e-9)
    # On safe: DPO on the pairs turned round where safe prefers the rejected answer.
    w = [a if p > 0 else b for a, b, p in zip(u_w, u_l, safe)]
    lo = [b if p > 0 else a for a, b, p in zip(u_w, u_l, safe)]
    on_safe = get_objective("panacea", dimensions=DIMS, aggregation=aggregation)(
        scores(u_w, u_l, [0.0, 1.0], helpful=[1.0] * 3, safe=safe))
    assert on_safe.loss.item() == pytest.approx(dpo(scores(w, lo)).loss.item(), rel=1e-9)


def test_gradient_finite_at_extreme_margins():
    s = scores([1e4, -1e4], [-1e4, 1e4], [0.5, 0.5], helpful=[1.0, 1.0], safe=[-1.0, 0.0])
    s.chosen.requires_grad_()
    out = get_objective("panacea", dimensions=DIMS)(s)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.chosen.grad).all()


def test_bad_options_and_a_missing_preference_vector():
    with pytest.raises(ValueError, match="aggregation"):
        get_objective("panacea", aggregation="max")
    with pytest.raises(ValueError, match="ideal has 3 values"):
        get_objective("panacea", dimensions=DIMS, ideal=[0, 0, 0])
    with pytest.raises(ValueError, match="PreferenceSampler"):
        get_objective("panacea", dimensions=DIMS)(scores([1.0], [0.0], helpful=[1.0], safe=[1.0]))
    with pytest.raises(ValueError, match="shape"):
        get_objective("panacea", dimensions=DIMS)(scores([1.0], [0.0], [1.0], helpful=[1.0], safe=[1.0]))


# ------------------------------------------------------------------------------------------------ the adapter


def built(spec=None, **kw) -> PanaceaLM:
    bb = PanaceaLM("toy:llm", panacea=spec or PanaceaSpec(r=4, preference_rank=2, preference_dim=2), max_length=32,
                   max_prompt_length=16, **kw)
    bb.configure()
    bb.keep_trainable_float32()
    return bb


def batch_scores(bb, model=None):
    prompts = ["echo a b c", "echo d e"]
    prepared = bb.prepare([ViewInputs(prompts, ["A B C", "d e"]), ViewInputs(prompts, ["a b c", "D E"])])
    return bb.score(prepared, model).score



def test_adapter_starts_as_the_base_and_adapters_disabled_turns_it_off():
    bb = built()
    base = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    base.configure()
    assert torch.allclose(batch_scores(bb), batch_scores(base), atol=1e-5)
    assert all(p.dtype == torch.float32 for p in bb.parameters() if p.requires_grad)
    assert {n.rsplit(".", 1)[-1] for n, p in bb.policy.named_parameters() if p.requires_grad} == {"U", "V", "sigma", "scale"}
    perturb_panacea(bb)
    assert not torch.allclose(batch_scores(bb), batch_scores(base), atol=1e-3)
    with bb.adapters_disabled():
        assert torch.allclose(batch_scores(bb), batch_scores(base), atol=1e-5)
    bb.set_preference([1.0, 0.0])
    a = batch_scores(bb)
    bb.set_preference([0.0, 1.0])
    assert not torch.allclose(a, batch_scores(bb), atol=1e-4)  # the preference changes the model


def test_set_preference_refuses_bad_vectors_and_models_without_one():
    bb = built()
    assert bb.preference_dim == 2
    for bad, match in (([1.0], "has 1 entries.*takes a preference vector of 2"), ([1.5, -0.5], ">= 0"),
                       ([0.6, 0.6], "sum to 1")):
        with pytest.raises(ValueError, match=match):
            bb.set_preference(bad)
    plain = CausalLM("toy:llm")
    assert plain.preference_dim == 0
    with pytest.raises(ValueError, match="this model was not trained with a preference vector"):
        plain.set_preference([1.0])


def test_rank_zero_preference_part_is_lora():
    """With no singular values for the preferences (preference_rank 0) the adapter is LoRA: ``B = U diag(sigma)``,
    ``A = V`` (lora alpha = r, scaling 1) gives the same scores, policy and reference (adapter off); so the
    panacea loss with a one-hot vector on that adapter is LoRA DPO on that dimension (the loss half is above)."""
    spec = PanaceaSpec(r=4, preference_rank=0, preference_dim=2, target_modules=["q_proj", "v_proj"])
    pan = built(spec)
    perturb_panacea(pan)
    lora = CausalLM("toy:llm", lora=LoraSpec(r=4, alpha=4, target_modules=["q_proj", "v_proj"]), max_length=32,
                    max_prompt_length=16)
    lora.configure()
    copy_panacea_into_lora(pan, lora)
    pan.set_preference([1.0, 0.0])
    assert torch.allclose(batch_scores(pan), batch_scores(lora), atol=1e-5)
    with pan.adapters_disabled(), lora.adapters_disabled():
        assert torch.allclose(batch_scores(pan), batch_scores(lora), atol=1e-5)


def test_export_loads_back_with_its_adapter(tmp_path):
    bb = built()
    perturb_panacea(bb)
    bb.set_preference([0.3, 0.7])
    want = batch_scores(bb)
    bb.save_pretrained(str(tmp_path), merge_adapters=True)
    back = PanaceaLM(str(tmp_path), max_length=32, max_prompt_length=16)
    back.configure()
    assert back.preference_dim == 2 and back.panacea.r == 4 and back.panacea.preference_rank == 2
    back.set_preference([0.3, 0.7])
    assert torch.allclose(batch_scores(back), want, atol=1e-5)
    with bb.adapters_disabled(), back.adapters_disabled():  # the folder's base weights are the base model's
        assert torch.allclose(batch_scores(bb), batch_scores(back), atol=1e-5)
    # As a plain causal LM (a policy, a reference, evaluate) the folder would silently be its base alone: refused.
    with pytest.raises(ValueError, match=r"is a Panacea export.*load it with alignsuite.backbones.PanaceaLM"):
        CausalLM(str(tmp_path), max_length=32, max_prompt_length=16).configure()
    plain = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    plain.configure()
    with pytest.raises(ValueError, match="is a Panacea export"):  # nor as a plain policy's reference
        FrozenCopy(str(tmp_path)).build(plain)
    # evaluate beside plain models: a plain recipe's backbone reads the export as a Panacea model, adapter and all
    from alignsuite.evaluation.run import aligned_backbone

    read = aligned_backbone(CausalLM("toy:llm", max_length=32, max_prompt_length=16), str(tmp_path))
    assert isinstance(read, PanaceaLM) and read.max_length == 32 and read.preference_dim == 2
    read.set_preference([0.3, 0.7])
    assert torch.allclose(batch_scores(read), want, atol=1e-5)
    assert back.generate(["echo a b"], preference=[1.0, 0.0], max_new_tokens=4)[0] is not None
    assert back.preference == [1.0, 0.0]


# ------------------------------------------------------------------------------------------------ the draw


def test_draws_are_on_the_simplex_repeatable_and_differ_by_step():
    a = [draw_preference(7, step, 3) for step in range(50)]
    assert a == [draw_preference(7, step, 3) for step in range(50)]
    assert all(min(v) >= 0 and sum(v) == pytest.approx(1.0, abs=1e-9) for v in a)
    assert len({tuple(v) for v in a}) == 50 and draw_preference(8, 0, 3) != a[0]
    firsts = torch.tensor([v[0] for v in (draw_preference(0, s, 2) for s in range(2000))])
    assert abs(firsts.mean().item() - 0.5) < 0.03 and abs(firsts.var().item() - 1 / 12) < 0.01  # uniform on [0, 1]


def test_sampler_refuses_a_checkpoint_with_another_seed():
    s = PreferenceSampler(seed=1)
    with pytest.raises(ValueError, match="seed=0"):
        s.load_state_dict(PreferenceSampler(seed=0).state_dict())


# ------------------------------------------------------------------------------------------------ the toy recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "llm_panacea.yaml")
SHORT = ["--data.init_args.num_train", "32", "--data.init_args.num_val", "16", "--trainer.enable_progress_bar", "false",
         "--trainer.val_check_interval", "2"]


def fit(out, *args) -> dict:
    main(["fit", "--config", RECIPE, "--trainer.logger.init_args.save_dir", str(out), "--checkpoint.dirpath",
          str(out / "ckpt"), *SHORT, *args])
    return read_checkpoint(str(out / "ckpt" / "last.ckpt"))


def drawn(checkpoint: dict) -> list:
    return [state["drawn"] for key, state in checkpoint["callbacks"].items() if "PreferenceSampler" in key][0]


def test_recipe_end_to_end_and_a_resumed_run_draws_the_same_preferences(tmp_path):
    """The shipped recipe, shortened (2 epochs of 2 steps): it trains, exports a model that loads back with its
    adapter and generates at any preference; a run stopped after its first epoch and resumed draws the 4 vectors
    the whole run drew."""
    whole = drawn(fit(tmp_path / "whole", "--trainer.max_epochs", "2"))
    assert [step for step, _ in whole] == [0, 1, 2, 3] and len({tuple(v) for _, v in whole}) == 4
    assert whole == [(s, draw_preference(0, s, 2)) for s in range(4)]
    export = glob.glob(str(tmp_path / "whole" / "*" / "version_0" / "export"))[0]
    bb = PanaceaLM(export, max_length=32, max_prompt_length=16)
    bb.configure()
    points = preference_front(bb, [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]], num_prompts=16)
    assert all(0 <= p["caps"] <= 1 and 0 <= p["lower"] <= 1 for p in points)
    assert [s for s, _ in drawn(fit(tmp_path / "part"))] == [0, 1]
    resumed = drawn(fit(tmp_path / "part", "--trainer.max_epochs", "2", "--ckpt_path",
                        str(tmp_path / "part" / "ckpt" / "last.ckpt")))
    assert [(s, list(v)) for s, v in resumed] == [(s, list(v)) for s, v in whole]


def test_the_preference_option_sets_the_starting_vector_and_is_checked():
    bb = PanaceaLM("toy:llm", panacea=PanaceaSpec(r=2, preference_dim=2), preference=[0.25, 0.75])
    bb.configure()
    assert bb.preference == [0.25, 0.75]
    bad = PanaceaLM("toy:llm", panacea=PanaceaSpec(r=2, preference_dim=2), preference=[0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="backbone.preference has 3 entries"):
        bad.configure()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_panacea_model_spans_the_front(tmp_path, seed):
    """One run of the shipped recipe: the preference moves the model across the (caps, lower) plane, from the
    capital echo at (1, 0) to the lower-case one at (0, 1), and at (0.2, 0.8) it is as good on lower case as
    MODPO's runs at that vector (0.71-0.76). Measured over seeds 0-2 (docs/language.md): caps 0.87 apart or more,
    lower 0.61 apart or more, lower 0.69 or more at (0.2, 0.8); asserted: 0.5, 0.35, 0.55."""
    main(["fit", "--config", RECIPE, "--trainer.logger.init_args.save_dir", str(tmp_path), "--checkpoint.dirpath",
          str(tmp_path / "ckpt"), "--trainer.enable_progress_bar", "false", "--seed_everything", str(seed),
          "--data.init_args.seed", str(seed)])
    bb = PanaceaLM(glob.glob(str(tmp_path / "*" / "version_0" / "export"))[0], max_length=32, max_prompt_length=16)
    bb.configure()
    caps_first, lower_first, mostly_lower = preference_front(bb, [[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]])
    assert caps_first["caps"] - lower_first["caps"] > 0.5, (caps_first, lower_first)
    assert lower_first["lower"] - caps_first["lower"] > 0.35, (caps_first, lower_first)
    assert mostly_lower["lower"] > 0.55, mostly_lower


def test_sampler_refuses_a_backbone_without_a_preference_adapter():
    from types import SimpleNamespace

    module = SimpleNamespace(backbone=CausalLM("toy:llm"))
    with pytest.raises(ValueError, match="takes no preference vector; use alignsuite.backbones.PanaceaLM"):
        PreferenceSampler().on_train_batch_start(SimpleNamespace(global_step=0), module, {}, 0)


def test_a_reference_read_as_what_it_is_an_export_with_its_adapter_at_the_policys_preference(tmp_path):
    """``load_reference``: a Panacea export (a frozen copy the recipe names, or the export the policy starts from)
    keeps its adapter and follows the policy's preference vector; a plain model is read as it is."""
    trained = built()
    perturb_panacea(trained)
    trained.save_pretrained(str(tmp_path))
    policy = built()  # a fresh adapter (U = 0): the policy is its base
    ref = FrozenCopy(str(tmp_path))
    ref.build(policy)
    assert not any(p.requires_grad for p in ref.model.parameters()) and not ref.model.training
    for vector in ([0.3, 0.7], [1.0, 0.0]):  # the reference moves with the policy's vector, never set on its own
        policy.set_preference(vector)
        trained.set_preference(vector)
        assert torch.allclose(batch_scores(policy, ref.model), batch_scores(trained), atol=1e-5)
    with policy.adapters_disabled():  # the policy's base; the reference keeps its adapter
        assert torch.allclose(batch_scores(policy, ref.model), batch_scores(trained), atol=1e-5)
    with trained.adapters_disabled():
        base = batch_scores(trained)
    assert not torch.allclose(batch_scores(trained), base, atol=1e-3)  # the adapter matters at this vector
    plain = policy.load_reference("toy:llm")  # a plain model: as it is, no adapter
    assert not adapters(plain) and torch.allclose(batch_scores(policy, plain), base, atol=1e-5)
    # the starting weights of a policy that starts from the export: the export, adapter and all
    again = PanaceaLM(str(tmp_path), max_length=32, max_prompt_length=16)
    again.configure()
    again.set_preference([0.2, 0.8])
    trained.set_preference([0.2, 0.8])
    assert torch.allclose(batch_scores(again, again.load_reference()), batch_scores(trained), atol=1e-5)
    wider = built(PanaceaSpec(r=4, preference_rank=2, preference_dim=3))
    with pytest.raises(ValueError, match=r"reference .* is a Panacea export for 2 preferences and the policy takes 3"):
        wider.load_reference(str(tmp_path))
    with pytest.raises(ValueError, match="build the policy first"):
        PanaceaLM("toy:llm", panacea=PanaceaSpec(preference_dim=2)).load_reference(str(tmp_path))
