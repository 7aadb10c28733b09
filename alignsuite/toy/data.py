"""A datamodule that generates a toy world's preference data instead of reading files."""

from __future__ import annotations

from alignsuite.data.datamodule import PreferenceDataModule
from alignsuite.data.layouts import ImageLists, ImagePairs, ImageUnpaired, TextLists, TextPairs, TextUnpaired

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
    if modality == "vision_language":
        if unpaired:
            raise ValueError("the vision-language toy world has no unpaired layout")
        from alignsuite.data import VisionPairs

        return VisionPairs()
    return _LAYOUTS[modality, bool(unpaired)]()


def list_layout(name: str, world, list_size: int, unpaired: bool):
    """The list layout of a world that makes lists of graded answers (``make_lists``)."""
    if unpaired or not hasattr(world, "make_lists"):
        raise ValueError(f"data.list_size: the toy world {name!r} makes no lists" + (" of unpaired rows" if unpaired else "")
                         + "; the llm and diffusion worlds make lists of graded answers (with unpaired: false)")
    if getattr(world, "modality", "text") == "image":
        return ImageLists(list_size=list_size)
    return TextLists(list_size=list_size)


class ToyPreferenceData(PreferenceDataModule):
    """``num_train``/``num_val`` generated pairs of toy world ``world``, validated like any dataset.

    Args:
        world: the toy world (``llm``: text pairs; ``diffusion``: Pick-a-Pic-style image pairs; ``vlm``:
            RLAIF-V-style image-question pairs; ``tts``/``tts_flow``: INTP rows built from the base model's samples).
        num_train: generated training pairs.
        num_val: generated validation pairs (drawn with another seed).
        unpaired: turn every pair into a desirable and an undesirable row (KTO, Diffusion-KTO).
        list_size: generate lists of this many graded answers per prompt instead of pairs (listwise objectives,
            whose ``list_size`` must be the same), for the worlds that make lists (``llm``, ``diffusion``).
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
        list_size: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        from alignsuite.toy.worlds import get_world

        toy = get_world(world)
        if list_size is not None:
            layout = list_layout(world, toy, list_size, unpaired)
        else:
            layout = layout_for(getattr(toy, "modality", "text"), unpaired, toy)
        super().__init__(
            layout=layout, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
        )
        self.world_name = world
        self.num_rows = {"train": num_train, "val": num_val}
        self.list_size = list_size

    def load_rows(self, split):
        from alignsuite.toy.worlds import get_world

        seed = self.seed if split == "train" else self.seed + 1_000_003  # disjoint draws
        world = get_world(self.world_name)
        if self.list_size is not None:
            return world.make_lists(self.num_rows[split], seed, self.list_size)
        return world.make_pairs(self.num_rows[split], seed)
