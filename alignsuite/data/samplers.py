"""The order of the training rows: a seeded shuffle per epoch (optionally grouped by length, or kept in order),
sharded over processes, and a loader that resumes mid-epoch at the batch it stopped at. The staged order
(stage after stage) is ``stages.py``'s."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler


class EpochRandomSampler(DistributedSampler):
    """A shuffle that depends on (seed, epoch) alone, so a resumed run sees the same order as one that
    never stopped (Lightning calls ``set_epoch`` at every epoch). With ``num_replicas`` processes each
    ``rank`` takes every ``num_replicas``-th row of the same permutation (padded to equal shards, as
    ``DistributedSampler`` does); with one it is the whole permutation. ``start`` skips that many of this
    rank's rows of the epoch (a mid-epoch resume, set by `ResumableDataLoader`).

    Grouped by length (``lengths`` and ``group_batches`` given): the permutation is cut into windows of
    ``group_batches`` optimizer steps' rows (``batch_size`` x ``num_replicas`` each); a window's rows are
    sorted by length, cut into steps, and the steps shuffled within the window. Each step then holds rows
    of similar length on every rank, and the epoch still holds every row once, in an order that depends on
    (seed, epoch) alone.

    ``ordered``: no shuffle, the rows in their order (every epoch the same), sharded and resumed alike."""

    def __init__(self, data_source, seed: int, num_replicas: int = 1, rank: int = 0,
                 lengths: list[int] | None = None, batch_size: int = 1, group_batches: int = 0,
                 ordered: bool = False) -> None:
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if lengths is not None and len(lengths) != len(data_source):
            raise ValueError(f"lengths has {len(lengths)} values for {len(data_source)} rows")
        self.data_source, self.start = data_source, 0
        self.lengths, self.batch_size, self.group_batches = lengths, batch_size, group_batches
        self.ordered = ordered

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.data_source), generator=generator).tolist()
        if self.ordered:
            order = list(range(len(self.data_source)))
        elif self.lengths is not None and self.group_batches > 0:
            order = self._grouped(order, generator)
        order += order[: self.total_size - len(order)]  # padding; none with one process
        yield from order[self.rank : self.total_size : self.num_replicas][self.start :]

    def _grouped(self, order: list[int], generator: torch.Generator) -> list[int]:
        step = self.batch_size * self.num_replicas
        window = step * self.group_batches
        out = []
        for w in range(0, len(order), window):
            rows = sorted(order[w : w + window], key=lambda i: -self.lengths[i])
            steps = [rows[i : i + step] for i in range(0, len(rows), step)]
            short = steps.pop() if len(steps[-1]) < step else []  # a short last step stays last
            for k in torch.randperm(len(steps), generator=generator).tolist():
                out += steps[k]
            out += short
        return out


class ResumableDataLoader(DataLoader):
    """The train loader: it counts the batches it has handed out this epoch, and Lightning saves its
    `state_dict` in every checkpoint (the fit loop's ``combined_loader`` state) and loads it back before
    iterating on resume, so a run resumed mid-epoch continues with the next batch of the same shuffle
    instead of replaying the epoch. Counting batches handed out, not rows drawn from the sampler, stays
    exact with worker processes, which draw indices ahead."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.position, self._resume = 0, None

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self.position, "batch_size": self.batch_size,
                "num_replicas": self.sampler.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state

    def __iter__(self):
        # Decided at the first batch, after Lightning's set_epoch: a checkpoint taken at the end of an
        # epoch resumes at the start of the next one.
        state, self._resume = self._resume, None
        self.position = 0
        if state is not None and state["epoch"] == self.sampler.epoch:
            same = (state["batch_size"], state["num_replicas"]) == (self.batch_size, self.sampler.num_replicas)
            if same:
                self.position = state["batches"]
            else:
                rank_zero_warn(
                    f"the checkpoint was taken {state['batches']} batches into epoch {state['epoch']} with batch size"
                    f" {state['batch_size']} on {state['num_replicas']} process(es); with batch size {self.batch_size}"
                    f" on {self.sampler.num_replicas} that position does not exist, so this epoch restarts from its"
                    " first batch"
                )
        self.sampler.start = self.position * self.batch_size
        for batch in super().__iter__():
            self.position += 1
            yield batch


__all__ = ["EpochRandomSampler", "ResumableDataLoader"]
