"""Prompts of LLaMA-Factory's preference layouts, as chat messages.

LLaMA-Factory renders every row through the model's chat template, so these prompts are messages even
where the data is plain text (alpaca). ``fields`` is a `alignsuite.data.fields.PairFields`.

- alpaca: ``instruction`` and optional ``input``, joined by a newline as LLaMA-Factory builds its query
  (``"\n".join`` of the non-empty ones), as the last user turn; optional ``history``
  (``[[query, answer], ...]``) before it and ``system`` first.
- ShareGPT: ``conversations`` (``{from, value}`` messages, `alignsuite.data.messages`), with the
  optional ``system`` column first unless the conversation opens with a system message.
"""

from __future__ import annotations

from alignsuite.data.errors import DataError
from alignsuite.data.fields import PairFields
from alignsuite.data.messages import Messages, normalize_messages


def _text(row: dict, field: str, index: int, source: str) -> str:
    value = row.get(field)
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(source, index, field, "text", value)


def _system(row: dict, fields: PairFields, index: int, source: str) -> Messages:
    system = _text(row, fields.system, index, source)
    return [{"role": "system", "content": system}] if system.strip() else []


def alpaca_prompt(row: dict, fields: PairFields, index: int, source: str) -> Messages:
    query = "\n".join(t for t in (_text(row, f, index, source) for f in (fields.instruction, fields.input)) if t)
    if not query.strip():
        raise DataError(source, index, fields.instruction, "a non-empty instruction (alpaca layout)", row[fields.instruction])
    history = row.get(fields.history) or []
    turns = []
    for pair in history if isinstance(history, list) else [history]:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise DataError(source, index, fields.history, "a list of [query, answer] text pairs", history)
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return _system(row, fields, index, source) + turns + [{"role": "user", "content": query}]


def sharegpt_prompt(row: dict, fields: PairFields, index: int, source: str) -> Messages:
    value = row[fields.conversations]
    if not isinstance(value, list) or not value:
        raise DataError(source, index, fields.conversations, "a non-empty list of ShareGPT messages", value)
    msgs = normalize_messages(value, fields.conversations, index, source)
    return msgs if msgs[0]["role"] == "system" else _system(row, fields, index, source) + msgs
