"""The online loop on the diffusion toy world (recipes/toy/diffusion_iterate_dpo.yaml): images drawn by the
current policy are kept as PNG files, judged by the world's reward, paired best vs worst, read back by the image
pair layout from their stored paths, and Diffusion-DPO on them makes the square red.

The default test is one short round; the recipe as shipped (three rounds, two seeds) is ``-m slow``."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from alignsuite.cli import main
from alignsuite.iterate import loop
from alignsuite.iterate.files import read_json, read_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes/toy/diffusion_iterate_dpo.yaml")
REWARD = "toy_reward_diffusion"


def run(out, *extra) -> list[dict]:
    main(["iterate", "--config", RECIPE, "--iterate.output_dir", str(out), *extra])
    return read_json(os.path.join(out, "rounds.json"))


def held(summary: dict) -> float:
    return summary["heldout"]["mean"]


def test_one_round_keeps_the_images_as_pngs_pairs_them_by_path_and_raises_the_reward(tmp_path):
    # One round of 16 captions x 4 images at a higher learning rate than the recipe's (the recipe spreads its
    # steps over three rounds). Measured: 0.50 -> 0.94 (on 64 captions 0.47 -> 1.00); the bound leaves room.
    out = tmp_path / "run"
    summaries = run(out, "--iterate.rounds", "1", "--iterate.num_prompts", "16", "--iterate.num_heldout", "16",
                    "--trainer.max_epochs", "10", "--model.init_args.optimizer.init_args.lr", "5.0e-5")
    folder = os.path.join(out, "round_01")
    samples = read_rows(os.path.join(folder, "samples", "00000.jsonl"))
    assert len(samples) == 16 * 4 and {s["kind"] for s in samples} == {"image"}
    with Image.open(os.path.join(folder, samples[0]["output"])) as image:
        assert image.size == (16, 16)
    pairs = read_rows(os.path.join(folder, "pairs.jsonl"))
    assert pairs and all(os.path.isabs(p["chosen"]) and os.path.exists(p["chosen"]) for p in pairs)
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert os.path.exists(loop.round_checkpoint(folder))
    base, after = held(summaries[0]), held(summaries[1])
    assert 0.3 < base < 0.7  # the base draws red about half the time
    assert after > base + 0.25, (base, after)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, pytest.param(2, marks=pytest.mark.xfail(
    reason="measured: seed 2 stalls at 0.59 over three rounds (docs/iterate.md)", strict=False))])
def test_the_recipe_as_shipped_raises_the_reward_round_over_round(tmp_path, seed):
    summaries = run(tmp_path / "run", "--seed_everything", str(seed), "--iterate.seed", str(seed))
    means = [held(s) for s in summaries]
    assert len(means) == 4
    # measured (docs/iterate.md): 0.587 -> 0.837 (seed 0), 0.856 (seed 1)
    assert means[-1] > means[0] + 0.15, means
    assert means[2] > means[1] - 0.05 and means[3] > means[2] - 0.05, means
