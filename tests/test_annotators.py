"""Several annotators voting (``alignsuite.judges.Annotators``, iREPO's empirical preference): the K x K vote counts
hand-worked, their shares as the win matrix, what an unscored output does, and the simulated noisy annotators."""

from __future__ import annotations

import math

import pytest

from alignsuite.evaluation.scorers import ToyReward
from alignsuite.judges import Annotators, NoisyAnnotator, count_votes, vote_shares, win_rates
from test_judges import Table, assert_win_matrix, same


def test_votes_and_shares_hand_worked():
    # three annotators on three outputs a, b, c; the second is an error rate (lower wins)
    first = Table({"a": 3.0, "b": 2.0, "c": 1.0})
    second = Table({"a": 0.1, "b": 0.3, "c": 0.1}, higher_is_better=False)  # a = c (a tie: half each), both beat b
    third = Table({"a": 1.0, "b": 5.0, "c": 4.0})
    judge = Annotators([first, second, third])
    [matrix] = judge.win_matrices(["p"], [["a", "b", "c"]])
    # a over b: first yes, second yes, third no -> 2 of 3; a over c: 1 + 0.5 + 0 = 1.5; b over c: 1 + 0 + 1 = 2
    same(judge.last_votes[0], [[0, 2, 1.5], [1, 0, 2], [1.5, 1, 0]])
    same(matrix, [[0.5, 2 / 3, 0.5], [1 / 3, 0.5, 2 / 3], [0.5, 1 / 3, 0.5]])
    assert_win_matrix(matrix)
    same(win_rates(matrix), [(0.5 + 2 / 3 + 0.5) / 3, (1 / 3 + 0.5 + 2 / 3) / 3, (0.5 + 1 / 3 + 0.5) / 3])


def test_an_output_no_annotator_scored_is_nan_and_counted_one_some_scored_keeps_their_votes():
    first = Table({"a": 1.0, "b": None, "c": 0.0})
    second = Table({"a": math.nan, "b": None, "c": 2.0})
    judge = Annotators([first, second])
    [matrix] = judge.win_matrices(["p"], [["a", "b", "c"]])
    votes = judge.last_votes[0]
    assert all(math.isnan(votes[1][j]) and math.isnan(votes[j][1]) for j in range(3))  # b: nobody scored it
    assert votes[0][2] == 1.0 and votes[2][0] == 0.0  # a vs c: the first annotator only (the second left a out)
    assert all(math.isnan(matrix[1][j]) for j in range(3)) and matrix[0][2] == 1.0
    assert judge.failures.count == 1


def test_count_votes_and_shares_with_nobody_comparing_a_pair():
    assert count_votes([[1.0, None], [None, 2.0]]) == [[0.0, 0.0], [0.0, 0.0]]
    assert vote_shares([[0.0, 0.0], [0.0, 0.0]]) == [[0.5, 0.5], [0.5, 0.5]]
    with pytest.raises(ValueError, match="every annotator must score the same 2 responses"):
        count_votes([[1.0, 2.0], [1.0]])


def test_annotators_options_are_checked_and_named():
    with pytest.raises(ValueError, match="Annotators.annotators: expected two or more alignsuite.judging.Scorer, got 1"):
        Annotators([ToyReward("llm")])
    with pytest.raises(ValueError, match=r"got 2 \(int not scorers\)"):
        Annotators([ToyReward("llm"), 3])
    with pytest.raises(ValueError, match="NoisyAnnotator.noise must be a number >= 0, got -1"):
        NoisyAnnotator(ToyReward("llm"), noise=-1)


def test_noisy_annotators_repeat_themselves_and_disagree_with_each_other():
    base = ToyReward("llm")
    prompts, outputs = ["echo a b"] * 4 + ["echo c"] * 4, ["A B", "A b", "a b", "", "C", "c", "C C", "x"]
    clean = base.score(prompts, outputs)
    noisy = [NoisyAnnotator(base, noise=0.3, seed=s) for s in range(3)]
    scores = [n.score(prompts, outputs) for n in noisy]
    assert scores[0] == noisy[0].score(prompts, outputs)  # the same annotator, the same scores
    assert scores[0] != scores[1]
    for values in scores:  # each the clean reward plus noise of about sd 0.3
        gaps = [v - c for v, c in zip(values, clean)]
        assert 0.05 < (sum(g * g for g in gaps) / len(gaps)) ** 0.5 < 0.8
    assert NoisyAnnotator(base, noise=0.0, seed=5).score(prompts, outputs) == clean
    assert noisy[1].name == "toy_reward_llm_noisy_1" and noisy[1].modalities == ("text",)
