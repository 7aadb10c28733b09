"""A path's steps given as text, turned into the answer-token indices where they begin (``step_starts``), in the
tokenizer and truncation of a token backbone.

Preference trees (``alignsuite.data.TextTrees``) may give each path's steps as a list of strings whose
concatenation is the answer; the layout cannot count tokens, so the backbone hands it a :class:`StepTokens` at
setup (``use_model(step_tokens=...)``) and the layout asks it, path by path, when it collates a batch.

How a step maps to tokens: the answer is tokenised as the backbone tokenises it (plain text as it is, closed by
the end token; chat answers as the text the template adds after the prompt), with the tokenizer's character
offsets. Step 0 begins at answer token 0 (so it also holds whatever a chat template writes before the answer's
text); step ``s > 0`` begins at the first token that ends past the character where the step's text begins, so a
token that straddles two steps opens the later one. Two steps whose boundaries fall in one token would share a
start: refused. Steps that begin past the tokens the truncation keeps (``max_length``, ``max_prompt_length``)
are left out, so a cut path has fewer steps.
"""

from __future__ import annotations

from alignsuite.backbones.tokenize import Text, encode_rows, render_chat, truncate


class StepTokens:
    """``step_tokens(prompt, answer, steps) -> step_starts``: where each step of one path begins, in answer tokens.

    Args:
        tokenizer: the backbone's tokenizer; it must be a fast one (character offsets).
        max_length: the backbone's ``max_length`` (prompt + answer tokens).
        max_prompt_length: the backbone's ``max_prompt_length``.
    """

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int) -> None:
        self.tokenizer, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length

    def __call__(self, prompt: Text, answer: Text, steps: list[str]) -> list[int]:
        """Raises ``ValueError`` saying what is wrong with the steps (the caller names the file, row and field)."""
        tok = self.tokenizer
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"steps given as text need a fast tokenizer (one with character offsets), and"
                             f" {type(tok).__name__} is not; give step_starts (answer-token indices) instead")
        content = "".join(steps)
        if isinstance(prompt, list):
            _, text = render_chat(tok, prompt, answer)
            at = text.rfind(content)
            if at < 0:
                raise ValueError("the chat template does not write the answer's text as it is, so its steps cannot be"
                                 " found among the answer's tokens; give step_starts (answer-token indices) instead")
        else:
            text, at = answer, 0
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        [(prompt_ids, answer_ids)] = encode_rows(tok, [prompt], [answer])
        if list(enc["input_ids"]) != answer_ids[: len(enc["input_ids"])]:  # the same tokens the backbone scores
            raise ValueError("the answer's tokens with character offsets differ from the tokens the backbone scores")
        _, kept, _, _ = truncate(prompt_ids, answer_ids, self.max_length, self.max_prompt_length, tok.bos_token_id)
        ends = [end for _, end in enc["offset_mapping"]]
        starts, boundary = [0], at
        for s, step in enumerate(steps[:-1], start=1):
            boundary += len(step)
            first = next((i for i, end in enumerate(ends) if end > boundary), None)
            if first is None:
                raise ValueError(f"step {s} begins where no token of the answer does")
            if first <= starts[-1]:
                raise ValueError(f"steps {s - 1} and {s} meet inside one token (token {first} of the answer), so step"
                                 f" {s} has no token of its own; join them or split the text elsewhere")
            starts.append(first)
        return [start for start in starts if start < max(len(kept), 1)]


__all__ = ["StepTokens"]
