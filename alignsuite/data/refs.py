"""Encoded media values (images, audio) as the data layer keeps them: ``{"bytes": bytes | None, "path": str | None}``.

Rows hold media encoded, never decoded, so a dataset costs its file size and decoding happens per batch.
"""

from __future__ import annotations

from pathlib import Path

from alignsuite.data.errors import DataError


def encoded_ref(value: object, kind: str, expected: str, field: str, index: int, source: str,
                base_dir: str | None = None) -> dict:
    """The ``{"bytes", "path"}`` of encoded bytes, a ``{"bytes", "path"}`` dict (bytes win when both are set)
    or a file path (made absolute against ``base_dir``; the file must exist; an http(s) URL is refused, as
    nothing is fetched). ``kind`` ("image", "audio")
    and ``expected`` word the ``DataError`` for anything else."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            return {"bytes": bytes(data), "path": path if isinstance(path, str) else None}
        value = path  # no bytes: the path is the media
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str) and value.strip().lower().startswith(("http://", "https://")):
        # Read as a path it would be "no file at <data folder>/https:/...": say what is wrong instead.
        raise DataError(source, index, field, f"an {kind} file path or encoded bytes", value,
                        problem=f"URLs are not fetched (no network while reading data); download the {kind}s and"
                        " give their paths")
    if isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise DataError(source, index, field, f"an {kind} file; there is no file at {str(path)!r}", value)
        return {"bytes": None, "path": str(path.resolve())}
    raise DataError(source, index, field, expected, value)
