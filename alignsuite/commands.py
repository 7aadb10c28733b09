"""The commands of ``python -m alignsuite``: a table of functions, as litgpt's ``__main__`` keeps one.

LightningCLI runs a command as a method of the Trainer it builds: Lightning's own for ``fit``, ``validate``,
``test`` and ``predict``, and the functions below, made methods of :class:`AlignTrainer`, for ``export``,
``evaluate`` and ``build_pairs``. A command with settings of its own (``evaluate``, ``build_pairs``) names
them here: the config section and the class that reads it. The config plumbing (``cli.py``) builds every
parser from :data:`COMMANDS`, and an assertion at the end of this file keeps the table and the Trainer in sync.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.callbacks import ExportError, ExportPretrained
from alignsuite.checkpoint_io import CheckpointError, read_checkpoint
from alignsuite.cli_parser import DATA_ERROR, USAGE_ERROR, print_error
from alignsuite.lazy import MissingExtra
from alignsuite.objectives.base import renamed_metric


# The packages whose classes a config may name by class name alone (--model.backbone CausalLM, --trainer.callbacks+
# ImageGrid): jsonargparse looks such a name up among the subclasses already imported, and lists those in --help.
NAMED_IN_CONFIGS = ("alignsuite.backbones", "alignsuite.callbacks", "alignsuite.evaluation")


def import_named_classes() -> None:
    """Import every name in the ``__all__`` of a package in :data:`NAMED_IN_CONFIGS`, before any parser is built.
    Those packages load their modules on first use, and the modules import a modality's libraries only when a model
    is built, so this stays cheap: a language run loads neither diffusers nor the speech and evaluation extras."""
    for package in NAMED_IN_CONFIGS:
        module = importlib.import_module(package)
        for name in module.__all__:
            getattr(module, name)


def fail(message: str, status: int = USAGE_ERROR) -> None:
    """A clean command-line error: one line on stderr (once under several processes), exit status 2 as for any
    bad argument, or ``status`` (1 for data, cli_parser.DATA_ERROR)."""
    print_error(message, status)


def check_monitors(listed: list, sections: list) -> None:
    """A callback that monitors a metric by a name it no longer has (checkpoint or early stopping on
    ``val/rewards/accuracy``) is refused before training, naming the current name; Lightning would stop at the
    first validation, or never save a best checkpoint. ``listed``: trainer.callbacks; ``sections``: the
    callbacks of the recipe's own sections (``checkpoint``)."""
    for callbacks, where in ((listed, "trainer.callbacks"), (sections, "checkpoint.monitor")):
        for callback in callbacks:
            monitor = getattr(callback, "monitor", None)
            new = renamed_metric(monitor) if isinstance(monitor, str) else None
            if new is not None:
                fail(f"{where}: {type(callback).__name__} monitors '{monitor}', which is now logged as '{new}'"
                     f" (TRL's name); set monitor: {new}")


def fail_on_missing_extra(error: BaseException) -> None:
    """An optional library missing (:class:`~alignsuite.lazy.MissingExtra`, often inside jsonargparse's own errors)
    is one line naming the extra that installs it; any other error is left to its caller."""
    for _ in range(50):
        if error is None:
            return
        if isinstance(error, MissingExtra):
            fail(str(error))
        error = error.__cause__ or error.__context__


def check_checkpoint(path: str, weights_only: bool | None) -> None:
    """Read a checkpoint file, or check a sharded checkpoint's folder, before Lightning reads it: one error that
    names the file, given before any process is started, rather than torch's own from every rank."""
    try:
        read_checkpoint(path, weights_only, mmap=True)
    except CheckpointError as error:
        fail(str(error))


def export_checkpoint(
    self, model, datamodule=None, ckpt_path: str | None = None, weights_only: bool | None = None
) -> str:
    """Export a checkpoint's policy as a save_pretrained folder (--ckpt_path, --export.dirpath).

    Args:
        ckpt_path: the Lightning checkpoint to export.
        weights_only: read only tensors and plain containers from the checkpoint (the default, also
            when null); false unpickles anything, which can run code: only for files you trust.
    """
    if not ckpt_path:
        fail("export: give --ckpt_path, the Lightning checkpoint to export")
    callback = next(c for c in self.callbacks if isinstance(c, ExportPretrained))
    try:
        path = callback.export_checkpoint(self, model, ckpt_path, weights_only, datamodule)
    except (CheckpointError, ExportError) as error:
        fail(str(error))
    rank_zero_info(f"exported {ckpt_path} to {path}")
    return path


def evaluate_models(self, model, datamodule=None, evaluation=None):
    """Generate from the base and the aligned model, score both, write results.json and the report (the
    ``evaluate`` section: ``alignsuite.evaluation.run.Evaluation``)."""
    from alignsuite.evaluation.run import EvaluationError, run_evaluation
    from alignsuite.evaluation.sweep import run_front

    run = run_front if evaluation.sweeps else run_evaluation  # a front: several points, not aligned over base
    try:
        return run(model, evaluation, datamodule, device=self.strategy.root_device)
    except EvaluationError as error:
        fail(str(error))


def build_preference_pairs(self, model, datamodule=None, pairs=None):
    """Sample candidates for each prompt, judge them and write best-vs-worst pairs (the ``pairs`` section:
    ``alignsuite.speech.pairs.PairBuilding``: a TTS model's by a recogniser's WER, any model's by a judge)."""
    from alignsuite.data.errors import DataError
    from alignsuite.pairs import PairBuildingError

    backbone = model.backbone
    backbone.configure()
    backbone.to(self.strategy.root_device)
    backbone.policy.eval()
    try:
        return pairs.run(backbone)
    except (DataError, FileNotFoundError) as error:
        fail(str(error), DATA_ERROR)
    except PairBuildingError as error:
        fail(str(error))


def iterate_rounds(self, model, datamodule=None, iterate=None):
    """Generate, judge, build and fit, round after round (the ``iterate`` section: ``alignsuite.iterate.Iterate``).
    The command line runs it with the whole recipe (:func:`run_iterate`): each round's fit is built from it."""
    fail("iterate runs from the command line: python -m alignsuite iterate --config recipe.yaml")


def run_iterate(cli) -> list[dict]:
    """The ``iterate`` command: every round not finished yet (:func:`alignsuite.iterate.loop.run_rounds`)."""
    from alignsuite.data.errors import DataError
    from alignsuite.iterate.loop import run_rounds
    from alignsuite.iterate.settings import IterateError

    settings = cli.config_init[cli.subcommand]["iterate"]
    try:
        return run_rounds(cli, settings)
    except (DataError, FileNotFoundError) as error:
        fail(str(error), DATA_ERROR)
    except IterateError as error:
        fail(str(error))


# The settings classes are imported only when their command's parser is built: the evaluation scorers and
# the speech tools pull in optional dependencies a fit never needs.
def evaluation_settings() -> type:
    from alignsuite.evaluation.run import Evaluation

    return Evaluation


def iterate_settings() -> type:
    from alignsuite.iterate import Iterate

    return Iterate


def pair_building_settings() -> type:
    from alignsuite.speech.pairs import PairBuilding

    return PairBuilding


@dataclass(frozen=True)
class Command:
    """One command: the Trainer method it runs and what the command line does not fill in."""

    function: Callable
    """The Trainer method (Lightning's own, or one of the functions above)."""
    summary: str
    """What the command does, in one line of ``--help``."""
    given: frozenset[str]
    """The method's arguments the CLI passes itself (the model, the data module, the section): not flags."""
    section: str | None = None
    """The command's own config section, parsed only for this command (a fit's config keeps none)."""
    settings: Callable[[], type] | None = None
    """The class the section is parsed into and instantiated as."""
    argument: str | None = None
    """The method's argument that receives the instantiated section."""


# Lightning's commands, in one line each (their docstrings' first lines stop mid-sentence).
LIGHTNING_SUMMARIES = {
    "fit": "Train the model on preference data.",
    "validate": "Score the validation data once.",
    "test": "Score the test data once.",
    "predict": "Generate for every prompt of the data.",
}
COMMANDS: dict[str, Command] = {
    **{name: Command(getattr(Trainer, name), LIGHTNING_SUMMARIES[name], frozenset(given))
       for name, given in LightningCLI.subcommands().items()},
    "export": Command(export_checkpoint, "Write a checkpoint as a save_pretrained folder.",
                      frozenset({"model", "datamodule"})),
    "evaluate": Command(evaluate_models, "Score base and aligned model; write a report.",
                        frozenset({"model", "datamodule", "evaluation"}),
                        section="evaluate", settings=evaluation_settings, argument="evaluation"),
    "build_pairs": Command(build_preference_pairs, "Sample, judge and write preference pairs.",
                           frozenset({"model", "datamodule", "pairs"}),
                           section="pairs", settings=pair_building_settings, argument="pairs"),
    "iterate": Command(iterate_rounds, "Generate, judge, build and fit, round after round.",
                       frozenset({"model", "datamodule", "iterate"}),
                       section="iterate", settings=iterate_settings, argument="iterate"),
}


class AlignTrainer(Trainer):
    """Lightning's Trainer, plus the ``export``, ``evaluate`` and ``build_pairs`` commands.

    jsonargparse names a method's argument group after the function, and ``export`` and ``evaluate`` are
    already sections of the config (the ExportPretrained callback, the evaluation settings), so their
    functions have other names.
    """

    export = export_checkpoint
    evaluate = evaluate_models
    build_pairs = build_preference_pairs
    iterate = iterate_rounds


assert all(getattr(AlignTrainer, name) is command.function for name, command in COMMANDS.items()), (
    "COMMANDS and AlignTrainer's methods disagree"
)
