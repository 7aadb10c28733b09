"""Which checkpoint a command reads, and whether the recipe now running wrote it.

``--ckpt_path last`` becomes a file (under SLURM the newer of ``last.ckpt`` and Lightning's requeue
checkpoint, and a requeued job's fit resumes its own checkpoint unasked); every command that reads a checkpoint
into the recipe's model first compares the model, objective and reference the checkpoint was written by
(:mod:`alignsuite.callbacks.recipe_match`).
"""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.callbacks.preemption import (
    hpc_checkpoint, newer_checkpoint, newest_last_checkpoint, own_job_checkpoint,
)
from alignsuite.callbacks.recipe_match import recipe_differences, stored_hyperparameters
from alignsuite.checkpoint_io import INDEX, CheckpointError
from alignsuite.commands import fail

CKPT_KEYWORDS = {"last", "best", "hpc", "registry"}  # ckpt_path values Lightning resolves itself
DOING = {"fit": "resuming from", "export": "exporting", "validate": "validating", "test": "testing",
         "predict": "predicting with"}  # what a command says it does with the checkpoint --ckpt_path names


def is_file_name(path: str | None) -> bool:
    """``last.ckpt``, ``epoch=0-step=4.ckpt``: a name without a folder, as a ``--ckpt_path`` in the run's folder."""
    return bool(path) and path not in CKPT_KEYWORDS and os.path.basename(path) == path and "://" not in path


def resume_path(trainer, subcommand: str, ckpt_path: str | None, run_dirs: tuple[str, ...] = ()) -> str | None:
    """``last`` as a file, and under SLURM the newer of ``last.ckpt`` and Lightning's requeue checkpoint. A bare
    file name (``last.ckpt``) that is not there is looked for in the run's checkpoint folder: ``run_dirs`` are the
    folders of the run ``config.yaml`` files given with ``--config``. A SLURM job's fit given no checkpoint
    resumes the job's own (see ``own_job_checkpoint``)."""
    hpc = None
    if subcommand == "fit" and ckpt_path in (None, "last") and SLURMEnvironment.detect():
        hpc = hpc_checkpoint(trainer.default_root_dir)  # Lightning would take it silently when not given
    own_job = subcommand == "fit" and ckpt_path is None and SLURMEnvironment.detect()
    named = is_file_name(ckpt_path) and not os.path.exists(ckpt_path)
    if ckpt_path != "last" and hpc is None and not own_job and not named:
        return ckpt_path
    callback = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
    dirpath = callback.dirpath if callback is not None else None
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is not None and not dirpath:
        where = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name))
        searched = f"{where}/*/checkpoints/"
    else:
        where = searched = dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
    name = ckpt_path if named else "last.ckpt"
    last = newest_last_checkpoint(dirpath or (None if logger else where), where, name, run_dirs)
    if own_job and hpc is None:  # with a requeue checkpoint, the newer of the two, as before
        last, why = own_job_checkpoint(last, searched)
        if why:
            rank_zero_info(why)
        if last is None:
            return None
    chosen, how = newer_checkpoint(last, hpc, DOING.get(subcommand, f"{subcommand}:"))
    if chosen is None:
        if subcommand != "fit" or named:
            fail(f"--ckpt_path {ckpt_path}: no {name} in {searched}")
        rank_zero_info(f"--ckpt_path last: no last.ckpt in {searched}; training from the start")
        return None
    rank_zero_info(how)
    return chosen


def checkpoint_read(subcommand: str, kwargs: dict) -> tuple[str | None, str]:
    """The checkpoint a command will read into the recipe's model, and the option that gave it: ``--ckpt_path``
    (``last`` already resolved to its file), or ``evaluate.aligned`` when that is a checkpoint, not an export."""
    if subcommand != "evaluate":
        return kwargs.get("ckpt_path"), "--ckpt_path"
    path = getattr(kwargs.get("evaluation"), "aligned", None)
    if path and os.path.isdir(path) and not os.path.exists(os.path.join(path, INDEX)):
        return None, "evaluate.aligned"  # an export folder (save_pretrained), not a checkpoint
    return path, "evaluate.aligned"


def check_same_recipe(subcommand: str, ckpt_path: str, given_model: dict | None, weights_only: bool | None,
                      option: str = "--ckpt_path") -> None:
    """Refuse a checkpoint another model, objective or reference wrote (see recipe_match): resumed, it would
    continue another run; read by any other command, it would not fit the recipe's model, or fit it wrongly."""
    try:
        stored = stored_hyperparameters(ckpt_path, weights_only)
    except CheckpointError as error:
        fail(str(error))
    if not stored or not given_model:
        return
    differences = recipe_differences(stored, given_model)
    if not differences:
        return
    if subcommand == "fit":
        why = ("Resuming continues that run, so its model, objective and reference must stay as they were: start"
               " a fresh run (without --ckpt_path), or set these back (--model.init_args...) to the checkpoint's"
               " values")
    else:
        why = (f"{subcommand} reads it into the recipe's model: give the recipe that wrote it (the run's"
               " config.yaml), or set these back (--model.init_args...) to the checkpoint's values")
    fail(f"{option} {ckpt_path} was written by a different recipe: {'; '.join(differences)}. {why}")


__all__ = ["CKPT_KEYWORDS", "check_same_recipe", "checkpoint_read", "is_file_name", "resume_path"]
