"""The one preference step, for every backbone, objective and reference."""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor

from alignsuite.backbones.base import Backbone, ViewInputs
from alignsuite.checkpoint_io import last_checkpoint_note
from alignsuite import extra_references as extras
from alignsuite.data.protocol import preference_data
from alignsuite.generation import batch_conditions
from alignsuite.objectives import Objective, get_objective
from alignsuite.reference import Reference, default_reference
from alignsuite.sharding import (
    ShardingError, check_sharded, full_state_dict, is_sharded, meta_tensors, mixed_precision, shard_model, zero_redundancy,
)
from alignsuite.views import check_setup


DEFAULT_OBJECTIVE = "dpo"  # a run that names no objective: DPO at its defaults (beta 0.1, as TRL's)
DEFAULT_LR = 1e-6  # a run that names no optimizer: AdamW at TRL's DPOConfig learning rate


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stops rather than train through it."""


class PreferenceModule(LightningModule):
    """Scores a batch with the policy and the reference and applies an objective.

    Args:
        backbone: turns batches into scores (``alignsuite.backbones.CausalLM`` ...).
        objective: the loss (``alignsuite.objectives.DPO`` with its defaults when left out).
        reference: where reference scores come from. Left out, a reference-based objective gets the
            policy with adapters disabled under LoRA and a frozen copy otherwise; a reference-free
            objective gets none, and loads no reference weights.
        extra_references: further score sources by name, one per name the objective declares (its
            ``extra_references``: WSPO's ``weak_base`` and ``weak_aligned``), usually
            ``FrozenCopy(model_name_or_path=...)`` of a checkpoint with the policy's tokenizer. Built and sharded
            as the reference, never trained nor checkpointed; scored without grad on the same inputs, they reach
            the objective as ``scores.extra["ref_<name>_<view>"]``.
        optimizer: built over the trainable parameters only (AdamW, lr 1e-6 when left out).
        lr_schedule: shape of the learning rate after warm-up.
        warmup_ratio: fraction of the training steps spent warming up linearly from zero.
        zero_optimizer: under DDP with several processes, shard the optimizer's state across them
            (PyTorch's ``ZeroRedundancyOptimizer`` over the configured optimizer's class and settings: AdamW's
            8 bytes per trainable parameter divide by the number of processes). Lightning gathers the full
            state to rank 0 for each checkpoint. FSDP already shards it (refused there); on one process it
            changes nothing.
        load_on_rank0: under FSDP2 with several processes, only the first process reads the weights (policy and
            reference); the others build the models' structure on the meta device and receive their shards
            from it when the models are sharded, so a node holds one full copy rather than one per process.
            Off, every process reads the full weights and shards its own copy.
    """

    def __init__(
        self,
        backbone: Backbone,
        objective: Objective | None = None,
        reference: Reference | None = None,
        extra_references: dict[str, Reference] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Literal["constant", "linear", "cosine"] = "linear",
        warmup_ratio: float = 0.1,
        zero_optimizer: bool = False,
        load_on_rank0: bool = True,
    ) -> None:
        super().__init__()
        # Under the CLI Lightning stores the parsed config (class paths and init args), so that
        # `load_from_checkpoint` rebuilds the module; built by hand, only the plain arguments are kept.
        built_by_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if built_by_cli else ["backbone", "objective", "reference", "extra_references",
                                                                      "optimizer"])
        self.backbone = backbone
        self.objective = objective if objective is not None else get_objective(DEFAULT_OBJECTIVE)
        if reference is not None and not self.objective.needs_reference:
            raise ValueError(
                f"objective {self.objective.name!r} is reference-free, yet model.reference is set"
                f" ({type(reference).__name__}); remove model.reference"
            )
        self.reference = reference if reference is not None else default_reference(self.objective, backbone)
        extras.check_names(self.objective, extra_references)  # before any model loads
        self.extra_references = torch.nn.ModuleDict(extra_references or {})
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"model.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.warmup_ratio = warmup_ratio
        self.zero_optimizer = zero_optimizer
        self.load_on_rank0 = load_on_rank0
        # The reference and frozen parts are rebuilt from their source: they are no part of the module's state,
        # so checkpoints (full or sharded, written by any strategy) never hold them and strict loading passes.
        self.register_state_dict_post_hook(_drop_rebuilt)
        self.register_load_state_dict_post_hook(_ignore_rebuilt)

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        # Before any model loads: the objective's views and columns against the backbone, reference and data.
        # The data module is read through its declared members (PreferenceData), checked here once.
        data = preference_data(self.trainer.datamodule) if self._trainer is not None else None
        check_setup(self.objective, self.backbone, self.reference, data)
        extras.check_setup(self.objective, self.backbone, self.extra_references)
        if data is not None:
            self.backbone.on_setup(data)
            # Tokenising in the DataLoader, off the training step.
            data.batch_transform = self.backbone.loader_transform(list(self.objective.views))

    def _global_mean(self, values: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(values.mean(), reduce_op="mean")

    def configure_model(self) -> None:
        if self.device_mesh is not None and self.backbone.policy is None:
            # The backbone's settings before anything loads: export builds one unsharded copy from them.
            object.__setattr__(self, "_unbuilt_backbone", copy.deepcopy(self.backbone))
        self.backbone.empty_weights = self._receives_weights
        self.backbone.configure()
        self.objective.configure(self.backbone)  # trainable parts of the objective's own (SparsePO's mask network)
        self.backbone.keep_trainable_float32()
        if self.reference is not None:
            self.reference.trainer_precision = str(self.trainer.precision) if self._trainer is not None else None
            self.reference.build(self.backbone)
        extras.build(self.backbone, self.extra_references,
                     str(self.trainer.precision) if self._trainer is not None else None)
        if self.device_mesh is not None and not is_sharded(self.backbone.policy):
            self.shard(self.device_mesh)
        if self.backbone.empty_weights:
            empty = meta_tensors(self)
            if empty:  # Lightning would fill them with a fresh random initialisation
                raise ShardingError(
                    f"{len(empty)} tensor(s) built without weights were never sent from the first process"
                    f" ({', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''}): only the sharded models receive"
                    " theirs; set model.load_on_rank0 false"
                )

    @property
    def _receives_weights(self) -> bool:
        """Whether this process builds empty models and receives its shards from the first process."""
        return (self.load_on_rank0 and self.device_mesh is not None and self._trainer is not None
                and self.trainer.world_size > 1 and self.trainer.global_rank != 0)

    def shard(self, mesh) -> None:
        """FSDP2 over ``mesh`` (ModelParallelStrategy's): the policy's blocks and root, then the reference's
        weights the same way, so each rank holds 1/N of both. Under bf16-mixed both compute in bfloat16 from
        float32 shards (the reference's stored dtype is its own). With ``load_on_rank0`` the first process's
        weights are sent to every process's shards."""
        policy = mixed_precision(self.trainer.precision if self._trainer is not None else None)
        blocks, broadcast = self.backbone.shard_blocks, self.load_on_rank0 and self.trainer.world_size > 1
        shard_model(self.backbone.policy, mesh, policy, blocks, from_rank0=broadcast)
        for reference in [self.reference, *self.extra_references.values()]:
            if reference is not None:
                reference.shard(self.backbone, lambda model: shard_model(model, mesh, policy, blocks, frozen=True,
                                                                         from_rank0=broadcast))

    def full_backbone(self) -> Backbone | None:
        """The backbone holding the full trained policy: its own when unsharded. Under FSDP2 a collective
        (every rank must call it): the policy's full state dict is gathered to rank 0's CPU and loaded into
        one unsharded copy built there from the backbone's settings; the other ranks get None."""
        if not is_sharded(self.backbone.policy):
            return self.backbone
        state = full_state_dict(self.backbone.policy)
        if self.trainer.global_rank != 0:
            return None
        backbone = copy.deepcopy(self._unbuilt_backbone)
        backbone.configure()
        backbone.keep_trainable_float32()
        backbone.policy.load_state_dict(state)
        return backbone

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.device_mesh is not None:  # ModelParallelStrategy: never an unsynchronised copy per rank
            check_sharded(self)
        if not params:
            raise ValueError("no trainable parameters: the policy is entirely frozen")
        low = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype != torch.float32})
        if low:  # a *-true precision converted the module after configure_model
            raise ValueError(
                f"trainable weights are {', '.join(low)} under trainer.precision={self.trainer.precision!r}: AdamW"
                " updates smaller than their precision are lost (most of them, at the learning rates DPO uses). Use"
                " trainer.precision bf16-mixed with model.backbone.dtype bfloat16: frozen weights (the base under"
                " LoRA, the reference, encoders) stay in bfloat16 and the trainable ones in float32"
            )
        optimizer = self.optimizer(params) if self.optimizer else torch.optim.AdamW(params, lr=DEFAULT_LR)
        if self.zero_optimizer:
            optimizer = zero_redundancy(optimizer, params, self.trainer.strategy)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            if self.lr_schedule == "linear":
                return max(0.0, 1.0 - progress)
            if self.lr_schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ the step
    def build_views(self, batch: dict) -> list[ViewInputs]:
        """Every view the objective declares, for the rows of ``batch``."""
        views = []
        for view in self.objective.views:
            prompts = view.prompts(batch)
            if view.sampled:
                completions = self.reference.sample(self.backbone, prompts, self.global_step)
            else:
                completions = view.completions(batch)
            inputs = ViewInputs(prompts, completions, batch, view.score_prompt, view.joint)
            views.append(self.backbone.transform(view.condition, inputs) if view.condition is not None else inputs)
        return views

    def compute_scores(self, batch: dict, split: str = "train"):
        """Prepare every view once, score the reference without grad, then the policy on the same inputs,
        and let the objective pack what it declared. The reference goes first: its forward's memory is free
        before the policy's graph exists, and a reference that borrows the policy's parameters
        (``SwappedCopy``) changes nothing the policy's backward needs."""
        names = [view.name for view in self.objective.views]
        prepared = self.backbone.prepare(self.build_views(batch))
        if self.objective.token_needs is not None:
            return self._token_scores(prepared, batch, split)
        ref = dict.fromkeys(names)
        if self.reference is not None:
            with torch.no_grad():
                scores = self.reference.score(self.backbone, prepared, dict(batch, split=split)).detach()
        further = extras.sequence_scores(self.backbone, self.extra_references, prepared, dict(batch, split=split), names)
        policy = dict(zip(names, self.backbone.score(prepared).split(len(names))))
        if self.reference is not None:
            ref = dict(zip(names, scores.to(policy[names[0]].score.device).chunk(len(names))))
        packed = self.objective.pack(policy, ref, batch)
        packed.extra.update({k: v.to(policy[names[0]].score.device) for k, v in further.items()})
        return packed

    def _token_scores(self, prepared, batch: dict, split: str):
        """Per-token scores for an objective that weighs tokens: the reference's pass first, without grad (what the
        objective reads of it: log-probs, and what the policy's pass needs for the full-vocabulary KL), then the
        policy's on the same inputs."""
        needs, ref = self.objective.token_needs, None
        if self.reference is not None:
            with torch.no_grad():
                ref = self.reference.score_tokens(self.backbone, prepared, dict(batch, split=split), needs)
        further = extras.token_scores(self.backbone, self.extra_references, prepared, dict(batch, split=split),
                                      [view.name for view in self.objective.views])
        policy = self.backbone.score_tokens(prepared, needs=needs, reference=ref)
        packed = self.objective.pack(policy, ref, batch)
        packed.extra.update({k: v.to(policy.logps.device) for k, v in further.items()})
        return packed

    def _step(self, batch: dict, stage: str):
        scores = self.compute_scores(batch, "train" if stage == "train" else "val")
        out = self.objective(scores, reduce=self._global_mean)
        on_step = stage == "train"
        if not on_step or self._writes_step_metrics():
            self.log_dict(
                {f"{stage}/{k}": v for k, v in {**out.metrics, **self._logp_metrics(scores)}.items()},
                on_step=on_step,
                on_epoch=not on_step,
                sync_dist=not on_step,
                batch_size=scores.batch_size,
                prog_bar=False,
            )
        self.log(f"{stage}/loss", out.loss.detach(), prog_bar=True, on_step=on_step, on_epoch=not on_step,
                 sync_dist=not on_step, batch_size=scores.batch_size)
        return out.loss

    def _writes_step_metrics(self) -> bool:
        """Whether the loggers receive this training step's metrics: every ``trainer.log_every_n_steps`` steps
        and when the run stops (Lightning's own rule). Training metrics other than the loss are logged on those
        steps only, so ``trainer.callback_metrics`` holds their latest logged values: each ``self.log`` call
        costs Lightning about a millisecond of Python, which a small model's step feels."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    @staticmethod
    def _logp_metrics(scores) -> dict[str, Tensor]:
        return {f"logps/{k}": v.detach().float().mean() for k, v in scores.named().items() if v is not None}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        if not batch["prompt"]:  # every row's image failed to decode and was skipped (skip_bad_images)
            return None  # Lightning skips the step; under DDP every process must agree, so keep batches > 1
        loss = self._step(batch, "train")
        bad = not bool(torch.isfinite(loss))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            rows = batch["index"].tolist() if "index" in batch else "unknown"
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch},"
                f" batch {batch_idx}, dataset rows {rows}); stopping instead of training through it."
                f" {last_checkpoint_note(self.trainer)} Lower the learning rate, check these rows, or train in float32."
            )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """One generation per prompt, with its row index and prompt (written under the run by the CLI)."""
        # What conditions a row besides its prompt is the backbone's to declare (its generation_columns).
        generations = self.backbone.generate(batch["prompt"], **batch_conditions(batch, self.backbone.generation_columns))
        return [{"index": int(i), "prompt": p, "generation": g}
                for i, p, g in zip(batch["index"].tolist(), batch["prompt"], generations)]

    # ------------------------------------------------------------------ lifecycle
    def on_before_optimizer_step(self, optimizer) -> None:
        # The norm before clipping, over every trainable parameter (after accumulation and unscaling), on the
        # steps whose metrics are written.
        if not self._writes_step_metrics():
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads, norm_type=2.0), on_step=True, on_epoch=False)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning clears gradients just before the next backward, so they would otherwise stay alive
        # through the next forward: one full copy of the trainable weights' size, freed here instead.
        optimizer.zero_grad(set_to_none=True)
        # A following reference moves once per optimizer step, before the callbacks (a checkpoint of this step
        # holds the move); Lightning counts this step (global_step + 1) done when the hook returns.
        for reference in [self.reference, *self.extra_references.values()]:
            if reference is not None:
                reference.after_step(self.backbone, self.global_step + 1)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # sDPO/Curry-DPO's reference re-syncs at a new stage; SPO's snapshots keep the policy as a stage began
        extras.enter_stage(self, [self.reference, *self.extra_references.values()], batch)

    def on_fit_start(self) -> None:
        self.backbone.on_fit_start(self.trainer)
        for reference in [self.reference, *self.extra_references.values()]:
            if reference is not None:
                reference.on_fit_start(self)

    def on_validation_start(self) -> None:
        if not self.trainer.training:  # validate/test without fit
            for reference in [self.reference, *self.extra_references.values()]:
                if reference is not None:
                    reference.on_eval_start(self)

    on_test_start = on_validation_start

    def on_train_start(self) -> None:
        # The learning-rate schedule asks for the number of steps (configure_optimizers), which makes Lightning set
        # up the train loader before it restores a checkpoint's loop state; it then never hands the loader its saved
        # position, and a run resumed mid-epoch would replay the epoch from its first batch. Hand it over here,
        # after the restore and before the first batch is drawn.
        loop = self.trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None):
            loop._load_combined_loader_states()

    def _not_checkpointed(self) -> tuple[str, ...]:
        # References are rebuilt from their source, except sharded ones whose weights move with training: their
        # shards go with the policy's (they cannot travel in a checkpoint's own entries).
        named = {"reference.": self.reference, **{f"extra_references.{k}.": r for k, r in self.extra_references.items()}}
        return extras.rebuilt(named) + tuple(f"backbone.{p}" for p in self.backbone.not_checkpointed)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if state := self.backbone.state():  # a denoising backbone's draw counter: resumed runs draw the same noise
            checkpoint["backbone_state"] = state
        if state := self.objective.state():  # statistics kept across steps (BCO's running reward mean)
            checkpoint["objective_state"] = state
        if self.reference is not None:
            self.reference.on_save_checkpoint(checkpoint)
        extras.save_state(self.extra_references, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "backbone_state" in checkpoint:
            self.backbone.load_state(checkpoint["backbone_state"])
        if "objective_state" in checkpoint:
            self.objective.load_state(checkpoint["objective_state"])
        if self.reference is not None:
            self.reference.on_load_checkpoint(checkpoint)
        extras.load_state(self.extra_references, checkpoint)


def _drop_rebuilt(module: PreferenceModule, state_dict: dict, prefix: str, local_metadata) -> None:
    skip = tuple(prefix + p for p in module._not_checkpointed())
    for key in [k for k in state_dict if k.startswith(skip)]:
        del state_dict[key]


def _ignore_rebuilt(module: PreferenceModule, incompatible) -> None:
    # Missing: they were never saved. Unexpected: a checkpoint written before they were left out.
    skip = module._not_checkpointed()
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [k for k in keys if not k.startswith(skip)]
