"""The RTP shell's two send paths for tests: ``socket.sendto`` per packet, and the compiled batch sender.

:func:`built_sender` compiles ivr/transport/rtpsend.c with tools/build_rtp.py
into a folder of this test session (once), so the batch path is tested from
the source as it is now, whatever ``make native`` last built. The
``send_path`` fixture runs a test once with each path: the shell picks its
path from :func:`ivr.transport.rtpbatch.load`, which the fixture answers.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.transport import rtpbatch

ROOT = Path(__file__).resolve().parent.parent.parent
SEND_PATHS = ("sendto", "batched")


def built_sender(build_dir: Path) -> rtpbatch.SenderType:
    """The batch sender compiled from the source now into ``build_dir`` (a C compiler is part of the set-up)."""
    if rtpbatch.check(build_dir, obey_pure=False)[0] is None:
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "build_rtp.py"), "--build-dir", str(build_dir)],
            check=True,
            capture_output=True,
        )
    sender, why = rtpbatch.import_sender(build_dir, obey_pure=False)
    assert sender is not None, f"the batch sender did not build: {why} (see {build_dir / 'build.log'})"
    return sender


@pytest.fixture(scope="session")
def batch_sender_type(tmp_path_factory: pytest.TempPathFactory) -> rtpbatch.SenderType:
    return built_sender(tmp_path_factory.mktemp("rtp-build"))


@pytest.fixture(params=SEND_PATHS)
def send_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, batch_sender_type: rtpbatch.SenderType
) -> Iterator[str]:
    """Every shell the test builds sends through this path."""
    path: str = request.param
    if path == "batched":
        monkeypatch.setattr(rtpbatch, "_loaded", (batch_sender_type, "batched in C (test build)"))
    else:
        monkeypatch.setattr(rtpbatch, "_loaded", (None, "socket.sendto per packet (test)"))
    yield path
