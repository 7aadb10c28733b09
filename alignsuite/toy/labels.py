"""The annotator of the two-reward toy worlds: a Bradley-Terry draw on one reward's gap, right 3 times in 4 on a unit
gap, so that their labels are noisy (with labels that always follow one reward, a weighted objective would be pulled
towards it at every weight)."""

from __future__ import annotations

import math
import random

LABEL_SCALE = math.log(3.0)  # p(the response a unit reward gap favours is preferred) = 3/4


def bradley_terry_label(gap: float, rng: random.Random) -> int:
    """The index (0 or 1) of the response the annotator prefers, ``gap`` being reward 0 less reward 1: 0 with
    probability ``s(LABEL_SCALE * gap)``, one draw from ``rng``."""
    return 0 if rng.random() < 1 / (1 + math.exp(-LABEL_SCALE * gap)) else 1


__all__ = ["LABEL_SCALE", "bradley_terry_label"]
