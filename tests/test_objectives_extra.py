"""Objectives that read more than one pair's scores: a gold answer (TPO, TPO-L), a second prompt (JPO), a number
per row (iREPO, NCA with rewards) and a running statistic (unpaired BCO). Hand-worked values from plain ``math``,
the reductions to existing objectives, and parity with TRL where TRL has the loss."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from conftest import FirstBatch
from alignsuite.backbones import CausalLM
from alignsuite.backbones.base import ViewInputs
from alignsuite.data import DataError, PreferenceDataModule, TextPairs
from alignsuite.module import PreferenceModule
from alignsuite.objectives import JPO, get_objective
from alignsuite.scores import PairScores, UnpairedScores
from alignsuite.views import View

HAND_WORKED = ("tpo", "tpo_l", "jpo", "irepo", "nca_pair_reward", "bco")


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pairs(chosen, rejected, ref_chosen=None, ref_rejected=None, chosen_len=None, rejected_len=None, **extra):
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairScores(t(chosen), t(rejected), t(ref_chosen), t(ref_rejected), t(chosen_len), t(rejected_len),
                      {k: t(v) for k, v in extra.items()})


# --------------------------------------------------------------------------------------------- TPO, TPO-L


def test_tpo_notes_anchor():
    # beta 0.1, alpha 0.5, l_w = -20, l_l = -26, NLL(gold) = 12 / 10 = 1.2 -> -log s(0.6) + 0.6 = 1.037488
    s = pairs([-20.0], [-26.0], gold=[-12.0], gold_len=[10.0])
    out = get_objective("tpo")(s)
    assert out.loss.item() == pytest.approx(-logsig(0.6) + 0.5 * 1.2, abs=1e-6)
    assert out.loss.item() == pytest.approx(1.037488, abs=1e-6)
    assert out.metrics["loss/gold_nll"].item() == pytest.approx(1.2)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-2.0)


def test_tpo_gold_nll_is_pooled_over_the_batch_tokens():
    # gold -12 over 10 tokens and -6 over 2: pooled 18 / 12 = 1.5 (the per-sequence mean would be 2.1)
    s = pairs([-20.0, -3.0], [-26.0, -2.0], gold=[-12.0, -6.0], gold_len=[10.0, 2.0])
    out = get_objective("tpo", beta=0.2, alpha=0.9, label_smoothing=0.1)(s)
    pref = [-(0.9 * logsig(0.2 * d)) - 0.1 * logsig(-0.2 * d) for d in (6.0, -1.0)]
    assert out.loss.item() == pytest.approx(sum(pref) / 2 + 0.9 * 1.5, abs=1e-6)


def test_tpo_l_notes_anchor():
    # beta 2, gamma 0.5, m_w = -1.0 (-10 over 10), m_l = -1.3 (-13 over 10) -> -log s(0.1) = 0.644397
    s = pairs([-10.0], [-13.0], chosen_len=[10.0], rejected_len=[10.0], gold=[-4.0], gold_len=[8.0])
    assert get_objective("tpo_l", alpha=0.0)(s).loss.item() == pytest.approx(0.644397, abs=1e-6)
    assert get_objective("tpo_l")(s).loss.item() == pytest.approx(0.644397 + 0.5 * 0.5, abs=1e-6)
    assert get_objective("tpo_l")(s).metrics["rewards/chosen"].item() == pytest.approx(-2.0)


def test_tpo_reductions():
    s = pairs([-20.0, -7.0], [-26.0, -5.0], chosen_len=[10.0, 3.0], rejected_len=[12.0, 2.0],
              gold=[-20.0, -7.0], gold_len=[10.0, 3.0])
    # without the gold term: CPO without its NLL, and SimPO
    assert get_objective("tpo", alpha=0.0)(s).loss.item() == pytest.approx(
        get_objective("cpo", cpo_alpha=0.0)(s).loss.item(), abs=1e-7)
    assert get_objective("tpo_l", beta=2.5, gamma=0.3, alpha=0.0)(s).loss.item() == pytest.approx(
        get_objective("simpo", beta=2.5, gamma=0.3)(s).loss.item(), abs=1e-7)
    # with the chosen answer as the gold one: CPO with its pooled NLL
    assert get_objective("tpo", alpha=0.7)(s).loss.item() == pytest.approx(
        get_objective("cpo", cpo_alpha=0.7)(s).loss.item(), abs=1e-6)
    assert [v.name for v in get_objective("tpo", alpha=0.0).views] == ["chosen", "rejected"]


def test_tpo_without_gold_scores_names_the_layout_option():
    with pytest.raises(ValueError, match="answer_fields"):
        get_objective("tpo")(pairs([-1.0], [-2.0]))


# --------------------------------------------------------------------------------------------- JPO


def test_jpo_is_dpo_on_joint_scores_and_reads_the_rejected_prompt():
    # joint log-ratios u_w = -30 - (-31) = 1, u_l = -40 - (-38) = -2 -> -log s(0.1 * 3)
    s = pairs([-30.0], [-40.0], [-31.0], [-38.0])
    assert get_objective("jpo")(s).loss.item() == pytest.approx(-logsig(0.3), abs=1e-7)
    assert get_objective("jpo")(s).loss.item() == pytest.approx(get_objective("dpo")(s).loss.item(), abs=1e-7)
    views = {v.name: v for v in get_objective("jpo").views}
    assert views["chosen"].prompt_column is None and views["rejected"].prompt_column == "prompt_rejected"
    assert views["chosen"].joint and views["rejected"].joint
    assert not any(v.joint for v in get_objective("jpo", joint=False).views)


def test_a_view_reads_its_prompt_from_its_column():
    batch = {"prompt": ["p0", "p1"], "prompt_rejected": ["q0", "q1"], "chosen": ["a", "b"], "rejected": ["c", "d"]}
    assert View("rejected", prompt_column="prompt_rejected").prompts(batch) == ["q0", "q1"]
    assert View("chosen").prompts(batch) == ["p0", "p1"]
    # the module builds each view with its own prompts (and the joint flag), nothing else changed
    module = SimpleNamespace(objective=get_objective("jpo"), backbone=None, reference=None, global_step=0)
    chosen, rejected = PreferenceModule.build_views(module, batch)
    assert (chosen.prompts, chosen.completions, chosen.joint) == (["p0", "p1"], ["a", "b"], True)
    assert (rejected.prompts, rejected.completions, rejected.joint) == (["q0", "q1"], ["c", "d"], True)


# --------------------------------------------------------------------------------------------- iREPO


def test_irepo_hand_worked_and_clipped():
    # u_w = 0.5, u_l = -0.5 (D = 1); p = 0.8 -> target log 4; p = 1 clipped to 0.999 -> target log 999
    s = pairs([-3.0, -3.0], [-5.0, -5.0], [-3.5, -3.5], [-4.5, -4.5], preference=[0.8, 1.0])
    out = get_objective("irepo")(s)
    expected = ((0.1 - math.log(4)) ** 2 + (0.1 - math.log(999)) ** 2) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert get_objective("irepo", clip=0.1)(s).loss.item() == pytest.approx(
        ((0.1 - math.log(4)) ** 2 + (0.1 - math.log(9)) ** 2) / 2, rel=1e-6)


def test_irepo_at_p_sigmoid_half_is_beta_squared_ipo():
    s = pairs([-3.0, -6.0], [-5.0, -4.0], [-3.5, -5.0], [-4.5, -4.5], preference=[1 / (1 + math.exp(-0.5))] * 2)
    beta = 0.3
    ipo = get_objective("ipo", beta=beta, length_normalize=False)(s).loss.item()
    assert get_objective("irepo", beta=beta)(s).loss.item() == pytest.approx(beta**2 * ipo, rel=1e-5)


def test_irepo_refuses_probabilities_outside_0_1():
    with pytest.raises(ValueError, match=r"preference.*\[0, 1\].*position\(s\) \[1\]"):
        get_objective("irepo")(pairs([-3.0, -3.0], [-5.0, -5.0], [-3.0, -3.0], [-5.0, -5.0], preference=[0.5, 1.5]))


# --------------------------------------------------------------------------------------------- NCA with rewards


def test_nca_pair_reward_hand_worked():
    # r_w = 0.1 * 0.5, r_l = 0.1 * -0.5; rewards 8 and 6 at temperature 1 -> p_w = s(2)
    s = pairs([-3.0], [-5.0], [-3.5], [-4.5], reward_chosen=[8.0], reward_rejected=[6.0])
    p_w = 1 / (1 + math.exp(-2.0))
    r_w, r_l = 0.05, -0.05
    expected = -0.5 * (logsig(-r_w) + logsig(-r_l)) - p_w * logsig(r_w) - (1 - p_w) * logsig(r_l)
    assert get_objective("nca_pair_reward", temperature_alpha=1.0)(s).loss.item() == pytest.approx(expected, rel=1e-6)
    # the official code's +0.01 on the best answer's reward: p_w = s(2.01)
    p_w = 1 / (1 + math.exp(-2.01))
    expected = -0.5 * (logsig(-r_w) + logsig(-r_l)) - p_w * logsig(r_w) - (1 - p_w) * logsig(r_l)
    got = get_objective("nca_pair_reward", temperature_alpha=1.0, chosen_bonus=0.01)(s).loss.item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_nca_pair_reward_with_a_hard_label_is_nca_pair():
    s = pairs([-3.0, -6.0], [-5.0, -4.0], [-3.5, -5.0], [-4.5, -4.5], reward_chosen=[1.0, 1.0], reward_rejected=[0.0, 0.0])
    hard = get_objective("nca_pair_reward")(s)  # (1 - 0) / 1e-3: p_l = e^-1000, exactly 0
    assert hard.loss.item() == pytest.approx(get_objective("nca_pair")(s).loss.item(), abs=1e-7)
    # equal rewards: p = 1/2 each, both sides pulled up and pushed down alike
    tie = pairs([-3.0], [-5.0], [-3.5], [-4.5], reward_chosen=[0.5], reward_rejected=[0.5])
    r_w, r_l = 0.05, -0.05
    expected = -0.5 * (logsig(-r_w) + logsig(-r_l) + logsig(r_w) + logsig(r_l))
    assert get_objective("nca_pair_reward")(tie).loss.item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------- unpaired BCO


def unpaired(logps, ref, label, grad=False):
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    lp = t(logps).requires_grad_(grad)
    return UnpairedScores(lp, t(label), ref_logps=t(ref))


def test_bco_hand_worked_running_mean_over_steps():
    bco = get_objective("bco", beta=0.5)
    # step 1: u = [1, -1, 2, 0] -> r = [0.5, -0.5, 1, 0], delta = 0.25 (this batch included)
    out = bco(unpaired([-1.0, -3.0, 0.0, -2.0], [-2.0, -2.0, -2.0, -2.0], [1, 0, 1, 0]))
    r, lab = [0.5, -0.5, 1.0, 0.0], [1, 0, 1, 0]
    hand = [-logsig(x - 0.25) if y else -logsig(-(x - 0.25)) for x, y in zip(r, lab)]
    assert out.metrics["delta"].item() == pytest.approx(0.25)
    assert out.loss.item() == pytest.approx(sum(hand) / 4, rel=1e-6)
    # step 2: r = [2, 1] -> delta = (4 * 0.25 + 2 * 1.5) / 6 = 2/3
    out = bco(unpaired([2.0, 0.0], [-2.0, -2.0], [1, 0]))
    delta = 2 / 3
    assert out.metrics["delta"].item() == pytest.approx(delta, rel=1e-6)
    assert out.loss.item() == pytest.approx((-logsig(2 - delta) - logsig(-(1 - delta))) / 2, rel=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5  # the undesirable row sits above delta
    # without gradients (validation) delta is read, not moved
    with torch.no_grad():
        assert bco(unpaired([9.0, 9.0], [0.0, 0.0], [1, 0])).metrics["delta"].item() == pytest.approx(delta, rel=1e-6)
    assert bco.state() == {"delta": pytest.approx(delta), "count": 6.0}


def test_bco_running_mean_over_processes_is_the_global_batch_mean():
    # Two processes hold 3 and 1 rewards: [0, 0, 0] and [4]. The global mean is 1, the mean of means 2.
    # The module's reduce is the mean over processes of each one's mean; simulate it for both processes.
    local = [torch.zeros(3, dtype=torch.float64), torch.full((1,), 4.0, dtype=torch.float64)]
    calls = []

    def reduce_for(rank):
        def reduce(values):  # stands in for strategy.reduce(values.mean(), "mean") on the other process too
            k = len(calls) % 2
            calls.append(k)
            other = {0: torch.tensor([1.0 * len(local[1 - rank])], dtype=torch.float64),
                     1: local[1 - rank] * len(local[1 - rank])}[k]
            return (values.mean() + other.mean()) / 2
        return reduce

    for rank in (0, 1):
        bco = get_objective("bco", beta=1.0)
        bco.update(local[rank], reduce_for(rank))
        assert bco.delta == pytest.approx(1.0) and bco.count == pytest.approx(2.0)  # 4 rewards over 2 processes


def test_bco_state_survives_a_checkpoint_resume(tmp_path, tiny_lm_dir):
    from alignsuite.data import TextUnpaired

    rows = [{"prompt": f"echo {c}", "completion": f"{c.upper()} {c.upper()}", "label": i % 2 == 0}
            for i, c in enumerate("abcdefgh")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(steps, ckpt=None):
        module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), get_objective("bco"),
                                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), warmup_ratio=0.0,
                                  lr_schedule="constant")  # the same learning rates whatever max_steps says
        data = PreferenceDataModule(train=str(path), layout=TextUnpaired(), batch_size=4)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                            default_root_dir=str(tmp_path / f"run{steps}"), enable_checkpointing=False)
        trainer.fit(module, data, ckpt_path=ckpt)
        return trainer, module.objective

    trainer, straight = run(3)
    first, partial = run(2)
    first.save_checkpoint(tmp_path / "two.ckpt")
    assert torch.load(tmp_path / "two.ckpt", weights_only=False)["objective_state"] == partial.state()
    _, resumed = run(3, str(tmp_path / "two.ckpt"))
    assert resumed.count == straight.count == 12.0
    assert resumed.delta == pytest.approx(straight.delta, abs=1e-6)


# --------------------------------------------------------------------------------------------- data and steps


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_text_pairs_carry_gold_answers_second_prompts_and_numbers(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "reference": "g", "i_reject": "q", "p_hat": 0.75},
            {"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b", "reference": "g",
             "i_reject": "q", "p_hat": True}]
    layout = TextPairs(answer_fields={"gold": "reference"}, prompt_fields={"prompt_rejected": "i_reject"},
                       number_fields={"preference": "p_hat"})
    text = layout.normalize(rows[0], 0, "t.jsonl")
    assert (text["gold"], text["prompt_rejected"], text["preference"]) == ("g", "q", 0.75)
    chat = layout.normalize(rows[1], 1, "t.jsonl")
    assert chat["gold"] == [{"role": "assistant", "content": "g"}]
    assert chat["prompt_rejected"] == [{"role": "user", "content": "q"}] and chat["preference"] == 1.0
    dm = PreferenceDataModule(train=write_jsonl(tmp_path / "t.jsonl", rows[:1] * 3), layout=layout, batch_size=3)
    dm.setup("fit")
    assert {"gold", "prompt_rejected", "preference"} <= dm.columns()
    batch = next(iter(dm.train_dataloader()))
    assert batch["gold"] == ["g"] * 3 and batch["prompt_rejected"] == ["q"] * 3
    assert batch["preference"].tolist() == [0.75] * 3
    assert repr(TextPairs()) == "TextPairs()"


@pytest.mark.parametrize("row,field,expected", [
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "reference", "expected a column named 'reference'"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "reference": " "}, "reference", "expected non-empty text"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "reference": "g", "p_hat": "high"}, "p_hat",
     "expected a finite number"),
])
def test_a_missing_or_bad_extra_field_names_file_row_and_field(tmp_path, row, field, expected):
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "reference": "g", "p_hat": 0.5}
    # (a jsonl row that lacks a key other rows have reads it as null: the bad row comes alone, after a good file)
    path = write_jsonl(tmp_path / "train.jsonl", [row])
    write_jsonl(tmp_path / "good.jsonl", [good])
    layout = TextPairs(answer_fields={"gold": "reference"}, number_fields={"preference": "p_hat"})
    with pytest.raises(DataError, match=f"^{path}: row 0: field '{field}': {expected}"):
        PreferenceDataModule(train=[str(tmp_path / "good.jsonl"), path], layout=layout).setup("fit")


def test_extra_columns_may_not_take_the_pairs_own_names():
    with pytest.raises(ValueError, match="answer_fields, prompt_fields and number_fields"):
        TextPairs(answer_fields={"chosen": "reference"})


def test_tpo_without_a_gold_column_fails_at_setup_naming_it(tmp_path, tiny_lm_dir):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "echo a", "chosen": "A", "rejected": "b"}] * 4)
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), get_objective("tpo"))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"objective 'tpo' needs the data column\(s\) 'gold'"):
        trainer.fit(module, PreferenceDataModule(train=path, batch_size=2))
    assert module.backbone.policy is None


class RecordingJPO(JPO):
    """JPO that keeps the scores it was given."""

    def __call__(self, scores, reduce=None):
        self.seen = scores
        return super().__call__(scores, reduce)


def sequence_logp(model, ids: list[int]) -> float:
    """log p(ids[1:] | ids[0]) from one unpadded forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)))


def test_joint_views_score_prompt_and_answer_under_each_sides_prompt(tmp_path, tiny_lm_dir):
    """JPO through a real step: each side's score (policy and reference) is log p(x, y) under its own prompt."""
    from transformers import AutoModelForCausalLM

    rows = [{"i_chosen": "echo a b", "r_chosen": "A B", "i_reject": "echo c", "r_reject": "a"},
            {"i_chosen": "echo d", "r_chosen": "D", "i_reject": "echo e f g", "r_reject": "E F"}]
    layout = TextPairs(prompt_field="i_chosen", chosen_field="r_chosen", rejected_field="r_reject",
                       prompt_fields={"prompt_rejected": "i_reject"})
    data = PreferenceDataModule(train=write_jsonl(tmp_path / "t.jsonl", rows), layout=layout, batch_size=2)
    jpo, first = RecordingJPO(), FirstBatch()
    module = PreferenceModule(CausalLM(tiny_lm_dir, max_length=24, max_prompt_length=12), jpo,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=0.0), warmup_ratio=0.0)
    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False, callbacks=[first],
              default_root_dir=str(tmp_path)).fit(module, data)
    tok, s = module.backbone.tokenizer, jpo.seen
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    by_prompt = {r["i_chosen"]: r for r in rows}
    for i, prompt in enumerate(first.batch["prompt"]):
        row = by_prompt[prompt]
        assert first.batch["prompt_rejected"][i] == row["i_reject"]
        for side, (x, y) in (("chosen", (row["i_chosen"], row["r_chosen"])),
                             ("rejected", (row["i_reject"], row["r_reject"]))):
            ids = tok(x)["input_ids"] + tok(y, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            expected = sequence_logp(base, ids)  # every token after the first: log p(x, y)
            assert getattr(s, side)[i].item() == pytest.approx(expected, abs=1e-4), side
            assert getattr(s, f"ref_{side}")[i].item() == pytest.approx(expected, abs=1e-4), side
            assert getattr(s, f"{side}_len")[i].item() == len(ids) - 1


def test_joint_views_need_a_backbone_that_scores_them():
    from alignsuite.views import check_setup

    backbone = SimpleNamespace(conditions=(), joint_views=False)
    with pytest.raises(ValueError, match="'chosen' jointly with its prompt.*cannot score"):
        check_setup(get_objective("jpo"), backbone, None, None)
    check_setup(get_objective("jpo", joint=False), backbone, None, None)


def test_jpo_without_a_second_prompt_column_is_refused_at_setup():
    from alignsuite.views import check_setup

    backbone = SimpleNamespace(conditions=(), joint_views=True, modality="text")
    data = SimpleNamespace(layout=SimpleNamespace(name="TextPairs", modality="text"), row_kind="pairs",
                           columns=lambda: {"prompt", "chosen", "rejected", "index"})
    with pytest.raises(ValueError, match=r"objective 'jpo' needs the data column\(s\) 'prompt_rejected'"):
        check_setup(get_objective("jpo"), backbone, None, data)


def test_joint_score_is_prompt_plus_completion_score(tiny_lm_dir):
    backbone = CausalLM(tiny_lm_dir, max_length=48, max_prompt_length=24)
    backbone.configure()
    prompts, answers = ["echo a", "echo b c d"], ["A", "B C D"]
    split = backbone.score(backbone.prepare([ViewInputs(prompts, answers, score_prompt=True)]))
    joint = backbone.score(backbone.prepare([ViewInputs(prompts, answers, joint=True)]))
    torch.testing.assert_close(joint.score, split.score + split.prompt, atol=1e-5, rtol=0)
    torch.testing.assert_close(joint.length, split.length + split.prompt_length)


# --------------------------------------------------------------------------------------------- TRL parity


def token_logps(logits, input_ids, mask):
    """Per-row summed log-probs of the masked tokens and their counts, as a token backbone scores them."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:].float()
    return (logp * m).sum(-1), m.sum(-1)


@pytest.mark.parametrize("loss_type,name,hparams", [
    ("sigmoid", "tpo", {"beta": 0.1, "alpha": 0.5, "label_smoothing": 0.1}),
    ("tpo-l", "tpo_l", {"beta": 2.0, "gamma": 0.5, "alpha": 0.5, "label_smoothing": 0.0}),
])
def test_tpo_matches_trl(loss_type, name, hparams):
    trl_tpo = pytest.importorskip("trl.experimental.tpo.tpo_trainer")
    from collections import defaultdict

    g = torch.Generator().manual_seed(0)
    b, t, v = 3, 7, 11
    input_ids = torch.randint(0, v, (3 * b, t), generator=g)
    mask = torch.zeros(3 * b, t, dtype=torch.long)
    for i in range(3 * b):  # a prompt of 1-3 tokens, then 2 or more answer tokens, then padding
        start, end = 1 + i % 3, t - (i % 2)
        mask[i, start:end] = 1
    logits = torch.randn(3 * b, t, v, generator=g, dtype=torch.float32, requires_grad=True)

    accelerator = SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = SimpleNamespace(model=SimpleNamespace(training=True), tpo_alpha=hparams["alpha"], loss_type=loss_type,
                              beta=hparams["beta"], label_smoothing=hparams["label_smoothing"],
                              tpo_l_gamma=hparams.get("gamma", 0.5), accelerator=accelerator,
                              _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    model = lambda **kwargs: SimpleNamespace(logits=logits)  # noqa: E731
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "completion_mask": mask}
    theirs = trl_tpo.TPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, logits)

    logps, lengths = token_logps(logits, input_ids, mask)
    chosen, rejected, gold = logps.chunk(3)
    c_len, r_len, g_len = lengths.chunk(3)
    ours = get_objective(name, **hparams)(PairScores(chosen, rejected, chosen_len=c_len, rejected_len=r_len,
                                                     extra={"gold": gold, "gold_len": g_len})).loss
    (our_grad,) = torch.autograd.grad(ours, logits)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)


def test_bco_matches_trl_over_steps():
    trl_bco = pytest.importorskip("trl.experimental.bco.bco_trainer")
    g = torch.Generator().manual_seed(0)
    trainer = SimpleNamespace(beta=0.1, match_underlying_distribution=False,
                              running=trl_bco.RunningMoments(accelerator=SimpleNamespace(use_distributed=False)))
    ours = get_objective("bco", beta=0.1)
    for step in range(3):
        n = 5 + step
        label = torch.tensor([1.0, 0.0] * n)[:n]
        logps = (torch.randn(n, generator=g) * 20 - 40).requires_grad_()
        ref = torch.randn(n, generator=g) * 20 - 40
        d, u = label > 0.5, label < 0.5
        losses, *_, delta = trl_bco.BCOTrainer.bco_loss(trainer, logps[d], logps[u], ref[d], ref[u], None, None)
        theirs = losses.nanmean()
        (their_grad,) = torch.autograd.grad(theirs, logps)
        out = ours(UnpairedScores(logps, label, ref_logps=ref))
        (our_grad,) = torch.autograd.grad(out.loss, logps)
        assert out.metrics["delta"].item() == pytest.approx(delta.item(), abs=1e-6)
        assert out.loss.item() == pytest.approx(theirs.item(), abs=1e-6)
        torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)
