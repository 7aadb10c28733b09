"""SpeechTokenLM: scores against hand computations on a tiny saved Llama whose vocabulary holds 40 text tokens
and 16 speech tokens from id 40 (one codebook of 16, or two of 8), generation, DPO through the module, export."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from alignsuite.backbones.base import ViewInputs
from alignsuite.backbones.speech_tokens import SpeechTokenLM, SpeechTokensOnly

OFFSET = 40
WORDS = list("abcdefghijklmnopqrstuvwxyz") + ["hello", "world", "<sos>", "<eos_speech>"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 32-wide model gains nothing from intra-op threads, and on a busy machine two threads wait on each other:
    generation ran 30x slower with two than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech_lm_dir(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + WORDS)}
    assert len(vocab) <= OFFSET
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    config = LlamaConfig(vocab_size=OFFSET + 16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=False, initializer_range=0.2, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("speech_lm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def make(path, configure=True, **kwargs) -> SpeechTokenLM:
    settings = dict(speech_token_offset=OFFSET, codebook_size=16, speech_end_token="<eos_speech>",
                    speech_start_token="<sos>", max_length=32)
    backbone = SpeechTokenLM(path, **{**settings, **kwargs})
    if configure:
        backbone.configure()
    return backbone


def codes(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def make_batch(**changes) -> dict:
    batch = {
        "prompt": ["a b c", "hello world"],
        "prompt_text": ["x y", ""],
        "prompt_speech": [codes(1, 2, 3), None],
        "chosen": [codes(4, 5, 6, 7), codes(0, 15)],
        "rejected": [codes(9, 9), codes(3, 2, 1, 0, 8)],
        "index": torch.tensor([3, 7]),
    }
    return {**batch, **changes}


def direct_logps(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1 .. len - 1, one unpadded row."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def view(batch, column="chosen") -> ViewInputs:
    return ViewInputs(list(batch["prompt"]), list(batch[column]), batch)


def test_the_score_is_the_completion_and_end_tokens_log_probs(speech_lm_dir):
    backbone = make(speech_lm_dir)
    tok, end, sos = backbone.tokenizer, WORDS.index("<eos_speech>") + 4, WORDS.index("<sos>") + 4
    batch = make_batch()
    prepared = backbone.prepare([view(batch)])
    with torch.no_grad():
        got = backbone.score(prepared)
    rows = [(tok("x y a b c")["input_ids"] + [sos, 41, 42, 43], [44, 45, 46, 47, end]),
            (tok("hello world")["input_ids"] + [sos], [40, 55, end])]
    for i, (prompt, completion) in enumerate(rows):
        ids = prompt + completion
        assert prepared.input_ids[i, : len(ids)].tolist() == ids
        logps = direct_logps(backbone.policy, ids)
        assert got.score[i].item() == pytest.approx(logps[len(prompt) - 1 :].sum().item(), abs=1e-5)
    assert got.length.tolist() == [5, 3]  # frames + the end token; text, start and prompt speech excluded
    # Another prompt-speech code moves the score through the conditioning only: same tokens scored, same count.
    other = make_batch(prompt_speech=[codes(1, 2, 9), None])
    with torch.no_grad():
        moved = backbone.score(backbone.prepare([view(other)]))
    assert moved.length.tolist() == [5, 3]
    assert abs(moved.score[0] - got.score[0]) > 1e-3 and moved.score[1] == pytest.approx(got.score[1].item(), abs=1e-6)


def test_two_codebooks_interleave_frame_major_and_the_score_sums_both(speech_lm_dir):
    backbone = make(speech_lm_dir, codebook_size=8, num_codebooks=2)
    end = WORDS.index("<eos_speech>") + 4
    frames = torch.tensor([[1, 2], [3, 4], [7, 0]])
    batch = make_batch(chosen=[frames, torch.tensor([[0, 7]])], prompt_speech=[torch.tensor([[5, 6]]), None])
    prepared = backbone.prepare([view(batch)])
    with torch.no_grad():
        got = backbone.score(prepared)
    prompt = backbone.tokenizer("x y a b c")["input_ids"] + [WORDS.index("<sos>") + 4, 45, 54]
    completion = [41, 50, 43, 52, 47, 48, end]  # offset + k * 8 + code, frame 0's codebooks first
    ids = prompt + completion
    assert prepared.input_ids[0, : len(ids)].tolist() == ids
    logps = direct_logps(backbone.policy, ids)[len(prompt) - 1 :]
    by_codebook = logps[0:6:2].sum() + logps[1:6:2].sum()
    assert got.score[0].item() == pytest.approx((by_codebook + logps[6]).item(), abs=1e-5)
    assert got.length.tolist() == [7, 3]


def test_chosen_and_rejected_stacked_score_as_each_alone(speech_lm_dir):
    backbone = make(speech_lm_dir)
    batch = make_batch()
    with torch.no_grad():
        both = backbone.score(backbone.prepare([view(batch, "chosen"), view(batch, "rejected")]))
        alone = [backbone.score(backbone.prepare([view(batch, c)])) for c in ("chosen", "rejected")]
    torch.testing.assert_close(both.score, torch.cat([a.score for a in alone]), atol=1e-5, rtol=0)
    torch.testing.assert_close(both.length, torch.cat([a.length for a in alone]))


@dataclass(frozen=True)
class FakeAudio:  # duck-types alignsuite.data.audio.Audio
    waveform: torch.Tensor
    sampling_rate: int


class FrameCodec:
    """One code per sample: round(8 * (w + 1)), in [0, 16]."""

    def __call__(self, waveform: torch.Tensor, sampling_rate: int) -> torch.Tensor:
        return torch.round(8 * (waveform + 1)).long()


class StepVocoder:
    """Each code held for 4 samples at amplitude code / 16."""

    sampling_rate = 8000

    def __call__(self, speech: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(c.float() / 16).repeat_interleave(4) for c in speech]


@pytest.mark.parametrize("change, message", [
    (dict(rejected=[codes(9, 16), codes(1)]), r"dataset row 3, column 'rejected', holds codes from 9 to 16, outside .*\[0, 16\)"),
    (dict(chosen=[codes(1), codes(-1, 2)]), r"dataset row 7, column 'chosen', holds codes from -1 to 2"),
    (dict(chosen=[codes(1), torch.zeros(3, 2, dtype=torch.long)]), r"dataset row 7, column 'chosen', has 2 codebook"),
    (dict(prompt_speech=[codes(1), codes(99)]), r"dataset row 7, column 'prompt_speech', holds codes from 99"),
    (dict(chosen=[codes(1), torch.zeros(3, 80)]), r"dataset row 7, column 'chosen', holds a torch.float32 tensor"),
    (dict(chosen=[codes(1), FakeAudio(torch.zeros(4), 16000)]), r"dataset row 7, column 'chosen', holds audio, and"
                                                                  r" backbone.codec is not set"),
    (dict(prompt_speech=[codes(*range(16)) % 16, None]),
     r"the prompt of dataset row 3 is 23 tokens \(6 text, 16 prompt speech\), over backbone.max_length - 1 = 19"),
])
def test_bad_speech_is_an_error_naming_row_column_and_range(speech_lm_dir, change, message):
    backbone = make(speech_lm_dir, configure=False, max_length=20)
    batch = make_batch(**change)
    with pytest.raises(ValueError, match=message):
        backbone.prepare([view(batch, "chosen"), view(batch, "rejected")])
    assert backbone.policy is None  # all found while preparing, before any model loads


def test_setup_hands_the_codebooks_to_the_data_layout_so_errors_name_the_file(speech_lm_dir, tmp_path):
    import json

    from alignsuite.data import DataError, PreferenceDataModule
    from alignsuite.data.layouts.speech import SpeechPairs

    path = tmp_path / "tts.jsonl"
    path.write_text(json.dumps({"text": "hello", "chosen": [1, 2], "rejected": [3, 16]}) + "\n")
    data = PreferenceDataModule(train=str(path), layout=SpeechPairs())
    data.setup("fit")
    make(speech_lm_dir, configure=False).on_setup(data)
    with pytest.raises(DataError, match=rf"^{path}: row 0: field 'rejected': expected codes in \[0, 16\)"):
        data.collate([data.train_set[0]])


def test_audio_goes_through_the_codec_and_scores_as_its_codes(speech_lm_dir):
    backbone = make(speech_lm_dir, codec={"class_path": f"{__name__}.FrameCodec"})
    audio = FakeAudio(torch.tensor([-0.5, 0.0, 0.5]), 16000)  # codes 4, 8, 12
    as_audio, as_codes = make_batch(chosen=[audio, codes(1)]), make_batch(chosen=[codes(4, 8, 12), codes(1)])
    a, b = backbone.prepare([view(as_audio)]), backbone.prepare([view(as_codes)])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
    with pytest.raises(ValueError, match=r"column 'chosen \(from the codec\)', holds codes from 16 to 16"):
        backbone.prepare([view(make_batch(chosen=[FakeAudio(torch.ones(2), 16000), codes(1)]))])


def test_a_long_completion_keeps_its_first_tokens_and_loses_its_end(speech_lm_dir):
    backbone = make(speech_lm_dir, max_length=12)
    batch = make_batch(chosen=[codes(*range(10)), codes(1)])
    with pytest.warns(UserWarning, match="keep their first speech tokens"):
        prepared = backbone.prepare([view(batch)])
    prompt = backbone.tokenizer("x y a b c")["input_ids"] + [32, 41, 42, 43]  # 10 tokens: room for 2
    assert prepared.input_ids[0].tolist() == prompt + [40, 41]
    assert prepared.completion_mask.sum(-1).tolist() == [2, 2]  # row 7 fits: its code and its end token
    assert backbone.truncated["completion"] == 1


def test_generation_keeps_to_speech_tokens_stops_at_the_end_and_repeats_under_a_seed(speech_lm_dir):
    backbone = make(speech_lm_dir)
    texts, prompt_speech = ["a b c", "hello", "d e f g", "world"], [codes(1, 2), None, codes(5), None]
    state = torch.get_rng_state()
    first = backbone.generate(texts, seed=3, prompt_speech=prompt_speech, max_new_tokens=16)
    again = backbone.generate(texts, seed=3, prompt_speech=prompt_speech, max_new_tokens=16)
    other = backbone.generate(texts, seed=4, prompt_speech=prompt_speech, max_new_tokens=16)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, other))
    for c in first + other:
        assert c.dim() == 1 and c.dtype == torch.long and ((c >= 0) & (c < 16)).all()
    assert any(len(c) < 16 for c in first)  # stopped at the end token before the limit
    greedy = [backbone.generate(texts, prompt_speech=prompt_speech, max_new_tokens=4) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*greedy))
    # Two codebooks: whole frames [frames, 2], each code within its codebook.
    two = make(speech_lm_dir, codebook_size=8, num_codebooks=2).generate(texts, seed=0, max_new_tokens=7)
    assert all(c.dim() == 2 and c.shape[1] == 2 and c.shape[0] <= 3 and ((c >= 0) & (c < 8)).all() for c in two)


@pytest.fixture(scope="module")
def speech_reward_model(speech_lm_dir, tmp_path_factory) -> str:
    """The speech LM with every weight nudged, saved with its tokenizer: a reward model that disagrees at times."""
    backbone = make(speech_lm_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in backbone.policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    path = str(tmp_path_factory.mktemp("speech_rm"))
    backbone.save_pretrained(path)
    return path


def test_a_guide_steers_speech_generation_among_the_tokens_the_step_allows(speech_lm_dir, speech_reward_model):
    """PAD on a speech-token model: the reward model reads each row's text and speaker prompt (the model itself
    as its own reward model changes nothing), its candidates are the codebook's tokens, and the guide set on the
    backbone (an init option) guides every generate."""
    from alignsuite.backbones import PAD

    texts, prompt_speech = ["a b c", "hello", "d e f g", "world"], [codes(1, 2), None, codes(5), None]
    backbone = make(speech_lm_dir)
    args = dict(prompt_speech=prompt_speech, max_new_tokens=12)
    plain = backbone.generate(texts, **args)
    same = lambda a, b: all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert same(backbone.generate(texts, guide=PAD(speech_lm_dir, weight=3.0), **args), plain)
    guide = PAD(speech_reward_model, weight=3.0, preference="hello world")
    guided = backbone.generate(texts, guide=guide, **args)
    assert not same(guided, plain)
    assert all(c.dim() == 1 and ((c >= 0) & (c < 16)).all() for c in guided)
    assert same(guided, backbone.generate(texts, guide=guide.but(cache=False), **args))
    assert same(make(speech_lm_dir, guide=guide).generate(texts, **args), guided)
    # two codebooks of 8 tokens, below top_k = 10: the candidates are the allowed ones, never another codebook's
    two = make(speech_lm_dir, codebook_size=8, num_codebooks=2)
    out = two.generate(texts, guide=PAD(speech_reward_model, weight=3.0), seed=0, max_new_tokens=8)
    assert all(c.dim() == 2 and c.shape[1] == 2 and ((c >= 0) & (c < 8)).all() for c in out)


def test_a_reward_model_without_the_speech_vocabulary_is_refused(speech_lm_dir, tmp_path):
    """A text model with the same tokenizer has no embeddings for the speech ids past it; a model with another
    tokenizer (the toy text world's) is refused too; each error names the option."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alignsuite.backbones import PAD

    config = LlamaConfig(vocab_size=OFFSET, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(speech_lm_dir).save_pretrained(str(tmp_path))
    backbone = make(speech_lm_dir)
    with pytest.raises(ValueError, match=r"guide\.reward_model: .* has 40 token embeddings, and this model's speech"
                                         r" tokens take ids \[40, 56\)"):
        backbone.generate(["a b"], guide=PAD(str(tmp_path)))
    with pytest.raises(ValueError, match=r"guide\.reward_model: 'toy:llm' has another tokenizer than the policy's"):
        backbone.generate(["a b"], guide=PAD("toy:llm"))


def test_the_constraint_allows_one_codebook_per_step_and_the_end_at_frame_boundaries():
    constraint = SpeechTokensOnly(prompt_width=3, offset=4, codebook_size=2, num_codebooks=2, end_id=1)
    allowed = [(constraint(torch.zeros(1, 3 + step, dtype=torch.long), torch.zeros(1, 9)) == 0)[0].nonzero()[:, 0].tolist()
               for step in range(3)]
    assert allowed == [[1, 4, 5], [6, 7], [1, 4, 5]]


def test_dpo_through_the_module_starts_at_ln2_and_one_step_raises_the_margin(speech_lm_dir):
    from alignsuite.module import PreferenceModule
    from alignsuite.objectives import DPO
    from alignsuite.reference import FrozenCopy

    module = PreferenceModule(make(speech_lm_dir, configure=False), DPO(beta=0.1), reference=FrozenCopy())
    module.configure_model()
    batch = make_batch()
    scores = module.compute_scores(batch)
    loss = module.objective(scores).loss
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = module.compute_scores(batch)
    margin = lambda s: (s.chosen - s.rejected).detach()  # noqa: E731
    assert (margin(after) > margin(scores)).all()
    assert module.objective(after).loss.item() < math.log(2)


def test_save_pretrained_loads_back_with_automodel_and_writes_the_settings(speech_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignsuite.backbones import LoraSpec

    backbone = make(speech_lm_dir, codebook_size=8, num_codebooks=2, lora=LoraSpec(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in backbone.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    backbone.save_pretrained(str(tmp_path / "out"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    ids = torch.tensor([[2, 5, 6, 32, 41, 50, 43]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, backbone.policy(input_ids=ids).logits, atol=1e-5, rtol=0)
    settings = json.loads((tmp_path / "out" / "speech_tokens.json").read_text())
    assert {k: settings[k] for k in ("speech_token_offset", "codebook_size", "num_codebooks", "speech_start_token_id",
                                     "speech_end_token_id")} == {"speech_token_offset": 40, "codebook_size": 8,
                                                                 "num_codebooks": 2, "speech_start_token_id": 32,
                                                                 "speech_end_token_id": 33}


def test_settings_that_do_not_fit_the_model_or_tokenizer_are_refused(speech_lm_dir):
    with pytest.raises(ValueError, match="has 56 token embeddings, and the speech settings need id 71"):
        make(speech_lm_dir, codebook_size=32)
    with pytest.raises(ValueError, match="'<nope>' is not a token of the tokenizer"):
        make(speech_lm_dir, configure=False, speech_end_token="<nope>").special_ids()
    with pytest.raises(ValueError, match="speech_end_token is id 45, inside"):
        make(speech_lm_dir, configure=False, speech_end_token=45).special_ids()


def test_to_audio_runs_the_vocoder_on_generated_codes(speech_lm_dir):
    from alignsuite.data.audio import Audio

    assert make(speech_lm_dir, configure=False).to_audio([codes(1, 2)]) is None
    backbone = make(speech_lm_dir, configure=False, vocoder=f"{__name__}.StepVocoder")
    (audio,) = backbone.to_audio([codes(4, 8)])
    assert isinstance(audio, Audio) and audio.sampling_rate == 8000
    assert audio.waveform.tolist() == [0.25] * 4 + [0.5] * 4
