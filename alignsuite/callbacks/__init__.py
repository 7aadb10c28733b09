from alignsuite.callbacks.checkpoint_io import AtomicCheckpointIO
from alignsuite.callbacks.export import ExportPretrained
from alignsuite.callbacks.image_grid import ImageGrid
from alignsuite.callbacks.reward import GenerationReward

__all__ = ["AtomicCheckpointIO", "ExportPretrained", "ImageGrid", "GenerationReward"]
