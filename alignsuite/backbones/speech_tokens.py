"""Speech-token language models: a causal LM whose vocabulary holds speech codec tokens (CosyVoice 2, Ints, Llasa).

The text-to-speech model is any ``AutoModelForCausalLM`` whose vocabulary holds, from ``speech_token_offset``
on, ``num_codebooks`` blocks of ``codebook_size`` speech tokens: code ``c`` of codebook ``k`` is the id

    offset + k * codebook_size + c

(Ints shifts its semantic codes by a fixed offset, +32066, after a begin-of-audio token; CosyVoice 2 and Llasa
likewise). Several codebooks are flattened frame-major: frame 0's codebooks 0..K-1, then frame 1's ...

Sequence per row (plain text, no chat template)::

    tokenizer(prompt_text + " " + text)   [speech_start]   prompt speech ids   |   speech ids   speech_end
    '--------------------------------- prompt, never scored -------------------'   '--- completion, scored --'

Score convention (as for every token backbone): the sum of the log-probabilities of the completion's speech
tokens and its end token (the model must learn where to stop; CosyVoice's DPO scores its eos too). With
several codebooks this is the sum over codebooks of each codebook's token log-probabilities (NeMo MagpieTTS's
preference optimisation sums them the same way). ``SequenceScores.length`` counts the scored tokens.

Prompts are never cut: one longer than ``max_length - 1`` tokens (text + start + prompt speech) is an error
naming the row. A completion keeps its first ``max_length - len(prompt)`` tokens (its end token then goes),
counted in ``truncated``. Speech may come as codec tokens (``LongTensor [frames]`` or ``[frames, K]``, 0-based
codes) or as audio (``alignsuite.data.audio.Audio``) turned into tokens by ``codec``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from alignsuite.backbones.base import ViewInputs
from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.pad import PAD
from alignsuite.backbones.token_batch import TokenBatch
from alignsuite.backbones.tokenize import batch_rows
from alignsuite.backbones.transformers_loading import check_embeddings
from alignsuite.backbones.vocoding import Vocoded, is_audio
from alignsuite.components import build_object

SETTINGS_FILE = "speech_tokens.json"
SPEECH_COLUMNS = ("chosen", "rejected", "completion")


class SpeechTokensOnly:
    """Generation constraint (a transformers logits processor): at step ``s`` after the prompt only the tokens
    of codebook ``s % K`` may follow, and the end token only at a frame boundary (``s % K == 0``)."""

    def __init__(self, prompt_width: int, offset: int, codebook_size: int, num_codebooks: int, end_id: int) -> None:
        self.prompt_width, self.offset, self.size, self.k, self.end_id = (
            prompt_width, offset, codebook_size, num_codebooks, end_id)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.prompt_width  # prompts are left-padded: every row is at the same step
        codebook = step % self.k
        banned = torch.ones(scores.shape[-1], dtype=torch.bool, device=scores.device)
        start = self.offset + codebook * self.size
        banned[start : start + self.size] = False
        if codebook == 0:
            banned[self.end_id] = False
        return scores.masked_fill(banned, float("-inf"))


class SpeechTokenLM(Vocoded, CausalLM):
    """A causal LM over text and speech codec tokens, from a local folder, a hub id or ``toy:<world>``.

    Args:
        model_name_or_path: folder written by ``save_pretrained``, a hub id, or ``toy:<world>``.
        speech_token_offset: vocabulary id of code 0 of codebook 0.
        codebook_size: codes per codebook; codes outside ``[0, codebook_size)`` are an error.
        speech_end_token: token text (looked up in the tokenizer) or id that closes every utterance; scored.
        num_codebooks: codebooks per frame; code ``c`` of codebook ``k`` is id ``offset + k * codebook_size + c``.
        speech_start_token: token text or id between the text and the (prompt) speech; none when left out.
        codec: turns ``Audio`` rows into codes: ``"package.module.Class"`` built with no arguments, or
            ``{"class_path": ..., "init_args": {...}}``; called as ``codec(waveform, sampling_rate)`` and
            returning a ``LongTensor [frames]`` or ``[frames, num_codebooks]``.
        vocoder: turns generated codes into audio (``to_audio``), given like ``codec``; it has a
            ``sampling_rate`` and is called as ``vocoder(list of codes) -> list of waveforms``.
        tokenizer_name_or_path: defaults to the model's.
        lora: train a LoRA adapter instead of the full weights.
        max_length: most tokens in a row (text + start + prompt speech + speech + end). Prompts are never cut
            (``max_prompt_length`` is fixed at ``max_length - 1``, so one completion token always fits).
        dtype, gradient_checkpointing, attn_implementation, disable_dropout, trust_remote_code: as for CausalLM.
        guide: a decoding-time guide (`alignsuite.backbones.PAD`) every ``generate`` uses; its reward model a
            speech-token model with this one's vocabulary, reading each row's text and speaker prompt.
    """

    modality = "text_to_speech"
    generation_columns = ("prompt_speech", "prompt_text")
    joint_views = False  # a speaker prompt's codes are no text to score
    guided_generation = True  # a causal LM's generate over token ids (codec tokens among them)

    def __init__(
        self,
        model_name_or_path: str,
        speech_token_offset: int,
        codebook_size: int,
        speech_end_token: str | int,
        num_codebooks: int = 1,
        speech_start_token: str | int | None = None,
        codec: str | dict | None = None,
        vocoder: str | dict | None = None,
        tokenizer_name_or_path: str | None = None,
        lora: LoraSpec | None = None,
        max_length: int = 2048,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        disable_dropout: bool = True,
        trust_remote_code: bool = False,
        guide: PAD | None = None,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"backbone.max_length must be at least 2 (a prompt token and a speech token), got {max_length}")
        if speech_token_offset < 0 or codebook_size < 1 or num_codebooks < 1:
            raise ValueError(
                f"backbone.speech_token_offset ({speech_token_offset}) must be >= 0, codebook_size ({codebook_size})"
                f" and num_codebooks ({num_codebooks}) >= 1"
            )
        super().__init__(model_name_or_path, tokenizer_name_or_path, lora, max_length, max_length - 1, dtype,
                         gradient_checkpointing, attn_implementation, disable_dropout, trust_remote_code, guide=guide)
        self.speech_token_offset = speech_token_offset
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.speech_start_token = speech_start_token
        self.speech_end_token = speech_end_token
        self.codec = codec
        self.vocoder = vocoder
        self._codec = None
        self._special: tuple[int | None, int] | None = None
        self._codes_cache: dict[int, list[int]] | None = None  # per prepare: id(speech) -> ids

    # ---------------------------------------------------------------- building
    @property
    def speech_range(self) -> tuple[int, int]:
        """``[first, last)`` vocabulary ids of the speech tokens."""
        return self.speech_token_offset, self.speech_token_offset + self.num_codebooks * self.codebook_size

    def _token_id(self, token: str | int, option: str) -> int:
        if isinstance(token, int):
            return token
        tok = self.tokenizer
        found = tok.convert_tokens_to_ids(token)
        if found is None or (found == tok.unk_token_id and token != tok.unk_token):
            raise ValueError(f"backbone.{option} {token!r} is not a token of the tokenizer; give its text or its id")
        return int(found)

    def special_ids(self) -> tuple[int | None, int]:
        """``(start id or None, end id)``, looked up in the tokenizer once and checked against the speech range."""
        if self._special is None:
            if self.tokenizer is None:
                self.tokenizer = self._load_tokenizer()
            start = None if self.speech_start_token is None else self._token_id(self.speech_start_token, "speech_start_token")
            end = self._token_id(self.speech_end_token, "speech_end_token")
            first, last = self.speech_range
            for option, i in (("speech_start_token", start), ("speech_end_token", end)):
                if i is not None and first <= i < last:
                    raise ValueError(f"backbone.{option} is id {i}, inside the speech tokens' ids [{first}, {last})")
            self._special = (start, end)
        return self._special

    def configure(self) -> None:
        super().configure()
        vocab = self.policy.get_input_embeddings().num_embeddings
        start, end = self.special_ids()
        highest = max(self.speech_range[1] - 1, end, start if start is not None else -1)
        if highest >= vocab:
            raise ValueError(
                f"model {self.model_name_or_path!r} has {vocab} token embeddings, and the speech settings need id"
                f" {highest} (speech ids [{self.speech_range[0]}, {self.speech_range[1]}), start {start}, end {end}):"
                " check speech_token_offset, codebook_size and num_codebooks"
            )

    def check_same_tokenizer(self, source: str, option: str) -> None:
        """As `CausalLM`'s (the same tokenizer), and ``source`` has token embeddings for every speech id: the
        speech tokens often lie past the tokenizer's own, where a text model with the same tokenizer has none."""
        super().check_same_tokenizer(source, option)
        start, end = self.special_ids()
        highest = max(self.speech_range[1] - 1, end, start if start is not None else -1)
        check_embeddings(source, highest, option, self.trust_remote_code,
                         f"this model's speech tokens take ids [{self.speech_range[0]}, {self.speech_range[1]}) (end"
                         f" {end}): a text model's vocabulary has no speech tokens; use a speech-token model with this"
                         " one's vocabulary")

    def on_setup(self, datamodule: Any) -> None:
        """Resolve the start/end tokens before any model loads, so that a wrong name fails early. CausalLM's
        filter of pairs made identical by truncation is left out: the data layout already skips pairs with equal
        chosen and rejected codes, and utterances cut to the same first tokens (both over ``max_length``) only
        train at ln 2 with no gradient, like ties; ``truncated`` counts the cuts. The codebooks go to the data
        layout, whose check of each row's codes names its file, row and field."""
        self.special_ids()
        datamodule.layout.use_model(codebook_size=self.codebook_size, num_codebooks=self.num_codebooks)

    # ---------------------------------------------------------------- speech -> ids
    def _speech_codes(self, speech: Any, row: int | None, column: str) -> Tensor:
        """``speech`` as a ``LongTensor [frames, K]`` of 0-based codes, checked."""
        where = f"dataset row {row}" if row is not None else "a row"
        if is_audio(speech):
            if self.codec is None:
                raise ValueError(
                    f"{where}, column {column!r}, holds audio, and backbone.codec is not set: give a codec that turns"
                    " audio into speech tokens, or data holding the tokens"
                )
            if self._codec is None:
                object.__setattr__(self, "_codec", build_object(self.codec))  # not a sub-module: never checkpointed
            speech = self._codec(speech.waveform, speech.sampling_rate)
            column = f"{column} (from the codec)"
        codes = torch.as_tensor(speech).cpu()  # a codec may answer on its own device
        if codes.is_floating_point() or codes.dtype == torch.bool or codes.dim() not in (1, 2):
            raise ValueError(
                f"{where}, column {column!r}, holds a {codes.dtype} tensor of shape {tuple(codes.shape)}; SpeechTokenLM"
                f" needs integer codec tokens [frames] or [frames, {self.num_codebooks}] (or audio with a codec)"
            )
        shape = tuple(codes.shape)
        codes = codes.long().unsqueeze(-1) if codes.dim() == 1 else codes.long()
        if codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"{where}, column {column!r}, has {codes.shape[1]} codebook(s) per frame (shape {shape}), and"
                f" backbone.num_codebooks is {self.num_codebooks}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"{where}, column {column!r}, holds codes from {int(codes.min())} to {int(codes.max())}, outside the"
                f" codebook's range [0, {self.codebook_size}) (codes are 0-based, without the vocabulary offset)"
            )
        return codes

    def speech_ids(self, speech: Any, row: int | None = None, column: str = "speech") -> list[int]:
        """Vocabulary ids of one utterance, frame-major: ``offset + k * codebook_size + code``."""
        key = id(speech)
        if self._codes_cache is not None and key in self._codes_cache:
            return self._codes_cache[key]
        codes = self._speech_codes(speech, row, column)
        shift = self.speech_token_offset + self.codebook_size * torch.arange(self.num_codebooks)
        ids = (codes + shift).flatten().tolist()
        if self._codes_cache is not None:
            self._codes_cache[key] = ids
        return ids

    def prompt_ids(self, texts: list[str], prompt_texts: list[str] | None = None, prompt_speech: list | None = None,
                   rows: list[int | None] | None = None) -> list[list[int]]:
        """Each row's prompt: text tokens (with the tokenizer's special tokens), start token, prompt speech ids.
        One longer than ``max_length - 1`` is an error: prompts are never cut."""
        n = len(texts)
        prompt_texts = list(prompt_texts) if prompt_texts is not None else [""] * n
        prompt_speech = list(prompt_speech) if prompt_speech is not None else [None] * n
        rows = rows or [None] * n
        start, _ = self.special_ids()
        for t, row in zip(texts, rows):
            if not isinstance(t, str):
                where = f"dataset row {row}" if row is not None else "a prompt"
                raise ValueError(f"the prompt of {where} is a {type(t).__name__}; SpeechTokenLM speaks plain text")
        joined = [f"{pt} {t}" if pt else t for pt, t in zip(prompt_texts, texts)]
        out = []
        for text_ids, speech, row in zip(self.tokenizer(joined)["input_ids"], prompt_speech, rows):
            speech_ids = self.speech_ids(speech, row, "prompt_speech") if speech is not None else []
            ids = list(text_ids) + ([start] if start is not None else []) + speech_ids
            if len(ids) > self.max_length - 1:
                where = f"dataset row {row}" if row is not None else "a prompt"
                raise ValueError(
                    f"the prompt of {where} is {len(ids)} tokens ({len(text_ids)} text, {len(speech_ids)} prompt speech),"
                    f" over backbone.max_length - 1 = {self.max_length - 1}; prompts are never cut (that would cut the"
                    " text or the speaker prompt): raise max_length, or shorten the row"
                )
            out.append(ids)
        return out

    # ---------------------------------------------------------------- the step
    def prepare(self, views: list[ViewInputs]) -> TokenBatch:
        """CausalLM's layout over the speech rows; audio is turned into codes once per utterance and step."""
        self._codes_cache = {}
        try:
            return super().prepare(views)
        finally:
            self._codes_cache = None

    def _encode(self, prompts: list[str], completions: list, batch: dict | None = None,
                count: bool = True) -> list[tuple[list[int], list[int]]]:
        """``(prompt ids, completion ids)`` per row (CausalLM.prepare lays them out and masks the prompt)."""
        batch = batch or {}
        _, index = batch_rows(batch, len(prompts))
        index = index or [None] * len(prompts)
        column = self._column(completions, batch)
        _, end = self.special_ids()
        rows = []
        for i, p in enumerate(self.prompt_ids(prompts, batch.get("prompt_text"), batch.get("prompt_speech"), index)):
            completion = self.speech_ids(completions[i], index[i], column) + [end]
            room = self.max_length - len(p)
            cut = len(completion) > room
            if count:
                self._count_truncation(False, cut)
            rows.append((p, completion[:room]))
        return rows

    @staticmethod
    def _column(completions: list, batch: dict) -> str:
        """The batch column the completions come from, by identity (views hold the column's own objects)."""
        for name in SPEECH_COLUMNS:
            values = batch.get(name)
            if values is not None and len(values) == len(completions) and all(a is b for a, b in zip(values, completions)):
                return name
        return "chosen or rejected"

    def _count_truncation(self, cut_prompt: bool, cut_completion: bool) -> None:
        self.truncated["completion"] += cut_completion
        if cut_completion and self.truncated["completion"] == 1:  # say it once, when it first happens
            rank_zero_warn(
                f"utterances longer than backbone.max_length={self.max_length} (with their prompt) keep their first"
                " speech tokens and lose their end token. Counts so far are in backbone.truncated."
            )

    # ---------------------------------------------------------------- generation
    def generation_inputs(self, prompts: list[str], prompt_speech: list | None = None,
                          prompt_text: list[str] | None = None) -> dict[str, Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` of each row's prompt (:meth:`prompt_ids`)."""
        rows = self.prompt_ids(prompts, prompt_text, prompt_speech)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, r in enumerate(rows):  # left-padded: generation continues from every row's last position
            input_ids[i, width - len(r):] = torch.tensor(r)
            attention_mask[i, width - len(r):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @torch.no_grad()
    def generate(self, prompts: list[str], model: nn.Module | None = None, seed: int | None = None,
                 prompt_speech: list | None = None, prompt_text: list[str] | None = None, max_new_tokens: int = 512,
                 do_sample: bool | None = None, guide: PAD | None = None, **kwargs) -> list[Tensor]:
        """One utterance per text: codes (offsets removed) up to the end token, ``[frames]`` or
        ``[frames, num_codebooks]``. Greedy, or sampled when ``seed`` is given (or ``do_sample``), from a forked
        random state, so the training run's is untouched. ``max_new_tokens`` counts tokens (frames x codebooks).
        ``guide`` (``backbone.guide`` if None) chooses among the speech tokens each step allows."""
        model = model if model is not None else self.policy
        device = next(model.parameters()).device
        _, end = self.special_ids()
        enc = self.generation_inputs(prompts, prompt_speech, prompt_text)
        input_ids, attention_mask, width = enc["input_ids"], enc["attention_mask"], enc["input_ids"].shape[1]
        from transformers import LogitsProcessorList
        processors = [SpeechTokensOnly(width, self.speech_token_offset, self.codebook_size, self.num_codebooks, end)]
        guide = guide if guide is not None else self.guide
        if guide is not None:  # after the constraint: it chooses among the tokens allowed
            processors.append(guide.processor(self, prompts, enc, device, prompt_speech=prompt_speech, prompt_text=prompt_text))
        processors += list(kwargs.pop("logits_processor", None) or [])
        do_sample = seed is not None if do_sample is None else do_sample
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if seed is not None:
                    torch.manual_seed(seed)
                out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                     max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=end,
                                     pad_token_id=self.tokenizer.pad_token_id,
                                     logits_processor=LogitsProcessorList(processors), **kwargs)
        finally:
            model.train(was_training)
        return [self._codes_of(ids, end) for ids in out[:, width:].cpu()]

    def _codes_of(self, ids: Tensor, end: int) -> Tensor:
        """Generated ids up to the end token as 0-based codes, ``[frames]`` or ``[frames, K]`` (whole frames)."""
        stop = (ids == end).nonzero()
        ids = ids[: int(stop[0]) if len(stop) else len(ids)]
        k = self.num_codebooks
        codes = ids[: len(ids) // k * k].view(-1, k) - self.speech_token_offset
        codes = codes - self.codebook_size * torch.arange(k)
        return codes[:, 0] if k == 1 else codes

    # ---------------------------------------------------------------- export
    def settings(self) -> dict:
        """What a user needs to drive the exported model (written to ``speech_tokens.json``)."""
        start, end = self.special_ids()
        return {
            "speech_token_offset": self.speech_token_offset,
            "codebook_size": self.codebook_size,
            "num_codebooks": self.num_codebooks,
            "speech_start_token": self.speech_start_token,
            "speech_start_token_id": start,
            "speech_end_token": self.speech_end_token,
            "speech_end_token_id": end,
            "token_id": "speech_token_offset + codebook * codebook_size + code; frames flattened frame-major",
            "sequence": "tokenizer(prompt_text + ' ' + text) [speech_start] prompt speech ids, then speech ids and"
                        " speech_end",
        }

    def save_preprocessing(self, path: str) -> None:
        """Beside the weights (``AutoModelForCausalLM.from_pretrained`` loads the folder: LoRA merged, or the adapter
        alone; a Panacea model's base and adapter): the tokenizer and ``speech_tokens.json``, the speech-token
        settings."""
        super().save_preprocessing(path)
        with open(os.path.join(path, SETTINGS_FILE), "w", encoding="utf-8") as f:
            json.dump(self.settings(), f, indent=2)


__all__ = ["SpeechTokenLM", "SpeechTokensOnly"]
