"""What the command line fills in when a run gives little: the one-line run of a model on a file.

``python -m alignsuite fit --model.backbone.model_name_or_path M --data.train pairs.jsonl`` names no backbone,
objective, optimizer or run folder. The backbone is read from the model's files (``backbones.inferred``); the
module's own defaults give DPO at beta 0.1, the frozen-copy reference and AdamW at 1e-6 (TRL's ``DPOConfig``
learning rate); the run folder is named after the model, the data and the objective. Lightning's ``--optimizer``
flag is handed to the module, which builds it over the trainable weights once they exist (``configure_model``).
"""

from __future__ import annotations

import os
import re

import yaml
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from alignsuite.backbones.inferred import BackboneChoiceError, infer_backbone
from alignsuite.cli_parser import config_arguments
from alignsuite.commands import fail
from alignsuite.components import import_object
from alignsuite.module import DEFAULT_LR, DEFAULT_OBJECTIVE
from alignsuite.objectives.base import objective_classes

# Where a class goes on the command line, in both spellings: a class given only by its options
# (``--model.objective.beta 0.2``) gets the run's default class, inserted before them (jsonargparse reads the
# class first). The backbone's default is read from the model; an optimizer's comes with the suite's learning rate.
SECTIONS: dict[str, tuple[str, ...]] = {
    "model.backbone": ("model.backbone", "model.init_args.backbone"),
    "model.objective": ("model.objective", "model.init_args.objective"),
    "model.optimizer": ("model.optimizer", "model.init_args.optimizer"),
    "optimizer": ("optimizer",),
}
ALSO_GIVEN_BY = {"optimizer": SECTIONS["model.optimizer"]}  # the module's optimizer serves for Lightning's flag
WHOLE_MODEL = ("model", "model.init_args")  # a model given whole (a file, a class): what it holds is the user's
FOLDER_LOGGERS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
                  "lightning.pytorch.loggers.csv_logs.CSVLogger", "lightning.pytorch.loggers.tensorboard.TensorBoardLogger")
UNNAMED = (None, "lightning_logs")  # Lightning's name for a run folder nobody named


def flags(args: list[str]):
    """``(key, value)`` of every ``--key value`` and ``--key=value`` in ``args``."""
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else None
        yield key, value


def configs(args: list[str]) -> list[dict]:
    """The ``--config`` files and inline configs of ``args``, read (those that do not read are the parser's to name)."""
    found = []
    for given in config_arguments(args):
        try:
            if os.path.isfile(given):
                with open(given, encoding="utf-8") as f:
                    config = yaml.safe_load(f)
            else:
                config = yaml.safe_load(given)
        except yaml.YAMLError:
            continue  # the parser names the file and line (cli.check_config_files)
        if isinstance(config, dict):
            found.append(config)
    return found


def lookup(config: dict, key: str):
    """``config``'s value at the dotted ``key``, through ``init_args`` where the config has them."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part, (node.get("init_args") or {}).get(part))
    return node


def default_flags(section: str, path: str | None) -> list[str]:
    """The flags that give ``section`` its default class."""
    if section == "model.backbone":
        try:
            class_path = infer_backbone(path)
        except (BackboneChoiceError, FileNotFoundError) as error:
            fail(str(error))
        rank_zero_info(f"model.backbone: {class_path.rpartition('.')[2]}, from {path}'s config (--model.backbone to"
                       " choose another)")
        return ["--model.backbone", class_path]
    if section == "model.objective":
        objective = objective_classes()[DEFAULT_OBJECTIVE]
        return ["--model.objective", objective.__name__]  # as a user names it: alignsuite.objectives.<name>
    return [f"--{section}", "torch.optim.AdamW", f"--{section}.lr", str(DEFAULT_LR)]


def with_default_classes(args: list[str], commands) -> list[str]:
    """``args`` with the default class of each section they give options of and no class (``--model.backbone
    <class>`` read from the model's files, for the one-line run); a model whose files do not settle its backbone
    is a one-line error that lists the backbones."""
    given = list(flags(args))
    read = configs(args)
    if any(key in WHOLE_MODEL for key, _ in given) or any(not isinstance(c.get("model", {}), dict) for c in read):
        return args
    inserted = []
    for section, spellings in SECTIONS.items():
        classes = spellings + ALSO_GIVEN_BY.get(section, ())
        if any(key in classes for key, _ in given) or any(lookup(c, s) is not None and (
                not isinstance(lookup(c, s), dict) or "class_path" in lookup(c, s)) for c in read for s in classes):
            continue  # its class is given
        options = [key for key, _ in given if key.startswith(tuple(f"{s}." for s in spellings))]
        in_configs = [c for c in read if isinstance(lookup(c, section), dict)]
        if not options and not in_configs:
            continue
        path = None
        if section == "model.backbone":
            paths = [lookup(c, "model.backbone.model_name_or_path") for c in in_configs]  # the command line's win
            paths += [value for key, value in given
                      if key in {f"{s}{sep}model_name_or_path" for s in spellings for sep in (".", ".init_args.")}]
            path = next((p for p in reversed(paths) if isinstance(p, str)), None)
            if path is None:
                continue
        inserted += default_flags(section, path)
    if not inserted:
        return args
    # Before the first flag or config that reaches into a section (the class comes first), after the command.
    start = next((i + 1 for i, arg in enumerate(args) if arg in commands), 0)
    reaches = [i for i, arg in enumerate(args) if i >= start and arg.startswith(("--model", "--optimizer", "--config",
                                                                                   "-c"))]
    at = reaches[0] if reaches else len(args)
    return args[:at] + inserted + args[at:]


def optimizer_into_model(section: Namespace) -> None:
    """Lightning's ``--optimizer`` as the module's ``model.optimizer``: Lightning would build it at once, over the
    parameters of a model that ``configure_model`` has not built yet (an empty list); the module builds it over
    the trainable weights, under its schedule. The flag replaces what the recipe gave, as a later flag does."""
    optimizer = section.get("optimizer")
    model = section.get("model")
    if optimizer is None or not isinstance(model, Namespace):
        return
    model.init_args.optimizer = optimizer
    section.optimizer = None


def fill_in(section: Namespace) -> None:
    """What a parsed config leaves to the suite, filled in before its classes are built."""
    optimizer_into_model(section)
    name_run_folder(section)


def name_run_folder(section: Namespace) -> None:
    """A run folder named ``<model>_<data>_<objective>`` under the logger's ``save_dir``, for a CSV or TensorBoard
    logger left unnamed (Lightning's ``lightning_logs``): every command of one run finds the same folder."""
    logger = section.get("trainer", Namespace()).get("logger")
    first = logger[0] if isinstance(logger, list) and logger else logger
    if not isinstance(first, (Namespace, dict)) or first.get("class_path") not in FOLDER_LOGGERS:
        return
    init_args = first.get("init_args")
    if init_args is None:
        init_args = first["init_args"] = Namespace() if isinstance(first, Namespace) else {}
    if init_args.get("name") in UNNAMED and (name := run_name(section)):
        init_args["name"] = name


def run_name(section: Namespace) -> str | None:
    model = as_dict(section.get("model"))
    init_args = model.get("init_args") or {}
    backbone = (init_args.get("backbone") or {}).get("init_args") or {}
    data = (as_dict(section.get("data")).get("init_args") or {}).get("train")
    objective = (init_args.get("objective") or {}).get("class_path")
    objective = getattr(import_object(objective), "name", None) if objective else DEFAULT_OBJECTIVE
    parts = [short_name(backbone.get("model_name_or_path")), short_name(data[0] if isinstance(data, list) else data),
             objective]
    return "_".join(p for p in parts if p) or None


def short_name(source: str | None) -> str | None:
    """``Qwen/Qwen2-0.5B`` -> ``Qwen2-0.5B``, ``data/pairs.jsonl`` -> ``pairs``, ``toy:llm`` -> ``toy-llm``."""
    if not isinstance(source, str):
        return None
    name = os.path.basename(source.rstrip("/"))
    for suffix in (".jsonl", ".json", ".parquet", ".arrow", ".csv"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or None


def as_dict(node) -> dict:
    if isinstance(node, Namespace):
        return node.as_dict()
    return node if isinstance(node, dict) else {}


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


def announce_run_folder(trainer) -> None:
    """Say where the run writes, before it starts."""
    logger = trainer.loggers[0] if trainer.loggers else None
    folder = getattr(logger, "log_dir", None)
    if folder:
        rank_zero_info(f"run folder: {folder}")


__all__ = ["announce_run_folder", "fill_in", "name_run_folder", "optimizer_into_model", "share_run_folder",
           "with_default_classes"]
