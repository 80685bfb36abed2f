"""The relay sender re-streams a channel's frames to an upper platform over real loopback sockets.

Media is the ZLMediaKit-written GB clip from tests/data/media (H.264, keyframe every 25 frames,
one pack per frame), demuxed with `rtp.ps.PsDemuxer` into the units the ingest hands its
consumers. What the test's upstream receives is parsed as RTP (and deframed per RFC 4571 over
TCP), put back together per frame, and compared with the units' PS bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from rtp.framing import Deframer
from rtp.packet import RtpPacket
from rtp.packetize import RtpPacketizer
from rtp.ps import AccessUnit, PsDemuxer
from sensing_node.media.relay import RelaySender, peer_allowed
from sensing_node.transport.rtp import PortPool, set_rcvbuf

from ..conftest import DATA
from .conftest import free_even_range

HOST = "127.0.0.1"
SSRC = 200000001
CLIP = "media/gb_h264_zlm.ps"  # 250 frames, keyframes at 0, 25, 50, ...
FRAME = 3600  # PTS step at 25 fps


@functools.cache
def clip_units() -> tuple[AccessUnit, ...]:
    demuxer = PsDemuxer()
    units = demuxer.feed((DATA / CLIP).read_bytes()) + demuxer.flush()
    assert len(units) == 250 and all(u.stream_id >= 0xE0 for u in units)
    assert [i for i, u in enumerate(units) if u.keyframe] == list(range(0, 250, 25))
    return tuple(units)


def looped(start: int = 0) -> Iterator[tuple[int, AccessUnit]]:
    """The clip's units over and over, from unit `start`, each with a PTS of its own; yields
    (index in the clip, unit)."""
    units = clip_units()
    base = units[0].pts or 0
    n = 0
    while True:
        index = (start + n) % len(units)
        yield index, dataclasses.replace(units[index], pts=base + (start + n) * FRAME)
        n += 1


def is_key(unit: AccessUnit) -> bool:
    return unit.keyframe and unit.stream_id >= 0xE0


def make_pool() -> PortPool:
    return PortPool(*free_even_range(8, 44000, 48000))


def relay(pool: PortPool, transport: str, remote: tuple[str, int], **kwargs: Any) -> RelaySender:
    kwargs.setdefault("on_end", [].append)
    return RelaySender(
        ssrc=SSRC, transport=transport, remote=remote, port_pool=pool, bind_host=HOST,
        payload_max=1400, **kwargs,
    )


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll until `condition` holds; bounded, so a sender that never gets there fails."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


# --- what the upstream receives -------------------------------------------------------------


class Received:
    """RTP packets as the upstream got them, checked and put together per frame."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.arrived = asyncio.Event()

    def add(self, data: bytes | memoryview) -> None:
        self.packets.append(RtpPacket.parse(bytes(data)))
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.packets) < count:
                self.arrived.clear()
                await self.arrived.wait()

    def frames(self) -> list[bytes]:
        """The payloads joined per frame; checks the RTP fields on the way: our SSRC, PT 96,
        sequence numbers without a gap, one timestamp per frame, marker on its last packet."""
        frames: list[bytes] = []
        parts: list[bytes] = []
        previous: RtpPacket | None = None
        for packet in self.packets:
            assert packet.ssrc == SSRC and packet.payload_type == 96
            assert not packet.csrc and packet.extension is None and not packet.padding
            if previous is not None:
                assert packet.sequence == (previous.sequence + 1) & 0xFFFF
                if not previous.marker:
                    assert packet.timestamp == previous.timestamp
            parts.append(bytes(packet.payload))
            if packet.marker:
                frames.append(b"".join(parts))
                parts = []
            previous = packet
        assert not parts, "the last frame has no marker"
        return frames

    def timestamps(self) -> list[int]:
        return [p.timestamp for p in self.packets if p.marker]


class UdpUpstream(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = Received()
        self.sources: set[Any] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sources.add(addr)
        self.received.add(data)


async def udp_upstream() -> tuple[UdpUpstream, asyncio.DatagramTransport, tuple[str, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_rcvbuf(sock, 4 << 20)
    sock.bind((HOST, 0))
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpUpstream, sock=sock
    )
    return protocol, transport, sock.getsockname()


def tcp_listener(rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by accept()
    sock.bind((HOST, 0))
    sock.listen(4)
    sock.setblocking(False)
    return sock


async def read_stream(conn: socket.socket, received: Received) -> None:
    """Read an RFC 4571 stream until the sender closes it."""
    loop = asyncio.get_running_loop()
    deframer = Deframer()
    while data := await loop.sock_recv(conn, 1 << 16):
        for packet in deframer.feed(data):
            received.add(packet)


async def send(sender: RelaySender, units: list[AccessUnit], received: Received) -> None:
    """Hand `units` to the sender one by one, each once the packets before it arrived."""
    for unit in units:
        sender.on_unit(unit)
        await received.wait_for(sender.packets)


# --- UDP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gso", [True, False], ids=["segmented", "one-by-one"])
async def test_udp_sends_the_frames_from_the_first_keyframe_from_the_announced_port(
    gso: bool,
) -> None:
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    ends: list[str] = []
    sender = relay(pool, "udp", address, on_end=ends.append)
    sender.udp_gso = gso
    try:
        port = await sender.open()
        assert pool.in_use == 1
        sender.start()
        units = list(clip_units()[10:80])  # 15 frames before the keyframe at 25
        await send(sender, units, upstream.received)
        assert upstream.received.frames() == [u.ps_bytes for u in units[15:]]
        assert upstream.sources == {(HOST, port)}
        # The frames' PTS decide the timestamps: one frame apart is 3600.
        stamps = upstream.received.timestamps()
        assert [(b - a) & 0xFFFFFFFF for a, b in pairwise(stamps)] == [FRAME] * 54
        assert max(len(p.payload) for p in upstream.received.packets) == 1400
        stats = sender.stats()
        assert stats["state"] == "sending" and stats["ssrc"] == "0200000001"
        assert stats["udp_gso"] is (gso and sys.platform == "linux") and not stats["send_errors"]
        assert stats["frames"] == 55 and stats["dropped_frames"] == 0
        assert stats["packets"] == len(upstream.received.packets)
        assert stats["bytes"] == sum(12 + len(p.payload) for p in upstream.received.packets)
        assert stats["started"] <= stats["first_keyframe_at"]
        assert stats["local_port"] == port and stats["remote"] == f"{HOST}:{address[1]}"
    finally:
        sender.close("done")
        transport.close()
    assert pool.in_use == 0 and sender.state == "ended"
    assert ends == []  # the owner's close is not reported back to it
    sender.close("again")
    assert sender.end_reason == "done"


@pytest.mark.skipif(sys.platform != "linux", reason="UDP segmentation offload is Linux's")
async def test_a_refused_segmented_send_falls_back_to_one_datagram_per_packet() -> None:
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    sender = relay(pool, "udp", address)
    try:
        await sender.open()
        # A segment size the kernel refuses (far more than 64 segments per call), as a route
        # without checksum offload refuses any.
        sender._gso = [(socket.SOL_UDP, 103, struct.pack("=H", 1))]
        sender.start()
        units = list(clip_units()[:30])
        await send(sender, units, upstream.received)
        assert upstream.received.frames() == [u.ps_bytes for u in units]
        assert not sender.stats()["udp_gso"] and sender.send_errors == 0
    finally:
        sender.close("done")
        transport.close()


async def test_before_start_only_the_units_since_the_last_keyframe_are_held() -> None:
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    sender = relay(pool, "udp", address)
    try:
        await sender.open()
        units = clip_units()
        for unit in units[5:62]:  # keyframes at 25 and 50
            sender.on_unit(unit)
        sender.start()  # the upstream's ACK: the held GOP goes out at once
        await upstream.received.wait_for(sender.packets)
        await send(sender, list(units[62:70]), upstream.received)
        assert upstream.received.frames() == [u.ps_bytes for u in units[50:70]]
        assert sender.first_keyframe_at is not None and sender.dropped_frames == 0
    finally:
        sender.close("done")
        transport.close()
    assert pool.in_use == 0


async def test_a_held_gop_over_the_bound_is_dropped_and_sending_starts_at_the_next_keyframe(
) -> None:
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    units = clip_units()
    bound = sum(len(u.ps_bytes) for u in units[25:30])
    sender = relay(pool, "udp", address, max_buffer_bytes=bound)
    try:
        await sender.open()
        for unit in units[25:36]:  # past the bound at unit 30
            sender.on_unit(unit)
        sender.start()
        assert sender.packets == 0
        await send(sender, list(units[36:56]), upstream.received)
        assert upstream.received.frames() == [u.ps_bytes for u in units[50:56]]
    finally:
        sender.close("done")
        transport.close()


async def test_after_a_gap_sending_resumes_at_a_keyframe_on_a_continued_timeline() -> None:
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    sender = relay(pool, "udp", address)
    units = clip_units()
    try:
        await sender.open()
        sender.start()
        await send(sender, list(units[25:40]), upstream.received)
        before = upstream.received.timestamps()[-1]
        sender.on_gap("the device hung up")
        # The camera's stream again, with PTS from another base.
        again = [dataclasses.replace(u, pts=(u.pts or 0) + 7_777_777) for u in units[30:60]]
        await send(sender, again, upstream.received)
        assert upstream.received.frames() == [u.ps_bytes for u in units[25:40] + units[50:60]]
        stamps = upstream.received.timestamps()
        assert (stamps[15] - before) & 0xFFFFFFFF == FRAME  # the step restart_timeline takes
        assert [(b - a) & 0xFFFFFFFF for a, b in pairwise(stamps[15:])] == [FRAME] * 9
        assert sender.dropped_frames == 20  # units 30-49 of the new attempt
    finally:
        sender.close("done")
        transport.close()


async def test_the_camera_stream_ending_ends_the_session_once() -> None:
    pool = make_pool()
    _, transport, address = await udp_upstream()
    ends: list[str] = []
    sender = relay(pool, "udp", address, on_end=ends.append)
    try:
        await sender.open()
        sender.start()
        sender.on_unit(clip_units()[0])
        sender.on_end("device went offline")
        sender.on_end("device went offline")
        sender.on_unit(clip_units()[1])
        sender.close("bye")
        assert ends == ["device went offline"] and sender.end_reason == "device went offline"
        assert sender.frames == 1 and pool.in_use == 0
    finally:
        sender.close("done")
        transport.close()


# --- TCP ------------------------------------------------------------------------------------


async def test_tcp_active_connects_from_the_announced_port_and_frames_per_rfc_4571() -> None:
    pool = make_pool()
    listener = tcp_listener()
    loop = asyncio.get_running_loop()
    sender = relay(pool, "tcp-active", listener.getsockname())
    received = Received()
    conn: socket.socket | None = None
    try:
        port = await sender.open()
        units = clip_units()
        for unit in units[40:55]:  # held: the keyframe at 50 and what follows
            sender.on_unit(unit)
        sender.start()
        assert sender.state == "connecting"
        conn, peer = await asyncio.wait_for(loop.sock_accept(listener), 5)
        assert peer == (HOST, port)
        reader = asyncio.create_task(read_stream(conn, received))
        await until(lambda: sender.state == "sending")
        await send(sender, list(units[55:100]), received)
        assert received.frames() == [u.ps_bytes for u in units[50:100]]
        sender.close("bye")
        await asyncio.wait_for(reader, 5)  # the sender closed the connection
    finally:
        sender.close("done")
        listener.close()
        if conn is not None:
            conn.close()
    assert pool.in_use == 0


async def test_tcp_active_ends_when_the_upstream_port_refuses() -> None:
    pool = make_pool()
    closed = tcp_listener()
    address = closed.getsockname()
    closed.close()  # nothing listens there now
    ends: list[str] = []
    sender = relay(pool, "tcp-active", address, on_end=ends.append)
    sender.connect_attempts, sender.connect_retry_s = 3, 0.05
    await sender.open()
    sender.start()
    await until(lambda: ends)
    assert len(ends) == 1
    assert ends[0].startswith(f"cannot connect to upstream {HOST}:{address[1]} (3 tries): ")
    assert sender.state == "ended" and pool.in_use == 0


async def test_tcp_passive_takes_one_connection_from_the_upstream_host_only() -> None:
    pool = make_pool()
    loop = asyncio.get_running_loop()
    sender = relay(pool, "tcp-passive", (HOST, 9))  # the offer's port does not matter here
    received = Received()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        port = await sender.open()
        sender.start()
        stranger.setblocking(False)
        stranger.bind(("127.0.0.2", 0))
        await loop.sock_connect(stranger, (HOST, port))
        # Closed by the sender at once: end of stream (or a reset) and nothing else.
        try:
            assert await asyncio.wait_for(loop.sock_recv(stranger, 100), 5) == b""
        except ConnectionResetError:
            pass
        assert sender.refused_connections == 1 and sender.state == "connecting"
        upstream.setblocking(False)
        await loop.sock_connect(upstream, (HOST, port))
        reader = asyncio.create_task(read_stream(upstream, received))
        await until(lambda: sender.state == "sending")
        # The listener is gone: nobody else gets in.
        second.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(second, (HOST, port))
        units = clip_units()
        await send(sender, list(units[20:60]), received)
        assert received.frames() == [u.ps_bytes for u in units[25:60]]
        sender.close("bye")
        await asyncio.wait_for(reader, 5)
    finally:
        sender.close("done")
        for sock in (stranger, upstream, second):
            sock.close()
    assert pool.in_use == 0


async def test_tcp_passive_connected_before_the_ack_sends_the_held_gop_on_start() -> None:
    pool = make_pool()
    loop = asyncio.get_running_loop()
    now = [50.0]
    sender = relay(pool, "tcp-passive", (HOST, 9), clock=lambda: now[0])
    received = Received()
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        port = await sender.open()
        upstream.setblocking(False)
        await loop.sock_connect(upstream, (HOST, port))
        reader = asyncio.create_task(read_stream(upstream, received))
        units = clip_units()
        for unit in units[60:80]:
            sender.on_unit(unit)
        await until(lambda: sender._tcp is not None)
        assert sender.state == "open" and sender.packets == 0  # nothing before the ACK
        sender.start()
        # The held GOP goes out with start(): its keyframe at once.
        assert sender.state == "sending" and sender.started == sender.first_keyframe_at == 50.0
        await send(sender, list(units[80:90]), received)
        assert received.frames() == [u.ps_bytes for u in units[75:90]]
        sender.close("bye")
        await asyncio.wait_for(reader, 5)
    finally:
        sender.close("done")
        upstream.close()
    assert pool.in_use == 0


def test_the_passive_accept_filter_compares_addresses() -> None:
    assert peer_allowed(("127.0.0.1", 4000), "127.0.0.1")
    assert peer_allowed(("::ffff:10.0.0.5", 4000, 0, 0), "10.0.0.5")
    assert peer_allowed(("2001:db8::1", 4000, 0, 0), "2001:db8:0::1")
    assert not peer_allowed(("127.0.0.2", 4000), "127.0.0.1")
    assert not peer_allowed(None, "127.0.0.1")
    assert not peer_allowed(("10.0.0.5", 1), "upstream.example")


async def test_tcp_passive_ends_when_the_upstream_does_not_connect() -> None:
    pool = make_pool()
    ends: list[str] = []
    sender = relay(pool, "tcp-passive", (HOST, 9), connect_timeout_s=0.2, on_end=ends.append)
    await sender.open()
    sender.start()
    await until(lambda: ends)
    assert ends == ["upstream did not connect"] and pool.in_use == 0


async def test_the_upstream_closing_the_connection_ends_the_session_once() -> None:
    pool = make_pool()
    listener = tcp_listener()
    loop = asyncio.get_running_loop()
    ends: list[str] = []
    sender = relay(pool, "tcp-active", listener.getsockname(), on_end=ends.append)
    try:
        await sender.open()
        sender.start()
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
        await until(lambda: sender.state == "sending")
        conn.close()
        await until(lambda: ends)
        for unit in clip_units()[:30]:
            sender.on_unit(unit)  # the camera goes on; nothing happens
        sender.on_end("device went offline")
        sender.close("bye")
        assert ends == ["upstream closed the connection"]
        assert sender.state == "ended" and pool.in_use == 0
    finally:
        sender.close("done")
        listener.close()


# --- a TCP upstream that does not read ------------------------------------------------------


async def stalled(
    pool: PortPool, clock: Callable[[], float] | None, **kwargs: Any
) -> tuple[RelaySender, socket.socket, socket.socket, list[str], Iterator[tuple[int, AccessUnit]],
           list[tuple[AccessUnit, bool]]]:
    """A tcp-active session whose upstream (a small receive buffer) reads nothing; units are
    handed to it until it drops one. Returns the sender, the listener, the upstream's socket,
    the end reasons, the unit source and (unit, sent) for every unit handed over."""
    listener = tcp_listener(rcvbuf=4096)
    loop = asyncio.get_running_loop()
    ends: list[str] = []
    sender = relay(pool, "tcp-active", listener.getsockname(), on_end=ends.append, clock=clock,
                   max_buffer_bytes=64 * 1024, **kwargs)
    await sender.open()
    sender.start()
    conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
    await until(lambda: sender.state == "sending")
    source = looped()
    fed: list[tuple[AccessUnit, bool]] = []
    largest = max(len(u.ps_bytes) for u in clip_units()) + 14 * 8
    # Synchronous: on_unit never waits for the reader, so this loop ends by itself.
    for _ in range(20_000):
        _, unit = next(source)
        frames = sender.frames
        sender.on_unit(unit)
        fed.append((unit, sender.frames > frames))
        assert sender.stats()["write_buffer"] <= 64 * 1024 + largest
        if sender.dropped_frames:
            break
    assert sender.dropped_frames == 1 and sender.state == "stalled"
    return sender, listener, conn, ends, source, fed


async def test_a_stalled_upstream_is_ended_after_timeout_s_on_the_clock() -> None:
    pool = make_pool()
    now = [1000.0]
    sender, listener, conn, ends, source, _ = await stalled(pool, lambda: now[0], timeout_s=10)
    try:
        now[0] += 9.9
        for _ in range(50):
            sender.on_unit(next(source)[1])
        assert sender.dropped_frames == 51 and not ends
        now[0] += 0.1
        sender.on_unit(next(source)[1])
        assert ends == ["upstream not reading"]
        assert sender.state == "ended" and pool.in_use == 0
        sender.on_unit(next(source)[1])
        assert ends == ["upstream not reading"]
    finally:
        sender.close("done")
        listener.close()
        conn.close()


async def test_a_stalled_upstream_is_ended_by_the_timer_when_no_unit_comes() -> None:
    pool = make_pool()
    sender, listener, conn, ends, _, _ = await stalled(pool, None, timeout_s=0.3)
    try:
        await until(lambda: ends)
        assert ends == ["upstream not reading"] and pool.in_use == 0
    finally:
        sender.close("done")
        listener.close()
        conn.close()


async def test_a_stalled_upstream_that_reads_again_resumes_at_the_next_keyframe() -> None:
    pool = make_pool()
    sender, listener, conn, ends, source, fed = await stalled(pool, None, timeout_s=30)
    received = Received()
    conn.setblocking(False)
    reader = asyncio.create_task(read_stream(conn, received))
    try:
        await until(lambda: sender.state == "sending")  # drained below the low-water mark
        for _ in range(60):  # through at least two keyframes
            _, unit = next(source)
            frames = sender.frames
            sender.on_unit(unit)
            fed.append((unit, sender.frames > frames))
            await received.wait_for(sender.packets)
        sent = [unit for unit, ok in fed if ok]
        assert received.frames() == [u.ps_bytes for u in sent]
        # One run of dropped units, from where the buffer filled up to a keyframe.
        flags = [ok for _, ok in fed]
        first_drop = flags.index(False)
        resumed = flags.index(True, first_drop)
        assert all(flags[:first_drop]) and all(flags[resumed:])
        assert not any(flags[first_drop:resumed]) and is_key(fed[resumed][0])
        assert sender.dropped_frames == resumed - first_drop
        assert not ends
    finally:
        sender.close("done")
        listener.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        conn.close()
    assert pool.in_use == 0


async def test_an_upstream_reading_nothing_ends_before_the_buffer_limit_is_reached() -> None:
    """At a low bit rate the write buffer could take minutes to reach its limit; an upstream
    that takes no byte at all for timeout_s while bytes wait is ended all the same."""
    pool = make_pool()
    now = [1000.0]
    listener = tcp_listener(rcvbuf=4096)
    loop = asyncio.get_running_loop()
    ends: list[str] = []
    sender = relay(pool, "tcp-active", listener.getsockname(), on_end=ends.append,
                   clock=lambda: now[0], timeout_s=10, max_buffer_bytes=64 << 20)
    await sender.open()
    sender.start()
    conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
    try:
        await until(lambda: sender.state == "sending")
        source = looped()
        for _ in range(20_000):  # until the kernel takes no more: bytes wait in our buffer
            sender.on_unit(next(source)[1])
            if sender.stats()["write_buffer"] > 0:
                break
        assert sender.stats()["write_buffer"] > 0 and sender.state == "sending"
        now[0] += 9.9
        sender.on_unit(next(source)[1])
        assert not ends and sender.dropped_frames == 0  # far below the limit: nothing dropped
        now[0] += 0.2
        sender.on_unit(next(source)[1])
        assert ends == ["upstream not reading"] and pool.in_use == 0
    finally:
        sender.close("done")
        listener.close()
        conn.close()


# --- cut-through ----------------------------------------------------------------------------


def camera_packets(unit: AccessUnit, camera: RtpPacketizer) -> list[RtpPacket]:
    return [RtpPacket.parse(p) for p in camera.packetize(unit.ps_bytes, unit.pts)]


@pytest.mark.parametrize("camera_payload", [1400, 8000], ids=["same-size", "larger"])
async def test_cut_through_passes_packets_on_before_their_frame_is_complete(
    camera_payload: int,
) -> None:
    """As the stream calls it: each packet (on_rtp), and the frame's units once its marker
    packet came (on_unit). The first frames go out whole, from the keyframe; from the frame
    after one that closed with a marker on, each packet goes out as it comes, split where the
    camera's is larger than ours, on one timeline and sequence."""
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    sender = relay(pool, "udp", address)
    camera = RtpPacketizer(123456, payload_max=camera_payload, first_seq=65500, first_ts=1 << 31)
    try:
        await sender.open()
        sender.start()
        units = [u for u in clip_units()[20:90] if u.stream_id >= 0xE0]
        early = 0
        for index, unit in enumerate(units):
            packets = camera_packets(unit, camera)
            before = len(upstream.received.packets)
            for packet in packets:
                sender.on_rtp(memoryview(packet.payload), packet.sequence, packet.timestamp,
                              packet.marker)
            if sender.stats()["forwarding"]:
                # out already, before the frame's units were handed over
                await upstream.received.wait_for(sender.packets)
                early += len(upstream.received.packets) > before
            sender.on_unit(unit)
            await upstream.received.wait_for(sender.packets)
            if index == 10:
                sender.on_loss(3)  # the camera lost 3 packets: the upstream sees the hole
                skipped = sender.packetizer.sequence
        keyframe = next(i for i, u in enumerate(units) if is_key(u))
        sent = upstream.received
        sequences = [p.sequence for p in sent.packets]
        hole = sequences.index(skipped)
        assert sequences[hole - 1] == (skipped - 4) & 0xFFFF
        del sent.packets[hole:]  # the frames check wants no hole: compare up to it
        assert sent.frames() == [u.ps_bytes for u in units[keyframe:11]]
        assert early == len(units) - keyframe - 1  # every frame after the first whole one
        assert max(len(p.payload) for p in upstream.received.packets) <= 1400
        stamps = sent.timestamps()
        assert [(b - a) & 0xFFFFFFFF for a, b in pairwise(stamps)] == [FRAME] * (len(stamps) - 1)
        # A gap in the camera's stream goes back to whole frames, from the next keyframe.
        sender.on_gap("camera invited again")
        assert not sender.stats()["forwarding"]
    finally:
        sender.close("done")
        transport.close()
    assert pool.in_use == 0


async def test_cut_through_stays_off_for_a_camera_without_markers() -> None:
    pool = make_pool()
    upstream, transport, address = await udp_upstream()
    sender = relay(pool, "udp", address)
    camera = RtpPacketizer(7, first_seq=0, first_ts=0)
    try:
        await sender.open()
        sender.start()
        units = [u for u in clip_units()[25:40] if u.stream_id >= 0xE0]
        for unit in units:
            for packet in camera_packets(unit, camera):
                sender.on_rtp(memoryview(packet.payload), packet.sequence, packet.timestamp,
                              False)
            sender.on_unit(unit)
            await upstream.received.wait_for(sender.packets)
        assert not sender.stats()["forwarding"]
        assert upstream.received.frames() == [u.ps_bytes for u in units]
    finally:
        sender.close("done")
        transport.close()
