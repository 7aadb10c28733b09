"""Scorers: what an evaluation measures each generation with, one small class each behind one interface
(:class:`alignsuite.judging.Scorer`), here under the names recipes give them (``evaluate.scorers``,
``ValidationScores.scorers``: ``alignsuite.evaluation.scorers.PickScore`` ...).

A scorer turns prompts and the outputs generated for them into named values per prompt, its main one in the
unit papers report (PickScore x100, HPSv2 x100, aesthetic 1-10, WER as a fraction). ``modalities`` lists the
backbones' modalities a scorer fits (``text``, ``vision_language``, ``text_to_image``, ``text_to_speech``);
``evaluate`` refuses the others at start. They live by job:

- :mod:`alignsuite.evaluation.image_scorers`: CLIP score, PickScore, HPSv2, LAION aesthetic;
- :mod:`alignsuite.evaluation.text_scorers`: WER, CER, reward models, the toy worlds' rewards;
- :mod:`alignsuite.evaluation.heldout`: the held-out implicit-reward accuracy (pairs, not generations).

A user adds their own by subclassing :class:`Scorer` and naming it by ``class_path`` in ``evaluate.scorers``.
"""

from alignsuite.evaluation.heldout import ImplicitRewardAccuracy
from alignsuite.evaluation.image_scorers import Aesthetic, AestheticMLP, ClipScore, HPSv2, PickScore, as_rgb
from alignsuite.evaluation.text_scorers import CER, WER, RewardModel, ToyReward
from alignsuite.judging import MissingWeightsError, Score, Scorer, check_weights, load_pretrained, prompt_text

__all__ = [
    "CER", "WER", "Aesthetic", "AestheticMLP", "ClipScore", "HPSv2", "ImplicitRewardAccuracy", "MissingWeightsError",
    "PickScore", "RewardModel", "Score", "Scorer", "ToyReward", "as_rgb", "check_weights", "load_pretrained",
    "prompt_text",
]
