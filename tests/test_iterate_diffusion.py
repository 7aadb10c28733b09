"""The online loop on the squares worlds: images drawn by the current policy are kept as PNG files, judged by the
world's reward, paired best vs worst, read back by the image pair layout from their stored paths, and fitted with
Diffusion-DPO.

recipes/toy/diffusion_iterate_corner.yaml (the graded world ``diffusion_corner``, which offline pairs do not fix):
its first round in the default run; online against offline pairs on four seeds with ``-m slow``.
recipes/toy/diffusion_iterate_dpo.yaml (the plain world, which offline pairs already fix): ``-m slow``."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from alignsuite.cli import main
from alignsuite.iterate import loop
from alignsuite.iterate.files import read_json, read_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes/toy/diffusion_iterate_dpo.yaml")
CORNER = os.path.join(REPO, "recipes/toy/diffusion_iterate_corner.yaml")


def run(out, *extra, recipe: str = RECIPE) -> list[dict]:
    main(["iterate", "--config", recipe, "--iterate.output_dir", str(out), *extra])
    return read_json(os.path.join(out, "rounds.json"))


def held(summary: dict) -> float:
    return summary["heldout"]["mean"]


def test_the_corner_recipes_first_round_keeps_pngs_pairs_them_by_path_and_raises_the_reward(tmp_path):
    # The shipped corner recipe's first round, cut for time: 16 captions drawn twice (32 x 4 images), 32 held-out
    # captions, learning rate 1e-4 for its 20 steps (about 30 s on a quiet 2-core CPU). Measured on seeds 0 / 1 / 2:
    # held-out 0.165 -> 0.281 / 0.305 / 0.269; the bound is half the least gain.
    out = tmp_path / "run"
    summaries = run(out, "--iterate.rounds", "1", "--iterate.num_prompts", "16", "--iterate.num_heldout", "32",
                    "--model.init_args.optimizer.init_args.lr", "1.0e-4", recipe=CORNER)
    folder = os.path.join(out, "round_01")
    samples = read_rows(os.path.join(folder, "samples", "00000.jsonl"))
    assert len(samples) == 32 * 4 and {s["kind"] for s in samples} == {"image"}
    with Image.open(os.path.join(folder, samples[0]["output"])) as image:
        assert image.size == (16, 16)
    pairs = read_rows(os.path.join(folder, "pairs.jsonl"))
    assert pairs and all(os.path.isabs(p["chosen"]) and os.path.exists(p["chosen"]) for p in pairs)
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert os.path.exists(loop.round_checkpoint(folder))
    base, after = held(summaries[0]), held(summaries[1])
    assert 0.1 < base < 0.25  # the base rarely draws a red square in the corner
    assert after > base + 0.05, (base, after)


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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_corner_recipe_online_rises_round_over_round_and_ends_above_offline_pairs(tmp_path, seed):
    """scripts/toy_iterate.py --diffusion's arms. Online: the recipe as shipped. Offline: pairs built once from the
    base's samples of all 96 captions, one fit of exactly the three rounds' 3 x 20 steps."""
    import sys

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from toy_iterate import run as run_arm

    online = [held(s) for s in run_arm("dpo", seed, str(tmp_path), "diffusion")]
    offline = [held(s) for s in run_arm("offline", seed, str(tmp_path), "diffusion")]
    # measured (docs/iterate.md), seeds 0 / 1 / 2 / 3: online 0.097 -> 0.676 / 0.714 / 0.672 / 0.799, rising by 0.11 or
    # more every round; offline 0.523 / 0.440 / 0.400 / 0.193 (least margin 0.15)
    assert len(online) == 4 and len(offline) == 2
    assert all(b > a + 0.05 for a, b in zip(online, online[1:])), online
    assert online[-1] > offline[-1] + 0.12, (online, offline)
