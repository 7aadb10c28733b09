"""The preference step: references, checkpoints and the NaN guard, driven through a real Trainer."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from alignsuite.backbones import CausalLM
from alignsuite.checkpoint_io import AtomicCheckpointIO
from alignsuite.module import NonFiniteLossError, PreferenceModule
from alignsuite.objectives import DPO, KTO, ObjectiveOutput
from alignsuite.reference import FrozenCopy, Precomputed, SwappedCopy
from alignsuite.toy.data import ToyPreferenceData


def make_module(model_dir, objective=None, reference=None, lr=1e-2):
    backbone = CausalLM(model_dir, max_length=24, max_prompt_length=12)
    return PreferenceModule(backbone, objective or DPO(beta=0.1), reference,
                            optimizer=lambda p: torch.optim.AdamW(p, lr=lr), warmup_ratio=0.0)


def make_trainer(tmp_path, max_steps, callbacks=(), **kwargs):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=str(tmp_path), callbacks=list(callbacks), **kwargs)


class Recorder(L.Callback):
    def __init__(self):
        self.losses, self.rows = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.rows.append(batch["index"].tolist())
        assert pl_module.reference is None or not pl_module.reference.training


def train_five_steps(root, model_dir, reference):
    """5 seeded steps of DPO on 32 toy pairs with ``reference``: the step losses and the trained module."""
    L.seed_everything(0)
    rec = Recorder()
    data = ToyPreferenceData(num_train=32, num_val=8, batch_size=4)
    module = make_module(model_dir, reference=reference)
    make_trainer(root, 5, [rec], enable_checkpointing=False).fit(module, data)
    return rec.losses, module


def test_precomputed_reference_trains_exactly_like_a_frozen_copy(tmp_path, tiny_lm_dir):
    frozen, _ = train_five_steps(tmp_path / "frozen", tiny_lm_dir, FrozenCopy())
    precomputed, module = train_five_steps(tmp_path / "precomputed", tiny_lm_dir, Precomputed())
    assert module.reference.stored["train"].shape == (32, 2)  # scored once: every row, both views
    assert not any(p.numel() for p in module.reference.parameters())  # no reference weights held
    assert frozen[0] == pytest.approx(0.693147, abs=1e-4)
    assert precomputed == pytest.approx(frozen, abs=1e-4)


def test_a_swapped_reference_trains_exactly_like_a_frozen_copy(tmp_path, tiny_lm_dir):
    """The starting weights in host memory, copied into the policy for the reference's forward and back: the
    same losses and trained weights as a second frozen model, and the policy keeps no trace of the swap."""
    frozen, frozen_module = train_five_steps(tmp_path / "frozen", tiny_lm_dir, FrozenCopy())
    swapped, module = train_five_steps(tmp_path / "swapped", tiny_lm_dir, SwappedCopy())
    assert not any(p.numel() for p in module.reference.parameters())  # no second model
    start = CausalLM(tiny_lm_dir)
    start.configure()
    assert all(torch.equal(module.reference.stored[k], v) for k, v in start.policy.named_parameters())
    assert frozen[0] == pytest.approx(0.693147, abs=1e-4) and frozen[-1] < 0.6
    assert swapped == frozen  # bit for bit
    trained = module.backbone.policy.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in frozen_module.backbone.policy.state_dict().items())
    with pytest.raises(ValueError, match="SwappedCopy is for full fine-tuning; with lora use AdapterDisabled"):
        SwappedCopy().build(CausalLM(tiny_lm_dir, lora={"r": 4}))


class NaNAtStep(DPO):
    """DPO whose loss turns NaN from a given number of calls on."""

    def __init__(self, at: int):
        super().__init__(beta=0.1)
        self.at, self.calls = at, 0

    def __call__(self, scores, reduce=None):
        out = super().__call__(scores)
        self.calls += 1
        if self.calls > self.at:
            return ObjectiveOutput(out.loss * float("nan"), out.metrics)
        return out


def test_nan_loss_stops_with_the_step_named_and_keeps_the_last_checkpoint(tmp_path, tiny_lm_dir):
    data = ToyPreferenceData(num_train=64, num_val=8, batch_size=4)
    module = make_module(tiny_lm_dir, objective=NaNAtStep(at=3))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = make_trainer(tmp_path, 10, [ckpt], plugins=[AtomicCheckpointIO()])
    with pytest.raises(NonFiniteLossError, match=r"global step 3 .*batch 3, dataset rows \[\d+, \d+, \d+, \d+\]") as err:
        trainer.fit(module, data)
    # the message points at the checkpoint it vouches for, by path and step
    assert f"The last checkpoint written with finite weights is {tmp_path / 'ckpt' / 'last.ckpt'} (global step 3)" in str(err.value)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3  # written after step 3 completed; the NaN step wrote nothing
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not [f for f in os.listdir(tmp_path / "ckpt") if f.startswith(".tmp")]


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("node lost")


@pytest.mark.parametrize("killed_at", [5, 8])
def test_resume_continues_from_the_checkpoint(tmp_path, tiny_lm_dir, killed_at):
    """Killed mid-epoch (after step 5 of 8) or at the end of epoch 1 and resumed from last.ckpt, a run
    trains on the same batches with the same losses, step for step, as one that never stopped."""
    data = lambda: ToyPreferenceData(num_train=32, num_val=8, batch_size=4)  # noqa: E731
    L.seed_everything(0)
    rec_full = Recorder()
    make_trainer(tmp_path / "a", 12, [rec_full], enable_checkpointing=False).fit(make_module(tiny_lm_dir), data())

    L.seed_everything(0)
    rec_killed = Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(RuntimeError, match="node lost"):  # the same run, killed after step `killed_at`
        make_trainer(tmp_path / "b", 12, [rec_killed, ckpt, CrashAt(killed_at)]).fit(make_module(tiny_lm_dir), data())
    L.seed_everything(0)
    rec_resumed = Recorder()
    make_trainer(tmp_path / "b", 12, [rec_resumed, ckpt]).fit(
        make_module(tiny_lm_dir), data(), ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert len(rec_resumed.losses) == 12 - killed_at
    assert rec_killed.rows + rec_resumed.rows == rec_full.rows
    first_epoch = sorted(i for rows in (rec_killed.rows + rec_resumed.rows)[:8] for i in rows)
    assert first_epoch == list(range(32))  # every row exactly once in the interrupted epoch
    assert rec_resumed.losses == pytest.approx(rec_full.losses[killed_at:], abs=1e-5)


def test_kto_trains_on_unpaired_rows(tmp_path, tiny_lm_dir):
    rec = Recorder()
    data = ToyPreferenceData(num_train=32, num_val=8, batch_size=4, unpaired=True)
    module = make_module(tiny_lm_dir, objective=KTO(beta=0.1))
    make_trainer(tmp_path, 4, [rec], enable_checkpointing=False).fit(module, data)
    assert rec.losses[0] == pytest.approx(0.5, abs=1e-4)  # u = z0 = 0: 1 - sigmoid(0) for every example
    assert all(torch.isfinite(torch.tensor(rec.losses)))


def test_a_data_module_is_read_through_its_declared_members(tmp_path, tiny_lm_dir):
    from alignsuite.data import PreferenceData

    assert isinstance(ToyPreferenceData(num_train=8, num_val=4, batch_size=4), PreferenceData)

    class OwnData(L.LightningDataModule):
        def train_dataloader(self):
            return [{"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}]

    with pytest.raises(TypeError, match=r"OwnData lacks layout, .*row_kind, collate, columns.*PreferenceData"):
        make_trainer(tmp_path, 1, enable_checkpointing=False).fit(make_module(tiny_lm_dir), OwnData())


def test_reference_defaults_follow_the_objective(tiny_lm_dir):
    from alignsuite.backbones import LoraSpec
    from alignsuite.objectives import SimPO
    from alignsuite.reference import AdapterDisabled

    assert isinstance(make_module(tiny_lm_dir).reference, FrozenCopy)
    assert make_module(tiny_lm_dir, objective=SimPO()).reference is None
    lora = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12, lora=LoraSpec(r=2)))
    assert isinstance(lora.reference, AdapterDisabled)
    with pytest.raises(ValueError, match="reference-free"):
        make_module(tiny_lm_dir, objective=SimPO(), reference=FrozenCopy())


def test_moving_average_reference_follows_the_policy(tmp_path, tiny_lm_dir):
    from alignsuite.reference import MovingAverage

    module = make_module(tiny_lm_dir, reference=MovingAverage(decay=0.75, every_n_steps=2))
    module.configure_model()
    start = {k: v.clone() for k, v in module.reference.model.state_dict().items()}
    data = ToyPreferenceData(num_train=32, num_val=8, batch_size=4)
    make_trainer(tmp_path, 2, enable_checkpointing=False).fit(module, data)  # one update, after step 2
    policy = module.backbone.policy.state_dict()
    for name, value in module.reference.model.state_dict().items():
        torch.testing.assert_close(value, 0.75 * start[name] + 0.25 * policy[name])
    assert not torch.equal(policy["model.embed_tokens.weight"], start["model.embed_tokens.weight"])


def test_moving_average_refuses_lora(tiny_lm_dir):
    from alignsuite.backbones import LoraSpec
    from alignsuite.reference import MovingAverage

    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12, lora=LoraSpec(r=2)),
                              reference=MovingAverage())
    with pytest.raises(ValueError, match="full fine-tuning"):
        module.configure_model()


class GradientWatch(L.Callback):
    """Whether any trainable weight holds a gradient when a batch starts, and when the optimizer steps."""

    def __init__(self):
        self.at_batch_start, self.before_step = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_batch_start.append(any(p.grad is not None for p in pl_module.parameters()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_step.append(all(p.grad is not None for p in pl_module.parameters() if p.requires_grad))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_are_freed_after_each_optimizer_step(tmp_path, tiny_lm_dir, accumulate):
    watch = GradientWatch()
    data = ToyPreferenceData(num_train=32, num_val=8, batch_size=4)
    trainer = make_trainer(tmp_path, 3, [watch], enable_checkpointing=False, accumulate_grad_batches=accumulate)
    trainer.fit(make_module(tiny_lm_dir), data)
    assert watch.before_step == [True] * 3  # the step still sees every gradient
    # No gradient survives into the next forward, except between the micro-batches of one accumulated step.
    assert watch.at_batch_start == ([False] * 3 if accumulate == 1 else [False, True] * 3)


def test_zero_optimizer_on_one_process_is_the_plain_optimizer(tmp_path, tiny_lm_dir, caplog):
    module = make_module(tiny_lm_dir)
    module.zero_optimizer = True
    trainer = make_trainer(tmp_path, 1, enable_checkpointing=False)
    with caplog.at_level("INFO"):
        trainer.fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))
    assert type(trainer.optimizers[0]) is torch.optim.AdamW
    assert trainer.optimizers[0].defaults["lr"] == pytest.approx(1e-2)  # the configured one, as configured
    assert "model.zero_optimizer: one process" in caplog.text


def test_zero_optimizer_is_refused_under_fsdp2(tiny_lm_dir):
    from lightning.pytorch.strategies import ModelParallelStrategy

    module = make_module(tiny_lm_dir)
    module.zero_optimizer = True
    module.trainer = L.Trainer(accelerator="cpu", strategy=ModelParallelStrategy(), logger=False,
                               enable_progress_bar=False)
    module.configure_model()
    with pytest.raises(ValueError, match="ModelParallelStrategy .FSDP. shards the optimizer state already"):
        module.configure_optimizers()


class CountTokenizing(L.Callback):
    """Counts the rows the training process tokenises during the steps (not at setup)."""

    def __init__(self, monkeypatch):
        import alignsuite.backbones.causal_lm as causal_lm
        import alignsuite.backbones.tokenize as tokenize

        self.rows, self.counting, self.cached = 0, False, []
        for mod in (causal_lm, tokenize):
            real = mod.encode_rows

            def counted(tokenizer, prompts, *args, _real=real, **kwargs):
                self.rows += len(prompts) * self.counting
                return _real(tokenizer, prompts, *args, **kwargs)

            monkeypatch.setattr(mod, "encode_rows", counted)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from alignsuite.backbones.tokenize import ENCODED

        self.counting = True
        self.cached.append(len(batch[ENCODED].rows) if ENCODED in batch else 0)

    def on_train_batch_end(self, *args):
        self.counting = False


@pytest.mark.parametrize("unpaired", [False, True], ids=["dpo", "kto"])
def test_tokenizing_in_loader_workers_trains_exactly_like_tokenizing_in_the_step(tmp_path, tiny_lm_dir, monkeypatch,
                                                                                unpaired):
    def run(root, in_loader, workers):
        L.seed_everything(0)
        rec, count = Recorder(), CountTokenizing(monkeypatch)
        data = ToyPreferenceData(num_train=32, num_val=8, batch_size=4, num_workers=workers, unpaired=unpaired)
        module = make_module(tiny_lm_dir, objective=KTO(beta=0.1) if unpaired else None)
        module.backbone.tokenize_in_loader = in_loader
        make_trainer(root, 4, [rec, count], enable_checkpointing=False).fit(module, data)
        return rec, count

    step, step_count = run(tmp_path / "step", False, 0)
    loader, loader_count = run(tmp_path / "loader", True, 1)
    assert loader.rows == step.rows
    assert loader.losses == pytest.approx(step.losses, abs=1e-6)
    # In the step: 8 rows a batch (chosen and rejected, or completion and mismatched), none found in the batch.
    assert step_count.rows == 4 * 8 and step_count.cached == [0] * 4
    # In a worker: every row's ids came with the batch (DPO: 4 pairs x 2; KTO: 4 rows x 2 views), none made here.
    assert loader_count.rows == 0 and loader_count.cached == [8] * 4
