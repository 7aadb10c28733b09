"""Listwise objectives against hand-worked values (research/families.md §1) and their K = 2 reductions."""

import math

import pytest
import torch

from alignsuite.objectives import available_objectives, get_objective
from alignsuite.scores import ListScores, PairScores, SequenceScores
from listwise_plain import (
    logsig,
    lse,
    plain_exo,
    plain_infonca,
    plain_lipo,
    plain_list_mle,
    plain_mpo,
    plain_nca,
    plain_pro,
    softmax,
)

# Registered objectives whose values are worked by hand here (checked by test_objectives.py).
HAND_WORKED = ("list_mle", "lipo", "pro", "infonca", "nca", "exo", "mpo")


def lists(scores, labels, mask=None):
    scores = torch.tensor(scores, dtype=torch.float)
    return ListScores(scores, torch.tensor(labels, dtype=torch.float), ref=torch.zeros_like(scores),
                      mask=None if mask is None else torch.tensor(mask, dtype=torch.bool))


def test_list_mle_matches_the_hand_worked_plackett_luce_value():
    # families.md §1.1 anchor: s = [0.2, 0.5, -0.1] in label order -> 1.565878.
    out = get_objective("list_mle", beta=1.0, list_size=3)(lists([[0.2, 0.5, -0.1]], [[3, 2, 1]]))
    assert out.loss.item() == pytest.approx(1.565878, abs=1e-6)
    # By hand: -(0.2 - lse(0.2, 0.5, -0.1)) - (0.5 - lse(0.5, -0.1)).
    assert out.loss.item() == pytest.approx(-(0.2 - lse(0.2, 0.5, -0.1)) - (0.5 - lse(0.5, -0.1)), abs=1e-6)


def test_list_mle_orders_by_label_not_by_position():
    shuffled = get_objective("list_mle", beta=1.0, list_size=3)(lists([[-0.1, 0.2, 0.5]], [[1, 3, 2]]))
    assert shuffled.loss.item() == pytest.approx(1.565878, abs=1e-6)


def test_a_padded_entry_takes_no_part():
    objective = get_objective("list_mle", beta=1.0, list_size=4)
    padded = objective(lists([[0.2, 0.5, -0.1, 7.0]], [[3, 2, 1, float("nan")]], mask=[[1, 1, 1, 0]]))
    assert padded.loss.item() == pytest.approx(1.565878, abs=1e-6)


def test_list_mle_at_two_responses_is_dpo():
    chosen, rejected = torch.tensor([0.3, -1.2]), torch.tensor([-0.2, 0.4])
    ref_c, ref_r = torch.tensor([0.1, -1.0]), torch.tensor([0.0, 0.1])
    dpo = get_objective("dpo", beta=0.5)(PairScores(chosen, rejected, ref_c, ref_r))
    pl = get_objective("list_mle", beta=0.5, list_size=2)(
        ListScores(torch.stack([rejected, chosen], 1), torch.tensor([[0.0, 1.0]] * 2), torch.stack([ref_r, ref_c], 1)))
    assert pl.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-7)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert pl.metrics[key].item() == pytest.approx(dpo.metrics[key].item(), abs=1e-7)


def test_a_list_with_fewer_than_two_responses_is_refused():
    with pytest.raises(ValueError, match="row.*1.*fewer than 2"):
        lists([[0.1, 0.2], [0.3, 0.4]], [[1, 0], [1, float("nan")]], mask=[[1, 1], [1, 0]])


PLAIN = {  # name -> (hparams, plain form of one list taking (s, r))
    "list_mle": ({}, plain_list_mle),
    "lipo": ({}, plain_lipo),
    "lipo-ln": ({"discount": "ln"}, lambda s, r: plain_lipo(s, r, discount="ln")),
    "lipo-pair_logistic": ({"loss_type": "pair_logistic"}, lambda s, r: plain_lipo(s, r, "pair_logistic")),
    "lipo-pair_hinge": ({"loss_type": "pair_hinge"}, lambda s, r: plain_lipo(s, r, "pair_hinge")),
    "lipo-list_mle": ({"loss_type": "list_mle"}, lambda s, r: plain_lipo(s, r, "list_mle")),
    "lipo-softmax": ({"loss_type": "softmax"}, lambda s, r: plain_lipo(s, r, "softmax")),
    "pro": ({"sft_weight": 0.0}, plain_pro),
    "infonca": ({"temperature_alpha": 2.0}, lambda s, r: plain_infonca(s, r, 2.0)),
    "nca": ({"temperature_alpha": 2.0}, lambda s, r: plain_nca(s, r, 2.0)),
    "exo": ({"beta_r": 0.5}, lambda s, r: plain_exo(s, r, 0.5)),
    "mpo": ({"alpha": 0.7}, lambda s, r: plain_mpo(s, r, 0.7)),
    "mpo-absolute": ({"alpha": 0.7, "deviation": "absolute"}, lambda s, r: plain_mpo(s, r, 0.7, absolute=True)),
    # Without its step weights (tests/test_trees.py works them by hand), TPO's tree objective is LiPO-lambda.
    "tpo_tree": ({"step_weights": False}, plain_lipo),
}
LIST_OBJECTIVES = sorted(n for n in available_objectives() if get_objective(n).row_kind == "lists")


def test_every_list_objective_has_a_plain_form():
    assert set(LIST_OBJECTIVES) <= {case.split("-")[0] for case in PLAIN}


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_matches_its_plain_python_form_at_k4_with_a_ragged_row(case):
    name, (hparams, plain) = case.split("-")[0], PLAIN[case]
    g = torch.Generator().manual_seed(7)
    scores, ref = torch.randn(3, 4, generator=g) * 3, torch.randn(3, 4, generator=g) * 3
    lengths = torch.randint(1, 6, (3, 4), generator=g).float()
    labels = torch.randint(0, 4, (3, 4), generator=g).float() / 2  # ratings in halves: some ties
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    beta = 0.7
    objective = get_objective(name, **({} if name == "pro" else {"beta": beta}), **hparams)
    s = ListScores(scores, torch.where(mask, labels, float("nan")), ref, lengths, mask)
    expected = []
    for b in range(3):
        keep = [k for k in range(4) if mask[b, k]]
        if name == "pro":
            x = [scores[b, k].item() / lengths[b, k].item() for k in keep]
        else:
            x = [beta * (scores[b, k].item() - ref[b, k].item()) for k in keep]
        expected.append(plain(x, [labels[b, k].item() for k in keep]))
    assert objective(s).loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Hand-worked anchors (families.md §1.2-§1.5, §1.9), each also written out with plain math


def ref0(scores, labels, **kw):
    """A list whose reference scores are 0, so that beta = 1 makes the implicit rewards the scores."""
    return lists(scores, labels, **kw)


def test_lipo_lambda_anchor():
    # §1.2: s = [0.2, 0.5, -0.1], psi = [0.9, 0.6, 0.1] -> model ranks tau = [2, 1, 3].
    out = get_objective("lipo", beta=1.0, list_size=3)(ref0([[0.2, 0.5, -0.1]], [[0.9, 0.6, 0.1]]))
    g = [2**0.9 - 1, 2**0.6 - 1, 2**0.1 - 1]
    d = [1 / math.log2(3), 1 / math.log2(2), 1 / math.log2(4)]  # 1/D(tau) for tau = 2, 1, 3
    delta = {(i, j): abs(g[i] - g[j]) * abs(d[i] - d[j]) for i, j in ((0, 1), (0, 2), (1, 2))}
    assert [round(delta[p], 6) for p in ((0, 1), (0, 2), (1, 2))] == [0.129304, 0.103997, 0.221972]
    s = [0.2, 0.5, -0.1]
    by_hand = sum(w * -logsig(s[i] - s[j]) for (i, j), w in delta.items())
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-6) and by_hand == pytest.approx(0.265232, abs=1e-6)


def test_lipo_beta_scales_the_log_ratios_before_the_loss_and_the_ranks():
    # The paper's equation (2): s_i = beta log pi/pi_ref, then equation (8) on s. With beta 0.5, u = [0.4, 1.0, -0.2]
    # gives back the anchor's s = [0.2, 0.5, -0.1] and so its value, 0.265232.
    s = lists([[0.9, 1.5, 0.3]], [[0.9, 0.6, 0.1]])
    s = ListScores(s.scores, s.labels, torch.tensor([[0.5, 0.5, 0.5]]))
    out = get_objective("lipo", beta=0.5, list_size=3)(s)
    assert out.loss.item() == pytest.approx(0.265232, abs=1e-6)


def test_lipo_pair_logistic_gives_the_value_of_rax_documented_example():
    # The paper computes its losses with RAX (appendix B). rax.pairwise_logistic_loss documents scores [2, 1, 3],
    # labels [1, 0, 0] -> 1.6265235 (summed over the pairs): -log s(1) - log s(-1).
    out = get_objective("lipo", beta=1.0, list_size=3, loss_type="pair_logistic")(ref0([[2.0, 1.0, 3.0]], [[1, 0, 0]]))
    assert out.loss.item() == pytest.approx(-logsig(1.0) - logsig(-1.0), abs=1e-6)
    assert out.loss.item() == pytest.approx(1.6265235, abs=1e-6)


def test_lipo_softmax_and_list_mle_anchors():
    scores = ref0([[0.2, 0.5, -0.1]], [[0.9, 0.6, 0.1]])
    softmax_loss = get_objective("lipo", beta=1.0, list_size=3, loss_type="softmax")(scores).loss.item()
    z = lse(0.2, 0.5, -0.1)
    assert softmax_loss == pytest.approx(-sum(p / 1.6 * (x - z) for p, x in ((0.9, 0.2), (0.6, 0.5), (0.1, -0.1))))
    assert softmax_loss == pytest.approx(1.034640, abs=1e-6)
    mle = get_objective("lipo", beta=1.0, list_size=3, loss_type="list_mle")(scores).loss.item()
    assert mle == pytest.approx(1.565878, abs=1e-6)


def test_lipo_ln_discount_scales_lambda_by_one_over_ln2():
    scores = ref0([[0.2, 0.5, -0.1, 0.3]], [[0.9, 0.6, 0.1, 0.4]])
    log2 = get_objective("lipo", beta=1.0)(scores).loss.item()
    assert get_objective("lipo", beta=1.0, discount="ln")(scores).loss.item() == pytest.approx(log2 / math.log(2))


def test_lipo_softmax_refuses_negative_labels():
    with pytest.raises(ValueError, match=r"softmax.*labels must be >= 0.*row\(s\) \[1\]"):
        get_objective("lipo", list_size=2, loss_type="softmax")(ref0([[0.1, 0.2], [0.3, 0.4]], [[1, 0], [1, -1]]))


def test_lipo_lambda_weights_come_from_the_model_ranks_and_carry_no_gradient():
    scores = torch.tensor([[0.2, 0.5, -0.1]], requires_grad=True)
    s = ListScores(scores, torch.tensor([[0.9, 0.6, 0.1]]), torch.zeros(1, 3))
    get_objective("lipo", beta=1.0, list_size=3)(s).loss.backward()
    # With the weights held constant: dL/ds_0 = -Delta_01 s(s_1 - s_0) - Delta_02 s(s_2 - s_0), by hand.
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert scores.grad[0, 0].item() == pytest.approx(-0.129304 * sig(0.3) - 0.103997 * sig(-0.3), abs=1e-6)


def test_pro_anchor_and_its_sft_term():
    # §1.3: s = [-1.0, -1.5, -2.0] (per-token means), r = [3, 2, 0] -> L_0 = 1.710455, L_1 = 0.313262.
    l0 = math.log(1e-10 + math.exp(-3.0) + math.exp(-1.5 * 1) + math.exp(-2.0 * 3)) + 3.0
    l1 = math.log(1e-10 + math.exp(-1.5 * 2) + math.exp(-2.0 * 2)) + 1.5 * 2
    assert (round(l0, 6), round(l1, 6)) == (1.710455, 0.313262)
    pro = get_objective("pro", list_size=3, sft_weight=0.0)
    assert pro(lists([[-1.0, -1.5, -2.0]], [[3, 2, 0]])).loss.item() == pytest.approx(2.023716, abs=1e-6)
    # Summed log-probs over [2, 3, 1] tokens give the same means; shuffled, the rows are sorted by reward.
    summed = ListScores(torch.tensor([[-4.5, -2.0, -2.0]]), torch.tensor([[2.0, 3.0, 0.0]]),
                        lengths=torch.tensor([[3.0, 2.0, 1.0]]))
    assert pro(summed).loss.item() == pytest.approx(l0 + l1, abs=1e-6)
    # The SFT term: weight * (n - 1)^2 * (-summed log-prob of the best) = 0.05 * 4 * 2.0.
    out = get_objective("pro", list_size=3)(summed)
    assert out.loss.item() == pytest.approx(l0 + l1 + 0.05 * 4 * 2.0, abs=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(8.0)


def test_pro_equal_rewards_give_a_zero_temperature_term():
    l0 = math.log(1e-10 + math.exp(-1.0 * 3) + math.exp(-1.5 * 0) + math.exp(-2.0 * 3)) + 3.0
    l1 = math.log(1e-10 + math.exp(-1.5 * 3) + math.exp(-2.0 * 3)) + 1.5 * 3
    out = get_objective("pro", list_size=3, sft_weight=0.0)(lists([[-1.0, -1.5, -2.0]], [[3, 3, 0]]))
    assert out.loss.item() == pytest.approx(l0 + l1, abs=1e-6)


def test_infonca_and_nca_anchor():
    # §1.4: r = [0.3, -0.2, 0.1, -0.4], r* = [8, 6, 5, 2], alpha = 1.
    scores, stars = [0.3, -0.2, 0.1, -0.4], [8, 6, 5, 2]
    p = softmax(stars)
    assert [round(x, 6) for x in p] == [0.842034, 0.113957, 0.041922, 0.002087]
    z = lse(*scores)
    infonca = -sum(pk * (x - z) for pk, x in zip(p, scores))
    nca = -sum(logsig(-x) for x in scores) / 4 - sum(pk * logsig(x) for pk, x in zip(p, scores))
    assert (round(infonca, 6), round(nca, 6)) == (1.139040, 1.264136)
    s = ref0([scores], [stars])
    assert get_objective("infonca", beta=1.0, temperature_alpha=1.0)(s).loss.item() == pytest.approx(infonca, abs=1e-6)
    assert get_objective("nca", beta=1.0, temperature_alpha=1.0)(s).loss.item() == pytest.approx(nca, abs=1e-6)


def test_best_bonus_breaks_a_tie_for_best_in_favour_of_the_first():
    s = ref0([[0.3, -0.2, 0.1]], [[5, 5, 2]])
    p = softmax([5.01 / 0.01, 5 / 0.01, 2 / 0.01])  # the code's +0.01 on the first best
    z = lse(0.3, -0.2, 0.1)
    out = get_objective("infonca", beta=1.0, list_size=3, temperature_alpha=0.01, best_bonus=0.01)(s)
    # (float32 holds 5.01 / 0.01 to within ~3e-5 of 501, hence the tolerance)
    assert out.loss.item() == pytest.approx(-sum(pk * (x - z) for pk, x in zip(p, (0.3, -0.2, 0.1))), abs=1e-5)
    # Without it the tied best share the weight equally.
    even = get_objective("infonca", beta=1.0, list_size=3, temperature_alpha=0.01)(s).loss.item()
    assert even == pytest.approx(-0.5 * (0.3 - z) - 0.5 * (-0.2 - z), abs=1e-6)


def test_exo_anchor():
    # Derived: s = [0.2, 0.5, -0.1], r* = [1.0, 0.5, -1.0], beta_r = 0.5 -> KL(softmax(s) || softmax(2 r*)).
    p, q = softmax([0.2, 0.5, -0.1]), softmax([2.0, 1.0, -2.0])
    by_hand = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    out = get_objective("exo", beta=1.0, list_size=3, beta_r=0.5)(ref0([[0.2, 0.5, -0.1]], [[1.0, 0.5, -1.0]]))
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx(0.652819, abs=1e-6)


def test_mpo_anchor():
    # Derived: s = [0.2, 0.5, -0.1, 0.4], r* = [8, 6, 5, 1]: mean 5, chosen {0, 1}, deviation [3, 1, 0, -4];
    # weights exp(alpha * deviation), signed (REFA's restatement of MPO, eq. 5).
    alpha = 0.5
    weighted = [0.2 + 1.5, 0.5 + 0.5, -0.1 + 0.0, 0.4 - 2.0]
    by_hand = -math.log((math.exp(weighted[0]) + math.exp(weighted[1])) / sum(math.exp(w) for w in weighted))
    out = get_objective("mpo", beta=1.0, alpha=alpha)(ref0([[0.2, 0.5, -0.1, 0.4]], [[8, 6, 5, 1]]))
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx(0.126717, abs=1e-6)


def test_mpo_at_two_responses_is_dpo_shifted_by_the_weighted_reward_gap():
    # K = 2: -log s(beta D + alpha (r*_w - r*_l)), here beta 0.5, alpha 0.3 and rewards 7 and 2 (a shift of 1.5).
    out = get_objective("mpo", beta=0.5, list_size=2, alpha=0.3)(as_lists((7.0, 2.0)))
    D = (CHOSEN - REF_C) - (REJECTED - REF_R)
    by_hand = sum(-logsig(0.5 * d + 0.3 * 5.0) for d in D.tolist()) / 3
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-6)


def test_mpo_absolute_deviation_anchor():
    # The same list with weights exp(alpha |deviation|): |deviation| [3, 1, 0, 4].
    weighted = [0.2 + 1.5, 0.5 + 0.5, -0.1 + 0.0, 0.4 + 2.0]
    by_hand = -math.log((math.exp(weighted[0]) + math.exp(weighted[1])) / sum(math.exp(w) for w in weighted))
    out = get_objective("mpo", beta=1.0, alpha=0.5, deviation="absolute")(ref0([[0.2, 0.5, -0.1, 0.4]], [[8, 6, 5, 1]]))
    assert out.loss.item() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx(0.898540, abs=1e-6)


def test_mpo_list_with_equal_labels_contributes_nothing():
    out = get_objective("mpo", beta=1.0, list_size=3)(ref0([[0.2, 0.5, -0.1]], [[4, 4, 4]]))
    assert out.loss.item() == 0.0


# ---------------------------------------------------------------------------------------------------------
# K = 2 reductions to the pairwise objectives, exactly


CHOSEN, REJECTED = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([-0.2, 0.4, 1.5])
REF_C, REF_R = torch.tensor([0.1, -1.0, -0.5]), torch.tensor([0.0, 0.1, 1.0])
PAIR = PairScores(CHOSEN, REJECTED, REF_C, REF_R)


def as_lists(labels=(1.0, 0.0)):
    """The pairs above as lists of two, the rejected answer first (so that nothing relies on position)."""
    return ListScores(torch.stack([REJECTED, CHOSEN], 1), torch.tensor([[labels[1], labels[0]]] * 3),
                      torch.stack([REF_R, REF_C], 1))


def test_list_mle_sft_term_is_the_best_responses_per_token_nll():
    # Row 1: best by label is entry 1 (label 3): NLL 0.8 / 4 = 0.2. Row 2: entry 1 is padded, entries 0 and 2
    # tie for best and the first in data order counts: NLL 3.0 / 3 = 1.0. Mean over the lists: 0.6.
    nan = float("nan")
    scores = torch.tensor([[-1.2, -0.8, -2.0], [-3.0, -1.0, -6.0]])
    s = ListScores(scores, torch.tensor([[1.0, 3.0, 2.0], [2.0, nan, 2.0]]), torch.zeros(2, 3),
                   torch.tensor([[2.0, 4.0, 5.0], [3.0, 1.0, 2.0]]), torch.tensor([[1, 1, 1], [1, 0, 1]]).bool())
    # Plackett-Luce by hand (beta 1, reference 0), label order [1, 2, 0] and [0, 2].
    row1 = -(-0.8 - lse(-0.8, -2.0, -1.2)) - (-2.0 - lse(-2.0, -1.2))
    row2 = -(-3.0 - lse(-3.0, -6.0))
    preference = (row1 + row2) / 2
    out = get_objective("list_mle", beta=1.0, list_size=3, sft_weight=2.0)(s)
    assert out.metrics["loss/preference"].item() == pytest.approx(preference, abs=1e-6)
    assert out.metrics["loss/sft"].item() == pytest.approx(0.6, abs=1e-6)
    assert out.loss.item() == pytest.approx(preference + 2.0 * 0.6, abs=1e-6)
    off = get_objective("list_mle", beta=1.0, list_size=3)(s)  # off by default: the loss alone, nothing logged
    assert off.loss.item() == pytest.approx(preference, abs=1e-6)
    assert "loss/sft" not in off.metrics and "loss/preference" not in off.metrics


def test_list_mle_with_sft_at_two_responses_is_dpo_with_sft():
    lengths = torch.tensor([[3.0, 2.0], [1.0, 4.0], [2.0, 2.0]])  # [rejected, chosen], as as_lists orders them
    pair = PairScores(CHOSEN, REJECTED, REF_C, REF_R, lengths[:, 1], lengths[:, 0])
    listed = as_lists()
    listed = ListScores(listed.scores, listed.labels, listed.ref, lengths)
    dpo = get_objective("dpo", beta=0.5, sft_weight=1.5)(pair)
    pl = get_objective("list_mle", beta=0.5, list_size=2, sft_weight=1.5)(listed)
    for key in ("loss/preference", "loss/sft"):
        assert pl.metrics[key].item() == pytest.approx(dpo.metrics[key].item(), abs=1e-7)
    assert pl.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-6)


@pytest.mark.parametrize("name,hparams,pairwise,pair_hparams,labels", [
    ("lipo", {"loss_type": "pair_logistic"}, "dpo", {}, (1.0, 0.0)),
    ("lipo", {"loss_type": "pair_hinge"}, "hinge", {}, (1.0, 0.0)),
    ("lipo", {"loss_type": "list_mle"}, "dpo", {}, (1.0, 0.0)),
    ("infonca", {"temperature_alpha": 1e-4}, "dpo", {}, (1.0, 0.0)),  # a one-hot target
    ("nca", {"temperature_alpha": 1e-4}, "nca_pair", {}, (1.0, 0.0)),
    ("mpo", {"alpha": 0.0}, "dpo", {}, (7.0, 2.0)),  # no deviation weights: DPO
    ("mpo", {"alpha": 1.0, "deviation": "absolute"}, "dpo", {}, (7.0, 2.0)),  # equal weights at K = 2 cancel
    # exo_pair's target (1 - eps, eps) is softmax(r*) for r* = log of it.
    ("exo", {"beta_r": 1.0}, "exo_pair", {"label_smoothing": 1e-3}, (math.log1p(-1e-3), math.log(1e-3))),
    ("exo", {"beta_r": 1.0}, "exo_pair", {"label_smoothing": 0.2}, (math.log(0.8), math.log(0.2))),
])
def test_at_two_responses_it_is_the_pairwise_objective(name, hparams, pairwise, pair_hparams, labels):
    for beta in (0.1, 0.7):
        pair = get_objective(pairwise, beta=beta, **pair_hparams)(PAIR)
        listed = get_objective(name, beta=beta, list_size=2, **hparams)(as_lists(labels))
        assert listed.loss.item() == pytest.approx(pair.loss.item(), rel=1e-6, abs=1e-7)
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert listed.metrics[key].item() == pytest.approx(pair.metrics[key].item(), abs=1e-7)


@pytest.mark.parametrize("discount,inverse", [("log2", lambda r: 1 / math.log2(1 + r)), ("ln", lambda r: 1 / math.log1p(r))])
def test_lipo_lambda_at_two_responses_is_dpo_times_a_constant(discount, inverse):
    psi = (0.9, 0.1)
    factor = abs(2 ** psi[0] - 2 ** psi[1]) * abs(inverse(1) - inverse(2))  # |G1 - G2| (1 - 1/log2 3) for log2
    if discount == "log2":
        assert factor == pytest.approx((2**0.9 - 2**0.1) * (1 - 1 / math.log2(3)))
    dpo = get_objective("dpo", beta=0.5)(PAIR).loss.item()
    lam = get_objective("lipo", beta=0.5, list_size=2, discount=discount)(as_lists(psi)).loss.item()
    assert lam == pytest.approx(factor * dpo, rel=1e-6)


def test_pro_at_two_responses_is_simpo_with_the_reward_gap_as_beta():
    # L = log(1e-10 + e^{T m_1} + e^{T m_2}) - T m_1 = -log s(T (m_1 - m_2)) up to the 1e-10, T = r*_1 - r*_2.
    lengths = torch.tensor([[3.0, 2.0], [1.0, 4.0], [2.0, 2.0]])
    listed = ListScores(torch.stack([CHOSEN, REJECTED], 1), torch.tensor([[2.5, 1.0]] * 3), lengths=lengths)
    pair = PairScores(CHOSEN, REJECTED, chosen_len=lengths[:, 0], rejected_len=lengths[:, 1])
    simpo = get_objective("simpo", beta=1.5, gamma=0.0)(pair).loss.item()
    assert get_objective("pro", list_size=2, sft_weight=0.0)(listed).loss.item() == pytest.approx(simpo, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------
# Every list objective: padding, ties, extremes, gradients


# An objective that reads tokens (tpo_tree's step weights) runs here on sequence scores, without them; its
# token-level form has the same checks in tests/test_trees.py.
LIST_CASES = [(n, {} if get_objective(n).token_needs is None else {"step_weights": False}) for n in LIST_OBJECTIVES] + [
    ("lipo", {"loss_type": t}) for t in ("pair_logistic", "pair_hinge", "list_mle", "softmax")]
LIST_IDS = [n + "".join(f"-{v}" for v in h.values()) for n, h in LIST_CASES]


@pytest.mark.parametrize("name,hparams", LIST_CASES, ids=LIST_IDS)
def test_a_padded_entry_takes_no_part_in_any_list_objective(name, hparams):
    scores, ref = [[0.4, -0.3, 1.1], [-2.0, 0.5, 0.7]], [[0.1, 0.2, -0.4], [-1.0, 0.3, 0.0]]
    labels, lengths = [[2.0, 3.0, 1.0], [1.0, 1.0, 4.0]], [[2.0, 3.0, 1.0], [1.0, 4.0, 2.0]]
    objective = get_objective(name, **hparams)
    short = objective(ListScores(*(torch.tensor(x) for x in (scores, labels, ref, lengths))))
    # The same lists with a junk entry inserted at position 1 (score, reference, length and a NaN label) masked off.
    pad = lambda rows, junk: [r[:1] + [junk] + r[1:] for r in rows]  # noqa: E731
    padded = ListScores(torch.tensor(pad(scores, 9.0)), torch.tensor(pad(labels, float("nan"))),
                        torch.tensor(pad(ref, -7.0)), torch.tensor(pad(lengths, 5.0)),
                        torch.tensor([[True, False, True, True]] * 2))
    out = objective(padded)
    assert out.loss.item() == pytest.approx(short.loss.item(), rel=1e-6, abs=1e-7)
    for key, value in short.metrics.items():
        assert out.metrics[key].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7), key


@pytest.mark.parametrize("name,hparams", LIST_CASES, ids=LIST_IDS)
def test_finite_with_gradients_at_extreme_scores_for_every_list_objective(name, hparams):
    objective = get_objective(name, **hparams)
    scores = torch.tensor([[800.0, -800.0, 3.0, -1e4], [-800.0, 800.0, 1e4, 0.0]], requires_grad=True)
    ref = torch.tensor([[-800.0, 800.0, 0.0, 1e4], [800.0, -800.0, -1e4, 0.0]])
    labels = torch.tensor([[4.0, 1.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = objective(ListScores(scores, labels, ref, mask=mask))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(scores.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
    assert scores.grad[1, 3] == 0  # the padded entry gets no gradient


@pytest.mark.parametrize("name,hparams", LIST_CASES, ids=LIST_IDS)
def test_raising_the_best_response_lowers_every_list_loss(name, hparams):
    scores = torch.tensor([[0.4, -0.3, 1.1, 0.2]], requires_grad=True)
    s = ListScores(scores, torch.tensor([[4.0, 2.0, 1.0, 0.0]]), torch.zeros(1, 4))
    get_objective(name, **hparams)(s).loss.backward()
    assert scores.grad[0, 0] < 0 and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("name", ["lipo", "list_mle"])
def test_equal_labels_make_no_pair(name):
    # Two tied responses: LiPO makes no pair of them (loss 0); list-MLE orders them as the data does.
    tied = get_objective(name, beta=1.0, list_size=2)(ref0([[0.3, -0.2]], [[1.0, 1.0]]))
    expected = 0.0 if name == "lipo" else -(0.3 - lse(0.3, -0.2))
    assert tied.loss.item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("name,hparams,named", [
    ("lipo", {"loss_type": "ranknet"}, "loss_type"), ("lipo", {"discount": "log10"}, "discount"),
    ("lipo", {"beta": 0.0}, "beta"), ("lipo", {"list_size": 1}, "list_size"),
    ("pro", {"sft_weight": -1.0}, "sft_weight"), ("list_mle", {"sft_weight": -0.5}, "sft_weight"), ("pro", {"list_size": 1}, "list_size"),
    ("infonca", {"temperature_alpha": 0.0}, "temperature_alpha"), ("nca", {"best_bonus": -0.01}, "best_bonus"),
    ("exo", {"beta_r": 0.0}, "beta_r"), ("mpo", {"alpha": -1.0}, "alpha"), ("mpo", {"deviation": "abs"}, "deviation"),
])
def test_bad_hyper_parameters_are_refused_naming_them(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective(name, **hparams)


@pytest.mark.parametrize("name", ["lipo", "pro"])
def test_pack_reads_the_views_labels_and_mask_of_a_batch(name):
    # What the module hands an objective: one SequenceScores per view, reference scores by view, the batch.
    objective = get_objective(name, list_size=3)
    policy = {f"response_{k}": SequenceScores(torch.tensor([-1.0 - k, -2.0 + k]), torch.tensor([2.0, 1.0]))
              for k in range(3)}
    ref = {name_: (s.score - 0.5 if objective.needs_reference else None) for name_, s in policy.items()}
    batch = {"labels": [[3.0, 2.0, 1.0], [1.0, float("nan"), 0.0]], "mask": [[1, 1, 1], [1, 0, 1]]}
    s = objective.pack(policy, ref, batch)
    assert s.scores.tolist() == [[-1.0, -2.0, -3.0], [-2.0, -1.0, 0.0]] and s.lengths[0].tolist() == [2.0] * 3
    assert s.mask.tolist() == [[True, True, True], [True, False, True]]
    assert s.has_reference == objective.needs_reference
    # Without a mask column, a NaN label marks the padded entry.
    assert objective.pack(policy, ref, {"labels": batch["labels"]}).mask.tolist() == s.mask.tolist()
    assert torch.isfinite(objective(s).loss)
