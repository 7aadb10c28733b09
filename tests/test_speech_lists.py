"""Speech lists (K graded utterances per text) through the speech-token LM: read, padded with an utterance of no
frames, and scored to the same list loss as the unpadded list."""

from __future__ import annotations

import json
import math
import random

import lightning as L
import pytest
import torch

from alignsuite.backbones import SpeechTokenLM
from alignsuite.data import DataError, PreferenceDataModule, SpeechLists
from alignsuite.module import PreferenceModule
from alignsuite.objectives import ListMLE
from alignsuite.reference import FrozenCopy


def save_tiny_speech_lm(path, seed: int) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alignsuite.toy.tts import SpeechTokenWorld

    tok = SpeechTokenWorld().build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                     tie_word_embeddings=True, initializer_range=0.2)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def speech_rows() -> list[dict]:
    """Two texts, each with three utterances: said right, with the last word dropped, with a word repeated."""
    from alignsuite.toy.speech import speak

    rng, rows = random.Random(0), []
    for text in ("ba mi", "ko ba du"):
        words = text.split()
        rows.append({"text": text, "responses": [speak(words, 0, rng), speak(words[:-1], 0, rng), speak(words + words[-1:], 0, rng)],
                     "scores": [1.0, 0.0, 0.5]})
    return rows


def write(tmp_path, rows) -> str:
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_speech_lists_pad_with_an_utterance_of_no_frames(tmp_path):
    data = PreferenceDataModule(train=write(tmp_path, speech_rows()), layout=SpeechLists(list_size=4), batch_size=2)
    data.setup()
    batch = data.collate([data.train_set[0], data.train_set[1]])
    assert [tuple(u.shape) for u in batch["responses"][0]][3] == (0,)
    assert all(u.dtype == torch.long for u in batch["responses"][0])
    assert batch["mask"].tolist() == [[True, True, True, False]] * 2 and batch["labels"].shape == (2, 4)


def test_lists_of_features_cannot_be_padded(tmp_path):
    rows = [{"text": "ba", "responses": [[[0.1, 0.2]], [[0.3, 0.4]]], "scores": [1, 0]}]
    with pytest.raises(DataError, match=r"row 0: field 'responses': expected 3 valid utterances .* only codec tokens"):
        PreferenceDataModule(train=write(tmp_path, rows), layout=SpeechLists(list_size=3, speech="features")).setup()


class Record(L.Callback):
    """The list loss of each validation batch."""

    def __init__(self):
        self.losses = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.losses.append(float(pl_module.objective(pl_module.compute_scores(batch, "val")).loss))


def test_a_padded_speech_list_gives_the_loss_of_the_unpadded_one(tmp_path):
    from alignsuite.toy.tts import SpeechTokenWorld

    policy, reference = save_tiny_speech_lm(tmp_path / "policy", 0), save_tiny_speech_lm(tmp_path / "ref", 1)
    path = write(tmp_path, speech_rows())
    losses = {}
    for k in (3, 4):
        record = Record()

        module = PreferenceModule(SpeechTokenLM(policy, max_length=96, **SpeechTokenWorld.backbone_args),
                                  ListMLE(beta=1.0, list_size=k), FrozenCopy(reference))
        data = PreferenceDataModule(train=path, val=path, layout=SpeechLists(list_size=k), batch_size=2)
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[record]).validate(module, data)
        losses[k] = record.losses[0]
    assert losses[4] == pytest.approx(losses[3], abs=1e-5)
    assert abs(losses[3] - math.log(6)) > 0.05
