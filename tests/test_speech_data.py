"""Text-to-speech preference data: codec tokens, mel features and audio files become one canonical row
(text, speaker prompt, chosen, rejected), batched as tensors or decoded `Audio`, and each bad row is
named by source, row and field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from alignsuite.data import DataError, PreferenceDataModule
from alignsuite.data.audio import Audio, audio_ref, decode_audio, resample, write_wav
from alignsuite.data.layouts.speech import SpeechPairs


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_dm(train, layout, **kwargs):
    dm = PreferenceDataModule(train=train, layout=layout, batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def whole(dm):
    """The whole train set as one batch, in row order, through the module's collate function."""
    return dm.collate([dm.train_set[i] for i in range(len(dm.train_set))])


def by_index(batches):
    """Rows of shuffled train batches, keyed by their dataset index: {index: {column: value}}."""
    out = {}
    for b in batches:
        for j, i in enumerate(b["index"].tolist()):
            out[i] = {k: v[j] for k, v in b.items() if k != "index"}
    return out


def tone(path, rate, seconds=0.1, channels=1, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * math.pi * freq * t)
    sf.write(str(path), np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate, subtype="PCM_16")
    return path


def token_rows(n=3):
    return [{"text": f"Say {i}.", "chosen": [i, i + 1, i + 2], "rejected": [7, 8],
             "prompt_speech": [1, 1] if i % 2 == 0 else None, "prompt_text": f"Ref {i}." if i % 2 == 0 else None}
            for i in range(n)]


def error_of(tmp_path, rows, layout=None, name="bad.jsonl"):
    path = write_jsonl(tmp_path / name, rows)
    with pytest.raises(DataError) as err:
        make_dm(path, layout or SpeechPairs())
    return str(err.value)


# --- tokens ------------------------------------------------------------------------------------------


def test_one_codebook_tokens_through_the_train_loader(tmp_path):
    path = write_jsonl(tmp_path / "tts.jsonl", token_rows(3))
    dm = make_dm(path, SpeechPairs(codebook_size=16))
    rows = by_index(dm.train_dataloader())
    assert sorted(rows) == [0, 1, 2]
    for i, row in rows.items():
        assert row["prompt"] == f"Say {i}."
        assert row["chosen"].dtype == torch.long and row["chosen"].tolist() == [i, i + 1, i + 2]
        assert row["rejected"].tolist() == [7, 8]
        if i % 2 == 0:
            assert row["prompt_speech"].tolist() == [1, 1] and row["prompt_text"] == f"Ref {i}."
        else:
            assert row["prompt_speech"] is None and row["prompt_text"] == ""
    batch = whole(dm)
    assert set(batch) == {"prompt", "prompt_text", "prompt_speech", "chosen", "rejected", "index"}
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2]
    assert set(dm.train_set.column_names) == {"prompt", "prompt_text", "prompt_speech", "chosen", "rejected",
                                              "_source", "_row", "index"}
    assert dm.train_set["_row"] == [0, 1, 2] and dm.train_set[0]["_source"] == path


def test_two_codebook_tokens_are_frames_by_codebooks(tmp_path):
    rows = [{"prompt": "Hello.", "chosen": [[1, 2], [3, 4], [5, 6]], "rejected": [[0, 0]],
             "prompt_speech": [[9, 9]], "prompt_text": "Hi."}]
    dm = make_dm(write_jsonl(tmp_path / "k2.jsonl", rows), SpeechPairs(num_codebooks=2, codebook_size=10))
    batch = whole(dm)
    assert batch["prompt"] == ["Hello."]  # TRL's prompt column is the text
    assert batch["chosen"][0].shape == (3, 2) and batch["chosen"][0].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert batch["rejected"][0].tolist() == [[0, 0]] and batch["prompt_speech"][0].tolist() == [[9, 9]]
    assert batch["prompt_text"] == ["Hi."]


def test_one_codebook_accepts_frames_of_one_code(tmp_path):
    rows = [{"text": "a", "chosen": [[1], [2]], "rejected": [3]}]
    batch = whole(make_dm(write_jsonl(tmp_path / "k1.jsonl", rows), SpeechPairs()))
    assert batch["chosen"][0].shape == (2,) and batch["chosen"][0].tolist() == [1, 2]


@pytest.mark.parametrize("code, expected, where", [
    (16, "expected codes in [0, 16) (codebook_size: 16), got 16", "at frame 1, codebook 0"),
    (-1, "expected codes in [0, 16) (codebook_size: 16), got -1", "at frame 1, codebook 0"),
    (1.5, "expected integer codes, got 1.5", "at frame 1, codebook 0"),
    ("x", "expected integer codes, got 'x'", "at frame 1, codebook 0"),
])
def test_bad_codes_name_file_row_field_and_frame(tmp_path, code, expected, where):
    rows = [{"text": "a", "chosen": [1, 2], "rejected": [3]}, {"text": "b", "chosen": [1, 2], "rejected": [3, code]}]
    message = error_of(tmp_path, rows, SpeechPairs(codebook_size=16))
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}: row 1: field 'rejected': {expected}")
    assert where in message


def test_negative_codes_are_refused_without_a_codebook_size(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": [-3], "rejected": [3]}])
    assert "row 0: field 'chosen': expected non-negative codes, got -3" in message


def test_wrong_number_of_codebooks(tmp_path):
    rows = [{"text": "a", "chosen": [[1, 2], [3, 4]], "rejected": [[1, 2], [3, 4, 5]]}]
    message = error_of(tmp_path, rows, SpeechPairs(num_codebooks=2))
    assert "bad.jsonl: row 0: field 'rejected': expected frames of 2 codes (num_codebooks: 2), got [3, 4, 5]" in message
    assert "frame 1 has 3 codes" in message
    message = error_of(tmp_path, [{"text": "a", "chosen": [[1, 2]], "rejected": [[1, 3]]}], name="k.jsonl")
    assert "k.jsonl: row 0: field 'chosen': expected frames of 1 codes (num_codebooks: 1)" in message
    assert "set num_codebooks" in message


def test_text_answers_point_to_the_text_layout(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": "Yes.", "rejected": "No."}])
    assert "row 0: field 'chosen': expected codec tokens: a list of integer codes, got 'Yes.'" in message
    assert "TextPairs" in message


# --- features ----------------------------------------------------------------------------------------


def test_features_batch_as_float_frames(tmp_path):
    rows = [{"text": "a", "chosen": [[0.5, 1.0, 2], [0.0, -1.0, 3.25]], "rejected": [[1, 1, 1]],
             "prompt_speech": [[0.25, 0.5, 0.75]], "prompt_text": "ref"}]
    batch = whole(make_dm(write_jsonl(tmp_path / "mel.jsonl", rows), SpeechPairs(speech="features")))
    chosen = batch["chosen"][0]
    assert chosen.dtype == torch.float32 and chosen.shape == (2, 3)
    assert chosen.tolist() == [[0.5, 1.0, 2.0], [0.0, -1.0, 3.25]]
    assert batch["rejected"][0].tolist() == [[1.0, 1.0, 1.0]]
    assert batch["prompt_speech"][0].tolist() == [[0.25, 0.5, 0.75]]


def test_feature_frames_of_different_widths(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": [[1.0, 2.0], [3.0]], "rejected": [[1.0, 2.0]]}],
                       SpeechPairs(speech="features"))
    assert "row 0: field 'chosen': expected frames of one width (2, frame 0's); frame 1 has width 1" in message
    rows = [{"text": "a", "chosen": [[1.0, 2.0]], "rejected": [[1.0, 3.0]]},
            {"text": "b", "chosen": [[1.0, 2.0, 3.0]], "rejected": [[1.0, 3.0, 3.0]]}]
    message = error_of(tmp_path, rows, SpeechPairs(speech="features"), name="w.jsonl")
    assert "w.jsonl: row 1: field 'chosen': expected feature frames of width 2, as the first row's 'chosen'" in message


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_features(tmp_path, bad):
    path = tmp_path / "nan.jsonl"
    # json.dumps writes NaN/Infinity, which `datasets` reads back as floats.
    path.write_text(json.dumps({"text": "a", "chosen": [[1.0, 2.0]], "rejected": [[1.0, float(bad)]]}) + "\n")
    with pytest.raises(DataError) as err:
        make_dm(str(path), SpeechPairs(speech="features"))
    assert "nan.jsonl: row 0: field 'rejected': expected finite float32 features (no NaN or inf)" in str(err.value)
    assert "at frame 0, dim 1" in str(err.value)


# --- audio -------------------------------------------------------------------------------------------


def test_audio_files_relative_to_the_data_file_decode_at_collate(tmp_path):
    (tmp_path / "wav").mkdir()
    tone(tmp_path / "wav" / "good.wav", 24000, 0.1)
    tone(tmp_path / "wav" / "bad.wav", 24000, 0.05, channels=2)
    tone(tmp_path / "ref.wav", 24000, 0.02)
    rows = [{"text": "Hello.", "chosen": "wav/good.wav", "rejected": "wav/bad.wav",
             "prompt_speech": str(tmp_path / "ref.wav"), "prompt_text": "Hi."}]
    dm = make_dm(write_jsonl(tmp_path / "tts.jsonl", rows), SpeechPairs(speech="audio", sampling_rate=24000))
    stored = dm.train_set[0]["chosen"]
    assert stored == {"bytes": None, "path": str((tmp_path / "wav" / "good.wav").resolve())}  # stored, not decoded
    batch = next(iter(dm.train_dataloader()))
    chosen, rejected, ref = batch["chosen"][0], batch["rejected"][0], batch["prompt_speech"][0]
    assert isinstance(chosen, Audio) and chosen.sampling_rate == 24000 and chosen.source == stored["path"]
    assert chosen.waveform.dtype == torch.float32 and chosen.waveform.shape == (2400,)
    assert rejected.waveform.shape == (1200,)  # two channels averaged to one
    assert ref.waveform.shape == (480,) and batch["prompt_text"] == ["Hi."]
    expected = 0.5 * np.sin(2 * math.pi * 440 * np.arange(2400) / 24000)
    assert np.abs(chosen.waveform.numpy() - expected).max() < 2 / 32768  # 16-bit PCM: within a quantisation step


def test_audio_at_another_rate_is_resampled_when_asked(tmp_path):
    tone(tmp_path / "a16k.wav", 16000, 0.1)
    tone(tmp_path / "b24k.wav", 24000, 0.05)
    rows = [{"text": "a", "chosen": "a16k.wav", "rejected": "b24k.wav"}]
    path = write_jsonl(tmp_path / "tts.jsonl", rows)
    batch = whole(make_dm(path, SpeechPairs(speech="audio", sampling_rate=24000, resample=True)))
    chosen, rejected = batch["chosen"][0], batch["rejected"][0]
    assert chosen.sampling_rate == 24000 and chosen.waveform.shape == (2400,)  # 1600 samples * 24000 / 16000
    assert rejected.waveform.shape == (1200,)  # already at the rate: untouched
    # A 440 Hz tone stays a 440 Hz tone: compare the middle (the filter's edges ramp).
    expected = 0.5 * np.sin(2 * math.pi * 440 * np.arange(2400) / 24000)
    assert np.abs(chosen.waveform.numpy()[200:-200] - expected[200:-200]).max() < 0.01


def test_audio_at_another_rate_is_refused_naming_the_file(tmp_path):
    tone(tmp_path / "a16k.wav", 16000, 0.1)
    tone(tmp_path / "b24k.wav", 24000, 0.05)
    rows = [{"text": "a", "chosen": "b24k.wav", "rejected": "a16k.wav"}]
    dm = make_dm(write_jsonl(tmp_path / "tts.jsonl", rows), SpeechPairs(speech="audio", sampling_rate=24000))
    with pytest.raises(DataError) as err:
        whole(dm)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'tts.jsonl'}: row 0: field 'rejected': expected audio at 24000 Hz")
    assert str((tmp_path / "a16k.wav").resolve()) in message
    assert "the file is at 16000 Hz; set resample: true" in message


def test_corrupt_audio_file_is_named_at_collate(tmp_path):
    tone(tmp_path / "good.wav", 16000, 0.01)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not a wave file at all")
    rows = [{"text": "a", "chosen": "good.wav", "rejected": "corrupt.wav"}]
    dm = make_dm(write_jsonl(tmp_path / "tts.jsonl", rows), SpeechPairs(speech="audio"))  # setup decodes nothing
    with pytest.raises(DataError) as err:
        next(iter(dm.train_dataloader()))
    message = str(err.value)
    assert "tts.jsonl: row 0: field 'rejected': expected an audio file that decodes" in message
    assert str((tmp_path / "corrupt.wav").resolve()) in message and "Error" in message  # soundfile's reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_in_a_float_wav_are_refused_at_collate_naming_file_row_and_field(tmp_path, bad):
    # A float WAV holds NaN and inf as written; they reached the model and stopped the run blaming the learning rate.
    tone(tmp_path / "good.wav", 16000, 0.01)
    tone(tmp_path / "other.wav", 16000, 0.02)
    samples = np.full(160, 0.25, dtype=np.float32)
    samples[37] = bad
    sf.write(str(tmp_path / "nan.wav"), samples, 16000, subtype="FLOAT")
    rows = [{"text": "a", "chosen": "good.wav", "rejected": "other.wav", "prompt_speech": "nan.wav"}]
    dm = make_dm(write_jsonl(tmp_path / "tts.jsonl", rows), SpeechPairs(speech="audio"))
    with pytest.raises(DataError) as err:
        whole(dm)
    assert (err.value.source, err.value.row, err.value.field) == (str(tmp_path / "tts.jsonl"), 0, "prompt_speech")
    assert "finite samples" in str(err.value) and "at sample 37" in str(err.value)
    assert str((tmp_path / "nan.wav").resolve()) in str(err.value)


def test_non_finite_samples_in_an_array_are_refused_when_the_rows_are_built():
    with pytest.raises(DataError, match=r"src: row 3: field 'chosen': expected finite samples .* at sample 1"):
        audio_ref({"array": [0.0, float("nan")], "sampling_rate": 16000}, "chosen", 3, "src")


def test_an_audio_url_is_refused_saying_urls_are_not_fetched(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": "https://example.com/a.wav", "rejected": "x.wav"}],
                       SpeechPairs(speech="audio"))
    assert "bad.jsonl: row 0: field 'chosen':" in message and "URLs are not fetched" in message


def test_missing_audio_file_is_named_at_setup(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": "nowhere.wav", "rejected": "x.wav"}],
                       SpeechPairs(speech="audio"))
    assert "bad.jsonl: row 0: field 'chosen': expected an audio file; there is no file at" in message
    assert "nowhere.wav" in message


def test_audio_value_kinds_give_the_same_waveform(tmp_path):
    tone(tmp_path / "a.wav", 16000, 0.01)
    data = (tmp_path / "a.wav").read_bytes()
    samples, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    refs = [audio_ref(v, "chosen", 0, "src", str(tmp_path)) for v in
            ("a.wav", data, {"bytes": data, "path": None}, {"bytes": None, "path": "a.wav"},
             {"array": samples, "sampling_rate": 16000})]
    decoded = [decode_audio(ref, "chosen", 0, "src") for ref in refs]
    assert all(a.sampling_rate == 16000 and torch.equal(a.waveform, decoded[0].waveform) for a in decoded)
    with pytest.raises(DataError, match="src: row 0: field 'chosen': expected encoded audio bytes"):
        audio_ref(3, "chosen", 0, "src")


def test_write_wav_round_trips_and_leaves_no_temporary_file(tmp_path):
    wave = torch.linspace(-1, 1, 160)
    write_wav(tmp_path / "out" / "s.wav", wave, 8000)
    samples, rate = sf.read(str(tmp_path / "out" / "s.wav"), dtype="float32")
    assert rate == 8000 and np.abs(samples - wave.numpy()).max() < 1e-4
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s.wav"]


# --- rows --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", None, 3])
def test_blank_or_missing_text(tmp_path, text):
    message = error_of(tmp_path, [{"text": text, "chosen": [1], "rejected": [2]}])
    assert "bad.jsonl: row 0: field 'text': expected a non-empty text to speak" in message


def test_missing_text_column_lists_the_row_columns(tmp_path):
    message = error_of(tmp_path, [{"caption": "a", "chosen": [1], "rejected": [2]}])
    assert "row 0: field 'text': expected a column named 'text' (or 'prompt')" in message
    assert "['caption', 'chosen', 'rejected']" in message


def test_missing_rejected_column(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": [1], "loser": [2]}])
    assert "bad.jsonl: row 0: field 'rejected': expected a column named 'rejected'" in message


@pytest.mark.parametrize("layout", [SpeechPairs(), SpeechPairs(speech="features")])
def test_empty_utterance(tmp_path, layout):
    full = [1] if layout.speech == "tokens" else [[1.0]]
    rows = [{"text": "a", "chosen": full, "rejected": full + full}, {"text": "b", "chosen": full, "rejected": []}]
    message = error_of(tmp_path, rows, layout)
    assert "bad.jsonl: row 1: field 'rejected': expected a non-empty utterance (at least one frame), got []" in message


def test_chosen_and_rejected_for_another_text(tmp_path):
    rows = [{"text": "Hello.", "chosen": [1], "rejected": [2], "chosen_text": "Hello.", "rejected_text": "Hello. "},
            {"text": "Hello.", "chosen": [1], "rejected": [2], "chosen_text": "Hello.", "rejected_text": "Goodbye."}]
    message = error_of(tmp_path, rows)
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}: row 1: field 'rejected_text': chosen and rejected are"
                              " for different texts")
    assert "'Goodbye.'" in message and "'Hello.'" in message


def test_prompt_text_without_prompt_speech(tmp_path):
    message = error_of(tmp_path, [{"text": "a", "chosen": [1], "rejected": [2], "prompt_text": "ref"}])
    assert "row 0: field 'prompt_text': expected a speaker prompt in 'prompt_speech'" in message


def test_identical_pairs_are_skipped_counted_and_warned(tmp_path):
    rows = token_rows(4)
    rows[1]["rejected"] = rows[1]["chosen"]
    rows[3]["rejected"] = rows[3]["chosen"]
    path = write_jsonl(tmp_path / "tts.jsonl", rows)
    with pytest.warns(UserWarning, match=r"skipped 2 rows where chosen equals rejected \(rows 1, 3\)"):
        dm = make_dm(path, SpeechPairs())
    assert dm.skipped == {path: 2}
    assert dm.train_set["_row"] == [0, 2] and whole(dm)["prompt"] == ["Say 0.", "Say 2."]


def test_custom_field_names(tmp_path):
    rows = [{"sentence": "a", "win": [1], "lose": [2], "spk": [3], "spk_text": "r"}]
    layout = SpeechPairs(text_field="sentence", chosen_field="win", rejected_field="lose",
                         prompt_speech_field="spk", prompt_text_field="spk_text")
    batch = whole(make_dm(write_jsonl(tmp_path / "c.jsonl", rows), layout))
    assert batch["prompt"] == ["a"] and batch["chosen"][0].tolist() == [1] and batch["rejected"][0].tolist() == [2]
    assert batch["prompt_speech"][0].tolist() == [3] and batch["prompt_text"] == ["r"]


def test_options_of_another_speech_kind_are_refused():
    with pytest.raises(ValueError, match="sampling_rate and resample describe speech: audio"):
        SpeechPairs(sampling_rate=16000)
    with pytest.raises(ValueError, match="codebook_size and num_codebooks describe speech: tokens"):
        SpeechPairs(speech="features", codebook_size=8)
    with pytest.raises(ValueError, match="resample: true needs the sampling_rate"):
        SpeechPairs(speech="audio", resample=True)
    assert repr(SpeechPairs(speech="audio", sampling_rate=24000)) == "SpeechPairs(speech='audio', sampling_rate=24000)"
    assert SpeechPairs.modality == "text_to_speech" and SpeechPairs.row_kind == "pairs"


def test_audio_feature_columns_of_a_parquet_file_are_read_undecoded(tmp_path):
    import datasets

    tone(tmp_path / "a.wav", 16000, 0.01)
    tone(tmp_path / "b.wav", 16000, 0.02)
    rows = [{"text": "a", "chosen": {"bytes": (tmp_path / "a.wav").read_bytes(), "path": None},
             "rejected": {"bytes": (tmp_path / "b.wav").read_bytes(), "path": None}}]
    ds = datasets.Dataset.from_list(rows).cast_column("chosen", datasets.Audio()).cast_column("rejected", datasets.Audio())
    ds.to_parquet(str(tmp_path / "hub.parquet"))  # as a hub dataset with Audio features stores it
    batch = whole(make_dm(str(tmp_path / "hub.parquet"), SpeechPairs(speech="audio", sampling_rate=16000)))
    assert batch["chosen"][0].waveform.shape == (160,) and batch["rejected"][0].waveform.shape == (320,)
    assert batch["prompt_speech"] == [None] and batch["prompt_text"] == [""]


def test_code_out_of_range_in_a_second_codebook(tmp_path):
    rows = [{"text": "a", "chosen": [[1, 2], [3, 8]], "rejected": [[0, 0]]}]
    message = error_of(tmp_path, rows, SpeechPairs(num_codebooks=2, codebook_size=8))
    assert "row 0: field 'chosen': expected codes in [0, 8) (codebook_size: 8), got 8; at frame 1, codebook 1" in message


def test_resample_keeps_the_type_and_the_length_ratio():
    wave = torch.sin(torch.arange(1601, dtype=torch.float32) / 5)
    out = resample(wave, 16000, 24000)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2402,)  # ceil(1601 * 3 / 2)
    assert isinstance(resample(wave.numpy(), 24000, 16000), np.ndarray) and resample(wave, 8000, 8000) is wave


# --- the model's settings, handed over by the backbone at setup ----------------------------------------


def test_codes_beyond_the_models_codebooks_are_refused_at_collate_naming_file_row_and_field(tmp_path):
    rows = token_rows(3)
    rows[1]["rejected"] = [7, 12]
    rows[2].update(chosen=[[1, 2], [3, 4]], rejected=[[7, 8]], prompt_speech=None, prompt_text=None)
    path = write_jsonl(tmp_path / "tts.jsonl", rows[:2])
    dm = make_dm(path, SpeechPairs())  # no codebook_size in the layout: the model's is the one that counts
    whole(dm)
    dm.layout.use_model(codebook_size=10, num_codebooks=1)
    assert dm.collate([dm.train_set[0]])["chosen"][0].tolist() == [0, 1, 2]
    with pytest.raises(DataError) as err:
        whole(dm)
    assert (err.value.source, err.value.row, err.value.field) == (path, 1, "rejected")
    assert "codes in [0, 10) (the model's codebook_size)" in str(err.value) and "at frame 1, codebook 0" in str(err.value)
    two = make_dm(write_jsonl(tmp_path / "two.jsonl", [rows[2]]), SpeechPairs(num_codebooks=2))
    two.layout.use_model(codebook_size=10, num_codebooks=1)
    with pytest.raises(DataError, match=r"two.jsonl: row 0: field 'chosen': expected frames of 1 code .*model"):
        whole(two)


def test_feature_frames_of_another_width_than_the_models_mels_are_refused_at_collate(tmp_path):
    rows = [{"text": "a", "chosen": [[0.0, 1.0, 2.0]], "rejected": [[1.0, 1.0, 1.0]]}]
    path = write_jsonl(tmp_path / "tts.jsonl", rows)
    dm = make_dm(path, SpeechPairs(speech="features"))
    dm.layout.use_model(n_mels=4)
    with pytest.raises(DataError, match=rf"^{path}: row 0: field 'chosen': expected feature frames of width 4"
                                        r" \(the model's n_mels\); its frames have width 3"):
        whole(dm)


def test_audio_at_another_rate_than_the_models_is_refused_naming_the_file(tmp_path):
    tone(tmp_path / "a16k.wav", 16000, 0.1)
    tone(tmp_path / "b16k.wav", 16000, 0.05)
    path = write_jsonl(tmp_path / "tts.jsonl", [{"text": "a", "chosen": "a16k.wav", "rejected": "b16k.wav"}])
    dm = make_dm(path, SpeechPairs(speech="audio"))
    dm.layout.use_model(sampling_rate=24000)
    with pytest.raises(DataError) as err:
        whole(dm)
    assert str(err.value).startswith(f"{path}: row 0: field 'chosen': expected audio at 24000 Hz")
    assert str((tmp_path / "a16k.wav").resolve()) in str(err.value)
    with pytest.raises(ValueError, match=r"data.layout.sampling_rate is 16000 .* expects 24000 Hz"):
        SpeechPairs(speech="audio", sampling_rate=16000).use_model(sampling_rate=24000)
    resampling = SpeechPairs(speech="audio", sampling_rate=24000, resample=True)
    resampling.use_model(sampling_rate=24000)
