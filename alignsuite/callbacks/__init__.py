from alignsuite.callbacks.checkpoint_io import AtomicCheckpointIO, CheckpointError, last_checkpoint_note
from alignsuite.callbacks.export import ExportError, ExportPretrained
from alignsuite.callbacks.image_grid import ImageGrid
from alignsuite.callbacks.predictions import PredictionWriter
from alignsuite.callbacks.reward import GenerationReward

__all__ = [
    "AtomicCheckpointIO", "CheckpointError", "ExportError", "ExportPretrained", "GenerationReward", "ImageGrid",
    "PredictionWriter", "last_checkpoint_note",
]
