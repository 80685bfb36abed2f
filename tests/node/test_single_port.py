"""Single-port media (`media.single_port`): every stream of a real node on one UDP and TCP port.

Simulated cameras stream real PS over RTP to the one port the node's offers name; the node
tells the streams apart by SSRC. Strangers send to the same port: datagrams of an SSRC no
stream has, datagrams of a stream's SSRC from another host, TCP connections that name no
stream. None of it reaches a stream, and the streams play on byte for byte.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rtp.errors import RtpError
from rtp.framing import frame
from rtp.packet import RtpPacket, build_rtp
from sensing_node.media.consumers import FrameQueue
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.transport import single_port
from sensing_node.transport.rtp import MediaIngest
from sensing_node.transport.single_port import (
    UDP_BUFFER_STEP,
    SharedTcpReceiver,
    SharedUdpReceiver,
    SinglePortMux,
    ssrc_key,
)

from .conftest import PASSWORD, RunningNode, StartNode, free_even_range, wait_for
from .test_live import assert_clip_frames, frames_of

CAMERAS = ("31011200001320000001", "31011200001320000002")
JUNK = b"\x00\x00\x01\xba" + bytes(200)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now, outside the RTP ranges the
    test modules take (`free_even_range` draws below 40000)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            if port < 40000:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise AssertionError("no free port found")


Setup = Callable[..., Awaitable[tuple[RunningNode, list[SimulatedCamera], int]]]


@pytest.fixture
async def single(start_node: StartNode) -> AsyncIterator[Setup]:
    """`setup(cameras=1, node={...}, **camera_config)`: a node in single-port mode (one media
    process, whatever the run's default) and that many registered, catalogued cameras."""
    started: list[SimulatedCamera] = []

    async def setup(
        cameras: int = 1, node: dict[str, Any] | None = None, **camera: Any
    ) -> tuple[RunningNode, list[SimulatedCamera], int]:
        port = free_port()
        low, high = free_even_range(16, 36000, 38000)
        running = await start_node(**{
            "media.single_port": port, "media.workers": 1, "media.timeout_s": 2,
            "node.rtp_ports": f"{low}-{high}", **(node or {}),
        })
        cams = []
        for device_id in CAMERAS[:cameras]:
            cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                               password=PASSWORD, **camera))
            started.append(cam)
            await cam.start(keepalives=False)
            cams.append(cam)
        registry = running.node.registry
        await wait_for(lambda: all((d := registry.get(c.config.device_id)) is not None
                                   and len(d.channels) == 1 for c in cams))
        return running, cams, port

    yield setup
    for cam in started:
        await cam.stop(unregister=False)


def unknown(running: RunningNode) -> int:
    stats = running.node.media.single_port_stats()
    assert stats is not None
    return stats["unknown_ssrc"]


async def test_two_udp_cameras_share_the_port_each_channel_gets_its_own_frames(
    single: Setup,
) -> None:
    running, cams, port = await single(cameras=2)
    hub = running.node.media
    queues = [FrameQueue(), FrameQueue()]
    streams = await asyncio.gather(*(hub.subscribe(cam.channel_ids[0], queue)
                                     for cam, queue in zip(cams, queues, strict=True)))
    for cam, stream in zip(cams, streams, strict=True):
        (session,) = cam.media_sessions.values()
        assert session.remote == ("127.0.0.1", port)  # the offer named the one port
        assert session.ssrc == stream.ssrc_value
        assert isinstance(stream.receiver, SharedUdpReceiver)
        assert stream.receiver.port == port
    assert streams[0].ssrc_value != streams[1].ssrc_value
    assert hub.pool.in_use == 0  # no port of node.rtp_ports was taken

    first, second = await asyncio.gather(*(frames_of(queue, 40) for queue in queues))
    assert_clip_frames(first, "h264")
    assert_clip_frames(second, "h264")
    for stream in streams:
        assert stream.counter("lost") == 0 and stream.counter("dropped_foreign") == 0
    assert unknown(running) == 0
    listed = await running.get("/api/streams")
    assert {item["ssrc"] for item in listed} == {s.ssrc for s in streams}

    for cam, queue in zip(cams, queues, strict=True):
        hub.unsubscribe(cam.channel_ids[0], queue)
        await hub.release(cam.channel_ids[0])
    await wait_for(lambda: not hub.streams)
    assert hub.single_port_stats() == {"port": port, "udp_streams": 0, "tcp_streams": 0,
                                       "unknown_ssrc": 0, "refused_connections": 0}
    assert (await running.get("/api/stats"))["single_port"] == hub.single_port_stats()


async def test_a_foreign_ssrc_is_dropped_and_counted_and_disturbs_nothing(single: Setup) -> None:
    running, (cam,), port = await single()
    hub = running.node.media
    queue = FrameQueue()
    stream = await hub.subscribe(cam.channel_ids[0], queue)
    await frames_of(queue, 3)
    assert stream.ssrc_value is not None
    foreign = stream.ssrc_value ^ 0x5A5A
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for seq in range(30):  # from the camera's own host, to the right port
            sender.sendto(build_rtp(96, seq, seq, foreign, True, JUNK), ("127.0.0.1", port))
        for short in (b"", b"\x80", b"\x80\x60\x00\x01\x00\x00\x00\x00\x00\x00\x5a"):
            sender.sendto(short, ("127.0.0.1", port))  # too short to name a stream
    await wait_for(lambda: unknown(running) == 33)
    assert_clip_frames(await frames_of(queue, 30), "h264", from_keyframe=False)
    assert stream.counter("lost") == 0 and stream.counter("dropped_foreign") == 0


async def test_the_right_ssrc_from_another_host_is_dropped(single: Setup) -> None:
    running, (cam,), port = await single()
    hub = running.node.media
    queue = FrameQueue()
    stream = await hub.subscribe(cam.channel_ids[0], queue)
    await frames_of(queue, 3)
    assert stream.ssrc_value is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))
        for seq in range(50):
            stranger.sendto(build_rtp(96, seq, 0, stream.ssrc_value, True, JUNK),
                            ("127.0.0.1", port))
    await wait_for(lambda: stream.counter("dropped_foreign") == 50)
    assert_clip_frames(await frames_of(queue, 30), "h264", from_keyframe=False)
    assert stream.counter("lost") == 0 and unknown(running) == 0


async def test_packets_before_the_answer_from_a_stranger_never_reach_the_stream(
    single: Setup,
) -> None:
    """Sent with the offered SSRC while the camera takes its time to answer: held, then
    checked against the answer like any packet, as on a port of the stream's own."""
    running, (cam,), port = await single(answer_delay_s=0.5)
    hub = running.node.media
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    task = asyncio.create_task(hub.subscribe(channel, queue))
    try:
        stream = await wait_for(lambda: hub.streams.get(channel))
        await wait_for(lambda: stream.receiver)
        assert stream.ssrc is not None and stream.dialog is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.2", 0))
            for seq in range(20):
                stranger.sendto(build_rtp(96, seq, 0, int(stream.ssrc), True, JUNK),
                                ("127.0.0.1", port))
    finally:
        await task
    assert_clip_frames(await frames_of(queue, 30), "h264", from_keyframe=False)
    await wait_for(lambda: stream.counter("dropped_foreign") == 20)
    assert stream.counter("lost") == 0


async def test_a_device_that_answers_another_ssrc_is_found_under_it(single: Setup) -> None:
    running, cams, port = await single(cameras=2)
    hub = running.node.media
    cams[1].config.answer_ssrc = "0123456789"
    queues = [FrameQueue(), FrameQueue()]
    streams = await asyncio.gather(*(hub.subscribe(cam.channel_ids[0], queue)
                                     for cam, queue in zip(cams, queues, strict=True)))
    assert streams[1].ssrc == "0123456789"
    for units in await asyncio.gather(*(frames_of(queue, 30) for queue in queues)):
        assert_clip_frames(units, "h264")
    assert unknown(running) == 0
    mux = hub.single_port
    assert mux is not None
    assert set(mux._udp) == {s.ssrc_value.to_bytes(4, "big") for s in streams
                             if s.ssrc_value is not None}


async def test_an_answered_ssrc_another_stream_has_is_refused(single: Setup) -> None:
    """Two streams of one SSRC on one port could not be told apart: the second answer is
    unusable, and the first stream plays on."""
    running, cams, _ = await single(cameras=2)
    hub = running.node.media
    queue = FrameQueue()
    first = await hub.subscribe(cams[0].channel_ids[0], queue)
    assert first.ssrc is not None
    cams[1].config.answer_ssrc = first.ssrc
    response = await running.client.post(f"/api/channels/{cams[1].channel_ids[0]}/live",
                                          json={"transport": "udp"}, headers=running.headers)
    body = await response.json()
    assert response.status == 502 and "in use by another stream" in body["error"], body
    assert cams[1].byes_received == 1  # the device's dialog was hung up
    assert_clip_frames(await frames_of(queue, 30), "h264")
    assert first.state == "playing" and first.counter("lost") == 0


@pytest.mark.parametrize(("transport", "answer_ssrc"), [
    ("tcp-passive", None), ("tcp-active", None), ("tcp-passive", "0123456789"),
])
async def test_tcp_streams_in_single_port_mode(
    single: Setup, transport: str, answer_ssrc: str | None,
) -> None:
    running, (cam,), port = await single(transport="tcp", answer_ssrc=answer_ssrc)
    hub = running.node.media
    channel = cam.channel_ids[0]
    response = await running.client.post(f"/api/channels/{channel}/live",
                                          json={"transport": transport},
                                          headers=running.headers)
    assert response.status == 200, await response.text()
    stream = hub.streams[channel]
    assert isinstance(stream.receiver, SharedTcpReceiver)
    assert stream.ssrc == (answer_ssrc or stream.ssrc)
    (session,) = cam.media_sessions.values()
    assert session.remote[1] == port  # the offer names the one port either way
    queue = FrameQueue()
    await hub.subscribe(channel, queue)
    assert_clip_frames(await frames_of(queue, 40), "h264", from_keyframe=False)
    assert stream.counter("lost") == 0
    peer = stream.receiver.peer
    if transport == "tcp-active":
        assert peer[1] == session.local_port  # the node connected out to the camera
    stats = hub.single_port_stats()
    assert stats is not None and stats["tcp_streams"] == 1
    assert stats["refused_connections"] == 0


async def test_tcp_connections_that_name_no_stream_of_theirs_are_refused(
    single: Setup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(single_port, "PENDING_TIMEOUT_S", 0.3)
    running, (cam,), port = await single(transport="tcp")
    hub = running.node.media
    channel = cam.channel_ids[0]
    response = await running.client.post(f"/api/channels/{channel}/live",
                                          json={"transport": "tcp-passive"},
                                          headers=running.headers)
    assert response.status == 200
    stream = hub.streams[channel]
    queue = FrameQueue()
    await hub.subscribe(channel, queue)
    await frames_of(queue, 3)
    assert stream.ssrc_value is not None

    async def refused(ssrc: int, host: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
        writer.write(frame(build_rtp(96, 1, 0, ssrc, True, JUNK)))
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5.0)  # closed by the node
        writer.close()
        return rest

    assert await refused(stream.ssrc_value ^ 1, "127.0.0.1") == b""  # no such stream (waits)
    assert await refused(stream.ssrc_value, "127.0.0.2") == b""  # not the device's host
    assert await refused(stream.ssrc_value, "127.0.0.1") == b""  # the stream has its own
    stats = hub.single_port_stats()
    assert stats is not None and stats["refused_connections"] == 3
    assert_clip_frames(await frames_of(queue, 30), "h264", from_keyframe=False)
    assert stream.counter("lost") == 0


async def test_the_port_is_open_while_the_node_runs_and_closed_after(single: Setup) -> None:
    running, _, port = await single(cameras=0)
    mux = running.node.media.single_port
    assert mux is not None
    await mux.ready()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        with pytest.raises(OSError):
            taken.bind(("127.0.0.1", port))
    await running.client.close()
    assert running.node.media.single_port is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again_tcp:
        again_tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again_tcp.bind(("127.0.0.1", port))


async def test_a_port_already_taken_is_reported_at_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            SinglePortMux.bind("127.0.0.1", holder.getsockname()[1], 1 << 20)


class Payloads:
    """An RtpSink that keeps what it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes]] = []

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        self.seen.append((seq, bytes(payload)))


async def test_a_connection_before_the_answer_waits_for_the_ssrc_the_device_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device that answers with an SSRC of its own may connect and send before the node has
    read the answer: its connection waits, and is bound when the stream moves to that SSRC;
    one whose SSRC no stream ever takes is closed after PENDING_TIMEOUT_S and counted."""
    monkeypatch.setattr(single_port, "PENDING_TIMEOUT_S", 1.0)
    port = free_port()
    mux = SinglePortMux.bind("127.0.0.1", port, 1 << 16)
    await mux.ready()
    sink = Payloads()
    receiver = SharedTcpReceiver(sink)
    assert receiver.attach(mux, 1111, ["127.0.0.1"]) == port
    sent = [(seq, bytes([seq]) * 300) for seq in range(20)]
    stream = b"".join(frame(build_rtp(96, seq, seq // 5, 2222, seq % 5 == 4, payload))
                      for seq, payload in sent)
    writers = []
    try:
        _, early = await asyncio.open_connection("127.0.0.1", port)
        _, stranger = await asyncio.open_connection("127.0.0.1", port)
        writers += [early, stranger]
        early.write(stream[:1000])  # the first packets, and part of one
        stranger.write(frame(build_rtp(96, 0, 0, 3333, True, JUNK)))
        await asyncio.gather(early.drain(), stranger.drain())
        await wait_for(lambda: len(mux._parked) == 2)
        assert receiver.transport is None and not sink.seen
        receiver.expect(2222, ["127.0.0.1"])  # the answer is read
        early.write(stream[1000:])
        await early.drain()
        await wait_for(lambda: len(sink.seen) == len(sent))
        assert sink.seen == sent
        assert receiver.peer == early.get_extra_info("sockname")
        await wait_for(lambda: mux.refused_connections == 1, timeout=3)  # the stranger
        assert not mux._parked and not mux._pending
    finally:
        for writer in writers:
            writer.close()
        receiver.close()
        mux.close()


async def test_the_udp_buffer_grows_with_the_streams_on_the_port() -> None:
    """As much buffer as the streams' sockets of their own would have, in steps."""
    mux = SinglePortMux.bind("127.0.0.1", 0, 4096)
    await mux.ready()
    sock = mux.transport.get_extra_info("socket")  # type: ignore[union-attr]

    def granted() -> int:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    try:
        assert granted() == 2 * 4096 * UDP_BUFFER_STEP  # Linux reports twice what it took
        receivers = [await SharedUdpReceiver.attach(mux, ssrc, MediaIngest())
                     for ssrc in range(UDP_BUFFER_STEP + 1)]
        assert granted() == 2 * 4096 * 2 * UDP_BUFFER_STEP
        for receiver in receivers:
            receiver.close()
        assert mux.stats()["udp_streams"] == 0
    finally:
        mux.close()


# ----- the demultiplexing key, on any bytes -----

@given(st.binary(max_size=64))
@example(b"")
@example(b"\x80\x60\x00\x01\x00\x00\x00\x00\x12\x34\x56")  # one byte short of a header
def test_ssrc_key_is_the_parsed_ssrc_or_matches_no_stream(data: bytes) -> None:
    """Never raises; for a packet RtpPacket parses it is that packet's SSRC; for one too short
    to carry an SSRC it has fewer than the four bytes every stream's key has."""
    key = ssrc_key(data)
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        packet = None
    if packet is not None:
        assert key == packet.ssrc.to_bytes(4, "big")
    if len(data) < 12:
        assert len(key) < 4
    else:
        assert key == data[8:12] and len(key) == 4


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.binary(max_size=32))
def test_ssrc_key_of_a_built_packet_is_its_ssrc(ssrc: int, seq: int, ts: int,
                                                payload: bytes) -> None:
    assert ssrc_key(build_rtp(96, seq, ts, ssrc, False, payload)) == ssrc.to_bytes(4, "big")
