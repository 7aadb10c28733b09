"""The judges beyond one value per output: pairwise preference judges (a K x K win matrix) and LLM-as-judge
(a rubric prompt, the score parsed from the judge's text, failures counted and never a number)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from alignsuite.components import build_object
from alignsuite.evaluation.scorers import WER, ToyReward
from alignsuite.judges import (
    RUBRIC,
    BradleyTerryJudge,
    LLMJudge,
    PairwiseClassifier,
    PreferenceJudge,
    judge_lists,
    win_rates,
)
from alignsuite.judging import MissingWeightsError, Scorer


def s(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class Table(Scorer):
    """A scorer reading each output's value from a table (``None``, NaN and numbers as given)."""

    name = "table"
    modalities = ("text",)

    def __init__(self, values: dict, higher_is_better: bool = True) -> None:
        self.table, self.higher_is_better = values, higher_is_better

    def score_batch(self, prompts, outputs, conditions, rows):
        return [{self.name: self.table[o]} for o in outputs]


def same(got, expected, tol: float = 1e-12) -> None:
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(expected, dtype=float), rtol=0, atol=tol)


def assert_win_matrix(matrix, judged=None):
    """Diagonal 0.5 and P_ij + P_ji = 1 over the judged outputs (all of them by default)."""
    k = range(len(matrix))
    judged = list(k) if judged is None else judged
    for i in judged:
        assert matrix[i][i] == 0.5
        for j in judged:
            assert matrix[i][j] + matrix[j][i] == pytest.approx(1.0, abs=1e-12)
            assert 0.0 < matrix[i][j] < 1.0


# ------------------------------------------------------------------ Bradley-Terry from any scorer
def test_bradley_terry_is_the_sigmoid_of_value_differences_hand_worked():
    judge = BradleyTerryJudge(Table({"x": 1.0, "y": 0.0, "z": 2.0}))
    p = judge.win_matrix("q", ["x", "y", "z"])
    # SPPO's compute_prob.py: P_ij = 1 / (1 + exp(s_j - s_i)), the diagonal 0.5.
    expected = [[0.5, s(1.0), s(-1.0)], [s(-1.0), 0.5, s(-2.0)], [s(1.0), s(2.0), 0.5]]
    same(p, expected)
    assert p[0][1] == pytest.approx(0.7310585786300049, abs=1e-12)
    assert_win_matrix(p)
    # Win rates with the diagonal: Phat_0 = (0.5 + s(1) + s(-1)) / 3 = 1.5 / 3 = 0.5 (s(1) + s(-1) = 1).
    assert win_rates(p) == pytest.approx([0.5, (0.5 + s(-1) + s(-2)) / 3, (0.5 + s(1) + s(2)) / 3], abs=1e-12)
    soft = BradleyTerryJudge(Table({"x": 1.0, "y": 0.0}), temperature=2.0).win_matrix("q", ["x", "y"])
    assert soft[0][1] == pytest.approx(s(0.5), abs=1e-12)


def test_bradley_terry_turns_a_lower_is_better_value_round():
    """For an error rate the lower value wins: P(i over j) = sigmoid((r_j - r_i) / T)."""
    p = BradleyTerryJudge(Table({"good": 0.1, "bad": 0.6}, higher_is_better=False)).win_matrix("q", ["good", "bad"])
    assert p[0][1] == pytest.approx(s(0.5), abs=1e-12) and p[0][1] > 0.5
    wer = BradleyTerryJudge(WER())
    m = wer.win_matrix("the cat sat", ["the cat sat", "the dog sat"])
    assert m[0][1] == pytest.approx(s(1 / 3), abs=1e-7)  # torchmetrics' WER is a float32


def test_win_rates_include_the_diagonal_as_sppo_does():
    p = [[0.5, 0.7], [0.3, 0.5]]
    assert win_rates(p) == pytest.approx([0.6, 0.4])  # (0.5 + 0.7) / 2, not 0.7
    # A matrix with extreme values stays finite: the sigmoid does not overflow.
    big = BradleyTerryJudge(Table({"a": 1e6, "b": -1e6})).win_matrix("q", ["a", "b"])
    assert big == [[0.5, 1.0], [0.0, 0.5]]


def test_a_value_that_is_none_or_nan_makes_its_row_and_column_nan_and_is_counted():
    judge = BradleyTerryJudge(Table({"a": 1.0, "b": None, "c": float("nan"), "d": 0.0}))
    first, second = judge.win_matrices(["q0", "q1"], [["a", "b", "d"], ["c", "d", None]])
    for k in range(3):
        assert math.isnan(first[1][k]) and math.isnan(first[k][1])
    assert first[0][2] == pytest.approx(s(1.0)) and first[2][0] == pytest.approx(s(-1.0))
    assert_win_matrix(first, judged=[0, 2])
    rates = win_rates(first)
    assert math.isnan(rates[1])
    assert rates[0] == pytest.approx((0.5 + s(1.0)) / 2)  # over the judged outputs only
    assert all(math.isnan(x) for x in second[0] + second[2]) and second[1][1] == 0.5
    assert judge.failures.count == 3 and judge.failures.seen == 6
    assert judge.failures.rows == [1, 3, 5]  # positions among the outputs judged, prompt by prompt
    report = judge.failure_report()
    assert report.startswith("3 of 6 outputs without a judgement") and "output 3: prompt 1, output 0" in report
    judge.reset_failures()
    assert judge.failure_report() == "" and judge.failures.count == 0


def test_bradley_terry_options_are_checked_and_named():
    with pytest.raises(ValueError, match="BradleyTerryJudge.temperature must be a positive number, got 0"):
        BradleyTerryJudge(Table({}), temperature=0)
    with pytest.raises(ValueError, match="BradleyTerryJudge.scorer must be an alignsuite.judging.Scorer"):
        BradleyTerryJudge(object())
    with pytest.raises(ValueError, match="3 candidates for 2 prompts"):
        BradleyTerryJudge(Table({})).win_matrices(["a", "b"], [[], [], []])


def test_judges_are_named_by_class_path_as_a_recipe_names_them():
    judge = build_object({"class_path": "alignsuite.judges.BradleyTerryJudge", "init_args": {
        "scorer": {"class_path": "alignsuite.evaluation.scorers.ToyReward", "init_args": {"world": "llm"}}}})
    assert isinstance(judge, PreferenceJudge) and judge.name == "toy_reward_llm" and judge.modalities == ("text",)
    p = judge.win_matrix("echo a b c", ["A B C", "a b c"])
    assert p[0][1] == pytest.approx(s(1.0))  # toy rewards 1 and 0


def test_bradley_terry_hands_each_prompts_row_to_the_scorer():
    """The vision-language toy reward scores against the prompt set's row (its answer): one row per prompt."""
    from alignsuite.evaluation.prompts import load_prompts

    item = load_prompts("toy:vlm", 1, seed=0)[0]
    judge = BradleyTerryJudge(ToyReward("vlm"))
    assert judge.rewrites == {} and "answer" in judge.columns("vision_language")
    same(judge.win_matrix(item["prompt"], [item["answer"], "none"], item), [[0.5, s(1.0)], [s(-1.0), 0.5]])


# ------------------------------------------------------------------ a pairwise classifier
@pytest.fixture(scope="module")
def tiny_pairwise(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignsuite.toy.llm import EchoWorld

    path = tmp_path_factory.mktemp("pairwise")
    tok = EchoWorld().build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
                         initializer_range=0.5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), model, tok


def test_a_pairwise_classifier_is_symmetrised_over_both_orders(tiny_pairwise):
    path, model, tok = tiny_pairwise
    template = "{prompt} {response_a} echo {response_b}"
    judge = PairwiseClassifier(path, template=template, device="cpu", dtype="float32", batch_size=4)
    outputs = ["A B C", "a b c", "A b"]
    p = judge.win_matrix("echo a b c", outputs)
    assert_win_matrix(p)

    def f(a, b):  # the model's logit for "a better than b", by hand
        with torch.no_grad():
            return model(**tok(f"echo a b c {a} echo {b}", return_tensors="pt")).logits[0, 0].item()

    for i in range(3):
        for j in range(3):
            if i != j:
                by_hand = (s(f(outputs[i], outputs[j])) + 1 - s(f(outputs[j], outputs[i]))) / 2
                assert p[i][j] == pytest.approx(by_hand, abs=1e-5)
    assert len({round(x, 6) for row in p for x in row}) > 2  # the model does tell the outputs apart
    # A failed generation: its row and column NaN, counted; the others as before.
    q = judge.win_matrix("echo a b c", outputs + [None])
    assert all(math.isnan(x) for x in q[3]) and judge.failures.count == 1 and judge.failures.rows == [6]
    same([row[:3] for row in q[:3]], p, 1e-6)
    assert judge.score_lists(["echo a b c"], [outputs])[0] == pytest.approx(win_rates(p))


def test_a_missing_pairwise_classifier_names_the_option(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"PairwiseClassifier.model_name_or_path: weights not found at .*missing"):
        PairwiseClassifier(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"PairwiseClassifier.template lacks the field\(s\) \{response_b\}"):
        PairwiseClassifier(str(tmp_path), template="{prompt} {response_a}")


# ------------------------------------------------------------------ LLM-as-judge
class Scripted:
    """A stand-in judge model: ``generate`` answers each judge prompt with the text its response maps to."""

    def __init__(self, answers: dict) -> None:
        self.answers, self.calls = answers, []

    def generate(self, prompts, **kwargs):
        self.calls.append((prompts, kwargs))
        texts = [p[0]["content"] if isinstance(p, list) else p for p in prompts]
        return [next(a for key, a in self.answers.items() if f"<<{key}>>" in t) for t in texts]


ANSWERS = {"four": "Relevant and complete.\nScore: 4", "half": "Score: 3.5", "none": "I cannot say.",
           "seven": "Score: 7", "ten": "Score: 10", "restated": "A first guess, score: 2, then\nScore: 5",
           "lower": "score:1"}


def test_the_llm_judge_parses_scores_and_counts_every_failure():
    model = Scripted(ANSWERS)
    judge = LLMJudge(backbone=model, template="Q: {prompt} A: <<{response}>> {not a field}", batch_size=3)
    outputs = ["four", "half", "none", "seven", "ten", "restated", "lower", None]
    judged = judge.judge(["p"] * len(outputs), outputs)
    assert [v and v["llm_judge"] for v in judged] == [4.0, 3.5, None, None, None, 5.0, 1.0, None]
    assert judged[2]["judge_output"] == "I cannot say." and judged[7] is None  # a missing output is not judged
    assert judge.score(["p"], ["none"]) == [None]  # never a silent number
    assert judge.parse_failures == 4 and judge.failures.rows == [2, 3, 4, 8]  # the second call's row 0 is 8
    report = judge.failure_report()
    assert report.startswith("4 of 9 judge outputs without a score in range")
    assert "row 2: no score found in 'I cannot say.'" in report and "row 3: score 7 outside [0, 5]" in report
    # The template is filled by replacement (other braces stay), sent as a chat turn, decoded greedily.
    prompts, kwargs = model.calls[0]
    assert prompts[0] == [{"role": "user", "content": "Q: p A: <<four>> {not a field}"}]
    assert kwargs == {"max_new_tokens": 256, "do_sample": False}
    judge.reset_failures()
    assert judge.parse_failures == 0 and judge.failure_report() == ""


def test_the_llm_judge_keeps_the_first_few_failing_rows_and_reads_options():
    model = Scripted(ANSWERS)
    judge = LLMJudge(backbone=model, template="{prompt}<<{response}>>", keep_failures=2, max_score=10,
                     pattern=r"Score: (\d+)", as_chat=False, seed=3, generation_kwargs={"max_new_tokens": 9})
    judged = judge.judge(["p"] * 5, ["none", "ten", "none", "half", "none"])
    assert [v["llm_judge"] for v in judged] == [None, 10.0, None, 3.0, None]  # "3.5" reads as 3 under this pattern
    assert judge.parse_failures == 3 and judge.failures.rows == [0, 2]
    assert "(the first 2)" in judge.failure_report()
    assert model.calls[0] == (["p<<none>>", "p<<ten>>", "p<<none>>", "p<<half>>", "p<<none>>"],
                              {"seed": 3, "max_new_tokens": 9, "do_sample": False})


def test_the_llm_judge_refuses_bad_options_naming_them():
    with pytest.raises(ValueError, match="LLMJudge needs a model: set LLMJudge.backbone .* or LLMJudge.policy: true"):
        LLMJudge()
    with pytest.raises(ValueError, match="either LLMJudge.backbone .* or LLMJudge.policy: true"):
        LLMJudge(backbone=Scripted({}), policy=True)
    with pytest.raises(ValueError, match=r"LLMJudge.template lacks the field\(s\) \{response\}"):
        LLMJudge(policy=True, template="{prompt}")
    with pytest.raises(ValueError, match=re.escape("LLMJudge.pattern 'Score: \\\\d' has no group")):
        LLMJudge(policy=True, pattern=r"Score: \d")
    with pytest.raises(ValueError, match="LLMJudge.pattern .* is not a regular expression"):
        LLMJudge(policy=True, pattern="(")
    with pytest.raises(ValueError, match="LLMJudge.backbone must be a backbone that generates, got int"):
        LLMJudge(backbone=3)
    assert "{prompt}" in RUBRIC and "{response}" in RUBRIC and "Score: <points>" in RUBRIC


def test_self_rewarding_judges_with_the_attached_policy_and_refuses_to_judge_without_one():
    judge = LLMJudge(policy=True, template="{prompt}<<{response}>>")
    with pytest.raises(RuntimeError, match=r"no policy is attached: the loop calls LLMJudge.attach\(backbone\)"):
        judge.judge(["p"], ["four"])
    with pytest.raises(ValueError, match="cannot generate"):
        judge.attach(object())
    policy = Scripted(ANSWERS)
    judge.attach(policy)
    assert judge.score(["p"], ["four"]) == [4.0] and len(policy.calls) == 1
    own = Scripted(ANSWERS)
    mine = LLMJudge(backbone=own, template="{prompt}<<{response}>>")
    mine.attach(policy)  # a judge with a model of its own keeps it
    assert mine.score(["p"], ["half"]) == [3.5] and len(own.calls) == 1 and len(policy.calls) == 1


def test_the_toy_language_model_as_judge_parses_no_score_and_every_row_is_counted():
    """End to end through a real backbone (``toy:llm``, named by class path as a recipe names it), with the
    default rubric: the toy model echoes letters, so no row may become a number."""
    from alignsuite.backbones import CausalLM

    spec = {"class_path": "alignsuite.backbones.CausalLM", "init_args": {"model_name_or_path": "toy:llm"}}
    judge = LLMJudge(backbone=spec, generation_kwargs={"max_new_tokens": 6})
    prompts = ["echo a b c", "echo d e", "echo f g h i"]
    outputs = ["A B C", "d e", "F G H I"]
    judged = judge.judge(prompts, outputs)
    assert all(v["llm_judge"] is None and isinstance(v["judge_output"], str) for v in judged)
    assert judge.parse_failures == 3 and judge.failures.rows == [0, 1, 2]
    assert judge.judge(prompts, outputs) == judged  # greedy: the same text judges the same way
    policy = CausalLM("toy:llm")
    policy.configure()
    self_judge = LLMJudge(policy=True, generation_kwargs={"max_new_tokens": 6})
    self_judge.attach(policy)
    assert self_judge.score(prompts, outputs) == [None, None, None] and self_judge.parse_failures == 3


# ------------------------------------------------------------------ modalities and lists
def test_a_judge_of_the_wrong_modality_is_refused_naming_the_option(tiny_pairwise):
    with pytest.raises(ValueError, match="judge 'toy_reward_diffusion' .* text_to_image outputs, not text; remove it"
                                         " from iterate.judge"):
        BradleyTerryJudge(ToyReward("diffusion")).check_modality("text")
    BradleyTerryJudge(ToyReward("diffusion")).check_modality("text_to_image")
    with pytest.raises(ValueError, match="'pairwise_preference' .* not text_to_speech; remove it from iterate.judge"):
        PairwiseClassifier(tiny_pairwise[0]).check_modality("text_to_speech")
    with pytest.raises(ValueError, match="scorer 'llm_judge' .* not text_to_image; remove it from iterate.judge"):
        LLMJudge(policy=True).check_modality("text_to_image", option="iterate.judge")
    LLMJudge(policy=True).check_modality("vision_language")


def test_judge_lists_takes_either_kind_of_judge():
    table = Table({"a": 1.0, "b": 0.0, "c": None})
    by_value = judge_lists(table, ["q0", "q1"], [["a", "b"], ["c", "a", "b"]])
    assert [r["scores"] for r in by_value] == [[1.0, 0.0], [None, 1.0, 0.0]]
    assert by_value[1]["judged"][1] == {"table": 1.0}
    by_pairs = judge_lists(BradleyTerryJudge(table), ["q0"], [["a", "b"]])
    same(by_pairs[0]["win_matrix"], [[0.5, s(1.0)], [s(-1.0), 0.5]])
    assert by_pairs[0]["scores"] == pytest.approx([(0.5 + s(1.0)) / 2, (0.5 + s(-1.0)) / 2])
    model = Scripted(ANSWERS)
    llm = judge_lists(LLMJudge(backbone=model, template="{prompt}<<{response}>>"), ["q"], [["four", "none"]])
    assert llm[0]["scores"] == [4.0, None] and llm[0]["judged"][1]["judge_output"] == "I cannot say."


def test_a_recipe_names_the_judges_by_class_path():
    """A config section parsed the way LightningCLI parses a recipe builds each judge and what it holds."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--judge", type=Scorer | PreferenceJudge)
    parser.add_argument("--pairwise", type=Scorer | PreferenceJudge)
    config = parser.parse_string("""
judge:
  class_path: alignsuite.judges.LLMJudge
  init_args: {policy: true, generation_kwargs: {max_new_tokens: 64}}
pairwise:
  class_path: alignsuite.judges.BradleyTerryJudge
  init_args:
    scorer: {class_path: alignsuite.evaluation.scorers.ToyReward, init_args: {world: llm}}
    temperature: 0.5
""")
    built = parser.instantiate(config)
    assert isinstance(built.judge, LLMJudge) and built.judge.policy
    assert built.judge.generation_kwargs == {"max_new_tokens": 64, "do_sample": False}
    assert isinstance(built.pairwise.scorer, ToyReward) and built.pairwise.temperature == 0.5
