"""LN-DPO, RePO, MaPPO, Reward-aware PO, ULMA and robust DPO against values worked by hand.

Each expected value is computed with plain ``math`` from the equation in the research notes (families.md section 7)
or the paper, never with the code under test; the notes' test anchors are used as given.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignsuite.objectives import get_objective
from alignsuite.scores import PairScores, UnpairedScores

HAND_WORKED = ("ln_dpo", "repo", "mappo", "reward_aware_po", "ulma")


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pairs(u_w, u_l, len_w=1, len_l=1, rewards=None, reference=True, grad=False) -> PairScores:
    """One or more pairs with log-ratios ``u_w``/``u_l`` (reference log-probs -10) and their lengths."""
    t = lambda v: torch.tensor(v if isinstance(v, list) else [v], dtype=torch.float64)  # noqa: E731
    u_w, u_l = t(u_w), t(u_l)
    ref = torch.full_like(u_w, -10.0)
    chosen, rejected = (ref + u_w).requires_grad_(grad), (ref + u_l).requires_grad_(grad)
    extra = {} if rewards is None else {"reward_chosen": t(rewards[0]), "reward_rejected": t(rewards[1])}
    return PairScores(chosen, rejected, ref if reference else None, ref.clone() if reference else None,
                      t(len_w).expand_as(u_w), t(len_l).expand_as(u_w), extra)


# --- LN-DPO ---------------------------------------------------------------------------------------------------


def test_ln_dpo_anchor():
    # notes 7.8: beta 0.1, u_w = -2 over 10 tokens, u_l = -6 over 20 -> -log s(0.1 * (-0.2 + 0.3)) = 0.688160
    out = get_objective("ln_dpo")(pairs(-2.0, -6.0, 10, 20))
    assert out.loss.item() == pytest.approx(0.688160, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * -0.2)  # per token, as the loss sees it


def test_ln_dpo_is_dpo_at_unit_lengths():
    s = pairs([0.5, -1.5, 3.0], [-0.5, 0.5, 1.0])
    assert get_objective("ln_dpo")(s).loss.item() == pytest.approx(get_objective("dpo")(s).loss.item(), rel=1e-12)


# --- RePO -----------------------------------------------------------------------------------------------------


def repo_pairs(m_w, m_l, n_w=4, n_l=5):
    # reference-free: l = m * |y|
    return PairScores(torch.tensor([m_w * n_w], dtype=torch.float64), torch.tensor([m_l * n_l], dtype=torch.float64),
                      chosen_len=torch.tensor([float(n_w)]), rejected_len=torch.tensor([float(n_l)]))


@pytest.mark.parametrize("m_l,expected,active", [(-1.2, 0.3, 1.0), (-2.0, 0.0, 0.0)])
def test_repo_anchor(m_l, expected, active):
    # notes 7.2: gamma 0.5, m_w = -1.0
    out = get_objective("repo", gamma=0.5)(repo_pairs(-1.0, m_l))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["active"].item() == active
    assert out.metrics["rewards/chosen"].item() == pytest.approx(2.0 * -1.0)  # beta (2.0) only scales the rewards


def test_repo_ignores_beta_and_is_simpo_without_its_logistic():
    s = repo_pairs(-1.0, -1.3)
    assert get_objective("repo", beta=10.0)(s).loss.item() == get_objective("repo", beta=2.5)(s).loss.item()
    # SimPO's beta -> inf limit: -log s(b (m_w - m_l) - b gamma) / b -> relu(gamma - (m_w - m_l))
    b = 1e4
    simpo = get_objective("simpo", beta=b, gamma=b * 0.4)(s).loss.item() / b
    assert simpo == pytest.approx(get_objective("repo")(s).loss.item(), abs=1e-4)


# --- MaPPO ----------------------------------------------------------------------------------------------------


def test_mappo_anchor():
    # notes 7.6 (the form is the paper's equation (8), checked): beta 0.1, u_w = 1, u_l = -1, dr = 0.4
    # -> -log s(0.1 + 0.04) = 0.625595
    out = get_objective("mappo")(pairs(1.0, -1.0, rewards=(0.9, 0.5)))
    assert out.loss.item() == pytest.approx(0.625595, abs=1e-6)


def test_mappo_on_the_papers_near_tie_example():
    # The paper's Figure 1 pair has rewards 0.95 and 0.91 (dr = 0.04). With u_w = -0.5, u_l = -2 and beta 0.1:
    # z = 0.1 * -0.5 - 0.04 * 0.1 * -2 = -0.042, L = log(1 + e^0.042); DPO's z would be 0.15.
    z = 0.1 * -0.5 - 0.04 * 0.1 * -2.0
    out = get_objective("mappo")(pairs(-0.5, -2.0, rewards=(0.95, 0.91)))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-z)), abs=1e-6)
    assert math.log1p(math.exp(-z)) == pytest.approx(0.714368, abs=1e-6)


def test_mappo_is_dpo_when_the_reward_gap_is_one():
    s = pairs([0.5, -1.5, 3.0], [-0.5, 0.5, 1.0], rewards=([1.0] * 3, [0.0] * 3))
    assert get_objective("mappo")(s).loss.item() == pytest.approx(get_objective("dpo")(s).loss.item(), rel=1e-12)


def test_mappo_barely_moves_the_rejected_side_of_a_near_tie():
    s = pairs([0.0, 0.0], [0.0, 0.0], rewards=([0.9, 0.9], [0.0, 0.89]), grad=True)
    get_objective("mappo")(s).loss.backward()
    # d L / d u_l = dr * b * s(-z) at z = 0: 0.9 * 0.05 and 0.01 * 0.05
    assert s.rejected.grad.tolist() == pytest.approx([0.9 * 0.05 / 2, 0.01 * 0.05 / 2], rel=1e-6)


def test_mappo_plug_ins_hand_worked():
    # The paper's appendix B.2, one pair: u_w = 1, u_l = -1 (log-probs -9 and -11 over 4 and 2 tokens), dr = 0.4,
    # beta 0.1 (Table 4), SimPO's gamma 1 and CPO's lambda 0.2 (Table 5).
    s = pairs(1.0, -1.0, 4, 2, rewards=(0.9, 0.5), reference=True)
    free = pairs(1.0, -1.0, 4, 2, rewards=(0.9, 0.5), reference=False)
    ipo = (1.0 - 0.4 * -1.0 - 1 / (2 * 0.1)) ** 2  # (14)
    simpo = -logsig(0.1 * -9 / 4 - 0.4 * 0.1 * -11 / 2 - 1.0)  # (12)
    cpo = -logsig(0.1 * -9 - 0.1 * 0.4 * -11) + 0.2 * 9 / 4  # (16), the NLL per token (one pair: pooled = mean)
    assert get_objective("mappo", base="ipo")(s).loss.item() == pytest.approx(ipo, abs=1e-6)
    assert ipo == pytest.approx(12.96, abs=1e-9)
    assert get_objective("mappo", base="simpo")(free).loss.item() == pytest.approx(simpo, abs=1e-6)
    out = get_objective("mappo", base="cpo")(free)
    assert out.loss.item() == pytest.approx(cpo, abs=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(9 / 4, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * -9, abs=1e-6)


@pytest.mark.parametrize("base,plain,plain_hparams,reference", [
    ("dpo", "dpo", {}, True),
    ("ipo", "ipo", {"length_normalize": False}, True),
    ("simpo", "simpo", {"gamma": 1.0}, False),
    ("cpo", "cpo", {"cpo_alpha": 0.2}, False),
])
def test_mappo_plug_in_at_a_unit_reward_gap_is_its_base(base, plain, plain_hparams, reference):
    s = pairs([0.5, -1.5, 3.0], [-0.5, 0.5, 1.0], [3, 1, 5], [2, 4, 1], rewards=([1.0] * 3, [0.0] * 3),
              reference=reference)
    mappo = get_objective("mappo", beta=0.3, base=base)(s)
    base_out = get_objective(plain, beta=0.3, **plain_hparams)(s)
    assert mappo.loss.item() == pytest.approx(base_out.loss.item(), rel=1e-6)  # float32 losses
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert mappo.metrics[key].item() == pytest.approx(base_out.metrics[key].item(), rel=1e-6, abs=1e-7)
    assert get_objective("mappo", base=base).needs_reference == reference


def test_mappo_names_its_bad_options():
    with pytest.raises(ValueError, match="base must be one of 'dpo', 'ipo', 'simpo', 'cpo', got 'orpo'"):
        get_objective("mappo", base="orpo")
    with pytest.raises(ValueError, match="gamma"):
        get_objective("mappo", base="simpo", gamma=-1.0)
    with pytest.raises(ValueError, match="cpo_alpha"):
        get_objective("mappo", base="cpo", cpo_alpha=-0.1)
    with pytest.raises(ValueError, match="sft_weight"):
        get_objective("mappo", base="cpo", sft_weight=1.0)


def test_reward_objectives_without_reward_columns_name_them():
    for name in ("mappo", "reward_aware_po"):
        with pytest.raises(ValueError, match=f"{name}.*reward_chosen, reward_rejected"):
            get_objective(name)(pairs(1.0, -1.0))


# --- Reward-aware PO ------------------------------------------------------------------------------------------


def rpo_by_hand(z, g, distance):
    if distance == "sq":
        return (z - g) ** 2
    if distance == "bwd_kl":
        return sum(sig(c * g) * (logsig(c * g) - logsig(c * z)) for c in (1, -1))
    return sum(sig(c * z) * (logsig(c * z) - logsig(c * g)) for c in (1, -1))


# notes 7.9: beta 0.2, D = 1.5, dr = 0.5
RPO_ANCHORS = {"sq": 0.04, "bwd_kl": 0.00477013, "fwd_kl": 0.00483324}


@pytest.mark.parametrize("distance", sorted(RPO_ANCHORS))
def test_reward_aware_po_anchors(distance):
    out = get_objective("reward_aware_po", distance=distance)(pairs(1.0, -0.5, rewards=(0.75, 0.25)))
    assert out.loss.item() == pytest.approx(RPO_ANCHORS[distance], abs=1e-7)
    assert rpo_by_hand(0.2 * 1.5, 0.5, distance) == pytest.approx(RPO_ANCHORS[distance], abs=1e-7)


def test_reward_aware_po_scale_and_per_token_margins():
    # gt_reward_scale 3 -> g = 1.5; per-token log-ratios 1/4 and -0.5/2 -> D = 0.5, z = 0.1
    s = pairs(1.0, -0.5, 4, 2, rewards=(0.75, 0.25))
    out = get_objective("reward_aware_po", beta=0.2, gt_reward_scale=3.0, average_log_probs=True, distance="fwd_kl")(s)
    assert out.loss.item() == pytest.approx(rpo_by_hand(0.2 * 0.5, 1.5, "fwd_kl"), rel=1e-6)


def test_reward_aware_po_lowers_a_margin_that_overshot():
    s = pairs(5.0, -5.0, rewards=(0.6, 0.5), grad=True)  # z = 2 > g = 0.1
    get_objective("reward_aware_po")(s).loss.backward()
    assert s.chosen.grad.item() > 0 and s.rejected.grad.item() < 0


@pytest.mark.parametrize("hparams,named", [({"distance": "l1"}, "distance"), ({"gt_reward_scale": 0.0}, "gt_reward_scale")])
def test_reward_aware_po_refuses_bad_options(hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective("reward_aware_po", **hparams)


# --- ULMA -----------------------------------------------------------------------------------------------------


def unpaired(logps, ref, labels, lengths) -> UnpairedScores:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return UnpairedScores(t(logps), t(labels), t(ref), length=t(lengths))


def test_ulma_anchor():
    # notes 7.4: beta 0.1, one positive with m = -0.8, one negative with u = -0.3 -> 0.8 + 0.678260
    s = unpaired([-4.0, -9.0], [-5.0, -8.4], [1.0, 0.0], [5, 2])  # m = -0.8; u = (-9 + 8.4) / 2 = -0.3
    out = get_objective("ulma")(s)
    assert out.loss.item() == pytest.approx(1.478260, abs=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(0.8)
    assert out.metrics["loss/preference"].item() == pytest.approx(-logsig(0.03), rel=1e-6)


def test_ulma_means_each_term_over_its_own_subset():
    # positives m = -1, -3 (mean NLL 2); negatives u = 0.5, -1.5, 2.5 with z = 0.2
    s = unpaired([-2.0, -3.0, -1.0, -6.0, 0.0], [-2.5, -3.0, -2.0, -4.5, -5.0], [1, 1, 0, 0, 0], [2, 1, 2, 1, 2])
    out = get_objective("ulma", beta=0.5, ulma_constant_zx=0.2)(s)
    u_neg = [(-1.0 + 2.0) / 2, (-6.0 + 4.5) / 1, (0.0 + 5.0) / 2]
    expected = 2.0 + sum(-logsig(-0.5 * u - 0.2) for u in u_neg) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert (out.metrics["count/desirable"].item(), out.metrics["count/undesirable"].item()) == (2.0, 3.0)


def test_ulma_with_only_positives_is_sft():
    s = unpaired([-2.0, -3.0], [-1.0, -1.0], [1.0, 1.0], [2, 3])
    out = get_objective("ulma")(s)
    assert out.loss.item() == pytest.approx((1.0 + 1.0) / 2) and out.metrics["loss/preference"].item() == 0.0


# --- Provably robust DPO (the existing ``robust``) ------------------------------------------------------------


def test_robust_is_chowdhury_et_al_with_a_known_flip_rate():
    # Chowdhury, Kini and Natarajan 2024 (arXiv 2403.00409), Eq. 8: with flip rate eps,
    # L = [(1 - eps) l(b D) - eps l(-b D)] / (1 - 2 eps), l(x) = -log s(x). By hand, eps 0.1, beta 0.1, D = 1:
    # [0.9 * 0.644397 - 0.1 * 0.744397] / 0.8 = 0.631897.
    out = get_objective("robust", label_smoothing=0.1)(pairs(0.5, -0.5))
    assert out.loss.item() == pytest.approx(0.631897, abs=1e-6)
    # and its gradient is DPO's, in expectation over the flip (the paper's unbiasedness): at eps = 0.2
    s, flipped = pairs(0.5, -0.5, grad=True), pairs(-0.5, 0.5, grad=True)
    robust = get_objective("robust", label_smoothing=0.2)
    (0.8 * robust(s).loss + 0.2 * robust(flipped).loss).backward()
    d = pairs(0.5, -0.5, grad=True)
    get_objective("dpo")(d).loss.backward()
    # (each grad already carries its weight; the flipped pair's rejected answer is the clean pair's chosen one)
    assert s.chosen.grad.item() + flipped.rejected.grad.item() == pytest.approx(d.chosen.grad.item(), rel=1e-6)
