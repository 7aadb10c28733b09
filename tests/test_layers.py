"""The package's layers, checked from its source: every import of an alignsuite module (top-level or inside a
function, absolute or relative) goes down a layer or stays on its own, and none closes a circle.

A function-local import is read like any other: it is where a layer crossing or a cycle hides from review. A
package's ``__init__.py`` is its package (``from alignsuite.data import X`` imports ``alignsuite.data``); a name
imported from a package that is one of its submodules imports that submodule.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "alignsuite"

# Top down, as the style guide draws them. A module's layer is that of its first name under alignsuite
# ("backbones" for alignsuite.backbones.causal_lm); "" is the package's own __init__.
LAYERS = [
    # The user's entry points (__main__ runs the cli); resume: which checkpoint a command reads.
    ("cli", "cli_defaults", "cli_help", "cli_parser", "commands", "resume", "__main__"),
    ("iterate",),  # the online loop: rounds of generating, judging, building and fitting
    ("callbacks",),  # users of the step
    ("evaluation",),  # users of the step
    ("module",),  # the one preference step
    ("toy", "reference", "stage_reference", "extra_references"),  # worlds built with backbones; reference scores
    ("speech", "pairs", "difficulty"),  # modality tools; building pairs from judged samples; how hard a pair is
    ("backbones", "objectives", "sharding"),
    # The ground floor. slurm reads the cluster's environment and imports nothing of the package's; launch
    # checks the process layout against it; lazy (loading a package's names on first use, optional libraries and
    # their pip extras) imports nothing of the package either.
    ("data", "views", "scores", "sources", "checkpoint_io", "components", "judging", "judges", "generation",
     "guidance", "slurm", "launch", "lazy", "precision", ""),
]
LAYER = {name: len(LAYERS) - floor for floor, names in enumerate(LAYERS) for name in names}
MAX_LINES = 400


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name; a package by its ``__init__.py``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def area(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def layer(module: str) -> int:
    assert area(module) in LAYER, f"{module}: no layer for {area(module)!r}; place it in LAYERS"
    return LAYER[area(module)]


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import of a package module in ``path``, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def nearest(name: str) -> str | None:  # the module itself, or the package whose attribute it is
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [nearest(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [nearest(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else nearest(base)
                       for alias in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in dict.fromkeys(targets) if t is not None and t != module]
    return found


def graph() -> dict[str, list[tuple[int, str]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def with_packages(edges: dict[str, list[tuple[int, str]]]) -> dict[str, list[tuple[int, str]]]:
    """``edges`` and, for each import of ``a.b.c``, the packages Python runs first (``a.b``'s ``__init__``), below
    the package root and outside the importer's own packages: importing ``alignsuite.data.messages`` runs
    ``alignsuite/data/__init__.py`` and all it imports."""
    known = modules()

    def packages(target: str, importer: str) -> list[str]:
        parts = target.split(".")
        return [p for p in (".".join(parts[:i]) for i in range(2, len(parts)))
                if p in known and p != importer and not importer.startswith(p + ".")]

    return {m: list(dict.fromkeys(e + [(line, p) for line, t in e for p in packages(t, m)])) for m, e in edges.items()}


def where(module: str) -> str:
    return str(modules()[module].relative_to(PACKAGE.parent))


def strongly_connected(edges: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The groups of two or more modules that reach each other (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter([t for _, t in edges[root]]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter([t for _, t in edges.get(child, [])])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if area(m) not in LAYER)
    assert not unplaced, f"modules the layer table does not place (add them to LAYERS): {unplaced}"


def test_no_import_runs_up_a_layer():
    up = [f"{where(m)}:{line} imports {target} ({area(target) or 'alignsuite'}, layer {layer(target)}) from layer"
          f" {layer(m)} ({area(m) or 'alignsuite'})"
          for m, edges in graph().items() for line, target in edges if layer(target) > layer(m)]
    assert not up, "imports that run up a layer:\n" + "\n".join(up)


def test_no_import_closes_a_circle():
    edges = with_packages(graph())
    circles = []
    for component in strongly_connected(edges):
        inside = set(component)
        ties = [f"  {where(m)}:{line} imports {target}" for m in sorted(inside) for line, target in edges[m]
                if target in inside]
        circles.append(f"{len(inside)} modules: {', '.join(sorted(inside))}\n" + "\n".join(ties))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_library_file_is_over_400_lines():
    long = [f"{where(m)}: {n} lines" for m, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines (split them along their jobs):\n" + "\n".join(long)


def test_the_checker_reads_local_relative_and_package_imports(tmp_path):
    """The reader sees an import inside a function, a relative one, and one of a package's submodules by name."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from ..data import messages\n    from . import causal_lm\n"
                      "    import alignsuite.toy\n\nfrom alignsuite.data import DataError\n")
    known = {name: Path() for name in ("alignsuite.data", "alignsuite.data.messages", "alignsuite.backbones",
                                       "alignsuite.backbones.causal_lm", "alignsuite.toy")}
    assert sorted(imports("alignsuite.backbones.base", source, known)) == [
        (2, "alignsuite.data.messages"), (3, "alignsuite.backbones.causal_lm"), (4, "alignsuite.toy"),
        (6, "alignsuite.data"),
    ]


def test_importing_a_submodule_runs_its_packages_init():
    """``judging`` importing ``alignsuite.data.messages`` runs ``alignsuite/data/__init__.py`` first: a circle
    through a package's ``__init__`` (data's importing judges, which import judging) is a circle."""
    edges = with_packages({"alignsuite.judging": [(18, "alignsuite.data.messages")],
                           "alignsuite.data.procedures.online": [(23, "alignsuite.data.errors")]})
    assert edges["alignsuite.judging"] == [(18, "alignsuite.data.messages"), (18, "alignsuite.data")]
    assert edges["alignsuite.data.procedures.online"] == [(23, "alignsuite.data.errors")]  # its own package: no edge
