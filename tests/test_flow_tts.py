"""The flow-matching TTS backbone against direct computations on a tiny F5-style model built from a config."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from alignsuite.backbones.base import shared_prompts
from alignsuite.backbones.flow_tts import FlowMatchingTTS
from alignsuite.backbones.flow_tts_model import FlowTTSModel, encode_text, mel_spectrogram
from alignsuite.backbones.lora import LoraSpec

N_MELS = 8
CONFIG = dict(n_mels=N_MELS, dim=32, depth=2, heads=2, ff_mult=2, text_dim=16, text_conv_layers=1,
              sampling_rate=8000, n_fft=256, hop_length=64, win_length=256)
TEXTS = ["hello", "a longer sentence"]


@dataclass(frozen=True)
class FakeAudio:  # duck-typed as alignsuite.data.audio.Audio
    waveform: torch.Tensor
    sampling_rate: int


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("flow_tts") / "model"
    FlowTTSModel(**CONFIG).save_pretrained(path)
    return str(path)


def backbone(path, **kwargs):
    b = FlowMatchingTTS(path, **kwargs)
    b.configure()
    return b


def mels(*frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, N_MELS, generator=g) for n in frames]


def pairs_batch():
    """Row 0 (dataset row 7) has a 3-frame speaker prompt, row 1 (dataset row 9) none; completions of 4/6 and 5/2."""
    return {"prompt": TEXTS, "prompt_text": ["hi", ""], "prompt_speech": [mels(3, seed=5)[0], None],
            "chosen": mels(4, 5, seed=1), "rejected": mels(6, 2, seed=2), "index": torch.tensor([7, 9])}


def views(batch):
    return shared_prompts(batch["prompt"], batch["chosen"], batch["rejected"], batch=batch)


def raw_prediction(b, prepared, model=None):
    c = prepared.cond
    return (model or b.policy)(prepared.noisy, c["cond"], c["text"], prepared.timesteps, c["frame_mask"])


def test_inputs_lay_prompt_then_completion_and_score_only_the_completion(model_dir):
    b = backbone(model_dir)
    batch = pairs_batch()
    p = b.prepare(views(batch))
    prompt = batch["prompt_speech"][0]
    completions = batch["chosen"] + batch["rejected"]
    starts = [3, 0, 3, 0]
    assert p.noisy.shape == (4, 9, N_MELS)  # the longest sample: 3 prompt + 6 rejected frames
    sigma = (p.timesteps / 1000).view(-1, 1, 1)  # FlowMatchEuler with shift 1: timestep = 1000 sigma
    x0 = p.noisy - sigma * p.target  # x_s = (1 - s) x0 + s noise, target = noise - x0
    for n, (start, completion) in enumerate(zip(starts, completions)):
        end = start + len(completion)
        torch.testing.assert_close(x0[n, start:end], completion, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x0[n, end:], torch.zeros(9 - end, N_MELS), atol=1e-5, rtol=0)
        torch.testing.assert_close(p.cond["cond"][n, :start], prompt[:start])
        assert (p.cond["cond"][n, start:] == 0).all()
        assert p.cond["frame_mask"][n].tolist() == [True] * end + [False] * (9 - end)
        assert p.mask[n, :, 0].tolist() == [0.0] * start + [1.0] * len(completion) + [0.0] * (9 - end)
    torch.testing.assert_close(x0[0, :3], prompt, atol=1e-5, rtol=1e-5)
    # F5 reads the reference transcript, a space, then the text to speak, cut to the sample's frames.
    full = ["hi hello", "a longer sentence"] * 2
    assert torch.equal(p.cond["text"], encode_text(full, [7, 5, 9, 2]))
    assert p.cond["text"][0].tolist()[:7] == [b + 1 for b in b"hi hell"]

    out = b.score(p)
    with torch.no_grad():
        pred = raw_prediction(b, p)
    expected = [-0.5 * ((pred[n, s:s + len(c)] - p.target[n, s:s + len(c)]) ** 2).mean()
                for n, (s, c) in enumerate(zip(starts, completions))]
    torch.testing.assert_close(out.score, torch.stack(expected), atol=1e-6, rtol=1e-5)
    assert out.length.tolist() == [len(c) * N_MELS for c in completions]
    # Prompt and padding frames do not count: any target there leaves the score unchanged.
    outside = p.mask.expand_as(p.target) == 0
    p.target = torch.where(outside, torch.randn_like(p.target) * 100, p.target)
    torch.testing.assert_close(b.score(p).score, out.score)


def test_a_rows_output_does_not_depend_on_how_far_it_is_padded(model_dir):
    model = FlowTTSModel.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(3)
    noisy, cond = torch.randn(2, 11, N_MELS, generator=g), torch.randn(2, 11, N_MELS, generator=g)
    text, t = encode_text(TEXTS, [5, 11]), torch.tensor([300.0, 800.0])
    mask = torch.arange(11)[None] < torch.tensor([[5], [11]])
    with torch.no_grad():
        batched = model(noisy, cond, text, t, mask)
        alone = model(noisy[:1, :5], cond[:1, :5], text[:1, :5], t[:1], mask[:1, :5])
    torch.testing.assert_close(batched[:1, :5], alone, atol=1e-5, rtol=1e-5)


def implied_noise(p):
    return p.noisy + (1 - p.timesteps / 1000).view(-1, 1, 1) * p.target  # noise = x0 + target


def test_views_of_a_row_share_noise_and_timestep_and_draws_are_checkpointed(model_dir):
    b = backbone(model_dir, seed=4)
    batch = pairs_batch()
    first = b.prepare(views(batch))
    noise, t = implied_noise(first), first.timesteps
    assert torch.equal(t[:2], t[2:]) and t[0] != t[1]
    torch.testing.assert_close(noise[:2], noise[2:], atol=1e-5, rtol=1e-5)  # every frame, chosen and rejected
    assert not torch.allclose(noise[0], noise[1], atol=0.1)  # rows draw their own noise
    assert noise.std().item() == pytest.approx(1.0, abs=0.25)
    assert b.draws == 1 and b.state() == {"draws": 1}
    second = b.prepare(views(batch))
    assert not torch.allclose(implied_noise(second), noise, atol=0.1)  # a fresh draw each step
    b.load_state({"draws": 1})  # as on resume
    torch.testing.assert_close(b.prepare(views(batch)).noisy, second.noisy)
    other_rank = backbone(model_dir, seed=4)
    other_rank.rank = 1
    assert not torch.allclose(implied_noise(other_rank.prepare(views(batch))), noise, atol=0.1)


def test_dpo_starts_at_ln2_and_one_sgd_step_raises_the_margin(model_dir):
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.reference import FrozenCopy

    module = PreferenceModule(backbone(model_dir), DPO(beta=50.0), reference=FrozenCopy(),
                              optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    module.configure_model()
    b, batch = module.backbone, pairs_batch()

    def margin_and_loss():
        b.draws = 0  # the same noise and timesteps for before and after
        scores = module.compute_scores(batch)
        margin = (scores.chosen - scores.ref_chosen) - (scores.rejected - scores.ref_rejected)
        return margin, module.objective(scores).loss

    margin, loss = margin_and_loss()
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # policy == reference
    assert torch.equal(margin.detach(), torch.zeros(2))
    optimizer = module.optimizer([p for p in module.parameters() if p.requires_grad])
    loss.backward()
    optimizer.step()
    after, loss_after = margin_and_loss()
    assert (after > 0).all() and loss_after.item() < math.log(2)


def test_generate_frames_repeatably_and_leaves_the_global_rng(model_dir):
    b = backbone(model_dir, sample_steps=3, frames_per_byte=0.5)
    state = torch.get_rng_state()
    prompt = mels(6, seed=5)[0]
    out = b.generate(TEXTS, seed=11, prompt_speech=[prompt, None], prompt_text=["abc", ""])
    # Row 0: F5's estimate, 6 frames / 3 bytes * 5 bytes; row 1: 0.5 frames per byte * 17 bytes.
    assert [tuple(x.shape) for x in out] == [(10, N_MELS), (8, N_MELS)]
    assert torch.equal(torch.get_rng_state(), state)
    again = b.generate(TEXTS, seed=11, prompt_speech=[prompt, None], prompt_text=["abc", ""])
    assert all(torch.equal(x, y) for x, y in zip(out, again))
    assert not torch.equal(b.generate(TEXTS, seed=12, prompt_speech=[prompt, None], prompt_text=["abc", ""])[0], out[0])
    assert [len(x) for x in b.generate(TEXTS, num_frames=[3, 4], steps=2)] == [3, 4]
    assert all(torch.isfinite(x).all() for x in out) and b.policy.training
    with pytest.raises(ValueError, match="pass num_frames"):
        backbone(model_dir).generate(TEXTS)


def test_sampling_is_euler_on_the_sway_grid(model_dir):
    b = backbone(model_dir, sample_steps=2, sway_sampling_coef=-1.0)
    # F5's sway with coefficient -1: t -> 1 - cos(pi t / 2); sigma = 1 - t.
    torch.testing.assert_close(b.time_grid(2), torch.tensor([1.0, math.cos(math.pi / 4), 0.0], dtype=torch.float64))
    calls = []

    class Constant(torch.nn.Module):  # velocity 1 everywhere: x_0 = x_1 - (1 - 0) * 1
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, noisy, cond, text, timestep, frame_mask):
            calls.append(timestep[0].item())
            return torch.ones_like(noisy)

    out = b.generate(["ab"], model=Constant(), seed=2, num_frames=[3])[0]
    start = torch.randn(1, 3, N_MELS, generator=torch.Generator().manual_seed(2))[0]
    torch.testing.assert_close(out, start - 1.0)
    assert calls == pytest.approx([1000.0, 1000 * math.cos(math.pi / 4)])


def test_export_reloads_identically(model_dir, tmp_path):
    b = backbone(model_dir)
    with torch.no_grad():
        for p in b.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prepared = b.prepare(views(pairs_batch()))
    b.save_pretrained(str(tmp_path / "out"))
    loaded = FlowTTSModel.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(raw_prediction(b, prepared, loaded), raw_prediction(b, prepared))
    assert loaded.config.n_mels == N_MELS and loaded.config.sampling_rate == 8000


def test_mel_of_a_sine_peaks_at_its_mel_bin():
    config = dict(n_mels=40, sampling_rate=16000, n_fft=512, hop_length=128, win_length=512)
    wave = torch.sin(2 * math.pi * 1000 * torch.arange(16000) / 16000)
    mel = mel_spectrogram(wave, config)
    assert mel.shape == (1 + 16000 // 128, 40)
    # HTK mel: 1000 Hz is 1000 mel; 40 filters spaced 2840 / 41 = 69.3 mel apart centre there on bin 13.4.
    assert mel.mean(dim=0).argmax().item() in (13, 14)
    assert mel.mean(dim=0)[30:].max() < mel.mean(dim=0).max() - 5  # far bins are quiet (log scale)
    assert mel_spectrogram(wave.repeat(2, 1), config).shape == (2, 126, 40)


def test_audio_rows_go_through_the_front_end(model_dir):
    b = backbone(model_dir)
    batch = pairs_batch()
    audio = FakeAudio(torch.sin(torch.arange(640) * 0.3), 8000)
    batch["prompt_speech"] = [audio, None]
    p = b.prepare(views(batch))
    torch.testing.assert_close(p.cond["cond"][0, :11], mel_spectrogram(audio.waveform, CONFIG))  # 1 + 640 // 64 frames
    assert p.mask[0, :11].sum() == 0 and p.mask[0, 11:15].sum() == 4


def test_bad_speech_is_named_with_row_column_and_expectation(model_dir):
    b = backbone(model_dir)
    batch = pairs_batch()
    batch["rejected"] = [batch["rejected"][0], torch.randn(2, N_MELS + 1)]
    with pytest.raises(ValueError, match=r"row 9, column 'rejected': expected mel features of shape \[frames, 8\]"):
        b.prepare(views(batch))
    batch = pairs_batch()
    batch["prompt_speech"] = [FakeAudio(torch.zeros(640), 16000), None]
    with pytest.raises(ValueError, match="row 7, column 'prompt_speech': audio at 16000 Hz.*expects 8000 Hz"):
        b.prepare(views(batch))
    batch = pairs_batch()
    batch["chosen"] = [torch.tensor([1, 2, 3]), batch["chosen"][1]]
    with pytest.raises(ValueError, match="row 7, column 'chosen'.*has no codec"):
        b.prepare(views(batch))


def test_setup_hands_the_models_mel_width_and_rate_to_the_data_layout(model_dir, tmp_path):
    # The backbone's own check (above) names the dataset row only; the layout's names the file, row and field.
    import json

    from alignsuite.data import DataError, PreferenceDataModule
    from alignsuite.data.layouts.speech import SpeechPairs

    path = tmp_path / "tts.jsonl"
    path.write_text(json.dumps({"text": "a", "chosen": [[0.0] * (N_MELS + 1)], "rejected": [[1.0] * (N_MELS + 1)]}) + "\n")
    data = PreferenceDataModule(train=str(path), layout=SpeechPairs(speech="features"))
    data.setup("fit")
    b = FlowMatchingTTS(model_dir)
    b.on_setup(data)
    assert b.policy is None  # the settings come from the model's config, before any model loads
    with pytest.raises(DataError, match=rf"^{path}: row 0: field 'chosen': expected feature frames of width {N_MELS}"):
        data.collate([data.train_set[0]])
    audio = PreferenceDataModule(train=str(path), layout=SpeechPairs(speech="audio", sampling_rate=16000))
    with pytest.raises(ValueError, match=r"data.layout.sampling_rate is 16000 .* expects 8000 Hz"):
        b.on_setup(audio)


def test_lora_trains_adapters_and_exports_merged(model_dir, tmp_path):
    from alignsuite.reference import AdapterDisabled, FrozenCopy

    b = backbone(model_dir, lora=LoraSpec(r=2, alpha=16))  # alpha != r: the exported adapter must carry its scale
    trainable = [n for n, p in b.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    with torch.no_grad():
        for n, p in b.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    prepared = b.prepare(views(pairs_batch()))
    policy = b.score(prepared).score
    with torch.no_grad():
        off = AdapterDisabled().score(b, prepared, {})
        frozen = FrozenCopy()
        frozen.build(b)
        torch.testing.assert_close(off, frozen.score(b, prepared, {}))
    assert not torch.allclose(policy, off)
    b.save_pretrained(str(tmp_path / "merged"))
    merged = FlowTTSModel.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(b.score(prepared, model=merged).score, policy, atol=1e-5, rtol=1e-5)
    b.save_pretrained(str(tmp_path / "adapter"), merge_adapters=False)  # the adapter alone, with its alpha / r
    base = FlowTTSModel.from_pretrained(model_dir)
    base.load_lora_adapter(str(tmp_path / "adapter"), prefix=None, weight_name="pytorch_lora_weights.safetensors")
    torch.testing.assert_close(b.score(prepared, model=base).score, policy, atol=1e-5, rtol=1e-5)


class HopVocoder:
    """A stand-in vocoder: ``hop`` samples per mel frame, the frame's mean as their value."""

    def __init__(self, hop: int = 64, sampling_rate: int = 8000) -> None:
        self.hop, self.sampling_rate = hop, sampling_rate

    def __call__(self, speech):
        return [mel.mean(dim=1).repeat_interleave(self.hop) for mel in speech]


def test_to_audio_through_the_configured_vocoder(model_dir):
    audio = pytest.importorskip("alignsuite.data.audio")
    assert backbone(model_dir).to_audio(mels(3)) is None
    b = backbone(model_dir, vocoder={"class_path": f"{__name__}.HopVocoder", "init_args": {"hop": 32}})
    out = b.to_audio(mels(3, 5))
    assert all(isinstance(a, audio.Audio) for a in out) and [a.sampling_rate for a in out] == [8000, 8000]
    assert [len(a.waveform) for a in out] == [96, 160]
    assert not any(name.startswith("_vocoder") for name in b.state_dict())  # never checkpointed
