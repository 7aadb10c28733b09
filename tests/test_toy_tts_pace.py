"""The text-to-speech toy world with two rewards that conflict (every word said vs few frames), the layout that reads
dimensions on speech rows, MODPO on the speech-token LM, and its recipe: the recipe runs, runs at w and 1 - w land
on opposite sides of the base model on the two-reward plane, and evaluate sweeps their front with a Panacea model's
beside it."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import evaluate_front_of_short_runs, fit_two_rewards, modpo_moves
from alignsuite.data import DataError, SpeechDimensionPairs
from alignsuite.evaluation.text_scorers import ToyReward
from alignsuite.toy import get_world, speech
from alignsuite.toy.tts_pace import caught, reading_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "toy", "tts_modpo.yaml")
PANACEA = os.path.join(REPO, "recipes", "toy", "tts_panacea.yaml")
FRONT = os.path.join(REPO, "configs", "eval", "toy_tts_pace_front.yaml")


def test_the_two_rewards_conflict_on_the_pace_and_the_scorer_judges_both():
    world = get_world("tts_pace")
    words = "ba ko mi".split()
    assert (reading_frames(words, 2), reading_frames(words, 1)) == (14, 8)  # 3 words x 2 units x 2 frames + 2 silences
    item = {"text": "ba ko mi"}
    careful, quick = speech.speak(words, 0, None, (2,)), speech.speak(words, 1, None, (1,))
    rushed = speech.speak(["ba", "mi"], 0, None, (1,))  # 5 frames: (14 - 5) / (14 - 8) = 1.5
    assert world.rewards(item, careful) == {"clear": 1.0, "brief": 0.0}
    # Every word hurried through (both units one frame) is missed: the quick reading saves every frame it can and
    # is caught not at all, so no reading scores 1 on both.
    assert caught(quick) == "? ? ?" and speech.transcribe_codes(quick) == "ba ko mi"
    assert world.rewards(item, quick) == {"clear": 0.0, "brief": 1.0}
    assert world.rewards(item, rushed) == {"clear": 0.0, "brief": 1.5}
    # One unit of a word held two frames is enough to catch it: here "ko" (units held 2 and 1 frames), 13 frames.
    ba, ko, mi = (speech.PRONUNCIATION[w] for w in words)
    mixed = [ba[0], ba[1], 0, ko[0], ko[0], ko[1], 0, mi[0], mi[1]]
    assert caught(mixed) == "? ko ?"
    assert world.rewards(item, mixed) == {"clear": pytest.approx(1 / 3), "brief": pytest.approx((14 - 9) / 6)}
    assert world.rewards(item, [])["clear"] == 0.0  # every word missed
    scorer = ToyReward("tts_pace")
    assert scorer.value_names() == ("toy_reward_tts_pace", "reward_clear", "reward_brief")
    judged = scorer.judge(["ba ko mi", "ba ko mi"], [torch.tensor(careful), torch.tensor(mixed)], None, None)
    assert judged == [{"toy_reward_tts_pace": 1.0, "reward_clear": 1.0, "reward_brief": 0.0},
                      {"toy_reward_tts_pace": pytest.approx(1 / 3), "reward_clear": pytest.approx(1 / 3),
                       "reward_brief": pytest.approx(5 / 6)}]


def test_labels_prefer_the_careful_reading_three_times_in_four_and_rows_read_as_speech_dimension_pairs():
    world = get_world("tts_pace")
    rows = world.make_pairs(2000, seed=0)
    careful_won = sum(r[f"clear_{r['clear_id']}"] == 1.0 for r in rows) / len(rows)
    assert 0.72 < careful_won < 0.78
    assert all(sorted((r["clear_0"], r["clear_1"])) == [0.0, 1.0] for r in rows)  # the rushed reading: every word hurried
    assert all(min(r["brief_0"], r["brief_1"]) == 0.0 and max(r["brief_0"], r["brief_1"]) > 1.0 for r in rows)
    layout = world.layout()
    assert layout.preference_dimensions == ("clear", "brief")
    ds, skipped = layout.build([("toy", rows[:40], None)])
    assert len(ds) == 40 and not skipped
    batch = layout.collate(list(ds))
    for i, row in enumerate(rows[:40]):
        first, second = (0, 1) if row["clear_id"] == 0 else (1, 0)
        assert batch["chosen"][i].tolist() == row[f"response_{first}"]
        assert batch["rejected"][i].tolist() == row[f"response_{second}"]
        assert batch["prompt"][i] == row["text"] and batch["prompt_speech"][i].tolist() == row["prompt_speech"]
        assert batch["reward_chosen_brief"][i].item() == pytest.approx(row[f"brief_{first}"])
        assert batch["pref_clear"][i].item() == 1.0
    gap = batch["reward_chosen_brief"] - batch["reward_rejected_brief"]
    assert batch["pref_brief"].tolist() == gap.sign().tolist()


def test_speech_dimension_pairs_refuse_a_missing_dimension_and_a_bad_utterance_naming_the_row_and_field():
    rows = get_world("tts_pace").make_pairs(3, seed=0)
    layout = SpeechDimensionPairs({"clear": "clear_id", "brief": ["brief_0", "brief_1"]}, codebook_size=32)
    del rows[2]["clear_id"]
    with pytest.raises(DataError, match=r"row 2.*clear_id|clear_id.*row 2"):
        layout.build([("toy", rows, None)])
    rows[2]["clear_id"], rows[1]["brief_1"] = 0, "short"
    with pytest.raises(DataError, match="brief_1"):
        layout.build([("toy", rows, None)])
    rows[1]["brief_1"], rows[0]["response_1"] = 0.5, [3, 40]
    with pytest.raises(DataError, match=r"response_1.*codebook_size|codebook_size.*response_1"):
        layout.build([("toy", rows, None)])
    with pytest.raises(ValueError, match="SpeechDimensionPairs: responses names two answer columns"):
        SpeechDimensionPairs({"clear": "clear_id"}, responses=["a"])


def test_modpo_scores_speech_tokens_and_at_w_one_zero_is_dpo_exactly():
    """MODPO on the speech-token LM, one batch of the world's rows: at w = (1, 0) the loss is DPO's on the same
    scores; at w = (0.2, 0.8) it is the equation's, ``-log s((b * (u_w - u_l) - 0.8 * (B_w - B_l)) / 0.2)`` with
    ``B`` the rows' brief rewards, and its gradient is finite."""
    from alignsuite.backbones.speech_tokens import SpeechTokenLM
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO, MODPO

    world = get_world("tts_pace")
    layout = world.layout()
    ds, _ = layout.build([("toy", world.make_pairs(6, seed=3), None)])
    batch = layout.collate(list(ds))
    objective = MODPO(beta=0.5, weights=[0.2, 0.8], margin="rewards")
    objective.use_data(layout)
    assert objective.extra_columns == ("reward_chosen_brief", "reward_rejected_brief")
    module = PreferenceModule(SpeechTokenLM("toy:tts", max_length=96, **world.backbone_args), objective)
    module.configure_model()
    with torch.no_grad():  # a policy away from its reference
        for p in module.backbone.policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    scores = module.compute_scores(batch)
    u = (scores.chosen - scores.ref_chosen) - (scores.rejected - scores.ref_rejected)
    margin = batch["reward_chosen_brief"] - batch["reward_rejected_brief"]
    expected = -F.logsigmoid((0.5 * u.detach() - 0.8 * margin) / 0.2).mean()
    loss = objective(scores).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in module.backbone.policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    dpo_like = MODPO(beta=0.5, weights=[1.0, 0.0], margin="rewards")
    dpo_like.use_data(layout)
    assert dpo_like(scores).loss.item() == DPO(beta=0.5)(scores).loss.item()


def fit(tmp_path, *args, num_prompts: int | None = None) -> list[tuple[int, float, float]]:
    return fit_two_rewards(RECIPE, ('clear', 'brief'), tmp_path, *args, num_prompts=num_prompts)


def test_modpo_recipe_end_to_end(tmp_path):
    """The shipped recipe, shortened: both rewards measured at step 0 and after each of its two epochs."""
    rewards = fit(tmp_path, "--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
                  "--trainer.val_check_interval", "2", num_prompts=16)
    assert len(rewards) == 3 and rewards[0][0] == 0
    assert all(0 <= clear <= 1 and math.isfinite(brief) for _, clear, brief in rewards)


def test_evaluate_a_front_of_short_modpo_runs_and_a_panacea_run_on_the_speech_world(tmp_path):
    """Two MODPO runs and one Panacea run of a few steps, then ``evaluate`` with the shipped front config (the
    recipe's SpeechTokenLM reading the Panacea export as a PanaceaSpeechLM, swept at the MODPO runs' vectors): the
    codes judged on both rewards at every point, written to results.json as codes, and played on the page through
    the backbone's vocoder."""
    with open(FRONT) as f:  # the shipped config sweeps the Panacea recipe's run
        assert yaml.safe_load(f)["evaluate"]["aligned"] == "runs/toy_tts_panacea/version_0/export"
    written, page = evaluate_front_of_short_runs(RECIPE, FRONT, ("clear", "brief"), tmp_path, (0.8, 0.2),
                                                 "--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
                                                 "--trainer.val_check_interval", "2", num_prompts=4, panacea=PANACEA)
    result = written["front"]
    assert written["modality"] == "text_to_speech" and result["dimensions"] == ["reward_clear", "reward_brief"]
    assert [p["label"] for p in result["points"]] == ["base", "pref (0.8, 0.2)", "pref (0.5, 0.5)", "pref (0.2, 0.8)",
                                                      "w0.8", "w0.2"]
    assert set(result["hypervolume_by_sweep"]) == {"weights", "preference"}
    world, items = get_world("tts_pace"), get_world("tts_pace").eval_prompts(4, 1234)
    for p in result["points"]:
        codes = written["outputs"][p["label"]]
        assert len(codes) == 4 and all(isinstance(c, list) and all(isinstance(x, int) for x in c) for c in codes)
        for d, name in (("clear", "reward_clear"), ("brief", "reward_brief")):  # the values are the codes' rewards
            assert p["values"][name] == pytest.approx([world.rewards(item, c)[d] for item, c in zip(items, codes)])
    assert page.count("<audio controls") == 6 * 4 and page.count(" frames, ") == 6 * 4
    assert "tensor(" not in page


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modpo_at_w_and_one_minus_w_land_on_opposite_sides_of_the_base(tmp_path, seed):
    """w = (0.8, 0.2) ends clearer and slower than the base model, w = (0.2, 0.8) quicker and less clear (the
    recipe as shipped, two epochs; measured over seeds 0-2, docs/text-to-speech.md: clear +0.038 / +0.062 / +0.075
    and -0.202 / -0.147 / -0.191, brief -0.141 / -0.235 / -0.157 and +0.222 / +0.142 / +0.253). Asserted: brief by
    0.04 each way, clear by 0.015 up and 0.05 down, under half the smallest measured move each."""
    moves = modpo_moves(RECIPE, ('clear', 'brief'), tmp_path, seed)
    assert moves[0.8][0] > 0.015 and moves[0.8][1] < -0.04, moves
    assert moves[0.2][0] < -0.05 and moves[0.2][1] > 0.04, moves
