"""Training in stages: the stage sampler, the reference that re-syncs at a stage boundary (sDPO, Curry-DPO),
LoRA merge-and-reinit (mrDPO), and the moving reference (TR-DPO) checked against TRL and through a resume."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from alignsuite.backbones import CausalLM, LoraSpec
from alignsuite.data.stages import StageSampler, batch_stage, chunk_stages, staged_order
from alignsuite.module import PreferenceModule
from alignsuite.objectives import DPO
from alignsuite.reference import MovingAverage
from alignsuite.stage_reference import StageSync
from alignsuite.toy.data import ToyPreferenceData

LN2 = math.log(2.0)


def make_module(model_dir, reference=None, lora=None, lr=1e-2):
    backbone = CausalLM(model_dir, max_length=24, max_prompt_length=12, lora=lora)
    return PreferenceModule(backbone, DPO(beta=0.1), reference, optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
                            warmup_ratio=0.0)


def make_trainer(root, max_steps, callbacks=(), **kwargs):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=str(root), callbacks=list(callbacks), **kwargs)


class Recorder(L.Callback):
    """Each step's loss, rows and stage."""

    def __init__(self):
        self.losses, self.rows, self.stages = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.rows.append(batch["index"].tolist())
        if "stage" in batch:
            self.stages.append(batch_stage(batch))


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("node lost")


# ---------------------------------------------------------------- the sampler


def test_stages_are_consumed_in_order_shuffled_within_each_and_padded_to_whole_steps():
    stages = [1] * 5 + [0] * 7 + [2] * 3  # uneven sizes, not in row order
    order = staged_order(stages, seed=0, epoch=0, step_rows=4)
    assert len(order) == 8 + 8 + 4  # each stage padded to a multiple of 4 rows
    per_step = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert [sorted({stages[r] for r in step}) for step in per_step] == [[0], [0], [1], [1], [2]]
    assert sorted(set(order[:8])) == list(range(5, 12)) and sorted(set(order[8:16])) == list(range(5))
    assert order[:7] != list(range(5, 12))  # shuffled within the stage ...
    assert staged_order(stages, 0, 0, 4) == order and staged_order(stages, 0, 1, 4) != order  # ... by (seed, epoch)
    assert staged_order(stages, 0, 0, 4, shuffle=False)[:8] == [5, 6, 7, 8, 9, 10, 11, 5]


def test_every_process_crosses_a_stage_boundary_at_the_same_step():
    """Two processes, batch 2 each: every global step's rows (both processes' shares) come from one stage, every
    row of every stage is seen, and the processes take disjoint rows within a stage as far as the padding allows."""
    stages = [0] * 7 + [1] * 2 + [2] * 9
    shards = [list(StageSampler(list(range(18)), stages, seed=3, step_rows=4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(StageSampler(list(range(18)), stages, 3, 4, 2, 0))
    steps = [(shards[0][i : i + 2], shards[1][i : i + 2]) for i in range(0, len(shards[0]), 2)]
    step_stages = [{stages[r] for part in step for r in part} for step in steps]
    assert step_stages == [{0}, {0}, {1}, {2}, {2}, {2}]
    assert set(shards[0]) | set(shards[1]) == set(range(18))
    resumed = StageSampler(list(range(18)), stages, seed=3, step_rows=4, num_replicas=2, rank=1)
    resumed.start = 4  # resumed after two steps: the same rows follow
    assert list(resumed) == shards[1][4:]


def test_data_stages_from_chunks_a_column_or_a_bad_value(tmp_path):
    assert chunk_stages(7, 3) == [0, 0, 0, 1, 1, 2, 2]
    data = ToyPreferenceData(num_train=30, num_val=4, batch_size=4, stages=2)
    data.setup()
    batches = list(data.train_dataloader())
    assert len(batches) == 8  # 15 rows a stage, padded to 16: 4 steps each
    assert [batch_stage(b) for b in batches] == [0] * 4 + [1] * 4
    assert sorted({i for b in batches[:4] for i in b["index"].tolist()}) == list(range(15))
    with pytest.raises(ValueError, match="names the column 'level', which the train rows lack"):
        ToyPreferenceData(num_train=8, num_val=4, stages="level").setup()
    with pytest.raises(ValueError, match="group_by_length .* data.stages"):
        from alignsuite.data import PreferenceDataModule

        PreferenceDataModule(group_by_length=2, stages=2)


def test_curry_pairs_stages_feed_the_stage_sampler(tmp_path):
    """Curry-DPO: CurryPairs' ``stage`` column, named by ``data.stages``: stage 0's pairs (each prompt's largest
    rating gap) fill the first steps, stage 1's the next, each padded to whole steps."""
    import json

    from alignsuite.data import PreferenceDataModule
    from alignsuite.data.procedures import CurryPairs

    rows = [{"prompt": f"q{i}", "responses": ["a", "b", "c"], "scores": [1, 3, 2]} for i in range(5)]
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(train=str(path), procedures=[CurryPairs()], batch_size=2, stages="stage")
    dm.setup()
    batches = list(dm.train_dataloader())
    assert [batch_stage(b) for b in batches] == [0, 0, 0, 1, 1, 1]  # 5 pairs a stage, padded to 6
    assert all(b["rejected"] == ["a", "a"] for b in batches[:3]) and all(b["rejected"] == ["c", "c"] for b in batches[3:])


# ---------------------------------------------------------------- the stage reference


def staged_run(root, model_dir, max_steps, reference, callbacks=(), lora=None, ckpt_path=None, lr=1e-2):
    L.seed_everything(0)
    rec = Recorder()
    data = ToyPreferenceData(num_train=32, num_val=4, batch_size=4, stages=2)
    module = make_module(model_dir, reference=reference, lora=lora, lr=lr)
    trainer = make_trainer(root, max_steps, [rec, *callbacks], enable_checkpointing=bool(callbacks))
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return rec, module


def test_stage_sync_makes_the_reference_the_policy_at_the_boundary(tmp_path, tiny_lm_dir):
    """32 rows in 2 stages of 4 steps: the step after the boundary scores with reference = policy, so its DPO loss
    is ln 2; the stage-0 steps score against the starting weights, as a frozen copy does."""
    rec, module = staged_run(tmp_path, tiny_lm_dir, 6, StageSync())
    frozen, _ = staged_run(tmp_path / "frozen", tiny_lm_dir, 6, None)
    assert rec.stages == [0, 0, 0, 0, 1, 1]
    assert rec.losses[:4] == pytest.approx(frozen.losses[:4], abs=1e-6)
    assert rec.losses[0] == pytest.approx(LN2, abs=1e-6) and rec.losses[4] == pytest.approx(LN2, abs=1e-6)
    assert rec.losses[3] < LN2 - 0.01  # the policy had moved from its reference before the boundary
    assert module.reference.stage == 1 and module.reference.synced


@pytest.mark.parametrize("lora", [None, LoraSpec(r=4, alpha=8)], ids=["full", "lora"])
def test_a_run_resumed_mid_stage_two_uses_stage_twos_reference(tmp_path, tiny_lm_dir, lora):
    """Killed at step 6 (stage 1, after the re-sync) and resumed from last.ckpt: the same rows, losses and
    reference scores, step for step, as the run that never stopped (the reference's weights, or under LoRA the
    merged base, travel with the checkpoint)."""
    ref_scores = RefScores()
    full, _ = staged_run(tmp_path / "a", tiny_lm_dir, 8, StageSync(), [ref_scores], lora=lora)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(RuntimeError, match="node lost"):
        staged_run(tmp_path / "b", tiny_lm_dir, 8, StageSync(), [ckpt, CrashAt(6)], lora=lora)
    resumed_scores = RefScores()
    resumed, module = staged_run(tmp_path / "b", tiny_lm_dir, 8, StageSync(), [ckpt, resumed_scores], lora=lora,
                                 ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed.stages == [1, 1] and module.reference.stage == 1
    assert resumed.rows == full.rows[6:]
    assert resumed.losses == pytest.approx(full.losses[6:], abs=1e-6)
    assert resumed_scores.ref == pytest.approx(ref_scores.ref[6:], abs=1e-6)
    assert ref_scores.ref[4] != pytest.approx(ref_scores.ref[3], abs=1e-3)  # the reference did change at stage 1


class RefScores(L.Callback):
    """The reference's summed scores of each step's batch, before the step."""

    def __init__(self):
        self.ref = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.on_train_batch_start(batch, batch_idx)  # the re-sync happens before the step's scores
        with torch.no_grad():
            scores = pl_module.compute_scores(batch)
        self.ref.append(float(scores.ref_chosen.sum() + scores.ref_rejected.sum()))


# ---------------------------------------------------------------- LoRA merge-and-reinit


def test_after_a_merge_the_policy_is_its_reference_and_dpo_is_ln2_on_every_row(tmp_path, tiny_lm_dir):
    from alignsuite.callbacks import MergeAndReinitLoRA

    class Check(L.Callback):
        def __init__(self):
            self.after = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:  # MergeAndReinitLoRA ran before this (callbacks in list order)
                with torch.no_grad():
                    scores = pl_module.compute_scores(batch)
                losses, _, _ = pl_module.objective.pair_losses(scores)
                adapters = [p for p in pl_module.parameters() if p.requires_grad]
                state = trainer.optimizers[0].state
                self.after = (scores, losses, [state.get(p, {}) for p in adapters], adapters)

    check = Check()
    L.seed_everything(0)
    module = make_module(tiny_lm_dir, lora=LoraSpec(r=4, alpha=8))
    data = ToyPreferenceData(num_train=32, num_val=4, batch_size=4)
    make_trainer(tmp_path, 4, [MergeAndReinitLoRA(every_n_steps=3), check], enable_checkpointing=False).fit(module, data)
    scores, losses, states, adapters = check.after
    assert torch.equal(scores.chosen, scores.ref_chosen) and torch.equal(scores.rejected, scores.ref_rejected)
    assert torch.equal(losses, torch.full_like(losses, LN2))
    assert all(not s for s in states)  # the fresh adapter's optimizer state was dropped
    b = [p for n, p in module.backbone.policy.named_parameters() if "lora_B" in n]
    assert b and all(p.abs().sum() > 0 for p in b)  # step 4 trained the fresh adapter from B = 0


def test_stage_sync_under_lora_is_refused_under_fsdp2():
    from alignsuite.sharding import ShardingError

    reference = StageSync()
    reference.adapters = True  # as built on a LoRA policy
    with pytest.raises(ShardingError, match="StageSync under LoRA is not supported under FSDP2"):
        reference.shard(None, None)


def test_merge_refuses_full_fine_tuning_and_modules_to_save(tmp_path, tiny_lm_dir):
    from alignsuite.backbones.lora import merge_and_reinit
    from alignsuite.callbacks import MergeAndReinitLoRA

    with pytest.raises(ValueError, match="set model.backbone.lora"):
        MergeAndReinitLoRA(2).setup(None, make_module(tiny_lm_dir), "fit")
    backbone = CausalLM(tiny_lm_dir, lora=LoraSpec(r=2, modules_to_save=["lm_head"]))
    backbone.configure()
    with pytest.raises(ValueError, match="modules_to_save"):
        merge_and_reinit(backbone.policy, 0)


# ---------------------------------------------------------------- TR-DPO's moving reference


def test_moving_average_matches_trl_sync_ref_model(tiny_lm_dir):
    """TRL 1.13's ``SyncRefModelCallback._sync_target_model(model, target, alpha)`` (the update its
    ``sync_target_model`` runs outside DeepSpeed ZeRO-3, every ``ref_model_sync_steps``): ``target <- alpha * model
    + (1 - alpha) * target``; alignsuite's ``MovingAverage(decay = 1 - alpha)`` soft update and the hard one
    (``decay = 0``, alpha 1) give the same weights."""
    trl_callbacks = pytest.importorskip("trl.trainer.callbacks")
    for alpha in (0.6, 1.0):
        module = make_module(tiny_lm_dir, reference=MovingAverage(decay=1 - alpha, every_n_steps=2))
        module.configure_model()
        with torch.no_grad():
            for p in module.backbone.policy.parameters():
                p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        target = {k: v.clone() for k, v in module.reference.model.state_dict().items()}
        trl_target = make_module(tiny_lm_dir).backbone
        trl_target.configure()
        trl_target.policy.load_state_dict(target)
        trl_callbacks.SyncRefModelCallback._sync_target_model(module.backbone.policy, trl_target.policy, alpha)
        module.reference.after_step(module.backbone, 1)  # not a sync step: unchanged
        assert all(torch.equal(v, target[k]) for k, v in module.reference.model.state_dict().items())
        module.reference.after_step(module.backbone, 2)
        ours, theirs = module.reference.model.state_dict(), trl_target.policy.state_dict()
        for name, value in ours.items():
            torch.testing.assert_close(value, theirs[name], rtol=0, atol=1e-6)
        if alpha == 1.0:
            policy = module.backbone.policy.state_dict()
            assert all(torch.equal(v, policy[k]) for k, v in ours.items())  # the hard update is an exact copy


def test_moving_weights_read_before_the_model_is_built_load_when_it_is(tiny_lm_dir):
    """``load_from_checkpoint`` reads the checkpoint before ``configure_model`` builds the reference."""
    backbone = CausalLM(tiny_lm_dir)
    backbone.configure()
    weights = {n: torch.full_like(p, 0.5) for n, p in backbone.policy.named_parameters()}
    reference = MovingAverage()
    reference.on_load_checkpoint({"moving_reference_weights": weights})
    reference.build(backbone)
    assert all(torch.equal(p, weights[n]) for n, p in reference.model.named_parameters())
    with pytest.raises(ValueError, match="do not match the model"):
        reference.restore({"other": torch.zeros(1)})


@pytest.mark.parametrize("every", [2, 1])
def test_a_resumed_moving_average_run_is_exact(tmp_path, tiny_lm_dir, every):
    # every 1: the reference moves at step 5 too, whose checkpoint must hold it moved
    def run(root, steps, callbacks=(), ckpt_path=None):
        L.seed_everything(0)
        rec = Recorder()
        data = ToyPreferenceData(num_train=32, num_val=4, batch_size=4)
        module = make_module(tiny_lm_dir, reference=MovingAverage(decay=0.5, every_n_steps=every))
        make_trainer(root, steps, [rec, *callbacks], enable_checkpointing=bool(callbacks)).fit(module, data,
                                                                                              ckpt_path=ckpt_path)
        return rec

    full = run(tmp_path / "a", 8)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(RuntimeError, match="node lost"):
        run(tmp_path / "b", 8, [ckpt, CrashAt(5)])
    resumed = run(tmp_path / "b", 8, [ckpt], ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed.rows == full.rows[5:]
    assert resumed.losses == pytest.approx(full.losses[5:], abs=1e-6)


# ---------------------------------------------------------------- the toy recipe


def test_toy_sdpo_recipe_resyncs_the_reference_when_stage_two_starts(tmp_path):
    """The shipped recipe, shortened to 64 pairs (two stages of two steps): the first step of stage 2 scores the
    policy against itself (loss ln 2), and the reward is measured."""
    import csv
    import glob
    import os

    from alignsuite.cli import main

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes/toy/llm_sdpo.yaml")
    main(["fit", "--config", recipe, "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(tmp_path / "ckpt"),
          "--trainer.val_check_interval", "4", "--data.init_args.num_train", "64", "--data.init_args.num_val", "16",
          "--trainer.callbacks.init_args.num_prompts", "8", "--trainer.log_every_n_steps", "1"])
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "*" / "version_*" / "metrics.csv"))[0])))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4
    assert losses[0] == pytest.approx(LN2, abs=1e-5) and losses[2] == pytest.approx(LN2, abs=1e-5)
    assert losses[1] < LN2 - 1e-3
    assert [r["val/toy_reward"] for r in rows if r.get("val/toy_reward")]


# ---------------------------------------------------------------- two processes


class StageLog(L.Callback):
    """Appends each training step's stage, rows and loss to one file per rank (loaded by the subprocesses)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import json

        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps([batch_stage(batch), batch["index"].tolist(), float(outputs["loss"])]) + "\n")


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp_cpu2", "fsdp2_cpu2"])
def test_two_processes_cross_the_stage_boundary_at_the_same_step(tmp_path, tiny_lm_dir, strategy):
    """DDP (or FSDP2, the reference's shards synced to the policy's) over gloo, 36 train rows in two stages of 18,
    batches of 2 on each of 2 processes: each stage is padded to 20 rows (5 steps), both processes enter stage 1
    at step 5, and both score that step's batch against the policy itself (loss ln 2): the reference re-synced on
    both at the same step."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from test_cli import recipe, write_jsonl
    from alignsuite.toy.llm import EchoWorld

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train = write_jsonl(tmp_path / "pairs.jsonl", EchoWorld().make_pairs(36, seed=3))
    path = recipe(tmp_path, tiny_lm_dir, train, max_steps=8,
                  extra_model={"reference": {"class_path": "alignsuite.stage_reference.StageSync"}})
    config = yaml.safe_load(open(path))
    config["trainer"].update(limit_val_batches=0, callbacks=[
        {"class_path": "test_stages.StageLog", "init_args": {"path": str(tmp_path / "steps")}}])
    config["data"]["init_args"].update(batch_size=2, val_fraction=0.0, stages=2)
    open(path, "w").write(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", path,
           "--config", os.path.join(repo, "configs", "strategy", f"{strategy}.yaml")]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [[json.loads(line) for line in open(f"{tmp_path / 'steps'}.rank{r}")] for r in (0, 1)]
    for steps in ranks:
        assert [stage for stage, _, _ in steps] == [0] * 5 + [1] * 3
        assert steps[5][2] == pytest.approx(LN2, abs=1e-6) and steps[4][2] != pytest.approx(LN2, abs=1e-3)
    stage0 = {i for steps in ranks for _, rows, _ in steps[:5] for i in rows}
    assert stage0 == set(range(18))  # every row of stage 0, on one process or the other
