"""The one generation path: a backbone's ``generate`` over many rows, in chunks, with seeds that make a run
repeatable. Validation callbacks, ``evaluate`` and pair building all generate through it.

What conditions generation besides the prompt is the backbone's to say: each backbone declares its
``generation_columns`` (a vision-language model's ``images``, a TTS model's ``prompt_speech`` and
``prompt_text``), and a column goes to ``generate`` as one list per chunk when a row of the chunk has it
(``None`` for the rows without).
No caller names a modality's columns.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def conditions(rows: Sequence[dict], columns: Sequence[str]) -> dict[str, list]:
    """``{column: [row.get(column) for row in rows]}`` for each of ``columns`` that some row holds: ``None`` for
    a row without it, which a backbone reads as no condition (no input image, no speaker prompt, no given
    duration)."""
    return {c: [r.get(c) for r in rows] for c in columns if any(c in r for r in rows)}


def batch_conditions(batch: dict, columns: Sequence[str]) -> dict[str, Any]:
    """The columns of a collated batch (a dict of lists) that condition generation."""
    return {c: batch[c] for c in columns if c in batch}


def row_conditions(rows: Sequence[dict], backbone) -> list | None:
    """Each row's input images (``[]`` for a row without) for a backbone that declares an ``image_column``, for
    the judges and the report; else ``None``."""
    column = getattr(backbone, "image_column", None)
    return None if column is None else [r.get(column) or [] for r in rows]


def chunk_seed(seed: int | None, index: int, start: int, seed_step: str) -> int | None:
    """The seed of the chunk ``index`` starting at row ``start``: ``seed + index`` (``chunk``) or ``seed + start``
    (``offset``); ``None`` stays ``None`` (greedy decoding for token models)."""
    if seed is None:
        return None
    if seed_step not in ("chunk", "offset"):
        raise ValueError(f"seed_step is 'chunk' or 'offset', got {seed_step!r}")
    return seed + (index if seed_step == "chunk" else start)


def generate_chunked(generate: Callable, rows: Sequence[dict], batch_size: int, seed: int | None = None,
                     columns: Sequence[str] = (), generation_kwargs: dict | None = None, prompt_key: str = "prompt",
                     seed_step: str = "chunk", errors: list[str] | None = None) -> list:
    """One output per row: ``generate(prompts, seed=..., **conditions, **generation_kwargs)`` on ``batch_size``
    rows at a time (see :func:`chunk_seed`).

    With ``errors`` (a list), a chunk that fails is retried one row at a time with the same seed, and a row
    that still fails gives ``None`` and a message appended to ``errors`` (one bad prompt must not end an
    evaluation); without it, a failure is raised."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    kwargs = dict(generation_kwargs or {})
    outputs: list = []

    def call(chunk, chunk_seed_):
        seeded = {} if chunk_seed_ is None else {"seed": chunk_seed_}  # None is every backbone's default
        return list(generate([r[prompt_key] for r in chunk], **seeded, **conditions(chunk, columns), **kwargs))

    for index, start in enumerate(range(0, len(rows), batch_size)):
        chunk = list(rows[start : start + batch_size])
        this_seed = chunk_seed(seed, index, start, seed_step)
        try:
            outputs += call(chunk, this_seed)
            continue
        except Exception:  # noqa: BLE001 - retried row by row below, when failures are counted
            if errors is None:
                raise
        for i, row in enumerate(chunk):
            try:
                outputs += call([row], this_seed)
            except Exception as error:  # noqa: BLE001 - counted, not fatal
                outputs.append(None)
                errors.append(f"prompt {start + i}: {type(error).__name__}: {error}")
    return outputs


def generate_rewrites(generate: Callable, rows: Sequence[dict], rewrites: dict[str, dict[str, str]], batch_size: int,
                      seed: int | None = None, columns: Sequence[str] = (), generation_kwargs: dict | None = None,
                      prompt_key: str = "prompt", seed_step: str = "chunk") -> list[dict]:
    """``rows``, each with the output of every rewrite under the rewrite's name: for ``{name: {column: source}}``
    the same prompts generated again with the row's ``source`` in place of ``column`` (a judge's
    counterfactual, such as the toy vision-language world's swapped image; :attr:`alignsuite.judging.Scorer.rewrites`)."""
    out = [dict(r) for r in rows]
    for name, mapping in rewrites.items():
        moved = [{**r, **{column: r[source] for column, source in mapping.items()}} for r in rows]
        columns_ = tuple(columns) + tuple(c for c in mapping if c not in columns)
        outputs = generate_chunked(generate, moved, batch_size, seed, columns_, generation_kwargs, prompt_key, seed_step)
        for row, output in zip(out, outputs):
            row[name] = output
    return out


__all__ = ["batch_conditions", "chunk_seed", "conditions", "generate_chunked", "generate_rewrites", "row_conditions"]
