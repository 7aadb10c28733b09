"""Importing what a command runs, when it runs it.

A package that re-exports its modules' names loads each module on first use (:func:`lazy_exports`, PEP 562), so
``from alignsuite.backbones import CausalLM`` does not import the diffusion and speech backbones' libraries. The
libraries of one modality or of evaluation come with a pip extra (:data:`EXTRAS`); code that imports one does so
under :func:`optional`, which turns a missing library into an error naming the extra that installs it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

# extra -> the import names of the libraries it installs (pyproject.toml's optional-dependencies).
EXTRAS: dict[str, tuple[str, ...]] = {
    "diffusion": ("diffusers",),
    "speech": ("soundfile", "scipy", "diffusers"),  # diffusers: the flow-matching TTS model is a diffusers model
    "vision": ("torchvision",),  # transformers' torchvision image and video processors (Qwen2-VL ...)
    "eval": ("open_clip", "timm"),  # HPSv2 and the LAION aesthetic predictor
}


class MissingExtra(ModuleNotFoundError):
    """An optional library is not installed; the message names the pip extra that installs it."""


@contextlib.contextmanager
def optional(extra: str, purpose: str) -> Iterator[None]:
    """Run the imports inside for ``purpose``; a library of ``extra`` that is missing becomes a :class:`MissingExtra`
    that says what needs it and ``pip install "alignsuite[<extra>]"``. Any other import error passes unchanged."""
    try:
        yield
    except ModuleNotFoundError as error:
        library = (error.name or "").partition(".")[0]
        if library not in EXTRAS[extra]:
            raise
        raise MissingExtra(
            f"{purpose} needs {library}, which is not installed: pip install \"alignsuite[{extra}]\"", name=error.name
        ) from error


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) for the names its submodules define.

    ``exports`` maps each public name to the submodule (relative to ``package``) that defines it; the submodule is
    imported when the name is first read, and the name is kept on the package from then on.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


__all__ = ["EXTRAS", "MissingExtra", "lazy_exports", "optional"]
