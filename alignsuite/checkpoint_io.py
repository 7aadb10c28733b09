"""Checkpoints written atomically, never with non-finite weights, and read without running pickled code."""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
import warnings
import zipfile

import torch
import torch.distributed.checkpoint.metadata as dcp_metadata
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.distributed.checkpoint import FileSystemReader

TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".ckpt"  # this writer's temporary files: .tmp-XXXXXXXX.ckpt
INDEX, META = ".metadata", "meta.pt"  # a sharded checkpoint folder's shard index (torch) and the rest (Lightning)


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


# What a distributed checkpoint's index pickles: torch's metadata records, sizes, dtypes and layouts, and paths.
INDEX_GLOBALS = {
    *((dcp_metadata.__name__, name) for name, value in vars(dcp_metadata).items()
      if isinstance(value, type) and value.__module__ == dcp_metadata.__name__),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    *(("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
}


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles only :data:`INDEX_GLOBALS`; any other global (a function to call) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in INDEX_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_index(path) -> dcp_metadata.Metadata:
    """A distributed checkpoint's index file (``.metadata``), unpickled with nothing but its record types:
    torch's own reader calls ``pickle.load``, which runs whatever a planted object asks for. Refused (a
    :class:`CheckpointError` naming the file) when it holds anything else or cannot be read."""
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f).load()
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to read this sharded checkpoint's index: it holds pickled objects that could run code"
            f" when loaded ({error}); a sharded checkpoint's {INDEX} holds only torch.distributed.checkpoint records"
        ) from error
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise CheckpointError(f"{path}: cannot read this sharded checkpoint's index, it is truncated or corrupt"
                              f" ({type(error).__name__}: {error})") from error
    if not isinstance(index, dcp_metadata.Metadata):
        raise CheckpointError(f"{path}: not a sharded checkpoint's index (it holds a {type(index).__name__})")
    return index


class SafeFileSystemReader(FileSystemReader):
    """torch's reader of a checkpoint folder, whose index is read by :func:`read_index`, never ``pickle.load``."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        index = read_index(self._get_metadata_path(kwargs.get("rank")))
        if getattr(index, "storage_meta", None) is None:  # as torch's own reader does
            index.storage_meta = dcp_metadata.StorageMeta()
        index.storage_meta.load_id = self.load_id
        return index


def check_shards(folder) -> dcp_metadata.Metadata:
    """The index of the distributed checkpoint ``folder``, once it is known that it holds nothing but checkpoint
    records (:func:`read_index`) and that every shard file it points to is inside the folder and long enough.
    Each failure is a :class:`CheckpointError` that names the folder and the file."""
    folder = str(folder)
    index_path = os.path.join(folder, INDEX)
    if not os.path.isfile(index_path):
        raise CheckpointError(f"{folder}: not a complete sharded checkpoint: its index {INDEX} is missing")
    index = read_index(index_path)
    needed: dict[str, int] = {}
    for info in (index.storage_data or {}).values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    root = os.path.realpath(folder)
    for name, size in sorted(needed.items()):
        path = os.path.realpath(os.path.join(root, name))
        if os.path.dirname(path) != root:
            raise CheckpointError(f"{folder}: its index points outside the folder ({name}); refused")
        if not os.path.isfile(path):
            raise CheckpointError(f"{folder}: shard file {name} is missing")
        if os.path.getsize(path) < size:
            raise CheckpointError(f"{folder}: shard file {name} is cut short ({os.path.getsize(path)} bytes, its"
                                  f" index needs {size})")
    return index


def check_sharded_checkpoint(folder, weights_only: bool | None = None) -> dict:
    """Check a sharded checkpoint folder (what ModelParallelStrategy writes) before anything reads its shards
    (:func:`check_shards`), and return its ``meta.pt``: the step, callbacks and hyper-parameters. Every command
    that reads such a folder, and the strategy that resumes from one, starts here."""
    check_shards(folder)
    meta = os.path.join(str(folder), META)
    if not os.path.isfile(meta):
        raise CheckpointError(f"{folder}: not a complete sharded checkpoint: {META} is missing")
    return load_checkpoint_file(meta, weights_only)


def sharded_weight_names(folder: str) -> set[str]:
    """The module weights a sharded checkpoint folder (ModelParallelStrategy's) holds, under the module's own
    names (its index keys them under ``state_dict.``), once the folder is checked (:func:`check_shards`)."""
    prefix = "state_dict."
    return {k[len(prefix):] for k in check_shards(folder).state_dict_metadata if k.startswith(prefix)}


def read_sharded_weights(folder: str, state_dict: dict) -> dict:
    """Fill ``state_dict`` (full tensors, e.g. an unsharded module's own) in place from the distributed
    checkpoint ``folder`` that ModelParallelStrategy writes, on one process; every key must be there. The
    folder's index is read by the safe reader, never unpickled as it stands."""
    import torch.distributed.checkpoint as dcp

    check_shards(folder)
    state = {"state_dict": state_dict}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=SafeFileSystemReader(folder), no_dist=True)
    except Exception as error:  # DCP wraps every failure, per rank, in a CheckpointException
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{folder}: cannot read this sharded checkpoint into the recipe's model ({reason})") from error
    return state["state_dict"]


def read_checkpoint(path, weights_only: bool | None = None, mmap: bool = False) -> dict:
    """A checkpoint file (:func:`load_checkpoint_file`), or a sharded checkpoint folder's ``meta.pt`` once the
    folder is checked (:func:`check_sharded_checkpoint`): everything but a folder's weights and optimizer states."""
    if os.path.isdir(path):
        return check_sharded_checkpoint(path, weights_only)
    return load_checkpoint_file(path, weights_only, mmap=mmap)


def first_non_finite(state_dict: dict) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity, or None."""
    for name, value in state_dict.items():
        if not torch.is_tensor(value) or not value.is_floating_point():
            continue
        local = value.to_local() if hasattr(value, "to_local") else value  # a DTensor shard
        if local.device.type != "meta" and not bool(torch.isfinite(local).all()):
            return name
    return None


def file_mode(folder: bool = False) -> int:
    """The mode ``open`` (or ``os.makedirs`` for a ``folder``) would give a new file: 0o666 (0o777) less the
    process umask. Not safe while another thread creates files: read it once, up front."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def give_ordinary_modes(root: str) -> None:
    """Every file and folder under ``root`` (and ``root``) with the mode the umask gives a new one: writers that
    go through a temporary file (transformers' weight shards, ``mkdtemp``) leave them owner-only."""
    files, folders = file_mode(), file_mode(folder=True)
    os.chmod(root, folders)
    for parent, dirs, names in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), folders)
        for name in names:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, files)


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
        self.file_mode = file_mode()

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


BACKBONE = "backbone."  # the prefix of the policy's weights in a PreferenceModule checkpoint


def backbone_weights(state_dict: dict) -> dict:
    """A module checkpoint's backbone entries, keyed as the backbone's own state dict."""
    return {k[len(BACKBONE):]: v for k, v in state_dict.items() if k.startswith(BACKBONE)}


def load_backbone_weights(module, weights: dict) -> tuple[list[str], list[str]]:
    """``weights`` loaded into ``module`` (a backbone, or a reference's model): ``(missing, unexpected)`` keys,
    leaving out the parts a backbone rebuilds from their source (its ``not_checkpointed``)."""
    missing, unexpected = module.load_state_dict(weights, strict=False)
    rebuilt = tuple(getattr(module, "not_checkpointed", ()) or ())
    return [k for k in missing if not (rebuilt and k.startswith(rebuilt))], list(unexpected)

