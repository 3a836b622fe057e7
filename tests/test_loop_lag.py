"""tools/loop_lag.py: the probe sees a stall the loop really had, and its report says so; a bad file is one line."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("loop_lag", ROOT / "tools" / "loop_lag.py")  # tools/ is not installed
assert _spec is not None and _spec.loader is not None
loop_lag = importlib.util.module_from_spec(_spec)
sys.modules["loop_lag"] = loop_lag
_spec.loader.exec_module(loop_lag)


async def test_a_blocked_loop_shows_as_a_stall_in_the_report(tmp_path: Path) -> None:
    out = tmp_path / "lag.json"
    probe = loop_lag.Probe(out)
    gc.callbacks.append(probe.on_gc)
    task = asyncio.ensure_future(probe.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.045)  # the loop is held for 45 ms: every datagram arriving meanwhile waits that long
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        gc.callbacks.remove(probe.on_gc)
    probe.dump()
    lines = loop_lag.report(out)
    assert any(lag > 0.040 for _, lag, _ in probe.lags), probe.lags[-5:]
    assert "stalls > 40 ms: 1 " in lines[4], lines
    assert "stalls > 5 ms: 0 " not in lines[1], lines
    assert any(line.startswith("  gc gen2: ") for line in lines), lines  # the full collection, timed


def test_a_file_that_is_not_the_probes_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "lag.json"
    bad.write_text(json.dumps({"lags": 3}))
    with pytest.raises(SystemExit, match="not a loop-lag file"):
        loop_lag.report(bad)
