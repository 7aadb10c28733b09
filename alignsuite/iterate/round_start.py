"""Where a round's fit starts: the policy the previous round ended with, and the reference the recipe asks for."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.callbacks import Callback

from alignsuite.checkpoint_io import (
    BACKBONE, SafeFileSystemReader, backbone_weights, load_backbone_weights, load_checkpoint_file, read_sharded_weights,
    sharded_weight_names,
)
from alignsuite.iterate.settings import IterateError

PREVIOUS = "previous"  # the extra reference holding the round's starting policy (reference: both)


def copy_starting_reference(reference, backbone, precision: str) -> bool:
    """Build a fresh ``FrozenCopy`` of the recipe's starting weights from ``backbone``'s policy, which the caller
    knows holds them (round 1's fit trains on from the starting policy), instead of reading them again
    (``Backbone.reference_from_policy``), under the trainer's ``precision``. Returns whether it did: not for another
    reference class or one built already, other weights (``model_name_or_path``), a dtype of the reference's own,
    or a backbone whose policy is not that read."""
    from alignsuite.precision import store_for_autocast
    from alignsuite.reference import FrozenCopy

    if not isinstance(reference, FrozenCopy) or type(reference).build is not FrozenCopy.build or \
            reference.model is not None or reference.model_name_or_path is not None:
        return False
    reference.trainer_precision = precision
    dtype = reference.load_dtype
    model = backbone.reference_from_policy() if dtype in (None, "autocast") else None
    if model is None:
        return False
    if dtype == "autocast":
        store_for_autocast(model, torch.bfloat16)
    reference.model = model
    return True


def policy_state(path: str, checkpoint: dict | None = None) -> dict[str, torch.Tensor]:
    """The backbone's weights in a round's checkpoint (``checkpoint``: it, already read), keyed as the backbone's
    own state dict."""
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint_file(path, True, mmap=True)
    policy = backbone_weights(checkpoint.get("state_dict", {}))
    if not policy:
        raise IterateError(f"{path}: the checkpoint holds no backbone weights to start the next round from")
    return policy


def sharded_policy_state(folder: str, backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights in a sharded round checkpoint, read whole on this process (an unsharded
    ``backbone`` gives the shapes), keyed as the backbone's own state dict."""
    present = sharded_weight_names(folder)
    template = {BACKBONE + k: v.detach().clone() for k, v in backbone.state_dict().items() if BACKBONE + k in present}
    if not template:
        raise IterateError(f"{folder}: the checkpoint holds no backbone weights to start the next round from")
    return backbone_weights(read_sharded_weights(folder, template))


def load_sharded(folder: str, module: torch.nn.Module, prefix: str, what: str) -> None:
    """The weights saved under ``prefix`` in a sharded checkpoint into the sharded ``module`` (FSDP2), each
    process reading its own shards. A collective: every process calls it. A key the module has and the
    checkpoint lacks (beyond the parts rebuilt from their source) is refused."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    present = sharded_weight_names(folder)
    mine = get_model_state_dict(module)
    rebuilt = tuple(getattr(module, "not_checkpointed", ()) or ())
    missing = [k for k in mine if prefix + k not in present and not (rebuilt and k.startswith(rebuilt))]
    if missing:
        raise IterateError(f"{what}: the previous round's weights do not fit (missing: {missing[:3]})")
    wanted = {prefix + k: v for k, v in mine.items() if prefix + k in present}
    state = {"state_dict": wanted}
    load(state, storage_reader=SafeFileSystemReader(folder))
    set_model_state_dict(module, {k[len(prefix):]: v for k, v in state["state_dict"].items()},
                         options=StateDictOptions(strict=False))


def load_sharded_moments(folder: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer, index: int) -> None:
    """The per-parameter state of the sharded checkpoint's optimizer ``index`` into the sharded ``optimizer`` (each
    process its own shards), whose parameter groups (the learning rate the round's schedule starts from) stay
    its own. A collective."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict,
    )

    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    key = f"optimizer_{index}"
    state = {key: get_optimizer_state_dict(module, optimizer)}  # the template: torch gives a fresh optimizer state
    load(state, storage_reader=SafeFileSystemReader(folder))
    set_optimizer_state_dict(module, optimizer, optim_state_dict=state[key], options=StateDictOptions(strict=False))
    for group, kept in zip(optimizer.param_groups, groups):
        group.update(kept)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``state`` into ``module``; a key either side lacks (beyond the parts rebuilt from their source) is refused."""
    missing, unexpected = load_backbone_weights(module, state)
    if missing or unexpected:
        raise IterateError(f"{what}: the previous round's weights do not fit (missing: {missing[:3]}, unexpected:"
                           f" {unexpected[:3]})")


def load_optimizer_moments(optimizer: torch.optim.Optimizer, saved: dict, what: str) -> None:
    """The per-parameter state of ``saved`` (an optimizer's state dict: Adam's moments and step counts) into
    ``optimizer``, whose parameter groups (the learning rate the round's schedule starts from) stay its own."""
    mine = optimizer.state_dict()
    sizes = [len(g["params"]) for g in mine["param_groups"]], [len(g["params"]) for g in saved["param_groups"]]
    if sizes[0] != sizes[1]:
        raise IterateError(f"{what}: the saved optimizer holds parameter groups of {sizes[1]} parameters, this fit's"
                           f" {sizes[0]}; carry the optimizer state only between fits of one recipe")
    optimizer.load_state_dict({"state": saved["state"], "param_groups": mine["param_groups"]})


class RoundStart(Callback):
    """Start a round's fit from the previous round's policy (``previous``, its checkpoint; none in round 1), unless
    the fit resumes its own checkpoint, and make the round's starting policy the reference (``round_start``) or the
    extra reference ``previous`` (``both``). With ``initial`` the recipe's reference stays as it was built. With
    ``carry_optimizer`` the optimizer's moments are the checkpoint's too (its learning rate schedule starts anew).
    ``warm``: the policy already holds the previous round's weights (handed over by the loop), so they are not
    read from its checkpoint again: a reference that starts from them copies them from the policy."""

    def __init__(self, previous: str | None, reference: str = "initial", carry_optimizer: bool = False,
                 warm: bool = False) -> None:
        self.previous, self.reference, self.carry_optimizer, self.warm = previous, reference, carry_optimizer, warm

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.previous is None and self.reference != "both":
            return
        if self.previous and os.path.isdir(self.previous):  # a sharded checkpoint (ModelParallelStrategy)
            return self.start_sharded(trainer, pl_module)
        backbone = pl_module.backbone
        memory = self.warm and trainer.ckpt_path is None  # the policy holds the previous round's weights
        read = self.previous and (not memory or self.carry_optimizer)
        checkpoint = load_checkpoint_file(self.previous, True, mmap=True) if read else None
        if not self.previous:
            state = None
        elif memory:
            state = backbone.state_dict()
        else:
            state = policy_state(self.previous, checkpoint)
        if state is not None and trainer.ckpt_path is None:  # a resumed fit has its own weights already
            if not memory:
                load_into(backbone, state, f"round start ({self.previous})")
            if self.carry_optimizer:
                saved = checkpoint.get("optimizer_states") or []
                if len(saved) != len(trainer.optimizers):
                    raise IterateError(f"iterate.carry_optimizer: {self.previous} holds {len(saved)} optimizer"
                                       f" states, the fit has {len(trainer.optimizers)}")
                for optimizer, moments in zip(trainer.optimizers, saved):
                    load_optimizer_moments(optimizer, moments, f"iterate.carry_optimizer ({self.previous})")
        target = self.target(pl_module)
        if self.reference == "initial" or state is None:
            return  # round 1: the starting policy is the recipe's, which every reference already is
        model = self.reference_model(target)
        prefix = "policy."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        with torch.no_grad():
            load_into(model, weights, f"iterate.reference {self.reference}")

    def target(self, pl_module):
        """The reference the round's starting policy goes into (None: the recipe's reference stays)."""
        return {"round_start": pl_module.reference,
                "both": pl_module.extra_references[PREVIOUS] if PREVIOUS in pl_module.extra_references else None,
                }.get(self.reference)

    def reference_model(self, target):
        model = getattr(target, "model", None)
        if model is None:
            raise IterateError(f"iterate.reference {self.reference}: the reference ({type(target).__name__}) holds no"
                               " weights of its own to load the round's starting policy into; use"
                               " alignsuite.reference.FrozenCopy (LoRA policies keep reference: initial)")
        return model

    def start_sharded(self, trainer, pl_module) -> None:
        """The same start from a sharded round checkpoint into the sharded policy and reference (FSDP2)."""
        if trainer.ckpt_path is None:
            load_sharded(self.previous, pl_module.backbone, BACKBONE, f"round start ({self.previous})")
            if self.carry_optimizer:
                for index, optimizer in enumerate(trainer.optimizers):
                    load_sharded_moments(self.previous, pl_module, optimizer, index)
        if self.reference != "initial":
            model = self.reference_model(self.target(pl_module))
            with torch.no_grad():
                load_sharded(self.previous, model, BACKBONE + "policy.", f"iterate.reference {self.reference}")


__all__ = ["PREVIOUS", "RoundStart", "policy_state"]
