"""What every objective shares: the output type, the registry, the reward metrics and the SFT term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsuite.scores import PairScores, Scores, SequenceScores, TokenNeeds
from alignsuite.views import View

_REGISTRY: dict[str, type["Objective"]] = {}


@dataclass
class ObjectiveOutput:
    """``loss``: the batch mean of per-pair losses (a scalar with grad); ``metrics``: detached scalars."""

    loss: Tensor
    metrics: dict[str, Tensor]


def register(name: str):
    """Class decorator: make an objective reachable as ``get_objective(name)``."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_objective(name: str, **hparams) -> "Objective":
    """The objective registered as ``name`` (the literature's name, lower case), built with ``hparams``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return cls(**hparams)


def available_objectives() -> list[str]:
    return sorted(_REGISTRY)


# Metric names before they became TRL's (DPOTrainer's), so that a recipe still using one is told the new name.
RENAMED_METRICS = {"rewards/accuracy": "rewards/accuracies", "rewards/margin": "rewards/margins",
                   "rewards/imageless_accuracy": "rewards/imageless_accuracies",
                   "rewards/imageless_margin": "rewards/imageless_margins"}


def renamed_metric(key: str) -> str | None:
    """The current name of a logged metric ``key`` (``val/rewards/accuracy``) that used an old name, or None."""
    for old, new in RENAMED_METRICS.items():
        if key == old or key.endswith("/" + old):
            return key[: len(key) - len(old)] + new
    return None


def objective_classes() -> dict[str, type["Objective"]]:
    """Every registered objective's class by its name (``{"dpo": DPO, ...}``)."""
    return dict(_REGISTRY)


def reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """The four reward metrics every pairwise objective logs, named as TRL's DPOTrainer names them; a tie counts
    one half in the accuracy."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    won = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": won.mean(),
    }


Reducer = Callable[[Tensor], Tensor]


def _on(device: torch.device, value: Tensor) -> Tensor:
    return value.to(device) if isinstance(value, Tensor) else torch.as_tensor(value, device=device, dtype=torch.float)


class Objective:
    """A pure function from scores to loss and metrics.

    An objective declares what it scores, and the module (which names no method) provides exactly that:

    - ``views``: the :class:`~alignsuite.views.View` of each row it scores (chosen and rejected by default;
      a mismatched completion, a sampled loser, a completion under a transformed condition, k ranked
      responses ...);
    - ``row_kind``: "pairs" or "unpaired", the kind of rows its data must hold (checked at ``setup``);
    - ``extra_columns``: batch columns copied into ``scores.extra`` (a reward per side, say);
    - ``needs_reference``: whether reference scores (and weights) are needed at all;
    - ``token_needs``: for objectives that weigh tokens, what they read per token (then ``pack`` gets the
      backbone's :class:`~alignsuite.scores.TokenOutputs` rather than sequence scores).
    - ``extra_references``: names of further score sources (WSPO's weak pair), one Reference each under
      ``model.extra_references``; their scores arrive in ``scores.extra`` as ``ref_<name>_<view>``.

    ``pack`` turns each view's policy and reference scores into the score type ``__call__`` reads.
    ``__call__(scores, reduce)`` gets ``reduce``, a function from local per-example values to their mean
    over every process, for objectives whose statistics span the global batch (KTO's reference point).
    """

    name: ClassVar[str] = ""
    # What the table of objectives (docs, generated from this registry) says of each: its family ("pairwise",
    # "reference-free", "unpaired", "listwise", "token-level", "denoising", "multimodal" ...), its paper
    # ("Rafailov et al. 2023, arXiv 2305.18290") and, where sources differ, the one it follows and how.
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    convention: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = True
    row_kind: ClassVar[str] = "pairs"
    views: ClassVar[tuple[View, ...]] = (View("chosen"), View("rejected"))
    extra_columns: ClassVar[tuple[str, ...]] = ()
    # A token-level objective declares what it reads per token (TokenScores); None: sequence scores.
    token_needs: ClassVar[TokenNeeds | None] = None
    # Names of further references (model.extra_references) whose scores the objective reads; an instance may set them.
    extra_references: tuple[str, ...] = ()

    def configure(self, backbone) -> None:
        """Build trainable parts that depend on the model's shapes (SparsePO's mask network), once the backbone's
        models are built and before the optimizer is made; most objectives have none."""

    def __call__(self, scores, reduce: Reducer | None = None) -> ObjectiveOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict):
        raise NotImplementedError

    def use_data(self, layout) -> None:
        """The data's layout, handed over at setup before its columns are checked: an objective that depends on
        what the rows are (MODPO on the named preference dimensions, ``layout.preference_dimensions``) checks its
        options against it here and declares its columns. Nothing by default."""

    def state(self) -> dict:
        """What the objective carries across steps (BCO's running reward mean), saved with each checkpoint under
        ``checkpoint["objective_state"]`` and handed back to :meth:`load_state` on resume; ``{}``: nothing."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""

    def _extra(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict,
               main: tuple[str, ...]) -> dict[str, Tensor]:
        """``extra``: the extra columns not in ``main`` (which the score type holds itself), then every view not in
        ``main`` as ``<name>``, ``<name>_len`` and ``ref_<name>``, and prompt scores as ``<name>_prompt`` /
        ``<name>_prompt_len``."""
        device = next(iter(policy.values())).score.device
        extra = {}
        for column in (c for c in self.extra_columns if c not in main):
            if column not in batch:
                raise KeyError(f"objective {self.name!r} needs the data column {column!r}, which the batch lacks")
            extra[column] = _on(device, batch[column])
        for name, s in policy.items():
            if name not in main:
                extra[name], extra[f"{name}_len"] = s.score, s.length
                if ref.get(name) is not None:
                    extra[f"ref_{name}"] = ref[name]
            if s.prompt is not None:
                extra[f"{name}_prompt"], extra[f"{name}_prompt_len"] = s.prompt, s.prompt_length
        return extra

    def _check_reference(self, scores: Scores) -> None:
        if self.needs_reference and not scores.has_reference:
            raise ValueError(f"objective {self.name!r} needs reference scores, and the batch has none")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class PairwiseObjective(Objective):
    """A pairwise objective: per-pair losses and the implicit rewards they come with.

    Subclasses implement :meth:`pair_losses`. Any of them can add the chosen side's per-token NLL
    with weight ``sft_weight`` (RPO, Pang et al. 2024, "Iterative Reasoning Preference Optimization":
    ``L = L_pref + alpha * NLL(y_w) / |y_w|``), averaged as ``nll`` says (:func:`chosen_nll`; per
    sequence unless a subclass follows its reference code's convention).
    """

    # How the SFT term averages (:func:`chosen_nll`); objectives that follow a reference code set their own.
    nll: str = "completion_per_sequence"

    def __init__(self, beta: float = 0.1, sft_weight: float = 0.0) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
        self.beta = beta
        self.sft_weight = sft_weight

    def pair_losses(self, s: PairScores) -> tuple[Tensor, Tensor, Tensor]:
        """``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``."""
        raise NotImplementedError

    def pack(self, policy: dict[str, SequenceScores], ref: dict[str, Tensor | None], batch: dict) -> PairScores:
        c, r = policy["chosen"], policy["rejected"]
        extra = self._extra(policy, ref, batch, ("chosen", "rejected"))
        return PairScores(c.score, r.score, ref.get("chosen"), ref.get("rejected"), c.length, r.length, extra)

    def __call__(self, scores: PairScores, reduce: Reducer | None = None) -> ObjectiveOutput:
        self._check_reference(scores)
        losses, chosen_rewards, rejected_rewards = self.pair_losses(scores)
        loss = losses.mean()
        metrics = reward_metrics(chosen_rewards, rejected_rewards)
        return ObjectiveOutput(self.with_sft(loss, scores, metrics), metrics)

    def with_sft(self, loss: Tensor, scores: PairScores, metrics: dict) -> Tensor:
        """``loss`` plus ``sft_weight`` times the chosen answers' NLL (when above 0), both parts logged."""
        if self.sft_weight <= 0:
            return loss
        nll = chosen_nll(scores, self.nll)
        metrics["loss/preference"] = loss.detach()
        metrics["loss/sft"] = nll.detach()
        return loss + self.sft_weight * nll


def log_ratios(s: PairScores) -> tuple[Tensor, Tensor]:
    """``u_w = log pi(y_w) - log pi_ref(y_w)`` and ``u_l`` likewise."""
    return s.chosen - s.ref_chosen, s.rejected - s.ref_rejected


NLLConvention = Literal["completion_per_sequence", "completion_pooled", "prompt_and_completion_pooled"]


def check_nll(value: str, allowed: tuple[str, ...] = get_args(NLLConvention)) -> None:
    if value not in allowed:
        raise ValueError(f"nll must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def chosen_nll(s: PairScores, convention: NLLConvention = "completion_per_sequence") -> Tensor:
    """The chosen side's per-token negative log-likelihood, averaged over the batch by ``convention``:

    - ``completion_per_sequence``: ``mean_i(-l_i / n_i)``, each answer's per-token mean, then the mean over
      answers (the papers' ``-1/|y| log pi(y|x)`` averaged over the batch);
    - ``completion_pooled``: ``-sum_i l_i / sum_i n_i``, one mean over every answer token of the batch (what
      ``torch.nn.CrossEntropyLoss`` over the batch's labels computes: TRL's CPO, the official SimPO code);
    - ``prompt_and_completion_pooled``: the same over the prompt's tokens too (all but the first), read from
      ``extra["chosen_prompt"]``/``extra["chosen_prompt_len"]`` (the view ``View("chosen", score_prompt=True)``):
      the official ORPO code and TRL's ORPO.

    Pooling weights long answers more; per sequence weights every pair alike.
    """
    if convention == "completion_per_sequence":
        return (-s.chosen / s.chosen_len.clamp(min=1)).mean()
    logps, count = s.chosen, s.chosen_len
    if convention == "prompt_and_completion_pooled":
        if s.extra.get("chosen_prompt") is None:
            raise ValueError(
                "nll='prompt_and_completion_pooled' needs the chosen prompt's scores (extra['chosen_prompt']), which"
                " this backbone did not provide (it asks View('chosen', score_prompt=True)); use a token backbone,"
                " or nll='completion_pooled' / 'completion_per_sequence'"
            )
        logps, count = logps + s.extra["chosen_prompt"], count + s.extra["chosen_prompt_len"]
    # Summed over a whole batch, so never in less than float32.
    dtype = torch.promote_types(logps.dtype, torch.float32)
    return -logps.to(dtype).sum() / count.to(dtype).sum().clamp(min=1)


def mean_logps(s: PairScores) -> tuple[Tensor, Tensor]:
    """Length-normalised log-likelihoods of each side (per token, or per scored element)."""
    return s.chosen / s.chosen_len.clamp(min=1), s.rejected / s.rejected_len.clamp(min=1)


def as_float(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Losses are computed in float32 whatever the training precision (exp and log1p are fragile in bf16)."""
    return tuple(t.float() for t in tensors)


def smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """``-(1 - eps) log sigma(z) - eps log sigma(-z)``: the logistic loss against a preference label that is
    flipped with probability ``eps`` (cDPO; also the form AOT and CPO smooth with)."""
    loss = -F.logsigmoid(z)
    if label_smoothing > 0:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def check_label_smoothing(value: float, *, positive: bool = False) -> None:
    """``label_smoothing`` is a flip probability below one half (at 0.5 the label carries no information)."""
    low_ok = value > 0 if positive else value >= 0
    if not (low_ok and value < 0.5):
        interval = "(0, 0.5)" if positive else "[0, 0.5)"
        raise ValueError(f"label_smoothing must be in {interval}, got {value}")


__all__ = [
    "Objective",
    "ObjectiveOutput",
    "NLLConvention",
    "Reducer",
    "PairwiseObjective",
    "available_objectives",
    "objective_classes",
    "as_float",
    "check_label_smoothing",
    "check_nll",
    "chosen_nll",
    "get_objective",
    "log_ratios",
    "mean_logps",
    "register",
    "reward_metrics",
    "smoothed_logistic",
]
