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
    from transformers import LlamaForCausalLM

    from alignsuite.toy.llm import EchoWorld

    world = EchoWorld()
    tok = world.build_tokenizer()
    config = world.build_config(tok)
    config.initializer_range = 0.2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
