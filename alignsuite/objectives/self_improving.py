"""SRPO: a generative policy and an in-context self-improvement policy, fitted jointly by one offline loss.

Notation as in :mod:`alignsuite.objectives.pairwise`, ``b`` = ``beta``. Besides each answer given the prompt
(``u_w``, ``u_l``), SRPO scores each answer given a *revision prompt*: the row's prompt with one of its two
answers shown for improvement. ``c_ab = log pi(y_a | x, y_b) - log pi_ref(y_a | x, y_b)``, for ``a`` and ``b``
each ``w`` (the chosen answer) or ``l`` (the rejected one): ``c_wl`` improves the rejected answer into the
chosen one, ``c_lw`` the chosen into the rejected.
"""

from __future__ import annotations

from torch import Tensor

from alignsuite.objectives.base import ObjectiveOutput, PairwiseObjective, Reducer, as_float, register, reward_metrics
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores
from alignsuite.views import View

# (view name, answer column, which revision prompt: the one showing the chosen answer or the rejected one)
REVISION_VIEWS = (
    ("chosen_given_chosen", "chosen", "chosen"),
    ("rejected_given_chosen", "rejected", "chosen"),
    ("chosen_given_rejected", "chosen", "rejected"),
    ("rejected_given_rejected", "rejected", "rejected"),
)


@register("srpo")
class SRPO(PairwiseObjective):
    """Self-Improving Robust Preference Optimization, its offline (non-adversarial) loss.

    With ``c_ab`` as in the module's notation and ``a`` = ``alpha``:

        S = (1/2 - b (c_wl - c_ll))^2 + (1/2 - b (c_ww - c_lw))^2        (self-improvement)
        G = (b (c_wl + u_w - c_lw - u_l) - 1)^2                           (generative)
        L = (1 - a) G + a S

    ``S`` asks the improvement policy, shown either answer, to prefer revising it into the chosen one by the
    margin ``1/(2b)``; ``G`` asks the two-step path "generate ``y_l``, revise it into ``y_w``" to beat
    "generate ``y_w``, revise it into ``y_l``" by ``1/b``. Both are IPO-style regressions, so a pair past its
    target is pushed back. At ``alpha = 0`` with the revision terms equal on both sides (``c_wl = c_lw``) this is
    ``b^2`` times ``ipo`` at ``beta = b/2`` without length normalisation (tested).

    Choi, Ahmadian, Geist, Pietquin and Azar 2024, "Self-Improving Robust Preference Optimization" (ICLR 2025,
    arXiv 2406.01660). The paper's own equations could not be read here, and no official code is public. This
    follows the one implementation found, the unmerged TRL pull request huggingface/trl#1772 (file
    ``trl/trainer/srpo_trainer.py``, ``SRPOTrainer.srpo_loss``, commits 680f6111 and 3857bef9): the same six
    log-ratios, targets and mixture; its ``alpha`` is fixed at 0.8 there and is the default here, and its
    effective ``beta`` is 0.01 (the trainer's ``beta`` argument, default 0.01, overrides the config's 0.1).
    The pull request logs ``u`` unscaled as the rewards; here they are ``b u`` of the two answers given the
    prompt alone, as every pairwise objective of the suite logs them.

    Data: the two revision prompts are batch columns, ``prompt_with_chosen`` and ``prompt_with_rejected``
    (renamed by the options of those names), each the row's prompt with that answer set out for revision: give
    them as ``TextPairs(prompt_fields={"prompt_with_chosen": <field>, "prompt_with_rejected": <field>})``. The
    pull request writes them as an instruction, the prompt, the answer after ``EXAMPLE SUMMARY:`` and a
    closing instruction; the wording is the data's. Each row is scored six times: the two answers under the
    prompt and under each revision prompt, one stacked forward. Revising at inference (the paper's repeated
    self-improvement) is generation with the revision prompt, outside the objective.

    Metrics: the reward metrics, ``srpo/generative`` and ``srpo/self_improvement`` (the means of ``G`` and
    ``S``) and ``srpo/improvement_accuracy``, the fraction of pairs with ``c_wl > c_lw`` (the pull request's
    improvement accuracy).
    """

    family = "pairwise"
    paper = "Choi et al. 2024, arXiv 2406.01660"
    convention = ("unmerged TRL PR huggingface/trl#1772 (srpo_loss; paper's equations not read): alpha 0.8 and its"
                  " effective beta 0.01; revision prompts are data columns; rewards logged as beta * u")

    def __init__(self, beta: float = 0.01, alpha: float = 0.8, prompt_with_chosen: str = "prompt_with_chosen",
                 prompt_with_rejected: str = "prompt_with_rejected") -> None:
        super().__init__(beta=beta)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"srpo: alpha (the self-improvement loss's weight, the generative one's being 1 - alpha)"
                             f" must be in [0, 1], got {alpha!r}")
        columns = {"prompt_with_chosen": prompt_with_chosen, "prompt_with_rejected": prompt_with_rejected}
        for option, column in columns.items():
            if not isinstance(column, str) or not column or column in ("prompt", "chosen", "rejected"):
                raise ValueError(f"srpo: {option} must name the batch column of revision prompts (not prompt, chosen"
                                 f" or rejected), got {column!r}")
        if prompt_with_chosen == prompt_with_rejected:
            raise ValueError(f"srpo: prompt_with_chosen and prompt_with_rejected must be two columns, both are"
                             f" {prompt_with_chosen!r}")
        self.alpha = float(alpha)
        self.prompt_with_chosen, self.prompt_with_rejected = prompt_with_chosen, prompt_with_rejected

    @property
    def views(self) -> tuple[View, ...]:
        prompts = {"chosen": self.prompt_with_chosen, "rejected": self.prompt_with_rejected}
        return (View("chosen"), View("rejected"),
                *(View(name, column=answer, prompt_column=prompts[shown]) for name, answer, shown in REVISION_VIEWS))

    def revisions(self, s: PairScores) -> dict[str, Tensor]:
        """``c_ab`` of each revision view in float32, from its policy and reference scores in ``s.extra``."""
        missing = [name for name, _, _ in REVISION_VIEWS for key in (name, f"ref_{name}") if key not in s.extra]
        if missing:
            raise ValueError(f"srpo needs the scores of its revision views {[n for n, _, _ in REVISION_VIEWS]} and"
                             f" their reference scores; scores.extra lacks {missing} (the module scores them from the"
                             f" batch columns {self.prompt_with_chosen!r} and {self.prompt_with_rejected!r})")
        out = {}
        for name, _, _ in REVISION_VIEWS:
            policy, ref = as_float(s.extra[name], s.extra[f"ref_{name}"])
            out[name] = policy - ref
        return out

    def _terms(self, s: PairScores) -> tuple[Tensor, ...]:
        """``(L, G, S, c_wl - c_lw, b u_w, b u_l)`` per pair."""
        u_w, u_l = float_log_ratios(s)
        c = self.revisions(s)
        c_ww, c_lw = c["chosen_given_chosen"], c["rejected_given_chosen"]
        c_wl, c_ll = c["chosen_given_rejected"], c["rejected_given_rejected"]
        b = self.beta
        improve = (0.5 - b * (c_wl - c_ll)) ** 2 + (0.5 - b * (c_ww - c_lw)) ** 2
        generate = (b * (c_wl + u_w - c_lw - u_l) - 1) ** 2
        return (1 - self.alpha) * generate + self.alpha * improve, generate, improve, c_wl - c_lw, b * u_w, b * u_l

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        losses, *_, chosen, rejected = self._terms(s)
        return losses, chosen, rejected

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        losses, generate, improve, revision_margin, chosen, rejected = self._terms(scores)
        metrics = reward_metrics(chosen, rejected)
        metrics["srpo/generative"] = generate.detach().mean()
        metrics["srpo/self_improvement"] = improve.detach().mean()
        metrics["srpo/improvement_accuracy"] = (revision_margin.detach() > 0).float().mean()
        return ObjectiveOutput(losses.mean(), metrics)


__all__ = ["REVISION_VIEWS", "SRPO"]
