"""Ports that cannot clash: the test suite's allocator (tests/support/ports.py) and the load generator's blocks.

- The allocator's region leaves out the kernel's ephemeral range and the
  server's default RTP range; its ranges are disjoint, every port in them
  binds, a released range comes back only after a round, and a block one
  process holds is refused to another (the lock files).
- The load generator's :class:`PortBlocks` are disjoint by construction and
  skip a block whose ports are taken; ``frontdesk load`` refuses phone
  ports that overlap SIPp's media ports.
- The suite's own rule: no test module imports conftest or another test module.
"""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.ports import BLOCK, ROUND_BLOCKS, PortAllocator, bindable, region
from support.server import ROOT

from sim.live.load import LoadError, _port_blocks, build_parser, sipp_media_span
from sim.live.phones import SERVER_RTP_DEFAULT, PortBlocks, PortRange, ephemeral_ports

TESTS = ROOT / "tests"


def test_the_region_leaves_out_ephemeral_ports_and_the_servers_rtp_range() -> None:
    eph = ephemeral_ports()
    blocks = region()
    assert blocks
    for block in blocks:
        assert len(block) == BLOCK and block.start % BLOCK == 0
        assert block[-1] < eph.low or block.start > eph.high, block
        assert block[-1] < SERVER_RTP_DEFAULT[0] or block.start > SERVER_RTP_DEFAULT[1], block
        assert block.start >= 10000


def test_ranges_are_disjoint_bindable_and_come_back_only_after_a_round(tmp_path: Path) -> None:
    ports = PortAllocator(region(), lock_dir=tmp_path)
    taken = [ports.take(n) for n in (1, 4, 1, 20, 4, 150)]
    seen: set[int] = set()
    for r in taken:
        assert not seen & set(r), r
        seen |= set(r)
        assert all(bindable(p) for p in r)
    assert len(taken[-1]) == 150 and taken[-1][-1] - taken[-1][0] == 149  # bigger than a block: consecutive
    first = taken[0]
    ports.release(first)
    # next fit: the released port is not handed out again while the session can still lease blocks ahead
    again = [ports.take(10).start for _ in range(ROUND_BLOCKS * BLOCK // 10 - 30)]
    assert first.start not in again


def test_a_port_in_use_is_skipped(tmp_path: Path) -> None:
    ports = PortAllocator(region(), lock_dir=tmp_path)
    probe = ports.take(1).start
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", probe + 1))  # someone else's socket on the next port
        got = ports.take(1).start
    assert got != probe + 1 and got > probe


def test_a_block_held_by_another_run_is_not_leased(tmp_path: Path) -> None:
    blocks = region()[:2]
    holder = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from support.ports import PortAllocator
        ports = PortAllocator([range({blocks[0].start}, {blocks[0].stop})], lock_dir=Path({str(tmp_path)!r}))
        ports.take(1)
        print("held", flush=True)
        time.sleep(30)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        ours = PortAllocator(blocks, lock_dir=tmp_path)
        assert ours.take(1).start in blocks[1]  # the first block is the other run's
        with pytest.raises(RuntimeError, match="every block of test ports is leased"):
            for _ in range(BLOCK + 1):
                ours.take(1)
    finally:
        proc.kill()
        proc.wait(5)
    # the lock went with its process: the first block can be leased now
    assert PortAllocator(blocks[:1], lock_dir=tmp_path).take(1).start in blocks[0]


def test_phone_blocks_are_disjoint_and_skip_a_taken_port() -> None:
    low = region()[-1].start
    blocks = PortBlocks(PortRange(low, low + 99), 21)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", low + 21 + 5))  # a port of the second block
        first, second = blocks.take(), blocks.take()
    assert first == range(low, low + 21)
    assert second == range(low + 42, low + 63)  # the busy block is skipped
    third = blocks.take()
    assert third == range(low + 63, low + 84)
    blocks.give_back(first)
    assert blocks.take() == first  # given back, and every fresh block used: handed out again
    with pytest.raises(RuntimeError, match="no block of 21 free ports"):
        blocks.take()


def test_the_load_run_refuses_phone_ports_over_sipps_media_ports() -> None:
    assert sipp_media_span(9990, 300) == PortRange(9990, 9990 + 4 * 300 + 3)
    with pytest.raises(LoadError, match="overlaps SIPp's media ports"):
        _port_blocks(PortRange(10500, 10999), 9990, 300)
    assert _port_blocks(PortRange(61000, 61420), 9990, 300).size == 21
    args = build_parser().parse_args(["s.yaml", "--target", "127.0.0.1:5060", "--phone-ports", "61000-61420"])
    assert args.phone_ports == PortRange(61000, 61420) and args.sipp_media_port == 9990
    with pytest.raises(SystemExit):
        build_parser().parse_args(["s.yaml", "--target", "127.0.0.1:5060", "--phone-ports", "61000"])


def test_no_test_module_imports_conftest_or_another_test_module() -> None:
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            wrong += [
                f"{path.relative_to(ROOT)} imports {n}"
                for n in names
                if n.split(".")[0] == "conftest" or n.split(".")[0].startswith("test_")
            ]
    assert wrong == []
