"""Groups of annotators found by expectation-maximisation over a mixture of reward models (MaxMin-RLHF's first
step, Chakraborty et al. 2024, ICML): who judges alike, from the labels alone.

Each pair ``i`` says its annotator ``a_i`` preferred ``chosen`` to ``rejected``; ``x_i = f(chosen) - f(rejected)`` is
the difference of the two answers' features (rewards the rows hold per answer: several dimensions' scores, reward
models' outputs). Component ``k`` is a Bradley-Terry model with a linear reward ``r_k(y) = theta_k . f(y)``, so
``P_k(chosen > rejected) = s(theta_k . x_i)``, and every annotator belongs to one component, ``pi_k`` the share of
annotators in it. EM, as the paper's E- and M-steps (an annotator's labels go to the model under which they are most
likely; each model is fitted to its labels), with soft assignments:

- E-step: ``g[a, k] ∝ pi_k prod_{i of a} s(theta_k . x_i)``, the posterior that annotator ``a`` is in component ``k``;
- M-step: ``theta_k = argmax sum_i g[a_i, k] log s(theta_k . x_i) - (l2 / 2) |theta_k|^2`` (Newton's method; the
  penalty keeps ``theta`` finite when a component's labels are separable), ``pi_k = mean_a g[a, k]``.

The paper's reward models are networks over the text and its policy step is PPO on the worst group's reward; here
the rewards are linear in features the rows hold, and the groups feed an offline max-min objective (``gr_dpo``).
"""

from __future__ import annotations

import math
import random

import numpy as np

from alignsuite.data.errors import DataError
from alignsuite.data.procedures.base import Procedure, Report, Row, as_score, carry, get_field, origin


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def fit_component(x: np.ndarray, weight: np.ndarray, l2: float, theta: np.ndarray, steps: int = 25) -> np.ndarray:
    """The M-step for one component: ``argmax_theta sum_i weight_i log s(theta . x_i) - (l2 / 2) |theta|^2`` by
    Newton's method from ``theta`` (concave, so it converges to the one maximum)."""
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = x.T @ (weight * (1.0 - p)) - l2 * theta
        hess = (x * (weight * p * (1.0 - p))[:, None]).T @ x + l2 * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return theta


def em_mixture(x: np.ndarray, annotator: np.ndarray, k: int, l2: float = 1.0, iterations: int = 100,
               restarts: int = 4, seed: int = 0) -> dict:
    """EM for a mixture of ``k`` linear Bradley-Terry models over annotators: ``x`` ``[N, D]`` the pairs' feature
    differences (chosen minus rejected), ``annotator`` ``[N]`` integer ids ``0..A-1``. From ``restarts`` seeded random
    soft assignments, the run with the highest penalised log-likelihood; its components numbered by their share,
    the largest first. Returns ``theta`` ``[k, D]``, ``share`` ``[k]``, ``posterior`` ``[A, k]`` and the penalised
    log-likelihood after each iteration (``history``, never falling: EM's guarantee, checked by the tests)."""
    n_annotators = int(annotator.max()) + 1
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        post = rng.dirichlet(np.ones(k), size=n_annotators)
        theta = np.zeros((k, x.shape[1]))
        history = []
        for _ in range(iterations):
            share = post.mean(axis=0)
            theta = np.stack([fit_component(x, post[annotator, j], l2, theta[j]) for j in range(k)])
            per_row = log_sigmoid(x @ theta.T)  # [N, k]
            per_annotator = np.zeros((n_annotators, k))
            np.add.at(per_annotator, annotator, per_row)
            joint = np.log(np.maximum(share, 1e-300)) + per_annotator
            norm = np.logaddexp.reduce(joint, axis=1)
            post = np.exp(joint - norm[:, None])
            history.append(float(norm.sum() - 0.5 * l2 * (theta ** 2).sum()))
            if len(history) > 1 and abs(history[-1] - history[-2]) < 1e-9 * max(1.0, abs(history[-1])):
                break
        if best is None or history[-1] > best["history"][-1]:
            best = {"theta": theta, "share": post.mean(axis=0), "posterior": post, "history": history}
    order = np.argsort(-best["share"], kind="stable")
    return {"theta": best["theta"][order], "share": best["share"][order], "posterior": best["posterior"][:, order],
            "history": best["history"]}


class MixtureGroups(Procedure):
    """Each pair's ``group``: the component of a mixture of reward models its annotator most likely belongs to, found
    by EM over the annotators (`em_mixture`); pairs keep their order and columns (``group`` is written, or
    replaced).

    Input rows: ordered pairs (``chosen`` preferred by the row's annotator), the annotator's id (``annotator``) and,
    per feature, the reward of the chosen and of the rejected answer (``features: {name: [chosen column, rejected
    column]}``; `GroupPairs` writes ``score_chosen_<d>`` and ``score_rejected_<d>``). Components are numbered by
    their share of annotators, the largest first, so groups found on the training and on the validation split
    (each its own fit) name the same people alike when the shares differ. The log names each group's share and
    reward weights.

    Args:
        features: ``{name: [chosen column, rejected column]}``, one per feature of the linear rewards.
        num_groups: ``k``, the mixture's components.
        annotator: the column naming each pair's annotator (any text or number).
        l2: the weights' Gaussian penalty (a prior), which keeps them finite on separable labels.
        iterations: EM iterations at most (it stops when the log-likelihood stops moving).
        restarts: seeded random starts; the best fit is kept.
        seed: seed of the starts.
        splits: the splits it runs on.
    """

    extra_columns = ("group",)

    def __init__(self, features: dict[str, list[str]], num_groups: int = 2, annotator: str = "annotator",
                 l2: float = 1.0, iterations: int = 100, restarts: int = 4, seed: int = 0,
                 splits: tuple[str, ...] | list[str] = ("train", "val")) -> None:
        super().__init__(splits)
        if not features or any(not isinstance(v, (list, tuple)) or len(v) != 2 for v in features.values()):
            raise ValueError("MixtureGroups.features: name each feature's chosen and rejected columns, "
                             f"{{name: [chosen column, rejected column]}}; got {features!r}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"MixtureGroups.num_groups must be a number of groups >= 1, got {num_groups!r}")
        if not (math.isfinite(l2) and l2 > 0):
            raise ValueError(f"MixtureGroups.l2 must be a positive number, got {l2!r}")
        if iterations < 1 or restarts < 1:
            raise ValueError(f"MixtureGroups.iterations and restarts must be >= 1, got {iterations}, {restarts}")
        self.features = {name: list(cols) for name, cols in features.items()}
        self.num_groups, self.annotator, self.l2 = num_groups, annotator, float(l2)
        self.iterations, self.restarts, self.seed = iterations, restarts, seed

    def apply(self, rows: list[Row], report: Report) -> list[Row]:
        if not rows:
            return rows
        ids: dict = {}
        x = np.zeros((len(rows), len(self.features)))
        who = np.zeros(len(rows), dtype=np.int64)
        for i, row in enumerate(rows):
            name = get_field(row, self.annotator, "the id of the pair's annotator")
            who[i] = ids.setdefault(name if isinstance(name, (str, int)) else repr(name), len(ids))
            for j, (feature, (won, lost)) in enumerate(self.features.items()):
                pair = [as_score(get_field(row, column, f"feature {feature!r} of an answer (a number)"))
                        for column in (won, lost)]
                for column, value in zip((won, lost), pair):
                    if value is None:
                        source, index = origin(row)
                        raise DataError(source, index, column, f"a finite number (feature {feature!r})", row[column])
                x[i, j] = pair[0] - pair[1]
        fit = em_mixture(x, who, self.num_groups, self.l2, self.iterations, self.restarts,
                         random.Random(f"mixture-{self.seed}").randrange(2**31))
        groups = fit["posterior"].argmax(axis=1)
        for k in range(self.num_groups):
            weights = ", ".join(f"{f} {w:+.2f}" for f, w in zip(self.features, fit["theta"][k]))
            report.count(f"group {k}: share {fit['share'][k]:.3f} of {len(ids)} annotators, reward {weights}",
                         int((groups[who] == k).sum()))
        return [carry(row, (), group=int(groups[who[i]])) for i, row in enumerate(rows)]


__all__ = ["MixtureGroups", "em_mixture", "fit_component"]
