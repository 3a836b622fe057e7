"""The ``shutdown:`` section: how long SIGTERM drains, checked at load with the file's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.settings.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "frontdesk.yaml"


def test_the_drain_defaults_fit_production_and_the_example_shows_them() -> None:
    shutdown = load_config(None).shutdown
    assert (shutdown.drain_seconds, shutdown.drain_min_seconds) == (600.0, 2.0)
    assert load_config(EXAMPLE).shutdown == shutdown


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("shutdown:\n  drain_seconds: -1\n", "shutdown.drain_seconds"),
        ("shutdown:\n  drain_seconds: 100000\n", "shutdown.drain_seconds"),
        ("shutdown:\n  drain_min_seconds: 61\n", "shutdown.drain_min_seconds"),
        ("shutdown:\n  drain_second: 10\n", "shutdown.drain_second"),
    ],
)
def test_a_bad_drain_setting_is_refused_naming_its_line(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "frontdesk.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:2: {field}"), str(info.value)
