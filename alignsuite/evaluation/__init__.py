"""Evaluation: generate from the base and the aligned model, score both, report win rates and a page."""

from alignsuite.evaluation.prompts import PromptFileError, load_prompts, read_prompt_file
from alignsuite.evaluation.results import EvalResults, ScorerResult
from alignsuite.evaluation.scorers import (
    CER, WER, Aesthetic, ClipScore, HPSv2, ImplicitRewardAccuracy, PickScore, RewardModel, Scorer, ToyReward,
)
from alignsuite.evaluation.winrate import bootstrap_interval, outcomes, summarise

__all__ = [
    "CER", "WER", "Aesthetic", "ClipScore", "EvalResults", "HPSv2", "ImplicitRewardAccuracy", "PickScore",
    "PromptFileError", "RewardModel", "Scorer", "ScorerResult", "ToyReward", "bootstrap_interval", "load_prompts",
    "outcomes", "read_prompt_file", "summarise",
]
