"""Relative Preference Optimisation (``rpo_relative``) against hand-worked values (research/families.md §1.7)."""

import math

import pytest
import torch

from alignsuite.objectives import get_objective
from alignsuite.scores import PairScores, SequenceScores

# Registered objectives whose values are worked by hand here (checked by test_objectives.py).
HAND_WORKED = ("rpo_relative",)


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def unit_pair(cos):
    """Two unit prompt embeddings at cosine similarity ``cos``."""
    return torch.tensor([[1.0, 0.0], [cos, math.sqrt(1 - cos**2)]])


def pairs(u_w, u_l, embedding=None):
    extra = {} if embedding is None else {"prompt_embedding": embedding}
    n = len(u_w)
    return PairScores(torch.tensor(u_w), torch.tensor(u_l), torch.zeros(n), torch.zeros(n), extra=extra)


def test_anchor_in_the_code_form():
    # §1.7: beta 0.1, tau 0.5, u_w = [1.0, 0.5], u_l = [-0.5, 0.2], d = [[0, 0.6], [0.6, 0]].
    w_near = 1 / (1 + math.exp(-0.6 / 0.5))  # softmax_j(-d_ij / tau): exp(0) / (exp(0) + exp(-1.2))
    assert (round(w_near, 6), round(1 - w_near, 6)) == (0.768525, 0.231475)
    logits = [[1.0 + 0.5, 1.0 - 0.2], [0.5 + 0.5, 0.5 - 0.2]]
    weights = [[w_near, 1 - w_near], [1 - w_near, w_near]]
    rows = [sum(-logsig(0.1 * weights[i][j] * logits[i][j]) for j in range(2)) / 2 for i in range(2)]
    assert [round(r, 6) for r in rows] == [0.660550, 0.681663]
    out = get_objective("rpo_relative")(pairs([1.0, 0.5], [-0.5, 0.2], unit_pair(0.4)))
    assert out.loss.item() == pytest.approx(sum(rows) / 2, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * 0.75)


def test_embeddings_need_not_be_unit_vectors():
    scaled = get_objective("rpo_relative")(pairs([1.0, 0.5], [-0.5, 0.2], unit_pair(0.4) * torch.tensor([[3.0], [0.2]])))
    assert scaled.loss.item() == pytest.approx(get_objective("rpo_relative")(
        pairs([1.0, 0.5], [-0.5, 0.2], unit_pair(0.4))).loss.item(), abs=1e-7)


def test_diagonal_variant_by_hand():
    # omega * l_ii + (1 - omega) * mean_{j != i} l_ij, l_ij = -log s(beta (u_w(i) - u_l(j))), no embeddings.
    u_w, u_l, beta, omega = [1.0, 0.5, -0.3], [-0.5, 0.2, 0.4], 0.5, 0.8
    rows = []
    for i in range(3):
        off = [-logsig(beta * (u_w[i] - u_l[j])) for j in range(3) if j != i]
        rows.append(omega * -logsig(beta * (u_w[i] - u_l[i])) + (1 - omega) * sum(off) / 2)
    out = get_objective("rpo_relative", beta=beta, variant="diagonal")(pairs(u_w, u_l))
    assert out.loss.item() == pytest.approx(sum(rows) / 3, abs=1e-6)
    assert get_objective("rpo_relative", variant="diagonal").extra_columns == ()


@pytest.mark.parametrize("variant", ["embedding", "diagonal"])
def test_one_pair_per_device_is_dpo(variant):
    s = pairs([1.3], [-0.4], torch.tensor([[0.2, 0.9]]))
    dpo = get_objective("dpo", beta=0.3)(s).loss.item()
    assert get_objective("rpo_relative", beta=0.3, variant=variant)(s).loss.item() == pytest.approx(dpo, abs=1e-7)


def test_diagonal_weight_one_is_dpo():
    s = pairs([1.0, 0.5, -0.3], [-0.5, 0.2, 0.4])
    dpo = get_objective("dpo", beta=0.5)(s).loss.item()
    diagonal = get_objective("rpo_relative", beta=0.5, variant="diagonal", diagonal_weight=1.0)(s).loss.item()
    assert diagonal == pytest.approx(dpo, abs=1e-7)


def test_missing_or_misshapen_embeddings_are_refused_naming_the_column():
    with pytest.raises(ValueError, match=r"prompt_embedding.*\[2, D\].*None.*variant='diagonal'"):
        get_objective("rpo_relative")(pairs([1.0, 0.5], [-0.5, 0.2]))
    with pytest.raises(ValueError, match=r"prompt_embedding.*\(3, 2\)"):
        get_objective("rpo_relative")(pairs([1.0, 0.5], [-0.5, 0.2], torch.ones(3, 2)))


def test_gradients_finite_at_extremes_and_with_a_zero_embedding():
    u_w = torch.tensor([800.0, -800.0, 0.0], requires_grad=True)
    s = PairScores(u_w, torch.tensor([-800.0, 800.0, 0.0]), torch.zeros(3), torch.zeros(3),
                   extra={"prompt_embedding": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]])})
    out = get_objective("rpo_relative")(s)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(u_w.grad).all()


@pytest.mark.parametrize("hparams,named", [({"variant": "full"}, "variant"), ({"distance_temperature": 0.0},
                                           "distance_temperature"), ({"diagonal_weight": 1.5}, "diagonal_weight")])
def test_bad_options_are_refused_naming_them(hparams, named):
    with pytest.raises(ValueError, match=named):
        get_objective("rpo_relative", **hparams)


def test_pack_copies_the_embedding_column_into_extra():
    objective = get_objective("rpo_relative")
    policy = {side: SequenceScores(torch.tensor([-1.0, -2.0]), torch.tensor([3.0, 4.0])) for side in ("chosen", "rejected")}
    ref = {"chosen": torch.tensor([-1.5, -1.0]), "rejected": torch.tensor([-1.0, -2.5])}
    s = objective.pack(policy, ref, {"prompt_embedding": [[1.0, 0.0], [0.4, 0.9]]})
    assert s.extra["prompt_embedding"].shape == (2, 2)
    assert torch.isfinite(objective(s).loss)
    with pytest.raises(KeyError, match="prompt_embedding"):
        objective.pack(policy, ref, {})
    assert get_objective("rpo_relative", variant="diagonal").pack(policy, ref, {}).extra == {}
