"""Objectives against numbers worked by hand, plus gradient-sign, symmetry and robustness checks.

Every expected value is computed here with plain ``math`` from the paper's equation, never with the torch
code under test.
"""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import pytest
import torch

import alignsuite.objectives as objectives
from alignsuite.objectives import available_objectives, get_objective
from alignsuite.objectives.reference_free import log1mexp
from alignsuite.scores import ListScores, PairScores, Scores, TokenScores, UnpairedScores

B = 0.1  # the default beta of every reference-based objective


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# (chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
# pair 0: u_w = 0.5, u_l = -0.5, D = 1.0 (policy agrees with the label)
# pair 1: u_w = -1.0, u_l = 0.5, D = -1.5 (policy disagrees)
PAIRS = [(-3.0, -5.0, -3.5, -4.5, 2, 4), (-6.0, -4.0, -5.0, -4.5, 3, 1)]
# A reward per side for objectives that read one (smpo's extra_columns); the others ignore scores.extra.
# The chosen side scores higher, as in a reward-ordered pair.
REWARDS = {"reward_chosen": 0.25, "reward_rejected": 0.20}
# A soft preference for objectives that regress on one (irepo's extra_columns): the chosen side usually wins.
PREFERENCE = 0.8
# Each side's estimated win rate against the policy (sppo's extra_columns; hand-worked in test_online_objectives.py).
WIN_RATES = {"chosen_win_rate": 0.7, "rejected_win_rate": 0.3}
# The chosen row's prompt scores, as a token backbone returns them for View("chosen", score_prompt=True)
# (ORPO's NLL over prompt + answer): (log-likelihood of the prompt tokens after the first, their count).
PROMPT_SCORES = [(-4.0, 3), (-2.5, 1)]


def make_scores(pairs=PAIRS, *, grad=False, reference=True, dtype=torch.float64, prompt=True) -> PairScores:
    cols = [torch.tensor(col, dtype=dtype) for col in zip(*pairs)]
    chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len = cols
    if grad:
        chosen.requires_grad_(True)
        rejected.requires_grad_(True)
    numbers = {**REWARDS, **WIN_RATES, "preference": PREFERENCE}
    extra = {k: torch.full((len(pairs),), v, dtype=dtype) for k, v in numbers.items()}
    # inpo's previous iterate (extra reference "previous"): halfway between the reference and the policy.
    extra["ref_previous_chosen"] = (chosen.detach() + ref_chosen) / 2
    extra["ref_previous_rejected"] = (rejected.detach() + ref_rejected) / 2
    # A gold answer for the triple objectives (tpo's View("gold")): half a nat likelier than the chosen one.
    extra["gold"], extra["gold_len"] = chosen.detach() + 0.5, chosen_len
    if prompt:
        prompts = PROMPT_SCORES if pairs is PAIRS else [(-1.0, 2)] * len(pairs)
        extra["chosen_prompt"], extra["chosen_prompt_len"] = (torch.tensor(c, dtype=dtype) for c in zip(*prompts))
    # mdpo's third view, the chosen answer under a corrupted image: scored here as an image-blind model would
    # score it, like the rejected answer (its hand-worked values are in test_vlm.py).
    extra["chosen_corrupted"], extra["ref_chosen_corrupted"] = rejected, ref_rejected
    # srpo's four revision views (each answer under a prompt that shows one of the two for revision): each
    # answer's own scores, shifted by a little per view (its hand-worked values are in test_self_improving.py).
    for k, view in enumerate(("chosen_given_chosen", "rejected_given_chosen", "chosen_given_rejected",
                              "rejected_given_rejected")):
        answer, ref_answer = (chosen, ref_chosen) if view.startswith("chosen") else (rejected, ref_rejected)
        extra[view], extra[f"ref_{view}"] = answer.detach() + 0.1 * k, ref_answer
    # A prompt embedding per pair (rpo_relative's extra column; its hand-worked values are in test_relative.py).
    extra["prompt_embedding"] = torch.tensor([[1.0, 0.5 * i, 0.2 * (i % 2)] for i in range(len(pairs))], dtype=dtype)
    # Each pair's group of annotators (gr_dpo's extra column; its hand-worked values are in test_group_robust.py).
    extra["group"] = torch.tensor([i % 2 for i in range(len(pairs))], dtype=dtype)
    return PairScores(
        chosen,
        rejected,
        ref_chosen if reference else None,
        ref_rejected if reference else None,
        chosen_len=chosen_len,
        rejected_len=rejected_len,
        extra=extra,
    )


def terms(c, r, rc, rr, nw, nl) -> dict:
    """The quantities the equations are written in, for one pair."""
    return dict(uw=c - rc, ul=r - rr, lw=c, ll=r, nw=nw, nl=nl, mw=c / nw, ml=r / nl)


def hand_mean(per_pair, pairs=PAIRS) -> float:
    return sum(per_pair(**terms(*p)) for p in pairs) / len(pairs)


TOKEN_LEVEL = [n for n in available_objectives()
               if get_objective(n).token_needs is not None and get_objective(n).row_kind == "pairs"]
PAIRWISE = [n for n in available_objectives() if get_objective(n).row_kind == "pairs" and n not in TOKEN_LEVEL]
UNPAIRED = [n for n in available_objectives() if get_objective(n).row_kind == "unpaired"]
REFERENCE_FREE = {"simpo", "orpo", "asft", "cpo", "mapo", "tpo", "tpo_l", "repo", "re_simpo", "re_cpo", "arpo"}
CHOSEN_ONLY = {"wspo"}  # losses that read the chosen answer alone: the rejected one gets no gradient
REFERENCE_FREE_LISTS = {"pro"}  # list objectives: the generic list checks read needs_reference themselves


def make_token_scores(objective, scale: float = 1.0) -> TokenScores:
    """Random per-token scores with everything a token-level objective may read (log-probs of size ``scale``)."""
    g = torch.Generator().manual_seed(0)

    def t(grad=False):
        return (-torch.rand(2, 3, generator=g) * scale).requires_grad_(grad)

    mask_w, mask_l = torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.ones(2, 3)
    extra = {"chosen_self_norm": -torch.rand(2, 3, generator=g), "rejected_self_norm": -torch.rand(2, 3, generator=g),
             "chosen_ref_hidden": torch.randn(2, 3, 2, 4, generator=g) * scale,
             "rejected_ref_hidden": torch.randn(2, 3, 2, 4, generator=g) * scale,
             "chosen_hidden": torch.randn(2, 3, 4, generator=g) * scale,
             "rejected_hidden": torch.randn(2, 3, 4, generator=g) * scale}
    for name in objective.extra_references:  # further references' token log-probs (WSPO's weak pair)
        extra[f"ref_{name}_chosen"], extra[f"ref_{name}_rejected"] = t(), t()
    if hasattr(objective, "build"):  # SparsePO's mask network (2 hidden states of width 4), FPO's SAE
        objective.build(2, 4)
    return TokenScores(t(True), t(True), mask_w, mask_l, t(), t(), -t() / scale, -t() / scale, extra=extra)


def with_list_tokens(objective, s: ListScores) -> ListScores:
    """For a list objective that reads tokens (``tpo_tree``'s step weights): each response's scores spread over two
    tokens, one step each, with hidden states as large as the scores; gradients still reach ``s.scores``."""
    if objective.token_needs is None:
        return s
    b, k = s.scores.shape
    halves = [(t[..., None] / 2).expand(b, k, 2) if t is not None else None for t in (s.scores, s.ref)]
    hidden = torch.randn(b, k, 2, 3, generator=torch.Generator().manual_seed(1)) * s.scores.detach().abs().max()
    s.extra.update(token_logps=halves[0], ref_token_logps=halves[1], token_mask=torch.ones(b, k, 2, dtype=torch.bool),
                   hidden=hidden, step_index=torch.tensor([0, 1]).expand(b, k, 2))
    return s


def accepts(name: str, param: str) -> bool:
    return param in inspect.signature(type(get_objective(name)).__init__).parameters


# ---------------------------------------------------------------------------------------------------------
# Hand-worked values: (case id, objective name, hparams, per-pair loss, per-pair chosen reward)


def _alpha_fp(u, a):  # f'(r) of the alpha-divergence in Wang et al. 2023, Table 1: (1 - r^-a) / a
    return (1 - math.exp(-a * u)) / a


def _orpo_odds(mw, ml, **_):
    log_odds = (mw - ml) - (math.log(1 - math.exp(mw)) - math.log(1 - math.exp(ml)))
    return -0.1 * logsig(log_odds)


def _orpo(mw, ml, **_):  # with the NLL per sequence (nll="completion_per_sequence"), it decomposes per pair
    return -mw + _orpo_odds(mw, ml)


def _discopop(uw, ul, tau=0.05, **_):
    z = B * (uw - ul)
    m = sig(z / tau)
    return (1 - m) * -logsig(z) + m * math.exp(-z)


def _exo(uw, ul, eps=1e-3, **_):
    p = sig(B * (uw - ul))
    return p * (math.log(p) - math.log(1 - eps)) + (1 - p) * (math.log(1 - p) - math.log(eps))


EPS = 0.1
HAND = [
    ("dpo", "dpo", {}, lambda uw, ul, **_: -logsig(B * (uw - ul)), None),
    ("dpo-forward_kl", "dpo", {"f_divergence": "forward_kl"},
     lambda uw, ul, **_: -logsig(B * (-math.exp(-uw) + math.exp(-ul))), None),
    ("dpo-js", "dpo", {"f_divergence": "js_divergence"},
     lambda uw, ul, **_: -logsig(B * (math.log(2 * sig(uw)) - math.log(2 * sig(ul)))), None),
    ("dpo-alpha0.5", "dpo", {"f_divergence": "alpha_divergence", "alpha": 0.5},
     lambda uw, ul, **_: -logsig(B * (_alpha_fp(uw, 0.5) - _alpha_fp(ul, 0.5))), None),
    # alpha = 0.25 tells the paper's parameterisation apart from the mirrored one (alpha <-> 1 - alpha)
    ("dpo-alpha0.25", "dpo", {"f_divergence": "alpha_divergence", "alpha": 0.25},
     lambda uw, ul, **_: -logsig(B * (_alpha_fp(uw, 0.25) - _alpha_fp(ul, 0.25))), None),
    ("robust", "robust", {"label_smoothing": EPS},
     lambda uw, ul, **_: (-(1 - EPS) * logsig(B * (uw - ul)) + EPS * logsig(-B * (uw - ul))) / (1 - 2 * EPS), None),
    ("cdpo", "cdpo", {"label_smoothing": EPS},
     lambda uw, ul, **_: -(1 - EPS) * logsig(B * (uw - ul)) - EPS * logsig(-B * (uw - ul)), None),
    ("ipo", "ipo", {}, lambda uw, ul, nw, nl, **_: (uw / nw - ul / nl - 1 / (2 * B)) ** 2,
     lambda uw, nw, **_: B * uw / nw),
    ("ipo-summed", "ipo", {"length_normalize": False}, lambda uw, ul, **_: (uw - ul - 1 / (2 * B)) ** 2, None),
    ("hinge", "hinge", {}, lambda uw, ul, **_: max(0.0, 1 - B * (uw - ul)), None),
    ("hinge-beta2", "hinge", {"beta": 2.0}, lambda uw, ul, **_: max(0.0, 1 - 2.0 * (uw - ul)),
     lambda uw, **_: 2.0 * uw),
    ("nca_pair", "nca_pair", {},
     lambda uw, ul, **_: -logsig(B * uw) - 0.5 * logsig(-B * uw) - 0.5 * logsig(-B * ul), None),
    ("bco_pair", "bco_pair", {}, lambda uw, ul, **_: -logsig(B * uw) - logsig(-B * ul), None),
    ("sppo_hard", "sppo_hard", {}, lambda uw, ul, **_: (uw - 1 / (2 * B)) ** 2 + (ul + 1 / (2 * B)) ** 2, None),
    ("exo_pair", "exo_pair", {}, _exo, None),
    ("exo_pair-eps0.2", "exo_pair", {"label_smoothing": 0.2}, lambda **t: _exo(eps=0.2, **t), None),
    ("apo_zero", "apo_zero", {}, lambda uw, ul, **_: (1 - sig(B * uw)) + sig(B * ul), None),
    ("apo_down", "apo_down", {}, lambda uw, ul, **_: sig(B * uw) + (1 - sig(B * (uw - ul))), None),
    ("discopop", "discopop", {}, _discopop, None),
    ("discopop-tau0.5", "discopop", {"discopop_tau": 0.5}, lambda **t: _discopop(tau=0.5, **t), None),
    ("simpo", "simpo", {}, lambda mw, ml, **_: -logsig(2.0 * (mw - ml) - 1.0), lambda mw, **_: 2.0 * mw),
    ("simpo-gamma0.3", "simpo", {"beta": 2.5, "gamma": 0.3}, lambda mw, ml, **_: -logsig(2.5 * (mw - ml) - 0.3),
     lambda mw, **_: 2.5 * mw),
    # The SFT terms per sequence here; their default (pooled) conventions: test_sft_term_conventions.
    ("orpo", "orpo", {"nll": "completion_per_sequence"}, _orpo, lambda mw, **_: 0.1 * mw),
    ("cpo", "cpo", {"nll": "completion_per_sequence"}, lambda lw, ll, mw, **_: -logsig(0.1 * (lw - ll)) - mw,
     lambda lw, **_: 0.1 * lw),
    ("cpo-smoothed", "cpo", {"label_smoothing": 0.2, "cpo_alpha": 0.5, "nll": "completion_per_sequence"},
     lambda lw, ll, mw, **_: -0.8 * logsig(0.1 * (lw - ll)) - 0.2 * logsig(-0.1 * (lw - ll)) - 0.5 * mw,
     lambda lw, **_: 0.1 * lw),
]


@pytest.mark.parametrize("case", HAND, ids=[c[0] for c in HAND])
def test_hand_worked_value(case):
    _, name, hparams, per_pair, chosen_reward = case
    out = get_objective(name, **hparams)(make_scores(reference=name not in REFERENCE_FREE))
    assert out.loss.item() == pytest.approx(hand_mean(per_pair), rel=1e-5, abs=1e-6)
    chosen_reward = chosen_reward or (lambda uw, **_: B * uw)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(hand_mean(chosen_reward), rel=1e-5, abs=1e-6)


# AOT couples the pairs of a batch, so it gets a batch whose sorting actually reorders things:
# policy margins l_w - l_l = [2, -2, 0.5], reference margins = [-1, 3, 0].
AOT_PAIRS = [(-3.0, -5.0, -5.0, -4.0, 1, 1), (-6.0, -4.0, -3.0, -6.0, 1, 1), (-2.0, -2.5, -4.0, -4.0, 1, 1)]


def test_aot_hand_worked():
    # sorted policy margins [-2, 0.5, 2] minus sorted reference margins [-1, 0, 3] -> d = [-1, 0.5, -1]
    d = [-1.0, 0.5, -1.0]
    out = get_objective("aot")(make_scores(AOT_PAIRS))
    assert out.loss.item() == pytest.approx(sum(-logsig(B * x) for x in d) / 3, rel=1e-6)
    smoothed = get_objective("aot", label_smoothing=0.2)(make_scores(AOT_PAIRS))
    expected = sum(-0.8 * logsig(B * x) - 0.2 * logsig(-B * x) for x in d) / 3
    assert smoothed.loss.item() == pytest.approx(expected, rel=1e-6)


def test_aot_unpaired_hand_worked():
    # u_w = [2, -3, 2] -> sorted [-3, 2, 2];  u_l = [-1, 2, 1.5] -> sorted [-1, 1.5, 2];  d = [-2, 0.5, 0]
    d = [-2.0, 0.5, 0.0]
    out = get_objective("aot_unpaired")(make_scores(AOT_PAIRS))
    assert out.loss.item() == pytest.approx(sum(-logsig(B * x) for x in d) / 3, rel=1e-6)


# KTO batch: (logps, ref_logps, label, kl, ref_kl). kl - ref_kl = [0.2, -0.3, 0.3, 0.2] -> z0 = 0.1.
KTO_ROWS = [(-3.0, -3.5, 1.0, -4.0, -4.2), (-5.0, -4.5, 0.0, -6.0, -5.7), (-4.0, -4.0, 1.0, -3.0, -3.3),
            (-2.0, -2.5, 0.0, -5.0, -5.2)]


def make_unpaired(rows=KTO_ROWS, *, grad=False) -> UnpairedScores:
    logps, ref, label, kl, ref_kl = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    if grad:
        logps.requires_grad_(True)
        kl.requires_grad_(True)
    return UnpairedScores(logps, label, ref_logps=ref, kl=kl, ref_kl=ref_kl)


def kto_hand(rows, w_d=1.0, w_u=1.0, beta=B):
    z0 = max(0.0, sum(k - rk for *_, k, rk in rows) / len(rows))
    losses = []
    for lp, ref, label, *_ in rows:
        u = lp - ref
        losses.append(w_d * (1 - sig(beta * (u - z0))) if label else w_u * (1 - sig(beta * (z0 - u))))
    return sum(losses) / len(losses), z0


def test_kto_hand_worked():
    out = get_objective("kto")(make_unpaired())
    expected, z0 = kto_hand(KTO_ROWS)
    assert z0 == pytest.approx(0.1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["kl"].item() == pytest.approx(0.1, rel=1e-5)
    # u = [0.5, -0.5, 0, 0.5]; desirable rows 0, 2; undesirable rows 1, 3
    assert out.metrics["rewards/chosen"].item() == pytest.approx(B * (0.5 + 0.0) / 2)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(B * (-0.5 + 0.5) / 2)
    assert out.metrics["rewards/margins"].item() == pytest.approx(B * 0.25)
    # u - z0 = [0.4, -0.6, -0.1, 0.4]: row 0 right, row 1 right, row 2 wrong, row 3 wrong
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(0.5)
    assert out.metrics["count/desirable"].item() == 2 and out.metrics["count/undesirable"].item() == 2


def test_kto_weights():
    out = get_objective("kto", desirable_weight=1.3, undesirable_weight=0.7, beta=0.5)(make_unpaired())
    assert out.loss.item() == pytest.approx(kto_hand(KTO_ROWS, 1.3, 0.7, 0.5)[0], rel=1e-6)


def test_every_registered_name_has_a_hand_worked_test():
    covered = {c[1] for c in HAND} | {"aot", "aot_unpaired", "kto"}
    covered |= {"mapo", "smpo", "seppo", "diffusion_kto"}  # hand-worked in test_diffusion_objectives.py
    covered |= {"mdpo"}  # hand-worked in test_vlm.py
    # Other test files name theirs in a module-level HAND_WORKED tuple.
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HAND_WORKED" for t in node.targets):
                covered |= set(ast.literal_eval(node.value))
    assert set(available_objectives()) <= covered, sorted(set(available_objectives()) - covered)


# ---------------------------------------------------------------------------------------------------------
# Anchors and symmetries


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
def test_dpo_policy_equals_reference_gives_ln2(divergence):
    same = [(-3.0, -5.0, -3.0, -5.0, 2, 4), (-7.0, -1.0, -7.0, -1.0, 3, 1)]
    out = get_objective("dpo", f_divergence=divergence)(make_scores(same))
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("name", ["robust", "cdpo"])
def test_smoothed_dpo_at_zero_margin_gives_ln2(name):
    same = [(-3.0, -5.0, -3.0, -5.0, 2, 4)]
    assert get_objective(name, label_smoothing=0.3)(make_scores(same)).loss.item() == pytest.approx(math.log(2))


def swapped(pairs):
    return [(r, c, rr, rc, nl, nw) for c, r, rc, rr, nw, nl in pairs]


def test_dpo_swap_identity():
    # -log s(z) + log s(-z) = -z, so L(D) - L(-D) = -b D for each pair.
    dpo = get_objective("dpo")
    for pair in PAIRS:
        t = terms(*pair)
        diff = dpo(make_scores([pair])).loss.item() - dpo(make_scores(swapped([pair]))).loss.item()
        assert diff == pytest.approx(-B * (t["uw"] - t["ul"]), rel=1e-5)


def test_robust_is_unbiased_under_label_noise():
    eps = 0.2
    robust, dpo = get_objective("robust", label_smoothing=eps), get_objective("dpo")
    for pair in PAIRS:
        noisy = (1 - eps) * robust(make_scores([pair])).loss + eps * robust(make_scores(swapped([pair]))).loss
        assert noisy.item() == pytest.approx(dpo(make_scores([pair])).loss.item(), rel=1e-5)


def test_cdpo_is_dpo_averaged_over_the_flipped_label():
    eps = 0.2
    cdpo, dpo = get_objective("cdpo", label_smoothing=eps), get_objective("dpo")
    for pair in PAIRS:
        mix = (1 - eps) * dpo(make_scores([pair])).loss + eps * dpo(make_scores(swapped([pair]))).loss
        assert cdpo(make_scores([pair])).loss.item() == pytest.approx(mix.item(), rel=1e-5)


def test_alpha_divergence_interpolates_reverse_and_forward_kl():
    # Wang et al. 2023: alpha -> 0 is reverse KL (plain DPO), alpha -> 1 is forward KL.
    s = make_scores()
    loss = lambda **h: get_objective("dpo", **h)(s).loss.item()  # noqa: E731
    assert loss(f_divergence="alpha_divergence", alpha=1e-4) == pytest.approx(loss(), rel=1e-3)
    forward = loss(f_divergence="forward_kl")
    assert loss(f_divergence="alpha_divergence", alpha=0.9999) == pytest.approx(forward, rel=1e-3)


@pytest.mark.parametrize("name", PAIRWISE)
def test_swapping_the_pair_mirrors_the_reward_metrics(name):
    ref = name not in REFERENCE_FREE
    a = get_objective(name)(make_scores(PAIRS, reference=ref)).metrics
    b = get_objective(name)(make_scores(swapped(PAIRS), reference=ref)).metrics
    assert b["rewards/chosen"].item() == pytest.approx(a["rewards/rejected"].item())
    assert b["rewards/rejected"].item() == pytest.approx(a["rewards/chosen"].item())
    assert b["rewards/margins"].item() == pytest.approx(-a["rewards/margins"].item())
    assert b["rewards/accuracies"].item() == pytest.approx(1 - a["rewards/accuracies"].item())


@pytest.mark.parametrize("name", PAIRWISE)
def test_tie_counts_half_in_accuracy(name):
    tie = [(-3.0, -3.0, -4.0, -4.0, 2, 2), (-5.0, -5.0, -5.0, -5.0, 3, 3)]
    out = get_objective(name)(make_scores(tie, reference=name not in REFERENCE_FREE))
    assert out.metrics["rewards/accuracies"].item() == 0.5
    assert out.metrics["rewards/margins"].item() == 0.0


# ---------------------------------------------------------------------------------------------------------
# Gradient signs


# The denoising objectives' defaults (beta in the thousands, mapo's T = 1000) saturate the logistic at these
# LM-scale log-ratios, leaving float32 gradients of exactly 0; seppo's default criterion raises *both* sides on
# pairs it judges winners, by design. Their default behaviour is tested in test_diffusion_objectives.py.
LM_SCALE_HPARAMS = {
    "mapo": {"num_train_timesteps": 1},
    "seppo": {"beta": 0.1, "criterion": "always_loser"},
    "smpo": {"beta": 0.1},
    # Losses that stop (repo's hinge) or turn back (reward_aware_po's regression onto the reward gap, here 0.05) at
    # a margin these pairs already pass: set the margin or gap beyond them, so every pair still moves.
    "repo": {"gamma": 3.0},
    "reward_aware_po": {"gt_reward_scale": 100.0},
}


def grads(name, pairs=PAIRS, **hparams):
    hparams = {**LM_SCALE_HPARAMS.get(name, {}), **hparams}
    s = make_scores(pairs, grad=True, reference=name not in REFERENCE_FREE)
    get_objective(name, **hparams)(s).loss.backward()
    return s.chosen.grad, s.rejected.grad


@pytest.mark.parametrize("name", PAIRWISE)
def test_loss_falls_as_chosen_rises_and_rejected_falls(name):
    g_chosen, g_rejected = grads(name)
    if name == "arpo":
        # The first pair's per-token log-likelihoods lie 0.25 apart, under ln(1/0.9)/0.4 = 0.263: ARPO weighs that
        # rejected answer below 0 and, as it is the more likely per token, the weight's own gradient raises it too,
        # by design (test_arpo.py); the far pair's weight is 1, as in CPO.
        assert g_rejected[0] < 0 < g_rejected[1]
    else:
        assert (g_rejected > 0).all(), "lowering the rejected log-prob must lower the loss"
    if name == "apo_down":
        # APO-down lowers the chosen likelihood too, by design (here |u_w| < |D| in both pairs).
        assert (g_chosen > 0).all()
    else:
        assert (g_chosen < 0).all(), "raising the chosen log-prob must lower the loss"


@pytest.mark.parametrize("name", PAIRWISE)
def test_loss_falls_as_the_margin_widens(name):
    g_chosen, g_rejected = grads(name)
    # directional derivative along (chosen + t, rejected - t)
    assert (g_chosen - g_rejected < 0).all()


def test_discopop_is_non_convex_near_zero_margin():
    # At z = 0 the exponential branch's switch dominates: d L / d z = 0.784 > 0 for tau = 0.05 (worked by hand:
    # -5 ln 2 - 0.25 + 5 - 0.5). The paper's loss, not a bug; pushing z past a few tau restores the DPO sign.
    at_zero = [(-3.0, -5.0, -3.0, -5.0, 1, 1)]
    g_chosen, _ = grads("discopop", at_zero)
    assert g_chosen.item() == pytest.approx(B * (-5 * math.log(2) - 0.25 + 5 - 0.5) / 1, rel=1e-4)


def test_kto_gradient_sign():
    s = make_unpaired(grad=True)
    get_objective("kto")(s).loss.backward()
    desirable = s.label > 0.5
    assert (s.logps.grad[desirable] < 0).all() and (s.logps.grad[~desirable] > 0).all()


# ---------------------------------------------------------------------------------------------------------
# Flags, registry, metrics, hyper-parameters


def test_needs_reference_flags():
    for name in available_objectives():
        assert get_objective(name).needs_reference == (name not in REFERENCE_FREE | REFERENCE_FREE_LISTS), name


@pytest.mark.parametrize("name", sorted(REFERENCE_FREE))
def test_reference_free_objectives_ignore_reference_scores(name):
    without = get_objective(name)(make_scores(reference=False))
    with_ref = get_objective(name)(make_scores(reference=True))
    assert without.loss.item() == with_ref.loss.item()


def test_reference_based_objective_without_reference_raises():
    with pytest.raises(ValueError, match="dpo.*reference"):
        get_objective("dpo")(make_scores(reference=False))


def test_both_score_types_are_scores_with_the_same_reference_and_batch_answers():
    pair = PairScores(torch.zeros(3), torch.zeros(3))
    unpaired = UnpairedScores(torch.zeros(2), torch.ones(2), ref_logps=torch.zeros(2))
    assert isinstance(pair, Scores) and isinstance(unpaired, Scores)
    assert (pair.has_reference, pair.batch_size, pair.extra) == (False, 3, {})
    assert (unpaired.has_reference, unpaired.batch_size, unpaired.extra) == (True, 2, {})
    assert PairScores(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3)).has_reference


def test_unknown_objective_names_the_name():
    with pytest.raises(ValueError, match="no_such_loss"):
        get_objective("no_such_loss")


@pytest.mark.parametrize("name", available_objectives())
def test_metrics_present_detached_scalars(name):
    objective = get_objective(name)
    if name in TOKEN_LEVEL:
        s = make_token_scores(objective)
    elif objective.row_kind == "pairs":
        s = make_scores(grad=True, reference=name not in REFERENCE_FREE)
    elif objective.row_kind == "lists":
        g = torch.Generator().manual_seed(0)
        scores = torch.randn(3, objective.list_size, generator=g).requires_grad_()
        ref = torch.randn(3, objective.list_size, generator=g) if objective.needs_reference else None
        s = with_list_tokens(objective, ListScores(scores, torch.rand(3, objective.list_size, generator=g) * 5, ref))
    else:
        s = make_unpaired(grad=True)
    out = objective(s)
    assert out.loss.ndim == 0 and out.loss.requires_grad
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):  # TRL's names
        assert key in out.metrics, key
    assert not {"rewards/margin", "rewards/accuracy"} & set(out.metrics)
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad, key
        assert torch.isfinite(value), key


def test_orpo_logs_log_odds():
    out = get_objective("orpo")(make_scores(reference=False))
    lo = [terms(*p) for p in PAIRS]
    lo = [(t["mw"] - t["ml"]) - (math.log(1 - math.exp(t["mw"])) - math.log(1 - math.exp(t["ml"]))) for t in lo]
    assert out.metrics["log_odds_chosen"].item() == pytest.approx(sum(lo) / 2, rel=1e-5)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(sum(logsig(x) for x in lo) / 2, rel=1e-5)


def chosen_nll_by_hand(pairs=PAIRS):
    return sum(-c / nw for c, _, _, _, nw, _ in pairs) / len(pairs)


# The chosen NLL of PAIRS (l_w = -3, -6 over 2, 3 answer tokens; prompts -4, -2.5 over 3, 1 tokens), by hand:
NLL_BY_HAND = {
    "completion_per_sequence": (3 / 2 + 6 / 3) / 2,  # 1.75: each answer's per-token mean, then the mean
    "completion_pooled": (3 + 6) / (2 + 3),  # 1.8: one mean over the batch's answer tokens
    "prompt_and_completion_pooled": (3 + 6 + 4 + 2.5) / (2 + 3 + 3 + 1),  # 15.5 / 9: prompts' tokens too
}


@pytest.mark.parametrize("name", [n for n in PAIRWISE if accepts(n, "sft_weight")])
def test_sft_weight_adds_exactly_w_nll(name):
    ref = name not in REFERENCE_FREE
    base = get_objective(name)(make_scores(reference=ref)).loss.item()
    out = get_objective(name, sft_weight=0.7)(make_scores(reference=ref))
    nll = NLL_BY_HAND[get_objective(name).nll]  # per sequence, except where an official code pools (SimPO)
    assert out.loss.item() - base == pytest.approx(0.7 * nll, rel=1e-5)
    assert out.metrics["loss/sft"].item() == pytest.approx(nll, rel=1e-6)
    assert out.metrics["loss/preference"].item() == pytest.approx(base, rel=1e-6)


def test_cpo_alpha_weights_the_nll_and_orpo_always_has_it():
    s = make_scores(reference=False)
    diff = get_objective("cpo", cpo_alpha=2.0)(s).loss.item() - get_objective("cpo", cpo_alpha=0.0)(s).loss.item()
    assert diff == pytest.approx(2.0 * NLL_BY_HAND["completion_pooled"], rel=1e-5)
    assert "sft_weight" not in inspect.signature(objectives.ORPO.__init__).parameters
    orpo_nll = get_objective("orpo")(s).metrics["loss/sft"].item()
    assert orpo_nll == pytest.approx(NLL_BY_HAND["prompt_and_completion_pooled"], rel=1e-6)


def _simpo_pref(mw, ml, **_):
    return -logsig(2.0 * (mw - ml) - 1.0)


def _cpo_pref(lw, ll, **_):
    return -logsig(0.1 * (lw - ll))


@pytest.mark.parametrize(
    "name,hparams,convention,preference",
    [
        # defaults: the official code's convention (ORPO: xfactlab/orpo and TRL; CPO: TRL; SimPO: princeton-nlp)
        ("orpo", {}, "prompt_and_completion_pooled", _orpo_odds),
        ("orpo", {"nll": "completion_pooled"}, "completion_pooled", _orpo_odds),
        ("orpo", {"nll": "completion_per_sequence"}, "completion_per_sequence", _orpo_odds),
        ("cpo", {}, "completion_pooled", _cpo_pref),
        ("cpo", {"nll": "completion_per_sequence"}, "completion_per_sequence", _cpo_pref),
        ("simpo", {"sft_weight": 1.0}, "completion_pooled", _simpo_pref),
        ("simpo", {"sft_weight": 1.0, "nll": "completion_per_sequence"}, "completion_per_sequence", _simpo_pref),
    ],
)
def test_sft_term_conventions(name, hparams, convention, preference):
    objective = get_objective(name, **hparams)
    assert objective.nll == convention
    out = objective(make_scores(reference=False))
    assert out.metrics["loss/sft"].item() == pytest.approx(NLL_BY_HAND[convention], rel=1e-6)
    assert out.loss.item() == pytest.approx(hand_mean(preference) + NLL_BY_HAND[convention], rel=1e-6)


def test_sft_term_gradient_pooled_weights_tokens_alike():
    # pooled: d NLL / d l_w,i = -1 / sum n (every token of the batch alike); per sequence: -1 / (B n_i)
    s = make_scores(grad=True, reference=False)
    get_objective("cpo", cpo_alpha=1.0, beta=1e-9)(s).loss.backward()  # beta ~ 0: the preference term is flat
    torch.testing.assert_close(s.chosen.grad, torch.tensor([-1 / 5, -1 / 5], dtype=s.chosen.dtype), atol=1e-9, rtol=0)


def test_orpo_scores_the_chosen_prompt_only_when_its_nll_needs_it():
    assert [(v.name, v.score_prompt) for v in get_objective("orpo").views] == [("chosen", True), ("rejected", False)]
    for nll in ("completion_pooled", "completion_per_sequence"):
        assert not any(v.score_prompt for v in get_objective("orpo", nll=nll).views)
    for name in ("cpo", "simpo"):
        assert not any(v.score_prompt for v in get_objective(name).views)


def test_orpo_without_prompt_scores_names_the_option():
    with pytest.raises(ValueError, match="nll='completion_pooled'"):
        get_objective("orpo")(make_scores(reference=False, prompt=False))
    # the completion-only conventions need no prompt scores
    get_objective("orpo", nll="completion_pooled")(make_scores(reference=False, prompt=False))


@pytest.mark.parametrize("name", ["orpo", "cpo", "simpo"])
def test_unknown_nll_convention_is_named(name):
    with pytest.raises(ValueError, match="nll must be one of"):
        get_objective(name, nll="per_token")
    if name != "orpo":  # only ORPO's code counts the prompt
        with pytest.raises(ValueError, match="nll must be one of"):
            get_objective(name, nll="prompt_and_completion_pooled")


def test_simpo_defaults_follow_the_paper_not_trl():
    simpo = get_objective("simpo")
    assert simpo.beta == 2.0 and simpo.gamma == 1.0


EXTREMES = [(500.0, -500.0, -500.0, 500.0, 1, 1), (-500.0, 500.0, 500.0, -500.0, 1, 1),
            (-500.0, -500.0, 500.0, 500.0, 1, 1), (500.0, 500.0, -500.0, -500.0, 1, 1)]


@pytest.mark.parametrize(
    "name,hparams",
    [(n, {}) for n in available_objectives()]
    + [("dpo", {"f_divergence": d}) for d in ("forward_kl", "js_divergence", "alpha_divergence")]
    + [("simpo", {"sft_weight": 1.0})],
)
def test_finite_at_extreme_log_probs(name, hparams):
    objective = get_objective(name, **hparams)
    if name in TOKEN_LEVEL:
        s = make_token_scores(objective, scale=500.0)
        leaves = (s.chosen, s.rejected)
    elif objective.row_kind == "pairs":
        s = make_scores(EXTREMES, grad=True, reference=name not in REFERENCE_FREE, dtype=torch.float32)
        leaves = (s.chosen, s.rejected)
    elif objective.row_kind == "lists":
        k = objective.list_size
        scores = torch.tensor([[500.0, -500.0] * k, [-500.0, 500.0] * k])[:, :k].requires_grad_()
        ref = -scores.detach() if objective.needs_reference else None
        s = with_list_tokens(objective, ListScores(scores, torch.arange(k, 0, -1, dtype=torch.float).repeat(2, 1), ref))
        leaves = (s.scores,)
    else:
        rows = [(500.0, -500.0, 1.0, 500.0, -500.0), (-500.0, 500.0, 0.0, -500.0, 500.0)]
        s = make_unpaired(rows, grad=True)
        leaves = (s.logps,)
    out = objective(s)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for leaf in leaves:
        if leaf is not leaves[0] and name in CHOSEN_ONLY:
            assert leaf.grad is None
            continue
        assert torch.isfinite(leaf.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_losses_are_float32_under_bf16_scores():
    out = get_objective("dpo")(make_scores(dtype=torch.bfloat16))
    assert out.loss.dtype == torch.float32


def test_log1mexp_matches_math():
    xs = [-1e-5, -0.01, -0.5, -math.log(2), -0.7, -3.0, -30.0]
    got = log1mexp(torch.tensor(xs, dtype=torch.float32))
    for x, g in zip(xs, got.tolist()):
        assert g == pytest.approx(math.log(-math.expm1(x)), rel=1e-5)
    assert torch.isfinite(log1mexp(torch.tensor([0.0, 3.0]))).all()  # clamped just short of 0


def test_kto_reference_point_clamped_at_zero_and_detached():
    rows = [(r[0], r[1], r[2], r[3], r[4] + 1.0) for r in KTO_ROWS]  # kl - ref_kl now averages -0.9
    s = make_unpaired(rows, grad=True)
    out = get_objective("kto")(s)
    assert out.metrics["kl"].item() == 0.0
    assert out.loss.item() == pytest.approx(kto_hand(rows)[0], rel=1e-6)
    out.loss.backward()
    assert s.kl.grad is None  # no gradient flows into the KL estimate


def test_kto_reduce_argument():
    s = make_unpaired()
    kto = get_objective("kto")
    fixed = lambda values: torch.tensor(0.4, dtype=values.dtype)  # noqa: E731  (stands in for an all-reduce)
    by_argument = kto(s, reduce=fixed)
    assert by_argument.metrics["kl"].item() == pytest.approx(0.4)
    assert kto(s).metrics["kl"].item() != pytest.approx(0.4)  # nothing was left behind on the objective
    u = [0.5, -0.5, 0.0, 0.5]
    labels = [1, 0, 1, 0]
    expected = sum((1 - sig(B * (x - 0.4))) if y else (1 - sig(B * (0.4 - x))) for x, y in zip(u, labels)) / 4
    assert by_argument.loss.item() == pytest.approx(expected, rel=1e-6)


def test_kto_without_undesirable_examples_logs_zero_not_nan():
    rows = [r for r in KTO_ROWS if r[2] == 1.0]
    out = get_objective("kto")(make_unpaired(rows))
    assert out.metrics["rewards/rejected"].item() == 0.0
    assert out.metrics["count/undesirable"].item() == 0.0


def test_kto_tie_counts_half():
    rows = [(-3.0, -3.0, 1.0, -1.0, -1.0), (-3.0, -3.0, 0.0, -1.0, -1.0)]  # u = 0 = z0
    assert get_objective("kto")(make_unpaired(rows)).metrics["rewards/accuracies"].item() == 0.5


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_exo_pair_requires_positive_label_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        get_objective("exo_pair", label_smoothing=eps)


@pytest.mark.parametrize(
    "name,hparams,named",
    [
        ("dpo", {"beta": 0.0}, "beta"),
        ("dpo", {"sft_weight": -1.0}, "sft_weight"),
        ("dpo", {"f_divergence": "chi_squared"}, "f_divergence"),
        ("dpo", {"f_divergence": "alpha_divergence", "alpha": 1.0}, "alpha"),
        ("robust", {"label_smoothing": 0.5}, "label_smoothing"),
        ("cdpo", {"label_smoothing": -0.1}, "label_smoothing"),
        ("aot", {"label_smoothing": 0.7}, "label_smoothing"),
        ("exo_pair", {"label_smoothing": 0.5}, "label_smoothing"),
        ("discopop", {"discopop_tau": 0.0}, "discopop_tau"),
        ("simpo", {"gamma": -0.5}, "gamma"),
        ("orpo", {"beta": -0.1}, "beta"),
        ("cpo", {"cpo_alpha": -1.0}, "cpo_alpha"),
        ("cpo", {"label_smoothing": 0.5}, "label_smoothing"),
        ("kto", {"beta": 0.0}, "beta"),
        ("kto", {"desirable_weight": 0.0}, "desirable_weight"),
        ("kto", {"undesirable_weight": -1.0}, "undesirable_weight"),
    ],
)
def test_invalid_hyper_parameters_raise_naming_them(name, hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective(name, **hparams)


@pytest.mark.parametrize("name", available_objectives())
def test_constructible_from_a_recipe(name):
    # A YAML recipe writes class_path: alignsuite.objectives.<Class>; jsonargparse needs typed, defaulted args.
    cls = type(get_objective(name))
    assert getattr(objectives, cls.__name__) is cls
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        assert param.default is not inspect.Parameter.empty, f"{cls.__name__}.{param.name} has no default"
        assert param.annotation is not inspect.Parameter.empty, f"{cls.__name__}.{param.name} has no type"
