"""The front's evaluation: its numbers from stubbed per-point values (hypervolume by hand, dominance,
monotonicity), the option errors, a preference-conditioned sweep on a stub model, and ``evaluate`` end to end on
the two-rule language toy world with two short MODPO runs."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from alignsuite.backbones import CausalLM
from alignsuite.cli import main
from alignsuite.evaluation.front import BASE, PREFERENCE, WEIGHTS, FrontPoint, FrontResults, dominates, hypervolume, \
    non_dominated, simplex_grid
from alignsuite.evaluation.heldout import ImplicitRewardAccuracy
from alignsuite.evaluation.run import Evaluation, EvaluationError, run_evaluation
from alignsuite.evaluation.scorers import ToyReward
from alignsuite.evaluation.sweep import run_front
from alignsuite.module import PreferenceModule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = ["reward_caps", "reward_lower"]


# ------------------------------------------------------------------------------------------ the numbers
def test_hypervolume_by_hand():
    # Against (0, 0), the union of [0, p] for (0.8, 0.2), (0.5, 0.6), (0.2, 0.9): slabs by the second
    # coordinate, 0.8 * 0.2 + 0.5 * (0.6 - 0.2) + 0.2 * (0.9 - 0.6) = 0.16 + 0.20 + 0.06 = 0.42.
    points = [(0.8, 0.2), (0.5, 0.6), (0.2, 0.9)]
    assert hypervolume(points, (0, 0)) == pytest.approx(0.42)
    assert hypervolume(points + [(0.4, 0.5)], (0, 0)) == pytest.approx(0.42)  # a dominated point adds nothing
    # Against (0.3, 0.3) only (0.5, 0.6) is beyond it on both: 0.2 * 0.3 = 0.06.
    assert hypervolume(points, (0.3, 0.3)) == pytest.approx(0.06)
    assert hypervolume(points, (0.9, 0.0)) == 0.0 and hypervolume([], (0, 0)) == 0.0
    # Three dimensions: 1 + 2 * 0.5 * 0.5 - the overlap 1 * 0.5 * 0.5 = 1.25.
    assert hypervolume([(1, 1, 1), (2, 0.5, 0.5)], (0, 0, 0)) == pytest.approx(1.25)


def test_dominance_and_the_non_dominated_set():
    assert dominates((0.5, 0.5), (0.5, 0.4)) and not dominates((0.5, 0.5), (0.5, 0.5))
    assert not dominates((0.8, 0.1), (0.2, 0.9))
    points = [(0.8, 0.2), (0.5, 0.6), (0.4, 0.5), (0.2, 0.9), (0.8, 0.1), (float("nan"), 1.0)]
    assert non_dominated(points) == [0, 1, 3]


def test_simplex_grid():
    assert simplex_grid(3, 2) == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert len(simplex_grid(5, 3)) == 15 and all(sum(v) == pytest.approx(1) for v in simplex_grid(5, 3))
    with pytest.raises(ValueError, match="evaluate.preference_grid"):
        simplex_grid(1, 2)


def point(label, kind, caps, lower, vector=None):
    return FrontPoint(label, kind, {"reward_caps": [caps] * 4, "reward_lower": [lower] * 4}, vector)


def test_front_summaries_from_stubbed_points():
    results = FrontResults("text", ["p"] * 4, DIMS, [True, True], [
        point(BASE, BASE, 0.3, 0.3),
        point("a", PREFERENCE, 0.1, 0.9, [0.0, 1.0]),
        point("b", PREFERENCE, 0.5, 0.5, [0.5, 0.5]),
        point("c", PREFERENCE, 0.4, 0.2, [1.0, 0.0]),  # more weight on caps, yet fewer capitals: not monotone
    ]).summarise(num_resamples=200)
    assert results.points[1].means == {"reward_caps": 0.1, "reward_lower": 0.9}
    assert results.points[1].ci_low["reward_caps"] == pytest.approx(0.1)  # constant values: a point interval
    assert [p.non_dominated for p in results.points] == [False, True, True, False]
    # against the base (0.3, 0.3) only b counts: 0.2 * 0.2
    assert results.reference == BASE and results.reference_point == [0.3, 0.3]
    assert results.hypervolume == pytest.approx(0.04)
    caps, lower = results.monotonicity[PREFERENCE]
    assert not caps["monotone"] and caps["falls"] == [
        {"from": "b", "to": "c", "by": pytest.approx(0.1), "within_intervals": False}]
    assert lower["monotone"] and lower["order"] == ["c", "b", "a"]
    given = FrontResults("text", [], DIMS, [True, True], [point("a", WEIGHTS, 0.2, 0.9, [0.2, 0.8]),
                                                         point("b", WEIGHTS, 0.8, 0.2, [0.8, 0.2])])
    assert given.summarise([0.0, 0.0], num_resamples=50).hypervolume == pytest.approx(0.8 * 0.2 + 0.2 * 0.7)
    assert given.reference == "given" and given.as_dict()["non_dominated"] == ["a", "b"]
    assert given.hypervolume_by_sweep == {}  # one sweep: its hypervolume is the front's
    both = FrontResults("text", [], DIMS, [True, True], [
        point("w", WEIGHTS, 0.8, 0.2, [0.8, 0.2]), point("v", WEIGHTS, 0.2, 0.9, [0.2, 0.8]),
        point("p", PREFERENCE, 0.5, 0.5, [0.5, 0.5])]).summarise([0.0, 0.0], num_resamples=20)
    # together: 0.8 * 0.2 + 0.5 * 0.3 + 0.2 * 0.4; each sweep alone: 0.8 * 0.2 + 0.2 * 0.7, and 0.5 * 0.5
    assert both.hypervolume == pytest.approx(0.39)
    assert both.hypervolume_by_sweep == {WEIGHTS: pytest.approx(0.3), PREFERENCE: pytest.approx(0.25)}


def test_a_lower_is_better_dimension_is_turned_before_comparing():
    results = FrontResults("text", [], ["reward", "error"], [True, False], [
        FrontPoint("a", WEIGHTS, {"reward": [0.5], "error": [0.1]}),
        FrontPoint("b", WEIGHTS, {"reward": [0.4], "error": [0.3]}),  # worse on both
    ]).summarise([0.0, 1.0], num_resamples=20)
    assert [p.non_dominated for p in results.points] == [True, False]
    assert results.hypervolume == pytest.approx(0.5 * 0.9)


# ------------------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two toy models with nudged weights, saved as exports."""
    paths = []
    for k in range(2):
        path = tmp_path_factory.mktemp(f"run{k}") / "export"
        backbone = CausalLM("toy:llm")
        backbone.configure()
        torch.manual_seed(k)
        with torch.no_grad():
            for p in backbone.policy.parameters():
                p.add_(0.02 * torch.randn_like(p))
        backbone.save_pretrained(str(path))
        paths.append(str(path))
    return paths


def evaluation(tmp_path, **kwargs):
    settings = dict(prompts="toy:llm_case", num_prompts=8, scorers=[ToyReward("llm_case")], output_dir=str(tmp_path),
                    generation_kwargs={"max_new_tokens": 6}, num_resamples=100, report=False)
    return Evaluation(**{**settings, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    (dict(front=[{"aligned": "X", "weights": [1, 0, 0]}]), r"evaluate.front\[0\].weights = \[1.0, 0.0, 0.0\] has 3"),
    (dict(front=[{"aligned": "X", "weight": [1, 0]}]), r"evaluate.front\[0\]: unknown key\(s\) \['weight'\]"),
    (dict(front=[{"label": "w"}]), r"evaluate.front\[0\]: give a mapping with at least 'aligned'"),
    (dict(front=[{"aligned": "nowhere"}]), r"evaluate.front\[0\].aligned nowhere: no such folder"),
    (dict(front=[{"aligned": "X", "label": "a"}, {"aligned": "Y", "label": "a"}]), r"evaluate.front\[1\].label 'a'"),
    (dict(front=[{"aligned": "X"}], dimensions=["reward_caps", "helpfulness"]), "no scorer judges 'helpfulness'"),
    (dict(front=[{"aligned": "X"}], dimensions=["reward_caps"]), "two dimensions or more"),
    (dict(front=[{"aligned": "X"}], reference_point=[0.0]), r"evaluate.reference_point = \[0.0\]: one value"),
    (dict(front=[{"aligned": "X"}], aligned="X"), "evaluate.aligned: with evaluate.front, list every"),
    (dict(preferences=[[0.5, 0.5]]), "evaluate.aligned: give the model trained with a preference vector"),
    (dict(aligned="X", preferences=[[0.5, 0.5]], preference_grid=3), "give one of them"),
    (dict(aligned="X", preferences=[[0.5, 0.5]]), r"evaluate.preferences: the model .* takes no preference vector"
                                                  r" \(CausalLM.preference_dim is 0\)"),
    (dict(front=[{"aligned": "X"}], scorers=[ToyReward("llm_case"), ImplicitRewardAccuracy()]), "held-out pairs"),
])
def test_bad_options_are_refused_naming_the_option(exports, tmp_path, kwargs, message):
    def fill(value):  # X and Y stand for the two exports
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return {"X": exports[0], "Y": exports[1]}.get(value, value) if isinstance(value, str) else value

    kwargs = {k: v if k == "scorers" else fill(v) for k, v in kwargs.items()}
    with pytest.raises(EvaluationError, match=message):
        run_front(PreferenceModule(CausalLM("toy:llm")), evaluation(tmp_path, **kwargs))


def test_the_one_model_evaluation_refuses_front_options(exports, tmp_path):
    with pytest.raises(EvaluationError, match="run_front"):
        run_evaluation(PreferenceModule(CausalLM("toy:llm")), evaluation(tmp_path, front=[{"aligned": exports[0]}]))


class CaseConditioned(CausalLM):
    """A stub preference-conditioned model: it answers the echo in capitals with the preference's first weight
    as the share of letters (a model that moves monotonically along its sweep)."""

    preference_dim = 2

    def set_preference(self, vector):
        self.preference = list(vector)

    def generate(self, prompts, **kwargs):
        if getattr(self, "preference", None) is None:  # the base model
            return super().generate(prompts, **kwargs)
        w = self.preference[0]
        out = []
        for p in prompts:
            letters = p.split()[1:]
            k = round(w * len(letters))
            out.append(" ".join([x.upper() for x in letters[:k]] + letters[k:]))
        return out


def test_a_preference_grid_sweeps_one_model_and_checks_its_monotonicity(exports, tmp_path):
    for bad, message in (([[0.7, 0.7]], r"evaluate.preferences\[0\] = \[0.7, 0.7\]: a preference vector is on the"
                                        " simplex"), ([[1.0]], r"evaluate.preferences\[0\] = \[1.0\] has 1 weights")):
        with pytest.raises(EvaluationError, match=message):
            run_front(PreferenceModule(CaseConditioned("toy:llm")), evaluation(tmp_path, aligned=exports[0],
                                                                               preferences=bad))
    results = run_front(PreferenceModule(CaseConditioned("toy:llm")),
                        evaluation(tmp_path, aligned=exports[0], preference_grid=3, report=True))
    swept = [p for p in results.points if p.kind == PREFERENCE]
    assert [p.vector for p in swept] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert swept[0].means == {"reward_caps": 0.0, "reward_lower": 1.0}
    assert swept[2].means == {"reward_caps": 1.0, "reward_lower": 0.0}
    assert all(c["monotone"] for c in results.monotonicity[PREFERENCE])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["front"]["hypervolume"] == pytest.approx(results.hypervolume)
    assert written["outputs"]["pref (1, 0)"][0].isupper()
    page = (tmp_path / "report.html").read_text()
    assert "front_reward_caps_reward_lower.png" in page and "Samples per point" in page
    assert (tmp_path / "figures" / "front_reward_caps_reward_lower.png").stat().st_size > 10_000


def test_evaluate_a_front_of_two_short_modpo_runs(tmp_path, capsys):
    """Two MODPO runs of a few steps at w and 1 - w, then ``evaluate`` over the front: every point generated from
    the same prompts with the same seeds and judged on both rules, the summaries and the page with its plot."""
    recipe = os.path.join(REPO, "recipes", "toy", "llm_modpo.yaml")
    runs = {}
    for w in ("0.8", "0.2"):
        other = f"{1 - float(w):.1f}"
        main(["fit", "--config", recipe, "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.logger.init_args.name", f"w{w}", "--trainer.enable_progress_bar", "false",
              "--data.init_args.num_train", "48", "--data.init_args.num_val", "8", "--trainer.val_check_interval", "3",
              "--model.objective.init_args.weights", f"[{w}, {other}]", "--checkpoint.dirpath", str(tmp_path / f"ck{w}")])
        runs[w] = (glob.glob(str(tmp_path / f"w{w}" / "version_*" / "export"))[0], [float(w), float(other)])
    # and one Panacea model, swept at the same vectors beside the MODPO runs (its recipe, a few steps)
    main(["fit", "--config", os.path.join(REPO, "recipes", "toy", "llm_panacea.yaml"), "--trainer.logger.init_args.save_dir",
          str(tmp_path), "--trainer.logger.init_args.name", "pan", "--trainer.enable_progress_bar", "false",
          "--data.init_args.num_train", "48", "--data.init_args.num_val", "8", "--trainer.val_check_interval", "3",
          "--trainer.callbacks", "[{class_path: alignsuite.callbacks.PreferenceSampler}]",
          "--checkpoint.dirpath", str(tmp_path / "ckpan")])
    panacea = glob.glob(str(tmp_path / "pan" / "version_*" / "export"))[0]
    front = ", ".join(f'{{label: "w{w}", aligned: {path}, weights: {vec}}}' for w, (path, vec) in runs.items())
    out = tmp_path / "front"
    capsys.readouterr()
    main(["evaluate", "--config", recipe, "--config", os.path.join(REPO, "configs", "eval", "toy_llm_case_front.yaml"),
          "--evaluate.front", f"[{front}]", "--evaluate.comparisons", "[]", "--evaluate.reference_point", "null",
          "--evaluate.aligned", panacea, "--evaluate.preferences", "[[0.8, 0.2], [0.2, 0.8]]",
          "--evaluate.num_prompts", "16", "--evaluate.output_dir", str(out),
          "--evaluate.num_resamples", "200"])
    printed = capsys.readouterr().out
    written = json.loads((out / "results.json").read_text())["front"]
    assert [p["label"] for p in written["points"]] == ["base", "pref (0.8, 0.2)", "pref (0.2, 0.8)", "w0.8", "w0.2"]
    assert set(written["hypervolume_by_sweep"]) == {"weights", "preference"}
    assert written["dimensions"] == DIMS and written["reference"] == "base"
    for p in written["points"]:
        for d in DIMS:
            assert p["ci_low"][d] <= p["means"][d] <= p["ci_high"][d] and len(p["values"][d]) == 16
    assert "hypervolume" in printed and "against the reference point" in printed and "the base model's point" in printed
    page = (out / "report.html").read_text()
    assert '<img src="figures/front_reward_caps_reward_lower.png"' in page and page.count("echo ") >= 16


def test_point_labels_are_placed_where_they_overlap_no_other_label_and_no_point():
    """Five points close together, as a weight sweep and a preference sweep at the same vectors land: every label
    finds a spot clear of the others' labels and of every point's marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignsuite.evaluation.front_report import place_labels

    points = [(0.34, 0.92), (0.37, 0.95), (0.47, 0.76), (0.49, 0.78), (0.55, 0.70)]
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    ax.plot(*zip(*points), "o", markersize=8)
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.1)
    notes = place_labels(fig, ax, [(f"pref ({x}, {y})", (x, y), "#1f77b4") for x, y in points])
    renderer = fig.canvas.get_renderer()
    boxes = [n.get_window_extent(renderer) for n in notes]
    markers = [ax.transData.transform(p) for p in points]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1:], i + 1):
            assert not a.overlaps(b), (notes[i].get_text(), notes[j].get_text())
        for k, (mx, my) in enumerate(markers):
            if k != i:
                assert not (a.x0 < mx + 10 and mx - 10 < a.x1 and a.y0 < my + 10 and my - 10 < a.y1), (i, k)
    assert len(ax.texts) == len(points)  # the spots tried and not taken are removed
    plt.close(fig)
