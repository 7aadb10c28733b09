"""A datamodule that generates a toy world's preference data instead of reading files."""

from __future__ import annotations

from typing import Literal

from alignsuite.data.datamodule import PreferenceDataModule


class ToyPreferenceData(PreferenceDataModule):
    """``num_train``/``num_val`` generated pairs of toy world ``world``, validated like any dataset.

    With ``layout: unpaired`` every pair becomes a desirable and an undesirable example (KTO).
    """

    def __init__(
        self,
        world: str = "llm",
        num_train: int = 2048,
        num_val: int = 128,
        layout: Literal["pairs", "unpaired"] = "pairs",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        from alignsuite.toy import get_world

        super().__init__(
            layout=layout, batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, seed=seed,
            modality=getattr(get_world(world), "modality", "text"),
        )
        self.world_name = world
        self.num_rows = {"train": num_train, "val": num_val}

    def load_rows(self, split):
        from alignsuite.toy import get_world

        seed = self.seed if split == "train" else self.seed + 1_000_003  # disjoint draws
        return get_world(self.world_name).make_pairs(self.num_rows[split], seed)
