"""The online loop (``python -m alignsuite iterate``): generate from the current policy, judge, build, fit,
round after round, resumable at every step (:mod:`alignsuite.iterate.loop`)."""

from alignsuite.iterate.engines import GenerationEngine, VLLMEngine
from alignsuite.iterate.settings import Iterate, IterateError

__all__ = ["GenerationEngine", "Iterate", "IterateError", "VLLMEngine"]
