"""``iterate.carry_optimizer``: a round's fit starts with the optimizer state of the checkpoint it starts from. With
EGPO's extragradient rounds that is its restore: the update fit starts from theta_t with theta_t's optimizer
moments, not with the extrapolation's."""

from __future__ import annotations

import os

import pytest
import torch

from alignsuite.cli import main
from alignsuite.iterate import IterateError, loop
from alignsuite.iterate.round_start import load_optimizer_moments

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes/toy/llm_iterate_egpo.yaml")
SMALL = ["--iterate.num_prompts", "32", "--iterate.prompts_per_round", "8", "--iterate.num_samples", "2",
         "--iterate.rounds", "4", "--iterate.num_heldout", "4", "--data.init_args.batch_size", "4"]


def saved_state(out, index: int) -> dict:
    path = loop.round_checkpoint(os.path.join(out, f"round_{index:02d}"))
    return torch.load(path, weights_only=True)["optimizer_states"][0]


def test_extragradient_fits_start_from_the_optimizer_state_of_the_point_they_start_from(tmp_path, monkeypatch):
    seen: dict = {}

    class Recording(loop.RoundStart):
        def on_fit_start(self, trainer, pl_module):
            super().on_fit_start(trainer, pl_module)
            state = trainer.optimizers[0].state_dict()
            seen[self.previous] = ({k: {n: t.clone() for n, t in v.items()} for k, v in state["state"].items()},
                                   [g["lr"] for g in state["param_groups"]])

    monkeypatch.setattr(loop, "RoundStart", Recording)
    out = tmp_path / "run"
    main(["iterate", "--config", RECIPE, *SMALL, "--iterate.carry_optimizer", "true", "--iterate.output_dir", str(out)])
    second = loop.round_checkpoint(os.path.join(out, "round_02"))
    assert list(seen) == [None, second]  # rounds 1 and 2 start from the base; 3 and 4 from round 2's point
    moments, lrs = seen[second]
    want = saved_state(out, 2)
    assert moments.keys() == want["state"].keys() and moments
    for key, value in want["state"].items():  # Adam's step count and both moments, exactly round 2's
        for name, tensor in value.items():
            assert torch.equal(moments[key][name], tensor), (key, name)
    assert lrs == [g["initial_lr"] for g in want["param_groups"]]  # the fit's own learning rate: its schedule starts anew
    steps = {i: int(next(iter(saved_state(out, i)["state"].values()))["step"]) for i in (2, 3, 4)}
    round_steps = {i: torch.load(loop.round_checkpoint(os.path.join(out, f"round_{i:02d}")), weights_only=True)
                   ["global_step"] for i in (2, 3, 4)}
    # the update (round 4) counts Adam's steps on from round 2's, not from the extrapolation (round 3)
    assert steps[3] == steps[2] + round_steps[3] and steps[4] == steps[2] + round_steps[4]


def test_moments_from_another_recipe_are_refused():
    a = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    b = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))])
    with pytest.raises(IterateError, match=r"the saved optimizer holds parameter groups of \[2\] parameters, this"
                                           r" fit's \[1\]"):
        load_optimizer_moments(a, b.state_dict(), "iterate.carry_optimizer (x.ckpt)")
