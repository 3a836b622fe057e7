"""The registrar: agents' phones REGISTER here with digest authentication, sans-IO.

Theory of operation
-------------------
Request and time in, the response to send out; no clock, no socket::

    registrar.register(req, peer, now) -> Reply   # status, reason, extra headers
    registrar.lookup(username, now) -> [Binding]  # where to ring an agent
    registrar.next_expiry() -> float | None       # when a binding runs out
    registrar.expire(now) -> [Binding]            # drop the ones that ran out

The user agent hands every REGISTER to :meth:`Registrar.register` inside its
server non-INVITE transaction, so a copy of a request gets the same answer
and the registrar sees each request once. A REGISTER is taken through these
steps in RFC 3261 10.3 order; the first that fails answers it:

=================================  ===============================================
step                               fails with
=================================  ===============================================
``Require``                        420 + ``Unsupported`` (we support no extension)
``Authorization`` for our realm    401 challenge (none, another realm, an
                                   algorithm or qop we did not offer)
  well-formed                      400 (malformed, or the digest ``uri`` is not
                                   the Request-URI)
  source may try this name         403 as for a wrong password (the throttle of
                                   failed logins, ``ivr/sip/throttle.py``)
  response right                   403, the same for a wrong password and an
                                   unknown user, so nobody can probe for names
  nonce ours, fresh, not replayed  401 ``stale=true`` (the phone retries with the
                                   new nonce without asking for the password)
``To`` is the user's own address   403
Contacts and expiry                400 (malformed), 423 + ``Min-Expires``
Call-ID/CSeq order per contact     500 (an older REGISTER arrived late)
=================================  ===============================================

and then answers 200 OK listing every current contact of the user with its
``expires``. No step changes anything before the last one passed, so a
refused request leaves the bindings as they were.

Digest is RFC 2617/7616 MD5 with ``qop=auth``; a client that ignores qop
(RFC 2069 style, e.g. pyVoIP) may answer without it. Nonces are stateless:
``<issued ms>.<seq>.<HMAC-SHA256(secret, issued.seq:realm)>``, so any nonce
we issued is recognised without keeping it, and one older than
``nonce_lifetime`` is stale. What is kept is a bounded replay record: with
qop the nonce count per (nonce, cnonce) must go up, without qop a nonce is
good once. Without it a captured REGISTER (digest does not cover Contact)
could be replayed with another Contact to steal an agent's calls.

Credentials are HA1 values, hex MD5(``username:realm:password``), as written
by ``frontdesk hash-password``: the password itself is never stored.

The module is long because the whole of RFC 3261 10.3 and digest authentication
(nonces, replay record, throttle) live together in one class: each step reads
what the one before checked.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ivr.sip.digest import DigestError, parse_credentials
from ivr.sip.message import Request, SipParseError, parse_decimal, parse_name_addr, uri_host_port, uri_user
from ivr.sip.throttle import AuthThrottle
from ivr.sip.transaction import Peer

MAX_EXPIRES_VALUE = 2**32 - 1  # delta-seconds beyond this are clamped (RFC 3261 20.19)
REPLAY_RECORD_MAX = 100_000  # (nonce, cnonce) pairs remembered at most
EXPIRY_SLACK = 1024  # stale expiry entries tolerated beyond one per binding before the heap is rebuilt
HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
NC_RE = re.compile(r"^[0-9a-fA-F]{8}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9._~+-]{1,64}$")


def ha1(username: str, realm: str, password: str) -> str:
    """hex MD5(username:realm:password): what the config stores instead of the password."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """One agent's login, from the config."""

    ha1: str  # hex MD5(username:realm:password)
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    realm: str = "frontdesk"
    min_expires: int = 60  # shorter registrations get 423 Interval Too Brief
    max_expires: int = 3600  # longer ones are shortened to this
    default_expires: int = 600  # when the request names no expiry
    nonce_lifetime: float = 300.0  # seconds a nonce is accepted; then stale=true
    max_contacts: int = 10  # contacts one user may have registered at once


@dataclass(slots=True)
class Binding:
    """One registered contact of an agent."""

    username: str
    contact: str  # the contact URI, e.g. sip:1001@10.0.0.7:5062;transport=udp
    peer: Peer  # (transport, host, port) the REGISTER came from: reachable through NAT
    expires_at: float
    call_id: str
    cseq: int
    registered_at: float  # first registration of this contact
    instance: str = ""  # +sip.instance (RFC 5626) when the phone sends one

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


@dataclass(frozen=True, slots=True)
class Reply:
    """The response the user agent sends to a REGISTER."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def result(self) -> str:
        """For the metrics: ok, challenged or rejected."""
        if self.status == 200:
            return "ok"
        return "challenged" if self.status == 401 else "rejected"


RESULTS = ("ok", "challenged", "rejected")


def _uri_key(uri: str) -> tuple[str, str, str, int]:
    """scheme, user, host, port (defaulted): parameters and headers do not count."""
    scheme = uri.partition(":")[0].lower()
    host, port = uri_host_port(uri)
    default = 5061 if scheme == "sips" else 5060
    return scheme, uri_user(uri), host.lower(), port if port is not None else default


def _contact_key(uri: str) -> str:
    """Bindings are matched on the contact's scheme, user, host, port and transport."""
    scheme, user, host, port = _uri_key(uri)
    transport = ""
    for param in uri.split("?", 1)[0].split(";")[1:]:
        name, _, val = param.partition("=")
        if name.strip().lower() == "transport":
            transport = val.strip().lower()
    return f"{scheme}:{user}@{host}:{port};{transport}"


class _Refused(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _bad(detail: str) -> _Refused:
    return _Refused(Reply(400, f"Bad Request ({detail})"))


class Registrar:
    def __init__(
        self,
        settings: RegistrarSettings,
        credentials: Mapping[str, Credential],
        secret: bytes,
        on_change: Callable[[str, bool], None] | None = None,
        throttle: AuthThrottle | None = None,
        on_bindings: Callable[[str], None] | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        self.settings = settings
        self.credentials = dict(credentials)
        self._secret = secret
        self._bindings: dict[str, dict[str, Binding]] = {}  # username -> contact key -> binding
        self._count = 0
        self._expiry: list[tuple[float, int, str, str]] = []  # (at, seq, username, contact key); lazy
        self._seq = 0
        self._nonce_seq = 0
        self._seen: dict[tuple[str, str], int] = {}  # (nonce, cnonce) -> highest nonce count
        self._seen_order: deque[tuple[float, tuple[str, str]]] = deque()
        self.requests: dict[str, int] = dict.fromkeys(RESULTS, 0)
        # answers for unknown users cost the same work as for known ones
        self._dummy_ha1 = hmac.new(secret, b"no such user", hashlib.md5).hexdigest()
        # told (username, registered) when a user's first contact appears and when its last one goes
        self.on_change = on_change
        # told the username whenever any of its bindings is added, refreshed or removed (a cluster node publishes them)
        self.on_bindings = on_bindings
        # failed logins through every door (REGISTER, HTTP Basic, the web login) count here
        self.throttle = throttle if throttle is not None else AuthThrottle()

    def password_ok(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s SIP password (checked against the HA1, in constant time)."""
        cred = self.credentials.get(username)
        want = cred.ha1 if cred is not None else self._dummy_ha1
        got = ha1(username, self.settings.realm, password)
        return hmac.compare_digest(got, want) and cred is not None

    # -- queries ---------------------------------------------------------------------------
    @property
    def active(self) -> int:
        """Bindings held (the ones past their expiry go at the next :meth:`expire`)."""
        return self._count

    @property
    def binding_limit(self) -> int:
        """The most bindings there can be: only configured users register, each with at most max_contacts."""
        return len(self.credentials) * self.settings.max_contacts

    @property
    def expiry_entries(self) -> int:
        return len(self._expiry)

    @property
    def expiry_limit(self) -> int:
        """Entries of the expiry heap beyond which it is rebuilt (refreshed bindings leave stale ones)."""
        return 2 * self._count + EXPIRY_SLACK

    @property
    def replay_entries(self) -> int:
        """(nonce, cnonce) pairs of the replay record, at most REPLAY_RECORD_MAX."""
        return len(self._seen)

    def lookup(self, username: str, now: float | None = None) -> list[Binding]:
        """The user's contacts, most recently registered first (only live ones when ``now`` is given)."""
        found = [b for b in self._bindings.get(username, {}).values() if now is None or b.expires_at > now]
        found.sort(key=lambda b: b.registered_at, reverse=True)
        return found

    def next_expiry(self) -> float | None:
        heap = self._expiry
        while heap:
            at, _, user, key = heap[0]
            b = self._bindings.get(user, {}).get(key)
            if b is not None and b.expires_at == at:
                return at
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> list[Binding]:
        """Drop every binding whose time is up; returns them."""
        gone: list[Binding] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            at, _, user, key = heapq.heappop(heap)
            b = self._bindings.get(user, {}).get(key)
            if b is not None and b.expires_at == at:
                self._remove(user, key)
                gone.append(b)
        self._forget_old_nonces(now)
        return gone

    # -- REGISTER -----------------------------------------------------------------------------
    def register(self, req: Request, peer: Peer, now: float) -> Reply:
        try:
            reply = self._register(req, peer, now)
        except _Refused as refused:
            reply = refused.reply
        self.requests[reply.result] += 1
        return reply

    def _register(self, req: Request, peer: Peer, now: float) -> Reply:
        self._forget_old_nonces(now)
        unsupported = req.get_all("require")
        if unsupported:
            return Reply(420, None, (("Unsupported", ", ".join(unsupported)),))
        username = self._authenticate(req, peer[1], now)
        if uri_user(req.to.uri) != username:
            # the address-of-record must be the authenticated user's own (RFC 3261 10.3 step 6)
            return Reply(403, "Forbidden (To is not your address)")
        contacts = req.get_all("contact")
        if contacts:
            self._update(req, username, contacts, peer, now)
        return Reply(200, None, self._contact_headers(username, now))

    # -- authentication ------------------------------------------------------------------------
    def challenge(self, now: float, stale: bool = False) -> Reply:
        realm = self.settings.realm
        value = f'Digest realm="{realm}", nonce="{self._new_nonce(now)}", algorithm=MD5, qop="auth"'
        if stale:
            value += ", stale=true"
        return Reply(401, None, (("WWW-Authenticate", value),))

    def _authenticate(self, req: Request, source: str, now: float) -> str:
        """The authenticated username; raises _Refused with the answer otherwise."""
        realm = self.settings.realm
        creds: dict[str, str] | None = None
        for value in req.get_all("authorization"):
            try:
                scheme, params = parse_credentials(value)
            except DigestError as exc:
                raise _bad(f"malformed Authorization: {exc}") from None
            if scheme.lower() == "digest" and params.get("realm") == realm:
                creds = params
                break
        if creds is None:
            raise _Refused(self.challenge(now))
        for name in ("username", "nonce", "uri", "response"):
            if not creds.get(name):
                raise _bad(f"Authorization without {name}")
        if not HEX32.match(creds["response"]):
            raise _bad("malformed digest response")
        if creds.get("algorithm", "MD5").upper() != "MD5":
            raise _Refused(self.challenge(now))  # we offered MD5 only
        qop = creds.get("qop")
        cnonce = creds.get("cnonce", "")
        nc = creds.get("nc", "")
        if qop is not None:
            if qop.lower() != "auth":
                raise _Refused(self.challenge(now))
            if not cnonce or not NC_RE.match(nc):
                raise _bad("qop=auth needs cnonce and an 8-digit hex nc")
        if _uri_key(creds["uri"]) != _uri_key(req.uri):
            raise _bad("digest uri is not the Request-URI")

        username, nonce = creds["username"], creds["nonce"]
        cred = self.credentials.get(username)
        ha1_hex = cred.ha1 if cred is not None else self._dummy_ha1
        ha2 = _md5(f"{req.method}:{creds['uri']}")
        if qop is not None:
            expected = _md5(f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1_hex}:{nonce}:{ha2}")
        right = hmac.compare_digest(expected, creds["response"].lower())
        wrong = Reply(403, "Forbidden (wrong username or password)")
        if self.throttle.wait(username, source, now) > 0:
            # checked all the same (the same time taken), then answered as a wrong password: a guesser cannot
            # tell a block from a miss, and a right guess made while blocked is lost to them
            self.throttle.refused("register")
            raise _Refused(wrong)
        if cred is None or not right:
            self.throttle.failed("register", username, source, now)
            raise _Refused(wrong)
        self.throttle.succeeded(username, source)

        # the password is right; is the nonce still good?
        if not self._nonce_fresh(nonce, now):
            raise _Refused(self.challenge(now, stale=True))
        seen_key = (nonce, cnonce if qop is not None else "")
        count = int(nc, 16) if qop is not None else 1
        last = self._seen.get(seen_key)
        if last is not None and count <= last:
            raise _Refused(self.challenge(now, stale=True))  # a replay, or a copy out of order
        if last is None:
            self._seen_order.append((now + self.settings.nonce_lifetime, seen_key))
            if len(self._seen_order) > REPLAY_RECORD_MAX:
                _, old = self._seen_order.popleft()
                self._seen.pop(old, None)
        self._seen[seen_key] = count
        return username

    def _mac(self, stamp: str) -> str:
        msg = f"{stamp}:{self.settings.realm}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def _new_nonce(self, now: float) -> str:
        self._nonce_seq += 1
        stamp = f"{max(0, int(now * 1000)):x}.{self._nonce_seq:x}"
        return f"{stamp}.{self._mac(stamp)}"

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        stamp, dot, mac = nonce.rpartition(".")
        # ours are ASCII: compare_digest raises on other text, and a surrogate-escaped byte would not encode
        if not dot or not nonce.isascii() or not hmac.compare_digest(mac, self._mac(stamp)):
            return False  # not ours (e.g. from before a restart)
        issued = int(stamp.partition(".")[0], 16) / 1000
        return issued <= now + 0.001 and now - issued <= self.settings.nonce_lifetime

    def _forget_old_nonces(self, now: float) -> None:
        order = self._seen_order
        while order and order[0][0] <= now:
            _, key = order.popleft()
            self._seen.pop(key, None)

    # -- bindings ----------------------------------------------------------------------------
    def _update(self, req: Request, username: str, contacts: list[str], peer: Peer, now: float) -> None:
        s = self.settings
        header = req.get("expires")
        header_expires: int | None = None
        if header is not None:
            header = header.strip()
            header_expires = parse_decimal(header, MAX_EXPIRES_VALUE, clamp=True)
            if header_expires is None:
                raise _bad("malformed Expires")
        mine = self._bindings.get(username, {})
        call_id, cseq = req.call_id, req.cseq[0]

        if any(c.strip() == "*" for c in contacts):
            # remove every binding (RFC 3261 10.2.2): only with Expires: 0 and no other contact
            if len(contacts) != 1 or header_expires != 0:
                raise _bad("'*' needs Expires: 0 and no other Contact")
            for b in mine.values():
                if b.call_id == call_id and cseq <= b.cseq:
                    raise _Refused(Reply(500, "Server Internal Error (CSeq out of order)"))
            for key in list(mine):
                self._remove(username, key)
            return

        changes: list[tuple[str, str, int, str]] = []  # (key, uri, expires, instance)
        for value in contacts:
            try:
                na = parse_name_addr(value)
            except SipParseError as exc:
                raise _bad(f"malformed Contact: {exc.reason}") from None
            if na.uri.partition(":")[0].lower() not in ("sip", "sips"):
                raise _bad("Contact is not a sip: or sips: URI")
            raw = na.params.get("expires")
            if raw is not None:
                contact_expires = parse_decimal(raw, MAX_EXPIRES_VALUE, clamp=True)
                if contact_expires is None:
                    raise _bad("malformed Contact expires")
                expires = contact_expires
            elif header_expires is not None:
                expires = header_expires
            else:
                expires = s.default_expires
            if 0 < expires < s.min_expires:
                raise _Refused(Reply(423, "Interval Too Brief", (("Min-Expires", str(s.min_expires)),)))
            changes.append(
                (_contact_key(na.uri), na.uri, min(expires, s.max_expires), na.params.get("+sip.instance", ""))
            )

        for key, _uri, _exp, _inst in changes:
            old = mine.get(key)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                # an older REGISTER overtaken by a newer one (RFC 3261 10.3 step 7)
                raise _Refused(Reply(500, "Server Internal Error (CSeq out of order)"))
        after = set(mine)
        for key, _uri, exp, _inst in changes:
            if exp == 0:
                after.discard(key)
            else:
                after.add(key)
        if len(after) > s.max_contacts:
            raise _Refused(Reply(403, f"Forbidden (more than {s.max_contacts} contacts)"))

        for key, uri, exp, instance in changes:
            if exp == 0:
                if key in mine:
                    self._remove(username, key, notify=False)  # told once, below
                continue
            old = mine.get(key)
            b = Binding(
                username=username,
                contact=uri,
                peer=peer,
                expires_at=now + exp,
                call_id=call_id,
                cseq=cseq,
                registered_at=old.registered_at if old is not None else now,
                instance=instance,
            )
            if old is None:
                self._count += 1
            first = username not in self._bindings
            mine[key] = b
            self._bindings[username] = mine
            if first and self.on_change is not None:
                self.on_change(username, True)
            self._seq += 1
            heapq.heappush(self._expiry, (b.expires_at, self._seq, username, key))
            if len(self._expiry) > self.expiry_limit:
                self._compact_expiry()
        if changes and self.on_bindings is not None:
            self.on_bindings(username)

    def _compact_expiry(self) -> None:
        """Rebuild the expiry heap from the live bindings, so it holds about one entry per binding.

        Each refresh leaves the binding's old entry behind (the heap is lazy): a
        phone refreshing every second would grow it with the refresh rate. Rebuilt
        whenever it passes ``expiry_limit``, the cost is linear but amortised.
        """
        entries = []
        for user, mine in self._bindings.items():
            for key, b in mine.items():
                self._seq += 1
                entries.append((b.expires_at, self._seq, user, key))
        heapq.heapify(entries)
        self._expiry = entries

    def _remove(self, username: str, key: str, *, notify: bool = True) -> None:
        mine = self._bindings.get(username)
        if mine is not None and mine.pop(key, None) is not None:
            self._count -= 1
            if not mine:
                del self._bindings[username]
                if self.on_change is not None:
                    self.on_change(username, False)
            if notify and self.on_bindings is not None:
                self.on_bindings(username)

    def _contact_headers(self, username: str, now: float) -> tuple[tuple[str, str], ...]:
        bindings = sorted(self._bindings.get(username, {}).values(), key=lambda b: b.registered_at)
        return tuple(("Contact", f"<{b.contact}>;expires={b.expires_in(now)}") for b in bindings)
