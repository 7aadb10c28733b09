"""Every shipped recipe of the online loop runs as shipped, shrunk to a CPU: the toy ones on their world for one or
two small rounds, the real ones with a tiny random model of the same architecture and a tiny reward model."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
import yaml

from alignsuite.cli import main
from alignsuite.iterate.files import read_json, read_rows
from test_recipes import save_tiny_causal_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGUAGE_TOY = sorted(p for p in glob.glob(os.path.join(REPO, "recipes", "toy", "llm_iterate_*.yaml"))
                      if not p.endswith("llm_iterate_dpo.yaml"))  # run in tests/test_iterate.py
REAL = sorted(p for p in glob.glob(os.path.join(REPO, "recipes", "llm", "*.yaml")) if "iterate" in open(p).read())
SMALL = ["--iterate.num_prompts", "16", "--iterate.prompts_per_round", "16", "--iterate.num_heldout", "4",
         "--iterate.shard_size", "8", "--data.init_args.batch_size", "4", "--trainer.log_every_n_steps", "1"]


def rounds_of(out) -> list[dict]:
    return read_json(os.path.join(out, "rounds.json"))


@pytest.mark.parametrize("recipe", LANGUAGE_TOY, ids=os.path.basename)
def test_language_toy_iterate_recipe_runs_as_shipped(tmp_path, recipe):
    rounds = yaml.safe_load(open(recipe))["iterate"].get("rounds", 3)
    n = 2 if rounds % 2 == 0 else 1  # an extragradient recipe runs in twos
    main(["iterate", "--config", recipe, "--iterate.rounds", str(n), "--iterate.output_dir", str(tmp_path / "run"),
          *SMALL])
    summaries = rounds_of(tmp_path / "run")
    assert [s["round"] for s in summaries] == list(range(n + 1))
    assert all(s["build"]["rows"] > 0 for s in summaries[1:])
    pairs = read_rows(tmp_path / "run" / "round_01" / "pairs.jsonl")
    columns = yaml.safe_load(open(recipe))["model"]["init_args"]["objective"]["class_path"]
    if columns.endswith("SPPO"):  # the win rates the objective regresses onto reached the rows
        assert all(0 < p["rejected_win_rate"] < p["chosen_win_rate"] < 1 for p in pairs)
    if columns.endswith("OnlineIPO"):
        assert all(0.5 < p["preference"] < 1 for p in pairs)
    if columns.endswith("IREPO"):  # five annotators' head-to-head votes, smoothed: (k + 1) / (n + 2) with n <= 5
        assert all(1 / 7 <= p["preference"] <= 6 / 7 for p in pairs)
        lists = read_rows(tmp_path / "run" / "round_01" / "lists.jsonl")
        assert all(sum(v for line in row["votes"] for v in line) == 5 * 6 for row in lists)  # 5 x the 6 pairs of K = 4


def save_tiny_reward_model(path) -> str:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from alignsuite.toy.llm import EchoWorld

    tok = EchoWorld().build_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def shrunk(recipe: str, tmp_path, model: str, reward: str, prompts: str) -> str:
    """The recipe on one CPU process: the tiny models in place of the hub ids, the prompt file, short answers."""
    config = yaml.safe_load(open(recipe))
    trainer = config["trainer"]
    trainer.update(accelerator="cpu", devices=1, accumulate_grad_batches=1, enable_progress_bar=False)
    trainer["precision"] = "bf16-mixed" if trainer.get("precision") == "16-mixed" else trainer.get("precision", "32")
    config["model"]["init_args"]["backbone"]["init_args"]["model_name_or_path"] = model
    config["model"]["init_args"]["backbone"]["init_args"].update(max_length=32, max_prompt_length=16)
    it = config["iterate"]
    judge = it["judge"]["init_args"]
    if not judge.get("policy"):  # the policy judging itself needs no other model
        scorer = judge["scorer"]["init_args"] if "scorer" in judge else judge
        scorer.update(model_name_or_path=reward, dtype="float32", device="cpu")
    else:
        judge["generation_kwargs"]["max_new_tokens"] = 6
    it.update(prompts=prompts, heldout=prompts, rounds=1, num_prompts=4, prompts_per_round=4, num_heldout=2,
              batch_size=4, shard_size=2, output_dir=str(tmp_path / "run"))
    it["generation_kwargs"]["max_new_tokens"] = 6
    config["data"]["init_args"].update(batch_size=2, num_workers=0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("recipe", REAL, ids=os.path.basename)
def test_real_iterate_recipe_runs_as_shipped_with_tiny_models(tmp_path, recipe):
    model = save_tiny_causal_lm(tmp_path / "model", "qwen2" if "qwen" in os.path.basename(recipe) else "llama")
    reward = save_tiny_reward_model(tmp_path / "reward")
    prompts = tmp_path / "ultrafeedback_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"echo {w}"}) + "\n" for w in ("a b", "c d e", "f", "g h")))
    config = shrunk(recipe, tmp_path, model, reward, str(prompts))
    if yaml.safe_load(open(config))["iterate"]["judge"]["init_args"].get("policy"):
        # A tiny random model writes no score a rubric parse finds: every judgement is counted as failed and the
        # round stops before it trains on nothing, with the raw judge answers kept.
        with pytest.raises(SystemExit):
            main(["iterate", "--config", config])
        judged = read_rows(tmp_path / "run" / "round_01" / "judged" / "00000.jsonl")
        assert all(r["values"]["llm_judge"] is None and isinstance(r["values"]["judge_output"], str) for r in judged)
        return
    main(["iterate", "--config", config])
    summaries = rounds_of(tmp_path / "run")
    assert [s["round"] for s in summaries] == [0, 1]
    assert summaries[1]["build"]["rows"] > 0
    assert os.path.exists(tmp_path / "run" / "round_01" / "fit" / "version_0" / "checkpoints" / "last.ckpt")
