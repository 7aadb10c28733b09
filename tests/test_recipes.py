"""Every shipped recipe for real checkpoints starts and trains as shipped, on the CPU.

Only what cannot be had here is swapped: the model for a tiny random one of the same architecture saved
with ``save_pretrained`` (and, with it, the image resolution), the data for a few rows in the same layout
as the dataset the recipe names, the accelerator for the CPU (and float16 autocast, which the CPU lacks,
for bfloat16), and the run's length (two optimizer steps, at most two micro-batches each). Everything
else — objective, reference, precision, dtypes, LoRA, gradient checkpointing, the encoding cache,
callbacks, max_epochs — is the recipe's own. A recipe that never ran this way broke for its first user.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os

import datasets
import pytest
import torch
import yaml
from conftest import save_tiny_pipeline

from alignsuite.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLM = sorted(p for p in glob.glob(os.path.join(REPO, "recipes", "llm", "*.yaml"))
             if "iterate" not in open(p).read())  # the online loop's: tests/test_iterate_recipes.py
DIFFUSION = sorted(glob.glob(os.path.join(REPO, "recipes", "diffusion", "*.yaml")))
VLM = sorted(glob.glob(os.path.join(REPO, "recipes", "vlm", "*.yaml")))
TTS = sorted(glob.glob(os.path.join(REPO, "recipes", "tts", "*.yaml")))
PIPELINES = {"sd15": "sd", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux"}


def save_tiny_causal_lm(path, architecture: str) -> str:
    """A seeded random tiny model of ``architecture`` ("llama" or "qwen2") with the toy tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from alignsuite.toy.llm import EchoWorld

    tok = EchoWorld().build_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cls, config = (LlamaForCausalLM, LlamaConfig(**common)) if architecture == "llama" else \
        (Qwen2ForCausalLM, Qwen2Config(**common, tie_word_embeddings=True))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def ultrafeedback_jsonl(path, n: int = 8, ties: bool = False) -> str:
    """Rows in the UltraFeedback-binarized layout: a prompt, and chosen/rejected full conversations; with ``ties``,
    a bool ``tie`` column marking every third row tied (TODO's tied UltraFeedback)."""
    rows = []
    for i in range(n):
        letters = "abcdef"[i % 6] + " " + "abcdef"[(i + 1) % 6]
        user = {"role": "user", "content": f"echo {letters}"}
        rows.append({"prompt": f"echo {letters}", "prompt_id": str(i),
                     "chosen": [user, {"role": "assistant", "content": letters.upper()}],
                     "rejected": [user, {"role": "assistant", "content": letters}],
                     "messages": [user, {"role": "assistant", "content": letters.upper()}],
                     "score_chosen": 8.0, "score_rejected": 3.0, **({"tie": i % 3 == 1} if ties else {})})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def pku_saferlhf_jsonl(path, n: int = 8) -> str:
    """Rows in PKU-SafeRLHF's layout: a prompt, two answers, and per dimension the index of the preferred one."""
    rows = []
    for i in range(n):
        letters = "abcdef"[i % 6] + " " + "abcdef"[(i + 1) % 6]
        answers = [letters.upper(), letters] if i % 2 else [letters, letters.upper()]
        rows.append({"prompt": f"echo {letters}", "response_0": answers[0], "response_1": answers[1],
                     "better_response_id": 1 - i % 2, "safer_response_id": i % 3 % 2,
                     "is_response_0_safe": True, "is_response_1_safe": bool(i % 2)})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def ultrafeedback_lists_jsonl(path, n: int = 8) -> str:
    """Rows in openbmb/UltraFeedback's layout: an instruction and four completions, each with its ratings; every
    third row has one completion left unrated (``N/A``), which the list layout drops and pads back."""
    rows = []
    for i in range(n):
        letters = "abcdef"[i % 6] + " " + "abcdef"[(i + 1) % 6]
        answers = [letters.upper(), letters, letters.upper()[::-1], "x y"]
        scores = [9.0, 5.0, 3.0, "N/A" if i % 3 == 0 else 1.0]
        rows.append({"source": "toy", "instruction": f"echo {letters}", "models": ["a", "b", "c", "d"],
                     "completions": [{"response": a, "overall_score": s, "annotations": {}} for a, s in zip(answers, scores)]})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def step_trees_jsonl(path, n: int = 8) -> str:
    """Preference trees whose paths come as steps of text (TPO's released trees): a chat prompt, four paths that
    branch from the capital echo, a score each, and each path's steps, which concatenate to it."""
    rows = []
    for i in range(n):
        letters = ["abcdef"[(i + j) % 6] for j in range(4)]
        best = [x.upper() for x in letters]
        paths = [best, best[:2] + letters[2:], best[:2] + ["X", "Y"], letters]
        rows.append({"prompt": [{"role": "user", "content": "echo " + " ".join(letters)}],
                     "responses": [" ".join(p) for p in paths], "scores": [1.0, 0.5, 0.25, 0.0][: 3 + i % 2],
                     "steps": [[" ".join(p[:2]), " " + " ".join(p[2:])] for p in paths]})
        rows[-1]["responses"], rows[-1]["steps"] = rows[-1]["responses"][: 3 + i % 2], rows[-1]["steps"][: 3 + i % 2]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def pickapic_parquet(path, n: int = 8) -> str:
    from alignsuite.toy import get_world

    rows = get_world("diffusion").make_pairs(n, seed=0)
    table = [{"caption": r["caption"], "jpg_0": r["jpg_0"], "jpg_1": r["jpg_1"], "label_0": r["label_0"],
              "are_different": True, "has_label": True} for r in rows]
    datasets.Dataset.from_list(table).to_parquet(str(path))
    return str(path)


def vision_rows(path, layout: str, n: int = 8) -> str:
    """Vision-language pairs of the toy world, in RLAIF-V's layout (image, question, chosen, rejected) or in
    TRL's (prompt/chosen/rejected messages with image parts, an images column)."""
    from alignsuite.toy import get_world

    rows = get_world("vlm").make_pairs(n, seed=0)
    if layout == "trl":
        def answer(text):
            return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

        rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]}],
                 "chosen": answer(r["chosen"]), "rejected": answer(r["rejected"]), "images": [r["image"]]}
                for r in rows]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def as_shipped_on_cpu(recipe: str, tmp_path, model: str, train: str, val: str) -> str:
    config = yaml.safe_load(open(recipe))
    trainer = config["trainer"]
    accumulate = min(int(trainer.get("accumulate_grad_batches", 1)), 2)
    trainer.update(accelerator="cpu", devices=1, max_steps=2, accumulate_grad_batches=accumulate,
                   val_check_interval=2 * accumulate, limit_val_batches=1, enable_progress_bar=False)
    trainer.pop("strategy", None)  # one CPU process
    if trainer.get("precision") == "16-mixed":
        trainer["precision"] = "bf16-mixed"
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(tmp_path / "runs"), "name": "r", "version": 0}}
    config.setdefault("checkpoint", {})["dirpath"] = str(tmp_path / "ckpt")
    backbone = config["model"]["init_args"]["backbone"]["init_args"]
    backbone["model_name_or_path"] = model
    if "resolution" in backbone:  # the tiny pipelines' VAE and UNet are sized for 16 px
        backbone["resolution"] = 16
        backbone["num_inference_steps"] = 2
    if "size" in (backbone.get("processor_kwargs") or {}):  # the tiny Qwen2.5-VL is sized for 32 px images
        backbone["processor_kwargs"]["size"] = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32}
    if backbone.get("cache_dir"):
        backbone["cache_dir"] = str(tmp_path / "cache")
    data = config["data"]["init_args"]
    data.update(train=train, val=val, num_workers=0, batch_size=min(int(data.get("batch_size", 2)), 2))
    data.pop("split", None)
    data.pop("val_split", None)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def train_losses(tmp_path) -> list[float]:
    with open(tmp_path / "runs" / "r" / "version_0" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("recipe", LLM, ids=os.path.basename)
def test_language_recipe_trains_as_shipped(tmp_path, recipe):
    architecture = "qwen2" if "qwen" in os.path.basename(recipe) else "llama"
    model = save_tiny_causal_lm(tmp_path / "model", architecture)
    ties = "todo" in os.path.basename(recipe)  # TODO's recipe reads tied pairs
    layout = yaml.safe_load(open(recipe))["data"]["init_args"].get("layout", {}).get("class_path", "")
    if layout.endswith("DimensionPairs"):
        data = pku_saferlhf_jsonl(tmp_path / "train.jsonl"), pku_saferlhf_jsonl(tmp_path / "val.jsonl", 4)
    elif layout.endswith("TextTrees"):
        data = step_trees_jsonl(tmp_path / "train.jsonl"), step_trees_jsonl(tmp_path / "val.jsonl", 4)
    elif layout.endswith("TextLists"):
        data = ultrafeedback_lists_jsonl(tmp_path / "train.jsonl"), ultrafeedback_lists_jsonl(tmp_path / "val.jsonl", 4)
    else:
        data = (ultrafeedback_jsonl(tmp_path / "train.jsonl", ties=ties),
                ultrafeedback_jsonl(tmp_path / "val.jsonl", 4, ties=ties))
    main(["fit", "--config", as_shipped_on_cpu(recipe, tmp_path, model, *data), "--trainer.log_every_n_steps", "1"])
    losses = train_losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert os.path.exists(tmp_path / "runs" / "r" / "version_0" / "export" / "config.json")
    if ties:  # the tied rows reached the objective
        with open(tmp_path / "runs" / "r" / "version_0" / "metrics.csv") as f:
            assert any(r.get("train/ties") for r in csv.DictReader(f))


@pytest.mark.parametrize("recipe", DIFFUSION, ids=os.path.basename)
def test_diffusion_recipe_trains_as_shipped(tmp_path, recipe):
    kind = PIPELINES[os.path.basename(recipe).split("_")[0]]
    model = save_tiny_pipeline(tmp_path / "pipeline", kind)
    data = pickapic_parquet(tmp_path / "train.parquet"), pickapic_parquet(tmp_path / "val.parquet", 4)
    main(["fit", "--config", as_shipped_on_cpu(recipe, tmp_path, model, *data), "--trainer.log_every_n_steps", "1"])
    losses = train_losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert glob.glob(str(tmp_path / "runs" / "r" / "version_0" / "images" / "*.png")), "no image grid was written"
    assert os.path.exists(tmp_path / "runs" / "r" / "version_0" / "export" / "model_index.json")


@pytest.mark.parametrize("recipe", VLM, ids=os.path.basename)
def test_vision_language_recipe_trains_as_shipped(tmp_path, recipe):
    from alignsuite.toy.vlm import build_tiny_vlm

    family, layout = ("qwen2_5_vl", "trl") if "qwen" in os.path.basename(recipe) else ("llava", "rlaif_v")
    model = build_tiny_vlm(family, str(tmp_path / "model"))
    data = vision_rows(tmp_path / "train.parquet", layout), vision_rows(tmp_path / "val.parquet", layout, 4)
    main(["fit", "--config", as_shipped_on_cpu(recipe, tmp_path, model, *data), "--trainer.log_every_n_steps", "1"])
    losses = train_losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(3 * math.log(2), abs=1e-3)  # mDPO's three terms at policy == reference
    run = tmp_path / "runs" / "r" / "version_0"
    assert os.path.exists(run / "export" / "config.json") and os.path.exists(run / "export" / "processor_config.json")
    assert glob.glob(str(run / "samples" / "*.html"))


def speech_rows(tmp_path, name: str, kind: str, n: int = 8) -> str:
    """INTP rows of the speech-token toy world: codes, or the same speech as WAV files at 16 kHz (the toy
    vocoder's audio) that a 24 kHz recipe resamples."""
    from alignsuite.data.audio import write_wav
    from alignsuite.toy.speech import SAMPLING_RATE, ToyVocoder

    rows = get_world_rows("tts", n)
    if kind == "audio":
        vocoder = ToyVocoder()
        for i, row in enumerate(rows):
            for key in ("prompt_speech", "chosen", "rejected"):
                wav = tmp_path / f"{name}_{i}_{key}.wav"
                write_wav(str(wav), vocoder([torch.tensor(row[key])])[0], SAMPLING_RATE)
                row[key] = wav.name
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def get_world_rows(world: str, n: int) -> list[dict]:
    """``n`` INTP rows in the layout the toy worlds write, without building a base model: the speech is said
    right for chosen and with the last word dropped for rejected."""
    import random

    from alignsuite.toy import get_world
    from alignsuite.toy.speech import speak

    toy, rng, rows = get_world(world), random.Random(0), []
    for _ in range(n):
        item = toy.item(rng)
        words = item["text"].split()
        rows.append({"text": item["text"], "prompt_text": item["prompt_text"], "prompt_speech": item["prompt_speech"].tolist(),
                     "chosen": speak(words, item["speaker"], rng), "rejected": speak(words[:-1] or ["ba"], item["speaker"], rng)})
    return rows


@pytest.mark.parametrize("recipe", TTS, ids=os.path.basename)
def test_speech_recipe_trains_as_shipped(tmp_path, recipe):
    """The token settings (offset, codebook, marker tokens) belong to the checkpoint, so they change with the
    tiny model; a flow recipe keeps its audio settings (24 kHz, 100 bands) in the tiny model's config."""
    from alignsuite.backbones.flow_tts_model import FlowTTSModel
    from alignsuite.toy.tts import SpeechTokenWorld

    config = yaml.safe_load(open(recipe))
    backbone_class = config["model"]["init_args"]["backbone"]["class_path"]
    if backbone_class.endswith("SpeechTokenLM"):
        from transformers import Qwen2Config, Qwen2ForCausalLM

        world = SpeechTokenWorld()
        tok = world.build_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         tie_word_embeddings=True)).save_pretrained(tmp_path / "model")
        tok.save_pretrained(tmp_path / "model")
        kind = "tokens"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            FlowTTSModel(n_mels=100, dim=32, depth=2, heads=2, text_dim=16, text_conv_layers=1, sampling_rate=24000,
                         n_fft=1024, hop_length=256, win_length=1024).save_pretrained(tmp_path / "model")
        kind = "audio"
    data = speech_rows(tmp_path, "train", kind), speech_rows(tmp_path, "val", kind, 4)
    path = as_shipped_on_cpu(recipe, tmp_path, str(tmp_path / "model"), *data)
    if kind == "tokens":
        shipped = yaml.safe_load(open(path))
        shipped["model"]["init_args"]["backbone"]["init_args"].update(world.backbone_args)
        with open(path, "w") as f:
            yaml.safe_dump(shipped, f)
    main(["fit", "--config", path, "--trainer.log_every_n_steps", "1"])
    losses = train_losses(tmp_path)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    with open(tmp_path / "runs" / "r" / "version_0" / "metrics.csv") as f:
        margins = [float(r["train/rewards/margins"]) for r in csv.DictReader(f) if r.get("train/rewards/margins")]
    # The first step's policy is the reference: their score gaps differ only by bf16 rounding (the reference
    # computes in bf16 weights, the policy in float32 weights under bf16 autocast).
    beta = config["model"]["init_args"]["objective"]["init_args"]["beta"]
    assert abs(margins[0]) / beta < 1e-3
    assert os.listdir(tmp_path / "runs" / "r" / "version_0" / "export")


# Trained to the end (or to their first validation, vlm_mdpo) by the default suite elsewhere.
FULLY_RUN = {"llm_dpo.yaml", "diffusion_dpo.yaml", "vlm_mdpo.yaml", "tts_dpo.yaml", "tts_flow_dpo.yaml"}
# Read a model another recipe trains (llm_wspo's weak aligned model): run with one trained for it in their own tests.
NEEDS_A_TRAINED_MODEL = {"llm_wspo.yaml"}
# The online loop's recipes run `iterate`, not `fit`: tests/test_iterate_recipes.py runs them.
TOY = sorted(p for p in glob.glob(os.path.join(REPO, "recipes", "toy", "*.yaml"))
             if os.path.basename(p) not in FULLY_RUN | NEEDS_A_TRAINED_MODEL and "_iterate_" not in os.path.basename(p))


@pytest.mark.parametrize("recipe", TOY, ids=os.path.basename)
def test_toy_recipe_starts_as_shipped(tmp_path, recipe):
    """The other toy recipes, exactly as shipped, for their first two steps: the reward measured at step
    0 and the policy exported (their full runs are marked slow)."""
    main(["fit", "--config", recipe, "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--checkpoint.dirpath", str(tmp_path / "ckpt")])
    run = glob.glob(str(tmp_path / "*" / "version_0"))[0]
    with open(os.path.join(run, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r.get("val/toy_reward")][:1] == ["0"]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert os.listdir(os.path.join(run, "export"))
