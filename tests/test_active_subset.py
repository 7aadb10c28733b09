"""AMPO's active subset selection (``select_active_subset``): which few responses of a scored pool to train on."""

import pytest

from alignsuite.objectives import select_active_subset

REWARDS = [0.5, 9.0, 1.0, 7.0, -2.0, 3.0, -1.0, 0.0]


def test_without_embeddings_it_keeps_the_best_and_the_lowest():
    # Best 9.0 (index 1); the three lowest are -2.0 (4), -1.0 (6), 0.0 (7); best first.
    assert select_active_subset(REWARDS, 4) == [1, 7, 6, 4]
    assert select_active_subset(REWARDS, 4, positives=2) == [1, 3, 6, 4]


def test_ties_keep_pool_order():
    assert select_active_subset([1.0, 5.0, 1.0, 1.0, 5.0], 3) == [1, 2, 3]


def test_with_embeddings_each_semantic_group_gives_its_lowest_reward():
    # The rest of the pool in two tight groups: {0, 2, 3, 6} near (1, 0) and {4, 5, 7} near (0, 1); each gives its
    # lowest reward: 6 (-1.0) and 4 (-2.0).
    embeddings = [[1.0, 0.0], [0.7, 0.7], [0.98, 0.05], [0.95, -0.1], [0.0, 1.0], [0.05, 0.99], [0.99, 0.0],
                  [0.02, 1.0]]
    assert select_active_subset(REWARDS, 3, embeddings) == [1, 6, 4]
    # An outlier answer makes a group of its own, and so is kept whatever its reward.
    embeddings[3] = [-1.0, -1.0]
    assert select_active_subset(REWARDS, 3, embeddings) == [1, 3, 4]


def test_semantic_groups_differ_from_bottom_k_when_the_lowest_are_alike():
    # The two lowest (4: -2.0, 6: -1.0) say the same thing; grouping keeps one of them and a distinct answer.
    rewards = [9.0, 1.0, 2.0, 0.5, -2.0, 3.0, -1.0]
    embeddings = [[1, 0], [0, 1], [0, 1], [0.1, 1], [1, 0.1], [0.05, 1], [1, 0.12]]
    assert select_active_subset(rewards, 3) == [0, 6, 4]
    assert select_active_subset(rewards, 3, embeddings) == [0, 3, 4]


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 1}, "size"), ({"size": 9}, "size"), ({"size": 3, "positives": 3}, "positives"),
    ({"size": 3, "embeddings": [[1.0, 0.0]] * 7}, "7 embeddings"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_active_subset(REWARDS, **kwargs)


def test_non_finite_rewards_are_refused():
    with pytest.raises(ValueError, match="finite"):
        select_active_subset([1.0, float("nan"), 0.0], 2)
