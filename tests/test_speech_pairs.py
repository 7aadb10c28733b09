"""Pair building for TTS: candidates ranked by WER (then speaker similarity), selection thresholds, item files,
and the toy world's recogniser that makes WER exact."""

import json
import math
import random
import re
import unicodedata

import pytest
import torch

from alignsuite.data.errors import DataError
from alignsuite.judging import error_rates
from alignsuite.speech.asr import Utterance, normalise, utterance_wer
from alignsuite.speech.pairs import Candidate, SelectionRule, judge, load_items, pair_rows, select, write_jsonl
from alignsuite.toy import speech


def codes(text: str, speaker: int = 0) -> torch.Tensor:
    return torch.tensor(speech.speak(text.split(), speaker))


# ------------------------------------------------------------------ the toy recogniser
def test_toy_speech_is_inverted_exactly_under_its_noise():
    rng = random.Random(0)
    for _ in range(50):
        words = [rng.choice(speech.WORDS) for _ in range(rng.randint(1, 9))]
        spoken = speech.speak(words, rng.randrange(2), rng)
        assert speech.transcribe_codes(spoken) == " ".join(words)
        frames = speech.codes_to_frames(spoken, noise=0.1, generator=torch.Generator().manual_seed(rng.randrange(99)))
        assert speech.transcribe(frames) == " ".join(words)


def test_toy_recogniser_errors_count_as_wer_edits():
    said = codes("ba ko mi").tolist()
    skipped = said[:len(speech.speak(["ba"], 0))] + [0] + speech.speak(["mi"], 0)  # "ba mi": one deletion
    assert speech.transcribe_codes(skipped) == "ba mi"
    assert utterance_wer("ba mi", "ba ko mi") == pytest.approx(1 / 3)
    garbled = [speech.PRONUNCIATION["ba"][0], speech.PRONUNCIATION["ko"][1]]  # no such word
    assert speech.transcribe_codes(garbled) == "?"
    assert speech.word_error_rate(["ba mi", "ko ko"], ["ba ko mi", "ko"]) == pytest.approx(2 / 4)


def test_toy_similarity_is_the_prompt_speakers_share():
    sim = speech.ToySimilarity()
    prompt = Utterance(codes("te", speaker=1))
    out = sim.similarity([Utterance(codes("ba ko", 1)), Utterance(codes("ba ko", 0)), Utterance(codes("ba", 0))],
                         [prompt, prompt, None])
    assert out[:2] == [1.0, 0.0] and math.isnan(out[2])


def test_toy_vocoder_makes_20ms_frames_in_range():
    wave = speech.ToyVocoder()([codes("ba ko")])[0]
    assert wave.shape == (len(codes("ba ko")) * speech.FRAME_SAMPLES,) and float(wave.abs().max()) <= 1.0
    silence = speech.ToyVocoder()([torch.zeros(3, speech.N_MELS)])[0]
    assert float(silence.abs().max()) == 0.0


def test_normalise_ignores_case_and_punctuation():
    assert normalise("Hello,  World!") == "hello world"
    assert normalise("Ça va? «Très» bien — n'est-ce pas") == "ça va très bien n'est ce pas"
    assert utterance_wer("hello world.", "Hello, World") == 0.0
    with pytest.raises(ValueError, match="empty"):
        utterance_wer("x", " ,")


def test_normalise_takes_ascii_text_as_the_unicode_categories_do():
    """ASCII text skips the per-character category lookup; every ASCII character, and random strings of them,
    come out as the Unicode path makes them."""
    def by_category(text):
        text = unicodedata.normalize("NFKC", text).lower()
        return re.sub(r"\s+", " ", "".join(" " if unicodedata.category(c)[0] in "PS" and c != "'" else c
                                           for c in text)).strip()

    ascii_chars = [chr(i) for i in range(128)]
    rng = random.Random(0)
    texts = ascii_chars + ["".join(rng.choice(ascii_chars) for _ in range(rng.randint(0, 24))) for _ in range(3000)]
    assert [normalise(t) for t in texts] == [by_category(t) for t in texts]


@pytest.mark.parametrize("unit", ["word", "char"])
def test_error_rates_are_torchmetrics_rate_of_each_utterance(unit):
    """All utterances at once give each one's own torchmetrics rate, the same floats (inf and NaN where the
    reference is empty), for transcripts longer, shorter and empty."""
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    rate = {"word": word_error_rate, "char": char_error_rate}[unit]
    rng, words = random.Random(1), "ba ko te mi su ra".split()
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 10))) for _ in range(600)]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 8))) for _ in range(600)]
    got, want = error_rates(hyps, refs, unit=unit), [float(rate(h, r)) for h, r in zip(hyps, refs)]
    assert [str(g) for g in got] == [str(w) for w in want]  # str: NaN equals NaN
    assert {math.isinf(w) for w in want} == {True, False}
    assert error_rates(["ba ko"], ["ko ba ko"]) == [float(torch.tensor(1.0) / 3)]  # one insertion, float32
    assert error_rates([], []) == []


def test_error_rates_on_normalised_text_name_an_empty_reference():
    assert error_rates(["Ba, ko!", "te"], ["ba ko", "TE."], normalised=True) == [0.0, 0.0]
    with pytest.raises(ValueError, match="^reference transcript 1 is empty"):
        error_rates(["ba", "ko"], ["ba", " ?"], normalised=True)


# ------------------------------------------------------------------ ranking and selection
def cand(wer, sim=float("nan"), j=0):
    return Candidate(torch.tensor([j]), "", wer, sim, j)


def test_best_and_worst_by_wer_then_similarity():
    c = [cand(0.5, j=0), cand(0.0, j=1), cand(1.0, j=2), cand(0.25, j=3)]
    best, worst = select(c, SelectionRule())
    assert (best.sample, worst.sample) == (1, 2)
    tie = [cand(0.0, 0.2, 0), cand(0.0, 0.9, 1), cand(0.0, 0.5, 2)]
    best, worst = select(tie, SelectionRule())
    assert (best.sample, worst.sample) == (1, 0)  # at equal WER, the more similar voice wins
    assert select([cand(0.3, j=0), cand(0.3, j=1)], SelectionRule()) is None  # nothing to prefer
    empty = Candidate(torch.zeros(0, dtype=torch.long), "", 1.0, float("nan"), 4)
    best, worst = select([cand(0.0, j=0), empty, cand(0.5, j=2)], SelectionRule())
    assert (best.sample, worst.sample) == (0, 2)  # an empty sample cannot be a rejected row


def test_selection_thresholds():
    c = [cand(0.2, 0.9, 0), cand(0.5, 0.8, 1)]
    assert select(c, SelectionRule(min_wer_gap=0.3)) is None  # gap 0.3 is not more than 0.3
    assert select(c, SelectionRule(min_wer_gap=0.29)) is not None
    assert select(c, SelectionRule(max_chosen_wer=0.1)) is None
    assert select(c, SelectionRule(min_chosen_similarity=0.95)) is None
    tie = [cand(0.0, 0.9, 0), cand(0.0, 0.85, 1)]
    assert select(tie, SelectionRule(min_similarity_gap=0.1)) is None


def test_judge_and_pair_rows_on_a_hand_made_case():
    items = [{"text": "ba ko mi", "prompt_text": "te", "prompt_speech": codes("te", 1)},
             {"text": "zi", "prompt_text": "", "prompt_speech": None}]
    samples = [[codes("ba mi", 1), codes("ba ko mi", 1), codes("ba ko mi", 0), codes("ko", 1)],
               [codes("zi"), codes("zi")]]
    cands = judge(items, samples, speech.ToyRecogniser(), speech.ToySimilarity())
    assert [c.wer for c in cands[0]] == pytest.approx([1 / 3, 0.0, 0.0, 2 / 3])
    assert [c.similarity for c in cands[0]] == [1.0, 1.0, 0.0, 1.0]
    rows = pair_rows(items, cands, SelectionRule())
    assert len(rows) == 1  # the second item's samples are equally good
    row = rows[0]
    assert row["chosen"] == codes("ba ko mi", 1).tolist()  # WER 0 and the prompt's voice beats WER 0 in another
    assert row["rejected"] == codes("ko", 1).tolist()
    assert (row["chosen_wer"], row["rejected_wer"]) == (0.0, pytest.approx(2 / 3))
    assert row["prompt_speech"] == codes("te", 1).tolist() and row["chosen_transcript"] == "ba ko mi"


def test_items_files(tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("ba ko\n\nmi\n")
    assert [i["text"] for i in load_items(str(txt))] == ["ba ko", "mi"]
    rows = tmp_path / "items.jsonl"
    rows.write_text(json.dumps({"text": "ba", "prompt_text": "te", "prompt_speech": [1, 2, 0, 3]}) + "\n"
                    + json.dumps({"text": "ko", "prompt_speech": [[0.5, 1.0], [0.0, 0.25]], "num_frames": 7}) + "\n")
    a, b = load_items(str(rows))
    assert a["prompt_speech"].dtype == torch.long and a["prompt_text"] == "te"
    assert b["prompt_speech"].dtype == torch.float32 and b["num_frames"] == 7
    rows.write_text(json.dumps({"text": "ba"}) + "\n" + json.dumps({"text": "  "}) + "\n")
    with pytest.raises(DataError, match=r"items.jsonl: line 2: expected a row with a non-empty 'text'"):
        load_items(str(rows))
    rows.write_text(json.dumps({"text": "ba", "prompt_speech": "missing.wav"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: .*missing.wav.* does not exist"):
        load_items(str(rows))


def test_pairs_file_is_written_atomically(tmp_path):
    out = tmp_path / "pairs.jsonl"
    write_jsonl(str(out), [{"a": 1}])
    with pytest.raises(TypeError):
        write_jsonl(str(out), [{"a": 2}, {"b": object()}])  # fails half way
    assert out.read_text() == '{"a": 1}\n'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]


class SilentRecogniser(speech.ToyRecogniser):
    """An ASR that hears nothing: every transcript is empty."""

    def transcribe(self, utterances):
        return ["" for _ in utterances]


def test_dropped_items_are_counted_by_the_rule_that_dropped_them():
    items = [{"text": "ba ko", "prompt_text": "", "prompt_speech": None} for _ in range(3)]
    samples = [[codes("ba ko"), codes("ba")], [codes("ba"), codes("ko")], [torch.zeros(0, dtype=torch.long)] * 2]
    dropped = {}
    rows = pair_rows(items, judge(items, samples, SilentRecogniser(), None), SelectionRule(), dropped)
    assert rows == [] and dropped == {"tie": 2, "no_candidate": 1}  # WER 1 everywhere; the last said nothing
    dropped = {}
    rows = pair_rows(items, judge(items, samples, speech.ToyRecogniser(), None), SelectionRule(max_chosen_wer=0.0),
                     dropped)
    assert len(rows) == 1 and dropped == {"max_chosen_wer": 1, "no_candidate": 1}
