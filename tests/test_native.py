"""The compiled build (mypyc) and its guard: used only while it matches the sources, same decisions as pure Python.

The guard is tried on copies of the packages in a temporary folder, imported
in a fresh interpreter: no build, a build made stale by an edit, a file
missing, a build for another Python, ``FRONTDESK_PURE=1``, the SIP core
imported before the engine. The compiled and pure runs of the same seeded
simulations are compared event by event, the SIP core's answers to a seeded
corpus of valid and mutated datagrams byte by byte, and an engine pickled
mid-run (cluster mode checkpoints it) must go on deciding as the original.
Where this machine has no current build, the tests that need one are
skipped with the reason (``make native`` builds it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.native import engine_is_compiled, pickle_check, sip_is_compiled

from queueing import native, native_status
from queueing.engine import Engine
from queueing.model import Model
from queueing.pickling import attributes

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "native"
PROBE = "import json, queueing, queueing.engine as e; print(json.dumps([queueing.native_status(), e.__file__]))"
# the SIP core first: importing ivr runs the guard before any of its compiled modules is looked up
SIP_PROBE = "import json, ivr.sip.message as m, queueing; print(json.dumps([queueing.native_status(), m.__file__]))"


def _env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FRONTDESK_PURE"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _current_build() -> bool:
    saved = os.environ.pop("FRONTDESK_PURE", None)
    try:
        return native.check(BUILD, ROOT)[0] is not None
    finally:
        if saved is not None:
            os.environ["FRONTDESK_PURE"] = saved


needs_build = pytest.mark.skipif(not _current_build(), reason=f"no current compiled build ({native.check()[1]})")


def _copy_packages(to: Path, *, with_build: bool = False) -> Path:
    for package in ("queueing", "sim", "ivr"):
        shutil.copytree(ROOT / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    if with_build:
        shutil.copytree(BUILD, to / "build" / "native", ignore=shutil.ignore_patterns("work", "*.log"))
    return to


def _probe(where: Path, probe: str = PROBE, **env: str | None) -> tuple[str, str, str]:
    """(status, the file queueing.engine (or the probe's module) came from, stderr) of a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=where,
        env=_env(PYTHONPATH=str(where), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status, origin = json.loads(done.stdout)
    return status, origin, done.stderr


def _native_lines(stdout: str) -> list[str]:
    """What the mypyc step said (the build step runs others, with their own lines)."""
    return [line for line in stdout.splitlines() if line.startswith("native build: ")]


def _fake_manifest(root: Path, **changes: Any) -> None:
    """A build of queueing.engine "made" from its source as it is now, with a binary that is no extension at all."""
    lib = root / "build" / "native" / "lib" / "queueing"
    lib.mkdir(parents=True)
    binary = lib / "engine.so"
    binary.write_text("not an extension: loading it would fail the import\n")
    manifest = {
        "format": native.FORMAT,
        "tag": native.build_tag(),
        "modules": {
            "queueing.engine": {
                "source": "queueing/engine.py",
                "sha256": native.source_digest(root / "queueing" / "engine.py"),
                "binary": "lib/queueing/engine.so",
            }
        },
        "support": {},
    }
    manifest.update(changes)
    (root / "build" / "native" / native.MANIFEST).write_text(json.dumps(manifest))


# ---------------------------------------------------------------- the guard


def test_without_a_build_the_sources_run_and_nothing_is_said(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path)
    status, origin, err = _probe(root)
    assert status == "pure (no compiled build; make native makes one)"
    assert origin == str(root / "queueing" / "engine.py")
    assert err == ""


def test_a_source_edited_after_the_build_is_imported_pure_with_one_warning(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path)
    _fake_manifest(root)
    with (root / "queueing" / "engine.py").open("a") as f:
        f.write("# edited after the build\n")
    status, origin, err = _probe(root)
    assert status == "pure (queueing/engine.py changed since the build; rebuild with make native)"
    assert origin == str(root / "queueing" / "engine.py")  # the bogus binary was never loaded
    assert err.splitlines() == [
        "frontdesk: running pure Python: queueing/engine.py changed since the build; rebuild with make native"
    ]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"tag": "cpython-39-x86_64-linux-gnu.so"}, "another Python"),
        ({"format": 0}, "older build step"),
        ({"modules": "garbage"}, "malformed"),
    ],
)
def test_a_build_that_does_not_fit_is_not_used(tmp_path: Path, change: dict[str, Any], says: str) -> None:
    root = _copy_packages(tmp_path)
    _fake_manifest(root, **change)
    status, origin, err = _probe(root)
    assert status.startswith("pure (") and says in status and "rebuild with make native" in status
    assert origin.endswith(".py")
    assert len(err.splitlines()) == 1 and "rebuild with make native" in err


def test_a_missing_compiled_file_is_not_used(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path)
    _fake_manifest(root)
    (root / "build" / "native" / "lib" / "queueing" / "engine.so").unlink()
    status, origin, _ = _probe(root)
    assert status == "pure (compiled files missing: lib/queueing/engine.so; rebuild with make native)"
    assert origin.endswith(".py")


def test_an_unreadable_manifest_is_not_used(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path)
    (root / "build" / "native").mkdir(parents=True)
    (root / "build" / "native" / native.MANIFEST).write_text("{not json")
    status, origin, err = _probe(root)
    assert status.startswith("pure (unreadable ") and origin.endswith(".py") and "rebuild with make native" in err


@needs_build
def test_the_real_build_is_served_until_one_source_changes(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path, with_build=True)
    status, origin, err = _probe(root)
    assert status.startswith("compiled (")
    assert origin.startswith(str(root / "build" / "native" / "lib")) and not origin.endswith(".py")
    assert err == ""
    forced, origin, err = _probe(root, FRONTDESK_PURE="1")
    assert (forced, err) == ("pure (FRONTDESK_PURE is set)", "")
    assert origin == str(root / "queueing" / "engine.py")
    # a simulator module, not the engine: the whole build goes (compiled modules call each other natively)
    with (root / "sim" / "simulation.py").open("a") as f:
        f.write("# edited after the build\n")
    status, origin, err = _probe(root)
    assert status == "pure (sim/simulation.py changed since the build; rebuild with make native)"
    assert origin == str(root / "queueing" / "engine.py")
    assert len(err.splitlines()) == 1 and "rebuild with make native" in err


@needs_build
def test_the_sip_core_is_served_compiled_even_when_imported_first(tmp_path: Path) -> None:
    root = _copy_packages(tmp_path, with_build=True)
    status, origin, err = _probe(root, SIP_PROBE)
    assert status.startswith("compiled (") and err == ""
    assert origin.startswith(str(root / "build" / "native" / "lib" / "ivr" / "sip")) and not origin.endswith(".py")
    # one SIP module edited: nothing compiled is served, the engine neither
    with (root / "ivr" / "sip" / "transaction.py").open("a") as f:
        f.write("# edited after the build\n")
    status, origin, err = _probe(root, SIP_PROBE)
    assert status == "pure (ivr/sip/transaction.py changed since the build; rebuild with make native)"
    assert origin == str(root / "ivr" / "sip" / "message.py")
    assert len(err.splitlines()) == 1
    status, origin, _ = _probe(root)
    assert status.startswith("pure (") and origin == str(root / "queueing" / "engine.py")


def test_the_build_without_a_compiler_says_so_and_succeeds(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_native.py"), "--build-dir", str(tmp_path / "native")],
        env=_env(PATH=str(tmp_path)),  # no gcc, no cc
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    said = _native_lines(done.stdout)
    assert len(said) == 1 and said[0].startswith("native build: skipped: ")
    assert "the pure-Python modules are used" in said[0]
    assert not (tmp_path / "native" / native.MANIFEST).exists()


@needs_build
def test_the_build_stops_at_once_when_nothing_changed() -> None:
    before = (BUILD / native.MANIFEST).stat().st_mtime_ns
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_native.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    said = _native_lines(done.stdout)
    assert len(said) == 1 and said[0].startswith("native build: up to date (")
    assert (BUILD / native.MANIFEST).stat().st_mtime_ns == before


# ------------------------------------------------------- same decisions either way


def test_this_process_runs_what_the_status_says() -> None:
    assert engine_is_compiled() == native_status().startswith("compiled")
    assert sip_is_compiled() == native_status().startswith("compiled")


def _both_modes(*args: str, **env: str) -> dict[str, Any]:
    """``python -m support.native ARGS``'s report, compiled and with FRONTDESK_PURE=1, by mode."""
    reports = {}
    for mode, extra in (("compiled", {}), ("pure", {"FRONTDESK_PURE": "1"})):
        done = subprocess.run(
            [sys.executable, "-m", "support.native", *args],
            cwd=TESTS,
            env=_env(**env, **extra),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        reports[mode] = json.loads(done.stdout)
    return reports


@needs_build
def test_compiled_and_pure_sip_cores_answer_the_same() -> None:
    """Every datagram of a seeded corpus (valid calls and mutations of them): parsed, answered, sent, counted; the
    same datagrams through flood control; RTP streams paced, played to, spoken to and recorded; the demo IVR's flow
    walked by seeded random callers."""
    reports = _both_modes("sip", PYTHONHASHSEED="0")
    compiled, pure = reports["compiled"]["sip"], reports["pure"]["sip"]
    assert compiled.pop("sip_compiled") and not pure.pop("sip_compiled")
    assert reports["compiled"]["status"].startswith("compiled (")
    assert pure["datagrams"] > 4_000 and 0 < pure["refused_by_parser"] < pure["datagrams"]
    assert pure["conversation"]["answered"] > 50 and pure["conversation"]["datagrams_sent"] > 5_000
    assert pure["fuzz"]["ok"] and pure["fuzz"]["calls"] > 100
    assert set(pure["admission"]["verdicts"]) == {"ADMIT", "DROP", "BLOCKED", "REFUSE"}  # flood control, every way
    assert pure["media"]["counts"].startswith("(252, 600, 48, [('source', ")  # voice, keys, junk, a stranger
    assert pure["flow"]["steps"] > 2_000 and 100 < pure["flow"]["finished"] < pure["flow"]["calls"]
    assert compiled == pure


@pytest.mark.slow
@needs_build
def test_compiled_and_pure_simulations_decide_the_same() -> None:
    reports = _both_modes()
    compiled, pure = reports["compiled"], reports["pure"]
    assert compiled["engine_compiled"] and compiled["status"].startswith("compiled (")
    assert not pure["engine_compiled"] and pure["status"] == "pure (FRONTDESK_PURE is set)"
    assert all(run["events"] > 5_000 for run in pure["runs"].values())
    assert compiled["runs"] == pure["runs"]
    assert compiled["pickle"] == pure["pickle"]
    assert pure["pickle"]["events_decided_differently"] == 0


# ----------------------------------------------------------------- pickling


@pytest.mark.parametrize(("scenario", "seed", "at"), [("fault_surge.yaml", 3, 0.5), ("weekday.yaml", 5, 0.3)])
def test_an_engine_pickled_mid_run_decides_as_the_original(scenario: str, seed: int, at: float) -> None:
    """Whatever build runs here (``make test`` compiles it): the copy decides as the original, event by event."""
    check = pickle_check(scenario, seed, at)
    assert check["calls_at_split"] > 0  # mid-run: callers in line or talking, timers armed
    assert check["next_timer_kept"]
    assert check["events_after"] > 1_000 and check["decisions_after"] > 1_000
    assert check["events_decided_differently"] == 0
    assert check["same_snapshot"] and check["same_stats"]


def test_an_engine_pickles_every_attribute() -> None:
    engine = Engine(Model(queues=(), agents=()))
    names = attributes(engine)
    assert {"model", "calls", "_timers", "_lines", "_surge"} <= set(names)
    if not engine_is_compiled():
        assert set(names) == set(vars(engine))
