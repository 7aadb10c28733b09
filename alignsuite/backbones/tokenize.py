"""Tokenising prompt/completion rows for token backbones: chat templates, their roles and tools, truncation.

Plain text: the prompt is tokenised with the tokenizer's special tokens (a bos first, or a lone bos for an
empty prompt), the completion without them and closed with eos. Chat messages: the template renders the
prompt with the generation prompt, and the completion is what rendering prompt + answer adds after it;
a row's ``tools`` (JSON-schema dicts) go to the template with both renders. Each list of rows is
tokenised in one tokenizer call.

Chat messages must use the roles the template handles (:func:`template_roles`): a template that prints the
role verbatim would otherwise train on a typo such as ``usr``.

Truncation rule (:func:`truncate`): the prompt keeps its last ``max_prompt_length`` tokens (the context
nearest the answer; a leading bos stays first), then the completion keeps its first
``max_length - len(prompt)`` tokens. :func:`identical_pairs` finds the pairs this rule makes identical,
tokenising only those whose texts share a long enough start (:func:`may_be_identical`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from alignsuite.data.errors import DataError, row_origin
from alignsuite.data.messages import chat_columns, first_unknown_role

Text = str | list[dict]  # plain text, or chat messages
Ids = list[int]

# Roles every chat template is asked to render by the data layouts (a tool's result is "tool").
STANDARD_ROLES = frozenset({"system", "user", "assistant", "tool"})
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_LITERAL = re.compile(rf"""(['"])({_NAME})\1""")
# A literal used as a subscript key (message['content'], message["role"]) names a field, not a role.
_KEY = re.compile(rf"""[\w\])]\s*\[\s*(['"])({_NAME})\1\s*\]""")


def read_chat_template(value: str) -> str:
    """``value`` itself when it is a Jinja template, else the text of the file it names (a ``.jinja``)."""
    if "{{" in value or "{%" in value:
        return value
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone.chat_template {value!r} is neither a Jinja template (it has no '{{{{' or '{{%') nor an"
            " existing file"
        )
    with open(path, encoding="utf-8") as f:
        return f.read()


def template_source(tokenizer) -> str | None:
    """The tokenizer's chat template as one string (all of them, for a tokenizer with named templates)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(template.values()) or None
    return template or None


@functools.lru_cache(maxsize=16)
def template_roles(template: str) -> frozenset[str]:
    """The roles ``template`` handles: the standard four, and every identifier-like string literal of its
    source that is not only ever a subscript key (``'ipython'``, ``'developer'``, Gemma's ``'model'`` ...).

    Templates that print ``message['role']`` verbatim render any role, so a typo would be trained on as
    text; this is the set a role must belong to.
    """
    literals = Counter(m.group(2) for m in _LITERAL.finditer(template))
    keys = Counter(m.group(2) for m in _KEY.finditer(template))
    return STANDARD_ROLES | {name for name, n in literals.items() if n > keys[name]}


def check_roles(messages: list[dict], roles: frozenset[str], row: int | None) -> None:
    for message in messages:
        role = message.get("role")
        if role not in roles:
            where = f"dataset row {row}" if row is not None else "a chat row"
            raise ValueError(
                f"{where} has a message with role {role!r}, which the tokenizer's chat template does not handle;"
                f" the roles it accepts: {', '.join(sorted(roles))}"
            )


def check_data_roles(datamodule: Any, tokenizer: Callable[[], Any]) -> None:
    """Refuse, at setup, a train or val row with a chat message whose role the chat template does not handle,
    naming its file, row and field; ``tokenizer()`` gives the tokenizer, asked for only when the data is chat."""
    for split in ("train", "val"):
        rows = getattr(datamodule, f"{split}_set", None)
        if rows is None or not chat_columns(rows):
            continue
        roles = template_roles(chat_template_of(tokenizer()))
        found = first_unknown_role(rows, roles)
        if found is not None:
            position, column, role = found
            source, row = row_origin(rows, position)
            raise DataError(source, row, column, f"a role the tokenizer's chat template handles ({', '.join(sorted(roles))})",
                            role)


def chat_template_of(tokenizer) -> str:
    """The template chat rows render with, or an error that names the option to set."""
    source = template_source(tokenizer)
    if source is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"chat rows need a chat template, and the tokenizer {name!r} has none (a base model's, usually); set"
            " backbone.chat_template to a Jinja template or to the path of a .jinja file"
        )
    return source


def render_prompt(tokenizer, prompt: list[dict], tools: list[dict] | None = None, row: int | None = None) -> str:
    """The chat prompt as text, up to and including the generation prompt; roles checked first."""
    check_roles(prompt, template_roles(chat_template_of(tokenizer)), row)
    return tokenizer.apply_chat_template(prompt, tools=tools or None, tokenize=False, add_generation_prompt=True)


def render_chat(tokenizer, prompt: list[dict], completion: list[dict], tools: list[dict] | None = None,
                row: int | None = None, prompt_text: str | None = None) -> tuple[str, str]:
    """``(prompt text, completion text)``: the completion is what rendering prompt + answer adds
    (``prompt_text``: the prompt already rendered)."""
    check_roles(completion, template_roles(chat_template_of(tokenizer)), row)
    if prompt_text is None:
        prompt_text = render_prompt(tokenizer, prompt, tools, row)
    full_text = tokenizer.apply_chat_template(prompt + completion, tools=tools or None, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "the tokenizer's chat template renders the prompt differently once an answer follows, so the"
            " prompt cannot be masked out of the loss; give a template that keeps history unchanged"
        )
    return prompt_text, full_text[len(prompt_text):]


def encode_rows(tokenizer, prompts: list[Text], completions: list[Text], tools: list | None = None,
                rows: list[int] | None = None) -> list[tuple[Ids, Ids]]:
    """``(prompt ids, completion ids)`` of each row, untruncated; one tokenizer call per list of texts."""
    n = len(prompts)
    tools = tools if tools is not None else [None] * n
    rows = rows if rows is not None else [None] * n
    prompt_texts, completion_texts, chat = [], [], []
    rendered: dict[str, str] = {}  # a chat prompt (with its tools) is rendered once, however many rows share it
    for p, c, t, r in zip(prompts, completions, tools, rows):
        is_chat = isinstance(p, list)
        if is_chat != isinstance(c, list):
            raise ValueError("prompt and completion must both be chat messages, or both text")
        if is_chat:
            key = _json_key((p, t))
            if key not in rendered:
                rendered[key] = render_prompt(tokenizer, p, t, r)
            p, c = render_chat(tokenizer, p, c, t, r, rendered[key])
        prompt_texts.append(p)
        completion_texts.append(c)
        chat.append(is_chat)
    # Plain-text prompts get the tokenizer's special tokens (bos); chat templates write their own. A prompt
    # shared by several rows (a pair's chosen and rejected) is tokenised once.
    text_rows = [i for i in range(n) if not chat[i] and prompt_texts[i]]
    chat_rows = [i for i in range(n) if chat[i]]
    prompt_ids: list[Ids] = [[] for _ in range(n)]
    for index, special in ((text_rows, True), (chat_rows, False)):
        if index:
            unique = list(dict.fromkeys(prompt_texts[i] for i in index))
            ids = dict(zip(unique, tokenizer(unique, add_special_tokens=special)["input_ids"]))
            for i in index:
                prompt_ids[i] = list(ids[prompt_texts[i]])
    completion_ids = [list(ids) for ids in tokenizer(completion_texts, add_special_tokens=False)["input_ids"]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for i in range(n):
        if not chat[i]:
            if not prompt_ids[i] and bos is not None:
                prompt_ids[i] = [bos]
            if eos is not None:
                completion_ids[i].append(eos)
    return list(zip(prompt_ids, completion_ids))


def completion_texts(tokenizer, prompts: list[Text], completions: list[list[Text]], tools: list | None = None,
                     rows: list[int] | None = None) -> list[list[str]]:
    """For each list of completions, each one as the tokenizer gets it: plain text as is, chat messages as
    the text the template adds after the prompt (rendered once per row)."""
    n = len(prompts)
    tools = tools if tools is not None else [None] * n
    rows = rows if rows is not None else [None] * n
    out = [[] for _ in completions]
    for i, (p, t, r) in enumerate(zip(prompts, tools, rows)):
        prompt_text = render_prompt(tokenizer, p, t, r) if isinstance(p, list) else None
        for texts, column in zip(out, completions):
            c = column[i]
            if isinstance(c, list) != isinstance(p, list):
                raise ValueError("prompt and completion must both be chat messages, or both text")
            texts.append(render_chat(tokenizer, p, c, t, r, prompt_text)[1] if prompt_text is not None else c)
    return out


def token_text(tokenizer, text: str) -> str | None:
    """``text`` normalised and pre-tokenised as the tokenizer does before its model runs, the pieces joined;
    ``None`` for a tokenizer without a fast backend. Every token covers at least one of its characters."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is not None:
        text = "".join(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    return text


# `may_be_identical` works on as little text as it can, so it allows for what it cannot see: the last
# characters of a cut text may normalise or pre-tokenise differently from the whole text's (_MARGIN), and
# the tokenizer cuts out added tokens such as <|im_end|> before normalising (_SLACK).
_MARGIN, _SLACK = 16, 8


def _common_start(tokenizer, a: str, b: str, enough: int) -> int | None:
    """How many characters ``a`` and ``b`` share at their start as the model sees them (:func:`token_text`),
    or at least ``enough``; ``None`` when they are the same. Only text around where they part is read."""
    window = 64
    d = len(os.path.commonprefix([a, b]))
    while True:
        end = d + window
        ta, tb = token_text(tokenizer, a[:end]), token_text(tokenizer, b[:end])
        k = len(os.path.commonprefix([ta, tb]))
        if end >= max(len(a), len(b)):  # the whole texts: exact
            return None if ta == tb else k
        if k >= enough or k < min(len(ta), len(tb)) - _MARGIN:  # enough, or parted before the cut's reach
            return k
        window *= 4


def may_be_identical(tokenizer, chosen: list[str], rejected: list[str], min_tokens: int) -> list[bool]:
    """A cheap, conservative filter before tokenising pairs: ``False`` only where the two completion texts
    cannot give the same first ``min_tokens`` token ids, nor the same ids altogether.

    Equal token ids are equal token strings, so the texts as the model sees them (:func:`token_text`) then
    share a start of at least one character per token; pairs whose texts part earlier are different.
    """
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # no fast backend to look with
        return [True] * len(chosen)
    out = []
    for c, r in zip(chosen, rejected):
        common = None if c == r else _common_start(tokenizer, c, r, min_tokens)
        out.append(common is None or common + _SLACK >= min_tokens)
    return out


def identical_pairs(tokenizer, encode, ds, collate=None, min_tokens: int = 0, chunk: int = 4096) -> list[int]:
    """Positions of the pairs of ``ds`` (a ``datasets.Dataset`` of prompt/chosen/rejected) whose chosen and
    rejected token ids are equal once ``encode(prompts, completions, batch)`` has tokenised and truncated them.

    ``collate`` turns stored rows into the batch a backbone sees (messages decoded ...). Only the pairs that
    :func:`may_be_identical` keeps are encoded: every answer keeps at least ``min_tokens`` tokens
    (``max_length - max_prompt_length``), so pairs whose texts part before that are different.
    """
    columns = [c for c in ("prompt", "chosen", "rejected", "tools", "index") if c in ds.column_names]
    ds = ds.select_columns(columns)
    same = []
    for start in range(0, len(ds), chunk):
        part = ds[start : start + chunk]
        if collate is not None:
            part = collate([dict(zip(part, values)) for values in zip(*part.values())])
        tools, index = batch_rows(part, len(part["prompt"]))
        chosen, rejected = completion_texts(tokenizer, part["prompt"], [part["chosen"], part["rejected"]], tools, index)
        rows = [i for i, maybe in enumerate(may_be_identical(tokenizer, chosen, rejected, min_tokens)) if maybe]
        if rows:
            sub = {k: [v[i] for i in rows] for k, v in part.items()}
            pairs = zip(encode(sub["prompt"], sub["chosen"], sub), encode(sub["prompt"], sub["rejected"], sub))
            same += [start + i for i, (c, r) in zip(rows, pairs) if c == r]
    return same


def truncate(prompt_ids: Ids, completion_ids: Ids, max_length: int, max_prompt_length: int,
             bos: int | None) -> tuple[Ids, Ids, bool, bool]:
    """The truncation rule; returns the kept ids and whether the prompt and the completion were cut."""
    cut_prompt = len(prompt_ids) > max_prompt_length
    if cut_prompt:
        if bos is not None and prompt_ids[0] == bos:  # models trained with a leading bos expect one
            prompt_ids = [bos] + prompt_ids[len(prompt_ids) - max_prompt_length + 1:]
        else:
            prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    cut_completion = len(completion_ids) > room
    if cut_completion:
        completion_ids = completion_ids[:room]
    return prompt_ids, completion_ids, cut_prompt, cut_completion


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def encoding_key(prompt: Text, completion: Text, tools: Any = None) -> tuple:
    """What a row's ``(prompt ids, completion ids)`` depend on, as a dict key: plain texts as they are (their
    tools are never rendered), chat messages and their tools as JSON."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    return _json_key(prompt), _json_key(completion), _json_key(tools)


ENCODED = "_encoded_rows"  # the batch key under which RowEncoder leaves its rows


class EncodedRows:
    """Rows tokenised when their batch was collated, by :func:`encoding_key`. Not a mapping or a sequence,
    so that Lightning moves the batch to the device without walking every token id."""

    __slots__ = ("rows",)

    def __init__(self, rows: dict[tuple, tuple[Ids, Ids]]) -> None:
        self.rows = rows

    def encode(self, tokenizer, prompts: list[Text], completions: list[Text], tools: list | None = None,
               rows: list[int] | None = None) -> list[tuple[Ids, Ids]]:
        """:func:`encode_rows` of these rows: the ones tokenised at collate looked up, the others tokenised now."""
        tools = tools if tools is not None else [None] * len(prompts)
        found = [self.rows.get(encoding_key(p, c, t)) for p, c, t in zip(prompts, completions, tools)]
        missing = [i for i, row in enumerate(found) if row is None]
        if missing:
            fresh = encode_rows(tokenizer, [prompts[i] for i in missing], [completions[i] for i in missing],
                                [tools[i] for i in missing], [rows[i] for i in missing] if rows is not None else None)
            for i, row in zip(missing, fresh):
                found[i] = row
        return [(list(p), list(c)) for p, c in found]  # copies: truncation and packing must not edit the cache


class RowEncoder:
    """Tokenises a collated batch for the views that read its columns, so that the DataLoader does it (in its
    worker processes when ``data.num_workers > 0``) instead of the training step: ``batch[ENCODED]`` gets the
    untruncated rows. The step looks each row up by its text and tokenises what it does not find (sampled
    completions, a view a subclass changed), so the result is the same either way. A row that fails to
    tokenise leaves the batch as it was: the step then raises the error, naming the row."""

    def __init__(self, tokenizer, views: list) -> None:
        self.tokenizer = tokenizer
        self.views = [v for v in views if not v.sampled and v.condition is None]

    def __call__(self, batch: dict) -> dict:
        prompts = batch.get("prompt")
        if not prompts:
            return batch
        n = len(prompts)
        tools, index = batch_rows(batch, n)
        todo: dict[tuple, tuple] = {}
        for view in self.views:
            if view.source not in batch or (view.prompt_column or "prompt") not in batch:  # a predict batch: prompts only
                continue
            completions = view.completions(batch)
            for i, (p, c) in enumerate(zip(view.prompts(batch), completions)):
                t = tools[i] if tools is not None else None
                todo.setdefault(encoding_key(p, c, t), (p, c, t, index[i] if index is not None else None))
        if not todo:
            return batch
        p, c, t, r = (list(column) for column in zip(*todo.values()))
        try:
            encoded = encode_rows(self.tokenizer, p, c, t, r if index is not None else None)
        except Exception:  # noqa: BLE001 - the step tokenises these rows again and raises with its context
            return batch
        batch[ENCODED] = EncodedRows(dict(zip(todo, encoded)))
        return batch


def batch_rows(batch: dict[str, Any], n: int) -> tuple[list | None, list[int] | None]:
    """A batch's ``tools`` (one entry per row) and row ``index`` values, when it has them."""
    tools = batch.get("tools")
    tools = list(tools) if tools is not None and len(tools) == n else None
    index = batch.get("index")
    index = [int(i) for i in index] if index is not None and len(index) == n else None
    return tools, index


__all__ = [
    "ENCODED",
    "STANDARD_ROLES",
    "EncodedRows",
    "RowEncoder",
    "batch_rows",
    "chat_template_of",
    "check_data_roles",
    "check_roles",
    "completion_texts",
    "encode_rows",
    "encoding_key",
    "identical_pairs",
    "may_be_identical",
    "read_chat_template",
    "render_chat",
    "render_prompt",
    "template_roles",
    "template_source",
    "token_text",
    "truncate",
]
