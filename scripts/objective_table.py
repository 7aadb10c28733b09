"""Print the table of every objective, or write it into the README between its markers.

    python scripts/objective_table.py           # print it
    python scripts/objective_table.py --write   # rewrite the README's table (between the markers only)

The table comes from the objectives' registry (name, family, paper, reference, data, defaults, convention), so
it is regenerated rather than edited; a test checks that the README holds what the registry gives.
"""

from __future__ import annotations

import argparse
import os

import alignsuite.objectives  # noqa: F401  (registers every objective)
from alignsuite.objectives.catalogue import markdown_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
START, END = "<!-- objectives -->", "<!-- /objectives -->"


def with_table(text: str, table: str) -> str:
    """``text`` with what lies between the markers replaced by ``table``."""
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers to write the table between")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the README's table")
    args = parser.parse_args()
    if not args.write:
        print(markdown_table())
        return
    with open(README) as f:
        text = f.read()
    with open(README, "w") as f:
        f.write(with_table(text, markdown_table()))
    print(f"wrote the table of objectives into {os.path.relpath(README, REPO)}")


if __name__ == "__main__":
    main()
