"""Turn the text preference layouts found in the wild into one canonical row.

Canonical pair: ``{"prompt": P, "chosen": C, "rejected": R}``, plus ``"tools"`` (the row's tool
schemas as JSON text, or ``None``) when the data has a tools column. Either all three are ``str``
(plain text), or all three are chat message lists (`alignsuite.data.messages`) where ``prompt`` is the
conversation up to the answer and ``chosen``/``rejected`` hold only the answer's turn(s), the first of
them an assistant turn. Canonical unpaired row (KTO): ``{"prompt": P, "completion": C, "label": bool}``
with the same text/chat rule. Backbones read nothing else, so every dataset quirk is settled here, once.

Layouts recognised for pairs, in this order (column names are `alignsuite.data.fields.PairFields`):
- a ``prompt`` column: text, or messages (TRL conversational), with ``chosen``/``rejected`` as text,
  the assistant message(s), or the whole conversation (UltraFeedback-binarized: the prompt messages
  are then removed from their front). A text prompt beside message answers becomes one user message.
  An empty (or None) prompt is allowed.
- LLaMA-Factory ShareGPT: ``conversations`` (``{from, value}`` messages), ``chosen``/``rejected`` one
  message each (or a list), optional ``system`` (a system message first) and ``tools``.
- LLaMA-Factory alpaca: ``instruction``, optional ``input`` (a non-empty one joins the instruction as
  ``instruction + "\\n" + input``, as LLaMA-Factory builds its query), optional ``system`` and
  ``history`` (``[[query, answer], ...]`` earlier turns), ``chosen``/``rejected`` text. The prompt is
  chat messages, since LLaMA-Factory renders these rows through the model's chat template.
- no prompt column, ``chosen``/``rejected`` whole conversations (UltraFeedback-binarized, TRL's
  implicit prompt): the prompt is their shared leading messages.
- HH-RLHF: no prompt column, ``chosen``/``rejected`` transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``;
  the prompt is their common prefix cut back to just after its last ``"\\n\\nAssistant:"``, so
  ``prompt + chosen`` is the original chosen text. Only for such transcripts: two answers that merely
  start alike (``"It is red"``/``"It is blue"``) share no prompt, and without a prompt column they are
  an error naming the columns found, never a prompt guessed from their common start.

Rows with images (an ``image``/``images`` value, or message content parts that are images: RLAIF-V,
TRL's vision-language layout) are an error pointing at `alignsuite.data.VisionPairs`: training on
their text alone would drop the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from alignsuite.data.errors import DataError
from alignsuite.data.fields import PairFields, UnpairedFields
from alignsuite.data.llama_factory import alpaca_prompt, sharegpt_prompt
from alignsuite.data.messages import (
    Messages,
    blank,
    has_image_part,
    normalize_messages,
    normalize_tools,
    part_types,
    vision_error,
)

_HH_MARKER = "\n\nAssistant:"
_EXPECT_COMPLETION = "non-empty text or a list of chat messages"
VISION_COLUMNS = ("image", "images")
_PAIR_FIELDS, _UNPAIRED_FIELDS = PairFields(), UnpairedFields()  # the usual names; frozen, so one shared default


# --- checks on single values -------------------------------------------------------------------


def _get(row: dict, field: str, index: int, source: str) -> object:
    if field not in row:
        raise DataError(source, index, field, f"a column named {field!r}; the row has columns {sorted(row)}")
    return row[field]


def check_text_only(row: dict, index: int, source: str) -> None:
    """Refuse a row that carries an image: a text layout would silently train on its text alone. Looked
    for before any field is read, so that the error is about the image, wherever it is."""
    for column in VISION_COLUMNS:
        if row.get(column) not in (None, "", []):
            raise vision_error(source, index, column, f"the row has an {column!r} value (RLAIF-V or TRL vision-language data)")
    for column, value in row.items():
        value = [value] if isinstance(value, dict) else value
        if not (isinstance(value, list) and value and isinstance(value[0], dict)):
            continue  # not messages (text, numbers, token ids): nothing to look into
        for m in value:
            if isinstance(m, dict) and has_image_part(m):
                raise vision_error(source, index, column, f"a {m.get('role')} message has content parts {part_types(m['content'])}")


def _completion(value: object, field: str, index: int, source: str) -> str | Messages:
    """A chosen/rejected/completion value: non-blank text, or messages (a single ShareGPT message
    dict counts as a list of one) with some non-blank content."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        msgs = normalize_messages(value, field, index, source)
        if not blank(msgs):
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
        return normalize_messages(value, field, index, source)
    raise DataError(source, index, field, "text or a list of chat messages", value)


# --- splitting a shared prefix off ----------------------------------------------------------------


def _is_transcript(value: object) -> bool:
    return isinstance(value, str) and _HH_MARKER in value


def _split_transcripts(chosen: str, rejected: str, fields: PairFields, index: int, source: str) -> tuple[str, str, str]:
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(_HH_MARKER)
    if cut < 0:
        raise DataError(source, index, fields.chosen,
                        f"HH-RLHF transcripts that share the conversation up to a {_HH_MARKER!r} turn", chosen)
    cut += len(_HH_MARKER)
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
    if not msgs or blank(msgs):
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


def _missing_prompt(row: dict, fields: PairFields, index: int, source: str) -> DataError:
    return DataError(
        source, index, fields.prompt,
        f"a column named {fields.prompt!r}; the row has columns {sorted(row)}",
        problem="without a prompt column, chosen/rejected must be HH-RLHF transcripts ('\\n\\nHuman: ... "
        "\\n\\nAssistant: ...') or whole chat conversations; if the prompt has another name, set prompt_field",
    )


# --- public ------------------------------------------------------------------------------------


def normalize_pair(row: dict, index: int, source: str, fields: PairFields = _PAIR_FIELDS) -> dict | None:
    """Canonical pair of one row (module docstring), or ``None`` if chosen equals rejected (the caller
    counts and reports those: they carry no preference).

    Raises ``DataError`` naming ``source``, ``index`` and the field for a missing column, a blank
    chosen/rejected (or one whose answer part is empty), a malformed message, a prompt that is neither
    text nor messages, or an image in the row.
    """
    check_text_only(row, index, source)
    raw_chosen = _get(row, fields.chosen, index, source)
    raw_rejected = _get(row, fields.rejected, index, source)
    chosen = _completion(raw_chosen, fields.chosen, index, source)
    rejected = _completion(raw_rejected, fields.rejected, index, source)
    if chosen == rejected:
        return None
    if fields.prompt in row:
        prompt = _prompt(row[fields.prompt], fields.prompt, index, source)
    elif fields.conversations in row:
        prompt = sharegpt_prompt(row, fields, index, source)
    elif fields.instruction in row:
        prompt = alpaca_prompt(row, fields, index, source)
    elif isinstance(chosen, list) and isinstance(rejected, list) and _is_conversation(chosen) and _is_conversation(rejected):
        prompt = []  # the conversations' shared start is the prompt (_chat_pair)
    elif _is_transcript(chosen) and _is_transcript(rejected):
        p, c, r = _split_transcripts(chosen, rejected, fields, index, source)
        for field, value in ((fields.chosen, c), (fields.rejected, r)):
            if not value.strip():
                raise DataError(source, index, field, "a non-empty answer after the shared prompt", value)
        return None if c == r else {"prompt": p, "chosen": c, "rejected": r, **_tools(row, fields.tools, index, source)}
    else:
        raise _missing_prompt(row, fields, index, source)

    if any(isinstance(v, list) for v in (prompt, chosen, rejected)):
        out = _chat_pair(prompt, chosen, rejected, (raw_chosen, raw_rejected), fields, index, source)
    else:
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if out["chosen"] == out["rejected"]:
        return None
    return {**out, **_tools(row, fields.tools, index, source)}


def _tools(row: dict, field: str, index: int, source: str) -> dict:
    # Only data with a tools column gets the key, so plain data keeps its plain columns.
    return {"tools": normalize_tools(row[field], field, index, source)} if field in row else {}


def _label(value: object, field: str, index: int, source: str) -> bool:
    if isinstance(value, bool):
        return value
    # 0/1 ints and floats are how most KTO files store the label; anything else is ambiguous.
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise DataError(source, index, field, "a boolean label (true/false or 0/1)", value)


def normalize_unpaired(row: dict, index: int, source: str, fields: UnpairedFields = _UNPAIRED_FIELDS) -> dict:
    """Canonical ``{"prompt", "completion", "label"}`` (and ``"tools"``) of one KTO row.

    ``label`` is a bool, or 0/1 as int or float. Chat rules as for pairs: a message-list prompt with a
    string completion wraps the completion as one assistant message; a completion that repeats the
    prompt messages has them removed; a completion that is a whole conversation is split before its
    trailing assistant turns; a text prompt with a message completion becomes one user message.
    """
    check_text_only(row, index, source)
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
    return {"prompt": prompt, "completion": completion, "label": label, **_tools(row, fields.tools, index, source)}


def pair_extras(row: dict, canon: dict, index: int, source: str, answers: dict[str, str] | None = None,
                prompts: dict[str, str] | None = None, numbers: dict[str, str] | None = None) -> dict:
    """Further columns of a canonical pair, each ``{stored column: data field}``: ``answers`` (a third answer,
    TPO's gold) read like chosen, ``prompts`` (a second prompt, JPO's rejected side) read like the prompt, and
    ``numbers`` (a reward per side, a soft preference) as floats. In a chat pair a text value becomes one message
    (an answer: assistant; a prompt: user), and an answer that repeats the prompt messages has them removed.

    Raises ``DataError`` naming ``source``, ``index`` and the field for a missing column, a blank answer, a value
    whose kind (text or messages) differs from the pair's, or a number that is not finite.
    """
    chat, out = isinstance(canon["chosen"], list), {}
    for column, field in (answers or {}).items():
        value = _completion(_get(row, field, index, source), field, index, source)
        if chat:
            value = _strip_prompt(_as_messages(value), canon["prompt"])
            _check_answer(value, field, index, source, row[field])
        elif isinstance(value, list):
            raise DataError(source, index, field, "plain text like the pair's answers", row[field])
        out[column] = value
    for column, field in (prompts or {}).items():
        value = _prompt(_get(row, field, index, source), field, index, source)
        if chat:
            value = _prompt_messages(value)
        elif isinstance(value, list):
            raise DataError(source, index, field, "plain text like the pair's prompt", row[field])
        out[column] = value
    for column, field in (numbers or {}).items():
        value = _get(row, field, index, source)
        if not isinstance(value, (int, float)) or not math.isfinite(value):  # a bool counts as 1 or 0
            raise DataError(source, index, field, "a finite number", value)
        out[column] = float(value)
    return out


def pairs_to_unpaired(rows: Iterable[dict]) -> list[dict]:
    """Canonical pairs -> canonical unpaired rows, so a pair dataset can train KTO: each pair gives
    ``(prompt, chosen, True)`` then ``(prompt, rejected, False)`` (each with the pair's tools)."""
    out = []
    for row in rows:
        extra = {"tools": row["tools"]} if "tools" in row else {}
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True, **extra})
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False, **extra})
    return out
