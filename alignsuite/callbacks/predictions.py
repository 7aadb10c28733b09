"""Keep what ``predict`` generates: one JSON object per row in ``<log dir>/predictions.jsonl``, or beside the run
whose checkpoint it predicts with (``<run>/predictions-step<N>.jsonl``)."""

from __future__ import annotations

import json
import os

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.callbacks.preemption import global_step


def checkpoint_run_dir(ckpt_path: str | None) -> str | None:
    """The run folder a checkpoint belongs to: ``<run>`` for ``<run>/checkpoints/<file>`` (where a run's logger
    keeps them by default), else None (a checkpoint folder of its own, ``checkpoint.dirpath``)."""
    if not ckpt_path or not os.path.exists(ckpt_path):
        return None
    folder = os.path.dirname(os.path.abspath(ckpt_path))
    return os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else None


class PredictionWriter(BasePredictionWriter):
    """Append each predicted batch to a JSON-lines file as it comes, so nothing is held until the end.

    A row is ``{"index": ..., "prompt": ..., "generation": ...}``. ``predict_step`` may return those
    dicts, or a plain list of generations (then index and prompt come from the batch). A generated
    image is saved as ``predictions/<index>.png`` beside the file and the row holds that relative path.

    Args:
        path: the file; defaults to ``<run>/predictions-step<N>.jsonl`` for a checkpoint of step N in a run's
            ``checkpoints/`` folder, else ``<log dir>/predictions.jsonl`` (``.rank<K>.jsonl`` on process K > 0
            of a multi-process run).
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.resolved: str | None = None
        self.rows = 0

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run = checkpoint_run_dir(trainer.ckpt_path)
        if self.path:
            path = self.path
        elif run:
            path = os.path.join(run, f"predictions-step{global_step(trainer.ckpt_path)}.jsonl")
        else:
            path = os.path.join(trainer.log_dir or trainer.default_root_dir, "predictions.jsonl")
        if trainer.world_size > 1 and trainer.global_rank > 0:
            path = f"{os.path.splitext(path)[0]}.rank{trainer.global_rank}.jsonl"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        open(path, "w").close()  # a fresh file for this predict run
        self.resolved, self.rows = path, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        rows = [self._row(p, i, batch, batch_indices, batch_idx) for i, p in enumerate(prediction)]
        with open(self.resolved, "a") as f:
            for row in rows:
                f.write(json.dumps(row, default=_plain) + "\n")
        self.rows += len(rows)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_zero_info(f"wrote {self.rows} predictions to {self.resolved}")

    def _row(self, prediction, i: int, batch, batch_indices, batch_idx: int) -> dict:
        if isinstance(prediction, dict):
            row = dict(prediction)
        else:
            row = {"index": _index(batch, batch_indices, i), "prompt": _prompt(batch, i), "generation": prediction}
        if hasattr(row.get("generation"), "save"):  # a PIL image
            stem = row.get("index") if row.get("index") is not None else f"batch{batch_idx}_{i}"
            name = os.path.join("predictions", f"{stem}.png")
            folder = os.path.dirname(os.path.abspath(self.resolved))
            os.makedirs(os.path.join(folder, "predictions"), exist_ok=True)
            row["generation"].save(os.path.join(folder, name))
            row["generation"] = name
        return row


def _index(batch, batch_indices, i: int):
    if isinstance(batch, dict) and "index" in batch:
        return _plain(batch["index"][i])
    return batch_indices[i] if batch_indices is not None else None


def _prompt(batch, i: int):
    if isinstance(batch, dict):
        for key in ("prompt", "caption"):
            if key in batch:
                return _plain(batch[key][i])
    return None


def _plain(value):
    """Tensors and numpy values as plain Python, for JSON."""
    if torch.is_tensor(value):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float, bool, list, dict)) or value is None:
        return value
    return str(value)
