"""List layouts: K graded responses per prompt (row_kind ``"lists"``), for the listwise objectives.

A stored list row holds ``prompt``, ``responses`` (``list_size`` entries), ``labels`` (higher better, NaN
for padding) and ``mask`` (True where a response exists); see `alignsuite.data.lists` for how grades are read,
padded and checked. A batch carries ``responses`` as one python list per row, ``labels`` as a ``[B, K]``
float tensor and ``mask`` as a ``[B, K]`` bool tensor.

A padded text entry is an empty answer (an empty assistant message for chat rows): a token backbone scores it
as the answer's end token alone, and the mask keeps it out of every loss.
"""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_warn

from alignsuite.data.errors import DataError
from alignsuite.data.fields import PairFields
from alignsuite.data.layouts.base import Layout
from alignsuite.data.layouts.text import _TextLayout
from alignsuite.data.lists import INVALID, SKIP_REASON, ListGrades, build_list, check_list_size, grade, row_labels
from alignsuite.data.messages import blank, for_arrow, from_arrow, normalize_messages
from alignsuite.data.preference import (
    _as_messages,
    _check_answer,
    _prompt,
    _prompt_messages,
    _strip_prompt,
    check_text_only,
    normalize_pair,
)

ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


class ListLayout(Layout):
    """What every list layout shares: ``list_size``, the count of dropped entries, and a collate that gives
    ``labels`` and ``mask`` as ``[B, K]`` tensors."""

    row_kind = "lists"
    skip_reason = SKIP_REASON

    def __init__(self, list_size: int) -> None:
        check_list_size(list_size)
        self.list_size = list_size
        # Entries dropped from kept lists (a blank response, a NaN grade), per source.
        self.dropped_responses: dict[str, int] = {}

    def _count_dropped(self, source: str, dropped: int) -> None:
        if dropped:
            self.dropped_responses[source] = self.dropped_responses.get(source, 0) + dropped

    def build(self, tables):
        before = dict(self.dropped_responses)
        out = super().build(tables)
        for source, n in self.dropped_responses.items():
            if n > before.get(source, 0):
                rank_zero_warn(f"{source}: dropped {n - before.get(source, 0)} responses from their lists (blank, or"
                               " a missing or NaN grade); counts are in data.layout.dropped_responses")
        return out

    def _finish(self, canon: dict | None, dropped: int, source: str) -> dict | None:
        self._count_dropped(source, dropped)
        return canon

    def collate(self, rows: list[dict]) -> dict:
        batch = super().collate(rows)
        if "mask" in batch:
            batch["mask"] = batch["mask"].bool()
        return batch


class TextLists(ListLayout, _TextLayout):
    """Text lists: a prompt with K graded answers (text or chat messages). Read as they come:

    - generic rows: ``prompt``, ``responses`` (a list), and ``scores`` or ``labels`` (one number per response,
      higher better), or ``ranks`` (1 = best), or no grades with ``ranked: true`` (responses best first);
    - UltraFeedback (``openbmb/UltraFeedback``): ``instruction`` and ``completions``, a list of dicts with a
      ``response`` and its ratings; ``rating`` picks which: ``overall_score``, ``fine-grained_score``, or one
      aspect of ``annotations`` (``helpfulness``, ``honesty``, ``instruction_following``, ``truthfulness``);
    - pairs (``prompt``/``chosen``/``rejected``, any layout `TextPairs` reads): the K = 2 case, labels [1, 0].

    Lists shorter than ``list_size`` are padded and masked; a response with a missing or NaN grade, or a blank
    one, is dropped from its list and counted (``dropped_responses``); a list left with fewer than 2 responses
    with different grades is skipped and counted; a list longer than ``list_size`` or grades of the wrong length
    are refused, naming the file, row and field.

    Args:
        list_size: K, the length every list is padded to; the objective's ``list_size`` must equal it.
        prompt_field: column of the prompt: text, or chat messages up to the answers.
        responses_field: column of the answers: a list of text or of assistant message lists.
        scores_field: column of one grade per answer, higher better.
        labels_field: another name looked for when ``scores_field`` is absent.
        ranks_field: column of one rank per answer, 1 = best (looked for after the grades).
        ranked: rows without grades list their answers best first.
        instruction_field: UltraFeedback rows: the prompt.
        completions_field: UltraFeedback rows: the list of completion dicts.
        response_field: UltraFeedback rows: the answer's key in a completion dict.
        rating: UltraFeedback rows: which rating grades a completion (see above).
        chosen_field: pair rows: the preferred answer.
        rejected_field: pair rows: the dispreferred answer.
    """

    def __init__(
        self,
        list_size: int = 4,
        prompt_field: str = "prompt",
        responses_field: str = "responses",
        scores_field: str = "scores",
        labels_field: str = "labels",
        ranks_field: str = "ranks",
        ranked: bool = False,
        instruction_field: str = "instruction",
        completions_field: str = "completions",
        response_field: str = "response",
        rating: str = "overall_score",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
    ) -> None:
        super().__init__(list_size)
        self.prompt_field, self.responses_field = prompt_field, responses_field
        self.scores_field, self.labels_field, self.ranks_field, self.ranked = scores_field, labels_field, ranks_field, ranked
        self.instruction_field, self.completions_field = instruction_field, completions_field
        self.response_field, self.rating = response_field, rating
        self.chosen_field, self.rejected_field = chosen_field, rejected_field
        self.grades = ListGrades(scores_field, labels_field, ranks_field, ranked)
        self.pair_fields = PairFields(prompt_field, chosen_field, rejected_field)

    list_columns = frozenset({*_TextLayout.list_columns, "responses"})

    def check_first(self, row: dict, source: str) -> None:
        if not any(f in row for f in (self.responses_field, self.completions_field, self.chosen_field)):
            self._hint(row, source, self.responses_field)
            raise DataError(source, 0, self.responses_field,
                            f"a list of answers ({self.responses_field!r}), UltraFeedback's {self.completions_field!r},"
                            f" or a pair ({self.chosen_field!r}/{self.rejected_field!r}); the row has columns {sorted(row)}")

    def normalize(self, row: dict, index: int, source: str, base_dir: str | None = None) -> dict | None:
        check_text_only(row, index, source)
        if self.responses_field not in row and self.completions_field not in row:
            pair = normalize_pair(row, index, source, self.pair_fields)
            if pair is None:
                return None
            prompt, responses, labels, field = pair["prompt"], [pair["chosen"], pair["rejected"]], [1.0, 0.0], self.chosen_field
        elif self.responses_field in row:
            field = self.responses_field
            prompt = _prompt(row.get(self.prompt_field), self.prompt_field, index, source)
            values = self._list(row, field, index, source)
            responses = [self._answer(v, field, index, source) for v in values]
            labels = row_labels(row, len(values), self.grades, index, source)
        else:
            field = self.completions_field
            prompt = _prompt(row.get(self.instruction_field, row.get(self.prompt_field)), self.instruction_field, index, source)
            completions = self._list(row, field, index, source)
            responses, labels = [], []
            for c in completions:
                if not isinstance(c, dict):
                    raise DataError(source, index, field, f"completion dicts with a {self.response_field!r}", c)
                responses.append(self._answer(c.get(self.response_field), field, index, source))
                labels.append(self._rating(c, field, index, source))
        prompt, responses = self._chat(prompt, responses, field, index, source)
        pad = [{"role": "assistant", "content": ""}] if isinstance(prompt, list) else ""
        canon, dropped = build_list(responses, labels, self.list_size, pad, field, index, source)
        if canon is None:
            return self._finish(None, dropped, source)
        stored = {"prompt": for_arrow(prompt), **canon, "responses": [for_arrow(r) for r in canon["responses"]]}
        return self._finish({**stored, "_source": source, "_row": index}, dropped, source)

    def decode(self, key: str, value):
        if key == "responses":
            return [from_arrow(v) for v in value]
        return super().decode(key, value)

    # --- reading one row ---------------------------------------------------------------------------

    @staticmethod
    def _list(row: dict, field: str, index: int, source: str) -> list:
        values = row.get(field)
        if not isinstance(values, (list, tuple)):
            raise DataError(source, index, field, "a list of responses", values)
        return list(values)

    @staticmethod
    def _answer(value, field: str, index: int, source: str):
        """Text or messages; `INVALID` for a blank or missing one (dropped, counted)."""
        if value is None:
            return INVALID
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            msgs = normalize_messages(value, field, index, source)
            return INVALID if blank(msgs) else msgs
        if isinstance(value, str):
            return value if value.strip() else INVALID
        raise DataError(source, index, field, "responses that are text or chat messages", value)

    def _rating(self, completion: dict, field: str, index: int, source: str) -> float:
        if self.rating in ULTRAFEEDBACK_ASPECTS:
            aspect = (completion.get("annotations") or {}).get(self.rating)
            aspect = aspect[0] if isinstance(aspect, list) and aspect else aspect
            value = aspect.get("Rating") if isinstance(aspect, dict) else None
        else:
            value = completion.get(self.rating)
        return grade(value, f"{field}.{self.rating}", index, source)

    def _chat(self, prompt, responses: list, field: str, index: int, source: str):
        """Plain text as is; if the prompt or any answer is chat messages, all of them as messages (a text prompt
        as one user turn, text answers as one assistant turn, answers that repeat the prompt cut after it)."""
        if not (isinstance(prompt, list) or any(isinstance(r, list) for r in responses)):
            return prompt, responses
        p = prompt if isinstance(prompt, list) else _prompt_messages(prompt)
        out = []
        for r in responses:
            if r is INVALID:
                out.append(r)
                continue
            msgs = _strip_prompt(_as_messages(r), p)
            _check_answer(msgs, field, index, source, r)
            out.append(msgs)
        return p, out


__all__ = ["ListLayout", "TextLists", "ULTRAFEEDBACK_ASPECTS"]
