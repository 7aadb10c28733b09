"""Preference data: loading (`load_table`), row normalisation (`normalize_pair`,
`normalize_unpaired`) and the Lightning data module that batches it (`PreferenceDataModule`)."""

from alignsuite.data.datamodule import PreferenceDataModule
from alignsuite.data.errors import DataError
from alignsuite.data.loading import load_table
from alignsuite.data.preference import (
    PairFields,
    UnpairedFields,
    normalize_pair,
    normalize_unpaired,
    pairs_to_unpaired,
)

__all__ = [
    "DataError",
    "PairFields",
    "PreferenceDataModule",
    "UnpairedFields",
    "load_table",
    "normalize_pair",
    "normalize_unpaired",
    "pairs_to_unpaired",
]
