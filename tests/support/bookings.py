"""The set-up of the booking-burst tests: callers overflowed to the demo's callback offer within seconds.

Shared by tests/test_callback_durability.py (one node killed and restarted on
its SQLite file), tests/test_cluster_live.py (one of two cluster nodes killed)
and tests/test_pg_outage_live.py (PostgreSQL stopped and started): the server
overrides and the prompt store whose "callback booked" (and "could not book")
frames tell which callers began to hear their booking confirmed (or refused).
"""

from __future__ import annotations

from pathlib import Path

from ivr.media.g711 import get_codec
from ivr.media.prompts import PromptStore
from ivr.settings.config import Config
from ivr.settings.prompts import load_prompts
from support.demo import demo_ivr
from support.ports import free_port


def booking_overrides(tmp_path: Path) -> tuple[dict[str, object], PromptStore]:
    """Server overrides for callers who book a callback about 11 s into the call, and the prompts they hear."""
    ivr = demo_ivr()
    cache = tmp_path / "prompts"
    store = load_prompts(Config.model_validate({"ivr": ivr, "media": {"prompt_cache": str(cache)}}))
    overrides: dict[str, object] = {
        "sip": {"hold_time": 60},
        "media": {"prompt_cache": str(cache), "recordings_dir": str(tmp_path / "recordings")},
        "ivr": ivr,
        "queues": {"general": {"max_wait": 3, "overflow": "callback", "max_length": 100}},
        "surge": {"auto": False},
        "callbacks": {"trunk": f"sip:{{number}}@127.0.0.1:{free_port()}", "dispatch_interval": 30},
    }
    return overrides, store


def confirmation(store: PromptStore) -> list[bytes]:
    """The first 20 ms of "your callback is booked": a caller who got it heard the booking confirmed."""
    return list(store.frames("callback_booked", get_codec("PCMU")))[:1]


def refusal(store: PromptStore) -> list[bytes]:
    """The first 20 ms of "Sorry, we could not book your callback just now": the caller heard the failure branch."""
    frames = list(store.frames("callback_failed", get_codec("PCMU")))
    # the prompt opens with a little silence, which every prompt has: from its first sound on, 3 frames
    first = next(i for i, frame in enumerate(frames) if len(set(frame) - {0xFF, 0x7F}) > 8)
    return frames[first : first + 3]
