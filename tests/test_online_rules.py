"""The build rules of judged samples, each against a small example worked by hand: the pairs chosen, SPPO's
estimated win rates, iREPO's smoothed empirical preference; ties, NaN judgements and the drop counts; and bad
judge fields refused naming the file, row and field."""

from __future__ import annotations

import math

import pytest

from alignsuite.data import DataError
from alignsuite.data.procedures import (
    TIE,
    BestWorstPairs,
    EmpiricalPreferencePairs,
    MarginPairs,
    SoftLabelPairs,
    RejectionSampling,
    SweetSpotPairs,
    WinRatePairs,
    count_votes,
)

from test_procedures import run  # a procedure applied as the data module applies it

SRC = "round_1/judged.jsonl"


def rows(*raw):
    return [{**r, "_source": SRC, "_row": i} for i, r in enumerate(raw)]


def lists(*score_lists, **extra):
    """One list row per score list: prompt ``p<i>``, responses ``r<k>``, and ``extra`` columns."""
    return rows(*({"prompt": f"p{i}", "responses": [f"r{k}" for k in range(len(s))], "scores": s, **extra}
                  for i, s in enumerate(score_lists)))


def s(z):
    return 1 / (1 + math.exp(-z))


# --- best vs worst ----------------------------------------------------------------------------------


def test_best_worst_takes_the_earliest_of_the_highest_and_of_the_lowest():
    # Scores 2, 5, NaN, 1, 5, 1: the NaN response is dropped; best = r1 (the earlier 5), worst = r3 (the earlier 1).
    out, report = run(BestWorstPairs(), lists([2, 5, math.nan, 1, 5, 1], [3, 3, None], [7]))
    assert [(r["prompt"], r["chosen"], r["rejected"], r["score_chosen"], r["score_rejected"]) for r in out] == [
        ("p0", "r1", "r3", 5.0, 1.0)]
    assert report.counts[f"dropped: {TIE}"] == 1 and report.dropped[TIE] == [f"{SRC}:1"]
    assert report.counts["dropped: fewer than 2 responses with a finite value in 'scores'"] == 1
    assert report.counts["responses dropped: NaN or missing value in 'scores'"] == 2


def test_best_worst_margin_and_chosen_floor():
    # The margin of [2, 5, 1] is 4: kept above 3.9, dropped at 4 (exclusive); a floor of 6 drops it too.
    data = lists([2, 5, 1])
    assert len(run(BestWorstPairs(min_margin=3.9), data)[0]) == 1
    out, report = run(BestWorstPairs(min_margin=4.0), data)
    assert out == [] and report.counts["dropped: the best-worst margin is not above min_margin"] == 1
    out, report = run(BestWorstPairs(min_chosen=6.0), data)
    assert out == [] and report.counts["dropped: the best score is below min_chosen"] == 1


def test_a_round_where_every_candidate_ties_builds_no_pairs_and_says_so():
    data = lists([1, 1, 1], [0.5, 0.5], [2, math.nan, 2])
    for rule in (BestWorstPairs(), MarginPairs(), WinRatePairs(), SoftLabelPairs()):
        out, report = run(rule, data)
        assert out == [] and report.counts[f"dropped: {TIE}"] == 3, rule.name
        assert TIE in report.summary()


def test_responses_of_any_kind_are_carried_as_they_are():
    codes = [[5, 9, 2], [7], [1, 1, 4, 4]]  # speech codes; an image path or a message list travels the same way
    data = rows({"prompt": "say hi", "responses": codes, "scores": [0.2, 0.9, 0.1], "speaker": "s3",
                 "win_matrix": [[0.5] * 3] * 3})
    out, _ = run(BestWorstPairs(), data)
    assert out[0]["chosen"] == [7] and out[0]["rejected"] == [1, 1, 4, 4] and out[0]["speaker"] == "s3"
    assert "win_matrix" not in out[0] and "responses" not in out[0] and out[0]["_row"] == 0


# --- all pairs above a margin -----------------------------------------------------------------------


def test_margin_pairs_every_pair_above_the_margin_largest_first():
    # Scores 3, 1, NaN, 2, 3. Pairs with a difference above 0.5: (r0, r1) 2, (r4, r1) 2, (r0, r3) 1,
    # (r3, r1) 1, (r4, r3) 1; (r0, r4) ties. Ordered by margin, then chosen, then rejected position.
    data = lists([3, 1, math.nan, 2, 3])
    out, report = run(MarginPairs(min_margin=0.5), data)
    assert [(r["chosen"], r["rejected"]) for r in out] == [("r0", "r1"), ("r4", "r1"), ("r0", "r3"), ("r3", "r1"),
                                                            ("r4", "r3")]
    assert report.counts["pairs made"] == 5
    out, report = run(MarginPairs(min_margin=0.5, max_pairs_per_prompt=3), data)
    assert [(r["chosen"], r["rejected"]) for r in out] == [("r0", "r1"), ("r4", "r1"), ("r0", "r3")]
    assert report.counts["pairs not made: beyond max_pairs_per_prompt"] == 2
    out, _ = run(MarginPairs(min_margin=1.0), data)  # exclusive: margins of exactly 1 are left out
    assert [(r["chosen"], r["rejected"]) for r in out] == [("r0", "r1"), ("r4", "r1")]
    out, report = run(MarginPairs(min_margin=5.0), data)
    assert out == [] and report.counts["dropped: no pair with a margin above min_margin"] == 1


# --- SPPO's win rates -------------------------------------------------------------------------------


def test_win_rates_from_scores_include_the_diagonal():
    # Scores 1, 0, 2 (PairRM-style), P_ij = s(s_i - s_j). Phat_2 = (s(1) + s(2) + 1/2) / 3 = 0.70395...,
    # Phat_1 = (s(-1) + 1/2 + s(-2)) / 3 = 0.29605...; chosen r2 (max score), rejected r1, preference s(2).
    out, _ = run(WinRatePairs(), lists([1.0, 0.0, 2.0]))
    (r,) = out
    assert (r["chosen"], r["rejected"]) == ("r2", "r1")
    assert r["chosen_win_rate"] == pytest.approx((s(1) + s(2) + 0.5) / 3) == pytest.approx(0.7039518855, abs=1e-9)
    assert r["rejected_win_rate"] == pytest.approx((s(-1) + 0.5 + s(-2)) / 3) == pytest.approx(0.2960481145, abs=1e-9)
    assert r["preference"] == pytest.approx(s(2)) and (r["score_chosen"], r["score_rejected"]) == (2.0, 0.0)
    # The temperature divides the difference: at 2, P_21 = s(1).
    (r,) = run(WinRatePairs(temperature=2.0), lists([1.0, 0.0, 2.0]))[0]
    assert r["preference"] == pytest.approx(s(1))


WIN = [[None, 0.8, 0.4],
       [0.2, 0.0, 0.1],  # the diagonal is not read (P_ii = 1/2)
       [0.6, 0.9, 0.5]]


def test_win_rates_from_a_win_matrix():
    # Phat_0 = (0.5 + 0.8 + 0.4) / 3 = 0.5667, Phat_1 = (0.2 + 0.5 + 0.1) / 3 = 0.2667, Phat_2 = 2.0 / 3.
    # Without scores the pair is by Phat: r2 over r1, preference P_21 = 0.9.
    data = rows({"prompt": "p", "responses": ["a", "b", "c"], "win_matrix": WIN})
    (r,) = run(WinRatePairs(), data)[0]
    assert (r["chosen"], r["rejected"], r["preference"]) == ("c", "b", 0.9)
    assert r["chosen_win_rate"] == pytest.approx(2.0 / 3) and r["rejected_win_rate"] == pytest.approx(0.8 / 3)
    assert r["score_chosen"] is None and "win_matrix" not in r
    (r,) = run(WinRatePairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "scores": None, "win_matrix": WIN}))[0]
    assert (r["chosen"], r["rejected"]) == ("c", "b")  # null scores: the same as none
    # With scores 3, 1, 2 the scores pick the pair (as SPPO does) and the matrix gives the win rates: r0 over r1.
    (r,) = run(WinRatePairs(), lists([3, 1, 2], win_matrix=WIN))[0]
    assert (r["chosen"], r["rejected"], r["preference"]) == ("r0", "r1", 0.8)
    assert r["chosen_win_rate"] == pytest.approx(1.7 / 3) and r["rejected_win_rate"] == pytest.approx(0.8 / 3)


def test_win_matrix_missing_judgements_remove_the_response_that_failed():
    # r1's comparisons all failed: it has 3 missing entries, the others 1 each, so r1 alone goes; among r0, r2,
    # r3: Phat_0 = (0.5 + 0.7 + 0.6) / 3 = 0.6, Phat_2 = (0.3 + 0.5 + 0.3) / 3 = 1.1 / 3, Phat_3 = 1.6 / 3.
    n = math.nan
    matrix = [[0.5, n, 0.7, 0.6], [n, 0.5, n, n], [0.3, n, 0.5, 0.3], [0.4, n, 0.7, 0.5]]
    data = rows({"prompt": "p", "responses": ["a", "b", "c", "d"], "win_matrix": matrix})
    (r,), report = run(WinRatePairs(), data)
    assert (r["chosen"], r["rejected"]) == ("a", "c")
    assert r["chosen_win_rate"] == pytest.approx(0.6) and r["rejected_win_rate"] == pytest.approx(1.1 / 3)
    assert report.counts["responses dropped: NaN or missing value in 'win_matrix'"] == 1
    # Only one comparison made out of three: too few responses left.
    data = rows({"prompt": "p", "responses": ["a", "b", "c"], "win_matrix": [[0.5, 0.9, n], [0.1, 0.5, n], [n, n, 0.5]]})
    out, report = run(WinRatePairs(), data)
    assert [(r["chosen"], r["rejected"]) for r in out] == [("a", "b")]
    data = rows({"prompt": "p", "responses": ["a", "b"], "win_matrix": [[0.5, n], [n, 0.5]]})
    out, report = run(WinRatePairs(), data)
    assert out == [] and report.dropped == {"fewer than 2 responses with a complete 'win_matrix'": [f"{SRC}:0"]}


def test_soft_labels_from_scores_or_the_matrix():
    (r,) = run(SoftLabelPairs(temperature=0.5), lists([0.3, 1.0, 0.1]))[0]
    assert (r["chosen"], r["rejected"]) == ("r1", "r2") and r["preference"] == pytest.approx(s(0.9 / 0.5))
    assert "chosen_win_rate" not in r
    (r,) = run(SoftLabelPairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "win_matrix": WIN}))[0]
    assert (r["chosen"], r["rejected"], r["preference"]) == ("c", "b", 0.9)


# --- iREPO's empirical preference -------------------------------------------------------------------

# Four annotators compared every pair: votes[i][j] preferred i to j.
VOTES = [[0, 3, 4],
         [1, 0, 2],
         [0, 2, 0]]


def test_empirical_preference_is_the_smoothed_share_of_votes():
    # Shares won: r0 7/8, r1 3/8, r2 2/8: r0 over r2, who all four preferred r0: (4 + 1) / (4 + 2) = 5/6.
    data = rows({"prompt": "p", "responses": ["a", "b", "c"], "votes": VOTES})
    (r,), report = run(EmpiricalPreferencePairs(), data)
    assert (r["chosen"], r["rejected"]) == ("a", "c") and r["preference"] == pytest.approx(5 / 6)
    assert (r["score_chosen"], r["score_rejected"]) == (7 / 8, 2 / 8) and "votes" not in r
    # With scores 1, 3, 2 the scores pick r1 over r0, whom one of four preferred: (1 + 1) / (4 + 2) = 1/3.
    (r,) = run(EmpiricalPreferencePairs(), lists([1, 3, 2], votes=VOTES))[0]
    assert (r["chosen"], r["rejected"]) == ("r1", "r0") and r["preference"] == pytest.approx(1 / 3)


def test_empirical_preference_drops_what_was_never_compared():
    # r2 was never compared (not a candidate); r0 and r1 tied 1-1: shares equal, a tie.
    data = rows({"prompt": "p", "responses": ["a", "b", "c"], "votes": [[0, 1, 0], [1, 0, 0], [0, 0, 0]]},
                {"prompt": "p", "responses": ["a", "b", "c"], "scores": [2, 0, 1],
                 "votes": [[0, 0, 3], [0, 0, 1], [0, 2, 0]]})
    out, report = run(EmpiricalPreferencePairs(), data)
    assert out == [] and report.counts[f"dropped: {TIE}"] == 1
    assert report.counts["responses dropped: never compared in 'votes'"] == 1
    # The second row's scores pick r0 over r1, never compared head to head.
    assert report.dropped["chosen and rejected never compared head to head"] == [f"{SRC}:1"]


def test_votes_counted_from_several_annotators_scores():
    # Annotator A: 3 > 2 > 1 over (r0, r1, r2); B: 2 = 2 > 0 (a half to r0 and r1 each); C: r1 unscored (NaN).
    votes = count_votes([[3, 2, 1], [2, 2, 0], [5, math.nan, 4]])
    assert votes == [[0.0, 1.5, 3.0], [0.5, 0.0, 2.0], [0.0, 0.0, 0.0]]
    # r0 over r2, all three for r0: (3 + 1) / (3 + 2).
    (r,) = run(EmpiricalPreferencePairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "votes": votes}))[0]
    assert (r["chosen"], r["rejected"], r["preference"]) == ("a", "c", 0.8)
    with pytest.raises(ValueError, match="the same 3 responses"):
        count_votes([[1, 2, 3], [1, 2]])


def test_each_rule_says_which_judge_fields_it_needs():
    # A loop refuses at start a rule whose fields its judge does not give (a row carries at least one of them).
    assert BestWorstPairs().needs() == ("scores",) == SweetSpotPairs().needs() == RejectionSampling().needs()
    assert WinRatePairs().needs() == ("scores", "win_matrix") == SoftLabelPairs().needs()
    assert EmpiricalPreferencePairs(votes_field="ballots").needs() == ("ballots",)
    assert MarginPairs(scores_field="reward").needs() == ("reward",)


# --- bad judge fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("matrix, got", [
    ([[0.5, 0.2], [0.8, 0.5]], r"'2 rows of lengths \[2, 2\]'"),
    ([[0.5, 0.2, 0.3], [0.8, 0.5], [0.1, 0.2, 0.5]], r"'3 rows of lengths \[3, 2, 3\]'"),
    ("0.5", "'0.5'"),
])
def test_a_win_matrix_of_the_wrong_shape_is_refused(matrix, got):
    with pytest.raises(DataError, match=rf"{SRC}: row 1: field 'win_matrix': expected a 3 x 3 matrix.*got {got}"):
        run(WinRatePairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "win_matrix": [[0.5] * 3] * 3},
                                 {"prompt": "p", "responses": ["a", "b", "c"], "win_matrix": matrix}))


def test_bad_entries_are_refused_naming_the_entry():
    bad = [[0.5, 1.5, 0.3], [0.2, 0.5, 0.4], [0.7, 0.6, 0.5]]
    with pytest.raises(DataError, match=r"row 0: field 'win_matrix': .*entry \[0\]\[1\] is not one, got 1.5"):
        run(WinRatePairs(), rows({"prompt": "p", "responses": ["a", "b", "c"], "win_matrix": bad}))
    for votes, shown in (([[0, "two"], [1, 0]], "'two'"), ([[0, -1], [1, 0]], "-1"), ([[0, None], [1, 0]], "None")):
        with pytest.raises(DataError, match=rf"row 0: field 'votes': expected vote counts .*\[0\]\[1\].*got {shown}"):
            run(EmpiricalPreferencePairs(), rows({"prompt": "p", "responses": ["a", "b"], "votes": votes}))
    with pytest.raises(DataError, match=r"row 0: field 'votes': expected a 2 x 2 matrix"):
        run(EmpiricalPreferencePairs(), rows({"prompt": "p", "responses": ["a", "b"]}))
    with pytest.raises(DataError, match=r"row 0: field 'win_matrix': expected a K x K win-probability matrix, or 'scores'"):
        run(WinRatePairs(), rows({"prompt": "p", "responses": ["a", "b"]}))


@pytest.mark.parametrize("rule", [BestWorstPairs(), MarginPairs(), WinRatePairs(), SoftLabelPairs(),
                                  EmpiricalPreferencePairs()], ids=lambda p: p.name)
def test_rules_refuse_bad_rows_and_drop_short_lists(rule):
    with pytest.raises(DataError, match=r"row 0: field 'scores'.*a list of 3 scores"):
        run(rule, rows({"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 2], "votes": VOTES}))
    with pytest.raises(DataError, match=r"row 0: field 'responses'"):
        run(rule, rows({"prompt": "p", "answers": ["a", "b"], "scores": [1, 2]}))
    out, report = run(rule, rows({"prompt": "p", "responses": ["a", "b"], "scores": [1, math.nan], "votes": VOTES}))
    assert out == [] and report.rows_out == 0
    assert report.dropped == {"fewer than 2 responses with a finite value in 'scores'": [f"{SRC}:0"]}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_margin must be >= 0"):
        MarginPairs(min_margin=-1)
    with pytest.raises(ValueError, match="max_pairs_per_prompt"):
        MarginPairs(max_pairs_per_prompt=0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        SoftLabelPairs(temperature=0)


# --- in the data module -----------------------------------------------------------------------------


def test_a_judged_round_becomes_batches_with_the_rule_columns(tmp_path, monkeypatch):
    import json

    from alignsuite.data import PreferenceDataModule

    monkeypatch.setenv("ALIGNSUITE_CACHE", str(tmp_path / "cache"))
    # A failed judgement is written as NaN, not null: pyarrow's JSON reader (datasets reads jsonl through it)
    # drops a leading null of a list in a block's first rows and shifts the values after it (apache/arrow#51305).
    matrix = [[0.5, 0.8, 0.4], [0.2, 0.5, 0.1], [0.6, 0.9, 0.5]]
    judged = [{"prompt": "q", "responses": ["a", "b", "c"], "scores": [1.0, 0.0, 2.0], "win_matrix": matrix},
              {"prompt": "q2", "responses": ["a", "b"], "scores": [1.0, float("nan")]},
              {"prompt": "q3", "responses": ["a", "b"], "scores": [4.0, 4.0]}]
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in judged))
    dm = PreferenceDataModule(train=str(path), procedures=[WinRatePairs()], batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert (batch["chosen"], batch["rejected"]) == (["c"], ["b"])
    assert batch["chosen_win_rate"].tolist() == pytest.approx([2.0 / 3], abs=1e-6)  # float32 in the batch
    assert batch["preference"].tolist() == pytest.approx([0.9], abs=1e-6)
    log = dm.procedure_logs["train"]
    assert f"dropped: {TIE} 1 (" in log and "judged.jsonl:2)" in log
    assert "fewer than 2 responses with a finite value in 'scores' 1 (" in log
