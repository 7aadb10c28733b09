"""FSDP2 for the policy and the reference: which blocks to shard, how, and the check that it happened.

Under Lightning's ``ModelParallelStrategy`` the module's ``configure_model`` calls :func:`shard_model` on the
policy and on the reference's model, with the strategy's device mesh. Each repeated block (a decoder
layer, a UNet or DiT block) becomes one FSDP2 unit, then the model's root holds what is left (embeddings,
final norm, head). The blocks are the classes a model lists in ``_no_split_modules``, as transformers and
diffusers models do for their own device-map splitting (Llama: ``LlamaDecoderLayer``; SD 1.5's UNet:
``BasicTransformerBlock``, ``ResnetBlock2D`` ...; Flux: its two transformer blocks), plus any a backbone
names in ``shard_blocks``.

A model whose trainable weights are not all sharded would train one unsynchronised copy per rank, so
:func:`check_sharded` refuses it before the first step.
"""

from __future__ import annotations

import itertools
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from alignsuite.checkpoint_io import SafeFileSystemReader, atomic_io, check_sharded_checkpoint, first_non_finite

FSDP2_RECIPE = "configs/strategy/fsdp2.yaml"


class ShardingError(ValueError):
    """A model cannot be sharded as asked, or was not sharded where it must be."""


def block_classes(model: nn.Module, extra: tuple[str, ...] = ()) -> set[str]:
    """Class names of ``model``'s repeated blocks: every ``_no_split_modules`` found in it, and ``extra``."""
    names = set(extra)
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def data_parallel_mesh(mesh):
    """The mesh FSDP shards over: the data-parallel dimension of ModelParallelStrategy's 2D mesh."""
    if mesh.ndim == 1:
        return mesh
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        # Each tensor-parallel rank would hold an unsynchronised replica: alignsuite applies FSDP only.
        raise ShardingError(
            f"tensor_parallel_size is {mesh['tensor_parallel'].size()}: alignsuite shards with FSDP2 only; set"
            f" trainer.strategy.init_args.tensor_parallel_size 1 and data_parallel_size to the world size (see {FSDP2_RECIPE})"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def mixed_precision(precision: str | None):
    """FSDP2's policy for a Trainer precision: under ``bf16-mixed`` the sharded (float32) weights are gathered
    in bfloat16 for compute, and gradients reduced in float32 into float32 master weights; otherwise none."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, mesh, mp_policy=None, blocks: tuple[str, ...] = (), frozen: bool = False,
                from_rank0: bool = False) -> int:
    """Apply ``fully_shard`` to each of ``model``'s blocks (innermost first), then to ``model`` itself.

    ``frozen`` models (a reference) never run backward, so their root reshards right after the forward as
    well; a policy's root keeps its gathered weights for the backward that follows. ``from_rank0``: the first
    process's weights replace every process's (see :func:`load_from_rank0`); the others may have built
    ``model`` on the meta device. Returns the number of blocks sharded; a model with none is an error (one
    unit for the whole model gathers every weight at once).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = block_classes(model, blocks)
    # modules() lists a parent before its children: reversed, inner blocks are sharded before outer ones.
    units = [m for m in reversed(list(model.modules())) if m is not model and type(m).__name__ in names]
    if not units:
        raise ShardingError(
            f"found no blocks to shard in {type(model).__name__}: it declares no _no_split_modules"
            f" ({sorted(names) or 'none'} found). Name its repeated block classes in the backbone's shard_blocks,"
            " or train with strategy ddp"
        )
    kwargs = {"mesh": data_parallel_mesh(mesh), "mp_policy": mp_policy or MixedPrecisionPolicy()}
    # The first process's full weights, before sharding frees them: references only, no copy.
    full = model.state_dict() if from_rank0 and torch.distributed.get_rank() == 0 else {}
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, reshard_after_forward=True if frozen else None, **kwargs)
    if from_rank0:
        load_from_rank0(model, full, torch.device(kwargs["mesh"].device_type))
    return len(units)


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters and buffers on the meta device (built, never given values)."""
    return [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]


def load_from_rank0(model: nn.Module, state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Every process's shards of the sharded ``model`` from the first process's full state dict ``state``
    (empty on the others), sent one tensor at a time; then every buffer from the first process, the
    non-persistent ones (rotary frequencies ...) included, which no state dict holds. A collective.

    A model built on the meta device (no weights read) gets memory first; tied weights stay tied.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if meta_tensors(model):
        model.to_empty(device=device)
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def is_sharded(model: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Free every gathered FSDP2 unit of ``model`` and register its shards again (a no-op unsharded). A root
    keeps its gathered weights after a forward for the backward that follows; code that writes the shards
    directly must reshard first and after, or the gathered copy would be used."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def check_sharded(module: nn.Module) -> None:
    """Raise unless every trainable parameter of ``module`` is a sharded DTensor."""
    from torch.distributed.tensor import DTensor

    plain = [n for n, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if plain:
        shown = ", ".join(plain[:3]) + (f" and {len(plain) - 3} more" if len(plain) > 3 else "")
        raise ShardingError(
            f"ModelParallelStrategy, yet {len(plain)} trainable parameter(s) are not sharded ({shown}): each rank"
            " would train its own unsynchronised copy. PreferenceModule.configure_model shards the policy with"
            " FSDP2; a subclass that overrides configure_model must call super().configure_model()"
        )


class BlockWrapPolicy(ModuleWrapPolicy):
    """FSDP1's auto-wrap policy (``FSDPStrategy(auto_wrap_policy=...)``, GPUs) for the same blocks FSDP2
    shards: the classes found in the wrapped model's ``_no_split_modules``, plus ``blocks`` (class names).

    The classes are looked up when FSDP wraps the LightningModule, so one policy serves every backbone, and
    the reference's blocks are wrapped like the policy's.
    """

    def __init__(self, blocks: list[str] | None = None) -> None:
        super().__init__([])
        self.blocks = tuple(blocks or ())

    def _run_policy(self, root_module: nn.Module, ignored_modules, root_kwargs):
        names = block_classes(root_module, self.blocks)
        self._module_classes = tuple({type(m) for m in root_module.modules() if type(m).__name__ in names})
        if not self._module_classes:
            raise ShardingError(f"FSDP auto-wrap: found no blocks to wrap in {type(root_module).__name__}: it declares"
                                " no _no_split_modules; give their class names in auto_wrap_policy.init_args.blocks")
        return super()._run_policy(root_module, ignored_modules, root_kwargs)


def host_copy(model: nn.Module, trainable_only: bool = False, pin: bool = False) -> dict[str, torch.Tensor]:
    """A host-memory copy of ``model``'s parameters (the trainable ones only, if asked): under FSDP2 this
    rank's shard of each (1/N of the copy per rank), else all of it; in page-locked memory with ``pin``."""
    def to_host(weight: torch.Tensor) -> torch.Tensor:
        copy = local(weight).detach().to("cpu", copy=True)
        return copy.pin_memory() if pin else copy

    return {n: to_host(p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only}


def weights_for_checkpoint(model: nn.Module, owner: str) -> dict[str, torch.Tensor] | None:
    """A host copy of ``model``'s weights to travel in a checkpoint's own entries (a reference whose weights
    moved with training and cannot be rebuilt from a source). None under FSDP2: there the module keeps a moving
    reference's weights in its state dict (``PreferenceModule``), so they travel as the sharded checkpoint's
    shards, each process writing and reading its own."""
    if is_sharded(model):
        return None
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], owner: str) -> None:
    """Copy ``weights`` (from `weights_for_checkpoint`) into ``model``, every parameter named."""
    params = dict(model.named_parameters())
    if set(params) != set(weights):
        raise ValueError(f"{owner}: the checkpoint's reference weights do not match the model ({len(weights)} tensors,"
                         f" the model has {len(params)}): was it written by another model?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (gathered) state dict of a sharded ``model`` on rank 0's CPU; empty on the other ranks.

    A collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` whose sharded checkpoints are written whole or not at all, and
    never with a NaN or infinite weight (the previous checkpoint is kept, and a warning names the parameter).

    Lightning writes a sharded checkpoint's folder in place, so a run killed while saving ``last.ckpt``
    leaves a folder of old and new shards and nothing to resume from. Here every rank writes its shards
    into ``.partial-<name>`` beside it; once all have, the first rank swaps it in for the old folder (renamed
    ``.old-<name>`` for the moment of the swap, then removed). A crash before the swap keeps the previous
    checkpoint; the next save clears what a crash left.

    A sharded checkpoint is read safely: its index through :func:`~alignsuite.checkpoint_io.read_index` (torch's
    reader would unpickle anything planted there), after :func:`~alignsuite.checkpoint_io.check_sharded_checkpoint`
    has named any missing or cut-short file.
    """

    def __init__(self, data_parallel_size: Literal["auto"] | int = "auto", tensor_parallel_size: int = 1,
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint,
                         process_group_backend, timeout)

    def mesh_sizes(self) -> tuple[int, int]:
        """(data-parallel, tensor-parallel) sizes. Lightning's ``"auto"`` data-parallel size is the number of
        nodes (tensor parallel over each node's devices); FSDP2 alone shards here, so it is every process over
        the tensor-parallel size, and the fragments follow any number of devices and nodes."""
        dp, tp = self._data_parallel_size, self._tensor_parallel_size
        tp = self.num_processes if tp == "auto" else tp
        return (max(1, self.num_nodes * self.num_processes // tp) if dp == "auto" else dp), tp

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.mesh_sizes()
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():
            return super().load_checkpoint(checkpoint_path, weights_only)
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
        )

        meta = check_sharded_checkpoint(path, weights_only)
        # Lightning's own sharded load (lightning.fabric.strategies.model_parallel._load_checkpoint), with the
        # safe reader: the weights, then each optimizer's state, then everything else from meta.pt.
        module = self.model
        weights = {"state_dict": get_model_state_dict(module)}
        load(weights, storage_reader=SafeFileSystemReader(path))
        module.load_state_dict(weights["state_dict"], strict=self.lightning_module.strict_loading)
        for i, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{i}": get_optimizer_state_dict(module, optimizer)}
            load(state, storage_reader=SafeFileSystemReader(path))
            set_optimizer_state_dict(module, optimizer, optim_state_dict=state[f"optimizer_{i}"],
                                     options=StateDictOptions(cpu_offload=True))
        return meta

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        io = atomic_io(self)
        # Each rank checks its own shards; one non-finite shard anywhere and no rank writes.
        found = [first_non_finite(checkpoint.get("state_dict") or {})]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = found * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(found, found[0])
        bad = next((name for name in found if name is not None), None)
        if bad is not None:
            if self.global_rank == 0 and io is not None:
                io.refuse(str(path), checkpoint.get("global_step"), bad)
            return
        tmp, old = path.with_name(".partial-" + path.name), path.with_name(".old-" + path.name)
        if self.global_rank == 0:
            for leftover in (tmp, old):
                _remove(leftover)
        self.barrier("before sharded save")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("after sharded save")
        if self.global_rank == 0:
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        self.barrier("after checkpoint swap")
        if io is not None:
            io.last_written = (str(path), checkpoint.get("global_step"))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def zero_redundancy(optimizer: torch.optim.Optimizer, params: list, strategy) -> torch.optim.Optimizer:
    """``optimizer`` as a ``ZeroRedundancyOptimizer`` of its class and settings under multi-process DDP (each
    rank keeps 1/N of the optimizer state; Lightning consolidates it to rank 0 for checkpoints). Its state is
    created lazily at the first step, so the plain one built first costs nothing."""
    import inspect

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
    from lightning.pytorch.utilities import rank_zero_info
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(strategy, (ModelParallelStrategy, FSDPStrategy)):
        raise ValueError(
            f"model.zero_optimizer is for DDP; {type(strategy).__name__} (FSDP) shards the optimizer state"
            " already: remove model.zero_optimizer (configs/optim/zero.yaml)"
        )
    if strategy.world_size < 2:
        rank_zero_info("model.zero_optimizer: one process, nothing to shard the optimizer state over; a plain"
                       f" {type(optimizer).__name__} is used")
        return optimizer
    if not isinstance(strategy, DDPStrategy):
        raise ValueError(f"model.zero_optimizer needs DDP (configs/strategy/ddp.yaml), not {type(strategy).__name__}")
    # Only what the class's constructor takes: AdamW's defaults also hold Adam's decoupled_weight_decay.
    accepted = inspect.signature(type(optimizer)).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer(params, optimizer_class=type(optimizer), **settings)
