"""Data procedures: transforms a recipe names under ``data.init_args.procedures``, run on a split's rows after
they are read and before the layout makes them canonical, their output stored once in the cache keyed by
their inputs (``run.py``).

Each is a `Procedure` (``base.py``): ``SelectiveDPO`` and ``AIRPairs`` keep some rows (``selection.py``),
``RewardAugmented`` relabels pairs with a target score (``relabel.py``), ``DirectionalPairs`` (DPA) and
``ControllablePairs`` (CPO) condition pairs on a drawn preference written into the prompt by a
``PromptCondition`` (``conditioned.py``, ``condition.py``), ``GroupPairs`` labels each pair by one group of
annotators' rule (``groups.py``), ``MixtureGroups`` finds groups of annotators by EM over a mixture of reward
models (``mixture.py``), ``SweetSpotPairs``,
``RejectionSampling`` and ``CurryPairs`` turn rows of K scored responses into pairs (``pairs.py``), and
``CuratronPairs`` completes pairwise comparisons through a fitted ranking (``completion.py``), and the build rules
of judged samples ``BestWorstPairs``, ``MarginPairs``, ``WinRatePairs``, ``SoftLabelPairs`` and
``EmpiricalPreferencePairs`` make pairs and soft labels from rows of K judged responses (``online.py``), and
``FlipPairs`` swaps a seeded fraction of the pairs to simulate label noise (``noise.py``).
"""

from alignsuite.data.procedures.base import ListProcedure, Procedure, Report
from alignsuite.data.procedures.completion import CuratronPairs, btl_scores
from alignsuite.data.procedures.condition import PromptCondition
from alignsuite.data.procedures.conditioned import ConditionedPairs, ControllablePairs, DirectionalPairs
from alignsuite.data.procedures.groups import GroupPairs
from alignsuite.data.procedures.judgements import count_votes
from alignsuite.data.procedures.mixture import MixtureGroups
from alignsuite.data.procedures.online import (
    TIE,
    BestWorstPairs,
    EmpiricalPreferencePairs,
    MarginPairs,
    SoftLabelPairs,
    WinRatePairs,
)
from alignsuite.data.procedures.noise import FlipPairs
from alignsuite.data.procedures.pairs import CurryPairs, RejectionSampling, SweetSpotPairs
from alignsuite.data.procedures.relabel import RewardAugmented
from alignsuite.data.procedures.run import run_procedures
from alignsuite.data.procedures.selection import AIRPairs, DifficultyScorer, SelectiveDPO

__all__ = [
    "TIE",
    "AIRPairs",
    "BestWorstPairs",
    "ConditionedPairs",
    "ControllablePairs",
    "CuratronPairs",
    "CurryPairs",
    "DifficultyScorer",
    "DirectionalPairs",
    "EmpiricalPreferencePairs",
    "GroupPairs",
    "FlipPairs",
    "ListProcedure",
    "MarginPairs",
    "MixtureGroups",
    "Procedure",
    "PromptCondition",
    "RejectionSampling",
    "Report",
    "RewardAugmented",
    "SelectiveDPO",
    "SoftLabelPairs",
    "SweetSpotPairs",
    "WinRatePairs",
    "btl_scores",
    "count_votes",
    "run_procedures",
]
