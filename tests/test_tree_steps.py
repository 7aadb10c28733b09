"""Preference-tree steps given as text (``TextTrees``' ``steps`` column): the backbone's tokenizer turns each path's
steps into the answer-token indices where they begin (``alignsuite.backbones.steps.StepTokens``), hand-counted in a
word-level and a byte-level BPE tokenizer; what truncation leaves; steps that do not concatenate to their path or
that two tokens cannot separate are refused, naming the file, row and field."""

import json

import pytest

from alignsuite.backbones.steps import StepTokens
from alignsuite.data import DataError, PreferenceDataModule, TextTrees
from alignsuite.toy.llm import EchoWorld


def toy_steps(max_length: int = 32) -> StepTokens:
    """The language toy world's tokenizer: one token per whitespace-separated word, the end token after."""
    return StepTokens(EchoWorld().build_tokenizer(), max_length, 16)


def bpe_steps() -> StepTokens:
    """A byte-level BPE with the merges a b -> ab and Ġ ab -> Ġab (Ġ: a space), so "ab ab" is the two tokens
    "ab" (characters 0-2) and "Ġab" (characters 2-5, its space included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "a": 1, "b": 2, "Ġ": 3, "ab": 4, "Ġab": 5}
    core = Tokenizer(models.BPE(vocab, [("a", "b"), ("Ġ", "ab")]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    assert tok("ab ab", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] == [(0, 2), (2, 5)]
    return StepTokens(tok, 32, 16)


def test_word_level_steps_begin_at_their_first_word():
    # "H E J F" is the tokens H E J F (then the end token): a step begins at the first token ending past its start
    count = toy_steps()
    assert count("echo h e j f", "H E J F", ["H E ", "J F"]) == [0, 2]  # the space closes step 0
    assert count("echo h e j f", "H E J F", ["H E", " J F"]) == [0, 2]  # or opens step 1: the same tokens
    assert count("echo h e j f", "H E J F", ["H ", "E J ", "F"]) == [0, 1, 3]
    assert count("echo h e j f", "H E J F", ["H E J F"]) == [0]


def test_chat_answers_count_from_the_text_the_template_adds():
    # The toy template renders "... assistant: " before the answer and "H E J F <eos> " as the answer: same starts
    prompt = [{"role": "user", "content": "echo h e j f"}]
    answer = [{"role": "assistant", "content": "H E J F"}]
    assert toy_steps()(prompt, answer, ["H E", " J F"]) == [0, 2]


def test_byte_level_bpe_a_token_that_straddles_two_steps_opens_the_later():
    count = bpe_steps()
    assert count("x", "ab ab", ["ab", " ab"]) == [0, 1]
    assert count("x", "ab ab", ["ab ", "ab"]) == [0, 1]  # "Ġab" holds step 0's space: it opens step 1
    with pytest.raises(ValueError, match=r"steps 0 and 1 meet inside one token \(token 0 of the answer\)"):
        count("x", "ab ab", ["a", "b ab"])


def test_steps_past_the_truncation_are_left_out():
    # The prompt is <bos> echo h e j f (6 tokens); max_length 8 keeps two answer tokens, H and E
    assert toy_steps()("echo h e j f", "H E J F", ["H ", "E ", "J F"]) == [0, 1, 2]
    assert toy_steps(max_length=8)("echo h e j f", "H E J F", ["H ", "E ", "J F"]) == [0, 1]


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tree_batch(source: str, list_size: int, steps: StepTokens | None = None) -> dict:
    data = PreferenceDataModule(train=source, layout=TextTrees(list_size=list_size), batch_size=2)
    data.setup()
    if steps is not None:
        data.layout.use_model(step_tokens=steps)
    return data.collate([data.train_set[i] for i in range(len(data.train_set))])


def test_text_steps_and_token_starts_give_the_same_batch(tmp_path):
    # The second path is blank (dropped, its steps with it); rows may mix the two forms
    rows = [{"prompt": "echo a b c", "responses": ["A B C", "", "a b c"], "scores": [1.0, 0.5, 0.0],
             "steps": [["A B", " C"], [""], ["a ", "b ", "c"]]},
            {"prompt": "echo a b", "responses": ["A B", "a b"], "scores": [1.0, 0.0], "step_starts": [[0, 1], [0]]}]
    batch = tree_batch(write_rows(tmp_path / "t.jsonl", rows), 3, toy_steps())
    assert batch["step_starts"] == [[[0, 2], [0, 1, 2], [0]], [[0, 1], [0], [0]]]
    assert "_steps" not in batch and batch["mask"][0].tolist() == [True, True, False]


def test_the_backbone_hands_the_layout_its_tokenizer_at_setup(tmp_path):
    from alignsuite.backbones import CausalLM

    rows = [{"prompt": [{"role": "user", "content": "echo h e j f"}], "responses": ["H E J F", "h e j f"],
             "scores": [1.0, 0.0], "steps": [["H E ", "J F"], ["h ", "e j f"]]}]
    data = PreferenceDataModule(train=write_rows(tmp_path / "t.jsonl", rows), layout=TextTrees(list_size=2))
    data.setup()
    CausalLM("toy:llm", max_length=32, max_prompt_length=16).on_setup(data)
    assert data.collate([data.train_set[0]])["step_starts"] == [[[0, 2], [0, 1]]]


@pytest.mark.parametrize("steps,field,expected", [
    ([["A B"], ["a", " b "]], r"steps\[1\]", r"expected steps that concatenate to the path's answer, 'a b', got 'a b '"),
    ([["A B"], ["a", ""]], r"steps\[1\]", "expected a list of non-empty step texts"),
    ([["A B"]], "steps", "expected a list of 2 lists of step texts, one per path"),
    ("A B", "steps", "expected a list of 2 lists of step texts"),
])
def test_steps_that_do_not_make_their_path_are_refused_naming_file_row_and_field(tmp_path, steps, field, expected):
    good = {"prompt": "echo a b", "responses": ["A B", "a b"], "scores": [1.0, 0.0], "steps": [["A B"], ["a b"]]}
    source = write_rows(tmp_path / "t.jsonl", [good, {**good, "steps": steps}])
    with pytest.raises(DataError, match=rf"t.jsonl: row 1: field '{field}': {expected}"):
        tree_batch(source, 2)


def test_a_chat_answer_is_checked_against_its_last_message(tmp_path):
    row = {"prompt": [{"role": "user", "content": "echo a b"}], "scores": [1.0, 0.0], "steps": [["A ", "B"], ["a b"]],
           "responses": [[{"role": "assistant", "content": "A B"}], [{"role": "assistant", "content": "a  b"}]]}
    with pytest.raises(DataError, match=r"row 0: field 'steps\[1\]': expected steps that concatenate to the content"
                                        r" of the path's last message, 'a  b', got 'a b'"):
        tree_batch(write_rows(tmp_path / "t.jsonl", [row]), 2)


def test_steps_the_tokenizer_cannot_separate_are_refused_when_a_batch_is_made(tmp_path):
    # Path 2 of the file (the second kept, after the blank path 1): "ab" + " ab" is fine, "a" + "b ab" is not
    rows = [{"prompt": "x", "responses": ["ab", "", "ab ab"], "scores": [1.0, 0.5, 0.0],
             "steps": [["ab"], [""], ["a", "b ab"]]}]
    source = write_rows(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=r"t.jsonl: row 0: field 'steps\[2\]': steps 0 and 1 meet inside one token"):
        tree_batch(source, 3, bpe_steps())
    with pytest.raises(DataError, match=r"t.jsonl: row 0: field 'steps': steps given as text are counted in the"
                                        r" model's tokens, and no backbone handed this layout its tokenizer"):
        tree_batch(source, 3)


def test_rows_with_neither_column_are_refused_naming_both(tmp_path):
    source = write_rows(tmp_path / "t.jsonl", [{"prompt": "echo a", "responses": ["A", "a"], "scores": [1, 0]}])
    with pytest.raises(DataError, match=r"row 0: field 'step_starts': expected one list of step starts .* or 'steps'"):
        tree_batch(source, 2)
