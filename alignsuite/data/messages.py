"""Chat messages as the text layouts keep them, from the shapes found in the wild.

A canonical message is ``{"role": str, "content": str}``, plus, only when the data has them,
``tool_calls`` (the assistant's calls, a list of dicts as chat templates read them), ``name`` and
``tool_call_id`` (a tool result's). Accepted on the way in:

- ``{"role", "content"}`` messages (TRL, OpenAI). An assistant message with ``tool_calls`` may have no
  content (it becomes ``""``). Other keys (``weight``, ``loss`` ...) are dropped: no backbone reads them.
- ShareGPT ``{"from", "value"}`` messages (LLaMA-Factory). ``from`` maps ``human``/``user`` -> user,
  ``gpt``/``assistant`` -> assistant, ``system`` -> system, ``observation``/``tool`` -> tool (a tool's
  result) and ``function_call`` -> an assistant message whose ``value`` is the JSON call
  (``{"name": ..., "arguments": ...}`` or a list of them), kept as
  ``tool_calls: [{"type": "function", "function": {"name": ..., "arguments": ...}}]``.

A content that is a list of ``{"type": "image"}``/``{"type": "text"}`` parts is TRL's vision-language
layout; the text layouts refuse it (`vision_error`, pointing at `alignsuite.data.VisionPairs`) rather than
train on the text alone.

Arrow holds one schema per column, and tool-call arguments differ from row to row, so in a dataset
``tool_calls`` is stored as JSON text and ``tools`` (the row's tool schemas) likewise; `for_arrow` and
`from_arrow` convert, the latter at collate, and also drop the ``None`` that Arrow gives a message
for a key that only other messages of the column have.

Messages as plain text, for whatever shows or judges them rather than tokenizing them (a scorer's prompt,
a report, a samples table): `content_text`, `prompt_text` and `messages_text`, the one renderer every
such consumer calls. A tokenizer's chat template is the backbones' business, not this.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from alignsuite.data.errors import DataError

Message = dict
Messages = list[Message]

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "observation": "tool", "tool": "tool", "function_call": "assistant",
}
_OPTIONAL = ("tool_calls", "name", "tool_call_id")
MESSAGE_COLUMNS = ("prompt", "chosen", "rejected", "completion")  # the stored columns that may hold messages
_EXPECT_MESSAGE = "chat messages that are dicts with string 'role' and 'content'"
VISION_HINT = "vision-language pairs are read by the layout alignsuite.data.VisionPairs"


def vision_error(source: str, index: int, field: str, what: str) -> DataError:
    return DataError(source, index, field, "text-only rows", problem=f"{what}; {VISION_HINT}")


def normalize_messages(value: list, field: str, index: int, source: str) -> Messages:
    """Canonical messages of a list of ``{role, content}`` or ``{from, value}`` dicts."""
    return [_message(m, field, index, source) for m in value]


def _message(m: object, field: str, index: int, source: str) -> Message:
    if isinstance(m, dict) and "from" in m and "role" not in m:
        return _sharegpt(m, field, index, source)
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise DataError(source, index, field, _EXPECT_MESSAGE, m)
    content, tool_calls = m.get("content"), m.get("tool_calls")
    if has_image_part(m):
        raise vision_error(source, index, field, f"a {m['role']} message has content parts {part_types(content)}")
    if tool_calls is not None:
        _check_tool_calls(tool_calls, field, index, source)
        content = "" if content is None else content
    if not isinstance(content, str):
        raise DataError(source, index, field, _EXPECT_MESSAGE, m)
    out = {"role": m["role"], "content": content}
    if tool_calls:
        out["tool_calls"] = tool_calls
    for key in ("name", "tool_call_id"):
        if isinstance(m.get(key), str):
            out[key] = m[key]
    return out


def has_image_part(m: dict) -> bool:
    """Whether a message's content is a parts list with a part that is not text (an image, audio ...)."""
    content = m.get("content")
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") != "text" for p in content)


def part_types(parts: list) -> list:
    return [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in parts]


def _check_tool_calls(calls: object, field: str, index: int, source: str) -> None:
    if not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise DataError(source, index, field, "'tool_calls' as a list of dicts", calls)


def _sharegpt(m: dict, field: str, index: int, source: str) -> Message:
    sender, value = m.get("from"), m.get("value")
    if sender not in SHAREGPT_ROLES:
        raise DataError(source, index, field, f"a ShareGPT 'from' among {sorted(SHAREGPT_ROLES)}", sender)
    if not isinstance(value, str):
        raise DataError(source, index, field, "a ShareGPT message with a string 'value'", m)
    if sender != "function_call":
        return {"role": SHAREGPT_ROLES[sender], "content": value}
    try:
        calls = json.loads(value)
    except json.JSONDecodeError:
        calls = None
    calls = [calls] if isinstance(calls, dict) else calls
    if not (isinstance(calls, list) and calls and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls)):
        raise DataError(source, index, field, 'a function_call value that is JSON {"name": ..., "arguments": ...} (or a list of them)', value)
    tool_calls = [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in calls]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def content_text(content: str | list | None, placeholders: bool = False) -> str:
    """A message's content as text: a string as is; of a parts list, the text parts joined by spaces, and
    with ``placeholders`` every other part shown as ``<its type>`` (``<image>``), left out without."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(
        part.get("text", "") if part.get("type") == "text" else f"<{part.get('type', 'part')}>"
        for part in content
        if isinstance(part, dict) and (placeholders or part.get("type") == "text")
    )


def prompt_text(prompt: str | Messages, placeholders: bool = False) -> str:
    """A prompt's text: itself, or the content text of the last user message of chat messages (what the
    user asked, without the system prompt or earlier turns)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return content_text(message.get("content"), placeholders)
    raise ValueError(f"prompt has no user message: {prompt!r}")


def messages_text(value: object, roles: bool = False, placeholders: bool = False) -> str:
    """Text as is; chat messages as one text: each message's content text joined by spaces, or with ``roles``
    a transcript of ``role: text`` lines. Anything else as ``str`` gives it."""
    if isinstance(value, str):
        return value
    if not (isinstance(value, list) and all(isinstance(m, dict) for m in value)):
        return str(value)
    if roles:
        return "\n".join(f"{m.get('role', '?')}: {content_text(m.get('content'), placeholders)}" for m in value)
    return " ".join(content_text(m.get("content"), placeholders) for m in value)


def blank(value: str | Messages) -> bool:
    """Whether text or messages say nothing: blank text, or no message with content or a tool call."""
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() or m.get("tool_calls") for m in value)


def chat_columns(rows) -> list[str]:
    """The columns of stored rows (a dataset) that hold chat messages: lists of ``{role, content ...}``."""

    def messages(feature) -> bool:
        inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
        return isinstance(inner, dict) and "role" in inner

    return [c for c in MESSAGE_COLUMNS if c in rows.column_names and messages(rows.features[c])]


def first_unknown_role(rows, roles: Collection[str], chunk: int = 65536) -> tuple[int, str, str] | None:
    """``(position, column, role)`` of the first stored row (a dataset) with a chat message whose role is not in
    ``roles``; ``None`` when every role is. Read as Arrow, ``chunk`` rows at a time, without building messages."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = chat_columns(rows)
    allowed = pa.array(sorted(roles), pa.string())
    table = rows.select_columns(columns).with_format("arrow")
    for start in range(0, len(rows) if columns else 0, chunk):
        part, found = table[start : start + chunk], []
        for column in columns:
            lists = part.column(column).combine_chunks()
            role = pc.struct_field(pc.list_flatten(lists), "role")
            bad = pc.indices_nonzero(pc.invert(pc.fill_null(pc.is_in(role, value_set=allowed), False)))
            if len(bad):
                first = bad[0].as_py()
                found.append((pc.list_parent_indices(lists)[first].as_py(), column, role[first].as_py()))
        if found:
            position, column, role = min(found, key=lambda f: f[0])
            return start + position, column, role
    return None


def normalize_tools(value: object, field: str, index: int, source: str) -> str | None:
    """A row's tool schemas (a list of dicts, or its JSON text as LLaMA-Factory stores it) as JSON
    text for Arrow; ``None`` when the row has none."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(source, index, field, "tool schemas: a list of dicts, or its JSON text", value) from None
    if isinstance(value, dict):
        value = [value]
    if not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        raise DataError(source, index, field, "tool schemas: a list of dicts, or its JSON text", value)
    return json.dumps(value) if value else None


def for_arrow(value: object) -> object:
    """Messages with ``tool_calls`` as JSON text (anything else unchanged)."""
    if not isinstance(value, list):
        return value
    return [dict(m, tool_calls=json.dumps(m["tool_calls"])) if "tool_calls" in m else m for m in value]


def from_arrow(value: object) -> object:
    """Inverse of `for_arrow`, also dropping the ``None`` Arrow fills in for keys a message lacked."""
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return value
    out = []
    for m in value:
        m = {k: v for k, v in m.items() if not (k in _OPTIONAL and v is None)}
        if isinstance(m.get("tool_calls"), str):
            m["tool_calls"] = json.loads(m["tool_calls"])
        out.append(m)
    return out
