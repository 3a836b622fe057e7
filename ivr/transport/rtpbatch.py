"""The RTP shell's batch sender, compiled from ivr/transport/rtpsend.c, used only while it matches that source.

``make native`` (tools/build_rtp.py, called by tools/build_native.py) compiles
the C file into ``build/rtp/`` and writes a manifest with the SHA-256 of the
source it was compiled from. :func:`load` hashes the source (a few kB) and
loads the binary only when the digest, the interpreter and the file all
match; otherwise the shell sends with one ``socket.sendto`` per packet, the
same bytes in the same order. ``FRONTDESK_PURE=1`` forces that path too (as
it does for the queue engine), and ``FRONTDESK_RTP_SENDTO=1`` forces it alone
(for a machine whose cores are oversubscribed: there the hand-over to a
second thread waits for the scheduler twice a tick). :func:`status` says which runs and why; the
first shell built logs it ("RTP send: ...").

What the batch sender changes is where the kernel's time goes: each tick's
packets are queued (``Sender.add``: the packet copied and its address
parsed) and handed to a thread of the extension's own that makes the
``sendto`` calls without the interpreter lock, so SIP runs on the other core
meanwhile (docs/ivr.md, "Media pacing").
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE = Path(__file__).resolve().with_name("rtpsend.c")
BUILD_DIR = ROOT / "build" / "rtp"
MANIFEST = "manifest.json"
MODULE = "_frontdesk_rtpsend"
REBUILD = "make native"
FORMAT = 1  # of the manifest

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the extension's ``Sender`` offers (one owner thread: the event loop's)."""

    @property
    def queued(self) -> int: ...

    @property
    def flushed(self) -> int: ...

    @property
    def done(self) -> int: ...

    @property
    def threads(self) -> int: ...

    def add(self, fd: int, packet: bytes, address: tuple[str, int], /) -> bool: ...

    def flush(self) -> int: ...

    def wait(self) -> None: ...

    def discard(self) -> int: ...

    def close(self) -> None: ...

    def counts(self) -> tuple[int, int, int, int]: ...


class SenderType(Protocol):
    def __call__(self, *, threads: int = 1) -> Sender: ...


_loaded: tuple[SenderType | None, str] | None = None


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tag() -> str:
    """What a build is only good for: this interpreter's kind, version and extension suffix."""
    return f"{sys.implementation.cache_tag}{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def binary_name() -> str:
    return f"{MODULE}{importlib.machinery.EXTENSION_SUFFIXES[0]}"


def check(build_dir: Path = BUILD_DIR, *, obey_pure: bool = True) -> tuple[Path | None, str]:
    """(the binary to load, or None; the status line): the manifest against the source now.

    ``obey_pure=False`` looks at the build itself whatever ``FRONTDESK_PURE`` or ``FRONTDESK_RTP_SENDTO`` say
    (the build step, tests).
    """
    if obey_pure:
        for name in ("FRONTDESK_PURE", "FRONTDESK_RTP_SENDTO"):
            if os.environ.get(name, "") not in ("", "0"):
                return None, f"socket.sendto per packet ({name} is set)"
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"socket.sendto per packet (no compiled batch sender; {REBUILD} makes one)"
    except (OSError, ValueError) as exc:
        return None, f"socket.sendto per packet (unreadable {build_dir / MANIFEST}: {exc}; rebuild with {REBUILD})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("tag") != build_tag():
        return None, f"socket.sendto per packet (the batch sender is for another Python; rebuild with {REBUILD})"
    try:
        digest = source_digest(SOURCE)
    except FileNotFoundError:
        return None, f"socket.sendto per packet ({SOURCE.name} is missing)"
    if manifest.get("sha256") != digest:
        return None, f"socket.sendto per packet ({SOURCE.name} changed since the build; rebuild with {REBUILD})"
    binary = build_dir / str(manifest.get("binary", ""))
    if not binary.is_file():
        return None, f"socket.sendto per packet ({binary.name} is missing; rebuild with {REBUILD})"
    return binary, "batched in C, sent by a thread outside the interpreter lock"


def _import(binary: Path) -> SenderType:
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(binary))
    spec = importlib.util.spec_from_file_location(MODULE, str(binary), loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sender: SenderType = module.Sender
    return sender


def import_sender(build_dir: Path = BUILD_DIR, *, obey_pure: bool = True) -> tuple[SenderType | None, str]:
    """(the Sender type of the build in ``build_dir``, or None; the status line)."""
    binary, why = check(build_dir, obey_pure=obey_pure)
    if binary is None:
        return None, why
    try:
        return _import(binary), why
    except (ImportError, OSError) as exc:
        return None, f"socket.sendto per packet (the batch sender does not load: {exc}; rebuild with {REBUILD})"


def load() -> tuple[SenderType | None, str]:
    """(the extension's Sender type, or None for the pure path; the status line), checked once per process."""
    global _loaded
    if _loaded is None:
        _loaded = import_sender()
        why = _loaded[1]
        if "rebuild with" in why:  # a build exists but does not fit: say so
            log.warning("RTP send: %s", why)
        else:
            log.info("RTP send: %s", why)
    return _loaded


def status() -> str:
    """How this process sends RTP: ``"batched in C, ..."`` or ``"socket.sendto per packet (why)"``."""
    return load()[1]
