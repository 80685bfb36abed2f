"""Live play end to end on loopback: a running node pulls simulated cameras' streams.

The cameras are `SimulatedCamera`s that register, answer the catalog and answer INVITE with a
real paced PS-over-RTP stream (PyAV-encoded clip), so every step (SDP offer and answer, ACK,
RTP over UDP / TCP passive / TCP active, PS demux, BYE) runs as it does against a device.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rtp.packet import build_rtp
from rtp.ps import AccessUnit
from sensing_node.media.consumers import Consumer, FrameQueue, StreamError
from sensing_node.media.overload import stream_socket, tcp_queues, udp_sockets
from sensing_node.media.workers.pool import RemoteReceiver
from sensing_node.sim.camera import SimulatedCamera
from sensing_node.sim.media import load_clip
from sensing_node.transport import native
from sensing_node.transport.rtp import TcpRtpReceiver, UdpRtpReceiver, set_rcvbuf

from .conftest import PASSWORD, CameraSetup, RunningNode, StartNode, wait_for

CAMERA = "31011200001320000001"
TRANSPORTS = ["udp", "tcp-passive", "tcp-active"]

Setup = Callable[..., Awaitable[tuple[RunningNode, SimulatedCamera]]]


@pytest.fixture
def live(node_with_camera: CameraSetup) -> CameraSetup:
    """A node (media.timeout_s 2) plus one registered, catalogued camera."""

    async def setup(
        node: dict[str, Any] | None = None, **camera: Any
    ) -> tuple[RunningNode, SimulatedCamera]:
        return await node_with_camera({"media.timeout_s": 2, **(node or {})}, **camera)

    return setup


async def post_live(running: RunningNode, channel: str, body: Any = None) -> tuple[int, Any]:
    response = await running.client.post(
        f"/api/channels/{channel}/live", json=body, headers=running.headers
    )
    return response.status, await response.json()


async def delete_live(running: RunningNode, channel: str) -> tuple[int, Any]:
    response = await running.client.delete(
        f"/api/channels/{channel}/live", headers=running.headers
    )
    return response.status, await response.json()


async def frames_of(queue: FrameQueue, count: int) -> list[AccessUnit]:
    return [await asyncio.wait_for(queue.get(), 5.0) for _ in range(count)]


def assert_clip_frames(units: list[AccessUnit], codec: str, *, from_keyframe: bool = True) -> None:
    """The frames are the camera's clip, byte for byte and in order (across its loop)."""
    clip = [data for data, _, _ in load_clip(codec).frames]
    video = [u for u in units if u.stream_id >= 0xE0]
    assert video[0].keyframe or not from_keyframe
    start = clip.index(video[0].data)
    for i, unit in enumerate(video):
        assert unit.data == clip[(start + i) % len(clip)], i
        assert unit.codec == codec


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_live_play_over_each_transport(live: Setup, transport: str) -> None:
    sip = "udp" if transport == "udp" else "tcp"
    running, cam = await live(transport=sip)
    hub = running.node.media
    channel = cam.channel_ids[0]

    status, stream = await post_live(running, channel, {"transport": transport})
    assert status == 200, stream
    assert stream["transport"] == transport
    assert stream["channel_id"] == channel and stream["device_id"] == CAMERA
    assert stream["ssrc"] and stream["ssrc"][0] == "0" and len(stream["ssrc"]) == 10
    session = next(iter(cam.media_sessions.values()))
    assert session.ssrc == int(stream["ssrc"])  # the camera sends with the offered y=
    assert session.subject == f"{channel}:{stream['ssrc']},{running.node.settings.node.id}:0"
    assert session.stream_number == 0

    queue = FrameQueue()
    await hub.subscribe(channel, queue)
    units = await frames_of(queue, 40)  # more than one GOP of the 25-frame GOP clip
    assert_clip_frames(units, "h264")

    listed = await wait_for(lambda: hub.snapshot()[0]["fps"] is not None and hub.snapshot())
    (item,) = listed
    assert item["codec"] == "h264" and (item["width"], item["height"]) == (640, 360)
    assert item["packets"] > 0 and item["lost"] == 0 and item["dropped_foreign"] == 0
    assert item["consumers"] == 2
    assert item["bitrate_bps"] > 0
    assert (await running.get("/api/streams"))[0]["channel_id"] == channel
    # Once the stream runs, the camera's packets take the fast path where it is compiled, over
    # UDP and TCP alike (in a media worker too, as its stats report). The first packet, and
    # those held until the answer reached the receiver (a worker gets it a little later), go
    # the full way.
    receiver = hub.streams[channel].receiver
    await wait_for(lambda: receiver.packets > 2)
    packets, fast = receiver.packets, receiver.fast_packets
    await wait_for(lambda: receiver.packets >= packets + 20)
    taken = receiver.fast_packets - fast
    assert taken == (receiver.packets - packets if native.COMPILED else 0)

    hub.unsubscribe(channel, queue)
    status, body = await delete_live(running, channel)
    assert status == 200 and body["stopped"] is True
    await wait_for(lambda: cam.byes_received == 1 and not cam.media_sessions)
    assert await running.get("/api/streams") == []
    assert hub.pool.in_use == 0 and not hub._serials
    ended = await running.get("/api/streams/ended")
    assert ended[0]["reason"] == "stopped by the operator"


async def test_h265_stream_and_its_picture_size(live: Setup) -> None:
    running, cam = await live(media_codec="h265")
    hub = running.node.media
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    stream = await hub.subscribe(channel, queue)
    assert_clip_frames(await frames_of(queue, 30), "h265")
    assert (stream.codec, stream.width, stream.height) == ("h265", 640, 360)


async def test_a_second_consumer_starts_at_the_cached_keyframe(live: Setup) -> None:
    running, cam = await live()
    hub = running.node.media
    channel = cam.channel_ids[0]
    first = FrameQueue()
    stream = await hub.subscribe(channel, first)
    await frames_of(first, 35)  # past the second keyframe
    second = FrameQueue()
    await hub.subscribe(channel, second)
    assert len(cam.media_sessions) == 1 and cam.invites_received == 1  # one ingest
    cached = len(second.items)
    assert cached >= 1 and second.items[0].keyframe
    units = await frames_of(second, cached + 5)
    assert_clip_frames(units, "h264")
    assert len(stream.consumers) == 2


async def test_a_slow_consumer_stalls_nobody(live: Setup) -> None:
    running, cam = await live()
    hub = running.node.media
    channel = cam.channel_ids[0]
    slow, fast = FrameQueue(maxsize=5), FrameQueue()

    class Broken(Consumer):
        name = "broken"

        def on_unit(self, unit: AccessUnit) -> None:
            raise RuntimeError("consumer bug")

    stream = await hub.subscribe(channel, slow)
    await hub.subscribe(channel, Broken())
    await hub.subscribe(channel, fast)
    units = await frames_of(fast, 30)
    assert_clip_frames(units, "h264")
    assert slow.dropped > 0 and len(slow.items) <= 5
    assert slow.items[0].keyframe  # it resumes at a keyframe
    assert stream.consumer_errors >= 30


async def test_sub_stream_is_offered_when_configured(live: Setup) -> None:
    channel = "31011200001310000101"  # the simulator's first channel of CAMERA
    running, cam = await live({"channels.overrides": {channel: {"stream": "sub"}}})
    assert cam.channel_ids[0] == channel
    await running.node.media.hold(channel)
    session = next(iter(cam.media_sessions.values()))
    assert session.stream_number == 1
    assert running.node.media.snapshot()[0]["stream"] == "sub"


@pytest.mark.parametrize("answer_ssrc", ["0987654321", ""])
async def test_the_devices_own_ssrc_or_none(live: Setup, answer_ssrc: str) -> None:
    running, cam = await live(answer_ssrc=answer_ssrc)
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    stream = await running.node.media.subscribe(channel, queue)
    assert_clip_frames(await frames_of(queue, 10), "h264")
    session = next(iter(cam.media_sessions.values()))
    if answer_ssrc:
        assert stream.ssrc == answer_ssrc == f"{session.ssrc:010d}"
    # (a media worker's receiver reports within half a second)
    await wait_for(lambda: stream.receiver is not None and stream.receiver.ssrc == session.ssrc)


async def test_unknown_channel_is_404_and_offline_device_409(live: Setup) -> None:
    running, cam = await live()
    status, body = await post_live(running, "31011200001310099999")
    assert status == 404 and "unknown channel" in body["error"]
    running.node.registry.get(CAMERA).online = False
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 409 and "offline" in body["error"]
    status, body = await post_live(running, cam.channel_ids[0], {"transport": "quic"})
    assert status == 400
    assert (await delete_live(running, cam.channel_ids[0]))[0] == 404


async def test_device_refusal_is_502_with_its_status(live: Setup) -> None:
    running, cam = await live(invite_status=486)
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 502 and body["sip_status"] == 486
    assert "486" in body["error"]
    hub = running.node.media
    assert hub.streams == {} and hub.pool.in_use == 0 and not hub._serials
    ended = await running.get("/api/streams/ended")
    assert "486" in ended[0]["reason"]


async def test_no_answer_is_504_and_the_invite_is_cancelled(live: Setup) -> None:
    running, cam = await live({"media.answer_timeout_s": 1}, answer_invite=False)
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 504 and "no answer" in body["error"]
    # The CANCEL reaches the camera, which ends the INVITE with 487.
    await wait_for(lambda: not cam._pending)
    await wait_for(lambda: running.node.endpoint.stats.responses_received[487] == 1)
    assert running.node.media.pool.in_use == 0


async def test_no_media_after_ack_ends_the_session_and_it_is_invited_again(live: Setup) -> None:
    running, cam = await live({"media.timeout_s": 1}, send_media=False)
    hub = running.node.media
    hub.backoff_min_s = 0.2
    status, _ = await post_live(running, cam.channel_ids[0])
    assert status == 200  # the device answered and was ACKed
    stream = hub.streams[cam.channel_ids[0]]
    await wait_for(lambda: cam.byes_received >= 1, timeout=5)
    assert stream.last_error == "no media within 1 s after ACK"
    await wait_for(lambda: stream.attempts >= 2 and cam.invites_received >= 2, timeout=5)
    ended = await running.get("/api/streams/ended")
    assert ended[-1]["reason"] == "no media within 1 s after ACK"
    await delete_live(running, cam.channel_ids[0])
    assert hub.pool.in_use == 0


async def test_stopped_media_is_torn_down_and_resumed(live: Setup) -> None:
    running, cam = await live({"media.timeout_s": 1})
    hub = running.node.media
    hub.backoff_min_s = 0.2
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    stream = await hub.subscribe(channel, queue)
    await frames_of(queue, 5)
    first_ssrc = stream.ssrc
    cam.stop_media()
    await wait_for(lambda: stream.last_error == "no media for 1 s", timeout=5)
    await wait_for(lambda: stream.state == "playing" and stream.attempts == 2, timeout=5)
    assert cam.byes_received >= 1
    queue.items.clear()
    units = await frames_of(queue, 40)
    first_key = next(i for i, u in enumerate(units) if u.keyframe)
    assert_clip_frames(units[first_key:], "h264")
    assert stream.ssrc != first_ssrc  # the SSRC of the first attempt was released


async def test_packets_from_a_stranger_never_reach_a_latched_stream(live: Setup) -> None:
    """Once the camera's source is latched, the stream's socket is connected to it: a
    stranger's packets (the stream's SSRC, the right port) are refused by the kernel, with an
    ICMP port unreachable, and the stream goes on whole."""
    running, cam = await live()
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    stream = await running.node.media.subscribe(channel, queue)
    await frames_of(queue, 3)
    receiver = stream.receiver
    assert receiver is not None and stream.ssrc_value is not None
    refused = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:
        spoofer.connect(("127.0.0.1", receiver.port))  # so that the refusal reaches it
        spoofer.setblocking(False)
        for seq in range(50):  # same SSRC, right port, wrong source
            spoofer.send(build_rtp(96, seq, 0, stream.ssrc_value, True, b"\x00\x00\x01\xba" * 8))
            for _ in range(100):
                try:
                    spoofer.recv(1)
                except ConnectionRefusedError:
                    refused += 1
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
    assert refused == 50
    assert_clip_frames(await frames_of(queue, 30), "h264", from_keyframe=False)
    assert stream.counter("lost") == 0 and stream.counter("dropped_foreign") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_streams_socket_has_the_configured_receive_buffer(
    live: Setup, transport: str
) -> None:
    # media.receive_buffer_kib, asked for on the stream's socket as set_rcvbuf asks for it
    # here (Linux grants twice the request, within net.core.rmem_max unless forced).
    running, cam = await live({"media.receive_buffer_kib": 3072, "media.transport": transport})
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    stream = await running.node.media.subscribe(channel, queue)
    await frames_of(queue, 3)
    receiver = stream.receiver
    if isinstance(receiver, RemoteReceiver):
        # A media worker's socket: bound by the node's process with the buffer, which the
        # worker asks for again (from what the node's process sends it).
        hub = running.node.media
        assert hub.workers is not None and hub.workers.receive.rcvbuf == 3072 * 1024
        assert hub.pool.rcvbuf == 3072 * 1024
        # the worker reports a TCP connection's local port within half a second
        await wait_for(lambda: transport == "udp" or receiver.local_port)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            expected = set_rcvbuf(probe, 3072 * 1024)
        assert isinstance(receiver, (UdpRtpReceiver, TcpRtpReceiver))
        assert receiver.rcvbuf == expected
    # The overload guard's meter finds the socket (a worker's too) and reads its queue.
    assert receiver is not None
    kind, port = stream_socket(stream)
    if transport == "udp":
        assert kind == "udp" and port == receiver.port
        found = udp_sockets([port])
    else:
        assert kind == "tcp" and port
        found = {p: (0, queued) for p, queued in (tcp_queues([port]) or {}).items()}
    assert found is not None and port in found


async def test_linger_then_bye_when_nobody_watches(live: Setup) -> None:
    running, cam = await live({"media.linger_s": 1})
    hub = running.node.media
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    await hub.subscribe(channel, queue)
    hub.unsubscribe(channel, queue)
    await asyncio.sleep(0.3)
    assert channel in hub.streams and cam.byes_received == 0  # still lingering
    again = FrameQueue()
    await hub.subscribe(channel, again)  # rejoins without a new INVITE
    assert cam.invites_received == 1
    hub.unsubscribe(channel, again)
    await wait_for(lambda: cam.byes_received == 1, timeout=4)
    assert channel not in hub.streams
    assert queue.ended is None and again.ended is None  # they had left before


async def test_node_shutdown_hangs_up(live: Setup) -> None:
    running, cam = await live()
    await running.node.media.hold(cam.channel_ids[0])
    await running.client.close()
    await wait_for(lambda: cam.byes_received == 1)


async def test_a_device_bye_ends_the_attempt_and_a_watched_stream_is_invited_again(
    live: Setup,
) -> None:
    running, cam = await live()
    hub = running.node.media
    hub.backoff_min_s = 0.2
    channel = cam.channel_ids[0]
    queue = FrameQueue()
    stream = await hub.subscribe(channel, queue)
    (answer,) = await cam.hang_up()
    assert answer.status == 200
    assert stream.last_error == "the device hung up (BYE)"
    await wait_for(lambda: stream.state == "playing" and stream.attempts == 2, timeout=5)
    assert cam.byes_received == 0  # the node did not hang up a dialog that was gone
    queue.items.clear()
    units = await frames_of(queue, 30)
    first_key = next(i for i, u in enumerate(units) if u.keyframe)
    assert_clip_frames(units[first_key:], "h264")


async def test_a_bye_for_no_dialog_is_481(live: Setup) -> None:
    running, cam = await live()
    await running.node.media.hold(cam.channel_ids[0])
    session = next(iter(cam.media_sessions.values()))
    session.call_id = "not-a-call@nowhere"  # the BYE then names a dialog the node never had
    cam.media_sessions = {session.call_id: session}
    (answer,) = await cam.hang_up()
    assert answer.status == 481


async def test_mpeg_ts_instead_of_ps_ends_the_attempt_with_the_reason(live: Setup) -> None:
    running, cam = await live(send_media=False)
    hub = running.node.media
    hub.backoff_min_s = 5.0  # keep the second attempt out of the way
    stream = await hub.hold(cam.channel_ids[0])
    assert stream.receiver is not None and stream.ssrc_value is not None
    ts_packet = b"\x47\x40\x00\x10" + b"\xff" * 184
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device:
        for seq in range(40):  # 7 TS packets per RTP packet, as TS-over-RTP senders do
            rtp = build_rtp(33, seq, seq * 3600, stream.ssrc_value, False, ts_packet * 7)
            device.sendto(rtp, ("127.0.0.1", stream.receiver.port))
    await wait_for(lambda: stream.last_error is not None, timeout=3)
    assert "MPEG-TS" in stream.last_error and "not MPEG-PS" in stream.last_error
    # The BYE is on its way (with media workers the refusal comes with the worker's report,
    # and the attempt ends as it is read).
    await wait_for(lambda: cam.byes_received == 1, timeout=3)
    assert stream.frames == 0


async def test_a_retransmitted_200_gets_the_ack_again(start_node: StartNode) -> None:
    """A device whose 200 OK to INVITE is repeated (it did not see the ACK) gets the same ACK
    each time (RFC 3261 13.2.2.4); its answer without y= is accepted."""
    from sip.message import Response, parse_message
    from sip.sdp import parse_sdp

    from .sipclient import UdpPeer, register

    running = await start_node()
    device = "34020000001320000007"
    peer = await UdpPeer.open(running.sip)
    try:
        assert (await register(peer, device, PASSWORD)).status == 200
        running.node.registry.set_channels(device, {device: {"Name": "cam"}})
        task = asyncio.create_task(post_live(running, device))
        invite = None
        while invite is None:
            message = parse_message(await peer.recv_raw())
            if message.method == "INVITE":  # type: ignore[union-attr]
                invite = message
        offer = parse_sdp(invite.body)
        assert offer.session_name == "Play" and offer.ssrc is not None
        answer = (
            b"v=0\r\no=34020000001320000007 0 0 IN IP4 127.0.0.1\r\ns=Play\r\n"
            b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 15060 RTP/AVP 96\r\n"
            b"a=sendonly\r\na=rtpmap:96 PS/90000\r\n"
        )
        ok = Response.for_request(invite, 200, to_tag="dev1")
        ok.headers.add("Contact", f"<sip:{device}@127.0.0.1:{peer.port}>")
        ok.headers.add("Content-Type", "application/sdp")
        ok.body = answer
        acks = []
        for _ in range(2):
            peer.send(ok.to_bytes())
            while True:
                message = parse_message(await peer.recv_raw())
                if message.method == "ACK":  # type: ignore[union-attr]
                    acks.append(message)
                    break
        assert acks[0].to_bytes() == acks[1].to_bytes()
        assert acks[0].cseq == (1, "ACK") and acks[0].to.tag == "dev1"
        status, stream = await task
        assert status == 200 and stream["remote"] == "127.0.0.1:15060"
        assert running.node.media.streams[device].ssrc_value is None  # learnt from packets
    finally:
        peer.close()


async def test_packets_without_video_end_the_attempt_with_no_video_in_stream(live: Setup) -> None:
    # PS that keeps coming (so it is not "no media") but holds no frame: packs with padding and
    # private data only. media.timeout_s without a video frame ends the attempt.
    running, cam = await live({"media.timeout_s": 1}, send_media=False)
    hub = running.node.media
    hub.backoff_min_s = 5.0  # keep the second attempt out of the way
    stream = await hub.hold(cam.channel_ids[0])
    assert stream.receiver is not None and stream.ssrc_value is not None
    port = stream.receiver.port
    pack = bytes.fromhex("000001BA440004708401013883F8")
    private = b"\x00\x00\x01\xbd\x00\x10" + b"\x80" * 16
    padding = b"\x00\x00\x01\xbe\x04\x00" + b"\xff" * 1024
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device:
        for seq in range(200):  # 40 ms apart: at most 8 s, well past the 1 s timeout
            payload = pack + private + padding
            device.sendto(build_rtp(96, seq, seq * 3600, stream.ssrc_value, True, payload),
                          ("127.0.0.1", port))
            if stream.last_error is not None:
                break
            await asyncio.sleep(0.04)
    assert stream.last_error == "no video in stream"
    assert stream.frames == 0 and stream.counter("packets") > 10
    await wait_for(lambda: cam.byes_received == 1, timeout=3)
    ended = await running.get("/api/streams/ended")
    assert ended[-1]["reason"] == "no video in stream"


async def test_an_unexpected_error_still_hangs_up_and_releases_everything(
    live: Setup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception the stream does not expect (here right after the ACK, with the camera
    streaming) ends it with the reason, and still sends BYE and gives back the port, the SSRC
    serial and the Call-ID."""
    running, cam = await live()
    hub = running.node.media
    ack = hub.ack

    def ack_then_fail(*args: Any) -> None:
        ack(*args)
        raise RuntimeError("injected fault")

    monkeypatch.setattr(hub, "ack", ack_then_fail)
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 502 and body["error"] == "internal error: RuntimeError: injected fault"
    await wait_for(lambda: cam.byes_received == 1 and not cam.media_sessions)
    assert hub.streams == {} and hub.by_call_id == {}
    assert hub.pool.in_use == 0 and not hub._serials
    ended = await running.get("/api/streams/ended")
    assert ended[0]["reason"] == "internal error: RuntimeError: injected fault"


@pytest.mark.parametrize("transport", ["udp", "tcp-passive"])
async def test_rtp_binds_the_media_ip_while_sip_listens_on_every_address(
    live: Setup, transport: str,
) -> None:
    running, cam = await live({"node.sip_listen": "0.0.0.0:0"})
    stream = await running.node.media.hold(cam.channel_ids[0], transport)
    receiver = stream.receiver
    if isinstance(receiver, RemoteReceiver):  # bound here, passed to a media worker
        bound = receiver.bound
    elif transport == "udp":
        assert isinstance(receiver, UdpRtpReceiver) and receiver.sock is not None
        bound = receiver.sock.getsockname()
    else:
        assert isinstance(receiver, TcpRtpReceiver) and receiver.server is not None
        bound = receiver.server.sockets[0].getsockname()
    assert bound == ("127.0.0.1", receiver.port)  # node.media_ip, not 0.0.0.0


async def test_a_media_port_that_never_answers_ends_with_connect_timed_out(
    live: Setup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tcp-active: the device answers with a port that takes no connection (its backlog is
    full, as with a black hole); the attempt ends after media.connect_timeout_s with its own
    reason, BYE and everything released."""
    running, cam = await live({"media.connect_timeout_s": 0.5}, transport="tcp")
    hub = running.node.media
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler.setblocking(False)
    answer_sdp = cam._answer_sdp

    def black_hole(session: Any, *args: Any) -> Any:
        session.local_port = listener.getsockname()[1]
        return answer_sdp(session, *args)

    monkeypatch.setattr(cam, "_answer_sdp", black_hole)
    try:
        await asyncio.get_running_loop().sock_connect(filler, listener.getsockname())
        status, body = await asyncio.wait_for(
            post_live(running, cam.channel_ids[0], {"transport": "tcp-active"}), 10
        )
    finally:
        filler.close()
        listener.close()
    assert status == 504 and body["error"].startswith("connect timed out: no connection to")
    await wait_for(lambda: cam.byes_received == 1)
    assert hub.pool.in_use == 0 and not hub._serials
    ended = await running.get("/api/streams/ended")
    assert ended[0]["reason"] == body["error"]


@pytest.mark.parametrize("transport", ["tcp-passive", "tcp-active"])
async def test_the_media_port_turns_away_other_hosts_before_the_answer(
    live: Setup, transport: str,
) -> None:
    """While the device has not answered (this one never does), a connection to the offered TCP
    port from a host that is not the device is closed and counted; for tcp-active, whose port
    only keeps the offer truthful, so is one from the device's own host."""
    running, cam = await live({"media.answer_timeout_s": 1}, transport="tcp",
                              answer_invite=False)
    hub = running.node.media
    channel = cam.channel_ids[0]
    task = asyncio.create_task(post_live(running, channel, {"transport": transport}))
    try:
        stream = await wait_for(lambda: hub.streams.get(channel))
        receiver = await wait_for(lambda: stream.receiver)
        assert isinstance(receiver, TcpRtpReceiver | RemoteReceiver)
        stranger = "127.0.0.2" if transport == "tcp-passive" else "127.0.0.1"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", receiver.port, local_addr=(stranger, 0)
        )
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the node
        writer.close()
        await wait_for(lambda: receiver.refused_connections == 1)  # a worker's: reported
        assert receiver.peer is None
    finally:
        status, _ = await task
    assert status == 504 and hub.pool.in_use == 0


async def test_udp_packets_before_the_answer_from_others_never_reach_the_consumers(
    live: Setup,
) -> None:
    """While the camera takes its time to answer, another host sends with the offered SSRC and
    the camera's own host with another SSRC: none of it reaches the stream, all of it is
    counted as foreign, and the camera's stream then plays without loss."""
    running, cam = await live(answer_delay_s=0.5)
    hub = running.node.media
    channel = cam.channel_ids[0]
    queue = FrameQueue()

    class Payloads(Consumer):
        wants_rtp = True

        def __init__(self) -> None:
            self.seen: list[bytes] = []

        def on_rtp(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
            self.seen.append(bytes(payload))

    payloads = Payloads()
    task = asyncio.create_task(hub.subscribe(channel, queue))
    try:
        stream = await wait_for(lambda: hub.streams.get(channel))
        stream.add(payloads)
        receiver = await wait_for(lambda: stream.receiver)
        assert stream.ssrc is not None and stream.dialog is None
        offered = int(stream.ssrc)
        junk = b"\x00\x00\x01\xba" + bytes(200)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as same_host:
            stranger.bind(("127.0.0.2", 0))
            for seq in range(20):
                stranger.sendto(build_rtp(96, seq, 0, offered, True, junk),
                                ("127.0.0.1", receiver.port))
                same_host.sendto(build_rtp(96, seq, 0, offered ^ 1, True, junk),
                                 ("127.0.0.1", receiver.port))
    finally:
        await task
    assert_clip_frames(await frames_of(queue, 30), "h264", from_keyframe=False)
    if not isinstance(stream.receiver, RemoteReceiver):  # a worker's keeps the RTP
        assert payloads.seen and junk not in payloads.seen
    await wait_for(lambda: stream.counter("dropped_foreign") == 40)
    assert stream.counter("lost") == 0


# ----- devices that answer otherwise than asked (issue 9) -----

async def quirks_of(running: RunningNode, device_id: str = CAMERA) -> list[str]:
    return (await running.get(f"/api/devices/{device_id}"))["quirks"]


@pytest.mark.parametrize(("transport", "camera", "quirk"), [
    ("udp", {"answer_proto": "TCP/RTP/AVP"}, "answers TCP/RTP/AVP to a udp offer"),
    ("tcp-passive", {"answer_proto": "RTP/AVP"}, "answers RTP/AVP to a tcp-passive offer"),
    ("tcp-passive", {"answer_setup": False}, "answers TCP media without a=setup"),
    ("tcp-active", {"answer_setup": False}, "answers TCP media without a=setup"),
    ("udp", {"answer_address": "0.0.0.0"}, "answers without a usable c= address"),
    ("tcp-passive", {"answer_address": "camera.invalid"}, "answers without a usable c= address"),
    # c= names an address that refuses the connection: the node connects to the device's
    # signalling address instead
    ("tcp-active", {"answer_address": "192.0.2.1"},
     "answers a c= address its media port cannot be reached at"),
])
async def test_an_answer_that_contradicts_the_offer_is_a_quirk_and_the_offer_decides(
    live: Setup, transport: str, camera: dict[str, Any], quirk: str,
) -> None:
    """The camera answers wrongly but sends media as offered: the stream plays on the offered
    transport and the contradiction is kept as the device's quirk, shown by the API."""
    running, cam = await live({"media.connect_timeout_s": 0.5},
                              transport="udp" if transport == "udp" else "tcp", **camera)
    channel = cam.channel_ids[0]
    status, body = await post_live(running, channel, {"transport": transport})
    assert status == 200, body
    assert body["transport"] == transport
    queue = FrameQueue()
    await running.node.media.subscribe(channel, queue)
    assert_clip_frames(await frames_of(queue, 30), "h264")
    assert await quirks_of(running) == [quirk]


async def test_a_quirk_is_logged_once_per_device(
    live: Setup, caplog: pytest.LogCaptureFixture,
) -> None:
    running, cam = await live(answer_proto="TCP/RTP/AVP")
    channel = cam.channel_ids[0]
    for _ in range(2):
        queue = FrameQueue()
        await running.node.media.subscribe(channel, queue)
        await frames_of(queue, 3)
        running.node.media.unsubscribe(channel, queue, linger=False)
        await wait_for(lambda: channel not in running.node.media.streams)
    assert cam.invites_received == 2
    logged = [r for r in caplog.records if "answers TCP/RTP/AVP to a udp offer" in r.message]
    assert len(logged) == 1 and logged[0].levelname == "WARNING"
    assert await quirks_of(running) == ["answers TCP/RTP/AVP to a udp offer"]


async def test_a_200_without_sdp_is_acked_hung_up_and_releases_everything(live: Setup) -> None:
    running, cam = await live(answer_sdp=False)
    hub = running.node.media
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 502 and body["error"] == "device answered without SDP"
    await wait_for(lambda: cam.byes_received == 1 and not cam.media_sessions)
    assert hub.streams == {} and hub.by_call_id == {}
    assert hub.pool.in_use == 0 and not hub._serials
    ended = await running.get("/api/streams/ended")
    assert ended[0]["reason"] == "device answered without SDP"


async def test_transport_fallback_after_a_refused_connect_and_the_transport_is_remembered(
    live: Setup,
) -> None:
    """A camera that ignores a=setup:active never listens (it connects, as for tcp-passive):
    the node's connect fails, it offers the next transport at once, the stream plays over it,
    and the device's next stream starts with the transport that worked."""
    running, cam = await live(
        {"media.transport": "tcp-active", "media.transport_fallback": ["tcp-passive", "udp"],
         "media.connect_timeout_s": 0.5},
        transport="tcp", ignore_setup=True,
    )
    hub = running.node.media
    channel = cam.channel_ids[0]
    status, body = await post_live(running, channel)
    assert status == 200, body
    assert body["transport"] == "tcp-passive" and body["attempts"] == 2
    assert cam.invites_received == 2
    ended = await running.get("/api/streams/ended")
    assert ended[0]["transport"] == "tcp-active"
    assert ended[0]["reason"].startswith("connect timed out")
    queue = FrameQueue()
    await hub.subscribe(channel, queue)
    assert_clip_frames(await frames_of(queue, 30), "h264")
    device = await running.get(f"/api/devices/{CAMERA}")
    assert device["media_transport"] == "tcp-passive"
    assert device["quirks"] == ["answers a=setup:active to a tcp-active offer"]

    hub.unsubscribe(channel, queue)
    await delete_live(running, channel)
    assert (await post_live(running, channel))[1]["transport"] == "tcp-passive"
    assert cam.invites_received == 3  # straight to the remembered transport

    # An explicit transport is used as asked: no fallback.
    await delete_live(running, channel)
    status, body = await post_live(running, channel, {"transport": "tcp-active"})
    assert status == 504 and body["error"].startswith("connect timed out")
    assert cam.invites_received == 4


async def test_a_488_moves_on_to_the_next_transport(live: Setup) -> None:
    running, cam = await live(
        {"media.transport_fallback": ["udp"],
         "devices.overrides": {CAMERA: {"transport": "tcp-passive"}}},
        udp_only=True,
    )
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 200, body
    assert body["transport"] == "udp" and body["attempts"] == 2
    ended = await running.get("/api/streams/ended")
    assert ended[0]["transport"] == "tcp-passive" and "488" in ended[0]["reason"]
    device = await wait_for(lambda: running.node.registry.get(CAMERA).media_transport)
    assert device == "udp"


async def test_no_media_over_one_transport_invites_over_the_next(live: Setup) -> None:
    running, cam = await live(
        {"media.timeout_s": 1, "media.transport": "tcp-passive",
         "media.transport_fallback": ["udp"]},
        send_media=False,
    )
    hub = running.node.media
    hub.backoff_min_s = 0.2
    status, body = await post_live(running, cam.channel_ids[0])
    assert status == 200 and body["transport"] == "tcp-passive"
    ended = await wait_for(lambda: len(hub.ended) >= 2 and list(hub.ended), timeout=8)
    assert [e["transport"] for e in ended[:2]] == ["tcp-passive", "udp"]
    assert {e["reason"] for e in ended[:2]} == {"no media within 1 s after ACK"}
    assert cam.invites_received >= 2
    assert running.node.registry.get(CAMERA).media_transport is None  # nothing came


async def test_which_transport_a_stream_starts_with(start_node: StartNode) -> None:
    from sensing_node.devices.registry import Device

    channel, other = "31011200001310000101", "31011200001310000102"
    running = await start_node(**{
        "media.transport": "udp",
        "media.transport_fallback": ["tcp-passive", "udp"],
        "channels.overrides": {channel: {"transport": "tcp-active"}},
        "devices.overrides": {CAMERA: {"transport": "tcp-passive"}},
    })
    plan = running.node.media.transport_plan
    overridden = Device(id=CAMERA, media_transport="udp")
    plain = Device(id="31011200001320000002", media_transport="tcp-active")
    fresh = Device(id="31011200001320000003")
    assert plan(channel, overridden, "udp") == ("udp", (), True)  # the API request
    assert plan(channel, overridden) == ("tcp-active", (), True)  # the channel override
    assert plan(other, overridden) == ("tcp-passive", ("tcp-passive", "udp"), False)
    assert plan(other, plain) == ("tcp-active", ("tcp-passive", "udp"), False)  # remembered
    assert plan(other, fresh) == ("udp", ("tcp-passive", "udp"), False)  # media.transport


async def test_an_internal_error_is_retried_while_a_recorder_wants_the_stream(
    live: Setup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, cam = await live()
    hub = running.node.media
    hub.backoff_min_s = 0.2
    ack = hub.ack
    failures = []

    def ack_then_fail_once(*args: Any) -> None:
        ack(*args)
        if not failures:
            failures.append(1)
            raise RuntimeError("injected fault")

    class Recorder(FrameQueue):
        persistent = True

    monkeypatch.setattr(hub, "ack", ack_then_fail_once)
    recorder = Recorder()
    channel = cam.channel_ids[0]
    with pytest.raises(StreamError, match="internal error: RuntimeError: injected fault"):
        await hub.subscribe(channel, recorder)
    stream = hub.streams[channel]  # still there, waiting to invite again
    await wait_for(lambda: stream.state == "playing" and stream.attempts == 2, timeout=5)
    await wait_for(lambda: cam.byes_received == 1)  # the first dialog was hung up
    assert_clip_frames(await frames_of(recorder, 30), "h264")
    assert stream.last_error == "internal error: RuntimeError: injected fault"


@pytest.mark.parametrize("media_bind", [None, "127.0.0.1"])
async def test_a_media_ip_that_is_not_ours_binds_the_sip_host_or_media_bind(
    live: Setup, caplog: pytest.LogCaptureFixture, media_bind: str | None,
) -> None:
    """node.media_ip behind 1:1 NAT (here TEST-NET, no address of this host): RTP binds
    node.media_bind, or else the SIP host with a warning, and streams play (tcp-active: the
    node connects, so the address in its offer does not matter)."""
    node: dict[str, Any] = {"node.media_ip": "192.0.2.10"}
    if media_bind is not None:
        node["node.media_bind"] = media_bind
    running, cam = await live(node, transport="tcp")
    hub = running.node.media
    assert hub.media_bind_host == "127.0.0.1"
    warned = [r for r in caplog.records if "192.0.2.10 is not an address of this host" in
              r.message]
    assert len(warned) == (media_bind is None)
    queue = FrameQueue()
    stream = await hub.subscribe(cam.channel_ids[0], queue, transport="tcp-active")
    assert_clip_frames(await frames_of(queue, 10), "h264")
    receiver = stream.receiver
    if isinstance(receiver, RemoteReceiver):  # bound here, passed to a media worker
        assert receiver.bound == ("127.0.0.1", receiver.port)
    else:
        assert isinstance(receiver, TcpRtpReceiver) and receiver.server is not None
        assert receiver.server.sockets[0].getsockname() == ("127.0.0.1", receiver.port)
