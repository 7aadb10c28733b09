"""Evaluation: generate from the base and the aligned model, score both, report win rates and a page."""

from alignsuite.evaluation.results import EvalResults, ScorerResult

__all__ = ["EvalResults", "ScorerResult"]
