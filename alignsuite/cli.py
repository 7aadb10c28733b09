"""``python -m alignsuite fit|validate|test|predict|export|evaluate|build_pairs --config recipe.yaml``.

The config plumbing: the LightningCLI subclass, its parser hooks, and the helpers that read arguments and
explain a config's errors. The commands themselves are a table in ``commands.py``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import warnings

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import (
    BasePredictionWriter, LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar,
)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from alignsuite.callbacks import CheckpointOnPreemption, ExportPretrained, PredictionWriter
from alignsuite.callbacks.preemption import hpc_checkpoint, newer_checkpoint, newest_last_checkpoint
from alignsuite.callbacks.recipe_match import recipe_differences, stored_hyperparameters
from alignsuite.checkpoint_io import INDEX, AtomicCheckpointIO, CheckpointError, last_checkpoint_note
from alignsuite.commands import (
    COMMANDS, AlignTrainer, check_checkpoint, fail, fail_on_missing_extra, import_named_classes,
)
from alignsuite.data import PreferenceDataModule
from alignsuite.module import PreferenceModule
from alignsuite.sharding import FSDP2_RECIPE
from alignsuite.slurm import apply_slurm_layout

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    "log_every_n_steps": 10,
}
NULLS = {"null", "Null", "NULL", "~"}  # what YAML reads as None
CKPT_KEYWORDS = {"last", "best", "hpc", "registry"}  # ckpt_path values Lightning resolves itself


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
    under SLURM, Lightning's requeue checkpoint only when it is newer. Under SLURM ``num_nodes`` and
    ``devices``, left at their defaults, follow the allocation.
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
        super().__init__(
            PreferenceModule,
            PreferenceDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_class=AlignTrainer,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_env": True},
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: set(command.given) for name, command in COMMANDS.items()}

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

    def parse_arguments(self, parser, args) -> None:
        # Replaces Lightning's, which warns whenever args are given while sys.argv has any: main() gives both.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
            return
        args = list(sys.argv[1:] if args is None else args)
        check_config_files(args)
        self.config = parser.parse_args(nulls_as_config(args))
        section = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        # As given, to compare with a checkpoint's stored hyper-parameters (check_same_recipe).
        model = section.get("model")
        self.given_model = model.as_dict() if isinstance(model, Namespace) else None
        ckpt_path = section.get("ckpt_path")
        if ckpt_path and ckpt_path not in CKPT_KEYWORDS and "://" not in ckpt_path and not os.path.exists(ckpt_path):
            fail(f"--ckpt_path {ckpt_path}: no such file (--ckpt_path last resumes from the run's newest last.ckpt)")
        if ckpt_path and os.path.exists(ckpt_path):
            check_checkpoint(ckpt_path, section.get("weights_only"))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            reason = config_error(error, self.config[self.subcommand] if self.subcommand else self.config)
            if reason is None:
                raise
            fail(reason)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:  # Lightning's stop outside a training step (validation): status 0 otherwise
            if self.trainer.is_global_zero:
                sys.stderr.write(f"stopped by SIGTERM before the next training step. {last_checkpoint_note(self.trainer)}\n")
            raise SystemExit(143) from None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        command = COMMANDS[subcommand]
        if command.section:
            kwargs[command.argument] = self.config_init[subcommand][command.section]
        if "ckpt_path" in kwargs:
            kwargs["ckpt_path"] = self.resume_path(subcommand, kwargs["ckpt_path"])
        self.check_checkpoint_recipe(subcommand, kwargs)
        return kwargs

    def check_checkpoint_recipe(self, subcommand: str, kwargs: dict) -> None:
        """Every command that reads a checkpoint into the recipe's model checks first that the recipe wrote it:
        ``--ckpt_path`` (``last`` resolved to its file), and ``evaluate.aligned`` when it is a checkpoint."""
        path, option = kwargs.get("ckpt_path"), "--ckpt_path"
        if subcommand == "evaluate":
            path, option = getattr(kwargs.get("evaluation"), "aligned", None), "evaluate.aligned"
            if path and os.path.isdir(path) and not os.path.exists(os.path.join(path, INDEX)):
                return  # an export folder (save_pretrained), not a checkpoint
        if path and os.path.exists(path):
            self.check_same_recipe(path, option)

    def _parse_ckpt_path(self) -> None:
        """Keep the model section as given. Lightning would replace it with a checkpoint file's stored
        hyper-parameters, silently dropping what the recipe or command line changed (a loss weight, the
        schedule), and only for a file, not for ``--ckpt_path last``. A resume continues one run: what makes it
        that run is checked against the checkpoint (``check_same_recipe``); the rest is the recipe's."""

    def check_same_recipe(self, ckpt_path: str, option: str = "--ckpt_path") -> None:
        """Refuse a checkpoint another model, objective or reference wrote (see recipe_match): resumed, it would
        continue another run; read by any other command, it would not fit the recipe's model, or fit it wrongly."""
        given = getattr(self, "given_model", None)
        section = self.config[self.subcommand]
        weights_only = section.get("weights_only")
        if option == "evaluate.aligned":
            weights_only = section.get("evaluate").get("weights_only")
        try:
            stored = stored_hyperparameters(ckpt_path, weights_only)
        except CheckpointError as error:
            fail(str(error))
        if not stored or not given:
            return
        differences = recipe_differences(stored, given)
        if not differences:
            return
        if self.subcommand == "fit":
            why = ("Resuming continues that run, so its model, objective and reference must stay as they were: start"
                   " a fresh run (without --ckpt_path), or set these back (--model.init_args...) to the checkpoint's"
                   " values")
        else:
            why = (f"{self.subcommand} reads it into the recipe's model: give the recipe that wrote it (the run's"
                   " config.yaml), or set these back (--model.init_args...) to the checkpoint's values")
        fail(f"{option} {ckpt_path} was written by a different recipe: {'; '.join(differences)}. {why}")

    def resume_path(self, subcommand: str, ckpt_path: str | None) -> str | None:
        """``last`` as a file, and under SLURM the newer of ``last.ckpt`` and Lightning's requeue checkpoint."""
        trainer = self.trainer
        hpc = None
        if subcommand == "fit" and ckpt_path in (None, "last") and SLURMEnvironment.detect():
            hpc = hpc_checkpoint(trainer.default_root_dir)  # Lightning would take it silently when not given
        if ckpt_path != "last" and hpc is None:
            return ckpt_path
        callback = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        dirpath = callback.dirpath if callback is not None else None
        logger = trainer.loggers[0] if trainer.loggers else None
        if logger is not None and not dirpath:
            where = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name))
            searched = f"{where}/*/checkpoints/"
        else:
            where = searched = dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
        last = newest_last_checkpoint(dirpath or (None if logger else where), where)
        chosen, how = newer_checkpoint(last, hpc)
        if chosen is None:
            if subcommand != "fit":
                fail(f"--ckpt_path last: no last.ckpt in {searched}")
            rank_zero_info(f"--ckpt_path last: no last.ckpt in {searched}; training from the start")
            return None
        rank_zero_info(how)
        return chosen

    def _instantiate_trainer(self, config: dict, callbacks: list):
        if SLURMEnvironment.detect():  # Lightning reads ranks from SLURM but requires these to match it
            try:
                apply_slurm_layout(config)
            except ValueError as error:
                fail(str(error))
        if config.get("enable_checkpointing") is False:  # then no `checkpoint` section either
            callbacks[:] = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        given = as_list(config.get("callbacks")) + callbacks
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks.append(RichProgressBar())
        logger = config.get("logger")
        has_logger = logger is not False and logger != [] and not config.get("barebones")
        fitting = self.subcommand in (None, "fit")
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
            return super()._instantiate_trainer(config, callbacks)
        except ValueError as error:
            if "requires a GPU accelerator" not in str(error):
                raise
            fail(f"trainer.strategy FSDPStrategy (configs/strategy/fsdp.yaml) runs on GPUs only, with trainer.accelerator"
                 " gpu. To shard on CPUs use FSDP2 through ModelParallelStrategy: --config"
                 f" configs/strategy/fsdp2_cpu2.yaml (two CPU processes; {FSDP2_RECIPE} is the same on GPUs)")


def as_list(value) -> list:
    return list(value) if isinstance(value, list) else ([value] if value else [])


def check_config_files(args: list[str]) -> None:
    """A YAML syntax error in a ``--config`` file is named with the file and line (jsonargparse names neither)."""
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
            context = ""
            if error.context and error.context_mark:
                start = error.context_mark
                context = f" ({error.context} at line {start.line + 1}, column {start.column + 1})"
            fail(f"{path}: invalid YAML at {where}: {error.problem}{context}")
        except yaml.YAMLError as error:
            fail(f"{path}: invalid YAML: {error}")


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


def resolve(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def share_run_folder(loggers: list, specs: list) -> list:
    """Loggers after the first that write into ``save_dir/name/version`` folders and leave ``version`` unset
    join the first one's folder, so one run is one folder (the CSV metrics beside the TensorBoard events),
    not two ``version_N`` folders numbered independently.
    """
    folder_kinds = (CSVLogger, TensorBoardLogger)
    if not loggers or not isinstance(loggers[0], folder_kinds) or len(specs) != len(loggers):
        return loggers
    first, joined = loggers[0], [loggers[0]]
    for logger, spec in zip(loggers[1:], specs[1:]):
        init_args = {}
        for part in ("init_args", "dict_kwargs"):  # dict_kwargs: what a logger takes through **kwargs
            value = spec.get(part) if isinstance(spec, (dict, Namespace)) else None
            init_args.update(value.as_dict() if isinstance(value, Namespace) else value or {})
        if isinstance(logger, folder_kinds) and init_args.get("version") is None:
            init_args.update(save_dir=first.save_dir, name=first.name, version=first.version)
            logger = type(logger)(**init_args)
        joined.append(logger)
    return joined


def main(argv: list[str] | None = None) -> None:
    try:
        AlignCLI(args=argv)
    except Exception as error:
        fail_on_missing_extra(error)
        raise

