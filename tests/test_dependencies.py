"""Every third-party package the product imports is declared in pyproject.toml.

A package that arrives only as somebody else's dependency (sortedcontainers came with hypothesis, numpy with
matplotlib) works in the test venv and breaks ``make run`` on a fresh machine the day that other package drops
it. The server's own packages (``queueing``, ``callback``, ``ivr``) may import only the main dependencies; the
simulator's and fuzzers' optional tools may come from an extra (``load``, ``test``).
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("queueing", "callback", "ivr", "sim")
SERVER = ("queueing", "callback", "ivr")
# imported only by a tool that names its extra in its own error message
OPTIONAL_IN_SERVER = {"ivr/fuzz/guided.py"}
# distributions that come pinned to exactly one version of a declared one, as parts of it
PART_OF = {"pydantic-core": "pydantic"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = {_name(r) for r in project["dependencies"]}
    extra = {_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return main, extra


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the files (relative) that import it."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                        continue
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()


def _distributions(module: str) -> set[str]:
    names = {d.lower().replace("_", "-") for d in _installed().get(module, [module])}
    return {PART_OF.get(n, n) for n in names}


def test_every_import_is_declared() -> None:
    main, extra = _declared()
    undeclared = {
        f"{module} ({', '.join(sorted(files))})"
        for module, files in _third_party_imports().items()
        if not _distributions(module) & (main | extra)
    }
    assert undeclared == set()


def test_the_server_imports_only_main_dependencies() -> None:
    main, _ = _declared()
    outside = {
        f"{module} ({file})"
        for module, files in _third_party_imports().items()
        for file in files
        if file.split("/")[0] in SERVER and file not in OPTIONAL_IN_SERVER and not _distributions(module) & main
    }
    assert outside == set()
