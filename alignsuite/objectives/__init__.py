"""Objectives: pure functions from scores to loss and metrics, reachable by their literature name.

``get_objective("dpo", beta=0.1)`` or, in a recipe, ``class_path: alignsuite.objectives.DPO``.
Importing the modules below registers every objective.
"""

from alignsuite.objectives.base import (
    Objective,
    ObjectiveOutput,
    PairwiseObjective,
    available_objectives,
    get_objective,
)
from alignsuite.objectives.feature_level import FPO
from alignsuite.objectives.denoising import DiffusionKTO, MaPO, SePPO, SmPO
from alignsuite.objectives.listwise import ListMLE, ListObjective
from alignsuite.objectives.multimodal import MDPO, ImageCorruption
from alignsuite.objectives.pairwise import (
    AOT,
    CDPO,
    DPO,
    IPO,
    APODown,
    APOZero,
    AOTUnpaired,
    BCOPair,
    DiscoPOP,
    EXOPair,
    Hinge,
    NCAPair,
    RobustDPO,
    SPPOHard,
)
from alignsuite.objectives.reference_free import CPO, ORPO, SimPO
from alignsuite.objectives.token_level import LDDPO, TDPO1, TDPO2, WPO, SparsePO, SparsePOActivation
from alignsuite.objectives.unpaired import KTO

__all__ = [
    "FPO",
    "SparsePOActivation",
    "SparsePO",
    "WPO",
    "TDPO2",
    "TDPO1",
    "LDDPO",
    "AOT",
    "AOTUnpaired",
    "APODown",
    "APOZero",
    "BCOPair",
    "CDPO",
    "CPO",
    "DPO",
    "DiffusionKTO",
    "DiscoPOP",
    "EXOPair",
    "Hinge",
    "IPO",
    "ImageCorruption",
    "KTO",
    "ListMLE",
    "ListObjective",
    "MDPO",
    "MaPO",
    "NCAPair",
    "ORPO",
    "Objective",
    "ObjectiveOutput",
    "PairwiseObjective",
    "RobustDPO",
    "SPPOHard",
    "SePPO",
    "SimPO",
    "SmPO",
    "available_objectives",
    "get_objective",
]
