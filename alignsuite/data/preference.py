"""Turn the preference layouts found in the wild into one canonical row.

Canonical pair: ``{"prompt": P, "chosen": C, "rejected": R}``. Either all three are ``str`` (plain
text), or all three are chat message lists ``[{"role": ..., "content": ...}, ...]`` where ``prompt``
is the conversation up to the answer and ``chosen``/``rejected`` hold only the answer's turn(s), the
first of them an assistant turn. Canonical unpaired row (KTO): ``{"prompt": P, "completion": C,
"label": bool}`` with the same text/chat rule. Backbones read nothing else, so every dataset quirk is
settled here, once.

Layouts recognised for pairs:
- text: ``prompt``, ``chosen``, ``rejected`` strings. An empty (or None) prompt is allowed.
- HH-RLHF: no prompt column; ``chosen``/``rejected`` are whole transcripts
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The prompt is their longest common prefix cut back to just
  after its last ``"\\n\\nAssistant:"`` (without that marker: cut back to its last whitespace, which
  goes to the completions), so ``prompt + chosen`` is the original chosen text.
- UltraFeedback-binarized: ``prompt`` a string, ``chosen``/``rejected`` whole conversations (the first
  message not the assistant's). The prompt is their shared leading messages; the rest are the
  completions. No prompt column works the same way.
- TRL conversational: ``prompt`` a message list, ``chosen``/``rejected`` the assistant message(s), or
  each a single assistant string (wrapped as one assistant message). Completions that repeat the
  prompt messages in front have them removed.
- a text prompt with assistant-only message completions: the prompt becomes one user message.

Messages keep only ``role`` and ``content``; both must be strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from alignsuite.data.errors import DataError

Messages = list[dict[str, str]]

_HH_MARKER = "\n\nAssistant:"
_EXPECT_COMPLETION = "non-empty text or a list of chat messages"


@dataclass(frozen=True)
class PairFields:
    """Column names of a pair dataset, for datasets that do not use the usual ones."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass(frozen=True)
class UnpairedFields:
    """Column names of an unpaired (KTO) dataset."""

    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"


# --- checks on single values -------------------------------------------------------------------


def _get(row: dict, field: str, index: int, source: str) -> object:
    if field not in row:
        raise DataError(source, index, field, f"a column named {field!r}; the row has columns {sorted(row)}")
    return row[field]


def _messages(value: list, field: str, index: int, source: str) -> Messages:
    out = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(source, index, field, "chat messages that are dicts with string 'role' and 'content'", m)
        # Only role and content: other keys (tool calls, names) would differ between rows and break the
        # Arrow schema, and no backbone reads them.
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _blank(value: str | Messages) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() for m in value)


def _completion(value: object, field: str, index: int, source: str) -> str | Messages:
    """A chosen/rejected/completion value: non-blank text, or messages with some non-blank content."""
    if isinstance(value, list):
        msgs = _messages(value, field, index, source)
        if not _blank(msgs):
            return msgs
    elif isinstance(value, str) and value.strip():
        return value
    raise DataError(source, index, field, _EXPECT_COMPLETION, value)


def _prompt(value: object, field: str, index: int, source: str) -> str | Messages:
    # Some text datasets have no prompt at all (the instruction lives in the completion), so empty or
    # missing values are allowed; a number or a dict is a broken column, not an empty prompt.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, field, index, source)
    raise DataError(source, index, field, "text or a list of chat messages", value)


# --- splitting a shared prefix off ----------------------------------------------------------------


def _split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(_HH_MARKER)
    if cut >= 0:
        cut += len(_HH_MARKER)
    else:
        # The common prefix may run into the answers ("The answer is 4" / "The answer is 5"); cut back
        # to a word boundary, leaving the space with the completion as tokenizers expect.
        cut = max(shared.rfind(c) for c in " \t\n")
        cut = max(cut, 0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _is_conversation(msgs: Messages) -> bool:
    # A completion starts with the assistant; a message list that does not is a whole conversation.
    return bool(msgs) and msgs[0]["role"] != "assistant"


def _as_messages(value: str | Messages) -> Messages:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def _prompt_messages(prompt: str | Messages) -> Messages:
    # A text prompt beside message completions is the user's turn; an empty one is no turn at all.
    if isinstance(prompt, list):
        return prompt
    return [{"role": "user", "content": prompt}] if prompt.strip() else []


def _strip_prompt(msgs: Messages, prompt: Messages) -> Messages:
    return msgs[len(prompt) :] if prompt and msgs[: len(prompt)] == prompt else msgs


def _check_answer(msgs: Messages, field: str, index: int, source: str, original: object) -> None:
    if not msgs or _blank(msgs):
        raise DataError(source, index, field, "a non-empty answer after the prompt messages", original)
    if msgs[0]["role"] != "assistant":
        raise DataError(source, index, field, "the answer to start with an assistant message", msgs[0])


def _chat_pair(prompt, chosen, rejected, raw, fields: PairFields, index: int, source: str) -> dict:
    c, r = _as_messages(chosen), _as_messages(rejected)
    if isinstance(prompt, list) and prompt:
        p = prompt
        c, r = _strip_prompt(c, p), _strip_prompt(r, p)
    elif _is_conversation(c) and _is_conversation(r):
        # UltraFeedback-binarized: both sides are the whole conversation; the shared part is the prompt.
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        p, c, r = c[:n], c[n:], r[n:]
    else:
        p = _prompt_messages(prompt)
    _check_answer(c, fields.chosen, index, source, raw[0])
    _check_answer(r, fields.rejected, index, source, raw[1])
    return {"prompt": p, "chosen": c, "rejected": r}


# --- public ------------------------------------------------------------------------------------


def normalize_pair(row: dict, index: int, source: str, fields: PairFields = PairFields()) -> dict | None:
    """Canonical ``{"prompt", "chosen", "rejected"}`` of one pair row, or ``None`` if chosen equals
    rejected (the caller counts and reports those: they carry no preference).

    Raises ``DataError`` naming ``source``, ``index`` and the field for a missing column, a blank
    chosen/rejected (or one whose answer part is empty), a malformed message, or a prompt that is
    neither text nor messages.
    """
    raw_chosen = _get(row, fields.chosen, index, source)
    raw_rejected = _get(row, fields.rejected, index, source)
    chosen = _completion(raw_chosen, fields.chosen, index, source)
    rejected = _completion(raw_rejected, fields.rejected, index, source)
    if chosen == rejected:
        return None
    has_prompt = fields.prompt in row
    prompt = _prompt(row.get(fields.prompt), fields.prompt, index, source)

    if any(isinstance(v, list) for v in (prompt, chosen, rejected)):
        out = _chat_pair(prompt, chosen, rejected, (raw_chosen, raw_rejected), fields, index, source)
    elif has_prompt:
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    else:
        p, c, r = _split_transcripts(chosen, rejected)
        for field, value in ((fields.chosen, c), (fields.rejected, r)):
            if not value.strip():
                raise DataError(source, index, field, "a non-empty answer after the shared prompt", value)
        out = {"prompt": p, "chosen": c, "rejected": r}
    return None if out["chosen"] == out["rejected"] else out


def _label(value: object, field: str, index: int, source: str) -> bool:
    if isinstance(value, bool):
        return value
    # 0/1 ints and floats are how most KTO files store the label; anything else is ambiguous.
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise DataError(source, index, field, "a boolean label (true/false or 0/1)", value)


def normalize_unpaired(row: dict, index: int, source: str, fields: UnpairedFields = UnpairedFields()) -> dict:
    """Canonical ``{"prompt", "completion", "label"}`` of one KTO row.

    ``label`` is a bool, or 0/1 as int or float. Chat rules as for pairs: a message-list prompt with a
    string completion wraps the completion as one assistant message; a completion that repeats the
    prompt messages has them removed; a completion that is a whole conversation is split before its
    trailing assistant turns; a text prompt with a message completion becomes one user message.
    """
    raw = _get(row, fields.completion, index, source)
    completion = _completion(raw, fields.completion, index, source)
    prompt = _prompt(_get(row, fields.prompt, index, source), fields.prompt, index, source)
    label = _label(_get(row, fields.label, index, source), fields.label, index, source)

    if isinstance(prompt, list) or isinstance(completion, list):
        c = _as_messages(completion)
        if isinstance(prompt, list) and prompt:
            p, c = prompt, _strip_prompt(c, prompt)
        elif _is_conversation(c):
            # One conversation and no second side to compare with: the answer is its last assistant run.
            n = len(c)
            while n > 0 and c[n - 1]["role"] == "assistant":
                n -= 1
            p, c = c[:n], c[n:]
        else:
            p = _prompt_messages(prompt)
        _check_answer(c, fields.completion, index, source, raw)
        prompt, completion = p, c
    return {"prompt": prompt, "completion": completion, "label": label}


def pairs_to_unpaired(rows: Iterable[dict]) -> list[dict]:
    """Canonical pairs -> canonical unpaired rows, so a pair dataset can train KTO: each pair gives
    ``(prompt, chosen, True)`` then ``(prompt, rejected, False)``."""
    out = []
    for row in rows:
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return out
