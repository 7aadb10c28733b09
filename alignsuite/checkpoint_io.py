"""Checkpoints written atomically, never with non-finite weights, and read without running pickled code."""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
import warnings
import zipfile

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".ckpt"  # this writer's temporary files: .tmp-XXXXXXXX.ckpt


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or that is refused; the message names the file."""


def load_checkpoint_file(path: str, weights_only: bool | None = None, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True`` unless the caller explicitly passes ``False``.

    A pickled object could run code while it is loaded, so anything but tensors and plain containers is
    refused. A truncated or corrupt file is an error that names it.
    """
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only is not False, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), str(error))
        raise CheckpointError(
            f"{path}: refused to load this checkpoint: it holds pickled objects that could run code when"
            f" loaded ({refused}). Only tensors and plain containers are read; if you trust the file's"
            " source, pass --weights_only false"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path}: cannot read this checkpoint, it is truncated or corrupt"
            f" ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def first_non_finite(state_dict: dict) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity, or None."""
    for name, value in state_dict.items():
        if not torch.is_tensor(value) or not value.is_floating_point():
            continue
        local = value.to_local() if hasattr(value, "to_local") else value  # a DTensor shard
        if local.device.type != "meta" and not bool(torch.isfinite(local).all()):
            return name
    return None


def _file_mode() -> int:
    """The mode ``open`` would give a new file: 0o666 less the process umask."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return 0o666 & ~mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, then rename it over the target in one step.

    A checkpoint whose weights hold a NaN or an infinity is not written: the previous file stays, and a
    warning names the step and the parameter. Files are created with the usual permissions (the process
    umask applied), and temporary files left by a save that was killed are removed at the next save.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_written: tuple[str, int] | None = None  # (path, global step) of the last finite checkpoint
        # Read once, here on the main thread: the umask round trip is not safe while an async save runs.
        self.file_mode = _file_mode()

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = str(path)
        if "://" in path and not path.startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: their own semantics
        path = os.path.abspath(path.removeprefix("file://"))
        step = checkpoint.get("global_step")
        bad = first_non_finite(checkpoint.get("state_dict") or {})
        if bad is not None:
            self.refuse(path, step, bad)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(folder), f"{TMP_PREFIX}*{TMP_SUFFIX}")):
            try:  # left by a save that was killed; saves from one writer never overlap
                os.remove(stale)
            except FileNotFoundError:
                pass
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, self.file_mode)  # mkstemp makes it owner-only; a checkpoint is an ordinary file
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self.last_written = (path, step)

    def refuse(self, path: str, step: int | None, bad: str) -> None:
        """Warn that the checkpoint ``path`` is not written because parameter ``bad`` is not finite."""
        kept = f"; {self.last_written[0]} (global step {self.last_written[1]}) is kept" if self.last_written else ""
        warnings.warn(f"not writing checkpoint {path} at global step {step}: parameter {bad!r} holds NaN or infinite"
                      f" values{kept}", RuntimeWarning, stacklevel=3)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location, weights_only)
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        return load_checkpoint_file(str(path).removeprefix("file://"), weights_only, map_location=location)


def atomic_io(strategy) -> AtomicCheckpointIO | None:
    """The strategy's AtomicCheckpointIO (AsyncCheckpointIO wraps it), if it has one."""
    io = getattr(strategy, "checkpoint_io", None)
    while io is not None and not isinstance(io, AtomicCheckpointIO):
        io = getattr(io, "checkpoint_io", None)
    return io


def last_checkpoint_note(trainer) -> str:
    """One sentence naming the last checkpoint this run wrote with finite weights, or saying there is none.

    Known on the process that writes checkpoints (global rank 0).
    """
    io = atomic_io(trainer.strategy)
    if io is None or io.last_written is None:
        return "No checkpoint with finite weights was written by this run."
    path, step = io.last_written
    return f"The last checkpoint written with finite weights is {path} (global step {step})."
