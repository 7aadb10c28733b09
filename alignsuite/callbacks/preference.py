"""Draw a preference vector each training step for a model conditioned on one (Panacea)."""

from __future__ import annotations

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer


def draw_preference(seed: int, step: int, dim: int, alpha: float = 1.0) -> list[float]:
    """The preference vector of ``step``: Dirichlet(``alpha``) on the simplex of ``dim`` entries (uniform at 1),
    from a generator seeded by ``(seed, step)`` alone, so every process draws the same and a resumed run draws
    what the uninterrupted one would have."""
    rng = np.random.default_rng([seed, step])
    return [float(v) for v in rng.dirichlet([alpha] * dim)]


class PreferenceSampler(Callback):
    """Before each training batch, draw the step's preference vector, set it on the backbone
    (``backbone.set_preference``) and put it in the batch (``batch["preference_vector"]``, which ``panacea`` reads);
    before each validation batch, set the validation vector (``val_preference``).

    The draw is uniform on the simplex (Dirichlet(1)) by default, one per optimizer step (micro-batches of one
    accumulated step share it), seeded by ``seed`` and the global step: the same on every process under DDP, and
    the same sequence after a resume. The last ``history`` draws are kept in the checkpoint (``drawn``) to show it;
    the mean preference scale of the adapter is logged as ``train/preference_scale`` (and its smallest as
    ``train/preference_scale_min``): near 0, the preference would no longer change the model.

    Args:
        seed: the draws' seed.
        alpha: the Dirichlet concentration (1: uniform on the simplex).
        val_preference: the vector validation scores (and generates) with; when None, the backbone's ``preference``
            option, else uniform.
        history: how many of the latest draws the checkpoint records.
    """

    def __init__(self, seed: int = 0, alpha: float = 1.0, val_preference: list[float] | None = None,
                 history: int = 64) -> None:
        if not alpha > 0:
            raise ValueError(f"PreferenceSampler: alpha must be > 0, got {alpha}")
        self.seed, self.alpha, self.val_preference, self.history = seed, alpha, val_preference, history
        self.drawn: list[tuple[int, list[float]]] = []

    def _dim(self, pl_module: LightningModule) -> int:
        dim = getattr(pl_module.backbone, "preference_dim", 0)
        if dim == 0:
            raise ValueError(f"PreferenceSampler: the backbone {type(pl_module.backbone).__name__} takes no preference"
                             " vector; use alignsuite.backbones.PanaceaLM (or PanaceaVLM, PanaceaSpeechLM on images,"
                             " speech tokens)")
        return dim

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        vector = draw_preference(self.seed, step, self._dim(pl_module), self.alpha)
        pl_module.backbone.set_preference(vector)
        batch["preference_vector"] = vector
        if not self.drawn or self.drawn[-1][0] != step:
            self.drawn = [*self.drawn, (step, vector)][-self.history:]
        if hasattr(pl_module.backbone, "scales") and pl_module._writes_step_metrics():
            scales = pl_module.backbone.scales()
            pl_module.log("train/preference_scale", scales.abs().mean(), on_step=True, on_epoch=False)
            pl_module.log("train/preference_scale_min", scales.abs().min(), on_step=True, on_epoch=False)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        dim = self._dim(pl_module)
        vector = self.val_preference or getattr(pl_module.backbone, "initial_preference", None) or [1.0 / dim] * dim
        pl_module.backbone.set_preference(vector)
        batch["preference_vector"] = [float(v) for v in vector]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "alpha": self.alpha, "drawn": self.drawn}

    def load_state_dict(self, state_dict: dict) -> None:
        if (state_dict.get("seed"), state_dict.get("alpha")) != (self.seed, self.alpha):
            raise ValueError(f"PreferenceSampler: the checkpoint's draws were seeded with seed={state_dict.get('seed')},"
                             f" alpha={state_dict.get('alpha')} and this run has seed={self.seed}, alpha={self.alpha};"
                             " a resumed run would draw a different sequence")
        self.drawn = [(int(s), list(v)) for s, v in state_dict.get("drawn", [])]


__all__ = ["PreferenceSampler", "draw_preference"]
