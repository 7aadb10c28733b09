"""Objectives for denoising backbones against numbers worked by hand from the papers' and official codes' equations.

Scores follow the contract: ``s = -0.5 * e`` for a per-sample mean squared error ``e``. Every expected value is
written here with plain ``math`` in *error* terms, the way the reference implementations write it, never with
the torch code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

import alignsuite.objectives as objectives
from alignsuite.objectives import DPO, DiffusionKTO, MaPO, SePPO, SmPO, available_objectives, get_objective
from alignsuite.objectives.denoising import PICKSCORE_MAX, PICKSCORE_MIN, mapo_bounded_score
from alignsuite.scores import PairScores, UnpairedScores


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


# (e_w, e_l, e_w_ref, e_l_ref): per-sample errors of the chosen and rejected image under policy and reference.
# Differences of a few 1e-4 give DPO logits of order 1 at beta 5000 (policy and reference stay close).
#   pair 0: (e_w - e_l) - (e_w,ref - e_l,ref) = -0.05 + 0.0498 = -0.0002  (policy agrees with the label)
#   pair 1: 0.03 - 0.0298 = +0.0002                                      (disagrees)
#   pair 2: 0.02 - 0.0207 = -0.0007
ERRORS = [(0.1000, 0.1500, 0.1004, 0.1502), (0.0800, 0.0500, 0.0797, 0.0499), (0.2000, 0.1800, 0.2003, 0.1796)]
# A reward per image (raw PickScore-like cosines), chosen first.
REWARDS = [(0.2300, 0.1967), (0.2600, 0.2500), (0.2000, 0.1400)]


def scores_from_errors(errors=ERRORS, rewards=None, *, reference=True, grad=False, dtype=torch.float64):
    """PairScores with ``s = -0.5 e``; with ``grad`` the error tensors (returned too) are the leaves."""
    e_w, e_l, e_wr, e_lr = (torch.tensor(col, dtype=dtype) for col in zip(*errors))
    if grad:
        e_w.requires_grad_(True)
        e_l.requires_grad_(True)
    extra = {}
    if rewards is not None:
        r_w, r_l = (torch.tensor(col, dtype=dtype) for col in zip(*rewards))
        extra = {"reward_chosen": r_w, "reward_rejected": r_l}
    s = PairScores(
        -0.5 * e_w,
        -0.5 * e_l,
        -0.5 * e_wr if reference else None,
        -0.5 * e_lr if reference else None,
        extra=extra,
    )
    return s, e_w, e_l


def close(value, rel=1e-4, abs=1e-5):
    # Losses run in float32 (as_float); scores of ~0.05 carry ~3e-9 rounding, i.e. ~1e-5 on a logit of 5000 * u.
    return pytest.approx(value, rel=rel, abs=abs)


# ---------------------------------------------------------------------------------------------------------
# Diffusion-DPO is dpo


def diffusion_dpo_official(e_w, e_l, e_wr, e_lr, beta=5000.0):
    """SalesforceAIResearch/DiffusionDPO train.py: -logsigmoid(-0.5 * beta_dpo * (model_diff - ref_diff))."""
    return -logsig(-0.5 * beta * ((e_w - e_l) - (e_wr - e_lr)))


def diffusion_dpo_diffusers(e_w, e_l, e_wr, e_lr, beta_dpo=2500.0):
    """diffusers research_projects/diffusion_dpo: -logsigmoid(beta_dpo * (ref_diff - model_diff)), no 0.5."""
    return -logsig(beta_dpo * ((e_wr - e_lr) - (e_w - e_l)))


def test_diffusion_dpo_is_dpo_with_the_official_beta():
    out = DPO(beta=5000)(scores_from_errors()[0])
    assert out.loss.item() == close(mean(diffusion_dpo_official(*p) for p in ERRORS))
    # the implicit accuracy: pairs 0 and 2 right, pair 1 wrong
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(2 / 3)
    # rewards are b * u = b * -0.5 (e - e_ref)
    assert out.metrics["rewards/chosen"].item() == close(mean(-0.5 * 5000 * (p[0] - p[2]) for p in ERRORS))


def test_diffusers_beta_2500_is_ours_at_5000():
    for pair in ERRORS:
        assert diffusion_dpo_diffusers(*pair) == pytest.approx(diffusion_dpo_official(*pair), rel=1e-12)
        assert DPO(beta=5000)(scores_from_errors([pair])[0]).loss.item() == close(diffusion_dpo_diffusers(*pair))
    # and 2500 in *our* convention is a different (half-strength) loss
    diffusers = mean(diffusion_dpo_diffusers(*p) for p in ERRORS)
    assert DPO(beta=2500)(scores_from_errors()[0]).loss.item() != close(diffusers)


def test_no_separate_diffusion_dpo_objective():
    names = available_objectives()
    assert not any("diffusion_dpo" in n or "diffusion-dpo" in n for n in names)
    assert {"mapo", "seppo", "smpo", "diffusion_kto"} <= set(names)


# ---------------------------------------------------------------------------------------------------------
# MaPO


def g_hand(e: float, k: float = 0.5) -> float:
    x = k * e
    return 1.0 if x == 0 else x / math.expm1(x)


def mapo_hand(errors, beta=0.1, k=0.5, T=1000):
    """mapo-t2i/mapo utils.compute_loss: mean(e_w) - beta_mapo * mean(logsigmoid(T * (g(e_w) - g(e_l))))."""
    sft = mean(p[0] for p in errors)
    margin = -beta * mean(logsig(T * (g_hand(p[0], k) - g_hand(p[1], k))) for p in errors)
    return sft + margin, sft, margin


def test_mapo_hand_worked():
    out = get_objective("mapo")(scores_from_errors(reference=False)[0])
    expected, sft, margin = mapo_hand(ERRORS)
    assert out.loss.item() == close(expected)
    assert out.metrics["mapo/winner_error"].item() == close(sft)
    assert out.metrics["mapo/loser_error"].item() == close(mean(p[1] for p in ERRORS))
    assert out.metrics["mapo/margin_loss"].item() == close(margin)
    assert out.metrics["rewards/chosen"].item() == close(mean(g_hand(p[0]) for p in ERRORS), rel=1e-6)
    assert out.metrics["rewards/rejected"].item() == close(mean(g_hand(p[1]) for p in ERRORS), rel=1e-6)
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(1 / 3)  # only pair 0 has e_w < e_l


def test_mapo_hyper_parameters_enter_as_in_the_paper():
    mapo = get_objective("mapo", beta=0.5, snr_value=2.0, num_train_timesteps=100)
    out = mapo(scores_from_errors(reference=False)[0])
    assert out.loss.item() == close(mapo_hand(ERRORS, beta=0.5, k=2.0, T=100)[0])


def test_mapo_loss_at_equal_errors_is_sft_plus_beta_ln2():
    equal = [(0.1, 0.1, 0.0, 0.0), (0.05, 0.05, 0.0, 0.0)]
    out = get_objective("mapo")(scores_from_errors(equal, reference=False)[0])
    assert out.loss.item() == close(0.075 + 0.1 * math.log(2))


def test_mapo_bounded_score():
    assert mapo_bounded_score(torch.tensor([0.0]), 0.5).item() == 1.0
    # both sides of the series cut-over (k e = +-1e-3), tiny, ordinary and huge errors; and negative ones, which
    # only nonsense (positive) scores produce
    es = [0.0, 1e-8, 1.998e-3, 2.002e-3, 0.05, 0.1, 0.2, 1.0, 10.0, 100.0, 1000.0]
    got = mapo_bounded_score(torch.tensor(es, dtype=torch.float32), 0.5).tolist()
    for e, g in zip(es, got):
        assert g == pytest.approx(g_hand(e), rel=1e-6, abs=1e-30), e
    assert all(a > b for a, b in zip(got[2:], got[3:])), "g decreases with the error"
    assert all(0 < g <= 1 for g in got[:-1]) and got[-1] == 0.0  # e^-500 underflows float32 to exactly 0
    for e in (-1.999e-3, -2.001e-3, -0.1, -10.0):
        assert mapo_bounded_score(torch.tensor([e]), 0.5).item() == pytest.approx(g_hand(e), rel=1e-6)


def test_mapo_is_reference_free():
    mapo = get_objective("mapo")
    assert mapo.needs_reference is False and isinstance(mapo, MaPO)
    without = mapo(scores_from_errors(reference=False)[0]).loss.item()
    assert mapo(scores_from_errors(reference=True)[0]).loss.item() == without


# ---------------------------------------------------------------------------------------------------------
# Diffusion-KTO

Q = 2.0**-14  # errors on a dyadic grid, so float32 sees them exactly (and a tie is a real tie)
# (e, e_ref, label): g = e_ref - e = [6, -4, 4, 2] Q, mean 2 Q -> z0 = 2 Q, g - z0 = [4, -6, 2, 0] Q
KTO_ROWS = [(1638 * Q, 1644 * Q, 1.0), (1311 * Q, 1307 * Q, 0.0), (2458 * Q, 2462 * Q, 1.0), (983 * Q, 985 * Q, 0.0)]


def make_unpaired(rows=KTO_ROWS, *, grad=False, dtype=torch.float64, with_kl=False):
    e, e_ref, label = (torch.tensor(col, dtype=dtype) for col in zip(*rows))
    logps = -0.5 * e
    if grad:
        logps.requires_grad_(True)
    ref = -0.5 * e_ref
    kl, ref_kl = (logps.detach(), ref) if with_kl else (None, None)
    return UnpairedScores(logps, label, ref_logps=ref, kl=kl, ref_kl=ref_kl)


def diffusion_kto_hand(rows, beta=1000.0, w_d=1.0, w_u=1.0, z0=None):
    """jacklishufan/diffusion-kto: g = e_ref - e, z0 = clamp(mean g, 0), loss = mean w_y (1 - s(y beta (g - z0)))."""
    g = [e_ref - e for e, e_ref, _ in rows]
    z0 = max(0.0, mean(g)) if z0 is None else z0
    losses = [(w_d if y else w_u) * (1 - sig((1 if y else -1) * beta * (gi - z0))) for gi, (_, _, y) in zip(g, rows)]
    return mean(losses), z0, g


def test_diffusion_kto_hand_worked():
    out = get_objective("diffusion_kto")(make_unpaired())
    expected, z0, g = diffusion_kto_hand(KTO_ROWS)
    assert z0 == 2 * Q
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(2 * Q, rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(1000 * (6 + 4) / 2 * Q, rel=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(1000 * (-4 + 2) / 2 * Q, rel=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(1000 * 6 * Q, rel=1e-6)
    # y (g - z0) = [4, 6, 2, -0] Q: three right, one exact tie (counts one half)
    assert out.metrics["rewards/accuracies"].item() == 0.875
    assert out.metrics["count/desirable"].item() == 2 and out.metrics["count/undesirable"].item() == 2


def test_diffusion_kto_weights_and_beta():
    out = get_objective("diffusion_kto", beta=300.0, desirable_weight=1.3, undesirable_weight=0.7)(make_unpaired())
    assert out.loss.item() == pytest.approx(diffusion_kto_hand(KTO_ROWS, 300.0, 1.3, 0.7)[0], rel=1e-6)


def test_diffusion_kto_beta_is_kto_beta_halved():
    # b (g - z0) = 2b (u - z0_u): diffusion_kto(b) is kto(2b) whose KL estimate is the batch's own mean log-ratio.
    s = make_unpaired(with_kl=True)
    ours = get_objective("diffusion_kto", beta=1000.0)(s)
    kto = get_objective("kto", beta=2000.0)(s)
    assert ours.loss.item() == pytest.approx(kto.loss.item(), rel=1e-6)
    assert ours.metrics["kl"].item() == pytest.approx(2 * kto.metrics["kl"].item(), rel=1e-6)


def test_diffusion_kto_flags():
    obj = get_objective("diffusion_kto")
    assert isinstance(obj, DiffusionKTO)
    assert obj.row_kind == "unpaired" and [v.name for v in obj.views] == ["completion"] and obj.needs_reference
    assert obj.beta == 1000.0 and obj.desirable_weight == 1.0 and obj.undesirable_weight == 1.0
    assert [v.name for v in get_objective("kto").views] == ["completion", "mismatched"]  # KTO unchanged
    with pytest.raises(ValueError, match="diffusion_kto.*reference"):
        obj(UnpairedScores(torch.zeros(2), torch.ones(2)))


def test_diffusion_kto_reference_point_clamped_at_zero():
    rows = [(e_ref, e, y) for e, e_ref, y in KTO_ROWS]  # g negated: mean -2 Q -> z0 = 0
    out = get_objective("diffusion_kto")(make_unpaired(rows))
    assert out.metrics["kl"].item() == 0.0
    expected, z0, _ = diffusion_kto_hand(rows)
    assert z0 == 0.0
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_diffusion_kto_reference_point_is_detached():
    # With z0 a constant, d L / d s_i = 2 d L / d g_i = -2/N * y w beta s(m) s(-m), m = y beta (g - z0).
    # Were z0 differentiated, every row would pick up an extra 2/N * (d L / d z0) term.
    s = make_unpaired(grad=True)
    get_objective("diffusion_kto")(s).loss.backward()
    _, z0, g = diffusion_kto_hand(KTO_ROWS)
    for grad, gi, (_, _, y) in zip(s.logps.grad.tolist(), g, KTO_ROWS):
        sign = 1 if y else -1
        m = sign * 1000 * (gi - z0)
        assert grad == pytest.approx(-2 / 4 * sign * 1000 * sig(m) * sig(-m), rel=1e-5)


def test_diffusion_kto_reduce_argument():
    seen = []

    def fixed(values):  # stands in for the module's all-reduce; records what it is given
        seen.append(values.clone())
        return torch.tensor(5 * Q, dtype=values.dtype)

    obj = get_objective("diffusion_kto")
    by_argument = obj(make_unpaired(), reduce=fixed)
    by_argument_again = obj(make_unpaired(), reduce=fixed)
    expected = diffusion_kto_hand(KTO_ROWS, z0=5 * Q)[0]
    for out in (by_argument, by_argument_again):
        assert out.metrics["kl"].item() == pytest.approx(5 * Q)
        assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # the hook receives the per-example implicit rewards g = e_ref - e (not u = g / 2), detached
    assert len(seen) == 2
    for values in seen:
        assert values.tolist() == pytest.approx([6 * Q, -4 * Q, 4 * Q, 2 * Q])
        assert not values.requires_grad
    # and a negative global mean is still clamped
    negative = lambda values: torch.tensor(-1.0, dtype=values.dtype)  # noqa: E731
    assert obj(make_unpaired(), reduce=negative).metrics["kl"].item() == 0.0


def test_diffusion_kto_gradient_sign():
    s = make_unpaired(grad=True)
    get_objective("diffusion_kto")(s).loss.backward()
    desirable = s.label > 0.5
    # raising a desirable image's score (lowering its error) lowers the loss; the reverse for undesirable ones
    assert (s.logps.grad[desirable] < 0).all() and (s.logps.grad[~desirable] > 0).all()


# ---------------------------------------------------------------------------------------------------------
# SmPO


def smpo_p(r_w, r_l, lo=PICKSCORE_MIN, hi=PICKSCORE_MAX):
    n_w, n_l = (r_w - lo) / (hi - lo), (r_l - lo) / (hi - lo)
    return math.exp(n_w) / (math.exp(n_w) + math.exp(n_l))


def smpo_hand(errors, rewards, beta=5000.0):
    """JaydenLyh/SmPO train.py: -logsigmoid(-0.5 * beta_dpo * (2p - 1) * 10 * (model_diff - ref_diff))."""
    losses = []
    for (e_w, e_l, e_wr, e_lr), (r_w, r_l) in zip(errors, rewards):
        scale_term = -0.5 * beta * (2 * smpo_p(r_w, r_l) - 1) * 10
        losses.append(-logsig(scale_term * ((e_w - e_l) - (e_wr - e_lr))))
    return mean(losses)


def test_smpo_hand_worked():
    out = get_objective("smpo")(scores_from_errors(rewards=REWARDS)[0])
    assert out.loss.item() == close(smpo_hand(ERRORS, REWARDS))
    assert out.metrics["smpo/preference"].item() == pytest.approx(mean(smpo_p(*r) for r in REWARDS), rel=1e-6)
    # rewards as DPO's: b u_w
    assert out.metrics["rewards/chosen"].item() == close(mean(-0.5 * 5000 * (p[0] - p[2]) for p in ERRORS))
    # p is between 1/2 and e / (1 + e) for rewards inside the bounds
    assert all(0.5 < smpo_p(*r) < math.e / (1 + math.e) for r in REWARDS)


def test_smpo_defaults_are_the_official_ones():
    smpo = get_objective("smpo")
    assert isinstance(smpo, SmPO)
    assert smpo.beta == 5000.0 and smpo.scale == 10.0
    assert smpo.reward_min == pytest.approx(0.11544, abs=1e-5) and smpo.reward_max == pytest.approx(0.28202, abs=1e-5)
    assert SmPO.extra_columns == ("reward_chosen", "reward_rejected")
    assert smpo.needs_reference is True
    out = get_objective("smpo", beta=2000.0, scale=5.0, reward_min=0.1, reward_max=0.3)(
        scores_from_errors(rewards=REWARDS)[0])
    expected = mean(
        -logsig(-0.5 * 2000 * (2 * smpo_p(r_w, r_l, 0.1, 0.3) - 1) * 5 * ((e_w - e_l) - (e_wr - e_lr)))
        for (e_w, e_l, e_wr, e_lr), (r_w, r_l) in zip(ERRORS, REWARDS)
    )
    assert out.loss.item() == close(expected)


def test_smpo_at_even_preference_is_ln2_whatever_the_scores():
    even = [(0.21, 0.21), (0.15, 0.15), (0.3, 0.3)]
    s, e_w, e_l = scores_from_errors(rewards=even, grad=True)
    out = get_objective("smpo")(s)
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-7)
    assert out.metrics["smpo/preference"].item() == 0.5
    out.loss.backward()
    assert (e_w.grad == 0).all() and (e_l.grad == 0).all()


def test_smpo_swapping_sides_and_rewards_leaves_the_loss():
    # p -> 1 - p and D -> -D: the logit (2p - 1) D is unchanged; the reward, not the position, decides.
    swapped_errors = [(e_l, e_w, e_lr, e_wr) for e_w, e_l, e_wr, e_lr in ERRORS]
    swapped_rewards = [(r_l, r_w) for r_w, r_l in REWARDS]
    a = get_objective("smpo")(scores_from_errors(rewards=REWARDS)[0]).loss.item()
    b = get_objective("smpo")(scores_from_errors(swapped_errors, swapped_rewards)[0]).loss.item()
    assert a == close(b)


@pytest.mark.parametrize("rewards", [None, "one"])
def test_smpo_without_reward_columns_raises_naming_them(rewards):
    s = scores_from_errors()[0]
    if rewards == "one":
        s.extra["reward_chosen"] = torch.tensor([0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="smpo.*reward_rejected"):
        get_objective("smpo")(s)


# ---------------------------------------------------------------------------------------------------------
# SePPO

# chosen = the winning image (anchor), rejected = the reference model's own sample.
#   pair 0: e_w < e_w,ref (policy fits the anchor better) -> reference sample a loser -> DPO
#   pair 1: e_w > e_w,ref (the reference fits it better)   -> reference sample a winner -> flipped
#   pair 2: e_w = e_w,ref exactly                          -> no verdict, the sample's term drops out
SEPPO_ERRORS = [(0.1000, 0.1500, 0.1004, 0.1502), (0.0803, 0.0496, 0.0800, 0.0500), (0.125, 0.25, 0.125, 0.2502)]


def seppo_hand_terms(e_w, e_l, e_wr, e_lr, beta=5000.0):
    d_w, d_l = e_w - e_wr, e_l - e_lr  # policy minus reference error, as the paper's logit -b T w (d_w -+ d_l)
    c = 1 if d_w < 0 else (-1 if d_w > 0 else 0)
    return c, -logsig(-0.5 * beta * (d_w - c * d_l))


def test_seppo_switches_terms_per_pair():
    out = get_objective("seppo")(scores_from_errors(SEPPO_ERRORS)[0])
    verdicts = [seppo_hand_terms(*p) for p in SEPPO_ERRORS]
    assert [c for c, _ in verdicts] == [1, -1, 0]
    assert out.loss.item() == close(mean(loss for _, loss in verdicts))
    assert out.metrics["seppo/flipped"].item() == pytest.approx(1 / 3)
    # the terms by hand, literally: DPO on pair 0, the flipped sum on pair 1, the anchor alone (u_w = 0) on pair 2
    dpo_0 = -logsig(-0.5 * 5000 * ((0.1000 - 0.1004) - (0.1500 - 0.1502)))  # logit 0.5
    flipped_1 = -logsig(-0.5 * 5000 * ((0.0803 - 0.0800) + (0.0496 - 0.0500)))  # logit 0.25 (DPO's: -1.75)
    assert verdicts[0][1] == pytest.approx(dpo_0) and verdicts[1][1] == pytest.approx(flipped_1)
    assert flipped_1 == pytest.approx(-logsig(0.25))
    assert out.loss.item() == close((dpo_0 + flipped_1 + math.log(2)) / 3)
    # per pair, to be sure which term each pair got
    for pair, (_, loss) in zip(SEPPO_ERRORS, verdicts):
        assert get_objective("seppo")(scores_from_errors([pair])[0]).loss.item() == close(loss)


def test_seppo_always_loser_is_dpo():
    s = scores_from_errors(SEPPO_ERRORS)[0]
    out = get_objective("seppo", criterion="always_loser")(s)
    assert out.loss.item() == close(mean(diffusion_dpo_official(*p) for p in SEPPO_ERRORS))
    assert out.loss.item() == pytest.approx(DPO(beta=5000)(s).loss.item(), rel=1e-6)
    assert out.metrics["seppo/flipped"].item() == 0.0


def test_seppo_decision_is_not_differentiated():
    # With c a constant: d L / d u_w = -b s(-z) / N and d L / d u_l = c b s(-z) / N, z = b (u_w - c u_l).
    s, _, _ = scores_from_errors(SEPPO_ERRORS)
    s.chosen.requires_grad_(True)
    s.rejected.requires_grad_(True)
    get_objective("seppo")(s).loss.backward()
    for i, (e_w, e_l, e_wr, e_lr) in enumerate(SEPPO_ERRORS):
        c, _ = seppo_hand_terms(e_w, e_l, e_wr, e_lr)
        u_w, u_l = -0.5 * (e_w - e_wr), -0.5 * (e_l - e_lr)
        z = 5000 * (u_w - c * u_l)
        assert s.chosen.grad[i].item() == pytest.approx(-5000 * sig(-z) / 3, rel=1e-3)
        assert s.rejected.grad[i].item() == pytest.approx(c * 5000 * sig(-z) / 3, rel=1e-3, abs=1e-9)
    # the flipped pair raises the reference sample's likelihood too (SFT-like); the DPO pair lowers it
    assert s.rejected.grad[1] < 0 < s.rejected.grad[0]


def test_seppo_defaults_and_flags():
    seppo = get_objective("seppo")
    assert isinstance(seppo, SePPO)
    assert seppo.beta == 5000.0 and seppo.criterion == "anchor_fit" and seppo.needs_reference is True
    assert SePPO.extra_columns == () and MaPO.extra_columns == ()


# ---------------------------------------------------------------------------------------------------------
# Shared checks: gradient signs, extremes, metrics, hyper-parameters


def build(name):
    hparams = {"dpo": {"beta": 5000.0}}.get(name, {})
    return get_objective(name, **hparams)


def pair_inputs(name, errors, *, grad=False, dtype=torch.float64):
    rewards = [(0.24, 0.20)] * len(errors) if name == "smpo" else None
    return scores_from_errors(errors, rewards, reference=name != "mapo", grad=grad, dtype=dtype)


@pytest.mark.parametrize("name", ["dpo", "mapo", "smpo", "seppo"])
def test_loss_falls_when_the_winners_error_falls(name):
    s, e_w, e_l = pair_inputs(name, ERRORS, grad=True)
    loss = build(name)(s).loss
    loss.backward()
    assert (e_w.grad > 0).all(), "lowering the winner's error must lower the loss"
    # and an actual step: every winner's error down by 1e-4
    lowered = [(w - 1e-4, lose, wr, lr) for w, lose, wr, lr in ERRORS]
    assert build(name)(pair_inputs(name, lowered)[0]).loss.item() < loss.item()


@pytest.mark.parametrize("name", ["dpo", "smpo", "seppo"])
def test_loss_falls_when_the_losers_error_rises(name):
    # seppo: only where the reference sample is judged a loser (e_w < e_w,ref); elsewhere it is raised on purpose
    errors = [p for p in ERRORS if p[0] < p[2]] if name == "seppo" else ERRORS
    s, _, e_l = pair_inputs(name, errors, grad=True)
    build(name)(s).loss.backward()
    assert (e_l.grad < 0).all()


# errors 0 and 1e3 in every arrangement the four errors of a pair can take
EXTREME_ERRORS = [(0.0, 1e3, 0.0, 1e3), (1e3, 0.0, 1e3, 0.0), (0.0, 0.0, 1e3, 1e3), (1e3, 1e3, 0.0, 0.0),
                  (0.0, 0.0, 0.0, 0.0), (1e3, 1e3, 1e3, 1e3), (0.0, 1e3, 1e3, 0.0)]


@pytest.mark.parametrize("name", ["dpo", "mapo", "smpo", "seppo"])
def test_finite_at_extreme_errors(name):
    s, e_w, e_l = pair_inputs(name, EXTREME_ERRORS, grad=True, dtype=torch.float32)
    out = build(name)(s)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(e_w.grad).all() and torch.isfinite(e_l.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_diffusion_kto_finite_at_extreme_errors():
    rows = [(0.0, 1e3, 1.0), (1e3, 0.0, 0.0), (0.0, 0.0, 1.0), (1e3, 1e3, 0.0), (1e3, 0.0, 1.0), (0.0, 1e3, 0.0)]
    s = make_unpaired(rows, grad=True, dtype=torch.float32)
    out = get_objective("diffusion_kto")(s)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(s.logps.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())


EXPECTED_METRICS = {
    "mapo": {"mapo/winner_error", "mapo/loser_error", "mapo/margin_loss"},
    "smpo": {"smpo/preference"},
    "seppo": {"seppo/flipped"},
    "diffusion_kto": {"kl", "count/desirable", "count/undesirable"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_metrics_are_detached_scalars(name):
    if name == "diffusion_kto":
        out = get_objective(name)(make_unpaired(grad=True))
    else:
        out = get_objective(name)(pair_inputs(name, ERRORS, grad=True)[0])
    assert out.loss.ndim == 0 and out.loss.requires_grad
    expected = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} | EXPECTED_METRICS[name]
    assert expected <= set(out.metrics)
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad, key
        assert torch.isfinite(value), key


@pytest.mark.parametrize("name", sorted(EXPECTED_METRICS))
def test_reachable_from_a_recipe(name):
    cls = type(get_objective(name))
    assert getattr(objectives, cls.__name__) is cls


@pytest.mark.parametrize(
    "name,hparams,named",
    [
        ("mapo", {"beta": 0.0}, "beta"),
        ("mapo", {"snr_value": 0.0}, "snr_value"),
        ("mapo", {"num_train_timesteps": 0}, "num_train_timesteps"),
        ("smpo", {"scale": 0.0}, "scale"),
        ("smpo", {"reward_min": 0.3, "reward_max": 0.2}, "reward_max"),
        ("smpo", {"beta": -1.0}, "beta"),
        ("seppo", {"criterion": "reward_model"}, "criterion"),
        ("seppo", {"beta": 0.0}, "beta"),
        ("diffusion_kto", {"beta": 0.0}, "beta"),
        ("diffusion_kto", {"undesirable_weight": 0.0}, "undesirable_weight"),
    ],
)
def test_invalid_hyper_parameters_raise_naming_them(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective(name, **hparams)
