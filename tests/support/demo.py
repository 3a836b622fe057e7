"""The built-in demo flow (ivr/settings/demo.yaml) as the tests configure and dial it."""

from __future__ import annotations

from typing import Any

import yaml

from support.server import ROOT

DEMO_PATH = ROOT / "ivr" / "settings" / "demo.yaml"
CALLER = "4155550100"  # outside every group of the demo
GROUP_CALLER = "5551234567"  # fault_area: prefix 555 (R6)


def demo_ivr() -> dict[str, Any]:
    """The demo flow exactly as `make run` answers with it (a fresh copy: tests change it)."""
    ivr: dict[str, Any] = yaml.safe_load(DEMO_PATH.read_text())["ivr"]
    return ivr
