"""Registration of this node to one upper platform, with its keepalives (GB/T 28181 section 9.1,
9.6.1; RFC 3261 section 10.2), sans-I/O.

`UpstreamRegistration` is the lower platform's side of a cascade toward one upstream. It builds
the REGISTER and keepalive MESSAGE requests; the caller sends them (through a client
transaction), feeds back the final responses with `response_received` and the transactions that
timed out with `request_timed_out`, calls `handle_timer(now)` at `next_deadline()`, and drains
`requests_to_send()` and `next_event()` after every call. Time is the caller's monotonic `now`.

The rules:

* The first REGISTER goes without credentials. A 401 (WWW-Authenticate) or 407
  (Proxy-Authenticate) is answered at once with Authorization or Proxy-Authorization (RFC 2617,
  qop=auth when offered, a fresh cnonce, `nc` counting per nonce). Refreshes and the
  unregistration reuse the last challenge with the next `nc`; the retry after a failure starts
  without. A challenge with `stale=true` is retried at once with its new nonce and is not a
  failure; a challenge for the nonce we just answered, without `stale`, means the password is
  wrong and is a failure.
* A 2xx grants the expiry of its Expires header, else of our Contact's `expires` parameter,
  else what we asked (also when it grants 0); the registration is refreshed at 2/3 of it,
  keeping the Call-ID and counting up the CSeq. While registered a `Notify/Keepalive` MESSAGE
  goes every `keepalive_s`.
* A failed attempt (a final answer other than 2xx or a challenge we can answer, or a timeout;
  a failed refresh included) is retried after a backoff of 2 s doubling to 60 s, each delay
  jittered by +-20 %; a 403 (the upstream refuses us) waits the slow end, 60 s, at once.
* Three keepalives in a row timing out (`KEEPALIVE_MISSES`), or any final non-2xx answer to a
  keepalive (the upstream restarted and forgot us: 403, 404, 481...), loses the registration and
  re-registers at once with a new Call-ID, and so does a registration that expires without a
  successful refresh. A 2xx to a keepalive resets the count.
* `stop(now)` sends REGISTER with `Expires: 0` when we hold (or may hold) a registration and
  ends in `stopped` on its final answer or timeout; otherwise it stops at once.

Each request also gets a guard deadline (`request_timeout_s`, 32 s = Timer F with the default
T1) after which it counts as timed out, so the machine never waits forever on a caller that
does not report a lost transaction. Responses and timeouts for requests it does not know (or
no longer waits for) are ignored. Nothing here raises on what the upstream sends; only misuse
of the API (`LocalProtocolError`, e.g. an invalid configuration) does.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from random import random as _default_random

from .auth import build_authorization, parse_digest
from .errors import LocalProtocolError, ParseError
from .headers import Headers
from .manscdp import keepalive
from .message import Request, Response
from .transaction import MAGIC_COOKIE

__all__ = [
    "UpstreamConfig",
    "UpstreamRegistration",
    "RegistrationState",
    "RegistrationSnapshot",
    "RegistrationEvent",
    "Registered",
    "RegistrationFailed",
    "RegistrationLost",
    "KeepaliveMissed",
    "Unregistered",
    "KEEPALIVE_MISSES",
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "BACKOFF_JITTER",
]

KEEPALIVE_MISSES = 3
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER = 0.2
REFRESH_FRACTION = 2 / 3
# Challenges answered within one attempt before it counts as failed (stale nonces included):
# a registrar that challenges forever must not make us loop.
_MAX_CHALLENGES = 4


@dataclass(frozen=True)
class UpstreamConfig:
    """One upper platform and how we register to it.

    `host`/`port`/`transport` address its SIP service; `local_id` is our 20-digit code toward it
    (also the digest username), `contact_host`/`contact_port` where it reaches us. `charset`
    encodes the keepalive bodies (GB2312 or UTF-8).
    """

    upstream_id: str
    realm: str
    host: str
    port: int
    local_id: str
    contact_host: str
    contact_port: int
    password: str
    transport: str = "udp"
    register_expires_s: int = 3600
    keepalive_s: float = 60.0
    charset: str = "GB2312"
    request_timeout_s: float = 32.0

    def __post_init__(self) -> None:
        if self.transport.lower() not in ("udp", "tcp"):
            raise LocalProtocolError(f"unsupported transport {self.transport!r}")
        if self.register_expires_s <= 0:
            raise LocalProtocolError("register_expires_s must be positive")
        if self.keepalive_s <= 0 or self.request_timeout_s <= 0:
            raise LocalProtocolError("keepalive_s and request_timeout_s must be positive")

    @property
    def request_uri(self) -> str:
        return f"sip:{self.upstream_id}@{self.host}:{self.port}"


class RegistrationState(Enum):
    UNREGISTERED = "unregistered"  # not started
    REGISTERING = "registering"  # a REGISTER is out, no registration held
    REGISTERED = "registered"  # registered (a refresh may be out)
    BACKOFF = "backoff"  # the last attempt failed; retrying at `retry_at`
    FAILED = "failed"  # the upstream refused us (403); retrying at the slow end
    STOPPING = "stopping"  # REGISTER with Expires: 0 is out
    STOPPED = "stopped"


@dataclass(frozen=True)
class RegistrationSnapshot:
    """What `GET /api/upstreams` shows for one upstream."""

    state: str
    since: float
    last_error: str | None
    registered_until: float | None


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistrationEvent:
    """Base class of the events `next_event()` returns."""


@dataclass(frozen=True)
class Registered(RegistrationEvent):
    """A REGISTER (first or refresh) was accepted; the registration holds until `until`."""

    until: float


@dataclass(frozen=True)
class RegistrationFailed(RegistrationEvent):
    """An attempt failed (`reason`: status and reason phrase, or what went wrong); the next one
    goes at `retry_at`."""

    reason: str
    retry_at: float


@dataclass(frozen=True)
class RegistrationLost(RegistrationEvent):
    """A registration we held is gone (keepalives unanswered or refused, or it expired); a new
    REGISTER is under way."""

    reason: str


@dataclass(frozen=True)
class KeepaliveMissed(RegistrationEvent):
    """A keepalive timed out; `count` in a row so far."""

    count: int


@dataclass(frozen=True)
class Unregistered(RegistrationEvent):
    """`stop` is done: the upstream answered our `Expires: 0` (`confirmed`), or did not."""

    confirmed: bool


# -- the state machine --------------------------------------------------------------------------


@dataclass
class _Pending:
    kind: str  # "register", "unregister" or "keepalive"
    deadline: float


def _token() -> str:
    return secrets.token_hex(8)


class UpstreamRegistration:
    """The registration of this node to one upper platform; see the module docstring.

    `random` returns floats in [0, 1) for the backoff jitter; `token` returns fresh random text
    for Call-IDs, tags, branches and cnonces. Both are injectable so tests are reproducible.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        random: Callable[[], float] = _default_random,
        token: Callable[[], str] = _token,
    ) -> None:
        self.config = config
        self._random = random
        self._token = token
        self._state = RegistrationState.UNREGISTERED
        self._since = 0.0
        self._last_error: str | None = None
        self._registered_until: float | None = None
        self._out: list[Request] = []
        self._events: deque[RegistrationEvent] = deque()
        self._pending: dict[tuple[str, int, str], _Pending] = {}
        # REGISTER dialog-like state: kept across refreshes, renewed after a loss.
        self._call_id = ""
        self._from_tag = ""
        self._cseq = 0
        self._message_cseq = 0
        self._sn = 0
        # The last challenge: its parsed parameters, whether it came as 407, and nc per nonce.
        self._challenge: dict[str, str] | None = None
        self._proxy = False
        self._nc: dict[str, int] = {}
        self._answered_nonce: str | None = None  # the nonce of the REGISTER that is out
        self._challenges = 0  # challenges answered in this attempt
        self._failures = 0  # failed attempts in a row
        self._misses = 0  # keepalives timed out in a row
        self._retry_at: float | None = None
        self._refresh_at: float | None = None
        self._keepalive_at: float | None = None

    # -- public API -----------------------------------------------------------------------------

    @property
    def state(self) -> RegistrationState:
        return self._state

    def snapshot(self) -> RegistrationSnapshot:
        return RegistrationSnapshot(
            state=self._state.value,
            since=self._since,
            last_error=self._last_error,
            registered_until=self._registered_until,
        )

    def start(self, now: float) -> None:
        """Send the first REGISTER. Only valid once, before anything else."""
        if self._state is not RegistrationState.UNREGISTERED:
            raise LocalProtocolError(f"start() in state {self._state.value}")
        self._new_registration()
        self._set_state(RegistrationState.REGISTERING, now)
        self._send_register(now)

    def stop(self, now: float) -> None:
        """Unregister (`Expires: 0`) if we may hold a registration, then stop. Idempotent."""
        if self._state in (RegistrationState.STOPPING, RegistrationState.STOPPED):
            return
        may_hold = self._registered_until is not None and self._registered_until > now
        self._pending.clear()
        self._retry_at = self._refresh_at = self._keepalive_at = None
        if may_hold or self._state is RegistrationState.REGISTERING:
            self._challenges = 0
            self._set_state(RegistrationState.STOPPING, now)
            self._send_register(now, expires=0)
        else:
            self._finish_stop(now, confirmed=False)

    def response_received(self, response: Response, now: float) -> None:
        """A final response to one of our requests; provisional and unknown ones are ignored."""
        if response.status < 200:
            return
        key = self._key(response)
        pending = self._pending.pop(key, None) if key is not None else None
        if pending is None:
            return
        if pending.kind == "keepalive":
            self._keepalive_answered(response, now)
        else:
            self._register_answered(response, pending.kind, now)

    def request_timed_out(self, request: Request, now: float) -> None:
        """The client transaction of one of our requests timed out (or the transport failed)."""
        key = self._key(request)
        pending = self._pending.pop(key, None) if key is not None else None
        if pending is not None:
            self._timed_out(pending.kind, now)

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at `now`."""
        for key, pending in list(self._pending.items()):
            if pending.deadline <= now and self._pending.get(key) is pending:
                del self._pending[key]
                self._timed_out(pending.kind, now)
        if self._state in (RegistrationState.STOPPING, RegistrationState.STOPPED):
            return
        if self._retry_at is not None and self._retry_at <= now:
            self._retry_at = None
            self._challenges = 0
            self._set_state(RegistrationState.REGISTERING, now)
            self._send_register(now)
        if self._state is not RegistrationState.REGISTERED:
            return
        if self._registered_until is not None and self._registered_until <= now:
            self._lose("registration expired without a refresh", now)
            return
        if self._refresh_at is not None and self._refresh_at <= now:
            self._refresh_at = None
            self._challenges = 0
            self._send_register(now)
        if self._keepalive_at is not None and self._keepalive_at <= now:
            self._keepalive_at = now + self.config.keepalive_s
            self._send_keepalive(now)

    def next_deadline(self) -> float | None:
        """When `handle_timer` should next run; None once stopped (or before `start`)."""
        times = [p.deadline for p in self._pending.values()]
        if self._state is RegistrationState.REGISTERED:
            for when in (self._refresh_at, self._keepalive_at, self._registered_until):
                if when is not None:
                    times.append(when)
        elif self._retry_at is not None and self._state is not RegistrationState.STOPPED:
            times.append(self._retry_at)
        return min(times) if times else None

    def requests_to_send(self) -> list[Request]:
        """The requests built since the last call, oldest first."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> RegistrationEvent | None:
        return self._events.popleft() if self._events else None

    # -- answers --------------------------------------------------------------------------------

    def _register_answered(self, response: Response, kind: str, now: float) -> None:
        status = response.status
        if status in (401, 407):
            self._challenged(response, kind, now)
        elif kind == "unregister":
            self._finish_stop(now, confirmed=200 <= status < 300)
        elif 200 <= status < 300:
            self._accepted(response, now)
        elif status == 403:
            self._failed(f"403 {response.reason}", now, slow=True)
        else:
            self._failed(f"{status} {response.reason}", now)

    def _challenged(self, response: Response, kind: str, now: float) -> None:
        proxy = response.status == 407
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        reason = f"{response.status} {response.reason}"
        try:
            challenge = parse_digest(response.headers.get(header) or "")
        except ParseError as exc:
            self._attempt_failed(kind, f"{reason}: unusable challenge ({exc.reason})", now)
            return
        nonce = challenge.get("nonce")
        stale = challenge.get("stale", "").lower() == "true"
        if not nonce or "realm" not in challenge:
            self._attempt_failed(kind, f"{reason}: challenge without realm or nonce", now)
            return
        if nonce == self._answered_nonce and not stale:
            self._attempt_failed(kind, f"{reason}: credentials refused", now)
            return
        self._challenges += 1
        if self._challenges > _MAX_CHALLENGES:
            self._attempt_failed(kind, f"{reason}: challenged {self._challenges} times", now)
            return
        self._challenge, self._proxy = challenge, proxy
        self._send_register(now, expires=0 if kind == "unregister" else None)

    def _attempt_failed(self, kind: str, reason: str, now: float) -> None:
        if kind == "unregister":
            self._last_error = reason
            self._finish_stop(now, confirmed=False)
        else:
            self._failed(reason, now)

    def _accepted(self, response: Response, now: float) -> None:
        granted = _granted_expiry(response, self.config)
        if granted is None or granted <= 0:
            granted = self.config.register_expires_s
        self._registered_until = now + granted
        self._refresh_at = now + granted * REFRESH_FRACTION
        self._failures = 0
        self._challenges = 0
        if self._state is not RegistrationState.REGISTERED:
            self._misses = 0
            self._keepalive_at = now + self.config.keepalive_s
            self._set_state(RegistrationState.REGISTERED, now)
        self._last_error = None
        self._events.append(Registered(until=self._registered_until))

    def _keepalive_answered(self, response: Response, now: float) -> None:
        if self._state is not RegistrationState.REGISTERED:
            return
        if 200 <= response.status < 300:
            self._misses = 0
        else:
            self._lose(f"keepalive answered {response.status} {response.reason}", now)

    def _timed_out(self, kind: str, now: float) -> None:
        if kind == "unregister":
            self._finish_stop(now, confirmed=False)
        elif kind == "register":
            self._failed("REGISTER timed out", now)
        elif self._state is RegistrationState.REGISTERED:
            self._misses += 1
            self._events.append(KeepaliveMissed(count=self._misses))
            if self._misses >= KEEPALIVE_MISSES:
                self._lose(f"{self._misses} keepalives unanswered", now)

    # -- transitions ----------------------------------------------------------------------------

    def _set_state(self, state: RegistrationState, now: float) -> None:
        if state is not self._state:
            self._state = state
            self._since = now

    def _failed(self, reason: str, now: float, *, slow: bool = False) -> None:
        """An attempt failed: wait, then register again with the same Call-ID."""
        self._failures += 1
        base = BACKOFF_MAX_S if slow else BACKOFF_FIRST_S * 2 ** min(self._failures - 1, 16)
        delay = min(base, BACKOFF_MAX_S) * (1 + BACKOFF_JITTER * (2 * self._random() - 1))
        self._retry_at = now + delay
        self._last_error = reason
        self._drop_registration()
        self._challenge = None  # the retry starts afresh, so an expired nonce cannot fail it
        self._set_state(RegistrationState.FAILED if slow else RegistrationState.BACKOFF, now)
        self._events.append(RegistrationFailed(reason=reason, retry_at=self._retry_at))

    def _lose(self, reason: str, now: float) -> None:
        """A registration we held is gone: register afresh, at once."""
        self._last_error = reason
        self._drop_registration()
        self._events.append(RegistrationLost(reason=reason))
        self._new_registration()
        self._set_state(RegistrationState.REGISTERING, now)
        self._send_register(now)

    def _drop_registration(self) -> None:
        self._registered_until = self._refresh_at = self._keepalive_at = None
        self._misses = 0
        self._challenges = 0
        self._pending.clear()

    def _new_registration(self) -> None:
        self._call_id = self._token()
        self._from_tag = self._token()
        self._challenge = None
        self._nc.clear()

    def _finish_stop(self, now: float, *, confirmed: bool) -> None:
        self._pending.clear()
        self._registered_until = None
        self._set_state(RegistrationState.STOPPED, now)
        self._events.append(Unregistered(confirmed=confirmed))

    # -- building requests ----------------------------------------------------------------------

    def _headers(self, to_user: str, call_id: str, cseq: int, method: str) -> Headers:
        c = self.config
        via = (
            f"SIP/2.0/{c.transport.upper()} {c.contact_host}:{c.contact_port}"
            f";rport;branch={MAGIC_COOKIE}{self._token()}"
        )
        return Headers(
            [
                ("Via", via),
                ("From", f"<sip:{c.local_id}@{c.realm}>;tag={self._from_tag}"),
                ("To", f"<sip:{to_user}@{c.realm}>"),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Max-Forwards", "70"),
            ]
        )

    def _send_register(self, now: float, expires: int | None = None) -> None:
        c = self.config
        if expires is None:
            expires = c.register_expires_s
        self._cseq += 1
        headers = self._headers(c.local_id, self._call_id, self._cseq, "REGISTER")
        headers.add("Contact", f"<sip:{c.local_id}@{c.contact_host}:{c.contact_port}>")
        headers.add("Expires", str(expires))
        self._answered_nonce = None
        if self._challenge is not None:
            nonce = self._challenge["nonce"]
            nc = self._nc.get(nonce, 0) + 1
            self._nc = {nonce: nc}
            try:
                value = build_authorization(
                    self._challenge,
                    username=c.local_id,
                    password=c.password,
                    method="REGISTER",
                    uri=c.request_uri,
                    cnonce=self._token(),
                    nc=nc,
                )
            except LocalProtocolError:
                # An algorithm or qop we cannot answer: send without, and let it fail.
                self._challenge = None
            else:
                headers.add("Proxy-Authorization" if self._proxy else "Authorization", value)
                self._answered_nonce = nonce
        request = Request(headers=headers, method="REGISTER", uri=c.request_uri)
        kind = "unregister" if expires == 0 else "register"
        self._track(request, kind, now)

    def _send_keepalive(self, now: float) -> None:
        c = self.config
        self._message_cseq += 1
        self._sn += 1
        headers = self._headers(c.upstream_id, self._token(), self._message_cseq, "MESSAGE")
        headers.add("Content-Type", "Application/MANSCDP+xml")
        body = keepalive(self._sn, c.local_id, encoding=c.charset)
        request = Request(headers=headers, body=body, method="MESSAGE", uri=c.request_uri)
        self._track(request, "keepalive", now)

    def _track(self, request: Request, kind: str, now: float) -> None:
        key = self._key(request)
        assert key is not None
        self._pending[key] = _Pending(kind, now + self.config.request_timeout_s)
        self._out.append(request)

    @staticmethod
    def _key(message: Request | Response) -> tuple[str, int, str] | None:
        try:
            seq, method = message.cseq
        except ParseError:
            return None
        return message.call_id, seq, method.upper()


def _granted_expiry(response: Response, config: UpstreamConfig) -> int | None:
    """The expiry the registrar granted: Expires, else our Contact's `expires` parameter."""
    try:
        expires = response.expires
    except ParseError:
        expires = None
    if expires is not None:
        return expires
    try:
        contacts = response.contacts
    except ParseError:
        return None
    for contact in contacts:
        value = contact.params.get("expires")
        if contact.uri.user == config.local_id and value is not None and value.isdigit():
            return int(value)
    return None
