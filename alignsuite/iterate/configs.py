"""The config each round's fit records, dumped once per process.

A fit writes its config twice: Lightning's record of the hyper-parameters (``hparams.yaml`` and the checkpoint's
model and data hyper-parameters, from ``LightningCLI.config_dump``) and the run's ``config.yaml``
(``SaveConfigCallback``). Both are jsonargparse dumps of the command's section, and a dump walks every action of
the parser: 10-14 ms each on a toy recipe, a fifth of a round's fit set-up. The rounds' configs differ only in
the values :func:`alignsuite.iterate.loop.fit_round` sets (the round's training file, its logger), so the first
round dumps the section once, for both, and a later round puts its own values into a copy of that dump.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RoundConfigs:
    """The section of ``cli``'s command as dumped, and as text, with each round's values in it.

    :meth:`set` puts a round's values into the config, and returns the dump and its text. The first round's dump is
    kept when it shows every value as it was set and its text is what the parser writes from the dict again (checked
    then); otherwise every round dumps its own, as before.
    """

    def __init__(self, cli) -> None:
        self.cli, self.parser = cli, cli._parser(cli.subcommand)
        self.kept: dict | None = None
        self.checked = False

    def set(self, values: dict[str, Any]) -> tuple[dict, str]:
        """``values`` ({dotted key: value}) set in the section; returns ``(dump as a dict, its YAML text)``."""
        section = self.cli.config[self.cli.subcommand]
        for key, value in values.items():
            section[key] = value
        if self.kept is not None:
            dumped = copy.deepcopy(self.kept)
            for key, value in values.items():
                put(dumped, key, copy.deepcopy(value))
            return dumped, self.text(dumped)
        text = self.parser.dump(section, skip_none=False, skip_check=True)
        dumped = yaml.load(text, Loader=Loader)
        if not self.checked:
            self.checked = True
            if all(find(dumped, key) == value for key, value in values.items()) and self.text(dumped) == text:
                self.kept = copy.deepcopy(dumped)
        return dumped, text

    def text(self, dumped: dict) -> str:
        from jsonargparse._loaders_dumpers import dump_using_format

        return dump_using_format(self.parser, dumped, "parser_mode")


def find(tree: dict, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return KeyError
        tree = tree[part]
    return tree


def put(tree: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        tree = tree[part]
    tree[last] = value


__all__ = ["RoundConfigs"]
