"""Text preference layouts: pairs (DPO and its family) and unpaired rows (KTO).

Rows are normalised by `alignsuite.data.preference` and stored with the provenance columns ``_source`` (the
file, or hub id) and ``_row`` (0-based within it), which name a row in errors and never reach a batch;
batches carry text or chat messages as python lists, ``label`` as a float tensor, and ``tools`` (when the data has a tools column) as one python list
of tool schemas per row, ``None`` for a row without.
"""

from __future__ import annotations

import json
from typing import Any

from alignsuite.data.errors import DataError
from alignsuite.data.fields import TIE_COLUMN, PairFields, UnpairedFields
from alignsuite.data.layouts.base import Layout
from alignsuite.data.messages import MESSAGE_COLUMNS, for_arrow, from_arrow
from alignsuite.data.preference import _get, normalize_pair, normalize_unpaired, pair_extras, pairs_to_unpaired


def _is_chat(row: dict) -> bool:
    return isinstance(row["prompt"], list) or isinstance(row.get("chosen", row.get("completion")), list)


def _stored(canon: dict, source: str, index: int) -> dict:
    # With where it came from (hidden, dropped at collate): a check at setup names the file and row.
    stored = {k: for_arrow(v) if k in MESSAGE_COLUMNS else v for k, v in canon.items()}
    return {**stored, "_source": source, "_row": index}


class _TextLayout(Layout):
    list_columns = frozenset({*MESSAGE_COLUMNS, "tools"})

    def check_row(self, canon: dict, first: dict, index: int, source: str) -> None:
        # Arrow needs one type per column, and a backbone one format per batch.
        if _is_chat(canon) != _is_chat(first):
            kind = "chat messages" if _is_chat(first) else "plain text"
            raise DataError(source, index, "prompt", f"{kind} like the rows before it", canon["prompt"])

    def decode(self, key: str, value: Any) -> Any:
        if key == "tools":
            return json.loads(value) if value else None
        return from_arrow(value)

    def _hint(self, row: dict, source: str, field: str) -> None:
        if "jpg_0" in row:
            raise DataError(source, 0, field, f"{self.name} rows; this looks like Pick-a-Pic image data:"
                            " use the layout alignsuite.data.ImagePairs")


class TextPairs(_TextLayout):
    """Text preference pairs: each row a prompt with a chosen and a rejected answer, as text or chat
    messages. Read as they come: ``prompt``/``chosen``/``rejected`` text or messages (TRL,
    UltraFeedback-binarized whole conversations), HH-RLHF transcripts with no prompt column,
    LLaMA-Factory alpaca (``instruction``/``input``) and ShareGPT (``conversations`` of ``{from,
    value}`` messages) preference rows, tool calls in assistant messages with a ``tools`` column.
    Rows whose chosen equals rejected are skipped, counted and reported; rows with images are refused
    (vision-language pairs: the layout `alignsuite.data.VisionPairs`). Details: `alignsuite.data.preference`.

    Args:
        prompt_field: column of the prompt: text, or chat messages up to the answer.
        chosen_field: column of the preferred answer: text, assistant message(s), or the whole conversation.
        rejected_field: column of the dispreferred answer, like ``chosen_field``.
        instruction_field: LLaMA-Factory alpaca rows (no prompt column): the instruction.
        input_field: LLaMA-Factory alpaca rows: optional input, joined to the instruction by a newline.
        conversations_field: LLaMA-Factory ShareGPT rows (no prompt column): the conversation so far.
        system_field: alpaca and ShareGPT rows: optional system prompt, put first as a system message.
        history_field: alpaca rows: optional earlier turns, a list of [query, answer] pairs.
        tools_field: optional tool schemas of the row (a list, or its JSON text), passed to the batch as ``tools``.
        answer_fields: further answers each row holds, ``{batch column: data field}``, read like ``chosen``
            (Triple Preference Optimisation's gold answer: ``{gold: reference}``).
        prompt_fields: further prompts each row holds, ``{batch column: data field}``, read like the prompt
            (JPO's rejected answer under its own instruction: ``{prompt_rejected: i_reject}``).
        number_fields: numbers each row holds, ``{batch column: data field}``, batched as floats (a reward per
            side: ``{reward_chosen: score_chosen, reward_rejected: score_rejected}``; a soft preference).
            The batch columns are the names objectives read (``gold``, ``prompt_rejected``, ``reward_chosen``
            ...); a row without the field is an error naming it.
        tie_field: optional column that marks tied pairs (true/false or 1/0: neither answer is preferred, as
            in TODO's ``irisxx/ultrafeedback_tied``). Unset, nothing is read from it (ties would train as
            preferences for the first answer); set, tied rows are dropped, counted and reported, unless
            ``tie_column``.
        tie_column: keep the tied rows of ``tie_field`` and give every row a ``tie`` column (1.0 for a tie, 0.0
            otherwise), for the objectives that read ties (``todo``); any other objective is refused such data at
            setup. Kept ties are counted per source in ``tied_rows``.
    """

    row_kind = "pairs"

    def __init__(
        self,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        instruction_field: str = "instruction",
        input_field: str = "input",
        conversations_field: str = "conversations",
        system_field: str = "system",
        history_field: str = "history",
        tools_field: str = "tools",
        answer_fields: dict[str, str] | None = None,
        prompt_fields: dict[str, str] | None = None,
        number_fields: dict[str, str] | None = None,
        tie_field: str | None = None,
        tie_column: bool = False,
    ) -> None:
        if tie_column and not tie_field:
            raise ValueError("TextPairs: tie_column needs tie_field, the column that says which rows are tied")
        self.tie_field, self.tie_column = tie_field, tie_column
        self.tied_rows: dict[str, int] = {}  # kept tied rows per source (tie_column)
        self.prompt_field, self.chosen_field, self.rejected_field = prompt_field, chosen_field, rejected_field
        self.instruction_field, self.input_field = instruction_field, input_field
        self.conversations_field, self.system_field = conversations_field, system_field
        self.history_field, self.tools_field = history_field, tools_field
        self.fields = PairFields(prompt_field, chosen_field, rejected_field, instruction_field, input_field,
                                 conversations_field, system_field, history_field, tools_field)
        self.answer_fields, self.prompt_fields, self.number_fields = answer_fields, prompt_fields, number_fields
        self._extras = (dict(answer_fields or {}), dict(prompt_fields or {}), dict(number_fields or {}))
        names = [column for fields in self._extras for column in fields]
        taken = [c for c in names if c in ("prompt", "chosen", "rejected", "tools", "index") or c.startswith("_")]
        if taken or len(set(names)) != len(names):
            raise ValueError(f"TextPairs: answer_fields, prompt_fields and number_fields name each batch column once,"
                             f" and none of prompt, chosen, rejected, tools, index; got {names}")
        # Further answers and prompts are text or messages: batched as python lists, like the pair's own.
        self.list_columns = type(self).list_columns | set(self._extras[0]) | set(self._extras[1])

    def check_first(self, row: dict, source: str) -> None:
        if self.chosen_field not in row:
            self._hint(row, source, self.chosen_field)
            if "completion" in row:
                raise DataError(source, 0, self.chosen_field, "pair data; this looks unpaired (prompt/completion/label):"
                                " use the layout alignsuite.data.TextUnpaired")

    @property
    def skip_reason(self) -> str:
        if self.tie_field is None or self.tie_column:
            return "chosen equals rejected"
        return (f"chosen equals rejected or the pair is tied ({self.tie_field} true; set tie_column: true in"
                " data.layout to keep the ties, for an objective that reads them: todo)")

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        canon = normalize_pair(row, index, source, self.fields)
        if canon is None:
            return None
        if self.tie_field is not None:
            tie = _tie(_get(row, self.tie_field, index, source), self.tie_field, index, source)
            if tie and not self.tie_column:
                return None
            if self.tie_column:
                canon[TIE_COLUMN] = float(tie)
                self.tied_rows[source] = self.tied_rows.get(source, 0) + tie
        extras = pair_extras(row, canon, index, source, *self._extras)
        return {**_stored(canon, source, index), **{k: for_arrow(v) for k, v in extras.items()}}


def _tie(value: object, field: str, index: int, source: str) -> bool:
    # The flag as TODO's data stores it (a bool), or 0/1 as int or float; anything else is ambiguous.
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise DataError(source, index, field, "a tie flag (true/false or 1/0: whether neither answer is preferred)", value)


class TextUnpaired(_TextLayout):
    """Unpaired text rows for KTO: a prompt, one completion and whether it is desirable. Rows with
    ``prompt``/``completion``/``label`` are read as they are; pair rows (any layout `TextPairs` reads)
    become one desirable row (the chosen answer) and one undesirable row (the rejected one), in that
    order. Batches need at least two rows: KTO's reference point pairs each prompt with another row's
    completion.

    Args:
        prompt_field: column of the prompt: text, or chat messages up to the answer.
        completion_field: column of the completion: text, assistant message(s), or the whole conversation.
        label_field: column of the label: true/false or 1/0 (desirable or not).
        chosen_field: pair rows: column of the preferred answer (becomes a desirable row).
        rejected_field: pair rows: column of the dispreferred answer (becomes an undesirable row).
        tools_field: optional tool schemas of the row (a list, or its JSON text), passed to the batch as ``tools``.
    """

    row_kind = "unpaired"

    def __init__(
        self,
        prompt_field: str = "prompt",
        completion_field: str = "completion",
        label_field: str = "label",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        tools_field: str = "tools",
    ) -> None:
        self.prompt_field, self.completion_field, self.label_field = prompt_field, completion_field, label_field
        self.chosen_field, self.rejected_field, self.tools_field = chosen_field, rejected_field, tools_field
        self.fields = UnpairedFields(prompt_field, completion_field, label_field, tools_field)
        self.pair_fields = PairFields(prompt_field, chosen_field, rejected_field, tools=tools_field)

    def check_first(self, row: dict, source: str) -> None:
        if self.completion_field not in row and self.chosen_field not in row:
            self._hint(row, source, self.completion_field)

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        if self.completion_field not in row and self.chosen_field in row:
            canon = normalize_pair(row, index, source, self.pair_fields)
        else:
            canon = normalize_unpaired(row, index, source, self.fields)
        return None if canon is None else _stored(canon, source, index)

    def expand(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            origin = {"_source": row["_source"], "_row": row["_row"]}
            out += [dict(r, **origin) for r in pairs_to_unpaired([row])] if "chosen" in row else [row]
        return out
