"""The peers' versions the comparisons pin, installed beside the project rather than into it.

The project's own environment keeps the TRL its parity tests were written against (``constraints.txt``); a
benchmark compares with the newest peer the registry serves. ``pip install --no-deps --target`` puts that
version in a folder of its own under ``benchmarks/.peers/`` (its dependencies are the project's, already
installed), and only the peer's arm puts the folder first on its import path. The worker reports the version
it imported, and the driver refuses a run whose peer is not the pinned one.

    python -m benchmarks.peers            # installs every pinned peer that is missing
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PINNED = {"trl": "1.16.0"}
ROOT = Path(__file__).resolve().parent / ".peers"


def folder(package: str, version: str | None = None) -> Path:
    """Where ``package`` at ``version`` (the pinned one by default) is installed."""
    return ROOT / f"{package}-{version or PINNED[package]}"


def install(package: str, version: str | None = None) -> Path:
    """Installs ``package==version`` without dependencies into its folder, once; returns the folder."""
    version = version or PINNED[package]
    target = folder(package, version)
    if not (target / package).is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"{package}=={version}"], check=True)
    return target


def import_path(package: str, version: str) -> str | None:
    """The folder to put first on the import path of ``package``'s arm; ``None`` where ``version`` is
    ``installed`` (whatever the environment has)."""
    if version == "installed":
        return None
    target = folder(package, version)
    if not (target / package).is_dir():
        raise SystemExit(f"{package} {version} is not installed for the benchmarks: run `python -m"
                         f" benchmarks.peers` (the pinned {PINNED}) or `pip install --no-deps --target"
                         f" {target} {package}=={version}`")
    return str(target)


def check_version(package: str, wanted: str, got: str) -> None:
    """Refuses a run whose arm imported another version of ``package`` than the one asked for."""
    if wanted != "installed" and got != wanted:
        raise SystemExit(f"the {package} arm imported {package} {got}, not the {wanted} asked for")


if __name__ == "__main__":
    for name in PINNED:
        print(f"{name} {PINNED[name]}: {install(name)}")
