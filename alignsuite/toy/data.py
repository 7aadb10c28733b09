"""A datamodule that generates a toy world's preference data instead of reading files."""

from __future__ import annotations

from alignsuite.data.datamodule import PreferenceDataModule
from alignsuite.data.layouts import Layout, ImageLists, ImagePairs, ImageUnpaired, TextLists, TextPairs, TextTrees, TextUnpaired
from alignsuite.data.procedures import Procedure

# A world declares its modality; the layout follows from it and from ``unpaired``.
_LAYOUTS = {("text", False): TextPairs, ("text", True): TextUnpaired,
            ("image", False): ImagePairs, ("image", True): ImageUnpaired}


def layout_for(modality: str, unpaired: bool, world=None):
    """The layout of a world's rows: the vision-language and speech ones are imported only when a world asks."""
    if getattr(world, "dimensions", ()):  # several preference dimensions: the world names its layout
        if unpaired:
            raise ValueError("a toy world with several preference dimensions has no unpaired layout")
        return world.layout()
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
        world: the toy world (``llm``: text pairs; ``llm_case``: text pairs judged under two dimensions; ``diffusion``: Pick-a-Pic-style image pairs; ``diffusion_colours``: the same judged under two dimensions; ``vlm``:
            RLAIF-V-style image-question pairs; ``vlm_prior``: the same judged under two dimensions; ``tts``/``tts_flow``: INTP rows built from the base model's samples; ``tts_pace``: a careful
            and a rushed reading of a text judged under two dimensions).
        num_train: generated training pairs.
        num_val: generated validation pairs (drawn with another seed).
        unpaired: turn every pair into a desirable and an undesirable row (KTO, Diffusion-KTO).
        list_size: generate lists of this many graded answers per prompt instead of pairs (listwise objectives,
            whose ``list_size`` must be the same), for the worlds that make lists (``llm``, ``diffusion``).
        batch_size: rows per training batch.
        eval_batch_size: rows per validation batch (default ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the generated rows and of the shuffle.
        procedures: data procedures run on the generated rows (`alignsuite.data.procedures`), as for a file's.
        shuffle: shuffle the training rows; null: unless a procedure sets their order.
        stages: train in stages, as the data module's ``stages`` (a stage column, a number of equal chunks of the
            generated rows: sDPO's split).
        ties: the language world only: the fraction of generated rows that are tied pairs (a ``tie`` flag on every
            row); they are dropped (counted) unless ``tie_column``.
        tie_column: keep the tied rows, with a ``tie`` column, for an objective that reads ties (``todo``).
        layout: read the procedures' output with this layout instead of the world's (``TextPairs`` after a
            procedure that turns ``llm_case``'s rows of two judged answers into conditioned pairs).
        trees: the language world only, with ``list_size``: each list is the paths of a preference tree, written
            in steps that branch from the best path, with their ``step_starts`` (`alignsuite.data.TextTrees`).
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
        procedures: list[Procedure] | None = None,
        shuffle: bool | None = None,
        stages: str | int | None = None,
        ties: float = 0.0,
        tie_column: bool = False,
        layout: Layout | None = None,
        trees: bool = False,
    ) -> None:
        from alignsuite.toy.worlds import get_world

        toy = get_world(world)
        if not 0 <= ties < 1:
            raise ValueError(f"data.ties must be in [0, 1), got {ties}")
        if (ties or tie_column) and (world != "llm" or unpaired):
            raise ValueError("data.ties and data.tie_column: only the language world (llm) has tied pairs")
        if tie_column and not ties:
            raise ValueError("data.tie_column keeps tied rows, and data.ties is 0: set data.ties to generate some")
        if (ties or tie_column) and list_size is not None:
            raise ValueError("data.ties and data.list_size: tied rows are pairs; lists carry their grades instead")
        if trees and (world != "llm" or list_size is None or unpaired):
            raise ValueError("data.trees: only the language world (llm) makes preference trees, as lists: set"
                             " data.list_size (and unpaired: false)")
        if layout is not None:
            if not procedures:
                raise ValueError("data.layout: the generated rows are in the world's own layout; another layout"
                                 " reads what data.procedures make of them, and none is given")
        elif trees:
            layout = TextTrees(list_size=list_size)
        elif list_size is not None:
            layout = list_layout(world, toy, list_size, unpaired)
        elif ties:
            layout = TextPairs(tie_field="tie", tie_column=tie_column)
        else:
            layout = layout_for(getattr(toy, "modality", "text"), unpaired, toy)
        super().__init__(
            layout=layout, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
            procedures=procedures, shuffle=shuffle, stages=stages,
        )
        self.world_name = world
        self.num_rows = {"train": num_train, "val": num_val}
        self.ties, self.tie_column = ties, tie_column
        self.list_size, self.trees = list_size, trees

    def load_rows(self, split):
        from alignsuite.toy.worlds import get_world

        seed = self.seed if split == "train" else self.seed + 1_000_003  # disjoint draws
        world = get_world(self.world_name)
        if self.trees:
            return world.make_trees(self.num_rows[split], seed, self.list_size)
        if self.list_size is not None:
            return world.make_lists(self.num_rows[split], seed, self.list_size)
        if self.ties:
            return world.make_pairs(self.num_rows[split], seed, ties=self.ties)
        return world.make_pairs(self.num_rows[split], seed)
