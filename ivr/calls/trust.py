"""Caller-ID trust and the per-number text cap: whose number is believed, and how often one number is texted.

A caller number is a claim anyone can write into ``From``. :func:`identify`
believes it only when the INVITE came from a peer in
``security.trusted_networks`` (a trunk, the load balancer), and then prefers
``P-Asserted-Identity``. The IVR call (``ivr/calls/ivrcall.py``) serves an
untrusted caller fully under the claimed number, but sends it no text and
closes no callback for it, and does not let it cancel that number's callback;
a callback it books for that number is marked ``created_by: ivr_unverified``
and the dialer sends no text about it (``ivr/calls/dialer.py``). Each such
refusal is counted in :class:`TrustCounters`
(``frontdesk_untrusted_caller_id_total{action}``).

:class:`TextGate` stands in front of the outbox for every text, whoever asked
for it: at most ``texts_per_number`` texts to one number within
``text_window`` seconds, remembering at most ``limits.text_numbers`` numbers.
When that table is full of numbers still inside their window, texts to new
numbers are refused rather than an old number forgotten (forgetting would
reset its cap). Refusals are counted (``frontdesk_texts_refused_total
{reason}``) and logged with the number masked.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from callback import logmask
from ivr.settings.security import SecuritySettings
from ivr.sip.dialogs import InboundCall
from ivr.sip.message import SipParseError, parse_name_addr, uri_user

log = logging.getLogger(__name__)

UNVERIFIED_BOOKER = "ivr_unverified"  # created_by of a callback booked for a number an untrusted peer claimed
MAX_NUMBER = 64  # longer "numbers" are refused by the outbox anyway, and never become a key here
UNTRUSTED_ACTIONS = ("text", "close_callback", "cancel_callback")
TEXT_REFUSALS = ("per_number_cap", "table_full")


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """The number a call is served under, and whether it is believed (from a trusted peer)."""

    number: str
    trusted: bool


def _asserted(call: InboundCall) -> str:
    """The user part of the first P-Asserted-Identity (``sip:``/``tel:``), or '' when there is none or it is bad."""
    value = call.invite.get("p-asserted-identity")
    if not value:
        return ""
    first = value.split(",", 1)[0]
    try:
        uri = parse_name_addr(first).uri
    except SipParseError:
        return ""
    if uri[:4].lower() == "tel:":
        return uri[4:].split(";", 1)[0].strip()
    return uri_user(uri)


def identify(call: InboundCall, security: SecuritySettings) -> CallerIdentity:
    """Whose call this is: the asserted number from a trusted peer, the claimed one (not believed) otherwise."""
    if not security.trusts(call.peer[1]):
        return CallerIdentity(call.caller, trusted=False)
    if security.caller_id.use_asserted_identity or security.caller_id.require_asserted_identity:
        asserted = _asserted(call)
        if asserted and len(asserted) <= MAX_NUMBER:
            return CallerIdentity(asserted, trusted=True)
    # behind a proxy that relays everyone but asserts only its trunks' callers, From is only a claim
    return CallerIdentity(call.caller, trusted=not security.caller_id.require_asserted_identity)


@dataclass
class TrustCounters:
    """Plain counters, exported by ivr.web.mapmetrics at scrape time."""

    untrusted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNTRUSTED_ACTIONS, 0))
    texts_refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TEXT_REFUSALS, 0))

    def refused_untrusted(self, action: str) -> None:
        self.untrusted[action] = self.untrusted.get(action, 0) + 1


SendText = Callable[[str, str, str], None]


class TextGate:
    """At most ``per_number`` texts to one number within ``window`` s; a table of at most ``max_numbers`` numbers.

    Each number keeps the times of its texts in the window (at most
    ``per_number`` of them); the table is ordered by each number's last text,
    so the numbers whose window has passed are dropped from its front in
    amortised constant time.
    """

    def __init__(
        self,
        send: SendText,
        per_number: int,
        window: float,
        max_numbers: int,
        clock: Callable[[], float],
        counters: TrustCounters | None = None,
    ) -> None:
        self._send = send
        self.per_number = per_number
        self.window = window
        self.max_numbers = max_numbers
        self.clock = clock
        self.counters = counters or TrustCounters()
        self._sent: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def size(self) -> int:
        return len(self._sent)

    def _forget_old(self, now: float) -> None:
        sent = self._sent
        while sent:
            number, times = next(iter(sent.items()))
            if times and times[-1] > now - self.window:
                return
            del sent[number]

    def allow(self, to: str, now: float) -> str | None:
        """Record a text to ``to`` and return None, or return why it is refused (and record nothing)."""
        if len(to) > MAX_NUMBER:
            return None  # never a key here: the outbox refuses it with its own word
        self._forget_old(now)
        times = self._sent.get(to)
        if times is None:
            if self.per_number == 0:
                return "per_number_cap"
            if len(self._sent) >= self.max_numbers:
                return "table_full"
            times = self._sent[to] = deque(maxlen=self.per_number)
        else:
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.per_number:
                return "per_number_cap"
            self._sent.move_to_end(to)
        times.append(now)
        return None

    def send(self, to: str, body: str, reason: str) -> None:
        """The outbox's ``send_text`` behind the cap: what the cap refuses is counted, logged and dropped."""
        refused = self.allow(to, self.clock())
        if refused is not None:
            self.counters.texts_refused[refused] = self.counters.texts_refused.get(refused, 0) + 1
            log.warning("text (%s) to %s not sent: %s", reason, logmask.number(to), refused.replace("_", " "))
            return
        self._send(to, body, reason)


def text_gate(security: SecuritySettings, send: SendText, clock: Callable[[], float]) -> TextGate:
    """The cap of ``security.caller_id`` and ``security.limits`` in front of ``send``."""
    cid = security.caller_id
    return TextGate(send, cid.texts_per_number, cid.text_window, security.limits.text_numbers, clock)
