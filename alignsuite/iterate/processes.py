"""The loop's processes under a data-parallel recipe (``trainer.strategy: ddp`` or ModelParallelStrategy's FSDP2,
``devices`` or ``num_nodes`` above one): every process runs the same rounds; each generates and judges its share
of the prompt shards, the first builds the round's rows, and all of them fit together.

The processes are started before the first round, as ``fit`` would start them at its first step: the first
process runs the command again for each of the others (or, under SLURM or ``torchrun``, they are already
there), and all join one process group. The shards go round-robin (shard ``k`` to rank ``k mod N``); a sample's
seed depends on its shard, never on the rank that drew it, so the round's files are those one process writes.
They meet through the run's folder, which must be one shared filesystem for all of them (as a checkpoint folder
already is)."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Processes:
    """This process's rank among ``count``, and the two collectives the loop needs (no-ops on one process)."""

    def __init__(self, strategy=None) -> None:
        self.strategy = strategy
        self.rank = int(strategy.global_rank) if strategy is not None else 0
        self.count = int(strategy.world_size) if strategy is not None else 1

    @property
    def first(self) -> bool:
        return self.rank == 0

    def mine(self, shard: int) -> bool:
        """Whether this process generates and judges prompt shard ``shard``."""
        return shard % self.count == self.rank

    def wait(self, name: str) -> None:
        """Every process here before any goes on (each one's shards are written)."""
        if self.count > 1:
            self.strategy.barrier(name)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process calls it)."""
        return bool(flag) if self.count == 1 else bool(self.strategy.reduce_boolean_decision(bool(flag), all=False))

    def from_first(self, work: Callable[..., T], *args) -> T:
        """``work(*args)`` run by the first process and its result handed to all. An :class:`Exception` it raises is
        raised in every process (none is left waiting for a result that never comes)."""
        if self.count == 1:
            return work(*args)
        outcome: Any = None
        if self.first:
            try:
                outcome = ("done", work(*args))
            except Exception as error:  # noqa: BLE001 - handed to every process, then raised there
                outcome = ("failed", error)
        kind, value = self.strategy.broadcast(outcome, src=0)
        if kind == "failed":
            raise value
        return value


def start_processes(trainer, model) -> Processes:
    """The recipe's processes started (by the first one, unless the cluster started them) and joined in one
    process group: :class:`Processes` for this one. One process: nothing started. ``model`` (the recipe's,
    never fitted: each round builds its own) is what a strategy that builds a device mesh attaches it to."""
    strategy = trainer.strategy
    if trainer.world_size == 1:
        return Processes()
    launcher = getattr(strategy, "launcher", None)
    if launcher is not None:
        launcher.launch(lambda: None)  # the first process starts the others, each running this command again
    if strategy.lightning_module is None:
        strategy.connect(model)
    strategy.setup_environment()  # the process group: every process waits here for the others
    return Processes(strategy)


__all__ = ["Processes", "start_processes"]
