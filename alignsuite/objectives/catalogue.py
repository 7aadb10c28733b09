"""The table of every registered objective, drawn from the registry so that it cannot drift from the code.

``python scripts/objective_table.py --write`` puts :func:`markdown_table` into the README between its markers;
a test checks that the README holds what the registry gives.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from alignsuite.objectives.base import Objective, objective_classes

# What each kind of row holds, as the data layouts give it.
ROWS = {
    "pairs": "prompt, chosen, rejected",
    "unpaired": "prompt, completion, label",
    "lists": "prompt, K responses, labels",
}


@dataclass(frozen=True)
class Entry:
    """One objective as the table shows it."""

    name: str
    family: str
    paper: str
    reference: str
    data: str
    defaults: str
    convention: str


# The table's order of families; one not named here comes after them, by name.
FAMILIES = ("pairwise", "reference-free", "unpaired", "listwise", "token-level", "multimodal", "denoising")


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _defaults(cls: type[Objective]) -> str:
    params = inspect.signature(cls.__init__).parameters.values()
    return ", ".join(f"{p.name}={_value(p.default)}" for p in params
                     if p.name != "self" and p.default is not inspect.Parameter.empty)


def _data(objective: Objective) -> str:
    rows = ROWS.get(objective.row_kind, objective.row_kind)
    standard = {"chosen", "rejected", "completion", "mismatched"} | {v.name for v in objective.views if v.item is not None}
    more = [v.name for v in objective.views if v.name not in standard]
    more += [v.prompt_column for v in objective.views if v.prompt_column]  # a side's own prompt (JPO)
    more += [c for c in objective.extra_columns if c not in rows.replace(" ", "").split(",")]
    more = list(dict.fromkeys(more))  # a prompt column several views share is named once
    return rows + (f" (+ {', '.join(more)})" if more else "")


def entries() -> list[Entry]:
    """Every registered objective, by family then name, built with its defaults."""
    out = []
    for name, cls in objective_classes().items():
        objective = cls()
        reference = "yes" if objective.needs_reference else "no"
        if objective.extra_references:  # further references the recipe gives by name (model.extra_references)
            reference += " + " + ", ".join(f"`{n}`" for n in objective.extra_references)
        out.append(Entry(name, cls.family or "?", cls.paper or "?", reference, _data(objective), _defaults(cls),
                         cls.convention or ""))
    rank = {family: i for i, family in enumerate(FAMILIES)}
    return sorted(out, key=lambda e: (rank.get(e.family, len(FAMILIES)), e.family, e.name))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The table, one row per objective, as Markdown."""
    head = ["objective", "family", "paper", "reference", "data", "defaults", "convention"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries():
        cells = [f"`{e.name}`", e.family, e.paper, e.reference, e.data, f"`{e.defaults}`" if e.defaults else "",
                 e.convention]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


__all__ = ["Entry", "entries", "markdown_table"]
