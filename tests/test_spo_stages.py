"""SPO over three stages in one run: each stage's starting model kept by `StageSnapshot` (stage 2 reads pi_0, pi_1
and its reference pi_2), with every lambda 0 plain sequential DPO, resumed exactly mid-stage, and sharded under
FSDP2."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from alignsuite.backbones import LoraSpec
from alignsuite.cli import main
from alignsuite.objectives import SPO, get_objective


def spo_module(model_dir, lambdas=(0.5, 1.0), snapshots=True, lora=None, first=None):
    from alignsuite.backbones import CausalLM
    from alignsuite.module import PreferenceModule
    from alignsuite.reference import FrozenCopy
    from alignsuite.stage_reference import StageSnapshot, StageSync

    extra = {"stage_0": first or FrozenCopy(), "stage_1": StageSnapshot(1)} if snapshots else None
    objective = SPO(beta=0.1, lambdas=list(lambdas)) if lambdas else get_objective("dpo", beta=0.1)
    return PreferenceModule(CausalLM(model_dir, max_length=24, max_prompt_length=12, lora=lora), objective, StageSync(),
                            extra, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), warmup_ratio=0.0)


class StepScores(L.Callback):
    """Each step's rows, loss and summed scores (policy, reference, stage_0, stage_1) before the step, and the
    policy's weights at the first step of stage 1."""

    def __init__(self):
        self.rows, self.losses, self.scores, self.policy_at_4 = [], [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.on_train_batch_start(batch, batch_idx)  # the syncs and snapshots happen before the step's scores
        with torch.no_grad():
            s = pl_module.compute_scores(batch)
        sums = [s.chosen + s.rejected, s.ref_chosen + s.ref_rejected]
        sums += [s.extra[f"ref_stage_{j}_chosen"] + s.extra[f"ref_stage_{j}_rejected"] for j in (0, 1)
                 if f"ref_stage_{j}_chosen" in s.extra]
        self.scores.append([float(x.sum()) for x in sums])
        self.rows.append(batch["index"].tolist())
        if trainer.global_step == 4:
            from alignsuite.backbones.lora import merged_weights

            policy = pl_module.backbone.policy
            weights = merged_weights(policy) if pl_module.backbone.has_adapters else dict(policy.named_parameters())
            self.policy_at_4 = {n: p.detach().clone() for n, p in weights.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def three_stages(root, model_dir, callbacks=(), ckpt_path=None, **options):
    """48 echo pairs in three stages of 4 steps (batches of 4), SPO with lambdas (0.5, 1) by default."""
    from alignsuite.toy.data import ToyPreferenceData

    L.seed_everything(0)
    rec = StepScores()
    module = spo_module(model_dir, **options)
    trainer = L.Trainer(accelerator="cpu", max_steps=12, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=str(root), callbacks=[rec, *callbacks], enable_checkpointing=bool(callbacks))
    trainer.fit(module, ToyPreferenceData(num_train=48, num_val=4, batch_size=4, stages=3), ckpt_path=ckpt_path)
    return rec, module


@pytest.mark.parametrize("lora", [None, LoraSpec(r=4, alpha=8)], ids=["full", "lora"])
def test_three_stages_in_one_run_snapshot_each_stages_starting_model(tmp_path, tiny_lm_dir, lora):
    """Stage 2 reads pi_0 (the starting weights), pi_1 (the policy as stage 1 began, kept by StageSnapshot) and its
    reference pi_2 (StageSync): at the first step of each stage the reference is the policy, at stage 1's so is the
    snapshot, and at stage 2's the snapshot is where stage 1 started, not where it ended. Under LoRA the snapshot
    is a full copy of the merged weights (StageSync merged the adapter a moment before)."""
    rec, module = three_stages(tmp_path, tiny_lm_dir, lora=lora)
    policy, ref, pi0, pi1 = zip(*rec.scores)
    assert policy[0] == ref[0] == pi0[0] == pi1[0]  # every model starts as the starting one
    assert ref[:4] == pi0[:4] == pi1[:4]  # stage 0's reference is the starting model; no snapshot taken yet
    # each stage's first step: synced, snapshot taken (under LoRA the peft model and the plain copy alike, to 1e-4)
    assert pi1[4] == pytest.approx(ref[4], abs=1e-4) and ref[4] == pytest.approx(policy[4], abs=1e-4)
    assert ref[8] == pytest.approx(policy[8], abs=1e-4)
    assert abs(pi1[8] - policy[8]) > 1e-2 and abs(pi1[4] - pi0[4]) > 1e-2 and abs(pi0[8] - pi1[8]) > 1e-2
    snapshot = dict(module.extra_references["stage_1"].model.named_parameters())
    assert all(torch.equal(snapshot[n], w) for n, w in rec.policy_at_4.items())
    assert module.extra_references["stage_1"].taken and module.reference.stage == 2
    # The first step of stage 2 scores policy = reference, so its loss is the margin's alone, -log s(-sum_j
    # lambda_j b (r_j(y_w) - r_j(y_l)) / b): not ln 2, unlike plain sequential DPO.
    assert abs(rec.losses[8] - math.log(2)) > 1e-4
    assert module.objective.stage == 2


def test_three_stages_with_every_lambda_zero_train_as_plain_sequential_dpo(tmp_path, tiny_lm_dir):
    spo, _ = three_stages(tmp_path / "spo", tiny_lm_dir, lambdas=(0.0, 0.0), snapshots=False)
    dpo, _ = three_stages(tmp_path / "dpo", tiny_lm_dir, lambdas=None, snapshots=False)
    # float32 rounding differs between the two formulas' orders of operations (bit for bit on the scores: above)
    assert spo.rows == dpo.rows and spo.losses == pytest.approx(dpo.losses, abs=1e-6)
    assert spo.losses[4] == pytest.approx(math.log(2), abs=1e-6) and spo.losses[8] == pytest.approx(math.log(2), abs=1e-6)


def test_a_snapshot_of_stage_zero_is_the_starting_model(tmp_path, tiny_lm_dir):
    """``stage_0`` as StageSnapshot(0), taken at the first step, trains exactly as the FrozenCopy of the start."""
    from alignsuite.stage_reference import StageSnapshot

    frozen, _ = three_stages(tmp_path / "frozen", tiny_lm_dir)
    snapshot, module = three_stages(tmp_path / "snapshot", tiny_lm_dir, first=StageSnapshot(0))
    assert snapshot.losses == frozen.losses and snapshot.scores == frozen.scores
    assert module.extra_references["stage_0"].taken


@pytest.mark.parametrize("crash_at,lora", [(2, None), (10, None), (10, LoraSpec(r=4, alpha=8))],
                         ids=["stage0", "stage2", "stage2-lora"])
def test_a_run_resumed_mid_stage_resumes_its_snapshots_exactly(tmp_path, tiny_lm_dir, crash_at, lora):
    """Killed in stage 0 (before any snapshot: stage 1's is taken after the resume) or in stage 2 (the snapshot and
    the re-synced reference travel with the checkpoint), and resumed from last.ckpt: the same rows, losses and
    scores of every model, step for step, as the run that never stopped."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from test_stages import CrashAt

    full, _ = three_stages(tmp_path / "a", tiny_lm_dir, lora=lora)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=0, every_n_train_steps=1)
    with pytest.raises(RuntimeError, match="node lost"):
        three_stages(tmp_path / "b", tiny_lm_dir, [ckpt, CrashAt(crash_at)], lora=lora)
    resumed, module = three_stages(tmp_path / "b", tiny_lm_dir, [ckpt], ckpt_path=str(tmp_path / "b" / "last.ckpt"),
                                   lora=lora)
    assert resumed.rows == full.rows[crash_at:]
    assert resumed.losses == pytest.approx(full.losses[crash_at:], abs=1e-6)
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert flat(resumed.scores) == pytest.approx(flat(full.scores[crash_at:]), abs=1e-5)
    assert module.extra_references["stage_1"].taken and module.objective.stage == 2


def test_stage_snapshots_refuse_a_wrong_name_a_bad_stage_and_lora_under_fsdp2(tiny_lm_dir):
    from alignsuite.module import PreferenceModule
    from alignsuite.reference import FrozenCopy
    from alignsuite.stage_reference import StageSnapshot

    with pytest.raises(ValueError, match="StageSnapshot: stage must be a whole number"):
        StageSnapshot(-1)
    with pytest.raises(ValueError, match=r"extra_references.stage_1 is StageSnapshot\(stage=2\).*name it stage_2"):
        PreferenceModule(spo_module(tiny_lm_dir).backbone, SPO(lambdas=[1.0, 1.0]),
                         extra_references={"stage_0": FrozenCopy(), "stage_1": StageSnapshot(2)})
    from alignsuite.sharding import ShardingError

    snapshot = StageSnapshot(1)
    snapshot.adapters = True  # as built on a LoRA policy
    with pytest.raises(ShardingError, match="StageSnapshot under LoRA is not supported under FSDP2"):
        snapshot.shard(None, None)


class SnapshotShards(L.Callback):
    """At the end of a run, how much of the stage-1 snapshot this rank holds (loaded by the subprocesses)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module):
        import json

        from alignsuite.sharding import local

        snapshot = pl_module.extra_references["stage_1"]
        record = {"local": sum(local(p).numel() for p in snapshot.model.parameters()),
                  "full": sum(p.numel() for p in snapshot.model.parameters()), "taken": snapshot.taken}
        with open(f"{self.path}.rank{trainer.global_rank}", "w") as f:
            json.dump(record, f)


def spo_fsdp2_run(root, model_dir, train, sharded=True, crash_at=-1, *extra):
    """SPO over three stages of 16 pairs (lambdas 0.5, 1; stage_1 a StageSnapshot), 12 steps of 4 pairs: 2 ranks x
    2 pairs under FSDP2 (``sharded``) or 1 process x 4 pairs; returns ``root``."""
    import yaml

    from test_fsdp import fsdp_recipe, run_fsdp2

    root.mkdir(exist_ok=True)
    path = fsdp_recipe(root, model_dir, train, batch_size=2 if sharded else 4, max_steps=12, crash_at=crash_at)
    config = yaml.safe_load(open(path))
    config["model"]["init_args"].update(
        objective={"class_path": "alignsuite.objectives.SPO", "init_args": {"beta": 0.1, "lambdas": [0.5, 1.0]}},
        reference={"class_path": "alignsuite.stage_reference.StageSync"},
        extra_references={"stage_0": {"class_path": "alignsuite.reference.FrozenCopy"},
                          "stage_1": {"class_path": "alignsuite.stage_reference.StageSnapshot", "init_args": {"stage": 1}}})
    config["data"]["init_args"].update(val_fraction=0.0, stages=3)
    config["trainer"]["callbacks"].append({"class_path": "test_spo_stages.SnapshotShards",
                                           "init_args": {"path": str(root / "snapshot")}})
    open(path, "w").write(yaml.safe_dump(config))
    run_fsdp2(path, *extra, fails=crash_at >= 0) if sharded else main(["fit", "--config", path])
    return root


def step_losses(root, rank=0) -> dict[int, float]:
    from test_fsdp import probe

    return {r["step"]: r["loss"] for r in probe(root, rank) if "loss" in r}


def echo_pairs(root):
    from test_cli import write_jsonl
    from alignsuite.toy.llm import EchoWorld

    return write_jsonl(root / "pairs.jsonl", EchoWorld().make_pairs(48, seed=3))


@pytest.mark.distributed
def test_three_stages_under_fsdp2_shard_the_snapshot_and_train_like_one_process(tmp_path, tiny_lm_dir):
    """SPO over three stages, 2 ranks x 2 pairs under FSDP2 = 1 process x 4 pairs: the same losses to float error
    (3e-5 of a loss of 2.3, measured), the snapshot taken from the policy's shards, each rank holding half of it."""
    import json

    train = echo_pairs(tmp_path)
    full, one = spo_fsdp2_run(tmp_path / "full", tiny_lm_dir, train), spo_fsdp2_run(tmp_path / "one", tiny_lm_dir,
                                                                                    train, sharded=False)
    assert step_losses(full) == step_losses(full, 1) and len(step_losses(full)) == 12
    assert list(step_losses(full).values()) == pytest.approx(list(step_losses(one).values()), rel=1e-4, abs=1e-5)
    shards = [json.load(open(f"{full / 'snapshot'}.rank{r}")) for r in (0, 1)]
    assert all(s["taken"] for s in shards) and shards[0]["local"] + shards[1]["local"] == shards[0]["full"]
    assert all(abs(s["local"] - s["full"] / 2) <= 0.02 * s["full"] for s in shards)


@pytest.mark.slow
@pytest.mark.distributed
def test_three_stages_under_fsdp2_resume_mid_stage_two_exactly(tmp_path, tiny_lm_dir):
    """Killed in stage 2 and resumed from its sharded last.ckpt of step 10 (the snapshot's and the re-synced
    reference's shards beside the policy's), the run logs the losses of one that never stopped, bit for bit."""
    train = echo_pairs(tmp_path)
    full = spo_fsdp2_run(tmp_path / "full", tiny_lm_dir, train)
    interrupted = spo_fsdp2_run(tmp_path / "interrupted", tiny_lm_dir, train, True, 10)
    spo_fsdp2_run(interrupted, tiny_lm_dir, train, True, -1, "--ckpt_path", str(interrupted / "ckpt" / "last.ckpt"))
    for rank in (0, 1):
        from test_fsdp import probe

        resumed = [(r["step"], r["loss"]) for r in probe(interrupted, rank) if "loss" in r]
        assert [s for s, _ in resumed] == list(range(1, 13))
        assert [loss for _, loss in resumed] == [step_losses(full, rank)[s] for s in range(1, 13)]


def test_a_lora_snapshot_holds_the_weights_the_policy_computes_with(tiny_lm_dir):
    """Without a merge before it (the adapter trained, B != 0), a LoRA snapshot is base + scale * B A: it scores as
    the policy does, to float error, and unlike the base."""
    from alignsuite.stage_reference import StageSnapshot

    batch = {"prompt": ["echo a b", "echo c d e"], "chosen": ["A B", "C D E"], "rejected": ["a b", "C D"]}
    module = spo_module(tiny_lm_dir, lora=LoraSpec(r=4, alpha=8))
    module.configure_model()
    with torch.no_grad():
        for name, p in module.backbone.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    snapshot = StageSnapshot(1)
    snapshot.build(module.backbone)
    snapshot.enter_stage(module, 1)
    prepared = module.backbone.prepare(module.build_views(batch))
    with torch.no_grad():
        policy = module.backbone.score(prepared).score
        taken = snapshot.score(module.backbone, prepared, batch)
        with module.backbone.adapters_disabled():
            base = module.backbone.score(prepared).score
    torch.testing.assert_close(taken, policy, rtol=0, atol=1e-4)
    assert (taken - base).abs().max() > 1e-2
