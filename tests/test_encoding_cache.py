"""The diffusion backbone's encoding cache: exact, hit after one pass, invalidated by what changes it."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from conftest import save_tiny_pipeline
from PIL import Image

from alignsuite.backbones import TextToImage
from alignsuite.backbones.text_to_image_cache import open_cache
from alignsuite.toy.data import ToyPreferenceData
from alignsuite.backbones.base import shared_prompts


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("sd"), "sd")


@pytest.fixture(scope="module")
def data():
    dm = ToyPreferenceData(world="diffusion", num_train=8, num_val=4, batch_size=4)
    dm.setup("fit")
    return dm


def backbone(path, **kwargs):
    b = TextToImage(path, resolution=16, **kwargs)
    b.configure()
    return b


def first_batch(data):
    return next(iter(data.train_dataloader()))


def count_vae_calls(b, monkeypatch):
    calls = []
    encode = b.frozen["vae"].encode
    monkeypatch.setattr(b.frozen["vae"], "encode", lambda x: calls.append(len(x)) or encode(x))
    return calls


def test_cached_steps_equal_uncached_steps(sd_dir, data, tmp_path):
    plain, cached = backbone(sd_dir), backbone(sd_dir, cache_dir=str(tmp_path))
    cached.warm_cache(data)
    batch = first_batch(data)
    for _ in range(2):  # two steps: fresh noise, flips and latent draws each time
        a = plain.prepare(shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"]))
        b = cached.prepare(shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"]))
        assert torch.equal(a.noisy, b.noisy) and torch.equal(a.target, b.target) and torch.equal(a.timesteps, b.timesteps)
        assert a.cond.keys() == b.cond.keys() and all(torch.equal(a.cond[k], b.cond[k]) for k in a.cond)
    assert cached.cache.misses == 0 and cached.cache.hits == 2 * (2 * 4 + 4)  # 8 images and 4 captions a step


def test_one_pass_then_hits_without_the_vae(sd_dir, data, tmp_path, monkeypatch):
    first = backbone(sd_dir, cache_dir=str(tmp_path))
    calls = count_vae_calls(first, monkeypatch)
    first.warm_cache(data)
    images = 2 * (8 + 4)  # chosen and rejected of 8 train and 4 val pairs
    assert sum(calls) == 2 * images  # both orientations (random_flip is on)
    captions = len(set(data.train_set["prompt"]) | set(data.val_set["prompt"]))
    assert len(first.cache) == 2 * images + captions
    assert glob.glob(os.path.join(first.cache.dir, "shard-*.safetensors"))
    assert not glob.glob(os.path.join(first.cache.dir, "*.tmp"))

    again = backbone(sd_dir, cache_dir=str(tmp_path))  # a later run: same folder, nothing to encode
    assert again.cache.dir == first.cache.dir and len(again.cache) == len(first.cache)
    calls = count_vae_calls(again, monkeypatch)
    again.warm_cache(data)
    batch = first_batch(data)
    again.prepare(shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"]))
    assert calls == [] and again.cache.misses == 0


def test_an_image_first_seen_in_training_is_encoded_not_stored(sd_dir, data, tmp_path, monkeypatch):
    b = backbone(sd_dir, cache_dir=str(tmp_path))
    b.warm_cache(data)
    size = len(b.cache)
    calls = count_vae_calls(b, monkeypatch)
    batch = first_batch(data)
    generated = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(4)]  # e.g. SePPO's sampled losers
    b.prepare(shared_prompts(batch["prompt"], batch["chosen"], generated))
    assert calls == [4] and b.cache.misses == 4 and len(b.cache) == size


@pytest.mark.parametrize("change", [{"resolution": 8}, {"random_flip": False}, {"vae_dtype": "bfloat16"}])
def test_settings_that_change_the_encoding_start_a_fresh_cache(sd_dir, data, tmp_path, change):
    base = backbone(sd_dir, cache_dir=str(tmp_path))
    base.warm_cache(data)
    settings = {"resolution": 16, "cache_dir": str(tmp_path), **change}
    other = TextToImage(sd_dir, **settings)
    other.configure()
    assert other.cache.dir != base.cache.dir and len(other.cache) == 0


def test_changed_encoder_weights_start_a_fresh_cache(sd_dir, tmp_path):
    base = backbone(sd_dir, cache_dir=str(tmp_path))
    with torch.no_grad():
        next(base.frozen["text_encoder"].parameters()).add_(1e-3)
    assert open_cache(base).dir != base.cache.dir


def test_random_crop_cannot_be_cached(sd_dir, tmp_path):
    with pytest.raises(ValueError, match="random_crop"):
        TextToImage(sd_dir, resolution=16, random_crop=True, cache_dir=str(tmp_path))


def test_a_file_dropped_in_the_folder_does_not_replace_real_entries(sd_dir, data, tmp_path):
    """Only shards this cache wrote are read: one without the header (sorted first, so it was indexed
    first), one from another cache folder, a tensor under a key its header does not list, a pickle in
    disguise. Each is ignored with a warning that names it, and the real entries are read."""
    from safetensors.torch import save_file

    from alignsuite.backbones.encoding_cache import SHARD_FORMAT, image_key

    first = backbone(sd_dir, cache_dir=str(tmp_path), random_flip=False)
    first.warm_cache(data)
    key = image_key(first_batch(data)["chosen"][0])
    real = {k: v.clone() for k, v in first.cache.get(key).items()}
    folder = first.cache.dir
    planted = {f"{key}/mean": torch.zeros_like(real["mean"]), f"{key}/std": torch.zeros_like(real["std"])}
    save_file(planted, os.path.join(folder, "a-planted.safetensors"))  # no header
    save_file(planted, os.path.join(folder, "b-other-cache.safetensors"),
              metadata={"format": SHARD_FORMAT, "fingerprint": "another-folder", "keys": f'["{key}"]'})
    save_file(planted, os.path.join(folder, "c-unlisted.safetensors"),
              metadata={"format": SHARD_FORMAT, "fingerprint": os.path.basename(folder), "keys": '["something-else"]'})
    torch.save({"mean": real["mean"]}, os.path.join(folder, "d-pickle.safetensors"))

    with pytest.warns(UserWarning) as caught:
        again = backbone(sd_dir, cache_dir=str(tmp_path), random_flip=False)
    said = " ".join(str(w.message) for w in caught)
    for name in ("a-planted", "b-other-cache", "c-unlisted", "d-pickle"):
        assert f"{name}.safetensors" in said, name
    assert again.cache.dir == folder and len(again.cache) == len(first.cache)
    entry = again.cache.get(key)
    assert entry.keys() == real.keys() and all(torch.equal(entry[k], real[k]) for k in real)


def test_shards_record_what_they_hold(sd_dir, data, tmp_path):
    import json

    from safetensors import safe_open

    b = backbone(sd_dir, cache_dir=str(tmp_path))
    b.warm_cache(data)
    keys = set()
    for path in glob.glob(os.path.join(b.cache.dir, "shard-*.safetensors")):
        with safe_open(path, framework="pt") as f:
            header = f.metadata()
            assert header["fingerprint"] == os.path.basename(b.cache.dir)
            listed = set(json.loads(header["keys"]))
            assert {name.split("/", 1)[0] for name in f.keys()} == listed
            keys |= listed
    assert len(keys) == len(b.cache)
