"""Data procedures, each against a small example worked by hand (the rows kept, their order, the swaps), and
their bad input: a missing field or a list of the wrong shape refused naming file, row and field; a NaN score
or a list left with fewer than 2 responses dropped and counted, the rows named."""

from __future__ import annotations

import math

import pytest

from alignsuite.data import DataError
from alignsuite.data.procedures import (
    AIRPairs,
    CuratronPairs,
    CurryPairs,
    RejectionSampling,
    Report,
    RewardAugmented,
    SelectiveDPO,
    SweetSpotPairs,
    btl_scores,
)
from alignsuite.data.procedures.relabel import TARGET

SRC = "data/lists.jsonl"


def rows(*raw):
    """Rows as the data module hands them over: each with the file and row it came from."""
    return [{**r, "_source": SRC, "_row": i} for i, r in enumerate(raw)]


def run(procedure, data):
    report = Report(procedure.name, rows_in=len(data))
    out = procedure.apply(data, report)
    report.rows_out = len(out)
    return out, report


def lists(*score_lists):
    """One list row per score list: prompt ``p<i>``, responses named ``r<k>``."""
    return rows(*({"prompt": f"p{i}", "responses": [f"r{k}" for k in range(len(s))], "scores": s}
                  for i, s in enumerate(score_lists)))


# --- Selective DPO ----------------------------------------------------------------------------------


def test_selective_dpo_keeps_the_easiest_fraction_easy_to_hard():
    # Difficulties 0.9, 0.1, 0.5, NaN, 0.3, 0.3: the NaN row is dropped, 5 remain, floor(0.5 x 5) = 2 are kept:
    # row 1 (0.1) then row 4 (0.3; the tie with row 5 goes to the earlier row).
    data = rows(*({"prompt": "p", "chosen": f"c{i}", "rejected": "r", "difficulty": d}
                  for i, d in enumerate([0.9, 0.1, 0.5, math.nan, 0.3, 0.3])))
    out, report = run(SelectiveDPO(fraction=0.5), data)
    assert [(r["_row"], r["difficulty"]) for r in out] == [(1, 0.1), (4, 0.3)]
    assert report.counts["dropped: NaN or missing value in 'difficulty'"] == 1
    assert report.dropped["NaN or missing value in 'difficulty'"] == [f"{SRC}:3"]
    assert report.counts["dropped: harder than the easiest 0.5"] == 3
    assert report.reordered.startswith("easy to hard")
    assert SelectiveDPO.orders_rows


def test_selective_dpo_uses_a_scorer_and_keeps_at_least_one_row():
    class Lengths:
        def identity(self):
            return {"scorer": "lengths"}

        def __call__(self, rows):
            return [float(len(r["chosen"])) for r in rows]

    data = rows({"prompt": "p", "chosen": "long answer", "rejected": "x"}, {"prompt": "p", "chosen": "short", "rejected": "x"})
    out, _ = run(SelectiveDPO(fraction=0.1, difficulty=Lengths()), data)
    assert [(r["chosen"], r["difficulty"]) for r in out] == [("short", 5.0)]
    assert SelectiveDPO(difficulty=Lengths()).settings()["difficulty"] == {"scorer": "lengths"}


def test_selective_dpo_refuses_a_missing_difficulty_column():
    with pytest.raises(DataError, match=r"data/lists.jsonl: row 0: field 'difficulty'"):
        run(SelectiveDPO(), rows({"prompt": "p", "chosen": "a", "rejected": "b"}))
    with pytest.raises(ValueError, match="fraction"):
        SelectiveDPO(fraction=0.0)


# --- reward-augmented relabelling -------------------------------------------------------------------


def test_reward_augmented_doubles_kept_pairs_and_swaps_the_second_copy():
    data = rows({"prompt": "q0", "chosen": "good", "rejected": "bad", "score_chosen": 8.0, "score_rejected": 5.5},
                {"prompt": "q1", "chosen": "worse", "rejected": "better", "score_chosen": 3.0, "score_rejected": 4.0},
                {"prompt": "q2", "chosen": "x", "rejected": "y", "score_chosen": 7.0, "score_rejected": 7.0})
    out, report = run(RewardAugmented(), data)
    # Row 1's chosen scores below its rejected: dropped. Rows 0 and 2 (a tie is kept), first as they are
    # conditioned on the chosen's score, then swapped, conditioned on the rejected's.
    assert [(r["_row"], r["chosen"], r["rejected"], r["target_score"], r["swapped"]) for r in out] == [
        (0, "good", "bad", 8.0, 0.0), (2, "x", "y", 7.0, 0.0), (0, "bad", "good", 5.5, 1.0), (2, "y", "x", 7.0, 1.0)]
    assert out[0]["prompt"] == [{"role": "system", "content": TARGET.format(score="8")}, {"role": "user", "content": "q0"}]
    assert out[2]["prompt"][0]["content"].endswith("Overall score: 5.5.")
    assert (out[2]["score_chosen"], out[2]["score_rejected"]) == (5.5, 8.0)  # the scores follow the swap
    assert report.counts["dropped: the chosen scores below the rejected"] == 1
    assert report.counts["swapped (conditioned on the rejected's score)"] == 2


def test_reward_augmented_conditions_whole_conversations_and_the_user_turn():
    conv = lambda answer: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]  # noqa: E731
    data = rows({"chosen": conv("a"), "rejected": conv("b"), "score_chosen": 9, "score_rejected": 2})
    out, _ = run(RewardAugmented(), data)
    assert out[0]["chosen"][0] == {"role": "system", "content": TARGET.format(score="9")}
    assert out[1]["chosen"][-1]["content"] == "b" and out[1]["chosen"][0]["content"].endswith("Overall score: 2.")
    out, _ = run(RewardAugmented(place="user"), rows({"prompt": "q", "chosen": "a", "rejected": "b",
                                                      "score_chosen": 9, "score_rejected": 2}))
    assert out[0]["prompt"] == TARGET.format(score="9") + "\n\nq"


def test_reward_augmented_filter_fields_and_bad_scores():
    data = rows({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 9, "score_rejected": 2,
                 "fine_chosen": 3.0, "fine_rejected": 4.0},
                {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": math.nan, "score_rejected": 2,
                 "fine_chosen": 3.0, "fine_rejected": 1.0})
    out, report = run(RewardAugmented(filter_chosen_field="fine_chosen", filter_rejected_field="fine_rejected"), data)
    assert out == [] and report.counts["dropped: the chosen scores below the rejected"] == 1
    assert report.dropped["a score is NaN or missing"] == [f"{SRC}:1"]
    with pytest.raises(DataError, match=r"row 0: field 'score_rejected'"):
        run(RewardAugmented(), rows({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 1}))


def test_reward_augmented_with_a_target_score_per_dimension():
    dims = {"helpfulness": ["help_chosen", "help_rejected"], "honesty": ["honest_chosen", "honest_rejected"]}
    data = rows({"prompt": "q0", "chosen": "good", "rejected": "bad", "help_chosen": 8, "help_rejected": 4,
                 "honest_chosen": 3, "honest_rejected": 5},  # mean 5.5 against 4.5: kept
                {"prompt": "q1", "chosen": "c", "rejected": "r", "help_chosen": 9, "help_rejected": 2,
                 "honest_chosen": 1, "honest_rejected": 9})  # mean 5 against 5.5: dropped
    procedure = RewardAugmented(dimensions=dims)
    assert procedure.extra_columns == ("target_helpfulness", "target_honesty", "swapped")
    out, report = run(procedure, data)
    assert report.counts["dropped: the chosen scores below the rejected"] == 1
    assert [(r["chosen"], r["target_helpfulness"], r["target_honesty"], r["swapped"]) for r in out] == [
        ("good", 8, 3, 0.0), ("bad", 4, 5, 1.0)]
    head = TARGET.removesuffix("\nOverall score: {score}.")
    assert out[0]["prompt"][0]["content"] == head + "\nHelpfulness score: 8.\nHonesty score: 3."
    assert out[1]["prompt"][0]["content"].endswith("Helpfulness score: 4.\nHonesty score: 5.")
    # Every dimension's score columns follow the swap.
    assert [out[1][k] for k in ("help_chosen", "help_rejected", "honest_chosen", "honest_rejected")] == [4, 8, 5, 3]
    custom, _ = run(RewardAugmented(dimensions=dims, place="user", template="<h={helpfulness} o={honesty}>"), data[:1])
    assert custom[0]["prompt"] == "<h=8 o=3>\n\nq0"
    # One dimension is the one-score form.
    one, _ = run(RewardAugmented(dimensions={"score": ["help_chosen", "help_rejected"]}, template="t {score}"), data)
    assert [r["target_score"] for r in one] == [8, 9, 4, 2]


def test_reward_augmented_dimensions_are_checked():
    with pytest.raises(ValueError, match=r"must contain \{honesty\}"):
        RewardAugmented(dimensions={"helpfulness": ["a", "b"], "honesty": ["c", "d"]}, template="{helpfulness}")
    with pytest.raises(ValueError, match="'helpfulness' takes two score columns"):
        RewardAugmented(dimensions={"helpfulness": "a"})
    with pytest.raises(ValueError, match="name at least one dimension"):
        RewardAugmented(dimensions={})
    with pytest.raises(DataError, match=r"row 0: field 'honest_rejected'"):
        run(RewardAugmented(dimensions={"honesty": ["honest_chosen", "honest_rejected"]}),
            rows({"prompt": "q", "chosen": "a", "rejected": "b", "honest_chosen": 1}))


# --- pairs from scored lists ------------------------------------------------------------------------


def test_sweet_spot_takes_the_response_nearest_mu_minus_two_sigma():
    scores = [8, 5, 5, 5, 5, 5, 5, 5, 5, 5, 1, -2]
    mu = sum(scores) / 12  # 4.3333
    sigma = math.sqrt(sum((s - mu) ** 2 for s in scores) / 12)  # 2.3921
    target = mu - 2 * sigma  # -0.4509: 1 is 1.451 away, the minimum -2 is 1.549 away
    assert abs(1 - target) < abs(-2 - target)
    out, _ = run(SweetSpotPairs(), lists(scores))
    assert [(r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"]) for r in out] == [("r0", "r10", 8.0, 1.0)]
    # With sigmas = 0 the target is the mean: a 5.
    out, _ = run(SweetSpotPairs(sigmas=0.0), lists(scores))
    assert out[0]["rejected"] == "r1"


def test_sweet_spot_drops_flat_lists_and_counts_nan_scores():
    out, report = run(SweetSpotPairs(), lists([3, 3, 3], [2, math.nan, 1], [4, None]))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [("p1", "r0", "r2")]
    assert report.dropped == {"all scores equal": [f"{SRC}:0"], "fewer than 2 responses with a finite value in 'scores'": [f"{SRC}:2"]}
    assert report.counts["responses dropped: NaN or missing value in 'scores'"] == 2


def test_rejection_sampling_limits_and_seeding():
    data = lists([1, 4, 2, 3])
    # beta -> 0: each round accepts only the best remaining: 4, then 3.
    out, _ = run(RejectionSampling(beta=1e-9), data)
    assert [(r["chosen"], r["rejected"]) for r in out] == [("r1", "r3")]
    # beta -> inf: every response is accepted, in list order: 1 and 4, then 2 and 3; each pair labelled by score.
    out, report = run(RejectionSampling(beta=math.inf, num_samples=4), data)
    assert [(r["chosen"], r["rejected"]) for r in out] == [("r1", "r0"), ("r3", "r2")]
    assert report.counts["responses accepted"] == 4
    many = lists(*([0.0, 0.5, 1.0, 1.5, 2.0] for _ in range(200)))
    first, _ = run(RejectionSampling(beta=1.0, seed=3), many)
    again, _ = run(RejectionSampling(beta=1.0, seed=3), many)
    other, _ = run(RejectionSampling(beta=1.0, seed=4), many)
    assert first == again and first != other
    # Scores [1, 0, 0], beta 1: r0 is accepted (exp(0) = 1), then r1 with probability e^-1; failing that r2
    # with e^-1; failing both, the next round's best remaining, r1. So P(pair r0, r2) = (1 - e^-1) e^-1 = 0.2325.
    out, _ = run(RejectionSampling(beta=1.0), lists(*([1.0, 0.0, 0.0] for _ in range(2000))))
    share = sum(r["rejected"] == "r2" for r in out) / len(out)
    assert all(r["chosen"] == "r0" for r in out) and abs(share - (1 - math.exp(-1)) * math.exp(-1)) < 0.03


def test_rejection_sampling_tied_pairs_are_dropped():
    out, report = run(RejectionSampling(beta=math.inf), lists([2, 2, 1]))
    assert out == [] and report.dropped == {"an accepted pair with equal scores": [f"{SRC}:0"]}


def test_curry_pairs_best_against_each_other_by_stage():
    # p0 ranks r1 (4) > r3 (3) > r2 (2) > r0 (1): pairs (r1, r0), (r1, r2), (r1, r3), gaps 3, 2, 1.
    # p1 ranks r0 (5) > r2 (1); r1 (5) ties with the best and gives no pair.
    out, report = run(CurryPairs(), lists([1, 4, 2, 3], [5, 5, 1]))
    assert [(r["prompt"], r["chosen"], r["rejected"], r["stage"], r["gap"]) for r in out] == [
        ("p0", "r1", "r0", 0, 3.0), ("p1", "r0", "r2", 0, 4.0), ("p0", "r1", "r2", 1, 2.0), ("p0", "r1", "r3", 2, 1.0)]
    assert report.counts["pairs not made: a response tied with the best"] == 1
    assert report.counts["stage 0 pairs"] == 2 and CurryPairs.orders_rows


def test_air_pairs_moderate_margin_and_high_scores():
    # Pairs with a margin in [1, 3]: (9, 8) sum 17, (8, 5) sum 13, (5, 2) sum 7; the highest scores win.
    out, _ = run(AIRPairs(min_margin=1, max_margin=3), lists([9, 8, 5, 2]))
    assert [(r["chosen"], r["rejected"], r["score_variance"]) for r in out] == [("r0", "r1", 7.5)]
    # Variance of [9, 8, 5, 2] is (9 + 4 + 1 + 16) / 4 = 7.5: above 7 the instruction is dropped.
    out, report = run(AIRPairs(max_variance=7.0), lists([9, 8, 5, 2], [3, 3.5]))
    assert out == [] and set(report.dropped) == {"score variance above max_variance", "no pair with a margin in range"}


@pytest.mark.parametrize("procedure", [SweetSpotPairs(), RejectionSampling(), CurryPairs(), AIRPairs()], ids=lambda p: p.name)
def test_list_procedures_refuse_bad_rows_naming_file_row_and_field(procedure):
    with pytest.raises(DataError, match=r"data/lists.jsonl: row 1: field 'scores'.*a list of 3 scores"):
        run(procedure, rows({"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]},
                            {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 2]}))
    with pytest.raises(DataError, match=r"row 0: field 'responses'"):
        run(procedure, rows({"prompt": "p", "answers": ["a", "b"], "scores": [1, 2]}))
    out, report = run(procedure, rows({"prompt": "p", "responses": ["a"], "scores": [1]}))
    assert out == [] and report.dropped == {"fewer than 2 responses with a finite value in 'scores'": [f"{SRC}:0"]}


def test_list_procedures_read_renamed_fields():
    data = rows({"question": "q", "answers": ["a", "b", "c"], "ratings": [1, 3, 2], "id": 7})
    out, _ = run(CurryPairs(prompt_field="question", responses_field="answers", scores_field="ratings"), data)
    assert [(r["prompt"], r["chosen"], r["rejected"], r["id"]) for r in out] == [("q", "b", "a", 7), ("q", "b", "c", 7)]
    assert "answers" not in out[0] and "question" not in out[0]


# --- CURATRON ---------------------------------------------------------------------------------------


def test_btl_two_responses_is_the_log_win_ratio():
    # 0 beats 1 twice, 1 beats 0 once: without the ridge, theta_0 - theta_1 = log(2 / 1), centred.
    theta = btl_scores(2, [(0, 1), (0, 1), (1, 0)], l2=0.0)
    assert theta[0] == pytest.approx(math.log(2) / 2, abs=1e-9) and theta[1] == pytest.approx(-math.log(2) / 2, abs=1e-9)


def test_curatron_completes_missing_and_relabels_outvoted_pairs():
    # A chain 0 > 1 > 2 with (0, 2) never compared: the fit completes it, 0 chosen over 2.
    out, report = run(CuratronPairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "comparisons": [[0, 1], [1, 2]]}))
    assert [(r["chosen"], r["rejected"], r["observed"], r["flipped"]) for r in out] == [
        ("a", "b", 1.0, 0.0), ("a", "c", 0.0, 0.0), ("b", "c", 1.0, 0.0)]
    assert report.counts["pairs completed (never compared)"] == 1
    # 0 > 1 and 1 > 2 three times each, but 2 > 0 twice against 0 > 2 once: the ranking outvotes that pair.
    comparisons = [[0, 1]] * 3 + [[1, 2]] * 3 + [[2, 0]] * 2 + [[0, 2]]
    out, report = run(CuratronPairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "comparisons": comparisons}))
    relabelled = [(r["chosen"], r["rejected"], r["observed"]) for r in out if r["flipped"]]
    assert relabelled == [("a", "c", 3.0)]
    assert report.counts["pairs relabelled against their comparisons' majority"] == 1


def test_curatron_bad_input():
    with pytest.raises(DataError, match=r"row 0: field 'comparisons'.*two different response positions in 0..1"):
        run(CuratronPairs(), rows({"prompt": "p", "responses": ["a", "b"], "comparisons": [[0, 2]]}))
    out, report = run(CuratronPairs(), rows({"prompt": "p", "responses": ["a"], "comparisons": []},
                                            {"prompt": "p", "responses": ["a", "b"], "comparisons": []}))
    assert out == [] and report.dropped == {"fewer than 2 responses": [f"{SRC}:0"], "no comparisons": [f"{SRC}:1"]}
