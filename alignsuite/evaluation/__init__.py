"""Evaluation: generate from the base and the aligned model, score both, report win rates and a page. A scorer's
module is imported when its name is first used (the image scorers need the ``eval`` extra)."""

from alignsuite.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "PromptFileError": "prompts",
    "load_prompts": "prompts",
    "read_prompt_file": "prompts",
    "EvalResults": "results",
    "ScorerResult": "results",
    **{name: "scorers" for name in ("CER", "WER", "Aesthetic", "ClipScore", "HPSv2", "ImplicitRewardAccuracy",
                                    "PickScore", "RewardModel", "Scorer", "ToyReward")},
    "bootstrap_interval": "winrate",
    "outcomes": "winrate",
    "summarise": "winrate",
})

__all__ = [
    "CER", "WER", "Aesthetic", "ClipScore", "EvalResults", "HPSv2", "ImplicitRewardAccuracy", "PickScore",
    "PromptFileError", "RewardModel", "Scorer", "ScorerResult", "ToyReward", "bootstrap_interval", "load_prompts",
    "outcomes", "read_prompt_file", "summarise",
]
