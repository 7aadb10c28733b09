"""Several annotators voting on K outputs (iREPO's AI annotators): the K x K vote counts, and the win matrix of
their shares. :class:`NoisyAnnotator` makes disagreeing annotators of one scorer, to simulate them."""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any, Sequence

from alignsuite.components import build_object
from alignsuite.data.procedures.judgements import count_votes, failed
from alignsuite.judges.preference import NAN, Matrix, PreferenceJudge, nan_rows
from alignsuite.judging import Scorer, prompt_text


def vote_shares(votes: Matrix) -> Matrix:
    """The win matrix of a vote count matrix: ``P_ij = votes_ij / (votes_ij + votes_ji)``, 1/2 on the diagonal
    and where no annotator compared the two."""
    k = len(votes)
    return [[0.5 if i == j or votes[i][j] + votes[j][i] == 0 else votes[i][j] / (votes[i][j] + votes[j][i])
             for j in range(k)] for i in range(k)]


class Annotators(PreferenceJudge):
    """Each of several scorers votes on every pair of a prompt's outputs by its main value (higher wins; an error
    rate: lower wins): the win matrix is the share of votes, ``P_ij = votes_ij / (votes_ij + votes_ji)``, and the
    counts themselves are kept (:attr:`last_votes`; the loop writes them as the lists' ``votes`` column, which
    :class:`alignsuite.data.procedures.EmpiricalPreferencePairs` reads: iREPO's empirical preference).

    An output no annotator could score is NaN in its row and column, and counted; one that some annotators
    scored gets the votes of those.

    Args:
        annotators: the scorers (or their ``class_path``/``init_args``), two or more.
        name: the judge's name in logs and reports.
    """

    gives_votes = True

    def __init__(self, annotators: Sequence[Scorer | dict | str], name: str = "annotators") -> None:
        super().__init__()
        built = [build_object(a) for a in annotators]
        bad = [type(a).__name__ for a in built if not isinstance(a, Scorer)]
        if bad or len(built) < 2:
            raise ValueError(f"Annotators.annotators: expected two or more alignsuite.judging.Scorer, got {len(built)}"
                             + (f" ({', '.join(bad)} not scorers)" if bad else ""))
        self.annotators, self.name = built, name
        kinds = [set(a.modalities) for a in built if a.modalities]
        self.modalities = tuple(sorted(set.intersection(*kinds))) if kinds else ()
        self.batch_size = min(a.batch_size for a in built)
        self.last_votes: list[Matrix] = []

    def columns(self, modality: str) -> dict[str, str]:
        return {k: v for a in self.annotators for k, v in a.columns(modality).items()}

    def matrices(self, prompts, candidates, rows, conditions):
        flat = [(p, k) for p, outs in enumerate(candidates) for k in range(len(outs))]
        args = ([prompts[p] for p, _ in flat], [candidates[p][k] for p, k in flat],
                None if conditions is None else [conditions[p] for p, _ in flat],
                None if rows is None else [rows[p] for p, _ in flat])
        signed = []
        for annotator in self.annotators:
            sign = 1.0 if annotator.higher_is_better else -1.0
            signed.append([None if failed(v) else sign * float(v) for v in annotator.score(*args)])
        self.last_votes, out, at = [], [], 0
        for outs in candidates:
            scores = [values[at : at + len(outs)] for values in signed]
            at += len(outs)
            votes = count_votes(scores)
            unscored = [k for k in range(len(outs)) if all(s[k] is None for s in scores)]
            self.last_votes.append([[NAN if i in unscored or j in unscored else v for j, v in enumerate(line)]
                                    for i, line in enumerate(votes)])
            out.append(nan_rows(vote_shares(votes), unscored))
        return out


class NoisyAnnotator(Scorer):
    """A scorer's main value plus Gaussian noise of standard deviation ``noise``, drawn from a generator seeded by
    ``seed``, the prompt and the output: the same annotator gives the same output the same score every time, and
    annotators of different seeds disagree where outputs score within about ``noise`` of each other (simulated
    annotators for iREPO's votes on a toy world). The draw reads the output's text (or its JSON), so it repeats for
    text and token outputs, not for images.

    Args:
        scorer: the scorer whose main value is noised.
        noise: the noise's standard deviation (>= 0).
        seed: this annotator's seed.
    """

    def __init__(self, scorer: Scorer | dict | str, noise: float = 0.1, seed: int = 0) -> None:
        scorer = build_object(scorer)
        if not isinstance(scorer, Scorer):
            raise ValueError(f"NoisyAnnotator.scorer must be an alignsuite.judging.Scorer, got {type(scorer).__name__}")
        if not (noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"NoisyAnnotator.noise must be a number >= 0, got {noise!r}")
        self.scorer, self.noise, self.seed = scorer, float(noise), int(seed)
        self.name, self.unit, self.higher_is_better = f"{scorer.name}_noisy_{seed}", scorer.unit, scorer.higher_is_better
        self.modalities, self.batch_size, self.rewrites = tuple(scorer.modalities), scorer.batch_size, scorer.rewrites

    def columns(self, modality: str) -> dict[str, str]:
        return self.scorer.columns(modality)

    def score_batch(self, prompts, outputs, conditions, rows):
        values = self.scorer.score(prompts, outputs, conditions, rows)
        return [None if failed(v) else float(v) + self.noise * self.draw(p, o) for p, o, v in zip(prompts, outputs, values)]

    def draw(self, prompt: Any, output: Any) -> float:
        text = output if isinstance(output, str) else json.dumps(output, sort_keys=True, default=str)
        key = f"{self.seed}\x00{prompt_text(prompt)}\x00{text}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big")).gauss(0.0, 1.0)


__all__ = ["Annotators", "NoisyAnnotator", "count_votes", "vote_shares"]
