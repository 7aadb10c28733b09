"""The help a first run reads: the program's description, one line per command, and the suite's own options first.

Lightning's parser lists the Trainer's ~400 lines of options before the model's, and the model's only as
``--model.help``: the suite's options (backbone, objective and its hyper-parameters, reference, optimizer, data)
are summarised here, above the parser's own listing. The names and defaults are read from the code (the
objectives' registry, the backbones' table, the classes' signatures and exports), so they cannot drift from it.
"""

from __future__ import annotations

import argparse
import inspect
import textwrap
from typing import Callable, get_args, get_type_hints

from jsonargparse import DefaultHelpFormatter

from alignsuite import data, reference
from alignsuite.backbones.inferred import BACKBONES
from alignsuite.commands import COMMANDS
from alignsuite.data import Layout, PreferenceDataModule
from alignsuite.module import DEFAULT_LR, DEFAULT_OBJECTIVE, PreferenceModule
from alignsuite.objectives.base import objective_classes
from alignsuite.reference import Reference

PROG = "alignsuite"
WIDTH, INDENT = 78, 26  # as argparse's listing below, on a terminal of 80 columns
DESCRIPTION = f"""\
Preference alignment (DPO and its family) for language, vision-language, speech and
diffusion models, on PyTorch Lightning.

  {PROG} fit --model.backbone.model_name_or_path MODEL --data.train pairs.jsonl
  {PROG} fit --config recipes/toy/llm_dpo.yaml

Each command's options: {PROG} <command> --help."""
USAGE = "%(prog)s [--config RECIPE.yaml] [--model.* ...] [--data.* ...] [--trainer.* ...] [options]"


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's formatter, keeping the descriptions' own lines (the examples, the options summary)."""


def entry(flag: str, text: str) -> str:
    body = textwrap.fill(text, WIDTH, initial_indent=" " * INDENT, subsequent_indent=" " * INDENT,
                         break_on_hyphens=False)
    return f"  {flag}\n{body}"


def exported(module, base: type) -> list[str]:
    """The subclasses of ``base`` that ``module`` exports (its ``__all__``, or its public names), by name."""
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    return sorted(name for name in names
                  if isinstance(cls := getattr(module, name), type) and issubclass(cls, base) and cls is not base)


def default_of(cls: type, argument: str):
    return inspect.signature(cls.__init__).parameters[argument].default


def suite_options(command: str) -> str:
    """The suite's own options, each with what it does and its default; the names are read from the code."""
    objectives = objective_classes()
    default = objectives[DEFAULT_OBJECTIVE]
    names = ", ".join(cls.__name__ if cls.__name__.lower() == name else f"{cls.__name__} ({name})"
                      for name, cls in sorted(objectives.items(), key=lambda item: item[1].__name__.lower()))
    hyper = [(name, p.default) for name, p in inspect.signature(default.__init__).parameters.items()
             if name != "self" and p.default is not inspect.Parameter.empty]
    schedules = " | ".join(get_args(get_type_hints(PreferenceModule.__init__)["lr_schedule"]))
    lines = [
        entry("--model.backbone.model_name_or_path PATH",
              "The model to train: a save_pretrained folder, a hub id, or toy:<world>."),
        entry("--model.backbone NAME", f"What trains it (default: read from the model's config): {', '.join(BACKBONES)}."),
        entry("--model.objective NAME", f"The loss (default: {default.__name__}): {names}."),
        *[entry(f"--model.objective.{name} {name.upper()}", f"{default.__name__}'s {name} (default: {value}).")
          for name, value in hyper],
        entry("--model.reference NAME", "Where reference scores come from (default: a frozen copy of the starting"
                                        " weights; under LoRA the policy with its adapters off; none for a"
                                        f" reference-free objective): {', '.join(exported(reference, Reference))}."),
        entry("--optimizer NAME --optimizer.lr LR",
              f"Any torch.optim optimizer, over the trainable weights (default: AdamW at lr {str(DEFAULT_LR).replace('e-0', 'e-')}, TRL's DPO"
              " default). The same as --model.optimizer NAME --model.optimizer.lr LR."),
        entry("--model.lr_schedule NAME", f"The learning rate after warm-up: {schedules} (default:"
                                          f" {default_of(PreferenceModule, 'lr_schedule')})."),
        entry("--model.warmup_ratio RATIO", "Share of the training steps spent warming up from zero (default:"
                                            f" {default_of(PreferenceModule, 'warmup_ratio')})."),
        entry("--data.train PATH", "Training data: a .jsonl, .json, .parquet, .arrow or .csv file, a glob, a folder"
                                   " or a hub id."),
        entry("--data.val PATH", "Validation data, like --data.train (or --data.val_fraction of it)."),
        entry("--data.layout NAME", f"What a row is (default: TextPairs): {', '.join(exported(data, Layout))}."),
        entry("--data.batch_size N", f"Rows per training batch (default: {default_of(PreferenceDataModule, 'batch_size')})."),
    ]
    more = [
        f"  {PROG} {command} --model.objective.help SimPO      an objective's options",
        f"  {PROG} {command} --model.backbone.help CausalLM    a backbone's options",
        f"  {PROG} {command} --model.help PreferenceModule     the module's options",
        f"  {PROG} {command} --data.help PreferenceDataModule  the data's options",
        f"  {PROG} {command} ... --print_config                the whole config of the run",
        "The Trainer's options (--trainer.max_steps, --trainer.precision, --trainer.devices ...) are listed below.",
    ]
    return "\n".join(["The suite's options:", *lines, "", "More:", *more])


def add_subcommands(parser, prepare: Callable) -> dict:
    """The commands of :data:`COMMANDS` under ``parser``, each parser built by ``prepare(name, **kwargs)`` with the
    help below; their prog is ``alignsuite <command>``. Returns the parsers by command."""
    subcommands, parsers = parser.add_subcommands(), {}
    for name, command in COMMANDS.items():
        parsers[name] = prepare(name, **command_parser_kwargs(name, command.summary))
        subcommands.add_subcommand(name, parsers[name], help=command.summary)
        parsers[name].prog = f"{parser.prog} {name}"
    return parsers


def command_parser_kwargs(command: str, summary: str) -> dict:
    """The subcommand parser's usage, description and formatter: its summary, examples and the suite's options."""
    examples = f"  {PROG} {command} --model.backbone.model_name_or_path MODEL --data.train pairs.jsonl"
    if command != "fit":
        examples = f"  {PROG} {command} --config runs/NAME/version_0/config.yaml --ckpt_path last"
    return {"usage": USAGE, "formatter_class": HelpFormatter,
            "description": f"{summary}\n\n{examples}\n\n{suite_options(command)}"}
