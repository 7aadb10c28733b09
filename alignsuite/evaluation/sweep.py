"""``evaluate`` over a front: several points on the objectives' plane instead of one aligned model over the base.

The points are the base model, one aligned model per weight vector (``evaluate.front``: a MODPO run per ``w``),
the models compared beside them (``evaluate.comparisons``: a single-objective run), and one model trained with a
preference vector evaluated at several (``evaluate.preferences`` or ``evaluate.preference_grid``, through its
backbone's ``set_preference``: Panacea; or written into the prompts by ``evaluate.preference_prompt``: a model
trained on conditioned prompts, DPA or CPO), and the base model guided at decoding time (``evaluate.guide``, PAD)
at each of ``evaluate.guide_weights`` or, the condition written into the guide's preference, at each preference
vector. Every point generates from the same prompts with the same seeds, one model in memory at a time; every
generation is judged by the named scorers and each dimension (a scorer's value) gets its mean with a 95%
bootstrap interval. The summaries (:mod:`alignsuite.evaluation.front`): the
swept points' non-dominated set, their hypervolume against ``evaluate.reference_point`` (the base model's
point by default) and the preference sweep's monotonicity. ``results.json`` and a report page with the front
plot and the samples per point go to ``evaluate.output_dir`` (``<run>/eval/front`` of the first model by
default).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from alignsuite.data.errors import DataError
from alignsuite.evaluation.front import BASE, COMPARISON, GUIDED, PREFERENCE, SWEPT, WEIGHTS, FrontPoint, \
    FrontResults, check_preference, interval, simplex_grid, summary_lines
from alignsuite.evaluation.results import RESULTS_FILE, jsonable
from alignsuite.evaluation.run import Evaluation, EvaluationError, aligned_backbone, base_backbone, check_guide, \
    default_output_dir, evaluation_prompts, generate_all, listen
from alignsuite.generation import row_conditions

ENTRY_KEYS = {"front": ("label", "aligned", "weights"), "comparisons": ("label", "aligned")}


def entries(evaluation: Evaluation, option: str) -> list[dict]:
    """``evaluate.front`` or ``evaluate.comparisons`` as checked ``{label, aligned, weights}`` dicts."""
    out, labels = [], set()
    for i, entry in enumerate(getattr(evaluation, option)):
        where = f"evaluate.{option}[{i}]"
        if not isinstance(entry, dict) or not entry.get("aligned"):
            raise EvaluationError(f"{where}: give a mapping with at least 'aligned' (a model's export folder or"
                                  f" .ckpt); its keys: {', '.join(ENTRY_KEYS[option])}")
        unknown = set(entry) - set(ENTRY_KEYS[option])
        if unknown:
            raise EvaluationError(f"{where}: unknown key(s) {sorted(unknown)}; its keys: {', '.join(ENTRY_KEYS[option])}")
        if not os.path.exists(entry["aligned"]):
            raise EvaluationError(f"{where}.aligned {entry['aligned']}: no such folder or checkpoint")
        label = str(entry.get("label") or os.path.basename(os.path.normpath(entry["aligned"])))
        if label in labels or label == BASE:
            raise EvaluationError(f"{where}.label {label!r} is taken; give each point its own label")
        labels.add(label)
        weights = entry.get("weights")
        if weights is not None:
            if not isinstance(weights, (list, tuple)) or not all(isinstance(w, (int, float)) for w in weights):
                raise EvaluationError(f"{where}.weights = {weights!r}: a list of numbers, one per dimension")
            weights = [float(w) for w in weights]
        out.append({"label": label, "aligned": entry["aligned"], "weights": weights})
    return out


def dimensions_of(scorers, chosen: list[str] | None) -> list[tuple[object, str]]:
    """``(scorer, value name)`` per front dimension: ``chosen`` (``evaluate.dimensions``) or every scorer's values
    (a multi-dimension world's ``reward_<dimension>`` ones only)."""
    offered = []
    for scorer in scorers:
        names = scorer.value_names()
        if getattr(scorer, "dimensions", ()):
            names = tuple(f"reward_{d}" for d in scorer.dimensions)
        offered += [(scorer, n) for n in (scorer.value_names() if chosen else names)]
    if not chosen:
        return offered
    found = []
    for name in chosen:
        match = next((pair for pair in offered if pair[1] == name), None)
        if match is None:
            raise EvaluationError(f"evaluate.dimensions: no scorer judges {name!r}; the scorers judge"
                                  f" {', '.join(n for _, n in offered)}")
        found.append(match)
    return found


def condition_values(names: list[str], vector: list[float], fields: tuple[str, ...]) -> dict[str, float]:
    """A preference vector by dimension name, for a `PromptCondition` whose template has ``fields``: named by the
    front's dimensions (``reward_caps``) or, when the template names them so, by a scorer's ``reward_<dimension>``
    values' own dimensions (``caps``). One naming only: a ``normalise`` sums over every value."""
    values = dict(zip(names, vector))
    plain = {name.removeprefix("reward_"): x for name, x in zip(names, vector)}
    return plain if not set(fields) <= set(values) and set(fields) <= set(plain) else values


def conditioned_rows(rows: list[dict], condition, values: dict[str, float]) -> list[dict]:
    """``rows`` with the condition written into each prompt (``evaluate.preference_prompt``)."""
    try:
        return [{**r, "prompt": condition.apply(r["prompt"], values, "evaluate.prompts", i)}
                for i, r in enumerate(rows)]
    except (ValueError, DataError) as error:
        raise EvaluationError(f"evaluate.preference_prompt: {error}") from None


def run_front(module, evaluation: Evaluation, datamodule=None, device=None, console=None) -> FrontResults:
    """Generate and judge at every point, summarise the front, print its table, write ``results.json`` and the
    report page."""
    backbone = module.backbone
    modality = backbone.modality
    if not evaluation.scorers:
        raise EvaluationError("evaluate.scorers: give at least one scorer judging the front's dimensions")
    guide = evaluation.guide
    if evaluation.guide_weights and guide is None:
        raise EvaluationError("evaluate.guide_weights sweeps a decoding-time guide's weight: give evaluate.guide")
    check_guide(guide, backbone)
    for scorer in evaluation.scorers:
        if getattr(scorer, "needs_pairs", False):
            raise EvaluationError(f"evaluate.scorers: {scorer.name!r} scores held-out pairs, not generations; a"
                                  " front needs scorers of generations")
        try:
            scorer.check_modality(modality)
        except ValueError as error:
            raise EvaluationError(str(error)) from None
    dims = dimensions_of(evaluation.scorers, evaluation.dimensions)
    names = [n for _, n in dims]
    if len(names) < 2:
        raise EvaluationError(f"evaluate.dimensions: a front needs two dimensions or more, got {names}")
    front, comparisons = entries(evaluation, "front"), entries(evaluation, "comparisons")
    for i, entry in enumerate(front):
        if entry["weights"] is not None and len(entry["weights"]) != len(names):
            raise EvaluationError(f"evaluate.front[{i}].weights = {entry['weights']} has {len(entry['weights'])}"
                                  f" values; the front has {len(names)} dimensions ({', '.join(names)})")
    if evaluation.preferences and evaluation.preference_grid:
        raise EvaluationError("evaluate.preferences and evaluate.preference_grid: give one of them")
    conditioned = bool(evaluation.preferences or evaluation.preference_grid)
    if evaluation.preference_prompt is not None and not conditioned:
        raise EvaluationError("evaluate.preference_prompt writes the swept preference vectors into the prompts:"
                              " give them with evaluate.preferences or evaluate.preference_grid")
    if guide is not None and not conditioned and not evaluation.guide_weights:
        raise EvaluationError("evaluate.guide: a front guides the base at evaluate.guide_weights or at each of"
                              " evaluate.preferences (through evaluate.preference_prompt); give one of them")
    if conditioned and guide is not None and evaluation.preference_prompt is None:
        raise EvaluationError("evaluate.guide with evaluate.preferences / evaluate.preference_grid: give"
                              " evaluate.preference_prompt, which writes each vector into the guide's preference")
    if conditioned and not evaluation.aligned and guide is None:
        raise EvaluationError("evaluate.aligned: give the model trained with a preference vector that"
                              " evaluate.preferences / evaluate.preference_grid sweep")
    if evaluation.aligned and not conditioned:
        raise EvaluationError("evaluate.aligned: with evaluate.front, list every aligned model there ({label,"
                              " aligned, weights}); evaluate.aligned is the preference-conditioned model that"
                              " evaluate.preferences sweep")
    if evaluation.reference_point is not None and len(evaluation.reference_point) != len(names):
        raise EvaluationError(f"evaluate.reference_point = {evaluation.reference_point}: one value per dimension"
                              f" ({', '.join(names)})")
    rows = evaluation_prompts(evaluation, backbone, evaluation.scorers, modality, datamodule)
    first = evaluation.aligned or (front[0]["aligned"] if front else guide.reward_model)  # a front has swept points
    output_dir = evaluation.output_dir or os.path.join(default_output_dir(first), "front")

    prompts, conditions = [r["prompt"] for r in rows], row_conditions(rows, backbone)
    points: list[FrontPoint] = []

    def judged(label, kind, model, vector=None, source=None, asked=None, guided=None):
        # ``asked``: the rows as the model sees them (a condition in the prompt); judged against ``rows``
        kwargs = evaluation.generation_kwargs if guided is None else {**evaluation.generation_kwargs, "guide": guided}
        outputs, errors = generate_all(model, asked or rows, evaluation.seed, evaluation.batch_size, kwargs)
        values = {n: [None] * len(rows) for n in names}
        for scorer in {id(s): s for s, _ in dims}.values():
            for i, v in enumerate(scorer.judge(prompts, outputs, conditions, rows)):
                for s, n in dims:
                    if s is scorer and v is not None and v.get(n) is not None:
                        values[n][i] = float(v[n])
        if errors and len(errors) == len(rows):
            raise EvaluationError(f"every generation of {label} failed; the first: {errors[0]}")
        points.append(FrontPoint(label, kind, values, vector, source, outputs, len(errors), listen(model, outputs)))

    def base_model():  # unguided: a recipe's backbone.guide guides the aligned models only
        return base_backbone(backbone).to(device or "cpu")

    if conditioned:  # the preference model first: a model without a preference adapter is refused at once
        # with a guide, the vector goes into the guide's preference and the base (or aligned) model is guided
        model = aligned_backbone(backbone, evaluation.aligned, evaluation.weights_only) if evaluation.aligned \
            else base_model()
        option = "evaluate.preferences" if evaluation.preferences else "evaluate.preference_grid"
        condition = evaluation.preference_prompt
        dim = len(names) if condition else int(getattr(model, "preference_dim", 0) or 0)
        if dim == 0:
            raise EvaluationError(f"{option}: the model {evaluation.aligned} takes no preference vector"
                                  f" ({type(model).__name__}.preference_dim is 0); sweep weight vectors with"
                                  " evaluate.front instead, write the vector into the prompts with"
                                  " evaluate.preference_prompt (a model trained on conditioned prompts), or give"
                                  " a model trained with one (Panacea)")
        if dim != len(names):
            raise EvaluationError(f"{option}: the model takes {dim} preference weights, the front has"
                                  f" {len(names)} dimensions ({', '.join(names)}); set evaluate.dimensions")
        try:
            vectors = ([check_preference(v, dim, f"{option}[{i}]") for i, v in enumerate(evaluation.preferences)]
                       if evaluation.preferences else simplex_grid(evaluation.preference_grid, dim))
            if condition:
                condition.check(tuple(condition_values(names, [0.0] * dim, condition.fields)),
                                "evaluate.preference_prompt")
        except ValueError as error:
            raise EvaluationError(str(error)) from None
        model.to(device or "cpu")
        for vector in vectors:
            guided, asked = None, rows
            if guide is not None:
                guided = guide.but(preference=condition.text(condition_values(names, vector, condition.fields)))
            elif condition:
                asked = conditioned_rows(rows, condition, condition_values(names, vector, condition.fields))
            else:
                model.set_preference(vector)
            label = "pref (" + ", ".join(f"{x:g}" for x in vector) + ")"
            judged(label, GUIDED if guided else PREFERENCE, model, vector, evaluation.aligned or guide.reward_model,
                   asked, guided)
        del model
    base = base_model()
    judged(BASE, BASE, base, source=getattr(backbone, "model_name_or_path", None))
    for w in evaluation.guide_weights or ():  # the base guided at each weight
        judged(f"guide w={w:g}", GUIDED, base, source=guide.reward_model, guided=guide.but(weight=float(w)))
    del base
    for kind, listed in ((WEIGHTS, front), (COMPARISON, comparisons)):
        for entry in listed:
            model = aligned_backbone(backbone, entry["aligned"], evaluation.weights_only)
            model.to(device or "cpu")
            judged(entry["label"], kind, model, entry["weights"], entry["aligned"])
            del model
    points.sort(key=lambda p: (p.kind != BASE, p.kind == COMPARISON))  # the base first, comparisons last

    results = FrontResults(modality, prompts, names, [bool(s.higher_is_better) for s, _ in dims], points,
                           conditions=conditions)
    try:
        results.summarise(evaluation.reference_point, evaluation.num_resamples, evaluation.seed)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    results.details.update(base=getattr(backbone, "model_name_or_path", None), prompts=evaluation.prompts,
                           num_prompts=len(rows), seed=evaluation.seed,
                           generation_kwargs=evaluation.generation_kwargs)
    print_front(results, console)
    written = [("results", write_front_results(results, output_dir))]
    if evaluation.report:
        from alignsuite.evaluation.front_report import write_front_report

        try:
            written.append(("report", write_front_report(results, output_dir)))
        except Exception as error:  # noqa: BLE001 - the numbers are written; say what the page could not be
            print(f"evaluate: the report could not be written:\n{traceback.format_exc()}", file=sys.stderr)
            raise EvaluationError(f"the report could not be written: {type(error).__name__}: {error}"
                                  f" (results.json is in {output_dir})") from error
    for what, path in written:
        print(f"{what + ':':<8} {path}")
    return results


def print_front(results: FrontResults, console=None) -> None:
    """The front as a table (each dimension's mean [95% CI]), the hypervolume and its reference point, the
    non-dominated points and the sweeps' monotonicity."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluate: the front ({results.modality}, {len(results.prompts)} prompts)")
    for column in ("point", "kind", "vector", *results.dimensions, "non-dominated"):
        table.add_column(column, no_wrap=True)
    for p in results.points:
        vector = "-" if p.vector is None else "(" + ", ".join(f"{x:g}" for x in p.vector) + ")"
        front = "yes" if p.non_dominated else "no" if p.kind in SWEPT else "-"
        table.add_row(p.label, p.kind, vector, *(interval(p, n) for n in results.dimensions), front)
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    console.print(table)
    for line in summary_lines(results):
        console.print(line, soft_wrap=True, markup=False)


def write_front_results(results: FrontResults, output_dir: str) -> str:
    """``results.json``: the front (points, means, intervals, per-prompt values, summaries), the prompts (with
    their input images, a vision-language model's, as PNG files beside it) and every point's outputs."""
    os.makedirs(output_dir, exist_ok=True)
    data = {"modality": results.modality, "details": jsonable(results.details, output_dir, "details"),
            "front": results.as_dict(), "prompts": jsonable(results.prompts, output_dir, "prompt"),
            "conditions": jsonable(results.conditions, output_dir, "condition"),
            "outputs": {p.label: jsonable(p.outputs, output_dir, f"point{i}") for i, p in enumerate(results.points)}}
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return path


__all__ = ["condition_values", "conditioned_rows", "dimensions_of", "entries", "print_front", "run_front", "write_front_results"]
