"""Reference strategies on their own, with a stand-in backbone: which weights score and sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alignsuite.reference import CheckpointPool


class Policy:
    """What CheckpointPool reads of a backbone: its ``policy`` module."""

    def __init__(self) -> None:
        self.policy = nn.Linear(1, 1, bias=False)

    def set(self, value: float) -> None:
        with torch.no_grad():
            self.policy.weight.fill_(value)


def loaded_weight(pool: CheckpointPool) -> float:
    return pool.model.weight.item()


def test_checkpoint_pool_keeps_the_initial_and_the_latest_snapshots():
    backbone, pool = Policy(), CheckpointPool(mode="latest", every_n_steps=2, max_size=3)
    backbone.set(0.0)
    pool.build(backbone)
    for step in range(1, 9):
        backbone.set(float(step))
        pool.after_step(backbone, step)
    # snapshots at steps 2, 4, 6, 8; three kept: the initial weights and the two newest
    assert [p["weight"].item() for p in pool.pool] == [0.0, 6.0, 8.0]
    assert not pool.model.weight.requires_grad


@pytest.mark.parametrize("mode", ["latest", "random"])
def test_checkpoint_pool_loads_the_snapshot_it_picks_after_an_eviction(mode):
    """Evicting the oldest snapshot shifts the later ones down an index; the weights loaded for an
    index before the eviction must not pass for the snapshot now at that index."""
    backbone, pool = Policy(), CheckpointPool(mode=mode, every_n_steps=1, max_size=3)
    backbone.set(0.0)
    pool.build(backbone)
    for step in range(1, 21):
        backbone.set(float(step))
        pool.after_step(backbone, step)  # the pool is full from step 2: each later step evicts
        index = pool.select(step)
        assert loaded_weight(pool) == pool.pool[index]["weight"].item()
        if mode == "latest":
            assert loaded_weight(pool) == float(step)
