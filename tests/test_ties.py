"""Ties: TODO against values worked by hand, and tied rows through the layouts and the setup check.

Every expected value is computed with plain ``math`` from the equation in the research notes (TODO, section 7.1:
the Rao-Kupper tie model, as the official code ``XXares/TODO`` writes it), never with the code under test.
"""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch

from alignsuite.backbones import CausalLM
from alignsuite.data import DataError, ImagePairs, PreferenceDataModule, TextPairs
from alignsuite.objectives import get_objective
from alignsuite.scores import PairScores
from alignsuite.views import check_setup

HAND_WORKED = ("todo",)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def todo_by_hand(z: float, tie: bool, alpha: float = 0.5, eps: float = 0.0) -> float:
    if tie:
        return -math.log(math.exp(2 * alpha) - 1) - logsig(z - alpha) - logsig(-z - alpha)
    return -(1 - eps) * logsig(z - alpha) - eps * logsig(-z - alpha)


def margin_scores(zs, ties, beta=0.1, grad=False, dtype=torch.float64) -> PairScores:
    """Pairs whose DPO margin ``beta * D`` is each of ``zs``: u_w = D/2, u_l = -D/2 around a reference at -5."""
    d = torch.tensor(zs, dtype=dtype) / beta
    chosen, rejected = (-5 + d / 2).requires_grad_(grad), (-5 - d / 2).requires_grad_(grad)
    ref = torch.full_like(d, -5.0)
    return PairScores(chosen, rejected, ref, ref.clone(), extra={"tie": torch.tensor(ties, dtype=dtype)})


# The notes' test anchors (alpha = 0.5): z -> (preference loss, tie loss).
ANCHORS = {0.0: (0.974077, 1.406829), 0.4: (0.744397, 1.444226), 1.0: (0.474077, 1.634165)}


@pytest.mark.parametrize("z", sorted(ANCHORS))
def test_todo_matches_the_notes_anchors(z):
    todo = get_objective("todo")
    preference, tie = ANCHORS[z]
    assert todo(margin_scores([z], [0.0])).loss.item() == pytest.approx(preference, abs=1e-6)
    assert todo(margin_scores([z], [1.0])).loss.item() == pytest.approx(tie, abs=1e-6)
    # and the anchors are the equation's
    assert todo_by_hand(z, False) == pytest.approx(preference, abs=1e-6)
    assert todo_by_hand(z, True) == pytest.approx(tie, abs=1e-6)


def test_todo_mixed_batch_hand_worked():
    zs, ties = [0.3, -0.7, 1.2, 0.0], [0.0, 1.0, 0.0, 1.0]
    out = get_objective("todo", alpha=0.8, label_smoothing=0.1, beta=0.5)(margin_scores(zs, ties, beta=0.5))
    expected = sum(todo_by_hand(z, t > 0.5, alpha=0.8, eps=0.1) for z, t in zip(zs, ties)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["ties"].item() == 0.5
    # rewards are b * u, u_w = D/2 = z / (2 b)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(sum(z / 2 for z in zs) / 4, abs=1e-6)


def test_todo_tie_loss_is_symmetric_and_smallest_at_zero():
    todo = get_objective("todo")
    for z in (0.2, 1.5, 7.0):
        assert todo(margin_scores([z], [1.0])).loss.item() == pytest.approx(todo(margin_scores([-z], [1.0])).loss.item())
    s = margin_scores([0.0, 0.5, -0.5], [1.0, 1.0, 1.0], grad=True)
    todo(s).loss.backward()
    assert s.chosen.grad[0].item() == pytest.approx(0.0, abs=1e-12)
    assert s.chosen.grad[1].item() > 0 and s.chosen.grad[2].item() < 0  # pulled back towards z = 0


def test_todo_without_ties_is_dpo_on_a_margin_shifted_by_alpha():
    # -log s(b D - alpha) is DPO's loss once each chosen log-prob is lowered by alpha / b: exact, for any alpha.
    zs, beta, alpha = [0.3, -1.1, 2.0], 0.1, 0.5
    todo = get_objective("todo", beta=beta, alpha=alpha)(margin_scores(zs, [0.0] * 3, beta)).loss
    shifted = margin_scores(zs, [0.0] * 3, beta)
    shifted = PairScores(shifted.chosen - alpha / beta, shifted.rejected, shifted.ref_chosen, shifted.ref_rejected)
    assert todo.item() == pytest.approx(get_objective("dpo", beta=beta)(shifted).loss.item(), rel=1e-12)
    # and as alpha -> 0 (the notes' limit) TODO's preference term is DPO itself
    tiny = get_objective("todo", beta=beta, alpha=1e-9)(margin_scores(zs, [0.0] * 3, beta)).loss.item()
    assert tiny == pytest.approx(get_objective("dpo", beta=beta)(margin_scores(zs, [0.0] * 3, beta)).loss.item(),
                                 rel=1e-8)


def test_todo_without_a_tie_column_treats_every_row_as_a_preference():
    s = margin_scores([0.4], [0.0])
    s.extra.clear()
    assert get_objective("todo")(s).loss.item() == pytest.approx(ANCHORS[0.4][0], abs=1e-6)


def test_todo_finite_at_extremes_with_ties():
    s = margin_scores([500.0, -500.0, 500.0, -500.0], [1.0, 1.0, 0.0, 0.0], grad=True, dtype=torch.float32)
    out = get_objective("todo", alpha=1e-4)(s)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.chosen.grad).all() and torch.isfinite(s.rejected.grad).all()


@pytest.mark.parametrize("hparams,named", [({"alpha": 0.0}, "alpha"), ({"alpha": -0.5}, "alpha"),
                                           ({"label_smoothing": 0.5}, "label_smoothing"), ({"beta": 0.0}, "beta")])
def test_todo_refuses_bad_hyper_parameters(hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective("todo", **hparams)


def test_todo_reads_the_tie_column():
    assert get_objective("todo").extra_columns == ("tie",)


# --- tied rows in the text layout -------------------------------------------------------------------------------

ROWS = [
    {"prompt": "p0", "chosen": "A", "rejected": "a", "tie": False},
    {"prompt": "p1", "chosen": "B", "rejected": "C", "tie": True},
    {"prompt": "p2", "chosen": "D", "rejected": "D", "tie": True},  # identical answers: nothing to learn, dropped
    {"prompt": "p3", "chosen": "E", "rejected": "e", "tie": 0},
    {"prompt": "p4", "chosen": "F", "rejected": "G", "tie": 1},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_dm(path, layout):
    dm = PreferenceDataModule(train=path, layout=layout, batch_size=2)
    dm.setup("fit")
    return dm


def test_text_ties_kept_with_a_tie_column_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.warns(UserWarning, match=r"skipped 1 rows where chosen equals rejected \(rows 2\)"):
        dm = make_dm(path, TextPairs(tie_field="tie", tie_column=True))
    assert dm.train_set["prompt"] == ["p0", "p1", "p3", "p4"]
    assert dm.train_set["tie"] == [0.0, 1.0, 0.0, 1.0]
    assert dm.layout.tied_rows == {path: 2}
    assert "tie" in dm.columns()
    batch = dm.collate([dm.train_set[i] for i in range(4)])
    assert batch["tie"].tolist() == [0.0, 1.0, 0.0, 1.0] and batch["tie"].dtype == torch.float


def test_text_ties_dropped_counted_and_named_without_tie_column(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.warns(UserWarning, match=r"skipped 3 rows where chosen equals rejected or the pair is tied \(tie true;"
                                         r" set tie_column: true .*\(rows 1, 2, 4\)"):
        dm = make_dm(path, TextPairs(tie_field="tie"))
    assert dm.train_set["prompt"] == ["p0", "p3"]
    assert dm.skipped == {path: 3}
    assert "tie" not in dm.columns()


def test_text_layout_without_tie_field_is_unchanged(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.warns(UserWarning, match=r"skipped 1 rows where chosen equals rejected \(rows 2\)"):
        dm = make_dm(path, TextPairs())
    assert dm.train_set["prompt"] == ["p0", "p1", "p3", "p4"]
    assert dm.columns() == {"prompt", "chosen", "rejected", "index"}


@pytest.mark.parametrize("bad", ["yes", 0.5, 2, None])
def test_bad_tie_value_names_file_row_and_field(tmp_path, bad):
    rows = [dict(r) for r in ROWS]
    rows[3]["tie"] = bad
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}.*row 3.*'tie'.*tie flag"):
        make_dm(path, TextPairs(tie_field="tie", tie_column=True))


def test_missing_tie_column_names_file_row_and_field(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "tie"} for r in ROWS]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}.*row 0.*'is_tie'"):
        make_dm(path, TextPairs(tie_field="is_tie", tie_column=True))


def test_tie_column_needs_tie_field():
    with pytest.raises(ValueError, match="tie_column needs tie_field"):
        TextPairs(tie_column=True)


# --- tied Pick-a-Pic pairs in the image layout ------------------------------------------------------------------


def pickapic(path, labels):
    from PIL import Image
    import io

    def png(rgb):
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), rgb).save(buffer, format="PNG")
        return buffer.getvalue()

    rows = [{"caption": f"c{i}", "jpg_0": png((255, 0, 0)), "jpg_1": png((0, 0, 255)), "label_0": label}
            for i, label in enumerate(labels)]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def test_image_ties_kept_with_a_tie_column(tmp_path):
    path = pickapic(tmp_path / "p.parquet", [1.0, 0.5, 0.0, 0.5])
    dm = make_dm(path, ImagePairs(tie_column=True))  # drop_ties (default true) gives way to tie_column
    assert dm.skipped == {}
    assert dm.train_set["tie"] == [0.0, 1.0, 0.0, 1.0]
    assert dm.collate([dm.train_set[i] for i in range(4)])["tie"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_image_ties_still_dropped_by_default(tmp_path):
    path = pickapic(tmp_path / "p.parquet", [1.0, 0.5, 0.0, 0.5])
    with pytest.warns(UserWarning, match="dropped 2 tied pairs"):
        dm = make_dm(path, ImagePairs())
    assert dm.skipped == {path: 2} and "tie" not in dm.columns()


# --- the setup check: only an objective that reads ties gets tied rows ------------------------------------------


@pytest.mark.parametrize("name", ["dpo", "simpo", "ipo", "mappo"])
def test_other_objectives_refuse_tied_rows_at_setup_naming_the_option(tmp_path, name):
    path = write_jsonl(tmp_path / "t.jsonl", [{**r, "reward_chosen": 1.0, "reward_rejected": 0.0} for r in ROWS])
    with pytest.warns(UserWarning):
        dm = make_dm(path, TextPairs(tie_field="tie", tie_column=True))
    with pytest.raises(ValueError, match=rf"keeps tied pairs.*objective '{name}' cannot use ties.*tie_column: false"):
        check_setup(get_objective(name), CausalLM(model_name_or_path="toy:llm"), None, dm)


def test_todo_accepts_tied_rows_and_needs_the_column(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    backbone = CausalLM(model_name_or_path="toy:llm")
    with pytest.warns(UserWarning):
        check_setup(get_objective("todo"), backbone, None, make_dm(path, TextPairs(tie_field="tie", tie_column=True)))
    with pytest.warns(UserWarning):
        without = make_dm(path, TextPairs())
    with pytest.raises(ValueError, match="objective 'todo' needs the data column.*'tie'"):
        check_setup(get_objective("todo"), backbone, None, without)


# --- the toy recipe -----------------------------------------------------------------------------------------------


def test_toy_todo_recipe_trains_on_tied_rows(tmp_path):
    """The shipped recipe, shortened: tied rows reach TODO (train/ties logged) and the reward is measured."""
    import csv
    import glob
    import os

    from alignsuite.cli import main

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes/toy/llm_todo.yaml")
    main(["fit", "--config", recipe, "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(tmp_path / "ckpt"),
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.init_args.num_train", "64",
          "--data.init_args.num_val", "16", "--trainer.callbacks.init_args.num_prompts", "8",
          "--trainer.log_every_n_steps", "1"])
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "*" / "version_*" / "metrics.csv"))[0])))
    ties = [float(r["train/ties"]) for r in rows if r.get("train/ties")]
    assert len(ties) == 4 and 0 < sum(ties) / 4 < 1  # a quarter of the rows are tied, by the recipe
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r.get("train/loss"))
    assert [r["val/toy_reward"] for r in rows if r.get("val/toy_reward")]


def test_toy_tied_rows_are_dropped_for_dpo_and_kept_for_todo():
    from alignsuite.toy.data import ToyPreferenceData

    with pytest.warns(UserWarning, match="or the pair is tied"):
        dropped = ToyPreferenceData(num_train=400, num_val=8, ties=0.25)
        dropped.setup("fit")
    kept = ToyPreferenceData(num_train=400, num_val=8, ties=0.25, tie_column=True)
    kept.setup("fit")
    n_ties = sum(kept.train_set["tie"])
    assert 60 < n_ties < 140 and len(kept.train_set) == 400
    assert len(dropped.train_set) == 400 - n_ties and "tie" not in dropped.columns()
    # the rows DPO keeps are exactly TODO's untied rows
    untied = [r for r, t in zip(kept.train_set["chosen"], kept.train_set["tie"]) if not t]
    assert dropped.train_set["chosen"] == untied


@pytest.mark.parametrize("kwargs,named", [({"ties": 1.0}, "data.ties"), ({"tie_column": True}, "data.ties is 0"),
                                          ({"world": "diffusion", "ties": 0.2}, "only the language world")])
def test_toy_tie_options_are_checked(kwargs, named):
    from alignsuite.toy.data import ToyPreferenceData

    with pytest.raises(ValueError, match=named):
        ToyPreferenceData(**kwargs)
