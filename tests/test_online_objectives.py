"""The online loop's objectives (sppo, sppo_single, inpo, online_ipo) and cdpo's per-row soft labels (OSP), against
numbers worked by hand with ``math`` from each equation, their exact relations to existing objectives, and the
refusals of a missing column or reference."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from conftest import save_tiny_lm

from alignsuite.backbones import CausalLM
from alignsuite.data import PreferenceDataModule, TextPairs
from alignsuite.module import PreferenceModule
from alignsuite.objectives import get_objective
from alignsuite.reference import FrozenCopy
from alignsuite.scores import PairScores
from alignsuite.views import check_setup

HAND_WORKED = ("sppo", "sppo_single", "inpo", "online_ipo")


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pair_scores(rows, **columns) -> PairScores:
    """``rows``: (chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len); ``columns``: a value per row
    for each named batch column."""
    c, r, rc, rr, nc, nr = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    extra = {k: torch.tensor(v, dtype=torch.float64) for k, v in columns.items()}
    return PairScores(c.requires_grad_(), r.requires_grad_(), rc, rr, nc, nr, extra)


# u_w = 0.2, u_l = -0.1 on summed log-probs of a realistic size; a second row with u_w = -1.0, u_l = 0.5.
ROWS = [(-12.3, -20.1, -12.5, -20.0, 7, 9), (-6.0, -4.0, -5.0, -4.5, 3, 1)]


# ------------------------------------------------------------------------------------------------------------ SPPO
def test_sppo_matches_the_research_notes_anchor():
    # beta 0.001, u_w 0.2, u_l -0.1, P_w 0.7, P_l 0.35: 1/2 [(0.2 - 200)^2 + (-0.1 + 150)^2] = 31195.025
    out = get_objective("sppo")(pair_scores(ROWS[:1], chosen_win_rate=[0.7], rejected_win_rate=[0.35]))
    assert out.loss.item() == pytest.approx(31195.025, rel=1e-6)  # float32: a few ulp
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.001 * 0.2, rel=1e-5)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.001 * -0.1, rel=1e-5)


def test_sppo_hand_worked_over_a_batch():
    beta, win_w, win_l = 0.05, [0.9, 0.4], [0.2, 0.6]
    out = get_objective("sppo", beta=beta)(pair_scores(ROWS, chosen_win_rate=win_w, rejected_win_rate=win_l))
    u = [(0.2, -0.1), (-1.0, 0.5)]
    by_hand = [0.5 * ((uw - (pw - 0.5) / beta) ** 2 + (ul - (pl - 0.5) / beta) ** 2)
               for (uw, ul), pw, pl in zip(u, win_w, win_l)]
    assert out.loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


@pytest.mark.parametrize("beta", [0.001, 0.1, 2.0])
def test_sppo_with_win_rates_one_and_zero_is_exactly_half_of_sppo_hard(beta):
    # sppo_hard (TRL's form) is (u_w - 1/(2b))^2 + (u_l + 1/(2b))^2, without SPPO's 1/2 in front.
    hard = get_objective("sppo_hard", beta=beta)(pair_scores(ROWS)).loss.item()
    soft = get_objective("sppo", beta=beta)(pair_scores(ROWS, chosen_win_rate=[1.0, 1.0], rejected_win_rate=[0.0, 0.0]))
    single = get_objective("sppo_single", beta=beta)(pair_scores(ROWS, preference=[1.0, 1.0]))
    assert soft.loss.item() == pytest.approx(hard / 2, rel=1e-6)
    assert single.loss.item() == pytest.approx(hard / 2, rel=1e-6)


def test_sppo_single_hand_worked_and_equal_to_sppo_with_complementary_win_rates():
    # beta 0.001, P 0.8: 1/2 [(0.2 - 300)^2 + (-0.1 + 300)^2] = 89910.025
    out = get_objective("sppo_single")(pair_scores(ROWS[:1], preference=[0.8]))
    assert out.loss.item() == pytest.approx(0.5 * ((0.2 - 300) ** 2 + (-0.1 + 300) ** 2), rel=1e-6)
    assert out.loss.item() == pytest.approx(89910.025, rel=1e-6)
    p = [0.8, 0.35]
    single = get_objective("sppo_single", beta=0.1)(pair_scores(ROWS, preference=p)).loss.item()
    both = get_objective("sppo", beta=0.1)(pair_scores(ROWS, chosen_win_rate=p, rejected_win_rate=[1 - x for x in p]))
    assert single == pytest.approx(both.loss.item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------------------ INPO
# (policy, reference, previous iterate) summed log-probs of y_w and y_l
INPO_ROW = dict(policy=(-10.0, -12.0), ref=(-11.0, -11.5), previous=(-10.2, -11.4))


def inpo_scores(policy, ref, previous) -> PairScores:
    return pair_scores([(*policy, *ref, 1, 1)], ref_previous_chosen=[previous[0]], ref_previous_rejected=[previous[1]])


def inpo_by_hand(eta, tau, policy, ref, previous):
    k = eta * tau
    h = (policy[0] - policy[1]) - k * (ref[0] - ref[1]) - (1 - k) * (previous[0] - previous[1])
    reward_w = (policy[0] - k * ref[0] - (1 - k) * previous[0]) / eta
    return (h - eta / 2) ** 2, reward_w


@pytest.mark.parametrize("eta,tau,expected", [
    (10.0, 0.01, 17.0569),  # defaults: h = 2 - 0.1 * 0.5 - 0.9 * 1.2 = 0.87; (0.87 - 5)^2
    (2.0, 0.25, 0.0225),  # h = 2 - 0.5 * 0.5 - 0.5 * 1.2 = 1.15; (1.15 - 1)^2
])
def test_inpo_hand_worked(eta, tau, expected):
    loss, reward_w = inpo_by_hand(eta, tau, **INPO_ROW)
    assert loss == pytest.approx(expected, rel=1e-12)
    out = get_objective("inpo", eta=eta, tau=tau)(inpo_scores(**INPO_ROW))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)  # float32 log-probs
    assert out.metrics["rewards/chosen"].item() == pytest.approx(reward_w, rel=1e-5)


def test_inpo_tells_the_initial_model_from_the_previous_iterate():
    swapped = dict(policy=INPO_ROW["policy"], ref=INPO_ROW["previous"], previous=INPO_ROW["ref"])
    a = get_objective("inpo")(inpo_scores(**INPO_ROW)).loss.item()
    b = get_objective("inpo")(inpo_scores(**swapped)).loss.item()
    assert b == pytest.approx(inpo_by_hand(10.0, 0.01, **swapped)[0], rel=1e-6)
    assert abs(a - b) > 1.0


@pytest.mark.parametrize("eta", [1.0, 10.0])
def test_inpo_with_eta_tau_one_is_summed_ipo_against_the_initial_model(eta):
    # h = D (the previous iterate drops out), L = (D - eta/2)^2 = ipo's (D - 1/(2 beta))^2 at beta = 1/eta.
    rows = [(-10.0, -12.0, -11.0, -11.5, 4, 6), (-3.0, -2.0, -2.5, -2.5, 2, 2)]
    s = pair_scores(rows, ref_previous_chosen=[-7.0, 1.0], ref_previous_rejected=[-30.0, -9.0])
    ipo = get_objective("ipo", beta=1 / eta, length_normalize=False)(s)
    inpo = get_objective("inpo", eta=eta, tau=1 / eta)(s)
    assert inpo.loss.item() == pytest.approx(ipo.loss.item(), rel=1e-6)
    assert inpo.metrics["rewards/margins"].item() == pytest.approx(ipo.metrics["rewards/margins"].item(), rel=1e-6)


@pytest.mark.parametrize("tau", [0.0, 0.03, 0.1])
def test_inpo_with_the_previous_iterate_equal_to_the_initial_model_ignores_tau(tau):
    rows = [(-10.0, -12.0, -11.0, -11.5, 4, 6)]
    s = pair_scores(rows, ref_previous_chosen=[-11.0], ref_previous_rejected=[-11.5])
    ipo = get_objective("ipo", beta=0.1, length_normalize=False)(s).loss.item()
    assert get_objective("inpo", eta=10.0, tau=tau)(s).loss.item() == pytest.approx(ipo, rel=1e-6)


def test_inpo_without_the_previous_iterate_is_refused_naming_the_option():
    s = pair_scores(ROWS)
    with pytest.raises(ValueError, match=r"ref_previous_chosen.*model.extra_references.previous"):
        get_objective("inpo")(s)
    with pytest.raises(ValueError, match=r"'inpo' reads the extra reference\(s\) 'previous'.*gives: none"):
        PreferenceModule(CausalLM("toy:llm"), get_objective("inpo"))


@pytest.mark.parametrize("hparams,named", [({"eta": 0.0}, "eta"), ({"tau": -0.1}, "tau"),
                                           ({"eta": 10.0, "tau": 0.2}, "eta \\* tau")])
def test_inpo_bad_options_are_named(hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective("inpo", **hparams)


# ------------------------------------------------------------------------------------------------------ online IPO
def test_online_ipo_matches_the_research_notes_anchor():
    # m(y) -1.0, m(y') -1.3, m_ref -1.1, -1.2, P 0.8, beta 0.1: (0.3 - 0.1 - 3)^2 = 7.84
    rows = [(-10.0, -6.5, -11.0, -6.0, 10, 5)]
    out = get_objective("online_ipo")(pair_scores(rows, preference=[0.8]))
    assert out.loss.item() == pytest.approx(7.84, rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * (-1.0 + 1.1), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_online_ipo_at_preference_one_is_length_normalised_ipo(beta):
    s = pair_scores(ROWS, preference=[1.0, 1.0])
    ipo = get_objective("ipo", beta=beta)(s)
    online = get_objective("online_ipo", beta=beta)(s)
    assert online.loss.item() == pytest.approx(ipo.loss.item(), rel=1e-6)
    assert online.metrics["rewards/chosen"].item() == pytest.approx(ipo.metrics["rewards/chosen"].item(), rel=1e-6)


# ------------------------------------------------------------------------------------------- cdpo soft labels (OSP)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cdpo_label_column_hand_worked(eps):
    p = [0.9, 0.3]
    out = get_objective("cdpo", label_smoothing=eps, label_column="preference")(pair_scores(ROWS, preference=p))
    by_hand = []
    for (uw, ul), pi in zip([(0.2, -0.1), (-1.0, 0.5)], p):
        q = (1 - eps) * pi + eps * (1 - pi)
        z = 0.1 * (uw - ul)
        by_hand.append(-q * logsig(z) - (1 - q) * logsig(-z))
    assert out.loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_cdpo_soft_labels_give_back_cdpo(eps):
    plain = get_objective("cdpo", label_smoothing=eps)(pair_scores(ROWS)).loss.item()
    constant = pair_scores(ROWS, preference=[1 - eps, 1 - eps])
    osp = get_objective("cdpo", label_smoothing=0.0, label_column="preference")(constant).loss.item()
    ones = get_objective("cdpo", label_smoothing=eps, label_column="preference")(pair_scores(ROWS, preference=[1.0, 1.0]))
    assert osp == pytest.approx(plain, rel=1e-6)
    assert ones.loss.item() == pytest.approx(plain, rel=1e-6)
    assert get_objective("cdpo", label_column="strength").extra_columns == ("strength",)
    assert get_objective("cdpo").extra_columns == ()


# ---------------------------------------------------------------------------------------- columns: bad and missing
@pytest.mark.parametrize("name,hparams,column", [
    ("sppo", {}, "chosen_win_rate"), ("sppo_single", {}, "preference"), ("online_ipo", {}, "preference"),
    ("cdpo", {"label_column": "strength"}, "strength"),
])
def test_a_value_outside_zero_one_names_the_column_and_position(name, hparams, column):
    columns = {"chosen_win_rate": [0.5, 0.5], "rejected_win_rate": [0.5, 0.5], "preference": [0.5, 0.5],
               "strength": [0.5, 0.5]}
    columns[column] = [0.5, 1.5]
    with pytest.raises(ValueError, match=rf"{column!r} must hold probabilities in \[0, 1\]; batch position\(s\) \[1\]"):
        get_objective(name, **hparams)(pair_scores(ROWS, **columns))
    del columns[column]
    with pytest.raises(ValueError, match=rf"needs the batch column {column!r}"):
        get_objective(name, **hparams)(pair_scores(ROWS, **columns))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name,hparams,columns", [
    ("sppo", {}, "'chosen_win_rate', 'rejected_win_rate'"), ("sppo_single", {}, "'preference'"),
    ("online_ipo", {}, "'preference'"), ("cdpo", {"label_column": "preference"}, "'preference'"),
])
def test_a_missing_column_is_refused_at_setup_naming_it(tmp_path, name, hparams, columns):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "p": 0.8, "w": 0.7, "l": 0.3}] * 2
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    backbone = CausalLM(model_name_or_path="toy:llm")
    without = PreferenceDataModule(train=path, layout=TextPairs(), batch_size=2)
    without.setup("fit")
    with pytest.raises(ValueError, match=rf"objective {name!r} needs the data column\(s\) {columns}"):
        check_setup(get_objective(name, **hparams), backbone, None, without)
    numbers = {"preference": "p", "chosen_win_rate": "w", "rejected_win_rate": "l"}
    given = PreferenceDataModule(train=path, layout=TextPairs(number_fields=numbers), batch_size=2)
    given.setup("fit")
    check_setup(get_objective(name, **hparams), backbone, None, given)


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name,hparams", [("sppo", {}), ("sppo_single", {}), ("inpo", {}), ("online_ipo", {}),
                                          ("cdpo", {"label_column": "preference", "label_smoothing": 0.0})])
def test_gradient_finite_at_extreme_log_probs(name, hparams):
    rows = [(500.0, -500.0, -500.0, 500.0, 1, 1), (-500.0, 500.0, 500.0, -500.0, 1, 1)]
    c, r, rc, rr, nc, nr = (torch.tensor(col) for col in zip(*rows))
    extra = {"chosen_win_rate": torch.tensor([1.0, 0.0]), "rejected_win_rate": torch.tensor([0.0, 1.0]),
             "preference": torch.tensor([1.0, 0.0]), "ref_previous_chosen": -rc, "ref_previous_rejected": -rr}
    s = PairScores(c.requires_grad_(), r.requires_grad_(), rc, rr, nc, nr, extra)
    out = get_objective(name, **hparams)(s)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.chosen.grad).all() and torch.isfinite(s.rejected.grad).all()


# ------------------------------------------------------------------------------------------------ through the module
def test_inpo_reads_the_previous_iterate_through_the_module(tmp_path):
    """A module with a second model as the extra reference ``previous``: its sequence scores reach inpo as
    ``ref_previous_<view>``, and the loss is the one worked from the scores the module computed."""
    batch = {"prompt": ["echo a b", "echo c d e"], "chosen": ["A B", "C D E"], "rejected": ["a b", "C D"]}
    module = PreferenceModule(CausalLM("toy:llm", max_length=32, max_prompt_length=16), get_objective("inpo"),
                              extra_references={"previous": FrozenCopy(save_tiny_lm(tmp_path / "previous", seed=5))})
    module.configure_model()
    s = module.compute_scores(batch)
    prev_w, prev_l = s.extra["ref_previous_chosen"], s.extra["ref_previous_rejected"]
    assert prev_w.shape == s.ref_chosen.shape and not torch.allclose(prev_w, s.ref_chosen)
    rows = zip(*(t.detach().tolist() for t in (s.chosen, s.rejected, s.ref_chosen, s.ref_rejected, prev_w, prev_l)))
    by_hand = [inpo_by_hand(10.0, 0.01, (c, r), (rc, rr), (pc, pr))[0] for c, r, rc, rr, pc, pr in rows]
    loss = module.objective(s).loss
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)
    loss.backward()


@pytest.mark.parametrize("name,hparams", [("sppo", {"beta": 0.1}), ("online_ipo", {}),
                                          ("cdpo", {"label_column": "preference", "label_smoothing": 0.0})])
def test_a_fit_reads_the_loops_columns_from_the_data(tmp_path, tiny_lm_dir, name, hparams):
    """The columns the loop writes beside each pair reach the objective through a layout's number_fields, and two
    steps train on them."""
    rows = [{"prompt": "echo a b", "chosen": "A B", "rejected": "a b", "p": 0.8, "w": 0.7, "l": 0.3}] * 4
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    numbers = {"preference": "p", "chosen_win_rate": "w", "rejected_win_rate": "l"}
    data = PreferenceDataModule(train=path, layout=TextPairs(number_fields=numbers), batch_size=2)
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12),
                              get_objective(name, **hparams))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, data)
    assert trainer.global_step == 2 and math.isfinite(trainer.callback_metrics["train/loss"].item())
