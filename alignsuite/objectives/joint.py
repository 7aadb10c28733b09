"""Preferences between answers to different prompts: JPO, the loss of the DOVE framework.

A row holds two (instruction, answer) pairs: the chosen answer under the row's ``prompt``, the rejected one under
its own prompt, the column ``prompt_rejected`` (``TextPairs(prompt_fields={"prompt_rejected": <field>})``). Each
side is scored by the view ``View(..., joint=True)``: the log-likelihood of instruction and answer together,
``log pi(x, y) = log pi(x) + log pi(y | x)`` (every token after the first), by the policy and by the reference.
"""

from __future__ import annotations

from torch import Tensor

from alignsuite.objectives.base import PairwiseObjective, check_label_smoothing, register, smoothed_logistic
from alignsuite.objectives.pairwise import float_log_ratios
from alignsuite.scores import PairScores
from alignsuite.views import View

REJECTED_PROMPT = "prompt_rejected"  # the batch column of the rejected answer's own instruction


@register("jpo")
class JPO(PairwiseObjective):
    """Joint Preference Optimisation: DPO over (instruction, answer) pairs that need not share the instruction.

    With ``u = log pi(x, y) - log pi_ref(x, y)`` for each side (``x_w`` the row's prompt, ``x_l`` its
    ``prompt_rejected``): ``L = -(1 - eps) log s(b (u_w - u_l)) - eps log s(-b (u_w - u_l))``; logged rewards
    ``b * u``.

    Bansal, Suvarna, Bhatt, Peng, Chang and Grover 2024, "Comparing Bad Apples to Good Oranges: Aligning Large
    Language Models via Joint Preference Optimization" (arXiv 2404.00530). Follows the official code
    (Hritikbansal/dove ``dove/custom_dove_trainer.py``, ``joint_distribution=True``): the labels keep the
    instruction's tokens after BOS, so each side's score is the joint log-likelihood, and the loss is DPO's
    sigmoid on those scores (``beta = 0.1``, ``label_smoothing`` 0 as there). ``joint=False`` scores each answer
    given its own instruction only (the code's conditional mode, DPO when both prompts agree).

    Pitfall: with a chat template, template tokens count in each side's joint score; they cancel only where
    both sides render them alike.
    """

    family = "pairwise"
    paper = "Bansal et al. 2024, arXiv 2404.00530"
    convention = "official code's joint_distribution=True: instruction tokens after the first are scored"

    def __init__(self, beta: float = 0.1, joint: bool = True, label_smoothing: float = 0.0) -> None:
        super().__init__(beta=beta)
        check_label_smoothing(label_smoothing)
        self.joint = joint
        self.label_smoothing = label_smoothing

    @property
    def views(self) -> tuple[View, ...]:
        return (View("chosen", joint=self.joint),
                View("rejected", prompt_column=REJECTED_PROMPT, joint=self.joint))

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        u_w, u_l = float_log_ratios(s)
        losses = smoothed_logistic(self.beta * (u_w - u_l), self.label_smoothing)
        return losses, self.beta * u_w, self.beta * u_l


__all__ = ["JPO", "REJECTED_PROMPT"]
