"""Where one preference-conditioned model (Panacea) lands on a two-reward toy world's plane at several preference
vectors: the world's evaluation prompts (those ``GenerationReward`` scores), answered greedily at each vector and
scored on every reward of the world. The same for any modality: the prompt rows' other columns that condition
generation (a vision-language model's ``images``) go to ``generate`` as the backbone declares them
(``generation_columns``)."""

from __future__ import annotations

import math

from alignsuite.toy.worlds import get_world


def preference_front(world: str, backbone, vectors: list[list[float]], num_prompts: int = 128, seed: int = 1234
                     ) -> list[dict[str, float]]:
    """Both rewards of ``backbone``'s greedy generations on world ``world``'s ``num_prompts`` evaluation prompts,
    once per preference vector: per vector each dimension's mean and its 95% half-interval over the prompts
    (``<dimension>_ci``, normal approximation)."""
    toy = get_world(world)
    items = toy.eval_prompts(num_prompts, seed)
    rows = [item if isinstance(item, dict) else {"prompt": item} for item in items]
    columns = {c: [row.get(c) for row in rows] for c in backbone.generation_columns if any(c in row for row in rows)}
    points = []
    for w in vectors:
        generations = backbone.generate([row["prompt"] for row in rows], preference=w, **columns,
                                        **toy.generation_kwargs)
        point: dict[str, float] = {}
        for d in toy.dimensions:
            values = [toy.rewards(item, g)[d] for item, g in zip(items, generations)]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
            point[d], point[f"{d}_ci"] = mean, 1.96 * math.sqrt(var / len(values))
        points.append(point)
    return points


__all__ = ["preference_front"]
