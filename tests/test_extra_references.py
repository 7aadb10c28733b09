"""Named extra references (``model.extra_references``) and WSPO, which reads two of them (its weak pair)."""

from __future__ import annotations

import csv
import glob
import json
import math
import os

import lightning as L
import pytest
import torch
import yaml
from conftest import save_tiny_lm
from test_cli import pair_file  # noqa: F401  (fixture)

from alignsuite.backbones import CausalLM
from alignsuite.cli import main
from alignsuite.module import PreferenceModule
from alignsuite.objectives import DPO, get_objective
from alignsuite.reference import FrozenCopy, Precomputed
from alignsuite.scores import PairScores, TokenScores

HAND_WORKED = ("wspo",)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = {"prompt": ["echo a b", "echo c d e"], "chosen": ["A B", "C D E"], "rejected": ["a b", "C D"]}


def weak_pair_scores(policy, reference, base, aligned, mask) -> TokenScores:
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    m = torch.tensor(mask)
    zeros = torch.zeros_like(t(policy))
    return TokenScores(t(policy).requires_grad_(), zeros.clone().requires_grad_(), m, m, t(reference), zeros,
                       extra={"ref_weak_base_chosen": t(base), "ref_weak_aligned_chosen": t(aligned),
                              "ref_weak_base_rejected": zeros, "ref_weak_aligned_rejected": zeros})


# ------------------------------------------------------------------------------------------------ WSPO by hand
def test_wspo_test_anchor():
    # beta 0.1, strong token log-ratios [0.5, -0.2], weak [0.03, 0.01]: errors 0.05 - 0.03 = 0.02 and
    # -0.02 - 0.01 = -0.03, L = (0.02^2 + 0.03^2) / 2 = 0.00065.
    s = weak_pair_scores([[0.5, -0.2]], [[0.0, 0.0]], [[-1.0, -2.0]], [[-0.97, -1.99]], [[True, True]])
    out = get_objective("wspo", beta=0.1)(s)
    assert out.loss.item() == pytest.approx(0.00065, abs=1e-9)  # float32 inside
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * 0.3)


def test_wspo_averages_over_each_answer_then_over_the_batch_and_ignores_padding():
    # Row 1: tokens (policy - reference) [-1 - -2 = 1, -3 - -1 = -2], weak [0.1, -0.1], beta 0.5: errors 0.4, -0.9;
    # mean (0.16 + 0.81) / 2 = 0.485. Row 2: one token, u = 0.2, weak 0.3: error -0.2, 0.04; its padding (values
    # 9) is ignored. Batch mean (0.485 + 0.04) / 2 = 0.2625.
    s = weak_pair_scores([[-1.0, -3.0], [0.2, 9.0]], [[-2.0, -1.0], [0.0, 9.0]], [[-1.0, -1.0], [-1.0, 9.0]],
                         [[-0.9, -1.1], [-0.7, 0.0]], [[True, True], [True, False]])
    out = get_objective("wspo", beta=0.5)(s)
    assert out.loss.item() == pytest.approx(0.2625, abs=1e-6)
    out.loss.backward()  # only the chosen answer enters the loss
    assert s.rejected.grad is None and s.chosen.grad[1, 1] == 0


def test_wspo_without_its_weak_pair_is_an_error_naming_the_option():
    s = weak_pair_scores([[0.5]], [[0.0]], [[0.0]], [[0.0]], [[True]])
    del s.extra["ref_weak_aligned_chosen"]
    with pytest.raises(ValueError, match="ref_weak_aligned_chosen.*model.extra_references"):
        get_objective("wspo")(s)


# ------------------------------------------------------------------------------------------------ setup refusals
def test_a_declared_name_the_recipe_does_not_give_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"'wspo' reads the extra reference\(s\) 'weak_aligned'.*gives: 'weak_base'"):
        PreferenceModule(CausalLM("toy:llm"), get_objective("wspo"), extra_references={"weak_base": FrozenCopy()})
    with pytest.raises(ValueError, match=r"'weak_base', 'weak_aligned'.*gives: none"):
        PreferenceModule(CausalLM("toy:llm"), get_objective("wspo"))


def test_a_given_name_the_objective_does_not_read_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"gives 'other', which objective 'dpo' does not read \(it reads: none\)"):
        PreferenceModule(CausalLM("toy:llm"), DPO(), extra_references={"other": FrozenCopy()})


def test_an_extra_reference_must_have_weights_of_its_own():
    with pytest.raises(ValueError, match="weak_base is Precomputed, which scores the policy's own weights"):
        PreferenceModule(CausalLM("toy:llm"), get_objective("wspo"),
                         extra_references={"weak_base": Precomputed(), "weak_aligned": FrozenCopy()})


def test_a_checkpoint_with_another_tokenizer_or_none_is_refused_before_it_loads(tmp_path):
    from transformers import AutoTokenizer

    other = save_tiny_lm(tmp_path / "other", seed=3)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(other)
    module = PreferenceModule(CausalLM("toy:llm"), get_objective("wspo"), extra_references={
        "weak_base": FrozenCopy("toy:llm"), "weak_aligned": FrozenCopy(other)})
    with pytest.raises(ValueError, match=r"model.extra_references.weak_aligned: .* has another tokenizer.*'zebra'"):
        module.configure_model()
    assert module.extra_references["weak_aligned"].model is None
    module = PreferenceModule(CausalLM("toy:llm"), get_objective("wspo"), extra_references={
        "weak_base": FrozenCopy("toy:llm"), "weak_aligned": FrozenCopy(str(tmp_path / "not_trained_yet"))})
    with pytest.raises(FileNotFoundError, match="model.extra_references.weak_aligned: model path .*not_trained_yet"):
        module.configure_model()


# ------------------------------------------------------------------------------------------------ the module
def perturbed_module(objective, extra) -> PreferenceModule:
    module = PreferenceModule(CausalLM("toy:llm", max_length=32, max_prompt_length=16), objective,
                              extra_references=extra)
    module.configure_model()
    with torch.no_grad():  # a policy away from its reference
        for p in module.backbone.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return module


def test_wspo_with_the_same_weak_model_twice_is_beta_squared_mean_squared_log_ratio(tmp_path):
    """Weak log-ratio 0: L = beta^2 * mean over each chosen answer of u_t^2, then over the batch."""
    weak = save_tiny_lm(tmp_path / "weak", seed=5)
    module = perturbed_module(get_objective("wspo", beta=0.3),
                              {"weak_base": FrozenCopy(weak), "weak_aligned": FrozenCopy(weak)})
    scores = module.compute_scores(BATCH)
    assert torch.equal(scores.extra["ref_weak_base_chosen"], scores.extra["ref_weak_aligned_chosen"])
    assert scores.extra["ref_weak_base_rejected"].shape == scores.rejected.shape
    u = (scores.chosen.detach() - scores.ref_chosen).masked_fill(~scores.chosen_mask, 0)
    expected = (0.09 * u.pow(2).sum(1) / scores.chosen_mask.sum(1)).mean()
    assert expected > 1e-6
    loss = module.objective(scores).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert not any(p.requires_grad for p in module.extra_references.parameters())
    state = module.state_dict()
    assert not any(k.startswith("extra_references.") for k in state)
    module.load_state_dict(state, strict=True)  # a resumed run rebuilds them from their sources


def test_an_extra_reference_of_the_starting_weights_scores_as_the_reference():
    """Token path and sequence path: an extra reference of the policy's starting weights gives the reference's own
    scores, per token and per sequence (``ref_<name>_<view>``)."""
    module = perturbed_module(get_objective("wspo"), {"weak_base": FrozenCopy(), "weak_aligned": FrozenCopy()})
    scores = module.compute_scores(BATCH)
    torch.testing.assert_close(scores.extra["ref_weak_base_chosen"], scores.ref_chosen)
    torch.testing.assert_close(scores.extra["ref_weak_aligned_rejected"], scores.ref_rejected)

    class ReadsAnother(DPO):
        extra_references = ("another",)

    module = perturbed_module(ReadsAnother(), {"another": FrozenCopy()})
    pair = module.compute_scores(BATCH)
    assert pair.extra["ref_another_chosen"].shape == pair.ref_chosen.shape
    torch.testing.assert_close(pair.extra["ref_another_chosen"], pair.ref_chosen)
    torch.testing.assert_close(pair.extra["ref_another_rejected"], pair.ref_rejected)


# ------------------------------------------------------------------------------------------------ the recipe
def test_wspo_recipe_trains_two_steps_with_a_dpo_trained_weak_model(tmp_path):
    """The weak aligned model is the toy base after three DPO steps (llm_dpo.yaml, exported); WSPO's recipe then
    trains two steps against it and the toy base, and neither weak model travels in the checkpoint."""
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
             "--trainer.callbacks", "[]", "--trainer.limit_val_batches", "0"]
    main(["fit", "--config", os.path.join(REPO, "recipes/toy/llm_dpo.yaml"), "--trainer.max_steps", "3", *quiet,
          "--trainer.logger.init_args.save_dir", str(tmp_path / "dpo"), "--checkpoint.dirpath", str(tmp_path / "c1")])
    aligned = glob.glob(str(tmp_path / "dpo" / "*" / "version_0" / "export"))[0]
    main(["fit", "--config", os.path.join(REPO, "recipes/toy/llm_wspo.yaml"), "--trainer.max_steps", "2", *quiet,
          "--model.extra_references.weak_aligned.init_args.model_name_or_path", aligned,
          "--trainer.logger.init_args.save_dir", str(tmp_path / "wspo"), "--checkpoint.dirpath", str(tmp_path / "c2")])
    run = glob.glob(str(tmp_path / "wspo" / "*" / "version_0"))[0]
    with open(os.path.join(run, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 2
    # The weak pair differ (DPO moved the aligned one), and at the first step the policy is its reference: the loss
    # is the mean squared weak log-ratio alone.
    assert float(rows[0]["train/loss"]) > 0 and float(rows[0]["train/wspo/weak_ratio"]) != 0
    checkpoint = torch.load(glob.glob(str(tmp_path / "c2" / "*.ckpt"))[0], weights_only=False)
    assert not any(k.startswith("extra_references.") for k in checkpoint["state_dict"])


# ------------------------------------------------------------------------------------------------ MODPO's margin model
def margin_scores(**extra) -> PairScores:
    t = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
    return PairScores(t(-1.0), t(-2.0), t(-1.5), t(-1.8), extra={k: t(v) for k, v in extra.items()})


def test_modpo_margin_from_a_margin_model_by_hand():
    # beta 0.1, w = (0.5, 0.5). u_w = -1 - -1.5 = 0.5, u_l = -2 - -1.8 = -0.2. The margin model's implicit rewards:
    # R_w = 0.1 * (-1.2 - -1.5) = 0.03, R_l = 0.1 * (-2.2 - -1.8) = -0.04. rhat_w = (0.05 - 0.5 * 0.03) / 0.5 = 0.07,
    # rhat_l = (-0.02 - 0.5 * -0.04) / 0.5 = 0; L = -log s(0.07).
    objective = get_objective("modpo", beta=0.1, weights=[0.5, 0.5], margin="reference")
    assert objective.extra_references == ("margin",) and objective.extra_columns == ()
    out = objective(margin_scores(ref_margin_chosen=-1.2, ref_margin_rejected=-2.2))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.07)), abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.07, abs=1e-6)
    # The same margin stored as columns (the official recipe's pass over the data beforehand) gives the same loss.
    columns = get_objective("modpo", beta=0.1, weights=[0.5, 0.5], margin="columns")
    stored = columns(margin_scores(margin_chosen=0.03, margin_rejected=-0.04))
    assert stored.loss.item() == pytest.approx(out.loss.item(), abs=1e-6)


def test_modpo_margin_reference_without_the_margin_model_is_refused():
    objective = get_objective("modpo", weights=[0.5, 0.5], margin="reference")
    with pytest.raises(ValueError, match="model.extra_references.margin"):
        objective(margin_scores())
    with pytest.raises(ValueError, match=r"'modpo' reads the extra reference\(s\) 'margin'"):
        PreferenceModule(CausalLM("toy:llm"), objective)


def test_modpo_with_the_starting_weights_as_margin_model_is_dpo_at_beta_over_w0():
    """A margin model equal to the reference has implicit reward 0: MODPO is DPO with beta / w_0, in the module."""
    module = perturbed_module(get_objective("modpo", beta=0.1, weights=[0.5, 0.5], margin="reference"),
                              {"margin": FrozenCopy()})
    scores = module.compute_scores(BATCH)
    torch.testing.assert_close(scores.extra["ref_margin_chosen"], scores.ref_chosen)
    loss = module.objective(scores).loss
    assert loss.item() == pytest.approx(DPO(beta=0.2)(scores).loss.item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ FSDP2
class ExtraProbe(L.Callback):
    """Writes, per rank, each step's loss over the global batch and, at the end, how much of each extra reference
    this rank holds and whether the optimizer sees any of it. Loaded by the FSDP2 subprocesses from this file."""

    def __init__(self, path: str):
        self.path = path

    def _write(self, trainer, record):
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write(trainer, {"loss": float(trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean"))})

    def on_train_end(self, trainer, pl_module):
        from alignsuite.sharding import local

        optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        params = list(pl_module.extra_references.parameters())
        self._write(trainer, {"local": sum(local(p).numel() for p in params), "full": sum(p.numel() for p in params),
                              "optimized": sum(id(p) in optimized for p in params)})


@pytest.mark.distributed
def test_wspo_under_fsdp2_shards_its_weak_pair_and_trains_like_one_process(tmp_path, tiny_lm_dir,
                                                                         pair_file):  # noqa: F811
    """Two ranks x 4 pairs under FSDP2 give one process's losses with the global batch (8 pairs); each rank holds
    about half of the weak models (shards of odd-sized rows differ by one row), none of which the optimizer sees."""
    from test_fsdp import fsdp_recipe, run_fsdp2

    aligned = save_tiny_lm(tmp_path / "aligned", seed=9, initializer_range=0.2)

    def run(root, sharded):
        root.mkdir()
        path = fsdp_recipe(root, tiny_lm_dir, pair_file, batch_size=4 if sharded else 8)
        config = yaml.safe_load(open(path))
        config["trainer"]["callbacks"] = [{"class_path": "test_extra_references.ExtraProbe",
                                           "init_args": {"path": str(root / "probe")}}]
        config["model"]["init_args"].update(
            objective={"class_path": "alignsuite.objectives.WSPO", "init_args": {"beta": 0.5}},
            extra_references={name: {"class_path": "alignsuite.reference.FrozenCopy",
                                     "init_args": {"model_name_or_path": source}}
                              for name, source in (("weak_base", tiny_lm_dir), ("weak_aligned", aligned))})
        open(path, "w").write(yaml.safe_dump(config))
        run_fsdp2(path) if sharded else main(["fit", "--config", path])
        return [[json.loads(line) for line in open(f"{root / 'probe'}.rank{rank}")] for rank in range(2 if sharded else 1)]

    two, one = run(tmp_path / "two", True), run(tmp_path / "one", False)
    losses = [[r["loss"] for r in records if "loss" in r] for records in two + one]
    assert losses[0] == losses[1] and losses[0] == pytest.approx(losses[2], rel=1e-4) and len(losses[2]) == 4
    for records in two:
        end = records[-1]
        assert 0.45 * end["full"] < end["local"] < 0.55 * end["full"] and end["optimized"] == 0  # odd rows: uneven
