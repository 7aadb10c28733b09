"""Export the trained policy as a folder the ecosystem loads (``from_pretrained``)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.callbacks.model_card import facts_of, find_results, push_folder, write_card
from alignsuite.checkpoint_io import (
    give_ordinary_modes, read_checkpoint, read_sharded_weights,
)

MARKER = "alignsuite_export.json"  # written into every export: which run, step and checkpoint it holds


class ExportError(RuntimeError):
    """An export that would overwrite a folder it does not own."""


PATHS = ("run", "checkpoint", "config")  # the marker's entries that are paths: kept relative to the export


def relative_marker(marker: dict, path: str) -> dict:
    """``marker`` with its paths relative to the export folder ``path``: an export names no path of the machine
    that wrote it, and stays readable when its run is moved."""
    folder = os.path.abspath(path)
    return {k: os.path.relpath(os.path.abspath(v), folder) if k in PATHS and isinstance(v, str) else v
            for k, v in marker.items()}


def marker_run(marker: dict, path: str) -> str | None:
    """The run folder an export's marker names, as an absolute path (older markers hold one already)."""
    run = marker.get("run")
    return os.path.normpath(os.path.join(os.path.abspath(path), run)) if isinstance(run, str) else run


def refusal(path: str, run_dir: str | None, overwrite: bool) -> str | None:
    """Why writing an export to ``path`` would destroy something, or None when it is safe.

    Safe: a missing or empty folder, an earlier export of the same run (its marker names ``run_dir``),
    or anything when ``overwrite`` is set.
    """
    if overwrite or not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return f"export: {path} exists and is not a folder; choose another export.dirpath"
    if not os.listdir(path):
        return None
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        why = f"it holds files and no {MARKER}, so it is not an export"
    else:
        try:
            with open(marker) as f:
                owner = marker_run(json.load(f), path)
        except (OSError, ValueError, AttributeError):
            owner = None
        if run_dir is not None and owner == os.path.abspath(run_dir):
            return None
        why = f"it is an export of another run ({owner})"
    return (
        f"export: refusing to overwrite {path}: {why}. Choose another export.dirpath, or set"
        " export.overwrite true to replace it"
    )


def write_atomically(path: str, write, marker: dict) -> None:
    """Run ``write(folder)`` into a temporary folder beside ``path``, add the marker, then move it into place.

    A crash leaves either the previous folder or the new one, never a half-written export under ``path``.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    prefix = f".tmp-export-{name}-"  # this writer's temporary folders for this target
    for stale in glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        write(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(relative_marker(marker, path), f, indent=2)
        give_ordinary_modes(tmp)  # mkdtemp makes the folder owner-only, and transformers its weight files
        if os.path.isdir(path) and os.listdir(path):
            old = tmp + "-replaced"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)  # replaces an empty folder in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ExportPretrained(Callback):
    """At the end of fit, write ``save_pretrained`` folder(s) of the policy.

    Every export holds an ``alignsuite_export.json`` naming its run, step and checkpoint. A folder that
    holds anything else (a base model, another run's export) is never overwritten unless ``overwrite``.

    Args:
        dirpath: where to write; defaults to ``<log dir>/export`` at the end of fit, and to
            ``<run log dir>/export-step<N>`` when the ``export`` command exports a checkpoint of step N.
        merge_adapters: with LoRA, merge the adapter into the weights (True) or write the adapter alone.
        enabled: set false to skip the export at the end of fit.
        overwrite: replace ``dirpath`` even when it is not an earlier export of this run.
        push_to_hub: a hub repository id (``owner/name``): upload the export there once written, with
            ``huggingface_hub`` (its login or ``HF_TOKEN``); the repository is created when missing.

    Every export also holds a model card, ``README.md``: base model, objective and its settings, data, steps,
    and the numbers of the run's evaluation when ``evaluate`` wrote one (``<run>/eval/results.json``).
    """

    def __init__(
        self, dirpath: str | None = None, merge_adapters: bool = True, enabled: bool = True, overwrite: bool = False,
        push_to_hub: str | None = None,
    ) -> None:
        self.dirpath = dirpath
        self.merge_adapters = merge_adapters
        self.enabled = enabled
        self.overwrite = overwrite
        self.push_to_hub = push_to_hub
        # The run's first log dir, kept in checkpoints: a resumed run is the same run.
        self.run_dir: str | None = None

    def state_dict(self) -> dict:
        return {"run_dir": self.run_dir}

    def load_state_dict(self, state_dict: dict) -> None:
        self.run_dir = state_dict.get("run_dir") or self.run_dir

    def resolve_dir(self, trainer: Trainer) -> str:
        if self.dirpath:
            return self.dirpath
        root = trainer.log_dir or trainer.default_root_dir
        return os.path.join(root, "export")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.run_dir is None:
            self.run_dir = os.path.abspath(trainer.log_dir or trainer.default_root_dir)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Checked before training (after a resume restored the run's identity), not after hours of it.
        if not self.enabled:
            return
        path = self.resolve_dir(trainer)  # on every process: trainer.log_dir is a collective call
        reason = refusal(path, self.run_dir, self.overwrite) if trainer.is_global_zero else None
        reason = trainer.strategy.broadcast(reason)
        if reason:
            raise ExportError(reason)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        path = self.resolve_dir(trainer)
        trainer.strategy.barrier()
        # Under FSDP2 every rank gathers the policy and rank 0 writes it; otherwise the policy itself.
        full = pl_module.full_backbone() if hasattr(pl_module, "full_backbone") else pl_module.backbone
        if trainer.is_global_zero:
            marker = {"run": self.run_dir, "global_step": trainer.global_step, "checkpoint": None,
                      "config": self._config_file(self.run_dir), "merge_adapters": self.merge_adapters}
            facts = facts_of(pl_module, trainer.datamodule, trainer.global_step, self.merge_adapters)
            write_atomically(path, self._writer(full, facts, self.run_dir), marker)
            rank_zero_info(f"exported the policy to {path}")
            self.push(path)
        trainer.strategy.barrier()

    def export_checkpoint(self, trainer: Trainer, model: LightningModule, ckpt_path: str,
                          weights_only: bool | None = None, datamodule=None) -> str:
        """Load ``ckpt_path`` (a file, or the folder of shards FSDP2 writes) into ``model`` and export it;
        returns the folder written."""
        sharded = os.path.isdir(ckpt_path)
        checkpoint = read_checkpoint(ckpt_path, weights_only)
        run_dir = (checkpoint.get("callbacks", {}).get(self.state_key) or {}).get("run_dir")
        step = checkpoint.get("global_step")
        if self.dirpath:
            path = self.dirpath
        elif run_dir:
            path = os.path.join(run_dir, f"export-step{step}")
        else:
            raise ExportError(f"export: {ckpt_path} does not record its run folder; give --export.dirpath")
        reason = refusal(path, run_dir, self.overwrite)
        if reason:
            raise ExportError(reason)
        model.configure_model()
        if sharded:  # the shards, read into the model's own full tensors on this one process
            checkpoint["state_dict"] = read_sharded_weights(ckpt_path, model.state_dict())
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        marker = {"run": run_dir, "global_step": step, "checkpoint": os.path.abspath(ckpt_path),
                  "config": self._config_file(run_dir), "merge_adapters": self.merge_adapters}
        facts = facts_of(model, datamodule, step, self.merge_adapters)
        write_atomically(path, self._writer(model.backbone, facts, run_dir), marker)
        self.push(path)
        return path

    def _writer(self, backbone, facts, run_dir: str | None):
        def write(folder: str) -> None:
            backbone.save_pretrained(folder, merge_adapters=self.merge_adapters)
            facts.results, facts.results_from = find_results([os.path.dirname(folder), run_dir])
            write_card(folder, facts, self.push_to_hub)

        return write

    def push(self, path: str) -> None:
        """Upload the written export to ``push_to_hub``, when set."""
        if not self.push_to_hub:
            return
        try:
            push_folder(path, self.push_to_hub)
        except Exception as error:  # noqa: BLE001 - the hub's errors are many; the export itself is written
            raise ExportError(f"export.push_to_hub {self.push_to_hub}: the upload of {path} failed"
                              f" ({type(error).__name__}: {error}); the export is written, upload it again with"
                              f" `huggingface-cli upload {self.push_to_hub} {path}`") from error
        rank_zero_info(f"uploaded {path} to the hub repository {self.push_to_hub}")

    @staticmethod
    def _config_file(run_dir: str | None) -> str | None:
        config = os.path.join(run_dir, "config.yaml") if run_dir else None
        return config if config and os.path.isfile(config) else None
