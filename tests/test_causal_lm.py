"""The causal-LM backbone: scores equal a hand computation on the plain transformers model, prompts and
padding are never scored, truncation follows its documented rule, LoRA references and exports load back
and reproduce the policy's numbers."""

from __future__ import annotations

import json
import os
import random
import re

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignsuite.backbones import CausalLM, LoraSpec
from alignsuite.backbones.token_scoring import selective_log_softmax
from alignsuite.reference import AdapterDisabled, FrozenCopy
from conftest import save_tiny_lm
from alignsuite.toy.llm import CHAT_TEMPLATE, SPECIAL, WORDS
from alignsuite.backbones.base import ViewInputs, shared_prompts
from alignsuite.backbones.tokenize import STANDARD_ROLES, may_be_identical, template_roles

ATOL = 1e-5


# --- helpers: token ids written out by hand, and the score computed one unpadded row at a time -------


def word_ids(words: str | list[str]) -> list[int]:
    """The toy vocabulary is SPECIAL + WORDS, one id per whitespace-separated word."""
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    return [vocab[w] for w in (words.split() if isinstance(words, str) else words)]


BOS, EOS, PAD = word_ids(["<bos>", "<eos>", "<pad>"])


def direct_score(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """sum_j log p(completion_j | prompt, completion_<j) from one unpadded forward pass."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = 0.0
    for j, token in enumerate(completion_ids):
        t = len(prompt_ids) + j  # position of the completion token; predicted by the logits at t - 1
        total += logp[t - 1, token].item()
    return total


def sequence_logp(model, ids: list[int]) -> float:
    """log p(ids[1:] | ids[0]): every token after the first, prompt included."""
    return direct_score(model, ids[:1], ids[1:])


def text_row(prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Plain text: bos + prompt words; completion words + eos."""
    return [BOS] + word_ids(prompt), word_ids(completion) + [EOS]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def perturb_lora_b(model, seed: int = 0) -> None:
    """LoRA starts with B = 0 (a no-op); give B values so the adapter changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def word_tokenizer(**special):
    """The toy word-level tokenizer (bos first) with a chosen set of special tokens (the toy's has all four)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", **special)


@pytest.fixture(scope="module")
def base(tiny_lm_dir):
    """The plain transformers model, loaded on its own: the hand computation's ground truth."""
    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()


@pytest.fixture(scope="module")
def backbone(tiny_lm_dir):
    """A configured full-fine-tuning backbone; tests that change its state build their own."""
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    b.configure()
    return b


@pytest.fixture(scope="module")
def plain(tiny_lm_dir):
    """The plain path: one row per sequence, the LM head at every kept position, logits computed whole."""
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24, share_prompt=False, pack_rows=False,
                 lm_head_at_scored_only=False)
    b.configure()
    return b


# --- 1. scores against a direct computation ---------------------------------------------------------

PROMPTS = ["echo a", "echo b c d e f g h", "echo i j"]
CHOSEN = ["A B C D E", "B", "I J"]
REJECTED = ["a", "c d e f", "I J A B C D E F G"]


@pytest.mark.parametrize("head", ["every position", "scored positions"])
def test_score_matches_direct_computation(backbone, plain, base, head):
    prepared = plain.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    backbone = plain if head == "every position" else backbone
    rows = [text_row(p, c) for view in (CHOSEN, REJECTED) for p, c in zip(PROMPTS, view)]
    # The batch really is ragged: padded rows, and logits kept only from the earliest completion on.
    width = prepared.input_ids.shape[1]
    assert width == max(len(p) + len(c) for p, c in rows)
    assert (prepared.attention_mask == 0).any()
    assert prepared.logits_to_keep == width - (min(len(p) for p, _ in rows) - 1) < width
    for i, (p, c) in enumerate(rows):
        assert prepared.input_ids[i, : len(p) + len(c)].tolist() == p + c
        assert prepared.completion_mask[i].tolist() == [0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c))

    out = backbone.score(prepared)
    expected = torch.tensor([direct_score(base, p, c) for p, c in rows], dtype=out.score.dtype)
    assert out.score.shape == (6,)
    torch.testing.assert_close(out.score, expected, atol=ATOL, rtol=0)
    # completion words + eos
    assert out.length.tolist() == [6, 2, 3, 2, 5, 10]
    # view-major: chosen rows first, then rejected
    chosen, rejected = out.split(2)
    torch.testing.assert_close(chosen.score, expected[:3], atol=ATOL, rtol=0)
    torch.testing.assert_close(rejected.score, expected[3:], atol=ATOL, rtol=0)


def test_score_without_logits_to_keep_support_is_the_same(tiny_lm_dir):
    """Models whose forward lacks ``logits_to_keep`` get full logits, sliced afterwards: same numbers."""
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    b.configure()
    assert b._accepts_logits_to_keep
    prepared = b.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    with_keep = b.score(prepared).score
    b._accepts_logits_to_keep = False
    torch.testing.assert_close(b.score(prepared).score, with_keep, atol=ATOL, rtol=0)


# --- 2. prompt masking and padding invariance ------------------------------------------------------


def test_prompt_conditions_the_score_but_is_never_scored(backbone, base):
    out = backbone.score(backbone.prepare(shared_prompts(["echo a b", "echo c d", "echo a b c d e f g h i j"], ["A B"] * 3)))
    # the prompt conditions the completion ...
    assert abs(out.score[0] - out.score[1]) > 1e-2
    # ... but its tokens are not counted, however many there are
    assert out.length.tolist() == [3, 3, 3]
    # log p(completion | prompt) = log p(prompt + completion) - log p(prompt): no prompt term leaks in
    for i, prompt in enumerate(["echo a b", "echo c d", "echo a b c d e f g h i j"]):
        p, c = text_row(prompt, "A B")
        assert out.score[i].item() == pytest.approx(sequence_logp(base, p + c) - sequence_logp(base, p), abs=ATOL)


def test_score_is_padding_invariant(backbone):
    alone = backbone.score(backbone.prepare(shared_prompts(["echo a b"], ["A B"])))
    short = backbone.score(backbone.prepare(shared_prompts(["echo a b", "echo c"], ["A B", "C"])))
    long = backbone.score(
        backbone.prepare(shared_prompts(["echo a b c d e f g h i j", "echo a b"], ["A B C D E F G H I J", "A B"]))
    )
    as_rejected = backbone.score(backbone.prepare(shared_prompts(["echo a b c d e f g h i j", "echo a b"], ["J", "A"], ["J", "A B"])))
    for value in (short.score[0], long.score[1], as_rejected.score[3]):
        assert value.item() == pytest.approx(alone.score[0].item(), abs=ATOL)
    assert short.length[0] == long.length[1] == as_rejected.length[3] == alone.length[0] == 3


# --- 3. chat layout ---------------------------------------------------------------------------------


def test_chat_scores_only_the_assistant_answer(backbone, base):
    prompts = [[user("echo a b"), assistant("A B"), user("echo c")], [user("echo d e f g")]]
    answers = [[assistant("C")], [assistant("D E F G")]]
    prepared = backbone.prepare(shared_prompts(prompts, answers))
    out = backbone.score(prepared)

    expected, lengths = [], []
    for prompt, answer in zip(prompts, answers):
        rendered = backbone.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert rendered.endswith("assistant: ")  # the generation prompt is part of the prompt, not scored
        p = word_ids(rendered)  # the template carries no bos and the prompt is tokenised without one
        c = word_ids(answer[0]["content"]) + [EOS]  # the toy template closes an assistant turn with eos
        assert prepared.input_ids[len(expected), : len(p) + len(c)].tolist() == p + c
        expected.append(direct_score(base, p, c))
        lengths.append(len(c))
    assert word_ids(backbone.tokenizer.apply_chat_template(prompts[0], tokenize=False, add_generation_prompt=True)) == (
        word_ids("user: echo a b assistant: A B <eos> user: echo c assistant:")
    )
    torch.testing.assert_close(out.score, torch.tensor(expected, dtype=out.score.dtype), atol=ATOL, rtol=0)
    assert out.length.tolist() == lengths == [2, 5]


def test_chat_and_text_cannot_mix(backbone):
    with pytest.raises(ValueError, match="both be chat messages, or both text"):
        backbone.prepare(shared_prompts([[user("echo a")]], ["A"]))


# --- 4. truncation ----------------------------------------------------------------------------------


def test_truncation_keeps_prompt_end_and_completion_start(tiny_lm_dir, base):
    b = CausalLM(tiny_lm_dir, max_length=8, max_prompt_length=4)
    b.configure()
    prepared = b.prepare(shared_prompts(["echo a b c d e", "echo a", "echo a b"], ["A B C D E", "A", "A B C D E"]))
    kept = [
        ([BOS] + word_ids("c d e"), word_ids("A B C D")),  # bos + the prompt's last 3, completion to 8 - 4
        ([BOS] + word_ids("echo a"), word_ids("A") + [EOS]),  # fits: untouched
        ([BOS] + word_ids("echo a b"), word_ids("A B C D")),  # prompt exactly 4: only the completion is cut
    ]
    for i, (p, c) in enumerate(kept):
        assert prepared.input_ids[i, : len(p) + len(c)].tolist() == p + c
        assert prepared.completion_mask[i].sum().item() == len(c)
    assert b.truncated == {"prompt": 1, "completion": 2}
    out = b.score(prepared)
    torch.testing.assert_close(
        out.score, torch.tensor([direct_score(base, p, c) for p, c in kept], dtype=out.score.dtype), atol=ATOL, rtol=0
    )
    assert out.length.tolist() == [4, 2, 4]
    # counters accumulate over calls
    b.prepare(shared_prompts(["echo a b c d e"], ["A"]))
    assert b.truncated == {"prompt": 2, "completion": 2}


@pytest.mark.parametrize("max_prompt_length", [8, 9])
def test_prompt_length_must_be_below_max_length(tiny_lm_dir, max_prompt_length):
    with pytest.raises(ValueError, match=r"max_prompt_length.*max_length"):
        CausalLM(tiny_lm_dir, max_length=8, max_prompt_length=max_prompt_length)


# --- 5. pad token -----------------------------------------------------------------------------------


def test_tokenizer_without_pad_pads_with_eos(tiny_lm_dir, tmp_path, backbone):
    folder = str(tmp_path / "no_pad")
    word_tokenizer(bos_token="<bos>", eos_token="<eos>").save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None  # the saved tokenizer really has none

    b = CausalLM(tiny_lm_dir, tokenizer_name_or_path=folder, max_length=48, max_prompt_length=24)
    b.configure()
    assert b.tokenizer.pad_token == "<eos>" and b.tokenizer.pad_token_id == EOS
    prompts, views = ["echo a", "echo b c d e"], [["A", "B C D E"]]
    prepared = b.prepare(shared_prompts(prompts, *views))
    assert prepared.input_ids[0].tolist() == text_row("echo a", "A")[0] + text_row("echo a", "A")[1] + [EOS] * 6
    reference = backbone.prepare(shared_prompts(prompts, *views))
    assert torch.equal(prepared.attention_mask, reference.attention_mask)
    torch.testing.assert_close(b.score(prepared).score, backbone.score(reference).score, atol=ATOL, rtol=0)


def test_tokenizer_without_pad_or_eos_is_an_error(tiny_lm_dir, tmp_path):
    folder = str(tmp_path / "no_pad_no_eos")
    word_tokenizer(bos_token="<bos>").save_pretrained(folder)
    b = CausalLM(tiny_lm_dir, tokenizer_name_or_path=folder)
    with pytest.raises(ValueError, match=re.escape(repr(folder))):
        b.configure()


# --- 6. missing local path ---------------------------------------------------------------------------


def test_missing_local_model_path_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape("./no/such/dir")):
        CausalLM("./no/such/dir").configure()


def test_missing_local_tokenizer_path_is_named(tiny_lm_dir, tmp_path):
    missing = str(tmp_path / "no" / "tokenizer")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        CausalLM(tiny_lm_dir, tokenizer_name_or_path=missing).configure()


# --- 7. LoRA and the references -----------------------------------------------------------------------


@pytest.fixture
def lora_backbone(tiny_lm_dir):
    b = CausalLM(tiny_lm_dir, lora=LoraSpec(r=4, alpha=8), max_length=48, max_prompt_length=24)
    b.configure()
    return b


def test_lora_trains_only_the_adapter(lora_backbone):
    trainable = [n for n, p in lora_backbone.policy.named_parameters() if p.requires_grad]
    frozen = [n for n, p in lora_backbone.policy.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all("lora_A" in n or "lora_B" in n for n in trainable)
    assert not any("lora_" in n for n in frozen)
    # "all-linear": every projection of both layers, the tied output head excluded
    assert len(trainable) == 2 * 7 * 2
    assert not any("lm_head" in n or "embed_tokens" in n for n in trainable)


def test_adapters_disabled_is_the_base_model(lora_backbone, backbone):
    prepared = lora_backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    base_scores = backbone.score(prepared).score  # the base model, loaded separately
    perturb_lora_b(lora_backbone.policy)
    policy_scores = lora_backbone.score(prepared).score
    assert (policy_scores - base_scores).abs().min() > 1e-3  # the adapter is not a no-op
    with lora_backbone.adapters_disabled():
        torch.testing.assert_close(lora_backbone.score(prepared).score, base_scores, atol=ATOL, rtol=0)
    # and the adapter is back on afterwards
    torch.testing.assert_close(lora_backbone.score(prepared).score, policy_scores, atol=ATOL, rtol=0)


def test_adapter_disabled_reference_equals_frozen_copy(lora_backbone, tiny_lm_dir, base):
    full = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    full.configure()
    frozen, disabled = FrozenCopy(), AdapterDisabled()
    frozen.build(full)
    disabled.build(lora_backbone)
    assert not any(p.requires_grad for p in frozen.model.parameters()) and not frozen.model.training

    prepared = lora_backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    expected = torch.tensor(
        [direct_score(base, *text_row(p, c)) for view in (CHOSEN, REJECTED) for p, c in zip(PROMPTS, view)]
    )
    frozen_scores = frozen.score(full, prepared, {})
    torch.testing.assert_close(frozen_scores, expected.to(frozen_scores.dtype), atol=ATOL, rtol=0)
    # an unmodified policy: its LoRA is a no-op, so policy, disabled policy and frozen copy all agree
    torch.testing.assert_close(disabled.score(lora_backbone, prepared, {}), frozen_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(lora_backbone.score(prepared).score, frozen_scores, atol=ATOL, rtol=0)
    # once the adapter moves, the disabled policy still equals the frozen copy
    perturb_lora_b(lora_backbone.policy)
    torch.testing.assert_close(disabled.score(lora_backbone, prepared, {}), frozen_scores, atol=ATOL, rtol=0)


def test_adapter_disabled_needs_lora(backbone):
    with pytest.raises(ValueError, match="lora"):
        AdapterDisabled().build(backbone)
    with pytest.raises(ValueError, match="lora"):
        backbone.adapters_disabled()


# --- 8. export ----------------------------------------------------------------------------------------


def test_merged_lora_export_reproduces_the_policy(lora_backbone, tmp_path):
    perturb_lora_b(lora_backbone.policy)
    prepared = lora_backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    policy_scores = lora_backbone.score(prepared).score
    folder = str(tmp_path / "merged")
    lora_backbone.save_pretrained(folder)
    assert not os.path.exists(os.path.join(folder, "adapter_config.json"))
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # merging folds B·A into W, so float32 rounding differs from the unmerged path by a few ulps of
    # the summed log-prob (about 5e-7 relative): compare relatively, not to an absolute 1e-5
    torch.testing.assert_close(lora_backbone.score(prepared, model=merged).score, policy_scores, atol=ATOL, rtol=1e-5)
    # the export merged a copy: the policy still has its adapter, with the same outputs
    assert lora_backbone.has_adapters and any("lora_B" in n for n, _ in lora_backbone.policy.named_parameters())
    torch.testing.assert_close(lora_backbone.score(prepared).score, policy_scores, atol=0, rtol=0)
    # the tokenizer travels with the weights
    assert AutoTokenizer.from_pretrained(folder)("echo a")["input_ids"] == [BOS] + word_ids("echo a")


def test_adapter_export_loads_with_peft(lora_backbone, tiny_lm_dir, tmp_path):
    from peft import PeftModel

    perturb_lora_b(lora_backbone.policy)
    prepared = lora_backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    policy_scores = lora_backbone.score(prepared).score
    folder = str(tmp_path / "adapter")
    lora_backbone.save_pretrained(folder, merge_adapters=False)
    with open(os.path.join(folder, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["r"] == 4 and config["lora_alpha"] == 8
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), folder).eval()
    torch.testing.assert_close(lora_backbone.score(prepared, model=loaded).score, policy_scores, atol=ATOL, rtol=0)


def test_full_export_reproduces_the_policy(tiny_lm_dir, tmp_path):
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    b.configure()
    with torch.no_grad():
        b.policy.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # differ from the starting weights
    prepared = b.prepare(shared_prompts(PROMPTS, CHOSEN))
    folder = str(tmp_path / "full")
    b.save_pretrained(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(b.score(prepared, model=loaded).score, b.score(prepared).score, atol=ATOL, rtol=0)


# --- 9. generation ------------------------------------------------------------------------------------


def greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding of one unpadded row, stopping after eos."""
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax().item()
            new.append(token)
            if token == EOS:
                break
    return new


def test_generate_is_greedy_per_prompt(backbone, base):
    tok = backbone.tokenizer
    prompts = ["echo a", "echo b c d e f g"]
    out = backbone.generate(prompts, max_new_tokens=5)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)
    assert backbone.generate(prompts, max_new_tokens=5) == out  # deterministic
    # left padding does not change what a row generates: each equals its own unpadded greedy decode
    for prompt, text in zip(prompts, out):
        expected = tok.decode(greedy(base, [BOS] + word_ids(prompt), 5), skip_special_tokens=True)
        assert text == expected
    assert backbone.generate(prompts[1:], max_new_tokens=5) == out[1:]


def test_generate_chat_prompts(backbone, base):
    tok = backbone.tokenizer
    prompts = [[user("echo a b")], [user("echo c"), assistant("C"), user("echo d e f")]]
    out = backbone.generate(prompts, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    assert backbone.generate(prompts, max_new_tokens=4) == out
    for prompt, text in zip(prompts, out):
        rendered = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert text == tok.decode(greedy(base, word_ids(rendered), 4), skip_special_tokens=True)


@pytest.mark.parametrize("training", [True, False])
def test_generate_restores_training_mode(tiny_lm_dir, training):
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    b.configure()
    b.policy.train(training)
    b.generate(["echo a"], max_new_tokens=2)
    assert b.policy.training is training


# --- 10. gradient checkpointing -------------------------------------------------------------------


@pytest.mark.parametrize("lora", [None, LoraSpec(r=4, alpha=8)], ids=["full", "lora"])
def test_gradient_checkpointing_same_scores_and_grads(tiny_lm_dir, lora):
    results = []
    for checkpointing in (False, True):
        b = CausalLM(tiny_lm_dir, lora=lora, max_length=48, max_prompt_length=24, gradient_checkpointing=checkpointing)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # peft draws lora_A at random: the same draw for both runs
            b.configure()
        if lora is not None:
            perturb_lora_b(b.policy)  # so lora_A gets a gradient too
        b.policy.train()  # transformers only checkpoints in training mode
        calls = []
        layer = b.policy.get_base_model().model.layers[0] if lora else b.policy.model.layers[0]
        # a pre-hook: torch's non-reentrant checkpoint stops the recomputation early, before forward hooks
        hook = layer.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        out = b.score(b.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED)))
        out.score.sum().backward()
        hook.remove()
        # checkpointing really is on: the layer runs again during backward
        assert len(calls) == (2 if checkpointing else 1)
        grads = {n: p.grad.clone() for n, p in b.policy.named_parameters() if p.requires_grad}
        assert grads and all(g is not None for g in grads.values())
        results.append((out.score.detach(), grads))
    (s0, g0), (s1, g1) = results
    torch.testing.assert_close(s1, s0, atol=ATOL, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert g0[name].abs().sum() > 0, name
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)


# --- dropout -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_dropout_lm_dir(tmp_path_factory) -> str:
    """Llama, Qwen2, Mistral, Gemma, Phi-3 apply attention dropout as a float read from the config,
    not through an ``nn.Dropout`` module."""
    return save_tiny_lm(tmp_path_factory.mktemp("attention_dropout_lm"), seed=0, attention_dropout=0.5)


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_disable_dropout_covers_attention_dropout(attention_dropout_lm_dir, disable_dropout):
    b = CausalLM(attention_dropout_lm_dir, max_length=48, max_prompt_length=24, disable_dropout=disable_dropout)
    b.configure()
    b.policy.train()  # the mode the policy trains in
    prepared = b.prepare(shared_prompts(PROMPTS, CHOSEN))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first, second = b.score(prepared).score, b.score(prepared).score
    if disable_dropout:  # policy scores are deterministic, as the reference's (in eval mode) are
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        assert b.policy.config.attention_dropout == 0.5  # the config (and so an export) is untouched
        b.policy.eval()
        torch.testing.assert_close(b.score(prepared).score, first, atol=ATOL, rtol=0)
    else:  # the model really has dropout: it is only off when asked
        assert (first - second).abs().max() > 1e-3


# --- 11. selective_log_softmax --------------------------------------------------------------------


def test_selective_log_softmax_float32():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=gen) * 4
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    got = selective_log_softmax(logits, labels)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_selective_log_softmax_bfloat16():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 7, 50, generator=gen) * 4).bfloat16()
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    got = selective_log_softmax(logits, labels)
    assert got.dtype == torch.float32  # computed and returned in float32
    # exact against the float32 computation on the same (bf16-rounded) logits ...
    exact = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=0)
    # ... and within bf16 rounding of a log_softmax done in bf16 (8 bits of mantissa, values up to ~20)
    in_bf16 = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
    torch.testing.assert_close(got, in_bf16, atol=0.1, rtol=1e-2)


# --- 12. prompt scores (score_prompt) -------------------------------------------------------------------


def test_score_prompt_matches_direct_computation(backbone, base):
    prompts = ["echo a", "echo b c d e f g h", "echo i j"]
    views = [ViewInputs(prompts, CHOSEN, score_prompt=True), ViewInputs(prompts, REJECTED)]
    prepared = backbone.prepare(views)
    rows = [text_row(p, c) for view in (CHOSEN, REJECTED) for p, c in zip(prompts, view)]
    # every position is kept: the prompt's tokens from the second on need the logits before them
    assert prepared.logits_to_keep == prepared.input_ids.shape[1]
    out = backbone.score(prepared)
    # the completion scores are unchanged by also scoring the prompt
    expected = torch.tensor([direct_score(base, p, c) for p, c in rows], dtype=out.score.dtype)
    torch.testing.assert_close(out.score, expected, atol=ATOL, rtol=0)
    assert out.length.tolist() == [6, 2, 3, 2, 5, 10]
    # prompt: log p(prompt[1:] | prompt[0]) and len(prompt) - 1 for the rows that asked, 0 for the others
    prompt_expected = [sequence_logp(base, p) for p, _ in rows[:3]] + [0.0] * 3
    torch.testing.assert_close(out.prompt, torch.tensor(prompt_expected, dtype=out.score.dtype), atol=ATOL, rtol=0)
    assert out.prompt_length.tolist() == [len(p) - 1 for p, _ in rows[:3]] + [0, 0, 0] == [2, 8, 3, 0, 0, 0]
    # prompt + completion = log p(whole row after its first token)
    for i, (p, c) in enumerate(rows[:3]):
        assert (out.prompt[i] + out.score[i]).item() == pytest.approx(sequence_logp(base, p + c), abs=ATOL)
    chosen, rejected = out.split(2)
    assert chosen.prompt_length.tolist() == [2, 8, 3] and rejected.prompt_length.tolist() == [0, 0, 0]


def test_no_prompt_scores_unless_a_view_asks(backbone):
    prepared = backbone.prepare(shared_prompts(PROMPTS, CHOSEN, REJECTED))
    assert prepared.prompt_mask is None and prepared.logits_to_keep < prepared.input_ids.shape[1]
    out = backbone.score(prepared)
    assert out.prompt is None and out.prompt_length is None


def test_orpo_nll_is_trls_cross_entropy_over_prompt_and_answer(backbone, base):
    """ORPO's default NLL through the backbone equals TRL's / the official code's: CrossEntropyLoss over the
    chosen rows' input ids (prompt + answer, padding masked), pooled over the batch's tokens."""
    from alignsuite.objectives import get_objective

    orpo = get_objective("orpo")
    views = [ViewInputs(PROMPTS, CHOSEN, score_prompt=v.score_prompt) if v.name == "chosen"
             else ViewInputs(PROMPTS, REJECTED, score_prompt=v.score_prompt) for v in orpo.views]
    scores = backbone.score(backbone.prepare(views))
    packed = orpo.pack(dict(zip(["chosen", "rejected"], scores.split(2))), {}, {})
    out = orpo(packed)
    total, count = 0.0, 0
    for p, c in (text_row(prompt, answer) for prompt, answer in zip(PROMPTS, CHOSEN)):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logits = base(input_ids=ids).logits[0, :-1].double()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    assert out.metrics["loss/sft"].item() == pytest.approx(total / count, abs=1e-5)


# --- 13. chat template option, roles, tools --------------------------------------------------------------


@pytest.fixture
def no_template_dir(tmp_path) -> str:
    """The toy tokenizer without a chat template, as a base model's often is."""
    folder = str(tmp_path / "no_template")
    word_tokenizer(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>").save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    return folder


CHAT_PROMPTS = [[user("echo a b"), assistant("A B"), user("echo c")], [user("echo d e f g")]]
CHAT_ANSWERS = [[assistant("C")], [assistant("D E F G")]]


def test_chat_rows_without_a_template_name_the_option(tiny_lm_dir, no_template_dir):
    b = CausalLM(tiny_lm_dir, tokenizer_name_or_path=no_template_dir, max_length=48, max_prompt_length=24)
    b.configure()
    with pytest.raises(ValueError, match=r"has none.*backbone\.chat_template"):
        b.prepare(shared_prompts(CHAT_PROMPTS, CHAT_ANSWERS))
    with pytest.raises(ValueError, match=r"backbone\.chat_template"):
        b.generate(CHAT_PROMPTS, max_new_tokens=1)
    b.prepare(shared_prompts(["echo a"], ["A"]))  # plain text needs no template


@pytest.mark.parametrize("as_file", [False, True], ids=["string", "jinja_file"])
def test_chat_template_option_sets_and_exports_the_template(tiny_lm_dir, no_template_dir, backbone, tmp_path, as_file):
    template = CHAT_TEMPLATE
    if as_file:
        path = tmp_path / "toy.jinja"
        path.write_text(CHAT_TEMPLATE)
        template = str(path)
    b = CausalLM(tiny_lm_dir, tokenizer_name_or_path=no_template_dir, max_length=48, max_prompt_length=24,
                 chat_template=template)
    b.configure()
    assert b.tokenizer.chat_template == CHAT_TEMPLATE
    # the same tokens and scores as the toy tokenizer, which ships this template
    prepared = b.prepare(shared_prompts(CHAT_PROMPTS, CHAT_ANSWERS))
    reference = backbone.prepare(shared_prompts(CHAT_PROMPTS, CHAT_ANSWERS))
    assert torch.equal(prepared.input_ids, reference.input_ids)
    assert torch.equal(prepared.completion_mask, reference.completion_mask)
    torch.testing.assert_close(b.score(prepared).score, backbone.score(reference).score, atol=ATOL, rtol=0)
    # exported with the tokenizer
    folder = str(tmp_path / "export")
    b.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template == CHAT_TEMPLATE


def test_chat_template_option_missing_file_is_named(tiny_lm_dir, tmp_path):
    missing = str(tmp_path / "nope.jinja")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        CausalLM(tiny_lm_dir, chat_template=missing).configure()


def test_template_roles_reads_the_roles_a_template_handles():
    # the toy template prints any role verbatim and names only 'assistant'; 'role'/'content' are keys
    assert template_roles(CHAT_TEMPLATE) == STANDARD_ROLES
    llama_like = (
        "{% for m in messages %}{% if m['role'] == 'ipython' %}<|ipython|>{% elif m.role in ['user', \"developer\"] %}"
        "{{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert template_roles(llama_like) == STANDARD_ROLES | {"ipython", "developer"}


def test_unknown_chat_role_is_an_error_naming_role_and_roles(backbone):
    typo = [[{"role": "usr", "content": "echo a"}]]
    # before the check, the toy template rendered "usr: echo a" and trained on it
    assert backbone.tokenizer.apply_chat_template(typo[0], tokenize=False) == "usr: echo a "
    accepted = re.escape("assistant, system, tool, user")
    with pytest.raises(ValueError, match=rf"dataset row 7 has a message with role 'usr'.*{accepted}"):
        backbone.prepare([ViewInputs(typo, [[assistant("A")]], {"index": torch.tensor([7])})])
    with pytest.raises(ValueError, match=r"role 'asistant'"):  # completions are checked too
        backbone.prepare(shared_prompts([[user("echo a")]], [[{"role": "asistant", "content": "A"}]]))
    with pytest.raises(ValueError, match=r"role 'usr'"):
        backbone.generate(typo, max_new_tokens=1)


# Renders each tool's name before the conversation, and an assistant message's tool calls after its content.
TOOL_TEMPLATE = (
    "{% if tools %}{% for t in tools %}{{ t['function']['name'] }} {% endfor %}{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} "
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}{{ c['function']['name'] }} {% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' %}<eos> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": "a tool",
                                             "parameters": {"type": "object", "properties": {}}}}


def test_tools_reach_the_chat_template(tiny_lm_dir, base):
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24, chat_template=TOOL_TEMPLATE)
    b.configure()
    prompts = [[user("echo a")], [user("echo b")]]
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "h", "arguments": {}}}]}
    answers = [[call], [assistant("B")]]
    batch = {"tools": [[tool("f"), tool("g")], None], "index": torch.tensor([0, 1])}
    prepared = b.prepare([ViewInputs(prompts, answers, batch)])
    rows = [
        (word_ids("f g user: echo a assistant:"), word_ids("h") + [EOS]),  # tools first; the call in the answer
        (word_ids("user: echo b assistant:"), word_ids("B") + [EOS]),  # no tools: none rendered
    ]
    for i, (p, c) in enumerate(rows):
        assert prepared.input_ids[i, : len(p) + len(c)].tolist() == p + c
        assert prepared.completion_mask[i].sum().item() == len(c)
    out = b.score(prepared)
    expected = torch.tensor([direct_score(base, p, c) for p, c in rows], dtype=out.score.dtype)
    torch.testing.assert_close(out.score, expected, atol=ATOL, rtol=0)


def test_tools_with_a_template_that_ignores_them_warn(tiny_lm_dir):
    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    b.configure()
    with pytest.warns(UserWarning, match="never reads `tools`"):
        b.prepare([ViewInputs([[user("echo a")]], [[assistant("A")]], {"tools": [[tool("f")]]})])


# --- 14. pairs made identical by truncation are dropped at setup ----------------------------------------


def write_pairs(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_pairs_identical_after_truncation_are_dropped_at_setup(tiny_lm_dir, tmp_path):
    from alignsuite.data import PreferenceDataModule

    # max_length 8, prompt "echo a" = bos echo a (3 tokens): each answer keeps its first 5 tokens
    train = [
        {"prompt": "echo a", "chosen": "A B C D E F", "rejected": "A B C D E G"},  # same once cut: dropped
        {"prompt": "echo b", "chosen": "B", "rejected": "C"},
        {"prompt": "echo c", "chosen": "A B C D", "rejected": "A B C D E"},  # A..D eos vs A..E: kept
        {"prompt": "echo d e f g h i", "chosen": "A B C D", "rejected": "A B C D E"},  # prompt cut, then same
        {"prompt": "echo e", "chosen": "E", "rejected": "F"},
    ]
    val = [{"prompt": "echo a", "chosen": "A B C D E F", "rejected": "A B C D E G"},
           {"prompt": "echo b", "chosen": "B", "rejected": "C"}]
    dm = PreferenceDataModule(train=write_pairs(tmp_path / "train.jsonl", train),
                              val=write_pairs(tmp_path / "val.jsonl", val), batch_size=2)
    dm.setup("fit")
    b = CausalLM(tiny_lm_dir, max_length=8, max_prompt_length=4)
    # Named by file and row (the rows' provenance), not by their position in the loaded dataset.
    named = rf"dropped 2 train pair\(s\) \({tmp_path / 'train.jsonl'} rows 0, 3\); 1 val pair\(s\) \({tmp_path / 'val.jsonl'} rows 0\)"
    with pytest.warns(UserWarning, match=named):
        b.on_setup(dm)  # before any model loads: the tokenizer alone
    assert b.policy is None
    assert b.dropped_identical == {"train": 2, "val": 1}
    assert dm.train_set["prompt"] == ["echo b", "echo c", "echo e"]
    assert dm.train_set["index"] == [0, 1, 2] and dm.val_set["index"] == [0]  # "index" stays the row position
    assert b.truncated == {"prompt": 0, "completion": 0}  # the check itself counts no truncation
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["index"].tolist()) <= {0, 1, 2}
    # setup runs once per stage: the filtered data is not checked, counted or warned about again
    b.on_setup(dm)
    assert b.dropped_identical == {"train": 2, "val": 1}


def test_identical_chat_pairs_are_dropped_and_unpaired_data_is_left_alone(tiny_lm_dir, tmp_path):
    from alignsuite.data import PreferenceDataModule, TextUnpaired

    train = [
        {"prompt": [user("echo a")], "chosen": [assistant("A B C D E F G H")], "rejected": [assistant("A B C D E F G I")]},
        {"prompt": [user("echo b")], "chosen": [assistant("B")], "rejected": [assistant("C")]},
    ]
    dm = PreferenceDataModule(train=write_pairs(tmp_path / "chat.jsonl", train), batch_size=2)
    dm.setup("fit")
    b = CausalLM(tiny_lm_dir, max_length=10, max_prompt_length=4)
    with pytest.warns(UserWarning, match=r"dropped 1 train pair"):
        b.on_setup(dm)
    assert dm.train_set["index"] == [0] and b.dropped_identical == {"train": 1}

    rows = [{"prompt": "echo a", "completion": "A", "label": True}, {"prompt": "echo b", "completion": "B", "label": False}]
    unpaired = PreferenceDataModule(train=write_pairs(tmp_path / "kto.jsonl", rows), layout=TextUnpaired(), batch_size=2)
    unpaired.setup("fit")
    fresh = CausalLM(tiny_lm_dir, max_length=8, max_prompt_length=4)
    fresh.on_setup(unpaired)
    assert fresh.dropped_identical == {} and fresh.tokenizer is None and len(unpaired.train_set) == 2


def test_every_pair_identical_after_truncation_is_an_error(tiny_lm_dir, tmp_path):
    from alignsuite.data import DataError, PreferenceDataModule

    rows = [{"prompt": "echo a", "chosen": "A B C D E F", "rejected": "A B C D E G"}]
    dm = PreferenceDataModule(train=write_pairs(tmp_path / "t.jsonl", rows), batch_size=1)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"every train pair \(1\).*max_length=8"):
        CausalLM(tiny_lm_dir, max_length=8, max_prompt_length=4).on_setup(dm)
    # the files they came from are named (before: no file at all)
    files = [write_pairs(tmp_path / name, rows * 2) for name in ("a.jsonl", "b.jsonl")]
    dm = PreferenceDataModule(train=files, batch_size=1)
    dm.setup("fit")
    with pytest.raises(DataError, match=rf"^{files[0]}, {files[1]}: every train pair \(4\) has identical chosen"):
        CausalLM(tiny_lm_dir, max_length=8, max_prompt_length=4).on_setup(dm)


@pytest.mark.parametrize("kind", ["pairs", "unpaired"])
def test_unknown_chat_role_in_a_file_names_the_file_row_and_field(tiny_lm_dir, tmp_path, kind):
    from alignsuite.data import DataError, PreferenceDataModule, TextPairs, TextUnpaired

    rows = [{"prompt": [user(f"echo {w}")], "chosen": [assistant(w.upper())], "rejected": [assistant("A")]}
            for w in WORDS[:20]]
    rows[14]["prompt"] = [{"role": "system", "content": "be brief"}, {"role": "usr", "content": "echo b"}]
    files = [write_pairs(tmp_path / "first.jsonl", rows[:10]), write_pairs(tmp_path / "second.jsonl", rows[10:])]
    dm = PreferenceDataModule(train=files, val_fraction=0.25, layout=TextPairs() if kind == "pairs" else TextUnpaired(),
                              batch_size=2)
    dm.setup("fit")
    accepted = re.escape("assistant, system, tool, user")
    # before: "dataset row N has a message with role 'usr'", N a position after the split's shuffle (pairs), or
    # nothing until the training step reached the row (unpaired)
    with pytest.raises(DataError, match=rf"^{files[1]}: row 4: field 'prompt': expected a role the tokenizer's chat"
                       rf" template handles \({accepted}\), got 'usr'$"):
        CausalLM(tiny_lm_dir).on_setup(dm)


def test_identical_pair_search_agrees_with_tokenising_every_pair(tiny_lm_dir):
    """Only pairs whose texts share a long start are tokenised; the result is the same as tokenising all."""
    b = CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=8)
    b.tokenizer = b._load_tokenizer()
    gen = random.Random(0)
    letters = list("ABCDEFGHIJ")
    prompts, chosen, rejected = [], [], []
    for _i in range(200):
        words = [gen.choice(letters) for _ in range(gen.randint(1, 30))]
        other = list(words)
        cut = gen.randint(0, len(words))  # where the answers part (or, at the end, one is longer)
        other[cut:] = [gen.choice(letters) for _ in range(gen.randint(0, 30))]
        spaces = "  " if gen.random() < 0.2 else " "  # whitespace the toy tokenizer does not see
        prompts.append("echo " + " ".join(gen.choice("abcdefghij") for _ in range(gen.randint(0, 12))))
        chosen.append(" ".join(words))
        rejected.append(spaces.join(other))
    keep = [i for i in range(200) if chosen[i] != rejected[i]]  # the data layer skips equal texts
    rows = {"prompt": [prompts[i] for i in keep], "chosen": [chosen[i] for i in keep],
            "rejected": [rejected[i] for i in keep]}
    truth = [i for i, (c, r) in enumerate(zip(b._encode(rows["prompt"], rows["chosen"], count=False),
                                               b._encode(rows["prompt"], rows["rejected"], count=False))) if c == r]

    assert b._identical_pairs(datasets.Dataset.from_dict(rows), datamodule=None) == truth
    assert 10 < len(truth) < len(keep) / 2  # both kinds are there
    maybe = may_be_identical(b.tokenizer, rows["chosen"], rows["rejected"], 24 - 8)
    assert all(maybe[i] for i in truth) and sum(maybe) < len(keep) / 2  # the filter does filter
    # "A B C" and "A  B C" differ as text, not as tokens (this tokenizer splits on any whitespace)
    assert may_be_identical(b.tokenizer, ["A B C"], ["A  B C"], 16) == [True]
    assert may_be_identical(b.tokenizer, ["A B C"], ["A C C"], 16) == [False]


# --- tokenising at collate (tokenize_in_loader) ---------------------------------------------------------


def test_rows_tokenised_at_collate_are_the_rows_the_step_tokenises(tiny_lm_dir):
    """Chat rows with tools, a shared prompt and a shifted view: the batch's ids are those of the step."""
    from alignsuite.backbones.tokenize import ENCODED
    from alignsuite.views import View

    b = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24, chat_template=TOOL_TEMPLATE)
    b.configure()
    views = [View("chosen"), View("rejected"), View("mismatched", column="chosen", shift=1)]
    batch = {"prompt": [[user("echo a")], [user("echo b")]], "chosen": [[assistant("A")], [assistant("B")]],
             "rejected": [[assistant("C")], [assistant("D E")]], "tools": [[tool("f")], None],
             "index": torch.tensor([0, 1])}
    encoded = b.loader_transform(views)(dict(batch))
    assert len(encoded[ENCODED].rows) == 6  # 2 rows x 3 views, all different

    def inputs(source):
        return [ViewInputs(list(source["prompt"]), v.completions(source), source) for v in views]

    fresh, looked_up = b.prepare(inputs(batch)), b.prepare(inputs(encoded))
    torch.testing.assert_close(looked_up.input_ids, fresh.input_ids, rtol=0, atol=0)
    torch.testing.assert_close(looked_up.completion_mask, fresh.completion_mask, rtol=0, atol=0)
    # A row the collate never saw (a changed completion) is tokenised in the step.
    changed = dict(encoded, chosen=[[assistant("J")], [assistant("B")]])
    ids = b.prepare([ViewInputs(changed["prompt"], changed["chosen"], changed)]).input_ids[0].tolist()
    assert ids[: len(word_ids("f user: echo a assistant: J")) + 1] == word_ids("f user: echo a assistant: J") + [EOS]


def test_a_row_that_fails_at_collate_fails_in_the_step_naming_it(backbone):
    from alignsuite.backbones.tokenize import ENCODED
    from alignsuite.views import View

    batch = {"prompt": [[{"role": "usr", "content": "echo a"}]], "chosen": [[assistant("A")]],
             "rejected": [[assistant("B")]], "index": torch.tensor([7])}
    out = backbone.loader_transform([View("chosen"), View("rejected")])(dict(batch))
    assert ENCODED not in out
    with pytest.raises(ValueError, match=r"dataset row 7 has a message with role 'usr'"):
        backbone.prepare([ViewInputs(out["prompt"], out["chosen"], out)])


def test_backbones_that_tokenise_otherwise_get_no_loader_transform(tiny_lm_dir):
    from alignsuite.views import View

    class OwnPrepare(CausalLM):
        def prepare(self, views):
            return super().prepare(views)

    assert CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24, tokenize_in_loader=False).loader_transform(
        [View("chosen")]) is None
    assert OwnPrepare(tiny_lm_dir, max_length=48, max_prompt_length=24).loader_transform([View("chosen")]) is None
