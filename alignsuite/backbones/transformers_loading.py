"""Loading a transformers model and its tokenizer from a ``save_pretrained`` folder or a hub id.

What the token backbones do alike at load: the dtype and attention settings, the meta-device build of a sharded
run (whose weights come later, from the checkpoint), dropout switched off, and a tokenizer with a pad token and
the recipe's chat template.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from alignsuite.backbones.svd_lora import CONFIG_FILE as PREFERENCE_ADAPTER_FILE, is_export
from alignsuite.backbones.tokenize import read_chat_template
from alignsuite.sources import resolve_model_path


def load_pretrained_model(auto_class, path: str, dtype: str, attn_implementation: str | None, trust_remote_code: bool,
                          empty_weights: bool, disable_dropout: bool, preference_adapter: bool = False) -> nn.Module:
    """``auto_class.from_pretrained(path)`` (or, with ``empty_weights``, the same model on the meta device),
    its dropout zeroed when ``disable_dropout``; an error naming ``path`` when nothing loads from it, or when it
    is a preference-conditioned export and the caller does not read its adapter (``preference_adapter``)."""
    if not preference_adapter and is_export(path):
        raise ValueError(f"{path} is a Panacea export: a base model with a preference adapter beside it"
                         f" ({PREFERENCE_ADAPTER_FILE}). Loaded as a plain model, its adapter would be dropped and the"
                         " base used in its place: load it with alignsuite.backbones.PanaceaLM (PanaceaVLM for a vision-language"
                         " model, PanaceaSpeechLM for a speech-token LM) and choose a preference")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    kwargs["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = model_on_meta(auto_class, path, kwargs) if empty_weights else auto_class.from_pretrained(path, **kwargs)
    except OSError as e:
        raise OSError(f"cannot load model {path!r}: not a local save_pretrained folder, nor a reachable hub id ({e})") from e
    if disable_dropout:
        zero_dropout(model)
    return model


def model_on_meta(auto_class, path: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model of ``path`` on the meta device, from its config alone (its generation settings too)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"])
    if kwargs["dtype"] == "auto":  # the checkpoint's dtype, as from_pretrained reads it
        kwargs = {**kwargs, "dtype": getattr(config, "dtype", None) or torch.float32}
    with torch.device("meta"):
        model = auto_class.from_config(config, **kwargs)
    with contextlib.suppress(OSError):
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def zero_dropout(model: nn.Module) -> None:
    """Every dropout probability of ``model`` set to 0: dropout makes policy and reference disagree on identical
    weights."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        # Llama, Qwen2, Mistral, Gemma, Phi-3 ... apply attention dropout functionally, with a float
        # probability copied from the config onto the attention module (`self.attention_dropout`), not
        # through an nn.Dropout; zero those too. The config itself is left alone, so exports keep it.
        for name, value in list(vars(m).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(m, name, 0.0)


def load_tokenizer(path: str, trust_remote_code: bool, chat_template: str | None):
    """``AutoTokenizer.from_pretrained(path)`` with a pad token, and ``chat_template`` (a template or a ``.jinja``
    file) set on it when given."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise OSError(f"cannot load the tokenizer {path!r}: not a local folder, nor a reachable hub id ({e})") from e
    if tok.pad_token is None:
        # Padding positions are masked out of attention and scores, so any id will do; eos is the
        # usual choice and avoids resizing the embeddings.
        if tok.eos_token is None:
            raise ValueError(f"tokenizer at {path!r} has neither a pad nor an eos token; give it one")
        tok.pad_token = tok.eos_token
    if chat_template is not None:
        tok.chat_template = read_chat_template(chat_template)
    return tok


def check_same_vocabulary(mine, source: str, option: str, trust_remote_code: bool) -> None:
    """The tokenizer of model ``source`` has ``mine``'s vocabulary, else an error naming ``option``: another
    model's log-probs would not line up with this one's token by token."""
    try:
        other = load_tokenizer(resolve_model_path(source), trust_remote_code, None)
    except FileNotFoundError as e:  # the command line reports it as the user's error
        raise FileNotFoundError(f"{option}: {e}") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{option}: cannot read the tokenizer of {source!r} to compare it with the policy's: {e}") from e
    ours, theirs = mine.get_vocab(), other.get_vocab()
    if ours != theirs:
        differ = sorted(set(ours.items()) ^ set(theirs.items()), key=str)[:3]
        raise ValueError(
            f"{option}: {source!r} has another tokenizer than the policy's ({len(theirs)} tokens against"
            f" {len(ours)}; first differences (token, id): {differ}); its log-probs would not line up with the"
            " policy's token by token: use a checkpoint of the same family, with the same tokenizer"
        )


def check_embeddings(source: str, highest: int, option: str, trust_remote_code: bool, why: str) -> None:
    """Model ``source`` has a token embedding for id ``highest`` (read from its config, no weights), else an error
    naming ``option`` and saying ``why`` the id is needed."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"{option}: cannot read the config of {source!r} to compare its vocabulary: {e}") from e
    size = getattr(config.get_text_config(), "vocab_size", None)
    if size is not None and size <= highest:
        raise ValueError(f"{option}: {source!r} has {size} token embeddings, and {why}")


__all__ = ["check_embeddings", "check_same_vocabulary", "load_pretrained_model", "load_tokenizer", "model_on_meta",
           "zero_dropout"]
