"""Objectives: pure functions from scores to loss and metrics, reachable by their literature name.

``get_objective("dpo", beta=0.1)`` or, in a recipe, ``class_path: alignsuite.objectives.DPO``.
Importing the modules below registers every objective.
"""

from alignsuite.objectives.adaptive_rejection import ARPO
from alignsuite.objectives.anchored import AOT, AOTUnpaired, APODown, APOZero
from alignsuite.objectives.asymmetric_beta import FlexDPO
from alignsuite.objectives.base import (
    Objective,
    ObjectiveOutput,
    PairwiseObjective,
    available_objectives,
    get_objective,
)
from alignsuite.objectives.denoising import DiffusionKTO, MaPO, SePPO, SmPO
from alignsuite.objectives.feature_level import FPO
from alignsuite.objectives.gold import TPO, TPOL
from alignsuite.objectives.joint import JPO
from alignsuite.objectives.length_normalised import LNDPO, RePO
from alignsuite.objectives.group_robust import GroupRobustDPO
from alignsuite.objectives.listwise import LiPO, ListMLE, ListObjective
from alignsuite.objectives.multi_objective import MODPO
from alignsuite.objectives.multimodal import MDPO, ImageCorruption
from alignsuite.objectives.online import INPO, SPPO, OnlineIPO, SPPOSingle
from alignsuite.objectives.panacea import Panacea
from alignsuite.objectives.pairwise import (
    CDPO,
    DPO,
    IPO,
    BCOPair,
    DiscoPOP,
    EXOPair,
    Hinge,
    NCAPair,
    RobustDPO,
    SPPOHard,
)
from alignsuite.objectives.pointwise import ULMA
from alignsuite.objectives.reference_free import ASFT, CPO, ORPO, SimPO
from alignsuite.objectives.relative import RelativePO
from alignsuite.objectives.reward_informed import MaPPO, RewardAwarePO
from alignsuite.objectives.reward_lists import EXO, NCA, PRO, InfoNCA
from alignsuite.objectives.self_improving import SRPO
from alignsuite.objectives.sequential import SPO
from alignsuite.objectives.robust_em import RECPO, REDPO, REIPO, RESimPO
from alignsuite.objectives.set_contrast import MPO, select_active_subset
from alignsuite.objectives.soft_labels import IREPO, NCAPairReward
from alignsuite.objectives.ties import TODO
from alignsuite.objectives.trees import TPOTree
from alignsuite.objectives.token_level import LDDPO, TDPO1, TDPO2, WPO, SparsePO, SparsePOActivation
from alignsuite.objectives.unpaired import BCO, KTO
from alignsuite.objectives.weak_to_strong import WSPO

__all__ = [
    "ASFT",
    "AOT",
    "AOTUnpaired",
    "APODown",
    "APOZero",
    "ARPO",
    "BCO",
    "BCOPair",
    "CDPO",
    "CPO",
    "DPO",
    "DiffusionKTO",
    "DiscoPOP",
    "EXO",
    "EXOPair",
    "FPO",
    "FlexDPO",
    "GroupRobustDPO",
    "Hinge",
    "INPO",
    "IPO",
    "IREPO",
    "ImageCorruption",
    "InfoNCA",
    "JPO",
    "KTO",
    "LDDPO",
    "LiPO",
    "LNDPO",
    "ListMLE",
    "ListObjective",
    "MDPO",
    "MODPO",
    "SPO",
    "Panacea",
    "MPO",
    "MaPO",
    "NCA",
    "MaPPO",
    "NCAPair",
    "NCAPairReward",
    "ORPO",
    "OnlineIPO",
    "PRO",
    "Objective",
    "ObjectiveOutput",
    "PairwiseObjective",
    "RECPO",
    "REDPO",
    "REIPO",
    "RESimPO",
    "RelativePO",
    "RePO",
    "RewardAwarePO",
    "RobustDPO",
    "SPPO",
    "SPPOHard",
    "SPPOSingle",
    "SRPO",
    "SePPO",
    "SimPO",
    "SmPO",
    "SparsePO",
    "SparsePOActivation",
    "TDPO1",
    "TDPO2",
    "TPO",
    "TPOL",
    "TPOTree",
    "TODO",
    "ULMA",
    "WPO",
    "WSPO",
    "available_objectives",
    "get_objective",
    "select_active_subset",
]
