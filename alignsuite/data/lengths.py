"""How long a row's text is: what ``group_by_length`` sorts the rows of a training window by."""

from __future__ import annotations

import datasets


def text_length(value) -> int:
    """Characters of a text, of chat messages' contents, or of a list of either (k ranked responses)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return text_length(value.get("content", ""))
    if isinstance(value, list):
        return sum(text_length(v) for v in value)
    return 0


def _is_text(feature) -> bool:
    """A text column, or one of chat messages (or a list of either): the columns `row_lengths` reads."""
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("string", "large_string")
    if isinstance(feature, dict):
        return "content" in feature and _is_text(feature["content"])
    inner = getattr(feature, "feature", None)  # List, LargeList, Sequence
    return inner is not None and _is_text(inner)


def row_lengths(ds: datasets.Dataset) -> list[int]:
    """Each row's characters of prompt plus its longest answer column: the length `group_by_length` sorts by.
    Only text and chat columns are read; images, audio and token columns (never decoded here) count 0."""
    text = [c for c in ("prompt", "chosen", "rejected", "completion", "responses")
            if c in ds.column_names and _is_text(ds.features[c])]
    prompts = ds["prompt"] if "prompt" in text else [""] * len(ds)
    columns = [ds[c] for c in text if c != "prompt"]
    return [text_length(p) + max((text_length(col[i]) for col in columns), default=0) for i, p in enumerate(prompts)]


__all__ = ["row_lengths", "text_length"]
