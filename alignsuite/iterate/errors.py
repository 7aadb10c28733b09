"""The loop's one error type, below every other module of the package."""

from __future__ import annotations


class IterateError(ValueError):
    """A setting or a round's state the loop cannot run with (reported on the command line in one line)."""


__all__ = ["IterateError"]
