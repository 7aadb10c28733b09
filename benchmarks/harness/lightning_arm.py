"""What the alignsuite arms share, in the worker: a callback that times and records every optimizer step,
a data module that reads rows in file order, and a bare ``lightning.Trainer``.

This imports Lightning: import it inside an alignsuite arm only, never from a driver or a peer's arm,
whose process would then load (and count in its memory) what it does not use.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from benchmarks.harness.measure import MemoryProbe, StepClock, StepProfiler


class Recorder(Callback):
    """Memory over training, the clock at the end of every optimizer step, and each step's loss."""

    def __init__(self, cfg: dict) -> None:
        self.memory, self.clock, self.profiler = MemoryProbe(), StepClock(), StepProfiler(cfg)
        self.losses: list[float] = []
        self.info: dict = {}

    def on_train_start(self, trainer, pl_module):
        self.info["torch_threads"] = torch.get_num_threads()
        self.memory.train_start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.tick()
        self.losses.append(float(outputs["loss"]))
        self.profiler.step(len(self.clock))

    def on_train_end(self, trainer, pl_module):
        self.memory.train_end()

    def record(self) -> dict:
        return {"clock": self.clock.state(), "losses": self.losses, "memory": self.memory.report(), **self.info}


def in_file_order(datamodule_class: type) -> type:
    """``datamodule_class`` whose train loader reads rows in file order, as the peer arms do here (so step i
    holds the same rows in every arm); everything else, the collation included, is the class's own."""

    class InFileOrder(datamodule_class):
        def train_dataloader(self) -> DataLoader:
            shuffled = super().train_dataloader()
            return DataLoader(shuffled.dataset, batch_size=shuffled.batch_size, shuffle=False,
                              drop_last=shuffled.drop_last, num_workers=shuffled.num_workers,
                              collate_fn=shuffled.collate_fn, persistent_workers=shuffled.persistent_workers)

    InFileOrder.__name__ = InFileOrder.__qualname__ = f"InFileOrder{datamodule_class.__name__}"
    return InFileOrder


def trainer(cfg: dict, callbacks: list, precision: str = "32-true") -> L.Trainer:
    """One device, ``cfg["steps"]`` steps clipped at ``cfg["max_grad_norm"]``; no logger, checkpoints,
    progress bar, model summary or validation."""
    return L.Trainer(
        accelerator="gpu" if cfg["device"] == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=cfg["steps"],
        gradient_clip_val=cfg["max_grad_norm"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
