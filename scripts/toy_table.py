"""Run the toy recipes and write the documentation's toy tables from what they log.

    python scripts/toy_table.py llm                       # print the language table (runs its five recipes)
    python scripts/toy_table.py llm --recipes llm_dpo     # print the rows of one recipe only
    python scripts/toy_table.py --write                   # run every table's recipes, rewrite the tables in docs/

Each table sits in its docs page between ``<!-- toy-table: WORLD -->`` and ``<!-- /toy-table -->``; ``--write``
replaces what lies between the markers and nothing else. A row is the recipe as shipped (seed 0) and, where the
table asks for them, the same recipe with other seeds (``--seed_everything N --data.init_args.seed N``, which
change the pairs and the shuffle). The fit time is the whole ``fit`` command, validations included: it depends on
the machine and on what else runs there, so measure on a quiet one. The line under each table names the CPU, the
torch version and the thread count it was measured with.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
END = "<!-- /toy-table -->"


@dataclass(frozen=True)
class Row:
    recipe: str  # recipes/toy/<recipe>.yaml
    cells: tuple[str, ...]  # what the recipe is, in the table's descriptive columns
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Table:
    page: str  # the docs page that holds it, from the repository's root
    columns: tuple[str, ...]  # the descriptive columns after the recipe
    metrics: tuple[str, ...]  # logged metrics: one gives its value at every validation, several their last values
    rows: tuple[Row, ...]
    digits: int = 2


@dataclass(frozen=True)
class Run:
    metrics: dict[str, list[tuple[int, float]]]  # metric -> (step, value) at each validation
    seconds: float


TABLES = {
    "llm": Table("docs/language.md", ("objective", "reference"), ("val/toy_reward",), (
        Row("llm_dpo", ("DPO", "frozen copy"), seeds=(0, 1, 2)),
        Row("llm_ipo", ("IPO", "frozen copy")),
        Row("llm_simpo", ("SimPO", "none (reference-free)")),
        Row("llm_orpo", ("ORPO", "none (reference-free)")),
        Row("llm_kto", ("KTO (pairs split into unpaired rows)", "frozen copy")),
        Row("llm_list_mle", ("list-MLE (1,024 prompts x 4 graded answers)", "frozen copy")),
    )),
    "vlm": Table("docs/vision-language.md", ("objective",),
                 ("val/toy_reward", "val/image_sensitivity", "val/hallucination"), (
        Row("vlm_dpo", ("DPO",), seeds=(0, 1, 2)),
        Row("vlm_mdpo", ("mDPO",), seeds=(0, 1, 2)),
    ), digits=3),
    "tts": Table("docs/text-to-speech.md", ("architecture", "steps"), ("val/wer",), (
        Row("tts_dpo", ("speech-token LM, DPO (beta 0.5) + SFT on chosen", "128 (2 epochs of 1,024 pairs)")),
        Row("tts_flow_dpo", ("flow matching, DPO (beta 100) + SFT on chosen", "64 (2 epochs of 512 pairs)")),
    ), digits=3),
    "diffusion": Table("docs/diffusion.md", ("method", "reference"), ("val/toy_reward",), (
        Row("diffusion_dpo", ("Diffusion-DPO (beta 50) + SFT on the winner", "frozen copy")),
        Row("diffusion_mapo", ("MaPO (its defaults, lr 5e-5)", "none (reference-free)")),
        Row("diffusion_kto", ("Diffusion-KTO (pairs split into unpaired rows)", "frozen copy")),
        Row("diffusion_smpo", ("SmPO (reward per image) + SFT on the winner", "frozen copy")),
        Row("diffusion_seppo", ("SePPO (winners only, on-policy losers)", "checkpoint pool, random replay")),
    )),
}


def run(recipe: str, seed: int, metrics: tuple[str, ...]) -> Run:
    """Fit one toy recipe into a temporary folder and read each metric at every validation from its metrics.csv."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "alignsuite", "fit",
                   "--config", os.path.join(REPO, "recipes", "toy", f"{recipe}.yaml"),
                   "--trainer.logger.init_args.save_dir", out, "--trainer.enable_progress_bar", "false",
                   "--checkpoint.dirpath", os.path.join(out, "ckpt")]
        if seed:
            command += ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"recipes/toy/{recipe}.yaml (seed {seed}) failed with status {done.returncode}:\n"
                             + done.stderr[-3000:])
        [path] = glob.glob(os.path.join(out, "*", "version_*", "metrics.csv"))
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    found = {m: logged(rows, m) for m in metrics}
    missing = [m for m, values in found.items() if not values]
    if missing:
        raise SystemExit(f"recipes/toy/{recipe}.yaml (seed {seed}) logged no {', '.join(missing)} in {path}")
    return Run(found, seconds)


def logged(rows: list[dict[str, str]], metric: str) -> list[tuple[int, float]]:
    """``(optimizer steps done, value)`` of each row of a metrics.csv that holds ``metric``.

    The starting point (before any update) is written at step 0; a validation's metrics at the step Lightning
    logs them, its global step less one, so one more than the logged step is the count of steps done.
    """
    values = [(int(r["step"]), float(r[metric])) for r in rows if r.get(metric)]
    return [(step if i == 0 and step == 0 else step + 1, value) for i, (step, value) in enumerate(values)]


def machine() -> str:
    """The CPU (its model name from /proc/cpuinfo where there is one), the torch version and its thread count."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return (f"{cpu} ({os.cpu_count()} cores), torch {torch.__version__}, "
            f"{threads} thread{'s' if threads != 1 else ''}{load}")


def render(world: str, table: Table, runs: dict[tuple[str, int], Run], machine: str) -> str:
    """The table's markdown, header to the line that says where it was measured."""
    fmt = f"{{:.{table.digits}f}}".format
    first = runs[(table.rows[0].recipe, table.rows[0].seeds[0])]
    if len(table.metrics) == 1:
        metric = table.metrics[0]
        steps = [s for s, _ in first.metrics[metric]]
        measured = [f"`{metric}` at step {' → '.join(map(str, steps))}", "fit time"]
    else:
        measured = ["seed", *(f"`{m}`" for m in table.metrics), "fit time"]
    header = ["recipe", *table.columns, *measured]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        seeds = [runs[(row.recipe, seed)] for seed in row.seeds]
        if len(table.metrics) == 1:
            values = seeds[0].metrics[metric]
            cell = " → ".join(fmt(v) for _, v in values)
            if [s for s, _ in values] != steps:
                cell += f" (steps {', '.join(str(s) for s, _ in values)})"
            if len(seeds) > 1:
                cell += (f" (seeds {' / '.join(map(str, row.seeds[1:]))}: → "
                         + " / ".join(fmt(r.metrics[metric][-1][1]) for r in seeds[1:]) + ")")
            cells = [cell, f"{seeds[0].seconds:.0f} s"]
        else:
            cells = [" / ".join(map(str, row.seeds))]
            for m in table.metrics:
                last = [r.metrics[m][-1][1] for r in seeds]
                cell = " / ".join(fmt(v) for v in last)
                cells.append(cell + (f" (mean {fmt(sum(last) / len(last))})" if len(last) > 1 else ""))
            cells.append(" / ".join(f"{r.seconds:.0f}" for r in seeds) + " s")
        lines.append("| " + " | ".join([f"`recipes/toy/{row.recipe}.yaml`", *row.cells, *cells]) + " |")
    return "\n".join(lines) + f"\n\nMeasured with `python scripts/toy_table.py --write {world}` on {machine}.\n"


def marked_block(text: str, world: str) -> str:
    """What lies between a world's markers in a page's text."""
    start = f"<!-- toy-table: {world} -->\n"
    if text.count(start) != 1 or END not in text[text.find(start):]:
        raise ValueError(f"no '{start.strip()}' ... '{END}' pair (exactly one) in the page")
    begin = text.index(start) + len(start)
    return text[begin:text.index(END, begin)]


def replace_block(text: str, world: str, table: str) -> str:
    """The page's text with the world's marked table replaced, and everything else as it was."""
    old = marked_block(text, world)
    begin = text.index(f"<!-- toy-table: {world} -->\n") + len(f"<!-- toy-table: {world} -->\n")
    return text[:begin] + table + text[begin + len(old):]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worlds", nargs="*", metavar="WORLD",
                        help=f"the tables to measure: {', '.join(TABLES)} (default: all)")
    parser.add_argument("--recipes", nargs="+", metavar="NAME",
                        help="measure only these recipes of the tables (printed; not with --write)")
    parser.add_argument("--write", action="store_true", help="rewrite the tables in their docs pages")
    args = parser.parse_args(argv)
    unknown = [w for w in args.worlds if w not in TABLES]
    if unknown:
        parser.error(f"no toy table {', '.join(map(repr, unknown))}; the tables are {', '.join(TABLES)}")
    known = {row.recipe for table in TABLES.values() for row in table.rows}
    if set(args.recipes or ()) - known:
        parser.error(f"no toy table has {', '.join(sorted(set(args.recipes) - known))}; recipes: {', '.join(known)}")
    if args.write and args.recipes:
        parser.error("--write rewrites whole tables, measured together on one machine: leave out --recipes")
    where = machine()
    for world in args.worlds or list(TABLES):
        table = TABLES[world]
        if args.recipes:
            table = Table(table.page, table.columns, table.metrics,
                          tuple(r for r in table.rows if r.recipe in args.recipes), table.digits)
            if not table.rows:
                continue
        runs = {(row.recipe, seed): run(row.recipe, seed, table.metrics) for row in table.rows for seed in row.seeds}
        markdown = render(world, table, runs, where)
        print(f"<!-- toy-table: {world} -->\n{markdown}{END}\n", flush=True)
        if args.write:
            path = os.path.join(REPO, table.page)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(replace_block(text, world, markdown))


if __name__ == "__main__":
    main()
