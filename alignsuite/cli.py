"""``python -m alignsuite fit|validate|test|predict|export|evaluate|build_pairs|iterate --config recipe.yaml``.

The config plumbing: the LightningCLI subclass, its parser hooks, and the helpers that read arguments and
explain a config's errors. The commands themselves are a table in ``commands.py``; the parser, its one-line
errors and the exit statuses are in ``cli_parser.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

from jsonargparse import Namespace
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import (
    BasePredictionWriter, LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar,
)
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.optim import Optimizer

from alignsuite.callbacks import CheckpointOnPreemption, ExportPretrained, PredictionWriter
from alignsuite.callbacks.console import RunProgressBar, RunSummary, quiet_libraries
from alignsuite.callbacks.predictions import checkpoint_run_dir
from alignsuite.checkpoint_io import AtomicCheckpointIO, last_checkpoint_note
from alignsuite.cli_defaults import announce_run_folder, fill_in, share_run_folder, with_default_classes
from alignsuite.cli_help import DESCRIPTION, PROG, HelpFormatter, add_subcommands
from alignsuite.cli_parser import (
    AlignParser, check_config_files, config_files, new_folders, remove_empty, reported_errors, resolve,
    use_libyaml_dumper,
)
from alignsuite.commands import (
    COMMANDS, AlignTrainer, check_checkpoint, check_monitors, fail, fail_on_missing_extra, import_named_classes,
    run_iterate,
)
from alignsuite.data import PreferenceDataModule
from alignsuite.launch import launch_problem
from alignsuite.module import PreferenceModule
from alignsuite.resume import CKPT_KEYWORDS, check_same_recipe, checkpoint_read, is_file_name, resume_path
from alignsuite.sharding import FSDP2_RECIPE
from alignsuite.slurm import apply_slurm_layout

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    "log_every_n_steps": 10,
}
NULLS = {"null", "Null", "NULL", "~"}  # what YAML reads as None


def _drop_advertisements(record: logging.LogRecord) -> bool:
    """Lightning prints a product tip at every fit; a first run should print only what matters."""
    return not str(record.msg).startswith("💡 Tip:")


class AlignCLI(LightningCLI):
    """LightningCLI over :class:`PreferenceModule` and :class:`PreferenceDataModule` (or subclasses of either).

    Always present: ``checkpoint`` (a ModelCheckpoint that keeps ``last.ckpt``, written atomically; none
    with ``trainer.enable_checkpointing false``) and ``export`` (``save_pretrained`` folder of the policy at
    the end of fit, and the ``export`` command for any checkpoint). Added unless given: a learning-rate
    monitor when fitting with a logger, a prediction writer for ``predict``, and, when fitting, a
    checkpoint at the next step on SIGTERM with exit status 143. ``--ckpt_path last`` is the newest
    ``last.ckpt`` of this run's checkpoint folder (over all ``version_N`` folders when it follows the logger);
    under SLURM, Lightning's requeue checkpoint only when it is newer. Under SLURM a fit given no
    ``--ckpt_path`` resumes the job's own ``last.ckpt`` when the job was requeued or wrote it, and ``num_nodes``
    and ``devices``, left at their defaults, follow the allocation.
    """

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        # The reference and the frozen encoders are in eval mode on purpose; Lightning warns about it anyway.
        warnings.filterwarnings(
            "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training",
            category=PossibleUserWarning,
        )
        # Lightning's own deprecation inside its pytree helper, under this torch: nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_advertisements)
        import_named_classes()
        use_libyaml_dumper()
        super().__init__(
            PreferenceModule,
            PreferenceDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_class=AlignTrainer,
            trainer_defaults=TRAINER_DEFAULTS,
            auto_configure_optimizers=False,  # --optimizer goes to the module (add_arguments_to_parser)
            save_config_kwargs={"overwrite": True},
            parser_class=AlignParser,
            parser_kwargs={"prog": PROG, "description": DESCRIPTION, "formatter_class": HelpFormatter},
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: set(command.given) for name, command in COMMANDS.items()}

    def _add_subcommands(self, parser, **kwargs) -> None:
        """Lightning's, with the suite's help (cli_help): each command's summary in one line, its options first."""
        self._subcommand_parsers = add_subcommands(parser, lambda name, **help: self._prepare_subcommand_parser(
            self.trainer_class, name, **{**help, **kwargs.get(name, {})}))

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        command = COMMANDS[subcommand]
        if command.section:  # only there: a fit's config keeps no evaluate section
            parser.add_class_arguments(command.settings(), command.section)
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(ExportPretrained, "export")
        parser.add_optimizer_args((Optimizer,))  # handed to the module before it is built (optimizer_into_model)

    def parse_arguments(self, parser, args) -> None:
        # Replaces Lightning's, which warns whenever args are given while sys.argv has any: main() gives both.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
            return
        args = list(sys.argv[1:] if args is None else args)
        check_config_files(args)
        args = with_default_classes(args, COMMANDS)
        self.config = parser.parse_args(nulls_as_config(args))
        section = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        self.check_launch(section, args)
        # As given, to compare with a checkpoint's stored hyper-parameters (check_same_recipe).
        model = section.get("model")
        self.given_model = model.as_dict() if isinstance(model, Namespace) else None
        ckpt_path = section.get("ckpt_path")
        self.run_dirs = tuple(os.path.dirname(str(c)) for c in section.get("config") or ())  # a run's config.yaml
        if ckpt_path and ckpt_path not in CKPT_KEYWORDS and "://" not in ckpt_path and not os.path.exists(ckpt_path) \
                and not is_file_name(ckpt_path):  # a bare name is looked for in the run's checkpoint folder
            fail(f"--ckpt_path {ckpt_path}: no such file (--ckpt_path last resumes from the run's newest last.ckpt)")
        if ckpt_path and os.path.exists(ckpt_path):
            check_checkpoint(ckpt_path, section.get("weights_only"))

    def check_launch(self, section, args: list[str]) -> None:
        """Before any model loads or process starts: a layout Lightning would refuse late, or wait on forever."""
        if self.config.get("subcommand") not in (None, "fit", "validate", "test", "predict"):
            return  # export and the others run on one process, whatever the recipe's trainer says
        trainer = section.get("trainer")
        trainer = trainer.as_dict() if isinstance(trainer, Namespace) else dict(trainer or {})
        problem = launch_problem(trainer, config_files(args))
        if problem:
            fail(problem)

    def before_instantiate_classes(self) -> None:
        fill_in(self.config[self.subcommand] if self.subcommand else self.config)

    def before_fit(self) -> None:
        announce_run_folder(self.trainer)

    def instantiate_classes(self) -> None:
        quiet_libraries()
        try:
            super().instantiate_classes()
        except ValueError as error:
            reason = config_error(error, self.config[self.subcommand] if self.subcommand else self.config)
            if reason is None:
                raise
            fail(reason)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            with warnings.catch_warnings():
                if subcommand not in ("fit", "iterate"):  # about resuming top-k bookkeeping: nothing a read-only command does
                    warnings.filterwarnings("ignore", message="The dirpath has changed from")
                if subcommand == "iterate":  # its rounds build their own fits from the whole recipe
                    run_iterate(self)
                else:
                    super()._run_subcommand(subcommand)
        except SIGTERMException:  # Lightning's stop outside a training step (validation): status 0 otherwise
            if self.trainer.is_global_zero:
                sys.stderr.write(f"stopped by SIGTERM before the next training step. {last_checkpoint_note(self.trainer)}\n")
            raise SystemExit(143) from None
        except BaseException:
            remove_empty(self.created_folders)  # a run that failed before writing anything leaves no version_N
            raise

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        command = COMMANDS[subcommand]
        if command.section:
            kwargs[command.argument] = self.config_init[subcommand][command.section]
        if "ckpt_path" in kwargs:
            kwargs["ckpt_path"] = resume_path(self.trainer, subcommand, kwargs["ckpt_path"], self.run_dirs)
        self.check_checkpoint_recipe(subcommand, kwargs)
        if subcommand == "predict" and checkpoint_run_dir(kwargs.get("ckpt_path")):
            # Predictions go beside the checkpoint's run (PredictionWriter): no new run folder for its config.
            self.trainer.loggers = []
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        return kwargs

    def check_checkpoint_recipe(self, subcommand: str, kwargs: dict) -> None:
        """Every command that reads a checkpoint into the recipe's model checks first that the recipe wrote it."""
        path, option = checkpoint_read(subcommand, kwargs)
        if path and os.path.exists(path):
            section = self.config[subcommand]
            weights_only = section.get("evaluate").get("weights_only") if option == "evaluate.aligned" else \
                section.get("weights_only")
            check_same_recipe(subcommand, path, getattr(self, "given_model", None), weights_only, option)

    def _parse_ckpt_path(self) -> None:
        """Keep the model section as given. Lightning would replace it with a checkpoint file's stored
        hyper-parameters, silently dropping what the recipe or command line changed (a loss weight, the
        schedule), and only for a file, not for ``--ckpt_path last``. A resume continues one run: what makes it
        that run is checked against the checkpoint (``check_same_recipe``); the rest is the recipe's."""

    def _instantiate_trainer(self, config: dict, callbacks: list):
        if SLURMEnvironment.detect():  # Lightning reads ranks from SLURM but requires these to match it
            try:
                apply_slurm_layout(config)
            except ValueError as error:
                fail(str(error))
        if config.get("enable_checkpointing") is False:  # then no `checkpoint` section either
            callbacks[:] = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        given = as_list(config.get("callbacks")) + callbacks
        check_monitors(as_list(config.get("callbacks")), callbacks)
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks.append(RunProgressBar())
        if config.get("enable_model_summary", True) is not False and not any(isinstance(c, ModelSummary) for c in given):
            callbacks.append(RunSummary())
        logger = config.get("logger")
        has_logger = logger is not False and logger != [] and not config.get("barebones")
        fitting = self.subcommand in (None, "fit", "iterate")
        if fitting and not any(isinstance(c, CheckpointOnPreemption) for c in given):
            callbacks.append(CheckpointOnPreemption())
        if fitting and has_logger and not any(isinstance(c, LearningRateMonitor) for c in given):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in given):
            callbacks.append(PredictionWriter())
        if isinstance(logger, list):
            config["logger"] = share_run_folder(logger, self._get(self.config, "trainer")["logger"])
        plugins = as_list(config.get("plugins"))
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            plugins = plugins + [AtomicCheckpointIO()]
        if fitting and SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            # Requeue at a step boundary (CheckpointOnPreemption), not inside Lightning's signal handler.
            plugins = plugins + [SLURMEnvironment(auto_requeue=False)]
        config["plugins"] = plugins
        try:
            trainer = super()._instantiate_trainer(config, callbacks)
        except ValueError as error:
            if "requires a GPU accelerator" not in str(error):
                raise
            fail(f"trainer.strategy FSDPStrategy (configs/strategy/fsdp.yaml) runs on GPUs only, with trainer.accelerator"
                 " gpu. To shard on CPUs use FSDP2 through ModelParallelStrategy: --config"
                 f" configs/strategy/fsdp2_cpu2.yaml (two CPU processes; {FSDP2_RECIPE} is the same on GPUs)")
        self.created_folders = new_folders(trainer.loggers)
        return trainer


def as_list(value) -> list:
    return list(value) if isinstance(value, list) else ([value] if value else [])


def nulls_as_config(args: list[str]) -> list[str]:
    """``--a.b.c null`` as an inline ``--config {"a": {"b": {"c": null}}}``.

    jsonargparse (4.53) re-parses a value nested two classes deep from its text, ``f"--{key}={value}"``,
    so a null read once already becomes the string "None" (``cache_dir: str | None`` got a folder named
    ``None``). A config holds a real null at any depth, and a later flag still wins.
    """
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg[2:].partition("=")
        # Not under trainer: nothing there is two classes deep, and its lists (logger, callbacks) take a
        # dotted flag as "the last item", which a config would replace instead.
        if arg.startswith("--") and "." in key and not key.endswith("+") and not key.startswith("trainer."):
            if not eq and i + 1 < len(args):
                value, taken = args[i + 1], 2
            else:
                taken = 1
            if (eq or taken == 2) and value in NULLS:
                nested = None
                for part in reversed(key.split(".")):
                    nested = {part: nested}
                out += ["--config", json.dumps(nested)]
                i += taken
                continue
        out.append(arg)
        i += 1
    return out


def config_error(error: BaseException, config) -> str | None:
    """The reason a class in the config refused its arguments, as ``model.objective: beta must be > 0``.

    jsonargparse wraps it in a "Does not validate against any of the Union subtypes" error that lists
    every alternative type; the reason is the innermost exception, raised in some class's ``__init__``.
    Returns None when the error is not of that kind.
    """
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    inner = chain[-1]
    if len(chain) < 2 or not isinstance(inner, ValueError):
        return None
    entries = list(class_paths(config.as_dict() if hasattr(config, "as_dict") else config))
    for frame in frames(inner.__traceback__):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            cls = type(frame.f_locals["self"])
            for key, class_path in entries:
                if resolve(class_path) is cls:
                    return f"{key}: {inner}"
    wrapped = any(f.f_globals.get("__name__", "").startswith("jsonargparse") for f in frames(error.__traceback__))
    return str(inner) if wrapped else None


def frames(tb):
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def class_paths(node, key: str = ""):
    """(config key, class_path) of every class in a config dict, keys without ``init_args``."""
    if isinstance(node, dict):
        if "class_path" in node:
            yield key, node["class_path"]
            node = node.get("init_args") or {}
        for name, value in node.items():
            yield from class_paths(value, f"{key}.{name}" if key else name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from class_paths(value, f"{key}[{i}]")


def main(argv: list[str] | None = None) -> None:
    """The command line: an error in the arguments or the data is its message alone (see cli_parser), and so is
    a modality's library that is not installed (naming the pip extra)."""
    with reported_errors():
        try:
            AlignCLI(args=argv)
        except Exception as error:
            fail_on_missing_extra(error)
            raise
