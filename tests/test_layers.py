"""The layout's rules, read from the code with ``ast`` (docs/architecture.md draws them).

Every module's imports are read, function-level and ``TYPE_CHECKING`` ones
included, and checked:

- the packages import one way: ``ivr -> callback -> queueing`` and
  ``sim -> queueing``; ``sim`` reaches ``ivr`` only through its settings
  (``ivr.settings``: a scenario plans with the server's own queue and surge
  settings, and the media benchmark renders the server's prompts); the one
  command line, ``ivr/cli.py``, loads ``sim``'s commands when asked;
- no import cycle anywhere, between modules or between the folders of ``ivr/``;
- the sans-IO folders (``ivr/sip``, ``ivr/media``, ``ivr/flow``),
  ``queueing/`` and the cluster's decider and wire format
  (``ivr/cluster/coordinator.py``, ``ivr/cluster/wire.py``) never import
  asyncio, socket, time or aiohttp; ``queueing/`` imports the standard
  library only, and those two cluster modules nothing but it and ``queueing``;
- some of ``ivr/``'s folders have arrows of their own: ``ivr/cluster``
  reaches the rest of the server only through ``ivr.settings``, and the
  sans-IO folders never import it;
- only ``ivr/transport/`` owns sockets in the server;
- no two classes of one name; no module over 500 lines unless its opening
  docstring says why ("long because"); comments cite files that exist;
- test modules import neither ``conftest`` nor each other (shared helpers
  live in ``tests/support/``).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("queueing", "callback", "ivr", "sim")
MAY_IMPORT = {
    "queueing": set(),
    "callback": {"queueing"},
    "ivr": {"queueing", "callback"},
    "sim": {"queueing"},
}
PURE_CLUSTER = ("ivr/cluster/coordinator.py", "ivr/cluster/wire.py")
SANS_IO = ("ivr/sip", "ivr/media", "ivr/flow", "queueing", *PURE_CLUSTER)
# ivr folder -> the only folders of the project it may import (beside the standard library and outside packages)
FOLDER_MAY_IMPORT = {"ivr.cluster": {"ivr.cluster", "ivr.settings", "queueing"}}
# ivr folder -> folders that must never import it
NOT_IMPORTED_BY = {"ivr.cluster": ("ivr.sip", "ivr.media", "ivr.flow")}
NOT_IN_SANS_IO = {"asyncio", "socket", "time", "aiohttp", "selectors", "uvloop"}
SIM_MAY_READ = ("ivr.settings",)  # the server's own settings, and the prompts they render
CLI = "ivr/cli.py"
MAX_LINES = 500


def source_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


ALL = [p for pkg in PACKAGES for p in source_files(pkg)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in ALL}


def imports_of(path: Path) -> list[str]:
    """Dotted names ``path`` imports, resolved to modules of the project where they are one."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here[: len(here) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(sub if sub in MODULES else base)
    return out


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_arrows(package: str) -> None:
    wrong = []
    for path in source_files(package):
        for name in imports_of(path):
            other = top(name)
            if other not in PACKAGES or other == package or other in MAY_IMPORT[package]:
                continue
            if rel(path) == CLI and other == "sim":
                continue
            if package == "sim" and other == "ivr" and name.startswith(SIM_MAY_READ):
                continue
            wrong.append(f"{rel(path)} imports {name}")
    assert wrong == []


def test_sim_reads_the_server_only_through_its_settings() -> None:
    readers = {rel(p) for p in source_files("sim") if any(top(n) == "ivr" for n in imports_of(p))}
    assert readers, "no sim module reads ivr.settings any more: simplify the rule"
    assert {"sim/scenario.py"} <= readers


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for dep in imports_of(path):
            # a package's own __init__ is a namespace here, not a dependency
            if dep in MODULES and dep != name and not name.startswith(dep + "."):
                graph[name].add(dep)
    return graph


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(module_graph()) == []


def room(module: str) -> str:
    """``ivr``'s folders are rooms of their own; the other packages are one room each."""
    parts = module.split(".")
    if parts[0] == "ivr" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def test_no_import_cycle_between_folders() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, deps in module_graph().items():
        for dep in deps:
            if room(dep) != room(name):
                graph[room(name)].add(room(dep))
    assert _cycles(graph) == []


def files_of(where: str) -> list[Path]:
    """The modules of a folder, or the one module a path names."""
    path = ROOT / where
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("folder", SANS_IO)
def test_sans_io_folders_touch_no_clock_socket_or_loop(folder: str) -> None:
    files = files_of(folder)
    assert files and all(p.exists() for p in files), f"{folder} is gone: update SANS_IO"
    wrong = [
        f"{rel(path)} imports {name}" for path in files for name in imports_of(path) if top(name) in NOT_IN_SANS_IO
    ]
    assert wrong == []


def test_the_cluster_decider_and_its_wire_format_import_only_queueing() -> None:
    pure = {module_name(ROOT / p) for p in PURE_CLUSTER}
    assert all((ROOT / p).exists() for p in PURE_CLUSTER), "a pure cluster module is gone: update PURE_CLUSTER"
    outside = {
        f"{p}: {name}"
        for p in PURE_CLUSTER
        for name in imports_of(ROOT / p)
        if top(name) not in sys.stdlib_module_names
        and top(name) not in ("queueing", "__future__")
        and not any(name == m or name.startswith(m + ".") for m in pure)
    }
    assert outside == set()


@pytest.mark.parametrize("folder", sorted(FOLDER_MAY_IMPORT))
def test_ivr_folders_with_arrows_of_their_own(folder: str) -> None:
    modules = {name: path for name, path in MODULES.items() if room(name) == folder}
    assert modules, f"{folder} has no module: update FOLDER_MAY_IMPORT"
    wrong = [
        f"{rel(path)} imports {dep}"
        for path in modules.values()
        for dep in imports_of(path)
        if top(dep) in PACKAGES and room(dep) not in FOLDER_MAY_IMPORT[folder] and dep != "ivr"
    ]
    wrong += [
        f"{rel(path)} imports {dep}"
        for name, path in MODULES.items()
        if room(name) in NOT_IMPORTED_BY.get(folder, ())
        for dep in imports_of(path)
        if room(dep) == folder
    ]
    assert wrong == []


def test_only_the_transport_owns_sockets() -> None:
    owners = {
        rel(path)
        for pkg in ("ivr", "callback", "queueing")
        for path in source_files(pkg)
        if any(top(n) == "socket" for n in imports_of(path))
    }
    assert owners, "nothing imports socket: the rule has nothing to check"
    assert {o for o in owners if not o.startswith("ivr/transport/")} == set()


def test_queueing_is_stdlib_only() -> None:
    outside = {
        f"{rel(path)}: {name}"
        for path in source_files("queueing")
        for name in imports_of(path)
        if top(name) not in sys.stdlib_module_names and top(name) not in ("queueing", "__future__", "sortedcontainers")
    }
    assert outside == set()


def test_no_two_classes_of_one_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in [*ALL, *sorted((ROOT / "tests").rglob("*.py"))]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                where[node.name].append(rel(path))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_long_modules_say_why() -> None:
    unexplained = []
    for path in ALL:
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if "long because" not in doc:
                unexplained.append(f"{rel(path)}: {lines} lines")
    assert unexplained == []


CITED = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")


def test_comments_cite_files_of_the_repository() -> None:
    files = [*ALL, *sorted((ROOT / "tests").rglob("*.py")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for cited in CITED.findall(line):
                if not (ROOT / cited).exists() and not (ROOT / "docs" / cited).exists():
                    missing.append(f"{rel(path)}:{n}: {cited}")
    assert missing == []


def test_test_modules_import_no_other_test_module() -> None:
    tests = ROOT / "tests"
    local = {p.stem for p in tests.glob("*.py")}
    wrong = [
        f"{rel(path)} imports {name}"
        for path in sorted(tests.glob("*.py"))
        for name in imports_of(path)
        if top(name) in local
    ]
    assert wrong == []
