"""Objectives on point-wise feedback: each example is one completion, a demonstration or a negative (ULMA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import Objective, ObjectiveOutput, Reducer, as_float, register
from alignsuite.scores import SequenceScores, UnpairedScores
from alignsuite.views import View


def _subset_mean(values: Tensor, keep: Tensor) -> Tensor:
    # The mean over one subset of the batch; 0 (with grad) for an empty subset, as the official code adds nothing.
    return (values * keep).sum() / keep.sum().clamp(min=1)


@register("ulma")
class ULMA(Objective):
    """Unified Language Model Alignment: SFT on the demonstrations, point-wise DPO on the negatives.

    With per-token means ``m = l/|y|``, ``u = m - m_ref`` and ``z`` = ``ulma_constant_zx``:

        positives (label 1):  L_sft  = mean_pos( -m )
        negatives (label 0):  L_pref = mean_neg( -log s(-b u - z) )
        L = L_sft + L_pref

    each term the mean over its own subset of the batch (an empty subset adds 0).

    Cai et al. 2023, "ULMA: Unified Language Model Alignment with Human Demonstration and Point-wise Preference",
    arXiv 2312.02554. Follows the official code (Unified-Language-Model-Alignment ``src/llmtuner/tuner/ulma/
    trainer.py``, ``ULMATrainer.ulma_loss`` with its defaults: ``average_log_prob=True``, the "logloss" SFT term, the
    binary negative term, ``beta`` 0.1, ``z`` 0). The official code's other SFT forms and its continuous-score
    negative term are not here. Because each term is a subset mean, the two weigh the same whatever the batch's
    mix of positives and negatives.

    Metrics: ``rewards/chosen``/``rewards/rejected`` are the mean ``b u`` over the positives and over the negatives
    (0 for an empty subset, with ``count/desirable``/``count/undesirable``), ``rewards/accuracies`` the fraction of
    examples whose ``b u`` has the label's sign (a zero counts one half), ``loss/sft`` and ``loss/preference``.
    """

    family = "unpaired"
    paper = "Cai et al. 2023, arXiv 2312.02554"
    convention = "official code (ULMATrainer.ulma_loss) with its defaults: per-token means, logloss SFT, binary negatives"
    row_kind = "unpaired"
    views = (View("completion"),)

    def __init__(self, beta: float = 0.1, ulma_constant_zx: float = 0.0) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = beta
        self.ulma_constant_zx = ulma_constant_zx

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> UnpairedScores:
        s = policy["completion"]
        label = batch["label"].to(s.score.device, torch.float)
        extra = self._extra(policy, ref, batch, ("completion",))
        return UnpairedScores(s.score, label, ref.get("completion"), length=s.length, extra=extra)

    def __call__(self, scores: UnpairedScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        logps, ref_logps, length = as_float(scores.logps, scores.ref_logps, scores.length.clamp(min=1))
        m, u = logps / length, (logps - ref_logps) / length
        positive = (scores.label > 0.5).float()
        sft = _subset_mean(-m, positive)
        preference = _subset_mean(-F.logsigmoid(-self.beta * u - self.ulma_constant_zx), 1 - positive)
        metrics = self._metrics((self.beta * u).detach(), positive.bool())
        metrics["loss/sft"], metrics["loss/preference"] = sft.detach(), preference.detach()
        return ObjectiveOutput(sft + preference, metrics)

    @staticmethod
    def _metrics(rewards: Tensor, positive: Tensor) -> dict[str, Tensor]:
        chosen, rejected = _subset_mean(rewards, positive), _subset_mean(rewards, ~positive)
        right = torch.where(positive, rewards > 0, rewards < 0).float() + 0.5 * (rewards == 0).float()
        return {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": right.mean(),
            "count/desirable": positive.sum().float(),
            "count/undesirable": (~positive).sum().float(),
        }


__all__ = ["ULMA"]
