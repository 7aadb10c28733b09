"""``iterate.draws_per_call``: a prompt's samples drawn together in one ``generate`` call (each prompt repeated, as
``transformers``' ``num_return_sequences``), with the seed of the call kept in every sample row, so that a round's
samples are what one call with that seed gives, and a judge's rewrite is drawn in the same calls."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from alignsuite.backbones import CausalLM, VisionLanguage
from alignsuite.evaluation import ToyReward
from alignsuite.evaluation.prompts import load_prompts
from alignsuite.iterate import Iterate, IterateError
from alignsuite.iterate import rounds
from alignsuite.iterate.files import read_rows

KWARGS = {"max_new_tokens": 4, "do_sample": True, "temperature": 2.0}


class Counting:
    """The backbone's generate, counting the calls and the rows of each."""

    def __init__(self, generate):
        self.generate, self.rows = generate, []

    def __call__(self, prompts, **kwargs):
        self.rows.append(len(prompts))
        return self.generate(prompts, **kwargs)


def samples(folder: str, shards: int) -> list[dict]:
    return [r for k in range(shards) for r in read_rows(os.path.join(folder, "samples", f"{k:05d}.jsonl"))]


@pytest.fixture(scope="module")
def llm():
    backbone = CausalLM("toy:llm", max_length=32, max_prompt_length=16)
    backbone.configure()
    return backbone, load_prompts("toy:llm", 10, 0)


@pytest.mark.parametrize("per_call", [1, 2, 4])
def test_each_call_holds_batch_size_prompts_times_the_draws_and_the_rows_are_that_calls_outputs(llm, tmp_path,
                                                                                                per_call):
    backbone, items = llm
    settings = Iterate("toy:llm", ToyReward("llm"), num_samples=4, shard_size=6, batch_size=3,
                       draws_per_call=per_call, generation_kwargs=KWARGS, output_dir=str(tmp_path))
    counting = Counting(backbone.generate)
    rounds.generate_round(backbone, items, settings, 1, str(tmp_path / "r"), Counter(), generate=counting)
    rows = samples(str(tmp_path / "r"), 2)
    assert sorted((r["prompt_index"], r["sample"]) for r in rows) == [(i, j) for i in range(10) for j in range(4)]
    # shards of 6 and 4 prompts, 3 prompts a call: 2 calls each per group of draws
    assert counting.rows == [3 * per_call, 3 * per_call] * (4 // per_call) + [3 * per_call, per_call] * (4 // per_call)
    for seed in {r["seed"] for r in rows}:  # every call again, from its recorded seed
        drawn = sorted((r for r in rows if r["seed"] == seed), key=lambda r: (r["prompt_index"], r["sample"]))
        prompts = [items[r["prompt_index"]]["prompt"] for r in drawn]
        assert backbone.generate(prompts, seed=seed, **KWARGS) == [r["output"] for r in drawn]
    if per_call > 1:  # repeated prompts in one call are drawn apart, not copied
        assert any(len({r["output"] for r in rows if r["prompt_index"] == i}) > 1 for i in range(10))


def test_draws_per_call_1_keeps_the_seeds_of_one_sample_per_call(llm, tmp_path):
    backbone, items = llm
    settings = Iterate("toy:llm", ToyReward("llm"), num_samples=2, shard_size=6, batch_size=3,
                       generation_kwargs=KWARGS, output_dir=str(tmp_path), seed=5)
    rounds.generate_round(backbone, items, settings, 1, str(tmp_path / "r"), Counter())
    rows = samples(str(tmp_path / "r"), 2)
    base = 5 + rounds.ROUND_SEED
    # the sample j of the chunk of prompts starting at s: seed + 7_919 r + 1_000_003 j + s
    assert all(r["seed"] == base + rounds.SAMPLE_SEED * r["sample"] + r["prompt_index"] - r["prompt_index"] % 3
               for r in rows)


def test_draws_per_call_beyond_num_samples_is_refused():
    with pytest.raises(IterateError, match=r"iterate.draws_per_call: expected from 1 to iterate.num_samples \(3\)"):
        Iterate("toy:llm", ToyReward("llm"), num_samples=3, draws_per_call=4)


def test_a_judges_rewrite_is_drawn_in_the_samples_own_calls(tmp_path):
    backbone = VisionLanguage("toy:vlm", max_length=64, max_prompt_length=48)
    backbone.configure()
    items = load_prompts("toy:vlm", 3, 0)
    settings = Iterate("toy:vlm", ToyReward("vlm"), num_samples=2, shard_size=4, batch_size=2, draws_per_call=2,
                       generation_kwargs={**KWARGS, "max_new_tokens": 3}, output_dir=str(tmp_path))
    rounds.generate_round(backbone, items, settings, 1, str(tmp_path / "r"), Counter())
    rows = samples(str(tmp_path / "r"), 1)
    for seed in {r["seed"] for r in rows}:
        drawn = sorted((r for r in rows if r["seed"] == seed), key=lambda r: (r["prompt_index"], r["sample"]))
        again = backbone.generate([items[r["prompt_index"]]["prompt"] for r in drawn], seed=seed,
                                  images=[items[r["prompt_index"]]["swap_images"] for r in drawn],
                                  **settings.generation_kwargs)
        assert again == [r["rewrites"]["swapped"]["output"] for r in drawn]
