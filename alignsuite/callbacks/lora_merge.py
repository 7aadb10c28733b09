"""mrDPO's rounds by step count: merge the LoRA adapter into the base every N optimizer steps and start afresh."""

from __future__ import annotations

import lightning as L

from alignsuite.stage_reference import merge_and_reinit_lora


class MergeAndReinitLoRA(L.Callback):
    """Every ``every_n_steps`` optimizer steps, merge the policy's LoRA adapter into its base weights and start a
    fresh adapter (``A`` re-drawn, ``B = 0``: the function is unchanged), resetting its optimizer state: multi-round
    DPO's ``merge_and_new_lora`` (video-SALMONN 2). The default reference under LoRA (``AdapterDisabled``) then
    scores the merged model, so each round's reference is the policy at the round's start. For rounds at data
    stages instead of a step count, use the ``StageSync`` reference with ``data.stages``.

    The merged base is part of the policy's state, so checkpoints carry it. Not under FSDP2 (refused).

    Args:
        every_n_steps: optimizer steps per round.
        seed: seed of the fresh adapters' ``A`` (the round number is added).
    """

    def __init__(self, every_n_steps: int, seed: int = 0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"MergeAndReinitLoRA.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.seed = every_n_steps, seed

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not pl_module.backbone.has_adapters:
            raise ValueError("MergeAndReinitLoRA merges a LoRA adapter: set model.backbone.lora")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        # Once per optimizer step (accumulated batches share a global step), at the round's end.
        if step and step % self.every_n_steps == 0 and step != getattr(self, "_merged_at", None):
            self._merged_at = step
            merge_and_reinit_lora(pl_module, self.seed * 1_000_003 + step // self.every_n_steps)
