"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> str:
    """A random-init tiny Llama and the toy word-level tokenizer, written with ``save_pretrained``.

    Loads through the same ``from_pretrained`` path a real checkpoint takes, in well under a second.
    The weights are seeded (without touching the global RNG) so every run sees the same model. The
    init is wider than Llama's default so that next-token distributions depend clearly on the context:
    a near-uniform model would make "the prompt changes the score" a difference in the fourth decimal.
    """
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=1234, initializer_range=0.2)


def save_tiny_lm(path, seed: int, **config_overrides) -> str:
    """Save a seeded random-init tiny Llama (toy config and tokenizer, ``config_overrides`` applied)."""
    from transformers import LlamaForCausalLM

    from alignsuite.toy.llm import EchoWorld

    world = EchoWorld()
    tok = world.build_tokenizer()
    config = world.build_config(tok)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
