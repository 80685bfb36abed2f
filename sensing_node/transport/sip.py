"""SIP over UDP and TCP on one port: a thin asyncio adapter around `sip.TransactionLayer`.

Datagrams go to `sip.message.parse_message`, TCP byte streams to `sip.stream.StreamParser`.
A datagram or TCP message that `sip.fastpath.recognise` knows (a REGISTER or plain keepalive
of the usual shape) goes to `fast_path` first when one is set (the registrar's): it enters the
transaction layer by its key (`fast_transaction`) and is answered with bytes (`respond_bytes`),
and goes to the parser whenever the handler declines it.
Parsed messages pass through the transaction layer; new requests reach the application through
`on_request`, answers to our own requests resolve the futures returned by `request()`. Bad input
is answered 400 where the request can still be addressed, otherwise dropped and counted; an
exception in the application is logged and never reaches the transport.

The UDP socket is read by the endpoint itself (`_SipUdpSocket`): at once, or at most once per
`udp_read_pace_s` while datagrams come at a moderate rate, so that thousands of idle devices'
keepalives do not each wake the process.

TCP connections are bounded: `max_tcp_connections` in all, and at most
`max_tcp_unregistered_per_host` from one address that no device has registered through yet;
such a connection is closed after `tcp_idle_timeout_s` without a SIP message. A connection
becomes a device's own (`adopt`, after a successful REGISTER) and then stays open as long as the
device keeps it; connections the endpoint opened itself are its own from the start.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
from collections.abc import Callable

from sip.errors import MessageTooLarge, ParseError
from sip.fastpath import FastRequest, recognise
from sip.message import MAX_MESSAGE_SIZE, Request, Response, parse_message, validate_request
from sip.salvage import salvage_error_response
from sip.stream import StreamParser
from sip.transaction import (
    Peer,
    RequestReceived,
    ResponseReceived,
    TimerValues,
    TransactionLayer,
    TransactionTimedOut,
)

from ..runtime.ratelimit import LogThrottle
from ..runtime.stats import Stats

log = logging.getLogger(__name__)

RequestHandler = Callable[[RequestReceived], None]
ResponseHandler = Callable[[ResponseReceived], None]
#: takes a recognised request and answers it (True), or declines it untouched (False)
FastHandler = Callable[[FastRequest, Peer], bool]


class TransactionTimeout(Exception):
    """No final response came within Timer F (64*T1)."""


class SipEndpoint:
    """One SIP port (UDP and TCP) plus the transaction layer and request futures."""

    def __init__(
        self,
        on_request: RequestHandler,
        *,
        stats: Stats | None = None,
        timers: TimerValues | None = None,
        advertise_host: str | None = None,
        max_tcp_connections: int = 20_000,
        max_tcp_unregistered_per_host: int = 8,
        tcp_idle_timeout_s: float = 30.0,
        udp_rcvbuf: int = 4 * 1024 * 1024,
        udp_read_pace_s: float = 0.0,
    ) -> None:
        self.on_request = on_request
        # Final responses nobody waits for: 2xx retransmissions to an INVITE (the TU ACKs each
        # one again, RFC 3261 13.2.2.4) and answers that arrive after the caller gave up.
        self.on_response: ResponseHandler | None = None
        self.fast_path: FastHandler | None = None
        self.stats = stats or Stats()
        self.tx = TransactionLayer(timers)
        self.advertise_host = advertise_host
        self.max_tcp_connections = max_tcp_connections
        self.max_tcp_unregistered_per_host = max_tcp_unregistered_per_host
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self._unregistered: dict[str, int] = {}  # host -> connections no device owns yet
        # A TCP peer that stops in the middle of a message (Content-Length larger than what it
        # sends, RFC 4475 3.1.2.2) is disconnected after this long.
        self.partial_message_timeout_s = 32.0
        self.udp_rcvbuf = udp_rcvbuf
        #: read UDP at most this often while its datagrams come at a moderate rate (see
        #: `_SipUdpSocket`); 0 reads each datagram as it comes
        self.udp_read_pace_s = udp_read_pace_s
        self.udp: _SipUdpSocket | None = None
        self.tcp_server: asyncio.AbstractServer | None = None
        self.connections: dict[Peer, _SipTcpConnection] = {}
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._futures: dict[tuple[str, str], asyncio.Future[Response]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._housekeeping: asyncio.TimerHandle | None = None
        self.log_throttle = LogThrottle(interval_s=1.0)
        self._branch_prefix = "z9hG4bK" + os.urandom(4).hex()
        self._branch_seq = itertools.count(1)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "endpoint not started"
        return self._loop

    # ----- start / stop -----
    async def listen(self, host: str, port: int, *, tcp: bool = True) -> tuple[str, int]:
        """Bind UDP and TCP on the same port (port 0 picks one free for both)."""
        self._loop = asyncio.get_running_loop()
        for _attempt in range(20):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.udp_rcvbuf)
                sock.bind((host, port))
                bound_port = sock.getsockname()[1]
                if tcp:
                    self.tcp_server = await self.loop.create_server(
                        lambda: _SipTcpConnection(self), host, bound_port, reuse_address=True
                    )
            except OSError:
                sock.close()
                if port != 0:
                    raise
                continue  # the TCP side of an ephemeral UDP port was taken: try another
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        self.udp = _SipUdpSocket(self, sock, self.udp_read_pace_s)
        self.local = (host, bound_port)
        if self.advertise_host is None:
            self.advertise_host = host if host not in ("0.0.0.0", "") else "127.0.0.1"
        self._schedule_housekeeping()
        return self.local

    async def open_udp(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """Client-only use (camera simulator): a UDP socket on an ephemeral port, no TCP."""
        return await self.listen(host, 0, tcp=False)

    async def connect_tcp(self, host: str, port: int) -> Peer:
        """Open a TCP connection to a server (camera simulator, upward cascade)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule_housekeeping()
        _, proto = await self.loop.create_connection(
            lambda: _SipTcpConnection(self, owned=True), host, port
        )
        assert isinstance(proto, _SipTcpConnection) and proto.peer is not None
        if self.advertise_host is None:
            sockname = proto.transport.get_extra_info("sockname") if proto.transport else None
            self.advertise_host = sockname[0] if sockname else host
            self.local = (self.advertise_host or host, sockname[1] if sockname else 0)
        return proto.peer

    async def close(self) -> None:
        for handle in (self._timer, self._housekeeping):
            if handle is not None:
                handle.cancel()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(ConnectionAbortedError("SIP endpoint closed"))
        self._futures.clear()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
            await self.tcp_server.wait_closed()
        if self.udp is not None:
            self.udp.close()

    def adopt(self, peer: Peer, device_id: str) -> None:
        """`device_id` registered through the TCP connection `peer`: it is that device's own now
        (no idle timeout, no longer counted against its address)."""
        conn = self.connections.get(peer)
        if conn is not None:
            conn.adopt(device_id)

    def release(self, peer: Peer, device_id: str) -> None:
        """`device_id` no longer registers through `peer` (it unregistered or moved): once no
        device does, the connection is counted against its address and times out when idle."""
        conn = self.connections.get(peer)
        if conn is not None:
            conn.release(device_id)

    # ----- input -----
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer = Peer("udp", addr[0], addr[1])
        if data[:1] in b"\r\n\x00 " and not data.strip(b"\r\n\x00 "):
            return  # keep-alive padding some devices send over UDP
        fast = self.fast_path
        if fast is not None:
            request = recognise(data)
            if request is not None and fast(request, peer):
                return
        try:
            message = parse_message(data)
        except ParseError as exc:
            self._reject(data, exc, peer)
            return
        self.message_received(message, peer)

    def message_received(self, message: Request | Response, peer: Peer) -> None:
        try:
            events = self.tx.receive(message, peer, self.loop.time())
        except ParseError as exc:  # a header the transaction layer needs is malformed
            self._reject(message.to_bytes(), exc, peer)
            return
        if isinstance(message, Request):
            self.stats.requests_received[message.method] += 1
            if not events:
                self.stats.retransmissions_absorbed += 1
        else:
            self.stats.responses_received[message.status] += 1
        for event in events:
            if isinstance(event, RequestReceived):
                if not self._valid(event):
                    continue
                try:
                    self.on_request(event)
                except Exception:
                    log.exception("error handling %s from %s", event.request.method, peer)
                    self.respond(event, Response.for_request(event.request, 500))
            elif isinstance(event, ResponseReceived) and event.final:
                fut = self._futures.pop(event.key, None) if event.key is not None else None
                if fut is not None and not fut.done():
                    fut.set_result(event.response)
                elif self.on_response is not None:
                    try:
                        self.on_response(event)
                    except Exception:
                        log.exception("error handling a %d response from %s",
                                      event.response.status, peer)
        self._flush()

    def _valid(self, event: RequestReceived) -> bool:
        """RFC 3261 8.2 checks on a well-formed request; answers the error itself if not."""
        try:
            validate_request(event.request)
        except ParseError as exc:
            response = Response.for_request(event.request, exc.status_hint, _reason(exc))
            if exc.status_hint == 420:
                required = event.request.headers.get_all("Require")
                response.headers.add("Unsupported", ", ".join(required))
            self.stats.bad_requests += 1
            self.respond(event, response)
            return False
        return True

    def _reject(self, data: bytes, exc: ParseError, peer: Peer) -> None:
        kind = "oversized" if isinstance(exc, MessageTooLarge) else "malformed"
        answer = salvage_error_response(data, exc.status_hint, _reason(exc))
        held = self.log_throttle.allow(peer.host, self.loop.time())
        suffix = f" ({held} more from this host not logged)" if held else ""
        if answer is None:
            self.stats.dropped[kind] += 1
            if held is not None:
                log.info("dropped %s message from %s:%s: %s%s", kind, peer.host, peer.port, exc,
                         suffix)
            return
        self.stats.bad_requests += 1
        self.stats.responses_sent[exc.status_hint] += 1
        if held is not None:
            log.info("answered %s to %s:%s: %s%s", exc.status_hint, peer.host, peer.port, exc,
                     suffix)
        self.tx.send_raw(answer, peer)
        self._flush()

    def fast_received(self, request: FastRequest, peer: Peer) -> None:
        """A message the TCP stream parser recognised: to `fast_path`, or parsed if it declines."""
        handler = self.fast_path
        if handler is not None and handler(request, peer):
            return
        try:
            message = parse_message(request.raw)
        except ParseError as exc:  # not expected: the recogniser accepts only what parses
            self._reject(request.raw, exc, peer)
            return
        self.message_received(message, peer)

    def fast_transaction(self, request: FastRequest, peer: Peer) -> bool:
        """Count a recognised request and enter it in the transaction layer, as
        `message_received` does for a parsed one: True when it is new (answer it with
        `respond_bytes`), False for a retransmission (answered from the cache already)."""
        self.stats.requests_received[request.method] += 1
        if self.tx.receive_key(request.key, peer, self.loop.time()):
            return True
        self.stats.retransmissions_absorbed += 1
        self._flush()
        return False

    # ----- output -----
    def respond_bytes(self, key: tuple[str, str, str], status: int, data: bytes,
                      peer: Peer) -> None:
        """`respond` with the response already serialised."""
        self.stats.responses_sent[status] += 1
        self.tx.respond_bytes(key, status, data, peer, self.loop.time())
        self._flush()

    def respond(self, event: RequestReceived, response: Response) -> None:
        self.stats.responses_sent[response.status] += 1
        self.tx.respond(event.key, response, event.peer, self.loop.time())
        self._flush()

    def request(self, request: Request, peer: Peer) -> asyncio.Future[Response]:
        """Send a request in a client transaction; the future gets the final response."""
        fut: asyncio.Future[Response] = self.loop.create_future()
        if peer.reliable and peer not in self.connections:
            fut.set_exception(ConnectionError(f"no TCP connection to {peer.host}:{peer.port}"))
            return fut
        key = self.tx.request(request, peer, self.loop.time())
        self._futures[key] = fut
        fut.add_done_callback(lambda done: self._request_done(key, done))
        self._flush()
        self._arm_timer()
        return fut

    def send(self, message: Request | Response | bytes, peer: Peer) -> None:
        """Send outside any transaction: the ACK for a 2xx, which the TU sends itself."""
        data = message if isinstance(message, bytes) else message.to_bytes()
        self.tx.send_raw(data, peer)
        self._flush()

    def _request_done(self, key: tuple[str, str], fut: asyncio.Future[Response]) -> None:
        if fut.cancelled():  # the caller gave up: stop retransmitting for it
            self._futures.pop(key, None)
            self.tx.cancel(key)

    def new_branch(self) -> str:
        return f"{self._branch_prefix}{next(self._branch_seq)}"

    def via(self, transport: str) -> str:
        host = self.advertise_host or self.local[0]
        branch = self.new_branch()
        return f"SIP/2.0/{transport.upper()} {host}:{self.local[1]};rport;branch={branch}"

    def _flush(self) -> None:
        for data, peer in self.tx.datagrams_to_send():
            if peer.transport == "udp":
                if self.udp is not None:
                    self.udp.sendto(data, (peer.host, peer.port))
            else:
                conn = self.connections.get(peer)
                if conn is not None and conn.transport is not None:
                    conn.transport.write(data)
                else:
                    self.stats.dropped["no_connection"] += 1

    # ----- timers -----
    def _arm_timer(self) -> None:
        deadline = self.tx.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for event in self.tx.handle_timer(self.loop.time()):
            if isinstance(event, TransactionTimedOut):
                fut = self._futures.pop(event.key, None)
                if fut is not None and not fut.done():
                    fut.set_exception(
                        TransactionTimeout(f"{event.request.method} to {event.peer.host} timed out")
                    )
        self._flush()
        self._arm_timer()

    def _schedule_housekeeping(self) -> None:
        def tick() -> None:
            # Re-armed first: one failing expiry must not stop transactions expiring for good.
            self._housekeeping = self.loop.call_later(1.0, tick)
            try:
                self.tx.expire(self.loop.time())
            except Exception:
                self.stats.dropped["tx_expire_error"] += 1
                log.exception("expiring SIP transactions failed")

        self._housekeeping = self.loop.call_later(1.0, tick)


def _reason(exc: ParseError) -> str:
    if isinstance(exc, MessageTooLarge):
        return "Message Too Large"
    text = str(exc).split("\n")[0][:60]
    return "Bad Request - " + "".join(ch for ch in text if " " <= ch < "\x7f")


class _SipUdpSocket:
    """The endpoint's UDP socket, read from the event loop, paced when it carries a moderate rate.

    Each wake-up of an idle process costs far more than the datagram it brings (on a virtual
    machine, over 100 µs against a few µs of work), and 10,000 devices sending a keepalive a
    minute each wake it 167 times a second. So while the datagrams come at between
    `PACE_FROM` and `PACE_UNTIL` a second, the socket is read at most once per `pace_s`: every
    read takes all that is queued (up to `MAX_BATCH`), and a datagram waits at most `pace_s`
    (SIP over UDP retransmits after 500 ms; GB/T 28181 keepalives come every 60 s). Below that
    band each datagram is read as it comes (a lone exchange is not slowed), and above it the
    busy loop reads several datagrams per wake-up anyway, and pacing would only add delay.

    Sending: `sendto` at once; a datagram the kernel will not take now waits in a queue of at
    most `MAX_QUEUED` datagrams and `MAX_QUEUED_BYTES` (beyond that it is dropped and counted:
    SIP over UDP retransmits).
    """

    PACE_FROM = 20.0  # datagrams per second
    PACE_UNTIL = 2_000.0
    MAX_BATCH = 512  # datagrams per read (also the most a read holds the loop for)
    MAX_QUEUED = 4_096
    MAX_QUEUED_BYTES = 4 << 20
    MAX_DATAGRAM = 65_535

    def __init__(self, endpoint: SipEndpoint, sock: socket.socket, pace_s: float) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.pace_s = pace_s
        self.loop = endpoint.loop
        self.fd = sock.fileno()
        sock.setblocking(False)
        self._queue: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque()
        self._queued_bytes = 0
        self._closed = False
        self._paced: asyncio.TimerHandle | None = None
        self._count = 0  # datagrams since `_since`
        self._since = self.loop.time()
        self.rate = 0.0  # datagrams per second over the last full second
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        if self._pace(self._drain()):
            self.loop.remove_reader(self.fd)
            self._paced = self.loop.call_later(self.pace_s, self._paced_read)

    def _paced_read(self) -> None:
        """The pace's timer: read what came meanwhile; with nothing there (or once the rate
        has left the band), read as datagrams come again."""
        self._paced = None
        if self._closed:
            return
        if self._pace(self._drain()):
            self._paced = self.loop.call_later(self.pace_s, self._paced_read)
        else:
            self.loop.add_reader(self.fd, self._readable)

    def _pace(self, received: int) -> bool:
        """Whether to wait `pace_s` before reading again, after a read that took `received`.

        The rate is taken over whole seconds; a read that finds more than a pace's worth at
        the top of the band ends the pacing at once (a registration storm beginning)."""
        if self._closed or not self.pace_s:
            return False
        now = self.loop.time()
        if now - self._since >= 1.0:
            self.rate = self._count / (now - self._since)
            self._count, self._since = 0, now
        if received > self.PACE_UNTIL * self.pace_s:
            # the rate over this pace, until the next whole second says otherwise
            self.rate = received / self.pace_s
            self._count, self._since = 0, now
            return False
        return received > 0 and self.PACE_FROM <= self.rate <= self.PACE_UNTIL

    def _drain(self) -> int:
        recvfrom, endpoint = self.sock.recvfrom, self.endpoint
        received = 0
        for _ in range(self.MAX_BATCH):
            if self._closed:
                break
            try:
                data, addr = recvfrom(self.MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error queued on the socket (read, so gone)
                log.debug("UDP error: %s", exc)
                continue
            received += 1
            try:
                endpoint.datagram_received(data, addr)
            except Exception:  # never lose the reader to one datagram
                endpoint.stats.dropped["failed"] += 1
                held = endpoint.log_throttle.allow(f"failed/{addr[0]}", self.loop.time())
                if held is not None:  # one line a second per host, with a count of the rest
                    log.exception("SIP datagram from %s:%s failed%s", addr[0], addr[1],
                                  f" ({held} more from this host not logged)" if held else "")
        self._count += received
        return received

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed:
            return
        if not self._queue:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.fd, self._writable)
            except OSError as exc:  # unreachable network and the like: as a lost datagram
                log.debug("UDP send to %s:%s failed: %s", addr[0], addr[1], exc)
                return
        if len(self._queue) >= self.MAX_QUEUED \
                or self._queued_bytes + len(data) > self.MAX_QUEUED_BYTES:
            self.endpoint.stats.dropped["udp_send_queue_full"] += 1
            return
        self._queue.append((data, addr))
        self._queued_bytes += len(data)

    def _writable(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP send to %s:%s failed: %s", addr[0], addr[1], exc)
            queue.popleft()
            self._queued_bytes -= len(data)
        self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._paced is not None:
            self._paced.cancel()
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self._queue.clear()
        self._queued_bytes = 0
        self.sock.close()


class _SipTcpConnection(asyncio.Protocol):
    """One TCP connection; framing by Content-Length, CRLF pings answered with CRLF."""

    def __init__(self, endpoint: SipEndpoint, *, owned: bool = False) -> None:
        self.endpoint = endpoint
        self.parser = StreamParser(MAX_MESSAGE_SIZE)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.owned = owned  # a device registered through it, or we opened it
        self._devices: set[str] = set()  # devices registered through it (bounded by the registry)
        self._counted = False  # counted in endpoint._unregistered
        self._stall: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_message = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("tcp", host, port)
        ep = self.endpoint
        if len(ep.connections) >= ep.max_tcp_connections:
            ep.stats.dropped["tcp_refused"] += 1
            transport.close()
            return
        if not self.owned:
            waiting = ep._unregistered.get(host, 0)
            if waiting >= ep.max_tcp_unregistered_per_host:
                ep.stats.dropped["tcp_refused_per_host"] += 1
                transport.close()
                return
            ep._unregistered[host] = waiting + 1
            self._counted = True
            loop = asyncio.get_running_loop()
            self._last_message = loop.time()
            self._idle = loop.call_later(ep.tcp_idle_timeout_s, self._check_idle)
        ep.connections[self.peer] = self
        ep.stats.tcp_connections_accepted += 1

    def adopt(self, device_id: str) -> None:
        self._devices.add(device_id)
        self.owned = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._uncount()

    def release(self, device_id: str) -> None:
        self._devices.discard(device_id)
        if self._devices or not self.owned or self.peer is None or self.transport is None:
            return
        self.owned = False
        ep = self.endpoint
        ep._unregistered[self.peer.host] = ep._unregistered.get(self.peer.host, 0) + 1
        self._counted = True
        loop = asyncio.get_running_loop()
        self._last_message = loop.time()
        self._idle = loop.call_later(ep.tcp_idle_timeout_s, self._check_idle)

    def _uncount(self) -> None:
        if self._counted and self.peer is not None:
            self._counted = False
            waiting = self.endpoint._unregistered
            left = waiting.get(self.peer.host, 1) - 1
            if left > 0:
                waiting[self.peer.host] = left
            else:
                waiting.pop(self.peer.host, None)

    def _check_idle(self) -> None:
        self._idle = None
        if self.owned or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_message
        timeout = self.endpoint.tcp_idle_timeout_s
        if quiet < timeout:
            self._idle = loop.call_later(timeout - quiet, self._check_idle)
            return
        self.endpoint.stats.dropped["tcp_idle"] += 1
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        self.parser.fast = self.endpoint.fast_path is not None
        try:
            items = self.parser.feed(data)
        except ParseError as exc:
            self.endpoint._reject(bytes(self.parser.pending_head()), exc, self.peer)
            self.transport.close()
            return
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.parser.buffered:
            loop = asyncio.get_running_loop()
            self._stall = loop.call_later(self.endpoint.partial_message_timeout_s, self._stalled)
        for item in items:
            if isinstance(item, (Request, Response)):
                if not self.owned:
                    self._last_message = asyncio.get_running_loop().time()
                self.endpoint.message_received(item, self.peer)
            elif isinstance(item, FastRequest):
                if not self.owned:
                    self._last_message = asyncio.get_running_loop().time()
                self.endpoint.fast_received(item, self.peer)
            elif item.pong_due:
                self.transport.write(b"\r\n")  # pong to a double-CRLF ping (RFC 5626 4.4.1)

    def _stalled(self) -> None:
        self.endpoint.stats.dropped["tcp_stalled"] += 1
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
        if self._idle is not None:
            self._idle.cancel()
        self._uncount()
        if self.peer is not None and self.endpoint.connections.get(self.peer) is self:
            del self.endpoint.connections[self.peer]
        self.transport = None
