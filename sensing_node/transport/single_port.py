"""Single-port media (`media.single_port`): one UDP socket and one TCP listener for every stream.

Sites that must open a firewall for the node's media ask for one port rather than a range, as
ZLMediaKit's single-port mode gives them. `SinglePortMux` owns the two sockets for the node's
whole run (bound when the hub starts, closed when it stops) and hands each packet to the
stream whose SSRC it carries: the streams' SSRCs are the y= the node offers, unique per node
(`StreamHub.allocate_serial`), or the one the device answered with instead (the receivers'
`expect` re-keys the stream; an SSRC another stream already has is refused, since the two
could not be told apart).

Demultiplexing is one dict lookup per datagram, keyed by the four bytes that carry the SSRC
in an RTP header (`ssrc_key`): no packet object, no integer. A datagram of a stream then goes
through that stream's `SharedUdpReceiver`, which is a `UdpRtpReceiver` without a socket of its
own, so the source check (only the device's hosts, the source latched from the first good
packet), the packets held before the answer, the reorder buffer and the counters are the very
code of the per-port mode. Datagrams of an SSRC no stream has are dropped and counted
(`unknown_ssrc`): an unauthenticated packet never picks the stream it goes to beyond the SSRC
the signalling gave, and never changes which source feeds it.

TCP (RFC 4571): a connection to the listener is bound to a stream by the SSRC of its first
packet, and only if the connecting host is one the stream expects (the device's, as a
`tcp-passive` port of its own would check) and the stream has no connection yet; others are
closed and counted (`refused_connections`). One whose SSRC no stream has waits for a stream
to take it (a device's answer with an SSRC of its own may still be on its way). A connection
not bound within `PENDING_TIMEOUT_S` is closed too, and at most `MAX_PENDING` wait at a time,
so strangers cannot hold sockets open. `tcp-active` streams connect out from an ephemeral
port as before.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from typing import Any

from rtp.framing import Deframer

from .rtp import RtpReceiveConfig, RtpSink, TcpRtpReceiver, UdpRtpReceiver, set_rcvbuf

__all__ = ["SharedTcpReceiver", "SharedUdpReceiver", "SinglePortMux", "ssrc_key"]

log = logging.getLogger(__name__)

#: a connection to the TCP listener must send its first whole packet within this many seconds
PENDING_TIMEOUT_S = 5.0
#: connections waiting for their first packet at one time; more are closed at once
MAX_PENDING = 64
#: the one UDP socket's receive buffer grows with the streams on it, this many at a time
UDP_BUFFER_STEP = 16


def ssrc_key(packet: bytes) -> bytes:
    """The bytes that carry an RTP packet's SSRC (8-12), the key streams are found by.

    A packet too short to have them gives fewer than four bytes, which matches no key, so the
    caller needs no length check. Whether the rest is RTP at all is the stream's receiver's
    business: a key only decides where a packet is looked at.
    """
    return packet[8:12]


def _key(ssrc: int) -> bytes:
    return ssrc.to_bytes(4, "big")


class SinglePortMux(asyncio.DatagramProtocol):
    """The node's one media port: a UDP socket and a TCP listener on `host`:`port`, and which
    stream each SSRC belongs to. Open with `open` when the hub starts, `close` at its end."""

    def __init__(self, host: str, port: int, rcvbuf: int) -> None:
        self.host, self.port, self.rcvbuf = host, port, rcvbuf
        self._udp: dict[bytes, SharedUdpReceiver] = {}
        self._tcp: dict[bytes, SharedTcpReceiver] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.server: asyncio.AbstractServer | None = None
        self._pending: set[_Pending] = set()
        #: connections whose first packet carries an SSRC no stream has yet, by that SSRC
        self._parked: dict[bytes, list[_Pending]] = {}
        #: datagrams whose SSRC no stream has (dropped)
        self.unknown_ssrc = 0
        #: TCP connections closed unbound: unknown SSRC, a host the stream does not expect, a
        #: stream already connected, nothing sent in time, too many waiting
        self.refused_connections = 0
        self.granted_rcvbuf = 0
        self._serving: asyncio.Task[None] | None = None
        self._udp_sock: socket.socket | None = None
        self.closed = False
        self._buffered_for = UDP_BUFFER_STEP  # UDP streams the socket's buffer is sized for

    @classmethod
    def bind(cls, host: str, port: int, rcvbuf: int) -> SinglePortMux:
        """Bind UDP and TCP `port` on `host` and start serving them on the running loop;
        `OSError` at once if either cannot be bound. The loop takes them up in a moment:
        `ready` waits for that.

        `rcvbuf` is the SO_RCVBUF of a stream's socket (the pool's): connections accepted on
        the TCP port get it, and the UDP socket that many times over as it has UDP streams
        (`_grow_buffer`)."""
        self = cls(host, port, rcvbuf)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.granted_rcvbuf = set_rcvbuf(udp, rcvbuf * UDP_BUFFER_STEP)
            udp.bind((host, port))
            udp.setblocking(False)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_rcvbuf(tcp, rcvbuf)  # before listen(): accepted sockets inherit it
            tcp.bind((host, port))
            tcp.listen(128)
            tcp.setblocking(False)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        self._udp_sock = udp
        self._serving = asyncio.get_running_loop().create_task(self._serve(udp, tcp))
        self._serving.add_done_callback(self._served)
        return self

    def _served(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("cannot serve the single media port %s:%d: %s", self.host, self.port,
                      task.exception())

    async def _serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, sock=udp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        try:
            self.server = await loop.create_server(lambda: _Pending(self), sock=tcp)
        except BaseException:
            tcp.close()
            raise

    async def ready(self) -> None:
        """Wait until both sockets are served (at once after the first time); the error that
        kept them from it, if any."""
        if self._serving is None:
            raise OSError("the single media port is closed")
        await asyncio.shield(self._serving)

    def stats(self) -> dict[str, int]:
        """The node-wide counters of the port (what no single stream can count)."""
        return {"port": self.port, "udp_streams": len(self._udp), "tcp_streams": len(self._tcp),
                "unknown_ssrc": self.unknown_ssrc,
                "refused_connections": self.refused_connections}

    def close(self) -> None:
        """Close both sockets and the connections still waiting for their first packet."""
        self.closed = True
        if self._serving is not None:
            self._serving.cancel()  # if still taking them up, its cleanup closes them
            self._serving = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self._udp_sock = None
        if self.server is not None:
            self.server.close()
            self.server = None
        for pending in list(self._pending):
            pending.refuse()

    # ----- which stream has which SSRC -----
    def _add(self, table: dict[bytes, Any], ssrc: int, receiver: Any) -> None:
        key = _key(ssrc)
        if key in self._udp or key in self._tcp:
            raise ValueError(f"SSRC {ssrc:010d} is in use by another stream on the single "
                             f"media port")
        table[key] = receiver
        if table is self._udp and len(table) > self._buffered_for:
            self._grow_buffer(len(table))
        for pending in self._parked.pop(key, ()):
            pending.bind()

    def _grow_buffer(self, streams: int) -> None:
        """Size the UDP socket's buffer for `streams` (rounded up to `UDP_BUFFER_STEP`): as
        much as their sockets of their own would have. One buffer for all of them fills in a
        stall of the loop as fast as all of theirs together, and what overflows is lost from
        every stream at once; sized for a few streams, it lost a third of the packets of 200
        and had streams shed (docs/benchmarks.md, "Single port"). It only grows: the kernel
        takes the memory only while datagrams wait."""
        if self._udp_sock is None or self.transport is None:
            return
        self._buffered_for = -(-streams // UDP_BUFFER_STEP) * UDP_BUFFER_STEP
        self.granted_rcvbuf = set_rcvbuf(self._udp_sock, self.rcvbuf * self._buffered_for)

    def _rekey(self, table: dict[bytes, Any], old: int, new: int, receiver: Any) -> None:
        if old == new:
            return
        self._add(table, new, receiver)
        if table.get(_key(old)) is receiver:
            del table[_key(old)]

    def _remove(self, table: dict[bytes, Any], ssrc: int, receiver: Any) -> None:
        key = _key(ssrc)
        if table.get(key) is receiver:
            del table[key]

    # ----- UDP -----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        receiver = self._udp.get(data[8:12])  # ssrc_key, inlined: once per packet
        if receiver is None:
            self.unknown_ssrc += 1
            return
        receiver.receive_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for a receive-only socket say nothing useful

    # ----- TCP -----
    def _bind(self, pending: _Pending, key: bytes) -> SharedTcpReceiver | None:
        """The stream a new connection carries, by the SSRC of its first packet and its
        peer; None: refused. One whose SSRC no stream has yet waits (`_Pending.park`)."""
        receiver = self._tcp.get(key)
        if receiver is None and len(key) == 4 and not pending.parked:
            pending.park()
            self._parked.setdefault(key, []).append(pending)
            return None
        if receiver is None or not receiver._admits(pending.peer):
            pending.refuse()
            return None
        return receiver

    def _unpark(self, pending: _Pending, key: bytes) -> None:
        waiting = self._parked.get(key)
        if waiting is not None and pending in waiting:
            waiting.remove(pending)
            if not waiting:
                del self._parked[key]


class SharedUdpReceiver(UdpRtpReceiver):
    """One stream's UDP receiver on the single port: what `UdpRtpReceiver` does, fed by the
    mux instead of a socket of its own. Registered under the offered SSRC at `open`."""

    def __init__(self, sink: RtpSink, config: RtpReceiveConfig | None = None) -> None:
        super().__init__(sink, config)
        self.mux: SinglePortMux | None = None
        self.key_ssrc = 0

    @classmethod
    async def attach(
        cls, mux: SinglePortMux, ssrc: int, sink: RtpSink,
        config: RtpReceiveConfig | None = None,
    ) -> SharedUdpReceiver:
        """A receiver for the stream offered `ssrc` (which gets nothing before `expect`)."""
        self = cls(sink, config)
        mux._add(mux._udp, ssrc, self)
        self.mux, self.key_ssrc = mux, ssrc
        self.port, self.rcvbuf = mux.port, mux.granted_rcvbuf
        self._take_loop()
        return self

    def expect(
        self, source_host: str | Iterable[str] | None = None, ssrc: int | None = None
    ) -> None:
        """As `UdpRtpReceiver.expect`; an answered SSRC other than the offer's moves the
        stream to it (ValueError if another stream has it). Without one, the offered SSRC
        stays the key: the device can only be heard with it."""
        if ssrc is not None and self.mux is not None:
            self.mux._rekey(self.mux._udp, self.key_ssrc, ssrc, self)
            self.key_ssrc = ssrc
        super().expect(source_host, ssrc)

    def close(self) -> None:
        """Leave the mux, release held packets to the sink."""
        if self.mux is not None:
            self.mux._remove(self.mux._udp, self.key_ssrc, self)
            self.mux = None
        super().close()


class SharedTcpReceiver(TcpRtpReceiver):
    """One stream's RFC 4571 receiver on the single port: the connection the mux binds to it
    (passive), or one it opens itself (`connect_tcp`, active, from an ephemeral port)."""

    def __init__(self, sink: RtpSink, config: RtpReceiveConfig | None = None) -> None:
        super().__init__(sink, config)
        self.mux: SinglePortMux | None = None
        self.key_ssrc = 0

    def attach(self, mux: SinglePortMux, ssrc: int, peers: Iterable[str] | None) -> int:
        """Take the connection that comes with `ssrc` from one of `peers` (anybody if None;
        nobody if empty, as for tcp-active); return the port to offer."""
        if peers is not None:
            self._peer_hosts = frozenset(peers)
        self.port = mux.port
        self._take_loop()
        mux._add(mux._tcp, ssrc, self)  # may bind a waiting connection: set up first
        self.mux, self.key_ssrc = mux, ssrc
        return mux.port

    def _admits(self, peer: Any) -> bool:
        hosts = self._peer_hosts
        return not self._claimed and (hosts is None or bool(peer) and peer[0] in hosts)

    def expect(self, ssrc: int | None = None, peers: Iterable[str] | None = None) -> None:
        """As `TcpRtpReceiver.expect`; an answered SSRC other than the offer's moves the
        stream to it (ValueError if another stream has it), which binds a connection that
        waits with that SSRC if its host is one of `peers`."""
        if peers is not None:
            self._peer_hosts = frozenset(peers)
        if ssrc is not None and self.mux is not None:
            self.mux._rekey(self.mux._tcp, self.key_ssrc, ssrc, self)
            self.key_ssrc = ssrc
        super().expect(ssrc, peers)

    def close(self) -> None:
        """Leave the mux, close the connection."""
        if self.mux is not None:
            self.mux._remove(self.mux._tcp, self.key_ssrc, self)
            self.mux = None
        super().close()


class _Pending(asyncio.BufferedProtocol):
    """A connection to the single TCP port until its first packet says which stream it is.

    Its deframer then goes to the stream's receiver with whatever it holds beyond that packet,
    and the transport talks to the receiver directly from then on. A device that answers with
    an SSRC of its own may connect and send before the node has read its answer (and moved
    the stream to that SSRC), so a first packet of an SSRC no stream has parks the connection,
    not reading further, until a stream takes that SSRC or `PENDING_TIMEOUT_S` is over."""

    def __init__(self, mux: SinglePortMux) -> None:
        self.mux = mux
        self.deframer = Deframer()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.parked = False
        self._packets: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.peer = transport.get_extra_info("peername")
        mux = self.mux
        if len(mux._pending) >= MAX_PENDING or mux.closed:
            self.refuse()
            return
        mux._pending.add(self)
        self._timer = asyncio.get_running_loop().call_later(PENDING_TIMEOUT_S, self.refuse)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.deframer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        packets = self.deframer.buffer_updated(nbytes)
        if self.transport is None:
            return
        self._packets += packets  # type: ignore[arg-type]  # always bytes here
        if self._packets and not self.parked:
            self.bind()

    def bind(self) -> None:
        """Hand the connection to the stream its first packet names, if it may have it."""
        transport = self.transport
        if transport is None:
            return
        receiver = self.mux._bind(self, ssrc_key(self._packets[0]))
        if receiver is None:
            return
        self._settle()
        self.transport = None
        packets, self._packets = self._packets, []
        receiver._claimed = True
        receiver.deframer = self.deframer  # with the bytes read past these packets
        transport.set_protocol(receiver)
        receiver.connection_made(transport)
        if self.parked:
            transport.resume_reading()
        on_rtp = receiver._on_rtp
        for packet in packets:
            on_rtp(packet)

    def park(self) -> None:
        """Wait for a stream to take the first packet's SSRC; read nothing more meanwhile."""
        self.parked = True
        if self.transport is not None:
            self.transport.pause_reading()

    def refuse(self) -> None:
        """Close the connection unbound, and count it."""
        self._settle()
        if self.transport is not None:
            self.mux.refused_connections += 1
            self.transport.close()
            self.transport = None

    def _settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.mux._pending.discard(self)
        if self.parked and self._packets:
            self.mux._unpark(self, ssrc_key(self._packets[0]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()
        self.transport = None
