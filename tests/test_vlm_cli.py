"""Vision-language models through the CLI: a tiny model of each family trains on RLAIF-V-style rows with
DPO and mDPO, exports a folder transformers loads back with changed weights, and bad setups are refused."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml
from PIL import Image

from alignsuite.cli import main


def rlaif_v_jsonl(path, n: int = 8) -> str:
    """RLAIF-V's layout: an image file, a question, a chosen and a rejected answer."""
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    names = list(colours)
    rows = []
    for i in range(n):
        colour = names[i % 3]
        image = Image.new("RGB", (32, 32), (250, 250, 250))
        image.paste(colours[colour], (4 + i % 5, 6, 20 + i % 5, 24))
        file = path.parent / f"{path.stem}_{i}.png"
        image.save(file)
        rows.append({"image": file.name, "question": "what colour is the shape ?", "chosen": colour,
                     "rejected": names[(i + 1) % 3], "idx": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def vlm_recipe(tmp_path, model_dir, objective="MDPO", lora=None, reference=None, layout="VisionPairs",
               backbone="VisionLanguage", max_steps=2) -> str:
    init = {"model_name_or_path": model_dir, "max_length": 256, "max_prompt_length": 200, "lora": lora}
    if backbone != "VisionLanguage":
        init = {"model_name_or_path": model_dir}
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": max_steps, "limit_val_batches": 1, "val_check_interval": 2,
            "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
            "log_every_n_steps": 1, "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"), "name": "v", "version": 0}},
            "callbacks": [{"class_path": "alignsuite.callbacks.VisionSamples", "init_args": {"num_rows": 2,
                                                                                         "max_new_tokens": 3}}],
        },
        "model": {"class_path": "alignsuite.module.PreferenceModule", "init_args": {
            "backbone": {"class_path": f"alignsuite.backbones.{backbone}", "init_args": init},
            "objective": {"class_path": f"alignsuite.objectives.{objective}"},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}},
            **({"reference": {"class_path": reference}} if reference else {}),
        }},
        "data": {"class_path": "alignsuite.data.PreferenceDataModule", "init_args": {
            "train": rlaif_v_jsonl(tmp_path / "train.jsonl"), "val": rlaif_v_jsonl(tmp_path / "val.jsonl", 4),
            "layout": {"class_path": f"alignsuite.data.{layout}"}, "batch_size": 2}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def logged(tmp_path, key: str) -> list[float]:
    with open(tmp_path / "runs" / "v" / "version_0" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def weights(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return {k: v.detach().clone() for k, v in AutoModelForImageTextToText.from_pretrained(folder).state_dict().items()}


@pytest.mark.parametrize("family, lora", [("llava", None), ("qwen", None), ("llava", {"r": 4, "alpha": 8})],
                         ids=["llava-full", "qwen-full", "llava-lora"])
def test_a_tiny_vlm_trains_with_mdpo_and_exports_a_folder_that_loads_back(tmp_path, family, lora,
                                                                            tiny_llava_dir, tiny_qwen_vl_dir):
    from transformers import AutoProcessor

    model_dir = {"llava": tiny_llava_dir, "qwen": tiny_qwen_vl_dir}[family]
    main(["fit", "--config", vlm_recipe(tmp_path, model_dir, lora=lora)])
    losses = logged(tmp_path, "train/loss")
    # Step 1: policy == reference, so each of mDPO's three terms is ln 2.
    assert len(losses) == 2 and losses[0] == pytest.approx(3 * math.log(2), abs=1e-4)
    assert math.isfinite(losses[1]) and losses[1] != losses[0]
    assert logged(tmp_path, "train/rewards/imageless_accuracies")
    export = tmp_path / "runs" / "v" / "version_0" / "export"
    before, after = weights(model_dir), weights(export)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("vision" not in k and "visual" not in k for k in changed)  # the vision tower stayed frozen
    processor = AutoProcessor.from_pretrained(export)
    assert processor.image_token == AutoProcessor.from_pretrained(model_dir).image_token
    samples = sorted((tmp_path / "runs" / "v" / "version_0" / "samples").glob("*.jsonl"))
    assert [p.stem for p in samples] == ["step_000000", "step_000002"]
    assert len(samples[-1].read_text().splitlines()) == 2


def test_a_precomputed_reference_scores_the_same_corrupted_images(tmp_path, tiny_llava_dir):
    """Had the precomputed pass drawn other crops than the step, mDPO's conditional term would not be ln 2 at
    the first step, where policy and reference are the same weights."""
    main(["fit", "--config", vlm_recipe(tmp_path, tiny_llava_dir, reference="alignsuite.reference.Precomputed",
                                         max_steps=1)])
    assert logged(tmp_path, "train/loss")[0] == pytest.approx(3 * math.log(2), abs=1e-4)


def test_vision_data_with_a_text_backbone_and_text_data_with_a_vlm_are_refused(tmp_path, tiny_llava_dir, capsys):
    with pytest.raises(ValueError, match="VisionPairs gives vision_language rows, and backbone CausalLM takes text"):
        main(["fit", "--config", vlm_recipe(tmp_path, tiny_llava_dir, objective="DPO", backbone="CausalLM")])
    with pytest.raises(SystemExit) as stop:  # a data error, printed alone: the text layout points at the vision one
        main(["fit", "--config", vlm_recipe(tmp_path, tiny_llava_dir, objective="DPO", layout="TextPairs")])
    assert stop.value.code == 1 and "VisionPairs" in capsys.readouterr().err
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"prompt": "what colour ?", "chosen": "red", "rejected": "blue"}) + "\n")
    config = yaml.safe_load(open(vlm_recipe(tmp_path, tiny_llava_dir, objective="DPO", layout="TextPairs")))
    config["data"]["init_args"].update(train=str(text), val=str(text))
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="TextPairs gives text rows, and backbone VisionLanguage takes vision_language"):
        main(["fit", "--config", str(tmp_path / "text.yaml")])


def test_predict_answers_each_held_out_question_about_its_own_image(tmp_path, tiny_llava_dir):
    path = vlm_recipe(tmp_path, tiny_llava_dir, objective="DPO")
    main(["predict", "--config", path])
    rows = [json.loads(line) for line in open(tmp_path / "runs" / "v" / "version_0" / "predictions.jsonl")]
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3]  # the 4 validation rows
    assert all(r["prompt"][0]["content"][0] == {"type": "image"} and isinstance(r["generation"], str) for r in rows)
