"""Several preference dimensions: the layout that names them (DimensionPairs) and MODPO over its columns."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignsuite.data import DataError, DimensionPairs, PreferenceDataModule, TextPairs
from alignsuite.objectives import MODPO, get_objective
from alignsuite.scores import PairScores

HAND_WORKED = ("modpo",)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def scores(u_w, u_l, **extra) -> PairScores:
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairScores(t(*u_w), t(*u_l), t(*[0.0] * len(u_w)), t(*[0.0] * len(u_l)), t(*[3] * len(u_w)),
                      t(*[2] * len(u_l)), {k: t(*v) for k, v in extra.items()})


# --------------------------------------------------------------------------------------------- MODPO


def test_modpo_notes_anchor():
    # beta 0.1, w (0.5, 0.5), u_w 1, u_l -1, R(y_w) 0.3, R(y_l) -0.2: rhat_w = (0.1 - 0.15) / 0.5 = -0.1,
    # rhat_l = (-0.1 + 0.1) / 0.5 = 0, L = -log s(-0.1) = 0.744397.
    objective = MODPO(weights=[0.5, 0.5], dimensions=["helpful", "safe"])
    s = scores([1.0], [-1.0], reward_chosen_safe=[0.3], reward_rejected_safe=[-0.2])
    out = objective(s)
    assert out.loss.item() == pytest.approx(0.744397, abs=1e-6)
    assert out.loss.item() == pytest.approx(-logsig(-0.1), rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.1)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.0)
    assert out.metrics["rewards/accuracies"].item() == 0.0


def test_modpo_margin_columns_and_labels_are_the_same_equation():
    s = scores([1.0, -0.5], [-1.0, 0.5], margin_chosen=[0.3, 0.1], margin_rejected=[-0.2, 0.4], pref_safe=[1.0, -1.0])
    columns = MODPO(weights=[0.5, 0.5], margin="columns")(s).loss.item()
    by_hand = [(0.1 * 1.0 - 0.5 * 0.3 - (0.1 * -1.0 + 0.5 * 0.2)) / 0.5, (0.1 * -0.5 - 0.05 - (0.05 - 0.2)) / 0.5]
    assert columns == pytest.approx(sum(-logsig(z) for z in by_hand) / 2, rel=1e-6)
    # labels: R(y_w) - R(y_l) = label_reward * pref: pair 0 z = (0.2 - 0.5 * 2 * 1) / 0.5, pair 1 (-0.1 + 1) / 0.5
    labels = MODPO(weights=[0.5, 0.5], margin="labels", label_reward=2.0, dimensions=["helpful", "safe"])(s)
    assert labels.loss.item() == pytest.approx((-logsig(-1.6) - logsig(1.8)) / 2, rel=1e-6)


def test_modpo_hinge():
    out = MODPO(weights=[0.5, 0.5], dimensions=["a", "b"], loss_type="hinge")(
        scores([1.0], [-1.0], reward_chosen_b=[0.3], reward_rejected_b=[-0.2]))
    assert out.loss.item() == pytest.approx(1.1)  # relu(1 - (-0.1))


@pytest.mark.parametrize("margin", ["rewards", "columns", "labels"])
def test_modpo_with_no_weight_beyond_the_primary_is_dpo_exactly(margin):
    s = scores([1.0, -0.5, 3.0], [-1.0, 0.5, -2.0], margin_chosen=[5.0, 1.0, 2.0], margin_rejected=[-3.0, 0.0, 9.0],
               reward_chosen_b=[5.0, 1.0, 2.0], reward_rejected_b=[-3.0, 0.0, 9.0], pref_b=[1.0, -1.0, 1.0])
    s.chosen.requires_grad_(True)
    modpo = MODPO(beta=0.3, weights=[1.0, 0.0], margin=margin, dimensions=["a", "b"])(s)
    (g_modpo,) = torch.autograd.grad(modpo.loss, s.chosen)
    dpo = get_objective("dpo", beta=0.3)(s)
    (g_dpo,) = torch.autograd.grad(dpo.loss, s.chosen)
    assert torch.equal(modpo.loss, dpo.loss) and torch.equal(g_modpo, g_dpo)
    assert {k: v.item() for k, v in modpo.metrics.items()} == {k: v.item() for k, v in dpo.metrics.items()}


def test_modpo_gradient_finite_at_extremes():
    s = scores([500.0, -500.0], [-500.0, 500.0], reward_chosen_b=[1e4, -1e4], reward_rejected_b=[-1e4, 1e4])
    s.chosen.requires_grad_(True)
    for loss_type in ("sigmoid", "hinge"):
        out = MODPO(weights=[0.01, 1.0], dimensions=["a", "b"], loss_type=loss_type)(s)
        (g,) = torch.autograd.grad(out.loss, s.chosen)
        assert torch.isfinite(out.loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("weights", [[0.0, 1.0], [0.5, -0.1], [float("nan"), 1.0], []])
def test_modpo_refuses_bad_weights_naming_the_option(weights):
    with pytest.raises(ValueError, match="weights"):
        MODPO(weights=weights)


def test_modpo_weights_length_checked_against_the_data_at_setup():
    layout = DimensionPairs({"better": "better_response_id", "safer": "safer_response_id"})
    objective = MODPO(weights=[0.5, 0.3, 0.2], margin="labels")
    with pytest.raises(ValueError, match="option weights has 3 values and the data has 2 preference dimensions"):
        objective.use_data(layout)
    objective = MODPO(weights=[0.5, 0.5], margin="labels")
    objective.use_data(layout)
    assert objective.extra_columns == ("pref_safer",)
    with pytest.raises(ValueError, match="option dimensions"):
        MODPO(weights=[0.5, 0.5], dimensions=["x", "y"]).use_data(layout)
    with pytest.raises(ValueError, match="names none"):
        MODPO(weights=[0.5, 0.5]).use_data(TextPairs())
    columns = MODPO(weights=[0.5, 0.5], margin="columns")
    columns.use_data(TextPairs(number_fields={"margin_chosen": "m_c", "margin_rejected": "m_r"}))
    assert columns.extra_columns == ("margin_chosen", "margin_rejected")
    with pytest.raises(ValueError, match="option weights has 3 values; with margin='columns'"):
        MODPO(weights=[0.5, 0.3, 0.2], margin="columns").use_data(TextPairs())


# --------------------------------------------------------------------------------------------- the layout


def write(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PKU = [
    {"prompt": "q0", "response_0": "a0", "response_1": "b0", "better_response_id": 1, "safer_response_id": 0},
    {"prompt": "q1", "response_0": "a1", "response_1": "b1", "better_response_id": 0, "safer_response_id": 0},
]


def test_labels_per_dimension_order_the_pair_by_the_primary(tmp_path):
    layout = DimensionPairs({"better": "better_response_id", "safer": "safer_response_id"})
    dm = PreferenceDataModule(layout=layout, train=write(tmp_path, PKU), batch_size=2)
    dm.setup("fit")
    batch = dm.collate(list(dm.train_set))
    assert batch["chosen"] == ["b0", "a1"] and batch["rejected"] == ["a0", "b1"]
    assert batch["pref_better"].tolist() == [1.0, 1.0] and batch["pref_safer"].tolist() == [-1.0, 1.0]
    assert layout.preference_dimensions == ("better", "safer")
    assert {"pref_better", "pref_safer"} <= dm.columns()


def test_scores_per_dimension_give_rewards_and_ties(tmp_path):
    rows = [{"prompt": "q", "response_0": "a", "response_1": "b", "help_0": 2, "help_1": 5, "honest_0": 4, "honest_1": 4},
            {"prompt": "q", "response_0": "c", "response_1": "d", "help_0": 3, "help_1": 3, "honest_0": 1, "honest_1": 2}]
    layout = DimensionPairs({"help": ["help_0", "help_1"], "honest": ["honest_0", "honest_1"]})
    ds, skipped = layout.build([("f.jsonl", rows, None)])
    assert skipped == {"f.jsonl": (1, 2)}  # the primary ties in the second row
    batch = layout.collate(list(ds))
    assert batch["chosen"] == ["b"] and batch["pref_help"].tolist() == [1.0] and batch["pref_honest"].tolist() == [0.0]
    assert batch["reward_chosen_help"].tolist() == [5.0] and batch["reward_rejected_help"].tolist() == [2.0]
    assert batch["reward_chosen_honest"].tolist() == [4.0]


@pytest.mark.parametrize("change,field,expected", [
    ({"safer_response_id": 2}, "safer_response_id", r"0 \(response_0\) or 1 \(response_1\)"),
    ({"better_response_id": "b"}, "better_response_id", "the index of the preferred answer"),
    ({"safer_response_id": None}, "safer_response_id", "the label of dimension 'safer'"),
    ({"response_1": ""}, "response_1", "non-empty text"),
])
def test_bad_labels_name_file_row_and_field(tmp_path, change, field, expected):
    rows = [PKU[0], {**PKU[1], **change}]
    layout = DimensionPairs({"better": "better_response_id", "safer": "safer_response_id"})
    with pytest.raises(DataError, match=f"row 1: field '{field}': expected .*{expected}") as e:
        layout.build([("pku.jsonl", rows, None)])
    assert "pku.jsonl" in str(e.value)


def test_missing_dimension_and_nan_score_are_named():
    layout = DimensionPairs({"help": ["help_0", "help_1"], "honest": ["honest_0", "honest_1"]})
    row = {"prompt": "q", "response_0": "a", "response_1": "b", "help_0": 2, "help_1": 5, "honest_0": 4}
    with pytest.raises(DataError, match="f.jsonl: row 0: field 'honest_1': expected a column"):
        layout.build([("f.jsonl", [row], None)])
    with pytest.raises(DataError, match="row 0: field 'help_0': expected a finite number.*nan"):
        layout.build([("f.jsonl", [{**row, "honest_1": 1, "help_0": float("nan")}], None)])


def test_layout_options_are_checked():
    with pytest.raises(ValueError, match="at least one dimension"):
        DimensionPairs({})
    with pytest.raises(ValueError, match="two score columns"):
        DimensionPairs({"help": ["a", "b", "c"]})


def test_a_weights_vector_of_the_wrong_length_stops_fit_at_setup_before_the_model_loads(tmp_path, tiny_lm_dir):
    import lightning as L

    from alignsuite.backbones import CausalLM
    from alignsuite.module import PreferenceModule

    layout = DimensionPairs({"better": "better_response_id", "safer": "safer_response_id"})
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12),
                              MODPO(weights=[0.5, 0.3, 0.2], margin="labels"))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="the option weights has 3 values and the data has 2 preference dimensions"):
        trainer.fit(module, PreferenceDataModule(train=write(tmp_path, PKU), layout=layout, batch_size=2))
    assert module.backbone.policy is None
