"""Preference data: loading (`load_table`), one layout class per kind of row (`TextPairs`,
`DimensionPairs`, `TextUnpaired`, `ImagePairs`, `ImageDimensionPairs`, `ImageUnpaired`, `VisionPairs`, `VisionDimensionPairs`,
`SpeechPairs`, `SpeechDimensionPairs`; K graded responses per prompt:
`TextLists`, `ImageLists`, `SpeechLists`; the paths of preference trees: `TextTrees`; in `layouts/`; audio in `audio`), the row normalisation they use
(`normalize_pair`, `normalize_unpaired`; for images `normalize_image_pair`, `normalize_image_unpaired`)
and the Lightning data module that batches it (`PreferenceDataModule`), which declares what the suite reads
from a data module (`PreferenceData`)."""

from alignsuite.data.audio import Audio, decode_audio, write_wav
from alignsuite.data.datamodule import EpochRandomSampler, PreferenceDataModule
from alignsuite.data.errors import DataError
from alignsuite.data.images import (
    ImageFields,
    decode_image,
    image_pairs_to_unpaired,
    normalize_image_pair,
    normalize_image_unpaired,
    to_tensor,
)
from alignsuite.data.layouts import (
    DimensionPairs, ImageDimensionPairs, ImageLists, ImagePairs, ImageUnpaired, Layout, ListLayout, SpeechDimensionPairs,
    SpeechLists, SpeechPairs, TextLists, TextPairs,
    TextTrees, TextUnpaired, VisionDimensionPairs, VisionPairs,
)
from alignsuite.data.loading import load_table
from alignsuite.data.fields import PairFields, UnpairedFields
from alignsuite.data.preference import normalize_pair, normalize_unpaired, pairs_to_unpaired
from alignsuite.data.protocol import PreferenceData, preference_data

__all__ = [
    "Audio",
    "DataError",
    "DimensionPairs",
    "EpochRandomSampler",
    "ImageDimensionPairs",
    "ImageFields",
    "ImageLists",
    "ImagePairs",
    "ImageUnpaired",
    "Layout",
    "ListLayout",
    "PairFields",
    "PreferenceData",
    "PreferenceDataModule",
    "SpeechDimensionPairs",
    "SpeechLists",
    "SpeechPairs",
    "TextLists",
    "TextPairs",
    "TextTrees",
    "TextUnpaired",
    "UnpairedFields",
    "VisionDimensionPairs",
    "VisionPairs",
    "decode_audio",
    "decode_image",
    "image_pairs_to_unpaired",
    "load_table",
    "normalize_image_pair",
    "normalize_image_unpaired",
    "normalize_pair",
    "normalize_unpaired",
    "pairs_to_unpaired",
    "preference_data",
    "to_tensor",
    "write_wav",
]
