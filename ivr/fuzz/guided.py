"""A coverage-guided fuzz run with atheris (libFuzzer for Python): ``python -m ivr.fuzz.guided -runs=N``.

Where ``frontdesk bench-fuzz`` mutates valid datagrams at random, libFuzzer keeps the inputs that reach new
branches of the parser and the user agent and mutates those. Each input goes to a user agent that holds a
live call (ivr/fuzz/run.py's driver), as one datagram from the caller, over UDP or TCP by its first byte;
then the virtual clock runs half a second, firing timers. An exception out of the user agent or the router
is a crash (libFuzzer stops and writes the input to ``crash-*``). Every ``DRAIN_EVERY`` inputs the clock
runs past every timer, and state left then is a crash too. Without a corpus folder the run starts from the
valid datagrams of one call (ivr/fuzz/mutate.py), written to a temporary folder. The other arguments are
libFuzzer's (``-runs``, ``-max_total_time``); atheris is a test dependency, not the server's.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

DRAIN_EVERY = 500
# the server's modules are imported inside atheris.instrument_imports (in main), so that only they are
# instrumented: instrumenting everything loaded takes minutes


class GuidedTarget:
    """The user agent with a call in progress, fed one libFuzzer input at a time."""

    def __init__(self) -> None:
        from ivr.fuzz.run import FuzzDriver

        self.driver = FuzzDriver(seed=0)
        self.inputs = 0
        self._new_call()

    def _new_call(self) -> None:
        from ivr.fuzz.mutate import Dialog

        d = self.driver
        dialog = d.dialogs[d.callers] = Dialog(d.callers)
        d.callers += 1
        d._deliver(dialog.invite(), ("udp", "127.0.0.1", dialog.port), mutated=False)
        d._deliver(dialog.ack(), ("udp", "127.0.0.1", dialog.port), mutated=False)
        self.dialog = dialog

    def feed(self, data: bytes) -> None:
        d = self.driver
        transport = "tcp" if data[:1] == b"\x01" else "udp"
        d._deliver(data[1:] if transport == "tcp" else data, (transport, "127.0.0.1", self.dialog.port), mutated=True)
        d.advance(d.now + 0.5)
        self.inputs += 1
        if d.report.escapes:
            kind = next(iter(d.report.escapes))
            raise AssertionError(f"escaped: {kind}\n{d.report.tracebacks[kind]}")
        if self.inputs % DRAIN_EVERY == 0:
            report = d.finish()
            left = {k: v for k, v in report.leftover.items() if v}
            if left:
                raise AssertionError(f"state left once the timers have run: {left}")
        if self.inputs % 16 == 0:
            self._new_call()  # the router hangs calls up: keep one in progress


def seed_corpus(folder: Path) -> None:
    """The valid datagrams of one call, one file each, for libFuzzer to start from."""
    from ivr.fuzz.mutate import Dialog, response_to
    from ivr.sip.message import Request, parse_message

    rng = random.Random(0)
    d = Dialog(0, to_tag="ab12")
    seeds = [d.invite(), d.ack(), d.bye(), d.cancel(), d.info(rng), d.options(), d.reinvite(), d.register("x.1.y", rng)]
    bye = parse_message(d.bye())
    assert isinstance(bye, Request)
    seeds.append(response_to(bye, 200))
    for i, data in enumerate(seeds):
        (folder / f"seed-{i}").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    import atheris  # a test dependency: imported only when a guided run is asked for

    with atheris.instrument_imports(include=["ivr"]):
        import ivr.calls.router
        import ivr.fuzz.mutate
        import ivr.fuzz.run
        import ivr.media.dtmf
        import ivr.sip.ua  # noqa: F401 - imported to be instrumented
    target = GuidedTarget()

    def one_input(data: bytes) -> None:
        target.feed(data)

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(not a.startswith("-") for a in args):
        corpus = Path(tempfile.mkdtemp(prefix="frontdesk-fuzz-"))
        seed_corpus(corpus)
        args.append(str(corpus))
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()  # libFuzzer exits the process when it is done
    return 0


if __name__ == "__main__":
    sys.exit(main())
