"""Image lists (K graded images per caption) through the text-to-image backbone: read, padded, decoded, and scored
in one stacked forward with one noise draw per caption shared by its K images."""

from __future__ import annotations

import io
import math

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from alignsuite.backbones import TextToImage
from alignsuite.data import DataError, ImageLists, PreferenceDataModule
from alignsuite.module import PreferenceModule
from alignsuite.objectives import ListMLE
from alignsuite.toy.data import ToyPreferenceData


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def built(tmp_path, rows, **layout) -> PreferenceDataModule:
    import datasets

    path = str(tmp_path / "train.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    data = PreferenceDataModule(train=path, layout=ImageLists(**layout), batch_size=2)
    data.setup()
    return data


def test_ranked_image_sets_are_padded_with_blank_images_and_masked(tmp_path):
    rows = [{"caption": "a square", "images": [png("red"), png("blue"), png("purple")], "ranks": [1, 3, 2]},
            {"caption": "a circle", "images": [png("green"), png("white")], "ranks": [2, 1]}]
    data = built(tmp_path, rows, list_size=4)
    batch = data.collate([data.train_set[i] for i in range(2)])
    assert batch["prompt"] == ["a square", "a circle"]
    assert [len(r) for r in batch["responses"]] == [4, 4]
    assert batch["responses"][0][0].getpixel((0, 0)) == (255, 0, 0)
    assert batch["responses"][1][2].getpixel((0, 0)) == (0, 0, 0)  # padding: a black image, never a copy
    assert batch["mask"].tolist() == [[True, True, True, False], [True, True, False, False]]
    assert batch["labels"][0, :3].tolist() == [-1.0, -3.0, -2.0] and math.isnan(batch["labels"][1, 3])


def test_pick_a_pic_pairs_are_lists_of_two_and_ties_are_skipped(tmp_path):
    rows = [{"caption": "a", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": 0.0},
            {"caption": "b", "jpg_0": png("red"), "jpg_1": png("blue"), "label_0": 0.5}]
    data = built(tmp_path, rows, list_size=2)
    batch = data.collate([data.train_set[0]])
    assert batch["responses"][0][0].getpixel((0, 0)) == (0, 0, 255)  # jpg_1 won
    assert batch["labels"].tolist() == [[1.0, 0.0]] and len(data.train_set) == 1


def test_bad_image_lists_are_refused_naming_the_row_and_field(tmp_path):
    good = {"caption": "a", "images": [png("red"), png("blue")], "scores": [1.0, 0.0]}
    with pytest.raises(DataError, match=r"train.parquet: row 1: field 'scores': expected a list of 2 numbers"):
        built(tmp_path, [good, {"caption": "b", "images": [png("red"), png("blue")], "scores": [1.0]}], list_size=2)
    with pytest.raises(DataError, match=r"row 1: field 'images': expected at most 2 valid responses"):
        built(tmp_path, [good, {"caption": "b", "images": [png("red"), png("blue"), png("green")],
                                "scores": [1.0, 0.0, 0.5]}], list_size=2)
    data = built(tmp_path, [good, {"caption": "b", "images": [png("red"), png("blue")], "scores": [1.0, float("nan")]}],
                 list_size=2)
    assert len(data.train_set) == 1 and sum(data.skipped.values()) == 1


def test_k_images_share_one_noise_draw_and_one_forward(tiny_sd_dir):
    """The K views of a caption are prepared together: one noise and one timestep per caption for all its images
    (epsilon targets are the noise itself, so they are equal across views), and scored in one call of the UNet."""
    backbone = TextToImage(tiny_sd_dir, resolution=16, random_flip=False)
    backbone.configure()
    module = PreferenceModule(backbone, ListMLE(beta=50.0, list_size=3))
    rng = np.random.default_rng(0)
    rows = [[Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)] for _ in range(2)]
    batch = {"prompt": ["a square at the top left", "a square at the bottom right"], "responses": rows,
             "labels": torch.tensor([[3.0, 2.0, 1.0]] * 2), "mask": torch.ones(2, 3, dtype=torch.bool)}
    prepared = backbone.prepare(module.build_views(batch))
    targets, timesteps = prepared.target.chunk(3), prepared.timesteps.chunk(3)
    for k in (1, 2):
        assert torch.equal(targets[k], targets[0]) and torch.equal(timesteps[k], timesteps[0])
    assert not torch.equal(targets[0][0], targets[0][1])  # each caption its own draw
    calls = []
    hook = backbone.policy.register_forward_hook(lambda *args: calls.append(1))
    scores = backbone.score(prepared)
    hook.remove()
    assert len(calls) == 1 and scores.score.shape == (6,)


def test_the_diffusion_toy_world_makes_ranked_sets_that_train(tmp_path):
    """Two steps of listwise Diffusion-DPO on the toy world's ranked sets of 4 images: finite losses, and the first
    is log(4!) (policy == reference)."""
    from alignsuite.reference import FrozenCopy
    from alignsuite.toy.squares import SquaresWorld

    world = SquaresWorld()
    row = world.make_lists(1, seed=0)[0]
    rewards = [world.reward(row["caption"], image) for image in row["images"]]
    best_first = sorted(range(4), key=lambda k: row["ranks"][k])
    assert [rewards[k] for k in best_first] == sorted(rewards, reverse=True) and max(rewards) > 0.9
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    module = PreferenceModule(TextToImage("toy:diffusion", resolution=16, random_flip=False), ListMLE(beta=50.0, list_size=4),
                              FrozenCopy(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5))
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=0, callbacks=[Record()]).fit(
        module, ToyPreferenceData(world="diffusion", num_train=8, num_val=2, batch_size=4, list_size=4))
    assert losses[0] == pytest.approx(math.log(24), abs=1e-4) and all(math.isfinite(x) for x in losses)

