"""The server's life after start-up: serve until a signal, drain on SIGTERM, stop.

``serve(app, config)`` takes the place of aiohttp's ``web.run_app``, whose
SIGTERM and SIGINT stop everything at once. Here:

- **SIGTERM drains** (:class:`Drain`): the SIP user agent answers OPTIONS
  and new INVITEs with 503 and ``Retry-After`` (a proxy in front takes the
  node out of its rotation and tries its next node), in a cluster
  REGISTERs too; in-dialog requests, the calls in progress and the callers
  waiting in line go on, rung to agents as before; ``/healthz`` answers 503
  ``draining`` so that an HTTP load balancer takes the node out as well; the
  callback dispatcher gives out no new callback. Once no call is left, or
  ``shutdown.drain_seconds`` after the signal, the calls still up are hung
  up (BYE, counted in ``frontdesk_drain_calls_ended_total``); a drain lasts
  ``shutdown.drain_min_seconds`` at least, so that the proxy's next probe
  sees the 503 before the listeners close (a node that went at once would
  leave the proxy sending it new calls until a probe timed out). Then the
  runtime stops as it always did (the SIP listeners first; a cluster node
  gives back the timekeeper's lease and leaves, ``ClusterLog.stop``). The
  process exits 0.
- **SIGINT, or a second SIGTERM during a drain, stops at once**: the calls
  still up are hung up now, then the same stop.

A signal during start-up stops the start and the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ivr.settings.config import Config
from ivr.sip.ua import Outcome, UserAgent
from ivr.transport.sip import SipShell

log = logging.getLogger(__name__)

BYE_GRACE = 2.0  # seconds the drain's BYEs (and the ACKs they wait for) get before the listeners close


class Drain:
    """One server's drain: its state for ``/healthz`` and ``/metrics``, and :meth:`run`, which carries it out."""

    def __init__(
        self,
        ua: UserAgent,
        shell: SipShell,
        *,
        refuse_register: bool,
        on_start: Callable[[], object] = lambda: None,
    ) -> None:
        self.ua = ua
        self.shell = shell
        self.refuse_register = refuse_register
        self.on_start = on_start  # what else stops taking new work (the callback dispatcher)
        self.ended_by_limit = 0  # calls hung up because the limit came (or a second signal)
        self._hurry = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.ua.draining

    def calls_left(self) -> int:
        """Calls in progress: to us (callers, waiting or talking) and placed by us (agents' rings, callback legs)."""
        return len(self.ua.calls) + len(self.ua.out_calls)

    def hurry(self) -> None:
        """Stop waiting: the calls still up are hung up now."""
        self._hurry.set()

    async def run(self, limit: float, at_least: float = 0.0) -> None:
        """Take no new call, wait up to ``limit`` seconds for the calls in progress to end, hang up the rest.

        The drain lasts ``at_least`` seconds even when no call is left (unless hurried): a proxy that probes
        with OPTIONS, or a load balancer that polls ``/healthz``, sees the 503 and sends nothing new before the
        listeners close.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        if not self.draining:
            self.ua.drain(refuse_register=self.refuse_register)
            self.on_start()
            log.info(
                "draining: %d call(s) in progress; new calls%s get 503; waiting up to %g s for them to end",
                self.calls_left(),
                " and REGISTERs" if self.refuse_register else "",
                limit,
            )
        deadline = start + limit
        while self.calls_left() and not self._hurry.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), min(0.1, remaining))
        left = self.calls_left()
        if left:
            why = "a stop at once (SIGINT or a second SIGTERM)" if self._hurry.is_set() else f"the {limit:g} s limit"
            log.warning("drain: %d call(s) still up at %s: hanging up", left, why)
            self._end_calls(loop.time())
            self.ended_by_limit += left
            grace = loop.time() + BYE_GRACE
            while self.calls_left() and loop.time() < grace:
                await asyncio.sleep(0.05)  # an answer not yet acknowledged gets its BYE after the ACK
        if not self._hurry.is_set() and (linger := start + at_least - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), linger)
        log.info(
            "drain done after %.1f s: %d call(s) hung up by the drain, %d left; stopping",
            loop.time() - start,
            left,
            self.calls_left(),
        )

    def _end_calls(self, now: float) -> None:
        ua = self.ua
        for call in list(ua.calls.values()):
            ua.hangup(call, now, Outcome.COMPLETED)  # BYE (480 to one still ringing)
        self.shell.pump()  # the router closes their media and takes them out of line; agents' legs go with them
        for out in list(ua.out_calls.values()):
            if not out.ended:
                ua.drop(out, now)  # BYE, or CANCEL while it rings
        self.shell.pump()


class DrainCollector(Collector):
    """``frontdesk_draining``, ``frontdesk_drain_calls_left`` and ``frontdesk_drain_calls_ended_total``."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def collect(self) -> Iterator[Metric]:
        drain = self.drain
        yield GaugeMetricFamily(
            "frontdesk_draining", "1 while the server drains (after SIGTERM): no new call taken", drain.draining
        )
        yield GaugeMetricFamily(
            "frontdesk_drain_calls_left",
            "Calls in progress while the server drains (0 when it does not)",
            drain.calls_left() if drain.draining else 0,
        )
        yield CounterMetricFamily(
            "frontdesk_drain_calls_ended",
            "Calls the server hung up at the end of a drain (its limit, or a second signal)",
            drain.ended_by_limit,
        )


DRAIN = web.AppKey("drain", Drain)


async def serve(app: web.Application, config: Config) -> int:
    """Run ``app`` on ``config.http`` until SIGTERM (drain, then stop) or SIGINT (stop at once); 0 when stopped."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    runner = web.AppRunner(app, handle_signals=False)
    try:
        started = asyncio.create_task(_start(runner, config), name="start-up")
        first = asyncio.create_task(signals.get(), name="signals")
        await asyncio.wait({started, first}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            log.info("%s during start-up: stopping", first.result().name)
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started
            return 0
        started.result()  # start-up failed: its error, as before
        sig = await first
        drain = app[DRAIN]
        if sig is signal.SIGTERM:
            log.info("SIGTERM: draining (a second SIGTERM or a SIGINT stops at once)")
            limit, at_least = config.shutdown.drain_seconds, config.shutdown.drain_min_seconds
        else:
            log.info("SIGINT: stopping at once")
            drain.hurry()
            limit = at_least = 0.0
        draining = asyncio.create_task(drain.run(limit, at_least), name="drain")
        while not draining.done():
            more = asyncio.create_task(signals.get())
            await asyncio.wait({draining, more}, return_when=asyncio.FIRST_COMPLETED)
            if more.done():
                log.info("%s during the drain: stopping at once", more.result().name)
                drain.hurry()
            else:
                more.cancel()
        draining.result()
        return 0
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _start(runner: web.AppRunner, config: Config) -> None:
    await runner.setup()  # the runtime (ivr/web/app.py) is built here
    await web.TCPSite(runner, config.http.listen, config.http.port).start()


__all__ = ["DRAIN", "Drain", "DrainCollector", "serve"]
