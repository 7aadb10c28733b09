"""A fit that runs by epochs (no max_steps) under the default warm-up schedule, stopped mid-epoch and resumed from
its last checkpoint, continues with the next batch of the same shuffle and ends with the same weights."""

from __future__ import annotations

import pytest
import torch

from alignsuite.cli import main
from alignsuite.module import PreferenceModule
from test_cli import pair_file, recipe  # noqa: F401


class Stop(Exception):
    pass


def epoch_recipe(tmp_path, model_dir, pairs) -> list[str]:
    tmp_path.mkdir(exist_ok=True)
    path = recipe(tmp_path, model_dir, pairs, max_steps=-1)
    return ["fit", "--config", path, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
            "--checkpoint.every_n_train_steps", "1", "--model.init_args.lr_schedule", "linear"]


def test_a_fit_by_epochs_resumed_mid_epoch_ends_with_the_same_weights(tmp_path, tiny_lm_dir, pair_file, monkeypatch):  # noqa: F811
    whole = tmp_path / "whole"
    main(epoch_recipe(whole, tiny_lm_dir, pair_file))
    stopped = tmp_path / "stopped"
    real = PreferenceModule.on_train_batch_end

    def stop_at_2(self, outputs, batch, batch_idx):
        real(self, outputs, batch, batch_idx)
        if self.global_step == 2:
            raise Stop

    monkeypatch.setattr(PreferenceModule, "on_train_batch_end", stop_at_2)
    with pytest.raises(Stop):
        main(epoch_recipe(stopped, tiny_lm_dir, pair_file))
    monkeypatch.undo()
    assert torch.load(stopped / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 2
    main(epoch_recipe(stopped, tiny_lm_dir, pair_file) + ["--ckpt_path", str(stopped / "ckpt" / "last.ckpt")])
    got = torch.load(stopped / "ckpt" / "last.ckpt", weights_only=False)
    want = torch.load(whole / "ckpt" / "last.ckpt", weights_only=False)
    assert got["global_step"] == want["global_step"] > 2
    assert all(torch.equal(got["state_dict"][k], want["state_dict"][k]) for k in want["state_dict"])
