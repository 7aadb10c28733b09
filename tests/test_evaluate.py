"""``python -m alignsuite evaluate`` end to end on the language toy world, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.text import word_error_rate

from alignsuite.backbones import CausalLM, VisionLanguage
from alignsuite.cli import main
from alignsuite.evaluation.run import Evaluation, EvaluationError, aligned_backbone, run_evaluation
from alignsuite.evaluation.scorers import WER, Scorer, ToyReward
from alignsuite.module import PreferenceModule
from alignsuite.toy import get_world

RECIPE = "recipes/toy/llm_dpo.yaml"
SMALL = ["--evaluate.num_prompts", "12", "--evaluate.batch_size", "8", "--data.init_args.num_val", "16",
         "--evaluate.report", "false"]


@pytest.fixture(scope="module")
def aligned_export(tmp_path_factory):
    """The toy base model with every weight nudged: an 'aligned' model whose generations differ."""
    path = tmp_path_factory.mktemp("run") / "export"
    backbone = CausalLM("toy:llm")
    backbone.configure()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in backbone.policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    backbone.save_pretrained(str(path))
    return path, backbone


def direct_rewards(backbone, prompts, seed=0, batch_size=8):
    """The toy reward of generations made by hand, with the seeds evaluate uses (seed + batch index)."""
    world, out = get_world("llm"), []
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        texts = backbone.generate(chunk, seed=seed + k, max_new_tokens=8)
        out += [world.reward(p, t) for p, t in zip(chunk, texts)]
    return out


def test_evaluate_toy_llm_end_to_end(aligned_export, capsys):
    path, aligned = aligned_export
    main(["evaluate", "--config", RECIPE, "--config", "configs/eval/toy_llm.yaml", "--evaluate.aligned", str(path),
          *SMALL])
    printed = capsys.readouterr().out
    results = json.loads((path.parent / "eval" / "results.json").read_text())
    toy = next(s for s in results["scores"] if s["name"] == "toy_reward_llm")
    prompts = get_world("llm").eval_prompts(12, 0)
    assert results["prompts"] == prompts and results["failures"] == {"base": 0, "aligned": 0}

    base = CausalLM("toy:llm")
    base.configure()
    assert toy["base"] == pytest.approx(direct_rewards(base, prompts))
    assert toy["aligned"] == pytest.approx(direct_rewards(aligned, prompts))
    assert toy["mean_base"] == pytest.approx(np.mean(toy["base"]))
    assert toy["mean_aligned"] == pytest.approx(np.mean(toy["aligned"]))
    wins = [(a > b) + 0.5 * (a == b) for b, a in zip(toy["base"], toy["aligned"])]  # aligned over base
    assert toy["win_rate"] == pytest.approx(np.mean(wins))
    assert 0 <= toy["ci_low"] <= toy["win_rate"] <= toy["ci_high"] <= 1
    assert results["base_outputs"] != results["aligned_outputs"]  # the nudge changed what it says

    # the held-out pairs (data.num_val 16): 1, 0 or 1/2 each; the base, its own reference, ties every pair
    implicit = next(s for s in results["scores"] if s["name"] == "implicit_reward_accuracy")
    assert len(implicit["aligned"]) == 16 and set(implicit["aligned"]) <= {0.0, 0.5, 1.0}
    assert implicit["mean_base"] == 0.5 and implicit["per"] == "pair"
    assert implicit["mean_aligned"] == pytest.approx(np.mean(implicit["aligned"]))
    assert implicit["win_rate"] is None and implicit["ci_low"] <= implicit["mean_aligned"] <= implicit["ci_high"]
    # printed apart from the win-rate table, as an accuracy over pairs
    table, after = printed.split("implicit reward accuracy on held-out pairs")
    assert "implicit_reward_accuracy" not in table and "16 pairs" in after
    assert f"{implicit['mean_aligned']:.3f}" in after


class FailingCausalLM(CausalLM):
    """The toy model, failing on any batch holding a prompt with "fail" in it (as an over-long prompt would)."""

    def generate(self, prompts, **kwargs):
        if any("fail" in p for p in prompts):
            raise RuntimeError("this prompt cannot be generated from")
        return super().generate(prompts, **kwargs)


def test_failed_generations_are_counted_not_fatal(aligned_export, tmp_path):
    path, _ = aligned_export
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("echo a b\necho fail\necho c\n")
    module = PreferenceModule(FailingCausalLM("toy:llm"))
    evaluation = Evaluation(str(path), str(prompts), [ToyReward("llm")], batch_size=8, output_dir=str(tmp_path / "eval"),
                            generation_kwargs={"max_new_tokens": 8}, report=False)
    results = run_evaluation(module, evaluation)
    assert results.failures == {"base": 1, "aligned": 1}
    assert results.base_outputs[1] is None and results.base_outputs[0] is not None  # retried one by one
    toy = results.scores[0]
    assert toy.base[1] is None and toy.aligned[1] is None and toy.base[0] is not None
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert written["failures"] == {"base": 1, "aligned": 1}
    assert written["details"]["errors"]["base"] == ["prompt 1: RuntimeError: this prompt cannot be generated from"]


def test_every_generation_failing_is_an_error_after_results_are_written(aligned_export, tmp_path):
    path, _ = aligned_export
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("echo fail a\necho fail b\n")
    module = PreferenceModule(FailingCausalLM("toy:llm"))
    evaluation = Evaluation(str(path), str(prompts), [ToyReward("llm")], output_dir=str(tmp_path / "eval"),
                            generation_kwargs={"max_new_tokens": 8}, report=False)
    with pytest.raises(EvaluationError, match=r"every generation of the base model failed \(2 of 2 prompts\); the"
                       r" first: prompt 0: RuntimeError: this prompt cannot be generated from"):
        run_evaluation(module, evaluation)
    written = json.loads((tmp_path / "eval" / "results.json").read_text())  # kept for a look
    assert written["failures"] == {"base": 2, "aligned": 2}


def test_wer_of_a_text_model_needs_a_reference_column(aligned_export, tmp_path):
    path, aligned = aligned_export
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "echo a b", "reference": "A B"}\n{"prompt": "echo c"}\n')
    evaluation = Evaluation(str(path), str(prompts), [WER()], output_dir=str(tmp_path / "eval"),
                            generation_kwargs={"max_new_tokens": 8}, report=False)
    module = PreferenceModule(CausalLM("toy:llm"))
    with pytest.raises(EvaluationError, match=rf"^{prompts}: row 1: field 'reference': expected the reference text"
                       r" scorer 'wer' compares a text model's answers with.*WER.reference_column"):
        run_evaluation(module, evaluation)  # before: row 1's answer was scored against its own prompt
    assert not (tmp_path / "eval").exists()  # refused before any model loads
    prompts.write_text('{"prompt": "echo a b", "reference": "A B"}\n{"prompt": "echo c", "reference": "C"}\n')
    results = run_evaluation(module, evaluation)
    answers = aligned.generate(["echo a b", "echo c"], seed=0, max_new_tokens=8)
    # the batched rates against torchmetrics' one utterance at a time
    assert results.scores[0].aligned == [float(word_error_rate(answers[0], "A B")),
                                         float(word_error_rate(answers[1], "C"))]


class Broken(Scorer):
    """A judge that fails on whatever it is given (a reward model that does not load, say)."""

    name = "broken"

    def score_batch(self, prompts, outputs, conditions, rows):
        raise RuntimeError("the judge's weights are corrupt")


def test_a_scorer_that_fails_is_an_error_after_the_others_are_written(aligned_export, tmp_path):
    path, _ = aligned_export
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("echo a b\necho c\n")
    evaluation = Evaluation(str(path), str(prompts), [Broken(), ToyReward("llm")], output_dir=str(tmp_path / "eval"),
                            generation_kwargs={"max_new_tokens": 8}, report=False)
    with pytest.raises(EvaluationError, match=r"scorer 'broken' failed: RuntimeError: the judge's weights are corrupt"):
        run_evaluation(PreferenceModule(CausalLM("toy:llm")), evaluation)  # before: a traceback, nothing written
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [s["name"] for s in written["scores"]] == ["toy_reward_llm"] and len(written["aligned_outputs"]) == 2
    assert written["details"]["errors"]["broken"] == ["RuntimeError: the judge's weights are corrupt"]


def test_evaluate_prints_where_results_and_report_went(aligned_export, tmp_path, capsys):
    path, _ = aligned_export
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("echo a b\necho c\n")
    out = tmp_path / "eval"
    evaluation = Evaluation(str(path), str(prompts), [ToyReward("llm")], output_dir=str(out),
                            generation_kwargs={"max_new_tokens": 8})
    run_evaluation(PreferenceModule(CausalLM("toy:llm")), evaluation)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"results: {out / 'results.json'}", f"report:  {out / 'report.html'}"]
    assert (out / "results.json").is_file() and (out / "report.html").is_file()


def test_a_report_that_cannot_be_written_is_an_error_after_results_are_written(aligned_export, tmp_path, capsys):
    path, _ = aligned_export
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("echo a b\n")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "figures").write_text("a file where the report's figures folder goes")
    evaluation = Evaluation(str(path), str(prompts), [ToyReward("llm")], output_dir=str(out),
                            generation_kwargs={"max_new_tokens": 8})
    with pytest.raises(EvaluationError, match=r"the report could not be written: FileExistsError"):
        run_evaluation(PreferenceModule(CausalLM("toy:llm")), evaluation)  # before: printed, and exit status 0
    assert json.loads((out / "results.json").read_text())["failures"] == {"base": 0, "aligned": 0}
    assert "Traceback" in capsys.readouterr().err


class AnswerLength(Scorer):
    """Words in the answer: a judge any text answer can be scored by."""

    name, unit, modalities = "answer_words", "words", ("vision_language",)

    def score_batch(self, prompts, outputs, conditions, rows):
        return [len(o.split()) for o in outputs]


@pytest.fixture(scope="module")
def vlm_checkpoint(tmp_path_factory):
    backbone = VisionLanguage("toy:vlm")
    backbone.configure()
    path = tmp_path_factory.mktemp("vlm") / "last.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, path)
    return str(path)


def test_text_prompts_to_a_vision_language_model_are_answered(vlm_checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("what colour is the circle ?\nwhat colour is the square ?\n")
    evaluation = Evaluation(vlm_checkpoint, str(prompts), [AnswerLength()], output_dir=str(tmp_path / "eval"),
                            generation_kwargs={"max_new_tokens": 3}, report=False)
    results = run_evaluation(PreferenceModule(VisionLanguage("toy:vlm")), evaluation)  # before: AttributeError x4
    assert results.failures == {"base": 0, "aligned": 0}
    assert results.base_outputs == results.aligned_outputs and all(results.base_outputs)
    assert results.conditions == [[], []]


def test_an_image_part_without_an_image_is_refused_naming_row_and_field(vlm_checkpoint, tmp_path):
    question = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour ?"}]}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n"
                       + json.dumps({"prompt": [question]}) + "\n")
    evaluation = Evaluation(vlm_checkpoint, str(prompts), [AnswerLength()], output_dir=str(tmp_path / "eval"),
                            generation_kwargs={"max_new_tokens": 3}, report=False)
    with pytest.raises(EvaluationError, match=rf"^{prompts}: row 1: field 'images': expected one image per image"
                       r" part of the prompt \(1\), got 0"):  # before: answered without the image
        run_evaluation(PreferenceModule(VisionLanguage("toy:vlm")), evaluation)
    assert not (tmp_path / "eval").exists()  # refused before any model loads


def test_checkpoint_as_aligned_model(aligned_export, tmp_path):
    _, aligned = aligned_export
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in aligned.state_dict().items()}}, ckpt)
    loaded = aligned_backbone(CausalLM("toy:llm"), str(ckpt))
    for (name, a), b in zip(aligned.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_refusals_name_the_problem(aligned_export, tmp_path, capsys):
    path, _ = aligned_export
    cases = [
        (["--evaluate.scorers", '[{"class_path": "alignsuite.evaluation.scorers.ClipScore", "init_args":'
          ' {"model_name_or_path": "openai/clip-vit-large-patch14"}}]'], "'clip_score'.*not text"),
        (["--evaluate.prompts", str(tmp_path / "missing.txt")], "missing.txt: no such prompt file"),
        (["--evaluate.aligned", str(tmp_path / "nothing")], "nothing: no such folder or checkpoint"),
    ]
    (tmp_path / "empty.txt").write_text("")
    cases.append((["--evaluate.prompts", str(tmp_path / "empty.txt")], "empty.txt: no prompts"))
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "--config", RECIPE, "--config", "configs/eval/toy_llm.yaml",
                  "--evaluate.aligned", str(path), *SMALL, *extra])
        assert e.value.code == 2
        assert __import__("re").search(message, capsys.readouterr().err), message
