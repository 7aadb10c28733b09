"""References that follow the policy at boundaries of the data or of the loop, never at a step count.

sDPO (Kim et al. 2024, arXiv 2403.19270) and Curry-DPO (Pattnaik et al. 2024, arXiv 2403.07230) train in stages
and take as stage ``t``'s reference the policy at the end of stage ``t - 1``; multi-round DPO (mrDPO, video-SALMONN 2)
merges the LoRA adapter into the base and starts a fresh one at each round. The boundary comes from the data:
the stage sampler (``data.stages``) makes every batch one stage's, and the module calls ``enter_stage`` with each
batch's stage; the iterate loop will call ``sync`` at a round boundary.

SPO over more than two dimensions reads every earlier stage's model at once: `StageSnapshot` keeps the policy as a
stage began, frozen from then on, as a named extra reference (``stage_<j>``).
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from alignsuite.backbones.base import Backbone
from alignsuite.backbones.lora import merge_and_reinit, merged_weights
from alignsuite.reference import Dtype, FrozenCopy
from alignsuite.sharding import ShardingError, load_weights, weights_for_checkpoint


def merge_and_reinit_lora(module, seed: int) -> int:
    """Merge the policy's LoRA adapter into its base and start a fresh one (``B = 0``: the function is unchanged),
    and drop the optimizer state (AdamW's moments and step count) of the fresh adapter's parameters, so the
    new adapter starts as a new one would. Returns the number of re-initialised tensors."""
    fresh = merge_and_reinit(module.backbone.policy, seed)
    trainer = getattr(module, "_trainer", None)
    for optimizer in (trainer.optimizers if trainer is not None else []):
        for p in fresh:
            optimizer.state.pop(p, None)
    return len(fresh)


@torch.no_grad()
def copy_policy(module, model) -> None:
    """Overwrite ``model``'s weights with the policy's (under FSDP2 each rank its own shards: both are sharded alike)."""
    policy = dict(module.backbone.policy.named_parameters())
    for name, weight in model.named_parameters():
        weight.copy_(policy[name].detach().to(weight.dtype))


class StageSync(FrozenCopy):
    """The reference of stage ``t`` is the policy at the end of stage ``t - 1`` (stage 0: the starting weights):
    sDPO's and Curry-DPO's hard re-sync, at the stage sampler's boundaries (``data.stages``).

    Full fine-tuning: a frozen copy whose weights are overwritten with the policy's when a stage starts. Under
    LoRA (mrDPO's merge-and-reinit): at a stage start the adapter is merged into the base and a fresh one (``B =
    0``) started, with its optimizer state reset; the reference is the policy with the adapter disabled, i.e. the
    merged model: no second copy of the weights.

    The stage and the reference's weights (full fine-tuning, once synced) travel with a checkpoint, so a run
    resumed in stage 2 scores with stage 2's reference; under LoRA the merged base is in the policy's own state.

    Args:
        seed: seed of the fresh adapters' ``A`` (under LoRA), with the stage added.
        dtype: as `FrozenCopy`'s (full fine-tuning).
    """

    follows_stages = True

    def __init__(self, seed: int = 0, dtype: Dtype | None = None) -> None:
        super().__init__(None, dtype)
        self.seed = seed
        self.stage: int | None = None  # the stage being trained; None before the first batch
        self.synced = False  # whether the weights are no longer the starting ones
        self.adapters = False

    def build(self, backbone: Backbone) -> None:
        self.adapters = backbone.has_adapters
        if not self.adapters:
            super().build(backbone)

    @property
    def moves(self) -> bool:  # full fine-tuning: its own weights follow the policy at each stage
        return not self.adapters

    def shard(self, backbone: Backbone, shard) -> None:
        if self.adapters:
            raise ShardingError("reference StageSync under LoRA is not supported under FSDP2 (model parallel strategy)"
                                " yet: merging a sharded adapter into its base is not built; use DDP")
        super().shard(backbone, shard)

    def score(self, backbone: Backbone, prepared, batch: dict) -> Tensor:
        if self.adapters:
            with backbone.adapters_disabled():
                return backbone.score(prepared).score
        return super().score(backbone, prepared, batch)

    def score_tokens(self, backbone: Backbone, prepared, batch: dict, needs):
        if self.adapters:
            with backbone.adapters_disabled():
                return backbone.score_tokens(prepared, needs=needs, of_reference=True)
        return super().score_tokens(backbone, prepared, batch, needs)

    def enter_stage(self, module, stage: int) -> None:
        """Called with each training batch's stage: a change from the stage being trained re-syncs."""
        previous, self.stage = self.stage, stage
        if previous is not None and stage != previous:
            self.sync(module, stage)

    @torch.no_grad()
    def sync(self, module, stage: int | None = None) -> None:
        """Make the reference the policy as it is now (a stage or round boundary)."""
        if self.adapters:
            merge_and_reinit_lora(module, self.seed * 1_000_003 + (stage or 0))
        else:
            copy_policy(module, self.model)
        self.synced = True
        rank_zero_info(f"stage {stage}: the reference is now the policy at global step {module.global_step}"
                       + (" (LoRA merged into the base, a fresh adapter started)" if self.adapters else ""))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stage_reference"] = {"stage": self.stage, "synced": self.synced}
        if self.synced and not self.adapters:
            checkpoint["stage_reference_weights"] = weights_for_checkpoint(self.model, "reference StageSync")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("stage_reference")
        if state is None:
            return
        self.stage, self.synced = state["stage"], state["synced"]
        self.restore(checkpoint.get("stage_reference_weights"))


class StageSnapshot(FrozenCopy):
    """The policy as it was when data stage ``stage`` began, frozen from then on: the model ``pi_stage`` that later
    stages read, given as the extra reference ``stage_<stage>`` (SPO over three or more dimensions: stage ``k`` reads
    ``pi_0 .. pi_{k-1}`` besides its reference ``pi_k``).

    It is a frozen copy of the starting weights until the first training batch of stage ``stage`` (or of a later one,
    should the data skip it), which copies the policy into it once, before that batch's step: the moment at which
    `StageSync` makes the policy the reference. Stage 0's snapshot is the starting model, as a `FrozenCopy` of it.
    Built and sharded under FSDP2 as every extra reference; once taken, its weights travel with a checkpoint (FSDP2:
    as shards beside the policy's), so a run resumed in a later stage scores with the snapshot it took.

    Memory: one frozen copy of the weights per snapshot, held from the start (in the dtype a `FrozenCopy` takes:
    under ``bf16-mixed`` its linear weights in bfloat16, which the policy computes in anyway), and one more forward
    without grad per step. SPO over ``K`` stages holds ``K`` frozen copies (``stage_0 .. stage_{K-2}`` and the
    reference) beside the policy and its optimizer state. Under LoRA it is still a full copy, of the weights the
    policy computes with (base plus ``scale * B A``; with `StageSync` under LoRA the adapter was just merged, so the
    base itself). Keeping only adapters is not built: the base moves at every merge, so ``pi_j`` would be the
    current base less every adapter merged since (a rank growing with the stages, and each merge's rounding). LoRA
    under FSDP2 is refused (as `StageSync`'s merge is).

    Args:
        stage: the stage whose starting policy this keeps.
        dtype: as `FrozenCopy`'s.
    """

    follows_stages = moves = True

    def __init__(self, stage: int, dtype: Dtype | None = None) -> None:
        super().__init__(None, dtype)
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise ValueError(f"StageSnapshot: stage must be a whole number >= 0, got {stage!r}")
        self.snapshot_stage, self.taken, self.adapters = stage, False, False

    def build(self, backbone: Backbone) -> None:
        self.adapters = backbone.has_adapters
        super().build(backbone)

    def shard(self, backbone: Backbone, shard) -> None:
        if self.adapters:
            raise ShardingError("StageSnapshot under LoRA is not supported under FSDP2 (model parallel strategy): the"
                                " merged weights are built from unsharded ones; use DDP")
        super().shard(backbone, shard)

    @torch.no_grad()
    def enter_stage(self, module, stage: int) -> None:
        """Called with each training batch's stage: the first batch of this snapshot's stage (or a later one) takes
        it."""
        if not self.taken and stage >= self.snapshot_stage:
            if self.adapters:
                load_weights(self.model, merged_weights(module.backbone.policy), "StageSnapshot")
            else:
                copy_policy(module, self.model)
            self.taken = True
            rank_zero_info(f"stage {stage}: the snapshot of stage {self.snapshot_stage} is the policy at global step"
                           f" {module.global_step}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stage_snapshot"] = {"stage": self.snapshot_stage, "taken": self.taken}
        if self.taken:
            checkpoint["stage_snapshot_weights"] = weights_for_checkpoint(self.model, "StageSnapshot")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("stage_snapshot")
        if state is None:
            return
        if state["stage"] != self.snapshot_stage:
            raise ValueError(f"the checkpoint holds a snapshot of stage {state['stage']} where this run's is of stage"
                             f" {self.snapshot_stage}: was it written with other model.extra_references?")
        self.taken = state["taken"]
        self.restore(checkpoint.get("stage_snapshot_weights"))


__all__ = ["StageSnapshot", "StageSync", "copy_policy", "merge_and_reinit_lora"]
