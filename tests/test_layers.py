"""The packages import one way (DESIGN.md): ``ivr -> callback -> queueing`` and ``sim -> queueing``.

Every module's imports are read with ``ast`` (function-level imports
included) and checked against the table below. Two crossings are allowed,
and named here so that a new one fails:

- ``sim`` reaches ``ivr`` in two places: the media benchmark, which runs
  the server's media engine, and ``sim/scenario.py``, which reads the
  server's own queue and surge settings (``ivr.settings.config`` and their
  conversion ``ivr.settings.queues``) so that a scenario plans with exactly what
  the server runs (the load generator and the SIP benchmark drive a server
  over the network and import nothing of it);
- ``ivr/cli.py``, the one command line, loads ``sim``'s commands when asked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("queueing", "callback", "ivr", "sim")
MAY_IMPORT = {
    "queueing": set(),
    "callback": {"queueing"},
    "ivr": {"queueing", "callback"},
    "sim": {"queueing"},
}
SIM_LIVE_PATH = {"sim/live/mediabench.py", "sim/scenario.py"}
CROSSINGS = {(path, "ivr") for path in SIM_LIVE_PATH} | {("ivr/cli.py", "sim")}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports (relative imports stay in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_arrows(package: str) -> None:
    wrong = []
    for path in modules(package):
        rel = path.relative_to(ROOT).as_posix()
        for name in imported_packages(path):
            if name in PACKAGES and name != package and name not in MAY_IMPORT[package]:
                if (rel, name) not in CROSSINGS:
                    wrong.append(f"{rel} imports {name}")
    assert wrong == []


def test_queueing_is_stdlib_only() -> None:
    outside = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in modules("queueing")
        for name in imported_packages(path)
        if name not in sys.stdlib_module_names and name not in ("queueing", "__future__")
    }
    assert outside == set()


def test_the_allowed_crossings_are_still_needed() -> None:
    """A crossing nobody uses any more is taken off the list."""
    for rel, name in CROSSINGS:
        assert name in imported_packages(ROOT / rel), f"{rel} no longer imports {name}: drop it from CROSSINGS"
