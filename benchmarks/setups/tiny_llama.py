"""What both arms of ``bench_dpo_vs_trl`` train on: a random-init Llama or Qwen2 (tiny by default, or the
shape of a real checkpoint, ``SIZES``) with a word-level tokenizer, saved once with ``save_pretrained``, and
generated prompt/chosen/rejected pairs in one jsonl.

Nothing is downloaded. Every row fits the maximum length whole, and both frameworks tokenize it to the
same ids (`check_tokenization`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]

# Model shapes (``--size``): the default tiny one, and those of real checkpoints, whose configs give these
# numbers (random init here: nothing is downloaded). ``intermediate: None`` is 8/3 hidden, rounded to 64;
# ``kv_heads: None`` is ``heads`` (no grouped-query attention).
SIZES: dict[str, dict] = {
    "tiny": {"arch": "llama", "hidden": 256, "intermediate": None, "layers": 4, "heads": 8, "kv_heads": None,
             "vocab": 4096, "tied_embeddings": False},
    "qwen2.5-0.5b": {"arch": "qwen2", "hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2,
                     "vocab": 151936, "tied_embeddings": True},
    "qwen2.5-1.5b": {"arch": "qwen2", "hidden": 1536, "intermediate": 8960, "layers": 28, "heads": 12, "kv_heads": 2,
                     "vocab": 151936, "tied_embeddings": True},
    "llama-3.2-1b": {"arch": "llama", "hidden": 2048, "intermediate": 8192, "layers": 16, "heads": 32, "kv_heads": 8,
                     "vocab": 128256, "tied_embeddings": True},
}


def _make_words(n: int, seed: int) -> list[str]:
    """``n`` distinct pronounceable pseudo-words (two or three syllables)."""
    rng = random.Random(f"words-{seed}")
    onsets = list("bcdfghjklmnprstvwz") + ["br", "ch", "dr", "fl", "gr", "pl", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "", "n", "r", "s", "l", "m", "t"]
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice((2, 2, 3))
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k)))
    return sorted(words)


def build_tokenizer(vocab_size: int, seed: int):
    """Word-level tokenizer, like ``alignsuite/toy/llm.py``'s but over ``vocab_size`` generated words.

    Its post-processor prepends ``<bos>``, so both frameworks build ``<bos> prompt completion <eos>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = _make_words(vocab_size - len(SPECIAL), seed)
    vocab = {w: i for i, w in enumerate(SPECIAL + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    return tok, words


def build_model(path: Path, args) -> dict:
    """Random-init Llama or Qwen2 (``args.arch``) and the tokenizer, saved once with ``save_pretrained``;
    returns the model's shape. ``args`` without ``arch``, ``kv_heads`` or ``tied_embeddings`` gets a Llama
    without grouped-query attention or tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok, words = build_tokenizer(args.vocab, args.seed)
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[getattr(args, "arch", "llama")]
    config = config_class(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or int(round(args.hidden * 8 / 3 / 64)) * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=getattr(args, "kv_heads", None) or args.heads,
        max_position_embeddings=max(args.max_length, 128),
        tie_word_embeddings=getattr(args, "tied_embeddings", False),
        attention_dropout=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(args.seed)
    model = model_class(config).to(torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    # And alone: beside a Qwen2 config, AutoTokenizer builds Qwen2's own tokenizer class from tokenizer.json,
    # which does not split on whitespace, instead of this word-level one.
    tok.save_pretrained(tokenizer_dir(path))
    return {
        "arch": config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "tied_embeddings": config.tie_word_embeddings,
        "words": words,
    }


def tokenizer_dir(model_dir: Path) -> Path:
    """Where `build_model` saves the tokenizer without the model's config: load it from here."""
    return model_dir.parent / f"{model_dir.name}_tokenizer"


def add_size_options(p) -> None:
    """``--size`` and the options that override its shape one by one."""
    p.add_argument("--size", choices=list(SIZES), default="tiny",
                   help="the model's shape: the tiny default or a real checkpoint's (random init); the options below"
                        " override it one by one")
    p.add_argument("--arch", choices=("llama", "qwen2"), default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (tiny: 8/3 hidden, rounded to 64)")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (grouped-query attention)")
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--tied-embeddings", action=argparse.BooleanOptionalAction, default=None)


def resolve_size(args) -> None:
    """Fills each shape option left unset from ``--size``."""
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def write_pairs(
    path: Path, words: list[str], n: int, max_length: int, seed: int,
    prompt_words: tuple[int, int] | None = None, completion_words: tuple[int, int] | None = None,
) -> dict:
    """``n`` rows of prompt/chosen/rejected text whose every row fits ``max_length`` tokens whole.

    One word is one token. A row is ``<bos>`` + prompt + completion + ``<eos>``. By default prompts take
    1/8 to 1/2 of ``max_length``, completions from 1/16 of it to whatever room is left, so batches vary in
    width and in how much of each row is prompt. ``prompt_words`` / ``completion_words`` (inclusive
    ranges, in words) fix other shapes; a row that would not fit is refused. Completions start with a
    space, because TRL tokenizes ``prompt + completion`` as one string and alignsuite tokenizes them
    apart: with the space both give the same ids.
    """
    rng = random.Random(f"pairs-{seed}")
    weights = [1.0 / (r + 1) for r in range(len(words))]  # Zipf-like word frequencies

    def text(k: int) -> str:
        return " ".join(rng.choices(words, weights=weights, k=k))

    lo_p, hi_p = prompt_words or (max(1, max_length // 8), max(1, max_length // 2))
    lo_c, hi_c = completion_words or (max(1, max_length // 16), None)  # None: up to the room left
    if (need := hi_p + 2 + (hi_c or lo_c)) > max_length:  # <bos> and <eos>
        raise ValueError(
            f"prompts up to {hi_p} words and completions {'up to ' + str(hi_c) if hi_c else 'of at least ' + str(lo_c)}"
            f" do not fit max length {max_length} with <bos> and <eos>: raise --max-length to {need}"
        )
    prompt_tokens, completion_tokens, pair_tokens = [], [], []
    with open(path, "w") as f:
        for _ in range(n):
            p = rng.randint(lo_p, hi_p)
            room = hi_c or max_length - 2 - p
            c, r = rng.randint(lo_c, room), rng.randint(lo_c, room)
            row = {"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)}
            f.write(json.dumps(row) + "\n")
            prompt_tokens.append(p + 1)
            completion_tokens += [c + 1, r + 1]
            pair_tokens.append((p + 1, c + 1, r + 1))
    return {
        "rows": n,
        "mean_prompt_tokens": statistics.mean(prompt_tokens),
        "mean_completion_tokens": statistics.mean(completion_tokens),
        "pair_tokens": pair_tokens,  # (prompt, chosen, rejected) tokens of each row, <bos> and <eos> counted
    }


def group_by_length(path: Path, batch_size: int, group_batches: int, seed: int) -> list[int]:
    """Rewrites the pairs file in the order ``data.group_by_length: group_batches`` gives its first epoch
    (alignsuite's sampler, by characters of prompt and longer answer), so that every arm, reading the file in
    order, sees the same length-grouped batches; returns the new order (old row positions)."""
    import datasets

    from alignsuite.data.datamodule import EpochRandomSampler, row_lengths

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lengths = row_lengths(datasets.Dataset.from_list(rows))
    order = list(EpochRandomSampler(rows, seed, lengths=lengths, batch_size=batch_size, group_batches=group_batches))
    path.write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    return order


def check_tokenization(model_dir: Path, data: Path, max_length: int) -> None:
    """Both frameworks' tokenization of every row must agree (separately vs. concatenated)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir(model_dir))
    with open(data) as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            for side in ("chosen", "rejected"):
                # alignsuite: prompt with special tokens, completion without, then <eos>
                ours = tok(row["prompt"])["input_ids"] + tok(row[side], add_special_tokens=False)["input_ids"]
                ours += [tok.eos_token_id]
                # TRL: prompt + completion + eos text, tokenized as one string
                theirs = tok(row["prompt"] + row[side] + tok.eos_token)["input_ids"]
                if ours != theirs:
                    raise AssertionError(f"row {i} {side}: the frameworks would tokenize it differently")
                if tok.unk_token_id in ours:
                    raise AssertionError(f"row {i} {side}: unknown token")
                if len(ours) > max_length:
                    raise AssertionError(f"row {i} {side}: {len(ours)} tokens > max_length {max_length}")
