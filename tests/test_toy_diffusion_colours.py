"""The diffusion toy world with two rewards that conflict (the square red or blue), the layout that reads dimensions
on image pairs, and MODPO on the denoising backbone: its margin from the data's scores, the recipe, and runs at w
and 1 - w landing on opposite sides of the base model on the two-reward plane (slow)."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

from conftest import evaluate_front_of_short_runs, modpo_moves
from alignsuite.backbones import TextToImage
from alignsuite.data import DataError, ImageDimensionPairs
from alignsuite.data.protocol import preference_data
from alignsuite.evaluation.text_scorers import ToyReward
from alignsuite.module import PreferenceModule
from alignsuite.objectives import MODPO, get_objective
from alignsuite.toy import get_world
from alignsuite.toy.data import ToyPreferenceData
from alignsuite.toy.squares import draw_square
from alignsuite.views import check_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "diffusion_modpo.yaml")
FRONT = os.path.join(REPO, "configs", "eval", "toy_diffusion_colours_front.yaml")
CAPTION = "a square at the top left"


def test_the_two_rewards_conflict_and_the_scorer_judges_both():
    world, rng = get_world("diffusion_colours"), random.Random(0)
    red, blue = draw_square("top left", "red", rng), draw_square("top left", "blue", rng)
    assert world.rewards(CAPTION, red) == {"red": 1.0, "blue": 0.0}
    assert world.rewards(CAPTION, blue) == {"red": 0.0, "blue": 1.0}
    assert world.reward(CAPTION, red) == 1.0  # the primary's
    scorer = ToyReward("diffusion_colours")
    assert scorer.value_names() == ("toy_reward_diffusion_colours", "reward_red", "reward_blue")
    assert scorer.judge([CAPTION, CAPTION], [red, blue], None, None) == [
        {"toy_reward_diffusion_colours": 1.0, "reward_red": 1.0, "reward_blue": 0.0},
        {"toy_reward_diffusion_colours": 0.0, "reward_red": 0.0, "reward_blue": 1.0}]
    with pytest.raises(ValueError, match="makes no lists"):
        world.make_lists(2, seed=0)


def test_labels_prefer_red_three_times_in_four_and_rows_read_as_image_dimension_pairs():
    world = get_world("diffusion_colours")
    rows = world.make_pairs(2000, seed=0)
    red_won = sum(r["red_0" if r["red_id"] == 0 else "red_1"] for r in rows) / len(rows)
    assert 0.72 < red_won < 0.78
    assert all(r["red_0"] + r["red_1"] == 1 and r["blue_0"] + r["blue_1"] == 1 for r in rows)
    layout = world.layout()
    assert isinstance(layout, ImageDimensionPairs) and layout.preference_dimensions == ("red", "blue")
    ds, skipped = layout.build([("toy", rows[:40], None)])
    assert len(ds) == 40 and not skipped
    batch = layout.collate(list(ds))
    assert batch["chosen"][0].size == (16, 16)
    for i, row in enumerate(rows[:40]):
        won, lost = ("0", "1") if row["red_id"] == 0 else ("1", "0")
        assert ds[i]["_chosen_column"] == "jpg_" + won and ds[i]["chosen"]["bytes"] == row["jpg_" + won]
        assert batch["reward_chosen_blue"][i].item() == row["blue_" + won]
        assert batch["reward_rejected_blue"][i].item() == row["blue_" + lost]
        assert batch["pref_red"][i].item() == 1.0
    gap = batch["reward_chosen_blue"] - batch["reward_rejected_blue"]
    assert batch["pref_blue"].tolist() == gap.sign().tolist()
    assert "reward_chosen" not in batch  # no Pick-a-Pic reward column is read: the dimensions carry the scores


def test_image_dimension_pairs_refuse_bad_rows_naming_the_row_and_field():
    rows = get_world("diffusion_colours").make_pairs(3, seed=0)
    layout = ImageDimensionPairs({"red": "red_id", "blue": ["blue_0", "blue_1"]})
    del rows[2]["red_id"]
    with pytest.raises(DataError, match=r"row 2: field 'red_id'"):
        layout.build([("toy", rows, None)])
    rows[2]["red_id"], rows[1]["blue_1"] = 0, "high"
    with pytest.raises(DataError, match=r"row 1: field 'blue_1': expected a finite number"):
        layout.build([("toy", rows, None)])
    rows[1]["blue_1"], rows[0]["red_id"] = 0.0, 2
    with pytest.raises(DataError, match=r"row 0: field 'red_id': expected the index of the preferred answer"):
        layout.build([("toy", rows, None)])
    with pytest.raises(DataError, match=r"field 'image_a': expected the image column 'image_a'"):
        ImageDimensionPairs({"red": "red_id"}, responses=["image_a", "image_b"]).build([("toy", rows, None)])
    with pytest.raises(ValueError, match="ImageDimensionPairs: responses names two answer columns"):
        ImageDimensionPairs({"red": "red_id"}, responses=["jpg_0"])
    # A scored primary that ties skips its row, counted and reported as such (not as a Pick-a-Pic tie).
    rows[0]["red_id"], rows[1]["blue_0"], rows[1]["blue_1"] = 0, 0.5, 0.5
    by_blue = ImageDimensionPairs({"blue": ["blue_0", "blue_1"], "red": "red_id"})
    with pytest.warns(UserWarning, match=r"skipped 1 rows where the primary dimension ties \(rows 1\)"):
        ds, skipped = by_blue.build([("toy", rows, None)])
    assert len(ds) == 2 and skipped == {"toy": (1, 3)}


@pytest.fixture(scope="module")
def batch_and_data():
    data = ToyPreferenceData(world="diffusion_colours", num_train=8, num_val=4, batch_size=8)
    data.setup("fit")
    return next(iter(data.train_dataloader())), data


def module_for(objective, data):
    backbone = TextToImage("toy:diffusion", resolution=16, random_flip=False, seed=0)
    module = PreferenceModule(backbone=backbone, objective=objective)
    check_setup(objective, backbone, module.reference, preference_data(data))  # what fit's setup runs
    module.configure_model()
    with torch.no_grad():  # a policy that differs from its reference: log-ratios that are not all 0
        g = torch.Generator().manual_seed(0)
        for p in backbone.policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    return module


def test_modpo_runs_on_the_denoising_backbone_with_the_datas_scores_as_its_margin(batch_and_data):
    """Denoising scores (one noise draw and timestep per pair, the reference on the same inputs) and the blue scores
    of the batch as the margin: the loss is Eq. 6 worked by hand from them; at w = (1, 0) it is DPO exactly."""
    batch, data = batch_and_data
    objective = MODPO(beta=50.0, weights=[0.8, 0.2])
    module = module_for(objective, data)
    assert objective.extra_columns == ("reward_chosen_blue", "reward_rejected_blue")
    s = module.compute_scores(batch)
    assert torch.equal(s.extra["reward_chosen_blue"], batch["reward_chosen_blue"])
    u_w = (s.chosen - s.ref_chosen).tolist()
    u_l = (s.rejected - s.ref_rejected).tolist()
    assert any(abs(x) > 1e-7 for x in u_w)  # the policy moved off the reference
    rc, rr = batch["reward_chosen_blue"].tolist(), batch["reward_rejected_blue"].tolist()
    expected = []
    for i in range(len(u_w)):
        z = (50.0 * (u_w[i] - u_l[i]) - 0.2 * (rc[i] - rr[i])) / 0.8
        expected.append(-math.log(1 / (1 + math.exp(-z))))
    out = objective(s)
    assert out.loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(out.metrics)
    # The gradient reaches the denoiser.
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.backbone.policy.parameters())
    one_hot = MODPO(beta=50.0, weights=[1.0, 0.0])
    one_hot.use_data(data.layout)
    # to the last bit: the gap is formed as DPO forms it (on these scores rhat_w - rhat_l is one rounding off)
    assert torch.equal(one_hot(s).loss, get_objective("dpo", beta=50.0)(s).loss)


def test_a_weight_vector_of_the_wrong_length_is_refused_at_setup(batch_and_data):
    _, data = batch_and_data
    objective = MODPO(weights=[0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match=r"weights has 3 values and the data has 2 preference dimensions \(red, blue"):
        check_setup(objective, TextToImage("toy:diffusion", resolution=16), None, preference_data(data))


def test_evaluate_a_front_of_short_modpo_runs_on_the_diffusion_world(tmp_path):
    """Two MODPO runs of a few steps, then ``evaluate`` with the shipped front config: the text-to-image pipeline
    drawing every caption at every point, both rewards judged on the images, the images on the page."""
    written, page = evaluate_front_of_short_runs(RECIPE, FRONT, ("red", "blue"), tmp_path, (0.8, 0.2),
                                                 "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                                                 "--data.init_args.num_train", "64", num_prompts=4)
    result = written["front"]
    assert written["modality"] == "text_to_image" and result["dimensions"] == ["reward_red", "reward_blue"]
    assert [p["label"] for p in result["points"]] == ["base", "w0.8", "w0.2"]
    for p in result["points"]:
        for d in result["dimensions"]:
            assert p["ci_low"][d] <= p["means"][d] <= p["ci_high"][d] and len(p["values"][d]) == 4
            assert all(0 <= v <= 1 for v in p["values"][d])
        assert all(path.endswith(".png") for path in written["outputs"][p["label"]])
    assert result["hypervolume"] > 0
    assert page.count('class="sample pixelated"') == 3 * 4


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modpo_at_w_and_one_minus_w_land_on_opposite_sides_of_the_base(tmp_path, seed):
    """w = (0.8, 0.2) moves towards red and away from blue, w = (0.2, 0.8) the other way, each by a clear margin
    from the base model's point on both rewards (the recipe as shipped with data seed and seed_everything N;
    measured figures and the bound's margin: docs/diffusion.md)."""
    points = modpo_moves(RECIPE, ('red', 'blue'), tmp_path, seed)
    assert points[0.8][0] > MARGIN and points[0.8][1] < -MARGIN, points
    assert points[0.2][0] < -MARGIN and points[0.2][1] > MARGIN, points


MARGIN = 0.1  # the smallest measured move is 0.20 (seed 2, w = (0.2, 0.8)): half of it (docs/diffusion.md)
