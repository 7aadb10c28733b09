"""The two-rule language toy world (capitals vs lower case) and MODPO on it: the recipe runs, and runs at
w and 1 - w land on opposite sides of the base model on the two-reward plane."""

from __future__ import annotations

import os

import pytest

from conftest import fit_two_rewards, modpo_moves
from alignsuite.evaluation.text_scorers import ToyReward
from alignsuite.toy import get_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "llm_modpo.yaml")


def test_the_two_rewards_conflict_and_the_scorer_judges_both():
    world = get_world("llm_case")
    assert world.rewards("echo a b c", "A B C") == {"caps": 1.0, "lower": 0.0}
    assert world.rewards("echo a b c", "a b") == {"caps": 0.0, "lower": 2 / 3}
    scorer = ToyReward("llm_case")
    assert scorer.value_names() == ("toy_reward_llm_case", "reward_caps", "reward_lower")
    judged = scorer.judge(["echo a b", "echo c d"], ["A B", "c x"])
    assert judged == [{"toy_reward_llm_case": 1.0, "reward_caps": 1.0, "reward_lower": 0.0},
                      {"toy_reward_llm_case": 0.0, "reward_caps": 0.0, "reward_lower": 0.5}]


def test_labels_prefer_capitals_three_times_in_four_and_rows_read_as_dimension_pairs():
    world = get_world("llm_case")
    rows = world.make_pairs(4000, seed=0)
    case = [r for r in rows if {r["response_0"].isupper(), r["response_1"].isupper()} == {True, False}]
    caps_won = sum(r["response_0" if r["caps_id"] == 0 else "response_1"].isupper() for r in case) / len(case)
    assert 0.72 < caps_won < 0.78 and 0.65 < len(case) / len(rows) < 0.75
    ds, _ = world.layout().build([("toy", rows[:50], None)])
    batch = world.layout().collate(list(ds))
    assert world.layout().preference_dimensions == ("caps", "lower")
    for i, c in enumerate(batch["chosen"]):
        lower = world.rewards(batch["prompt"][i], c)["lower"]
        assert batch["reward_chosen_lower"][i].item() == pytest.approx(lower) and batch["pref_caps"][i].item() == 1.0
    gap = batch["reward_chosen_lower"] - batch["reward_rejected_lower"]
    assert batch["pref_lower"].tolist() == gap.sign().tolist()

def fit(tmp_path, *args) -> list[tuple[int, float, float]]:
    return fit_two_rewards(RECIPE, ('caps', 'lower'), tmp_path, *args)


def test_modpo_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened: both rewards measured at step 0 and after, the losses finite."""
    rewards = fit(tmp_path, "--data.init_args.num_train", "64", "--data.init_args.num_val", "16",
                  "--trainer.val_check_interval", "4")
    assert len(rewards) == 2 and rewards[0][0] == 0
    assert all(0 <= caps <= 1 and 0 <= lower <= 1 for _, caps, lower in rewards)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modpo_at_w_and_one_minus_w_land_on_opposite_sides_of_the_base(tmp_path, seed):
    """Each run improves the reward it weighs more and gives up the other: w = (0.8, 0.2) moves towards
    capitals, w = (0.2, 0.8) towards lower case, each by a clear margin from the base model's point (measured over seeds 0-2: at least 0.28 on either
    reward, docs/language.md; asserted: 0.15)."""
    points = modpo_moves(RECIPE, ('caps', 'lower'), tmp_path, seed)
    assert points[0.8][0] > 0.15 and points[0.8][1] < -0.15, points
    assert points[0.2][0] < -0.15 and points[0.2][1] > 0.15, points
