"""The cluster's shared log on Redis: every node appends its queue events to one stream and applies all of it.

Theory of operation
-------------------
Keys (``name`` is ``cluster.name``): ``name:log`` the stream, ``name:lease``
the timekeeper lease, ``name:epoch`` its epoch counter, ``name:node:ID`` a
node's heartbeat, ``name:nodes`` the set of nodes seen, ``name:checkpoint``
a hash (``id``, ``fingerprint``, ``state``, ``mac``, ``trimmed``) of the latest checkpoint.

* **Writer** (one task): :meth:`ClusterLog.submit` puts the encoded event
  (ivr/cluster/wire.py) at the end of a queue and returns; the writer
  ``XADD``\\ s the queue's head in order, several at once in one pipeline when
  they piled up. While Redis is unreachable it retries the same head with
  backoff, so nothing is reordered; past :data:`MAX_QUEUED` submissions new
  ones are dropped and counted. An append retried after a connection cut
  may land twice (at least once): every replica applies the duplicate the
  same way (the engine ignores stale call input and refuses the rest alike).
  A refusal that means "not now" (``NOREPLICAS`` under
  ``min-replicas-to-write``, ``READONLY`` from a master Sentinel demoted,
  ``LOADING``, ``MASTERDOWN``, ``TRYAGAIN``) is retried the same way; any
  other refusal drops that entry, logged and counted.
* **Reader** (one task): ``XREAD BLOCK`` from the last entry applied; each
  entry is decoded and applied to :attr:`ClusterLog.coordinator` in stream
  order, then ``on_applied`` runs. A malformed entry is counted and skipped,
  the same on every node. :meth:`ClusterLog.request` waits for its own
  entry's result. The time from each ``submit()``/``request()`` to this
  node's replica applying that entry (the round trip through Redis that a
  queue decision pays here over a single node) goes into a histogram of
  fixed buckets in :class:`LogStats`.
* **Heartbeat** (one task, every ``heartbeat``): ``SET name:node:ID PX
  node_timeout`` and ``SADD name:nodes``; renew or try to take the lease
  (ivr/cluster/scripts.py). The lease holder is the **timekeeper**: it arms
  ``loop.call_at`` for the replica's ``next_timer()`` and appends
  ``TimerFired`` when it is due (one at a time: the next is armed once that
  one is applied), appends ``NodeLost`` once for a node in ``name:nodes``
  whose heartbeat key is gone (the script removes it from the set in the
  same step), and writes checkpoints. All three are fenced by the lease
  token. A holder that could not renew in time drops the role on its own
  clock before Redis expires the key, so a new holder never overlaps one
  that still believes it holds the lease.
* **Checkpoints** (one task): every :data:`CHECKPOINT_SECONDS` or
  :data:`CHECKPOINT_ENTRIES` entries, the timekeeper stores ``pickle`` of its
  Coordinator with the id of the last entry applied, and trims the stream
  (``XTRIM MINID``) to the *previous* checkpoint's id: a node a few entries
  behind the timekeeper (the usual case under load) still finds its next
  entries, and the log holds one to two checkpoint intervals. A node that
  starts loads the checkpoint (refusing one whose model fingerprint differs
  from its own, naming the difference) and replays the entries after it
  without ``on_applied``, then appends ``NodeJoined``. The checkpoint also
  keeps the newest entry id ever trimmed (``trimmed``): a reader behind it
  fell behind the trimmed part, so it reloads the checkpoint and goes on
  from there (the entries it skipped get no ``on_applied``).
* **Signed checkpoints**: ``mac`` is HMAC-SHA256, keyed with the cluster's
  secret (``cluster.secret``), over the id, the fingerprint and the pickled
  state. A node checks it with ``hmac.compare_digest`` *before* it unpickles
  anything: a checkpoint without a ``mac`` or with a wrong one is refused
  (one log line and a count per checkpoint seen) and the node goes on as
  if there were none. The timekeeper's next checkpoint replaces a refused
  one (without trimming the log before it) whatever id the refused one claims.

* **Degraded** (docs/cluster.md, "Redis down or restarted empty"): after
  heartbeats failed for ``node_timeout`` the node applies ``Isolated`` and
  then its own events to its own replica at once (``_local_event``), with
  the engine's timers on its own loop; the reader stops.
* **Generations**: when Redis answers again (or lost its data, or the log
  went backwards) a node opens a new generation (``name:generation``,
  ``name:gen:N``); every node cancels its rings (``on_settle``), writes its
  ``NodePart`` there and holds its new submissions; the timekeeper seals it
  by appending one ``Rebuild`` entry, which every replica applies alike;
  then the held submissions are appended and ``on_rebuilt`` runs.

Redis errors at run time are logged once per outage (and once when it ends)
and retried with backoff; they never end a task. A cancel that lands while
redis-py is inside a command can be swallowed by it, so every loop checks
``Task.cancelling()`` itself and :meth:`ClusterLog.stop` cuts the
connections under a task that does not end.

The module is long because its four tasks (and the degraded mode and the
generations, which take the replica over from them) share one replica, one queue of
submissions and one lease token, and the order of their effects is the
point (apply, then re-arm the timer; check the token and append in one
step); split apart they would pass that state back and forth.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import logging
import pickle
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from ivr.cluster import scripts
from ivr.cluster.connect import redis_client
from ivr.cluster.coordinator import (
    Applied,
    ClusterEvent,
    Coordinator,
    Isolated,
    NodeJoined,
    NodeLost,
    NodePart,
    Rebuild,
    model_differences,
)
from ivr.cluster.wire import WireError, decode, encode, part_from_json, part_to_json
from ivr.settings.cluster import ClusterSettings
from queueing.events import Event, TimerFired

log = logging.getLogger(__name__)

MAX_QUEUED = 100_000  # submissions held while Redis is away; beyond, new ones are dropped and counted
BATCH = 500  # entries per XADD pipeline and per XREAD
APPLY_CHUNK = 32  # entries applied in one go before the loop runs other tasks
CHECKPOINT_SECONDS = 10.0
CHECKPOINT_ENTRIES = 5_000
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0  # seconds between retries while Redis is unreachable
_READ_BLOCK_MS = 1000
JOIN_TIMEOUT = 10.0  # seconds start() waits for this node's NodeJoined to come back applied
_STOP_FLUSH = 2.0  # seconds stop() waits for queued submissions to be appended

# upper bounds (seconds) of the decision-latency histogram's buckets; one more bucket counts the rest (+Inf)
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)

Fields = dict[bytes | str, bytes | str]
OnApplied = Callable[[str, str, Event | ClusterEvent, Applied], None]
RESIGN_BEATS = 3  # heartbeats a node that resigned the lease leaves it to the others
_TRANSIENT = (RedisError, OSError)  # ResponseError (a command refused) is caught before these where it matters
# refusals that say "not now" rather than "never": the writer retries them like a lost connection, in order
_NOT_NOW = ("NOREPLICAS", "MASTERDOWN", "TRYAGAIN", "LOADING")  # min-replicas-to-write, a failover, a restart


def _not_now(exc: object) -> bool:
    """Whether a refused command may succeed later as it is (a replica back, a new master): never to be dropped."""
    if isinstance(exc, ReadOnlyError):  # a master demoted by Sentinel: the next connection finds the new one
        return True
    return isinstance(exc, ResponseError) and str(exc).split(" ", 1)[0] in _NOT_NOW


def checkpoint_mac(key: bytes, entry_id: str, fingerprint: str, state: bytes) -> bytes:
    """HMAC-SHA256 (hex) of a checkpoint: its entry id, model fingerprint and pickled state, each delimited."""
    mac = hmac.new(key, b"frontdesk checkpoint v1\n", hashlib.sha256)
    for part in (entry_id.encode(), fingerprint.encode()):
        mac.update(b"%d:" % len(part) + part)
    mac.update(b"%d:" % len(state))
    mac.update(state)
    return mac.hexdigest().encode()


class ClusterLogError(RuntimeError):
    """The cluster's log cannot be used: Redis unreachable at start, a checkpoint of another model, stopped."""


@dataclass(slots=True)
class LogStats:
    """Counters for metrics; read them, never write them."""

    appends: int = 0  # entries this node appended
    append_errors: int = 0  # failed attempts to append (retried unless Redis refused the entry)
    dropped: int = 0  # submissions dropped: MAX_QUEUED were already waiting
    queued: int = 0  # submissions waiting to be appended now
    applied: int = 0  # entries applied live
    replayed: int = 0  # entries applied at start-up, after the checkpoint (no on_applied)
    malformed: int = 0  # entries skipped as malformed (the same on every node)
    apply_errors: int = 0  # entries whose apply or on_applied raised (logged)
    lag_last: float = 0.0  # seconds from the last entry's own time to its apply here
    lag_max: float = 0.0
    lag_sum: float = 0.0  # over `applied` entries
    lease_acquired: int = 0
    lease_lost: int = 0
    timers: int = 0  # TimerFired entries this node appended as timekeeper
    nodes_lost: int = 0  # NodeLost entries this node appended as timekeeper
    checkpoints_written: int = 0
    checkpoints_loaded: int = 0
    checkpoints_refused: int = 0  # checkpoints not loaded: unsigned or signed with another key (never unpickled)
    outages: int = 0  # times Redis became unreachable
    degraded_periods: int = 0  # times this node went degraded (deciding alone while Redis failed)
    rejoins: int = 0  # generations this node rejoined (Rebuild entries applied after taking part)
    generations_started: int = 0  # new generations this node opened
    local_applied: int = 0  # events applied locally while degraded
    # the decision latency: submit()/request() of an event here to this node's replica applying its entry
    decision_counts: list[int] = field(default_factory=lambda: [0] * (len(DECISION_BUCKETS) + 1))  # per bucket
    decision_sum: float = 0.0  # seconds, over every event counted

    @property
    def decision_buckets(self) -> tuple[float, ...]:
        """Upper bounds (seconds) of :attr:`decision_counts` but its last (+Inf)."""
        return DECISION_BUCKETS

    @property
    def decision_count(self) -> int:
        return sum(self.decision_counts)

    def decided(self, seconds: float) -> None:
        """Count one event's round trip (one bisect over the fixed buckets)."""
        self.decision_counts[bisect.bisect_left(DECISION_BUCKETS, seconds)] += 1
        self.decision_sum += seconds


@dataclass(slots=True)
class _Append:
    fields: Fields
    fenced: bool = False  # the timekeeper's: only while the lease holds its token
    applied: asyncio.Future[Applied] | None = None  # request(): resolved once this node applied the entry
    on_done: Callable[[str | None], None] | None = None  # fenced: called with the entry id, or None if refused
    submitted: float = 0.0  # time.monotonic() at submit()/request(); 0 for the timekeeper's own appends


def _honour_cancel() -> None:
    """Raise CancelledError if this task was cancelled: redis-py can swallow a cancel that lands mid-command."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _older(a: str, b: str) -> bool:
    """Stream id ``a`` comes before ``b``."""
    am, _, asq = a.partition("-")
    bm, _, bsq = b.partition("-")
    return (int(am), int(asq or 0)) < (int(bm), int(bsq or 0))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class ClusterLog:
    """One node's end of the shared log: its writer, reader, heartbeat and (when it holds the lease) timekeeper."""

    def __init__(
        self,
        settings: ClusterSettings,
        coordinator_factory: Callable[[], Coordinator],
        on_applied: OnApplied,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.redis_url is None or settings.node_id is None:
            raise ValueError("a cluster log needs cluster.redis_url and cluster.node_id")
        if not settings.key:
            raise ValueError("a cluster log needs cluster.secret (it signs the checkpoints)")
        self._key = settings.key
        self.settings = settings
        self.node: str = settings.node_id
        self._url: str = settings.redis_url
        # what log lines name: the URL (its password masked), or the Sentinel master and the sentinels asked
        self._where = (
            redacted(self._url)
            if not settings.sentinels
            else f"master {settings.sentinel_master!r} of sentinels {', '.join(settings.sentinels)}"
        )
        self.coordinator: Coordinator = coordinator_factory()
        self._fingerprint = self.coordinator.fingerprint()
        self._on_applied = on_applied
        self._clock = clock
        self.is_timekeeper = False
        self.stats = LogStats()
        p = settings.name
        self.keys = {
            "generation": f"{p}:generation",
            "gen": f"{p}:gen:",  # + generation: its hash (start, opened, sealed, part:NODE)
            "log": f"{p}:log",
            "lease": f"{p}:lease",
            "epoch": f"{p}:epoch",
            "nodes": f"{p}:nodes",
            "checkpoint": f"{p}:checkpoint",
        }
        self.heartbeat_key = self.node_key(self.node)
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._last_id = "0-0"
        self._queue: deque[_Append] = deque()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._dropping = False
        self._waiters: dict[str, asyncio.Future[Applied]] = {}
        self._early: dict[str, Applied] = {}  # own entries applied before their XADD's answer came back
        self._unresolved = 0  # request() entries whose id is not known yet
        self._sent: dict[str, float] = {}  # own entry id -> when it was submitted, until applied here
        self._applied_first: dict[str, float] = {}  # own entries applied before their XADD's answer came back
        self._tasks: list[asyncio.Task[None]] = []
        self._token: str | None = None
        self._lease_until = 0.0  # loop time by which the lease must be renewed to still count as ours
        self._lease_timer: asyncio.TimerHandle | None = None  # drops the role at _lease_until
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._tick_busy = False  # a TimerFired is on its way; the next is armed once it is applied
        self._tick_after: str | None = None  # ... that is, once the reader is past this id
        self._last_tick = float("-inf")
        self._since_checkpoint = 0
        self._checkpoint_wanted = asyncio.Event()
        self._outage_since: float | None = None
        self._stopping = False
        self._resigned_beats = 0  # after resign(): heartbeats left before this node may take the lease again
        self._refused_checkpoint: tuple[str, bytes] | None = None  # (id, mac) of the last checkpoint refused here
        # Redis down or restarted empty (docs/cluster.md): degraded, then a new generation
        self.degraded = False  # Redis failed for node_timeout: this node decides alone, on its own replica
        self.on_settle: Callable[[], None] | None = None  # cancel this node's rings before it contributes its part
        self.on_rebuilt: Callable[[bool], None] | None = None  # after a Rebuild (True: this node's part was in it)
        self._inflight: dict[str, _Append] = {}  # own entries appended, not applied here yet
        self._failing_since: float | None = None  # monotonic time of the first heartbeat failure in a row
        self._writing = False  # the writer is inside a Redis command with the queue's head
        self._local: deque[tuple[Event | ClusterEvent, asyncio.Future[Applied] | None]] = deque()
        self._local_busy = False
        self._local_count = 0
        self._local_timer: asyncio.TimerHandle | None = None
        self._joining: int | None = None  # the generation this node took part in, until its Rebuild is applied
        self._joined_at = 0.0
        self._held: deque[_Append] = deque()  # submissions while joining: appended after the Rebuild

    def node_key(self, node: str) -> str:
        return f"{self.settings.name}:node:{node}"

    @property
    def last_id(self) -> str:
        """Id of the last entry applied to this node's replica."""
        return self._last_id

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, load the checkpoint and replay the log after it, append NodeJoined, start the tasks (once)."""
        settings = self.settings
        client = redis_client(settings, read_block_ms=_READ_BLOCK_MS)  # redis_url, or the master Sentinel names
        try:
            await client.ping()
        except _TRANSIENT as exc:
            await client.aclose()
            raise ClusterLogError(f"cannot reach the cluster's Redis at {self._where}: {exc}") from None
        self._redis = client
        self._scripts = {
            name: client.register_script(getattr(scripts, name.upper()))
            for name in (
                "acquire",
                "renew",
                "release",
                "append",
                "node_lost",
                "checkpoint",
                "start_generation",
                "take_part",
                "seal",
            )
        }
        try:
            await client.set(self.keys["generation"], 0, nx=True)  # gone later: Redis lost its data
            await self._load_checkpoint(at_start=True)
            await self._replay()
            await self._beat()
        except ClusterLogError:
            await self._close()
            raise
        except _TRANSIENT as exc:
            await self._close()
            raise ClusterLogError(f"the cluster's Redis at {self._where} failed at start: {exc}") from None
        for loop_fn in (self._write_loop, self._read_loop, self._beat_loop, self._checkpoint_loop):
            self._tasks.append(asyncio.create_task(loop_fn(), name=f"cluster-{loop_fn.__name__}"))
        try:
            await asyncio.wait_for(self.request(NodeJoined(node=self.node, now=self._clock())), JOIN_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise ClusterLogError(
                f"the cluster's Redis at {self._where} did not take this node's NodeJoined within {JOIN_TIMEOUT:g} s"
            ) from None

    async def resign(self) -> bool:
        """Give the timekeeper's lease to another node now, staying in the cluster (a node that starts draining).

        The timers, lost nodes, checkpoints and callbacks then go on at the
        next node's heartbeat instead of waiting for this one to leave. This
        node does not try to take the lease again for a few heartbeats; if no
        other node took it by then (none is left), it takes it back, so a lone
        node's timers never stop. Returns whether it held the lease.
        """
        token = self._token
        if token is None or self._redis is None:
            return False
        self._resigned_beats = RESIGN_BEATS
        self._lose_lease("handed over: this node is draining")
        try:
            async with asyncio.timeout(max(1.0, self.settings.heartbeat)):
                await self._scripts["release"](keys=[self.keys["lease"]], args=[token])
        except (*_TRANSIENT, TimeoutError) as exc:  # it expires on its own within `lease`
            log.warning("cluster log: could not give the lease back: %s", exc)
        return True

    async def stop(self) -> None:
        """Append what is queued (briefly), stop the tasks, give the lease back, leave (a NodeLost of its own)."""
        if self._redis is None:
            return
        self._stopping = True
        if self._tasks and self._queue:
            try:
                await asyncio.wait_for(self._empty.wait(), _STOP_FLUSH)
            except TimeoutError:
                log.warning("cluster log: %d submissions not appended at stop", len(self._queue))
        self._cancel_timer()
        if self._local_timer is not None:
            self._local_timer.cancel()
            self._local_timer = None
        for task in self._tasks:
            task.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=0.1)
        if pending:  # a cancel redis-py swallowed mid-command: cut the connections under it
            await self._redis.connection_pool.disconnect()
            await asyncio.wait(pending, timeout=2.0)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for item in self._queue:
            if item.applied is not None and not item.applied.done():
                item.applied.set_exception(ClusterLogError("the cluster log stopped before this was appended"))
        self._queue.clear()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ClusterLogError("the cluster log stopped before this was applied"))
        self._waiters.clear()
        try:
            async with asyncio.timeout(max(1.0, self.settings.heartbeat)):
                if self._token is not None:
                    await self._scripts["release"](keys=[self.keys["lease"]], args=[self._token])
                # leaving, not lost: the replicas forget this node's callers now (its calls end with it), and
                # the timekeeper has no heartbeat to miss, so no loss is announced (a rolling restart is quiet)
                pipe = self._redis.pipeline(transaction=True)
                pipe.srem(self.keys["nodes"], self.node)
                pipe.delete(self.heartbeat_key)
                pipe.xadd(self.keys["log"], encode(self.node, NodeLost(node=self.node, now=self._clock())))  # type: ignore[arg-type]
                await pipe.execute()
        except (*_TRANSIENT, TimeoutError) as exc:
            log.warning("cluster log: could not release the lease and heartbeat at stop: %s", exc)
        self._token = None
        self.is_timekeeper = False
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        await self._close()

    async def _close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # ------------------------------------------------------------ submitting

    def submit(self, event: Event | ClusterEvent) -> None:
        """Append ``event`` after everything submitted before it; returns at once (degraded: applied here now)."""
        if self.degraded and not self._queue:
            self._apply_local(event, None)
            return
        self._enqueue(_Append(encode(self.node, event), submitted=time.monotonic()))

    async def request(self, event: Event | ClusterEvent) -> Applied:
        """Append ``event`` and wait until this node's replica has applied it; its result (degraded: at once)."""
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        if self.degraded and not self._queue:
            self._apply_local(event, fut)
            return await fut
        if not self._enqueue(_Append(encode(self.node, event), applied=fut, submitted=time.monotonic())):
            raise ClusterLogError(f"{MAX_QUEUED} submissions are waiting for Redis: this one was dropped")
        self._unresolved += 1
        return await fut

    def _enqueue(self, item: _Append) -> bool:
        if self._stopping and not self._tasks:
            raise ClusterLogError("the cluster log is stopped")
        if self._joining is not None and not item.fenced:  # appended once the new generation is built
            self._held.append(item)
            return True
        if len(self._queue) >= MAX_QUEUED:
            self.stats.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.error("cluster log: %d submissions wait for Redis; dropping new ones", MAX_QUEUED)
            return False
        self._queue.append(item)
        self.stats.queued = len(self._queue)
        self._empty.clear()
        self._wake.set()
        return True

    async def _write_loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            _honour_cancel()
            if not self._queue:
                self._empty.set()
                self._dropping = False
                self._applied_first.clear()  # every id is known now: what is left was not submitted here
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.degraded:
                self._drain_local()
                continue
            self._writing = True
            try:
                if self._queue[0].fenced:
                    await self._append_fenced()
                else:
                    await self._append_batch()
            except _TRANSIENT as exc:
                self._writing = False
                self.stats.append_errors += 1
                await self._trouble("appending to the log", exc, again=backoff > BACKOFF_FIRST)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            self._writing = False
            backoff = BACKOFF_FIRST
            self._fine()
            self.stats.queued = len(self._queue)

    async def _append_batch(self) -> None:
        assert self._redis is not None
        batch: list[_Append] = []
        for item in self._queue:
            if item.fenced or len(batch) >= BATCH:
                break
            batch.append(item)
        stream = self.keys["log"]
        if len(batch) == 1:
            try:
                ids: list[Any] = [await self._redis.xadd(stream, batch[0].fields)]  # type: ignore[arg-type]
            except ResponseError as exc:
                if _not_now(exc):
                    raise
                ids = [exc]
        else:
            pipe = self._redis.pipeline(transaction=False)
            for item in batch:
                pipe.xadd(stream, item.fields)  # type: ignore[arg-type]
            ids = await pipe.execute(raise_on_error=False)
            if any(isinstance(r, _TRANSIENT) and not isinstance(r, ResponseError) for r in ids):
                raise next(r for r in ids if isinstance(r, _TRANSIENT))
        for item, result in zip(batch, ids, strict=True):
            if _not_now(result):  # this one and the rest are retried, in order; those before it are in the log
                raise result
            self._queue.popleft()
            if isinstance(result, Exception):
                self._refused(item, result)
            else:
                self.stats.appends += 1
                self._appended(item, _text(result))

    async def _append_fenced(self) -> None:
        item = self._queue[0]
        token = self._token
        result: Any = None
        if token is not None:
            args: list[Any] = [token]
            for k, v in item.fields.items():
                args += [k, v]
            try:
                result = await self._scripts["append"](keys=[self.keys["lease"], self.keys["log"]], args=args)
            except ResponseError as exc:
                if _not_now(exc):
                    raise
                self._queue.popleft()
                self._refused(item, exc)
                return
        self._queue.popleft()
        if result is None:
            if token is not None and token == self._token:
                self._lose_lease("a fenced append was refused")
            if item.on_done is not None:
                item.on_done(None)
            return
        self.stats.appends += 1
        self._appended(item, _text(result))

    def _appended(self, item: _Append, entry_id: str) -> None:
        if not item.fenced and _older(self._last_id, entry_id):  # not applied here yet
            if len(self._inflight) >= MAX_QUEUED:
                self._inflight.clear()
            self._inflight[entry_id] = item
        if item.submitted:
            applied_at = self._applied_first.pop(entry_id, None)
            if applied_at is not None:
                self.stats.decided(applied_at - item.submitted)
            else:
                if len(self._sent) >= MAX_QUEUED:  # entries never applied here (skipped by a checkpoint reload)
                    self._sent.clear()
                self._sent[entry_id] = item.submitted
        if item.on_done is not None:
            item.on_done(entry_id)
        if item.applied is not None:
            self._unresolved -= 1
            early = self._early.pop(entry_id, None)
            if early is not None:
                if not item.applied.done():
                    item.applied.set_result(early)
            else:
                self._waiters[entry_id] = item.applied
            if not self._unresolved:
                self._early.clear()

    def _refused(self, item: _Append, exc: Exception) -> None:
        self.stats.append_errors += 1
        log.error("cluster log: Redis refused an entry (%s); it is dropped", exc)
        if item.on_done is not None:
            item.on_done(None)
        if item.applied is not None:
            self._unresolved -= 1
            if not item.applied.done():
                item.applied.set_exception(ClusterLogError(f"Redis refused the entry: {exc}"))

    # ------------------------------------------------------------ reading

    async def _read(self, block: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The next entries after the last one applied (reloading the checkpoint first if some were trimmed)."""
        assert self._redis is not None
        stream = self.keys["log"]
        pipe = self._redis.pipeline(transaction=False)
        pipe.xread({stream: self._last_id}, count=BATCH, block=block)
        pipe.hget(self.keys["checkpoint"], "trimmed")
        reply, trimmed = await pipe.execute()
        if trimmed is not None and _older(self._last_id, _text(trimmed)):
            # entries after this replica's position were trimmed away before it read them: it fell behind
            log.warning("cluster log: entries after %s were trimmed before this node read them", self._last_id)
            if not await self._load_checkpoint(at_start=False):
                log.error("cluster log: no usable checkpoint; going on after %s, this replica may differ", trimmed)
                self._last_id = _text(trimmed)
            return []
        if not reply:
            return []
        return list(reply[0][1])

    async def _replay(self) -> None:
        while entries := await self._read(None):
            self._apply(entries, live=False)

    async def _read_loop(self) -> None:
        backoff = BACKOFF_FIRST
        block = round(min(_READ_BLOCK_MS, self.settings.heartbeat * 1000))
        while True:
            _honour_cancel()
            if self.degraded:  # this node decides alone: the log is not read until the new generation
                await asyncio.sleep(self.settings.heartbeat)
                continue
            try:
                entries = await self._read(block)
            except _TRANSIENT as exc:
                await self._trouble("reading the log", exc, again=backoff > BACKOFF_FIRST)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            self._fine()
            for start in range(0, len(entries), APPLY_CHUNK):
                if start:
                    await asyncio.sleep(0)  # let calls and media run between chunks of a long batch
                self._apply(entries[start : start + APPLY_CHUNK], live=True)

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]], *, live: bool) -> None:
        stats = self.stats
        for raw_id, fields in entries:
            if self.degraded:
                return  # read just before this node went degraded: its replica is its own now
            entry_id = _text(raw_id)
            self._last_id = entry_id
            self._since_checkpoint += 1
            try:
                origin, event = decode(fields)
            except WireError as exc:
                stats.malformed += 1
                log.warning("cluster log: entry %s is malformed and skipped: %s", entry_id, exc)
                continue
            try:
                applied = self.coordinator.apply(origin, event)
            except Exception:
                stats.apply_errors += 1
                log.exception("cluster log: applying entry %s (%s from %s) failed", entry_id, event, origin)
                continue
            if origin == self.node:
                self._inflight.pop(entry_id, None)
            rebuilt = type(event) is Rebuild
            if rebuilt:
                self._rebuilt(event)  # type: ignore[arg-type]
            elif self._joining is not None:  # the old generation's last entries: replaced by the Rebuild
                applied = Applied([], applied.error)
            if not live:
                stats.replayed += 1
                continue
            if type(event) is NodeLost and event.node == self.node:
                log.error("cluster log: node %s was declared lost (no heartbeat in time); its callers left", self.node)
            stats.applied += 1
            if origin == self.node:
                applied_at = time.monotonic()
                submitted = self._sent.pop(entry_id, None)
                if submitted is not None:
                    stats.decided(applied_at - submitted)
                elif self._queue:  # its XADD's answer is still on its way
                    self._applied_first[entry_id] = applied_at
            lag = self._clock() - event.now
            stats.lag_last = lag
            stats.lag_sum += lag
            if lag > stats.lag_max:
                stats.lag_max = lag
            try:
                self._on_applied(entry_id, origin, event, applied)
            except Exception:
                stats.apply_errors += 1
                log.exception("cluster log: on_applied failed for entry %s (%s)", entry_id, event)
            if origin == self.node:
                fut = self._waiters.pop(entry_id, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(applied)
                elif self._unresolved:
                    self._early[entry_id] = applied
            if rebuilt and self.on_rebuilt is not None:
                included = any(p.node == self.node for p in event.parts)  # type: ignore[union-attr]
                try:
                    self.on_rebuilt(included)
                except Exception:
                    stats.apply_errors += 1
                    log.exception("cluster log: on_rebuilt failed after entry %s", entry_id)
        if self._tick_after is not None and not _older(self._last_id, self._tick_after):
            self._tick_busy = False
            self._tick_after = None
        if self.is_timekeeper:
            if self._since_checkpoint >= CHECKPOINT_ENTRIES:
                self._checkpoint_wanted.set()
            self._rearm()

    # ------------------------------------------------------------ timekeeper: timers

    def _rearm(self) -> None:
        """Arm loop.call_at for the replica's next timer (wall-clock arithmetic), unless a TimerFired is pending."""
        if not self.is_timekeeper or self._tick_busy or self.degraded or self._joining is not None:
            return
        due = self.coordinator.next_timer()
        if due is not None and due == self._timer_due and self._timer is not None:
            return
        self._cancel_timer()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        delay = due - self._clock()
        if due <= self._last_tick:  # the last TimerFired did not move it on: never spin appending TimerFired
            delay = max(delay, self.settings.heartbeat)
        self._timer_due = due
        self._timer = loop.call_at(loop.time() + max(0.0, delay), self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_due = None

    def _tick(self) -> None:
        due = self._timer_due
        self._timer = None
        self._timer_due = None
        if not self.is_timekeeper or due is None:
            return
        now = max(self._clock(), due)
        self._last_tick = due
        self._tick_busy = self._enqueue(
            _Append(encode(self.node, TimerFired(kind="tick", id="", now=now)), True, None, self._ticked)
        )

    def _ticked(self, entry_id: str | None) -> None:
        if entry_id is None:  # refused (lease lost) or dropped
            self._tick_busy = False
            self._rearm()
            return
        self.stats.timers += 1
        if _older(self._last_id, entry_id):
            self._tick_after = entry_id
        else:  # the reader got there first
            self._tick_busy = False
            self._rearm()

    # ------------------------------------------------------------ heartbeat and lease

    async def _beat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.settings.heartbeat
        failed = False
        while True:
            _honour_cancel()
            started = loop.time()
            try:
                async with asyncio.timeout(max(2.0, 2 * period)):
                    await self._beat()
                    if not self._stopping:
                        await self._generations()
            except (*_TRANSIENT, TimeoutError) as exc:
                await self._trouble("heartbeat", exc, again=failed)
                failed = True
                now = time.monotonic()
                if self._failing_since is None:
                    self._failing_since = now
                elif now - self._failing_since >= self.settings.node_timeout and not self.degraded:
                    self._degrade()
            else:
                self._fine()
                failed = False
                self._failing_since = None
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))

    async def _beat(self) -> None:
        assert self._redis is not None
        loop = asyncio.get_running_loop()
        settings = self.settings
        lease_ms = round(settings.lease * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.heartbeat_key, repr(self._clock()), px=round(settings.node_timeout * 1000))
        pipe.sadd(self.keys["nodes"], self.node)
        await pipe.execute()
        sent = loop.time()
        if self._token is not None:
            renewed = await self._scripts["renew"](keys=[self.keys["lease"]], args=[self._token, lease_ms])
            if renewed:
                self._hold_until(sent + settings.lease)
            else:
                self._lose_lease("another node holds it")
        if self._resigned_beats > 0:  # resign(): the others' turn to take the lease
            self._resigned_beats -= 1
        elif self._token is None and not self._stopping:
            sent = loop.time()
            token = await self._scripts["acquire"](
                keys=[self.keys["lease"], self.keys["epoch"]], args=[self.node, lease_ms]
            )
            if token is not None:
                self._token = _text(token)
                self._hold_until(sent + settings.lease)
                self.is_timekeeper = True
                self.stats.lease_acquired += 1
                log.info("cluster log: node %s is the timekeeper (lease %s)", self.node, self._token)
                if self._tasks:
                    self._rearm()
        if self.is_timekeeper and self._tasks and not self.degraded and self._joining is None:
            await self._find_lost_nodes()

    def _hold_until(self, deadline: float) -> None:
        """The lease counts as ours until ``deadline`` (loop time): it was renewed at or after ``deadline - lease``.

        Redis started the lease's time after that, so this node gives the role
        up before Redis lets another node take it, even while Redis does not answer.
        """
        self._lease_until = deadline
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        self._lease_timer = asyncio.get_running_loop().call_at(deadline, self._lose_lease, "not renewed in time")

    def _lose_lease(self, why: str) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        if self._token is None:
            return
        log.warning("cluster log: node %s is no longer the timekeeper: %s", self.node, why)
        self._token = None
        self.is_timekeeper = False
        self.stats.lease_lost += 1
        self._cancel_timer()
        self._tick_busy = False
        self._tick_after = None

    async def _find_lost_nodes(self) -> None:
        assert self._redis is not None
        others = sorted(n for n in map(_text, await self._redis.smembers(self.keys["nodes"])) if n != self.node)
        if not others:
            return
        pipe = self._redis.pipeline(transaction=False)
        for node in others:
            pipe.exists(self.node_key(node))
        alive = await pipe.execute()
        for node, up in zip(others, alive, strict=True):
            if up or self._token is None:
                continue
            args: list[Any] = [self._token, node]
            for k, v in encode(self.node, NodeLost(node=node, now=self._clock())).items():
                args += [k, v]
            keys = [self.keys["lease"], self.keys["log"], self.keys["nodes"], self.node_key(node)]
            result = await self._scripts["node_lost"](keys=keys, args=args)
            if result == -1:
                self._lose_lease("a fenced append was refused")
            elif isinstance(result, bytes | str):
                self.stats.appends += 1
                self.stats.nodes_lost += 1
                log.warning("cluster log: node %s is lost (no heartbeat for %s s)", node, self.settings.node_timeout)

    # ------------------------------------------------------------ checkpoints

    async def _checkpoint_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._checkpoint_wanted.wait(), CHECKPOINT_SECONDS)
            except TimeoutError:
                pass
            self._checkpoint_wanted.clear()
            _honour_cancel()
            if not self.is_timekeeper or not self._since_checkpoint or self.degraded or self._joining is not None:
                continue
            try:
                await self.write_checkpoint()
            except _TRANSIENT as exc:
                await self._trouble("writing a checkpoint", exc, again=True)
            except Exception:  # say a replica that does not pickle: logged, and the next try may do better
                log.exception("cluster log: writing a checkpoint failed")

    async def write_checkpoint(self) -> bool:
        """Store this replica as the checkpoint and trim the log before it (timekeeper only); True if written."""
        assert self._redis is not None
        token = self._token
        if token is None:
            return False
        entry_id, count = self._last_id, self._since_checkpoint
        state = pickle.dumps(self.coordinator, protocol=pickle.HIGHEST_PROTOCOL)
        mac = checkpoint_mac(self._key, entry_id, self._fingerprint, state)
        self._since_checkpoint = 0
        keys = [self.keys["lease"], self.keys["checkpoint"], self.keys["log"]]
        refused = self._refused_checkpoint[0] if self._refused_checkpoint is not None else ""
        args = [token, entry_id, self._fingerprint, state, mac, refused]
        try:
            result = await self._scripts["checkpoint"](keys=keys, args=args)
        except BaseException:
            self._since_checkpoint += count
            raise
        if result == -1:
            self._since_checkpoint += count
            self._lose_lease("a fenced checkpoint was refused")
            return False
        if result == 1:
            self.stats.checkpoints_written += 1
            log.debug("cluster log: checkpoint at %s (%d bytes)", entry_id, len(state))
        return bool(result == 1)

    async def _load_checkpoint(self, *, at_start: bool) -> bool:
        """Replace the replica by the stored checkpoint; False if there is none (or, after start, an unusable one)."""
        assert self._redis is not None
        stored = {_text(k): v for k, v in (await self._redis.hgetall(self.keys["checkpoint"])).items()}
        if not stored:
            return False
        try:
            entry_id = _text(stored["id"])
            fingerprint = _text(stored["fingerprint"])
            state = stored["state"]
            state = state if isinstance(state, bytes) else state.encode()
        except (KeyError, UnicodeDecodeError) as exc:
            raw_id = stored.get("id", b"?")
            shown = raw_id.decode(errors="replace") if isinstance(raw_id, bytes) else raw_id
            return self._refuse_checkpoint(shown, stored.get("mac", b""), f"it is incomplete (no {exc})")
        stored_mac = stored.get("mac", b"")
        stored_mac = stored_mac if isinstance(stored_mac, bytes) else stored_mac.encode()
        if not stored_mac:
            return self._refuse_checkpoint(entry_id, stored_mac, "it is not signed")
        if not hmac.compare_digest(stored_mac, checkpoint_mac(self._key, entry_id, fingerprint, state)):
            return self._refuse_checkpoint(entry_id, stored_mac, "its signature does not match cluster.secret")
        try:
            coordinator = pickle.loads(state)
        except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the message names the key
            message = f"the checkpoint {self.keys['checkpoint']} cannot be loaded: {exc!r}"
            if at_start:
                raise ClusterLogError(message) from None
            log.error("cluster log: %s", message)
            return False
        if fingerprint != self._fingerprint:
            message = self._model_difference(coordinator)
            if at_start:
                raise ClusterLogError(message)
            log.error("cluster log: %s", message)
            return False
        self.coordinator = coordinator
        self._last_id = entry_id
        self._since_checkpoint = 0
        self.stats.checkpoints_loaded += 1
        if not at_start:
            log.warning("cluster log: node %s reloaded the checkpoint at %s", self.node, entry_id)
            self._sent.clear()  # the entries it skipped are not applied here
            self._cancel_timer()
            self._tick_busy = False
            self._tick_after = None
            self._rearm()
        return True

    def _refuse_checkpoint(self, entry_id: str, mac: bytes | str, why: str) -> bool:
        """A checkpoint this node will not unpickle: logged and counted once per checkpoint; False (as if none)."""
        mac = mac if isinstance(mac, bytes) else mac.encode()
        if self._refused_checkpoint != (entry_id, mac):
            self._refused_checkpoint = (entry_id, mac)
            self.stats.checkpoints_refused += 1
            log.error(
                "cluster log: refused the checkpoint %s at %s: %s; going on without it (written with another "
                "cluster.secret, by an older version, or by someone else with write access to Redis)",
                self.keys["checkpoint"],
                entry_id,
                why,
            )
        return False

    def _model_difference(self, stored: Coordinator) -> str:
        differences = model_differences(self.coordinator.engine.model, stored.engine.model)
        name = self.settings.name
        return (
            f"node {self.node} cannot join cluster {name!r}: its queue model differs from the cluster's "
            f"({'; '.join(differences)}). Give every node the same queues:, agents: and surge: sections, or stop "
            f"every node and delete the Redis keys {name}:checkpoint and {name}:log to start the cluster afresh"
        )

    # ------------------------------------------------------------ degraded: deciding alone while Redis fails

    def _degrade(self) -> None:
        """Redis failed for node_timeout: decide for this node's own callers and agents on its own replica."""
        self.degraded = True
        self.stats.degraded_periods += 1
        log.error(
            "cluster log: node %s is degraded: Redis failed for %s s; it decides alone for its own callers and "
            "agents until Redis is back",
            self.node,
            self.settings.node_timeout,
        )
        self._lose_lease("Redis unreachable")
        self._cancel_timer()
        self._joining = None
        # entries appended but not read back, then what waits to be appended: applied here, in order
        inflight = sorted(self._inflight.items(), key=lambda kv: _id_key(kv[0]))
        self._inflight.clear()
        for entry_id, item in inflight:
            fut = self._waiters.pop(entry_id, None)
            self._local_fields(item, fut)
        self._local_event(Isolated(node=self.node, now=self._clock()), None)
        while self._held:
            item = self._held.popleft()
            self._local_fields(item, item.applied)
        if not self._writing:
            self._drain_local()

    def _drain_local(self) -> None:
        """Degraded: what waited to be appended is applied here instead (the writer is not inside a command)."""
        while self._queue:
            item = self._queue.popleft()
            if item.fenced:
                if item.on_done is not None:
                    item.on_done(None)
                continue
            self._local_fields(item, item.applied)
            if item.applied is not None:
                self._unresolved -= 1
        self.stats.queued = 0
        self._empty.set()

    def _local_fields(self, item: _Append, fut: asyncio.Future[Applied] | None) -> None:
        try:
            _, event = decode(item.fields)
        except WireError:  # encode() checked it: cannot happen
            return
        self._local_event(event, fut)

    def _apply_local(self, event: Event | ClusterEvent, fut: asyncio.Future[Applied] | None) -> None:
        self._local_event(event, fut)

    def _local_event(self, event: Event | ClusterEvent, fut: asyncio.Future[Applied] | None) -> None:
        """Apply one event to this node's own replica now (degraded); what it causes queues up behind it."""
        self._local.append((event, fut))
        if self._local_busy:
            return
        self._local_busy = True
        try:
            while self._local:
                ev, waiter = self._local.popleft()
                self._local_count += 1
                entry_id = f"local-{self._local_count}"
                try:
                    applied = self.coordinator.apply(self.node, ev)
                except Exception:
                    self.stats.apply_errors += 1
                    log.exception("cluster log: applying %s locally failed", ev)
                    applied = Applied([], "failed")
                self.stats.local_applied += 1
                try:
                    self._on_applied(entry_id, self.node, ev, applied)
                except Exception:
                    self.stats.apply_errors += 1
                    log.exception("cluster log: on_applied failed for %s (local)", ev)
                if waiter is not None and not waiter.done():
                    waiter.set_result(applied)
        finally:
            self._local_busy = False
        self._local_rearm()

    def _local_rearm(self) -> None:
        if self._local_timer is not None:
            self._local_timer.cancel()
            self._local_timer = None
        if not self.degraded:
            return
        due = self.coordinator.next_timer()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._local_timer = loop.call_at(loop.time() + max(0.0, due - self._clock()), self._local_tick, due)

    def _local_tick(self, due: float) -> None:
        self._local_timer = None
        if self.degraded:
            self._local_event(TimerFired(kind="tick", id="", now=max(self._clock(), due)), None)

    # ------------------------------------------------------------ generations: joining up again

    async def _generations(self) -> None:
        """After a heartbeat that worked: start or take part in a new generation, and seal one (timekeeper)."""
        assert self._redis is not None
        keys = self.keys
        # what was applied before the read: the reader (its own connection) may apply newer entries while this
        # read is on its way, and comparing with those would take a busy log for one that went backwards
        applied = self._last_id
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys["generation"])
        pipe.xrevrange(keys["log"], "+", "-", count=1)
        raw_gen, newest = await pipe.execute()
        ours = self.coordinator.generation
        if self.degraded:
            await self._begin_generation("Redis answers again")
        elif raw_gen is None:
            await self._begin_generation("Redis lost its data (restarted empty)")
        elif applied != "0-0" and (not newest or _older(_text(newest[0][0]), applied)):
            await self._begin_generation("the log went backwards (writes were lost)")
        elif int(raw_gen) > ours and self._joining != int(raw_gen):
            await self._take_part(int(raw_gen))
        elif self._joining is not None and time.monotonic() - self._joined_at > 4 * self.settings.node_timeout:
            await self._begin_generation(f"generation {self._joining} was not built in time")
        if self.is_timekeeper and raw_gen is not None and int(raw_gen) > ours:
            await self._seal(int(raw_gen))

    async def _begin_generation(self, why: str) -> None:
        assert self._redis is not None
        known = max(self.coordinator.generation, self._joining or 0)
        gen_prefix = self.keys["gen"]
        generation = await self._scripts["start_generation"](
            keys=[self.keys["generation"], self.keys["log"]], args=[known, repr(self._clock()), gen_prefix]
        )
        generation = int(generation)
        if generation > 0:  # opened here (a negative number: another node opened it first)
            self.stats.generations_started += 1
            log.warning("cluster log: node %s opens generation %d: %s", self.node, generation, why)
        await self._take_part(abs(generation))

    async def _take_part(self, generation: int) -> None:
        """Settle this node's rings, contribute its callers and agents to ``generation``, hold new submissions."""
        assert self._redis is not None
        start = await self._redis.hget(self.keys["gen"] + str(generation), "start")
        if start is None:
            return
        if self.on_settle is not None:
            try:
                self.on_settle()
            except Exception:
                log.exception("cluster log: cancelling this node's rings failed")
        part = self.coordinator.part_of(self.node)
        was_degraded = self.degraded
        if was_degraded:
            self.degraded = False
            if self._local_timer is not None:
                self._local_timer.cancel()
                self._local_timer = None
            log.warning("cluster log: node %s is no longer degraded; joining generation %d", self.node, generation)
        self._joining = generation
        self._joined_at = time.monotonic()
        self._cancel_timer()
        # read on from where the generation started: what came before it is replaced by its Rebuild (and after
        # Redis restarted empty or went backwards, this node's old position means nothing in the stream)
        self._last_id = _text(start)
        self._sent.clear()
        taken = await self._scripts["take_part"](
            keys=[self.keys["gen"] + str(generation)], args=[self.node, part_to_json(part)]
        )
        if taken != 1:  # its Rebuild is after the start: this node goes on from it and rejoins after it
            log.warning("cluster log: generation %d was sealed before node %s took part", generation, self.node)
            self._joining = None

    async def _seal(self, generation: int) -> None:
        """Timekeeper: once every live node took part (or time is up), append the Rebuild of ``generation``."""
        assert self._redis is not None and self._token is not None
        key = self.keys["gen"] + str(generation)
        stored = {_text(k): v for k, v in (await self._redis.hgetall(key)).items()}
        if not stored or "sealed" in stored:
            return
        parts = {k.removeprefix("part:"): v for k, v in stored.items() if k.startswith("part:")}
        opened = float(_text(stored.get("opened", b"0")))
        waited = self._clock() - opened
        nodes = sorted(map(_text, await self._redis.smembers(self.keys["nodes"])))
        pipe = self._redis.pipeline(transaction=False)
        for n in nodes:
            pipe.exists(self.node_key(n))
        live = [n for n, up in zip(nodes, await pipe.execute(), strict=True) if up]
        everyone = all(n in parts for n in live) and waited >= 2 * self.settings.heartbeat
        if not everyone and waited < 2 * self.settings.node_timeout:
            return
        decoded: list[NodePart] = []
        for node, raw in sorted(parts.items()):
            try:
                decoded.append(part_from_json(_text(raw)))
            except (WireError, UnicodeDecodeError) as exc:
                log.error("cluster log: node %s's part of generation %d is malformed: %s", node, generation, exc)
        event = Rebuild(generation=generation, parts=tuple(decoded), now=self._clock())
        args: list[Any] = [self._token]
        for k, v in encode(self.node, event).items():
            args += [k, v]
        result = await self._scripts["seal"](keys=[self.keys["lease"], key, self.keys["log"]], args=args)
        if result == -1:
            self._lose_lease("a fenced append was refused")
        elif isinstance(result, bytes | str):
            self.stats.appends += 1
            missing = sorted(set(live) - set(parts))
            log.warning(
                "cluster log: generation %d built from %d node(s)%s",
                generation,
                len(decoded),
                f" (not from {', '.join(missing)}: they rejoin after it)" if missing else "",
            )

    def _rebuilt(self, event: Rebuild) -> None:
        """A Rebuild was applied: a joining node goes on in the new generation and appends what it held."""
        if self._joining is not None and event.generation >= self._joining:
            self._joining = None
            self.stats.rejoins += 1
            log.warning("cluster log: node %s rejoined in generation %d", self.node, event.generation)
            while self._held:
                item = self._held.popleft()
                self._queue.append(item)
            self.stats.queued = len(self._queue)
            if self._queue:
                self._empty.clear()
                self._wake.set()
        self._since_checkpoint = max(self._since_checkpoint, 1)
        self._checkpoint_wanted.set()  # the next checkpoint is of the new generation
        if self.is_timekeeper:
            self._rearm()

    # ------------------------------------------------------------ outages

    async def _trouble(self, doing: str, exc: BaseException, *, again: bool) -> None:
        """A Redis error; the outage is logged once it repeats (pooled connections fail once after a restart)."""
        if not again:
            log.debug("cluster log: Redis failed while %s: %s; trying again", doing, exc)
            if self._redis is not None:  # the others in the pool are likely as stale: the retry gets a fresh one
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            return
        if self._outage_since is None and not self._stopping:
            self._outage_since = time.monotonic()
            self.stats.outages += 1
            log.error("cluster log: Redis at %s failed while %s: %s; retrying", self._where, doing, exc)

    def _fine(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "cluster log: Redis at %s answers again after %.1f s",
                self._where,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
