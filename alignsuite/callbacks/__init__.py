"""Callbacks: users of the step (export, samples at validation, predictions, preemption). Each is imported when
its name is first used: the sample callbacks of one modality pull in that modality's tools."""

from alignsuite.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "CheckpointOnPreemption": "preemption",
    "ExportError": "export",
    "ExportPretrained": "export",
    "GenerationReward": "reward",
    "ImageGrid": "image_grid",
    "MergeAndReinitLoRA": "lora_merge",
    "Preempted": "preemption",
    "PredictionWriter": "predictions",
    "PreferenceSampler": "preference",
    "SpeechSamples": "speech_samples",
    "ValidationSamples": "samples",
    "ValidationScores": "scores",
    "VisionSamples": "vision_samples",
})

__all__ = [
    "CheckpointOnPreemption", "ExportError", "ExportPretrained", "GenerationReward", "ImageGrid", "MergeAndReinitLoRA",
    "Preempted", "PredictionWriter", "PreferenceSampler", "SpeechSamples", "ValidationSamples", "ValidationScores",
    "VisionSamples",
]
