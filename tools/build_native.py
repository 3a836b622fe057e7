"""Compile the queue engine, the simulator's loop and the SIP core with mypyc into build/native/ (``make native``).

Run by ``make deps`` and ``make test-deps`` after the pip install, and on its
own by ``make native``. It never fails the set-up: without mypyc, a C
compiler or Python's headers, or when the compile fails, it says so in one
line and the pure-Python sources are used (``queueing.native_status()``).

Incremental: when the manifest's digests match the sources (and the files
are there) it stops at once; otherwise mypyc type-checks with its own
incremental cache under build/native/ (the project's ``mypy`` run keeps
``.mypy_cache``) and compiles into a fresh folder that replaces the old one
only when it is complete. The manifest, written last, records the SHA-256 of
every source as it was compiled; ``queueing/native.py`` checks it at import.
The compiled files never go beside the sources, so an editable install can
never pick up a stale one.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["FRONTDESK_PURE"] = "1"  # this process only reads the sources: no word about a stale build at import

from queueing import native  # noqa: E402  (the manifest's format and digests, shared with the import-time check)

# The pure hot modules: every module of the engine (not the package's __init__ nor the guard that picks the build),
# the simulator's loop and callers, and the SIP path every call takes. One more entry in a group, or a group of
# its own, is all a new module needs.
NOT_COMPILED = ("queueing/__init__.py", "queueing/native.py")
ENGINE = tuple(sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "queueing").glob("*.py")))
SIM = ("sim/world.py", "sim/simulation.py", "sim/customers.py")
SIP = (
    "ivr/sip/message.py",
    "ivr/sip/sdp.py",
    "ivr/sip/transaction.py",
    "ivr/sip/txtable.py",
    "ivr/sip/dialogs.py",
    "ivr/sip/events.py",
    "ivr/sip/stats.py",
    "ivr/sip/core.py",
    "ivr/sip/inbound.py",
    "ivr/sip/ua.py",
    "ivr/sip/admission.py",
    "ivr/sip/registrar.py",
)
# The media engine's pure half: each call's stream (its packets, playback, keys), the latch, the pacing grid.
MEDIA = (
    "ivr/media/stream.py",
    "ivr/media/latch.py",
    "ivr/media/rtp.py",
    "ivr/media/pacing.py",
    "ivr/media/ports.py",
    "ivr/media/dtmf.py",
)
# The shells' loops: SIP (the socket reads and sends, each message into the core) and RTP (each call's socket,
# the shared tick): compiled, they call the cores natively.
SHELL = ("ivr/transport/sip.py", "ivr/transport/rtp.py", "ivr/transport/rtpwatch.py")
# What every call's SIP events reach: the router, the IVR call and its flow interpreter with the flow's values
# (copyable: they copy and pickle through their constructor), the caller's identity. The call legs' base stays
# interpreted: the queues' ring and the callbacks' leg subclass it.
CALLS = (
    "ivr/calls/router.py",
    "ivr/calls/ivrcall.py",
    "ivr/calls/trust.py",
    "ivr/flow/actions.py",
    "ivr/flow/program.py",
    "ivr/flow/interpreter.py",
)
COMPILED = tuple(s for s in (*ENGINE, *SIM, *SIP, *MEDIA, *SHELL, *CALLS) if s not in NOT_COMPILED)
GROUP = "frontdesk_native"  # the shared library every compiled module's stub loads: frontdesk_native__mypyc
OPT_LEVEL = "3"


def module_of(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def say(text: str) -> None:
    print(f"native build: {text}", flush=True)


def up_to_date(build_dir: Path) -> bool:
    if not (build_dir / native.MANIFEST).exists():
        return False
    saved = os.environ.pop("FRONTDESK_PURE")  # the build's own state, not the pure mode this process runs in
    try:
        binaries, _ = native.check(build_dir, ROOT)
    finally:
        os.environ["FRONTDESK_PURE"] = saved
    if binaries is None:
        return False
    manifest = json.loads((build_dir / native.MANIFEST).read_text())
    return sorted(e["source"] for e in manifest["modules"].values()) == sorted(COMPILED)


def missing_tools() -> str | None:
    """Why this machine cannot compile, or None."""
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed (pip install -e '.[native]')"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}; Debian: apt-get install gcc)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"Python's headers are missing ({include}; Debian: apt-get install python3-dev)"
    return None


def compile_into(lib: Path, work: Path) -> None:
    """The child process: mypyc and setuptools build every extension of COMPILED into ``lib``."""
    from mypyc.build import mypycify
    from setuptools import setup

    options = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(work / "mypy-cache")]
    extensions = mypycify(
        [*(str(ROOT / s) for s in COMPILED), *options],
        target_dir=str(work / "c"),
        group_name=GROUP,
        opt_level=OPT_LEVEL,
    )
    os.chdir(work)  # setuptools reads no project file here: it only builds the extensions
    setup(
        name="frontdesk-native",
        ext_modules=extensions,
        script_args=["--quiet", "build_ext", "--build-lib", str(lib), "--build-temp", str(work / "obj")],
    )


def manifest_for(lib: Path, digests: dict[str, str]) -> dict:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    modules = {}
    for source in COMPILED:
        binary = Path("lib") / source.replace(".py", suffix)
        if not (lib.parent / binary).is_file():
            raise FileNotFoundError(binary)
        modules[module_of(source)] = {"source": source, "sha256": digests[source], "binary": binary.as_posix()}
    support = {f"{GROUP}__mypyc": f"lib/{GROUP}__mypyc{suffix}"}
    return {"format": native.FORMAT, "tag": native.build_tag(), "modules": modules, "support": support}


def build(build_dir: Path, force: bool) -> int:
    if not force and up_to_date(build_dir):
        say(f"up to date ({len(COMPILED)} modules)")
        return 0
    why = missing_tools()
    if why is not None:
        say(f"skipped: {why}; the pure-Python modules are used")
        return 0
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / native.MANIFEST).unlink(missing_ok=True)  # from here on, no build is in use until this one is done
    digests = {s: native.source_digest(ROOT / s) for s in COMPILED}
    staging = build_dir / "lib.new"
    shutil.rmtree(staging, ignore_errors=True)
    log = build_dir / "build.log"
    started = time.monotonic()
    with log.open("w") as out:
        child = subprocess.run(
            [sys.executable, __file__, "--compile-into", str(staging), "--work", str(build_dir / "work")],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            check=False,
        )
    if child.returncode != 0:
        say(f"failed (see {log.relative_to(ROOT)}); the pure-Python modules are used")
        return 0
    if {s: native.source_digest(ROOT / s) for s in COMPILED} != digests:
        say(f"a source changed during the build; the pure-Python modules are used (run {native.REBUILD} again)")
        return 0
    lib = build_dir / "lib"
    shutil.rmtree(lib, ignore_errors=True)  # a running process keeps the files it has loaded open
    staging.rename(lib)
    manifest = manifest_for(lib, digests)
    (build_dir / native.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    say(f"compiled {len(COMPILED)} modules in {time.monotonic() - started:.0f} s into {build_dir.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_native.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--force", action="store_true", help="rebuild even when the build matches the sources")
    p.add_argument("--build-dir", type=Path, default=native.BUILD_DIR, help=argparse.SUPPRESS)
    p.add_argument("--compile-into", type=Path, help=argparse.SUPPRESS)  # the child process
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_into is not None:
        compile_into(args.compile_into.resolve(), args.work.resolve())
        return 0
    return build(args.build_dir.resolve(), args.force)


if __name__ == "__main__":
    subprocess.run([sys.executable, str(ROOT / "tools" / "build_rtp.py")], check=False)  # the RTP batch sender (C)
    sys.exit(main())
