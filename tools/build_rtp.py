"""Compile the RTP shell's batch sender (ivr/transport/rtpsend.c) with the C compiler into build/rtp/.

Called by tools/build_native.py (``make native``, ``make deps``, ``make test-deps``) and runnable on its own
(``python tools/build_rtp.py [--force]``). Like that build it never fails the set-up: without a C compiler or
Python's headers, or when the compile fails, it says so in one line and the shell sends with ``socket.sendto``
(``ivr.transport.rtpbatch.status()``). One C file, one ``gcc`` call, well under a second; nothing is done when
the manifest's SHA-256 matches the source and the binary is there. The binary is written beside the manifest
under a temporary name and renamed, and the manifest (written last) is what ivr/transport/rtpbatch.py checks
at import, so a half-done build is never loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["FRONTDESK_PURE"] = "1"  # this process only reads the sources: no word about a stale queue engine build

from ivr.transport import rtpbatch  # noqa: E402  (the manifest's format and digest, shared with the import-time check)

CFLAGS = ("-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-fPIC", "-pthread")


def say(text: str) -> None:
    print(f"rtp build: {text}", flush=True)


def missing_tools() -> str | None:
    """Why this machine cannot compile, or None."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}; Debian: apt-get install gcc)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        return f"Python's headers are missing ({include}; Debian: apt-get install python3-dev)"
    return None


def command(source: Path, target: Path) -> list[str]:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    return [*cc, *CFLAGS, "-shared", f"-I{include}", str(source), "-o", str(target)]


def build(build_dir: Path, force: bool) -> int:
    source = rtpbatch.SOURCE
    if not force and rtpbatch.check(build_dir, obey_pure=False)[0] is not None:
        say("up to date")
        return 0
    why = missing_tools()
    if why is not None:
        say(f"skipped: {why}; RTP is sent with socket.sendto")
        return 0
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / rtpbatch.MANIFEST).unlink(missing_ok=True)  # no build is in use until this one is done
    digest = rtpbatch.source_digest(source)
    binary = rtpbatch.binary_name()
    staging = build_dir / f"{binary}.new"
    log = build_dir / "build.log"
    with log.open("w") as out:
        child = subprocess.run(command(source, staging), stdout=out, stderr=subprocess.STDOUT, check=False)
    if child.returncode != 0:
        say(f"failed (see {log}); RTP is sent with socket.sendto")
        return 0
    if rtpbatch.source_digest(source) != digest:
        say(f"the source changed during the build; RTP is sent with socket.sendto (run {rtpbatch.REBUILD} again)")
        return 0
    staging.replace(build_dir / binary)  # a running server keeps the file it loaded open
    manifest = {"format": rtpbatch.FORMAT, "tag": rtpbatch.build_tag(), "sha256": digest, "binary": binary}
    (build_dir / rtpbatch.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    say(f"compiled {source.relative_to(ROOT)} into {build_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_rtp.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--force", action="store_true", help="rebuild even when the build matches the source")
    p.add_argument("--build-dir", type=Path, default=rtpbatch.BUILD_DIR, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return build(args.build_dir.resolve(), args.force)


if __name__ == "__main__":
    sys.exit(main())
