"""Pairs conditioned on a preference drawn per row: the condition goes into the prompt and labels the pair.

Rows hold a prompt, two answers and, per preference dimension, a label (the index of the preferred answer) or a
score per answer: the rows `alignsuite.data.DimensionPairs` reads. For each row a procedure draws a condition
``c`` (one value per dimension), writes it into the prompt with a `PromptCondition`, and orders the two answers
by a value ``V(r(y), c)`` of their reward vectors: the answer with the higher value is ``chosen``. Plain ``dpo``
then trains one model for every condition; at evaluation ``evaluate.preference_prompt`` writes each swept
preference vector into the prompts the same way. A label dimension counts as reward 1 for the answer it prefers
and 0 for the other.

``DirectionalPairs`` (DPA) draws a direction and values ``v . r``; ``ControllablePairs`` (CPO's CDPO) draws
target levels and values the closeness to them.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import Procedure, Report, Row, as_score, carry, get_field, origin, where
from alignsuite.data.procedures.condition import PromptCondition

TIE = 1e-9  # values closer than this are a tie under the condition: the row teaches nothing there


def answer_rewards(row: Row, dimensions: dict[str, str | list[str]]) -> tuple[dict[str, float], dict[str, float]]:
    """Each of a row's two answers' reward per dimension, from ``{dimension: label column}`` (1 for the answer the
    label prefers, 0 for the other) or ``{dimension: [score column of answer 0, of answer 1]}``; a bad label or score
    is an error naming the file, row and field."""
    source, index = origin(row)
    r0, r1 = {}, {}
    for d, fields in dimensions.items():
        if isinstance(fields, str):
            label = get_field(row, fields, f"the label of dimension {d!r} (0 or 1, the preferred answer)")
            if isinstance(label, bool) or label not in (0, 1):
                raise DataError(source, index, fields, f"the label of dimension {d!r}: 0 or 1", label)
            r0[d], r1[d] = float(label == 0), float(label == 1)
        else:
            for r, f in zip((r0, r1), fields):
                score = as_score(get_field(row, f, f"a score of dimension {d!r} (a number)"))
                if score is None:
                    raise DataError(source, index, f, f"a finite score of dimension {d!r}", row[f])
                r[d] = score
    return r0, r1


class ConditionedPairs(Procedure):
    """Base of the procedures that condition a pair row on a drawn preference (subclasses: `draw`, `value`).

    Output rows: ``prompt`` (conditioned), ``chosen``, ``rejected``, the row's other columns, and
    ``condition_<d>`` per dimension (the drawn value). Draws are seeded by ``seed`` and the row's file and
    index, so they are the same on every run and machine.

    Args:
        dimensions: ``{dimension: label column}`` or ``{dimension: [score column of response 0, of response 1]}``
            (as `DimensionPairs`).
        condition: how the drawn condition is written into the prompt (`PromptCondition`).
        responses: the two answer columns.
        prompt_field: the prompt column (text or chat messages).
        per_pair: conditions drawn per row, each making its own output row.
        seed: seed of the draws.
        splits: the splits it runs on (the training rows by default).
    """

    def __init__(self, dimensions: dict[str, str | list[str]], condition: PromptCondition,
                 responses: tuple[str, str] | list[str] = ("response_0", "response_1"), prompt_field: str = "prompt",
                 per_pair: int = 1, seed: int = 0, splits: tuple[str, ...] | list[str] = ("train",)) -> None:
        super().__init__(splits)
        name = type(self).__name__
        if not dimensions:
            raise ValueError(f"{name}.dimensions: name at least one dimension ({{name: label column}} or"
                             " {name: [score column of response 0, of response 1]})")
        for d, fields in dimensions.items():
            if not isinstance(fields, str) and (len(fields) != 2 or not all(isinstance(f, str) for f in fields)):
                raise ValueError(f"{name}.dimensions: {d!r} takes a label column or two score columns, got {fields!r}")
        if len(responses) != 2:
            raise ValueError(f"{name}.responses names two answer columns, got {list(responses)}")
        if per_pair < 1:
            raise ValueError(f"{name}.per_pair must be at least 1, got {per_pair}")
        if isinstance(condition, dict):
            condition = PromptCondition(**condition)
        self.dimensions = {d: f if isinstance(f, str) else list(f) for d, f in dimensions.items()}
        condition.check(self.condition_dimensions(), f"{name}.condition")
        self.condition, self.responses, self.prompt_field = condition, tuple(responses), prompt_field
        self.per_pair, self.seed = per_pair, seed
        self.extra_columns = tuple(f"condition_{d}" for d in self.condition_dimensions())

    def rewards(self, row: Row) -> tuple[dict[str, float], dict[str, float]]:
        """Each answer's reward per dimension (a label: 1 for the preferred answer, 0 for the other)."""
        return answer_rewards(row, self.dimensions)

    def condition_dimensions(self) -> tuple[str, ...]:
        """The dimensions a condition states (written into the prompt, a ``condition_<d>`` column each)."""
        return tuple(self.dimensions)

    def draw(self, rng: random.Random, rewards: tuple[dict[str, float], dict[str, float]] = ()) -> dict[str, float]:
        """A condition for a row whose answers have ``rewards``."""
        raise NotImplementedError

    def value(self, reward: dict[str, float], condition: dict[str, float]) -> float:
        raise NotImplementedError

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        out = []
        for row in rows:
            answers = [get_field(row, f, "an answer") for f in self.responses]
            prompt = get_field(row, self.prompt_field, "a prompt (text or chat messages)")
            rewards = self.rewards(row)
            rng = random.Random(f"{self.seed}-{where(row)}")
            for _ in range(self.per_pair):
                condition = self.draw(rng, rewards)
                v0, v1 = (self.value(r, condition) for r in rewards)
                if abs(v0 - v1) <= TIE:
                    report.drop(row, "the two answers tie under the drawn condition")
                    continue
                first = 0 if v0 > v1 else 1
                report.count("conditions drawn")
                out.append(carry(row, (*self.responses, self.prompt_field),
                                 prompt=self.condition.apply(prompt, condition, *origin(row), self.prompt_field),
                                 chosen=answers[first], rejected=answers[1 - first],
                                 **{f"condition_{d}": condition[d] for d in condition}))
        return out


class DirectionalPairs(ConditionedPairs):
    """Directional preference alignment (DPA; Wang et al. 2024, arXiv 2402.18571): the preference is a unit
    vector ``v`` in reward space and an answer's value is ``v . r(y)``.

    Each row draws ``v`` uniformly on the unit sphere's positive orthant (for two dimensions: the angle uniform
    in [0, 90 degrees]), or from ``directions`` when given, and the answer with the higher ``v . r`` is chosen.
    The condition is handed to the template as ``v`` (``normalise: sum`` writes it as weights summing to 1, the
    form ``evaluate`` sweeps; ``unit``: DPA's own). Convention: the paper trains by rejection sampling (generate
    N answers under the direction, keep the best by ``v . r``, fine-tune on it, three rounds); here the same
    conditioning and labelling make offline pairs for ``dpo``, the loop left out.

    Args:
        directions: the directions to draw from (each non-negative, not all zero; rescaled to unit length);
            null: uniform on the positive orthant.
        (the rest: `ConditionedPairs`)
    """

    def __init__(self, dimensions: dict[str, str | list[str]], condition: PromptCondition,
                 directions: list[list[float]] | None = None,
                 responses: tuple[str, str] | list[str] = ("response_0", "response_1"), prompt_field: str = "prompt",
                 per_pair: int = 1, seed: int = 0, splits: tuple[str, ...] | list[str] = ("train",)) -> None:
        super().__init__(dimensions, condition, responses, prompt_field, per_pair, seed, splits)
        if self.condition.normalise is None:
            raise ValueError("DirectionalPairs.condition.normalise: set 'sum' (the weights evaluate sweeps) or"
                             " 'unit' (DPA's form), so that the text names the direction whatever its length")
        for i, v in enumerate(directions or []):
            if len(v) != len(dimensions) or any(x < 0 for x in v) or not any(x > 0 for x in v):
                raise ValueError(f"DirectionalPairs.directions[{i}] = {v}: {len(dimensions)} non-negative values,"
                                 " not all zero (one per dimension)")
        self.directions = [list(map(float, v)) for v in directions] if directions else None

    def draw(self, rng: random.Random, rewards: tuple[dict[str, float], dict[str, float]] = ()) -> dict[str, float]:
        v = rng.choice(self.directions) if self.directions else [abs(rng.gauss(0.0, 1.0)) for _ in self.dimensions]
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return {d: x / norm for d, x in zip(self.dimensions, v)}

    def value(self, reward: dict[str, float], condition: dict[str, float]) -> float:
        return sum(condition[d] * reward[d] for d in self.dimensions)


class ControllablePairs(ConditionedPairs):
    """Controllable preference optimisation's CDPO (Guo et al. 2024, arXiv 2402.19085): the condition states a
    target level for each stated dimension, and an answer's value rewards closeness to the stated targets and the
    level of every unstated dimension,

        ``V(y) = -sum_{d stated} |r_d(y) - c_d| + sum_{d in unstated} r_d(y)``;

    DPO then trains on the conditioned pairs. Only the stated dimensions are written into the prompt (and get a
    ``condition_<d>`` column).

    Where the targets come from (``targets_from``): ``levels`` draws each stated dimension's target uniformly from
    ``targets``; ``answers`` takes them from one of the row's answers, drawn uniformly, as the official data
    preparation does (``OpenBMB/CPO``, ``src/CDPO/data_preparation/data_dpo_ultrafeedback.py``: the condition is
    the ratings of a response of the same prompt, so every condition is one some answer meets; there, over
    UltraFeedback's four responses, here over the pair's two).

    Convention: the value follows the paper's and the official code's intent, closeness ``-|r - c|`` for a stated
    dimension and the rating itself for an unstated one, weights 1 (the official code's). Where the official code
    departs from it this follows the intent: its honesty term is written ``-abs(r) - c`` (so it prefers the lower
    rating whatever the target), and its ``enabled and -abs(r - c) or r`` idiom gives an exact match the rating
    itself instead of 0 (so ties between exact matches are broken by the rating). Its first stage, CPSFT
    (fine-tuning on answers whose scores match the condition), is not part of this procedure.

    Args:
        targets: the levels a target is drawn from with ``targets_from: levels`` (uniformly, per dimension).
        unstated: dimensions left out of the condition, whose reward is maximised (the official code's disabled
            conditions); at least one dimension must stay stated.
        targets_from: ``levels`` or ``answers`` (above).
        (the rest: `ConditionedPairs`)
    """

    def __init__(self, dimensions: dict[str, str | list[str]], condition: PromptCondition,
                 targets: list[float] = (0.0, 0.25, 0.5, 0.75, 1.0), unstated: list[str] = (),
                 targets_from: Literal["levels", "answers"] = "levels",
                 responses: tuple[str, str] | list[str] = ("response_0", "response_1"), prompt_field: str = "prompt",
                 per_pair: int = 1, seed: int = 0, splits: tuple[str, ...] | list[str] = ("train",)) -> None:
        unstated = list(unstated)
        unknown = [d for d in unstated if d not in dimensions]
        if unknown or len(unstated) >= len(dimensions):
            raise ValueError(f"ControllablePairs.unstated = {unstated}: dimensions of {list(dimensions)}, leaving at"
                             " least one stated")
        if targets_from not in ("levels", "answers"):
            raise ValueError(f"ControllablePairs.targets_from: 'levels' or 'answers', got {targets_from!r}")
        self.unstated = unstated  # before the base reads condition_dimensions()
        super().__init__(dimensions, condition, responses, prompt_field, per_pair, seed, splits)
        if len(targets) < 1:
            raise ValueError("ControllablePairs.targets: give at least one level")
        self.targets, self.targets_from = [float(t) for t in targets], targets_from

    @property
    def stated(self) -> list[str]:
        return [d for d in self.dimensions if d not in self.unstated]

    def condition_dimensions(self) -> tuple[str, ...]:
        return tuple(self.stated)

    def draw(self, rng: random.Random, rewards: tuple[dict[str, float], dict[str, float]] = ()) -> dict[str, float]:
        if self.targets_from == "answers":
            answer = rewards[rng.randrange(len(rewards))]
            return {d: answer[d] for d in self.stated}
        return {d: rng.choice(self.targets) for d in self.stated}

    def value(self, reward: dict[str, float], condition: dict[str, float]) -> float:
        return -sum(abs(reward[d] - condition[d]) for d in self.stated) + sum(reward[d] for d in self.unstated)


__all__ = ["ConditionedPairs", "answer_rewards", "ControllablePairs", "DirectionalPairs"]
