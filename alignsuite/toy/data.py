"""A datamodule that generates a toy world's preference data instead of reading files."""

from __future__ import annotations

from alignsuite.data.datamodule import PreferenceDataModule
from alignsuite.data.layouts import ImagePairs, ImageUnpaired, TextPairs, TextUnpaired

# A world declares its modality; the layout follows from it and from ``unpaired``.
_LAYOUTS = {("text", False): TextPairs, ("text", True): TextUnpaired,
            ("image", False): ImagePairs, ("image", True): ImageUnpaired}


def layout_for(modality: str, unpaired: bool, world=None):
    """The layout of a world's rows: the vision-language and speech ones are imported only when a world asks."""
    if modality == "text_to_speech":
        if unpaired:
            raise ValueError("the text-to-speech toy worlds have no unpaired layout")
        from alignsuite.data.layouts.speech import SpeechPairs

        return SpeechPairs(speech=world.speech_kind)
    if getattr(world, "dimensions", ()):  # several preference dimensions: the world names its layout
        if unpaired:
            raise ValueError("a toy world with several preference dimensions has no unpaired layout")
        return world.layout()
    if modality == "vision_language":
        if unpaired:
            raise ValueError("the vision-language toy world has no unpaired layout")
        from alignsuite.data import VisionPairs

        return VisionPairs()
    return _LAYOUTS[modality, bool(unpaired)]()


class ToyPreferenceData(PreferenceDataModule):
    """``num_train``/``num_val`` generated pairs of toy world ``world``, validated like any dataset.

    Args:
        world: the toy world (``llm``: text pairs; ``llm_case``: text pairs judged under two dimensions; ``diffusion``: Pick-a-Pic-style image pairs; ``vlm``:
            RLAIF-V-style image-question pairs; ``tts``/``tts_flow``: INTP rows built from the base model's samples).
        num_train: generated training pairs.
        num_val: generated validation pairs (drawn with another seed).
        unpaired: turn every pair into a desirable and an undesirable row (KTO, Diffusion-KTO).
        batch_size: rows per training batch.
        eval_batch_size: rows per validation batch (default ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the generated rows and of the shuffle.
    """

    def __init__(
        self,
        world: str = "llm",
        num_train: int = 2048,
        num_val: int = 128,
        unpaired: bool = False,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        from alignsuite.toy.worlds import get_world

        toy = get_world(world)
        layout = layout_for(getattr(toy, "modality", "text"), unpaired, toy)
        super().__init__(
            layout=layout, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
        )
        self.world_name = world
        self.num_rows = {"train": num_train, "val": num_val}

    def load_rows(self, split):
        from alignsuite.toy.worlds import get_world

        seed = self.seed if split == "train" else self.seed + 1_000_003  # disjoint draws
        return get_world(self.world_name).make_pairs(self.num_rows[split], seed)
