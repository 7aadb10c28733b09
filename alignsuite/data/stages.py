"""Training in stages: the rows of stage 0, then those of stage 1, ... (sDPO's chunks, Curry-DPO's curriculum
iterations), shuffled within a stage only.

A row's stage is an integer column of the train set, ``stage``. The data module makes it from ``data.stages``:
a column the rows carry (a procedure's, as `CurryPairs` writes, or a number field the layout keeps), a number
``T`` of equal consecutive chunks of the rows in their order (sDPO), or ``"sources"``: each train source one
stage, in the order listed.

Every stage fills whole optimizer steps on every process: a stage's shuffle is padded, by repeating its own first
rows, to a multiple of ``batch_size x processes x accumulated batches``. So a batch never mixes two stages and
every process crosses a stage boundary at the same global step, which is when a stage-following reference
re-syncs (`alignsuite.stage_reference.StageSync`). The padding repeats at most one step's rows less one per stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import DistributedSampler

STAGE = "stage"  # the train set's column holding each row's stage, and the batch key a reference reads


def stage_values(values: Sequence, column: str) -> list[int]:
    """The stage of each row as an int; an error naming the first row (by ``index``) that is not a whole number."""
    out = []
    for row, value in enumerate(values):
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value != int(value) or value < 0:
            raise ValueError(f"data.stages: train row {row} has {column} = {value!r}; a stage is a whole number >= 0")
        out.append(int(value))
    return out


def chunk_stages(n: int, num_stages: int) -> list[int]:
    """``num_stages`` consecutive chunks of ``n`` rows, as equal as can be (the first ones one row longer)."""
    if num_stages < 1 or num_stages > n:
        raise ValueError(f"data.stages = {num_stages} stages for {n} train rows; give 1 to {n}")
    size, extra = divmod(n, num_stages)
    return [s for s in range(num_stages) for _ in range(size + (s < extra))]


def staged_order(stages: Sequence[int], seed: int, epoch: int, step_rows: int, shuffle: bool = True) -> list[int]:
    """Row indices stage after stage (increasing stage number), shuffled within each stage by (seed, epoch,
    stage) (or in row order without ``shuffle``), each stage padded to a multiple of ``step_rows`` by repeating
    the start of its own order."""
    by_stage: dict[int, list[int]] = {}
    for row, stage in enumerate(stages):
        by_stage.setdefault(stage, []).append(row)
    order = []
    for stage in sorted(by_stage):
        rows = by_stage[stage]
        generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_009 + stage)
        shuffled = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()] if shuffle else rows
        pad = -len(shuffled) % step_rows
        order += shuffled + (shuffled * (pad // len(shuffled) + 1))[:pad]
    return order


class StageSampler(DistributedSampler):
    """The train rows stage after stage, shuffled within a stage by (seed, epoch) alone, so a resumed run sees
    the order of one that never stopped. ``step_rows`` is the rows of one optimizer step over all processes
    (``batch_size x num_replicas x accumulated batches``): each stage is padded to a multiple of it, so each
    process's share of a step comes from one stage. Process ``rank`` takes every ``num_replicas``-th row of the
    order; ``start`` skips that many of its rows (a mid-epoch resume, set by `ResumableDataLoader`)."""

    def __init__(self, data_source, stages: Sequence[int], seed: int, step_rows: int, num_replicas: int = 1,
                 rank: int = 0, shuffle: bool = True) -> None:
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if len(stages) != len(data_source):
            raise ValueError(f"{len(stages)} stages for {len(data_source)} rows")
        if step_rows % num_replicas:
            raise ValueError(f"step_rows {step_rows} is not a multiple of the {num_replicas} processes")
        self.stages, self.step_rows, self.start, self.shuffle_within = list(stages), step_rows, 0, shuffle
        self.total_size = len(staged_order(self.stages, seed, 0, step_rows))  # the same for every epoch
        self.num_samples = self.total_size // num_replicas

    def order(self) -> list[int]:
        """This epoch's order over every process (padded)."""
        return staged_order(self.stages, self.seed, self.epoch, self.step_rows, self.shuffle_within)

    def __iter__(self):
        yield from self.order()[self.rank :: self.num_replicas][self.start :]

    def __len__(self) -> int:
        return self.num_samples


def train_stages(ds, stages: str | int, sources: list[str]) -> list[int]:
    """Each train row's stage from ``data.stages`` (see the module's docstring), checked."""
    if isinstance(stages, bool) or not isinstance(stages, (str, int)):
        raise ValueError(f"data.stages must be a column name, a number of stages or 'sources', got {stages!r}")
    if isinstance(stages, int):
        return chunk_stages(len(ds), stages)
    if stages == "sources":
        if "_source" not in ds.column_names:
            raise ValueError("data.stages: 'sources' needs rows that record their source file; name a stage column")
        return [sources.index(s) if s in sources else 0 for s in ds["_source"]]
    if stages not in ds.column_names:
        shown = sorted(c for c in ds.column_names if not c.startswith("_"))
        raise ValueError(f"data.stages names the column {stages!r}, which the train rows lack (they have {shown}); a"
                         " file's number field is kept by the layout's number_fields")
    return stage_values(ds[stages], stages)


def batch_stage(batch: dict) -> int:
    """The stage of a training batch: every row's, which must agree (the stage sampler sees to it)."""
    if STAGE not in batch:
        raise ValueError("the reference follows data stages, and the batches carry no 'stage' column: set data.stages"
                         " (a column name, a number of chunks, or 'sources')")
    values = sorted({int(v) for v in batch[STAGE].tolist()})
    if len(values) != 1:
        raise ValueError(f"a training batch holds rows of stages {values}: set data.stages so that each stage fills"
                         " whole steps (the stage sampler pads each stage)")
    return values[0]


__all__ = ["STAGE", "StageSampler", "batch_stage", "chunk_stages", "stage_values", "staged_order", "train_stages"]
