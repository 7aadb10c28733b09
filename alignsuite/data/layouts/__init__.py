"""Data layouts: one small class per kind of preference row, chosen by ``class_path`` in a recipe."""

from alignsuite.data.layouts.base import Layout
from alignsuite.data.layouts.dimensions import DimensionPairs, SpeechDimensionPairs
from alignsuite.data.layouts.image_lists import ImageLists
from alignsuite.data.layouts.images import ImageDimensionPairs, ImagePairs, ImageUnpaired
from alignsuite.data.layouts.lists import ListLayout, TextLists
from alignsuite.data.layouts.speech import SpeechPairs
from alignsuite.data.layouts.speech_lists import SpeechLists
from alignsuite.data.layouts.text import TextPairs, TextUnpaired
from alignsuite.data.layouts.trees import TextTrees
from alignsuite.data.layouts.vision import VisionDimensionPairs, VisionPairs

__all__ = [
    "DimensionPairs", "ImageDimensionPairs", "ImageLists", "ImagePairs", "ImageUnpaired", "Layout", "ListLayout",
    "SpeechDimensionPairs", "SpeechLists", "SpeechPairs", "TextLists", "TextPairs", "TextTrees", "TextUnpaired",
    "VisionDimensionPairs", "VisionPairs",
]
