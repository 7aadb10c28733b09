"""Reference strategies: which weights score and sample (a stand-in backbone), and in which dtype (a tiny LM)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alignsuite.reference import CheckpointPool, FrozenCopy, MovingAverage


class Policy:
    """What CheckpointPool reads of a backbone: its ``policy`` module."""

    def __init__(self) -> None:
        self.policy = nn.Linear(1, 1, bias=False)

    def set(self, value: float) -> None:
        with torch.no_grad():
            self.policy.weight.fill_(value)


def loaded_weight(pool: CheckpointPool) -> float:
    return pool.model.weight.item()


def test_checkpoint_pool_keeps_the_initial_and_the_latest_snapshots():
    backbone, pool = Policy(), CheckpointPool(mode="latest", every_n_steps=2, max_size=3)
    backbone.set(0.0)
    pool.build(backbone)
    for step in range(1, 9):
        backbone.set(float(step))
        pool.after_step(backbone, step)
    # snapshots at steps 2, 4, 6, 8; three kept: the initial weights and the two newest
    assert [p["weight"].item() for p in pool.pool] == [0.0, 6.0, 8.0]
    assert not pool.model.weight.requires_grad


@pytest.mark.parametrize("mode", ["latest", "random"])
def test_checkpoint_pool_loads_the_snapshot_it_picks_after_an_eviction(mode):
    """Evicting the oldest snapshot shifts the later ones down an index; the weights loaded for an
    index before the eviction must not pass for the snapshot now at that index."""
    backbone, pool = Policy(), CheckpointPool(mode=mode, every_n_steps=1, max_size=3)
    backbone.set(0.0)
    pool.build(backbone)
    for step in range(1, 21):
        backbone.set(float(step))
        pool.after_step(backbone, step)  # the pool is full from step 2: each later step evicts
        index = pool.select(step)
        assert loaded_weight(pool) == pool.pool[index]["weight"].item()
        if mode == "latest":
            assert loaded_weight(pool) == float(step)


# ---------------------------------------------------------------- the reference's dtype
def lm_module(model_dir, reference):
    from alignsuite.backbones import CausalLM
    from alignsuite.module import PreferenceModule

    return PreferenceModule(CausalLM(model_dir, max_length=24, max_prompt_length=12), reference=reference,
                            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), warmup_ratio=0.0)


def test_frozen_copy_under_bf16_mixed_stores_autocasts_weights_in_bfloat16_and_the_policy_trains_in_float32(
        tmp_path, tiny_lm_dir):
    import lightning as L

    from alignsuite.toy.data import ToyPreferenceData

    module = lm_module(tiny_lm_dir, FrozenCopy())
    L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
              default_root_dir=str(tmp_path)).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    model = module.reference.model
    dtypes = {n: p.dtype for n, p in model.named_parameters()}  # a tied LM head is listed as the embedding
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and f"{n}.weight" in dtypes}
    assert len(linear) > 4 and all(dtypes[f"{n}.weight"] == torch.bfloat16 for n in linear)
    others = [n for n in dtypes if n.rsplit(".", 1)[0] not in linear]
    assert any("embed" in n for n in others) and any("norm" in n for n in others)  # the tiny Llama's
    assert all(dtypes[n] == torch.float32 for n in others)
    trainable = [p for p in module.backbone.policy.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}


def test_autocast_reference_scores_a_float32_copys_scores_bit_for_bit(tiny_lm_dir):
    """Under bf16 autocast, the default reference (linear weights stored in bfloat16) computes exactly what a
    float32 copy computes, and what the unchanged policy computes: a DPO loss of ln 2 at the first step. A
    reference wholly in bfloat16 does not."""
    from alignsuite.backbones import CausalLM
    from alignsuite.backbones.base import shared_prompts

    backbone = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    backbone.configure()
    prepared = backbone.prepare(shared_prompts(["echo a", "echo b c d e"], ["A B C", "B"], ["a", "c d e f"]))
    scores = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores["policy"] = backbone.score(prepared).score.float()
        for dtype in ("float32", "autocast", "bfloat16"):
            reference = FrozenCopy(dtype=dtype)
            reference.build(backbone)
            scores[dtype] = reference.score(backbone, prepared, {}).float()
    assert torch.equal(scores["autocast"], scores["float32"]) and torch.equal(scores["autocast"], scores["policy"])
    assert not torch.equal(scores["bfloat16"], scores["float32"])


def test_bf16_true_reference_is_wholly_bfloat16(tiny_lm_dir):
    import lightning as L

    module = lm_module(tiny_lm_dir, FrozenCopy())
    module.trainer = L.Trainer(accelerator="cpu", precision="bf16-true", logger=False, enable_progress_bar=False)
    module.configure_model()
    assert {p.dtype for p in module.reference.model.parameters()} == {torch.bfloat16}


def test_store_for_autocast_keeps_a_tied_head_with_its_embedding():
    from alignsuite.precision import store_for_autocast

    embed, head, norm = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False), torch.nn.LayerNorm(4)
    head.weight = embed.weight  # tied, as many LMs' heads
    conv = torch.nn.Conv1d(4, 4, 1)
    model = torch.nn.ModuleList([embed, head, norm, conv])
    assert store_for_autocast(model) == 2  # the convolution's weight and bias
    assert embed.weight.dtype == head.weight.dtype == torch.float32 and norm.weight.dtype == torch.float32
    assert conv.weight.dtype == conv.bias.dtype == torch.bfloat16


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: FrozenCopy(dtype="float32"), torch.float32),  # explicit wins over the bf16 default
    (lambda: MovingAverage(), torch.float32),  # its average keeps the backbone's precision
    (lambda: MovingAverage(dtype="bfloat16"), torch.bfloat16),
], ids=["frozen-float32", "moving-default", "moving-bfloat16"])
def test_reference_dtype_under_bf16_precision(tiny_lm_dir, make, expected):
    import lightning as L

    module = lm_module(tiny_lm_dir, make())
    module.trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False)
    module.configure_model()
    assert {p.dtype for p in module.reference.model.parameters()} == {expected}


def test_bfloat16_reference_scores_close_to_float32(tiny_lm_dir):
    from alignsuite.backbones import CausalLM
    from alignsuite.backbones.base import shared_prompts

    backbone = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    backbone.configure()
    prepared = backbone.prepare(shared_prompts(["echo a", "echo b c d e"], ["A B C", "B"], ["a", "c d e f"]))
    scores = {}
    for dtype in ("float32", "bfloat16"):
        reference = FrozenCopy(dtype=dtype)
        reference.build(backbone)
        scores[dtype] = reference.score(backbone, prepared, {}).float()
    # Summed log-probabilities of a few tokens each, around -10 to -30: bfloat16 holds them to about 1%.
    assert scores["float32"].abs().min() > 1.0
    torch.testing.assert_close(scores["bfloat16"], scores["float32"], rtol=0.02, atol=0.05)
    assert not torch.equal(scores["bfloat16"], scores["float32"])  # it really computed in bfloat16


def test_precomputed_scores_are_taken_in_the_training_precision(tmp_path, tiny_lm_dir):
    """Under bf16-mixed the stored scores are the policy's under autocast, as the training step computes them:
    the first step's DPO loss is ln 2, as with a frozen copy (scored in float32 it was 0.6919 on the benchmark)."""
    import lightning as L

    from alignsuite.reference import Precomputed
    from alignsuite.toy.data import ToyPreferenceData

    first = []

    class FirstLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            first.append(float(outputs["loss"]))

    module = lm_module(tiny_lm_dir, Precomputed())
    L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0, callbacks=[FirstLoss()],
              default_root_dir=str(tmp_path)).fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    assert first[0] == pytest.approx(math.log(2), abs=1e-6)
