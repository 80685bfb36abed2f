"""The relay sender: one outgoing RTP session to an upper platform (GB/T 28181 cascade).

References: GB/T 28181-2022 section 4.3.6 and Appendix D (PS over RTP, PT 96, 90 kHz; TCP media
with `a=setup`, the client reconnecting at least a second apart), RFC 3550 section 5.1, RFC 4571
section 2 (framing over TCP), RFC 4145 (setup roles).

A `RelaySender` is a consumer of a channel's live stream. Each frame the ingest hands it
(`AccessUnit.ps_bytes`, the camera's own PS packs, no remux) is cut into RTP packets by
`rtp.packetize.RtpPacketizer` with the upstream's SSRC, our own sequence numbers and timestamps
that follow the frames' PTS, and sent:

* ``udp``: one datagram per packet from the port announced in our SDP answer (a socket
  connected to the port of the upstream's offer). On Linux a frame's packets go to the kernel
  in runs of up to 46 (at 1400 payload bytes) with UDP segmentation offload (`UDP_SEGMENT`),
  which cuts them into the same datagrams for about a quarter of the CPU of one call per
  packet; a route that cannot (no checksum offload, an MTU below the packet) falls back to one
  call per packet for the rest of the session. A send that fails (a full socket buffer, an
  unreachable network, the upstream's ICMP refusal) is counted in `send_errors` and its packets
  are lost, as they would be on the wire. What the upstream sends to the port (RTCP) is read
  and discarded.
* ``tcp-active``: the upstream offered `a=setup:passive`; we connect from the announced port to
  the port of its offer, `connect_attempts` tries `connect_retry_s` apart within
  `connect_timeout_s`, like the node's own active TCP receivers.
* ``tcp-passive``: the upstream offered `a=setup:active`; we listen on the announced port and take
  one connection, from the upstream's host only (others are closed and counted in
  `refused_connections`), within `connect_timeout_s` of `start`.

Over TCP each frame is one RFC 4571 framed write.

Life cycle: `open()` takes the port for the SDP answer; `start()` once the upstream has ACKed;
`close(reason)` from the owner (a BYE). A session that ends by itself (the upstream closed the
connection or stopped reading, a connect failed, the camera's stream ended) is closed and
reported once through `on_end(reason)`; the owner then detaches the sender from the stream.

Nothing is sent before the first video keyframe. Until the transport is writable, the units
since the last video keyframe are held (at most `max_buffer_bytes`; past that they are dropped
and holding starts again at the next keyframe), so an upstream that joins a running stream gets
the cached GOP at once. A TCP upstream that reads too slowly fills the transport's write buffer:
past `max_buffer_bytes` the sender stops writing and drops frames (`dropped_frames`) until the
buffer has drained below a quarter of that and the next video keyframe comes; blocked for
`timeout_s` (checked on each unit and by a timer), the session ends with "upstream not reading".
The write buffer therefore holds at most `max_buffer_bytes` plus one frame. After a gap in the
camera's stream (it is being invited again) sending resumes at a keyframe on a timeline that
continues the old one.

`on_unit` runs on the ingest's path: it never blocks, and costs one packetising and one send
call per run of packets (UDP) or one write per frame (TCP); nothing is logged per packet or per
frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from rtp.packetize import RtpPacketizer
from rtp.ps import AccessUnit

from ..transport.rtp import PortPool
from .consumers import Consumer

__all__ = ["DEFAULT_MAX_BUFFER", "TRANSPORTS", "RelaySender"]

log = logging.getLogger(__name__)

TRANSPORTS = ("udp", "tcp-active", "tcp-passive")
DEFAULT_MAX_BUFFER = 4 << 20
#: SO_SNDBUF of a TCP relay socket (Linux doubles it): ample for 8 Mbit/s at 100 ms RTT
TCP_SNDBUF = 128 << 10
_DRAIN_READS = 64  # datagrams read from the UDP port per wake-up (RTCP, discarded)
_HEADER = 12  # RTP fixed header, as the packetizer writes it
_UDP_SEGMENT = 103  # Linux <netinet/udp.h>, since 4.18; not in the socket module
_GSO_SEGMENTS = 64  # the most segments one call may carry (UDP_MAX_SEGMENTS)
_GSO_MAX = 65507  # and the most bytes (the largest IPv4 UDP payload)
# What a kernel or route without UDP segmentation offload answers.
_GSO_REFUSALS = frozenset(
    (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE)
)


class RelaySender(Consumer):
    """One outgoing RTP session (PS over RTP) to an upper platform.

    :param ssrc: the upstream's SSRC (its `y=`, as an integer).
    :param transport: ``udp``, ``tcp-active`` (we connect) or ``tcp-passive`` (we listen).
    :param remote: (host, port) from the upstream's SDP offer; for ``tcp-passive`` only its
        host counts (the one connection must come from there).
    :param port_pool: where the announced local port comes from.
    :param bind_host: the address to bind it on (the node's media address).
    :param payload_max: RTP payload bytes per packet (media.rtp_payload_max).
    :param timeout_s: a TCP upstream blocked this long ends the session (media.timeout_s).
    :param connect_timeout_s: the whole of an active connect; the wait for a passive one.
    :param max_buffer_bytes: what may wait in the transport's write buffer (or be held before
        the transport is writable) before frames are dropped.
    :param on_end: called once, with the reason, when the session ends by itself.
    :param clock: monotonic time for `stats` and the stall check; the loop's time by default.

    State (`state`): ``new``, ``open`` (port taken), ``connecting`` (started, TCP not up yet),
    ``sending``, ``stalled`` (TCP upstream not reading, frames dropped), ``ended``.
    """

    name = "relay"
    wants_rtp = True  # for cut-through (on_rtp)
    #: pass the camera's packets on as they come once a whole frame went out (see on_rtp)
    cut_through = True
    connect_attempts = 4
    connect_retry_s = 1.0
    #: send a frame's UDP packets in runs with UDP_SEGMENT where the kernel can
    udp_gso = True
    #: called when the transport takes data again (it became writable, or a TCP upstream
    #: read what was waiting): a sender that paces itself (playback) waits for it
    on_writable: Callable[[], object] | None = None

    def __init__(
        self,
        *,
        ssrc: int,
        transport: str,
        remote: tuple[str, int],
        port_pool: PortPool,
        bind_host: str,
        payload_max: int = 1400,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER,
        on_end: Callable[[str], object] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown relay transport {transport!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeout_s and connect_timeout_s must be positive")
        if max_buffer_bytes < 1:
            raise ValueError("max_buffer_bytes must be positive")
        self.packetizer = RtpPacketizer(
            ssrc, payload_max=payload_max,
            first_seq=random.randrange(0x10000), first_ts=random.randrange(1 << 32),
        )
        self.transport = transport
        self.remote = (remote[0], int(remote[1]))
        self.port_pool = port_pool
        self.bind_host = bind_host
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_buffer_bytes = max_buffer_bytes
        self.on_end_callback = on_end
        self._clock = clock
        self.state = "new"
        self.end_reason: str | None = None
        self.local_port = 0
        # counters
        self.packets = 0
        self.bytes = 0  # RTP packets sent, header included, RFC 4571 length not
        self.frames = 0
        self.dropped_frames = 0  # units not sent once the first keyframe went out
        self.send_errors = 0
        self.refused_connections = 0
        self.rtcp = 0  # datagrams the upstream sent to our UDP port
        self.started: float | None = None
        self.first_keyframe_at: float | None = None
        # What a unit goes to: held until the transport is writable, then sent, then dropped.
        self._send: Callable[[AccessUnit], None] = self._hold
        self._skipping = False  # writable, but waiting for a video keyframe
        self._pending: list[AccessUnit] = []
        self._pending_bytes = 0
        self._paused = False
        self._paused_since = 0.0
        self._written = 0  # bytes given to the TCP transport
        # Cut-through (on_rtp): on, and the state of the packet boundary it may start at.
        self._through = False
        self._last_ts = 0  # the camera's RTP timestamp of the last packet seen
        self._last_marker = False  # that packet closed a frame
        self._sent_since_marker = False  # and that frame went out whole
        self._handed = 0  # of those, bytes the kernel has taken, at the last look
        self._progress_at = 0.0  # when the kernel last took bytes, or the buffer was empty
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: socket.socket | None = None
        self._sock: socket.socket | None = None  # tcp-active: bound, not yet connecting
        self._server: asyncio.AbstractServer | None = None
        self._tcp: asyncio.Transport | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._port_held = False
        # UDP segmentation offload (Linux): the ancillary data of a run, and its length.
        self._gso: list[tuple[int, int, bytes]] | None = None
        self._gso_run = 0

    @property
    def ssrc(self) -> int:
        return self.packetizer.ssrc

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        assert self._loop is not None
        return self._loop.time()

    # ----- life cycle -----
    async def open(self) -> int:
        """Take the local port (bound, and listening for ``tcp-passive``) and return it for
        the SDP answer. Raises `PortsExhausted` or `OSError` when no port can be had."""
        if self.state != "new":
            raise RuntimeError("RelaySender.open() called twice")
        loop = self._loop = asyncio.get_running_loop()
        pool, host = self.port_pool, self.bind_host
        if self.transport == "udp":
            sock, port = await pool.acquire_udp(host)
            try:
                # Room for a keyframe's burst of datagrams; the kernel caps what it grants.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.max_buffer_bytes)
                # Connected: the route is looked up once, and only the upstream's own port
                # gets datagrams into ours.
                sock.connect(self.remote)
                loop.add_reader(sock.fileno(), self._drain)
            except BaseException:
                sock.close()
                pool.release(port)
                raise
            self._udp = sock
            segment = self.packetizer.payload_max + _HEADER
            if self.udp_gso and sys.platform == "linux" and _GSO_MAX // segment >= 2:
                self._gso = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("=H", segment))]
                self._gso_run = min(_GSO_SEGMENTS, _GSO_MAX // segment)
        elif self.transport == "tcp-passive":
            sock, port = await pool.acquire_tcp(host)
            try:
                self._server = await loop.create_server(lambda: _Link(self), sock=sock)
            except BaseException:
                sock.close()
                pool.release(port)
                raise
        else:
            # The pool hands out listening sockets; this port must connect, so its listener
            # makes way for a plain bound socket (the pool keeps the port ours meanwhile).
            listener, port = await pool.acquire_tcp(host)
            listener.close()
            try:
                self._sock = _bound_tcp(host, port)
            except BaseException:
                pool.release(port)
                raise
        self.local_port = port
        self._port_held = True
        self.state = "open"
        return port

    def start(self) -> None:
        """The upstream has ACKed: UDP sends from now on, tcp-active connects, tcp-passive
        waits `connect_timeout_s` for the upstream's connection (if it is not there yet)."""
        if self.state != "open":
            if self.state == "new":
                raise RuntimeError("RelaySender.start() before open()")
            return
        loop = self._loop
        assert loop is not None
        self.started = self.now()
        if self.transport == "udp":
            self._writable()
        elif self._tcp is not None:  # tcp-passive, connected before the ACK
            self._writable()
        else:
            self.state = "connecting"
            if self.transport == "tcp-active":
                self._connect_task = loop.create_task(self._connect())
            else:
                self._timer = loop.call_later(self.connect_timeout_s, self._not_connected)

    def close(self, reason: str = "closed") -> None:
        """End the session: sockets closed, the port back in the pool, timers cancelled.
        Safe to call more than once; `on_end` is not called for it."""
        if self.state == "ended":
            return
        self.state = "ended"
        self.end_reason = reason
        self._send = self._discard
        self._skipping = False
        self._pending, self._pending_bytes = [], 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        if self._udp is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._server is not None:
            self._server.close()
            self._server = None
        tcp, self._tcp = self._tcp, None
        if tcp is not None:
            # A stalled upstream would hold a graceful close open for as long as it does not
            # read; what is still buffered is of no use to anybody now.
            if tcp.get_write_buffer_size():
                tcp.abort()
            else:
                tcp.close()
        if self._port_held:
            self._port_held = False
            self.port_pool.release(self.local_port)

    def _end(self, reason: str) -> None:
        """The session ended by itself: close it and tell the owner, once."""
        if self.state == "ended":
            return
        self.close(reason)
        callback = self.on_end_callback
        if callback is not None:
            try:
                callback(reason)
            except Exception:
                log.exception("relay to %s:%s: on_end failed", *self.remote)

    # ----- the stream's calls -----
    def on_unit(self, unit: AccessUnit) -> None:
        if self._through:
            return  # its packets went out as they came
        if self._skipping and not self._resume(unit):
            return
        self._send(unit)
        self._sent_since_marker = not self._skipping and (
            self._send == self._send_udp or self._send == self._send_tcp
        )

    def on_rtp(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        """Cut-through: once a frame that closed with a marker went out whole, the camera's
        packets are passed on as they come (our header, its payload), so a packet no longer
        waits for its frame's last one. Anything irregular (a stall, a gap) goes back to whole
        frames, which resume at a keyframe; a camera that sets no marker stays with them."""
        if self._through:
            self._forward(payload, ts, marker)
            return
        if (self._last_marker and self._sent_since_marker and self.cut_through
                and self.state == "sending" and not self._skipping and not self._paused):
            self._through = True
            self.packetizer.begin_forwarding(self._last_ts)
            self._forward(payload, ts, marker)
            return
        self._last_ts, self._last_marker = ts, marker
        if marker:
            self._sent_since_marker = False

    def on_loss(self, packets: int) -> None:
        if self._through:
            self.packetizer.skip(packets)  # the upstream sees the camera's loss

    def _forward(self, payload: memoryview, ts: int, marker: bool) -> None:
        packetizer = self.packetizer
        if self.transport == "udp":
            packets = packetizer.forward(payload, ts, marker)
            lost, lost_bytes = self._send_each(packets)
            self.packets += len(packets) - lost
            self.bytes += len(payload) + _HEADER * len(packets) - lost_bytes
            self.send_errors += lost
        else:
            tcp = self._tcp
            if tcp is None:
                return
            framed = packetizer.forward_framed(payload, ts, marker)
            count = -(-len(payload) // packetizer.payload_max)
            self.packets += count
            self.bytes += len(framed) - 2 * count
            tcp.write(framed)
            self._written += len(framed)
            self._check_progress(tcp)
        if marker:
            self.frames += 1

    def allow_cut_through(self, allowed: bool) -> None:
        """Whether the camera's packets may be passed on as they come (the hub allows it while
        a channel has few relays: fanned out wide, whole frames in segmented sends cost less
        and wait less than one send per packet and session)."""
        self.cut_through = allowed
        if not allowed:
            self._whole_frames()

    def _whole_frames(self) -> None:
        """Back from cut-through to whole frames (which resume at the next keyframe)."""
        if self._through:
            self._through = False
            self.packetizer.end_forwarding()
        self._last_marker = self._sent_since_marker = False

    def on_gap(self, reason: str) -> None:
        # The camera is being invited again: its next frames follow another PTS base, and
        # what comes first is not known to be decodable.
        self._pending, self._pending_bytes = [], 0
        was_through = self._through
        self._whole_frames()
        if self.state in ("sending", "stalled"):
            self._skipping = True
        if self.frames and not was_through:
            self.packetizer.restart_timeline()

    def on_end(self, reason: str) -> None:
        self._end(reason)

    # ----- units -----
    def _resume(self, unit: AccessUnit) -> bool:
        """Writable but skipping: whether `unit` may go out (a video keyframe while the
        transport takes data); counts what is dropped."""
        if self._paused:
            if self.first_keyframe_at is not None:
                self.dropped_frames += 1
            if self.now() - self._paused_since >= self.timeout_s:
                self._end("upstream not reading")
            return False
        if unit.keyframe and unit.stream_id >= 0xE0:
            self._skipping = False
            if self.first_keyframe_at is None:
                self.first_keyframe_at = self.now()
            return True
        if self.first_keyframe_at is not None:
            self.dropped_frames += 1
        return False

    def _hold(self, unit: AccessUnit) -> None:
        """Not writable yet: keep the units since the last video keyframe."""
        if unit.keyframe and unit.stream_id >= 0xE0:
            self._pending, self._pending_bytes = [], 0
        elif not self._pending:
            return
        self._pending.append(unit)
        self._pending_bytes += len(unit.ps_bytes)
        if self._pending_bytes > self.max_buffer_bytes:
            self._pending, self._pending_bytes = [], 0  # resume at the next keyframe

    def _discard(self, unit: AccessUnit) -> None:
        pass

    def _send_udp(self, unit: AccessUnit) -> None:
        packets = self.packetizer.packetize(unit.ps_bytes, unit.pts)
        count = len(packets)
        if not count:
            return
        self.frames += 1
        if self._gso is not None and count > 1:
            lost, lost_bytes = self._send_runs(packets)
        else:
            lost, lost_bytes = self._send_each(packets)
        self.packets += count - lost
        self.bytes += len(unit.ps_bytes) + _HEADER * count - lost_bytes
        if lost:
            self.send_errors += lost

    def _send_each(self, packets: list[bytes]) -> tuple[int, int]:
        """One datagram per call; returns the packets (and bytes) that could not be sent."""
        assert self._udp is not None
        send = self._udp.send
        lost = lost_bytes = 0
        for packet in packets:
            try:
                send(packet)
            except OSError:
                lost += 1
                lost_bytes += len(packet)
        return lost, lost_bytes

    def _send_runs(self, packets: list[bytes]) -> tuple[int, int]:
        """UDP segmentation offload: up to `_gso_run` packets in one call, which the kernel
        cuts into datagrams of the segment size (every packet of a frame but its last has that
        size, the last may be shorter). Where the route cannot (no checksum offload, an MTU
        below the segment), it is one datagram per call from then on."""
        assert self._udp is not None and self._gso is not None
        sendmsg, ancillary, run = self._udp.sendmsg, self._gso, self._gso_run
        lost = lost_bytes = 0
        for start in range(0, len(packets), run):
            part = packets[start : start + run]
            try:
                sendmsg(part, ancillary)
            except OSError as exc:
                if exc.errno in _GSO_REFUSALS:
                    self._gso = None
                    more, more_bytes = self._send_each(packets[start:])
                    return lost + more, lost_bytes + more_bytes
                lost += len(part)
                lost_bytes += sum(map(len, part))
        return lost, lost_bytes

    def _send_tcp(self, unit: AccessUnit) -> None:
        framed = self.packetizer.packetize_framed(unit.ps_bytes, unit.pts)
        if not framed:
            return
        tcp = self._tcp
        assert tcp is not None
        count = -(-len(unit.ps_bytes) // self.packetizer.payload_max)
        self.frames += 1
        self.packets += count
        self.bytes += len(framed) - 2 * count
        tcp.write(framed)  # may pause the protocol at once (_paused)
        self._written += len(framed)
        self._check_progress(tcp)

    def _check_progress(self, tcp: asyncio.Transport) -> None:
        """An upstream that reads nothing at all stops the kernel taking our bytes long before
        the write buffer reaches max_buffer_bytes at a low bit rate: no progress for timeout_s
        while bytes wait ends the session as well."""
        waiting = tcp.get_write_buffer_size()
        handed = self._written - waiting
        now = self.now()
        if waiting == 0 or handed != self._handed:
            self._handed, self._progress_at = handed, now
        elif now - self._progress_at >= self.timeout_s:
            self._end("upstream not reading")

    def _writable(self) -> None:
        """The transport takes data: send what is held, from its keyframe on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = "stalled" if self._paused else "sending"
        self._send = self._send_udp if self.transport == "udp" else self._send_tcp
        self._skipping = True
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for unit in pending:
            self.on_unit(unit)
        if self.on_writable is not None:
            self.on_writable()

    @property
    def writable(self) -> bool:
        """Whether a unit handed over now goes out (else it is held or dropped): the session
        is sending and a TCP upstream is not behind."""
        return self.state == "sending" and not self._paused

    def write_buffer(self) -> int:
        """Bytes waiting in the TCP transport's write buffer (0 for UDP)."""
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    # ----- UDP -----
    def _drain(self) -> None:
        sock = self._udp
        if sock is None:
            return
        for _ in range(_DRAIN_READS):
            try:
                sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket; sending goes on
            self.rtcp += 1

    # ----- TCP -----
    async def _connect(self) -> None:
        loop = self._loop
        assert loop is not None
        host, port = self.remote
        tries = 0
        last: OSError | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                for attempt in range(self.connect_attempts):
                    if attempt:
                        await asyncio.sleep(self.connect_retry_s)
                    sock, self._sock = self._sock, None
                    if sock is None:
                        try:
                            sock = _bound_tcp(self.bind_host, self.local_port)
                        except OSError as exc:
                            last = exc
                            continue
                    tries += 1
                    try:
                        await loop.sock_connect(sock, self.remote)
                        await loop.create_connection(lambda: _Link(self), sock=sock)
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:  # the timeout, or close()
                        sock.close()
                        raise
                    self._connect_task = None
                    return
        except TimeoutError:
            self._connect_task = None
            self._end(f"no connection to upstream {host}:{port} within "
                      f"{self.connect_timeout_s:g} s ({tries} {'try' if tries == 1 else 'tries'})")
            return
        self._connect_task = None
        self._end(f"cannot connect to upstream {host}:{port} ({tries} tries): {last}")

    def _not_connected(self) -> None:
        self._timer = None
        if self._tcp is None:
            self._end("upstream did not connect")

    def _admit(self, peer: Any) -> bool:
        """Whether a connection from `peer` carries this session (tcp-passive: the first one
        from the upstream's host) or is refused."""
        if self.state == "ended" or self._tcp is not None or self.transport != "tcp-passive":
            return False
        return peer_allowed(peer, self.remote[0])

    def _connected(self, transport: asyncio.Transport) -> None:
        self._tcp = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # The kernel's share of what waits for a slow upstream stays small (autotuning
            # would let it grow to megabytes), so that waiting shows in our write buffer.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_SNDBUF)
        self._written = self._handed = 0
        self._progress_at = self.now()
        transport.set_write_buffer_limits(
            high=self.max_buffer_bytes, low=self.max_buffer_bytes // 4
        )
        if self._server is not None and self._loop is not None:
            # One connection per session. Not closed from inside the accept path: uvloop is
            # still attaching the new connection to the server there.
            self._loop.call_soon(self._server.close)
            self._server = None
        if self.state == "connecting":
            self._writable()  # else start() will (tcp-passive, connected before the ACK)

    def _lost(self, transport: asyncio.Transport) -> None:
        if transport is self._tcp:
            self._tcp = None
            self._end("upstream closed the connection")

    def _pause(self) -> None:
        self._whole_frames()
        if not self._paused:
            self._paused = True
            self._paused_since = self.now()
            self._skipping = True
            if self.state == "sending":
                self.state = "stalled"
            if self._timer is None and self._loop is not None:
                self._timer = self._loop.call_later(self.timeout_s, self._stall_check)

    def _resume_writing(self) -> None:
        self._paused = False
        if self.state == "stalled":
            self.state = "sending"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.on_writable is not None:
            self.on_writable()

    def _stall_check(self) -> None:
        self._timer = None
        if not self._paused or self.state == "ended":
            return
        left = self.timeout_s - (self.now() - self._paused_since)
        if left <= 0:
            self._end("upstream not reading")
        elif self._loop is not None:
            self._timer = self._loop.call_later(left, self._stall_check)

    # ----- reading -----
    def stats(self) -> dict[str, Any]:
        tcp = self._tcp
        return {
            "transport": self.transport,
            "local_port": self.local_port,
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "ssrc": f"{self.ssrc:010d}",
            "state": self.state,
            "packets": self.packets,
            "bytes": self.bytes,
            "frames": self.frames,
            "dropped_frames": self.dropped_frames,
            "send_errors": self.send_errors,
            "udp_gso": self._gso is not None,
            "refused_connections": self.refused_connections,
            "write_buffer": tcp.get_write_buffer_size() if tcp is not None else 0,
            "started": self.started,
            "first_keyframe_at": self.first_keyframe_at,
            "end_reason": self.end_reason,
            "forwarding": self._through,
        }


def peer_allowed(peer: Any, host: str) -> bool:
    """Whether a TCP peer address (`getpeername()`) is `host` (an IPv4 peer on an IPv6
    socket, ::ffff:a.b.c.d, counts as a.b.c.d)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer[0])
        wanted = ipaddress.ip_address(host)
    except ValueError:
        return bool(peer[0] == host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(wanted, ipaddress.IPv6Address) and wanted.ipv4_mapped is not None:
        wanted = wanted.ipv4_mapped
    return address == wanted


def _bound_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port), to connect from."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Link(asyncio.Protocol):
    """The TCP connection of a session. For tcp-passive every accepted connection starts as
    one; those the sender does not admit are closed as soon as they are made."""

    def __init__(self, sender: RelaySender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sender = self.sender
        if sender.transport == "tcp-passive" and not sender._admit(
            transport.get_extra_info("peername")
        ):
            sender.refused_connections += 1
            transport.close()
            return
        if sender.state == "ended":
            transport.close()
            return
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sender._connected(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        pass  # RTCP from the upstream, if any: not used

    def eof_received(self) -> bool:
        return False  # the upstream is done: the connection closes

    def pause_writing(self) -> None:
        self.sender._pause()

    def resume_writing(self) -> None:
        self.sender._resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.sender._lost(self.transport)
