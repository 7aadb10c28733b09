"""Parity with TRL's DPOTrainer losses: the same log-probabilities in, the same loss and gradient out.

TRL (1.13, the pinned version) computes each loss inside ``DPOTrainer._compute_loss`` from the model's logits. Here a
module whose output *is* a logits tensor (a leaf with grad) stands in for the model, so both sides read exactly the
same per-token log-probabilities: TRL through its own code path (completion mask, sums, loss type), alignsuite
through ``PairScores`` built from the same logits. The reference log-probs are given precomputed to both. Skipped
when trl is not installed (``pip install -c constraints.txt trl``).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")
from trl import DPOTrainer  # noqa: E402

from alignsuite.objectives import get_objective  # noqa: E402
from alignsuite.scores import PairScores  # noqa: E402

B, T, V = 3, 9, 11
# (alignsuite name and options, TRL loss_type and DPOConfig fields)
CASES = [
    (("ln_dpo", {"beta": 0.1}), ("sigmoid_norm", {"beta": 0.1})),
    (("ln_dpo", {"beta": 2.0}), ("sigmoid_norm", {"beta": 2.0})),
    (("robust", {"beta": 0.1, "label_smoothing": 0.1}), ("robust", {"beta": 0.1, "label_smoothing": 0.1})),
    (("robust", {"beta": 0.5, "label_smoothing": 0.3}), ("robust", {"beta": 0.5, "label_smoothing": 0.3})),
    (("dpo", {"beta": 0.1}), ("sigmoid", {"beta": 0.1})),
]


class LogitsModel(torch.nn.Module):
    """Returns its own logits whatever the input: the log-probs both sides read are then exactly the same."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, **_):
        return SimpleNamespace(logits=self.logits)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * B, T, V, generator=g, dtype=torch.float64) * 3
    input_ids = torch.randint(0, V, (2 * B, T), generator=g)
    # a prompt of 3 tokens, then completions of different lengths (chosen rows first, then rejected, as TRL stacks)
    lengths = [4, 6, 2, 5, 3, 6]
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        completion_mask[i, 3 : 3 + n] = 1
    attention_mask = (torch.arange(T) < 3 + torch.tensor(lengths)[:, None]).long()
    ref = torch.randn(2 * B, generator=g, dtype=torch.float64) * 2 - 8
    return logits, input_ids, attention_mask, completion_mask, ref


def trl_loss_and_grad(loss_type: str, config: dict, seed: int = 0):
    logits, input_ids, attention_mask, completion_mask, ref = batch(seed)
    model = LogitsModel(logits).train()
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], use_weighting=False,
        beta=config["beta"], label_smoothing=config.get("label_smoothing", 0.0),
        args=SimpleNamespace(discopop_tau=0.05), _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), model.logits.grad


def alignsuite_loss_and_grad(name: str, hparams: dict, seed: int = 0):
    logits, input_ids, _, completion_mask, ref = batch(seed)
    logits = logits.clone().requires_grad_(True)
    # log pi(token t+1 | tokens <= t), summed over the completion tokens: the token backbones' score
    per_token = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask[:, 1:].to(per_token.dtype)
    scores, lengths = (per_token * mask).sum(1), mask.sum(1)
    s = PairScores(scores[:B], scores[B:], ref[:B], ref[B:], lengths[:B], lengths[B:])
    loss = get_objective(name, **hparams)(s).loss
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("ours,theirs", CASES, ids=[f"{o[0]}-{t[0]}-{t[1]['beta']}" for o, t in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_loss_and_gradient_as_trl(ours, theirs, seed):
    loss, grad = alignsuite_loss_and_grad(*ours, seed=seed)
    trl_loss, trl_grad = trl_loss_and_grad(*theirs, seed=seed)
    # alignsuite computes losses in float32 whatever the scores' precision; TRL keeps float64 here
    torch.testing.assert_close(loss.double(), trl_loss.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, trl_grad.to(grad.dtype), rtol=1e-5, atol=1e-7)
    assert grad.abs().max() > 1e-4  # the comparison is not between two zeros


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == "1.13.0"
