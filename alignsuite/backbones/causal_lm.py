"""Causal language models from transformers: the language (and speech-token) backbone.

Score convention: the sum of log-probabilities of the completion tokens; prompt and padding tokens
are excluded. Chosen and rejected rows are stacked and scored in one forward pass.

A view may ask for its prompt's tokens to be scored too (``score_prompt``, ORPO's NLL term): their summed
log-probability and count, the very first token excluded (nothing predicts it), come back in
``SequenceScores.prompt``/``prompt_length``.

Tokenisation (:mod:`alignsuite.backbones.tokenize`): plain text or chat messages, a row's ``tools`` passed
to the chat template, roles checked against the template. Truncation rule, applied to every row and counted:
the prompt keeps its last ``max_prompt_length`` tokens (the context nearest the answer; a leading bos token
stays first), then the completion keeps its first ``max_length - len(prompt)`` tokens. A completion that
would keep no token at all is an error, since it would have nothing to score. Pairs whose chosen and
rejected rows are the same tokens once truncated are dropped at setup (:meth:`CausalLM.on_setup`).

Beside this file, each one job: the batch it scores (:mod:`.token_batch`), loading the model and tokenizer
(:mod:`.transformers_loading`), dropping the pairs truncation makes identical (:mod:`.identical_pairs`), and
which tokens are scored and how rows are packed (:mod:`.token_scoring`).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from alignsuite.backbones.base import Backbone, SequenceScores, ViewInputs
from alignsuite.backbones.identical_pairs import drop_identical_pairs
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.pad import PAD
from alignsuite.backbones.steps import StepTokens
from alignsuite.backbones.token_batch import TokenBatch
from alignsuite.backbones.token_outputs import forward_tokens, score_tokens
from alignsuite.backbones.token_scoring import MASKED_ATTENTION, Packing, pack_rows
from alignsuite.backbones.tokenize import (ENCODED, EncodedRows, RowEncoder, Text, batch_rows, check_data_roles,
                                           encode_rows, identical_pairs, render_prompt, template_source, truncate)
from alignsuite.backbones.transformers_loading import check_same_vocabulary, load_pretrained_model, load_tokenizer
from alignsuite.sources import resolve_model_path


class CausalLM(Backbone):
    """Any ``AutoModelForCausalLM`` from a local folder or a hub id, fully fine-tuned or with LoRA.

    Args:
        model_name_or_path: folder written by ``save_pretrained``, a hub id, or ``toy:llm``.
        tokenizer_name_or_path: defaults to the model's.
        lora: train a LoRA adapter instead of the full weights.
        max_length: most tokens in a prompt + completion row.
        max_prompt_length: most prompt tokens kept (from the end); must be below ``max_length``.
        dtype: weights' dtype at load ("auto" keeps the checkpoint's). Mixed precision is the Trainer's.
        gradient_checkpointing: trade compute for activation memory.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2", "flex_attention". Under "flex_attention"
            the packed layout's mask is a block mask whose hidden blocks the kernel skips; PyTorch runs its
            backward on GPUs only (a CPU can score with it, not train).
        disable_dropout: dropout makes policy and reference disagree on identical weights; off by default.
        trust_remote_code: passed to ``from_pretrained``.
        chat_template: a Jinja chat template, or the path of a ``.jinja`` file, set on the tokenizer (and saved
            with it): for base models that have none, or to replace theirs. Chat rows with neither are an error.
        share_prompt: the sequences that share a prompt (a pair's chosen and rejected) go in one group, the
            prompt once, each completion attending to it and to itself only (see :mod:`.token_scoring`): the
            prompt's tokens go through the model once. Same log-probs up to float rounding.
        pack_rows: put several groups (or sequences) in one row, each attending to itself only, so that rows
            carry less padding; no row grows wider than the widest group. ``share_prompt`` and ``pack_rows``
            apply with the "sdpa", "eager" and "flex_attention" attention of models without a sliding window
            shorter than ``max_length``, and when they make the batch smaller; otherwise rows are one per sequence.
        lm_head_at_scored_only: apply the LM head only at the positions that predict a scored token (not at
            prompt, padding or other rows' positions); off computes it at every kept position, then picks.
        lm_head_chunk: score tokens this many at a time through a fused LM head + log-softmax that keeps no
            ``tokens x vocabulary`` logits for backward (it recomputes them, one chunk at a time): for long rows
            and large vocabularies, at the cost of the head's matmul once more. null computes logits whole.
        tokenize_in_loader: tokenise (and render chat templates) when the DataLoader collates a batch, in its
            worker processes with ``data.num_workers > 0``, rather than in the training step; the step finds
            each row's ids by its text and tokenises only what it does not find. Same ids either way.
        guide: a decoding-time guide every ``generate`` uses (`alignsuite.backbones.PAD`: ``predict`` reaches it).
    """

    joint_views = True  # prepare folds a joint view's prompt into its scored completion
    reads_preference_adapter = False  # a Panacea export's adapter (PanaceaLM): refused where it would be dropped
    scores_tokens = True  # per-token scores for token-level objectives (score_tokens)
    guided_generation = True  # generate takes a decoding-time guide (backbone.guide, PAD)

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        lora: LoraSpec | None = None,
        max_length: int = 1024,
        max_prompt_length: int = 512,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        disable_dropout: bool = True,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        share_prompt: bool = True,
        pack_rows: bool = True,
        lm_head_at_scored_only: bool = True,
        lm_head_chunk: int | None = None,
        tokenize_in_loader: bool = True,
        guide: PAD | None = None,
    ) -> None:
        super().__init__()
        if lm_head_chunk is not None and lm_head_chunk < 1:
            raise ValueError(f"backbone.lm_head_chunk must be a positive number of tokens or null, got {lm_head_chunk}")
        if max_prompt_length >= max_length:
            raise ValueError(
                f"backbone.max_prompt_length ({max_prompt_length}) must be below backbone.max_length ({max_length}),"
                " or no completion token could be scored"
            )
        self.model_name_or_path = model_name_or_path
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.lora = lora
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.dtype = dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.attn_implementation = attn_implementation
        self.disable_dropout = disable_dropout
        self.trust_remote_code = trust_remote_code
        self.chat_template = chat_template
        self.share_prompt, self.pack_rows, self.lm_head_at_scored_only = share_prompt, pack_rows, lm_head_at_scored_only
        self.lm_head_chunk = lm_head_chunk
        self.tokenize_in_loader = tokenize_in_loader
        self.guide = guide
        self._takes_masks = False  # whether the model's attention takes the packed layout's mask; set in configure
        self.tokenizer = None
        self.truncated = {"prompt": 0, "completion": 0}
        # Pairs dropped at setup because chosen and rejected are the same tokens once truncated, per split.
        self.dropped_identical: dict[str, int] = {}
        self._checked_identical: dict[str, str] = {}
        self._warned_tools = False
        self._accepts_logits_to_keep = False

    # ---------------------------------------------------------------- building
    def _auto_model(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def _load_model(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        path = resolve_model_path(source or self.model_name_or_path)
        return load_pretrained_model(self._auto_model(), path, dtype or self.dtype, self.attn_implementation,
                                     self.trust_remote_code, self.empty_weights, self.disable_dropout,
                                     self.reads_preference_adapter)

    def _load_tokenizer(self):
        path = resolve_model_path(self.tokenizer_name_or_path or self.model_name_or_path)
        return load_tokenizer(path, self.trust_remote_code, self.chat_template)

    def check_same_tokenizer(self, source: str, option: str) -> None:
        """Same vocabulary as the policy's (only the tokenizers: an embedding table may be padded to another size)."""
        mine = self.tokenizer if self.tokenizer is not None else self._load_tokenizer()
        check_same_vocabulary(mine, source, option, self.trust_remote_code)

    def configure(self) -> None:
        if self.policy is not None:
            return
        if self.tokenizer is None:  # on_setup may have loaded it already
            self.tokenizer = self._load_tokenizer()
        model = self._load_model()
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._takes_masks = self._takes_packed_layout(model.config)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if self.lora is not None:
            from peft import get_peft_model

            if self.gradient_checkpointing:
                model.enable_input_require_grads()
            model = get_peft_model(model, self._peft_config(model))
        # from_pretrained returns the model in eval mode, and Lightning keeps modes as they are; gradient
        # checkpointing (and any dropout left on) only acts in train mode.
        self.policy = model.train()

    def _takes_packed_layout(self, config) -> bool:
        """Whether the model attends through a mask as given (SDPA, eager, flex) with no sliding window that
        ``max_length`` could exceed (a custom mask replaces the window)."""
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        return getattr(config, "_attn_implementation", None) in MASKED_ATTENTION and (not window or window >= self.max_length)

    def _peft_config(self, model: nn.Module):
        return self.lora.to_peft("CAUSAL_LM")

    def load_reference(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        model = self._load_model(source, dtype)
        model.eval().requires_grad_(False)
        return model

    @property
    def policy_is_read(self) -> bool:  # not with gradient checkpointing (it changes the config), nor Panacea's read
        return not self.gradient_checkpointing and type(self).load_reference is CausalLM.load_reference

    def adapters_disabled(self):
        if not self.has_adapters:
            return super().adapters_disabled()
        return self.policy.disable_adapter()

    # ---------------------------------------------------------------- tokenising
    def _encode(self, prompts: list[Text], completions: list[Text], batch: dict | None = None,
                count: bool = True) -> list[tuple[list[int], list[int]]]:
        """Truncated ``(prompt ids, completion ids)`` of each row; ``batch`` gives its ``tools`` and ``index``."""
        tools, index = batch_rows(batch or {}, len(prompts))
        self._check_tools(tools)
        cache = (batch or {}).get(ENCODED)
        if isinstance(cache, EncodedRows):  # tokenised when the batch was collated
            rows = cache.encode(self.tokenizer, prompts, completions, tools, index)
        else:
            rows = encode_rows(self.tokenizer, prompts, completions, tools, index)
        out = []
        for i, (p, c) in enumerate(rows):
            p, c, cut_prompt, cut_completion = truncate(p, c, self.max_length, self.max_prompt_length,
                                                        self.tokenizer.bos_token_id)
            if count:
                self._count_truncation(cut_prompt, cut_completion)
            if not c:
                where = f" (dataset row {index[i]})" if index is not None else ""
                raise ValueError(f"a completion tokenised to no tokens{where}; nothing to score")
            out.append((p, c))
        return out

    def loader_transform(self, views: list) -> RowEncoder | None:
        """Tokenises each collated batch for ``views`` (``tokenize_in_loader``); a subclass that tokenises its
        rows otherwise (its own ``prepare`` or ``_encode``) gets none."""
        own = type(self).prepare is CausalLM.prepare and type(self)._encode is CausalLM._encode
        if not (self.tokenize_in_loader and own):
            return None
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        return RowEncoder(self.tokenizer, views)

    def _count_truncation(self, cut_prompt: bool, cut_completion: bool) -> None:
        self.truncated["prompt"] += cut_prompt
        self.truncated["completion"] += cut_completion
        if sum(self.truncated.values()) == 1 and (cut_prompt or cut_completion):  # say it once, when it first happens
            rank_zero_warn(
                f"rows longer than backbone.max_prompt_length={self.max_prompt_length} (prompt) or"
                f" backbone.max_length={self.max_length} (prompt + answer) are truncated: the prompt keeps its last"
                " tokens, the answer its first. Counts so far are in backbone.truncated."
            )

    def _check_tools(self, tools: list | None) -> None:
        if self._warned_tools or not tools or not any(tools):
            return
        source = template_source(self.tokenizer) or ""
        if "tools" not in source:  # the template never reads them: the schemas would silently be left out
            self._warned_tools = True
            rank_zero_warn(
                "rows carry tools, and the tokenizer's chat template never reads `tools`, so the tool schemas are"
                " not rendered; set backbone.chat_template to a template that renders them"
            )

    def prepare(self, views: list[ViewInputs]) -> TokenBatch:
        rows, score_prompt = [], []
        for view in views:
            encoded = self._encode(view.prompts, view.completions, view.batch)
            # Joint: the prompt's tokens after the first (which nothing predicts) join the scored completion.
            rows += [(p[:1], p[1:] + c) for p, c in encoded] if view.joint else encoded
            score_prompt += [view.score_prompt] * len(view.prompts)
        width = max(len(p) + len(c) for p, c in rows)
        if (self.share_prompt or self.pack_rows) and self._takes_masks:
            packing = Packing.plan(rows, self.share_prompt, self.pack_rows)
            if packing.size < len(rows) * width:  # else the plain layout is as small, and simpler
                packed = pack_rows(rows, score_prompt, self.tokenizer.pad_token_id, packing)
                keep = packed.input_ids.shape[1] - int(packed.targets.pos.min())
                return TokenBatch(packed.input_ids, (packed.segments >= 0).long(), packed.completion_mask, keep,
                                  packed.prompt_mask, segments=packed.segments, position_ids=packed.position_ids,
                                  targets=packed.targets)
        n = len(rows)
        input_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        completion_mask = torch.zeros((n, width), dtype=torch.long)
        prompt_mask = torch.zeros((n, width), dtype=torch.long) if any(score_prompt) else None
        first_completion = width
        for i, (p, c) in enumerate(rows):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attention_mask[i, : len(p) + len(c)] = 1
            completion_mask[i, len(p) : len(p) + len(c)] = 1
            first_completion = min(first_completion, len(p))
            if score_prompt[i]:
                prompt_mask[i, 1 : len(p)] = 1  # the first token has nothing before it to predict it
        # The token at position t is predicted by the logits at t - 1: keep from the one before the
        # earliest completion token. Long prompts then never materialise vocabulary-sized logits, unless a
        # view asks for its prompt to be scored.
        keep = width if prompt_mask is not None else width - max(first_completion - 1, 0)
        return TokenBatch(input_ids, attention_mask, completion_mask, keep, prompt_mask)

    # ---------------------------------------------------------------- setup: pairs truncation makes identical
    def on_setup(self, datamodule: Any) -> None:
        """Refuse chat roles the template does not handle (:func:`.tokenize.check_data_roles`), then drop the pairs
        whose chosen and rejected rows are the same tokens once truncated
        (:func:`.identical_pairs.drop_identical_pairs`); counts per split are in ``dropped_identical``."""
        check_data_roles(datamodule, self._tokenizer)
        if datamodule.row_kind == "lists":  # preference-tree steps given as text, counted in tokens at collate
            datamodule.layout.use_model(step_tokens=StepTokens(self._tokenizer(), self.max_length, self.max_prompt_length))
        if datamodule.row_kind != "pairs":
            return
        self._tokenizer()
        limits = f"backbone.max_length={self.max_length} / max_prompt_length={self.max_prompt_length}"
        drop_identical_pairs(datamodule, functools.partial(self._identical_pairs, datamodule=datamodule), limits,
                             self.dropped_identical, self._checked_identical)

    def _tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        return self.tokenizer

    def _identical_pairs(self, ds, datamodule) -> list[int]:
        """Positions of the pairs of ``ds`` whose truncated chosen and rejected token ids are equal."""
        encode = functools.partial(self._encode, count=False)
        return identical_pairs(self.tokenizer, encode, ds, datamodule.collate if datamodule is not None else None,
                               self.max_length - self.max_prompt_length)

    # ---------------------------------------------------------------- scoring
    def score(self, prepared: TokenBatch, model: nn.Module | None = None) -> SequenceScores:
        token_logps, targets, _ = self.token_logps(prepared, model)
        score, length = targets.sum(token_logps)
        out = SequenceScores(score, length)
        if prepared.prompt_mask is not None:
            out.prompt, out.prompt_length = targets.sum(token_logps, prompt=True)
        return out

    def score_tokens(self, prepared: TokenBatch, model: nn.Module | None = None, needs=None, reference=None,
                     of_reference: bool = False):
        """Per-token scores (:class:`~alignsuite.scores.TokenOutputs`) for token-level objectives; see
        :func:`.token_outputs.score_tokens`."""
        return score_tokens(self, prepared, model, needs, reference, of_reference)

    def hidden_states_shape(self) -> tuple[int, int]:
        """``(how many hidden states the model returns: embeddings and every layer, their width)``."""
        config = self.policy.config.get_text_config()
        return config.num_hidden_layers + 1, config.hidden_size

    def token_logps(self, prepared: TokenBatch, model: nn.Module | None = None, compute=None, hidden_states: bool = False):
        """``(token log-probs [M], targets, returned)``: :func:`.token_outputs.forward_tokens`."""
        return forward_tokens(self, prepared, model, compute, hidden_states)

    # ---------------------------------------------------------------- generation and export
    @torch.no_grad()
    def generate(self, prompts: list[Text], model: nn.Module | None = None, seed: int | None = None,
                 max_new_tokens: int = 64, do_sample: bool | None = None, guide: PAD | None = None, **kwargs) -> list[str]:
        """One completion per prompt from the policy (or ``model``): greedy, or sampled when ``seed`` is given (or
        ``do_sample``) from a generator seeded with it; each step guided by ``guide`` (``backbone.guide`` if None)."""
        enc = self.generation_inputs(prompts)
        guide = guide if guide is not None else self.guide
        if guide is not None:
            device = next((model if model is not None else self.policy).parameters()).device
            kwargs["logits_processor"] = [*kwargs.get("logits_processor", []), guide.processor(self, prompts, enc, device)]
        return self._sample(enc, model, seed, max_new_tokens, do_sample, **kwargs)

    def generation_inputs(self, prompts: list[Text]):
        """The tokenizer's left-padded inputs for ``prompts`` (chat prompts rendered by the template)."""
        tok = self.tokenizer
        texts = [render_prompt(tok, p) if isinstance(p, list) else p for p in prompts]
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the last position of every row
        try:
            return tok(texts, return_tensors="pt", padding=True, add_special_tokens=not isinstance(prompts[0], list))
        finally:
            tok.padding_side = side

    def _sample(self, enc, model: nn.Module | None, seed: int | None, max_new_tokens: int, do_sample: bool | None,
                **kwargs) -> list[str]:
        """Generate from left-padded inputs ``enc`` and decode what follows them."""
        model = model if model is not None else self.policy
        enc = enc.to(next(model.parameters()).device)
        do_sample = seed is not None if do_sample is None else do_sample
        was_training = model.training
        model.eval()
        try:
            # generate() draws from the global generator; fork it so a seed neither depends on nor disturbs
            # the training run's random state.
            with torch.random.fork_rng(devices=[enc["input_ids"].device] if enc["input_ids"].is_cuda else []):
                if seed is not None:
                    torch.manual_seed(seed)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        finally:
            model.train(was_training)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def save_pretrained(self, path: str, merge_adapters: bool = True) -> None:
        """A folder ``AutoModelForCausalLM.from_pretrained`` loads: LoRA merged, or the adapter alone."""
        model = self.policy
        if self.has_adapters and merge_adapters:
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path)
        self.save_preprocessing(path)

    def save_preprocessing(self, path: str) -> None:
        """Besides the weights, what an export holds to turn inputs into the model's tokens: the tokenizer (a
        vision-language model's processor, a speech-token model's settings too)."""
        self.tokenizer.save_pretrained(path)

