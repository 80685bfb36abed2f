"""GB/T 28181 registrar and MESSAGE policy (GB/T 28181-2016 9.1, 9.5, 9.6, 9.10).

REGISTER: device ID check (403 Invalid Device ID / Device Not Allowed), digest challenge (401,
with stale=true for expired or replayed nonces; each nonce is bound to one source address and
one device ID), 403 on a wrong password or username with per-source rate limiting, 200 with the
GB28181 `Date` header (time sync) and the granted `Expires`; `Expires: 0` unregisters. Only an
authenticated REGISTER sets where a device is reached (transport, address, port). A device
configured with `auth: none` is accepted without digest, but only from its `from` network (403
Source Not Allowed elsewhere), and logged as unauthenticated at every registration. REGISTERs
per device ID and MESSAGEs per device are limited (`devices.register_rate`,
`devices.message_rate`): past the limit 503 with Retry-After, logged once per device a minute.

MESSAGE: a device without a valid registration gets 403 Device Not Registered (devices take a
failed keepalive as a reason to register again), and one sent from anywhere but the device's
registered transport, address and port gets 403 Source Mismatch and changes nothing (unless
the device is configured with `follow_source`). A body that is not acceptable MANSCDP (hostile
XML, undecodable, oversized) gets 400; anything else is answered 200 at once and its content is
handled afterwards, from a bounded queue (503 with Retry-After when it is full). A device's
RecordInfo query is answered for its own channels only.

Both policies are written once over `_Incoming`: a request from the parser and the transaction
layer (`_Parsed`, answered with a `Response`) or a UDP REGISTER or keepalive recognised from its
bytes (`_Fast`, from `sip.fastpath` through `fast_request`, answered with the same bytes).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sip import auth, ids, manscdp
from sip.errors import ParseError
from sip.fastpath import FastRequest
from sip.manscdp import ManscdpMessage, parse_manscdp
from sip.message import Request, Response
from sip.transaction import Peer, RequestReceived

from ..runtime.ratelimit import FailureLockout, LogThrottle, TokenBuckets
from ..runtime.stats import Stats
from ..settings import Settings
from .registry import Device, Registry

if TYPE_CHECKING:
    from ..transport.sip import SipEndpoint
    from .queries import DeviceQueries

log = logging.getLogger(__name__)

GB_VERSIONS = {"1.0": "2011", "1.1": "2011", "2.0": "2016", "3.0": "2022"}
MIN_EXPIRES = 60


class RecordSearch(Protocol):
    """Answers a device's Query/RecordInfo from the node's recordings: the Response bodies, in
    order; `known` False answers for an unknown channel."""

    def __call__(self, query: ManscdpMessage, *, known: bool) -> Awaitable[list[bytes]]: ...


class Registrar:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        stats: Stats,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_pending: int = 10_000,
        max_nonces: int = 100_000,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.stats = stats
        self.wall = wall
        # Nonce lifetimes, lockouts, rate limits and registration expiry are measured on the
        # monotonic clock, which a stepped wall clock does not move; the wall clock only dates
        # what is written down and the Date header.
        self.mono = monotonic
        self._endpoint: SipEndpoint | None = None
        # Requests in an upstream's name are the cascade's (Node._route): never fast-pathed.
        self._upstream_ids = frozenset(upstream.id for upstream in settings.upstreams)
        self.queries: DeviceQueries | None = None
        #: in-dialog requests (BYE) of the node's sessions with devices; False: not one of them
        self.dialog_requests: Callable[[RequestReceived], bool] | None = None
        self.record_search: RecordSearch | None = None
        self.nonces = auth.NonceTracker(os.urandom(16), lifetime_s=300.0, max_nonces=max_nonces)
        self.to_tag = os.urandom(4).hex()
        # A device may send a burst (catalog parts) but not a flood.
        limits = settings.devices
        self.message_buckets = TokenBuckets(limits.message_rate.per_s, limits.message_rate.burst)
        self.register_buckets = TokenBuckets(limits.register_rate.per_s,
                                             limits.register_rate.burst)
        self.auth_lockout = FailureLockout(limit=5, window_s=60.0, lockout_s=60.0)
        # Refusals a device can provoke at will are logged once per device per minute.
        self.refusal_log = LogThrottle(interval_s=60.0)
        self.pending: deque[tuple[Device, ManscdpMessage]] = deque()
        self.max_pending = max_pending
        self._drain_scheduled = False

    def apply_settings(self, settings: Settings) -> None:
        """Take reloaded settings: passwords, allow-lists, per-device overrides, expiry and
        time sync apply from each device's next request on; a registered device stays
        registered until its registration ends or its next REGISTER is refused. A changed
        flood limit starts every device's bucket afresh."""
        old, new = self.settings.devices, settings.devices
        self.settings = settings
        self._upstream_ids = frozenset(upstream.id for upstream in settings.upstreams) \
            | self._upstream_ids  # the cascade may still hold the old ones for a while
        if new.message_rate != old.message_rate:
            self.message_buckets = TokenBuckets(new.message_rate.per_s, new.message_rate.burst)
        if new.register_rate != old.register_rate:
            self.register_buckets = TokenBuckets(new.register_rate.per_s,
                                                 new.register_rate.burst)

    @property
    def endpoint(self) -> SipEndpoint | None:
        return self._endpoint

    @endpoint.setter
    def endpoint(self, endpoint: SipEndpoint | None) -> None:
        """The SIP endpoint answers go out through; its UDP REGISTERs and keepalives of the
        usual shape come to `fast_request` from then on (sip.fastpath)."""
        if self._endpoint is not None and self._endpoint.fast_path == self.fast_request:
            self._endpoint.fast_path = None
        self._endpoint = endpoint
        if endpoint is not None:
            endpoint.fast_path = self.fast_request

    # ----- dispatch -----
    def on_request(self, event: RequestReceived) -> None:
        method = event.request.method
        if method == "REGISTER":
            self._register(_Parsed(event, self))
        elif method == "MESSAGE":
            # In a dialog of ours (a device's MediaStatus at the end of a playback of its
            # recordings): From names the channel we INVITEd, not the device.
            if event.request.to.tag and self.dialog_requests is not None \
                    and self.dialog_requests(event):
                return
            self._message(_Parsed(event, self))
        elif method == "OPTIONS":
            self._answer(event, 200)
        elif method == "ACK":
            return
        elif method == "BYE":
            if self.dialog_requests is None or not self.dialog_requests(event):
                self._answer(event, 481)
        elif method == "CANCEL":
            self._answer(event, 481)  # we accept no INVITE, so there is nothing to cancel
        elif method in ("INVITE", "NOTIFY", "SUBSCRIBE", "INFO"):
            self._answer(event, 405)
        else:
            self._answer(event, 501)

    def _answer(self, event: RequestReceived, status: int, reason: str | None = None) -> None:
        self._reply(event, Response.for_request(event.request, status, reason, to_tag=self.to_tag))

    def _reply(self, event: RequestReceived, response: Response) -> None:
        assert self.endpoint is not None
        self.endpoint.respond(event, response)

    def fast_request(self, request: FastRequest, peer: Peer) -> bool:
        """A REGISTER or keepalive MESSAGE recognised from its bytes (`sip.fastpath`), put
        through the same transaction handling and the same policy as on the full path, and
        answered with the same bytes. False, with nothing done, hands it to the full path."""
        endpoint = self._endpoint
        if endpoint is None or request.device_id in self._upstream_ids:
            return False
        if not endpoint.fast_transaction(request, peer):
            return True  # a retransmission, answered from the transaction cache
        incoming = _Fast(request, peer, self)
        try:
            if request.method == "REGISTER":
                self._register(incoming)
            else:
                self._message(incoming)
        except Exception:
            log.exception("error handling %s from %s", request.method, peer)
            incoming.answer(500, to_tag=False)
        return True

    # ----- REGISTER -----
    def _register(self, req: _Incoming) -> None:
        now = self.mono()
        device_id = req.device_id  # the parser has checked From already
        peer = req.peer
        problem = ids.check_device_id(device_id)
        if problem is not None:
            log.info("REGISTER refused: %r from %s: %s", device_id, peer.host, problem)
            req.answer(403, "Invalid Device ID")
            return
        if not self.settings.devices.allowed(device_id):
            req.answer(403, "Device Not Allowed")
            return
        if not self._may_register_from(device_id, peer.host):
            self._log_refusal(f"from/{device_id}", now, "REGISTER %s from %s refused: outside "
                              "its network %s (devices.overrides.%s.from)", device_id,
                              peer.host, self.settings.devices.network_for(device_id),
                              device_id)
            req.answer(403, "Source Not Allowed")
            return
        source = f"{peer.host}/{device_id}"
        if self.auth_lockout.locked(source, now):
            self.stats.auth_rate_limited += 1
            req.answer(403, "Too Many Failed Attempts")
            return
        if not self.register_buckets.allow(device_id, now):
            rate = self.settings.devices.register_rate
            self._log_refusal(f"flood/{device_id}", now, "REGISTER %s from %s: 503, over "
                              "devices.register_rate (%g/s, burst %d)", device_id,
                              peer.host, rate.per_s, rate.burst)
            self._overloaded(req, "flooded")
            return
        if self.registry.full(device_id):
            self._overloaded(req, "registry_full")
            return
        if self.settings.devices.unauthenticated(device_id):
            # Only from its `from` network (checked above); the password plays no part.
            log.warning("REGISTER %s from %s %s:%d accepted WITHOUT authentication "
                        "(devices.overrides.%s.auth: none)", device_id, peer.transport,
                        peer.host, peer.port, device_id)
            self._accept(req, device_id)
            return
        header = req.header("authorization")
        if header is None:
            self._challenge(req, now, source, stale=False)
            return
        try:
            creds = auth.parse_digest(header)
        except ParseError:
            req.answer(400, "Bad Authorization Header")
            return
        # The nonce is bound to this source address and device ID (`source`); with qop=auth
        # each request must count `nc` up, without qop a nonce serves one REGISTER.
        nonce = creds.get("nonce", "")
        nc = creds.get("nc", "") if creds.get("qop") else None
        verdict = self.nonces.check(nonce, now, source, nc)
        if verdict != "ok":
            if verdict == "replayed":
                self.stats.dropped["replayed_nonce"] += 1
                self._log_refusal(f"replay/{device_id}", now, "REGISTER %s from %s: nonce "
                                  "used before", device_id, peer.host)
            self._challenge(req, now, source, stale=verdict in ("stale", "replayed"))
            return
        password = self.settings.devices.password_for(device_id)
        username = self.settings.devices.username_for(device_id)
        if (
            creds.get("realm") != self.settings.node.realm
            or (username is not None and creds.get("username") != username)
            or not auth.verify(creds, method="REGISTER", password=password)
        ):
            self.stats.auth_failures += 1
            self.auth_lockout.fail(source, now)
            log.warning("REGISTER %s from %s: wrong credentials", device_id, peer.host)
            req.answer(403, "Forbidden")
            return
        self.nonces.use(nonce, nc)
        self.auth_lockout.succeed(source)
        self._accept(req, device_id)

    def _challenge(self, req: _Incoming, now: float, bind: str, *, stale: bool) -> None:
        nonce = self.nonces.make(now, bind)
        value = auth.build_challenge(self.settings.node.realm, nonce, stale=stale)
        req.answer(401, None, (("WWW-Authenticate", value),))

    def _accept(self, req: _Incoming, device_id: str) -> None:
        now = self.wall()  # written down and sent; the registry takes expiry from `mono`
        expires = req.requested_expires()
        headers: list[tuple[str, str]] = []
        contact = req.header("contact") or ""
        gb_ver = req.header("x-gb-ver")
        old = self.registry.get(device_id)
        old_peer = None
        if old is not None and old.transport == "tcp" and old.remote:
            old_peer = Peer("tcp", *old.host_port)
        if expires == 0:
            self.registry.unregister(device_id, now)
            headers.append(("Expires", "0"))
            if old_peer is not None and self.endpoint is not None:
                self.endpoint.release(old_peer, device_id)
        else:
            granted = min(max(expires, MIN_EXPIRES), self.settings.devices.register_expires_s)
            peer = req.peer
            dev, fresh = self.registry.register(
                device_id,
                now=now,
                expires=granted,
                transport=peer.transport,
                remote=f"{peer.host}:{peer.port}",
                contact=contact,
                call_id=req.call_id,
                user_agent=req.header("user-agent") or "",
                gb_version=GB_VERSIONS.get(gb_ver.strip(), gb_ver.strip()) if gb_ver else None,
            )
            if self.endpoint is not None:
                if old_peer is not None and old_peer != peer:
                    self.endpoint.release(old_peer, device_id)  # it moved: not its own now
                if peer.reliable:
                    self.endpoint.adopt(peer, device_id)  # its own connection: no idle timeout
            if contact:
                headers.append(("Contact", contact))
            headers.append(("Expires", str(granted)))
            if self.settings.devices.time_sync:
                headers.append(("Date", gb_date(now, self.settings)))
            if fresh and self.queries is not None:
                self.queries.device_registered(dev)
        if gb_ver:
            headers.append(("X-GB-Ver", gb_ver))
        req.answer(200, None, tuple(headers))

    def _overloaded(self, req: _Incoming, kind: str) -> None:
        self.stats.dropped[kind] += 1
        req.answer(503, None, (("Retry-After", "5"),))

    # ----- MESSAGE -----
    def _message(self, req: _Incoming) -> None:
        now = self.mono()
        device_id = req.device_id
        dev = self.registry.get(device_id)
        if dev is None or not dev.registered(now):
            req.answer(403, "Device Not Registered")
            return
        peer = req.peer
        remote = f"{peer.host}:{peer.port}"
        if (remote != dev.remote or peer.transport != dev.transport) and not (
            self.settings.devices.follows_source(device_id) and self._may_register_from(
                device_id, peer.host)
        ):
            # Only an authenticated REGISTER moves a device; a MESSAGE carrying its ID from
            # elsewhere neither refreshes nor moves it (and cannot drain its flood budget).
            self.stats.dropped["source_mismatch"] += 1
            self._log_refusal(f"source/{device_id}", now, "MESSAGE for %s from %s %s refused: "
                              "registered at %s %s", device_id, peer.transport, remote,
                              dev.transport, dev.remote)
            req.answer(403, "Source Mismatch")
            return
        if not self.message_buckets.allow(device_id, now):
            rate = self.settings.devices.message_rate
            self._log_refusal(f"flood/{device_id}", now, "MESSAGE from %s: 503, over "
                              "devices.message_rate (%g/s, burst %d)", device_id, rate.per_s,
                              rate.burst)
            self._overloaded(req, "flooded")
            return
        try:
            msg = parse_manscdp(req.body)
        except ParseError as exc:
            log.warning("MESSAGE from %s refused: %s", device_id, exc)
            reason = "Bad MANSCDP Body" if exc.status_hint == 400 else None
            req.answer(exc.status_hint, reason)
            return
        dev.charset = answer_charset(msg, req.body, dev.charset)
        if msg.cmd_type == "Keepalive":
            self.registry.keepalive(device_id, now=self.wall(), transport=peer.transport,
                                    remote=remote)
            req.answer(200)
            if self.queries is not None:
                self.queries.keepalive(dev)  # a Catalog it left unanswered is asked again
            return
        if msg.root == "Query" and msg.cmd_type == "RecordInfo" and self.record_search is not None:
            req.answer(200)
            # A device learns about its own channels only (upper platforms are the cascade's
            # business): another device's channel is answered as an unknown one.
            own = self.registry.channel_device(msg.device_id) is dev
            if not own:
                self.stats.dropped["foreign_query"] += 1
                self._log_refusal(f"query/{device_id}", now, "RecordInfo from %s about %s, not "
                                  "one of its channels: answered as unknown", device_id,
                                  msg.device_id)
            self.endpoint.loop.create_task(  # type: ignore[union-attr]
                self._record_info(dev, msg, own)
            )
            return
        if msg.root != "Response":
            req.answer(200)  # notifications (Alarm, MediaStatus ...) come later
            return
        if len(self.pending) >= self.max_pending:
            self._overloaded(req, "overloaded")
            return
        req.answer(200)
        self.pending.append((dev, msg))
        if not self._drain_scheduled and self.endpoint is not None:
            self._drain_scheduled = True
            self.endpoint.loop.call_soon(self._drain)

    def _may_register_from(self, device_id: str, host: str) -> bool:
        network = self.settings.devices.network_for(device_id)
        return network is None or in_network(host, network)

    def _log_refusal(self, key: str, now: float, message: str, *args: object) -> None:
        held = self.refusal_log.allow(key, now)
        if held is not None:
            more = f" ({held} more not logged)" if held else ""
            log.warning(message + "%s", *args, more)

    async def _record_info(self, dev: Device, query: ManscdpMessage, own: bool) -> None:
        """Answer a RecordInfo query from our own index, one MESSAGE per part, in order."""
        assert self.record_search is not None and self.queries is not None
        try:
            parts = await self.record_search(query, known=own)
            for body in parts:
                response = await self.queries.send(dev, body)
                if response.status >= 300:
                    log.info("RecordInfo answer to %s refused: %d", dev.id, response.status)
                    return
        except Exception as exc:
            log.warning("RecordInfo answer to %s failed: %s", dev.id, exc)

    def _drain(self) -> None:
        self._drain_scheduled = False
        for _ in range(len(self.pending)):
            dev, msg = self.pending.popleft()
            try:
                if self.queries is not None:
                    self.queries.response_received(dev, msg)
            except Exception:
                log.exception("error handling %s from %s", msg.cmd_type, dev.id)


class _Incoming(Protocol):
    """What the REGISTER and MESSAGE policy reads of a request and how it answers it, the same
    for a parsed request (`_Parsed`) and one recognised from its bytes (`_Fast`)."""

    peer: Peer
    device_id: str
    call_id: str
    body: bytes

    def header(self, key: str) -> str | None: ...

    def requested_expires(self) -> int: ...

    def answer(self, status: int, reason: str | None = None,
               headers: tuple[tuple[str, str], ...] = (), *, to_tag: bool = True) -> None: ...


class _Parsed:
    """A request from the parser and the transaction layer; answered with a `Response`."""

    __slots__ = ("event", "request", "peer", "device_id", "call_id", "body", "registrar")

    def __init__(self, event: RequestReceived, registrar: Registrar) -> None:
        self.event = event
        self.request = req = event.request
        self.peer = event.peer
        self.device_id = req.from_.uri.user or ""
        self.call_id = req.call_id
        self.body = req.body
        self.registrar = registrar

    def header(self, key: str) -> str | None:
        return self.request.headers.get(key)

    def requested_expires(self) -> int:
        return requested_expires(self.request)

    def answer(self, status: int, reason: str | None = None,
               headers: tuple[tuple[str, str], ...] = (), *, to_tag: bool = True) -> None:
        registrar = self.registrar
        response = Response.for_request(self.request, status, reason,
                                        to_tag=registrar.to_tag if to_tag else None)
        for name, value in headers:
            response.headers.add(name, value)
        registrar._reply(self.event, response)


class _Fast:
    """A request recognised from its bytes (`sip.fastpath`); answered with bytes."""

    __slots__ = ("request", "peer", "device_id", "call_id", "body", "registrar")

    def __init__(self, request: FastRequest, peer: Peer, registrar: Registrar) -> None:
        self.request = request
        self.peer = peer
        self.device_id = request.device_id
        self.call_id = request.call_id
        self.body = request.body
        self.registrar = registrar

    def header(self, key: str) -> str | None:
        return self.request.header(key)

    def requested_expires(self) -> int:
        # A recognised Contact has no parameters, so no expires parameter either.
        expires = self.request.expires
        return 3600 if expires is None else expires

    def answer(self, status: int, reason: str | None = None,
               headers: tuple[tuple[str, str], ...] = (), *, to_tag: bool = True) -> None:
        registrar = self.registrar
        request = self.request
        data = request.response(status, reason, to_tag=registrar.to_tag if to_tag else None,
                                headers=headers)
        assert registrar.endpoint is not None
        registrar.endpoint.respond_bytes(request.key, status, data, self.peer)


def in_network(host: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether the address `host` lies in `network`; an IPv4 peer seen through an IPv6 socket
    (::ffff:a.b.c.d) counts as its IPv4 address, and anything unparsable as outside."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in network


def requested_expires(req: Request) -> int:
    """Expires header, else the Contact's expires parameter, else 3600 (devices omit both).

    Both were range-checked by `validate_request` before the registrar sees the request.
    """
    if req.expires is not None:
        return req.expires
    for contact in req.contacts:
        value = contact.params.get("expires")
        if value is not None:
            return int(value.strip())
    return 3600


def gb_date(now: float, settings: Settings) -> str:
    """GB/T 28181 9.10.3 time sync: local time, milliseconds, no zone.

    The text up to the second is worked out once a second (every registration's 200 carries
    one). The microseconds are rounded as `datetime.fromtimestamp` rounds them, and the
    milliseconds then truncated as `format_gb_time` truncates them: the same text as theirs."""
    tz = settings.node.tz
    second = int(now // 1)
    micros = round((now - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _DATE
    if cached[0] != second or cached[1] is not tz:
        cached[:] = [second, tz, manscdp.format_gb_time(datetime.fromtimestamp(second, tz))]
    return f"{cached[2]}.{micros // 1000:03d}"


# (Unix second, zone, the Date text up to that second) of the last `gb_date`
_DATE: list[Any] = [None, None, ""]


def answer_charset(msg: ManscdpMessage, body: bytes, previous: str) -> str:
    """The encoding label to answer a device with: what it really sent, named as it names it."""
    declared = (msg.declared_encoding or "").upper()
    if msg.encoding == "UTF-8":
        if body.isascii():
            return declared or previous  # nothing to learn from ASCII but the label
        return "UTF-8"
    return declared if declared.startswith("GB") else "GB18030"
