"""FSDP2 through ModelParallelStrategy on two CPU processes (gloo): the policy and the reference sharded,
the same losses and weights as one process, sharded checkpoints that resume and export."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml
from torch import nn

from alignsuite.cli import main
from alignsuite.sharding import ShardingError, block_classes, check_sharded, local, shard_model
from alignsuite.sources import resolve_model_path
from test_cli import pair_file, recipe, weights  # noqa: F401  (fixture and helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP2_CPU2 = os.path.join(REPO, "configs/strategy/fsdp2_cpu2.yaml")


class ShardProbe(L.Callback):
    """Writes, per rank: each step's loss averaged over the ranks (the loss of the whole global batch), and
    at the end what this rank holds of the reference, whether the optimizer sees any reference tensor, and
    a digest of the gathered policy. Loaded by the subprocesses from this file."""

    def __init__(self, path: str, crash_at: int = -1):
        self.path, self.crash_at = path, crash_at

    def _write(self, trainer, record):
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.crash_at:
            raise RuntimeError("node lost")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self._write(trainer, {"step": trainer.global_step, "loss": float(loss)})

    def on_train_end(self, trainer, pl_module):
        ref = getattr(pl_module.reference, "model", None) or nn.Linear(1, 1)  # none: the adapter-disabled policy
        ref_ids = {id(p) for p in pl_module.reference.parameters()}
        optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        digest = hashlib.sha256()
        for _name, p in sorted(pl_module.backbone.policy.named_parameters()):
            full = p.full_tensor() if hasattr(p, "full_tensor") else p  # a collective, in the same order
            digest.update(full.detach().contiguous().numpy().tobytes())
        self._write(trainer, {
            "reference_local": sum(local(p).numel() for p in ref.parameters()),
            "reference_full": sum(p.numel() for p in ref.parameters()),
            "policy_local": sum(local(p).numel() for p in pl_module.backbone.policy.parameters()),
            "reference_in_optimizer": sum(id(p) in ref_ids for p in optimized),
            "optimized": sum(local(p).numel() for p in optimized),
            "policy_digest": digest.hexdigest(),
            "built_empty": pl_module.backbone.empty_weights,
            "reference_dtypes": sorted({str(local(p).dtype) for p in ref.parameters()}),
        })


def fsdp_recipe(root, model_dir, train, batch_size=4, max_steps=4, crash_at=-1):
    path = recipe(root, model_dir, train, max_steps=max_steps,
                  extra_model={"lr_schedule": "constant", "warmup_ratio": 0.0})
    config = yaml.safe_load(open(path))
    config["trainer"].update(limit_val_batches=0, callbacks=[{
        "class_path": "test_fsdp.ShardProbe", "init_args": {"path": str(root / "probe"), "crash_at": crash_at}}])
    config["data"]["init_args"].update(batch_size=batch_size, seed=7)
    config["checkpoint"].update(every_n_train_steps=2)
    open(path, "w").write(yaml.safe_dump(config))
    return path


def run_fsdp2(path, *extra, fails=False):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "alignsuite", "fit", "--config", path, "--config", FSDP2_CPU2, *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert (proc.returncode != 0) == fails, proc.stderr[-4000:]
    return proc


def probe(root, rank):
    return [json.loads(line) for line in open(f"{root / 'probe'}.rank{rank}")]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_lm_dir):
    """One FSDP2 run of 4 steps (2 ranks x 4 pairs, DPO, frozen-copy reference), shared by the tests below."""
    from test_cli import write_jsonl

    from alignsuite.toy.llm import EchoWorld

    root = tmp_path_factory.mktemp("fsdp2")
    train = write_jsonl(root / "pairs.jsonl", EchoWorld().make_pairs(48, seed=3))
    run_fsdp2(fsdp_recipe(root, tiny_lm_dir, train))
    return root, train


@pytest.mark.distributed
def test_fsdp2_trains_like_one_process(fsdp_run, tiny_lm_dir, tmp_path):
    """2 ranks x 4 pairs under FSDP2 = 1 process x 8 pairs: the same global-batch losses and exported weights
    to float error; every rank holds the same gathered policy and half of the reference, which the optimizer
    never sees."""
    root, train = fsdp_run
    ranks = [probe(root, r) for r in (0, 1)]
    losses = [[r["loss"] for r in rank if "loss" in r] for rank in ranks]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert losses[0][0] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at the first step

    one = tmp_path / "one"
    one.mkdir()
    path = fsdp_recipe(one, tiny_lm_dir, train, batch_size=8)
    main(["fit", "--config", path])
    single = [r["loss"] for r in probe(one, 0) if "loss" in r]
    assert losses[0] == pytest.approx(single, abs=1e-5)
    assert single[-1] < 0.6  # it trained

    sharded, whole = weights(root / "runs/t/version_0/export"), weights(one / "runs/t/version_0/export")
    assert max((sharded[k] - whole[k]).abs().max().item() for k in whole) < 1e-4

    end = [rank[-1] for rank in ranks]
    assert end[0]["policy_digest"] == end[1]["policy_digest"]
    # Rank 1 read no weights: it built both models empty, and the same losses show it received rank 0's.
    assert [rank["built_empty"] for rank in end] == [False, True]
    full = end[0]["reference_full"]
    assert full == probe(one, 0)[-1]["reference_full"] == sum(p.numel() for p in frozen_copy(tiny_lm_dir).parameters())
    for rank in end:
        assert abs(rank["reference_local"] - full / 2) <= 0.02 * full  # about half: dim 0 split in two
        assert rank["reference_in_optimizer"] == 0
        assert rank["optimized"] == rank["policy_local"]  # the optimizer holds this rank's policy shard only
    assert end[0]["reference_local"] + end[1]["reference_local"] == full


@pytest.mark.distributed
def test_fsdp2_under_bf16_mixed_shards_the_autocast_reference_and_starts_at_ln2(tmp_path, tiny_lm_dir):
    """The default reference under bf16-mixed holds bfloat16 linear weights beside float32 embeddings and norms;
    FSDP2 shards it (a frozen model may mix dtypes), the second rank receives it from the first, and the policy
    equal to it gives a first loss of ln 2 to float error, as on one process."""
    from test_cli import write_jsonl

    from alignsuite.toy.llm import EchoWorld

    train = write_jsonl(tmp_path / "pairs.jsonl", EchoWorld().make_pairs(24, seed=3))
    run_fsdp2(fsdp_recipe(tmp_path, tiny_lm_dir, train, max_steps=2), "--trainer.precision", "bf16-mixed")
    ranks = [probe(tmp_path, r) for r in (0, 1)]
    first = [rank[0]["loss"] for rank in ranks]
    assert first[0] == first[1] == pytest.approx(0.693147, abs=1e-6)
    assert all(rank[-1]["reference_dtypes"] == ["torch.bfloat16", "torch.float32"] for rank in ranks)


@pytest.mark.distributed
def test_fsdp2_checkpoint_is_sharded_without_reference_and_exports(fsdp_run, tmp_path):
    """last.ckpt is a folder of shards (one per rank) that holds the policy and optimizer and no reference
    tensor; `export` turns it into the same save_pretrained folder the end of fit wrote."""
    from torch.distributed.checkpoint import FileSystemReader

    root, _ = fsdp_run
    folder = root / "ckpt" / "last.ckpt"
    assert sorted(f for f in os.listdir(folder) if f.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not [n for n in os.listdir(folder.parent) if n.startswith((".partial-", ".old-"))]  # swapped in whole
    keys = list(FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    weight_keys = [k for k in keys if k.startswith("state_dict.")]
    assert len(weight_keys) == 21  # the tiny Llama's 20 tensors + its tied-or-not head, nothing else
    assert not [k for k in keys if "reference" in k]
    assert any(k.startswith("optimizer_0.state.") for k in keys)

    main(["export", "--config", str(root / "recipe.yaml"), "--ckpt_path", str(folder),
          "--export.dirpath", str(tmp_path / "exported")])
    marker = json.load(open(tmp_path / "exported" / "alignsuite_export.json"))
    assert marker["global_step"] == 4
    assert os.path.normpath(tmp_path / "exported" / marker["checkpoint"]) == str(folder)
    exported, at_end = weights(tmp_path / "exported"), weights(root / "runs/t/version_0/export")
    assert exported.keys() == at_end.keys()
    assert all(torch.equal(exported[k], at_end[k]) for k in at_end)


def frozen_copy(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("reference", [None, {"class_path": "alignsuite.reference.MovingAverage",
                                              "init_args": {"decay": 0.5, "every_n_steps": 1}}],
                         ids=["frozen-copy", "moving-average"])
def test_fsdp2_resume_from_a_sharded_checkpoint_continues_exactly(tmp_path, tiny_lm_dir, pair_file,  # noqa: F811
                                                                   reference):
    """Killed before step 5 and resumed from the sharded last.ckpt of step 4 (weights, AdamW state, data
    position; a frozen reference rebuilt, a moving one's shards read back), the run logs the losses of one that
    never stopped, bit for bit."""
    def run(name, *extra, crash_at=-1):
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        path = fsdp_recipe(root, tiny_lm_dir, pair_file, max_steps=6, crash_at=crash_at)
        if reference is not None:
            config = yaml.safe_load(open(path))
            config["model"]["init_args"]["reference"] = reference
            open(path, "w").write(yaml.safe_dump(config))
        run_fsdp2(path, *extra, fails=crash_at >= 0)
        return root

    full = run("full")
    interrupted = run("interrupted", crash_at=4)
    run("interrupted", "--ckpt_path", str(interrupted / "ckpt" / "last.ckpt"))
    for rank in (0, 1):
        steps = {r["step"]: r["loss"] for r in probe(full, rank) if "loss" in r}
        resumed = [(r["step"], r["loss"]) for r in probe(interrupted, rank) if "loss" in r]
        assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
        assert [loss for _, loss in resumed] == [steps[s] for s in range(1, 7)]
    assert probe(full, 0)[-1]["policy_digest"] == probe(interrupted, 0)[-1]["policy_digest"]


def run_edited(root, model_dir, train, edit, sharded):
    """``fsdp_recipe`` with ``edit`` applied to its model's init args, run on two ranks x 4 pairs under FSDP2
    (``sharded``) or on one process x 8 pairs; returns ``root``."""
    root.mkdir()
    path = fsdp_recipe(root, model_dir, train, batch_size=4 if sharded else 8)
    config = yaml.safe_load(open(path))
    edit(config["model"]["init_args"])
    open(path, "w").write(yaml.safe_dump(config))
    run_fsdp2(path) if sharded else main(["fit", "--config", path])
    return root


@pytest.mark.slow
@pytest.mark.distributed
def test_lora_under_fsdp2_trains_like_one_process(tmp_path, tiny_lm_dir, pair_file):  # noqa: F811
    """LoRA with the adapter-disabled reference on two ranks (rank 1 built the model and its adapters empty and
    received rank 0's) = one process with the global batch: the same losses and merged exported weights."""
    def lora(model):
        model["backbone"]["init_args"]["lora"] = {"r": 4, "alpha": 8}

    two = run_edited(tmp_path / "two", tiny_lm_dir, pair_file, lora, sharded=True)
    one = run_edited(tmp_path / "one", tiny_lm_dir, pair_file, lora, sharded=False)
    ranks = [[r["loss"] for r in probe(two, rank) if "loss" in r] for rank in (0, 1)]
    single = [r["loss"] for r in probe(one, 0) if "loss" in r]
    assert ranks[0] == ranks[1] and ranks[0] == pytest.approx(single, abs=1e-5) and len(single) == 4
    assert single[0] == pytest.approx(0.693147, abs=1e-5) and single[-1] < single[0]
    assert [probe(two, rank)[-1]["built_empty"] for rank in (0, 1)] == [False, True]
    sharded, whole = weights(two / "runs/t/version_0/export"), weights(one / "runs/t/version_0/export")
    assert max((sharded[k] - whole[k]).abs().max().item() for k in whole) < 1e-4


@pytest.mark.slow
@pytest.mark.distributed
def test_a_swapped_reference_under_fsdp2_trains_like_a_frozen_copy_on_one_process(tmp_path, tiny_lm_dir,
                                                                                   pair_file):  # noqa: F811
    """SwappedCopy on two ranks (each keeps its own shards of the starting weights in host memory; rank 1's
    arrived from rank 0) gives the losses of a frozen copy on one process with the global batch."""
    def reference(name):
        return lambda model: model.update(reference={"class_path": f"alignsuite.reference.{name}"})

    def losses(root, ranks):
        return [[r["loss"] for r in probe(root, rank) if "loss" in r] for rank in ranks]

    swapped = losses(run_edited(tmp_path / "swapped", tiny_lm_dir, pair_file, reference("SwappedCopy"), sharded=True),
                     (0, 1))
    frozen = losses(run_edited(tmp_path / "frozen", tiny_lm_dir, pair_file, reference("FrozenCopy"), sharded=False),
                    (0,))
    assert swapped[0] == swapped[1] and swapped[0] == pytest.approx(frozen[0], abs=1e-5)
    assert frozen[0][0] == pytest.approx(0.693147, abs=1e-5) and frozen[0][-1] < frozen[0][0]


# ---------------------------------------------------------------------------- one process, no launch
def test_blocks_come_from_no_split_modules(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    assert block_classes(model) == {"LlamaDecoderLayer"}
    assert block_classes(model, ("LlamaMLP",)) == {"LlamaDecoderLayer", "LlamaMLP"}


def test_fsdp1_wraps_the_same_blocks_in_policy_and_reference(tiny_lm_dir):
    """FSDPStrategy's auto-wrap policy (configs/strategy/fsdp.yaml): one unit per decoder layer of the
    policy and of the reference, found from _no_split_modules (FSDP wraps the root itself)."""
    from alignsuite.sharding import BlockWrapPolicy

    root = nn.ModuleDict({"policy": frozen_copy(tiny_lm_dir), "reference": frozen_copy(tiny_lm_dir)})
    wrapped = BlockWrapPolicy()._run_policy(root, set(), {})
    names = {name for name, m in root.named_modules() if m in wrapped}
    layers = len(root["policy"].model.layers)
    assert names == {f"{side}.model.layers.{i}" for side in ("policy", "reference") for i in range(layers)}
    with pytest.raises(ShardingError, match="no blocks to wrap"):
        BlockWrapPolicy()._run_policy(nn.Sequential(nn.Linear(2, 2)), set(), {})


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ShardingError, match=r"found no blocks to shard in Sequential.*shard_blocks"):
        shard_model(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), mesh=None)


def test_unsharded_trainable_weights_are_refused():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].requires_grad_(False)
    with pytest.raises(ShardingError, match=r"2 trainable parameter\(s\) are not sharded \(0.weight, 0.bias\)"):
        check_sharded(model)


def test_fsdp1_on_a_cpu_points_at_fsdp2(tmp_path, tiny_lm_dir, pair_file, capsys):  # noqa: F811
    path = recipe(tmp_path, tiny_lm_dir, pair_file)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", path, "--config", os.path.join(REPO, "configs/strategy/fsdp.yaml"),
              "--trainer.accelerator", "cpu", "--trainer.devices", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "FSDPStrategy (configs/strategy/fsdp.yaml) runs on GPUs only" in err
    assert "--config configs/strategy/fsdp2_cpu2.yaml" in err


def test_a_sharded_save_that_dies_or_holds_a_nan_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import ModelParallelStrategy

    from alignsuite.sharding import AtomicModelParallelStrategy

    def write_shards(self, checkpoint, path, storage_options=None):  # what Lightning's save does, per rank
        os.makedirs(path, exist_ok=True)
        for rank in range(2):
            with open(os.path.join(path, f"__{rank}_0.distcp"), "w") as f:
                f.write(str(checkpoint["global_step"]))
                if checkpoint.get("die") and rank == 1:
                    raise OSError("disk full")

    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", write_shards)
    strategy = AtomicModelParallelStrategy()
    last = tmp_path / "last.ckpt"
    strategy.save_checkpoint({"global_step": 4}, last)
    strategy.save_checkpoint({"global_step": 8}, last)
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    assert (last / "__1_0.distcp").read_text() == "8"
    with pytest.raises(OSError, match="disk full"):
        strategy.save_checkpoint({"global_step": 12, "die": True}, last)
    assert (last / "__0_0.distcp").read_text() == "8" and (last / "__1_0.distcp").read_text() == "8"
    strategy.save_checkpoint({"global_step": 16}, last)  # the next save clears what the crash left
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"] and (last / "__0_0.distcp").read_text() == "16"

    from alignsuite.checkpoint_io import AtomicCheckpointIO

    strategy.checkpoint_io = AtomicCheckpointIO()
    strategy.save_checkpoint({"global_step": 20, "state_dict": {"w": torch.ones(2)}}, last)
    with pytest.warns(RuntimeWarning, match=rf"not writing checkpoint {last} at global step 24: parameter 'b' holds"
                      rf" NaN or infinite values; {last} \(global step 20\) is kept"):
        strategy.save_checkpoint({"global_step": 24, "state_dict": {"w": torch.ones(2), "b": torch.tensor([1.0, math.nan])}},
                                 last)
    assert (last / "__0_0.distcp").read_text() == "20"


@pytest.mark.slow
@pytest.mark.distributed
def test_the_diffusion_toy_trains_under_fsdp2_with_its_callbacks(tmp_path):
    """The diffusion toy recipe as shipped on two CPU processes under FSDP2: the sharded UNet and reference
    train, the toy reward and the image grid sample on both ranks (a rank-0-only sampler or log_dir hung),
    and the exported pipeline loads back."""
    from diffusers import DiffusionPipeline

    recipe = os.path.join(REPO, "recipes/toy/diffusion_dpo.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "alignsuite", "fit", "--config", recipe, "--config",
         os.path.join(REPO, "configs/strategy/fsdp2_cpu2.yaml"), "--trainer.max_steps", "3",
         "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
         "--checkpoint.dirpath", str(tmp_path / "ckpt")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "toy_diffusion_dpo" / "version_0"
    with open(run / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert os.listdir(run / "images") == ["step_000000.png"]  # the grid before training (then every 100 steps)
    exported = DiffusionPipeline.from_pretrained(str(run / "export"))
    # Rank 1 built its UNet and reference empty and received rank 0's halves: 3 AdamW steps at lr 1e-5 move
    # every weight of the gathered UNet by at most 3e-5 from the base (an unsent half would be noise).
    base = DiffusionPipeline.from_pretrained(resolve_model_path("toy:diffusion")).unet.state_dict()
    moved = max((w - base[k]).abs().max().item() for k, w in exported.unet.state_dict().items())
    assert moved < 1e-4
