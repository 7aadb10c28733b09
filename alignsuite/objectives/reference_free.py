"""Pairwise objectives without a reference model: SimPO, ORPO, ASFT, CPO.

They read only the policy's scores: ``l_w``/``l_l`` summed log-probs, ``m_w = l_w/|y_w|`` and
``m_l = l_l/|y_l|`` per-token means. Reference scores, if the batch has them, are ignored, and the module
loads no reference weights for them (``needs_reference = False``).

``NLL(y_w)`` is the chosen answer's per-token negative log-likelihood, averaged over the batch as the
option ``nll`` says (:func:`chosen_nll`). The papers write it per sequence; the official code of each
method, and TRL, pool it over the batch's tokens (``torch.nn.CrossEntropyLoss`` over the labels), and ORPO's
code counts the prompt's tokens too. Each default here is its official code's convention, so the numbers
agree with it; ``nll="completion_per_sequence"`` gives the paper's.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.objectives.base import (
    ObjectiveOutput,
    PairwiseObjective,
    Reducer,
    as_float,
    check_label_smoothing,
    check_nll,
    mean_logps,
    register,
    smoothed_logistic,
)
from alignsuite.scores import PairScores
from alignsuite.views import View

# The SFT term's conventions (see the module docstring); each objective's default is its official code's.
CompletionNLL = Literal["completion_pooled", "completion_per_sequence"]
ORPONLL = Literal["prompt_and_completion_pooled", "completion_pooled", "completion_per_sequence"]


@register("simpo")
class SimPO(PairwiseObjective):
    """Simple Preference Optimization: length-normalised likelihood margin with a target gap, no reference.

    ``L = -log s(b (m_w - m_l) - gamma)`` (+ ``sft_weight * NLL(y_w)`` if set); logged rewards ``b * m``.

    Meng, Xia and Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward".
    ``gamma`` is the paper's absolute margin. The official code instead takes ``gamma_beta_ratio`` = gamma/b;
    give ``gamma = ratio * beta`` to reproduce a recipe. Defaults: ``beta = 2.0`` (official trainer; the README
    recommends 2.0-2.5, up to 10) and ``gamma = 1.0``, i.e. gamma/beta = 0.5, the README's suggested start
    (the tuned Llama3/Gemma settings use 0.5-0.55). TRL's SimPO keeps CPO's beta = 0.1, which is far too
    small for a reference-free per-token margin; we do not follow it.

    The optional SFT term follows the official code (princeton-nlp/SimPO ``scripts/simpo_trainer.py``,
    ``SimPOTrainer.get_batch_loss_metrics``: ``nn.CrossEntropyLoss()`` over the chosen labels, prompt
    masked): ``nll="completion_pooled"``, ``-sum l_w / sum |y_w|`` over the batch. ``"completion_per_sequence"``
    averages each answer's per-token NLL instead.
    """

    family = "reference-free"
    paper = "Meng et al. 2024, arXiv 2405.14734"
    convention = "the official code's beta 2.0 and pooled SFT term (TRL keeps CPO's beta 0.1); gamma is the paper's absolute margin"

    needs_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, sft_weight: float = 0.0,
                 nll: CompletionNLL = "completion_pooled") -> None:
        super().__init__(beta=beta, sft_weight=sft_weight)
        if gamma < 0:
            raise ValueError(f"gamma (the SimPO target margin) must be >= 0, got {gamma}")
        check_nll(nll, ("completion_pooled", "completion_per_sequence"))
        self.gamma = gamma
        self.nll = nll

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        losses = -F.logsigmoid(self.beta * (m_w - m_l) - self.gamma)
        return losses, self.beta * m_w, self.beta * m_l


# A per-token mean log-prob of exactly 0 (probability 1) would make log(1 - p) = -inf; stopping a hair short
# of it bounds the odds without changing any realistic value.
_LOG1MEXP_MAX = -1e-6


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends.

    Following Maechler 2012, "Accurately Computing log(1 - exp(-|a|))": ``log(-expm1(x))`` near 0, where
    ``1 - exp(x)`` cancels; ``log1p(-exp(x))`` below ``-ln 2``. Each branch sees only inputs from its own
    range, so neither puts a NaN or inf into the other's gradient.
    """
    x = x.float().clamp(max=_LOG1MEXP_MAX)
    cut = -math.log(2.0)
    near_zero = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near_zero, far)


@register("orpo")
class ORPO(PairwiseObjective):
    """Odds Ratio Preference Optimization: SFT plus a log-odds-ratio penalty, in one stage and without a reference.

    With ``p = exp(m)`` the per-token-mean likelihood and ``odds = p / (1 - p)``:
    ``log_odds = (m_w - m_l) - [log(1 - e^m_w) - log(1 - e^m_l)]``,
    ``L = NLL(y_w) - lambda * log s(log_odds)``; logged rewards ``lambda * m`` (as TRL does).

    Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
    (``L_SFT + lambda * L_OR``).
    The paper's lambda is the hyper-parameter ``beta`` here (TRL's name), default 0.1 (TRL, and the official
    Mistral-ORPO-beta recipe; the official script's bare default is 1.0). The NLL term is part of ORPO and is
    always on. ``log(1 - e^m)`` is computed in float32 with :func:`log1mexp`; the odds ratio uses the
    completion's per-token means, as the paper and both codes do.

    The NLL term, ``nll``:

    - ``"prompt_and_completion_pooled"`` (default, the official code's and TRL's): the chosen row's prompt
      *and* answer tokens (all but the first, which nothing predicts), pooled over the batch:
      ``-(sum l_w + sum l_x) / (sum |y_w| + sum |x|)``. xfactlab/orpo ``src/orpo_trainer.py``,
      ``ORPOTrainer.compute_loss``: ``pos_loss = outputs_pos.loss``, the model's cross-entropy with the chosen
      input ids as labels (padding masked); TRL ``trl/experimental/orpo/orpo_trainer.py``,
      ``ORPOTrainer.concatenated_forward`` ("orpo chosen nll loss is computed over the full prompt and
      response"). This objective then scores ``View("chosen", score_prompt=True)``, so the backbone returns
      the prompt's log-likelihood too (a token backbone; others cannot). The official script pads with eos,
      so its labels also lose each row's eos; TRL keeps it, as we do.
    - ``"completion_pooled"``: the answer's tokens only, pooled (the official code's ``--disable_prompt_loss``).
    - ``"completion_per_sequence"``: each answer's per-token NLL, averaged over the pairs (the paper's
      ``L_SFT`` as written).

    Extra metrics: ``log_odds_chosen`` (mean log odds ratio of chosen over rejected) and ``log_odds_ratio``
    (mean ``log s(log_odds)``, the quantity the penalty maximises).
    """

    family = "reference-free"
    paper = "Hong et al. 2024, arXiv 2403.07691"
    convention = "the official code's and TRL's NLL over prompt and completion, pooled"

    needs_reference = False

    def __init__(self, beta: float = 0.1, nll: ORPONLL = "prompt_and_completion_pooled") -> None:
        # The NLL is ORPO's own SFT term with weight 1: the base class adds it and logs loss/sft, loss/preference.
        super().__init__(beta=beta, sft_weight=1.0)
        check_nll(nll)
        self.nll = nll

    @property
    def views(self) -> tuple[View, ...]:
        return (View("chosen", score_prompt=self.nll == "prompt_and_completion_pooled"), View("rejected"))

    @staticmethod
    def log_odds(s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        return (m_w - m_l) - (log1mexp(m_w) - log1mexp(m_l)), m_w, m_l

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        log_odds, m_w, m_l = self.log_odds(s)
        return -self.beta * F.logsigmoid(log_odds), self.beta * m_w, self.beta * m_l

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        out = super().__call__(scores)
        with torch.no_grad():
            log_odds = self.log_odds(scores)[0]
        out.metrics["log_odds_ratio"] = F.logsigmoid(log_odds).mean()
        out.metrics["log_odds_chosen"] = log_odds.mean()
        return out


@register("asft")
class ASFT(PairwiseObjective):
    """Aligned Supervised Fine-Tuning: SFT plus each answer's own likelihood pushed up or down, without a reference.

    With ``p = exp(m)`` the per-token-mean likelihood and ``odds = p / (1 - p)`` as in ORPO:
    ``L = NLL(y_w) - lambda * [log s(log odds(y_w)) + log s(-log odds(y_l))]``
    ``  = NLL(y_w) - lambda * [m_w + log(1 - e^m_l)]``
    (``s(log odds) = p``): a binary cross-entropy that labels the chosen answer 1 and the rejected 0, each on its
    own, where ORPO's ``-log s(log odds(y_w) - log odds(y_l))`` compares them (ORPO's alignment term is never
    larger: the two differ by ``-log(p_w (1 - p_l) + p_l (1 - p_w))``). Logged rewards ``lambda * m``, as ORPO's.

    Wang, Sun, Hua and Fang 2024, "ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood". The paper's
    text and code could not be read here; the form is as Gorbatovski et al. 2025 ("The Differences Between Direct
    Alignment Algorithms are a Blur", arXiv 2502.01237, section 2.4 and appendix A.1, Table 4) write it:
    ``L_ASFT = -log pi(y_w|x) - lambda [log s(r_odds(y_w)) + log s(-r_odds(y_l))]`` with length-normalised
    probabilities ``p(y)^(1/|y|)``, i.e. per-token means, as here. ``beta`` is the paper's lambda (ORPO's name
    here and in TRL); its default 0.1 is ORPO's, the paper's value was not found (Gorbatovski et al. search
    lambda in {0.1, 0.2, 0.5, 1.0}, "inspired by values suggested in ORPO and ASFT"). ``log(1 - e^m)`` is computed
    in float32 with :func:`log1mexp`.

    ``nll`` is the NLL term's average, as for ORPO: ``"completion_per_sequence"`` (default: each chosen answer's
    per-token NLL, the ``-log pi(y_w|x)`` written per sequence with the same length normalisation), or
    ``"completion_pooled"`` / ``"prompt_and_completion_pooled"`` (ORPO's official code's conventions).
    """

    family = "reference-free"
    paper = "Wang et al. 2024, arXiv 2409.10571"
    convention = ("as Gorbatovski et al. 2025 (arXiv 2502.01237) write it, per-token means; lambda (beta here) 0.1, "
                  "ORPO's default (the paper's not found); NLL per sequence")

    needs_reference = False

    def __init__(self, beta: float = 0.1, nll: ORPONLL = "completion_per_sequence") -> None:
        super().__init__(beta=beta, sft_weight=1.0)  # the NLL term is part of ASFT, weight 1
        check_nll(nll)
        self.nll = nll

    @property
    def views(self) -> tuple[View, ...]:
        return (View("chosen", score_prompt=self.nll == "prompt_and_completion_pooled"), View("rejected"))

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        m_w, m_l = as_float(*mean_logps(s))
        # log s(log odds(y_w)) = log p_w = m_w and log s(-log odds(y_l)) = log(1 - p_l); m_w is capped as
        # log1mexp caps m_l, so that a likelihood of exactly 1 on either side has a finite loss.
        return -self.beta * (m_w.clamp(max=0.0) + log1mexp(m_l)), self.beta * m_w, self.beta * m_l


@register("cpo")
class CPO(PairwiseObjective):
    """Contrastive Preference Optimization: reference-free DPO on summed log-probs plus an NLL anchor.

    ``L = -(1 - eps) log s(b (l_w - l_l)) - eps log s(-b (l_w - l_l)) + cpo_alpha * NLL(y_w)``;
    logged rewards ``b * l``.

    Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in Machine
    Translation" (the paper adds the NLL with weight 1; ``cpo_alpha`` scales it, as in TRL).
    The preference term uses summed log-probs, as the paper and TRL do. The NLL follows TRL, CPO's reference
    code (``trl/experimental/cpo/cpo_trainer.py``, ``CPOTrainer.concatenated_forward``:
    ``cross_entropy_loss(all_logits[:len_chosen], labels[:len_chosen])`` over the labels with the prompt
    masked): ``nll="completion_pooled"``, ``-sum l_w / sum |y_w|`` over the batch; ``"completion_per_sequence"``
    averages each answer's per-token NLL instead (the paper's ``-log pi(y_w|x)`` per example).
    Defaults: beta 0.1, cpo_alpha 1.0, no label smoothing.
    """

    family = "reference-free"
    paper = "Xu et al. 2024, arXiv 2401.08417"
    convention = "TRL's: summed log-probs, pooled NLL scaled by cpo_alpha"

    needs_reference = False

    def __init__(self, beta: float = 0.1, cpo_alpha: float = 1.0, label_smoothing: float = 0.0,
                 nll: CompletionNLL = "completion_pooled") -> None:
        if cpo_alpha < 0:
            raise ValueError(f"cpo_alpha must be >= 0, got {cpo_alpha}")
        check_label_smoothing(label_smoothing)
        check_nll(nll, ("completion_pooled", "completion_per_sequence"))
        super().__init__(beta=beta, sft_weight=cpo_alpha)  # the base class adds cpo_alpha * NLL(y_w)
        self.cpo_alpha = cpo_alpha
        self.label_smoothing = label_smoothing
        self.nll = nll

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        l_w, l_l = as_float(s.chosen, s.rejected)
        losses = smoothed_logistic(self.beta * (l_w - l_l), self.label_smoothing)
        return losses, self.beta * l_w, self.beta * l_l


__all__ = ["ASFT", "CPO", "ORPO", "SimPO", "log1mexp"]
