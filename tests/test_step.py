"""The step's contract: declared views, the objective/data check at setup, lifecycle hooks, float32
trainable weights. Each through a real Trainer and the tiny saved Llama."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from alignsuite.backbones import CausalLM
from alignsuite.backbones.base import ViewInputs, shared_prompts
from alignsuite.module import PreferenceModule
from alignsuite.objectives import DPO, KTO, SePPO, SmPO
from alignsuite.reference import CheckpointPool, FrozenCopy, Precomputed
from alignsuite.toy.data import ToyPreferenceData
from alignsuite.views import View


def make_trainer(tmp_path, max_steps=-1, callbacks=(), **kwargs):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     enable_checkpointing=False, default_root_dir=str(tmp_path), callbacks=list(callbacks), **kwargs)


def adamw(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr)


class NoPromptLM(CausalLM):
    """A backbone with one condition transform: the completion scored with the prompt replaced by ''."""

    conditions = ("no_prompt",)

    def transform(self, condition: str, view: ViewInputs) -> ViewInputs:
        if condition != "no_prompt":
            return super().transform(condition, view)
        return view.replace(prompts=[""] * len(view.prompts))


class ConditionedDPO(DPO):
    """DPO that also scores the chosen answer without its prompt (mDPO's shape: a third view that keeps the
    completion and changes the condition), and records the scores it was given."""

    views = DPO.views + (View("chosen_no_prompt", column="chosen", condition="no_prompt"),)

    def __call__(self, scores, reduce=None):
        self.seen = scores
        return super().__call__(scores, reduce)


class Seen(L.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)


def test_a_declared_conditioned_view_reaches_the_objective_with_no_change_to_the_module(tmp_path, tiny_lm_dir):
    objective, seen = ConditionedDPO(beta=0.1), Seen()
    backbone = NoPromptLM(tiny_lm_dir, max_length=24, max_prompt_length=12)
    module = PreferenceModule(backbone, objective, optimizer=adamw(0.0), warmup_ratio=0.0)
    make_trainer(tmp_path, 1, [seen]).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    s, batch = objective.seen, seen.batches[0]
    assert set(s.extra) == {"chosen_no_prompt", "chosen_no_prompt_len", "ref_chosen_no_prompt"}
    # The view's scores are the chosen answers' log-likelihoods with an empty prompt, policy and reference.
    direct = backbone.score(backbone.prepare([ViewInputs([""] * 4, batch["chosen"])]))
    torch.testing.assert_close(s.extra["chosen_no_prompt"].detach(), direct.score.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.extra["ref_chosen_no_prompt"], direct.score.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.extra["chosen_no_prompt_len"], s.chosen_len)
    # ... and differ from the chosen scores under the real prompt, which still come first.
    assert (s.extra["chosen_no_prompt"] - s.chosen).abs().max() > 1e-2


def test_an_unknown_condition_fails_at_setup_naming_the_view(tmp_path, tiny_lm_dir):
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), ConditionedDPO())
    with pytest.raises(ValueError, match="'chosen_no_prompt' under condition 'no_prompt'.*CausalLM cannot apply"):
        make_trainer(tmp_path, 1).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    assert module.backbone.policy is None  # failed before any model loaded


def test_view_completions_take_columns_items_and_shifts():
    batch = {"chosen": ["a", "b", "c"], "responses": [["x0", "x1"], ["y0", "y1"], ["z0", "z1"]]}
    assert View("chosen").completions(batch) == ["a", "b", "c"]
    assert View("m", column="chosen", shift=1).completions(batch) == ["b", "c", "a"]
    assert View("r1", column="responses", item=1).completions(batch) == ["x1", "y1", "z1"]


def test_pairs_given_to_an_unpaired_objective_fail_at_setup(tmp_path, tiny_lm_dir):
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), KTO())
    data = ToyPreferenceData(num_train=8, num_val=4, batch_size=4)
    with pytest.raises(ValueError, match=r"objective 'kto' scores unpaired rows, and the data layout .* gives pairs rows"):
        make_trainer(tmp_path, 1).fit(module, data)
    assert module.backbone.policy is None


def test_a_missing_column_fails_at_setup_naming_it(tmp_path, tiny_lm_dir):
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), SmPO())
    with pytest.raises(ValueError, match=r"objective 'smpo' needs the data column\(s\) 'reward_chosen', 'reward_rejected'"):
        make_trainer(tmp_path, 1).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    assert module.backbone.policy is None


def test_sampled_views_need_a_reference_that_samples(tmp_path, tiny_lm_dir):
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), SePPO(beta=0.1),
                              reference=FrozenCopy())
    with pytest.raises(ValueError, match="'rejected' on completions sampled by the reference.*FrozenCopy cannot sample"):
        make_trainer(tmp_path, 1).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))


def test_precomputed_refuses_views_it_cannot_store(tmp_path, tiny_lm_dir):
    from alignsuite.backbones import TextToImage

    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), KTO(), reference=Precomputed())
    data = ToyPreferenceData(num_train=8, num_val=4, batch_size=4, unpaired=True)
    with pytest.raises(ValueError, match=r"Precomputed cannot store scores for objective 'kto'.*\['mismatched'\]"):
        make_trainer(tmp_path, 1).fit(module, data)
    with pytest.raises(ValueError, match="TextToImage draws new noise"):
        Precomputed().check(DPO(), TextToImage("unused"))


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_precomputed_reference_with_max_epochs(tmp_path, tiny_lm_dir):
    """max_epochs makes configure_optimizers build the train loader before fit starts; the precomputed
    scores must still reach every step (they are looked up by row, not added to the data)."""
    losses = {}
    for name, reference in (("frozen", FrozenCopy()), ("precomputed", Precomputed())):
        L.seed_everything(0)
        module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), DPO(beta=0.1),
                                  reference, optimizer=adamw(1e-2), warmup_ratio=0.0)
        record = Losses()
        make_trainer(tmp_path / name, callbacks=[record], max_epochs=1).fit(
            module, ToyPreferenceData(num_train=16, num_val=4, batch_size=4))
        losses[name] = record.losses
    assert len(losses["precomputed"]) == 4
    assert losses["precomputed"] == pytest.approx(losses["frozen"], abs=1e-4)


def test_self_sampled_losers_on_a_language_model(tmp_path, tiny_lm_dir):
    """SePPO's losers come from CheckpointPool.sample -> backbone.generate(prompts, model=..., seed=...)."""
    seen = []

    class Recording(SePPO):
        def __call__(self, scores, reduce=None):
            seen.append(scores)
            return super().__call__(scores, reduce)

    pool = CheckpointPool(mode="latest", every_n_steps=1)
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), Recording(beta=0.1),
                              pool, optimizer=adamw(1e-3), warmup_ratio=0.0)
    make_trainer(tmp_path, 2).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    assert len(seen) == 2 and len(pool.pool) == 3  # the initial weights and one snapshot per step
    for s in seen:
        assert torch.isfinite(s.rejected).all() and (s.rejected_len >= 1).all()
    b = module.backbone
    prompts = ["echo a b", "echo c d e"]
    same = b.generate(prompts, model=pool.model, seed=3, max_new_tokens=6)
    assert same == b.generate(prompts, model=pool.model, seed=3, max_new_tokens=6)  # a seed repeats
    draws = {tuple(b.generate(prompts, model=pool.model, seed=s, max_new_tokens=6)) for s in range(6)}
    assert len(draws) > 1  # and sampling really samples


def test_generate_scores_with_the_model_it_is_given(tiny_lm_dir, tmp_path):
    from conftest import save_tiny_lm

    other = CausalLM(save_tiny_lm(tmp_path / "other", seed=99, initializer_range=0.2), max_length=24, max_prompt_length=12)
    other.configure()
    b = CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12)
    b.configure()
    prompts = ["echo a b c", "echo d e"]
    assert b.generate(prompts, model=other.policy, max_new_tokens=6) == other.generate(prompts, max_new_tokens=6)
    assert b.generate(prompts, max_new_tokens=6) != other.generate(prompts, max_new_tokens=6)


def test_trainable_weights_are_float32_and_frozen_ones_keep_their_dtype(tmp_path, tiny_lm_dir):
    from alignsuite.backbones import LoraSpec

    full = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12, dtype="bfloat16"))
    full.configure_model()
    assert {p.dtype for p in full.backbone.parameters()} == {torch.float32}
    assert {p.dtype for p in full.reference.parameters()} == {torch.bfloat16}
    lora = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12, dtype="bfloat16",
                                     lora=LoraSpec(r=2, alpha=4)))
    lora.configure_model()
    dtypes = {p.requires_grad: {q.dtype for q in lora.backbone.parameters() if q.requires_grad == p.requires_grad}
              for p in lora.backbone.parameters()}
    assert dtypes == {True: {torch.float32}, False: {torch.bfloat16}}


def test_bf16_weights_with_mixed_precision_take_every_small_update(tmp_path, tiny_lm_dir):
    """At lr 5e-7 a bfloat16 weight keeps its value through almost every AdamW step; kept in float32
    (computing in bfloat16 under autocast), nearly every weight moves."""
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12, dtype="bfloat16"),
                              DPO(beta=0.1), optimizer=adamw(5e-7), warmup_ratio=0.0, lr_schedule="constant")
    module.configure_model()
    start = {n: p.detach().clone() for n, p in module.backbone.policy.named_parameters()}
    make_trainer(tmp_path, 3, precision="bf16-mixed").fit(module, ToyPreferenceData(num_train=16, num_val=4, batch_size=4))
    after = dict(module.backbone.policy.named_parameters())
    changed = sum(int((after[n] != v).sum()) for n, v in start.items())
    total = sum(v.numel() for v in start.values())
    assert changed / total > 0.9


def test_true_half_precision_is_refused_with_the_reason(tmp_path, tiny_lm_dir):
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), DPO())
    with pytest.raises(ValueError, match="trainable weights are bfloat16 under trainer.precision='bf16-true'.*bf16-mixed"):
        make_trainer(tmp_path, 1, precision="bf16-true").fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))


def test_training_metrics_and_the_gradient_norm_reach_the_logger_on_its_steps(tmp_path, tiny_lm_dir):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), DPO(),
                              optimizer=adamw(1e-3), warmup_ratio=0.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=2, logger=CSVLogger(tmp_path, name="m"),
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, ToyPreferenceData(num_train=16, num_val=4, batch_size=4))
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    assert [int(row["step"]) for row in rows] == [1, 3]  # Lightning writes every 2nd step (0-based 1 and 3)
    keys = ("train/loss", "train/grad_norm", "train/rewards/margins", "train/logps/chosen", "train/logps/ref_rejected")
    for row in rows:
        assert all(key in row and math.isfinite(float(row[key])) for key in keys + ("train/rewards/accuracies",)), row
        assert float(row["train/grad_norm"]) > 0
    # each written row holds its own step's values, not the first logged ones
    assert all(rows[0][key] != rows[1][key] for key in keys)
    assert float(trainer.callback_metrics["train/grad_norm"]) == float(rows[1]["train/grad_norm"])


def test_shared_prompts_builds_one_view_per_list():
    views = shared_prompts(["p", "q"], ["a", "b"], ["c", "d"])
    assert [(v.prompts, v.completions) for v in views] == [(["p", "q"], ["a", "b"]), (["p", "q"], ["c", "d"])]
