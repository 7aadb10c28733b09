"""The causal LM's fast scoring paths give the plain path's numbers: the packed layout (a prompt's tokens
through the model once for all its completions, several groups to a row), the LM head only at scored
positions, and the chunked head + log-softmax that keeps no tokens x vocabulary tensor for backward. Each is
checked against the plain path (one row per sequence, logits at every kept position, whole) on scores and
gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from alignsuite.backbones import CausalLM, LoraSpec
from alignsuite.backbones.base import ViewInputs, shared_prompts
from alignsuite.backbones.token_scoring import (
    SEGMENT_STRIDE,
    ChunkedTokenLogProbs,
    Packing,
    pack_groups,
    pack_rows,
    packed_attention_mask,
    selective_log_softmax,
)
from alignsuite.toy.llm import EchoWorld

PROMPTS = ["echo a", "echo b c d e f g h", "echo i j"]
CHOSEN = ["A B C D E", "B", "I J"]
REJECTED = ["a", "c d e f", "I J A B C D E F G"]


def build(path, float64: bool = False, **options) -> CausalLM:
    """The backbone, configured; ``float64`` casts its model, for comparisons of two layouts: in float32 their
    embedding gradients, sums over many positions, part in their fourth significant digit on some CPUs."""
    b = CausalLM(path, max_length=48, max_prompt_length=24, **options)
    b.configure()
    if float64:
        b.policy.double()
    return b


PLAIN = {"share_prompt": False, "pack_rows": False, "lm_head_at_scored_only": False}


def scores_and_grads(b: CausalLM, views: list[ViewInputs]):
    """Scores of ``views`` and the gradient of a loss that weighs every sequence (and prompt) differently."""
    b.policy.zero_grad(set_to_none=True)
    out = b.score(b.prepare(views))
    weights = torch.linspace(-1.0, 2.0, out.score.numel())
    loss = (out.score * weights).sum()
    if out.prompt is not None:
        loss = loss + (out.prompt * weights.flip(0)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in b.policy.named_parameters() if p.grad is not None}
    return out, grads


def assert_same(a, b, atol=1e-5):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a.score, out_b.score, atol=atol, rtol=0)
    torch.testing.assert_close(out_a.length, out_b.length, atol=0, rtol=0)
    assert (out_a.prompt is None) == (out_b.prompt is None)
    if out_a.prompt is not None:
        torch.testing.assert_close(out_a.prompt, out_b.prompt, atol=atol, rtol=0)
        torch.testing.assert_close(out_a.prompt_length, out_b.prompt_length, atol=0, rtol=0)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=1e-4, msg=name)


def pair_views():
    return shared_prompts(PROMPTS, CHOSEN, REJECTED)


def orpo_views():
    """ORPO's views: the chosen view also scores its prompt's tokens."""
    chosen, rejected = pair_views()
    return [chosen.replace(score_prompt=True), rejected]


def kto_views():
    """KTO's views: each row's own answer, and a mismatched answer under the same prompt (the KL term)."""
    answers = CHOSEN
    return shared_prompts(PROMPTS, answers, answers[1:] + answers[:1])


# --- the shared layout ------------------------------------------------------------------------------


def test_shared_layout_puts_each_prompt_once_with_its_completions(tiny_lm_dir):
    b = build(tiny_lm_dir, pack_rows=False)
    prepared = b.prepare(pair_views())
    ids = b.tokenizer(PROMPTS)["input_ids"]
    completions = [b.tokenizer(CHOSEN, add_special_tokens=False)["input_ids"],
                   b.tokenizer(REJECTED, add_special_tokens=False)["input_ids"]]
    eos = b.tokenizer.eos_token_id
    assert prepared.input_ids.shape[0] == 3  # one row per pair, not six
    for r, p in enumerate(ids):
        c, x = completions[0][r] + [eos], completions[1][r] + [eos]
        n = len(p) + len(c) + len(x)
        assert prepared.input_ids[r, :n].tolist() == p + c + x
        # both completions continue the prompt's positions
        assert prepared.position_ids[r, :n].tolist() == list(range(len(p) + len(c))) + list(range(len(p), len(p) + len(x)))
        seg = r * SEGMENT_STRIDE
        assert prepared.segments[r, :n].tolist() == [seg] * len(p) + [seg + 1] * len(c) + [seg + 2] * len(x)
        assert (prepared.segments[r, n:] == -1).all()
    # six sequences are scored, each over its own completion tokens (words + eos)
    t = prepared.targets
    assert t.n_out == 6 and torch.bincount(t.out).tolist() == [6, 2, 3, 2, 5, 10]


def test_packed_mask_lets_a_completion_see_its_prompt_and_itself_only():
    s = SEGMENT_STRIDE  # group 0: prompt, two completions; group 1: prompt, one completion; padding
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, s, s + 1, s + 1, -1]])
    allowed = packed_attention_mask(segments, "sdpa", torch.float32)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0, 0, 0],  # the second completion never sees the first
        [1, 1, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],  # the next group sees nothing of the first
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # padding sees itself only: no all-masked row
    ]
    additive = packed_attention_mask(segments, "eager", torch.float32)[0, 0]
    assert ((additive == 0).int().tolist()) == allowed and additive.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("views", [pair_views, orpo_views, kto_views], ids=["dpo", "orpo", "kto"])
@pytest.mark.parametrize("share_prompt,pack_rows,scored_only,chunk", [
    opts for opts in itertools.product([True, False], [True, False], [True, False], [None, 4])
    if opts != (False, False, False, None)
])
def test_every_fast_path_gives_the_plain_scores_and_gradients(tiny_lm_dir, views, share_prompt, pack_rows,
                                                              scored_only, chunk):
    plain = scores_and_grads(build(tiny_lm_dir, float64=True, **PLAIN), views())
    fast = build(tiny_lm_dir, float64=True, share_prompt=share_prompt, pack_rows=pack_rows,
                 lm_head_at_scored_only=scored_only, lm_head_chunk=chunk)
    prepared = fast.prepare(views())
    assert (prepared.segments is not None) == (share_prompt or pack_rows)
    assert_same(scores_and_grads(fast, views()), plain)


def test_shared_layout_under_eager_attention_equals_sdpa(tiny_lm_dir):
    sdpa = build(tiny_lm_dir, float64=True)
    eager = build(tiny_lm_dir, float64=True, attn_implementation="eager")
    assert eager.prepare(pair_views()).segments is not None
    assert_same(scores_and_grads(eager, pair_views()), scores_and_grads(sdpa, pair_views()))


def test_bf16_autocast_fast_path_errs_no_more_than_the_plain_one(tiny_lm_dir):
    """Under bf16 both paths round; the fast one must stay as close to float32's scores as the plain one."""
    fast, plain = build(tiny_lm_dir, lm_head_chunk=5), build(tiny_lm_dir, **PLAIN)
    exact = plain.score(plain.prepare(pair_views())).score
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast_error = (fast.score(fast.prepare(pair_views())).score - exact).abs().max()
        plain_error = (plain.score(plain.prepare(pair_views())).score - exact).abs().max()
    assert 0 < plain_error < 0.5
    assert fast_error <= 2 * plain_error + 1e-3


def test_a_sliding_window_shorter_than_max_length_keeps_the_plain_layout(tmp_path):
    """A custom mask would replace the window: such models are laid out one row per sequence."""
    from transformers import MistralConfig, MistralForCausalLM

    world = EchoWorld()
    tok = world.build_tokenizer()
    llama = world.build_config(tok)
    config = MistralConfig(vocab_size=llama.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, sliding_window=6,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    windowed = build(str(tmp_path), float64=True)
    assert windowed.prepare(pair_views()).segments is None
    assert_same(scores_and_grads(windowed, pair_views()),
                scores_and_grads(build(str(tmp_path), float64=True, **PLAIN), pair_views()))


def test_a_batch_that_packing_would_not_shrink_keeps_the_plain_layout(tiny_lm_dir):
    b = build(tiny_lm_dir, pack_rows=False)
    assert b.prepare(shared_prompts(PROMPTS, CHOSEN)).segments is None  # no prompt repeats
    even = shared_prompts(["echo a b", "echo c d"], ["A B", "C D"])
    assert build(tiny_lm_dir).prepare(even).segments is None  # two equal rows: nothing to pack


def test_packing_fills_rows_first_fit_decreasing_up_to_the_widest_group():
    assert pack_groups([5, 9, 4, 3, 2], pack=True) == [[1], [0, 2], [3, 4]]
    assert pack_groups([5, 9, 4], pack=False) == [[0], [1], [2]]


def test_packed_rows_hold_several_pairs_and_score_as_plain(tiny_lm_dir):
    prompts = ["echo a", "echo b", "echo c d e f g h i j", "echo i j"]
    chosen, rejected = ["A", "B", "C D E F G H I J", "I"], ["a", "b", "c d e f g", "J"]
    b = build(tiny_lm_dir, float64=True)
    prepared = b.prepare(shared_prompts(prompts, chosen, rejected))
    # the long pair fills a row alone; the three short pairs share the other
    assert prepared.input_ids.shape[0] == 2
    groups_per_row = [len(set((row[row >= 0] // SEGMENT_STRIDE).tolist())) for row in prepared.segments]
    assert sorted(groups_per_row) == [1, 3]
    views = shared_prompts(prompts, chosen, rejected)
    assert_same(scores_and_grads(b, views), scores_and_grads(build(tiny_lm_dir, float64=True, **PLAIN), views))


# --- the chunked head + log-softmax ---------------------------------------------------------------


def test_chunked_log_probs_pass_gradcheck():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 11, (7,), generator=gen)

    def fused(h, w, b):
        return ChunkedTokenLogProbs.apply(h, w, b, labels, 3)

    assert torch.autograd.gradcheck(fused, (hidden, weight, bias))
    direct = torch.log_softmax(hidden @ weight.T + bias, -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(fused(hidden, weight, bias), direct, atol=1e-12, rtol=0)


def test_the_chunked_head_keeps_no_tokens_by_vocabulary_tensor_for_backward():
    m, h, v = 64, 16, 1000
    hidden = torch.randn(m, h, requires_grad=True)
    head = nn.Linear(h, v, bias=False)
    labels = torch.randint(0, v, (m,))

    def largest_saved(fn) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn().sum().backward()
        return max(sizes)

    assert largest_saved(lambda: selective_log_softmax(head(hidden), labels)) >= m * v  # the plain path keeps one
    assert largest_saved(lambda: ChunkedTokenLogProbs.apply(hidden, head.weight, None, labels, 8)) == v * h


def test_lm_head_chunk_must_be_positive(tiny_lm_dir):
    with pytest.raises(ValueError, match="lm_head_chunk must be a positive"):
        CausalLM(tiny_lm_dir, lm_head_chunk=0)


def test_lm_head_chunk_refuses_an_adapted_head(tiny_lm_dir):
    b = build(tiny_lm_dir, lora=LoraSpec(r=2, target_modules=["q_proj", "lm_head"]), lm_head_chunk=4)
    with pytest.raises(ValueError, match="lm_head_chunk needs the LM head to be a plain nn.Linear"):
        b.score(b.prepare(pair_views()))


def test_lm_head_chunk_refuses_a_model_that_soft_caps_its_logits(tmp_path):
    """Gemma 2 soft-caps the head's output; the fused path returns log-probs, which must not be capped."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    world = EchoWorld()
    tok = world.build_tokenizer()
    config = Gemma2Config(vocab_size=world.build_config(tok).vocab_size, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                          final_logit_softcapping=5.0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    capped = build(str(tmp_path), lm_head_chunk=4)
    with pytest.raises(ValueError, match="soft-capping or scaling"):
        capped.score(capped.prepare(pair_views()))
    # the head at scored positions alone is fine: soft-capping applies to those logits as to all
    assert_same(scores_and_grads(build(str(tmp_path)), pair_views()),
                scores_and_grads(build(str(tmp_path), **PLAIN), pair_views()))


def test_lora_policy_scores_and_gradients_on_the_fast_path(tiny_lm_dir):
    lora = LoraSpec(r=4, alpha=8, target_modules="all-linear")
    torch.manual_seed(0)
    fast = build(tiny_lm_dir, lora=lora, lm_head_chunk=4)
    torch.manual_seed(0)
    plain = build(tiny_lm_dir, lora=lora, **PLAIN)
    for b in (fast, plain):
        with torch.no_grad():
            for name, p in sorted(b.policy.named_parameters()):
                if "lora_B" in name:
                    p.copy_(torch.full_like(p, 0.05))
    assert_same(scores_and_grads(fast, pair_views()), scores_and_grads(plain, pair_views()))


def test_the_lm_head_is_its_own_again_after_scoring(tiny_lm_dir):
    """The fast path scores; it never touches the model: the head's forward is its own again afterwards."""
    b = build(tiny_lm_dir, lm_head_chunk=4)
    b.score(b.prepare(pair_views()))
    head = b.policy.get_output_embeddings()
    assert "forward" not in vars(head)
    x = torch.randn(2, head.in_features)
    torch.testing.assert_close(head(x), x @ head.weight.T)



def test_the_reference_and_the_policy_share_the_batch_and_its_mask(tiny_lm_dir):
    """Each step's batch goes to the device once and its packed mask is built once, for both scorings."""
    b = build(tiny_lm_dir)
    reference = b.load_reference()
    prepared = b.prepare(pair_views())
    assert prepared.segments is not None and prepared.to("cpu") is prepared
    first = b.score(prepared, reference).score
    mask = prepared.packed_mask("sdpa", torch.float32)
    torch.testing.assert_close(b.score(prepared).score, first)  # the policy starts as the reference
    assert prepared.packed_mask("sdpa", torch.float32) is mask
    assert [k for k in prepared._made if k[0] == "mask"] == [("mask", "sdpa", torch.float32)]


def test_a_packing_plan_sizes_the_batch_it_builds(tiny_lm_dir):
    """The plan says how large the packed batch is before it is built (the backbone builds it only if smaller)."""
    b = build(tiny_lm_dir)
    rows = b._encode(*(PROMPTS * 2, CHOSEN + REJECTED))
    plan = Packing.plan(rows, share=True, pack=True)
    packed = pack_rows(rows, [False] * len(rows), b.tokenizer.pad_token_id, plan)
    assert packed.input_ids.numel() == plan.size and packed.input_ids.shape == (len(plan.rows), plan.width)
    assert sorted(i for g in plan.groups for i in g) == list(range(len(rows)))


def test_the_flex_attention_mask_is_the_packed_mask(tiny_lm_dir):
    """flex attention's block mask is made from a mask_mod; its every query-key decision is the packed mask's."""
    from torch.nn.attention.flex_attention import create_mask

    from alignsuite.backbones.token_scoring import packed_mask_mod

    s = SEGMENT_STRIDE
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, s, s + 1, s + 1, -1], [0, 1, 1, 1, -1, -1, -1, -1, -1, -1]])
    dense = create_mask(packed_mask_mod(segments), 2, 1, 10, 10, device="cpu")
    assert torch.equal(dense, packed_attention_mask(segments, "sdpa", torch.float32))
    assert build(tiny_lm_dir, attn_implementation="flex_attention").prepare(pair_views()).segments is not None


@pytest.mark.slow
def test_flex_attention_scores_the_packed_layout_as_sdpa_does(tiny_lm_dir):
    """Scoring only (as a reference does): PyTorch runs flex attention's backward on GPUs alone; the first call
    compiles the kernel (about 30 s on 2 cores)."""
    flex, sdpa = build(tiny_lm_dir, attn_implementation="flex_attention"), build(tiny_lm_dir)
    with torch.no_grad():
        torch.testing.assert_close(flex.score(flex.prepare(pair_views())).score, sdpa.score(sdpa.prepare(pair_views())).score,
                                   atol=1e-5, rtol=0)
