"""Prompt-conditioned pairs (DPA's directions, CPO's target levels) worked by hand, the condition's text, and
``evaluate`` sweeping a preference vector through the prompt of one model."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest

from alignsuite.backbones import CausalLM
from alignsuite.cli import main
from alignsuite.data.errors import DataError
from alignsuite.data.procedures import ControllablePairs, DirectionalPairs, PromptCondition, RewardAugmented, Report
from alignsuite.evaluation.front import PREFERENCE
from alignsuite.evaluation.run import Evaluation, EvaluationError
from alignsuite.evaluation.scorers import ToyReward
from alignsuite.evaluation.sweep import run_front
from alignsuite.module import PreferenceModule
from alignsuite.toy.llm_case import CaseEchoWorld

DIMS = {"caps": ["caps_0", "caps_1"], "lower": ["lower_0", "lower_1"]}
WORDS = ["a", "b", "c", "d", "e"]


def rows(*rewards):
    """Pair rows ``prompt``/``response_0``/``response_1`` with the two answers' (caps, lower) rewards."""
    return [{"_source": "t.jsonl", "_row": i, "prompt": f"echo x{i}", "response_0": "A", "response_1": "a",
             "caps_0": c0, "lower_0": l0, "caps_1": c1, "lower_1": l1} for i, ((c0, l0), (c1, l1)) in enumerate(rewards)]


def run(procedure, data):
    report = Report(procedure.name, len(data))
    out = procedure.apply(data, report)
    report.rows_out = len(out)
    return out, report


def test_the_condition_text_by_hand():
    levels = PromptCondition("{caps} {lower}", levels=WORDS, normalise="sum")
    # (3, 1) sums to 4: (0.75, 0.25) -> levels 3 and 1 of 0..4
    assert levels.text({"caps": 3.0, "lower": 1.0}) == "d b"
    assert levels.apply("echo a b", {"caps": 1, "lower": 0}) == "e a\n\necho a b"
    unit = PromptCondition("w={caps:.2f},{lower:.2f}", place="system", normalise="unit")
    assert unit.text({"caps": 3.0, "lower": 4.0}) == "w=0.60,0.80"
    assert unit.apply("hi", {"caps": 1, "lower": 0}) == [{"role": "system", "content": "w=1.00,0.00"},
                                                         {"role": "user", "content": "hi"}]
    plain = PromptCondition("<caps: {caps:g}>")  # a target level, written as it is; lower left out of the text
    assert plain.apply([{"role": "user", "content": "q"}], {"caps": 4, "lower": 1}) == \
        [{"role": "user", "content": "<caps: 4>\n\nq"}]
    with pytest.raises(ValueError, match="no field"):
        PromptCondition("plain text")
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        PromptCondition("{caps}", levels=WORDS).text({"caps": 2.0})
    with pytest.raises(ValueError, match=r"field\(s\) \['helpful'\] are not dimensions"):
        PromptCondition("{helpful}").check(("caps", "lower"), "DirectionalPairs.condition")


def test_directional_pairs_label_by_the_direction_by_hand():
    # answers (caps, lower): A = (1, 0), a = (0, 1); a wrong capital echo (0.6, 0) against the right one
    condition = PromptCondition("{caps} {lower}", levels=WORDS, normalise="sum")
    dpa = DirectionalPairs(DIMS, condition, directions=[[3, 1]])  # v = (0.949, 0.316): A 0.949 > a 0.316
    out, report = run(dpa, rows(((1, 0), (0, 1)), ((0, 1), (1, 0)), ((0.6, 0), (1, 0))))
    assert [(r["chosen"], r["rejected"]) for r in out] == [("A", "a"), ("a", "A"), ("a", "A")]
    assert out[0]["prompt"] == "d b\n\necho x0"
    assert out[0]["condition_caps"] == pytest.approx(3 / math.sqrt(10))
    assert out[0]["condition_lower"] == pytest.approx(1 / math.sqrt(10))
    assert "response_0" not in out[0] and out[0]["caps_0"] == 1 and out[0]["_row"] == 0
    flipped, _ = run(DirectionalPairs(DIMS, condition, directions=[[1, 3]]), rows(((1, 0), (0, 1))))
    assert (flipped[0]["chosen"], flipped[0]["prompt"]) == ("a", "b d\n\necho x0")
    # v = (1, 1): the two answers tie (1 = 1), the row teaches nothing under it and is dropped
    tied, report = run(DirectionalPairs(DIMS, condition, directions=[[1, 1]]), rows(((1, 0), (0, 1))))
    assert tied == [] and report.counts["dropped: the two answers tie under the drawn condition"] == 1


def test_directional_draws_are_uniform_on_the_quarter_circle_and_seeded():
    condition = PromptCondition("{caps} {lower}", normalise="sum")
    dpa = DirectionalPairs(DIMS, condition, per_pair=4, seed=3)
    data = rows(*[((1, 0), (0, 1))] * 200)
    out, _ = run(dpa, data)
    assert len(out) == 800 and out == run(DirectionalPairs(DIMS, condition, per_pair=4, seed=3), data)[0]
    angles = [math.atan2(r["condition_lower"], r["condition_caps"]) for r in out]
    assert all(0 <= t <= math.pi / 2 for t in angles)
    # uniform angle: mean pi/4, and the share chosen "A" (angle below pi/4) near one half
    assert sum(angles) / len(angles) == pytest.approx(math.pi / 4, abs=0.06)
    assert sum(r["chosen"] == "A" for r in out) / len(out) == pytest.approx(0.5, abs=0.06)
    assert out != run(DirectionalPairs(DIMS, condition, per_pair=4, seed=4), data)[0]


def test_a_label_dimension_counts_one_for_the_answer_it_prefers():
    dims = {"caps": "caps_id", "lower": ["lower_0", "lower_1"]}
    row = {"prompt": "echo a", "response_0": "A", "response_1": "a", "caps_id": 1, "lower_0": 0.0, "lower_1": 0.5}
    condition = PromptCondition("{caps} {lower}", normalise="sum")
    # r(A) = (0, 0), r(a) = (1, 0.5): a wins under any direction
    out, _ = run(DirectionalPairs(dims, condition, directions=[[1, 0]]), [row])
    assert out[0]["chosen"] == "a"
    with pytest.raises(DataError, match=r"row 0: field 'caps_id'.*0 or 1"):
        run(DirectionalPairs(dims, condition), [{**row, "caps_id": 2, "_source": "f", "_row": 0}])
    with pytest.raises(DataError, match=r"field 'lower_1'"):
        run(DirectionalPairs(dims, condition), [{k: v for k, v in row.items() if k != "lower_1"}])


def test_controllable_pairs_prefer_the_answer_nearest_the_targets_by_hand():
    condition = PromptCondition("{caps} {lower}", levels=WORDS)
    cpo = ControllablePairs(DIMS, condition, targets=[0.75])  # c = (0.75, 0.75)
    # A = (1, 0): -(0.25 + 0.75) = -1.0; a wrong capital echo (0.6, 0): -(0.15 + 0.75) = -0.9 -> the wrong one
    out, _ = run(cpo, rows(((1, 0), (0.6, 0))))
    assert (out[0]["chosen"], out[0]["prompt"]) == ("a", "d d\n\necho x0")
    # c = (1, 0): A -0 against a -2
    out, _ = run(ControllablePairs(DIMS, PromptCondition("{caps}", levels=WORDS), targets=[1.0, 0.0], seed=1),
                 rows(*[((1, 0), (0, 1))] * 40))
    for r in out:
        assert r["chosen"] == ("A" if r["condition_caps"] > r["condition_lower"] else "a")


def test_bad_settings_are_refused_naming_the_option():
    condition = PromptCondition("{caps} {lower}", normalise="sum")
    with pytest.raises(ValueError, match="DirectionalPairs.condition.normalise"):
        DirectionalPairs(DIMS, PromptCondition("{caps} {lower}"))
    with pytest.raises(ValueError, match=r"DirectionalPairs.directions\[0\] = \[-1, 2\]"):
        DirectionalPairs(DIMS, condition, directions=[[-1, 2]])
    with pytest.raises(ValueError, match=r"DirectionalPairs.condition: the template's field\(s\) \['helpful'\]"):
        DirectionalPairs(DIMS, PromptCondition("{helpful}", normalise="sum"))
    with pytest.raises(ValueError, match="ControllablePairs.per_pair"):
        ControllablePairs(DIMS, condition, per_pair=0)


def test_reward_augmented_still_places_its_target_the_same_way():
    row = {"prompt": "q", "chosen": "c", "rejected": "r", "score_chosen": 8, "score_rejected": 3}
    out, _ = run(RewardAugmented(place="user", template="target {score}"), [row])
    assert out[0]["prompt"] == "target 8\n\nq" and out[1]["prompt"] == "target 3\n\nq"


def test_the_toy_world_rows_carry_both_rewards_per_answer():
    world = CaseEchoWorld()
    for row in world.make_pairs(20, 0):
        for k in (0, 1):
            assert world.rewards(row["prompt"], row[f"response_{k}"]) == {"caps": row[f"caps_{k}"],
                                                                          "lower": row[f"lower_{k}"]}


def test_a_toy_world_read_through_another_layout_needs_a_procedure():
    from alignsuite.data import TextPairs
    from alignsuite.toy.data import ToyPreferenceData

    with pytest.raises(ValueError, match="data.layout: the generated rows are in the world's own layout"):
        ToyPreferenceData("llm_case", layout=TextPairs())
    condition = PromptCondition("{caps}", levels=WORDS, normalise="sum")
    data = ToyPreferenceData("llm_case", num_train=16, num_val=8, batch_size=4, layout=TextPairs(),
                             procedures=[DirectionalPairs(DIMS, condition, splits=["train", "val"])])
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert all(p.split("\n\n")[0] in WORDS and p.split("\n\n")[1].startswith("echo") for p in batch["prompt"])


class PromptReader(CausalLM):
    """A stub of a prompt-conditioned model: it reads the first condition word (the caps weight as a, b, c, d, e)
    and answers that share of the letters in capitals."""

    def generate(self, prompts, **kwargs):
        if all(p.startswith("echo") for p in prompts):  # the base model: unconditioned prompts
            return super().generate(prompts, **kwargs)
        out = []
        for p in prompts:
            head, _, prompt = p.partition("\n\n")
            w = WORDS.index(head.split()[0]) / 4
            letters = prompt.split()[1:]
            k = round(w * len(letters))
            out.append(" ".join([x.upper() for x in letters[:k]] + letters[k:]))
        return out


def test_evaluate_sweeps_the_preference_through_the_prompt(tmp_path):
    condition = {"template": "{caps} {lower}", "levels": WORDS, "normalise": "sum"}
    settings = dict(prompts="toy:llm_case", num_prompts=8, scorers=[ToyReward("llm_case")], output_dir=str(tmp_path),
                    generation_kwargs={"max_new_tokens": 6}, num_resamples=100, report=False)
    backbone = CausalLM("toy:llm")
    backbone.configure()
    backbone.save_pretrained(str(tmp_path / "export"))
    aligned = str(tmp_path / "export")
    results = run_front(PreferenceModule(PromptReader("toy:llm")),
                        Evaluation(**settings, aligned=aligned, preference_grid=3, preference_prompt=condition))
    swept = [p for p in results.points if p.kind == PREFERENCE]
    assert [p.vector for p in swept] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    # judged against the prompts as they were: the condition words are not letters to echo
    assert swept[0].means == {"reward_caps": 0.0, "reward_lower": 1.0}
    assert swept[2].means == {"reward_caps": 1.0, "reward_lower": 0.0}
    assert all(c["monotone"] for c in results.monotonicity[PREFERENCE])
    for bad, message in (
            (dict(preference_prompt=condition), "give them with evaluate.preferences"),
            (dict(aligned=aligned, preferences=[[1.0, 0.0]], preference_prompt={"template": "{helpful}"}),
             r"evaluate.preference_prompt: the template's field\(s\) \['helpful'\]"),
            (dict(aligned=aligned, preferences=[[1.0, 0.0]], preference_prompt={"template": "{caps}", "levels": WORDS,
                                                                             "normalise": "unit"}),
             None)):
        if message is None:  # (1, 0) as a unit vector is still (1, 0): a valid setting
            run_front(PreferenceModule(PromptReader("toy:llm")), Evaluation(**settings, **bad))
            continue
        with pytest.raises(EvaluationError, match=message):
            run_front(PreferenceModule(PromptReader("toy:llm")), Evaluation(**settings, **bad))


# ------------------------------------------------------------------------------------------------ the toy recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "llm_dpa.yaml")
EVAL = os.path.join(REPO, "configs", "eval", "toy_llm_case_dpa.yaml")


def fit_and_sweep(tmp_path, *fit_args, num_prompts: int = 256) -> dict:
    main(["fit", "--config", RECIPE, "--trainer.logger.init_args.save_dir", str(tmp_path), "--checkpoint.dirpath",
          str(tmp_path / "ckpt"), "--trainer.enable_progress_bar", "false", *fit_args])
    export = glob.glob(str(tmp_path / "*" / "version_0" / "export"))[0]
    main(["evaluate", "--config", RECIPE, "--config", EVAL, "--evaluate.aligned", export, "--evaluate.output_dir",
          str(tmp_path / "front"), "--evaluate.report", "false", "--evaluate.num_prompts", str(num_prompts)])
    front = json.loads((tmp_path / "front" / "results.json").read_text())["front"]
    return {tuple(p["vector"]) if p["vector"] else p["label"]: p["means"] for p in front["points"]} | \
        {"hypervolume": front["hypervolume"]}


def test_the_recipe_and_its_front_config_run_through_the_commands(tmp_path):
    """The shipped recipe, shortened, and the front config as shipped but for the model and 8 prompts: the
    conditioned pairs reach the model, and evaluate sweeps the five vectors through the prompts."""
    points = fit_and_sweep(tmp_path, "--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
                           "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", num_prompts=8)
    assert {(1.0, 0.0), (0.8, 0.2), (0.5, 0.5), (0.2, 0.8), (0.0, 1.0), "base"} <= set(points)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_dpa_model_traces_the_front_through_its_prompt(tmp_path, seed):
    """One run of the shipped recipe, swept through the prompt: at (0.8, 0.2) it answers in capitals, at (0.2, 0.8)
    in lower case. Measured over seeds 0-2 (docs/language.md): caps 0.62 apart or more, lower 0.45 apart or more,
    hypervolume against (0, 0) 0.186 or more; asserted: 0.45, 0.3, 0.13."""
    points = fit_and_sweep(tmp_path, "--seed_everything", str(seed), "--data.init_args.seed", str(seed))
    caps_first, lower_first = points[(0.8, 0.2)], points[(0.2, 0.8)]
    assert caps_first["reward_caps"] - lower_first["reward_caps"] >= 0.45
    assert lower_first["reward_lower"] - caps_first["reward_lower"] >= 0.3
    assert points["hypervolume"] >= 0.13


def test_controllable_pairs_maximise_the_unstated_dimensions_by_hand():
    # A = (caps 0.5, lower 0.5), a = (0.2, 0.9); targets 0.5
    data = rows(((0.5, 0.5), (0.2, 0.9)))
    # caps stated, lower unstated: V = -|caps - 0.5| + lower: A 0 + 0.5 = 0.5, a -0.3 + 0.9 = 0.6 -> a
    cpo = ControllablePairs(DIMS, PromptCondition("<caps {caps}>"), targets=[0.5], unstated=["lower"])
    out, _ = run(cpo, data)
    assert (out[0]["chosen"], out[0]["prompt"]) == ("a", "<caps 0.5>\n\necho x0")
    assert "condition_lower" not in out[0] and out[0]["condition_caps"] == 0.5
    assert cpo.extra_columns == ("condition_caps",)
    # both stated: A meets (0.5, 0.5) exactly, 0 against a's -(0.3 + 0.4) -> A
    out, _ = run(ControllablePairs(DIMS, PromptCondition("{caps} {lower}"), targets=[0.5]), data)
    assert out[0]["chosen"] == "A"


def test_controllable_pairs_can_take_their_targets_from_an_answer_as_the_official_code_does():
    cpo = ControllablePairs(DIMS, PromptCondition("{caps} {lower}", levels=WORDS), targets_from="answers", seed=3)
    out, report = run(cpo, rows(*[((1, 0), (0, 1))] * 40))
    assert len(out) == 40 and report.counts.get("conditions drawn") == 40
    drawn = {(r["condition_caps"], r["condition_lower"]) for r in out}
    assert drawn == {(1.0, 0.0), (0.0, 1.0)}  # both answers are drawn, and only their levels
    for r in out:  # the answer whose levels are the condition meets it exactly, so it is chosen
        assert r["chosen"] == ("A" if r["condition_caps"] == 1.0 else "a")
        assert r["prompt"] == ("e a" if r["condition_caps"] == 1.0 else "a e") + f"\n\necho x{r['_row']}"


def test_controllable_pairs_refuse_bad_unstated_and_targets_from():
    with pytest.raises(ValueError, match=r"ControllablePairs.unstated = \['helpful'\]"):
        ControllablePairs(DIMS, PromptCondition("{caps}"), unstated=["helpful"])
    with pytest.raises(ValueError, match=r"ControllablePairs.unstated = \['caps', 'lower'\]"):
        ControllablePairs(DIMS, PromptCondition("{caps}"), unstated=["caps", "lower"])
    with pytest.raises(ValueError, match=r"ControllablePairs.condition: the template's field\(s\) \['lower'\]"):
        ControllablePairs(DIMS, PromptCondition("{caps} {lower}"), unstated=["lower"])
    with pytest.raises(ValueError, match="ControllablePairs.targets_from"):
        ControllablePairs(DIMS, PromptCondition("{caps}"), targets_from="best")
