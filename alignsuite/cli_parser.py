"""The command line's parser, and what the command line says when it stops: one line that names the option,
file or row, not a traceback.

A mistyped option gets "did you mean" from the keys that option could have been; a class name that does not
exist gets the names that do. Options are never taken by a prefix of their name (argparse would read
``--trainer.max_step`` as ``max_steps``), and no environment variable changes a run behind its command line.

Exit statuses: 2 when the command line, the recipe or a checkpoint it names is refused (before a run starts),
1 when the run stops on its data (a ``DataError`` naming the file, row and field) or a file it cannot find.
``ALIGNSUITE_TRACEBACK=1`` prints the full traceback (and jsonargparse's whole message) as well.

``--print_config`` prints what will run: a reference left out is printed as the one the module will build.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
import traceback
from contextlib import contextmanager

import yaml
from jsonargparse import Namespace
from jsonargparse._actions import _ActionPrintConfig
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.cli import LightningArgumentParser

from alignsuite.checkpoint_io import CheckpointError
from alignsuite.components import import_object
from alignsuite.data.errors import DataError
from alignsuite.reference import default_reference

TRACEBACK_ENV = "ALIGNSUITE_TRACEBACK"
USAGE_ERROR, DATA_ERROR = 2, 1
# jsonargparse's nested message: the lines that frame an error rather than state it.
_FRAMING = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")
_KEY = re.compile(r'^Parser key "([^"]+)":')
_CLASS = re.compile(r"^Problem with given class_path '([^']+)':")
_OPTION = re.compile(r"^Option '([^']+)' is not accepted")
_NO_CLASS = re.compile(r"^(?:Expected a dot import path string: (.+)|Import path (\S+) does not correspond)")
_GROUP = re.compile(r"^Group '([^']+)' does not accept option '([^']+)'")
_BASE = re.compile(r"^Subtypes: \[<class '([^']+)'>")


def traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0", "false", "False")


def print_error(message: str, status: int, details: str | None = None) -> None:
    """``alignsuite: error: <message>`` on stderr, once however many processes run, and exit with ``status``;
    ``details`` (a traceback) too when ``ALIGNSUITE_TRACEBACK`` is set."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        if details and traceback_wanted():
            sys.stderr.write(details.rstrip("\n") + "\n")
        sys.stderr.write(f"alignsuite: error: {message}\n")
        sys.stderr.flush()
    raise SystemExit(status)


@contextmanager
def reported_errors():
    """Around a command: a data error, a missing file or a checkpoint refused while running ends in its message
    alone (exit 1), the traceback only with ``ALIGNSUITE_TRACEBACK=1``; anything else keeps its traceback."""
    try:
        yield
    except (DataError, CheckpointError, FileNotFoundError) as error:
        print_error(str(error), DATA_ERROR, traceback.format_exc())


def config_arguments(args: list[str]) -> list[str]:
    """What each ``--config`` (``-c``) of ``args`` gives, in order: a file's path, or a config inline."""
    given = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            given.append(args[i + 1])
        elif arg.startswith("--config="):
            given.append(arg.split("=", 1)[1])
    return given


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` files given, in order."""
    return [path for path in config_arguments(args) if os.path.isfile(path)]


def check_config_files(args: list[str]) -> None:
    """A YAML syntax error in a ``--config`` file is named with the file and line (jsonargparse names neither)."""
    for path in config_files(args):
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
            print_error(f"{path}: invalid YAML at {where}: {error.problem}{context}", USAGE_ERROR)
        except yaml.YAMLError as error:
            print_error(f"{path}: invalid YAML: {error}", USAGE_ERROR)


class AlignParser(LightningArgumentParser):
    """LightningCLI's parser with exact option names only, no environment overrides, and one-line errors.

    jsonargparse builds its inner parsers (one per class in the config) as instances of this class too, so no
    parser anywhere takes an abbreviation.
    """

    def __init__(self, *args, allow_abbrev: bool = False, default_env: bool = False, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, default_env=default_env, **kwargs)

    def save(self, cfg, path, *args, skip_check: bool = True, **kwargs) -> None:
        """jsonargparse's, without checking ``cfg`` again by default: the config saved beside a run
        (``config.yaml``) was checked when it was parsed and its classes were built from it, and the second check
        was two thirds of the save, paid again by every round of ``iterate``.

        A text given for this very ``cfg`` by :meth:`dumped_as` (a dump made already, skipping nothing) is written
        as it is, once, where the save would dump it again into one plain file."""
        known, self.known_dump = getattr(self, "known_dump", None), None
        one_file = not args and not kwargs.get("multifile", True) and kwargs.get("format", "parser_mode") == "parser_mode"
        if known is not None and known[0] is cfg and one_file and kwargs.get("skip_none") is False \
                and "://" not in str(path):
            if not kwargs.get("overwrite", False) and os.path.isfile(path):
                raise ValueError(f"Refusing to overwrite existing file: {path}")
            with open(path, "w") as f:
                f.write(known[1])
            return
        super().save(cfg, path, *args, skip_check=skip_check, **kwargs)

    def dumped_as(self, cfg, text: str) -> None:
        """Let the next :meth:`save` of ``cfg`` write ``text``: ``cfg`` dumped with nothing skipped."""
        self.known_dump = (cfg, text)

    def dump(self, cfg, *args, **kwargs) -> str:
        if _ActionPrintConfig.is_print_config_requested(self):  # not the run's saved config.yaml: it stays as given
            cfg = with_default_reference(cfg)
        return super().dump(cfg, *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # an inner parser: jsonargparse collects the error into the outer message
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        help_hint = f" (see: {parser.prog.replace(' [options]', '')} --help)"
        print_error(one_line(message, parser) + help_hint, USAGE_ERROR, message)


def use_libyaml_dumper() -> None:
    """Configs are written with libyaml's emitter where PyYAML has it (the same text as the pure-Python one, at a
    third of its time): jsonargparse's own YAML options, its safe representers."""
    if not yaml.__with_libyaml__:
        return
    from jsonargparse import set_dumper
    from jsonargparse._loaders_dumpers import dump_yaml_kwargs

    set_dumper("yaml", lambda data: yaml.dump(data, Dumper=yaml.CSafeDumper, **dump_yaml_kwargs))


def with_default_reference(cfg):
    """``cfg`` with ``model.init_args.reference``, when left out, set to the reference the module will build
    (``reference.default_reference``: none for a reference-free objective, AdapterDisabled under LoRA, else a
    FrozenCopy), with its settings."""
    model = cfg.get("model")
    init = model.get("init_args") if isinstance(model, Namespace) else None
    if init is None or init.get("reference") is not None or not isinstance(init.get("objective"), Namespace):
        return cfg
    objective = resolve(init.objective.class_path)
    backbone = init.get("backbone")
    lora = backbone.get("init_args.lora") if isinstance(backbone, Namespace) else None
    if objective is None:
        return cfg
    reference = default_reference(objective, Namespace(has_adapters=lora is not None))
    if reference is None:
        return cfg
    kind = type(reference)
    settings = {name: getattr(reference, name, p.default) for name, p in inspect.signature(kind).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    cfg = cfg.clone()
    cfg["model.init_args.reference"] = Namespace(class_path=f"{kind.__module__}.{kind.__qualname__}",
                                                 **({"init_args": Namespace(**settings)} if settings else {}))
    return cfg


def one_line(message: str, parser) -> str:
    """jsonargparse's error (a nested report of every alternative it tried) as the one reason that matters."""
    if message.lower().startswith("unrecognized arguments:"):
        return unknown_options(message.split(":", 1)[1].split(), parser)
    if match := _GROUP.match(message.strip()):  # a config file's unknown key in a section (trainer, checkpoint)
        group, option = match.groups()
        options = {o for p in option_parsers(parser) for o in p._option_string_actions if o.startswith(f"--{group}.")}
        valid = sorted(o[len(group) + 3:] for o in options)
        return f"{group}.{option}: {group} has no option {option!r}" + suggestion(option, valid)
    lines = [(len(line) - len(line.lstrip(" -")), line.strip().lstrip("- ").strip()) for line in message.splitlines()]
    stated = [i for i, (_, text) in enumerate(lines)
              if text and not text.startswith(_FRAMING) and not _KEY.match(text) and not _CLASS.match(text)]
    if not stated:
        return message.strip()
    pick = max(stated, key=lambda i: (lines[i][0], -i))  # the deepest reason, the first of equals
    depth, reason = lines[pick]
    keys, class_path, base = [], None, None
    for indent, text in reversed(lines[:pick]):
        if base is None and indent <= depth and (match := _BASE.match(text)):
            base = match.group(1)  # the type a class name was asked for, beside the reason
        elif indent < depth and (match := _KEY.match(text)):
            keys.insert(0, match.group(1))
            depth = indent
        elif indent < depth and class_path is None and (match := _CLASS.match(text)):
            class_path = match.group(1)
            depth = indent
    where = ".".join(keys)
    if (match := _OPTION.match(reason)) and class_path:
        option = match.group(1)
        valid = class_options(class_path)
        hint = suggestion(option, valid) or (f" (it takes: {', '.join(valid)})" if valid else "")
        return f"{where + '.' if where else ''}{option}: {class_path.rpartition('.')[2]} has no option {option!r}{hint}"
    if (match := _NO_CLASS.match(reason)) and base:
        given = (match.group(1) or match.group(2)).strip()
        names = subclass_names(base)
        listing = f" (choose from: {', '.join(names)})" if names else ""
        return f"{where}: no class {given!r}{suggestion(given, names)}{listing}"
    return f"{where}: {reason}" if where else reason


def option_parsers(parser) -> list:
    """The parser and its commands' parsers: a config file's key is checked by the main parser, before a command's."""
    commands = getattr(parser, "_subcommands_action", None)
    return [parser, *(commands._name_parser_map.values() if commands is not None else ())]


def unknown_options(given: list[str], parser) -> str:
    valid = sorted(o for o in parser._option_string_actions if o.startswith("--"))
    unknown = [arg.split("=", 1)[0] for arg in given if arg.startswith("--")] or given[:1]
    return "; ".join(f"unknown option {name}" + suggestion(name, valid) for name in unknown)


def suggestion(given: str, valid: list[str]) -> str:
    """``; did you mean 'beta'?`` for the closest valid name (difflib's, or the same name in another case); "" for
    none close."""
    close = difflib.get_close_matches(given, valid, n=1) or [v for v in valid if v.lower() == given.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


def resolve(class_path: str):
    """The class a config's ``class_path`` names, or None."""
    try:
        return import_object(class_path)
    except ValueError:
        return None


def class_options(class_path: str) -> list[str]:
    """The options a class takes in a config: its ``__init__`` arguments, as jsonargparse reads them."""
    cls = resolve(class_path)
    if cls is None:
        return []
    parser = LightningArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, "x", fail_untyped=False)
    except Exception:  # noqa: BLE001 - only a suggestion is lost
        return []
    return sorted({a.dest.split(".")[1] for a in parser._actions if a.dest.startswith("x.") and a.dest.count(".") >= 1})


def subclass_names(class_path: str) -> list[str]:
    """The names of the classes (already imported) a config may give where ``class_path`` is asked: its subclasses,
    less abstract ones and the bases a ``base`` module holds (a PairwiseObjective is no objective to choose)."""
    base = resolve(class_path)
    if base is None:
        return []
    names, todo = set(), [base]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is base or inspect.isabstract(cls) or cls.__module__.endswith(".base"):
            continue
        if "<locals>" not in cls.__qualname__ and not cls.__name__.startswith("_"):
            names.add(cls.__name__)
    return sorted(names)


def new_folders(loggers: list) -> list[str]:
    """The outermost missing folder on the way to each logger's run folder: what the run will create, before it
    does (on the process that writes them)."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return []
    created = []
    for path in filter(None, (getattr(logger, "log_dir", None) for logger in loggers)):
        path, top = os.path.abspath(path), None
        while not os.path.exists(path):
            top, path = path, os.path.dirname(path)
        if top is not None:
            created.append(top)
    return created


def remove_empty(folders: list[str]) -> None:
    """Remove what a failed run created and left empty (its ``version_N`` folder), innermost first; a folder that
    holds anything, a checkpoint or a metrics file, stays as it is."""
    for top in folders:
        for path, _, _ in sorted(os.walk(top, topdown=False), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(path)  # only ever removes an empty folder
            except OSError:
                pass
