"""Config loading: defaults, and errors that name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.settings.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "frontdesk.yaml"


def error_of(text: str, filename: str = "cfg.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename)
    return str(info.value)


@pytest.mark.parametrize("text", [None, "", "   \n", "# only a comment\n", "---\n"])
def test_defaults_load_without_a_file(text: str | None) -> None:
    cfg = load_config(None) if text is None else parse_config(text, "cfg.yaml")
    assert cfg == Config()
    assert cfg.sip.listen == "127.0.0.1"
    assert cfg.sip.port == 5060
    assert cfg.sip.transports == ["udp", "tcp"]
    assert cfg.sip.ring_limit == 10.0
    assert cfg.sip.answer_delay == 0.0
    assert (cfg.sip.timers.t1, cfg.sip.timers.t2, cfg.sip.timers.t4) == (0.5, 4.0, 5.0)
    assert cfg.http.port == 8080
    assert cfg.storage.url.startswith("sqlite+aiosqlite://")


def test_values_are_read() -> None:
    cfg = parse_config(
        "sip:\n  port: 5070\n  ring_limit: 20\n  answer_delay: 2.5\n  transports: [udp]\n  timers:\n    t1: 0.25\n",
        "cfg.yaml",
    )
    assert cfg.sip.port == 5070
    assert cfg.sip.ring_limit == 20.0
    assert cfg.sip.answer_delay == 2.5
    assert cfg.sip.transports == ["udp"]
    assert cfg.sip.timers.t1 == 0.25
    assert cfg.sip.timers.t2 == 4.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:\n  ring_limit: -1\n", "cfg.yaml:2: sip.ring_limit: Input should be greater than 0"),
        ("sip:\n  ring_limit: 500\n", "cfg.yaml:2: sip.ring_limit: Input should be less than or equal to 120"),
        (
            "http:\n  listen: 0.0.0.0\n  port: 70000\n",
            "cfg.yaml:3: http.port: Input should be less than or equal to 65535",
        ),
        ("sip:\n  port: five\n", "cfg.yaml:2: sip.port: Input should be a valid integer"),
        ("sip:\n  listen: sip.example.com\n", "cfg.yaml:2: sip.listen: 'sip.example.com' is not an IP address"),
        ("sip:\n  transports: [udp, sctp]\n", "cfg.yaml:2: sip.transports.1: Input should be 'udp' or 'tcp'"),
        (
            "sip:\n  transports:\n    - udp\n    - sctp\n",
            "cfg.yaml:4: sip.transports.1: Input should be 'udp' or 'tcp'",
        ),
        ("sip:\n  timers:\n    t1: 5\n    t2: 4\n", "cfg.yaml:4: sip.timers.t2: t2 must not be shorter than t1"),
        ("media:\n  rtp_port_min: 30000\n  rtp_port_max: 30001\n", "cfg.yaml:3: media.rtp_port_max: rtp_port_max must"),
        ("storage:\n  url: sqlite:///x.db\n", "cfg.yaml:2: storage.url: use sqlite+aiosqlite:///PATH"),
        ("log_level: loud\n", "cfg.yaml:1: log_level: Input should be"),
        ("sip: 5\n", "cfg.yaml:1: sip: Input should be"),
    ],
)
def test_a_bad_value_names_file_line_and_field(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_unknown_setting_is_reported_with_its_line() -> None:
    text = "sip:\n  port: 5060\n  ring_limt: 12\nhttp:\n  port: 8080\n"
    assert error_of(text) == "cfg.yaml:3: sip.ring_limt: unknown setting"
    assert error_of("sipp:\n  port: 1\n") == "cfg.yaml:1: sipp: unknown setting"
    assert error_of("sip:\n  timers:\n    t3: 1\n") == "cfg.yaml:3: sip.timers.t3: unknown setting"


def test_every_problem_is_listed() -> None:
    text = "sip:\n  ring_limit: 0\n  nope: 1\nhttp:\n  port: -1\n"
    lines = error_of(text).splitlines()
    assert sorted(lines) == sorted(
        [
            "cfg.yaml:2: sip.ring_limit: Input should be greater than 0",
            "cfg.yaml:3: sip.nope: unknown setting",
            "cfg.yaml:5: http.port: Input should be greater than or equal to 0",
        ]
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("sip:\n  port: 5060\n   listen: 127.0.0.1\n", 3),  # mapping value where none is allowed
        ("sip:\n  port: [5060\nhttp:\n  port: 1\n", 3),  # unclosed flow sequence
        ("sip:\n  port: 5060\n\tlisten: x\n", 3),  # tab indentation
        ('sip:\n  user_agent: "unterminated\n', 3),
    ],
)
def test_invalid_yaml_names_the_line(text: str, line: int) -> None:
    msg = error_of(text)
    assert msg.startswith(f"cfg.yaml:{line}: not valid YAML: "), msg


def test_top_level_must_be_a_mapping() -> None:
    assert error_of("- sip\n- http\n") == ("cfg.yaml:1: the top level must be a mapping of sections (sip, http, ...)")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("sip:\n  answer_delay: 10\n", 2),  # default ring_limit is 10
        ("sip:\n  ring_limit: 5\n  answer_delay: 6\n", 3),
        ("sip:\n  answer_delay: 5\n  ring_limit: 5\n", 2),
    ],
)
def test_answer_delay_must_be_shorter_than_ring_limit(text: str, line: int) -> None:
    msg = error_of(text)
    assert msg.startswith(f"cfg.yaml:{line}: sip.answer_delay: answer_delay ("), msg
    assert "must be shorter than ring_limit" in msg


def test_answer_delay_just_under_ring_limit_is_fine() -> None:
    cfg = parse_config("sip:\n  ring_limit: 5\n  answer_delay: 4.99\n", "cfg.yaml")
    assert cfg.sip.answer_delay == 4.99


def test_control_character_is_a_config_error_with_a_line() -> None:
    """YAML refuses control characters with a ReaderError, which must not escape as a traceback."""
    msg = error_of("sip:\n  user_agent: a\x01b\n")
    assert msg.startswith("cfg.yaml:2: "), msg


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "frontdesk.yaml"
    path.write_text("sip:\n  ring_limit: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: sip.ring_limit: Input should be greater than 0"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'missing.yaml'}: cannot read: ")


def test_load_config_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"sip:\n  user_agent: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:")


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/frontdesk.yaml not written yet")
def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, Config)
    assert cfg.sip.answer_delay < cfg.sip.ring_limit
