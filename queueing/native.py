"""The compiled build of the hot modules, used only while it matches the sources exactly; pure Python otherwise.

``make native`` (``tools/build_native.py``) compiles the queue engine and the
simulator's loop with mypyc into ``build/native/`` beside the packages, never
into the source folders, and writes a manifest there: for each compiled module
the SHA-256 of the source it was compiled from and the file it became. At the
first ``import queueing`` :func:`install` reads the manifest and hashes the
sources named in it (about 150 kB, well under a millisecond); only when every
digest matches does it put a finder first in ``sys.meta_path`` that serves
those modules from the build. Any difference (a source edited since the
build, a file missing, another Python) and nothing is served from the build:
the ``.py`` sources are imported as always, and one line on stderr says to
rebuild. It is all or nothing because compiled modules call each other
natively: a compiled module must never meet a pure copy of another one.
``FRONTDESK_PURE=1`` forces pure Python. :func:`native_status` says which is
active and why.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The folder holding the packages (the repository in a development install).
ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "native"
MANIFEST = "manifest.json"
REBUILD = "make native"
FORMAT = 1  # of the manifest

_status = "pure (the build was not checked yet)"


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tag() -> str:
    """What a build is only good for: this interpreter's kind, version and extension suffix."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return f"{sys.implementation.cache_tag}{suffix}"


class CompiledFinder:
    """Serves the modules of a checked build (name -> extension file) before any other finder looks."""

    def __init__(self, binaries: dict[str, Path]) -> None:
        self.binaries = binaries

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        binary = self.binaries.get(fullname)
        if binary is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(binary))
        return importlib.machinery.ModuleSpec(fullname, loader, origin=str(binary))


def check(build_dir: Path = BUILD_DIR, root: Path = ROOT) -> tuple[dict[str, Path] | None, str]:
    """(the modules to serve compiled, or None; the status line): the manifest against the sources now."""
    if os.environ.get("FRONTDESK_PURE", "") not in ("", "0"):
        return None, "pure (FRONTDESK_PURE is set)"
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"pure (no compiled build; {REBUILD} makes one)"
    except (OSError, ValueError) as exc:
        return None, f"pure (unreadable {build_dir / MANIFEST}: {exc}; rebuild with {REBUILD})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("tag") != build_tag():
        return None, f"pure (the compiled build is for another Python or an older build step; rebuild with {REBUILD})"
    binaries: dict[str, Path] = {}
    try:
        modules = manifest["modules"]
        for name, entry in modules.items():
            source = root / entry["source"]
            try:
                if source_digest(source) != entry["sha256"]:
                    return None, f"pure ({entry['source']} changed since the build; rebuild with {REBUILD})"
            except FileNotFoundError:
                return None, f"pure ({entry['source']} is gone since the build; rebuild with {REBUILD})"
            binaries[name] = build_dir / entry["binary"]
        for name, binary in manifest["support"].items():
            binaries[name] = build_dir / binary
    except (KeyError, TypeError, AttributeError):
        return None, f"pure (malformed {build_dir / MANIFEST}; rebuild with {REBUILD})"
    missing = sorted(str(p.relative_to(build_dir)) for p in binaries.values() if not p.is_file())
    if missing:
        return None, f"pure (compiled files missing: {', '.join(missing)}; rebuild with {REBUILD})"
    if not modules:
        return None, f"pure (the compiled build is empty; rebuild with {REBUILD})"
    return binaries, f"compiled ({len(modules)} modules, mypyc)"


def install(build_dir: Path = BUILD_DIR, root: Path = ROOT) -> str:
    """Serve the compiled modules when the build matches the sources (once per process); the status line."""
    global _status
    if any(isinstance(f, CompiledFinder) for f in sys.meta_path):
        return _status
    binaries, _status = check(build_dir, root)
    if binaries is None:
        if "rebuild with" in _status:  # a build exists but does not fit: say so (no build at all is quiet)
            print(f"frontdesk: running pure Python: {_status[6:-1]}", file=sys.stderr, flush=True)
        return _status
    early = sorted(name for name in binaries if name in sys.modules)
    if early:  # imported before the check: serving a second copy would mix the two
        _status = f"pure ({', '.join(early)} imported before queueing; import queueing first)"
        return _status
    sys.meta_path.insert(0, CompiledFinder(binaries))
    return _status


def native_status() -> str:
    """Whether the hot modules run compiled: ``"compiled (...)"`` or ``"pure (why)"``."""
    return _status
