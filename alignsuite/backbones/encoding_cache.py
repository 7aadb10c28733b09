"""An on-disk cache of frozen encoders' outputs (VAE latent moments, text embeddings), keyed by content.

A cache lives in ``<root>/<fingerprint>/``: the fingerprint hashes everything that changes what an
input encodes to (the frozen encoders' weights, the resolution, the augmentation), so changing any of
them starts a fresh folder and never reads a stale entry. Inside, entries are keyed by a hash of their
input (the decoded image, the caption text) and stored in safetensors shards written atomically (a
temporary file renamed into place): a crash mid-write leaves the shards already there intact, and several
processes can fill one folder, each writing its own shards.

A shard says what it holds: its header records the cache format, the fingerprint of the folder it was
written for and the keys of its entries. A file that does not (another folder's shard copied in, an older
format, anything else dropped there) is ignored with a warning that names it, as is a tensor under a key
its shard does not list; a key two shards hold is read from the first indexed, so a file dropped in later
never replaces an entry already indexed. Shards are safetensors: reading one runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

SHARD_FORMAT = "alignsuite-encoding-cache/2"


def fingerprint(modules: dict[str, nn.Module], settings: dict) -> str:
    """A short hash of ``settings`` and of every parameter and buffer of ``modules`` (name, shape,
    dtype, and the sum and sum of squares of its values in float64): any change of weights,
    precision or setting changes it."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for prefix, module in sorted(modules.items()):
        for name, t in sorted(module.state_dict().items()):
            d = t.detach()
            if d.is_floating_point():
                total, squares = float(d.sum(dtype=torch.float64)), float(d.float().square().sum(dtype=torch.float64))
            else:
                total, squares = float(d.double().sum()), float(d.double().square().sum())
            h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}:{total!r}:{squares!r};".encode())
    return h.hexdigest()[:20]


def image_key(image) -> str:
    """A content hash of a decoded PIL image (mode, size and pixels): the same picture gives the same
    key whatever file or encoding it came from. xxh3 hashes a 1024 px RGB image in well under a millisecond."""
    import xxhash

    h = xxhash.xxh3_128(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class EncodingCache:
    """Entries ``key -> {name: tensor}`` under ``root/<fingerprint>``; ``put`` buffers, ``flush`` writes."""

    def __init__(self, root: str, fingerprint: str, description: dict, shard_size: int = 2048) -> None:
        self.fingerprint = fingerprint
        self.dir = os.path.join(root, fingerprint)
        os.makedirs(self.dir, exist_ok=True)
        about = os.path.join(self.dir, "fingerprint.json")
        if not os.path.exists(about):  # for people: what this folder was computed from
            tmp = f"{about}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w") as f:
                json.dump(description, f, indent=2, sort_keys=True)
            os.replace(tmp, about)
        self.shard_size = shard_size
        self.index: dict[str, tuple[str, list[str]]] = {}  # key -> (shard file, its tensors' names)
        self.pending: dict[str, dict[str, Tensor]] = {}
        self._open: dict[str, object] = {}
        self.ignored: dict[str, str] = {}  # shard file -> why it was not read
        self.hits = 0
        self.misses = 0
        self.rescan()

    def rescan(self) -> None:
        """Index every shard in the folder (other processes may have written some)."""
        from safetensors import safe_open

        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if not name.endswith(".safetensors") or path in self._open or path in self.ignored:
                continue
            try:
                handle = safe_open(path, framework="pt")
                keys = self._claimed_keys(handle.metadata() or {})
            except Exception as e:  # noqa: BLE001 - anything unreadable is ignored, not fatal
                self._ignore(path, f"it is not a readable shard ({e})")
                continue
            if isinstance(keys, str):
                self._ignore(path, keys)
                continue
            self._open[path] = handle
            entries: dict[str, list[str]] = {}
            stray = 0
            for tensor_name in handle.keys():
                key = tensor_name.split("/", 1)[0]
                if key in keys:
                    entries.setdefault(key, []).append(tensor_name)
                else:
                    stray += 1
            for key, names in entries.items():  # a key two shards hold (two processes encoded it): the first
                self.index.setdefault(key, (path, names))
            if stray:
                rank_zero_warn(f"encoding cache: {path}: ignored {stray} tensor(s) under keys its header does not list")

    def _claimed_keys(self, metadata: dict) -> set[str] | str:
        """The keys a shard's header lists, or why the shard is not one of this folder's."""
        if metadata.get("format") != SHARD_FORMAT:
            return f"its header does not say it is a {SHARD_FORMAT} shard (format {metadata.get('format')!r})"
        if metadata.get("fingerprint") != self.fingerprint:
            return f"it was written for the cache {metadata.get('fingerprint')!r}, not {self.fingerprint!r}"
        try:
            return set(json.loads(metadata.get("keys", "")))
        except ValueError:
            return "its header lists no keys"

    def _ignore(self, path: str, why: str) -> None:
        self.ignored[path] = why
        rank_zero_warn(f"encoding cache: ignoring {path}: {why}")

    def __contains__(self, key: str) -> bool:
        return key in self.index or key in self.pending

    def __len__(self) -> int:
        return len(self.index) + len(self.pending)

    def get(self, key: str) -> dict[str, Tensor] | None:
        """The entry, or None; counts a hit or a miss."""
        if key in self.pending:
            self.hits += 1
            return self.pending[key]
        found = self.index.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        path, names = found
        handle = self._open[path]
        return {n[len(key) + 1:]: handle.get_tensor(n) for n in names}

    def put(self, key: str, tensors: dict[str, Tensor]) -> None:
        self.pending[key] = {n: t.detach().cpu().contiguous() for n, t in tensors.items()}
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered entries as one new shard, atomically."""
        from safetensors.torch import save_file

        if not self.pending:
            return
        flat = {f"{key}/{name}": t for key, entry in self.pending.items() for name, t in entry.items()}
        header = {"format": SHARD_FORMAT, "fingerprint": self.fingerprint, "keys": json.dumps(sorted(self.pending))}
        path = os.path.join(self.dir, f"shard-{uuid.uuid4().hex}.safetensors")
        tmp = path + ".tmp"
        save_file(flat, tmp, metadata=header)
        os.replace(tmp, path)
        self.pending.clear()
        self.rescan()
