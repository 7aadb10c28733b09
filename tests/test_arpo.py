"""ARPO (X-ALMA's adaptive-rejection CPO) against values worked by hand, its reduction to ``cpo``, its gradient
through the weight, and its options.

Each expected value is computed with plain ``math`` from the equation in ``ARPO``'s docstring (the official
code's form): ``d = |m_w - m_l|``, ``w = min(c1 exp(c2 d) - 1, 1)``, ``z = b (l_w - w l_l)``,
``L = -log s(z) + cpo_alpha * NLL(y_w)``, never with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignsuite.objectives import ARPO, get_objective
from alignsuite.scores import PairScores

HAND_WORKED = ("arpo",)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pairs(l_w, l_l, len_w, len_l, grad=False, scale=1.0):
    t = lambda v: (torch.tensor(v, dtype=torch.float) * scale).requires_grad_(grad)  # noqa: E731
    return PairScores(t(l_w), t(l_l), None, None, torch.tensor(len_w, dtype=torch.float),
                      torch.tensor(len_l, dtype=torch.float))


# Four pairs, one per regime of the weight at the defaults (c1 = 0.9, c2 = 0.4):
#   m_w, m_l = -0.5, -2.0   (d = 1.5: 0 < w < 1)
#   m_w, m_l = -1.5, -0.2   (d = 1.3, the chosen less likely per token: 0 < w < 1)
#   m_w, m_l = -1.0, -3.0   (d = 2.0 > ln(2/0.9)/0.4 = 1.996: w = 1, plain CPO)
#   m_w, m_l = -1.0, -1.1   (d = 0.1 < ln(1/0.9)/0.4 = 0.263: w < 0, the rejected pulled up)
S = dict(l_w=[-2.0, -3.0, -1.0, -4.0], l_l=[-6.0, -1.0, -12.0, -4.4], len_w=[4.0, 2.0, 1.0, 4.0],
         len_l=[3.0, 5.0, 4.0, 4.0])
ROWS = list(zip(S["l_w"], S["l_l"], S["len_w"], S["len_l"]))


def hand_weight(lw, ll, nw, nl, c1=0.9, c2=0.4):
    return min(c1 * math.exp(c2 * abs(lw / nw - ll / nl)) - 1, 1.0)


def test_weights_in_each_regime():
    w = [hand_weight(*r) for r in ROWS]
    assert w[0] == pytest.approx(0.9 * math.exp(0.6) - 1) and w[0] == pytest.approx(0.639907, abs=1e-6)
    assert w[1] == pytest.approx(0.9 * math.exp(0.52) - 1) and w[1] == pytest.approx(0.513825, abs=1e-6)
    assert w[2] == 1.0  # 0.9 e^0.8 - 1 = 1.003 capped
    assert w[3] == pytest.approx(0.9 * math.exp(0.04) - 1) and w[3] == pytest.approx(-0.063271, abs=1e-6)
    got = ARPO().rejected_weight(pairs(**S))
    assert got.tolist() == pytest.approx(w, abs=1e-6)


def test_arpo_hand_worked_value_at_the_defaults():
    b = 0.1
    pref = [-logsig(b * (lw - hand_weight(lw, ll, nw, nl) * ll)) for lw, ll, nw, nl in ROWS]
    assert pref[0] == pytest.approx(-logsig(0.1 * (-2 + 6 * 0.639907)), abs=1e-6)  # z = 0.18394
    nll = (2 + 3 + 1 + 4) / (4 + 2 + 1 + 4)  # cpo's pooled NLL: -sum l_w / sum |y_w| = 10/11
    out = get_objective("arpo")(pairs(**S))
    assert out.loss.item() == pytest.approx(sum(pref) / 4 + nll, abs=1e-6)
    assert out.metrics["loss/preference"].item() == pytest.approx(sum(pref) / 4, abs=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(nll, abs=1e-6)
    # Rewards are b * l, unweighted, as cpo's.
    assert out.metrics["rewards/chosen"].item() == pytest.approx(b * -10 / 4, abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(b * -23.4 / 4, abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(b * 13.4 / 4, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(0.75)  # pair 2: -3 < -1
    assert out.metrics["rejected_weight"].item() == pytest.approx(sum(hand_weight(*r) for r in ROWS) / 4, abs=1e-6)


def test_arpo_hand_worked_with_other_coefficients_smoothing_and_per_sequence_nll():
    b, c1, c2, eps, alpha = 0.5, 1.2, 0.1, 0.1, 0.3

    def per_pair(lw, ll, nw, nl):
        z = b * (lw - hand_weight(lw, ll, nw, nl, c1, c2) * ll)
        return -(1 - eps) * logsig(z) - eps * logsig(-z)

    nll = sum(-lw / nw for lw, _, nw, _ in ROWS) / 4  # each chosen answer's per-token NLL, then the mean
    expected = sum(per_pair(*r) for r in ROWS) / 4 + alpha * nll
    out = get_objective("arpo", beta=b, relax_coefficient_1=c1, relax_coefficient_2=c2, label_smoothing=eps,
                        cpo_alpha=alpha, nll="completion_per_sequence")(pairs(**S))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_gradient_flows_through_the_weight_as_in_the_official_code():
    # One pair, no NLL: L = -log s(z), z = b (l_w - w l_l), w = c1 exp(c2 |l_w/n_w - l_l/n_l|) - 1 (below its cap).
    lw, ll, nw, nl, b, c1, c2 = -2.0, -6.0, 4.0, 3.0, 0.1, 0.9, 0.4
    d = abs(lw / nw - ll / nl)  # 1.5, m_w > m_l
    w = c1 * math.exp(c2 * d) - 1
    z = b * (lw - w * ll)
    dl_dz = -(1 - 1 / (1 + math.exp(-z)))
    dw_dd = c1 * c2 * math.exp(c2 * d)
    grad_w = dl_dz * b * (1 - ll * dw_dd / nw)  # dd/dl_w = +1/n_w
    grad_l = dl_dz * b * (-w - ll * dw_dd * (-1 / nl))  # dd/dl_l = -1/n_l
    s = pairs([lw], [ll], [nw], [nl], grad=True)
    get_objective("arpo", cpo_alpha=0.0)(s).loss.backward()
    assert s.chosen.grad.item() == pytest.approx(grad_w, abs=1e-7)
    assert s.rejected.grad.item() == pytest.approx(grad_l, abs=1e-7)
    # The weight's own gradient matters: with w held fixed, the chosen side's gradient would be dl_dz * b.
    assert abs(grad_w - dl_dz * b) > 1e-2


def test_detach_weight_holds_the_weight_fixed_in_the_backward_pass():
    lw, ll, nw, nl, b = -2.0, -6.0, 4.0, 3.0, 0.1
    w = hand_weight(lw, ll, nw, nl)
    z = b * (lw - w * ll)
    dl_dz = -(1 - 1 / (1 + math.exp(-z)))
    s = pairs([lw], [ll], [nw], [nl], grad=True)
    out = get_objective("arpo", cpo_alpha=0.0, detach_weight=True)(s)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-logsig(z), abs=1e-7)  # the same value as without detaching
    assert s.chosen.grad.item() == pytest.approx(dl_dz * b, abs=1e-7)
    assert s.rejected.grad.item() == pytest.approx(dl_dz * b * -w, abs=1e-7)


@pytest.mark.parametrize("detach_weight", [False, True])
def test_a_rejected_answer_close_to_the_chosen(detach_weight):
    # m_w = -1.0, m_l = -1.1: d = 0.1, w = 0.9 e^0.04 - 1 = -0.0633 < 0, so z = b (l_w + |w| l_l) rises with l_l.
    lw, ll, n, b = -4.0, -4.4, 4.0, 0.1
    w = hand_weight(lw, ll, n, n)
    z = b * (lw - w * ll)
    # Through d (m_l < m_w: d falls as l_l rises), dw/dl_l = -c1 c2 e^(c2 d) / n_l = -0.4 (w + 1) / 4.
    dw_dll = 0.0 if detach_weight else -0.4 * (w + 1) / n
    grad = -(1 - 1 / (1 + math.exp(-z))) * b * (-w - ll * dw_dll)
    s = pairs([lw], [ll], [n], [n], grad=True)
    get_objective("arpo", cpo_alpha=0.0, detach_weight=detach_weight)(s).loss.backward()
    assert s.rejected.grad.item() == pytest.approx(grad, abs=1e-7)
    # Held fixed, the negative weight pulls the rejected answer up; through d, widening the gap wins and it falls.
    assert (s.rejected.grad.item() < 0) == detach_weight


@pytest.mark.parametrize(
    "lw, ll, nw, nl, raised",
    [
        # m_w = -1.5, m_l = -0.2: d = 1.3, w = 0.514; -m_l c2 (w + 1) = 0.121 < w: the rejected still falls.
        (-3.0, -1.0, 2.0, 5.0, False),
        # m_w = -3.0, m_l = -1.5: d = 1.5, w = 0.640; -m_l c2 (w + 1) = 0.984 > w: the rejected is raised.
        (-15.0, -7.5, 5.0, 5.0, True),
    ],
)
def test_a_rejected_answer_more_likely_per_token_can_be_raised_through_the_weight(lw, ll, nw, nl, raised):
    # dL/dl_l = -s(-z) b (-w + l_l dw/dl_l), dw/dl_l = c1 c2 e^(c2 d) / n_l = c2 (w + 1) / n_l when m_l > m_w.
    w = hand_weight(lw, ll, nw, nl)
    assert (-(ll / nl) * 0.4 * (w + 1) > w) == raised
    s = pairs([lw], [ll], [nw], [nl], grad=True)
    get_objective("arpo", cpo_alpha=0.0)(s).loss.backward()
    assert (s.rejected.grad.item() < 0) == raised
    s = pairs([lw], [ll], [nw], [nl], grad=True)
    get_objective("arpo", cpo_alpha=0.0, detach_weight=True)(s).loss.backward()
    assert s.rejected.grad.item() > 0  # held fixed, a positive weight always pushes the rejected down


@pytest.mark.parametrize("c1, c2", [(2.0, 0.0), (2.0, 0.4), (5.0, 3.0)])
@pytest.mark.parametrize("hparams", [{}, {"beta": 0.3, "cpo_alpha": 0.5, "label_smoothing": 0.2,
                                          "nll": "completion_per_sequence"}])
def test_reduces_to_cpo_exactly_where_the_relaxation_vanishes(c1, c2, hparams):
    # c1 >= 2 and c2 >= 0: c1 exp(c2 d) - 1 >= 1 for every d, so w = 1.
    grads = []
    losses = []
    for name, extra in (("arpo", {"relax_coefficient_1": c1, "relax_coefficient_2": c2}), ("cpo", {})):
        s = pairs(**S, grad=True)
        out = get_objective(name, **hparams, **extra)(s)
        out.loss.backward()
        losses.append(out.loss)
        grads.append((s.chosen.grad, s.rejected.grad))
    assert torch.equal(losses[0], losses[1])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("hparams", [{}, {"relax_coefficient_2": 50.0}, {"relax_coefficient_1": 0.01},
                                     {"label_smoothing": 0.3, "nll": "completion_per_sequence"}])
@pytest.mark.parametrize("scale", [500.0, 1e4])
def test_gradient_finite_at_extreme_log_probs(hparams, scale):
    # m_w - m_l up to thousands of nats per token: exp(c2 d) would overflow without the cap.
    s = pairs(l_w=[-1.0, -0.0, -1.0, -0.001], l_l=[-0.0, -1.0, -1.0, -1.0], len_w=[1.0, 1.0, 1.0, 7.0],
              len_l=[1.0, 3.0, 1.0, 1.0], grad=True, scale=scale)
    out = get_objective("arpo", **hparams)(s)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(s.chosen.grad).all() and torch.isfinite(s.rejected.grad).all()
    assert all(torch.isfinite(v).all() for v in out.metrics.values())


def test_identity_and_reference_free():
    objective = get_objective("arpo")
    assert isinstance(objective, ARPO)
    assert objective.needs_reference is False
    assert objective.family == "reference-free"
    assert objective.paper == "Xu et al. 2024, arXiv 2410.03115"
    assert (objective.relax_coefficient_1, objective.relax_coefficient_2) == (0.9, 0.4)
    assert (objective.beta, objective.cpo_alpha, objective.nll) == (0.1, 1.0, "completion_pooled")


@pytest.mark.parametrize(
    "hparams, option",
    [
        ({"relax_coefficient_1": 0.0}, "relax_coefficient_1"),
        ({"relax_coefficient_1": -0.9}, "relax_coefficient_1"),
        ({"relax_coefficient_1": float("nan")}, "relax_coefficient_1"),
        ({"relax_coefficient_2": -0.4}, "relax_coefficient_2"),
        ({"relax_coefficient_2": float("inf")}, "relax_coefficient_2"),
        ({"cpo_alpha": -1.0}, "cpo_alpha"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"nll": "prompt_and_completion_pooled"}, "nll"),
    ],
)
def test_bad_options_are_named(hparams, option):
    with pytest.raises(ValueError, match=option):
        get_objective("arpo", **hparams)
