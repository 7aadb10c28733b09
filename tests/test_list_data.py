"""List layouts (K graded responses per prompt): reading, padding, refusing, batching, and the list objectives
trained on them end to end through the tiny saved Llama."""

from __future__ import annotations

import json
import math
import os

import lightning as L
import pytest
import torch
from conftest import run_toy_recipe, save_tiny_lm

from alignsuite.backbones import CausalLM
from alignsuite.data import DataError, PreferenceDataModule, TextLists
from alignsuite.module import PreferenceModule
from alignsuite.objectives import DPO, ListMLE
from alignsuite.reference import FrozenCopy
from alignsuite.toy.data import ToyPreferenceData

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def built(tmp_path, rows, **layout) -> PreferenceDataModule:
    data = PreferenceDataModule(train=write_jsonl(tmp_path / "train.jsonl", rows), layout=TextLists(**layout), batch_size=2)
    data.setup()
    return data


def first_batch(data: PreferenceDataModule) -> dict:
    return data.collate([data.train_set[i] for i in range(len(data.train_set))])


def test_ragged_lists_are_padded_and_masked_never_copied(tmp_path):
    rows = [{"prompt": "echo a b", "responses": ["A B", "a b", "A C"], "scores": [1.0, 0.0, 0.5]},
            {"prompt": "echo c", "responses": ["C", "c"], "labels": [2, 1]}]
    batch = first_batch(built(tmp_path, rows, list_size=4))
    assert batch["responses"] == [["A B", "a b", "A C", ""], ["C", "c", "", ""]]
    assert batch["mask"].dtype == torch.bool and batch["mask"].tolist() == [[True] * 3 + [False], [True, True, False, False]]
    assert batch["labels"].shape == (2, 4) and batch["labels"].dtype == torch.float
    assert batch["labels"][0, :3].tolist() == [1.0, 0.0, 0.5] and batch["labels"][1, :2].tolist() == [2.0, 1.0]
    assert math.isnan(batch["labels"][0, 3]) and math.isnan(batch["labels"][1, 2])  # loud if an objective forgets the mask


def test_ranked_lists_and_ranks_give_labels_best_first(tmp_path):
    rows = [{"prompt": "p", "responses": ["best", "middle", "worst"]}]
    assert first_batch(built(tmp_path, rows, list_size=3, ranked=True))["labels"].tolist() == [[2.0, 1.0, 0.0]]
    rows = [{"prompt": "p", "responses": ["second", "first", "third"], "ranks": [2, 1, 3]}]
    assert first_batch(built(tmp_path, rows, list_size=3))["labels"].tolist() == [[-2.0, -1.0, -3.0]]


def test_pairs_are_lists_of_two(tmp_path):
    rows = [{"prompt": "echo a", "chosen": "A", "rejected": "a"}, {"prompt": "echo b", "chosen": "B", "rejected": "B"}]
    data = built(tmp_path, rows, list_size=2)
    batch = first_batch(data)
    assert batch["responses"] == [["A", "a"]] and batch["labels"].tolist() == [[1.0, 0.0]]
    assert data.skipped == {str(tmp_path / "train.jsonl"): 1}  # chosen == rejected carries no preference


def ultrafeedback_row(ratings, overall):
    def completion(text, rating, score):
        aspects = {a: {"Rating": rating, "Rationale": "..."} for a in ("helpfulness", "honesty", "truthfulness")}
        return {"model": "m", "response": text, "overall_score": score, "fine-grained_score": 3.0,
                "annotations": {**aspects, "instruction_following": [{"Rating": rating, "Rationale": "..."}]}}

    texts = ["one", "two", "three", "four"]
    return {"source": "evol", "instruction": "count", "models": ["m"] * 4,
            "completions": [completion(t, r, s) for t, r, s in zip(texts, ratings, overall)]}


def test_ultrafeedback_rows_graded_by_the_rating_asked_for(tmp_path):
    rows = [ultrafeedback_row(["5", "N/A", "2", "4"], [8.5, 7.0, None, 3.0])]
    overall = built(tmp_path, rows)
    batch = first_batch(overall)
    assert batch["prompt"] == ["count"]
    assert batch["responses"] == [["one", "two", "four", ""]]  # "three" has no overall score: dropped, counted
    assert batch["labels"][0, :3].tolist() == [8.5, 7.0, 3.0]
    assert overall.layout.dropped_responses == {str(tmp_path / "train.jsonl"): 1}
    helpful = built(tmp_path, rows, rating="instruction_following")
    assert first_batch(helpful)["responses"] == [["one", "three", "four", ""]]  # "two" rated N/A
    assert first_batch(helpful)["labels"][0, :3].tolist() == [5.0, 2.0, 4.0]


def test_chat_responses_become_assistant_turns(tmp_path):
    prompt = [{"role": "user", "content": "echo a"}]
    rows = [{"prompt": prompt, "responses": ["A", [{"role": "assistant", "content": "a"}], prompt + [{"role": "assistant", "content": "B"}]],
             "scores": [3, 1, 2]}]
    batch = first_batch(built(tmp_path, rows, list_size=4))
    assert batch["prompt"] == [prompt]
    assert batch["responses"][0] == [[{"role": "assistant", "content": x}] for x in ("A", "a", "B", "")]


def test_lists_with_fewer_than_two_valid_responses_are_skipped_and_counted(tmp_path):
    rows = [{"prompt": "p", "responses": ["x", "y"], "scores": [1, 0]},
            {"prompt": "p", "responses": ["x", "  ", None], "scores": [1, 0, 2]},  # one valid response left
            {"prompt": "p", "responses": ["x", "y"], "scores": [1, float("nan")]},
            {"prompt": "p", "responses": ["x", "y"], "scores": [1, 1]}]  # no preference between them
    data = built(tmp_path, rows, list_size=2)
    assert len(data.train_set) == 1 and data.skipped == {str(tmp_path / "train.jsonl"): 3}
    with pytest.raises(DataError, match=r"all 1 rows were skipped because the list has fewer than 2 valid responses"):
        built(tmp_path, rows[1:2], list_size=2)


@pytest.mark.parametrize("row, field, expected", [
    ({"prompt": "p", "responses": ["x", "y", "z"], "scores": [1, 0]}, "scores", r"a list of 3 numbers, one per response, got \[1, 0\]"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "scores": [3, 2, 1]}, "responses", "at most 2 valid responses .*, got 3; raise list_size"),
    ({"prompt": "p", "responses": ["x", "y"], "scores": [1, "high"]}, "scores", "a number"),
    ({"prompt": "p", "responses": ["x", "y"]}, "scores", "a column of grades"),
    ({"prompt": "p", "responses": "x y"}, "responses", "a list of responses"),
])
def test_bad_lists_are_refused_naming_file_row_and_field(tmp_path, row, field, expected):
    good = {"prompt": "p", "responses": ["x", "y"], "scores": [1, 0]}
    with pytest.raises(DataError, match=rf"train.jsonl: row 1: field '{field}': expected {expected}"):
        built(tmp_path, [good, row], list_size=2)


def test_list_size_is_checked_against_the_objective_before_any_model_loads(tmp_path, tiny_lm_dir):
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=str(tmp_path))
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), ListMLE(list_size=3))
    with pytest.raises(ValueError, match=r"objective 'list_mle' scores lists of list_size=3 .* TextLists pads its lists to"
                                         r" list_size=4"):
        trainer.fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4, list_size=4))
    assert module.backbone.policy is None
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), DPO())
    with pytest.raises(ValueError, match=r"objective 'dpo' scores pairs rows, and the data layout TextLists gives lists rows"):
        trainer.fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4, list_size=4))
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), ListMLE(list_size=2))
    with pytest.raises(ValueError, match=r"objective 'list_mle' scores lists rows.* gives pairs rows; give data.layout a list"):
        trainer.fit(module, ToyPreferenceData(num_train=8, num_val=4, batch_size=4))


class Scores(L.Callback):
    """Keeps the loss of each validation batch."""

    def __init__(self):
        self.losses = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.losses.append(float(pl_module.objective(pl_module.compute_scores(batch, "val")).loss))


def test_a_padded_list_trains_to_the_same_loss_as_the_unpadded_one(tmp_path, tiny_lm_dir):
    """End to end through the causal LM (policy and reference differ, so the loss depends on every score): lists of 3
    padded to 4 with an empty answer give the loss of the same lists at list_size 3, to float rounding."""
    reference = save_tiny_lm(tmp_path / "ref", seed=7, initializer_range=0.2)
    rows = [{"prompt": "echo a b", "responses": ["A B", "a b", "A C"], "scores": [1.0, 0.0, 0.5]},
            {"prompt": "echo c d e", "responses": ["c d e", "C D E", "C D D"], "scores": [0.0, 1.0, 0.7]}]
    path = write_jsonl(tmp_path / "lists.jsonl", rows)
    losses = {}
    for k in (3, 4):
        record = Scores()
        module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), ListMLE(beta=1.0, list_size=k),
                                  FrozenCopy(reference))
        data = PreferenceDataModule(train=path, val=path, layout=TextLists(list_size=k), batch_size=2)
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[record]).validate(module, data)
        losses[k] = record.losses[0]
    assert losses[4] == pytest.approx(losses[3], abs=1e-5)
    assert abs(losses[3] - math.log(6)) > 0.05  # policy and reference differ: not the loss of equal scores


def test_the_toy_list_recipe_raises_the_reward(tmp_path):
    """The shipped list-MLE recipe for 32 steps (256 prompts of 4 graded answers): the greedy reward rises from the
    base model's ~0.42 past 0.9 (0.99 on the machine the docs were measured on)."""
    reward = run_toy_recipe(tmp_path, "llm_list_mle", "--trainer.max_steps", "32")
    assert reward[0][0] == 0 and reward[0][1] < 0.6
    assert reward[-1][1] >= 0.9, reward


@pytest.mark.slow
def test_lists_reach_the_pairs_reward_with_half_the_prompts():
    """At the same number of scored completions (and steps of 32 sequences), list-MLE on N/2 prompts of 4 graded
    answers reaches the reward DPO reaches on N prompts of 2 (N = 512; measured per seed: list-MLE 0.991 / 0.998 /
    0.996 against DPO 0.950 / 0.976 / 0.974, so the bound holds with a margin of 0.03 or more)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_lists", os.path.join(REPO, "scripts", "toy_lists.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = [script.compare(512, seed) for seed in (0, 1, 2)]
    for dpo, lists in results:
        assert lists >= dpo - 0.02, results
    assert sum(lists for _, lists in results) >= sum(dpo for dpo, _ in results), results


def test_the_k_responses_go_through_one_stacked_forward(tmp_path, tiny_lm_dir):
    """The K views of a list are prepared together and scored in one forward of the policy (and one of the
    reference), B * K sequences at once."""
    data = built(tmp_path, [{"prompt": "echo a b", "responses": ["A B", "a b", "A C"], "scores": [1.0, 0.0, 0.5]},
                            {"prompt": "echo c", "responses": ["C", "c"], "scores": [1.0, 0.0]}], list_size=3)
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), ListMLE(list_size=3))
    module.backbone.configure()
    module.reference.build(module.backbone)
    calls = []
    hooks = [m.register_forward_hook(lambda *args: calls.append(1)) for m in (module.backbone.policy, module.reference.model)]
    scores = module.compute_scores(first_batch(data))
    for hook in hooks:
        hook.remove()
    assert len(calls) == 2 and scores.scores.shape == (2, 3)
    assert scores.mask.tolist() == [[True, True, True], [True, True, False]]
