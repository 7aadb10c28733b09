"""The loop's generation engine: the backbone's ``generate`` by default, any ``GenerationEngine`` a recipe names,
and vLLM's adapter (its mapping of the loop's settings checked here against a stand-in module; the real engine
runs only where vLLM and a GPU are, ``-m gpu``)."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import sys
import types

import pytest
import torch

from alignsuite.cli import main
from alignsuite.iterate import GenerationEngine, IterateError, VLLMEngine
from alignsuite.iterate.files import read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes/toy/llm_iterate_dpo.yaml")
SMALL = ["--iterate.num_prompts", "8", "--iterate.prompts_per_round", "8", "--iterate.num_samples", "2",
         "--iterate.rounds", "2", "--iterate.num_heldout", "4", "--data.init_args.batch_size", "4"]
EVENTS: list = []


class CountingEngine(GenerationEngine):
    """The backbone's generate, with every start, stop and call recorded."""

    def start(self, backbone, folder):
        EVENTS.append(("start", os.path.basename(folder)))
        generate = super().start(backbone, folder)

        def counted(prompts, **kwargs):
            EVENTS.append(("generate", len(prompts)))
            return generate(prompts, **kwargs)
        return counted

    def stop(self):
        EVENTS.append(("stop",))


def test_a_recipe_engine_draws_every_sample_once_per_policy_and_changes_no_file(tmp_path):
    default, engine = tmp_path / "default", tmp_path / "engine"
    main(["iterate", "--config", RECIPE, *SMALL, "--iterate.output_dir", str(default)])
    EVENTS.clear()
    main(["iterate", "--config", RECIPE, *SMALL, "--iterate.output_dir", str(engine),
          "--iterate.engine", "test_iterate_engines.CountingEngine"])
    starts = [e[1] for e in EVENTS if e[0] == "start"]
    # one engine per policy: the base (round 0's held-out, round 1's samples), round 1's (its held-out, round 2's
    # samples) and round 2's; each stopped before the fit that follows it, the last at the end
    assert starts == ["round_00", "round_01", "round_02"]
    assert sum(e[0] == "stop" for e in EVENTS) == 3
    assert sum(e[1] for e in EVENTS if e[0] == "generate") == 3 * 4 + 2 * 8 * 2  # held-out x 3, samples x 2 rounds
    for root, _, files in os.walk(default):
        for name in files:
            if name.endswith(".jsonl") and f"{os.sep}fit" not in root:
                path = os.path.relpath(os.path.join(root, name), default)
                assert filecmp.cmp(default / path, engine / path, shallow=False), path
    assert len(read_json(os.path.join(engine, "rounds.json"))) == 3


def fake_vllm(calls: list) -> types.ModuleType:
    """A stand-in for vllm's offline API: records the model folder and every request's sampling parameters."""
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, **kwargs):
            calls.append(("llm", model, kwargs))

        def generate(self, texts, params, use_tqdm=True):
            calls.append(("generate", list(texts), [p.kwargs for p in params]))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"out {i}")]) for i in range(len(texts))]

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_the_vllm_engine_maps_the_loops_settings_onto_sampling_params(tmp_path, monkeypatch):
    from alignsuite.backbones import CausalLM

    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    backbone = CausalLM("toy:llm")
    backbone.configure()
    engine = VLLMEngine(gpu_memory_utilization=0.3, llm_kwargs={"enforce_eager": True})
    generate = engine.start(backbone, str(tmp_path))
    assert os.path.exists(tmp_path / "engine" / "config.json") and os.path.exists(tmp_path / "engine" / "tokenizer.json")
    kind, folder, options = calls[0]
    assert folder == str(tmp_path / "engine")
    assert options == {"gpu_memory_utilization": 0.3, "dtype": "auto", "tensor_parallel_size": 1, "enforce_eager": True}

    chat = [{"role": "user", "content": "echo a b"}]
    assert generate(["echo c", chat], seed=40, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=8) == \
        ["out 0", "out 1"]
    _, texts, params = calls[-1]
    assert texts[0] == "echo c" and "echo a b" in texts[1] and texts[1] != "echo a b"  # the chat template rendered
    assert params == [{"n": 1, "seed": 40, "temperature": 0.7, "top_p": 0.9, "max_tokens": 8},
                      {"n": 1, "seed": 41, "temperature": 0.7, "top_p": 0.9, "max_tokens": 8}]
    generate(["echo c"])  # no seed, no do_sample: greedy, as the backbone's own default
    assert calls[-1][2] == [{"n": 1, "seed": None, "max_tokens": 64, "temperature": 0.0}]
    with pytest.raises(IterateError, match="VLLMEngine maps temperature, top_p, top_k, max_new_tokens and do_sample;"
                                           " it does not take repetition_penalty"):
        generate(["echo c"], repetition_penalty=1.1)
    engine.stop()
    assert engine.llm is None


def test_the_vllm_engine_is_refused_at_start_where_it_cannot_run(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(SystemExit):
        main(["iterate", "--config", RECIPE, "--iterate.engine", "alignsuite.iterate.VLLMEngine",
              "--iterate.output_dir", str(tmp_path / "run")])
    assert "iterate.engine VLLMEngine: vllm is not installed (pip install vllm" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "round_00")
    with pytest.raises(IterateError, match="VLLMEngine draws for text backbones, not text_to_image"):
        VLLMEngine().check("text_to_image")


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                    reason="needs vllm and a CUDA device")
def test_vllm_draws_a_rounds_samples_on_a_gpu(tmp_path):
    out = tmp_path / "run"
    main(["iterate", "--config", RECIPE, *SMALL, "--trainer.accelerator", "gpu", "--iterate.output_dir", str(out),
          "--iterate.engine", "alignsuite.iterate.VLLMEngine"])
    summaries = read_json(os.path.join(out, "rounds.json"))
    assert len(summaries) == 3 and summaries[1]["build"]["rows"] > 0
