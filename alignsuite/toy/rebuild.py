"""Train the toy worlds' base models again from their code, and the speech worlds' shipped pairs from them.

    python -m alignsuite.toy.rebuild                      # every world, into a fresh folder it prints
    python -m alignsuite.toy.rebuild llm vlm --output DIR
    python -m alignsuite.toy.rebuild --into-package       # replace what the package ships

The bases are trained on one thread in a fixed order of sums, but a CPU's float kernels still move them a
little: a base rebuilt on another machine lands in the documented band (``tests/test_toy_bases.py``), not on
the shipped bytes. Only a deliberate ``--into-package`` changes what every user gets; the README's toy tables
are then measured again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from alignsuite.toy.worlds import SHIPPED, build_base_model, get_world, known_worlds


def rebuild(names: list[str], output: str, pairs: bool = True) -> dict[str, str]:
    """Train each world's base into ``output/<world>-<version>`` (and, with ``pairs``, the pairs a world ships)."""
    made = {}
    for name in names:
        world = get_world(name)
        path = os.path.join(output, f"{name}-{world.version}")
        if os.path.exists(path):
            raise SystemExit(f"{path} already exists: remove it or choose another --output")
        start = time.perf_counter()
        build_base_model(name, path)
        os.remove(path + ".lock")
        for n, seed in getattr(world, "shipped_pairs", ()) if pairs else ():
            world.write_pairs(path + f"-pairs-{n}-{seed}.jsonl", n, seed, base=path)
        print(f"{name}: {path} ({time.perf_counter() - start:.0f} s)", flush=True)
        made[name] = path
    return made


def replace_shipped(names: list[str]) -> None:
    """Rebuild into a scratch folder, then swap each world's files into the package."""
    scratch = tempfile.mkdtemp(prefix="toy-bases-")
    try:
        rebuild(names, scratch)
        for entry in sorted(os.listdir(scratch)):
            target = os.path.join(SHIPPED, entry)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(scratch, entry), target)
            print(f"replaced {target}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alignsuite.toy.rebuild", description=__doc__.split("\n")[0])
    parser.add_argument("worlds", nargs="*", help=f"worlds to rebuild (default: all of {', '.join(known_worlds())})")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", help="folder to write into (default: a new temporary folder)")
    where.add_argument("--into-package", action="store_true", help="replace the base models the package ships")
    args = parser.parse_args(argv)
    names = args.worlds or known_worlds()
    for name in names:
        get_world(name)  # an unknown name fails before anything is trained
    if args.into_package:
        replace_shipped(names)
    else:
        rebuild(names, args.output or tempfile.mkdtemp(prefix="toy-bases-"))


if __name__ == "__main__":
    main(sys.argv[1:])
