"""The ``ivr:`` config section: every validation error names file, line and field; the demo loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.flow.program import compile_ivr
from ivr.settings.builtin_prompts import BUILTIN_PROMPTS, BUILTIN_TONES, builtin_prompt_texts
from ivr.settings.config import Config, ConfigError, load_config, parse_config
from ivr.settings.flows import DEMO_PATH, GroupMatcher, IvrSettings, groups_of_function, spoken_prompts

BASE = """\
ivr:
  prompts:
    hello: {text: "Hello."}
    menu: {text: "Press 1 to hear goodbye."}
    bye: {text: "Goodbye."}
  groups:
    vip: {numbers: ["5550001"]}
  flows:
    main:
      start: welcome
      nodes:
        welcome: {type: play, prompts: [hello], next: menu}
        menu:
          type: menu
          prompt: menu
          keys: {1: bye}
        bye: {type: hangup, prompt: bye}
"""


def error_of(text: str, filename: str = "cfg.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename)
    return str(info.value)


def line_of(text: str, snippet: str) -> int:
    """1-based line of the first line containing ``snippet``."""
    for n, line in enumerate(text.splitlines(), 1):
        if snippet in line:
            return n
    raise AssertionError(f"{snippet!r} not in the text")


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_base_config_loads() -> None:
    cfg = parse_config(BASE, "cfg.yaml")
    assert list(cfg.ivr.flows) == ["main"]
    assert cfg.ivr.main_flow == "main"
    assert cfg.ivr.flow_for("12345") == "main"


# -- references -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "snippet", "field", "message"),
    [
        (
            "next: menu}",
            "next: menuu}",
            "next: menuu",
            "ivr.flows.main.nodes.welcome.next",
            "unknown node 'menuu' (did you mean 'menu'?)",
        ),
        (
            "keys: {1: bye}",
            "keys: {1: byebye}",
            "keys: {1: byebye}",
            "ivr.flows.main.nodes.menu.keys.1",
            "unknown node 'byebye' (did you mean 'bye'?)",
        ),
        ("start: welcome", "start: hello", "start: hello", "ivr.flows.main.start", "unknown node 'hello'"),
        (
            "prompts: [hello]",
            "prompts: [helo]",
            "prompts: [helo]",
            "ivr.flows.main.nodes.welcome.prompts.0",
            "unknown prompt 'helo' (did you mean 'hello'?)",
        ),
        (
            "prompt: menu\n",
            "prompt: menu\n          invalid_prompt: nope\n",
            "invalid_prompt: nope",
            "ivr.flows.main.nodes.menu.invalid_prompt",
            "unknown prompt 'nope'",
        ),
    ],
)
def test_unknown_reference(old: str, new: str, snippet: str, field: str, message: str) -> None:
    text = edit(old, new)
    assert error_of(text) == f"cfg.yaml:{line_of(text, snippet)}: {field}: {message}"


def test_builtin_prompts_need_no_config() -> None:
    text = edit("prompts: [hello]", "prompts: [hello, beep, digit_7, digit_hash, num_90, num_thousand]")
    parse_config(text, "cfg.yaml")


def test_unknown_groups_and_notice_prompts() -> None:
    text = BASE + ("  notices:\n    fault: {group: vipp, prompt: fault_notice}\n  blocklist_group: spam\n")
    lines = error_of(text).splitlines()
    n = line_of(text, "fault: {group")
    assert f"cfg.yaml:{n}: ivr.notices.fault.group: unknown group 'vipp' (did you mean 'vip'?)" in lines
    assert f"cfg.yaml:{n}: ivr.notices.fault.prompt: unknown prompt 'fault_notice'" in lines
    assert f"cfg.yaml:{line_of(text, 'blocklist_group')}: ivr.blocklist_group: unknown group 'spam'" in lines


def test_unknown_group_in_a_branch() -> None:
    text = edit(
        "next: menu}",
        "next: tier}\n"
        "        tier:\n"
        "          type: branch\n"
        "          on: caller_group\n"
        "          cases:\n"
        "            - {group: gold, next: menu}\n"
        "          default: menu",
    )
    n = line_of(text, "{group: gold")
    assert error_of(text) == f"cfg.yaml:{n}: ivr.flows.main.nodes.tier.cases.0.group: unknown group 'gold'"


def test_unknown_flow_names() -> None:
    text = BASE + '  default_flow: mian\n  flow_by_number:\n    "1000": other\n'
    lines = error_of(text).splitlines()
    assert (
        f"cfg.yaml:{line_of(text, 'default_flow')}: ivr.default_flow: unknown flow 'mian' (did you mean 'main'?)"
        in lines
    )
    assert f"cfg.yaml:{line_of(text, '1000')}: ivr.flow_by_number.1000: unknown flow 'other'" in lines


def test_flow_by_number_selects_the_flow() -> None:
    text = BASE.replace(
        "  flows:\n",
        '  flow_by_number: {"2000": other}\n  flows:\n    other:\n      start: b\n      nodes:\n'
        "        b: {type: hangup, prompt: bye}\n",
    )
    ivr = parse_config(text, "cfg.yaml").ivr
    assert ivr.main_flow == "other"  # the first flow in the file is the default
    assert ivr.flow_for("2000") == "other"
    text = text.replace("  flows:\n", "  default_flow: main\n  flows:\n", 1)
    ivr = parse_config(text, "cfg.yaml").ivr
    assert (ivr.flow_for("2000"), ivr.flow_for("999")) == ("other", "main")
    program = compile_ivr(ivr)
    assert program.flow_for("2000").name == "other"
    assert program.flow_for("").name == "main"


# -- graph ------------------------------------------------------------------------------


def test_unreachable_node() -> None:
    text = edit(
        "        bye: {type: hangup, prompt: bye}\n",
        "        bye: {type: hangup, prompt: bye}\n        orphan: {type: hangup}\n",
    )
    n = line_of(text, "orphan:")
    assert error_of(text) == (
        f"cfg.yaml:{n}: ivr.flows.main.nodes.orphan: unreachable: no path from start or screen leads here"
    )


def test_a_node_reached_only_from_screen_is_reachable() -> None:
    text = edit("      start: welcome\n", "      start: welcome\n      screen: polite\n")
    text = edit(
        "        bye: {type: hangup, prompt: bye}\n",
        "        bye: {type: hangup, prompt: bye}\n        polite: {type: hangup, prompt: bye, outcome: screened}\n",
        text,
    )
    assert parse_config(text, "cfg.yaml").ivr.flows["main"].screen == "polite"


def test_menu_with_no_keys_and_no_on_failure() -> None:
    text = edit("          keys: {1: bye}\n", "")
    text = edit("        bye: {type: hangup, prompt: bye}\n", "", text)
    n = line_of(text, "        menu:")
    assert error_of(text) == (
        f"cfg.yaml:{n}: ivr.flows.main.nodes.menu: a menu needs keys or on_failure: this one has no way out"
    )


def test_loop_with_no_way_out() -> None:
    text = edit("keys: {1: bye}", "keys: {1: welcome}\n          on_failure: welcome")
    text = edit("        bye: {type: hangup, prompt: bye}\n", "", text)
    lines = error_of(text).splitlines()
    msg = "no way out: every path from here loops back without reaching a hangup, transfer, queue or callback"
    assert lines == [
        f"cfg.yaml:{line_of(text, 'welcome: {type')}: ivr.flows.main.nodes.welcome: {msg}",
        f"cfg.yaml:{line_of(text, '        menu:')}: ivr.flows.main.nodes.menu: {msg}",
    ]


def test_menu_without_on_failure_can_end_by_hanging_up() -> None:
    # running out of retries hangs up, so a menu that only loops back still has a way out
    text = edit("keys: {1: bye}", "keys: {1: welcome}")
    text = edit("        bye: {type: hangup, prompt: bye}\n", "", text)
    parse_config(text, "cfg.yaml")


def test_branch_loop() -> None:
    text = edit(
        "next: menu}",
        "next: b1}\n"
        "        b1: {type: branch, on: surge, cases: [{on: true, next: b2}], default: menu}\n"
        "        b2: {type: branch, on: surge, cases: [{on: true, next: b1}], default: menu}",
    )
    msg = "branch loop: its branches lead back here without waiting"
    assert error_of(text).splitlines() == [
        f"cfg.yaml:{line_of(text, 'b1: {')}: ivr.flows.main.nodes.b1: {msg}",
        f"cfg.yaml:{line_of(text, 'b2: {')}: ivr.flows.main.nodes.b2: {msg}",
    ]


def test_var_must_be_collected() -> None:
    text = edit("next: menu}", "next: say}\n        say: {type: say_digits, value: 'var:pin', next: menu}")
    n = line_of(text, "say: {")
    assert error_of(text) == f"cfg.yaml:{n}: ivr.flows.main.nodes.say.value: no collect node sets var 'pin'"


def test_blocklist_needs_a_screen_node() -> None:
    text = BASE + "  blocklist_group: vip\n"
    n = line_of(text, "    main:")
    assert (
        error_of(text) == f"cfg.yaml:{n}: ivr.flows.main: blocklist_group 'vip' is set: this flow needs a screen: node"
    )


# -- node fields ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "snippet", "expected"),
    [
        (
            "type: play",
            "type: playy",
            "type: playy",
            "ivr.flows.main.nodes.welcome.type: unknown node type 'playy' (did you mean 'play'?)",
        ),
        ("{type: play, ", "{", "welcome: {", "ivr.flows.main.nodes.welcome: a node needs type: (play, menu,"),
        (
            "next: menu}",
            "next: menu, colour: red}",
            "colour: red",
            "ivr.flows.main.nodes.welcome.colour: unknown setting",
        ),
        (
            "keys: {1: bye}",
            "keys: {x: bye}",
            "keys: {x",
            "ivr.flows.main.nodes.menu.keys.x.[key]: 'x' is not a phone key",
        ),
        (
            "keys: {1: bye}",
            "keys: {1: bye}\n          timeout: 0",
            "timeout: 0",
            "ivr.flows.main.nodes.menu.timeout: Input should be greater than 0",
        ),
        (
            "next: menu}",
            "next: menu, text_reason: hotkey}",
            "text_reason",
            "ivr.flows.main.nodes.welcome.text_reason: text_reason without text",
        ),
        (
            "hello: {text",
            "hello world: {text",
            "hello world",
            "ivr.prompts.hello world.[key]: 'hello world' is not a valid name",
        ),
        ('hello: {text: "Hello."}', "hello: {}", "hello: {}", "ivr.prompts.hello: a prompt needs text:"),
        (
            'numbers: ["5550001"]',
            "numbers: [0700]",
            "numbers: [0700]",
            "ivr.groups.vip.numbers.0: write numbers in quotes: YAML read this one as the integer 448",
        ),
        (
            'numbers: ["5550001"]',
            "patterns: ['55(5']",
            "patterns:",
            "ivr.groups.vip.patterns.0: not a valid regular expression: missing )",
        ),
        (
            'vip: {numbers: ["5550001"]}',
            "vip: {}",
            "vip: {",
            "ivr.groups.vip: a group needs numbers, prefixes, patterns or a file",
        ),
    ],
)
def test_bad_node_or_section_field(old: str, new: str, snippet: str, expected: str) -> None:
    text = edit(old, new)
    first = error_of(text).splitlines()[0]
    assert first.startswith(f"cfg.yaml:{line_of(text, snippet)}: {expected}")


@pytest.mark.parametrize(
    ("node", "field", "message"),
    [
        (
            "{type: collect, prompt: hello, var: pin, max_digits: 2, min_digits: 3, next: menu}",
            "min_digits",
            "min_digits is larger than max_digits",
        ),
        ("{type: transfer, uri: 'operator'}", "uri", "'operator' is not a sip:, sips: or tel: URI"),
        (
            "{type: say_number, value: '12#', next: menu}",
            "value",
            "'12#': say_number reads caller, var:NAME or a whole number",
        ),
        ("{type: say_digits, value: 'callr', next: menu}", "value", "'callr': use caller, var:NAME or literal digits"),
        (
            "{type: branch, on: weather, cases: [{on: true, next: menu}], default: menu}",
            "on",
            "'weather': branch on caller_group",
        ),
        (
            "{type: branch, on: surge, cases: [{group: vip, next: menu}], default: menu}",
            "cases.0",
            "a surge case needs on:",
        ),
        (
            "{type: branch, on: time_of_day, cases: [{from: '25:00', to: '08:00', next: menu}], default: menu}",
            "cases.0.from",
            "'25:00' is not a time",
        ),
        (
            "{type: branch, on: time_of_day, cases: [{from: '08:00', to: '08:00', next: menu}], default: menu}",
            "cases.0.to",
            "from and to are the same time",
        ),
        (
            "{type: branch, on: time_of_day, cases: [{from: '8:00', to: '9:00', on: true, next: menu}], default: menu}",
            "cases.0.on",
            "on: does not apply to a time_of_day branch",
        ),
        (
            "{type: message, prompt: hello, max_seconds: 5000, next: menu}",
            "max_seconds",
            "Input should be less than or equal to 900",
        ),
    ],
)
def test_bad_node(node: str, field: str, message: str) -> None:
    text = edit("next: menu}", f"next: extra}}\n        extra: {node}")
    first = error_of(text).splitlines()[0]
    assert first.startswith(f"cfg.yaml:{line_of(text, 'extra: {')}: ivr.flows.main.nodes.extra.{field}: {message}")


def test_yaml_on_and_unquoted_times_are_understood() -> None:
    text = edit(
        "next: menu}",
        "next: hours}\n"
        "        hours:\n"
        "          type: branch\n"
        "          on: time_of_day\n"
        "          cases:\n"
        "            - {from: 8:30, to: 17:30, days: [mon, fri], next: surge}\n"
        "            - {from: '22:00', to: '06:00', next: menu}\n"
        "          default: menu\n"
        "        surge:\n"
        "          type: branch\n"
        "          on: surge\n"
        "          cases:\n"
        "            - on: true\n"
        "              next: menu\n"
        "          default: menu",
    )
    nodes = parse_config(text, "cfg.yaml").ivr.flows["main"].nodes
    hours = nodes["hours"]
    assert hours.type == "branch"
    assert (hours.cases[0].from_, hours.cases[0].to, hours.cases[0].days) == (510, 1050, ["mon", "fri"])
    assert (hours.cases[1].from_, hours.cases[1].to) == (1320, 360)
    surge = nodes["surge"]
    assert surge.type == "branch" and surge.on == "surge" and surge.cases[0].on is True


# -- files ------------------------------------------------------------------------------


def test_prompt_file_is_relative_to_the_config_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "hello.wav").write_bytes(b"RIFF")
    text = edit('hello: {text: "Hello."}', "hello: {file: prompts/hello.wav}")
    cfg_file = tmp_path / "frontdesk.yaml"
    cfg_file.write_text(text)
    cfg = load_config(cfg_file)
    assert cfg.ivr.prompts["hello"].file == (tmp_path / "prompts" / "hello.wav").resolve()
    assert "hello" not in spoken_prompts(cfg.ivr)

    cfg_file.write_text(text.replace("hello.wav", "helo.wav"))
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file)
    n = line_of(text, "hello: {file")
    assert str(info.value).startswith(f"{cfg_file}:{n}: ivr.prompts.hello.file: prompts/helo.wav: no such file")


def test_group_file(tmp_path: Path) -> None:
    (tmp_path / "vip.txt").write_text("# our best customers\n5550002\n\n  5550003  # Jane\n")
    text = edit('numbers: ["5550001"]', 'numbers: ["5550001"], file: vip.txt')
    cfg_file = tmp_path / "frontdesk.yaml"
    cfg_file.write_text(text)
    cfg = load_config(cfg_file)
    assert cfg.ivr.groups["vip"].file_numbers == {"5550002", "5550003"}
    groups_of = groups_of_function(cfg.ivr)
    assert groups_of("5550003") == {"vip"}
    assert groups_of("5550001") == {"vip"}
    assert groups_of("5550004") == frozenset()

    n = line_of(text, "file: vip.txt")
    (tmp_path / "vip.txt").write_text("5550002\n555 0003\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file)
    assert str(info.value) == f"{cfg_file}:{n}: ivr.groups.vip.file: vip.txt:2: '555 0003': one number per line"

    (tmp_path / "vip.txt").unlink()
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file)
    assert str(info.value).startswith(f"{cfg_file}:{n}: ivr.groups.vip.file: cannot read {tmp_path / 'vip.txt'}")


def test_groups_of_numbers_prefixes_patterns() -> None:
    ivr = parse_config(
        edit(
            '    vip: {numbers: ["5550001"]}\n',
            '    vip: {numbers: ["5550001"]}\n'
            '    fault: {prefixes: ["555", "4420"]}\n'
            "    premium: {patterns: ['0900\\d{4}', '\\+1900.*']}\n",
        ),
        "cfg.yaml",
    ).ivr
    groups_of = GroupMatcher(ivr.groups)
    assert groups_of("5550001") == {"vip", "fault"}
    assert groups_of("5559999") == {"fault"}
    assert groups_of("44201234") == {"fault"}
    assert groups_of("09001234") == {"premium"}
    assert groups_of("090012345") == frozenset()  # patterns match the whole number
    assert groups_of("+19005") == {"premium"}
    assert groups_of("55") == frozenset()
    assert groups_of("") == frozenset()
    assert groups_of("anonymous") == frozenset()


# -- built-ins and the demo ------------------------------------------------------------


def test_builtin_prompts() -> None:
    texts = builtin_prompt_texts()
    assert texts["digit_0"] == "zero" and texts["digit_star"] == "star" and texts["digit_hash"] == "hash"
    assert texts["num_13"] == "thirteen" and texts["num_90"] == "ninety" and texts["num_hundred"] == "hundred"
    expected = {f"digit_{d}" for d in range(10)} | {"digit_star", "digit_hash"}
    expected |= {f"num_{n}" for n in [*range(20), 20, 30, 40, 50, 60, 70, 80, 90]} | {"num_hundred", "num_thousand"}
    expected |= {
        "queue_position",
        "queue_in_line",
        "queue_wait",
        "queue_minutes",
        "queue_wait_under_a_minute",
        "queue_wait_unknown",
        "queue_busy_notice",
        "queue_peak_shaving",
        "callback_booked",
        "callback_within",
        "callback_hours",
        "callback_exists",
        "callback_cancelled",
        "callback_none",
        "callback_failed",
    }
    assert set(texts) == expected
    assert BUILTIN_PROMPTS == expected | {"beep", "hold_music"}
    assert "beep" in BUILTIN_TONES


def test_the_demo_loads_as_a_config_file() -> None:
    cfg = load_config(DEMO_PATH)
    ivr = cfg.ivr
    assert ivr.main_flow == "main"
    assert ivr.blocklist_group == "blocked"
    main = ivr.flows["main"]
    assert main.screen == "screened"
    menu = main.nodes["main_menu"]
    assert menu.type == "menu"
    assert set(menu.keys) == set("1234590")
    assert ivr.notices["network_fault"].group == "fault_area"
    compile_ivr(ivr)


def test_no_flows_means_the_demo() -> None:
    assert Config().ivr == load_config(DEMO_PATH).ivr
    assert IvrSettings() == Config().ivr
    assert parse_config("ivr:\n", "cfg.yaml").ivr == Config().ivr
    assert "main_menu" in spoken_prompts(Config().ivr)


def test_no_flows_merges_the_file_over_the_demo() -> None:
    text = (
        "ivr:\n"
        "  prompts:\n"
        '    welcome: {text: "Welcome to Acme."}\n'
        "  groups:\n"
        '    spam: {numbers: ["123"]}\n'
        "  blocklist_group: spam\n"
    )
    ivr = parse_config(text, "cfg.yaml").ivr
    assert ivr.prompts["welcome"].text == "Welcome to Acme."
    assert ivr.prompts["main_menu"] == Config().ivr.prompts["main_menu"]
    assert set(ivr.groups) == {"fault_area", "blocked", "spam"}
    assert ivr.blocklist_group == "spam"
    assert "main" in ivr.flows

    # a mistake in the merged part is still reported at its line
    text = text.replace("blocklist_group: spam", "blocklist_group: spma")
    assert (
        error_of(text)
        == f"cfg.yaml:{line_of(text, 'spma')}: ivr.blocklist_group: unknown group 'spma' (did you mean 'spam'?)"
    )


# -- a callback node's `failed` target --------------------------------------------------

CALLBACK = (
    edit(
        "keys: {1: bye}",
        "keys: {1: book, 2: message}\n"
        "        book: {type: callback, queue: sales, failed: message, next: bye}\n"
        "        message: {type: message, prompt: hello, max_seconds: 30, next: bye}",
    )
    + "queues: {sales: {}}\n"
)


def test_callback_failed_target() -> None:
    ivr = parse_config(CALLBACK, "cfg.yaml").ivr
    assert ivr.flows["main"].nodes["book"].failed == "message"  # type: ignore[union-attr]
    assert compile_ivr(ivr).flows["main"].nodes["book"].failed == "message"  # type: ignore[union-attr]
    # optional: without it a failed booking goes on to `next`
    text = edit("failed: message, ", "", CALLBACK)
    assert compile_ivr(parse_config(text, "cfg.yaml").ivr).flows["main"].nodes["book"].failed is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mesage", "unknown node 'mesage' (did you mean 'message'?)"),
        ("[message]", "Input should be a valid string"),
        ("7", "Input should be a valid string"),
    ],
)
def test_callback_failed_target_errors(value: str, message: str) -> None:
    text = edit("failed: message", f"failed: {value}", CALLBACK)
    first = error_of(text).splitlines()[0]
    assert first.startswith(f"cfg.yaml:{line_of(text, 'failed: ')}: ivr.flows.main.nodes.book.failed: {message}")


def test_the_demo_offers_a_message_when_a_booking_fails() -> None:
    nodes = load_config(DEMO_PATH).ivr.flows["main"].nodes
    for nid in ("book_asap", "book_morning", "book_afternoon", "book_other_number"):
        offer = nodes[nodes[nid].failed]  # type: ignore[union-attr,index]
        assert offer.type == "menu"
        assert nodes[offer.keys["1"]].type == "message"  # type: ignore[union-attr]
