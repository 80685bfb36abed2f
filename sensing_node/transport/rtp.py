"""RTP media receivers for GB/T 28181 streams: UDP, and RFC 4571 TCP in both roles.

A thin asyncio layer over the sans-I/O `rtp` package. Each stream gets one even local port from
`PortPool` (GB/T 28181 media uses one port per stream). Packets are checked against
the expected source (the device's host; its port and SSRC are latched from the first good packet
unless given, since devices often send from a port other than the one in their SDP), put back in
sequence order by `rtp.reorder.ReorderBuffer` and handed to an `RtpSink` in order. Everything
else (RTCP, other sources or SSRCs, bytes that are not RTP) is dropped and counted; once a UDP
stream's source is latched, its socket is connected to it and the kernel drops other senders'
datagrams before the node sees them.

A receiver is opened before the INVITE (its port goes into the offer) but learns what to expect
only from the answer, so until `expect()` nothing reaches the sink: the packets that come first
are held, the newest `EARLY_PACKETS` of them within `EARLY_BYTES` (older ones are dropped and
counted in `dropped_early`), and `expect()` replays them through the same checks as any packet,
so only the answered source and SSRC get through and the reorder buffer starts at the real
stream. A passive TCP port takes connections only from the device's addresses.

TCP media (GB/T 28181-2022 section 4.3.6, RFC 4571 framing) is either passive (we listen, the
device connects; one connection per session) or active (we connect to the port in the device's
SDP answer, retrying for a while because the device may open it late, within
`connect_timeout_s` in all).

The receive path is the hot path: no logging and no objects per packet beyond the payload view
and one tuple; the kernel buffer of every RTP socket is raised to `rcvbuf` (1 MiB by default;
the node asks for `media.receive_buffer_kib`, 4 MiB), because keyframe bursts overflow the
default on loopback and LAN alike, and so that a stream rides out its process falling behind
for the seconds the overload guard takes to shed others.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from rtp.errors import RtpError
from rtp.framing import Deframer
from rtp.packet import RtpPacket, is_rtcp, peek_rtp_header
from rtp.ps import MAX_BUFFERED, AccessUnit
from rtp.psframe import PsFrameDemuxer
from rtp.reorder import ReorderBuffer

from . import native
from .native import FastReceive, FrameAssembly

__all__ = [
    "MediaIngest",
    "PortPool",
    "PortsExhausted",
    "RtpReceiveConfig",
    "RtpSink",
    "TcpRtpReceiver",
    "UdpRtpReceiver",
]

log = logging.getLogger(__name__)

DEFAULT_RCVBUF = 1 << 20
#: the largest receive buffer asked for: Linux grants at most half of INT_MAX whatever is
#: asked, and a C int holds no more (a single port's buffer, sized per stream, reaches it at
#: 256 streams of 4 MiB)
RCVBUF_MAX = (2**31 - 1) // 2
_MAX_PAYLOAD = 0xFFFF  # no RTP payload is longer (a UDP datagram, an RFC 4571 frame)
_PACK_HEADER = b"\x00\x00\x01\xba"
EARLY_PACKETS = 64  # packets held from before the answer, at most...
EARLY_BYTES = 128 * 1024  # ...and at most this many bytes of them
#: datagrams a UDP receiver reads per wake-up at most, so that one busy stream cannot hold the
#: loop from the others
READ_BATCH = 64
#: what a UDP receiver reads a datagram into: any datagram fits whole
RECV_SIZE = 0x10000
_PLAIN = struct.Struct("!BHII")  # after the first byte: M/PT, sequence, timestamp, SSRC
_rcvbuf_warned = False
#: SO_RCVBUFFORCE, which Python's socket module does not name (Linux only)
_SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE",
                                      33 if sys.platform.startswith("linux") else None)

# (payload, sequence, timestamp, marker): what the reorder buffer holds per packet.
_Item = tuple[memoryview, int, int, bool]


class PortsExhausted(RuntimeError):
    """Every port of the RTP range is in use (by us or by someone else)."""


@dataclass(frozen=True, slots=True)
class RtpReceiveConfig:
    """Receive settings shared by the UDP and TCP receivers.

    :param reorder_window: packets held behind a gap before it is given up.
    :param max_delay_s: longest wait for a missing packet.
    :param rcvbuf: SO_RCVBUF asked for on every RTP socket.
    :param connect_attempts: tries of an active TCP connection before giving up.
    :param connect_retry_s: pause between those tries.
    :param connect_timeout_s: the whole of an active TCP connect, tries and pauses included.
    """

    reorder_window: int = 64
    max_delay_s: float = 0.2
    rcvbuf: int = DEFAULT_RCVBUF
    connect_attempts: int = 4
    connect_retry_s: float = 1.0
    connect_timeout_s: float = 5.0


class RtpSink(Protocol):
    """Receives the packets of one stream in sequence order.

    `payload` is a view of the packet's immutable `bytes`, so a sink may keep it (the packet
    stays alive as long as the view does).
    """

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None: ...


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for a `size`-byte receive buffer and return what the kernel granted.

    Linux reports twice the value it accepted (the extra half is its bookkeeping). A request
    over `RCVBUF_MAX` asks for that. When the kernel caps the request (net.core.rmem_max),
    SO_RCVBUFFORCE is tried, and if the buffer is still short a warning is logged once per
    process.
    """
    global _rcvbuf_warned
    size = min(size, RCVBUF_MAX)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < size and _SO_RCVBUFFORCE is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:
            pass  # not privileged
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < size and not _rcvbuf_warned:
        _rcvbuf_warned = True
        log.warning(
            "RTP socket receive buffer capped at %d bytes (asked %d); raise net.core.rmem_max "
            "or keyframe bursts may be lost", granted, size,
        )
    return granted


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class PortPool:
    """Even local ports from the configured RTP range (node.rtp_ports), one per stream.

    A port someone else holds is skipped and tried again later; `PortsExhausted` is raised when
    no port of the range can be bound. The host to bind is the node's media address
    (node.media_ip), where devices are told to send; one that is no address of this machine
    raises `OSError` at once rather than looking like a full range.
    """

    def __init__(self, low: int, high: int, *, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        if not 0 < low <= high <= 0xFFFF:
            raise ValueError("RTP port range must be 1-65535, low <= high")
        ports = range(low + (low & 1), high + 1, 2)
        if not ports:
            raise ValueError("RTP port range holds no even port")
        self.low, self.high, self.rcvbuf = low, high, rcvbuf
        self._free: deque[int] = deque(ports)
        self._in_use: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._in_use)

    async def acquire_udp(self, host: str) -> tuple[socket.socket, int]:
        """A bound, non-blocking UDP socket with the large receive buffer, and its port."""
        return self._acquire(host, socket.SOCK_DGRAM)

    async def acquire_tcp(self, host: str) -> tuple[socket.socket, int]:
        """A bound, listening, non-blocking TCP socket with the large receive buffer."""
        return self._acquire(host, socket.SOCK_STREAM)

    def release(self, port: int) -> None:
        """Give a port back (the caller has closed its socket); unknown ports are ignored."""
        if port in self._in_use:
            self._in_use.discard(port)
            self._free.append(port)

    def _acquire(self, host: str, kind: socket.SocketKind) -> tuple[socket.socket, int]:
        for _ in range(len(self._free)):
            port = self._free.popleft()
            sock = socket.socket(_family(host), kind)
            try:
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                set_rcvbuf(sock, self.rcvbuf)  # before listen(): accepted sockets inherit it
                sock.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(4)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                self._free.append(port)  # held by another process for now
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise OSError(exc.errno, f"{host} is not an address of this host") from None
                continue
            self._in_use.add(port)
            return sock, port
        raise PortsExhausted(
            f"no free even RTP port in {self.low}-{self.high} on {host} "
            f"({len(self._in_use)} held by this node)"
        )


class _RtpReceiver:
    """What the UDP and TCP receivers share: SSRC check, reorder buffer, timer, counters, and
    the packets held from before the answer."""

    #: the common packet's path: compiled where the build could (`transport.native`)
    fast_class: type[FastReceive] = FastReceive
    #: whether packets go through it. Only compiled does it pay: as Python it costs about
    #: what it saves, and the receive path stays as it was (its counters still kept there).
    fast_path: bool = native.COMPILED

    def __init__(self, sink: RtpSink, config: RtpReceiveConfig | None = None) -> None:
        self.config = config or RtpReceiveConfig()
        self.sink = sink
        self._deliver = sink.on_packet
        # The common packet's path (compiled where the build could), and the keeper of the
        # counters, SSRC, source and reorder buffer that both paths share.
        self._fast = fast = self.fast_class(self._new_reorder())
        fast.on_error = self._sink_failed
        self._reorder: ReorderBuffer[_Item] = fast.reorder
        self.rtcp = 0
        self.dropped_foreign = 0
        self.dropped_invalid = 0
        self.dropped_early = 0
        self.sink_errors = 0
        self.answered = False  # set by expect(): until then packets are only held
        self._early: deque[tuple[bytes, Any]] = deque()  # (packet, source address)
        self._early_bytes = 0
        self.rcvbuf = 0
        self.port = 0
        self._pool: PortPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _new_reorder(self) -> ReorderBuffer[_Item]:
        """A reorder buffer of the class the fast path takes (compiled or not)."""
        return native.ReorderBuffer(self.config.reorder_window, self.config.max_delay_s)

    # What the two paths share, kept by the fast one.
    @property
    def reorder(self) -> ReorderBuffer[_Item]:
        return self._reorder

    @reorder.setter
    def reorder(self, reorder: ReorderBuffer[_Item]) -> None:
        self._reorder = self._fast.reorder = reorder

    @property
    def ssrc(self) -> int | None:
        ssrc = self._fast.ssrc
        return None if ssrc < 0 else ssrc

    @ssrc.setter
    def ssrc(self, ssrc: int | None) -> None:
        self._fast.ssrc = -1 if ssrc is None else ssrc

    @property
    def packets(self) -> int:
        return self._fast.packets

    @property
    def bytes(self) -> int:
        return self._fast.bytes

    @property
    def last_packet_at(self) -> float | None:
        at = self._fast.last_packet_at
        return None if at < 0 else at

    @property
    def fast_packets(self) -> int:
        """Packets the fast path took (`rtp.fast`)."""
        return self._fast.fast

    def _take_loop(self) -> asyncio.AbstractEventLoop:
        """Make the running loop this receiver's, and its clock the fast path's."""
        loop = self._loop = asyncio.get_running_loop()
        self._fast.clock = loop.time
        return loop

    def attach_fast(self, frame: FrameAssembly | None) -> None:
        """Let the common packet skip the sink's `on_packet` and go into `frame` (its
        ingest's, `MediaIngest.frame`): the sink's own per-packet work is then the frame's
        `next_seq` and `add`. The sink calls this again, with None, whenever its `on_packet`
        has more to do than that (consumers of single packets); see `rtp.fast`. Without
        `fast_path` it does nothing."""
        if self.fast_path:
            self._fast.attach(frame)

    # Counters kept by the reorder buffer.
    @property
    def lost(self) -> int:
        return self.reorder.lost

    @property
    def reordered(self) -> int:
        return self.reorder.reordered

    @property
    def duplicates(self) -> int:
        return self.reorder.duplicates

    def _receive(self, data: bytes) -> bool:
        """One packet of the stream; True if it was RTP of the expected SSRC."""
        # The common packet first: plain RTP (version 2, no padding, extension or CSRC) of
        # our SSRC, the one expected next; it goes straight to the sink.
        if len(data) > 12 and data[0] == 0x80:
            second, seq, ts, ssrc = _PLAIN.unpack_from(data, 1)
            fast = self._fast
            if ssrc == fast.ssrc and not 192 <= second <= 223 and self._reorder.take(seq):
                assert self._loop is not None
                fast.packets += 1
                fast.bytes += len(data)
                fast.last_packet_at = self._loop.time()
                try:
                    self._deliver(memoryview(data)[12:], seq, ts, second > 0x7F)
                except Exception:
                    self._sink_failed()
                return True
        if is_rtcp(data):
            self.rtcp += 1
            return False
        header = peek_rtp_header(data)
        if header is None:
            try:
                packet = RtpPacket.parse(data)  # padding, or not RTP at all
            except RtpError:
                self.dropped_invalid += 1
                return False
            seq, ts, ssrc, marker = packet.sequence, packet.timestamp, packet.ssrc, packet.marker
            payload = memoryview(packet.payload)
        else:
            _, seq, ts, ssrc, marker, offset = header
            payload = memoryview(data)[offset:]
        fast = self._fast
        if ssrc != fast.ssrc:
            if fast.ssrc >= 0:
                self.dropped_foreign += 1
                return False
            fast.ssrc = ssrc
        assert self._loop is not None
        now = self._loop.time()
        fast.packets += 1
        fast.bytes += len(data)
        fast.last_packet_at = now
        out = self.reorder.push(seq, (payload, seq, ts, marker), now)
        self._release(out)
        if len(out) != 1 and self._timer is None:
            self._arm_timer()  # something is held: a gap, or a possible source restart
        return True

    @property
    def early(self) -> int:
        """Packets held from before the answer."""
        return len(self._early)

    def _hold(self, data: bytes, addr: Any) -> None:
        """A packet from before the answer: keep the newest EARLY_PACKETS (EARLY_BYTES)."""
        early = self._early
        early.append((data, addr))
        self._early_bytes += len(data)
        while len(early) > EARLY_PACKETS or self._early_bytes > EARLY_BYTES:
            old, _ = early.popleft()
            self._early_bytes -= len(old)
            self.dropped_early += 1

    def _answer(self) -> list[tuple[bytes, Any]]:
        """The answer is in: start afresh and return the held packets, to be replayed through
        the checks of the receiver."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.reorder.received:  # expected again: what came before is not this stream
            self.reorder = self._new_reorder()
        self.answered = True
        early, self._early = list(self._early), deque()
        self._early_bytes = 0
        return early

    def _release(self, items: list[_Item]) -> None:
        deliver = self._deliver
        try:
            for payload, seq, ts, marker in items:
                deliver(payload, seq, ts, marker)
        except Exception:
            self._sink_failed()

    def _sink_failed(self) -> None:
        self.sink_errors += 1
        if self.sink_errors == 1:
            log.exception("RTP sink failed (further failures are only counted)")

    def _arm_timer(self) -> None:
        deadline = self.reorder.next_deadline()
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        self._release(self.reorder.flush(self._loop.time()))
        self._arm_timer()

    def _finish(self) -> None:
        """Stop the timer, hand over what is held, give the port back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release(self.reorder.drain())
        self._early.clear()
        self._early_bytes = 0
        if self._pool is not None:
            self._pool.release(self.port)
            self._pool = None


class UdpRtpReceiver(_RtpReceiver):
    """One stream on one UDP port. Create with `open`, start with `expect`, stop with `close`.

    Until `expect`, packets are held (see the module's docstring), whoever sends them.

    The receiver reads its socket itself (`loop.add_reader`), up to `READ_BATCH` datagrams
    per wake-up. Once the source is latched the socket is connected to it: the kernel then
    hands over only that source's datagrams and refuses every other sender's (with an ICMP
    port unreachable), so the node never sees them. Reading is then a plain `recv`, with no
    address to build per datagram, the largest cost of a datagram in Python after the
    system call. `dropped_foreign` counts what came from other sources before the latch.
    Datagrams queued before the connect are still read with their addresses and checked: the
    switch to `recv` comes only once the queue was seen empty after the connect. A new
    `expect` dissolves the connection.
    """

    def __init__(self, sink: RtpSink, config: RtpReceiveConfig | None = None) -> None:
        super().__init__(sink, config)
        self.sock: socket.socket | None = None
        self._io: asyncio.AbstractEventLoop | None = None  # the loop that reads the socket
        self._connected = False  # the socket is connected to the latched source
        self._source_hosts: frozenset[str] | None = None
        fast = self._fast
        fast.slow = self.datagram_received
        #: what a socket's datagrams are given to: the fast path, then `datagram_received`
        self.receive_datagram = fast.datagram_received if self.fast_path \
            else self.datagram_received
        #: what the compiled reader gives each datagram of the connected socket to, as
        #: (batch, start, end) (`native.drain`)
        self.receive_in = fast.datagram_in if self.fast_path else self._datagram_in

    @property
    def source(self) -> Any:
        """The latched (host, port)."""
        return self._fast.source

    @source.setter
    def source(self, source: Any) -> None:
        self._fast.source = source
        sock, io = self.sock, self._io
        if sock is None or io is None:
            return
        if source is not None:
            try:
                sock.connect(source)
            except OSError:
                return  # read with addresses, as before the latch
            self._connected = True
        elif self._connected:
            # Addresses are read and checked again first, so that should the connection not
            # dissolve, its source's datagrams still meet the new answer's checks.
            self._connected = False
            io.add_reader(sock.fileno(), self._read_any)
            _disconnect(sock)

    @classmethod
    async def open(
        cls, host: str, pool: PortPool, sink: RtpSink, config: RtpReceiveConfig | None = None
    ) -> UdpRtpReceiver:
        """Bind a port from `pool` on `host` and start receiving for `sink` (which gets
        nothing before `expect`)."""
        self = cls(sink, config)
        sock, self.port = await pool.acquire_udp(host)
        self._pool = pool
        self.rcvbuf = set_rcvbuf(sock, self.config.rcvbuf)
        loop = self._take_loop()
        try:
            sock.setblocking(False)  # a socket passed to a media worker is a new object
            loop.add_reader(sock.fileno(), self._read_any)
        except BaseException:
            sock.close()
            pool.release(self.port)
            raise
        self.sock, self._io = sock, loop
        return self

    def _read_any(self) -> None:
        """Read what is queued, with each datagram's address (no source latched, or
        datagrams from before the connect still queued)."""
        sock = self.sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        receive = self.receive_datagram
        try:
            for _ in range(READ_BATCH):
                data, addr = recvfrom(RECV_SIZE)
                receive(data, addr)
        except (BlockingIOError, InterruptedError):
            # Empty. Once connected, whatever comes next is from the source.
            if self._connected and self.sock is sock and self._io is not None:
                self._io.add_reader(sock.fileno(), self._read_source)
        except OSError:
            pass  # an ICMP error reported on the socket, or closed meanwhile

    def _read_source(self) -> None:
        """Read what is queued on the socket connected to the source: in the compiled build
        with `recvmmsg`, many datagrams per system call (`native.drain`)."""
        sock = self.sock
        if sock is None:
            return
        if native.drain is not None:
            native.drain(sock.fileno(), self.receive_in, READ_BATCH)
            return
        recv = sock.recv
        receive = self.receive_datagram
        source = self._fast.source
        try:
            for _ in range(READ_BATCH):
                receive(recv(RECV_SIZE), source)
                if not self._connected:  # a new answer, from the sink: addresses again
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass  # an ICMP error reported on the socket, or closed meanwhile

    def expect(
        self, source_host: str | Iterable[str] | None = None, ssrc: int | None = None
    ) -> None:
        """Accept packets only from `source_host` (any host if None) and of `ssrc`.

        `source_host` may be several addresses (a device behind NAT sends from its public
        address but names its private one in SDP). The source port, and the SSRC when None,
        are taken from the first RTP packet accepted. The packets held so far are then
        replayed: those that fit go to the sink, the others are counted as foreign.
        """
        if source_host is None:
            self._source_hosts = None
        elif isinstance(source_host, str):
            self._source_hosts = frozenset((source_host,))
        else:
            self._source_hosts = frozenset(source_host)
        self.source = None
        self.ssrc = ssrc
        for data, addr in self._answer():
            self.datagram_received(data, addr)

    def _datagram_in(self, batch: bytes, start: int, end: int) -> None:
        """A datagram of the connected socket, off the fast path."""
        self.datagram_received(batch[start:end], self._fast.source)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr != self._fast.source:
            # No source is latched before the answer, so its packets all come this way and
            # the latched source's packets never pay for the check.
            if self._fast.source is not None or (
                self._source_hosts is not None and addr[0] not in self._source_hosts
            ):
                self.dropped_foreign += 1
            elif not self.answered:
                self._hold(data, addr)
            elif self._receive(data):
                self.source = addr
            return
        self._receive(data)

    def close(self) -> None:
        """Close the socket, release held packets to the sink and the port to the pool."""
        sock, self.sock = self.sock, None
        if sock is not None:
            if self._io is not None and not self._io.is_closed():
                self._io.remove_reader(sock.fileno())
            sock.close()
        self._finish()


def _disconnect(sock: socket.socket) -> None:
    """Dissolve a UDP socket's connection (connect to AF_UNSPEC), so that it takes any
    sender's datagrams again. Python's `connect` cannot name AF_UNSPEC: libc's can."""
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
    if libc.connect(sock.fileno(), bytes(16), 16) != 0:
        raise OSError(ctypes.get_errno(), "cannot dissolve the UDP socket's connection")


class TcpRtpReceiver(_RtpReceiver, asyncio.BufferedProtocol):
    """One stream over one RFC 4571 TCP connection: passive (`listen_tcp`, then `expect` once
    answered) or active (`expect`, then `connect_tcp`). Stop with `close`; `closed` is set when
    the connection ends."""

    def __init__(self, sink: RtpSink, config: RtpReceiveConfig | None = None) -> None:
        super().__init__(sink, config)
        self.deframer = Deframer()
        self.transport: asyncio.Transport | None = None
        self.server: asyncio.AbstractServer | None = None
        self.peer: Any = None
        self.refused_connections = 0
        self.connect_attempts = 0
        #: the local port of the connection carrying the stream (its receive queue is read
        #: by that port), once there is one
        self.local_port: int | None = None
        self.closed = asyncio.Event()
        self._claimed = False
        self._peer_hosts: frozenset[str] | None = None  # who may connect; None: anybody
        # Where each packet goes: held until the answer, then the receive path itself.
        self._on_rtp: Callable[[bytes], object] = self._hold_early

    async def listen_tcp(
        self, host: str, pool: PortPool, peers: Iterable[str] | None = None
    ) -> tuple[asyncio.AbstractServer, int]:
        """Passive role: listen on a port from `pool`; the first connection from one of `peers`
        (the device's addresses; anybody if None) carries the stream.

        Connections from elsewhere, and any after the first, are closed at once and counted in
        `refused_connections`.
        """
        if peers is not None:
            self._peer_hosts = frozenset(peers)
        sock, port = await pool.acquire_tcp(host)
        loop = self._take_loop()
        try:
            server = await loop.create_server(self._accept, sock=sock)
        except BaseException:
            sock.close()
            pool.release(port)
            raise
        self.server, self.port, self._pool = server, port, pool
        return server, port

    async def connect_tcp(self, host: str, port: int) -> None:
        """Active role: connect to the device's SDP port, retrying while it is not listening.

        The device opens its port only once it has answered the INVITE, so the first tries may
        be refused; they are repeated up to `connect_attempts` times, `connect_retry_s` apart
        (GB/T 28181-2022 App. D: reconnect at least a second apart, at least three tries).
        All of it takes at most `connect_timeout_s`, after which `TimeoutError` is raised (a
        port that never answers would otherwise hold a try for minutes).

        The address comes from the answer, so this counts as answered if `expect` was not
        called.
        """
        loop = self._take_loop()
        self._claimed = True
        if not self.answered:
            self.expect(self.ssrc)
        config = self.config
        last: OSError | None = None
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                for attempt in range(config.connect_attempts):
                    if attempt:
                        await asyncio.sleep(config.connect_retry_s)
                    self.connect_attempts += 1
                    sock = socket.socket(_family(host), socket.SOCK_STREAM)
                    sock.setblocking(False)
                    try:
                        self.rcvbuf = set_rcvbuf(sock, config.rcvbuf)
                        await loop.sock_connect(sock, (host, port))
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:  # the timeout's cancellation
                        sock.close()
                        raise
                    await loop.create_connection(lambda: self, sock=sock)
                    return
        except TimeoutError:
            tries = f"{self.connect_attempts} {'try' if self.connect_attempts == 1 else 'tries'}"
            raise TimeoutError(
                f"no connection to {host}:{port} within {config.connect_timeout_s:g} s ({tries})"
            ) from None
        raise ConnectionError(
            f"RTP over TCP: {host}:{port} refused {self.connect_attempts} tries: {last}"
        )

    def _accept(self) -> asyncio.BaseProtocol:
        return _Incoming(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and not self.rcvbuf:
            self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.local_port = int(local[1])

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.deframer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        on_rtp = self._on_rtp
        for packet in self.deframer.buffer_updated(nbytes):
            on_rtp(packet)  # type: ignore[arg-type]  # always bytes here

    def _hold_early(self, packet: bytes) -> None:
        self._hold(packet, None)

    def expect(self, ssrc: int | None = None, peers: Iterable[str] | None = None) -> None:
        """Accept only `ssrc` (None: the first packet's SSRC is latched), and from now on
        connections only from `peers` if given (the SDP answer may name another address).
        The packets held so far are replayed through the SSRC check."""
        self.ssrc = ssrc
        if peers is not None:
            self._peer_hosts = frozenset(peers)
        early = self._answer()
        # From now on the common packet takes the fast path (once the sink attaches its
        # frame), every other the receive path.
        fast = self._fast
        fast.slow_packet = self._receive
        self._on_rtp = fast.packet_received if self.fast_path else self._receive
        for packet, _ in early:
            self._receive(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._release(self.reorder.drain())
        self.closed.set()

    def close(self) -> None:
        """Close the connection and the listening socket; release the port."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.server is not None:
            self.server.close()
            self.server = None
        self._finish()


class _Incoming(asyncio.Protocol):
    """A connection to a passive TCP session port, until its peer is known. The first one from
    an expected address is handed to the receiver (the transport then talks to it directly);
    any other is closed as soon as it is made."""

    def __init__(self, owner: TcpRtpReceiver) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self.owner
        peer = transport.get_extra_info("peername")
        hosts = owner._peer_hosts
        if owner._claimed or (hosts is not None and (not peer or peer[0] not in hosts)):
            owner.refused_connections += 1
            transport.close()
            return
        owner._claimed = True
        transport.set_protocol(owner)
        owner.connection_made(transport)


class MediaIngest:
    """An `RtpSink` that puts RTP payloads together into frames and demuxes them as PS.

    A GB/T 28181 sender gives every packet of a frame the same timestamp and sets the marker
    bit on the last one, so a frame ends at a marker or, when that packet was lost, at the
    next timestamp. The payloads are kept as views (the receivers hand out views of immutable
    `bytes`), joined once per frame and demuxed in one call by `rtp.psframe.PsFrameDemuxer`,
    which walks a camera's one-pack-per-frame PS by its length fields and falls back to the
    full `PsDemuxer` for anything else: parsing per frame rather than per packet is most of
    what keeps the receive path cheap.

    Taking the fast path up again. A stream that fell back is handed to a new demuxer at the
    next keyframe that carries its PSM. After lost packets (`restart`) it is sooner: the new
    demuxer is given the program stream map the stream had, so the first whole frame after
    the hole (the first that starts with a pack header) takes the fast path even without a
    PSM, and if what follows the hole (the rest of a damaged frame) made it fall back, the
    next frame that starts with a pack header gets a demuxer of its own. That is one try per
    hole; a stream that does not fit the fast path at all (FFmpeg's packs) waits for a
    keyframe as before. The units are those the keyframe rule gives (the frames after the
    hole are demuxed by `PsDemuxer`'s rules either way), except that they come out no later
    (a frame sooner where the fast path takes them), a unit `PsDemuxer` would label "unknown"
    for want of the map is labelled from it, and `offset` counts from the new demuxer's first
    frame. `fast_frames` and `slow_frames` count the frames each path took over all the
    stream's demuxers.

    Units go to `on_units` (a list per frame), else to `on_unit` one by one, else they are
    collected in `units`.

    Memory: a frame is cut before its payloads could pass `max_buffered` bytes (the demuxers'
    window, `rtp.ps.MAX_BUFFERED` by default) or `MAX_FRAME_PACKETS` packets, so the frame in
    progress and the demuxer together hold at most `limit` bytes (`buffered`). The byte count
    costs nothing per packet: the payloads are added up only every so many packets, as many as
    could not reach the bound even at the largest payload.
    """

    #: a "frame" that never ends (no marker, one timestamp) is cut after this many packets
    MAX_FRAME_PACKETS = 4096

    def __init__(
        self,
        on_unit: Callable[[AccessUnit], None] | None = None,
        *,
        on_units: Callable[[list[AccessUnit]], None] | None = None,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.max_buffered = max_buffered
        self.demuxer = native.PsFrameDemuxer(max_buffered)
        self.units: list[AccessUnit] = []
        self.on_unit = on_unit if on_unit is not None else self.units.append
        self._deliver = on_units if on_units is not None else self._one_by_one
        # The frame's size is checked when it has `check_at` packets: the payloads counted
        # so far (`_size`, the first `_counted` parts) leave room for that many more.
        self._first_check = min(self.MAX_FRAME_PACKETS, max_buffered // _MAX_PAYLOAD)
        #: the frame in progress (compiled where the build could, as the fast path is), and
        #: in it the sequence number the stream expects next (`next_seq`, kept by the sink)
        self.frame = native.FrameAssembly(self._first_check, self.end_frame, self._frame_full)
        self._size = 0
        self._counted = 0
        self.frames = 0
        self.fast_path_resumed = 0
        self._after_hole = False  # restart() gave the demuxer a map: resume at a whole frame
        self._fast_before = self._slow_before = 0  # frames of the demuxers replaced

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        """A packet's payload, in order (`RtpSink`). The streams and the fast path call
        `frame.add` themselves; this is for the other sinks."""
        self.frame.add(payload, seq, ts, marker)

    @property
    def buffered(self) -> int:
        """Bytes held: the payloads of the frame in progress and the demuxer's."""
        return sum(len(part) for part in self.frame.parts) + self.demuxer.buffered

    @property
    def limit(self) -> int:
        """What `buffered` never exceeds between packets."""
        return self.max_buffered + self.demuxer.limit

    def _frame_full(self) -> bool:
        """Whether one more payload could take the frame past its bounds; if not, when to
        ask again."""
        parts = self.frame.parts
        size = self._size
        for part in parts[self._counted :]:
            size += len(part)
        room = (self.max_buffered - size) // _MAX_PAYLOAD
        if room <= 0 or len(parts) >= self.MAX_FRAME_PACKETS:
            return True
        self._size, self._counted = size, len(parts)
        self.frame.check_at = min(self.MAX_FRAME_PACKETS, len(parts) + room)
        return False

    def end_frame(self) -> None:
        """Demux the payloads collected so far as one frame."""
        frame = self.frame
        parts = frame.parts
        if not parts:
            return
        frame.parts = []
        frame.check_at, self._size, self._counted = self._first_check, 0, 0
        self.frames += 1
        data = b"".join(parts)
        demuxer = self.demuxer
        if demuxer.fallen_back:
            # Something did not fit the fast path (a lost packet, a start without a PSM):
            # a keyframe with its PSM is a clean place to take it up again, and after a hole
            # any frame that starts with a pack header, given the map the stream had.
            if native.opens_keyframe(data):
                demuxer = self._resume(None)
            elif self._after_hole and data.startswith(_PACK_HEADER):
                demuxer = self._resume(demuxer.stream_types)
        units = demuxer.feed_frame(data)
        if self._after_hole and not demuxer.fallen_back:
            self._after_hole = False  # back on the fast path: the keyframe rule again
        if units:
            self._deliver(units)

    def _resume(self, stream_types: dict[int, int] | None) -> PsFrameDemuxer:
        """Hand out what the fallen-back demuxer holds and put a new one in its place."""
        old = self.demuxer
        units = old.flush()
        if units:
            self._deliver(units)
        self._replace(native.PsFrameDemuxer(self.max_buffered, stream_types))
        self.fast_path_resumed += 1
        self._after_hole = False  # one try per hole; then the keyframe rule
        return self.demuxer

    def _replace(self, demuxer: PsFrameDemuxer) -> None:
        old = self.demuxer
        self._fast_before += old.fast_frames
        self._slow_before += old.slow_frames
        self.demuxer = demuxer

    @property
    def fast_frames(self) -> int:
        """Frames demuxed on the fast path, over all the stream's demuxers."""
        return self._fast_before + self.demuxer.fast_frames

    @property
    def slow_frames(self) -> int:
        """Frames demuxed by the full `PsDemuxer` (fallen back), over all demuxers."""
        return self._slow_before + self.demuxer.slow_frames

    def flush(self) -> None:
        """End of stream: the frame in progress, then what the demuxer still holds."""
        self.end_frame()
        units = self.demuxer.flush()
        if units:
            self._deliver(units)

    def restart(self) -> None:
        """After lost packets: hand out what was complete, then demux afresh from the next
        structure (what follows a hole is the middle of something), with the program stream
        map the stream had, so that a frame without a PSM can take the fast path."""
        self.flush()
        types = self.demuxer.stream_types
        self._replace(native.PsFrameDemuxer(self.max_buffered, types))
        self._after_hole = bool(types)
        self.frame.ts = -1

    def _one_by_one(self, units: list[AccessUnit]) -> None:
        for unit in units:
            self.on_unit(unit)
