"""The judges beyond one value per output, on the ground floor beside :mod:`alignsuite.judging` (whose
:class:`~alignsuite.judging.Scorer` every per-output judge implements):

- pairwise preference judges (:mod:`.preference`): a K x K win matrix per prompt, from any scorer's value
  (:class:`BradleyTerryJudge`) or a pairwise classifier shown both orders (:class:`PairwiseClassifier`), and
  :func:`win_rates` to make one score per output of it;
- several annotators voting (:mod:`.annotators`): :class:`Annotators`, the K x K vote counts of several scorers
  and the win matrix of their shares (iREPO's empirical preference);
- LLM-as-judge (:mod:`.llm`): :class:`LLMJudge`, a rubric prompt to a generating model (or the policy being
  trained) and its score parsed from the text, the raw text kept.

A judge declares the modalities it fits (``modalities``) and ``check_modality(modality, option)`` refuses the
others, naming the option. What a judge cannot judge is counted (``failures``, ``failure_report()``), never a
silent number. :func:`judge_lists` judges K outputs per prompt with either kind.
"""

from __future__ import annotations

from typing import Any, Sequence

from alignsuite.judges.annotators import Annotators, NoisyAnnotator, count_votes, vote_shares
from alignsuite.judges.failures import Failures
from alignsuite.judges.llm import RUBRIC, SCORE_PATTERN, LLMJudge
from alignsuite.judges.preference import (
    BradleyTerryJudge,
    Matrix,
    PairwiseClassifier,
    PreferenceJudge,
    sigmoid,
    win_rates,
)
from alignsuite.judging import Scorer


def judge_lists(judge: Scorer | PreferenceJudge, prompts: Sequence[Any], candidates: Sequence[Sequence[Any]],
                conditions: Sequence[Any] | None = None, rows: Sequence[dict] | None = None) -> list[dict]:
    """K outputs per prompt judged by either kind of judge, one dict per prompt: ``scores`` (one per output:
    a scorer's main value, ``None`` where it has none; a preference judge's :func:`win_rates`) and either
    ``judged`` (a scorer's every named value per output, an LLM judge's text among them) or ``win_matrix``.
    ``conditions`` and ``rows`` are one per prompt."""
    if isinstance(judge, PreferenceJudge):
        return [{"scores": win_rates(m), "win_matrix": m} for m in judge.win_matrices(prompts, candidates, rows, conditions)]
    flat = [(p, k) for p, outs in enumerate(candidates) for k in range(len(outs))]
    judged = judge.judge([prompts[p] for p, _ in flat], [candidates[p][k] for p, k in flat],
                         None if conditions is None else [conditions[p] for p, _ in flat],
                         None if rows is None else [rows[p] for p, _ in flat])
    out = [{"scores": [], "judged": []} for _ in candidates]
    for (p, _), value in zip(flat, judged):
        main = None if value is None else value.get(judge.name)
        out[p]["scores"].append(None if main is None else float(main))
        out[p]["judged"].append(value)
    return out


__all__ = ["RUBRIC", "SCORE_PATTERN", "Annotators", "BradleyTerryJudge", "Failures", "LLMJudge", "Matrix", "NoisyAnnotator",
           "PairwiseClassifier", "PreferenceJudge", "count_votes", "judge_lists", "sigmoid", "vote_shares", "win_rates"]
