"""The vision-language toy world with two rewards that conflict (the colour seen vs the shape's prior colour), the
layout that reads dimensions on image rows, and MODPO on it: the recipe runs, and runs at w and 1 - w land on
opposite sides of the base model on the two-reward plane."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from alignsuite.cli import main
from conftest import fit_two_rewards, modpo_moves
from alignsuite.data import DataError, VisionDimensionPairs
from alignsuite.evaluation.text_scorers import ToyReward
from alignsuite.toy import get_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "vlm_modpo.yaml")
PANACEA = os.path.join(REPO, "recipes", "toy", "vlm_panacea.yaml")
FRONT = os.path.join(REPO, "configs", "eval", "toy_vlm_prior_front.yaml")


def test_the_two_rewards_conflict_where_the_image_is_not_the_prior_and_the_scorer_judges_both():
    world = get_world("vlm_prior")
    shown = {"answer": "yellow", "prior": "red"}
    assert world.rewards(shown, "yellow") == {"seen": 1.0, "prior": 0.0}
    assert world.rewards(shown, "red") == {"seen": 0.0, "prior": 1.0}
    assert world.rewards({"answer": "red", "prior": "red"}, "red it") == {"seen": 1.0, "prior": 1.0}
    scorer = ToyReward("vlm_prior")
    assert scorer.value_names() == ("toy_reward_vlm_prior", "reward_seen", "reward_prior")
    judged = scorer.judge([None, None], ["yellow", "blue"], None,[shown, {"answer": "green", "prior": "blue"}])
    assert judged == [{"toy_reward_vlm_prior": 1.0, "reward_seen": 1.0, "reward_prior": 0.0},
                      {"toy_reward_vlm_prior": 0.0, "reward_seen": 0.0, "reward_prior": 1.0}]
    with pytest.raises(ValueError, match="evaluate.prompts toy:vlm_prior"):
        scorer.judge([None], ["red"], None, [{"prompt": "what colour is the circle ?"}])


def test_labels_prefer_the_seen_colour_three_times_in_four_and_rows_read_as_vision_dimension_pairs():
    world = get_world("vlm_prior")
    rows = world.make_pairs(2000, seed=0)
    conflict = [r for r in rows if r["prior_0"] + r["prior_1"] == 1 and r["seen_0"] + r["seen_1"] == 1
                and r["prior_0"] != r["seen_0"]]
    seen_won = sum(r["seen_0" if r["seen_id"] == 0 else "seen_1"] for r in conflict) / len(conflict)
    assert 0.72 < seen_won < 0.78 and 0.65 < len(conflict) / len(rows) < 0.75
    layout = world.layout()
    assert layout.preference_dimensions == ("seen", "prior")
    ds, skipped = layout.build([("toy", rows[:40], None)])
    assert len(ds) == 40 and not skipped
    batch = layout.collate(list(ds))
    assert len(batch["images"]) == 40 and batch["images"][0][0].size == (32, 32)
    for i, row in enumerate(rows[:40]):
        first = "response_0" if row["seen_id"] == 0 else "response_1"
        assert batch["chosen"][i][0]["content"][0]["text"] == row[first]
        assert batch["reward_chosen_prior"][i].item() == row["prior_" + first[-1]]
        assert batch["pref_seen"][i].item() == 1.0
    gap = batch["reward_chosen_prior"] - batch["reward_rejected_prior"]
    assert batch["pref_prior"].tolist() == gap.sign().tolist()


def test_vision_dimension_pairs_refuse_a_missing_dimension_naming_the_row_and_field():
    rows = get_world("vlm_prior").make_pairs(3, seed=0)
    del rows[2]["seen_id"]
    layout = VisionDimensionPairs({"seen": "seen_id", "prior": ["prior_0", "prior_1"]})
    with pytest.raises(DataError, match=r"row 2.*seen_id|seen_id.*row 2"):
        layout.build([("toy", rows, None)])
    rows[2]["seen_id"], rows[1]["prior_1"] = 0, "high"
    with pytest.raises(DataError, match="prior_1"):
        layout.build([("toy", rows, None)])
    with pytest.raises(ValueError, match="VisionDimensionPairs: responses names two answer columns"):
        VisionDimensionPairs({"seen": "seen_id"}, responses=["a"])


def fit(tmp_path, *args, num_prompts: int | None = None) -> list[tuple[int, float, float]]:
    return fit_two_rewards(RECIPE, ('seen', 'prior'), tmp_path, *args, num_prompts=num_prompts)


def test_modpo_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened: both rewards measured at step 0 and after each of its two epochs."""
    rewards = fit(tmp_path, "--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
                  "--trainer.val_check_interval", "2", num_prompts=16)
    assert len(rewards) == 3 and rewards[0][0] == 0
    assert all(0 <= seen <= 1 and 0 <= prior <= 1 for _, seen, prior in rewards)


def test_evaluate_a_front_of_short_modpo_runs_on_the_vision_language_world(tmp_path, capsys):
    """Three MODPO runs and one Panacea run of a few steps, then ``evaluate`` with the shipped front config: a
    VisionLanguage backbone (reading the Panacea export as a PanaceaVLM, swept at the MODPO runs' vectors), the
    world's scorer judging both rewards on every point, the table, hypervolume, plot and the samples beside their
    images."""
    front = []
    for w in ("0.8", "0.5", "0.2"):
        other = f"{1 - float(w):.1f}"
        fit(tmp_path / f"w{w}", "--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
            "--trainer.val_check_interval", "2", "--model.objective.init_args.weights", f"[{w}, {other}]",
            num_prompts=16)
        export = glob.glob(str(tmp_path / f"w{w}" / "*" / "version_*" / "export"))[0]
        front.append(f'{{label: "w{w}", aligned: {export}, weights: [{w}, {other}]}}')
    # and one Panacea model of a few steps, swept at the same vectors (the recipe's VisionLanguage reads its export)
    fit_two_rewards(PANACEA, ("seen", "prior"), tmp_path / "panacea", "--data.init_args.num_train", "32",
                    "--data.init_args.num_val", "16", "--trainer.val_check_interval", "2", num_prompts=16)
    panacea = glob.glob(str(tmp_path / "panacea" / "*" / "version_*" / "export"))[0]
    with open(FRONT) as f:  # the shipped config names the four runs of its commands and the Panacea run
        shipped = yaml.safe_load(f)["evaluate"]
    assert [p["weights"] for p in shipped["front"]] == [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]] == shipped["preferences"]
    assert shipped["prompts"] == "toy:vlm_prior" and len(shipped["comparisons"]) == 1
    assert shipped["aligned"] == "runs/toy_vlm_panacea/version_0/export"
    out = tmp_path / "front"
    capsys.readouterr()
    main(["evaluate", "--config", RECIPE, "--config", FRONT, "--evaluate.front", f"[{', '.join(front)}]",
          "--evaluate.comparisons", "[]", "--evaluate.num_prompts", "16", "--evaluate.num_resamples", "200",
          "--evaluate.aligned", panacea, "--evaluate.output_dir", str(out)])
    printed = capsys.readouterr().out
    written = json.loads((out / "results.json").read_text())
    result = written["front"]
    assert written["modality"] == "vision_language" and result["dimensions"] == ["reward_seen", "reward_prior"]
    assert [p["label"] for p in result["points"]] == ["base", "pref (0.8, 0.2)", "pref (0.5, 0.5)", "pref (0.2, 0.8)",
                                                      "w0.8", "w0.5", "w0.2"]
    assert set(result["hypervolume_by_sweep"]) == {"weights", "preference"}
    assert result["reference"] == "given" and result["reference_point"] == [0.0, 0.0]
    for p in result["points"]:
        for d in result["dimensions"]:
            assert p["ci_low"][d] <= p["means"][d] <= p["ci_high"][d] and len(p["values"][d]) == 16
            assert set(p["values"][d]) <= {0.0, 1.0}
    base = result["points"][0]["means"]  # the recipe's step-0 point: the "vlm" world's base model on 16 items
    assert 0 < base["reward_seen"] < 1 and 0 < base["reward_prior"] < 1
    assert result["hypervolume"] > 0 and "hypervolume" in printed and "(0.000, 0.000)" in printed
    assert len(written["conditions"]) == 16 and all(len(c) == 1 for c in written["conditions"])
    assert all(len(p["values"]["reward_seen"]) == 16 for p in result["points"] if p["label"].startswith("pref"))
    page = (out / "report.html").read_text()
    assert '<img src="figures/front_reward_seen_reward_prior.png"' in page
    assert page.count('alt="condition"') == 16 and "what colour is the" in page


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modpo_at_w_and_one_minus_w_land_on_opposite_sides_of_the_base(tmp_path, seed):
    """Each run improves the reward it weighs more and gives up the other: w = (0.8, 0.2) moves towards the
    colour seen, w = (0.2, 0.8) towards the prior colour, each by a clear margin from the base model's point
    (measured over seeds 0-2 with the recipe's two epochs, docs/vision-language.md: at least 0.104, ten of the 96
    evaluation items, on either reward; asserted: 0.05, five items)."""
    points = modpo_moves(RECIPE, ('seen', 'prior'), tmp_path, seed)
    assert points[0.8][0] > 0.05 and points[0.8][1] < -0.05, points
    assert points[0.2][0] < -0.05 and points[0.2][1] > 0.05, points
