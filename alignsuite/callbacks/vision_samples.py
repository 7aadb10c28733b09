"""Watch a vision-language model answer: the same validation images and questions, at every validation."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer

from alignsuite.callbacks.samples import ValidationSamples


class VisionSamples(ValidationSamples):
    """At every validation (and before training), answer the first ``num_rows`` validation rows' questions
    about their images and write a table: ``<log dir>/samples/step_NNNNNN.html`` (images inline) and
    ``.jsonl`` (question, chosen answer, generated answer), and to TensorBoard (a text table and the
    images) when it is a logger. A setting of :class:`ValidationSamples` with no judge, written by the text
    writer with the backbone's input images.

    Every process generates (a sharded model needs all of them in its forward); the first one writes.

    Args:
        num_rows: how many validation rows (the first ones, the same every time).
        max_new_tokens: the longest answer generated.
    """

    tolerant = False

    def __init__(self, num_rows: int = 8, max_new_tokens: int = 64) -> None:
        super().__init__(num_prompts=num_rows, seed=None, batch_size=max(num_rows, 1),
                         generation_kwargs={"max_new_tokens": max_new_tokens})
        self.num_rows, self.max_new_tokens = num_rows, max_new_tokens

    def load_rows(self, trainer: Trainer) -> list[dict]:
        """The first ``num_rows`` rows of the validation set (else the training set), collated as training
        reads them (images decoded)."""
        if not self.num_rows:
            return []
        data = trainer.datamodule
        ds = data.val_set if data.val_set is not None else data.train_set
        n = min(self.num_rows, len(ds))
        batch = data.collate([ds[i] for i in range(n)])
        columns = {k: v.tolist() if torch.is_tensor(v) else v for k, v in batch.items()
                   if isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n}
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]


__all__ = ["VisionSamples"]
