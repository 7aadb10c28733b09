"""Scorers' arithmetic on tiny models built from configs, the win rate and its interval, prompt files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alignsuite.data.errors import DataError
from alignsuite.evaluation.prompts import PromptFileError, load_prompts, read_prompt_file
from alignsuite.evaluation.results import ScorerResult
from alignsuite.evaluation.scorers import (
    CER, WER, Aesthetic, AestheticMLP, ClipScore, HPSv2, PickScore, RewardModel, ToyReward,
)
from alignsuite.evaluation.winrate import bootstrap_interval, outcomes, summarise

PROMPTS = ["a red square", "a blue circle on grass"]


def images(n=2, size=32):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ------------------------------------------------------------------ tiny CLIP (transformers)
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = tmp_path_factory.mktemp("clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8, logit_scale_init_value=3.0,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def clip_cosines(path, prompts, imgs):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        out = model(**processor(text=prompts, images=imgs, return_tensors="pt", padding=True))
    text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    return (text * image).sum(-1), model.logit_scale.exp().item()


def test_pickscore_is_logit_scale_times_cosine(tiny_clip):
    imgs = images()
    cos, scale = clip_cosines(tiny_clip, PROMPTS, imgs)
    assert scale == pytest.approx(np.exp(3.0), rel=1e-5)
    scores = PickScore(tiny_clip, processor_name_or_path=None, device="cpu").score(PROMPTS, imgs)
    np.testing.assert_allclose(scores, (scale * cos).numpy(), rtol=1e-4, atol=1e-4)


def test_clip_score_is_100_times_clamped_cosine(tiny_clip):
    imgs = images()
    cos, _ = clip_cosines(tiny_clip, PROMPTS, imgs)
    scores = ClipScore(tiny_clip, device="cpu").score(PROMPTS, imgs + [None])
    np.testing.assert_allclose(scores[:2], (100 * cos.clamp(min=0)).numpy(), rtol=1e-4, atol=1e-3)
    assert scores[2] is None  # a failed generation scores None


# ------------------------------------------------------------------ tiny open_clip
OPEN_CLIP_TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    from alignsuite.evaluation.image_scorers import _open_clip

    path = tmp_path_factory.mktemp("open_clip")
    torch.manual_seed(0)
    model, preprocess, tokenizer = _open_clip("tiny-clip-test", None, OPEN_CLIP_TINY)
    torch.save({"state_dict": model.state_dict()}, path / "hps.pt")  # HPSv2's layout: a state dict under a key
    torch.save(model.state_dict(), path / "clip.pt")
    return path, model, preprocess, tokenizer


def test_hpsv2_is_100_times_cosine(tiny_open_clip):
    path, model, preprocess, tokenizer = tiny_open_clip
    imgs = images()
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(i) for i in imgs]))
        text = model.encode_text(tokenizer(PROMPTS))
    cos = torch.nn.functional.cosine_similarity(image, text)
    scorer = HPSv2(str(path / "hps.pt"), model_name="tiny-clip-test", model_config=OPEN_CLIP_TINY, device="cpu")
    np.testing.assert_allclose(scorer.score(PROMPTS, imgs), (100 * cos).numpy(), rtol=1e-4, atol=1e-4)


def test_aesthetic_is_the_mlp_on_the_normalised_embedding(tiny_open_clip, tmp_path):
    path, model, preprocess, _ = tiny_open_clip
    torch.manual_seed(1)
    head = AestheticMLP(16).eval()
    torch.save(head.state_dict(), tmp_path / "head.pth")
    imgs = images()
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(i) for i in imgs]))
        expected = head(image / image.norm(dim=-1, keepdim=True)).squeeze(-1)
    scorer = Aesthetic(str(tmp_path / "head.pth"), str(path / "clip.pt"), model_name="tiny-clip-test",
                       model_config=OPEN_CLIP_TINY, device="cpu")
    np.testing.assert_allclose(scorer.score(PROMPTS, imgs), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_missing_weights_name_the_path_and_how_to_get_them(tmp_path):
    missing = str(tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt.*huggingface-cli download xswu/HPSv2"):
        HPSv2(missing)
    with pytest.raises(FileNotFoundError, match="nowhere.*PickScore_v1"):
        PickScore("./nowhere")
    with pytest.raises(ValueError, match="give the weights' path"):
        Aesthetic(None, None)


# ------------------------------------------------------------------ text and speech
def test_wer_and_cer_on_hand_made_transcripts():
    refs = ["the cat sat on the mat", "hello world"]
    transcripts = ["the cat sat on mat", "hello word"]
    # WER: one deletion in six words; one substitution in two. CER: "hello word" is one deletion in 11 chars.
    assert WER().score(refs, transcripts) == pytest.approx([1 / 6, 1 / 2])
    assert CER().score(refs, transcripts) == pytest.approx([4 / 22, 1 / 11])
    upper = WER(transcribe=lambda outputs: [o.lower() for o in outputs])  # an "ASR" run on the outputs first
    rows = [{"reference": "the cat"}, {}]  # a reference column wins over the prompt
    assert upper.score(["ignored", "hello world"], ["THE CAT", "HELLO WORLD"], rows=rows) == [0.0, 0.0]
    assert WER.higher_is_better is False


def test_reward_model_scores_prompt_and_answer(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignsuite.toy.llm import EchoWorld

    tok = EchoWorld().build_tokenizer()
    tok.chat_template = None  # plain "prompt\nanswer"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts, answers = ["echo a b", "echo c"], ["A B", "c"]
    with torch.no_grad():
        expected = [model(**tok(f"{p}\n{a}", return_tensors="pt")).logits[0, 0].item() for p, a in zip(prompts, answers)]
    scores = RewardModel(str(tmp_path), device="cpu", dtype="float32").score(prompts, answers)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_toy_reward_is_the_worlds_reward():
    scorer = ToyReward("llm")
    assert scorer.score(["echo a b c", "echo a b"], ["A B C", "A b"]) == [1.0, 0.5]
    vlm = ToyReward("vlm")
    items = load_prompts("toy:vlm", 2, seed=0)
    assert vlm.score([i["prompt"] for i in items], [items[0]["answer"], "none"], rows=items) == [1.0, 0.0]


def test_the_toy_vlm_reward_refuses_prompts_without_the_worlds_answers(tmp_path):
    from alignsuite.evaluation.prompts import check_columns

    (tmp_path / "p.txt").write_text("what colour is the circle ?\n")
    rows = read_prompt_file(str(tmp_path / "p.txt"))
    with pytest.raises(DataError, match=r"p.txt: row 0: field 'answer': expected the toy world's answer.*toy:vlm"):
        check_columns(rows, [ToyReward("vlm")], "vision_language", str(tmp_path / "p.txt"))
    check_columns(load_prompts("toy:vlm", 2), [ToyReward("vlm")], "vision_language", "toy:vlm")
    check_columns(rows, [ToyReward("llm")], "text", "p.txt")


def test_a_scorer_is_refused_for_another_modality():
    with pytest.raises(ValueError, match="'wer'.*text_to_speech, text outputs, not text_to_image"):
        WER().check_modality("text_to_image")
    with pytest.raises(ValueError, match="toy_reward_llm"):
        ToyReward("llm").check_modality("text_to_image")
    ToyReward("diffusion").check_modality("text_to_image")


# ------------------------------------------------------------------ win rate and interval
def test_win_rate_hand_worked():
    base, aligned = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 5.0]  # win, loss, tie, win
    assert outcomes(base, aligned).tolist() == [1.0, 0.0, 0.5, 1.0]
    result = summarise(ScorerResult("s", "u", base, aligned), num_resamples=2000, seed=0)
    assert result.win_rate == 0.625
    assert (result.mean_base, result.mean_aligned) == (2.5, 2.75)
    # lower is better (an error rate): the same numbers are loss, win, tie, loss
    worse = summarise(ScorerResult("wer", "u", base, aligned, higher_is_better=False))
    assert worse.win_rate == 0.375
    # a prompt that either model failed on is left out of the win rate, and only of that model's mean
    gaps = summarise(ScorerResult("s", "u", [1.0, None, 3.0], [2.0, 5.0, None]))
    assert (gaps.win_rate, gaps.mean_base, gaps.mean_aligned) == (1.0, 2.0, 3.5)
    empty = summarise(ScorerResult("s", "u", [None], [1.0]))
    assert empty.win_rate is None and empty.ci_low is None


def test_bootstrap_interval_against_an_independent_loop():
    wins = np.array([1.0, 0.0, 0.5, 1.0])
    low, high = bootstrap_interval(wins, num_resamples=2000, seed=7)
    # the same draws one resample at a time, and the 2.5/97.5 percentiles by sorting (linear interpolation)
    rng = np.random.default_rng(7)
    means = sorted(float(np.mean([wins[j] for j in rng.integers(0, 4, size=4)])) for _ in range(2000))

    def percentile(q):
        pos = q * (len(means) - 1)
        lo = int(np.floor(pos))
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    assert (low, high) == pytest.approx((percentile(0.025), percentile(0.975)))
    # means of 4 outcomes in {0, 1/2, 1} are multiples of 1/8: the interval for this seed is [1/4, 1]
    assert (low, high) == (0.25, 1.0)
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)


# ------------------------------------------------------------------ prompt files
def test_prompt_files_in_each_layout(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert [r["prompt"] for r in read_prompt_file(str(tmp_path / "p.txt"))] == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "reference": "x"}\n{"prompt": "b"}\n')
    assert read_prompt_file(str(tmp_path / "p.jsonl"))[0] == {"prompt": "a", "reference": "x"}
    (tmp_path / "parti.tsv").write_text("Prompt\tCategory\tChallenge\na bird\tAnimals\tSimple\n")
    assert read_prompt_file(str(tmp_path / "parti.tsv"))[0]["prompt"] == "a bird"
    (tmp_path / "anime.json").write_text(json.dumps(["one", "two"]))  # HPSv2 benchmark file
    assert [r["prompt"] for r in read_prompt_file(str(tmp_path / "anime.json"))] == ["one", "two"]
    (tmp_path / "p.csv").write_text("text,id\nhello,1\n")
    assert read_prompt_file(str(tmp_path / "p.csv"), column="text")[0]["prompt"] == "hello"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["x", "y", "z"]}), tmp_path / "p.parquet")
    assert [r["prompt"] for r in load_prompts(str(tmp_path / "p.parquet"), num_prompts=2)] == ["x", "y"]


def test_bad_prompt_files_name_the_file_and_line(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptFileError, match="empty.txt: no prompts"):
        read_prompt_file(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(PromptFileError, match="bad.jsonl: line 2: not JSON"):
        read_prompt_file(str(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text('{"prompt": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(PromptFileError, match="nofield.jsonl: line 3: no 'prompt' field"):
        read_prompt_file(str(tmp_path / "nofield.jsonl"))
    (tmp_path / "blank.tsv").write_text("Prompt\tCategory\na\tx\n\tx\n")
    with pytest.raises(PromptFileError, match="blank.tsv: line 3: field 'Prompt': empty prompt"):
        read_prompt_file(str(tmp_path / "blank.tsv"))
    (tmp_path / "nums.json").write_text("[1, 2]")
    with pytest.raises(PromptFileError, match="nums.json: row 0: expected text or a list of chat messages, got 1$"):
        read_prompt_file(str(tmp_path / "nums.json"))


def test_prompt_csv_line_with_an_unquoted_comma_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,id\nhello,1\n"a, b",2\nhello, world,3\n')
    with pytest.raises(DataError) as err:
        read_prompt_file(str(path))  # before: "hello" was evaluated, and " world" taken for the id
    assert (err.value.source, err.value.line) == (str(path), 4)
    assert str(err.value).startswith(f"{path}: line 4: expected 2 fields as in the header line, got 3")
    (tmp_path / "ok.csv").write_text('prompt,id\n"a, b",2\n')
    assert read_prompt_file(str(tmp_path / "ok.csv"))[0]["prompt"] == "a, b"


@pytest.mark.parametrize("message, problem", [
    ({"role": "user"}, "message 1 has no text 'content'"),
    ({"role": "user", "content": 3}, "message 1 has no text 'content'"),
    ({"role": "user", "content": [{"text": "no type"}]}, "message 1 has no text 'content'"),
    ({"content": "hi"}, "message 1 has no string 'role'"),
])
def test_prompt_chat_message_without_content_or_role_names_file_line_and_field(tmp_path, message, problem):
    path = tmp_path / "p.jsonl"
    rows = [{"q": [{"role": "user", "content": "fine"}]}, {"q": [{"role": "system", "content": "be brief"}, message]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:  # before: generated from, as if the message said nothing
        read_prompt_file(str(path), column="q")
    assert (err.value.source, err.value.line, err.value.field) == (str(path), 2, "q")
    assert str(err.value).startswith(f"{path}: line 2: field 'q': expected chat messages")
    assert str(err.value).endswith(problem)


def test_heldout_prompts_are_the_validation_split():
    from alignsuite.toy.data import ToyPreferenceData

    data = ToyPreferenceData("llm", num_train=8, num_val=6)
    rows = load_prompts("heldout", num_prompts=4, datamodule=data)
    assert [r["prompt"] for r in rows] == list(data.val_set["prompt"][:4])
    with pytest.raises(ValueError, match="needs the recipe's data section"):
        load_prompts("heldout")
