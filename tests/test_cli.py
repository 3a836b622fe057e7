"""The frontdesk command line: check-config refuses bad files and unusable prompts."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

from ivr.cli import GIL_SWITCH_INTERVAL, main, tune_runtime


def test_check_config_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sip:\n  ring_limit: 5\n  answer_delay: 6\n")
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:3: sip.answer_delay:" in err and "ring_limit" in err


def test_check_config_refuses_a_prompt_that_cannot_be_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.wav").write_bytes(b"this is not audio at all")
    cfg = tmp_path / "frontdesk.yaml"
    cfg.write_text(
        f"media:\n  prompt_cache: {tmp_path / 'cache'}\nivr:\n  prompts:\n    welcome: {{file: broken.wav}}\n"
    )
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'welcome'" in err and "sox" in err


def test_check_config_renders_the_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "frontdesk.yaml"
    cfg.write_text(f"media:\n  prompt_cache: {tmp_path / 'cache'}\n")
    assert main(["check-config", str(cfg)]) == 0
    assert "prompts ready" in capsys.readouterr().out
    assert any((tmp_path / "cache").glob("*.wav"))


@pytest.mark.parametrize("command", ["serve", "complaints", "handover"])
def test_every_subcommand_names_file_line_and_field_of_a_bad_config(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sip:\n  ring_limit: 5\n  answer_delay: 6\n")
    assert main([command, "--config", str(cfg)]) == 2
    assert f"{cfg}:3: sip.answer_delay:" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "what"), [("complaints", "no call records"), ("handover", "no callbacks")])
def test_reports_create_no_database_where_the_server_keeps_none(
    command: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "missing.db"
    cfg = tmp_path / "frontdesk.yaml"
    cfg.write_text(f"storage:\n  url: sqlite+aiosqlite:///{db}\n")
    assert main([command, "--config", str(cfg)]) == 1
    assert f"{what}: {db} does not exist" in capsys.readouterr().err
    assert not db.exists()


def test_serving_tunes_the_collector_and_gives_the_event_loop_the_interpreter_lock_back_within_half_a_ms() -> None:
    before = (gc.get_threshold(), sys.getswitchinterval())
    try:
        tune_runtime()
        assert gc.get_threshold() == (5_000, 10, 100)
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL) and GIL_SWITCH_INTERVAL <= 0.0005
    finally:
        gc.unfreeze()
        gc.set_threshold(*before[0])
        sys.setswitchinterval(before[1])
