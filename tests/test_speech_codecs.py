"""transformers audio codecs as a speech-token LM's codec and vocoder, on a tiny DAC built from a config."""

import pytest
import torch

from alignsuite.data.audio import Audio, resample
from alignsuite.speech.codecs import CodecDecoder, CodecEncoder


@pytest.fixture(scope="module")
def dac_dir(tmp_path_factory) -> str:
    from transformers import DacConfig, DacFeatureExtractor, DacModel

    path = tmp_path_factory.mktemp("dac")
    config = DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4], decoder_hidden_size=16, n_codebooks=2,
                       codebook_size=32, codebook_dim=4, hidden_size=32, upsampling_ratios=[4, 2], sampling_rate=16000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        DacModel(config).save_pretrained(path)
    DacFeatureExtractor(sampling_rate=16000, hop_length=8).save_pretrained(path)
    return str(path)


def wave(n: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_encoder_gives_the_codecs_codes_frame_major(dac_dir):
    from transformers import DacModel

    codes = CodecEncoder(dac_dir, device="cpu")(wave(1600), 16000)
    assert codes.shape == (200, 2) and codes.dtype == torch.long and int(codes.max()) < 32
    model = DacModel.from_pretrained(dac_dir).eval()
    with torch.no_grad():
        direct = model.encode(wave(1600)[None, None]).audio_codes[0]  # [K, T]
    assert torch.equal(codes, direct.transpose(0, 1))
    # Audio at 8 kHz is resampled to the codec's 16 kHz first: twice the frames of its own length.
    slow = CodecEncoder(dac_dir, device="cpu")(resample(wave(1600), 16000, 8000), 8000)
    assert slow.shape == (200, 2)


def test_decoder_gives_the_codecs_audio(dac_dir):
    from transformers import DacModel

    decoder = CodecDecoder(dac_dir, device="cpu")
    codes = torch.randint(0, 32, (50, 2), generator=torch.Generator().manual_seed(1))
    [audio] = decoder([codes])
    model = DacModel.from_pretrained(dac_dir).eval()
    with torch.no_grad():
        direct = model.decode(audio_codes=codes.transpose(0, 1)[None]).audio_values.reshape(-1)
    assert audio.shape == (400,) and decoder.sampling_rate == 16000
    assert torch.allclose(audio, direct.clamp(-1, 1))


def test_speech_token_lm_reads_audio_rows_through_the_codec(dac_dir, tmp_path):
    """An audio row and the codes the codec gives for it prepare the same token batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignsuite.backbones import SpeechTokenLM
    from alignsuite.backbones.base import ViewInputs
    from alignsuite.toy.tts import OFFSET, SPEECH_END, SPEECH_START, VOCAB, SpeechTokenWorld

    tok = SpeechTokenWorld().build_tokenizer()
    LlamaForCausalLM(LlamaConfig(vocab_size=len(VOCAB) + 32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    codec = {"class_path": "alignsuite.speech.codecs.CodecEncoder", "init_args": {"model_name_or_path": dac_dir, "device": "cpu"}}
    backbone = SpeechTokenLM(str(tmp_path / "lm"), speech_token_offset=OFFSET, codebook_size=32, num_codebooks=2,
                             speech_start_token=SPEECH_START, speech_end_token=SPEECH_END, max_length=1024, codec=codec)
    backbone.configure()
    audio = [Audio(wave(160, 2), 16000), Audio(wave(240, 3), 16000)]
    codes = [CodecEncoder(dac_dir, device="cpu")(a.waveform, 16000) for a in audio]
    batch = {"index": torch.tensor([0, 1])}
    from_audio = backbone.prepare([ViewInputs(["ba ko", "mi"], audio, batch)])
    from_codes = backbone.prepare([ViewInputs(["ba ko", "mi"], codes, batch)])
    assert torch.equal(from_audio.input_ids, from_codes.input_ids)
    assert int(from_audio.completion_mask.sum()) == 2 * (20 + 30) + 2  # codes of both codebooks, and two end tokens
