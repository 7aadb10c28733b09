"""Vision-language models from transformers: LLaVA, Qwen2-VL / Qwen2.5-VL, and any other
``AutoModelForImageTextToText`` that comes with an ``AutoProcessor``.

Score convention: the sum of log-probabilities of the answer tokens, as for :class:`CausalLM`; the prompt's
text tokens, the image tokens the processor expands its placeholders into, and padding are excluded.

Rows (``alignsuite.data.VisionPairs``): ``prompt`` chat messages whose content is a list of parts
(``{"type": "image"}`` where each image goes, ``{"type": "text", "text": ...}``), answers as assistant
messages, and ``images``, one list of RGB images per row. The processor's chat template renders the prompt
(with the generation prompt) and the processor expands each image placeholder into the model's image
tokens; the answer is what rendering prompt + answer adds. Both are tokenised without the tokenizer's
special tokens, in training and in generation: the template writes them (a tokenizer that adds a bos
under a template that writes one would give every row two, as CausalLM's chat rows avoid too). Prompts are
never cut (cutting could drop image tokens): a prompt over ``max_prompt_length`` tokens is an error that
names its row. Answers keep their first ``max_length - len(prompt)`` tokens, counted in ``truncated``.

Every view of a step (chosen, rejected, chosen under a corrupted image ...) goes through the processor in
one call and through the model in one stacked forward; the policy and the reference read the same prepared
inputs, so they see the same pixels. Conditions: ``corrupt_image`` replaces each row's images by a
corruption drawn from the row's own seed as the view's condition says (settings in
``alignsuite.objectives.multimodal``, pixels in ``image_views``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from torch import nn

from alignsuite.backbones.base import ViewInputs
from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.backbones.image_views import corrupt_images
from alignsuite.backbones.lora import LoraSpec
from alignsuite.backbones.pad import PAD
from alignsuite.backbones.token_batch import TokenBatch
from alignsuite.backbones.tokenize import batch_rows, read_chat_template, render_chat, render_prompt
from alignsuite.sources import resolve_model_path

# Where the families keep the parts around the language model (transformers 5 module names).
VISION_TOWERS = ("vision_tower", "visual", "vision_model", "vision_encoder")
PROJECTORS = ("multi_modal_projector", "merger", "mm_projector", "connector", "embed_vision")
LANGUAGE_MODELS = ("language_model",)
# Processor outputs that are not per-image tensors: rebuilt here, or not model inputs.
_TOKEN_INPUTS = ("input_ids", "attention_mask")


def find_module(model: nn.Module, names: tuple[str, ...], given: str | None = None) -> str | None:
    """The dotted name of ``model``'s first sub-module whose last name is in ``names`` (or ``given`` itself)."""
    if given is not None:
        model.get_submodule(given)  # raises AttributeError naming what is missing
        return given
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in names:
            return name
    return None


class VisionLanguage(CausalLM):
    """A vision-language model (``AutoModelForImageTextToText`` + ``AutoProcessor``) from a local folder or a
    hub id, fully fine-tuned or with LoRA on its language model.

    Args:
        model_name_or_path: folder written by ``save_pretrained`` (model and processor), a hub id, or ``toy:vlm``.
        processor_name_or_path: defaults to the model's.
        processor_kwargs: passed to ``AutoProcessor.from_pretrained``, e.g. ``{size: {shortest_edge: 3136,
            longest_edge: 802816}}`` to bound Qwen2-VL's pixels per image, hence its image tokens (4 to 1024 here;
            its default lets one large image take thousands).
        lora: train a LoRA adapter on the language model's linear layers instead of the full weights
            (``target_modules`` are looked for in the language model only, unless ``train_vision_tower``).
        train_vision_tower: train the vision encoder too (frozen by default, as in mDPO and most VLM DPO).
        train_projector: train the projector between vision encoder and language model (under LoRA it is
            trained in full, as a ``modules_to_save``).
        vision_tower, projector: dotted module names, when the model's are not among the usual ones.
        max_length: most tokens in a prompt (image tokens included) + answer row.
        max_prompt_length: most prompt tokens, image tokens included; a longer prompt is an error.
        dtype, gradient_checkpointing, attn_implementation, disable_dropout, trust_remote_code: as for CausalLM.
        chat_template: a Jinja template (or the path of a ``.jinja`` file) set on the processor.
        guide: refused, with the reason (`CausalLM` takes a decoding-time guide): PAD's reward model reads token
            ids alone, and a vision-language prompt holds image placeholders whose pixels it would not see, so it
            would steer an answer about an image it cannot look at.
    """

    modality = "vision_language"
    conditions = ("corrupt_image",)
    generation_columns = ("images",)
    joint_views = False  # image placeholders are no text to score
    guided_generation = False  # the answers depend on the images, which a guide's reward model would not read
    image_column = "images"

    def __init__(
        self,
        model_name_or_path: str,
        processor_name_or_path: str | None = None,
        processor_kwargs: dict | None = None,
        lora: LoraSpec | None = None,
        train_vision_tower: bool = False,
        train_projector: bool = False,
        vision_tower: str | None = None,
        projector: str | None = None,
        max_length: int = 2048,
        max_prompt_length: int = 1536,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        disable_dropout: bool = True,
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        guide: PAD | None = None,
    ) -> None:
        if guide is not None:  # `CausalLM` takes one; here it would guide blind to the images
            guide.check(self)  # raises, naming the option and why
        super().__init__(
            model_name_or_path, processor_name_or_path, lora, max_length, max_prompt_length, dtype,
            gradient_checkpointing, attn_implementation, disable_dropout, trust_remote_code, chat_template,
        )
        self.processor_name_or_path = processor_name_or_path
        self.processor_kwargs = dict(processor_kwargs or {})
        self.train_vision_tower, self.train_projector = train_vision_tower, train_projector
        self.vision_tower, self.projector = vision_tower, projector
        self.processor = None

    # ---------------------------------------------------------------- building
    def _auto_model(self):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def _load_tokenizer(self):
        from transformers import AutoProcessor

        path = resolve_model_path(self.processor_name_or_path or self.model_name_or_path)
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=self.trust_remote_code,
                                                      **self.processor_kwargs)
        except OSError as e:
            raise OSError(f"cannot load the processor {path!r}: not a local folder, nor a reachable hub id ({e})") from e
        tok = getattr(processor, "tokenizer", None)
        if tok is None or getattr(processor, "image_processor", None) is None:
            raise ValueError(
                f"{path!r} holds a {type(processor).__name__}, not a vision-language processor (with a tokenizer and"
                " an image processor); VisionLanguage needs the model's AutoProcessor"
            )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.chat_template is not None:
            processor.chat_template = read_chat_template(self.chat_template)
        elif getattr(processor, "chat_template", None) is None:
            processor.chat_template = getattr(tok, "chat_template", None)
        self.processor = processor
        return tok

    def _parts(self, model: nn.Module) -> tuple[str | None, str | None, str | None]:
        return (find_module(model, VISION_TOWERS, self.vision_tower), find_module(model, PROJECTORS, self.projector),
                find_module(model, LANGUAGE_MODELS))

    def _load_model(self, source: str | None = None, dtype: str | None = None) -> nn.Module:
        model = super()._load_model(source, dtype)
        self._check_processor(model)
        return model

    def _check_processor(self, model: nn.Module) -> None:
        """Refuse a processor whose image token the model does not know (a processor of another model)."""
        token_id = getattr(model.config, "image_token_id", getattr(model.config, "image_token_index", None))
        token = getattr(self.processor, "image_token", None)
        if self.processor is None or token_id is None or token is None:
            return
        mine = self.tokenizer.convert_tokens_to_ids(token)
        if mine != token_id:
            raise ValueError(
                f"the processor's image token {token!r} is id {mine}, and model {self.model_name_or_path!r} expects"
                f" image token id {token_id}: the processor belongs to another model; set"
                " backbone.processor_name_or_path to this model's"
            )

    def configure(self) -> None:
        if self.policy is not None:
            return
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        super().configure()
        if self.lora is None:  # full fine-tuning: freeze what is not trained (under LoRA peft froze everything)
            vision, projector, _ = self._parts(self.policy)
            if vision is not None and not self.train_vision_tower:
                self.policy.get_submodule(vision).requires_grad_(False)
            if projector is not None:
                self.policy.get_submodule(projector).requires_grad_(self.train_projector)
            missing = [o for o, name, trained in (("vision_tower", vision, self.train_vision_tower),
                                                  ("projector", projector, self.train_projector))
                       if name is None and not trained]
            if missing:
                raise ValueError(
                    f"cannot find the {' nor the '.join(missing)} of {type(self.policy).__name__} to freeze; set"
                    f" {' and '.join('backbone.' + m for m in missing)} to the module name(s), or train them"
                )

    def _peft_config(self, model: nn.Module):
        """LoRA on the language model's linear layers (and the vision tower's if trained); the projector in
        full when trained. Module names are matched by one regular expression over full names."""
        vision, projector, language = self._parts(model)
        if language is None:
            raise ValueError(f"cannot find the language model of {type(model).__name__} to put LoRA on")
        scopes = [language] + ([vision] if self.train_vision_tower and vision else [])
        targets = self.lora.target_modules
        if targets == "all-linear":
            targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                              if isinstance(m, nn.Linear) and any(n.startswith(s + ".") for s in scopes)})
        elif isinstance(targets, str):
            targets = [targets]
        pattern = rf"^({'|'.join(map(re.escape, scopes))})\..*\.({'|'.join(map(re.escape, targets))})$"
        config = self.lora.to_peft("CAUSAL_LM")
        config.target_modules = pattern
        if self.train_projector and projector is not None:
            config.modules_to_save = list(config.modules_to_save or []) + [projector.rsplit(".", 1)[-1]]
        return config

    def save_preprocessing(self, path: str) -> None:
        """The processor (its tokenizer with it): ``AutoProcessor`` loads the export folder."""
        self.processor.save_pretrained(path)

    # ---------------------------------------------------------------- setup
    def on_setup(self, datamodule: Any) -> None:
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        # The data layout refuses the image token typed in a row's text, naming the file, row and field.
        datamodule.layout.use_model(image_tokens=[getattr(self.processor, "image_token", None) or ""])

    # ---------------------------------------------------------------- conditions
    def transform(self, condition: Any, view: ViewInputs) -> ViewInputs:
        """``corrupt_image``: each row's images replaced as the condition's settings say (`corrupt_images`, drawn
        from the rows' ``index``, so the same at every step and for every model that scores the view)."""
        if getattr(condition, "name", condition) != "corrupt_image" or not hasattr(condition, "kind"):
            return super().transform(condition, view)
        if "index" not in view.batch:
            raise ValueError("the corrupt_image condition draws from each row's index, and the batch has no index column")
        rows = [int(i) for i in view.batch["index"]]
        return view.replace(batch=dict(view.batch, images=corrupt_images(condition, view.batch["images"], rows)))

    # ---------------------------------------------------------------- the step
    def _render(self, view: ViewInputs, rows: list[int] | None) -> tuple[list[str], list[str]]:
        prompts, answers = [], []
        for i, (p, c) in enumerate(zip(view.prompts, view.completions)):
            row = rows[i] if rows else None
            if not isinstance(p, list) or not isinstance(c, list):
                raise ValueError(f"VisionLanguage needs chat-message rows (dataset row {row}); use the layout"
                                 " alignsuite.data.VisionPairs")
            prompt_text, answer = render_chat(self.processor, p, c, row=row)
            prompts.append(prompt_text)
            answers.append(answer)
        return prompts, answers

    def _process(self, texts: list[str], images: list[list], rows: list[int | None]) -> dict:
        flat = [img for row in images for img in row]
        try:
            # The chat template writes the special tokens (bos) itself; the tokenizer's would add a second bos,
            # as for CausalLM's chat rows (and TRL's add_special_tokens=False).
            return self.processor(text=texts, images=flat or None, return_tensors="pt", padding=True,
                                  add_special_tokens=False)
        except (ValueError, IndexError) as e:
            shown = ", ".join(str(r) for r in dict.fromkeys(rows) if r is not None)
            where = f" (dataset rows {shown})" if shown else ""
            raise ValueError(f"the processor could not match the images to the prompts' image placeholders{where}:"
                             f" {e}") from e

    def prepare(self, views: list[ViewInputs]) -> TokenBatch:
        texts, answers, images, rows = [], [], [], []
        for view in views:
            _, index = batch_rows(view.batch, len(view.prompts))
            index = index or [None] * len(view.prompts)
            p, a = self._render(view, index)
            texts += p
            answers += a
            images += list(view.batch.get("images") or [[] for _ in view.prompts])
            rows += index
        enc = self._process(texts, images, rows)
        answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
        mask = enc["attention_mask"].bool()
        pairs = []
        for i in range(len(texts)):
            prompt = enc["input_ids"][i][mask[i]].tolist()
            if len(prompt) > self.max_prompt_length:
                raise ValueError(
                    f"the prompt of dataset row {rows[i]} is {len(prompt)} tokens with its image tokens, over"
                    f" backbone.max_prompt_length={self.max_prompt_length}; prompts are never cut (that could drop"
                    " image tokens): raise max_prompt_length (and max_length), or shorten the row"
                )
            answer = list(answer_ids[i])
            cut = len(answer) > self.max_length - len(prompt)
            answer = answer[: self.max_length - len(prompt)]
            self._count_truncation(False, cut)
            if not answer:
                raise ValueError(f"the answer of dataset row {rows[i]} tokenised to no tokens; nothing to score")
            pairs.append((prompt, answer))
        width = max(len(p) + len(c) for p, c in pairs)
        n = len(pairs)
        input_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        completion_mask = torch.zeros((n, width), dtype=torch.long)
        extra = {k: v for k, v in enc.items() if k not in _TOKEN_INPUTS}
        # Per-token inputs (Gemma's token_type_ids, Qwen's mm_token_type_ids) follow the tokens: re-laid out below.
        per_token = {k: torch.zeros((n, width), dtype=v.dtype) for k, v in extra.items()
                     if k.endswith("token_type_ids") and torch.is_tensor(v) and v.shape == enc["input_ids"].shape}
        first = width
        for i, (p, c) in enumerate(pairs):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attention_mask[i, : len(p) + len(c)] = 1
            completion_mask[i, len(p) : len(p) + len(c)] = 1
            for k, t in per_token.items():
                t[i, : len(p)] = extra[k][i][mask[i]]
            first = min(first, len(p))
        extra.update(per_token)
        return TokenBatch(input_ids, attention_mask, completion_mask, width - max(first - 1, 0), None, extra)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], model: nn.Module | None = None, seed: int | None = None,
                 images: list[list] | None = None, max_new_tokens: int = 64, do_sample: bool | None = None,
                 guide: PAD | None = None, **kwargs) -> list[str]:
        """One answer per prompt (chat messages with image parts, or text: one user turn without an image) and
        its ``images``: greedy, or sampled from ``seed`` (or with ``do_sample``) without touching the training
        run's random state. A decoding-time ``guide`` is refused (``guided_generation``), naming the option."""
        if guide is not None:
            guide.check(self)  # raises: this backbone takes no guide
        return self._sample(self.generation_inputs(prompts, images), model, seed, max_new_tokens, do_sample, **kwargs)

    def generation_inputs(self, prompts: list, images: list[list] | None = None) -> dict:
        """The processor's left-padded inputs for ``prompts`` (a text prompt is one user turn) and their
        ``images``, tokenised as in training."""
        prompts = [[{"role": "user", "content": [{"type": "text", "text": p}]}] if isinstance(p, str) else p
                   for p in prompts]
        images = [im or [] for im in images] if images is not None else [[] for _ in prompts]
        texts = [render_prompt(self.processor, p) for p in prompts]
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues from the last position of every row
        try:
            return self._process(texts, images, [None] * len(texts))
        finally:
            tok.padding_side = side
