"""What the suite reads from a data module, declared once.

The module, the references, the backbones' setup hooks, the callbacks and the evaluation read a data module
through :class:`PreferenceData` and nothing else. :class:`~alignsuite.data.PreferenceDataModule` declares
it (every data module that subclasses it, a toy world's, inherits it); a data module of one's own implements
the same members. :func:`preference_data` checks a given data module once, at setup, and names what is
missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import datasets

    from alignsuite.data.layouts import Layout


@runtime_checkable
class PreferenceData(Protocol):
    """A data module of preference rows, as the suite reads it."""

    layout: Layout
    """What a row is: its ``name`` names the data in errors, its ``modality`` is checked against the backbone's."""
    batch_size: int
    """Rows per training batch; also the batch of one-off passes over the data (reference scores, encodings)."""
    num_workers: int
    """DataLoader worker processes, for one-off passes over the data too."""
    train_set: datasets.Dataset | None
    """The training rows once ``setup`` ran (``None``: none); a backbone's ``on_setup`` may filter them."""
    val_set: datasets.Dataset | None
    """The validation rows once ``setup`` ran, like ``train_set``."""
    batch_transform: Callable[[dict], dict] | None
    """Work the loaders' workers do on each collated batch; the module sets it at setup from the backbone."""

    @property
    def row_kind(self) -> str:
        """``"pairs"`` or ``"unpaired"``: the kind of rows an objective must score."""

    @property
    def collate(self) -> Callable[[list[dict]], dict]:
        """Rows of ``train_set``/``val_set`` to a batch, as the loaders make them."""

    def columns(self) -> set[str]:
        """The columns batches carry, after ``setup``."""

    def setup(self, stage: str | None = None) -> None:
        """Build ``train_set`` and ``val_set`` (once; later calls do nothing)."""

    def val_dataloader(self) -> Any:
        """Batches of ``val_set``."""


MEMBERS = (
    "layout", "batch_size", "num_workers", "train_set", "val_set", "batch_transform",
    "row_kind", "collate", "columns", "setup", "val_dataloader",
)


def preference_data(data: Any) -> PreferenceData | None:
    """``data`` itself when it implements :class:`PreferenceData` (``None`` stays ``None``: no data module, the
    loaders were given directly); otherwise an error that names the members it lacks."""
    if data is None or isinstance(data, PreferenceData):
        return data
    missing = [name for name in MEMBERS if not hasattr(data, name)]
    raise TypeError(
        f"the data module {type(data).__name__} lacks {', '.join(missing)}, which the preference step reads"
        " (alignsuite.data.PreferenceData); subclass alignsuite.data.PreferenceDataModule, overriding load_rows"
        " to generate rows, or give the loaders to the Trainer directly"
    )


__all__ = ["MEMBERS", "PreferenceData", "preference_data"]
