"""Flex-DPO (``flex_dpo``): DPO with its own ``beta`` for the rejected log-ratio. Hand-worked values from plain
``math``, the reduction to ``dpo`` at equal betas, the optional SFT term, and the option errors."""

from __future__ import annotations

import math

import pytest
import torch

from alignsuite.objectives import get_objective
from alignsuite.scores import PairScores

HAND_WORKED = ("flex_dpo",)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pairs(chosen, rejected, ref_chosen, ref_rejected, chosen_len=None, dtype=torch.float64):
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    c, r = t(chosen).requires_grad_(True), t(rejected).requires_grad_(True)
    return PairScores(c, r, t(ref_chosen), t(ref_rejected), None if chosen_len is None else t(chosen_len))


def test_hand_worked_loss_gradients_and_rewards():
    obj = get_objective("flex_dpo", beta=0.1, beta_rejected=0.08)
    # u_w = [1, -2], u_l = [-1, 3]: z = [0.1*1 + 0.08*1, 0.1*(-2) - 0.08*3] = [0.18, -0.44]
    s = pairs([-1.0, -5.0], [-4.0, -1.0], [-2.0, -3.0], [-3.0, -4.0])
    out = obj(s)
    z = [0.18, -0.44]
    assert out.loss.item() == pytest.approx(sum(math.log1p(math.exp(-zi)) for zi in z) / 2, rel=1e-6)
    out.loss.backward()
    # dL/dlogpi(y_w) = -b+ s(-z) / B, dL/dlogpi(y_l) = +b- s(-z) / B (mean over the B = 2 pairs)
    assert s.chosen.grad.tolist() == pytest.approx([-0.1 * sig(-zi) / 2 for zi in z], rel=1e-6)
    assert s.rejected.grad.tolist() == pytest.approx([0.08 * sig(-zi) / 2 for zi in z], rel=1e-6)
    # rewards: the implicit reward b+ u on both sides (b- only reweighs the rejected gradient)
    assert out.metrics["rewards/chosen"].item() == pytest.approx((0.1 - 0.2) / 2, rel=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx((-0.1 + 0.3) / 2, rel=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx((0.2 - 0.5) / 2, rel=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5


def test_rejected_push_is_the_beta_ratio_of_the_chosen_pull():
    s = pairs([-3.0], [-3.5], [-3.0], [-3.0])
    get_objective("flex_dpo", beta=0.2, beta_rejected=0.05)(s).loss.backward()
    assert (-s.rejected.grad / s.chosen.grad).item() == pytest.approx(0.05 / 0.2, rel=1e-6)


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_equal_betas_is_dpo_exactly(sft_weight):
    rows = ([-1.0, -40.0, -3.0], [-5.0, -2.0, -3.0], [-2.0, -1.0, -4.0], [-4.0, -3.0, -2.0], [4.0, 9.0, 1.0])
    a, b = pairs(*rows), pairs(*rows)
    flex = get_objective("flex_dpo", beta=0.3, beta_rejected=0.3, sft_weight=sft_weight)(a)
    dpo = get_objective("dpo", beta=0.3, sft_weight=sft_weight)(b)
    assert flex.loss.item() == dpo.loss.item()
    assert flex.metrics.keys() == dpo.metrics.keys()
    for key in dpo.metrics:
        assert flex.metrics[key].item() == dpo.metrics[key].item(), key
    flex.loss.backward()
    dpo.loss.backward()
    assert torch.equal(a.chosen.grad, b.chosen.grad) and torch.equal(a.rejected.grad, b.rejected.grad)


def test_sft_term_is_the_per_sequence_chosen_nll():
    # u_w = 1, u_l = -1 -> z = 0.5*1 + 0.25*1 = 0.75; chosen log-prob -6 over 3 tokens -> NLL 2 per token
    obj = get_objective("flex_dpo", beta=0.5, beta_rejected=0.25, sft_weight=0.4)
    out = obj(pairs([-6.0], [-4.0], [-7.0], [-3.0], chosen_len=[3.0]))
    assert out.metrics["loss/preference"].item() == pytest.approx(math.log1p(math.exp(-0.75)), rel=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(2.0, rel=1e-6)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.75)) + 0.4 * 2.0, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_loss_and_gradient_at_extreme_log_ratios(dtype):
    s = pairs([-1e4, 0.0], [0.0, -1e4], [0.0, -1e4], [-1e4, 0.0], dtype=dtype)
    out = get_objective("flex_dpo")(s)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(s.chosen.grad).all() and torch.isfinite(s.rejected.grad).all()
    assert out.loss.dtype == torch.float32  # the log-ratios are cast before they are subtracted


def test_defaults_are_the_reported_best_setting():
    obj = get_objective("flex_dpo")
    assert (obj.beta, obj.beta_rejected, obj.sft_weight) == (0.1, 0.08, 0.0)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, float("nan"), float("inf"), True, "0.1", None])
def test_bad_beta_rejected_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="beta_rejected"):
        get_objective("flex_dpo", beta_rejected=bad)


@pytest.mark.parametrize("options", [{"beta": 0.0}, {"sft_weight": -1.0}])
def test_bad_shared_options_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        get_objective("flex_dpo", **options)


def test_needs_a_reference():
    with pytest.raises(ValueError):
        get_objective("flex_dpo")(PairScores(torch.zeros(2), torch.zeros(2)))
