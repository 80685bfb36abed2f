"""RTP receivers over real loopback sockets: UDP, TCP passive and active, port pool, counters.

A camera's stream is made from the frames of gb_h264_zlm.ps (read with PyAV), muxed again with
`PsMuxer` and cut into RTP packets; what the receiver's `MediaIngest` demuxes must be PyAV's
packets, byte for byte and in order.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable

import av
import pytest

from rtp.framing import frame
from rtp.nal import is_keyframe
from rtp.psmux import PsMuxer, RtpPacketizer
from sensing_node.transport.rtp import (
    EARLY_BYTES,
    EARLY_PACKETS,
    RCVBUF_MAX,
    MediaIngest,
    PortPool,
    PortsExhausted,
    RtpReceiveConfig,
    TcpRtpReceiver,
    UdpRtpReceiver,
    set_rcvbuf,
)
from tests.conftest import DATA

from .conftest import free_even_range

SSRC = 0x0BEBDFA1
HOST = "127.0.0.1"
MIB = 1 << 20


@pytest.fixture(scope="module")
def stream() -> tuple[list[bytes], list[bytes]]:
    """(PyAV's video packet bytes, the RTP packets carrying them)."""
    with av.open(str(DATA / "media" / "gb_h264_zlm.ps"), format="mpeg") as container:
        frames = [
            (bytes(p), p.pts, p.is_keyframe)
            for p in container.demux(video=0)
            if p.size
        ]
    muxer = PsMuxer("h264")
    packetizer = RtpPacketizer(SSRC, sequence=65000)  # wraps during the stream
    packets: list[bytes] = []
    for data, pts, key in frames:
        ps = muxer.mux_video(data, pts, keyframe=key or is_keyframe("h264", data))
        packets += packetizer.packetize(ps, pts)
    return [data for data, _, _ in frames], packets


@pytest.fixture
def pool() -> PortPool:
    return PortPool(*free_even_range(40, 20000, 30000))




async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


class Sender:
    """A device's UDP socket (`host`: another loopback address stands for another host)."""

    def __init__(self, host: str = HOST) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((host, 0))

    async def send(self, datagrams: list[bytes], port: int, pace: int = 20) -> None:
        """Send, yielding to the loop every `pace` datagrams. The receiver shares this loop and
        libuv reads at most 32 datagrams from a socket per loop iteration, so a larger pace
        would overrun the socket buffer however large it is."""
        for index, datagram in enumerate(datagrams):
            self.sock.sendto(datagram, (HOST, port))
            if index % pace == pace - 1:
                await asyncio.sleep(0.001)

    async def refused(self, datagrams: list[bytes]) -> int:
        """Send each of `datagrams` on the socket connected to a receiver; how many the
        receiving kernel refused (ICMP port unreachable, reported to the next call)."""
        refused = 0
        for datagram in datagrams:
            self.sock.send(datagram)
            for _ in range(100):
                try:
                    self.sock.recv(1)
                except ConnectionRefusedError:
                    refused += 1
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        return refused

    def close(self) -> None:
        self.sock.close()


def with_ssrc(packet: bytes, ssrc: int) -> bytes:
    return packet[:8] + struct.pack("!I", ssrc) + packet[12:]


def frames_of(ingest: MediaIngest) -> list[bytes]:
    ingest.flush()
    return [unit.data for unit in ingest.units]


def seq_of(packet: bytes) -> int:
    return int(struct.unpack_from("!H", packet, 2)[0])


class Tap:
    """A sink that notes the sequence number of every packet it gets and hands it on."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.payloads: list[bytes] = []
        self.ingest = MediaIngest()

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        self.seqs.append(seq)
        self.payloads.append(bytes(payload))
        self.ingest.on_packet(payload, seq, ts, marker)


# --- UDP ------------------------------------------------------------------------------------


async def test_udp_stream_arrives_whole_and_in_order(stream, pool):
    expected, packets = stream
    ingest = MediaIngest()
    receiver = await UdpRtpReceiver.open(HOST, pool, ingest)
    receiver.expect(HOST)
    sender = Sender()
    source = sender.sock.getsockname()
    try:
        await sender.send(packets, receiver.port)
        await until(lambda: receiver.packets == len(packets))
    finally:
        sender.close()
        receiver.close()
    assert len(expected) == 250
    assert frames_of(ingest) == expected
    assert (receiver.lost, receiver.reordered, receiver.duplicates) == (0, 0, 0)
    assert receiver.bytes == sum(map(len, packets))
    assert receiver.ssrc == SSRC and receiver.source == source
    assert receiver.last_packet_at is not None
    assert receiver.dropped_foreign == receiver.dropped_invalid == receiver.rtcp == 0
    assert pool.in_use == 0


def test_a_receive_buffer_past_what_an_int_holds_is_asked_for_at_the_most() -> None:
    # A single port's buffer grows with its streams: 600 of 4 MiB is 2.4 GiB, more than
    # setsockopt's C int holds. It gets the most there is instead of an OverflowError.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        most = set_rcvbuf(sock, RCVBUF_MAX)
        assert set_rcvbuf(sock, 600 * (4 << 20)) == most > 0


async def test_udp_socket_gets_a_large_receive_buffer(pool):
    receiver = await UdpRtpReceiver.open(HOST, pool, MediaIngest())
    try:
        sock = receiver.sock
        assert sock is not None
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= MIB
        assert receiver.rcvbuf >= MIB
    finally:
        receiver.close()


async def test_udp_reordered_and_duplicated_packets_come_out_in_order(stream, pool):
    expected, packets = stream
    rng = random.Random(7)
    mixed = packets[:1]  # the first packet to arrive sets where the stream starts
    for start in range(1, len(packets), 8):
        window = packets[start : start + 8]
        rng.shuffle(window)
        mixed += window
    duplicated = mixed[::37]
    for index, packet in enumerate(duplicated):
        mixed.insert(index * 38 + 5, packet)
    ingest = MediaIngest()
    receiver = await UdpRtpReceiver.open(HOST, pool, ingest)
    receiver.expect(HOST)
    sender = Sender()
    try:
        await sender.send(mixed, receiver.port)
        await until(lambda: receiver.packets == len(mixed))
    finally:
        sender.close()
        receiver.close()
    assert frames_of(ingest) == expected
    assert receiver.lost == 0
    assert receiver.reordered > 0
    assert receiver.duplicates == len(duplicated)


async def test_foreign_sources_ssrcs_rtcp_and_garbage_are_dropped_and_counted(stream, pool):
    """Once the source is latched the socket is connected to it: another sender's datagrams
    (the stream's SSRC and sequence numbers, from another port) never reach the node, the
    kernel refuses them. The device's own wrong SSRCs, RTCP and garbage are counted."""
    expected, packets = stream
    ingest = MediaIngest()
    receiver = await UdpRtpReceiver.open(HOST, pool, ingest)
    receiver.expect(HOST, None)
    device, intruder = Sender(), Sender()
    receiver_report = bytes.fromhex("81C90007") + struct.pack("!I", SSRC) + bytes(24)
    garbage = [b"", b"hello", b"\x00" * 40, bytes.fromhex("80") + bytes(5)]
    refused = 0
    try:
        await device.send(packets[:1], receiver.port)
        await until(lambda: receiver.packets == 1)
        assert receiver.sock is not None
        assert receiver.sock.getpeername() == device.sock.getsockname()
        intruder.sock.connect((HOST, receiver.port))  # so that the refusal reaches it
        sent = 1
        for start in range(1, len(packets), 40):
            chunk = packets[start : start + 40]
            refused += await intruder.refused(chunk[:2])  # same SSRC, other socket
            await device.send([with_ssrc(p, SSRC ^ 1) for p in chunk[:3]], receiver.port)
            await device.send([receiver_report, *garbage], receiver.port)
            await device.send(chunk, receiver.port)
            sent += len(chunk)
            await until(lambda sent=sent: receiver.packets == sent)
        rounds = len(range(1, len(packets), 40))
    finally:
        device.close()
        intruder.close()
        receiver.close()
    assert frames_of(ingest) == expected
    assert receiver.packets == len(packets)
    assert refused == rounds * 2
    assert receiver.dropped_foreign == rounds * 3
    assert receiver.rtcp == rounds
    assert receiver.dropped_invalid == rounds * len(garbage)  # an empty datagram counts too
    assert receiver.lost == receiver.duplicates == 0


async def test_datagrams_queued_before_the_latch_are_still_checked(stream, pool):
    """Another sender's datagrams that wait in the socket's queue behind the packet that
    latches the source (so before the connect) are read with their address and dropped, not
    taken as the source's."""
    _, packets = stream
    tap = Tap()
    receiver = await UdpRtpReceiver.open(HOST, pool, tap)
    receiver.expect(HOST, SSRC)
    device, intruder = Sender(), Sender()
    try:
        # All queued before the loop reads any: the device's first, the intruder's copies of
        # the next two, then the device's.
        device.sock.sendto(packets[0], (HOST, receiver.port))
        for packet in packets[1:3]:
            intruder.sock.sendto(packet[:12] + b"\xff" * (len(packet) - 12),
                                 (HOST, receiver.port))
        for packet in packets[1:10]:
            device.sock.sendto(packet, (HOST, receiver.port))
        await until(lambda: receiver.packets == 10)
        assert receiver.source == device.sock.getsockname()
        assert receiver.dropped_foreign == 2
        assert tap.seqs == [seq_of(p) for p in packets[:10]]
        assert tap.payloads == [p[12:] for p in packets[:10]]
    finally:
        device.close()
        intruder.close()
        receiver.close()


async def test_a_new_answer_takes_a_new_source(stream, pool):
    """`expect` again (a new answer) dissolves the connection to the old source: the first
    good packet of another port is latched as the source."""
    _, packets = stream
    receiver = await UdpRtpReceiver.open(HOST, pool, Tap())
    first, second = Sender(), Sender()
    try:
        receiver.expect(HOST, SSRC)
        await first.send(packets[:5], receiver.port)
        await until(lambda: receiver.packets == 5)
        assert receiver.source == first.sock.getsockname()
        receiver.expect(HOST, SSRC)
        await second.send(packets[5:10], receiver.port)
        await until(lambda: receiver.packets == 10)
        assert receiver.source == second.sock.getsockname()
        assert receiver.sock is not None
        assert receiver.sock.getpeername() == second.sock.getsockname()
        assert receiver.dropped_foreign == 0
    finally:
        first.close()
        second.close()
        receiver.close()


async def test_expected_ssrc_and_host_are_enforced(stream, pool):
    _, packets = stream
    ingest = MediaIngest()
    receiver = await UdpRtpReceiver.open(HOST, pool, ingest)
    sender = Sender()
    try:
        receiver.expect("127.0.0.2", SSRC)
        await sender.send(packets[:10], receiver.port)
        await until(lambda: receiver.dropped_foreign == 10)
        receiver.expect(HOST, SSRC ^ 1)
        await sender.send(packets[:10], receiver.port)
        await until(lambda: receiver.dropped_foreign == 20)
        assert receiver.source is None  # nothing was accepted, nothing latched
        receiver.expect(HOST, SSRC)
        await sender.send(packets[:10], receiver.port)
        await until(lambda: receiver.packets == 10)
    finally:
        sender.close()
        receiver.close()


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Stands in for the receiver's loop where it reads the time and arms its timer, so a
    test decides when the timer fires (the socket stays on the real loop)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> float:
        """Move the time to the first pending timer's deadline and run it."""
        timer = min((t for t in self.timers if not t.cancelled), key=lambda t: t.when)
        self.timers.remove(timer)
        self.now = timer.when
        timer.callback()
        return timer.when


async def test_nothing_reaches_the_sink_before_the_answer(stream, pool):
    """Before `expect` (the device's answer), packets from a host the answer will not name and
    the device's packets with another SSRC are held, never handed on. The answer replays the
    device's own in order, counts the rest as foreign, and the stream then shows no loss."""
    expected, packets = stream
    tap = Tap()
    receiver = await UdpRtpReceiver.open(HOST, pool, tap)
    device, stranger = Sender(), Sender("127.0.0.2")
    early = packets[:20]
    try:
        await stranger.send(packets[100:110], receiver.port)  # the right SSRC, the wrong host
        await device.send([with_ssrc(p, SSRC ^ 1) for p in packets[:5]], receiver.port)
        await device.send(early, receiver.port)
        await until(lambda: bool(tap.seqs) or receiver.early == 35)
        assert tap.seqs == [] and receiver.packets == 0
        receiver.expect(HOST, SSRC)
        assert tap.seqs == [seq_of(p) for p in early]
        assert receiver.dropped_foreign == 15 and receiver.early == 0
        assert receiver.source == device.sock.getsockname()
        await device.send(packets[20:], receiver.port)
        await until(lambda: receiver.packets == len(packets))
    finally:
        device.close()
        stranger.close()
        receiver.close()
    assert frames_of(tap.ingest) == expected
    assert (receiver.lost, receiver.reordered, receiver.duplicates) == (0, 0, 0)
    assert receiver.dropped_early == 0


async def test_packets_held_before_the_answer_are_bounded(stream, pool):
    """At most EARLY_PACKETS packets and EARLY_BYTES bytes are held, the newest: replayed, they
    continue into what follows without a gap."""
    _, packets = stream
    tap = Tap()
    receiver = await UdpRtpReceiver.open(HOST, pool, tap)
    device = Sender()
    big = [packet[:12] + bytes(60_000) for packet in packets[:3]]
    try:
        await device.send(big, receiver.port)
        await until(lambda: receiver.early + receiver.dropped_early == 3)
        assert receiver.early == EARLY_BYTES // 60_012 == 2 and receiver.dropped_early == 1
        await device.send(packets[:100], receiver.port)
        await until(lambda: receiver.dropped_early == 3 + 100 - EARLY_PACKETS)
        assert receiver.early == EARLY_PACKETS and tap.seqs == []
        receiver.expect(HOST, SSRC)
        kept = packets[100 - EARLY_PACKETS : 100]
        assert tap.seqs == [seq_of(p) for p in kept]
        await device.send(packets[100:], receiver.port)
        await until(lambda: receiver.packets == len(packets) - 100 + EARLY_PACKETS)
    finally:
        device.close()
        receiver.close()
    assert tap.seqs == [seq_of(p) for p in packets[100 - EARLY_PACKETS :]]
    assert (receiver.lost, receiver.reordered, receiver.dropped_foreign) == (0, 0, 0)


async def test_a_missing_packet_is_given_up_by_the_timer(stream, pool):
    _, packets = stream
    seqs: list[int] = []

    class Recorder:
        def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
            seqs.append(seq)

    config = RtpReceiveConfig(reorder_window=1000, max_delay_s=0.05)
    receiver = await UdpRtpReceiver.open(HOST, pool, Recorder(), config)
    receiver.expect(HOST)
    clock = receiver._loop = FakeClock()  # type: ignore[assignment]
    sender = Sender()
    sent = packets[:20] + packets[21:60]
    try:
        await sender.send(sent, receiver.port)
        await until(lambda: receiver.packets == len(sent))
        assert len(seqs) == 20  # the rest waits for the gap: the clock has not moved
        assert receiver.lost == 0 and receiver._timer is not None
        # No more traffic: the timer, armed max_delay_s after the first packet held, gives
        # the gap up and flushes the rest.
        assert clock.fire() == 100.0 + config.max_delay_s
        assert len(seqs) == len(sent)
        assert receiver.lost == 1
        assert receiver._timer is None
    finally:
        sender.close()
        receiver.close()
    expected = [struct.unpack_from("!H", p, 2)[0] for p in sent]
    assert seqs == expected


async def test_udp_burst_of_20000_packets_arrives_whole(stream, pool):
    """20,000 packets through the receiver with its 1 MiB buffer: none lost, none reordered.
    (What a packet costs is a benchmark's business, not a test's.)"""
    _, packets = stream
    burst = (packets * (20_000 // len(packets) + 1))[:20_000]
    packetizer_seq = [struct.pack("!H", i & 0xFFFF) for i in range(len(burst))]
    burst = [p[:2] + s + p[4:] for p, s in zip(burst, packetizer_seq, strict=True)]
    count = 0

    class Counter:
        def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
            nonlocal count
            count += 1

    receiver = await UdpRtpReceiver.open(HOST, pool, Counter())
    receiver.expect(HOST)
    sender = Sender()
    try:
        await sender.send(burst, receiver.port)
        await until(lambda: receiver.packets == len(burst), timeout=20)
    finally:
        sender.close()
        receiver.close()
    assert count == len(burst) and receiver.lost == 0 and receiver.reordered == 0


# --- TCP ------------------------------------------------------------------------------------


def framed_chunks(packets: list[bytes], seed: int) -> list[bytes]:
    data = b"".join(frame(p) for p in packets)
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, 100, 1500, 5000, 70000))
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


async def write_all(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
    for index, chunk in enumerate(chunks):
        writer.write(chunk)
        if index % 20 == 0:
            await writer.drain()
    await writer.drain()


async def test_tcp_passive_accepts_one_connection(stream, pool):
    expected, packets = stream
    ingest = MediaIngest()
    receiver = TcpRtpReceiver(ingest)
    receiver.expect(SSRC)
    server, port = await receiver.listen_tcp(HOST, pool)
    assert server.sockets and receiver.port == port
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        chunks = framed_chunks(packets, seed=1)
        half = len(chunks) // 2
        await write_all(writer, chunks[:half])
        second_reader, second_writer = await asyncio.open_connection(HOST, port)
        assert await asyncio.wait_for(second_reader.read(), 5) == b""  # closed by the receiver
        second_writer.close()
        await write_all(writer, chunks[half:])
        writer.close()
        await asyncio.wait_for(receiver.closed.wait(), 5)
        assert receiver.rcvbuf >= MIB
    finally:
        receiver.close()
    assert frames_of(ingest) == expected
    assert receiver.packets == len(packets)
    assert receiver.refused_connections == 1
    assert receiver.dropped_foreign == receiver.dropped_invalid == receiver.lost == 0
    assert pool.in_use == 0


async def test_tcp_wrong_ssrc_and_garbage_frames_are_dropped(stream, pool):
    expected, packets = stream
    ingest = MediaIngest()
    receiver = TcpRtpReceiver(ingest)
    receiver.expect()  # any SSRC: the first packet's is latched
    _, port = await receiver.listen_tcp(HOST, pool)
    mixed: list[bytes] = []
    for index, packet in enumerate(packets):
        mixed.append(packet)
        if index % 50 == 10:
            mixed += [with_ssrc(packet, 1), b"not rtp", bytes.fromhex("81C80000")]
    try:
        _, writer = await asyncio.open_connection(HOST, port)
        await write_all(writer, framed_chunks(mixed, seed=2))
        writer.close()
        await asyncio.wait_for(receiver.closed.wait(), 5)
    finally:
        receiver.close()
    rounds = len(range(10, len(packets), 50))
    assert frames_of(ingest) == expected
    assert (receiver.dropped_foreign, receiver.dropped_invalid, receiver.rtcp) == (
        rounds, rounds, rounds,
    )


async def test_tcp_passive_takes_the_device_only_and_holds_its_packets_until_the_answer(
    stream, pool,
):
    expected, packets = stream
    tap = Tap()
    receiver = TcpRtpReceiver(tap)
    _, port = await receiver.listen_tcp(HOST, pool, peers=[HOST])  # the device's SIP address
    try:
        # Another host is turned away, even as the first to connect.
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=("127.0.0.2", 0))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert receiver.refused_connections == 1 and receiver.peer is None
        _, writer = await asyncio.open_connection(HOST, port)
        early = [with_ssrc(p, SSRC ^ 1) for p in packets[:3]] + packets[:30]
        await write_all(writer, framed_chunks(early, seed=4))
        await until(lambda: bool(tap.seqs) or receiver.early == len(early))
        assert tap.seqs == []
        receiver.expect(SSRC, [HOST])
        assert tap.seqs == [seq_of(p) for p in packets[:30]] and receiver.dropped_foreign == 3
        await write_all(writer, framed_chunks(packets[30:], seed=5))
        writer.close()
        await asyncio.wait_for(receiver.closed.wait(), 5)
    finally:
        receiver.close()
    assert frames_of(tap.ingest) == expected
    assert receiver.lost == 0 and receiver.refused_connections == 1
    assert receiver.peer[0] == HOST


def device_server(packets: list[bytes]) -> Callable[..., object]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await write_all(writer, framed_chunks(packets, seed=3))
        writer.close()

    return serve


async def test_tcp_active_connects_to_the_device(stream):
    expected, packets = stream
    device = await asyncio.start_server(device_server(packets), HOST, 0)
    port = device.sockets[0].getsockname()[1]
    ingest = MediaIngest()
    receiver = TcpRtpReceiver(ingest)
    try:
        await receiver.connect_tcp(HOST, port)
        await asyncio.wait_for(receiver.closed.wait(), 5)
    finally:
        receiver.close()
        device.close()
        await device.wait_closed()
    assert frames_of(ingest) == expected
    assert receiver.connect_attempts == 1 and receiver.rcvbuf >= MIB


async def test_tcp_active_retries_until_the_device_listens(stream):
    expected, packets = stream
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind((HOST, 0))  # bound but not listening: connections are refused
    port = reserved.getsockname()[1]
    servers: list[asyncio.AbstractServer] = []

    async def start_listening_late() -> None:
        await asyncio.sleep(0.12)
        reserved.listen(1)
        servers.append(await asyncio.start_server(device_server(packets), sock=reserved))

    ingest = MediaIngest()
    receiver = TcpRtpReceiver(ingest, RtpReceiveConfig(connect_attempts=10, connect_retry_s=0.05))
    late = asyncio.create_task(start_listening_late())
    try:
        await receiver.connect_tcp(HOST, port)
        await asyncio.wait_for(receiver.closed.wait(), 5)
    finally:
        await late
        receiver.close()
        for server in servers:
            server.close()
            await server.wait_closed()
    assert frames_of(ingest) == expected
    assert 2 <= receiver.connect_attempts <= 10


async def test_tcp_active_gives_up_after_the_configured_tries():
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserved.bind((HOST, 0))
    port = reserved.getsockname()[1]
    receiver = TcpRtpReceiver(MediaIngest(), RtpReceiveConfig(connect_attempts=3,
                                                              connect_retry_s=0.01))
    try:
        with pytest.raises(ConnectionError, match="refused 3 tries"):
            await receiver.connect_tcp(HOST, port)
    finally:
        reserved.close()
    assert receiver.connect_attempts == 3


async def test_tcp_active_connect_is_bounded_by_connect_timeout_s():
    """A port that takes no connection (its backlog is full, as with a black hole) costs
    connect_timeout_s, not the minutes of the kernel's SYN retries."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler.setblocking(False)
    receiver = TcpRtpReceiver(MediaIngest(), RtpReceiveConfig(connect_timeout_s=0.3))
    try:
        await loop.sock_connect(filler, (HOST, port))  # the one place in the backlog
        with pytest.raises(TimeoutError, match=rf"^no connection to {HOST}:{port} within 0.3 s"):
            await receiver.connect_tcp(HOST, port)
    finally:
        filler.close()
        listener.close()
        receiver.close()
    assert receiver.transport is None and receiver.connect_attempts == 1


# --- port pool ------------------------------------------------------------------------------


async def test_pool_says_when_the_host_is_no_address_of_this_machine():
    pool = PortPool(*free_even_range(4, 20000, 30000))
    with pytest.raises(OSError, match="192.0.2.1 is not an address of this host"):
        await pool.acquire_udp("192.0.2.1")  # TEST-NET-1: a media_ip that is not ours
    assert (pool.in_use, pool.capacity) == (0, 4)


async def test_pool_skips_busy_ports_runs_out_and_reuses_released_ones():
    low, _ = free_even_range(2, 20000, 30000)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((HOST, low))
    pool = PortPool(low, low + 3)  # even ports: low, low + 2
    sockets: list[socket.socket] = []
    try:
        sock, port = await pool.acquire_udp(HOST)
        sockets.append(sock)
        assert port == low + 2 and port % 2 == 0
        with pytest.raises(PortsExhausted, match=f"{low}-{low + 3}"):
            await pool.acquire_udp(HOST)
        sock.close()
        pool.release(port)
        sock, again = await pool.acquire_udp(HOST)
        sockets.append(sock)
        assert again == port
        blocker.close()
        sock, freed = await pool.acquire_udp(HOST)
        sockets.append(sock)
        assert freed == low
        assert (pool.in_use, pool.capacity) == (2, 2)
    finally:
        blocker.close()
        for sock in sockets:
            sock.close()


def test_pool_rejects_ranges_without_even_ports():
    with pytest.raises(ValueError, match="no even port"):
        PortPool(30001, 30001)
    with pytest.raises(ValueError):
        PortPool(0, 10)
    assert PortPool(30001, 30010).capacity == 5  # 30002 ... 30010


async def test_pool_tcp_ports_come_from_the_same_range():
    low, high = free_even_range(4, 20000, 30000)
    pool = PortPool(low, high)
    receiver = TcpRtpReceiver(MediaIngest())
    _, port = await receiver.listen_tcp(HOST, pool)
    try:
        assert low <= port <= high and port % 2 == 0 and pool.in_use == 1
    finally:
        receiver.close()
    assert pool.in_use == 0
