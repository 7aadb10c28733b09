"""``python -m alignsuite evaluate``: generate from the base and the aligned model, score both, report.

The recipe's model section gives the backbone and the base model (its ``model_name_or_path``); the
``evaluate`` section (:class:`Evaluation`) gives the aligned model, the prompts and the scorers. Both
models generate from the same prompts with the same seeds, one after the other (only one is in memory at
a time); a prompt whose generation fails is retried alone and then counted, not fatal. A model that fails on
every prompt, a scorer that fails, or a report that cannot be drawn ends the command with an error naming the
first failure, once ``results.json`` holds everything that did work.
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from typing import Any

import torch

from alignsuite.backbones.pad import PAD
from alignsuite.backbones.panacea import reading
from alignsuite.backbones.svd_lora import is_export
from alignsuite.checkpoint_io import CheckpointError, backbone_weights, load_backbone_weights, load_checkpoint_file
from alignsuite.data.procedures.condition import PromptCondition
from alignsuite.data.protocol import preference_data
from alignsuite.evaluation.heldout import ImplicitRewardAccuracy
from alignsuite.evaluation.prompts import PromptFileError, check_columns, check_images, load_prompts
from alignsuite.evaluation.results import EVAL_FOLDER, EvalResults, ScorerResult, write_results
from alignsuite.evaluation.winrate import summarise
from alignsuite.generation import generate_chunked, row_conditions
from alignsuite.judging import Scorer


class EvaluationError(ValueError):
    """A bad ``evaluate`` setting, reported on the command line as one line."""


class Evaluation:
    """What ``evaluate`` compares, and how.

    Args:
        aligned: the aligned model: an export folder (``runs/<name>/version_N/export``, a ``save_pretrained``
            folder of the recipe's backbone) or a Lightning checkpoint (``.ckpt``) of the recipe.
        prompts: a prompt file (``.txt`` one per line, ``.jsonl``/``.json``/``.parquet``/``.csv`` with a prompt
            column, PartiPrompts ``.tsv``, an HPSv2 benchmark ``.json``), ``toy:<world>`` or ``heldout`` (the
            data's validation split).
        scorers: ``class_path`` list, e.g. ``alignsuite.evaluation.scorers.PickScore``; see that module.
        num_prompts: evaluate the first this many prompts (all when null; 64 for ``toy:`` prompts).
        seed: generation seed (batch ``k`` samples from ``seed + k`` for both models) and the bootstrap's.
        output_dir: where ``results.json`` and the report go; next to the aligned model when null
            (``<run>/version_N/eval``).
        batch_size: prompts generated at once.
        generation_kwargs: passed to the backbone's ``generate`` (``max_new_tokens``, ``do_sample``,
            ``num_inference_steps``, ``guidance_scale`` ...).
        prompt_column: the prompt column of a table file (``prompt``; ``Prompt`` for PartiPrompts).
        num_resamples: bootstrap resamples of the win rate's 95% interval.
        weights_only: read only tensors from a ``.ckpt`` (the default); false unpickles anything.
        report: write the HTML report (``alignsuite.evaluation.report``) beside ``results.json``; one that cannot
            be written is an error (after ``results.json``).
        front: evaluate a front instead (:mod:`alignsuite.evaluation.sweep`): one aligned model per weight vector,
            each ``{label, aligned, weights}`` (a MODPO run per ``w``).
        comparisons: models drawn beside the front, not on it, each ``{label, aligned}`` (a single-objective run).
        preferences: preference vectors at which the one ``aligned`` model (trained with one, ``preference_dim``
            > 0: Panacea) is evaluated as points of the front.
        preference_grid: evaluate ``aligned`` on the simplex grid with this many steps per side instead.
        preference_prompt: sweep ``preferences``/``preference_grid`` through the prompt instead of the weights:
            each vector is written into every prompt by this `alignsuite.data.procedures.PromptCondition`
            (``{template, place, levels, normalise}``; the template's fields name the front's dimensions,
            ``{reward_caps}`` or ``{caps}``), for a model trained on prompts conditioned the same way (DPA,
            CPO, reward-augmented pairs). The scorers judge the answers against the prompts as they were.
        dimensions: the scorers' values that are the front's objectives (every value of every scorer when null;
            a scorer judging several dimensions, ``ToyReward("llm_case")``, gives its ``reward_<dimension>``).
        reference_point: the hypervolume's reference point, one value per dimension; the base model's means when
            null.
        guide: a decoding-time guide (`alignsuite.backbones.PAD`) the aligned side generates with; without
            ``aligned`` that side is the base model itself, guided: the guide against the unguided base (written to
            ``<reward model's run>/eval/guided`` when ``output_dir`` is null). With ``preferences`` and
            ``preference_prompt``, each vector's condition becomes the guide's preference (the reward model's
            prompt) and the guided base is a front's point per vector. A recipe's ``backbone.guide`` guides the
            aligned models only (in its place when this is null): the base model is always the unguided base.
        guide_weights: a front of the base guided at each of these weights (``guide``'s ``weight`` swept).
    """

    def __init__(
        self,
        aligned: str | None = None,
        prompts: str | None = None,
        scorers: list[Scorer] | None = None,
        num_prompts: int | None = None,
        seed: int = 0,
        output_dir: str | None = None,
        batch_size: int = 8,
        generation_kwargs: dict[str, Any] | None = None,
        prompt_column: str | None = None,
        num_resamples: int = 2000,
        weights_only: bool | None = None,
        report: bool = True,
        front: list[dict[str, Any]] | None = None,
        comparisons: list[dict[str, Any]] | None = None,
        preferences: list[list[float]] | None = None,
        preference_grid: int | None = None,
        dimensions: list[str] | None = None,
        reference_point: list[float] | None = None,
        preference_prompt: PromptCondition | None = None,
        guide: PAD | None = None,
        guide_weights: list[float] | None = None,
    ) -> None:
        if num_prompts is not None and num_prompts < 1:
            raise ValueError(f"evaluate.num_prompts must be at least 1, got {num_prompts}")
        if batch_size < 1:
            raise ValueError(f"evaluate.batch_size must be at least 1, got {batch_size}")
        self.aligned, self.prompts, self.scorers = aligned, prompts, list(scorers or [])
        self.num_prompts, self.seed, self.output_dir, self.batch_size = num_prompts, seed, output_dir, batch_size
        self.generation_kwargs = dict(generation_kwargs or {})
        self.prompt_column, self.num_resamples = prompt_column, num_resamples
        self.weights_only, self.report = weights_only, report
        self.front, self.comparisons = list(front or []), list(comparisons or [])
        self.preferences, self.preference_grid = preferences, preference_grid
        self.dimensions, self.reference_point = dimensions, reference_point
        if isinstance(preference_prompt, dict):
            preference_prompt = PromptCondition(**preference_prompt)
        self.preference_prompt = preference_prompt
        self.guide, self.guide_weights = guide, list(guide_weights or [])

    @property
    def sweeps(self) -> bool:
        """Whether this evaluates a front (:func:`alignsuite.evaluation.sweep.run_front`) rather than one
        aligned model against the base."""
        return bool(self.front or self.preferences or self.preference_grid or self.guide_weights)


# ------------------------------------------------------------------------------------------ models
def check_guide(guide: PAD | None, backbone) -> None:
    """Refuse a decoding-time guide ``backbone`` cannot take, or whose reward model has another vocabulary, before
    any generation; nothing to check without one."""
    if guide is None:
        return
    try:
        guide.check(backbone)
    except (ValueError, FileNotFoundError) as error:
        raise EvaluationError(f"evaluate.{error}") from None


def base_backbone(backbone):
    """A built copy of ``backbone`` as the base model: the recipe's starting weights, unguided. A recipe's
    ``backbone.guide`` guides the aligned side only (the base is what the aligned model is measured against);
    ``evaluate.guide`` evaluates a guided base, given to ``generate`` explicitly."""
    base = copy.deepcopy(backbone)
    if getattr(base, "guide", None) is not None:
        base.guide = None
    base.configure()
    return base


def aligned_backbone(backbone, aligned: str, weights_only: bool | None = None):
    """A built copy of ``backbone`` holding the aligned weights: loaded from an export folder through the
    backbone's own ``from_pretrained`` path, or the recipe's starting weights with a checkpoint's policy."""
    built = copy.deepcopy(backbone)
    if os.path.isdir(aligned):
        if is_export(aligned) and not getattr(built, "reads_preference_adapter", True):
            try:  # a preference-conditioned export beside plain models: the Panacea model of the recipe's backbone
                built = reading(backbone, aligned)
            except ValueError as error:
                raise EvaluationError(f"evaluate.aligned {error}") from None
        built.model_name_or_path = aligned
        try:
            built.configure()
        except Exception as error:  # noqa: BLE001 - whatever the loader says, name the folder with it
            raise EvaluationError(f"evaluate.aligned {aligned}: cannot load it as {type(backbone).__name__}'s model"
                                  f" ({type(error).__name__}: {error}); a LoRA-only export does not load alone: give"
                                  " the run's checkpoint (.ckpt) instead") from error
        return built
    if not os.path.isfile(aligned):
        raise EvaluationError(f"evaluate.aligned {aligned}: no such folder or checkpoint")
    try:
        state = load_checkpoint_file(aligned, weights_only, mmap=True).get("state_dict", {})
    except CheckpointError as error:
        raise EvaluationError(str(error)) from error
    policy = backbone_weights(state)
    if not policy:
        raise EvaluationError(f"evaluate.aligned {aligned}: the checkpoint holds no backbone weights")
    built.configure()
    missing, unexpected = load_backbone_weights(built, policy)
    if unexpected or missing:
        raise EvaluationError(f"evaluate.aligned {aligned}: the checkpoint does not fit the recipe's backbone"
                              f" (unexpected: {unexpected[:3]}, missing: {missing[:3]}); evaluate it with its own recipe")
    return built


def evaluation_prompts(evaluation: Evaluation, backbone, scorers: list, modality: str, datamodule=None) -> list[dict]:
    """The prompt rows of ``evaluation.prompts``, checked against the backbone's image column and the scorers'
    columns; a missing or unreadable prompt set is an :class:`EvaluationError`."""
    if not evaluation.prompts:
        raise EvaluationError("evaluate.prompts: give a prompt file, toy:<world> or heldout")
    try:
        rows = load_prompts(evaluation.prompts, evaluation.num_prompts, evaluation.seed, evaluation.prompt_column,
                            datamodule)
        check_images(rows, backbone.image_column, evaluation.prompts)
        check_columns(rows, scorers, modality, evaluation.prompts)
    except (PromptFileError, ValueError, FileNotFoundError) as error:
        raise EvaluationError(str(error)) from None
    return rows


def generate_all(backbone, rows: list[dict], seed: int, batch_size: int, kwargs: dict) -> tuple[list, list[str]]:
    """One output per row (``None`` where generation failed) and the failures' messages. Batch ``k`` samples
    from ``seed + k``; a failed batch is retried one prompt at a time with the same seed
    (:func:`alignsuite.generation.generate_chunked`)."""
    errors: list[str] = []
    outputs = generate_chunked(backbone.generate, rows, batch_size, seed, backbone.generation_columns, kwargs,
                               errors=errors)
    return outputs, errors


HEARD = 16  # a speech model's outputs the report plays: the first this many prompts'


def listen(backbone, outputs: list, n: int = HEARD) -> list:
    """The first ``n`` outputs as audio (``alignsuite.data.audio.Audio``; None where generation failed) through the
    backbone's vocoder (``to_audio``), for the report to play; empty for a model that generates no speech or has
    no vocoder."""
    if not hasattr(backbone, "to_audio") or getattr(backbone, "modality", None) != "text_to_speech":
        return []
    shown = outputs[:n]
    made = backbone.to_audio([o for o in shown if o is not None])
    if made is None:
        return []
    it = iter(made)
    return [None if o is None else next(it) for o in shown]


# ------------------------------------------------------------------------------------------ the evaluation
def default_output_dir(aligned: str) -> str:
    """``<run>/version_N/eval`` for ``<run>/version_N/export`` or ``<run>/version_N/checkpoints/x.ckpt``."""
    where = os.path.dirname(os.path.abspath(aligned))
    if os.path.isfile(aligned) and os.path.basename(where) == "checkpoints":
        where = os.path.dirname(where)
    return os.path.join(where, EVAL_FOLDER)


def run_evaluation(module, evaluation: Evaluation, datamodule=None, device: torch.device | str | None = None,
                   console=None) -> EvalResults:
    """Generate, score, summarise, print, and write ``results.json`` (and the report) to the output folder."""
    backbone = module.backbone
    modality = backbone.modality
    if evaluation.sweeps:
        raise EvaluationError("evaluate.front / evaluate.preferences: a front is evaluated by"
                              " alignsuite.evaluation.sweep.run_front (the evaluate command picks it)")
    if not evaluation.aligned and evaluation.guide is None:
        raise EvaluationError("evaluate.aligned: give the aligned model (an export folder or a .ckpt), or a"
                              " decoding-time guide of the base model (evaluate.guide)")
    if not evaluation.scorers:
        raise EvaluationError("evaluate.scorers: give at least one scorer (class_path), e.g."
                              " alignsuite.evaluation.scorers.ToyReward for a toy recipe")
    for scorer in evaluation.scorers:  # refused before any model loads
        try:
            scorer.check_modality(modality)
        except ValueError as error:
            raise EvaluationError(str(error)) from None
    pair_scorers = [s for s in evaluation.scorers if getattr(s, "needs_pairs", False)]
    gen_scorers = [s for s in evaluation.scorers if not getattr(s, "needs_pairs", False)]
    if pair_scorers and not evaluation.aligned:
        raise EvaluationError(f"scorer {pair_scorers[0].name!r} scores an aligned model's implicit reward on held-out"
                              " pairs; a decoding-time guide (evaluate.guide) has none: give evaluate.aligned")
    rows: list[dict] = []
    if gen_scorers:
        rows = evaluation_prompts(evaluation, backbone, gen_scorers, modality, datamodule)
    if evaluation.aligned and not os.path.exists(evaluation.aligned):
        raise EvaluationError(f"evaluate.aligned {evaluation.aligned}: no such folder or checkpoint")
    guide = evaluation.guide
    check_guide(guide, backbone)
    output_dir = evaluation.output_dir or (default_output_dir(evaluation.aligned) if evaluation.aligned else
                                           os.path.join(default_output_dir(guide.reward_model), "guided"))
    kwargs = evaluation.generation_kwargs

    outputs, failures, errors, heard = {}, {}, {}, {}
    for which in ("base", "aligned"):
        if not rows:
            break
        plain = which == "base" or not evaluation.aligned
        model = base_backbone(backbone) if plain else aligned_backbone(backbone, evaluation.aligned,
                                                                       evaluation.weights_only)
        model.to(device or "cpu")
        guided = {"guide": guide} if which == "aligned" and guide is not None else {}
        outputs[which], errors[which] = generate_all(model, rows, evaluation.seed, evaluation.batch_size,
                                                     {**kwargs, **guided})
        failures[which] = len(errors[which])
        heard[which] = listen(model, outputs[which])
        del model

    # What went wrong for every prompt ends the command with an error, once everything is written.
    problems = [f"every generation of the {which} model failed ({n} of {n} prompts); the first: {errors[which][0]}"
                for which, n in failures.items() if n and n == len(rows)]
    prompts = [r["prompt"] for r in rows]
    conditions = row_conditions(rows, backbone)
    results = EvalResults(modality=modality, prompts=prompts, base_outputs=outputs.get("base", []),
                          aligned_outputs=outputs.get("aligned", []), conditions=conditions, failures=failures,
                          heard=heard)
    for scorer in gen_scorers:
        try:
            result = ScorerResult(scorer.name, scorer.unit,
                                  base=scorer.score(prompts, results.base_outputs, conditions, rows),
                                  aligned=scorer.score(prompts, results.aligned_outputs, conditions, rows),
                                  higher_is_better=scorer.higher_is_better)
        except Exception as error:  # noqa: BLE001 - the generations and the other scorers are still written
            print(f"evaluate: scorer {scorer.name!r} failed:\n{traceback.format_exc()}", file=sys.stderr)
            errors[scorer.name] = [f"{type(error).__name__}: {error}"]
            problems.append(f"scorer {scorer.name!r} failed: {type(error).__name__}: {error}")
            continue
        results.scores.append(summarise(result, evaluation.num_resamples, evaluation.seed))
    for scorer in pair_scorers:
        results.scores.append(implicit_reward_result(scorer, backbone, evaluation, datamodule, device, results))
    results.details.update(
        base=getattr(backbone, "model_name_or_path", None), aligned=evaluation.aligned or "the base, guided",
        guide=repr(guide or getattr(backbone, "guide", None)) if guide or getattr(backbone, "guide", None) else None,
        prompts=evaluation.prompts,
        num_prompts=len(rows), seed=evaluation.seed, generation_kwargs=kwargs,
        errors={k: v[:20] for k, v in errors.items() if v},
    )
    print_table(results, console)
    written = [("results", write_results(results, output_dir))]
    if evaluation.report:
        run_dir = os.path.dirname(output_dir)  # the training curves, when the aligned model is a run's
        metrics = os.path.join(run_dir, "metrics.csv")
        try:
            written.append(("report", write_report(results, output_dir, metrics if os.path.isfile(metrics) else None)))
        except Exception as error:  # noqa: BLE001 - the numbers are written; say what the page could not be
            print(f"evaluate: the report could not be written:\n{traceback.format_exc()}", file=sys.stderr)
            problems.append(f"the report could not be written: {type(error).__name__}: {error}")
    for what, path in written:  # last, where a reader looks for what to open
        print(f"{what + ':':<8} {path}")
    if problems:
        raise EvaluationError(f"{'; '.join(problems)} (results.json is in {output_dir})")
    return results


def implicit_reward_result(scorer: ImplicitRewardAccuracy, backbone, evaluation, datamodule, device, results):
    """Per held-out pair, the aligned model's implicit-reward accuracy over the base (the base's own is 1/2): an
    accuracy with its interval over pairs (``per="pair"``), not a win rate."""
    if datamodule is None:
        raise EvaluationError(f"scorer {scorer.name!r} needs the recipe's preference data (its data section)")
    datamodule = preference_data(datamodule)
    datamodule.setup("validate")
    if datamodule.val_set is None:
        raise EvaluationError(f"scorer {scorer.name!r}: the data has no validation split; set data.val or"
                              " data.val_fraction")
    model = aligned_backbone(backbone, evaluation.aligned, evaluation.weights_only)
    model.to(device or "cpu")
    won = scorer.measure(model, backbone.model_name_or_path, datamodule.val_dataloader())
    del model
    result = ScorerResult(scorer.name, scorer.unit, base=[0.5] * len(won), aligned=list(won), per="pair")
    summarise(result, evaluation.num_resamples, evaluation.seed)  # the outcomes' win rate over 1/2 is their mean
    result.win_rate = None
    return result


# ------------------------------------------------------------------------------------------ output
def print_table(results: EvalResults, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluate: aligned over base ({results.modality}, {len(results.prompts)} prompts)")
    for column in ("scorer", "unit", "base", "aligned", "win rate", "95% CI"):
        table.add_column(column, justify="left" if column in ("scorer", "unit") else "right", no_wrap=True)

    def fmt(x):
        return "-" if x is None else f"{x:.4g}"

    for s in (s for s in results.scores if s.per == "prompt"):
        arrow = "" if s.higher_is_better else " (lower is better)"
        ci = "-" if s.ci_low is None else f"[{s.ci_low:.3f}, {s.ci_high:.3f}]"
        table.add_row(s.name + arrow, s.unit, fmt(s.mean_base), fmt(s.mean_aligned),
                      "-" if s.win_rate is None else f"{s.win_rate:.3f}", ci)
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: rich's 80 columns would cut the scorers' names
            console = Console(width=140)
    console.print(table)
    for s in (s for s in results.scores if s.per == "pair"):  # an accuracy whose base is 1/2 by construction
        ci = "" if s.ci_low is None else f" [{s.ci_low:.3f}, {s.ci_high:.3f}]"
        console.print(f"{s.name.replace('_', ' ')} on held-out pairs: {fmt(s.mean_aligned)}{ci} over {len(s.aligned)}"
                      " pairs (the base: 0.5 by construction; not a win rate)", soft_wrap=True)
    if any(results.failures.values()):
        console.print(f"generation failures: {results.failures} (first errors in results.json's details)")


def write_report(results: EvalResults, output_dir: str, metrics_csv: str | None = None) -> str:
    """The HTML report (:func:`alignsuite.evaluation.report.write_report`); its matplotlib is imported only
    when a report is asked for."""
    from alignsuite.evaluation.report import write_report as write

    return write(results, output_dir, metrics_csv=metrics_csv)


__all__ = ["Evaluation", "EvaluationError", "aligned_backbone", "base_backbone", "generate_all", "listen", "run_evaluation",
           "write_results"]
