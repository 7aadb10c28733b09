"""Token-level objectives and the token path that feeds them: ``TokenScores`` summed are the sequence scores
exactly; the fused head's full-vocabulary KL and WPO's norm equal the ones computed from whole logits (values
and gradients); hand-worked losses for every token-level objective; SparsePO with all-ones masks is TDPO1; the
combinations that cannot work are refused at setup; WPO and LD-DPO agree with TRL."""

from __future__ import annotations

import math

import pytest
import torch

from alignsuite.backbones import CausalLM
from alignsuite.backbones.base import shared_prompts
from alignsuite.objectives import SparsePO, get_objective
from alignsuite.objectives.token_level import activation_masks
from alignsuite.reference import FrozenCopy, Precomputed, SwappedCopy
from alignsuite.scores import TokenNeeds, TokenScores
from alignsuite.views import check_token_needs

HAND_WORKED = ("tdpo1", "tdpo2", "wpo", "ld_dpo", "sparsepo", "sparsepo_activation", "fpo")
B = 0.1


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# One pair: chosen 2 tokens, rejected 3 (the chosen row padded). u_w = [0.5, -0.2], u_l = [0.1, -1.0, 0.4].
CHOSEN, REF_CHOSEN = [-1.0, -2.0], [-1.5, -1.8]
REJECTED, REF_REJECTED = [-0.5, -3.0, -1.0], [-0.6, -2.0, -1.4]
KL_W, KL_L = [0.02, 0.05], [0.01, 0.03, 0.04]
NORM_W, NORM_L = [-0.3, -0.2], [-0.1, -0.4, -0.2]


def padded(values, width=3, fill=0.0):
    return values + [fill] * (width - len(values))


def token_scores(grad: bool = False, hidden=None) -> TokenScores:
    def t(values):
        return torch.tensor([padded(values)], dtype=torch.float64, requires_grad=grad)

    extra = {"chosen_self_norm": t(NORM_W).detach(), "rejected_self_norm": t(NORM_L).detach()}
    if hidden is not None:
        extra["chosen_ref_hidden"], extra["rejected_ref_hidden"] = hidden
    return TokenScores(t(CHOSEN), t(REJECTED), torch.tensor([[1, 1, 0]]), torch.tensor([[1, 1, 1]]), t(REF_CHOSEN),
                       t(REF_REJECTED), t(KL_W), t(KL_L), extra=extra)


U_W, U_L = 0.5 - 0.2, 0.1 - 1.0 + 0.4  # 0.3, -0.5


def test_tdpo1_and_tdpo2_hand_worked():
    k_w, k_l = 0.02 + 0.05, 0.01 + 0.03 + 0.04
    out = get_objective("tdpo1")(token_scores())
    assert out.loss.item() == pytest.approx(softplus(-B * ((U_W - U_L) - (k_l - k_w))), abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(B * (U_W + k_w))
    assert out.metrics["rewards/rejected"].item() == pytest.approx(B * (U_L + k_l))
    out = get_objective("tdpo2", alpha=0.5)(token_scores())
    assert out.loss.item() == pytest.approx(softplus(-B * ((U_W - U_L) - 0.5 * (k_l - k_w))), abs=1e-6)


def test_tdpo2_takes_no_gradient_through_the_chosen_kl():
    s = token_scores(grad=True)
    get_objective("tdpo2")(s).loss.backward()
    assert s.chosen_kl.grad is None and (s.rejected_kl.grad[0, :3] != 0).all()


def test_ld_dpo_hand_worked_and_alpha_one_is_dpo():
    # shared length 2: the rejected answer's third token counts alpha = 0.5 times.
    u_l = 0.1 - 1.0 + 0.5 * 0.4
    out = get_objective("ld_dpo", alpha=0.5)(token_scores())
    assert out.loss.item() == pytest.approx(softplus(-B * (U_W - u_l)), abs=1e-6)
    dpo = get_objective("dpo")(token_scores().summed())
    assert get_objective("ld_dpo", alpha=1.0)(token_scores()).loss.item() == pytest.approx(dpo.loss.item(), abs=1e-6)


def test_wpo_hand_worked():
    w_w = math.exp(((-1.0 + 0.3) + (-2.0 + 0.2)) / 2)
    w_l = math.exp(((-0.5 + 0.1) + (-3.0 + 0.4) + (-1.0 + 0.2)) / 3)
    out = get_objective("wpo")(token_scores())
    assert out.loss.item() == pytest.approx(w_w * w_l * softplus(-B * (U_W - U_L)), rel=1e-6)


class FixedMasks(SparsePO):
    """SparsePO with given masks, to check its loss by hand."""

    def __init__(self, m_w, m_l, **hparams):
        super().__init__(**hparams)
        self.m_w, self.m_l = torch.tensor([padded(m_w)]), torch.tensor([padded(m_l)])

    def masks(self, s):
        return self.m_w, self.m_l, self.m_w, self.m_l


def test_sparsepo_hand_worked_with_l1():
    m_w, m_l = [1.0, 0.5], [0.0, 1.0, 0.25]
    big_u_w, big_u_l = 0.5 - 0.5 * 0.2, -1.0 + 0.25 * 0.4
    k_w, k_l = 0.02 + 0.5 * 0.05, 0.03 + 0.25 * 0.04
    l1 = 1.5 + 1.25
    out = FixedMasks(m_w, m_l, l1_u=0.01, l1_d=0.02)(token_scores())
    expected = softplus(-B * ((big_u_w - big_u_l) - (k_l - k_w))) + 0.01 * l1 + 0.02 * l1
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(B * (big_u_w - k_w))


def test_sparsepo_with_all_ones_masks_is_tdpo1():
    s = token_scores()
    ones = FixedMasks([1.0, 1.0], [1.0, 1.0, 1.0])
    assert ones(s).loss.item() == get_objective("tdpo1")(s).loss.item()


def test_activation_masks_hand_worked():
    # Mean absolute activations [1, 2, 4] (a padded fourth token): z-normalising then min-max rescaling is (a - 1) / 3.
    hidden = torch.tensor([[1.0, -1.0], [2.0, 2.0], [-4.0, 4.0], [9.0, 9.0]]).reshape(1, 4, 1, 2)
    masks = activation_masks(hidden, torch.tensor([[True, True, True, False]]))
    torch.testing.assert_close(masks, torch.tensor([[0.0, 1 / 3, 1.0, 0.0]]))
    # sparsepo_activation is sparsepo under those masks.
    hidden_w = torch.tensor([[1.0], [3.0], [0.0]]).reshape(1, 3, 1, 1).double()
    hidden_l = torch.tensor([[1.0], [2.0], [3.0]]).reshape(1, 3, 1, 1).double()
    out = get_objective("sparsepo_activation")(token_scores(hidden=(hidden_w, hidden_l)))
    # Masks: chosen [0, 1] (activations 1, 3; the padded third left out), rejected [0, 0.5, 1].
    big_u_w, big_u_l = 1.0 * -0.2, 0.5 * -1.0 + 1.0 * 0.4
    k_w, k_l = 1.0 * 0.05, 0.5 * 0.03 + 1.0 * 0.04
    assert out.loss.item() == pytest.approx(softplus(-B * ((big_u_w - big_u_l) - (k_l - k_w))), abs=1e-6)


def test_fpo_hand_worked():
    # Identity SAE (the features are the hidden units), top-1 on the policy's features. Chosen: f = mean([1, 0],
    # [3, 2]) = [2, 1] (the padded third token left out), f_ref = [1, 0], S = {0}: Dfeat = 1. Rejected: f = [0, 2],
    # f_ref = [0, 0], S = {1}: Dfeat = 4. dm_w = 0.3 / 2, dm_l = -0.5 / 3.
    s = token_scores()
    s.extra["chosen_hidden"] = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]], requires_grad=True)
    s.extra["rejected_hidden"] = torch.tensor([[[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]]], requires_grad=True)
    s.extra["chosen_ref_hidden"] = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])[:, :, None]
    s.extra["rejected_ref_hidden"] = torch.zeros(1, 3, 1, 2)
    objective = get_objective("fpo", top_k=1, alpha=0.5)
    objective.build()
    out = objective(s)
    assert out.loss.item() == pytest.approx(softplus(-B * ((0.3 / 2 + 0.5 / 3) - 0.5 * (4.0 - 1.0))), abs=1e-6)
    out.loss.backward()  # the chosen side's feature distance carries no gradient
    assert s.extra["chosen_hidden"].grad is None and s.extra["rejected_hidden"].grad.abs().sum() > 0


@pytest.mark.parametrize("name", HAND_WORKED)
def test_finite_gradients_at_extreme_token_log_probs(name):
    s = token_scores(grad=True, hidden=(torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4)))
    with torch.no_grad():
        s.chosen.mul_(500), s.rejected.mul_(-500), s.chosen_kl.mul_(1e4)
    s.extra["chosen_hidden"], s.extra["rejected_hidden"] = torch.randn(1, 3, 4) * 500, torch.randn(1, 3, 4) * 500
    objective = get_objective(name)
    if hasattr(objective, "build"):
        objective.build(2, 4)
    out = objective(s)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.chosen.grad).all() and torch.isfinite(s.rejected.grad).all()


# ------------------------------------------------------------------------------------------------ the token path
PROMPTS = ["echo a b", "echo c d e"]
VIEWS = shared_prompts(PROMPTS, ["A B", "C D E"], ["a b", "C D"])


@pytest.fixture(scope="module")
def models():
    backbone = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    backbone.configure()
    reference = FrozenCopy()
    reference.build(backbone)
    with torch.no_grad():  # a policy away from its reference, so that the KL is not 0
        for p in backbone.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return backbone, reference


def test_summed_token_scores_are_the_sequence_scores_exactly(models):
    backbone, reference = models
    prepared = backbone.prepare(VIEWS)
    objective = get_objective("ld_dpo")
    with torch.no_grad():
        ref = reference.score_tokens(backbone, prepared, {}, objective.token_needs)
    summed = objective.pack(backbone.score_tokens(prepared, needs=objective.token_needs, reference=ref), ref, {}).summed()
    policy, ref_scores = backbone.score(prepared), reference.score(backbone, prepared, {})
    assert torch.equal(torch.cat([summed.chosen, summed.rejected]), policy.score)
    assert torch.equal(torch.cat([summed.ref_chosen, summed.ref_rejected]), ref_scores)
    assert torch.equal(torch.cat([summed.chosen_len, summed.rejected_len]), policy.length)


def test_fused_kl_and_norm_equal_whole_logits_values_and_gradients(models):
    backbone, reference = models
    prepared = backbone.prepare(VIEWS)
    needs = TokenNeeds(kl=True, self_norm=True)
    backbone.lm_head_chunk = 3  # several chunks
    try:
        with torch.no_grad():
            ref = reference.score_tokens(backbone, prepared, {}, needs)
        out = backbone.score_tokens(prepared, needs=needs, reference=ref)
    finally:
        backbone.lm_head_chunk = None
    weights = torch.linspace(-1, 2, out.logps.numel())
    backbone.policy.zero_grad()
    ((out.logps * weights).sum() + (out.kl * weights.flip(0)).sum()).backward()
    fused = {n: p.grad.clone() for n, p in backbone.policy.named_parameters()}

    # The same from whole logits, by autograd.
    t = prepared.targets
    batch = dict(input_ids=prepared.input_ids, attention_mask=prepared.attention_mask)
    if prepared.segments is not None:
        batch = dict(input_ids=prepared.input_ids, attention_mask=prepared.packed_mask("sdpa", torch.float32),
                     position_ids=prepared.position_ids)
    backbone.policy.zero_grad()
    logp = backbone.policy(**batch).logits[t.row, t.pos].log_softmax(-1)
    with torch.no_grad():
        ref_logp = reference.model(**batch).logits[t.row, t.pos].log_softmax(-1)
    logps = logp.gather(-1, t.label[:, None]).squeeze(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    torch.testing.assert_close(out.logps, logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.kl, kl, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out.self_norm, torch.logsumexp(2 * logp, -1).detach(), atol=1e-5, rtol=0)
    assert (out.kl > 0).all()
    ((logps * weights).sum() + (kl * weights.flip(0)).sum()).backward()
    for name, p in backbone.policy.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_reference_hidden_states_per_token(models):
    backbone, reference = models
    prepared = backbone.prepare(VIEWS)
    with torch.no_grad():
        ref = reference.score_tokens(backbone, prepared, {}, TokenNeeds(reference_hidden=True))
    layers, width = backbone.hidden_states_shape()
    assert ref.hidden.shape == (prepared.targets.label.numel(), layers, width)


def test_sparsepo_builds_its_mask_network_from_the_backbone_and_trains_it(models):
    backbone, reference = models
    objective = get_objective("sparsepo")
    objective.configure(backbone)
    prepared = backbone.prepare(VIEWS)
    with torch.no_grad():
        ref = reference.score_tokens(backbone, prepared, {}, objective.token_needs)
    s = objective.pack(backbone.score_tokens(prepared, needs=objective.token_needs, reference=ref), ref, {})
    objective(s).loss.backward()
    grads = [p.grad for p in objective.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["tdpo1", "sparsepo", "ld_dpo", "wpo"])
def test_precomputed_reference_refused_naming_objective_and_reference(name):
    backbone = CausalLM("toy:llm")
    with pytest.raises(ValueError, match=f"{name}.*Precomputed"):
        check_token_needs(get_objective(name), backbone, Precomputed())
    if get_objective(name).token_needs.kl:
        with pytest.raises(ValueError, match=f"{name}.*KL.*SwappedCopy"):
            check_token_needs(get_objective(name), backbone, SwappedCopy())


def test_denoising_backbone_refused():
    from alignsuite.backbones import TextToImage

    with pytest.raises(ValueError, match="tdpo1.*TextToImage.*whole samples"):
        check_token_needs(get_objective("tdpo1"), TextToImage("toy:diffusion"), FrozenCopy())


# ------------------------------------------------------------------------------------------------ the module's step
BATCH = {"prompt": PROMPTS, "chosen": ["A B", "C D E"], "rejected": ["a b", "C D"]}


def test_lora_step_with_adapters_disabled_reference_starts_at_ln2_with_zero_kl():
    """Under LoRA the reference is the policy with its adapters off: at the start (B = 0) the per-token log-ratios
    and the KL are exactly 0, so TDPO's loss is ln 2; the adapters get gradients."""
    from alignsuite.backbones import LoraSpec
    from alignsuite.module import PreferenceModule
    from alignsuite.reference import AdapterDisabled

    module = PreferenceModule(CausalLM("toy:llm", max_length=32, max_prompt_length=16, lora=LoraSpec(r=4)),
                              get_objective("tdpo1"))
    assert isinstance(module.reference, AdapterDisabled)
    module.configure_model()
    scores = module.compute_scores(BATCH)
    assert isinstance(scores, TokenScores) and scores.has_kl
    assert (scores.chosen_kl == 0).all() and torch.equal(scores.chosen, scores.ref_chosen)
    loss = module.objective(scores).loss
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n)


def test_sparsepo_mask_network_is_trained_with_the_policy():
    """The module holds SparsePO as a sub-module: its mask network, built in configure_model, is among the
    parameters the optimizer gets, and in the module's state dict (checkpoints)."""
    from alignsuite.module import PreferenceModule

    module = PreferenceModule(CausalLM("toy:llm", max_length=32, max_prompt_length=16), get_objective("sparsepo"))
    module.configure_model()
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any(n.startswith("objective.reward_masks.") for n in trainable)
    assert any(k.startswith("objective.reward_masks.") for k in module.state_dict())
    module.objective(module.compute_scores(BATCH)).loss.backward()
    assert module.objective.reward_masks.weight.grad is not None


def test_fpo_step_with_an_sae_given_by_import_path():
    """FPO through the module: the SAE named by import path is built with the models; at the start the policy is
    its reference, so the loss is ln 2, and the policy's hidden states carry the feature term's gradient."""
    from alignsuite.module import PreferenceModule

    objective = get_objective("fpo", sae={"class_path": "torch.nn.Linear", "init_args": {"in_features": 64,
                                                                                        "out_features": 16}})
    module = PreferenceModule(CausalLM("toy:llm", max_length=32, max_prompt_length=16), objective)
    module.configure_model()
    assert not any(p.requires_grad for p in module.objective.sae.parameters())
    scores = module.compute_scores(BATCH)
    assert scores.extra["chosen_hidden"].shape[-1] == 64 and scores.extra["chosen_hidden"].requires_grad
    loss = module.objective(scores).loss
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in module.backbone.policy.parameters())


@pytest.mark.parametrize("recipe", ["vlm_dpo.yaml", "tts_dpo.yaml"])
def test_vision_language_and_speech_token_backbones_share_the_token_path(tmp_path, recipe):
    """The vision-language and speech-token toy recipes with SparsePO for two steps: the same token path (their
    backbones are causal LMs), the KL 0 at the first step, finite losses."""
    import csv
    import os

    import yaml

    from alignsuite.cli import main

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "recipes", "toy", recipe)) as f:
        config = yaml.safe_load(f)
    config["model"]["init_args"]["objective"] = {"class_path": "alignsuite.objectives.SparsePO", "init_args": {"beta": 0.1}}
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    config["trainer"]["callbacks"] = []
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
          "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
          "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    (metrics,) = glob_metrics(tmp_path)
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 2 and all(math.isfinite(float(r["train/loss"])) for r in rows)
    assert float(rows[0]["train/kl/chosen"]) == 0.0


def glob_metrics(folder):
    return list(folder.glob("*/version_0/metrics.csv"))


# ------------------------------------------------------------------------------------------------ parity with TRL
TRL_ROWS = [{"prompt": "echo a b", "chosen": " A B", "rejected": " a b c"},
            {"prompt": "echo c d e", "chosen": " C D E", "rejected": " C"}]


@pytest.mark.parametrize("name,hparams,trl_options", [("wpo", {}, {"use_weighting": True}),
                                                      ("ld_dpo", {"alpha": 0.3}, {"ld_alpha": 0.3})])
def test_same_loss_and_gradient_as_trl(models, tmp_path, name, hparams, trl_options):
    """TRL's DPOTrainer (sigmoid loss with ``use_weighting`` / ``ld_alpha``) and the objective on TRL's own batch,
    through the same policy and reference: the same loss and the same gradient of every weight."""
    pytest.importorskip("trl")
    import datasets
    from trl import DPOConfig, DPOTrainer

    from alignsuite.backbones.token_batch import TokenBatch

    backbone, reference = models
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], beta=0.1, max_length=32, use_cpu=True, bf16=False,
                     disable_dropout=True, **trl_options)
    trainer = DPOTrainer(model=backbone.policy, ref_model=reference.model, args=args, processing_class=backbone.tokenizer,
                         train_dataset=datasets.Dataset.from_list(TRL_ROWS))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(TRL_ROWS))])
    backbone.policy.zero_grad()
    trl_loss = trainer.compute_loss(backbone.policy, batch)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in backbone.policy.named_parameters()}

    # TRL's rows (chosen, then rejected), scored by the backbone's token path: the plain layout over TRL's ids.
    ids = batch["input_ids"]
    prepared = TokenBatch(ids, batch["attention_mask"], batch["completion_mask"], ids.shape[1])
    objective = get_objective(name, **hparams)
    with torch.no_grad():
        ref = reference.score_tokens(backbone, prepared, {}, objective.token_needs)
    backbone.policy.zero_grad()
    loss = objective(objective.pack(backbone.score_tokens(prepared, needs=objective.token_needs, reference=ref), ref, {})).loss
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    for n, p in backbone.policy.named_parameters():
        torch.testing.assert_close(p.grad, trl_grads[n], atol=1e-7, rtol=1e-4, msg=n)
