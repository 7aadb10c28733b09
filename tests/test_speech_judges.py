"""The transformers-backed judges of synthesised speech on tiny models built from configs: a CTC recogniser
(wav2vec 2.0) and an x-vector speaker model (WavLM), each against a direct computation."""

import json
import math

import pytest
import torch

from alignsuite.data.audio import Audio, resample
from alignsuite.speech.asr import TransformersASR, TransformersSpeakerSimilarity, Utterance

CONV = {"conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 4), "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64}


def feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory) -> str:
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC, Wav2Vec2Processor

    path = tmp_path_factory.mktemp("ctc")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    (path / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0, **CONV)).save_pretrained(path)
    Wav2Vec2Processor(feature_extractor=feature_extractor(), tokenizer=tok).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def xvector_dir(tmp_path_factory) -> str:
    from transformers import WavLMConfig, WavLMForXVector

    path = tmp_path_factory.mktemp("xvector")
    config = WavLMConfig(tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1), xvector_output_dim=8,
                         num_buckets=32, max_bucket_distance=64, **CONV)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        WavLMForXVector(config).save_pretrained(path)
    feature_extractor().save_pretrained(path)
    return str(path)


def noise(seconds: float, seed: int, rate: int = 16000) -> Audio:
    return Audio(0.1 * torch.randn(int(seconds * rate), generator=torch.Generator().manual_seed(seed)), rate)


def test_transformers_asr_gives_the_models_own_ctc_transcripts(ctc_dir):
    from transformers import AutoModelForCTC, AutoProcessor

    audio = [noise(1.0, 0), noise(0.5, 1)]
    # One at a time: a padded batch changes what this group-norm wav2vec 2.0 hears (see TransformersASR).
    got = TransformersASR(ctc_dir, device="cpu", batch_size=1).transcribe([Utterance(None, a) for a in audio])
    processor, model = AutoProcessor.from_pretrained(ctc_dir), AutoModelForCTC.from_pretrained(ctc_dir).eval()
    for text, a in zip(got, audio):  # one at a time: no padding in the direct computation
        inputs = processor(a.waveform.numpy(), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            ids = model(**inputs).logits.argmax(-1)
        assert text == processor.batch_decode(ids)[0]
    assert all(got)


def test_recognisers_that_listen_need_a_vocoder(ctc_dir):
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1\] have none: give the backbone a vocoder"):
        TransformersASR(ctc_dir, device="cpu").transcribe([Utterance(None, noise(0.5, 0)), Utterance(torch.tensor([1, 2]))])


def test_speaker_similarity_is_the_cosine_of_xvectors(xvector_dir):
    from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

    judge = TransformersSpeakerSimilarity(xvector_dir, device="cpu")
    a, b = noise(1.0, 0), noise(0.8, 1)
    same, other, none = judge.similarity([Utterance(None, a), Utterance(None, b), Utterance(None, a)],
                                         [Utterance(None, a), Utterance(None, a), None])
    assert same == pytest.approx(1.0, abs=1e-5) and math.isnan(none)
    extractor, model = AutoFeatureExtractor.from_pretrained(xvector_dir), AutoModelForAudioXVector.from_pretrained(xvector_dir).eval()

    def embed(x):
        with torch.no_grad():
            e = model(**extractor(x.waveform.numpy(), sampling_rate=16000, return_tensors="pt")).embeddings[0]
        return e / e.norm()

    assert other == pytest.approx(float(embed(a) @ embed(b)), abs=1e-4)
    # Audio at another rate is resampled to the extractor's first.
    slow = Audio(resample(b.waveform, 16000, 24000), 24000)
    [resampled] = judge.similarity([Utterance(None, slow)], [Utterance(None, a)])
    back = Audio(resample(slow.waveform, 24000, 16000), 16000)
    assert resampled == pytest.approx(float(embed(back) @ embed(a)), abs=1e-4)


# ------------------------------------------------------------------------------------------ recognisers' output
class _Answers:
    """A recogniser that answers whatever it was built with, whatever it hears."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def transcribe(self, utterances):
        return self.answer


@pytest.mark.parametrize("answer, got", [(None, "None"), ([], "0 transcripts"), (["a b"], "1 transcripts"),
                                         (["a", None], "transcript 1 is None")])
def test_a_recogniser_that_answers_too_few_transcripts_or_none_is_named(answer, got):
    # Before: zip dropped the candidates left without a transcript, or a TypeError came from deep inside.
    from alignsuite.speech.judges import SpeechJudge

    judge = SpeechJudge(_Answers(answer))
    with pytest.raises(ValueError) as err:
        judge.judge(["a b", "c"], [torch.tensor([1]), torch.tensor([2])], rows=[{"text": "a b"}, {"text": "c"}])
    assert "recogniser _Answers" in str(err.value) and got in str(err.value) and "2 utterances" in str(err.value)


def test_wer_names_a_transcriber_that_answers_too_few():
    from alignsuite.evaluation.text_scorers import WER

    with pytest.raises(ValueError, match=r"recogniser <lambda> returned 1 transcripts for 2 utterances"):
        WER(transcribe=lambda outputs: ["a"]).score(["a", "b"], ["x", "y"])
