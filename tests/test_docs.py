"""The documentation: the site builds from ``docs/`` with every warning an error, the README's links lead somewhere,
and the toy tables can be rewritten in place by the script that measures them."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from markdown.extensions.toc import slugify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def toy_table():
    spec = importlib.util.spec_from_file_location("toy_table", os.path.join(REPO, "scripts", "toy_table.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_site_builds_without_a_warning(tmp_path):
    """``mkdocs build --strict``: a broken link or anchor, a page left out of the navigation or an API entry that
    does not resolve fails the build (mkdocs.yml turns each into a warning, strict mode each warning into a failure)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", os.path.join(REPO, "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's banner about its successor, on every build
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "objectives" / "index.html").is_file()


def headings(path: str) -> set[str]:
    """The anchors the site gives a page's headings (Python-Markdown's toc slugs)."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {slugify(m.group(1).strip(), "-") for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.M)}


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_relative_links_are_found_in_a_text():
    text = "[a](docs/a.md) ![b](docs/images/b.png \"title\") [c](https://x.org/a.md) [d](#top) [e](docs/e.md#part)"
    assert relative_links(text) == ["docs/a.md", "docs/images/b.png", "#top", "docs/e.md#part"]


def test_every_relative_link_of_the_readme_leads_to_a_file_or_a_docs_heading():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        links = relative_links(f.read())
    assert any(link.startswith("docs/") for link in links), "the README links into the docs"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = os.path.join(REPO, target) if target else os.path.join(REPO, "README.md")
        if not os.path.exists(path):
            broken.append(f"{link}: no such file")
        elif anchor and path.endswith(".md") and anchor not in headings(path):
            broken.append(f"{link}: no heading with the anchor #{anchor} in {target or 'README.md'}")
    assert not broken, "\n".join(broken)


def test_every_toy_table_of_the_script_is_marked_in_the_docs():
    script = toy_table()
    for world, table in script.TABLES.items():
        with open(os.path.join(REPO, table.page), encoding="utf-8") as f:
            text = f.read()
        assert text.count(f"<!-- toy-table: {world} -->") == 1, f"{table.page}: no marker for {world}"
        block = script.marked_block(text, world)
        for row in table.rows:
            assert f"`recipes/toy/{row.recipe}.yaml`" in block, f"{table.page}: {row.recipe} not in the {world} table"


def test_write_rewrites_the_marked_table_and_nothing_else():
    script = toy_table()
    text = "before\n<!-- toy-table: llm -->\n| old | table |\n<!-- /toy-table -->\nafter\n"
    rewritten = script.replace_block(text, "llm", "| new | table |\n")
    assert rewritten == "before\n<!-- toy-table: llm -->\n| new | table |\n<!-- /toy-table -->\nafter\n"
    with pytest.raises(ValueError, match="no '<!-- toy-table: vlm -->'"):
        script.replace_block(text, "vlm", "| new |\n")


def test_a_table_is_rendered_from_measurements_with_its_machine():
    script = toy_table()
    table = script.TABLES["llm"]
    runs = {
        (row.recipe, seed): script.Run({"val/toy_reward": [(0, 0.421), (64, 0.9), (128, 1.0)]}, 15.2)
        for row in table.rows for seed in row.seeds
    }
    markdown = script.render("llm", table, runs, machine="a 2-core test CPU, torch 9.9, 2 threads")
    lines = markdown.strip().split("\n")
    assert lines[0].startswith("| recipe | objective | reference | `val/toy_reward` at step 0 → 64 → 128 |")
    assert "| `recipes/toy/llm_dpo.yaml` | DPO | frozen copy | 0.42 → 0.90 → 1.00 (seeds 1 / 2: → 1.00 / 1.00) | 15 s |" \
        in lines
    assert lines[-1] == "Measured with `python scripts/toy_table.py --write llm` on a 2-core test CPU, torch 9.9, 2 threads."


def test_validation_steps_count_the_optimizer_steps_done():
    """metrics.csv holds the starting point at step 0 and a validation after 32 steps at step 31 (Lightning's)."""
    rows = [{"step": "0", "val/toy_reward": "0.42"}, {"step": "3", "train/loss": "0.6", "val/toy_reward": ""},
            {"step": "31", "val/toy_reward": "0.91"}, {"step": "63", "val/toy_reward": "0.97"}]
    assert toy_table().logged(rows, "val/toy_reward") == [(0, 0.42), (32, 0.91), (64, 0.97)]


def test_the_machine_line_names_the_cpu_torch_and_threads():
    import torch

    line = toy_table().machine()
    assert f"torch {torch.__version__}" in line
    assert f"{torch.get_num_threads()} thread" in line


def objective_table():
    spec = importlib.util.spec_from_file_location("objective_table", os.path.join(REPO, "scripts", "objective_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_holds_the_table_of_objectives_the_registry_gives():
    from alignsuite.objectives import available_objectives
    from alignsuite.objectives.catalogue import entries

    script = objective_table()
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert script.with_table(text, script.markdown_table()) == text, "run: python scripts/objective_table.py --write"
    assert [e.name for e in entries()] and sorted(e.name for e in entries()) == available_objectives()
    # Every objective says its family and its paper.
    assert not [e.name for e in entries() if "?" in (e.family, e.paper)]


def test_the_table_of_objectives_is_written_between_the_markers_only():
    script = objective_table()
    text = f"before\n{script.START}\nold\n{script.END}\nafter\n"
    assert script.with_table(text, "| new |") == f"before\n{script.START}\n| new |\n{script.END}\nafter\n"
    with pytest.raises(SystemExit, match="markers"):
        script.with_table("no markers here", "| new |")
