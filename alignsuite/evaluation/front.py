"""The front's numbers, from per-sample scores alone: each point's mean per dimension with a 95% bootstrap
interval, which points no other dominates, the hypervolume of their means against a reference point, and
whether a swept model moves monotonically along its sweep.

A point is one model at one setting: the base model, a comparison model (trained on one objective), an aligned
model trained at a weight vector (MODPO), or one preference-conditioned model at a preference vector (Panacea).
Every dimension is oriented by its ``higher_is_better`` before points are compared: a point dominates another
when it is at least as good on every dimension and better on one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from alignsuite.evaluation.winrate import bootstrap_interval

# What a point is: the front's own points are the swept ones; base and comparisons are drawn beside them.
BASE, COMPARISON, WEIGHTS, PREFERENCE, GUIDED = "base", "comparison", "weights", "preference", "guided"
SWEPT = (WEIGHTS, PREFERENCE, GUIDED)  # guided: a model with a decoding-time guide at one weight or preference


@dataclass
class FrontPoint:
    """One model at one setting and its scores. ``values[d][i]`` is dimension ``d``'s value of prompt ``i``'s
    generation (``None`` where it failed or does not apply; left out of the mean)."""

    label: str
    kind: str
    values: dict[str, list[float | None]]
    vector: list[float] | None = None  # the weight or preference vector, where the point has one
    source: str | None = None  # the model's folder or checkpoint
    outputs: list = field(default_factory=list)
    failures: int = 0
    heard: list = field(default_factory=list)  # the first outputs as audio, a speech model's (`listen`)
    means: dict[str, float | None] = field(default_factory=dict)
    ci_low: dict[str, float | None] = field(default_factory=dict)
    ci_high: dict[str, float | None] = field(default_factory=dict)
    non_dominated: bool = False

    def summarise(self, num_resamples: int = 2000, seed: int = 0) -> FrontPoint:
        """Each dimension's mean over the prompts it scored, and the mean's 95% percentile-bootstrap interval."""
        for name, vals in self.values.items():
            kept = np.asarray([v for v in vals if v is not None], dtype=np.float64)
            if len(kept):
                self.means[name] = float(kept.mean())
                self.ci_low[name], self.ci_high[name] = bootstrap_interval(kept, num_resamples, seed)
            else:
                self.means[name] = self.ci_low[name] = self.ci_high[name] = None
        return self

    def mean_vector(self, dimensions: Sequence[str]) -> list[float]:
        return [np.nan if self.means.get(d) is None else self.means[d] for d in dimensions]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (both oriented so that higher is better): no worse anywhere, better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """The indices of the points no other point dominates (higher is better on every coordinate); a point with
    a missing (NaN) coordinate is never on the front."""
    ok = [i for i, p in enumerate(points) if not any(np.isnan(p))]
    return [i for i in ok if not any(dominates(points[j], points[i]) for j in ok if j != i)]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume of the union of the boxes ``[reference, p]`` (higher is better on every coordinate): the region
    of objective space the points dominate beyond the reference. A point not beyond the reference on every
    coordinate adds nothing. Exact, by slicing along the last coordinate (fine for the tens of points a sweep
    has)."""
    ref = np.asarray(reference, dtype=np.float64)
    shifted = [np.asarray(p, dtype=np.float64) - ref for p in points]
    return _volume([q for q in shifted if not np.isnan(q).any() and (q > 0).all()])


def _volume(points: list[np.ndarray]) -> float:
    if not points:
        return 0.0
    if len(points[0]) == 1:
        return float(max(p[0] for p in points))
    ordered = sorted(points, key=lambda p: -p[-1])
    total = 0.0
    for i, p in enumerate(ordered):  # the slab between this point's last coordinate and the next one's
        below = ordered[i + 1][-1] if i + 1 < len(ordered) else 0.0
        if p[-1] > below:
            total += (p[-1] - below) * _volume([q[:-1] for q in ordered[: i + 1]])
    return total


def monotonicity(points: Sequence[FrontPoint], dimensions: Sequence[str]) -> list[dict]:
    """Per dimension ``d``: along the sweep ordered by the vector's ``d``-th weight, does the mean of ``d`` never
    fall? (A conditioned model should move monotonically along its sweep, families §2.10.) Each entry names the
    dimension, ``monotone``, and every fall: from which point to which, by how much, and whether the two points'
    intervals overlap (a fall within the noise)."""
    checks = []
    for k, name in enumerate(dimensions):
        ordered = sorted((p for p in points if p.vector is not None and p.means.get(name) is not None),
                         key=lambda p: p.vector[k])
        falls = []
        for a, b in zip(ordered, ordered[1:]):
            if b.vector[k] > a.vector[k] and b.means[name] < a.means[name]:
                overlap = b.ci_high[name] >= a.ci_low[name]
                falls.append({"from": a.label, "to": b.label, "by": a.means[name] - b.means[name],
                              "within_intervals": bool(overlap)})
        checks.append({"dimension": name, "monotone": not falls, "falls": falls,
                       "order": [p.label for p in ordered]})
    return checks


def simplex_grid(steps: int, dim: int) -> list[list[float]]:
    """Every vector on the ``dim``-simplex whose weights are multiples of ``1 / (steps - 1)``, from the last
    dimension's corner to the first's (``steps=3, dim=2``: (0, 1), (0.5, 0.5), (1, 0))."""
    if steps < 2:
        raise ValueError(f"evaluate.preference_grid must be at least 2 (the two corners), got {steps}")
    n = steps - 1

    def parts(total: int, k: int):
        if k == 1:
            yield (total,)
            return
        for first in range(total + 1):
            for rest in parts(total - first, k - 1):
                yield (first, *rest)

    return [[x / n for x in p] for p in parts(n, dim)]


def check_preference(vector: Sequence[float], dim: int, option: str) -> list[float]:
    """A preference vector as a list of floats: ``dim`` non-negative weights summing to 1, else a ValueError
    naming ``option``."""
    values = [float(x) for x in vector]
    if len(values) != dim:
        raise ValueError(f"{option} = {values} has {len(values)} weights; the model takes {dim} (its"
                         " preference_dim)")
    if any(x < 0 for x in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"{option} = {values}: a preference vector is on the simplex (weights >= 0 summing to 1)")
    return values


@dataclass
class FrontResults:
    """Every point of a front evaluation and the front's summaries; ``higher_is_better[d]`` orients dimension
    ``d``. ``reference`` says where ``reference_point`` came from (``base``: the base model's means)."""

    modality: str
    prompts: list
    dimensions: list[str]
    higher_is_better: list[bool]
    points: list[FrontPoint]
    reference_point: list[float] | None = None
    reference: str = BASE
    hypervolume: float | None = None
    hypervolume_by_sweep: dict[str, float] = field(default_factory=dict)  # each sweep's alone, when there are two
    monotonicity: dict[str, list[dict]] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    conditions: list | None = None  # each prompt's input images (a vision-language model's), for the report

    def oriented(self, vector: Sequence[float]) -> list[float]:
        return [v if up else -v for v, up in zip(vector, self.higher_is_better)]

    def swept(self) -> list[FrontPoint]:
        return [p for p in self.points if p.kind in SWEPT]

    def summarise(self, reference_point: Sequence[float] | None = None, num_resamples: int = 2000,
                  seed: int = 0) -> FrontResults:
        """Means and intervals of every point; the swept points' non-dominated set, hypervolume against
        ``reference_point`` (the base model's means when None) and each sweep's monotonicity."""
        for p in self.points:
            p.summarise(num_resamples, seed)
        swept = self.swept()
        means = [self.oriented(p.mean_vector(self.dimensions)) for p in swept]
        for i in non_dominated(means):
            swept[i].non_dominated = True
        if reference_point is None:
            base = next((p for p in self.points if p.kind == BASE), None)
            if base is None:
                raise ValueError("evaluate.reference_point: give one; there is no base point to default to")
            self.reference_point, self.reference = base.mean_vector(self.dimensions), BASE
        else:
            self.reference_point, self.reference = [float(x) for x in reference_point], "given"
        self.hypervolume = hypervolume(means, self.oriented(self.reference_point))
        sweeps = {kind: [p for p in swept if p.kind == kind] for kind in SWEPT}
        for kind, sweep in sweeps.items():
            vectors = [p for p in sweep if p.vector is not None]  # a guide's weight has none
            if len(vectors) >= 2:
                self.monotonicity[kind] = monotonicity(vectors, self.dimensions)
            if sweep and len(sweep) < len(swept):  # several models' fronts side by side: each one's own
                self.hypervolume_by_sweep[kind] = hypervolume(
                    [self.oriented(p.mean_vector(self.dimensions)) for p in sweep], self.oriented(self.reference_point))
        return self

    def as_dict(self) -> dict:
        """What ``results.json`` holds of the front (the points' per-prompt values and outputs are written
        beside it by the caller)."""
        return {
            "dimensions": self.dimensions, "higher_is_better": self.higher_is_better,
            "reference_point": self.reference_point, "reference": self.reference, "hypervolume": self.hypervolume,
            "hypervolume_by_sweep": self.hypervolume_by_sweep,
            "non_dominated": [p.label for p in self.swept() if p.non_dominated], "monotonicity": self.monotonicity,
            "points": [{"label": p.label, "kind": p.kind, "vector": p.vector, "source": p.source, "means": p.means,
                        "ci_low": p.ci_low, "ci_high": p.ci_high, "non_dominated": p.non_dominated,
                        "failures": p.failures, "values": p.values} for p in self.points],
        }


def interval(p: FrontPoint, name: str) -> str:
    if p.means.get(name) is None:
        return "-"
    return f"{p.means[name]:.3f} [{p.ci_low[name]:.3f}, {p.ci_high[name]:.3f}]"


def summary_lines(results: FrontResults) -> list[str]:
    """The front's summaries in words, for the console and the page."""
    ref = ", ".join(f"{x:.3f}" for x in results.reference_point)
    whence = "the base model's point" if results.reference == BASE else "evaluate.reference_point"
    lines = [f"hypervolume {results.hypervolume:.4f} of the swept points' means against the reference point"
             f" ({ref}), {whence}" + (": no swept point is beyond it on every dimension at once"
                                      if results.hypervolume == 0 else ""),
             *(f"hypervolume of the {kind} sweep alone {value:.4f}" for kind, value in results.hypervolume_by_sweep.items()),
             "non-dominated: " + (", ".join(p.label for p in results.swept() if p.non_dominated) or "none")]
    for kind, checks in results.monotonicity.items():
        for c in checks:
            if c["monotone"]:
                lines.append(f"{kind} sweep, {c['dimension']}: monotone in its weight")
            else:
                falls = "; ".join(f"{f['from']} -> {f['to']} falls by {f['by']:.3f}"
                                  f"{' (within the intervals)' if f['within_intervals'] else ''}" for f in c["falls"])
                lines.append(f"{kind} sweep, {c['dimension']}: NOT monotone in its weight: {falls}")
    return lines


__all__ = ["BASE", "COMPARISON", "GUIDED", "PREFERENCE", "SWEPT", "WEIGHTS", "FrontPoint", "FrontResults", "check_preference",
           "dominates", "hypervolume", "interval", "monotonicity", "non_dominated", "simplex_grid",
           "summary_lines"]
