"""Where reference scores come from.

Each strategy is a small module the :class:`~alignsuite.module.PreferenceModule` holds as
``self.reference``. Its weights (if it has any) are rebuilt from their source in ``configure_model`` and
never trained; only weights that moved with training (a moving average, a stage's sync) travel in checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from alignsuite.backbones.base import Backbone
from alignsuite.precision import store_for_autocast
from alignsuite.sharding import host_copy, load_weights, local, reshard, weights_for_checkpoint


class Reference(nn.Module):
    """Base class: ``score`` returns the reference's ``[K * B]`` scores for a prepared batch.

    Lifecycle hooks, each called by the module at the Lightning hook of the same name (all optional):
    ``check`` at setup (before any model loads), ``build`` in ``configure_model`` (then ``shard`` under FSDP2),
    ``on_fit_start``, ``on_eval_start`` (validate or test without fit), ``after_step`` after every optimizer step, and
    ``on_save_checkpoint``/``on_load_checkpoint`` for state that must travel with a checkpoint. A reference
    that can generate (``can_sample``) provides ``sample`` for views whose completions it makes. One that
    ``follows_stages`` (``StageSync``) provides ``enter_stage``, called before each training step with its batch's
    stage (``data.stages``), and ``sync``, which makes it the policy as it is now (a stage or a round boundary).
    One whose own weights move with training ``moves`` (a checkpoint must carry them).
    """

    can_sample = follows_stages = moves = False
    per_token: bool = True  # score_tokens computes per-token scores live in the step (token-level objectives)
    # The Trainer's precision ("bf16-mixed" ...), set by the module before ``build``; None outside a Trainer.
    trainer_precision: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.eval()

    def check(self, objective, backbone: Backbone) -> None:
        """Raise if this reference cannot serve ``objective`` on ``backbone``."""

    def build(self, backbone: Backbone) -> None:
        """Load whatever the strategy needs, after the policy exists (idempotent)."""

    def shard(self, backbone: Backbone, shard) -> None:
        """Shard this reference's own weights with ``shard(model)`` (FSDP2, the policy's mesh and blocks),
        after the policy is sharded. The default shards ``self.model`` where there is one."""
        model = getattr(self, "model", None)
        if model is not None:
            shard(model)

    def on_fit_start(self, module) -> None:
        """Called when fit starts, after ``build``."""

    def on_eval_start(self, module) -> None:
        """Called when validate or test starts outside fit."""

    def score(self, backbone: Backbone, prepared, batch: dict) -> Tensor:
        """The reference's ``[K * B]`` scores; by default computed by ``self.model`` (a frozen copy, a checkpoint)."""
        return backbone.score(prepared, model=self.model).score

    def score_tokens(self, backbone: Backbone, prepared, batch: dict, needs):
        """Per-token scores (``TokenOutputs``) for a token-level objective's ``needs``, computed by ``self.model``."""
        return backbone.score_tokens(prepared, model=self.model, needs=needs, of_reference=True)

    def sample(self, backbone: Backbone, prompts: list, step: int) -> list:
        raise ValueError(f"reference {type(self).__name__} cannot generate completions")

    def after_step(self, backbone: Backbone, step: int) -> None:
        """Called after every optimizer step (a moving reference updates here)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add state that is not in the state dict (weights only where they moved with training)."""

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore what ``on_save_checkpoint`` added."""

    def train(self, mode: bool = True):
        # A reference is always in eval mode: dropout would make it disagree with itself.
        return super().train(False)


Dtype = Literal["auto", "float32", "bfloat16", "float16", "autocast"]
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


class FrozenCopy(Reference):
    """A second, frozen copy of the starting weights (or of ``model_name_or_path``).

    Args:
        model_name_or_path: the reference's weights; the policy's starting weights when left out.
        dtype: the reference's weights. Left out: ``autocast`` under ``bf16-mixed`` (the linear and convolution
            weights in bfloat16, which autocast computes them in anyway, the rest as the policy's: the scores of a
            float32 copy, bit for bit, at about half its memory; `alignsuite.precision`), ``bfloat16`` under
            ``bf16-true``, else the backbone's ``dtype``.
    """

    # A frozen copy only computes: under bf16 precision its weights need no more than bfloat16.
    bf16_by_default: bool = True

    def __init__(self, model_name_or_path: str | None = None, dtype: Dtype | None = None) -> None:
        super().__init__()
        self.model_name_or_path, self.dtype, self.model = model_name_or_path, dtype, None
        self.restored: dict[str, Tensor] | None = None  # weights read from a checkpoint before the model was built

    @property
    def load_dtype(self) -> str | None:
        """The dtype the reference loads in (``autocast``: see ``dtype``); None is the backbone's own."""
        if self.dtype is not None:
            return self.dtype
        if self.bf16_by_default and str(self.trainer_precision) in BF16_PRECISIONS:
            return "autocast" if str(self.trainer_precision) == "bf16-mixed" else "bfloat16"
        return None

    def build(self, backbone: Backbone) -> None:
        if self.model is None:
            autocast = self.load_dtype == "autocast"
            self.model = backbone.load_reference(self.model_name_or_path, None if autocast else self.load_dtype)
            if autocast:
                store_for_autocast(self.model, torch.bfloat16)
        self.restore(self.restored)

    def restore(self, weights: dict[str, Tensor] | None) -> None:
        """Load weights that moved with training (from a checkpoint), now or once the model is built."""
        if weights is not None and self.model is not None:
            weights = load_weights(self.model, weights, f"reference {type(self).__name__}")  # None: loaded
        self.restored = weights


class MovingAverage(FrozenCopy):
    """A reference that follows the policy slowly: every ``every_n_steps`` optimizer steps,
    ``ref <- decay * ref + (1 - decay) * policy``.

    This is TR-DPO's soft update (Gorbatovski et al. 2024: ``alpha = 1 - decay``, every 512 steps, alpha
    0.6 in TRL; hard update: ``decay = 0``) and Diffusion-KTO's ``reference_ema`` (decay 0.999 every 20 steps).
    The moving weights travel with a checkpoint (FSDP2: as shards), so a resumed run continues them exactly.

    ``dtype`` left out is the backbone's dtype even under bf16 precision: each update moves a weight by ``(1 -
    decay)`` of its gap to the policy, mostly below bfloat16's spacing (2^-7 at 1: 0.001 of a gap of 1 leaves a
    weight of 1 unchanged), so a bfloat16 average would barely move. Set ``dtype: bfloat16`` for memory.
    """

    bf16_by_default = False
    moves = True

    def __init__(self, decay: float = 0.999, every_n_steps: int = 20, model_name_or_path: str | None = None,
                 dtype: Dtype | None = None) -> None:
        super().__init__(model_name_or_path, dtype)
        if not 0.0 <= decay <= 1.0 or every_n_steps < 1:
            raise ValueError(f"reference.decay must be in [0, 1] and every_n_steps >= 1, got {decay}, {every_n_steps}")
        self.decay, self.every_n_steps = decay, every_n_steps

    def build(self, backbone: Backbone) -> None:
        if backbone.has_adapters:
            # The policy's weights are base + adapter; averaging towards the base alone would be wrong.
            raise ValueError("reference MovingAverage needs full fine-tuning; with lora use AdapterDisabled")
        super().build(backbone)

    @torch.no_grad()
    def after_step(self, backbone: Backbone, step: int) -> None:
        policy = dict(backbone.policy.named_parameters())
        for name, ref in self.model.named_parameters() if step % self.every_n_steps == 0 else ():
            ref.lerp_(policy[name].detach().to(ref.dtype), 1.0 - self.decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["moving_reference_weights"] = weights_for_checkpoint(self.model, "reference MovingAverage")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restore(checkpoint.get("moving_reference_weights"))  # none in older checkpoints: restarted


class CheckpointPool(Reference):
    """SePPO's reference: one of the policy's own earlier checkpoints, drawn afresh every step.

    The pool starts with the initial weights and gains a snapshot of the trainable weights every ``every_n_steps``
    optimizer steps (at most ``max_size`` kept; the initial one always stays). ``mode`` picks the reference for a
    step: "initial", "latest", or "random" (Random Checkpoint Replay, which the SePPO paper reports works best).
    The chosen reference also *generates* the step's losing samples (``sample``), which ``seppo`` trains against.
    """

    can_sample = True

    def __init__(self, mode: Literal["initial", "latest", "random"] = "random", every_n_steps: int = 50,
                 max_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        if every_n_steps < 1 or max_size < 1:
            raise ValueError("reference.every_n_steps and reference.max_size must be >= 1")
        self.mode, self.every_n_steps, self.max_size, self.seed = mode, every_n_steps, max_size, seed
        self.model: nn.Module | None = None
        self.pool: list[dict[str, Tensor]] = []
        self.loaded = -1

    def _snapshot(self, backbone: Backbone) -> dict[str, Tensor]:
        return host_copy(backbone.policy, trainable_only=True)

    def build(self, backbone: Backbone) -> None:
        if self.model is None:
            # A copy of the policy's structure (adapters included), so every snapshot loads into it.
            self.model = copy.deepcopy(backbone.policy).requires_grad_(False).eval()
            # Built empty (FSDP2, not the first process): the snapshot is taken once the weights arrive (shard).
            self.pool = [] if getattr(backbone, "empty_weights", False) else [self._snapshot(backbone)]
            self.loaded = 0

    def shard(self, backbone: Backbone, shard) -> None:
        shard(self.model)
        self.pool = [self._snapshot(backbone)]  # the policy is sharded by now: keep shards of the same layout

    def after_step(self, backbone: Backbone, step: int) -> None:
        if step % self.every_n_steps == 0:
            self.pool.append(self._snapshot(backbone))
            if len(self.pool) > self.max_size:
                del self.pool[1]  # drop the oldest, keep the initial weights
                if self.loaded >= 1:  # every later snapshot moved down one index: reload on the next select
                    self.loaded = -1

    def select(self, step: int) -> int:
        """Load the reference for ``step`` into the reference model; returns its index in the pool."""
        if self.mode == "initial":
            index = 0
        elif self.mode == "latest":
            index = len(self.pool) - 1
        else:
            index = int(torch.randint(len(self.pool), (1,), generator=torch.Generator().manual_seed(self.seed + step)))
        if index != self.loaded:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, value in self.pool[index].items():
                    local(params[name]).copy_(value)
            self.loaded = index
        return index

    def sample(self, backbone: Backbone, prompts: list, step: int) -> list:
        self.select(step)
        return backbone.generate(prompts, model=self.model, seed=self.seed + step)


class SwappedCopy(Reference):
    """The starting weights kept in host memory and copied into the policy's own parameters for the
    reference's forward, then the policy's copied back (NeMo-Aligner's CPU weight swap): no second model on
    the accelerator, for two host-device copies of the weights per step. Under FSDP2 each rank keeps and
    swaps its own shards.

    The module scores the reference before the policy, so no tensor the policy's backward needs is changed.
    For full fine-tuning; under LoRA ``AdapterDisabled`` needs no copy at all.
    """

    per_token = False  # the swap is undone before the policy's pass, which the full-vocabulary KL runs in
    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, Tensor] = {}  # the starting weights (this rank's shards), in host memory
        self._held: dict[str, Tensor] = {}  # the policy's weights while the reference's are in

    def build(self, backbone: Backbone) -> None:
        if backbone.has_adapters:
            raise ValueError("reference SwappedCopy is for full fine-tuning; with lora use AdapterDisabled")
        if not self.stored and not getattr(backbone, "empty_weights", False):
            self.stored = self._host_copy(backbone)

    def shard(self, backbone: Backbone, shard) -> None:
        self.stored = self._host_copy(backbone)  # the policy is sharded (and its weights arrived) by now

    @staticmethod
    def _host_copy(backbone: Backbone) -> dict[str, Tensor]:
        return host_copy(backbone.policy, pin=torch.cuda.is_available())  # pinned: the swaps copy asynchronously

    @torch.no_grad()
    def score(self, backbone: Backbone, prepared, batch: dict) -> Tensor:
        reshard(backbone.policy)  # under FSDP2: write the shards, with no gathered copy in the way
        params = {n: local(p) for n, p in backbone.policy.named_parameters()}
        if not self._held:
            self._held = {n: torch.empty_like(v).pin_memory() if v.is_pinned() else torch.empty_like(v)
                          for n, v in self.stored.items()}
        for name, weight in params.items():
            self._held[name].copy_(weight, non_blocking=True)
            weight.copy_(self.stored[name], non_blocking=True)
        try:
            return backbone.score(prepared).score
        finally:
            reshard(backbone.policy)  # the root keeps its gathered (reference) weights after a forward
            for name, weight in params.items():
                weight.copy_(self._held[name], non_blocking=True)


class AdapterDisabled(Reference):
    """The policy with its LoRA adapters switched off: the base model, with no second copy of the weights."""

    def build(self, backbone: Backbone) -> None:
        if not backbone.has_adapters:
            raise ValueError(
                "model.reference is AdapterDisabled, which needs adapters to disable: set model.backbone.lora,"
                " or use FrozenCopy for full fine-tuning"
            )

    def score(self, backbone: Backbone, prepared, batch: dict) -> Tensor:
        with backbone.adapters_disabled():
            return backbone.score(prepared).score

    def score_tokens(self, backbone: Backbone, prepared, batch: dict, needs):
        with backbone.adapters_disabled():
            return backbone.score_tokens(prepared, needs=needs, of_reference=True)


class Precomputed(Reference):
    """Reference scores computed in one pass before training and stored, one per row and view.

    The pass uses the starting policy (with adapters disabled under LoRA), so no reference weights stay in memory
    during training. Steps look their scores up by the batch's row ``index``. The stored scores travel in
    checkpoints, so a resumed run does not recompute them from trained weights. Under several processes each
    scores its share and they exchange the results.

    It needs inputs that are the same at every step: not a denoising backbone (new noise each step), not a
    view that depends on the batch (KTO's mismatched pairs) or on sampling (SePPO's losers).
    """

    per_token = False  # one score per row and view is stored: no token's log-prob, no distribution
    def __init__(self, batch_size: int | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.stored: dict[str, Tensor] = {}  # split -> [rows, views]
        self.views: tuple = ()

    def check(self, objective, backbone: Backbone) -> None:
        if not backbone.deterministic_inputs:
            raise ValueError(f"reference Precomputed needs a backbone whose inputs are the same at every step;"
                             f" {type(backbone).__name__} draws new noise and timesteps each step, so stored scores"
                             " would not match: use FrozenCopy or AdapterDisabled")
        moving = [v.name for v in objective.views
                  if v.shift or v.sampled or not getattr(v.condition, "per_row", True)]  # mDPO's mismatched image
        if moving:
            raise ValueError(f"reference Precomputed cannot store scores for objective {objective.name!r}'s view(s)"
                             f" {moving}: they depend on the batch or on sampling; use FrozenCopy or AdapterDisabled")
        self.views = objective.views

    def score(self, backbone: Backbone, prepared, batch: dict) -> Tensor:
        split = batch.get("split", "train")
        if split not in self.stored:
            raise RuntimeError(f"no precomputed reference scores for the {split} set; on_fit_start/on_eval_start was not run")
        rows = self.stored[split][batch["index"].cpu()]  # [B, K]
        return rows.T.reshape(-1)

    def on_fit_start(self, module) -> None:
        self.precompute(module)

    on_eval_start = on_fit_start

    @torch.no_grad()
    def precompute(self, module) -> None:
        """Score every row of the train and val sets once, in every declared view."""
        data = module.trainer.datamodule  # a PreferenceData: checked at the module's setup
        if data is None:
            raise ValueError("Precomputed reference scores need a PreferenceDataModule (data.class_path)")
        for split, dataset in (("train", data.train_set), ("val", data.val_set)):
            if dataset is None or len(dataset) == 0 or split in self.stored:
                continue
            self.stored[split] = self._score_split(module, data, dataset)
            rank_zero_info(f"precomputed reference scores for {len(dataset)} {split} rows")

    def _score_split(self, module, data, dataset) -> Tensor:
        strategy, backbone = module.trainer.strategy, module.backbone
        n, world, rank = len(dataset), strategy.world_size, strategy.global_rank
        per_rank = -(-n // world)
        mine = [min(i, n - 1) for i in range(rank * per_rank, (rank + 1) * per_rank)]  # pad by repeating the last row
        size = self.batch_size or data.batch_size
        was_training = module.training
        module.eval()
        scores = []
        try:  # in the training step's precision (autocast under bf16-mixed): the first step's loss is then ln 2
            with module.trainer.precision_plugin.forward_context():
                for start in range(0, len(mine), size):
                    batch = data.collate([dataset[i] for i in mine[start : start + size]])
                    prepared = backbone.prepare(module.build_views(batch))
                    with backbone.adapters_disabled() if backbone.has_adapters else contextlib.nullcontext():
                        s = backbone.score(prepared).score
                    scores.append(torch.stack(s.float().chunk(len(self.views)), dim=1))  # [b, K]
        finally:
            module.train(was_training)
        local = torch.cat(scores)  # [per_rank, K]
        gathered = strategy.all_gather(local) if world > 1 else local[None]
        return gathered.reshape(-1, local.shape[1])[:n].cpu()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["precomputed_reference"] = {split: t.tolist() for split, t in self.stored.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "precomputed_reference" in checkpoint:
            self.stored = {split: torch.tensor(v) for split, v in checkpoint["precomputed_reference"].items()}


def default_reference(objective, backbone: Backbone) -> Reference | None:
    """The reference a run gets when none is configured: none for a reference-free objective, the policy
    with its adapters off under LoRA (no second copy of the weights), a frozen copy otherwise."""
    if not objective.needs_reference:
        return None
    return AdapterDisabled() if backbone.has_adapters else FrozenCopy()
