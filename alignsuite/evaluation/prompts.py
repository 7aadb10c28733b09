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

A file that is not such rows is refused, naming the file, the line (or item) and the field
(:class:`PromptFileError`, a :class:`alignsuite.data.errors.DataError`): a prompt that is blank, or chat
messages of which one lacks a role or a content, and a table line with another number of fields than its header.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from alignsuite.data.errors import DataError
from alignsuite.data.loading import check_delimited
from alignsuite.data.messages import part_types
from alignsuite.data.protocol import preference_data


class PromptFileError(DataError):
    """A prompt file that cannot be read: names the file and, where it can, the line (or item) and field."""


_EXPECT_MESSAGES = ("chat messages, each a dict with a string 'role' and a 'content' that is text or a list of"
                    " parts with a 'type'")


def _message_problem(index: int, message: Any) -> str | None:
    """What is wrong with one chat message of a prompt (``None``: nothing)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        return f"message {index} has no string 'role'"
    content = message.get("content")
    parts_ok = isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content)
    if not (isinstance(content, str) or parts_ok):
        return f"message {index} has no text 'content'"
    return None


def _check_prompt(value: Any, path: str, field: str, **at: int) -> Any:
    """``value`` when it is a prompt: non-blank text, or chat messages that each have a role and a content.
    ``at`` is where it is: ``line=`` (1-based) or ``row=`` (0-based)."""
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(path, field=field, problem="empty prompt", **at)
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for i, message in enumerate(value):
            problem = _message_problem(i, message)
            if problem is not None:
                raise PromptFileError(path, field=field, expected=_EXPECT_MESSAGES, got=message, problem=problem, **at)
        return value
    raise PromptFileError(path, field=field, expected="text or a list of chat messages", got=value, **at)


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
                raise PromptFileError(path, line=number, problem=f"not JSON ({error.msg})") from None
            if not isinstance(row, dict) or column not in row:
                raise PromptFileError(path, line=number, problem=f"no {column!r} field (evaluate.prompt_column names it)")
            rows.append(dict(row, prompt=_check_prompt(row[column], path, column, line=number)))
    return rows


def _json(path: str, column: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise PromptFileError(path, line=error.lineno, problem=f"not JSON ({error.msg})") from None
    if not isinstance(data, list):
        raise PromptFileError(path, expected="a JSON list (of prompts, as HPSv2's benchmark files, or of rows)")
    rows = []
    for i, item in enumerate(data):
        if isinstance(item, dict):
            if column not in item:
                raise PromptFileError(path, row=i, problem=f"no {column!r} field (evaluate.prompt_column names it)")
            rows.append(dict(item, prompt=_check_prompt(item[column], path, column, row=i)))
        else:
            rows.append({"prompt": _check_prompt(item, path, None, row=i)})
    return rows


def _delimited(path: str, column: str, delimiter: str) -> list[dict]:
    check_delimited(path, delimiter)  # a line with an unquoted separator would be cut at it
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise PromptFileError(path, line=1, problem=f"no {column!r} column in the header {reader.fieldnames}"
                                  " (evaluate.prompt_column names it)")
        for row in reader:
            rows.append(dict(row, prompt=_check_prompt(row[column], path, column, line=reader.line_num)))
    return rows


def _parquet(path: str, column: str) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if column not in table.column_names:
        raise PromptFileError(path, problem=f"no {column!r} column; it has {table.column_names}")
    return [dict(row, prompt=_check_prompt(row[column], path, column, row=i)) for i, row in enumerate(table.to_pylist())]


def read_prompt_file(path: str, column: str | None = None) -> list[dict]:
    """The rows of a prompt file (see the module docstring); an empty file, a line that is not a prompt (a chat
    message without a role or a content), or a ``.csv``/``.tsv`` line with more or fewer fields than its header
    is refused naming the file and the line."""
    if not os.path.isfile(path):
        raise PromptFileError(path, problem="no such prompt file")
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
        raise PromptFileError(path, problem=f"unknown prompt file type {ext!r}; use .txt, .jsonl, .json, .tsv, .csv"
                              " or .parquet")
    if not rows:
        raise PromptFileError(path, problem="no prompts (the file is empty)")
    return rows


def check_images(rows: list[dict], column: str | None, source: str) -> None:
    """Refuse a row whose prompt has another number of image parts than the row has images in ``column``
    (a model that takes images; ``None``: one that does not): it would be answered without its image, or
    with an image it never sees."""
    if column is None:
        return
    for i, row in enumerate(rows):
        prompt, images = row["prompt"], row.get(column) or []
        parts = 0 if isinstance(prompt, str) else sum(
            part_types(m["content"]).count("image") for m in prompt if isinstance(m.get("content"), list))
        if parts != len(images):
            raise PromptFileError(source, row=i, field=column, expected=f"one image per image part of the prompt"
                                  f" ({parts})", got=len(images))


def check_columns(rows: list[dict], scorers: list, modality: str, source: str) -> None:
    """Refuse a prompt set with a row that lacks a column one of ``scorers`` reads for a model of ``modality``
    (:meth:`alignsuite.judging.Scorer.columns`), before anything is generated for it."""
    for scorer in scorers:
        for column, what in scorer.columns(modality).items():
            missing = next((i for i, row in enumerate(rows) if row.get(column) in (None, "")), None)
            if missing is not None:
                raise PromptFileError(source, row=missing, field=column, expected=what,
                                      problem=f"the row has {sorted(rows[missing])}")


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


__all__ = ["PromptFileError", "check_columns", "check_images", "heldout_prompts", "load_prompts", "read_prompt_file"]
