"""A simulated upper platform (a district sensing center such as WVP-GB28181-pro) for tests.

It plays the upstream's side of a cascade toward our node, over loopback: SIP over UDP and TCP
on its own port (`transport.sip.SipEndpoint`), the node as a lower platform registering to it.

Signalling:

* REGISTER with digest (`sip.auth`): 401 with a fresh nonce and qop=auth, then the node's
  credentials are checked against the platform's realm and password (403 when wrong), 200 with
  `Expires` (capped at `register_expires_s`) and the GB `Date`; `Expires: 0` unregisters.
  `registrations` counts new registrations (a new Call-ID, or the first after an
  unregistration or a restart), `refreshes` the REGISTERs that renew one, and `registered` is an
  event that is set while the node holds a registration. `mode` makes the platform refuse
  (`forbid`: 403 to REGISTER and MESSAGE) or play dead (`ignore`: nothing is answered).
  `stop()` and `start()` again bind the same port, so a test can restart the platform under the
  node (which then gets 403 to its keepalives: a restarted platform has forgotten it).
* Keepalive MESSAGEs are answered 200 (`keepalives` counts them); Catalog, DeviceInfo and
  DeviceStatus queries are sent to the node and its Response MESSAGEs collected (each answered
  200) until SumNum distinct items came; a catalog SUBSCRIBE collects the node's NOTIFY items
  into a queue.
* `invite()` pulls a channel as WVP does (`sip.sdp.play_offer`: our media address, PS on 96,
  `a=setup`/`a=connection:new` for TCP, `y=`), waits for the final answer, ACKs a 2xx, and
  returns an `UpstreamSession`; `start_invite()` returns it before the answer so that it can be
  cancelled. `session="Playback"` or `"Download"` asks for a recorded range instead (2016
  section 9.8, 9.9): `u=<channel>:0`, `t=<start> <end>` in Unix seconds, a `y=` of the history
  kind (first digit 1), for a download `a=downloadspeed:N` and, with `ask_filesize`,
  `a=filesize:0`. The answer must repeat `s=` and `t=`.
* The MediaStatus MESSAGE that ends a playback or download (`Notify/MediaStatus`, NotifyType
  121) is found by its Call-ID, answered 200 and kept on the session (`media_status`,
  `wait_media_status()`); then, as wvp does, the session hangs up with BYE (`bye_on_end`),
  once its media has been quiet for `end_grace_s` (the MESSAGE may overtake the last packets).
  `UpstreamSession.info()` sends a MANSRTSP request (PLAY with Range or Scale, PAUSE,
  TEARDOWN) as an in-dialog INFO and reads the MANSRTSP reply of its 200.

Media: an `UpstreamSession` receives RTP over UDP, or over TCP with RFC 4571 framing, either
connecting to the node's answered port (`tcp-active`: we offered `a=setup:active`) or listening
for the node (`tcp-passive`). Every packet is checked (SSRC = the answered `y=`, else the offered
one; payload type 96; sequence numbers continuous) and what is wrong is counted and described
in `problems` (bounded). The payloads go through `transport.rtp.MediaIngest` (frame assembly and
the PS demuxer), and the access units (PS bytes, PTS, keyframe, elementary data) are kept, at
most `max_units` of them and `max_unit_bytes` bytes, so a test can compare them with what the
camera sent and decode them. Whatever the bound, every session keeps a running SHA-256 and byte
count of the payloads in the order they came (for a recorded range they are the stored PS of
the frames sent, so `payload_sha256` compares with the store), the video frames and RTP markers
counted, the arrival times of the first and last frame and the PTS span they cover
(`media_seconds`, `wall_seconds`, `pace`); `keep_bytes` also keeps the payloads themselves, up
to `max_kept_bytes`. `stall()` stops reading a TCP stream so that the node's sender
backs up; `resume()` reads again.

Everything the platform holds is bounded: queued NOTIFY items, unsolicited MESSAGEs, problems
per session, units and kept payload bytes per session, the TCP deframer's buffer
(`rtp.framing.Deframer`, 1 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rtp.errors import RtpError
from rtp.framing import Deframer
from rtp.packet import RtpPacket, is_rtcp, peek_rtp_header
from rtp.ps import AccessUnit
from sip import auth, manscdp
from sip.catalog import CatalogEvent
from sip.dialog import Dialog
from sip.errors import ParseError, SipError
from sip.headers import Headers
from sip.mansrtsp import CONTENT_TYPE as MANSRTSP_CONTENT_TYPE
from sip.mansrtsp import (
    MansrtspError,
    MansrtspReply,
    MansrtspRequest,
    build_mansrtsp,
    parse_mansrtsp_reply,
)
from sip.message import Request, Response
from sip.playback import MediaStatus, media_status_of, unix_to_sdp_time
from sip.sdp import SessionDescription, build_sdp, parse_sdp, play_offer, subject_header
from sip.transaction import Peer, RequestReceived, ResponseReceived, TimerValues

from ..transport.rtp import MediaIngest
from ..transport.sip import SipEndpoint, TransactionTimeout

__all__ = [
    "MODES",
    "PlatformConfig",
    "RegisteredNode",
    "SimulatedUpstream",
    "CatalogSubscriptionHandle",
    "UpstreamSession",
    "UpstreamError",
    "InfoAnswer",
    "SESSION_NAMES",
]

log = logging.getLogger(__name__)

MODES = ("accept", "forbid", "ignore")
SESSION_TRANSPORTS = ("udp", "tcp-active", "tcp-passive")
MAX_PROBLEMS = 100  # described problems kept per session (all are counted)
MAX_MESSAGES = 256  # unsolicited MESSAGE bodies kept
MAX_NOTIFY_EVENTS = 10_000  # catalog NOTIFY items queued per subscription
SESSION_NAMES = ("Play", "Playback", "Download")
MAX_KEPT_BYTES = 64 << 20  # payload bytes a session keeps with keep_bytes
PTS_CLOCK = 90_000
#: A PTS step longer than this (or back by more) is a discontinuity, not media time: a recording
#: gap skipped, a camera that restarted its clock.
MAX_PTS_STEP = 2 * PTS_CLOCK
_PTS_WRAP = 1 << 33
_USER_AGENT = "sensing-node simulated upstream"


class UpstreamError(Exception):
    """What the simulated platform asked of the node did not happen (no registration, a query
    refused or unanswered)."""


@dataclass
class PlatformConfig:
    """Who the platform is and where it listens.

    `port` 0 picks a free port at the first `start()`; it is kept, so a restart binds it again.
    `media_host` is the address offered for media (and bound for it). `register_expires_s` caps
    the expiry granted to the node.
    """

    platform_id: str = "31011200002000000100"
    realm: str = "3101120000"
    password: str = "upstream-password"
    host: str = "127.0.0.1"
    port: int = 0
    media_host: str = "127.0.0.1"
    charset: str = "GB2312"
    register_expires_s: int = 3600
    nonce_lifetime_s: float = 300.0


@dataclass
class RegisteredNode:
    """The lower platform registered to us: its ID, where its REGISTER came from (requests go
    back there, over its TCP connection when it uses TCP), its Contact and registration."""

    node_id: str
    peer: Peer
    contact: str
    call_id: str
    expires: int
    registered_at: float  # loop time


@dataclass
class _Query:
    cmd_type: str
    sn: int
    done: asyncio.Future[None]
    items: dict[str, dict[str, str]] = field(default_factory=dict)
    messages: list[manscdp.ManscdpMessage] = field(default_factory=list)
    sum_num: int | None = None
    records: list[dict[str, str]] = field(default_factory=list)  # RecordInfo items


class SimulatedUpstream:
    """An upper platform toward one node; see the module docstring."""

    def __init__(self, config: PlatformConfig, *, timers: TimerValues | None = None) -> None:
        self.config = config
        self.timers = timers
        self.mode = "accept"
        self.endpoint: SipEndpoint | None = None
        self.local: tuple[str, int] | None = None
        self.registered = asyncio.Event()
        self.node: RegisteredNode | None = None
        self.registrations = 0
        self.refreshes = 0
        self.unregistrations = 0
        self.challenges = 0
        self.auth_failures = 0
        self.keepalives = 0
        self.keepalive_seen = asyncio.Event()  # set at every keepalive; clear it to wait anew
        self.requests_received: dict[str, int] = {}
        self.messages: deque[manscdp.ManscdpMessage] = deque(maxlen=MAX_MESSAGES)
        self.sessions: dict[str, UpstreamSession] = {}
        self.subscriptions: dict[str, CatalogSubscriptionHandle] = {}
        self._nonces: auth.NonceTracker | None = None
        self._queries: dict[tuple[str, int], _Query] = {}
        self._sn = itertools.count(1)
        self._cseq = itertools.count(1)
        self._ssrc_serial = itertools.count(1)
        self._background: set[asyncio.Future[Response]] = set()
        self._acks: dict[str, tuple[bytes, Peer]] = {}  # ACK per Call-ID, for repeated 2xx

    # ----- life cycle -----
    async def start(self) -> tuple[str, int]:
        """Listen on UDP and TCP (the configured port, or a free one kept for restarts)."""
        if self.endpoint is not None:
            raise RuntimeError("the simulated upstream is running already")
        endpoint = SipEndpoint(self._on_request, timers=self.timers)
        endpoint.on_response = self._on_response
        for attempt in range(40):
            try:
                self.local = await endpoint.listen(self.config.host, self.config.port)
                break
            except OSError:
                # A transport closed by stop() lets its port go on a later loop iteration.
                if not self.config.port or attempt == 39:
                    raise
                await asyncio.sleep(0.05)
        assert self.local is not None
        self.config.port = self.local[1]
        self.endpoint = endpoint
        # A restarted platform has forgotten its nonces and who registered.
        self._nonces = auth.NonceTracker(os.urandom(16), self.config.nonce_lifetime_s, 1000)
        return self.local

    async def stop(self) -> None:
        """Close everything: sessions, subscriptions, pending queries, the SIP port. The
        registration is forgotten (as by a restarted platform); `start()` may follow."""
        for session in list(self.sessions.values()):
            session.close("platform stopped")
        self.sessions.clear()
        self.subscriptions.clear()
        for query in self._queries.values():
            if not query.done.done():
                query.done.set_exception(UpstreamError("platform stopped"))
                query.done.exception()  # retrieved: nobody may be waiting any more
        self._queries.clear()
        for future in list(self._background):
            future.cancel()
        self._background.clear()
        self._acks.clear()
        self.node = None
        self.registered.clear()
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            await endpoint.close()

    close = stop

    async def restart(self) -> None:
        """Stop and start again on the same port."""
        await self.stop()
        await self.start()

    async def wait_registered(self, timeout: float = 10.0) -> RegisteredNode:
        try:
            await asyncio.wait_for(self.registered.wait(), timeout)
        except TimeoutError:
            raise UpstreamError(f"the node did not register within {timeout} s") from None
        assert self.node is not None
        return self.node

    @property
    def sip(self) -> SipEndpoint:
        if self.endpoint is None:
            raise UpstreamError("the simulated upstream is not running")
        return self.endpoint

    # ----- requests from the node -----
    def _on_request(self, event: RequestReceived) -> None:
        method = event.request.method
        self.requests_received[method] = self.requests_received.get(method, 0) + 1
        if self.mode == "ignore" and method != "ACK":
            return
        match method:
            case "REGISTER":
                self._register(event)
            case "MESSAGE":
                self._message(event)
            case "NOTIFY":
                self._notify(event)
            case "BYE":
                self._bye(event)
            case "ACK":
                pass
            case "OPTIONS":
                self._reply(event, 200)
            case "CANCEL":
                self._reply(event, 481)
            case _:
                self._reply(event, 405)

    def _reply(self, event: RequestReceived, status: int, reason: str | None = None) -> None:
        self.sip.respond(event, Response.for_request(event.request, status, reason,
                                                     to_tag=self._to_tag(event.request)))

    @staticmethod
    def _to_tag(request: Request) -> str:
        return request.call_id.encode().hex()[:8] or "up"

    def _register(self, event: RequestReceived) -> None:
        request, cfg = event.request, self.config
        if self.mode == "forbid":
            self._reply(event, 403, "Forbidden")
            return
        node_id = request.from_.uri.user or ""
        bind = f"{event.peer.host}/{node_id}"
        now = self.sip.loop.time()
        assert self._nonces is not None
        header = request.headers.get("Authorization")
        if header is None:
            self._challenge(event, now, bind, stale=False)
            return
        try:
            creds = auth.parse_digest(header)
        except ParseError:
            self._reply(event, 400, "Bad Authorization Header")
            return
        nonce = creds.get("nonce", "")
        nc = creds.get("nc", "") if creds.get("qop") else None
        verdict = self._nonces.check(nonce, now, bind, nc)
        if verdict != "ok":
            self._challenge(event, now, bind, stale=verdict in ("stale", "replayed"))
            return
        if (
            creds.get("realm") != cfg.realm
            or creds.get("username") != node_id
            or not auth.verify(creds, method="REGISTER", password=cfg.password)
        ):
            self.auth_failures += 1
            self._reply(event, 403, "Forbidden")
            return
        self._nonces.use(nonce, nc)
        self._accept(event, node_id)

    def _challenge(self, event: RequestReceived, now: float, bind: str, *, stale: bool) -> None:
        assert self._nonces is not None
        self.challenges += 1
        response = Response.for_request(event.request, 401, to_tag=self._to_tag(event.request))
        nonce = self._nonces.make(now, bind)
        response.headers.add("WWW-Authenticate",
                             auth.build_challenge(self.config.realm, nonce, stale=stale))
        self.sip.respond(event, response)

    def _accept(self, event: RequestReceived, node_id: str) -> None:
        request = event.request
        try:
            asked = request.expires
        except ParseError:
            asked = None
        expires = self.config.register_expires_s if asked is None else asked
        response = Response.for_request(request, 200, to_tag=self._to_tag(request))
        if expires == 0:
            if self.node is not None:
                self.unregistrations += 1
            self.node = None
            self.registered.clear()
            response.headers.add("Expires", "0")
            self.sip.respond(event, response)
            return
        granted = min(expires, self.config.register_expires_s)
        old = self.node
        if old is not None and old.node_id == node_id and old.call_id == request.call_id:
            self.refreshes += 1
        else:
            self.registrations += 1
        contact = request.headers.get("Contact") or ""
        self.node = RegisteredNode(node_id, event.peer, contact, request.call_id, granted,
                                   self.sip.loop.time())
        if event.peer.reliable:
            self.sip.adopt(event.peer, node_id)
        if contact:
            response.headers.add("Contact", contact)
        response.headers.add("Expires", str(granted))
        response.headers.add("Date", manscdp.format_gb_time(datetime.now(), millis=True))
        self.sip.respond(event, response)
        self.registered.set()

    def _message(self, event: RequestReceived) -> None:
        request = event.request
        if self.mode == "forbid":
            self._reply(event, 403, "Forbidden")
            return
        try:
            msg = manscdp.parse_manscdp(request.body)
        except ParseError:
            self._reply(event, 400)
            return
        if msg.root == "Notify" and msg.cmd_type == "MediaStatus":
            # In the dialog of a playback or download; found by Call-ID, as wvp does (Hikvision
            # has sent it with a From user that is not the channel).
            session = self.sessions.get(request.call_id)
            if session is None:
                self._reply(event, 481, "Call/Transaction Does Not Exist")
                return
            session._media_status_received(event, msg)
            return
        if msg.root == "Notify" and msg.cmd_type == "Keepalive":
            if self.node is None or self.node.node_id != msg.device_id:
                self._reply(event, 403, "Not Registered")  # a restarted platform forgot it
                return
            self._reply(event, 200)
            self.keepalives += 1
            self.keepalive_seen.set()
            return
        self._reply(event, 200)
        query = self._queries.get((msg.cmd_type, msg.sn)) if msg.root == "Response" else None
        if query is None:
            self.messages.append(msg)
            return
        query.messages.append(msg)
        if query.cmd_type == "RecordInfo":  # items all name the channel: kept as a list
            if query.sum_num is None:
                query.sum_num = msg.sum_num or 0
            query.records += msg.items
            if len(query.records) >= query.sum_num and not query.done.done():
                query.done.set_result(None)
        elif query.cmd_type == "Catalog":
            if query.sum_num is None:
                query.sum_num = msg.sum_num or 0
            for item in msg.items:
                item_id = item.get("DeviceID")
                if item_id:
                    query.items[item_id] = {k: v for k, v in item.items() if k != "DeviceID"}
            if len(query.items) >= query.sum_num and not query.done.done():
                query.done.set_result(None)
        elif not query.done.done():
            query.done.set_result(None)

    def _notify(self, event: RequestReceived) -> None:
        request = event.request
        subscription = self.subscriptions.get(request.call_id)
        if subscription is None:
            self._reply(event, 481)
            return
        try:
            msg = manscdp.parse_manscdp(request.body)
        except ParseError:
            self._reply(event, 400)
            return
        self._reply(event, 200)
        subscription._notified(request, msg)

    def _bye(self, event: RequestReceived) -> None:
        session = self.sessions.get(event.request.call_id)
        if session is None or session.dialog is None or not session.dialog.match(event.request):
            self._reply(event, 481)
            return
        self.sip.respond(event, Response.for_request(event.request, 200))
        session.dialog = None
        session.close("BYE from the node")

    def _on_response(self, event: ResponseReceived) -> None:
        """A 2xx to an INVITE repeated after its ACK went: ACK it again."""
        response = event.response
        try:
            method = response.cseq[1]
        except ParseError:
            return
        cached = self._acks.get(response.call_id)
        if method == "INVITE" and 200 <= response.status < 300 and cached is not None:
            self.sip.send(cached[0], cached[1])

    # ----- requests to the node -----
    def _node(self) -> RegisteredNode:
        if self.node is None:
            raise UpstreamError("the node is not registered")
        return self.node

    def _target(self, node: RegisteredNode, user: str | None = None) -> str:
        """Request-URI toward the node: `user` at the host and port it registered from."""
        host = node.peer.host
        host = f"[{host}]" if ":" in host else host
        return f"sip:{user or node.node_id}@{host}:{node.peer.port}"

    def _headers(self, method: str, to_user: str, call_id: str, from_tag: str) -> Headers:
        node, cfg = self._node(), self.config
        endpoint = self.sip
        headers = Headers()
        headers.add("Via", endpoint.via(node.peer.transport))
        headers.add("From", f"<sip:{cfg.platform_id}@{cfg.realm}>;tag={from_tag}")
        headers.add("To", f"<sip:{to_user}@{node.node_id[:10]}>")
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"{next(self._cseq)} {method}")
        headers.add("Max-Forwards", "70")
        contact_host = endpoint.advertise_host or endpoint.local[0]
        headers.add("Contact", f"<sip:{cfg.platform_id}@{contact_host}:{endpoint.local[1]}>")
        headers.add("User-Agent", _USER_AGENT)
        return headers

    def _new_call_id(self) -> str:
        return f"{os.urandom(8).hex()}@{self.config.host}"

    async def message(self, body: bytes, *, timeout: float = 10.0) -> Response:
        """Send a MANSCDP MESSAGE to the node; its final answer."""
        node = self._node()
        headers = self._headers("MESSAGE", node.node_id, self._new_call_id(), os.urandom(4).hex())
        headers.add("Content-Type", "Application/MANSCDP+xml")
        request = Request(headers=headers, body=body, method="MESSAGE", uri=self._target(node))
        return await asyncio.wait_for(self.sip.request(request, node.peer), timeout)

    async def _query(self, cmd_type: str, build: Callable[..., bytes], timeout: float,
                     device_id: str | None) -> _Query:
        node = self._node()
        sn = next(self._sn)
        query = _Query(cmd_type, sn, asyncio.get_running_loop().create_future())
        self._queries[(cmd_type, sn)] = query
        try:
            body = build(sn, device_id or node.node_id, encoding=self.config.charset)
            response = await self.message(body, timeout=timeout)
            if response.status != 200:
                raise UpstreamError(f"Query/{cmd_type} answered {response.status} "
                                    f"{response.reason}")
            try:
                await asyncio.wait_for(asyncio.shield(query.done), timeout)
            except TimeoutError:
                got = len(query.items) if cmd_type == "Catalog" else len(query.messages)
                raise UpstreamError(f"Query/{cmd_type} SN {sn}: incomplete after {timeout} s "
                                    f"({got} of SumNum {query.sum_num})") from None
        finally:
            self._queries.pop((cmd_type, sn), None)
        return query

    async def query_catalog(self, *, timeout: float = 10.0,
                            device_id: str | None = None) -> dict[str, dict[str, str]]:
        """Query/Catalog to the node; the items of its Response parts (same SN) until SumNum
        distinct items came, as channel ID -> fields (Info's fields flattened in)."""
        query = await self._query("Catalog", manscdp.catalog_query, timeout, device_id)
        return query.items

    async def query_catalog_parts(self, *, timeout: float = 10.0
                                  ) -> list[manscdp.ManscdpMessage]:
        """Like `query_catalog`, but the Response parts themselves, in arrival order."""
        query = await self._query("Catalog", manscdp.catalog_query, timeout, None)
        return query.messages

    async def query_device_info(self, *, timeout: float = 10.0,
                                device_id: str | None = None) -> manscdp.ManscdpMessage:
        query = await self._query("DeviceInfo", manscdp.device_info_query, timeout, device_id)
        return query.messages[0]

    async def query_device_status(self, *, timeout: float = 10.0,
                                  device_id: str | None = None) -> manscdp.ManscdpMessage:
        query = await self._query("DeviceStatus", manscdp.device_status_query, timeout,
                                  device_id)
        return query.messages[0]

    async def query_record_info(
        self, channel_id: str, start: datetime, end: datetime, *, timeout: float = 10.0
    ) -> list[dict[str, str]]:
        """Query/RecordInfo for a channel's recordings between two local times (wire time,
        zoneless); the RecordList items of every part, once SumNum came."""

        def build(sn: int, device_id: str, *, encoding: str) -> bytes:
            return manscdp.record_info_query(sn, device_id, start, end, encoding=encoding)

        query = await self._query("RecordInfo", build, timeout, channel_id)
        return query.records

    async def subscribe_catalog(self, expires: int = 600, *,
                                timeout: float = 10.0) -> CatalogSubscriptionHandle:
        """SUBSCRIBE (Event: Catalog) with a Query/Catalog body; NOTIFY items are queued on
        the returned handle. A refused SUBSCRIBE raises `UpstreamError`."""
        handle = CatalogSubscriptionHandle(self, self._new_call_id(), os.urandom(4).hex(),
                                           next(self._sn))
        self.subscriptions[handle.call_id] = handle
        try:
            response = await handle._send(expires, timeout)
        except BaseException:
            self.subscriptions.pop(handle.call_id, None)
            raise
        if response.status >= 300:
            self.subscriptions.pop(handle.call_id, None)
            raise UpstreamError(f"SUBSCRIBE answered {response.status} {response.reason}")
        handle.remote_tag = response.to.tag or ""
        return handle

    # ----- INVITE -----
    async def start_invite(
        self,
        channel_id: str,
        transport: str = "udp",
        ssrc: str | None = None,
        *,
        answer_timeout: float = 10.0,
        max_units: int = 2000,
        max_unit_bytes: int = 256 << 20,
        tcp_rcvbuf: int | None = None,
        user: str | None = None,
        session: str = "Play",
        start: float | None = None,
        end: float | None = None,
        download_speed: int | None = None,
        ask_filesize: bool = False,
        keep_bytes: bool = False,
        max_kept_bytes: int = MAX_KEPT_BYTES,
        bye_on_end: bool = True,
    ) -> UpstreamSession:
        """Open the media port and send the INVITE; `await session.answered()` for the
        final answer, or `session.cancel()` before it. `ssrc` None picks a y= in our domain
        (live, or history for a recorded range); "" offers none. `tcp_rcvbuf` sets the receive
        buffer of a TCP media socket (small, so that `stall()` backs the sender up within a few
        frames). `user` goes into `Monitor-User-Identity`, the operator on whose behalf the
        platform plays.

        `session` is "Play" (live), "Playback" or "Download"; the last two need `start` and
        `end` (Unix seconds; `t=` carries whole seconds, fractions dropped). A download offers
        `a=downloadspeed:<download_speed>` when it is given (1 to 32 by the standard, any
        positive value is sent), and `ask_filesize` adds `a=filesize:0`. `keep_bytes` keeps
        the payloads (`kept`, at most `max_kept_bytes`). `bye_on_end`: hang up after a
        MediaStatus 121. Raises ValueError for arguments that make no offer."""
        if transport not in SESSION_TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        if session not in SESSION_NAMES:
            raise ValueError(f"unknown session {session!r}: one of {', '.join(SESSION_NAMES)}")
        live = session == "Play"
        timing = (0, 0)
        if live:
            if start is not None or end is not None or download_speed is not None:
                raise ValueError("a live Play carries no time range or download speed")
        else:
            if start is None or end is None:
                raise ValueError(f"{session} needs start and end")
            try:
                timing = (unix_to_sdp_time(start), unix_to_sdp_time(end))
            except SipError as exc:
                raise ValueError(str(exc)) from None
            if not timing[0] < timing[1]:
                raise ValueError(f"{session} range is empty in whole seconds: {start}..{end}")
        if download_speed is not None and (session != "Download" or download_speed < 1):
            raise ValueError(f"downloadspeed {download_speed} needs a Download, and 1 or more")
        if max_kept_bytes < 0:
            raise ValueError("max_kept_bytes must be 0 or more")
        node, cfg = self._node(), self.config
        if ssrc is None:
            kind = "0" if live else "1"
            ssrc = f"{kind}{cfg.platform_id[3:8]}{next(self._ssrc_serial) % 10000:04d}"
        playing = UpstreamSession(self, channel_id, transport, ssrc, max_units=max_units,
                                  max_unit_bytes=max_unit_bytes)
        playing.session_name = session
        playing.range = None if live else (float(start or 0), float(end or 0))
        playing.download_speed = download_speed
        playing.ask_filesize = ask_filesize
        playing.keep_bytes = keep_bytes
        playing.max_kept_bytes = max_kept_bytes
        playing.bye_on_end = bye_on_end
        playing.tcp_rcvbuf = tcp_rcvbuf
        return await self._send_invite(playing, node, timing, user, answer_timeout)

    async def _send_invite(self, session: UpstreamSession, node: RegisteredNode,
                           timing: tuple[int, int], user: str | None,
                           answer_timeout: float) -> UpstreamSession:
        cfg, channel_id, ssrc = self.config, session.channel_id, session.offered_ssrc
        port = await session._open_media()
        offer = play_offer(node_id=cfg.platform_id, media_ip=cfg.media_host, port=port,
                           transport=session.transport, ssrc=ssrc or "0", channel_id=channel_id,
                           session=session.session_name, start=timing[0], stop=timing[1],
                           download_speed=session.download_speed)
        if not ssrc:
            offer.ssrc = None
        video = offer.video
        if session.ask_filesize and video is not None:
            video.attributes.append(("filesize", "0"))
        headers = self._headers("INVITE", channel_id, self._new_call_id(), os.urandom(4).hex())
        headers.add("Subject", subject_header(channel_id, ssrc or "0", cfg.platform_id, 0))
        headers.add("Content-Type", "APPLICATION/SDP")
        if user is not None:
            headers.add("Monitor-User-Identity", user)
        invite = Request(headers=headers, body=build_sdp(offer), method="INVITE",
                         uri=self._target(node, channel_id))
        session.invite_request, session.offer, session.peer = invite, offer, node.peer
        session.call_id = invite.call_id
        self.sessions[invite.call_id] = session
        session.invited_at = self.sip.loop.time()
        session._future = self.sip.request(invite, node.peer)
        session._waiter = asyncio.get_running_loop().create_task(
            session._await_answer(answer_timeout))
        return session

    async def invite(self, channel_id: str, transport: str = "udp", ssrc: str | None = None,
                     **kw: Any) -> UpstreamSession:
        """`start_invite` and wait for the final answer (and the TCP connection for
        tcp-active). A refused INVITE gives a session with `status`, `reason` and `warning`.
        The keywords are those of `start_invite` (`session`, `start`, `end`, ...)."""
        session = await self.start_invite(channel_id, transport, ssrc, **kw)
        await session.answered()
        return session

    def _background_request(self, request: Request, peer: Peer) -> asyncio.Future[Response]:
        future = self.sip.request(request, peer)
        self._background.add(future)

        def done(fut: asyncio.Future[Response]) -> None:
            self._background.discard(fut)
            if not fut.cancelled():
                fut.exception()  # retrieved: a lost BYE is no error of the test's

        future.add_done_callback(done)
        return future


class CatalogSubscriptionHandle:
    """A catalog subscription to the node. `events` queues every NOTIFY item as a
    `sip.catalog.CatalogEvent` (at most MAX_NOTIFY_EVENTS; beyond, `dropped` counts),
    `notifies` counts NOTIFY requests and `state` holds the last Subscription-State."""

    def __init__(self, upstream: SimulatedUpstream, call_id: str, tag: str, sn: int) -> None:
        self.upstream = upstream
        self.call_id = call_id
        self.local_tag = tag
        self.remote_tag = ""
        self.sn = sn
        self.events: asyncio.Queue[CatalogEvent] = asyncio.Queue(MAX_NOTIFY_EVENTS)
        self.notifies = 0
        self.dropped = 0
        self.state: str | None = None
        self.expires = 0

    async def _send(self, expires: int, timeout: float) -> Response:
        up = self.upstream
        node = up._node()
        headers = up._headers("SUBSCRIBE", node.node_id, self.call_id, self.local_tag)
        if self.remote_tag:
            headers.set("To", f"<sip:{node.node_id}@{node.node_id[:10]}>;tag={self.remote_tag}")
        headers.add("Event", f"Catalog;id={self.sn}")
        headers.add("Expires", str(expires))
        headers.add("Content-Type", "Application/MANSCDP+xml")
        body = manscdp.catalog_query(self.sn, node.node_id, encoding=up.config.charset)
        request = Request(headers=headers, body=body, method="SUBSCRIBE", uri=up._target(node))
        response = await asyncio.wait_for(up.sip.request(request, node.peer), timeout)
        if response.status < 300:
            try:
                granted = response.expires
            except ParseError:
                granted = None
            self.expires = expires if granted is None else granted
        return response

    async def refresh(self, expires: int = 600, *, timeout: float = 10.0) -> Response:
        """SUBSCRIBE again in the dialog; `expires` 0 ends the subscription."""
        response = await self._send(expires, timeout)
        if expires == 0:
            self.upstream.subscriptions.pop(self.call_id, None)
        return response

    async def unsubscribe(self, *, timeout: float = 10.0) -> Response:
        return await self.refresh(0, timeout=timeout)

    async def next_event(self, timeout: float = 5.0) -> CatalogEvent:
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            raise UpstreamError(f"no catalog NOTIFY item within {timeout} s") from None

    def _notified(self, request: Request, msg: manscdp.ManscdpMessage) -> None:
        self.notifies += 1
        self.state = request.headers.get("Subscription-State")
        if msg.cmd_type != "Catalog":
            return
        for item in msg.items:
            channel_id = item.get("DeviceID")
            if not channel_id:
                continue
            fields = {k: v for k, v in item.items() if k not in ("DeviceID", "Event")}
            event = CatalogEvent(channel_id, (item.get("Event") or "").upper(), fields)
            try:
                self.events.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1


@dataclass(frozen=True)
class InfoAnswer:
    """What came of one MANSRTSP INFO: the INFO sent, the node's SIP answer, and the MANSRTSP
    reply in its body (None when there was none or it did not parse; see the session's
    `problems`)."""

    request: Request
    response: Response
    reply: MansrtspReply | None

    @property
    def status(self) -> int:
        return self.response.status


class UpstreamSession:
    """One INVITE of the simulated platform and the media it receives; see the module
    docstring. `status`/`reason`/`warning` hold the final answer (None before it),
    `ended` is set when the session is over and `end_reason` says why.

    For a recorded range, `session_name` is Playback or Download and `range` the asked
    `(start, end)`; `filesize` is the answer's `a=filesize` (None without one); `media_status`
    is the MediaStatus received in the dialog (None before it).
    """

    def __init__(self, upstream: SimulatedUpstream, channel_id: str, transport: str,
                 ssrc: str, *, max_units: int, max_unit_bytes: int) -> None:
        self.upstream = upstream
        self.channel_id = channel_id
        self.transport = transport
        self.offered_ssrc = ssrc
        self.call_id = ""
        self.invite_request: Request | None = None
        self.offer: SessionDescription | None = None
        self.peer: Peer | None = None
        self.dialog: Dialog | None = None
        self.status: int | None = None
        self.reason = ""
        self.warning: str | None = None
        self.response: Response | None = None
        self.answer: SessionDescription | None = None
        self.expected_ssrc: int | None = int(ssrc) & 0xFFFFFFFF if ssrc else None
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        # Media checks and counters.
        self.max_units = max_units
        self.max_unit_bytes = max_unit_bytes
        self.units: list[AccessUnit] = []
        self.unit_bytes = 0
        self.units_dropped = 0
        self.packets = 0
        self.bytes = 0
        self.rtcp = 0
        self.malformed = 0
        self.wrong_ssrc = 0
        self.wrong_payload_type = 0
        self.sequence_gaps = 0
        self.problems: list[str] = []
        self.sources: set[tuple[str, int]] = set()
        self.invited_at: float | None = None
        self.answered_at: float | None = None
        self.first_packet_at: float | None = None
        self.first_keyframe_at: float | None = None
        self.connected = asyncio.Event()  # TCP: the media connection is up
        self.media_closed = asyncio.Event()  # TCP: the node closed the media connection
        self._last_seq: int | None = None
        self._ingest = MediaIngest(on_units=self._units)
        self._loop = asyncio.get_running_loop()
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None  # tcp-active: bound before the offer
        self._tcp: asyncio.Transport | None = None
        self._future: asyncio.Future[Response] | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._cancelled = False
        self.local_port = 0
        self.tcp_rcvbuf: int | None = None
        # What was asked (set by start_invite).
        self.session_name = "Play"
        self.range: tuple[float, float] | None = None
        self.download_speed: int | None = None
        self.ask_filesize = False
        self.filesize: int | None = None
        # What came, whatever the bounds of `units`: payloads in arrival order, frames, times.
        self.payload_bytes = 0
        self._payload_hash = hashlib.sha256()
        self.keep_bytes = False
        self.max_kept_bytes = MAX_KEPT_BYTES
        self.kept = bytearray()
        self.kept_truncated = False
        self.frames = 0  # video units out of the demuxer
        self.markers = 0  # RTP packets with the marker bit
        self.last_packet_at: float | None = None
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.first_pts: int | None = None
        self.last_pts: int | None = None
        self.pts_jumps = 0
        self._pts_position = 0  # ticks from the first PTS of the current run
        self._pts_low = self._pts_high = 0  # extent of the current run
        self._pts_done = 0  # ticks of the runs before it
        # The end of a recorded range.
        self.media_status: MediaStatus | None = None
        self.media_status_at: float | None = None
        self.media_statuses = 0
        self._media_status_seen = asyncio.Event()
        self.bye_on_end = True
        self.end_grace_s = 0.3  # media quiet this long after the MediaStatus: BYE
        self.end_grace_max_s = 5.0  # BYE by then whatever still comes
        self._end_task: asyncio.Task[None] | None = None
        self._mansrtsp_cseq = itertools.count(1)
        self.infos: list[InfoAnswer] = []  # bounded by MAX_PROBLEMS, like problems

    def __repr__(self) -> str:
        return (f"<UpstreamSession {self.channel_id} {self.transport} status={self.status} "
                f"units={len(self.units)} end={self.end_reason!r}>")

    # ----- properties for tests -----
    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def keyframe_delay(self) -> float | None:
        """Seconds from sending the INVITE to the first keyframe unit."""
        if self.first_keyframe_at is None or self.invited_at is None:
            return None
        return self.first_keyframe_at - self.invited_at

    async def wait_units(self, count: int, timeout: float = 10.0) -> list[AccessUnit]:
        """Wait until `count` units came (bounded by `timeout`); the units so far."""
        for _ in range(int(timeout / 0.02) + 1):
            if len(self.units) >= count or self.ended.is_set():
                break
            await asyncio.sleep(0.02)
        if len(self.units) < count:
            raise UpstreamError(f"{len(self.units)} of {count} units within {timeout} s "
                                f"({self.packets} packets, end: {self.end_reason})")
        return self.units

    @property
    def payload_sha256(self) -> str:
        """SHA-256 (hex) of the payloads received so far, concatenated in arrival order."""
        return self._payload_hash.hexdigest()

    @property
    def media_seconds(self) -> float:
        """The media time the video frames received cover, from their PTS: the span from the
        lowest to the highest, with every discontinuity (a step of more than MAX_PTS_STEP,
        counted in `pts_jumps`) left out."""
        return (self._pts_done + self._pts_high - self._pts_low) / PTS_CLOCK

    @property
    def wall_seconds(self) -> float:
        """Loop time from the first video frame's arrival to the last one's."""
        if self.first_frame_at is None or self.last_frame_at is None:
            return 0.0
        return self.last_frame_at - self.first_frame_at

    @property
    def pace(self) -> float | None:
        """`media_seconds / wall_seconds`: about 1 for a playback, N for a download at N x;
        None before two frames came apart in time."""
        wall = self.wall_seconds
        return self.media_seconds / wall if wall > 0 else None

    async def wait_media_status(self, timeout: float = 10.0) -> MediaStatus:
        """The MediaStatus of the dialog, once it came; `UpstreamError` after `timeout`."""
        try:
            await asyncio.wait_for(self._media_status_seen.wait(), timeout)
        except TimeoutError:
            raise UpstreamError(f"no MediaStatus within {timeout} s ({self.frames} frames, "
                                f"end: {self.end_reason})") from None
        assert self.media_status is not None
        return self.media_status

    async def wait_ended(self, timeout: float = 10.0) -> str:
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            raise UpstreamError(f"session still up after {timeout} s") from None
        return self.end_reason or ""

    # ----- signalling -----
    async def answered(self) -> Response | None:
        """The final answer (None when the INVITE was never answered); for tcp-active, also
        waits for the attempt to connect."""
        assert self._waiter is not None
        await asyncio.shield(self._waiter)
        if self._connect_task is not None:
            await asyncio.shield(self._connect_task)
        return self.response

    async def _await_answer(self, timeout: float) -> None:
        assert self._future is not None
        up = self.upstream
        try:
            response = await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            self._send_cancel()
            try:
                response = await asyncio.wait_for(asyncio.shield(self._future), 5.0)
            except (TimeoutError, Exception) as exc:
                self.close(f"no answer to INVITE within {timeout} s ({exc!r})")
                return
        except Exception as exc:
            self.close(f"INVITE failed: {exc!r}")
            return
        self.response, self.status, self.reason = response, response.status, response.reason
        self.warning = response.headers.get("Warning")
        self.answered_at = self._loop.time()
        if response.status >= 300:
            self.close(f"{response.status} {response.reason}".rstrip())
            return
        assert self.invite_request is not None and self.peer is not None
        try:
            self.dialog = Dialog.from_2xx(self.invite_request, response)
        except SipError as exc:
            self._problem(f"unusable 200 OK: {exc}")
            self.close("unusable 200 OK")
            return
        ack = self.dialog.ack(up.sip.via(self.peer.transport))
        up._acks[self.call_id] = (ack.to_bytes(), self.peer)
        up.sip.send(ack, self.peer)
        if self._cancelled:
            self.close("answered after CANCEL")  # and hung up
            return
        try:
            answer = parse_sdp(response.body)
        except ParseError as exc:
            self._problem(f"SDP answer does not parse: {exc}")
            self.close("bad SDP answer")
            return
        self.answer = answer
        self._check_answer(answer)
        if answer.ssrc_int is not None:
            self.expected_ssrc = answer.ssrc_int
        if self.transport == "tcp-active":
            self._connect_task = self._loop.create_task(self._connect(answer))

    def _check_answer(self, answer: SessionDescription) -> None:
        video = answer.video
        if video is None:
            self._problem("SDP answer without m=video")
            return
        if video.rtpmap.get(96, "").upper() != "PS/90000":
            self._problem(f"answer maps 96 to {video.rtpmap.get(96)!r}, not PS/90000")
        tcp = self.transport != "udp"
        if video.is_tcp != tcp:
            self._problem(f"answer proto {video.proto} to a {self.transport} offer")
        wanted = {"tcp-active": "passive", "tcp-passive": "active"}.get(self.transport)
        if wanted is not None and video.setup != wanted:
            self._problem(f"answer a=setup:{video.setup}, expected {wanted}")
        if video.direction not in (None, "sendonly"):
            self._problem(f"answer direction {video.direction}")
        if self.offered_ssrc and answer.ssrc is not None and answer.ssrc != self.offered_ssrc:
            self._problem(f"answer y={answer.ssrc}, offered {self.offered_ssrc}")
        if self.session_name == "Play":
            return
        if answer.session_name != self.session_name:
            self._problem(f"answer s={answer.session_name[:20]}, offered {self.session_name}")
        offered = self.offer.timing if self.offer is not None else (0, 0)
        if answer.timing != offered:
            self._problem(f"answer t={answer.timing[0]} {answer.timing[1]}, "
                          f"offered {offered[0]} {offered[1]}")
        size = video.attribute("filesize")
        if size is not None and size.strip().isascii() and size.strip().isdigit():
            self.filesize = int(size.strip())
        elif size is not None:
            self._problem(f"answer a=filesize:{size[:20]}")
        elif self.ask_filesize and self.session_name == "Download":
            self._problem("a=filesize asked for, not answered")

    def _send_cancel(self) -> None:
        invite = self.invite_request
        if invite is None or self.peer is None or self._cancelled:
            return
        self._cancelled = True
        headers = Headers()
        for name in ("Via", "From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name) or "")
        headers.add("Max-Forwards", "70")
        headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
        cancel = Request(headers=headers, method="CANCEL", uri=invite.uri)
        self.upstream._background_request(cancel, self.peer)

    async def cancel(self, timeout: float = 10.0) -> Response | None:
        """CANCEL the INVITE (before its answer); the INVITE's final answer (487 normally).
        A 2xx that comes anyway is ACKed and hung up."""
        if self.response is None:
            self._send_cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.answered(), timeout)
        if self.ok and self.dialog is not None:
            await self.bye(timeout=timeout)
        return self.response

    async def bye(self, *, timeout: float = 10.0, reason: str = "BYE sent") -> Response | None:
        """Hang up: BYE in the dialog (its answer), media closed; `reason` becomes the
        `end_reason` (unless the session had ended already)."""
        dialog, up = self.dialog, self.upstream
        self.dialog = None
        response = None
        if dialog is not None and self.peer is not None and up.endpoint is not None:
            request = dialog.request("BYE", up.sip.via(self.peer.transport))
            future = up._background_request(request, self.peer)
            with contextlib.suppress(TimeoutError, Exception):
                response = await asyncio.wait_for(asyncio.shield(future), timeout)
        self.close(reason)
        return response

    # ----- playback and download -----
    def _media_status_received(self, event: RequestReceived, msg: manscdp.ManscdpMessage) -> None:
        """A MediaStatus MESSAGE with this session's Call-ID: 200, kept, and (121, with
        `bye_on_end`) the BYE once the media went quiet."""
        up, request = self.upstream, event.request
        try:
            status = media_status_of(msg)
        except ParseError as exc:
            self._problem(f"MediaStatus does not parse: {exc}")
            up._reply(event, 400)
            return
        dialog = self.dialog
        if dialog is None:
            up._reply(event, 481, "Call/Transaction Does Not Exist")
            return
        if not dialog.match(request):
            self._problem(f"MediaStatus with tags From {request.from_.tag!r} To "
                          f"{request.to.tag!r}, not those of the dialog")
        if status.device_id != self.channel_id:
            self._problem(f"MediaStatus for {status.device_id}, not {self.channel_id}")
        up.sip.respond(event, Response.for_request(request, 200))
        self.media_statuses += 1
        self.media_status = status
        self.media_status_at = self._loop.time()
        self._media_status_seen.set()
        if self.bye_on_end and status.end_of_file and self._end_task is None:
            self._end_task = self._loop.create_task(self._bye_after_end(status))

    async def _bye_after_end(self, status: MediaStatus) -> None:
        deadline = self._loop.time() + self.end_grace_max_s
        while not self.media_closed.is_set():
            now = self._loop.time()
            quiet = now - (self.last_packet_at or 0.0)
            if quiet >= self.end_grace_s or now >= deadline:
                break
            await asyncio.sleep(min(self.end_grace_s - quiet, deadline - now))
        await self.bye(reason=f"BYE after MediaStatus {status.notify_type}")

    def next_mansrtsp_cseq(self) -> int:
        """The session's own MANSRTSP CSeq counter (1, 2, ...), apart from the INFO's SIP CSeq."""
        return next(self._mansrtsp_cseq)

    async def info(self, request: MansrtspRequest, *, timeout: float = 10.0) -> InfoAnswer:
        """Send `request` as an INFO in the dialog (the dialog's next CSeq, Content-Type
        Application/MANSRTSP); the node's answer and the MANSRTSP reply in it. A reply that
        does not parse, or names another CSeq, is a problem of the session. `UpstreamError`
        without a dialog or an answer."""
        dialog, up, peer = self.dialog, self.upstream, self.peer
        if dialog is None or peer is None or up.endpoint is None:
            raise UpstreamError(f"no dialog for INFO {request.method} "
                                f"(end: {self.end_reason or 'not answered'})")
        info = dialog.request("INFO", up.sip.via(peer.transport), build_mansrtsp(request),
                              MANSRTSP_CONTENT_TYPE)
        info.headers.add("User-Agent", _USER_AGENT)
        try:
            response = await asyncio.wait_for(up.sip.request(info, peer), timeout)
        except (TimeoutError, TransactionTimeout, ConnectionError) as exc:
            raise UpstreamError(f"INFO {request.method} unanswered: {exc!r}") from None
        reply: MansrtspReply | None = None
        if response.body:
            try:
                reply = parse_mansrtsp_reply(response.body)
            except MansrtspError as exc:
                self._problem(f"INFO {request.method}: MANSRTSP reply does not parse: {exc}")
        elif response.status == 200:
            self._problem(f"INFO {request.method}: 200 without a MANSRTSP reply")
        if reply is not None and reply.cseq != request.cseq:
            self._problem(f"INFO {request.method}: reply CSeq {reply.cseq}, sent {request.cseq}")
        answer = InfoAnswer(info, response, reply)
        if len(self.infos) < MAX_PROBLEMS:
            self.infos.append(answer)
        return answer

    async def control(self, method: str, *, start: float | None = None,
                      scale: float | None = None, timeout: float = 10.0) -> InfoAnswer:
        """`info()` with the next MANSRTSP CSeq: `control("PLAY", start=10)` seeks,
        `control("PLAY", scale=2)` changes the speed, `control("PAUSE")`, `control("PLAY")`
        resumes. Raises `sip.errors.LocalProtocolError` for a request that cannot be sent."""
        request = MansrtspRequest(method, self.next_mansrtsp_cseq(), start, scale)
        return await self.info(request, timeout=timeout)

    def close(self, reason: str = "closed") -> None:
        """End the session's media (no BYE); idempotent, the first reason stays."""
        if self.end_reason is None:
            self.end_reason = reason
        if self._cancelled and self.dialog is not None and self.peer is not None \
                and self.upstream.endpoint is not None:
            dialog, self.dialog = self.dialog, None
            self.upstream._background_request(
                dialog.request("BYE", self.upstream.sip.via(self.peer.transport)), self.peer)
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        end_task = self._end_task
        if end_task is not None and not end_task.done() and end_task is not asyncio.current_task():
            end_task.cancel()
        for closable in (self._udp, self._tcp, self._server, self._sock):
            if closable is not None:
                closable.close()
        self._udp = self._tcp = None
        self._server = None
        self._sock = None
        self._ingest.flush()
        self.upstream._acks.pop(self.call_id, None)
        self.upstream.sessions.pop(self.call_id, None)
        self.ended.set()

    # ----- media -----
    async def _open_media(self) -> int:
        host = self.upstream.config.media_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if self.transport == "udp":
            self._udp, _ = await self._loop.create_datagram_endpoint(
                lambda: _UdpMedia(self), local_addr=(host, 0), family=family)
            self.local_port = self._udp.get_extra_info("sockname")[1]
        elif self.transport == "tcp-passive":
            self._server = await self._loop.create_server(
                lambda: _TcpMedia(self), host, 0, family=family, reuse_address=True)
            self.local_port = self._server.sockets[0].getsockname()[1]
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((host, 0))
            if self.tcp_rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.tcp_rcvbuf)
            self._sock = sock
            self.local_port = sock.getsockname()[1]
        return self.local_port

    async def _connect(self, answer: SessionDescription, attempts: int = 5,
                       retry_s: float = 0.2) -> None:
        video = answer.video
        address = answer.address
        if video is None or address is None or not video.port:
            self._problem("tcp-active answer without an address and port to connect to")
            return
        last: OSError | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(retry_s)
            sock, self._sock = self._sock, None
            if sock is None:
                sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                                     socket.SOCK_STREAM)
                sock.setblocking(False)
            try:
                await self._loop.sock_connect(sock, (address, video.port))
                await self._loop.create_connection(lambda: _TcpMedia(self), sock=sock)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return
        self._problem(f"cannot connect to {address}:{video.port}: {last}")

    def stall(self) -> None:
        """Stop reading the TCP media connection (the node's sender backs up)."""
        if self._tcp is None:
            raise UpstreamError("stall() needs a connected TCP session")
        self._tcp.pause_reading()

    def resume(self) -> None:
        if self._tcp is not None:
            self._tcp.resume_reading()

    def _tcp_connected(self, transport: asyncio.Transport) -> bool:
        if self._tcp is not None or self.ended.is_set():
            return False
        self._tcp = transport
        sock = transport.get_extra_info("socket")
        if self.tcp_rcvbuf is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.tcp_rcvbuf)
        self.sources.add(tuple(transport.get_extra_info("peername")[:2]))
        if self._server is not None:
            self._loop.call_soon(self._server.close)  # one media connection per session
            self._server = None
        self.connected.set()
        return True

    def _tcp_lost(self, transport: asyncio.Transport) -> None:
        if transport is self._tcp:
            self._tcp = None
            self._ingest.flush()
            self.media_closed.set()

    def _problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def _packet(self, data: bytes | memoryview) -> None:
        """One RTP packet: check it, then frame assembly and demux."""
        now = self._loop.time()
        if self.first_packet_at is None:
            self.first_packet_at = now
        if is_rtcp(data):
            self.rtcp += 1
            return
        header = peek_rtp_header(data)
        if header is not None:
            pt, seq, ts, ssrc, marker, offset = header
            payload = memoryview(data)[offset:]
        else:  # padding, or something the quick look refuses: the full parser decides
            try:
                packet = RtpPacket.parse(data)
            except RtpError as exc:
                self.malformed += 1
                self._problem(f"malformed RTP packet: {exc}")
                return
            pt, seq, ts, ssrc = packet.payload_type, packet.sequence, packet.timestamp, \
                packet.ssrc
            marker, payload = packet.marker, memoryview(packet.payload)
        self.packets += 1
        self.bytes += len(data)
        if self.expected_ssrc is None:
            self.expected_ssrc = ssrc  # offered none and answered none: the first one counts
        if ssrc != self.expected_ssrc:
            self.wrong_ssrc += 1
            self._problem(f"SSRC {ssrc} instead of {self.expected_ssrc} (seq {seq})")
            return
        if pt != 96:
            self.wrong_payload_type += 1
            self._problem(f"payload type {pt} (seq {seq})")
        self.last_packet_at = now
        self.payload_bytes += len(payload)
        self._payload_hash.update(payload)
        if self.keep_bytes:
            room = self.max_kept_bytes - len(self.kept)
            if len(payload) > room:
                self.kept_truncated = True
            self.kept += payload[:room] if room > 0 else b""
        if marker:
            self.markers += 1
        last = self._last_seq
        self._last_seq = seq
        if last is not None and seq != (last + 1) & 0xFFFF:
            self.sequence_gaps += 1
            self._problem(f"sequence {seq} after {last}")
            self._ingest.restart()  # what follows a hole is the middle of something
        self._ingest.on_packet(payload, seq, ts, marker)

    def _units(self, units: list[AccessUnit]) -> None:
        for unit in units:
            if 0xE0 <= unit.stream_id <= 0xEF:
                self._video_frame(unit.pts)
            if unit.keyframe and self.first_keyframe_at is None and unit.stream_id >= 0xE0:
                self.first_keyframe_at = self._loop.time()
            size = len(unit.ps_bytes) + len(unit.data)
            if len(self.units) >= self.max_units or self.unit_bytes + size > self.max_unit_bytes:
                self.units_dropped += 1
                continue
            self.units.append(unit)
            self.unit_bytes += size


    def _video_frame(self, pts: int | None) -> None:
        now = self._loop.time()
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        if pts is None:
            return
        if self.last_pts is None:
            self.first_pts = pts
        else:
            step = (pts - self.last_pts + _PTS_WRAP // 2) % _PTS_WRAP - _PTS_WRAP // 2
            if abs(step) > MAX_PTS_STEP:
                self.pts_jumps += 1
                self._pts_done += self._pts_high - self._pts_low
                self._pts_position = self._pts_low = self._pts_high = 0
            else:
                self._pts_position += step
                self._pts_low = min(self._pts_low, self._pts_position)
                self._pts_high = max(self._pts_high, self._pts_position)
        self.last_pts = pts


class _UdpMedia(asyncio.DatagramProtocol):
    def __init__(self, session: UpstreamSession) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        session = self.session
        session.sources.add(tuple(addr[:2]))
        session._packet(data)

    def error_received(self, exc: Exception) -> None:
        pass


class _TcpMedia(asyncio.BufferedProtocol):
    """RFC 4571 over TCP into the session; the deframer's buffer is its bound (1 MiB)."""

    def __init__(self, session: UpstreamSession) -> None:
        self.session = session
        self.deframer = Deframer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.session._tcp_connected(self.transport):  # type: ignore[arg-type]
            transport.close()
            self.transport = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.deframer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        for packet in self.deframer.buffer_updated(nbytes):
            self.session._packet(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.session._tcp_lost(self.transport)
