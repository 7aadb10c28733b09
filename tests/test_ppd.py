"""PPD: a user condition for the text-to-image backbone (decoupled cross-attention over a user embedding), the
two-user squares world, and the bad inputs around them. The toy effect over several seeds is slow-marked below."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from alignsuite.backbones import TextToImage
from alignsuite.backbones.base import ViewInputs, shared_prompts
from alignsuite.backbones.user_condition import UserCondition, few_shot_embedding
from alignsuite.data import ImagePairs, ImageUnpaired
from alignsuite.data.errors import DataError
from alignsuite.evaluation import ToyReward
from alignsuite.toy import get_world
from alignsuite.toy.data import ToyPreferenceData
from alignsuite.toy.squares import draw_square
from alignsuite.toy.squares_users import UserSquaresWorld
from conftest import save_tiny_pipeline

CAPTIONS = ["a square at the top left", "a square at the bottom right"]


def backbone(path="toy:diffusion", **kwargs):
    kwargs = {"resolution": 16, "num_inference_steps": 4, "guidance_scale": 3.0, "random_flip": False, **kwargs}
    b = TextToImage(path, **kwargs)
    b.configure()
    return b


@pytest.fixture(scope="module")
def batch():
    data = ToyPreferenceData(world="diffusion_users", num_train=8, num_val=4, batch_size=4)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def scores(b, batch, **kwargs):
    views = shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"], batch=batch)
    return b.score(b.prepare(views), **kwargs).score


def perturb(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer["to_out"].weight.copy_(torch.randn(layer["to_out"].weight.shape, generator=g) * 0.1)


def test_an_untrained_or_silenced_user_condition_is_the_base_exactly(batch):
    base, ppd = backbone(), backbone(user_condition=UserCondition(embedding_dim=2, num_tokens=4))
    assert batch["user_embedding"].shape == (4, 2)
    assert torch.equal(scores(base, batch), scores(ppd, batch))  # zero output projection
    users = [[1.0, 0.0], [0.0, 1.0]]
    same = dict(seed=3, output_type="pt")
    assert torch.equal(torch.stack(base.generate(CAPTIONS, **same)),
                       torch.stack(ppd.generate(CAPTIONS, user_embedding=users, **same)))
    perturb(ppd.user_adapter)
    assert not torch.equal(scores(base, batch), scores(ppd, batch))
    ppd.user_adapter.scale = 0.0  # the adapter's scale 0: the base again, trained branch or not
    assert torch.equal(scores(base, batch), scores(ppd, batch))
    assert torch.equal(torch.stack(base.generate(CAPTIONS, **same)),
                       torch.stack(ppd.generate(CAPTIONS, user_embedding=users, **same)))


def test_the_user_steers_the_score_and_its_gradient_reaches_the_adapter(batch):
    ppd = backbone(user_condition=UserCondition(embedding_dim=2))
    perturb(ppd.user_adapter)
    swapped = dict(batch, user_embedding=batch["user_embedding"].flip(1))
    policy = scores(ppd, batch)
    assert not torch.allclose(policy, scores(ppd, swapped))
    policy.sum().backward()
    assert ppd.user_adapter.project.weight.grad.abs().sum() > 0
    # A reference copy of the denoiser has no user branch: the user's tokens leave it as the base.
    base = backbone()
    prepared = ppd.prepare(shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"], batch=batch))
    assert torch.equal(ppd.score(prepared, model=ppd.load_reference()).score, base.score(prepared).score)


def test_lora_reference_turns_the_user_branch_off_too(batch):
    from alignsuite.backbones import LoraSpec

    ppd = backbone(user_condition=UserCondition(embedding_dim=2), lora=LoraSpec(r=4, alpha=4))
    perturb(ppd.user_adapter)
    base = backbone()
    with ppd.adapters_disabled():
        assert torch.equal(scores(ppd, batch), scores(base, batch))
    assert not torch.equal(scores(ppd, batch), scores(base, batch))
    assert any(p.requires_grad for p in ppd.user_adapter.parameters())


def test_adapter_only_freezes_the_denoiser():
    from alignsuite.backbones import LoraSpec

    ppd = backbone(user_condition=UserCondition(embedding_dim=2, adapter_only=True))
    assert not any(p.requires_grad for p in ppd.policy.parameters())
    assert all(p.requires_grad for p in ppd.user_adapter.parameters())
    with pytest.raises(ValueError, match="adapter_only .* backbone.lora"):
        backbone(user_condition=UserCondition(embedding_dim=2, adapter_only=True), lora=LoraSpec(r=4, alpha=4))


def test_export_and_checkpoint_carry_the_adapter(tmp_path):
    ppd = backbone(user_condition=UserCondition(embedding_dim=2, num_tokens=3, scale=0.7))
    perturb(ppd.user_adapter, seed=1)
    assert any(k.startswith("user_adapter.") for k in ppd.state_dict())  # in Lightning checkpoints
    ppd.save_pretrained(str(tmp_path))
    again = backbone(str(tmp_path))  # no option: the export brings its user condition back
    assert again.user_condition == UserCondition(2, 3, 0.7) and again.generation_columns == ("user_embedding",)
    users = [[1.0, 0.0], [0.3, 0.7]]
    assert torch.equal(torch.stack(ppd.generate(CAPTIONS, user_embedding=users, output_type="pt")),
                       torch.stack(again.generate(CAPTIONS, user_embedding=users, output_type="pt")))
    with pytest.raises(ValueError, match="exported with 2 and 3"):
        backbone(str(tmp_path), user_condition=UserCondition(embedding_dim=5))


def test_the_user_condition_works_on_sdxl_and_is_refused_by_transformers(tmp_path):
    sdxl = save_tiny_pipeline(tmp_path / "sdxl", "sdxl")
    base, ppd = backbone(sdxl, guidance_scale=1.0), backbone(sdxl, guidance_scale=1.0, user_condition=UserCondition(2))
    same = dict(seed=0, output_type="pt")
    assert torch.equal(torch.stack(base.generate(CAPTIONS, **same)),
                       torch.stack(ppd.generate(CAPTIONS, user_embedding=[[1, 0], [0, 1]], **same)))
    with pytest.raises(ValueError, match="no cross-attention layers"):
        backbone(save_tiny_pipeline(tmp_path / "sd3", "sd3"), user_condition=UserCondition(2))


# ---------------------------------------------------------------- bad input
def test_rows_without_users_or_with_the_wrong_length_are_named(batch):
    ppd = backbone(user_condition=UserCondition(embedding_dim=2))
    without = {k: v for k, v in batch.items() if k != "user_embedding"}
    rows = re.escape(str(batch["index"].tolist()))
    with pytest.raises(ValueError, match=f"user_condition is set and dataset rows {rows} have no 'user_embedding'"):
        scores(ppd, without)
    with pytest.raises(ValueError, match=r"'user_embedding' of dataset rows .*embedding_dim = 2 floats, got shape \(4, 3\)"):
        scores(ppd, dict(batch, user_embedding=torch.ones(4, 3)))
    with pytest.raises(ValueError, match="rows \\[1\\] of this generation have no 'user_embedding'"):
        ppd.generate(CAPTIONS, user_embedding=[[1, 0], None])
    with pytest.raises(ValueError, match="embedding_dim = 2 floats"):
        ppd.generate(CAPTIONS, user_embedding=[[1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="embedding_dim must be at least 1"):
        UserCondition(embedding_dim=0)


def test_a_model_with_users_generates_without_one_only_when_asked():
    """No ``user_embedding`` is an error naming the column and the option; ``without_user`` silences the user branch
    (a trained one too): the base denoiser's images. A reference given as ``model`` has no user branch to feed."""
    base, ppd = backbone(), backbone(user_condition=UserCondition(embedding_dim=2))
    perturb(ppd.user_adapter)
    same = dict(seed=3, output_type="pt")
    with pytest.raises(ValueError, match=r"has a user condition \(backbone.user_condition\) and generate was given no"
                                         r" 'user_embedding'.*or without_user: true"):
        ppd.generate(CAPTIONS, **same)
    silent = torch.stack(ppd.generate(CAPTIONS, without_user=True, **same))
    assert torch.equal(silent, torch.stack(base.generate(CAPTIONS, **same)))
    assert not torch.equal(silent, torch.stack(ppd.generate(CAPTIONS, user_embedding=[[1, 0], [0, 1]], **same)))
    assert torch.equal(torch.stack(ppd.generate(CAPTIONS, model=ppd.load_reference(), **same)), silent)
    with pytest.raises(ValueError, match="without_user and a 'user_embedding' were both given"):
        ppd.generate(CAPTIONS, user_embedding=[[1, 0], [0, 1]], without_user=True)


def test_a_user_at_generation_needs_a_model_trained_with_one():
    base = backbone()
    assert base.generation_columns == ()
    with pytest.raises(ValueError, match="has no user condition.*backbone.user_condition"):
        base.generate(CAPTIONS, user_embedding=[[1, 0], [0, 1]])


def test_data_without_the_user_column_is_refused_at_setup():
    data = ToyPreferenceData(world="diffusion", num_train=4, num_val=2, batch_size=2)
    data.setup("fit")
    ppd = TextToImage("toy:diffusion", resolution=16, user_condition=UserCondition(embedding_dim=2))
    with pytest.raises(ValueError, match="user_condition is set and the data .* no 'user_embedding' column"):
        ppd.on_setup(data)


def test_the_layout_names_a_bad_user_embedding():
    world = UserSquaresWorld()
    rows = world.make_pairs(3, 0)
    layout = ImagePairs()
    bad = [dict(rows[0], user_embedding="red")]
    with pytest.raises(DataError, match="row 0: field 'user_embedding': expected a non-empty list of finite numbers"):
        layout.build([("pairs.jsonl", bad, None)])
    short = [rows[0], dict(rows[1], user_embedding=[1.0]), rows[2]]
    with pytest.raises(DataError, match="row 1: field 'user_embedding': expected 2 numbers, as the first row's, got 1"):
        layout.build([("pairs.jsonl", short, None)])
    missing = [rows[0], {k: v for k, v in rows[1].items() if k != "user_embedding"}]
    with pytest.raises(DataError, match="row 1: field 'user_embedding': expected a user embedding, as the first row has"):
        layout.build([("pairs.jsonl", missing, None)])


def test_diffusion_kto_rows_keep_their_pairs_user():
    """The unpaired layout (Diffusion-KTO) turns each pair into its winner and its loser, both the pair's user's;
    unpaired rows read as they come carry theirs; the step scores each row under its user."""
    world = UserSquaresWorld()
    pairs = world.make_pairs(6, 0)
    stored, _ = ImageUnpaired().build([("pairs.jsonl", pairs, None)])
    assert stored["user_embedding"] == [p["user_embedding"] for p in pairs for _ in (0, 1)]
    unpaired = [{"caption": p["caption"], "image": p["jpg_0"], "label": True, "user_embedding": p["user_embedding"]}
                for p in pairs]
    assert ImageUnpaired().build([("rows.jsonl", unpaired, None)])[0]["user_embedding"] == stored["user_embedding"][::2]
    missing = [unpaired[0], {k: v for k, v in unpaired[1].items() if k != "user_embedding"}]
    with pytest.raises(DataError, match="row 1: field 'user_embedding': expected a user embedding, as the first row has"):
        ImageUnpaired().build([("rows.jsonl", missing, None)])

    data = ToyPreferenceData(world="diffusion_users", num_train=8, num_val=4, batch_size=4, unpaired=True)
    data.setup("fit")
    ppd = backbone(user_condition=UserCondition(embedding_dim=2))
    ppd.on_setup(data)  # the data has the user column
    batch = next(iter(data.train_dataloader()))
    assert batch["user_embedding"].shape == (4, 2) and "label" in batch
    perturb(ppd.user_adapter)

    def completion_scores(b):
        return ppd.score(ppd.prepare([ViewInputs(b["prompt"], b["completion"], b)])).score

    swapped = dict(batch, user_embedding=batch["user_embedding"].flip(1))
    assert not torch.allclose(completion_scores(batch), completion_scores(swapped))


# ---------------------------------------------------------------- the world
def test_the_two_users_conflict_on_colour():
    world = get_world("diffusion_users")
    rng = __import__("random").Random(0)
    red, blue = draw_square("top left", "red", rng), draw_square("top left", "blue", rng)
    caption = "a square at the top left"
    assert world.rewards(caption, red)["red"] > 0.9 and world.rewards(caption, red)["blue"] == 0.0
    assert world.rewards(caption, blue)["blue"] > 0.9 and world.rewards(caption, blue)["red"] == 0.0
    rows = world.make_pairs(200, 0)
    assert {r["user"] for r in rows} == {"red", "blue"}
    for r in rows:  # the winner is in its user's colour
        won = r["jpg_0"] if r["label_0"] == 1.0 else r["jpg_1"]
        assert world.user_reward(r["user"], r["caption"], won) > 0.9
        assert r["user_embedding"] == world.user_embedding(r["user"])
    judge = ToyReward(world="diffusion_users")
    prompts = world.eval_prompts(8, 0)
    assert sorted(p["user"] for p in prompts) == ["blue"] * 4 + ["red"] * 4
    from alignsuite.toy.squares import position_of

    reds = [draw_square(position_of(p["prompt"]), "red", rng) for p in prompts]
    judged = judge.score_batch([r["prompt"] for r in prompts], reds, None, prompts)
    assert [j[f"reward_{p['user']}"] for j, p in zip(judged, prompts)] == [j[judge.name] for j in judged]
    assert sorted(j[judge.name] > 0.9 for j in judged) == [False] * 4 + [True] * 4
    with pytest.raises(ValueError, match="scores each row under its user"):
        judge.score_batch(["a square at the top left"], [red], None, [{"prompt": "a square at the top left"}])


def test_few_shot_embeddings_of_the_two_users_point_opposite_ways():
    world, b = UserSquaresWorld(), backbone()
    from alignsuite.data.images import decode_image

    def embed(user):
        rows = [r for r in world.make_pairs(40, 1) if r["user"] == user][:4]
        won = [decode_image({"bytes": r["jpg_0" if r["label_0"] else "jpg_1"], "path": None}, "x", 0, "s") for r in rows]
        lost = [decode_image({"bytes": r["jpg_1" if r["label_0"] else "jpg_0"], "path": None}, "x", 0, "s") for r in rows]
        return torch.tensor(few_shot_embedding(b, won, lost))

    red, blue = embed("red"), embed("blue")
    assert red.shape == (20,)
    assert float(torch.nn.functional.cosine_similarity(red, blue, dim=0)) < -0.5
    with pytest.raises(ValueError, match="as many chosen as rejected"):
        few_shot_embedding(b, [], [])
    assert np.isfinite(red.numpy()).all()


# ---------------------------------------------------------------- the toy effect (slow)
def user_rewards_of_run(tmp_path, *overrides) -> dict[str, float]:
    """The recipe as shipped with ``overrides``; each user's ``val/reward_<user>`` at the last validation."""
    import csv
    import glob
    import os

    from alignsuite.cli import main

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(["fit", "--config", os.path.join(repo, "recipes", "toy", "diffusion_ppd.yaml"),
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
          "--checkpoint.dirpath", str(tmp_path / "ckpt"), *overrides])
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "*" / "version_*" / "metrics.csv"))[0])))
    last = [r for r in rows if r.get("val/reward_red")][-1]
    return {u: float(last[f"val/reward_{u}"]) for u in ("red", "blue")}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ppd_serves_its_users_where_plain_diffusion_dpo_cannot(tmp_path, seed):
    """Both users' pairs, with and without the user condition (the same recipe, seed, data and draws). From the
    base's 0.47 (red) and 0.56 (blue), the run without it stays there for both users (0.46-0.50 / 0.50-0.59 at step
    300 on seeds 0-3): it cannot serve both. PPD, generating with each user's embedding, serves one user far better
    than that on every seed (0.91-1.00) and both on seeds 0 and 1 (0.77 and more); on seeds 2 and 3 the red user's
    reward does not rise (0.38, 0.40), the way the one-user recipe's does not on some data seeds (docs/diffusion.md)."""
    seeds = ["--seed_everything", str(seed), "--model.init_args.backbone.init_args.seed", str(seed),
             "--data.init_args.seed", str(seed)]
    ppd = user_rewards_of_run(tmp_path / "ppd", *seeds)
    dpo = user_rewards_of_run(tmp_path / "dpo", *seeds, "--model.init_args.backbone.init_args.user_condition", "null")
    mean = lambda r: sum(r.values()) / len(r)  # noqa: E731
    assert max(dpo.values()) <= 0.65, (ppd, dpo)
    assert max(ppd.values()) >= 0.85, (ppd, dpo)
    assert mean(ppd) - mean(dpo) >= 0.1, (ppd, dpo)
    if seed in (0, 1):
        assert min(ppd.values()) >= 0.7, (ppd, dpo)


def test_evaluate_passes_each_rows_user_to_the_export(tmp_path):
    """``evaluate`` on the world's rows: the export's user condition comes back from its folder, each row is
    generated with its user's embedding (the backbone's generation column) and scored under its user."""
    import json
    import os

    from alignsuite.cli import main

    ppd = backbone(user_condition=UserCondition(embedding_dim=2, num_tokens=4, scale=30.0))
    perturb(ppd.user_adapter)
    export = tmp_path / "run" / "export"
    ppd.save_pretrained(str(export))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(["evaluate", "--config", os.path.join(repo, "recipes", "toy", "diffusion_ppd.yaml"),
          "--config", os.path.join(repo, "configs", "eval", "toy_diffusion_users.yaml"), "--evaluate.aligned", str(export),
          "--evaluate.num_prompts", "8", "--evaluate.generation_kwargs", '{"num_inference_steps": 2, "guidance_scale": 3.0}',
          "--trainer.logger.init_args.save_dir", str(tmp_path)])
    results = json.loads((export.parent / "eval" / "results.json").read_text())
    toy = next(s for s in results["scores"] if s["name"] == "toy_reward_diffusion_users")
    assert results["failures"] == {"base": 0, "aligned": 0}
    world = UserSquaresWorld()
    rows = world.eval_prompts(8, 0)
    assert results["prompts"] == [r["prompt"] for r in rows] and {r["user"] for r in rows} == {"red", "blue"}
    again = backbone(str(export))
    images = again.generate([r["prompt"] for r in rows], seed=0, num_inference_steps=2,
                            user_embedding=[r["user_embedding"] for r in rows])
    direct = [world.user_reward(r["user"], r["prompt"], im) for r, im in zip(rows, images)]
    assert toy["aligned"] == pytest.approx(direct, abs=1e-6)
