"""Text-to-speech through the CLI: a tiny speech-token LM and a tiny flow-matching TTS model train with DPO on
INTP-layout rows (codec tokens, mel features, audio files), export folders that load back with changed weights,
``build_pairs`` writes pairs from the model's own samples that ``SpeechPairs`` reads back, and ``predict``
speaks the held-out texts in their prompt speaker's voice."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch
import yaml

from alignsuite.cli import main
from alignsuite.toy import speech
from alignsuite.toy.tts import OFFSET, SPEECH_END, SPEECH_START, VOCAB, SpeechTokenWorld, draw_words

FLOW_CONFIG = {"n_mels": speech.N_MELS, "dim": 32, "depth": 2, "heads": 2, "ff_mult": 2, "text_dim": 16,
               "text_conv_layers": 1, "sampling_rate": speech.SAMPLING_RATE, "hop_length": speech.FRAME_SAMPLES,
               "n_fft": 2 * speech.FRAME_SAMPLES, "win_length": 2 * speech.FRAME_SAMPLES}
TOKEN_BACKBONE = {"speech_token_offset": OFFSET, "codebook_size": speech.CODEBOOK_SIZE,
                  "speech_start_token": SPEECH_START, "speech_end_token": SPEECH_END, "max_length": 96}


# ------------------------------------------------------------------------------------------ tiny models
def save_token_lm(folder) -> str:
    """A seeded random-init tiny Llama over the toy TTS vocabulary (text words, start/end, 32 codes).

    The end token's (tied) embedding row is tripled so that greedy generation stops within a few dozen tokens:
    ``predict`` generates with SpeechTokenLM.generate's default ``max_new_tokens=512``, which a random model
    otherwise runs to the end of (minutes on a loaded 2-core machine)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = SpeechTokenWorld().build_tokenizer()
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=VOCAB.index(SPEECH_END),
                         pad_token_id=tok.pad_token_id, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight[VOCAB.index(SPEECH_END)] *= 3
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def save_flow_model(folder, **audio) -> str:
    from alignsuite.backbones.flow_tts_model import FlowTTSModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        FlowTTSModel(**{**FLOW_CONFIG, **audio}).save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------ data
def intp_rows(n: int, seed: int) -> list[dict]:
    """INTP rows as codes: the text said right (chosen) and with its last word skipped or doubled (rejected),
    by the prompt's speaker."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = draw_words(rng, (2, 4), 0.3)
        wrong = words[:-1] if rng.random() < 0.5 else words + words[-1:]
        speaker = rng.randrange(2)
        prompt_words = [rng.choice(speech.WORDS)]
        rows.append({"text": " ".join(words), "prompt_text": prompt_words[0],
                     "prompt_speech": speech.speak(prompt_words, speaker, rng),
                     "chosen": speech.speak(words, speaker, rng), "rejected": speech.speak(wrong, speaker, rng)})
    return rows


def as_frames(rows: list[dict]) -> list[dict]:
    """The same rows as 16-band mel features (lists of floats)."""
    return [{**r, **{k: speech.codes_to_frames(r[k]).tolist() for k in ("prompt_speech", "chosen", "rejected")}}
            for r in rows]


def as_wav_files(rows: list[dict], folder, rate: int) -> list[dict]:
    """The same rows as WAV files at ``rate`` Hz (the toy vocoder's 16 kHz audio, resampled), referenced by
    paths relative to the data file."""
    import soundfile as sf

    from alignsuite.data.audio import resample

    vocoder = speech.ToyVocoder()
    out = []
    for i, r in enumerate(rows):
        row = dict(r)
        for key in ("prompt_speech", "chosen", "rejected"):
            wave = resample(vocoder([torch.tensor(r[key])])[0], speech.SAMPLING_RATE, rate)
            name = f"{i}_{key}.wav"
            sf.write(folder / name, wave.numpy(), rate)
            row[key] = name
        out.append(row)
    return out


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def recipe(tmp_path, backbone: str, init: dict, train: str, val: str, layout: dict, beta: float = 0.1,
           max_steps: int = 2, lr: float = 1e-2) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": max_steps, "limit_val_batches": 1, "val_check_interval": max_steps,
            "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "log_every_n_steps": 1, "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"), "name": "t", "version": 0}},
        },
        "model": {"class_path": "alignsuite.module.PreferenceModule", "init_args": {
            "backbone": {"class_path": f"alignsuite.backbones.{backbone}", "init_args": init},
            "objective": {"class_path": "alignsuite.objectives.DPO", "init_args": {"beta": beta}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": 0.0}},
        }},
        "data": {"class_path": "alignsuite.data.PreferenceDataModule", "init_args": {
            "train": train, "val": val, "batch_size": 2,
            "layout": {"class_path": "alignsuite.data.SpeechPairs", "init_args": layout}}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def token_recipe(tmp_path, **kwargs) -> str:
    model = save_token_lm(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", intp_rows(8, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", intp_rows(4, seed=2))
    layout = {"speech": "tokens", "codebook_size": speech.CODEBOOK_SIZE}
    return recipe(tmp_path, "SpeechTokenLM", {"model_name_or_path": model, **TOKEN_BACKBONE}, train, val, layout,
                  **kwargs)


def run_dir(tmp_path):
    return tmp_path / "runs" / "t" / "version_0"


def logged(tmp_path, key: str) -> list[float]:
    with open(run_dir(tmp_path) / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def first_loss_is_ln2(tmp_path, steps: int) -> list[float]:
    losses = logged(tmp_path, "train/loss")
    # Step 1: the policy is its frozen reference (and for the flow model both see the same noise), so DPO's
    # margin is 0 and its loss ln 2.
    assert len(losses) == steps and losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(x) for x in losses)
    return losses


# ------------------------------------------------------------------------------------------ fit
def test_a_speech_token_lm_trains_with_dpo_and_exports_a_folder_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    main(["fit", "--config", token_recipe(tmp_path)])
    losses = first_loss_is_ln2(tmp_path, 2)
    assert losses[1] != losses[0]
    assert logged(tmp_path, "val/loss")
    export = run_dir(tmp_path) / "export"
    settings = json.loads((export / "speech_tokens.json").read_text())
    assert settings["speech_token_offset"] == OFFSET and settings["codebook_size"] == speech.CODEBOOK_SIZE
    assert settings["speech_end_token_id"] == VOCAB.index(SPEECH_END)
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    after = AutoModelForCausalLM.from_pretrained(export).state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_flow_matching_tts_trains_on_mel_features_and_exports_a_model_that_loads_back(tmp_path):
    from alignsuite.backbones.flow_tts_model import FlowTTSModel

    model = save_flow_model(tmp_path / "model")
    rows = intp_rows(8, seed=3)
    train = write_jsonl(tmp_path / "train.jsonl", as_frames(rows[:6]))
    val = write_jsonl(tmp_path / "val.jsonl", as_frames(rows[6:]))
    main(["fit", "--config", recipe(tmp_path, "FlowMatchingTTS", {"model_name_or_path": model, "sample_steps": 2},
                                    train, val, {"speech": "features"}, beta=100.0, lr=1e-3)])
    first_loss_is_ln2(tmp_path, 2)
    before = FlowTTSModel.from_pretrained(model).eval()
    after = FlowTTSModel.from_pretrained(run_dir(tmp_path) / "export").eval()
    g = torch.Generator().manual_seed(0)
    noisy, cond = torch.randn(1, 12, speech.N_MELS, generator=g), torch.randn(1, 12, speech.N_MELS, generator=g)
    text = torch.randint(1, 100, (1, 12), generator=g)
    with torch.no_grad():
        out_before, out_after = (m(noisy, cond, text, torch.tensor([500.0])) for m in (before, after))
    assert torch.isfinite(out_after).all() and not torch.allclose(out_before, out_after)


def audio_recipe(tmp_path) -> str:
    """WAV files at 8 kHz, resampled by the layout to the model's 16 kHz and turned into mel frames by the
    backbone (one frame per 320 samples)."""
    model = save_flow_model(tmp_path / "model")
    rows = intp_rows(6, seed=4)
    train = write_jsonl(tmp_path / "train.jsonl", as_wav_files(rows[:4], tmp_path, 8000))
    val = write_jsonl(tmp_path / "val.jsonl", as_wav_files(rows[4:], tmp_path, 8000))
    layout = {"speech": "audio", "sampling_rate": speech.SAMPLING_RATE, "resample": True}
    return recipe(tmp_path, "FlowMatchingTTS", {"model_name_or_path": model, "sample_steps": 2}, train, val, layout,
                  beta=100.0, lr=1e-3)


def test_a_flow_matching_tts_trains_on_audio_files_through_its_mel_front_end(tmp_path):
    main(["fit", "--config", audio_recipe(tmp_path)])
    first_loss_is_ln2(tmp_path, 2)
    assert all(math.isfinite(x) for x in logged(tmp_path, "val/loss"))


def test_audio_at_another_rate_than_the_layouts_is_refused_without_resample(tmp_path):
    from alignsuite.cli import AlignCLI  # the class raises; main() would print the message and exit 1
    from alignsuite.data import DataError

    model = save_flow_model(tmp_path / "model")
    rows = as_wav_files(intp_rows(2, seed=5), tmp_path, 8000)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    layout = {"speech": "audio", "sampling_rate": speech.SAMPLING_RATE}
    with pytest.raises(DataError, match=r"train.jsonl: row 0: field 'prompt_speech': expected audio at 16000 Hz .*"
                                        r"0_prompt_speech.wav\); the file is at 8000 Hz; set resample: true"):
        AlignCLI(args=["fit", "--config", recipe(tmp_path, "FlowMatchingTTS", {"model_name_or_path": model}, data, data,
                                        layout, beta=100.0, max_steps=1)])


# ------------------------------------------------------------------------------------------ build_pairs
def items_file(tmp_path, n: int = 6) -> str:
    rng = random.Random(7)
    items = []
    for _ in range(n):
        speaker = rng.randrange(2)
        prompt_words = [rng.choice(speech.WORDS)]
        items.append({"text": " ".join(draw_words(rng, (2, 3), 0.0)), "prompt_text": prompt_words[0],
                      "prompt_speech": speech.speak(prompt_words, speaker, rng)})
    return write_jsonl(tmp_path / "items.jsonl", items)


def build_pairs_args(config: str, items: str, output: str) -> list[str]:
    return ["build_pairs", "--config", config, "--pairs.items", items, "--pairs.output", output,
            "--pairs.asr", "alignsuite.toy.speech.ToyRecogniser", "--pairs.similarity",
            "alignsuite.toy.speech.ToySimilarity", "--pairs.num_samples", "4", "--pairs.batch_size", "8",
            "--pairs.generation_kwargs", '{"max_new_tokens": 16}']


def test_build_pairs_ranks_the_models_own_samples_and_writes_pairs_speech_pairs_reads(tmp_path):
    from alignsuite.data import PreferenceDataModule, SpeechPairs

    out = tmp_path / "pairs.jsonl"
    items = items_file(tmp_path)
    main(build_pairs_args(token_recipe(tmp_path), items, str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = {json.loads(line)["text"] for line in open(items)}
    # A random model says nothing right (WER near 1); its samples still differ, at least in their speaker.
    assert rows and all(r["text"] in texts for r in rows)
    for r in rows:
        assert r["chosen_wer"] < r["rejected_wer"] or (
            r["chosen_wer"] == r["rejected_wer"] and r["chosen_similarity"] > r["rejected_similarity"])
        for side in ("chosen", "rejected"):
            assert r[side] and all(0 <= c < speech.CODEBOOK_SIZE for c in r[side])
            assert r[f"{side}_transcript"] == speech.transcribe_codes(r[side])
            prompt_speaker = r["prompt_speech"][0] // speech.SPEAKER_SHIFT
            assert r[f"{side}_similarity"] == pytest.approx(speech.speaker_share(r[side], prompt_speaker))
    dm = PreferenceDataModule(train=str(out), layout=SpeechPairs(speech="tokens", codebook_size=speech.CODEBOOK_SIZE),
                              batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["chosen"][0].dtype == torch.long and batch["prompt_speech"][0] is not None
    assert set(batch["prompt"]) <= texts


def test_build_pairs_names_the_items_file_and_line_of_a_row_without_text(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"text": "ba ko"}) + "\n" + json.dumps({"prompt_text": "mi"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(build_pairs_args(token_recipe(tmp_path), str(items), str(tmp_path / "pairs.jsonl")))
    assert e.value.code == 1  # a data error
    err = capsys.readouterr().err
    assert f"{items}: line 2: expected a row with a non-empty 'text'" in err
    assert not (tmp_path / "pairs.jsonl").exists()


# The pair builder lost data: it replaced an earlier pairs file with an empty one and exited 0 when no pair
# survived, and wrote over its own items file. It now fails with the counts, leaves the old file alone, and
# refuses to overwrite rows (or the items) unless told.
def test_build_pairs_that_keeps_no_pair_fails_with_the_counts_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    items = items_file(tmp_path)
    with pytest.raises(SystemExit) as e:  # a random model says nothing right (WER 1): every item is dropped
        main(build_pairs_args(token_recipe(tmp_path), items, str(out)) + ["--pairs.max_chosen_wer", "0.5"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "no pair kept" in err and "6 items, 24 candidates, 0 pairs kept" in err
    assert "items dropped: 6 by max_chosen_wer" in err
    assert not out.exists() and [p.name for p in tmp_path.glob(".pairs-*")] == []


def test_build_pairs_that_keeps_no_pair_leaves_an_earlier_pairs_file_as_it_was(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"earlier": 1}\n')
    items = items_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(build_pairs_args(token_recipe(tmp_path), items, str(out))
             + ["--pairs.max_chosen_wer", "0.5", "--pairs.overwrite", "true"])
    assert e.value.code != 0 and "no pair kept" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": 1}\n'


def test_build_pairs_refuses_to_write_over_its_items_or_earlier_pairs_unless_told(tmp_path, capsys):
    items = items_file(tmp_path)
    before = open(items).read()
    config = token_recipe(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(build_pairs_args(config, items, items))
    assert e.value.code != 0 and "is the items file" in capsys.readouterr().err
    assert open(items).read() == before
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"earlier": 1}\n')
    with pytest.raises(SystemExit) as e:
        main(build_pairs_args(config, items, str(out)))
    assert e.value.code != 0 and "already holds rows" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": 1}\n'
    main(build_pairs_args(config, items, str(out)) + ["--pairs.overwrite", "true"])  # told: replaced
    assert "earlier" not in out.read_text() and len(out.read_text().splitlines()) >= 1


# ------------------------------------------------------------------------------------------ predict
def test_predict_speaks_each_held_out_text_after_its_speaker_prompt(tmp_path):
    from alignsuite.backbones import SpeechTokenLM

    main(["predict", "--config", token_recipe(tmp_path)])
    predictions = [json.loads(line) for line in open(run_dir(tmp_path) / "predictions.jsonl")]
    val = [json.loads(line) for line in open(tmp_path / "val.jsonl")]
    assert sorted(p["index"] for p in predictions) == [0, 1, 2, 3]  # the 4 validation rows
    backbone = SpeechTokenLM(str(tmp_path / "model"), **TOKEN_BACKBONE)
    backbone.configure()
    generated, unprompted = [], []
    for start in (0, 2):  # predict's batches (eval_batch_size 2), in the order they were written
        rows = [val[p["index"]] for p in predictions[start : start + 2]]
        texts = [r["text"] for r in rows]
        speakers = [torch.tensor(r["prompt_speech"]) for r in rows]
        generated += backbone.generate(texts, prompt_speech=speakers, prompt_text=[r["prompt_text"] for r in rows])
        unprompted += backbone.generate(texts, max_new_tokens=4)
    for p, expected in zip(predictions, generated):
        assert p["prompt"] == val[p["index"]]["text"]
        assert all(isinstance(c, int) and 0 <= c < speech.CODEBOOK_SIZE for c in p["generation"])
        # Greedy: the codes generate gives for the text with the row's speaker prompt and its transcript.
        assert p["generation"] == expected.tolist()
    # ... which matter: without them the model says something else.
    assert any(p["generation"][:4] != u.tolist() for p, u in zip(predictions, unprompted))


# ------------------------------------------------------------------------------------------ validation samples
def test_speech_samples_log_wer_and_write_audio_to_the_run_and_tensorboard(tmp_path):
    """SpeechSamples on the tiny flow model with the toy vocoder: val/wer at step 0 and after training equals
    the recogniser's corpus WER of what was written, .wav files decode at the vocoder's rate, and TensorBoard
    holds the audio."""
    import soundfile as sf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = save_flow_model(tmp_path / "model")
    rows = intp_rows(8, seed=3)
    train = write_jsonl(tmp_path / "train.jsonl", as_frames(rows[:6]))
    val = write_jsonl(tmp_path / "val.jsonl", as_frames(rows[6:]))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"text": r["text"], "prompt_text": r["prompt_text"],
                                         "prompt_speech": as_frames([r])[0]["prompt_speech"], "num_frames": 9}) + "\n"
                             for r in rows[:3]))
    path = recipe(tmp_path, "FlowMatchingTTS", {"model_name_or_path": model, "sample_steps": 2,
                                                "vocoder": "alignsuite.toy.speech.ToyVocoder"},
                  train, val, {"speech": "features"}, beta=100.0, lr=1e-3)
    config = yaml.safe_load(open(path))
    config["trainer"]["logger"] = [config["trainer"]["logger"], {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path / "tb"), "name": "t", "version": 0}}]
    config["trainer"]["callbacks"] = [{"class_path": "alignsuite.callbacks.SpeechSamples", "init_args": {
        "items": str(items), "asr": "alignsuite.toy.speech.ToyRecogniser", "num_audio": 3}}]
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    main(["fit", "--config", path])
    wers = logged(tmp_path, "val/wer")
    assert len(wers) == 2  # step 0 and the validation after step 2
    folders = sorted((run_dir(tmp_path) / "speech_samples").iterdir())
    assert [f.name for f in folders] == ["step_000000", "step_000002"]
    for folder, wer in zip(folders, wers):
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert [s["text"] for s in samples] == [r["text"] for r in rows[:3]]
        audio, rate = sf.read(folder / samples[0]["file"])
        assert rate == speech.SAMPLING_RATE and len(audio) == 9 * speech.FRAME_SAMPLES
        # The logged WER is the corpus WER (word edits over all reference words) of the transcripts written.
        assert wer == pytest.approx(speech.word_error_rate([s["transcript"] for s in samples], [s["text"] for s in samples]))
    events = EventAccumulator(str(tmp_path / "tb" / "t" / "version_0"), size_guidance={"audio": 0}).Reload()
    assert sorted(events.Tags()["audio"]) == ["speech/item_0", "speech/item_1", "speech/item_2"]
    assert [e.step for e in events.Audio("speech/item_0")] == [0, 2]
