from alignsuite.callbacks.export import ExportError, ExportPretrained
from alignsuite.callbacks.image_grid import ImageGrid
from alignsuite.callbacks.predictions import PredictionWriter
from alignsuite.callbacks.preemption import CheckpointOnPreemption, Preempted
from alignsuite.callbacks.reward import GenerationReward
from alignsuite.callbacks.samples import ValidationSamples
from alignsuite.callbacks.scores import ValidationScores
from alignsuite.callbacks.speech_samples import SpeechSamples
from alignsuite.callbacks.vision_samples import VisionSamples

__all__ = [
    "CheckpointOnPreemption", "ExportError", "ExportPretrained", "GenerationReward", "ImageGrid", "Preempted",
    "PredictionWriter", "SpeechSamples", "ValidationSamples", "ValidationScores", "VisionSamples",
]
