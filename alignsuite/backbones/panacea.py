"""Panacea (Zhong et al. 2024, arXiv 2402.02030): one preference-conditioned model for a whole front, one class
per token backbone.

Each is `PreferenceAdapted` (:mod:`.preference_adapted`: the adapter, the preference, the reference as the
adapter off, the export, a Panacea reference following the policy's vector) in front of the plain backbone, with
its ``__init__`` spelled out for the command line: `PanaceaLM` (a causal LM), `PanaceaVLM` (a vision-language
model, the adapter on its language model), `PanaceaSpeechLM` (a speech-token LM). ``reading(backbone, folder)``
picks the one that matches a recipe's plain backbone (``evaluate`` of a Panacea export beside plain models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from alignsuite.backbones.causal_lm import CausalLM
from alignsuite.backbones.pad import PAD
from alignsuite.backbones.preference_adapted import FollowedPreference, PreferenceAdapted, check_preference
from alignsuite.backbones.speech_tokens import SpeechTokenLM
from alignsuite.backbones.svd_lora import PanaceaSpec
from alignsuite.backbones.tokenize import Text
from alignsuite.backbones.vision_language import LANGUAGE_MODELS, VisionLanguage, find_module


class PanaceaLM(PreferenceAdapted, CausalLM):
    """A causal LM trained with a Panacea adapter (Zhong et al. 2024, arXiv 2402.02030) instead of LoRA.

    Args:
        model_name_or_path: a base model (folder, hub id, ``toy:llm``) or a Panacea export (base + adapter).
        panacea: the adapter's settings (rank, rank per preference, target modules, scale init); the preference
            length is read from the data's dimensions at setup, or from an export's ``panacea.json``.
        preference: the vector the model starts with (``predict`` and ``validate`` generate with it); uniform when
            None. Training draws its own each step (``PreferenceSampler``).
        guide: a decoding-time guide (`alignsuite.backbones.PAD`) every ``generate`` uses, at the preference vector
            the model generates with: the guided model at that point of its front.
        The others: as `CausalLM`'s.
    """

    def __init__(
        self,
        model_name_or_path: str,
        panacea: PanaceaSpec | None = None,
        preference: list[float] | None = None,
        tokenizer_name_or_path: str | None = None,
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
        super().__init__(model_name_or_path, tokenizer_name_or_path, None, max_length, max_prompt_length, dtype,
                         gradient_checkpointing, attn_implementation, disable_dropout, trust_remote_code, chat_template,
                         share_prompt, pack_rows, lm_head_at_scored_only, lm_head_chunk, tokenize_in_loader, guide)
        self._init_preference(panacea, preference)

    @torch.no_grad()
    def generate(self, prompts: list[Text], model: nn.Module | None = None, seed: int | None = None,
                 max_new_tokens: int = 64, do_sample: bool | None = None, preference: Sequence[float] | None = None,
                 **kwargs) -> list[str]:
        """As `CausalLM.generate`; ``preference`` sets the preference vector first (and it stays set); a guide
        (``guide``, or ``backbone.guide``) guides the model at that vector."""
        return super().generate(prompts, model, seed, max_new_tokens, do_sample, preference=preference, **kwargs)


class PanaceaVLM(PreferenceAdapted, VisionLanguage):
    """A vision-language model trained with a Panacea adapter (Zhong et al. 2024, arXiv 2402.02030) on its language
    model.

    The adapter goes on the language model's linear layers only: ``panacea.target_modules`` ("all-linear", or names
    such as ``q_proj``, which vision towers have too) is looked for there, as `VisionLanguage`'s LoRA is; over the
    whole model "all-linear" would hit the vision tower and the projector as well. They stay frozen, as the
    base's: the preference weighs judgements of the answer, which the language model writes, so what the image
    reads as needs no preference (as mDPO and most VLM DPO keep the vision tower frozen); the reference (the adapter
    off) is then the base model exactly, and the export, whose weights are the base's beside the adapter, loses
    nothing trained (a vision tower or projector trained in full could not be saved unmerged beside it: hence no
    ``train_vision_tower``, ``train_projector`` nor ``lora`` here). A decoding-time guide is refused, as by
    `VisionLanguage`.

    Args:
        model_name_or_path: a base model (folder, hub id, ``toy:vlm``) or a Panacea VLM export (base + adapter).
        panacea, preference: as `PanaceaLM`'s.
        The others: as `VisionLanguage`'s.
    """

    def __init__(
        self,
        model_name_or_path: str,
        panacea: PanaceaSpec | None = None,
        preference: list[float] | None = None,
        processor_name_or_path: str | None = None,
        processor_kwargs: dict | None = None,
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
    ) -> None:
        super().__init__(model_name_or_path, processor_name_or_path, processor_kwargs, None, False, False, vision_tower,
                         projector, max_length, max_prompt_length, dtype, gradient_checkpointing, attn_implementation,
                         disable_dropout, trust_remote_code, chat_template)
        self._init_preference(panacea, preference)

    def adapter_scopes(self, model: nn.Module) -> tuple[str, ...]:
        language = find_module(model, LANGUAGE_MODELS)
        if language is None:
            raise ValueError(f"cannot find the language model of {type(model).__name__} to put the Panacea adapter on")
        return (language,)


class PanaceaSpeechLM(PreferenceAdapted, SpeechTokenLM):
    """A causal LM over text and speech codec tokens (`SpeechTokenLM`) trained with a Panacea adapter (Zhong et al.
    2024, arXiv 2402.02030) instead of LoRA: its export holds ``speech_tokens.json`` beside the base and adapter.

    Args:
        model_name_or_path: a base model (folder, hub id, ``toy:tts``) or a Panacea export (base + adapter).
        panacea, preference: as `PanaceaLM`'s.
        The others: as `SpeechTokenLM`'s.
    """

    def __init__(
        self,
        model_name_or_path: str,
        speech_token_offset: int,
        codebook_size: int,
        speech_end_token: str | int,
        panacea: PanaceaSpec | None = None,
        preference: list[float] | None = None,
        num_codebooks: int = 1,
        speech_start_token: str | int | None = None,
        codec: str | dict | None = None,
        vocoder: str | dict | None = None,
        tokenizer_name_or_path: str | None = None,
        max_length: int = 2048,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        disable_dropout: bool = True,
        trust_remote_code: bool = False,
        guide: PAD | None = None,
    ) -> None:
        super().__init__(model_name_or_path, speech_token_offset, codebook_size, speech_end_token, num_codebooks,
                         speech_start_token, codec, vocoder, tokenizer_name_or_path, None, max_length, dtype,
                         gradient_checkpointing, attn_implementation, disable_dropout, trust_remote_code, guide)
        self._init_preference(panacea, preference)


# The Panacea model of each plain backbone, the most specific first: how evaluate reads an export beside plain models.
_PANACEA_OF = ((VisionLanguage, PanaceaVLM), (SpeechTokenLM, PanaceaSpeechLM), (CausalLM, PanaceaLM))


def reading(backbone: CausalLM, folder: str) -> PreferenceAdapted:
    """The Panacea export ``folder`` read with the settings of ``backbone``, a recipe's plain backbone: a
    `PanaceaVLM` for a `VisionLanguage` recipe, a `PanaceaSpeechLM` for a `SpeechTokenLM` one, a `PanaceaLM` for
    a causal LM's."""
    for plain, panacea in _PANACEA_OF:
        if isinstance(backbone, plain):
            return panacea.reading(backbone, folder)
    raise ValueError(f"{folder} is a Panacea export and {type(backbone).__name__} has no Panacea model to read it"
                     " (PanaceaLM: a causal LM's; PanaceaVLM: a vision-language model's; PanaceaSpeechLM: a"
                     " speech-token LM's)")


__all__ = ["FollowedPreference", "PanaceaLM", "PanaceaSpec", "PanaceaSpeechLM", "PanaceaVLM", "PreferenceAdapted",
           "check_preference", "reading"]
