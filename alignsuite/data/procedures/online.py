"""Build rules for judged samples: pairs and soft labels from rows of K responses judged together, as an online
round writes them.

A judged row holds ``prompt``, ``responses`` (K outputs of any kind: text, chat messages, an image path, a list
of speech codes; never read, only carried), ``scores`` (K numbers, NaN or missing for a failed judgement) and,
where the judge gives them, ``win_matrix`` (K x K, ``P[i][j]`` the probability that response ``i`` is preferred
to response ``j``, as a pairwise preference model such as PairRM gives) or ``votes`` (K x K counts,
``votes[i][j]`` the number of annotators who preferred ``i`` to ``j``). The field names are settings.

Every rule writes ``prompt``/``chosen``/``rejected`` with ``score_chosen``/``score_rejected`` and the row's other
columns (the K-long judge fields ``win_matrix`` and ``votes`` are left out). A row whose scored responses all
score the same is dropped as :data:`TIE`, so that a round in which every candidate tied says so. Listwise
objectives need no rule: the list layouts read these rows as they are (see the data guide).
"""

from __future__ import annotations

from typing import Any

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import ListProcedure, Report, Row, get_field, missing_field, origin
from alignsuite.data.procedures.judgements import count, probability, sigmoid

TIE = "tie: every scored response has the same score"  # the drop reason of a row with nothing to prefer
LIST_FIELDS = ("win_matrix", "votes")  # K x K judge fields, left out of the pair rows made from a list row

Candidate = tuple[int, Any, float | None]  # (position in the list, response, score or None)


def best_worst(candidates: list[Candidate], value) -> tuple[Candidate, Candidate]:
    """The candidates with the highest and the lowest ``value``, each the earliest on ties."""
    return max(candidates, key=lambda c: (value(c), -c[0])), min(candidates, key=lambda c: (value(c), c[0]))


def square_matrix(row: Row, name: str, k: int, entries: str, entry) -> list[list[Any]]:
    """``row[name]`` as a ``k x k`` list of lists, each off-diagonal entry passed through ``entry`` (which returns
    the value, or raises ``ValueError`` for a bad one); the diagonal is not read. A ``DataError`` names the file,
    row and field for a wrong shape or a bad entry."""
    value = get_field(row, name, f"a {k} x {k} matrix of {entries}")
    source, index = origin(row)
    if not (isinstance(value, list) and len(value) == k and all(isinstance(r, list) and len(r) == k for r in value)):
        shape = f"{len(value)} rows of lengths {[len(r) if isinstance(r, list) else None for r in value]}" \
            if isinstance(value, list) else value
        raise DataError(source, index, name, f"a {k} x {k} matrix (one row of {k} per response) of {entries}", shape)
    out = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(k):
            if i != j:
                try:
                    out[i][j] = entry(value[i][j])
                except ValueError:
                    raise DataError(source, index, name, f"{entries}; entry [{i}][{j}] is not one",
                                    value[i][j]) from None
    return out


class JudgedRule(ListProcedure):
    """What the rules here share: the pair row without the K x K judge fields, and the candidates of a row."""

    judge_fields: tuple[str, ...] = LIST_FIELDS

    def pair(self, row: Row, chosen: Candidate, rejected: Candidate, **values: Any) -> Row:
        out = super().pair(row, chosen, rejected, **values)
        return {k: v for k, v in out.items() if k not in self.judge_fields or k in values}

    def candidates(self, row: Row, report: Report) -> list[Candidate] | None:
        """The finite-scored responses of ``row`` or, when it has no scores (no column, or null), all its responses
        (score ``None``); ``None`` (dropped, counted) when fewer than 2."""
        if row.get(self.scores_field) is not None:
            return self.scored_responses(row, report)
        get_field(row, self.prompt_field, "a prompt (text or chat messages)")
        responses = get_field(row, self.responses_field, "a list of responses")
        if not isinstance(responses, list):
            raise DataError(*origin(row), self.responses_field, "a list of responses", responses)
        if len(responses) < 2:
            report.drop(row, "fewer than 2 responses")
            return None
        return [(k, r, None) for k, r in enumerate(responses)]


class BestWorstPairs(JudgedRule):
    """Best vs worst by score: the pair of iterative DPO (RLHFlow's ``max_min``, Xiong et al. 2024, arXiv
    2405.07863, official code ``RLHFlow/Online-RLHF``, ``dpo_iteration/run_dpo.py``) and of self-rewarding
    language models (Yuan et al. 2024, arXiv 2401.10020: max vs min when they differ), with DNO's large-margin
    filter (Rosset et al. 2024, arXiv 2404.03715) as ``min_margin``.

    Chosen = the highest score, rejected = the lowest, each the earliest response on ties (as ``argmax``/``argmin``
    pick). A row whose scores are all equal is dropped as :data:`TIE`; a pair whose margin is not above
    ``min_margin``, or whose best scores below ``min_chosen``, is dropped and counted.

    Args:
        min_margin: the least margin ``score_chosen - score_rejected`` kept, exclusive (0: any difference).
        min_chosen: the least score of the chosen response (null: no floor).
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    def __init__(self, min_margin: float = 0.0, min_chosen: float | None = None, prompt_field: str = "prompt",
                 responses_field: str = "responses", scores_field: str = "scores",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        if not min_margin >= 0:
            raise ValueError(f"BestWorstPairs.min_margin must be >= 0, got {min_margin}")
        self.min_margin, self.min_chosen = min_margin, min_chosen

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            valid = self.scored_responses(row, report)
            if valid is None:
                continue
            chosen, rejected = best_worst(valid, lambda c: c[2])
            if chosen[2] == rejected[2]:
                report.drop(row, TIE)
            elif self.min_chosen is not None and chosen[2] < self.min_chosen:
                report.drop(row, "the best score is below min_chosen")
            elif chosen[2] - rejected[2] <= self.min_margin:
                report.drop(row, "the best-worst margin is not above min_margin")
            else:
                out.append(self.pair(row, chosen, rejected))
        return out


class MarginPairs(JudgedRule):
    """Every pair above a margin: each ``(i, j)`` with ``score_i - score_j > min_margin`` (``i`` chosen), the
    all-pairs construction of iterative preference learning with a margin filter.

    Pairs come out prompt by prompt, each prompt's from the largest margin to the smallest (then by the chosen's
    position, then the rejected's); with ``max_pairs_per_prompt`` only the first that many are kept (the
    largest margins; the rest counted). A row whose scores are all equal is dropped as :data:`TIE`, one with no
    pair above the margin is dropped and counted.

    Args:
        min_margin: the least score difference of a pair, exclusive (0: every pair that differs).
        max_pairs_per_prompt: the most pairs kept per prompt (null: all).
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    def __init__(self, min_margin: float = 0.0, max_pairs_per_prompt: int | None = None, prompt_field: str = "prompt",
                 responses_field: str = "responses", scores_field: str = "scores",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        if not min_margin >= 0:
            raise ValueError(f"MarginPairs.min_margin must be >= 0, got {min_margin}")
        if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
            raise ValueError(f"MarginPairs.max_pairs_per_prompt must be at least 1 or null, got {max_pairs_per_prompt}")
        self.min_margin, self.max_pairs_per_prompt = min_margin, max_pairs_per_prompt

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            valid = self.scored_responses(row, report)
            if valid is None:
                continue
            if len({s for _, _, s in valid}) == 1:
                report.drop(row, TIE)
                continue
            pairs = sorted(((a, b) for a in valid for b in valid if a[2] - b[2] > self.min_margin),
                           key=lambda p: (p[1][2] - p[0][2], p[0][0], p[1][0]))
            if not pairs:
                report.drop(row, "no pair with a margin above min_margin")
                continue
            cap = self.max_pairs_per_prompt
            if cap is not None and len(pairs) > cap:
                report.count("pairs not made: beyond max_pairs_per_prompt", len(pairs) - cap)
                pairs = pairs[:cap]
            report.count("pairs made", len(pairs))
            out.extend(self.pair(row, a, b) for a, b in pairs)
        return out


class WinRatePairs(JudgedRule):
    """SPPO's pairs with their estimated win rates (Wu et al. 2024, arXiv 2405.00675; official code
    ``uclaml/SPPO``, ``scripts/compute_prob.py``).

    Per row, ``P[i][j]`` from its ``win_matrix`` or, without one, ``sigmoid((s_i - s_j) / temperature)`` from its
    scores (the official code's PairRM scores, temperature 1). The estimated win rate against the policy is
    ``Phat_i = (1/n) sum_j P[i][j]`` over the row's n candidates, **the diagonal included** (``P[i][i] = 1/2``,
    whatever the matrix holds there). Chosen = the highest score, rejected = the lowest (the earliest on ties),
    as the official code picks them; a row without scores picks by ``Phat``. A row whose scores all tie is
    dropped (the official code keeps it, the same response on both sides). Writes ``chosen_win_rate``,
    ``rejected_win_rate`` (``Phat`` of each, what SPPO's loss regresses on) and ``preference`` (``P[chosen]
    [rejected]``, the official ``chosen_probs`` that ``sppo_single`` reads).

    Candidates are the finite-scored responses (all, without scores). A missing (NaN) matrix entry between two
    candidates removes one of them: the one with the most missing entries, the later on ties, until none is
    missing (counted). A row left with fewer than 2 is dropped; one whose candidates all score the same (or,
    without scores, all win as often) is dropped as :data:`TIE`. A matrix of the wrong shape or an entry outside
    [0, 1] is an error naming the file, row and field; a row with neither matrix nor scores too.

    Args:
        temperature: divides the score difference in ``P[i][j]`` when there is no matrix (1: the official code).
        win_matrix_field: the row's K x K win-probability field.
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    extra_columns = ("score_chosen", "score_rejected", "chosen_win_rate", "rejected_win_rate", "preference")

    def __init__(self, temperature: float = 1.0, win_matrix_field: str = "win_matrix", prompt_field: str = "prompt",
                 responses_field: str = "responses", scores_field: str = "scores",
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        if not temperature > 0:
            raise ValueError(f"{type(self).__name__}.temperature must be positive, got {temperature}")
        self.temperature, self.win_matrix_field = temperature, win_matrix_field
        self.judge_fields = (*LIST_FIELDS, win_matrix_field)

    def needs(self) -> tuple[str, ...]:
        return (self.scores_field, self.win_matrix_field)

    def judged(self, row: Row, report: Report) -> tuple[Candidate, Candidate, float, float, float] | None:
        """``(chosen, rejected, Phat chosen, Phat rejected, P[chosen][rejected])`` of ``row``, or ``None`` (dropped,
        counted)."""
        valid = self.candidates(row, report)
        if valid is None:
            return None
        if row.get(self.win_matrix_field) is not None:
            p = square_matrix(row, self.win_matrix_field, len(row[self.responses_field]), "win probabilities in [0, 1]"
                              " (null or NaN: not judged)", probability)
            valid = self.complete(valid, p, row, report)
            if valid is None:
                return None
        elif valid[0][2] is None:
            raise missing_field(row, self.win_matrix_field, f"a K x K win-probability matrix, or {self.scores_field!r}")
        else:
            p = {a[0]: {b[0]: sigmoid((a[2] - b[2]) / self.temperature) for b in valid} for a in valid}
        phat = {a[0]: (0.5 + sum(p[a[0]][b[0]] for b in valid if b is not a)) / len(valid) for a in valid}
        key = (lambda c: c[2]) if valid[0][2] is not None else (lambda c: phat[c[0]])
        chosen, rejected = best_worst(valid, key)
        if key(chosen) == key(rejected):
            report.drop(row, TIE)
            return None
        return chosen, rejected, phat[chosen[0]], phat[rejected[0]], p[chosen[0]][rejected[0]]

    def complete(self, valid: list[Candidate], p: list[list[float | None]], row: Row,
                 report: Report) -> list[Candidate] | None:
        """``valid`` less the responses removed for missing matrix entries between them; ``None`` under 2."""
        valid = list(valid)
        while len(valid) >= 2:
            missing = {a[0]: sum(p[a[0]][b[0]] is None or p[b[0]][a[0]] is None for b in valid if b is not a)
                       for a in valid}
            gone = max(valid, key=lambda c: (missing[c[0]], c[0]))
            if missing[gone[0]] == 0:
                return valid
            valid.remove(gone)
            report.count(f"responses dropped: NaN or missing value in {self.win_matrix_field!r}")
        report.drop(row, f"fewer than 2 responses with a complete {self.win_matrix_field!r}")
        return None

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            judged = self.judged(row, report)
            if judged is not None:
                chosen, rejected, win_chosen, win_rejected, preference = judged
                out.append(self.pair(row, chosen, rejected, chosen_win_rate=win_chosen, rejected_win_rate=win_rejected,
                                     preference=preference))
        return out


class SoftLabelPairs(WinRatePairs):
    """Best vs worst with a soft label, for online self-preferring (OSP, 2024: a soft-preference cross-entropy on
    self-judged strengths; the pairing here is best vs worst, the paper's ranked pairing is not implemented).

    The pair is `WinRatePairs`' (highest vs lowest score; by estimated win rate without scores; ties dropped
    as :data:`TIE`); ``preference`` = ``P(chosen > rejected)``, from the row's ``win_matrix`` or
    ``sigmoid((score_chosen - score_rejected) / temperature)``, which a soft-label objective reads.

    Args:
        temperature: divides the score difference when there is no matrix.
        win_matrix_field: the row's K x K win-probability field.
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    extra_columns = ("score_chosen", "score_rejected", "preference")

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            judged = self.judged(row, report)
            if judged is not None:
                out.append(self.pair(row, judged[0], judged[1], preference=judged[4]))
        return out


class EmpiricalPreferencePairs(JudgedRule):
    """iREPO's empirical preference (Le et al. 2024, arXiv 2405.15230; the paper, no code read): several
    annotators vote, and the pair's label is the share who preferred the chosen, smoothed.

    ``votes`` is a K x K matrix of counts: ``votes[i][j]`` annotators (or judge calls) preferred response ``i``
    to ``j`` (a tie may count a half to each; the diagonal is not read; `count_votes` makes it from several
    annotators' scores). Chosen = the highest score, rejected = the lowest (the earliest on ties) when the row
    has scores; without, the highest and lowest share of votes won, ``sum_j votes[i][j] / sum_j (votes[i][j] +
    votes[j][i])`` (a response never compared is not a candidate, counted). ``preference = (k + 1) / (n + 2)`` with ``k = votes[chosen][rejected]`` and ``n = k +
    votes[rejected][chosen]`` (Laplace's rule: a unanimous vote stays below 1, so its logit, iREPO's target,
    stays finite). It is below 1/2 where the head-to-head vote goes against the scores. Without scores
    ``score_chosen``/``score_rejected`` are the vote shares.

    A pair never compared head to head (``n = 0``) is dropped and counted, as is a row whose candidates all
    score (or win) the same (:data:`TIE`). A matrix of the wrong shape or a count that is not a number >= 0 is
    an error naming the file, row and field.

    Args:
        votes_field: the row's K x K count matrix.
        prompt_field, responses_field, scores_field: the list row's fields.
        splits: the splits it runs on.
    """

    extra_columns = ("score_chosen", "score_rejected", "preference")

    def __init__(self, votes_field: str = "votes", prompt_field: str = "prompt", responses_field: str = "responses",
                 scores_field: str = "scores", splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(prompt_field, responses_field, scores_field, splits)
        self.votes_field = votes_field
        self.judge_fields = (*LIST_FIELDS, votes_field)

    def needs(self) -> tuple[str, ...]:
        return (self.votes_field,)

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            valid = self.candidates(row, report)
            if valid is None:
                continue
            votes = square_matrix(row, self.votes_field, len(row[self.responses_field]), "vote counts (numbers >= 0)",
                                  count)
            if valid[0][2] is None:
                share = {}
                for k, _, _ in valid:
                    won = sum(votes[k][j] for j, _, _ in valid if j != k)
                    total = won + sum(votes[j][k] for j, _, _ in valid if j != k)
                    if total > 0:
                        share[k] = won / total
                    else:
                        report.count(f"responses dropped: never compared in {self.votes_field!r}")
                valid = [(k, r, share[k]) for k, r, _ in valid if k in share]
                if len(valid) < 2:
                    report.drop(row, f"fewer than 2 responses compared in {self.votes_field!r}")
                    continue
            chosen, rejected = best_worst(valid, lambda c: c[2])
            if chosen[2] == rejected[2]:
                report.drop(row, TIE)
                continue
            k = votes[chosen[0]][rejected[0]]
            n = k + votes[rejected[0]][chosen[0]]
            if n == 0:
                report.drop(row, "chosen and rejected never compared head to head")
                continue
            out.append(self.pair(row, chosen, rejected, preference=(k + 1) / (n + 2)))
        return out


__all__ = ["TIE", "BestWorstPairs", "EmpiricalPreferencePairs", "MarginPairs", "SoftLabelPairs", "WinRatePairs"]
