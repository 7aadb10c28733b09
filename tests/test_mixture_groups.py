"""Groups of annotators found by EM over a mixture of linear Bradley-Terry reward models (MaxMin-RLHF's first step):
the M-step against a hand-solved optimum, EM's log-likelihood never falling, planted groups found again (on
synthetic features and on the two-rule toy world's annotators), bad rows named, and the recipe that feeds the groups
to group-robust DPO."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from alignsuite.data import DataError
from alignsuite.data.procedures import GroupPairs, MixtureGroups, Report
from alignsuite.data.procedures.mixture import em_mixture, fit_component
from alignsuite.toy import get_world
from conftest import run_toy_recipe

FEATURES = {"caps": ["score_chosen_caps", "score_rejected_caps"],
            "lower": ["score_chosen_lower", "score_rejected_lower"]}


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_the_m_step_finds_the_penalised_maximum_worked_by_hand():
    """Three pairs with x = 1, 1, -1, weights 1, 1 and 0.5, l2 = 1: the maximum of 2 log s(t) + 0.5 log s(-t) - t^2/2
    solves 2 (1 - s(t)) - 0.5 s(t) - t = 0, i.e. 2 - 2.5 s(t) = t, found here by bisection."""
    lo, hi = -5.0, 5.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 2 - 2.5 * sigmoid(mid) - mid > 0 else (lo, mid)
    theta = fit_component(np.array([[1.0], [1.0], [-1.0]]), np.array([1.0, 1.0, 0.5]), 1.0, np.zeros(1))
    assert theta[0] == pytest.approx(lo, abs=1e-9) and 0.46 < lo < 0.47  # s(0.4647) = 0.6141
    # In several dimensions the gradient of the penalised objective is zero at the fit.
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(50, 3)), rng.uniform(size=50)
    theta = fit_component(x, w, 0.5, np.zeros(3))
    p = 1 / (1 + np.exp(-(x @ theta)))
    assert np.abs(x.T @ (w * (1 - p)) - 0.5 * theta).max() < 1e-9


def planted(seed: int, per_annotator: int = 30):
    """Three groups of annotators with opposite tastes over two features: 8, 5 and 3 annotators."""
    rng = np.random.default_rng(seed)
    tastes = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    truth = np.repeat([0, 1, 2], [8, 5, 3])
    rows_x, who = [], []
    for a, g in enumerate(truth):
        f = rng.normal(size=(per_annotator, 2))
        prefer = rng.uniform(size=per_annotator) < 1 / (1 + np.exp(-(f @ tastes[g])))
        rows_x.append(np.where(prefer[:, None], f, -f))  # the chosen minus the rejected answer's features
        who += [a] * per_annotator
    return np.concatenate(rows_x), np.array(who), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_finds_planted_groups_numbered_by_size_and_its_likelihood_never_falls(seed):
    x, who, truth = planted(seed)
    fit = em_mixture(x, who, 3, l2=1.0, seed=seed)
    assert (fit["posterior"].argmax(axis=1) == truth).all()  # the largest group first, as planted
    assert np.allclose(fit["share"], [8 / 16, 5 / 16, 3 / 16], atol=0.01)
    assert fit["theta"][0][0] > 1.5 and fit["theta"][1][0] < -1.5 and fit["theta"][2][1] > 1.5
    history = np.array(fit["history"])
    assert (np.diff(history) > -1e-7).all() and len(history) >= 2
    # One component: every annotator in it, its weights the fit over all rows.
    one = em_mixture(x, who, 1, l2=1.0, seed=seed)
    assert np.allclose(one["posterior"], 1.0)
    assert np.allclose(one["theta"][0], fit_component(x, np.ones(len(x)), 1.0, np.zeros(2)), atol=1e-8)


def toy_rows(n: int = 1024, annotators: int = 32) -> list[dict]:
    rows = get_world("llm_case").make_pairs(n, seed=0)
    for i, row in enumerate(rows):
        row["_source"], row["_row"] = "toy", i
    grouped = GroupPairs({"caps": ["caps_0", "caps_1"], "lower": ["lower_0", "lower_1"]}, [0.85, 0.15],
                         annotators=annotators)
    return grouped.apply(rows, Report("GroupPairs", len(rows)))


def test_group_pairs_with_annotators_orders_each_annotators_rows_by_one_groups_rule_and_keeps_the_scores():
    rows = toy_rows()
    by_annotator: dict[int, set[int]] = {}
    for row in rows:
        by_annotator.setdefault(row["annotator"], set()).add(row["group"])
        d = ("caps", "lower")[row["group"]]
        assert row[f"score_chosen_{d}"] > row[f"score_rejected_{d}"]
    assert all(len(groups) == 1 for groups in by_annotator.values()) and len(by_annotator) == 32
    minority = sum(g == {1} for g in by_annotator.values())
    assert 1 <= minority <= 10  # about 15% of 32
    with pytest.raises(ValueError, match="GroupPairs.annotators"):
        GroupPairs({"caps": "caps_id"}, [1.0], annotators=-1)


def test_mixture_groups_finds_the_toy_worlds_annotator_groups_from_the_labels_alone():
    rows = toy_rows()
    report = Report("MixtureGroups", len(rows))
    found = MixtureGroups(FEATURES).apply([{k: v for k, v in r.items() if k != "group"} for r in rows], report)
    assert [r["group"] for r in found] == [r["group"] for r in rows]  # the majority (capitals) is group 0
    assert [{k: v for k, v in r.items()} for r in found] == rows  # nothing else changed
    logged = " ".join(report.counts)
    assert "group 0: share" in logged and "of 32 annotators, reward caps +" in logged


def test_bad_rows_and_settings_are_refused_naming_the_row_field_or_option():
    rows = toy_rows(64, 4)
    del rows[3]["annotator"]
    with pytest.raises(DataError, match=rf"toy: row {rows[3]['_row']}: field 'annotator'"):
        MixtureGroups(FEATURES).apply(rows, Report("m", len(rows)))
    rows = toy_rows(64, 4)
    rows[5]["score_rejected_lower"] = "high"  # the file's row rows[5]["_row"] (GroupPairs dropped ties before it)
    with pytest.raises(DataError, match=rf"toy: row {rows[5]['_row']}: field 'score_rejected_lower'"):
        MixtureGroups(FEATURES).apply(rows, Report("m", len(rows)))
    with pytest.raises(ValueError, match="MixtureGroups.features"):
        MixtureGroups({"caps": ["score_chosen_caps"]})
    with pytest.raises(ValueError, match="MixtureGroups.num_groups"):
        MixtureGroups(FEATURES, num_groups=0)
    with pytest.raises(ValueError, match="MixtureGroups.l2"):
        MixtureGroups(FEATURES, l2=0.0)


def test_maxmin_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened: the groups found feed group-robust DPO, which logs per-group losses."""
    rewards = run_toy_recipe(tmp_path, "llm_maxmin", "--data.init_args.num_train", "256", "--data.init_args.num_val",
                             "32", "--trainer.val_check_interval", "8", "--trainer.max_steps", "8")
    assert rewards[0][0] == 0 and len(rewards) == 2
    import csv
    import glob

    rows = list(csv.DictReader(open(glob.glob(os.path.join(str(tmp_path), "*", "version_*", "metrics.csv"))[0])))
    assert any(r.get("train/group_weight/1") for r in rows) and any(r.get("val/loss/group_1") for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_worst_group_fares_better_with_the_groups_found_than_under_plain_dpo(tmp_path, seed):
    """The recipe as shipped against plain DPO on the same pairs, the worst group's greedy reward at the end
    (measured over seeds 0-2, docs/language.md: 0.246 / 0.229 / 0.191 against 0.000 / 0.000 / 0.002). Asserted:
    above 0.1 with the groups, below 0.05 without."""
    from conftest import fit_two_rewards

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "toy",
                          "llm_maxmin.yaml")
    seeded = ("--seed_everything", str(seed), "--data.init_args.seed", str(seed))
    worst = {}
    for arm, extra in (("maxmin", ()), ("dpo", ("--model.objective", "DPO"))):
        (_, caps, lower) = fit_two_rewards(recipe, ("caps", "lower"), tmp_path / arm, *seeded, *extra)[-1]
        worst[arm] = min(caps, lower)
    assert worst["maxmin"] > 0.1 and worst["dpo"] < 0.05, worst
