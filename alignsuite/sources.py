"""Where a model comes from: a local folder, a hub id, or ``<scheme>:<name>`` (``toy:llm``).

A scheme is a row of :data:`SCHEMES`: its name and the dotted path of the function that turns ``<name>`` into a
folder. The function is imported by name when a path uses its scheme, so this module, on the ground floor, never
imports what sits above it (the toy worlds are built with the backbones that load through here).
"""

from __future__ import annotations

import os

from alignsuite.components import import_object

# scheme -> resolver(name) -> folder. Adding a scheme is adding a row.
SCHEMES: dict[str, str] = {
    "toy": "alignsuite.toy.worlds.resolve_toy_model",  # built on first use, see alignsuite.toy
}


def cache_root() -> str:
    """Where the suite keeps what it builds once and reuses (toy base models, data procedures' output):
    ``$ALIGNSUITE_CACHE``, by default ``~/.cache/alignsuite``."""
    return os.path.expanduser(os.environ.get("ALIGNSUITE_CACHE", "~/.cache/alignsuite"))


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, a hub id, or ``<scheme>:<name>`` resolved by the scheme's function in :data:`SCHEMES`."""
    scheme, colon, name = name_or_path.partition(":")
    if colon and scheme in SCHEMES:
        return import_object(SCHEMES[scheme])(name)
    looks_local = name_or_path.startswith((".", "/", "~")) or os.path.sep in name_or_path.strip("/").split("/", 1)[-1]
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist (expected a folder from save_pretrained)")
    return os.path.expanduser(name_or_path)


__all__ = ["SCHEMES", "cache_root", "resolve_model_path"]
