"""Export the trained policy as a folder the ecosystem loads (``from_pretrained``)."""

from __future__ import annotations

import os

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class ExportPretrained(Callback):
    """At the end of fit, write ``save_pretrained`` folder(s) of the policy.

    Args:
        dirpath: where to write; defaults to ``<log dir>/export``. Set ``enabled: false`` to skip.
        merge_adapters: with LoRA, merge the adapter into the weights (True) or write the adapter alone.
    """

    def __init__(self, dirpath: str | None = None, merge_adapters: bool = True, enabled: bool = True) -> None:
        self.dirpath = dirpath
        self.merge_adapters = merge_adapters
        self.enabled = enabled

    def resolve_dir(self, trainer: Trainer) -> str:
        if self.dirpath:
            return self.dirpath
        root = trainer.log_dir or trainer.default_root_dir
        return os.path.join(root, "export")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        path = self.resolve_dir(trainer)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            pl_module.backbone.save_pretrained(path, merge_adapters=self.merge_adapters)
            rank_zero_info(f"exported the policy to {path}")
        trainer.strategy.barrier()
