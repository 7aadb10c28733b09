"""ASFT (aligned SFT through absolute likelihood) against values worked by hand, and beside ORPO, whose odds it shares.

Each expected value is computed with plain ``math`` from the equation as Gorbatovski et al. 2025 (arXiv 2502.01237,
section 2.4) write ASFT, with per-token mean log-likelihoods ``m = l / |y|``, never with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignsuite.objectives import get_objective
from alignsuite.scores import PairScores

HAND_WORKED = ("asft",)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def log_odds(m: float) -> float:
    p = math.exp(m)
    return math.log(p / (1 - p))


def pairs(l_w, l_l, len_w, len_l, grad=False, prompt=None):
    t = lambda v: torch.tensor(v, dtype=torch.float).requires_grad_(grad)  # noqa: E731
    extra = {} if prompt is None else {"chosen_prompt": torch.tensor(prompt[0]), "chosen_prompt_len": torch.tensor(prompt[1])}
    return PairScores(t(l_w), t(l_l), None, None, torch.tensor(len_w, dtype=torch.float),
                      torch.tensor(len_l, dtype=torch.float), extra)


# Two pairs: m_w = -2/4 = -0.5, m_l = -6/3 = -2; and m_w = -3/2 = -1.5, m_l = -1/5 = -0.2.
S = dict(l_w=[-2.0, -3.0], l_l=[-6.0, -1.0], len_w=[4.0, 2.0], len_l=[3.0, 5.0])
M = [(-0.5, -2.0), (-1.5, -0.2)]


def test_asft_hand_worked_value():
    lam = 0.1
    # In the sigmoid form: -log s(log odds(y_w)) - log s(-log odds(y_l)), per pair.
    align = [-logsig(log_odds(mw)) - logsig(-log_odds(ml)) for mw, ml in M]
    # ... which is -log p_w - log(1 - p_l).
    assert align == pytest.approx([-mw - math.log(1 - math.exp(ml)) for mw, ml in M], abs=1e-12)
    assert align[0] == pytest.approx(0.645413, abs=1e-6)  # 0.5 - log(1 - e^-2)
    nll = (0.5 + 1.5) / 2  # each chosen answer's per-token NLL, then the mean (nll="completion_per_sequence")
    out = get_objective("asft", beta=lam)(pairs(**S))
    assert out.loss.item() == pytest.approx(nll + lam * sum(align) / 2, abs=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(nll, abs=1e-6)
    assert out.metrics["loss/preference"].item() == pytest.approx(lam * sum(align) / 2, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(lam * (-0.5 - 1.5) / 2, abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(lam * (-2.0 - 0.2) / 2, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(0.5)


def test_asft_is_the_weighted_sum_of_two_log_likelihoods():
    # Gorbatovski et al. (section 3.1.1): L_ASFT = -(1 + lambda) log p_w - lambda log(1 - p_l), per sequence.
    lam = 0.3
    by_hand = sum(-(1 + lam) * mw - lam * math.log(1 - math.exp(ml)) for mw, ml in M) / 2
    assert get_objective("asft", beta=lam)(pairs(**S)).loss.item() == pytest.approx(by_hand, abs=1e-6)


def test_asft_and_orpo_share_the_odds_and_differ_by_the_exact_term():
    # ORPO's term -log s(log odds_w - log odds_l) = ASFT's - [-log(p_w (1 - p_l) + p_l (1 - p_w))] <= ASFT's.
    lam = 0.2
    s = pairs(**S)
    asft = get_objective("asft", beta=lam)(s)
    orpo = get_objective("orpo", beta=lam, nll="completion_per_sequence")(s)
    gap = []
    for mw, ml in M:
        pw, pl = math.exp(mw), math.exp(ml)
        gap.append(-math.log(pw * (1 - pl) + pl * (1 - pw)))
        assert -logsig(log_odds(mw) - log_odds(ml)) <= -logsig(log_odds(mw)) - logsig(-log_odds(ml))
    preference = asft.metrics["loss/preference"].item() - orpo.metrics["loss/preference"].item()
    assert preference == pytest.approx(lam * sum(gap) / 2, abs=1e-6)
    assert asft.metrics["loss/sft"].item() == pytest.approx(orpo.metrics["loss/sft"].item(), abs=1e-7)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert asft.metrics[key].item() == pytest.approx(orpo.metrics[key].item(), abs=1e-7)


def test_each_side_moves_on_its_own_unlike_orpo():
    # The rejected answer's gradient depends on its own likelihood only (pointwise), ORPO's on the chosen too.
    grads = {}
    for name in ("asft", "orpo"):
        for l_w in (-2.0, -8.0):
            s = pairs([l_w], [-6.0], [4.0], [3.0], grad=True)
            get_objective(name, nll="completion_per_sequence")(s).loss.backward()
            grads[name, l_w] = s.rejected.grad.item()
    # d/d l_l of -0.1 log(1 - e^(l_l/3)) = 0.1 e^m / (1 - e^m) / 3 at m = -2, whatever the chosen side.
    expected = 0.1 * math.exp(-2.0) / (1 - math.exp(-2.0)) / 3
    assert grads["asft", -2.0] == pytest.approx(expected, rel=1e-5)
    assert grads["asft", -8.0] == pytest.approx(expected, rel=1e-5)
    assert grads["orpo", -2.0] != pytest.approx(grads["orpo", -8.0], rel=1e-3)


def test_asft_nll_conventions():
    s = pairs(**S, prompt=([-4.0, -1.0], [2.0, 3.0]))
    align = sum(-mw - math.log(1 - math.exp(ml)) for mw, ml in M) / 2
    pooled = (2.0 + 3.0) / (4.0 + 2.0)
    with_prompt = (2.0 + 3.0 + 4.0 + 1.0) / (4.0 + 2.0 + 2.0 + 3.0)
    for nll, expected in (("completion_pooled", pooled), ("prompt_and_completion_pooled", with_prompt)):
        out = get_objective("asft", nll=nll)(s)
        assert out.loss.item() == pytest.approx(expected + 0.1 * align, abs=1e-6)
    assert [(v.name, v.score_prompt) for v in get_objective("asft").views] == [("chosen", False), ("rejected", False)]
    assert get_objective("asft", nll="prompt_and_completion_pooled").views[0].score_prompt


def test_asft_needs_no_reference_and_names_bad_options():
    assert not get_objective("asft").needs_reference
    with pytest.raises(ValueError, match="beta must be > 0"):
        get_objective("asft", beta=0.0)
    with pytest.raises(ValueError, match="nll must be one of"):
        get_objective("asft", nll="per_token")
    with pytest.raises(ValueError, match="prompt_and_completion_pooled"):
        get_objective("asft", nll="prompt_and_completion_pooled")(pairs(**S))


def test_asft_is_finite_at_extreme_likelihoods():
    # A rejected answer of likelihood ~1 (m_l = 0), a chosen one of ~0, in bf16 as training may give them.
    for dtype in (torch.float32, torch.bfloat16):
        s = PairScores(torch.tensor([-1e4, 0.0], dtype=dtype, requires_grad=True),
                       torch.tensor([0.0, -1e4], dtype=dtype, requires_grad=True), None, None,
                       torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0]))
        out = get_objective("asft")(s)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(s.chosen.grad).all() and torch.isfinite(s.rejected.grad).all()
