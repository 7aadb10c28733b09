"""SRPO (``srpo``): the offline loss over the answers given the prompt and given a revision prompt showing one of
them. Hand-worked values from plain ``math``, its IPO limit, the views it declares, the option errors, and one
real step that scores the revision views under their own prompts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from conftest import FirstBatch
from alignsuite.backbones import CausalLM
from alignsuite.data import PreferenceDataModule, TextPairs
from alignsuite.module import PreferenceModule
from alignsuite.objectives import SRPO, get_objective
from alignsuite.scores import PairScores
from alignsuite.views import check_setup, needed_columns

HAND_WORKED = ("srpo",)
VIEWS = ("chosen_given_chosen", "rejected_given_chosen", "chosen_given_rejected", "rejected_given_rejected")


def scores(u_w, u_l, c_ww, c_lw, c_wl, c_ll, grad=False, dtype=torch.float64) -> PairScores:
    """Pairs whose reference scores are 0, so every log-ratio is the policy score given."""
    t = lambda v: torch.tensor(v, dtype=dtype).requires_grad_(grad)  # noqa: E731
    zeros = lambda v: torch.zeros(len(v), dtype=dtype)  # noqa: E731
    extra = {}
    for name, value in zip(VIEWS, (c_ww, c_lw, c_wl, c_ll)):
        extra[name], extra[f"ref_{name}"] = t(value), zeros(value)
    return PairScores(t(u_w), t(u_l), zeros(u_w), zeros(u_l), extra=extra)


def hand(b, a, u_w, u_l, c_ww, c_lw, c_wl, c_ll) -> tuple[float, float, float]:
    """``(L, G, S)`` of one pair."""
    s = (0.5 - b * (c_wl - c_ll)) ** 2 + (0.5 - b * (c_ww - c_lw)) ** 2
    g = (b * (c_wl + u_w - c_lw - u_l) - 1) ** 2
    return (1 - a) * g + a * s, g, s


PAIR_A = (2.0, -1.0, 3.0, -2.0, 4.0, 1.0)  # u_w, u_l, c_ww, c_lw, c_wl, c_ll
PAIR_B = (-1.0, 0.5, -0.5, 1.5, -2.0, 0.0)


def test_hand_worked_loss_terms_and_metrics():
    # b 0.1, a 0.8; pair A: S = (0.5 - 0.3)^2 + (0.5 - 0.5)^2 = 0.04, G = (0.1 * 9 - 1)^2 = 0.01, L = 0.034
    obj = get_objective("srpo", beta=0.1, alpha=0.8)
    (la, ga, sa), (lb, gb, sb) = hand(0.1, 0.8, *PAIR_A), hand(0.1, 0.8, *PAIR_B)
    assert (la, ga, sa) == pytest.approx((0.034, 0.01, 0.04), rel=1e-12)
    out = obj(scores(*zip(PAIR_A, PAIR_B)))
    assert out.loss.item() == pytest.approx((la + lb) / 2, rel=1e-6)
    assert out.metrics["srpo/generative"].item() == pytest.approx((ga + gb) / 2, rel=1e-6)
    assert out.metrics["srpo/self_improvement"].item() == pytest.approx((sa + sb) / 2, rel=1e-6)
    # c_wl - c_lw: 6 for A, -3.5 for B
    assert out.metrics["srpo/improvement_accuracy"].item() == 0.5
    # rewards: b u of each answer given the prompt alone
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * (2.0 - 1.0) / 2, rel=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.1 * (-1.0 + 0.5) / 2, rel=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5


def test_hand_worked_gradients():
    b, a = 0.1, 0.8
    s = scores(*([v] for v in PAIR_A), grad=True)
    get_objective("srpo", beta=b, alpha=a)(s).loss.backward()
    u_w, u_l, c_ww, c_lw, c_wl, c_ll = PAIR_A
    dg = 2 * b * (b * (c_wl + u_w - c_lw - u_l) - 1)  # dG/du_w; G's other slopes are +-this
    ds_rej = -2 * b * (0.5 - b * (c_wl - c_ll))  # dS/dc_wl (= -dS/dc_ll)
    ds_cho = -2 * b * (0.5 - b * (c_ww - c_lw))  # dS/dc_ww (= -dS/dc_lw)
    assert s.chosen.grad.item() == pytest.approx((1 - a) * dg, rel=1e-6)
    assert s.rejected.grad.item() == pytest.approx(-(1 - a) * dg, rel=1e-6)
    grad = {name: s.extra[name].grad.item() for name in VIEWS}
    assert grad["chosen_given_rejected"] == pytest.approx((1 - a) * dg + a * ds_rej, rel=1e-6)
    assert grad["rejected_given_chosen"] == pytest.approx(-(1 - a) * dg - a * ds_cho, rel=1e-6)
    assert grad["chosen_given_chosen"] == pytest.approx(a * ds_cho, rel=1e-6)
    assert grad["rejected_given_rejected"] == pytest.approx(-a * ds_rej, rel=1e-6)


def test_generative_part_alone_is_scaled_ipo():
    # alpha 0 and c_wl = c_lw: G = (b D - 1)^2 = b^2 (D - 1/b)^2, IPO's (D - 1/(2 tau))^2 at tau = b/2
    b = 0.1
    rows = ([0.5, -1.0, 3.0], [-0.5, 0.5, -2.0], [1.0, 2.0, 0.0], [0.7, -0.3, 1.0], [0.7, -0.3, 1.0], [0.2, 0.0, 4.0])
    srpo = get_objective("srpo", beta=b, alpha=0.0)(scores(*rows)).loss.item()
    ipo = get_objective("ipo", beta=b / 2, length_normalize=False)(scores(*rows)).loss.item()
    assert srpo == pytest.approx(b**2 * ipo, rel=1e-6)


def test_alpha_one_leaves_the_answers_given_the_prompt_untouched():
    s = scores(*([v] for v in PAIR_A), grad=True)
    out = get_objective("srpo", beta=0.1, alpha=1.0)(s)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(hand(0.1, 1.0, *PAIR_A)[2], rel=1e-6)
    assert s.chosen.grad.item() == 0.0 and s.rejected.grad.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_at_extreme_log_ratios(dtype):
    big = ([1e4, -1e4], [-1e4, 1e4], [1e4, -1e4], [-1e4, 1e4], [1e4, 0.0], [0.0, -1e4])
    s = scores(*big, grad=True, dtype=dtype)
    out = get_objective("srpo")(s)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(g).all() for g in (s.chosen.grad, s.rejected.grad, *(s.extra[v].grad for v in VIEWS)))


def test_views_read_each_answer_under_each_revision_prompt():
    views = {v.name: v for v in get_objective("srpo").views}
    assert list(views) == ["chosen", "rejected", *VIEWS]
    assert views["chosen"].prompt_column is None and views["rejected"].prompt_column is None
    assert (views["chosen_given_rejected"].source, views["chosen_given_rejected"].prompt_column) == (
        "chosen", "prompt_with_rejected")
    assert (views["rejected_given_chosen"].source, views["rejected_given_chosen"].prompt_column) == (
        "rejected", "prompt_with_chosen")
    renamed = get_objective("srpo", prompt_with_chosen="revise_w", prompt_with_rejected="revise_l")
    assert needed_columns(renamed) == ["prompt", "chosen", "rejected", "revise_w", "revise_l"]


def test_data_without_the_revision_prompts_is_refused_at_setup():
    backbone = SimpleNamespace(conditions=(), joint_views=True, modality="text")
    data = SimpleNamespace(layout=SimpleNamespace(name="TextPairs", modality="text"), row_kind="pairs",
                           columns=lambda: {"prompt", "chosen", "rejected", "index"})
    with pytest.raises(ValueError, match=r"srpo.*prompt_with_chosen"):
        check_setup(get_objective("srpo"), backbone, None, data)


def test_missing_revision_scores_name_the_views_and_columns():
    s = PairScores(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match=r"revision views.*chosen_given_chosen.*'prompt_with_chosen'"):
        get_objective("srpo")(s)


@pytest.mark.parametrize("options, match", [
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": True}, "alpha"), ({"alpha": "0.8"}, "alpha"),
    ({"beta": 0.0}, "beta"), ({"prompt_with_chosen": ""}, "prompt_with_chosen"),
    ({"prompt_with_rejected": "prompt"}, "prompt_with_rejected"),
    ({"prompt_with_chosen": "x", "prompt_with_rejected": "x"}, "two columns"),
])
def test_bad_options_are_refused_by_name(options, match):
    with pytest.raises(ValueError, match=match):
        get_objective("srpo", **options)


def test_defaults_follow_the_pull_request():
    obj = get_objective("srpo")
    assert (obj.beta, obj.alpha) == (0.01, 0.8)


class RecordingSRPO(SRPO):
    def __call__(self, scores, reduce=None):
        self.seen = scores
        return super().__call__(scores, reduce)


def test_revision_views_are_scored_under_their_own_prompts(tmp_path, tiny_lm_dir):
    """One real step: each revision view's score is log p(answer | revision prompt), for policy and reference."""
    rows = [{"q": "echo a b", "w": "A B", "l": "a", "qw": "echo a b fix A B", "ql": "echo a b fix a"},
            {"q": "echo d", "w": "D", "l": "E F", "qw": "echo d fix D", "ql": "echo d fix E F"}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    layout = TextPairs(prompt_field="q", chosen_field="w", rejected_field="l",
                       prompt_fields={"prompt_with_chosen": "qw", "prompt_with_rejected": "ql"})
    data = PreferenceDataModule(train=str(path), layout=layout, batch_size=2)
    srpo, first = RecordingSRPO(), FirstBatch()
    backbone = CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12)
    module = PreferenceModule(backbone, srpo, optimizer=lambda p: torch.optim.AdamW(p, lr=0.0), warmup_ratio=0.0)
    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False, callbacks=[first],
              default_root_dir=str(tmp_path)).fit(module, data)
    s, by_prompt = srpo.seen, {r["q"]: r for r in rows}
    for i, prompt in enumerate(first.batch["prompt"]):
        row = by_prompt[prompt]
        assert (first.batch["prompt_with_chosen"][i], first.batch["prompt_with_rejected"][i]) == (row["qw"], row["ql"])
        for name, answer, shown in (("chosen_given_rejected", "w", "ql"), ("rejected_given_chosen", "l", "qw"),
                                    ("chosen_given_chosen", "w", "qw"), ("rejected_given_rejected", "l", "ql")):
            expected = logp(module.backbone, row[shown], row[answer])
            assert s.extra[name][i].item() == pytest.approx(expected, abs=1e-4), name
            assert s.extra[f"ref_{name}"][i].item() == pytest.approx(expected, abs=1e-4), name
        assert s.chosen[i].item() == pytest.approx(logp(module.backbone, row["q"], row["w"]), abs=1e-4)
        # the prompts tell the views apart: the same answer scores differently under each
        assert abs(s.extra["chosen_given_rejected"][i].item() - s.chosen[i].item()) > 1e-3
        assert abs(s.extra["chosen_given_rejected"][i].item() - s.extra["chosen_given_chosen"][i].item()) > 1e-3


def logp(backbone, prompt: str, answer: str) -> float:
    """``log p(answer | prompt)`` from one forward pass of the backbone's (unchanged, lr 0) policy."""
    from alignsuite.backbones.base import ViewInputs

    with torch.no_grad():
        return backbone.score(backbone.prepare([ViewInputs([prompt], [answer])])).score[0].item()
