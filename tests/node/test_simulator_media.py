"""The simulated camera as a media source: INVITE answers and paced PS over RTP, on loopback.

A small platform (a `SipEndpoint` that accepts the camera's REGISTER) sends the INVITEs a node
sends (`play_offer`, Subject), ACKs and BYEs through `Dialog`, and receives with the node's own
receivers (`UdpRtpReceiver`, `TcpRtpReceiver` in both roles) into `MediaIngest`. What comes out
must be the clip's access units, byte for byte and in order, with continuous RTP sequence
numbers and timestamps, across the point where the clip starts over.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from rtp.nal import iter_nal_units
from sensing_node.__main__ import build_parser
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.media import Clip, MediaSender, load_clip
from sensing_node.transport.rtp import MediaIngest, PortPool, TcpRtpReceiver, UdpRtpReceiver
from sensing_node.transport.sip import SipEndpoint
from sip.dialog import Dialog
from sip.headers import Headers
from sip.message import Request, Response
from sip.sdp import SessionDescription, build_sdp, parse_sdp, play_offer, subject_header
from sip.transaction import Peer, RequestReceived, TimerValues

from .conftest import free_even_range

HOST = "127.0.0.1"
DEVICE_ID = "34020000001320000001"
NODE_ID = "34020000002000000001"
REALM = NODE_ID[:10]
SSRC = "0200000001"
TRANSPORTS = ["udp", "tcp-passive", "tcp-active"]
CODECS = ["h264", "h265"]
SHORT = {"seconds": 0.4, "gop": 5}  # 10 frames: the clip starts over after 0.4 s


# --- waiting, ports, recording --------------------------------------------------------------


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll until `condition` holds; bounded so that a broken camera fails the test."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def settled(count: Callable[[], int], quiet: float = 0.25) -> int:
    """Wait until `count` stops growing (nothing new for `quiet` seconds, at most 5 s)."""
    last = count()
    for _ in range(int(5.0 / quiet)):
        await asyncio.sleep(quiet)
        if count() == last:
            return last
        last = count()
    raise AssertionError("packets kept coming")




class Recorder(MediaIngest):
    """MediaIngest that also keeps (sequence, timestamp, marker) of every packet."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: list[tuple[int, int, bool]] = []
        self.payload_types: set[int] = set()
        self.largest_payload = 0

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        self.packets.append((seq, ts, marker))
        self.largest_payload = max(self.largest_payload, len(payload))
        super().on_packet(payload, seq, ts, marker)


def watch_payload_types(receiver: UdpRtpReceiver | TcpRtpReceiver, recorder: Recorder) -> None:
    """Note the payload type of each packet the receiver takes in (the sink never sees it)."""
    receive = receiver._receive

    def noting(data: bytes) -> bool:
        recorder.payload_types.add(data[1] & 0x7F)
        return receive(data)

    receiver._receive = noting  # type: ignore[method-assign]


def expected_units(clip: Clip, count: int) -> list[tuple[bytes, int, bool]]:
    """The first `count` frames a looping sender sends: (data, PTS, key frame)."""
    out = []
    for index in range(count):
        loops, position = divmod(index, len(clip.frames))
        data, pts, key = clip.frames[position]
        out.append((data, pts + loops * clip.duration, key))
    return out


def check_stream(recorder: Recorder, clip: Clip, *, minimum: int) -> None:
    """Units are the clip's frames in order; RTP numbering is continuous and per frame."""
    units = recorder.units
    assert len(units) >= minimum
    got = [(unit.data, unit.pts, unit.keyframe) for unit in units]
    assert got == expected_units(clip, len(units))
    assert {unit.codec for unit in units} == {clip.codec}
    step = 90000 // clip.fps
    for (seq, ts, marker), (next_seq, next_ts, _) in zip(
        recorder.packets, recorder.packets[1:], strict=False
    ):
        assert next_seq == (seq + 1) & 0xFFFF
        if next_ts != ts:
            assert marker, "the last packet of a frame carries the marker"
            assert next_ts == (ts + step) & 0xFFFFFFFF
        else:
            assert not marker
    assert recorder.payload_types == {96}


# --- a platform in miniature -----------------------------------------------------------------


@dataclass
class Play:
    """One INVITE sent by the platform and what came of it."""

    request: Request
    response: Response
    peer: Peer
    recorder: Recorder
    receiver: UdpRtpReceiver | TcpRtpReceiver | None
    dialog: Dialog | None = None

    @property
    def answer(self) -> SessionDescription:
        return parse_sdp(self.response.body)


@dataclass
class Platform:
    endpoint: SipEndpoint = field(init=False)
    pool: PortPool = field(default_factory=lambda: PortPool(*free_even_range(40, 30000, 40000)))
    camera_peers: dict[str, Peer] = field(default_factory=dict)
    receivers: list[UdpRtpReceiver | TcpRtpReceiver] = field(default_factory=list)
    cameras: list[SimulatedCamera] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.endpoint = SipEndpoint(self._on_request)

    def _on_request(self, event: RequestReceived) -> None:
        request = event.request
        if request.method == "REGISTER":
            self.camera_peers[request.from_.uri.user or ""] = event.peer
        status = 200 if request.method in ("REGISTER", "MESSAGE") else 405
        self.endpoint.respond(event, Response.for_request(request, status, to_tag="platform"))

    async def camera(self, transport: str = "udp", **knobs: object) -> SimulatedCamera:
        config = CameraConfig(
            server=self.endpoint.local, device_id=DEVICE_ID, password="unused",
            transport=transport, server_id=NODE_ID, **knobs,  # type: ignore[arg-type]
        )
        camera = SimulatedCamera(config)
        self.cameras.append(camera)
        await camera.start(keepalives=False)
        assert camera.registered
        return camera

    def invite_request(self, camera: SimulatedCamera, channel: str, body: bytes,
                       subject: str) -> tuple[Request, Peer]:
        peer = self.camera_peers[camera.device_id]
        headers = Headers()
        headers.add("Via", self.endpoint.via(peer.transport))
        headers.add("From", f"<sip:{NODE_ID}@{REALM}>;tag={os.urandom(4).hex()}")
        headers.add("To", f"<sip:{channel}@{REALM}>")
        headers.add("Call-ID", f"{os.urandom(8).hex()}@{HOST}")
        headers.add("CSeq", "20 INVITE")
        headers.add("Contact", f"<sip:{NODE_ID}@{HOST}:{self.endpoint.local[1]}>")
        headers.add("Subject", subject)
        headers.add("Max-Forwards", "70")
        headers.add("Content-Type", "application/sdp")
        uri = f"sip:{channel}@{peer.host}:{peer.port}"
        return Request(headers=headers, body=body, method="INVITE", uri=uri), peer

    def send(self, request: Request, peer: Peer) -> None:
        """Send outside a transaction (an ACK)."""
        data = request.to_bytes()
        if peer.transport == "udp":
            assert self.endpoint.udp is not None
            self.endpoint.udp.sendto(data, (peer.host, peer.port))
        else:
            connection = self.endpoint.connections[peer]
            assert connection.transport is not None
            connection.transport.write(data)

    async def play(
        self,
        camera: SimulatedCamera,
        transport: str = "udp",
        *,
        channel: str | None = None,
        ssrc: str = SSRC,
        stream_number: int | None = None,
        body: bytes | None = None,
        subject: str | None = None,
        ack: bool = True,
    ) -> Play:
        """INVITE like the node does, ACK a 200, connect for tcp-active."""
        channel = channel or camera.channel_ids[0]
        recorder = Recorder()
        receiver: UdpRtpReceiver | TcpRtpReceiver
        if transport == "udp":
            receiver = await UdpRtpReceiver.open(HOST, self.pool, recorder)
            port = receiver.port
        else:
            receiver = TcpRtpReceiver(recorder)
            if transport == "tcp-passive":
                _, port = await receiver.listen_tcp(HOST, self.pool)
            else:
                port = 9  # the node's port means nothing when it connects
        self.receivers.append(receiver)
        watch_payload_types(receiver, recorder)
        receiver.expect()  # from anybody: what the camera sends is under test here
        if body is None:
            offer = play_offer(node_id=NODE_ID, media_ip=HOST, port=port, transport=transport,
                               ssrc=ssrc, channel_id=channel, stream_number=stream_number)
            body = build_sdp(offer)
        request, peer = self.invite_request(
            camera, channel, body, subject or subject_header(channel, ssrc, NODE_ID)
        )
        response = await self.endpoint.request(request, peer)
        play = Play(request, response, peer, recorder, receiver)
        if response.status == 200:
            play.dialog = Dialog.from_2xx(request, response)
            if ack:
                self.send(play.dialog.ack(self.endpoint.via(peer.transport)), peer)
            if transport == "tcp-active":
                answer = play.answer
                assert answer.address is not None and answer.video is not None
                assert isinstance(receiver, TcpRtpReceiver)
                await receiver.connect_tcp(answer.address, answer.video.port)
        return play

    async def bye(self, play: Play) -> Response:
        assert play.dialog is not None
        request = play.dialog.request("BYE", self.endpoint.via(play.peer.transport))
        return await self.endpoint.request(request, play.peer)

    async def close(self) -> None:
        for camera in self.cameras:
            await camera.stop(unregister=False)
        for receiver in self.receivers:
            receiver.close()
        await self.endpoint.close()


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    rig = Platform()
    await rig.endpoint.listen(HOST, 0)
    yield rig
    await rig.close()


# --- the clip -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_clip_key_frames_start_with_parameter_sets_and_an_idr(codec):
    clip = load_clip(codec)
    assert (clip.codec, clip.fps, clip.width, clip.height) == (codec, 25, 640, 360)
    assert len(clip.frames) == 50 and clip.duration == 180000
    assert [pts for _, pts, _ in clip.frames] == [3600 * n for n in range(50)]
    assert [n for n, (_, _, key) in enumerate(clip.frames) if key] == [0, 25]
    for data, _, key in clip.frames:
        assert data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
        types = [nal_type for _, nal_type in iter_nal_units(codec, data)]
        if codec == "h264":
            assert (types[:2] == [7, 8] and 5 in types) if key else set(types) == {1}
        else:
            assert (types[:3] == [32, 33, 34] and 20 in types) if key else set(types) == {1}
    assert load_clip(codec) is clip  # cached
    assert len({data for data, _, _ in clip.frames}) == 50  # the picture moves


def test_clip_arguments_are_checked():
    for bad in ({"codec": "vp8"}, {"width": 641}, {"fps": 0}, {"seconds": 0}):
        with pytest.raises(ValueError):
            load_clip(**bad)  # type: ignore[arg-type]


# --- MediaSender on its own: loops, pacing, transports --------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp-connect", "tcp-listen"])
async def test_sender_loops_the_clip_with_continuous_numbering(transport):
    clip = load_clip("h264", **SHORT)
    pool = PortPool(*free_even_range(4, 30000, 40000))
    recorder = Recorder()
    receiver: UdpRtpReceiver | TcpRtpReceiver
    remote: tuple[str, int] | None = None
    if transport == "udp":
        receiver = await UdpRtpReceiver.open(HOST, pool, recorder)
        remote = (HOST, receiver.port)
    else:
        receiver = TcpRtpReceiver(recorder)
        if transport == "tcp-connect":
            _, port = await receiver.listen_tcp(HOST, pool)
            remote = (HOST, port)
    watch_payload_types(receiver, recorder)
    receiver.expect()
    sender = MediaSender(clip, 0x12345678, transport, remote, first_sequence=65530,
                         payload_max=500)
    try:
        local_port = await sender.prepare()
        assert local_port > 0
        sender.start()
        if transport == "tcp-listen":
            assert isinstance(receiver, TcpRtpReceiver)
            await receiver.connect_tcp(HOST, local_port)
        await until(lambda: len(recorder.units) >= 14)  # into the second pass
        assert sender.streaming
    finally:
        sender.stop()
        receiver.close()
    assert sender.finished.is_set() and not sender.streaming
    check_stream(recorder, clip, minimum=14)
    assert receiver.ssrc == 0x12345678
    assert recorder.packets[0][0] == 65530  # and the sequence wrapped on the way
    assert sender.frames_sent >= 14 and sender.frames_skipped == 0
    assert sender.packets_sent >= len(recorder.packets)
    assert sender.bytes_sent >= receiver.bytes
    assert recorder.largest_payload == 500


async def test_sender_ends_when_the_tcp_receiver_closes():
    clip = load_clip("h264", **SHORT)
    pool = PortPool(*free_even_range(4, 30000, 40000))
    recorder = Recorder()
    receiver = TcpRtpReceiver(recorder)
    receiver.expect()
    _, port = await receiver.listen_tcp(HOST, pool)
    ended: list[MediaSender] = []
    sender = MediaSender(clip, 1, "tcp-connect", (HOST, port), on_finished=ended.append)
    try:
        await sender.prepare()
        sender.start()
        await until(lambda: recorder.units)
        receiver.close()
        await asyncio.wait_for(sender.finished.wait(), 5.0)
    finally:
        sender.stop()
        receiver.close()
    assert ended == [sender]
    assert not sender.streaming


async def test_sender_gives_up_when_nobody_listens():
    clip = load_clip("h264", **SHORT)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    sender = MediaSender(clip, 1, "tcp-connect", (HOST, port))
    sender.connect_retry_s = 0.01
    try:
        await sender.prepare()
        sender.start()
        await asyncio.wait_for(sender.finished.wait(), 5.0)
    finally:
        sender.stop()
    assert sender.frames_sent == 0


async def test_sender_stopped_before_start_never_sends():
    clip = load_clip("h264", **SHORT)
    sender = MediaSender(clip, 1, "udp", (HOST, 9))
    await sender.prepare()
    sender.stop()
    sender.start()
    assert sender.finished.is_set() and sender.frames_sent == 0


# --- the camera answering INVITEs -----------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_invite_streams_the_clip_until_bye(platform, transport, codec):
    camera = await platform.camera(media_codec=codec)
    play = await platform.play(camera, transport)
    assert play.response.status == 200
    answer = play.answer
    video = answer.video
    assert video is not None
    assert answer.session_name == "Play" and answer.address == HOST
    assert answer.ssrc == SSRC and answer.f is not None
    assert answer.f.startswith(f"v/{'2' if codec == 'h264' else '5'}/640x360/25/")
    assert video.formats == [96] and video.rtpmap == {96: "PS/90000"}
    assert video.direction == "sendonly"
    assert play.response.contacts[0].uri.user == camera.channel_ids[0]
    if transport == "udp":
        assert video.proto == "RTP/AVP" and video.setup is None
    else:
        assert video.proto == "TCP/RTP/AVP" and video.connection == "new"
        assert video.setup == ("active" if transport == "tcp-passive" else "passive")
    session = camera.media_sessions[play.request.call_id]
    assert session.channel_id == camera.channel_ids[0]
    assert session.transport == {"udp": "udp", "tcp-passive": "tcp-connect",
                                 "tcp-active": "tcp-listen"}[transport]
    assert session.ssrc == int(SSRC) and session.local_port == video.port

    await until(lambda: len(play.recorder.units) >= 4)
    assert session.acked and session.sender.streaming
    check_stream(play.recorder, load_clip(codec), minimum=4)
    assert play.receiver is not None and play.receiver.ssrc == int(SSRC)

    assert (await platform.bye(play)).status == 200
    assert camera.byes_received == 1 and not camera.media_sessions
    assert session.sender.finished.is_set()
    total = await settled(lambda: len(play.recorder.packets))
    assert total <= session.sender.packets_sent
    assert camera.invites_received == 1


async def test_sip_over_tcp_and_two_channels_at_once(platform):
    camera = await platform.camera("tcp", channels=2)
    first = await platform.play(camera, "udp", channel=camera.channel_ids[0], ssrc="0200000011")
    second = await platform.play(camera, "tcp-passive", channel=camera.channel_ids[1],
                                 ssrc="0200000012")
    assert first.response.status == second.response.status == 200
    await until(lambda: len(first.recorder.units) >= 3 and len(second.recorder.units) >= 3)
    clip = load_clip("h264")
    check_stream(first.recorder, clip, minimum=3)
    check_stream(second.recorder, clip, minimum=3)
    assert first.receiver is not None and first.receiver.ssrc == 200000011
    assert second.receiver is not None and second.receiver.ssrc == 200000012
    assert len(camera.media_sessions) == 2
    assert (await platform.bye(first)).status == 200
    assert list(camera.media_sessions) == [second.request.call_id]
    assert camera.media_sessions[second.request.call_id].sender.streaming


async def test_answer_with_the_cameras_own_ssrc(platform):
    camera = await platform.camera(answer_ssrc="0703001718")
    play = await platform.play(camera)
    assert play.answer.ssrc == "0703001718"
    await until(lambda: play.recorder.units)
    assert play.receiver is not None and play.receiver.ssrc == 703001718


async def test_answer_without_ssrc_sends_with_the_offered_one(platform):
    camera = await platform.camera(answer_ssrc="")
    play = await platform.play(camera)
    assert play.response.status == 200 and play.answer.ssrc is None
    await until(lambda: play.recorder.units)
    assert play.receiver is not None and play.receiver.ssrc == int(SSRC)


async def test_offer_without_ssrc_gets_one_of_the_cameras_domain(platform):
    camera = await platform.camera()
    channel = camera.channel_ids[0]
    offer = play_offer(node_id=NODE_ID, media_ip=HOST, port=9, transport="udp", ssrc=SSRC,
                       channel_id=channel)
    offer.ssrc = None
    play = await platform.play(camera, body=build_sdp(offer), ack=False)
    ssrc = play.answer.ssrc
    assert ssrc is not None and len(ssrc) == 10 and ssrc.startswith("0" + DEVICE_ID[3:8])
    assert camera.media_sessions[play.request.call_id].ssrc == int(ssrc)


async def test_stream_number_is_recorded(platform):
    camera = await platform.camera()
    play = await platform.play(camera, stream_number=1)
    assert camera.media_sessions[play.request.call_id].stream_number == 1
    await until(lambda: play.recorder.units)


@pytest.mark.parametrize("status", [486, 500])
async def test_configured_failure_status(platform, status):
    camera = await platform.camera(invite_status=status)
    play = await platform.play(camera)
    assert play.response.status == status
    assert not camera.media_sessions and camera.invites_received == 1


async def test_unknown_channel_is_404(platform):
    camera = await platform.camera()
    play = await platform.play(camera, channel="34020000001310000099")
    assert play.response.status == 404
    assert not camera.media_sessions


@pytest.mark.parametrize("body", [b"this is not SDP", b"v=0\r\nm=video x RTP/AVP 96\r\n"])
async def test_unparsable_offer_is_400(platform, body):
    camera = await platform.camera()
    play = await platform.play(camera, body=body)
    assert play.response.status == 400


async def test_offer_without_ps_is_488(platform):
    camera = await platform.camera()
    body = (f"v=0\r\no={NODE_ID} 0 0 IN IP4 {HOST}\r\ns=Play\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=video 9 RTP/AVP 98\r\na=recvonly\r\na=rtpmap:98 H264/90000\r\ny={SSRC}\r\n")
    play = await platform.play(camera, body=body.encode())
    assert play.response.status == 488


@pytest.mark.parametrize("transport", ["udp", "tcp-active"])
async def test_send_media_off_answers_but_sends_nothing(platform, transport):
    camera = await platform.camera(send_media=False)
    play = await platform.play(camera, transport)
    assert play.response.status == 200
    session = camera.media_sessions[play.request.call_id]
    await until(lambda: session.acked)
    await asyncio.sleep(0.3)  # several frame intervals
    assert play.receiver is not None and play.receiver.packets == 0
    assert session.sender.frames_sent == 0
    assert (await platform.bye(play)).status == 200


async def test_stop_media_stops_packets_but_keeps_the_dialog(platform):
    camera = await platform.camera()
    play = await platform.play(camera, "tcp-passive")
    await until(lambda: len(play.recorder.units) >= 2)
    camera.stop_media(play.request.call_id)
    total = await settled(lambda: len(play.recorder.packets))
    assert total == camera.media_sessions[play.request.call_id].sender.packets_sent
    assert play.request.call_id in camera.media_sessions
    assert (await platform.bye(play)).status == 200


async def test_no_answer_then_cancel_gets_487(platform):
    camera = await platform.camera(answer_invite=False)
    channel = camera.channel_ids[0]
    offer = play_offer(node_id=NODE_ID, media_ip=HOST, port=9, transport="udp", ssrc=SSRC,
                       channel_id=channel)
    request, peer = platform.invite_request(camera, channel, build_sdp(offer),
                                            subject_header(channel, SSRC, NODE_ID))
    invite = platform.endpoint.request(request, peer)
    await until(lambda: camera.invites_received == 1)
    await asyncio.sleep(0.1)
    assert not invite.done()  # not even 100 Trying: the node's Timer B will fire
    assert platform.endpoint.stats.responses_received[100] == 0
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "Max-Forwards"):
        headers.add(name, request.headers.get(name) or "")
    headers.add("CSeq", f"{request.cseq[0]} CANCEL")
    cancel = Request(headers=headers, method="CANCEL", uri=request.uri)
    # The transaction layer hands responses to CANCEL up without a key, so the CANCEL goes out
    # on its own and its 200 is seen in the counters.
    platform.send(cancel, peer)
    assert (await asyncio.wait_for(invite, 5.0)).status == 487
    await until(lambda: platform.endpoint.stats.responses_received[200] == 1)
    assert not camera.media_sessions


async def test_bye_for_an_unknown_dialog_is_481(platform):
    camera = await platform.camera()
    play = await platform.play(camera)
    assert (await platform.bye(play)).status == 200
    assert (await platform.bye(play)).status == 481
    assert camera.byes_received == 2


@pytest.mark.parametrize("delay", [0.0, 0.2])
async def test_100_trying_comes_before_the_answer(platform, delay):
    camera = await platform.camera(answer_delay_s=delay)
    play = await platform.play(camera)
    assert play.response.status == 200
    assert platform.endpoint.stats.responses_received[100] >= 1  # again per INVITE resent
    await until(lambda: play.recorder.units)


async def test_200_is_repeated_until_ack_then_dropped(platform):
    camera = await platform.camera()
    camera.endpoint.tx.timers = TimerValues(t1=0.01, t2=0.04)
    play = await platform.play(camera, ack=False)
    await until(lambda: play.request.call_id not in camera.media_sessions)
    assert platform.endpoint.stats.responses_received[200] >= 3
    assert play.receiver is not None and play.receiver.packets == 0


async def test_same_subject_replaces_the_running_stream(platform):
    camera = await platform.camera()
    first = await platform.play(camera)
    await until(lambda: first.recorder.units)
    second = await platform.play(camera)
    assert list(camera.media_sessions) == [second.request.call_id]
    await until(lambda: second.recorder.units)
    assert (await platform.bye(first)).status == 481


async def test_camera_stop_stops_every_sender(platform):
    camera = await platform.camera(channels=2)
    plays = [
        await platform.play(camera, channel=channel, ssrc=f"020000010{n}")
        for n, channel in enumerate(camera.channel_ids)
    ]
    await until(lambda: all(play.recorder.units for play in plays))
    senders = [session.sender for session in camera.media_sessions.values()]
    await camera.stop(unregister=False)
    assert all(sender.finished.is_set() for sender in senders)
    assert not camera.media_sessions


def test_cli_takes_the_codec():
    args = build_parser().parse_args(
        ["simulate-camera", "--server", "127.0.0.1:5060", "--id", DEVICE_ID, "--password",
         "x", "--codec", "h265"]
    )
    assert args.codec == "h265"
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["simulate-camera", "--server", "h:1", "--id", "1", "--password", "x",
             "--codec", "vp8"]
        )


@pytest.mark.parametrize("codec", CODECS)
async def test_received_program_stream_decodes(codec):
    """What arrives is a PS stream FFmpeg plays: every frame decodes at the clip's size."""
    import av

    clip = load_clip(codec, **SHORT)
    pool = PortPool(*free_even_range(2, 30000, 40000))
    recorder = Recorder()
    receiver = await UdpRtpReceiver.open(HOST, pool, recorder)
    receiver.expect()
    sender = MediaSender(clip, 7, "udp", (HOST, receiver.port))
    try:
        await sender.prepare()
        sender.start()
        await until(lambda: len(recorder.units) >= 12)
    finally:
        sender.stop()
        receiver.close()
    stream = io.BytesIO(b"".join(unit.ps_bytes for unit in recorder.units))
    with av.open(stream, format="mpeg") as container:
        pictures = [(p.width, p.height) for p in container.decode(video=0)]
    assert len(pictures) >= 11
    assert set(pictures) == {(clip.width, clip.height)}
