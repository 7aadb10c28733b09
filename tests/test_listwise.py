"""Listwise objectives against hand-worked values (research/families.md §1) and their K = 2 reductions."""

import math

import pytest
import torch

from alignsuite.objectives import get_objective
from alignsuite.scores import ListScores, PairScores

# Registered objectives whose values are worked by hand here (checked by test_objectives.py).
HAND_WORKED = ("list_mle",)


def lists(scores, labels, mask=None):
    scores = torch.tensor(scores, dtype=torch.float)
    return ListScores(scores, torch.tensor(labels, dtype=torch.float), ref=torch.zeros_like(scores),
                      mask=None if mask is None else torch.tensor(mask, dtype=torch.bool))


def test_list_mle_matches_the_hand_worked_plackett_luce_value():
    # families.md §1.1 anchor: s = [0.2, 0.5, -0.1] in label order -> 1.565878.
    out = get_objective("list_mle", beta=1.0, list_size=3)(lists([[0.2, 0.5, -0.1]], [[3, 2, 1]]))
    assert out.loss.item() == pytest.approx(1.565878, abs=1e-6)
    # By hand: -(0.2 - lse(0.2, 0.5, -0.1)) - (0.5 - lse(0.5, -0.1)).
    lse = lambda *x: math.log(sum(math.exp(v) for v in x))  # noqa: E731
    assert out.loss.item() == pytest.approx(-(0.2 - lse(0.2, 0.5, -0.1)) - (0.5 - lse(0.5, -0.1)), abs=1e-6)


def test_list_mle_orders_by_label_not_by_position():
    shuffled = get_objective("list_mle", beta=1.0, list_size=3)(lists([[-0.1, 0.2, 0.5]], [[1, 3, 2]]))
    assert shuffled.loss.item() == pytest.approx(1.565878, abs=1e-6)


def test_a_padded_entry_takes_no_part():
    objective = get_objective("list_mle", beta=1.0, list_size=4)
    padded = objective(lists([[0.2, 0.5, -0.1, 7.0]], [[3, 2, 1, float("nan")]], mask=[[1, 1, 1, 0]]))
    assert padded.loss.item() == pytest.approx(1.565878, abs=1e-6)


def test_list_mle_at_two_responses_is_dpo():
    chosen, rejected = torch.tensor([0.3, -1.2]), torch.tensor([-0.2, 0.4])
    ref_c, ref_r = torch.tensor([0.1, -1.0]), torch.tensor([0.0, 0.1])
    dpo = get_objective("dpo", beta=0.5)(PairScores(chosen, rejected, ref_c, ref_r))
    pl = get_objective("list_mle", beta=0.5, list_size=2)(
        ListScores(torch.stack([rejected, chosen], 1), torch.tensor([[0.0, 1.0]] * 2), torch.stack([ref_r, ref_c], 1)))
    assert pl.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-7)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert pl.metrics[key].item() == pytest.approx(dpo.metrics[key].item(), abs=1e-7)


def test_a_list_with_fewer_than_two_responses_is_refused():
    with pytest.raises(ValueError, match="row.*1.*fewer than 2"):
        lists([[0.1, 0.2], [0.3, 0.4]], [[1, 0], [1, float("nan")]], mask=[[1, 1], [1, 0]])
