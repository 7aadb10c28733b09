"""Prompt sets for ``evaluate``, from local files in the usual layouts, a toy world, or a preference
dataset's held-out split. Each prompt is a row: a dict with ``prompt`` (text, or chat messages) and, where
the set has them, ``images`` (a vision-language prompt's input images) and any other columns (a reference
transcript for WER, the toy vision-language world's ``answer``).

Sources (``evaluate.prompts``):

- ``file.txt``: one prompt per line (blank lines skipped);
- ``file.jsonl`` / ``.json`` / ``.parquet`` / ``.csv``: one row per prompt, the prompt in ``column``
  (``prompt`` by default); a ``.json`` file holding a list of strings is an HPSv2 benchmark file
  (``anime.json``, ``photo.json`` ...);
- ``file.tsv``: PartiPrompts (``PartiPrompts.tsv``: the prompt in the ``Prompt`` column);
- ``toy:<world>``: the toy world's evaluation prompts (drawn from ``seed``);
- ``heldout``: the prompts of the recipe's preference data's validation split (``data.val`` or
  ``data.val_fraction``).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from alignsuite.data.protocol import preference_data


class PromptFileError(ValueError):
    """A prompt file that cannot be read: names the file and, where it can, the line."""


def _check_prompt(value: Any, path: str, where: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(f"{path}: {where}: empty prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value  # chat messages
    raise PromptFileError(f"{path}: {where}: the prompt is {type(value).__name__} {value!r:.80}; expected text"
                          " or a list of chat messages")


def _txt(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append({"prompt": line.rstrip("\r\n")})
    return rows


def _jsonl(path: str, column: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{path}: line {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or column not in row:
                raise PromptFileError(f"{path}: line {number}: no {column!r} field (evaluate.prompt_column names it)")
            rows.append(dict(row, prompt=_check_prompt(row[column], path, f"line {number}")))
    return rows


def _json(path: str, column: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path}: line {error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(data, list):
        raise PromptFileError(f"{path}: expected a JSON list (of prompts, as HPSv2's benchmark files, or of rows)")
    rows = []
    for i, item in enumerate(data):
        where = f"item {i}"
        if isinstance(item, dict):
            if column not in item:
                raise PromptFileError(f"{path}: {where}: no {column!r} field (evaluate.prompt_column names it)")
            rows.append(dict(item, prompt=_check_prompt(item[column], path, where)))
        else:
            rows.append({"prompt": _check_prompt(item, path, where)})
    return rows


def _delimited(path: str, column: str, delimiter: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise PromptFileError(f"{path}: line 1: no {column!r} column in the header {reader.fieldnames}"
                                  " (evaluate.prompt_column names it)")
        for row in reader:
            value = row.get(column)
            if value is None:
                raise PromptFileError(f"{path}: line {reader.line_num}: too few fields, no {column!r}")
            rows.append(dict(row, prompt=_check_prompt(value, path, f"line {reader.line_num}")))
    return rows


def _parquet(path: str, column: str) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if column not in table.column_names:
        raise PromptFileError(f"{path}: no {column!r} column; it has {table.column_names}")
    return [dict(row, prompt=_check_prompt(row[column], path, f"row {i}")) for i, row in enumerate(table.to_pylist())]


def read_prompt_file(path: str, column: str | None = None) -> list[dict]:
    """The rows of a prompt file (see the module docstring); an empty file, or a line that is not a prompt,
    is refused naming the file and the line."""
    if not os.path.isfile(path):
        raise PromptFileError(f"{path}: no such prompt file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        rows = _txt(path)
    elif ext == ".jsonl":
        rows = _jsonl(path, column or "prompt")
    elif ext == ".json":
        rows = _json(path, column or "prompt")
    elif ext == ".tsv":
        rows = _delimited(path, column or "Prompt", "\t")  # PartiPrompts
    elif ext == ".csv":
        rows = _delimited(path, column or "prompt", ",")
    elif ext == ".parquet":
        rows = _parquet(path, column or "prompt")
    else:
        raise PromptFileError(f"{path}: unknown prompt file type {ext!r}; use .txt, .jsonl, .json, .tsv, .csv or .parquet")
    if not rows:
        raise PromptFileError(f"{path}: no prompts (the file is empty)")
    return rows


def heldout_prompts(datamodule) -> list[dict]:
    """The prompts of a preference datamodule's validation split, one row per pair, with its images."""
    if datamodule is None:
        raise ValueError("evaluate.prompts heldout needs the recipe's data section (a preference datamodule)")
    datamodule = preference_data(datamodule)
    datamodule.setup("validate")
    ds = datamodule.val_set
    if ds is None:
        raise ValueError("evaluate.prompts heldout: the data has no validation split; set data.val or data.val_fraction")
    column = next((c for c in ("prompt", "caption") if c in ds.column_names), None)
    if column is None:
        raise ValueError(f"evaluate.prompts heldout: the validation rows have no prompt column ({ds.column_names})")
    rows = []
    for row in ds:
        out = {"prompt": row[column]}
        for key in ("images", "image"):
            if key in row and row[key] is not None:
                out["images"] = row[key] if isinstance(row[key], list) else [row[key]]
                break
        rows.append(out)
    return rows


def load_prompts(source: str, num_prompts: int | None = None, seed: int = 0, column: str | None = None,
                 datamodule=None) -> list[dict]:
    """The first ``num_prompts`` rows (all when None) of ``source``: a file, ``toy:<world>`` or ``heldout``."""
    if source.startswith("toy:"):
        from alignsuite.toy import get_world

        items = get_world(source[len("toy:") :]).eval_prompts(num_prompts or 64, seed)
        rows = [dict(item) if isinstance(item, dict) else {"prompt": item} for item in items]
    elif source == "heldout":
        rows = heldout_prompts(datamodule)
    else:
        rows = read_prompt_file(source, column)
    return rows[:num_prompts] if num_prompts is not None else rows


__all__ = ["PromptFileError", "heldout_prompts", "load_prompts", "read_prompt_file"]
