"""The simulated camera's own recordings: RecordInfo, Playback and Download, MANSRTSP, on loopback.

A node in miniature (a `SipEndpoint` that takes the camera's REGISTER and keeps the MESSAGEs it
sends) asks the camera what it recorded and plays ranges back the way the node will when it
falls back to a device (`cascade.device_fallback`): Query/RecordInfo answered in parts that each
wait for the previous 200, Playback and Download INVITEs answered with their `s=` and `t=`, the
clip's frames arriving over RTP for the range's length at the asked pace, then MediaStatus 121
in the dialog, and MANSRTSP INFO answered with its CSeq.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensing_node.sim.camera import CHINA_TZ, CameraConfig, RangeSender, SimulatedCamera
from sensing_node.sim.media import Clip
from sensing_node.transport.rtp import MediaIngest, PortPool, UdpRtpReceiver
from sensing_node.transport.sip import SipEndpoint
from sip import manscdp
from sip.dialog import Dialog
from sip.headers import Headers
from sip.mansrtsp import MansrtspRequest, build_mansrtsp, parse_mansrtsp_reply
from sip.message import Request, Response
from sip.playback import parse_media_status
from sip.sdp import build_sdp, parse_sdp, play_offer, subject_header
from sip.transaction import Peer, RequestReceived

from .conftest import free_even_range

HOST = "127.0.0.1"
DEVICE_ID = "34020000001320000001"
NODE_ID = "34020000002000000001"
REALM = NODE_ID[:10]
SSRC = "1200000001"
BASE = datetime(2026, 12, 6, 10, 0, tzinfo=CHINA_TZ)
T0 = int(BASE.timestamp())
# Ten minutes recorded every quarter of an hour from 10:00 to 12:55, Beijing time.
QUARTERS = tuple((T0 + 900.0 * k, T0 + 900.0 * k + 600) for k in range(12))


# --- the node in miniature -------------------------------------------------------------------


class Frames(MediaIngest):
    """The clip's frames as they come, with the loop time of the first and the last packet."""

    def __init__(self) -> None:
        super().__init__()
        self.packets = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def on_packet(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        now = asyncio.get_running_loop().time()
        self.first_at = self.first_at if self.first_at is not None else now
        self.last_at = now
        self.packets += 1
        super().on_packet(payload, seq, ts, marker)


class MiniNode:
    """Takes REGISTERs, answers MESSAGEs 200 (or holds the answers while `hold` is set) and
    keeps each MESSAGE with the loop time it came at."""

    def __init__(self) -> None:
        self.endpoint = SipEndpoint(self._on_request)
        self.peer: Peer | None = None
        self.messages: asyncio.Queue[tuple[Request, float]] = asyncio.Queue()
        self.hold = False
        self.held: list[RequestReceived] = []
        self.pool = PortPool(*free_even_range(20, 30000, 40000))
        self.receivers: list[UdpRtpReceiver] = []
        self.cameras: list[SimulatedCamera] = []

    def _on_request(self, event: RequestReceived) -> None:
        request = event.request
        if request.method == "REGISTER":
            self.peer = event.peer
        if request.method == "MESSAGE":
            self.messages.put_nowait((request, self.endpoint.loop.time()))
            if self.hold:
                self.held.append(event)
                return
        status = 200 if request.method in ("REGISTER", "MESSAGE") else 405
        self.endpoint.respond(event, Response.for_request(request, status, to_tag="node"))

    def release(self) -> None:
        """Answer the held MESSAGEs."""
        self.hold = False
        for event in self.held:
            self.endpoint.respond(event, Response.for_request(event.request, 200, to_tag="node"))
        self.held.clear()

    async def next_message(self, timeout: float = 5.0) -> tuple[Request, float]:
        return await asyncio.wait_for(self.messages.get(), timeout)

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

    def _request(self, method: str, to_user: str, body: bytes, content_type: str) -> Request:
        assert self.peer is not None
        headers = Headers()
        headers.add("Via", self.endpoint.via(self.peer.transport))
        headers.add("From", f"<sip:{NODE_ID}@{REALM}>;tag={os.urandom(4).hex()}")
        headers.add("To", f"<sip:{to_user}@{REALM}>")
        headers.add("Call-ID", f"{os.urandom(8).hex()}@{HOST}")
        headers.add("CSeq", f"20 {method}")
        headers.add("Contact", f"<sip:{NODE_ID}@{HOST}:{self.endpoint.local[1]}>")
        headers.add("Max-Forwards", "70")
        headers.add("Content-Type", content_type)
        uri = f"sip:{to_user}@{self.peer.host}:{self.peer.port}"
        return Request(headers=headers, body=body, method=method, uri=uri)

    async def query(self, body: bytes) -> Response:
        assert self.peer is not None
        request = self._request("MESSAGE", DEVICE_ID, body, "Application/MANSCDP+xml")
        return await self.endpoint.request(request, self.peer)

    async def invite(
        self, channel: str, session: str, start: int, stop: int, *,
        download_speed: int | None = None, ack: bool = True,
    ) -> Play:
        """INVITE for a recorded range, media over UDP to a receiver of ours; ACK a 200."""
        assert self.peer is not None
        frames = Frames()
        receiver = await UdpRtpReceiver.open(HOST, self.pool, frames)
        self.receivers.append(receiver)
        receiver.expect()
        offer = play_offer(node_id=NODE_ID, media_ip=HOST, port=receiver.port, transport="udp",
                           ssrc=SSRC, channel_id=channel, session=session, start=start,
                           stop=stop, download_speed=download_speed)  # fmt: skip
        request = self._request("INVITE", channel, build_sdp(offer), "application/sdp")
        request.headers.add("Subject", subject_header(channel, SSRC, NODE_ID))
        response = await self.endpoint.request(request, self.peer)
        play = Play(self, request, response, frames)
        if response.status == 200 and ack:
            play.dialog = Dialog.from_2xx(request, response)
            self.endpoint.send(play.dialog.ack(self.endpoint.via(self.peer.transport)), self.peer)
            play.acked_at = self.endpoint.loop.time()
        return play

    async def close(self) -> None:
        for camera in self.cameras:
            await camera.stop(unregister=False)
        for receiver in self.receivers:
            receiver.close()
        await self.endpoint.close()


class Play:
    def __init__(self, node: MiniNode, request: Request, response: Response,
                 frames: Frames) -> None:
        self.node = node
        self.request = request
        self.response = response
        self.frames = frames
        self.dialog: Dialog | None = None
        self.acked_at = 0.0

    async def in_dialog(self, method: str, body: bytes = b"",
                        content_type: str | None = None) -> Response:
        assert self.dialog is not None and self.node.peer is not None
        request = self.dialog.request(method, self.node.endpoint.via(self.node.peer.transport),
                                      body, content_type)
        return await self.node.endpoint.request(request, self.node.peer)

    async def info(self, body: bytes) -> Response:
        return await self.in_dialog("INFO", body, "Application/MANSRTSP")


@pytest.fixture
async def node() -> AsyncIterator[MiniNode]:
    rig = MiniNode()
    await rig.endpoint.listen(HOST, 0)
    yield rig
    await rig.close()


def record_query(sn: int, channel: str, start: datetime, end: datetime) -> bytes:
    return manscdp.record_info_query(sn, channel, start, end, tz=CHINA_TZ)


async def record_parts(node: MiniNode, count: int) -> list[manscdp.ManscdpMessage]:
    parts = []
    for _ in range(count):
        request, _ = await node.next_message()
        parts.append(manscdp.parse_manscdp(request.body))
    return parts


async def quiet(frames: Frames, seconds: float = 0.3) -> int:
    """The packet count once nothing came for `seconds` (at most 5 s of waiting)."""
    last = frames.packets
    for _ in range(int(5.0 / seconds)):
        await asyncio.sleep(seconds)
        if frames.packets == last:
            return last
        last = frames.packets
    raise AssertionError("packets kept coming")


def expected_units(clip: Clip, count: int) -> list[tuple[bytes, int, bool]]:
    """The first `count` frames of the clip played in a loop: (data, PTS, key frame)."""
    out = []
    for index in range(count):
        loops, position = divmod(index, len(clip.frames))
        data, pts, key = clip.frames[position]
        out.append((data, pts + loops * clip.duration, key))
    return out


# --- RecordInfo ------------------------------------------------------------------------------


async def test_record_info_in_parts_each_after_the_previous_200(node):
    camera = await node.camera(records=QUARTERS, record_items_per_message=5)
    channel = camera.channel_ids[0]
    node.hold = True
    start, end = BASE + timedelta(minutes=5), BASE + timedelta(hours=3)
    assert (await node.query(record_query(77, channel, start, end))).status == 200
    first, _ = await node.next_message()
    await asyncio.sleep(0.5)  # the second part waits for our 200 to the first
    assert node.messages.empty()
    node.release()
    parts = [manscdp.parse_manscdp(first.body), *await record_parts(node, 2)]
    assert camera.record_queries == 1

    assert [(p.root, p.cmd_type, p.sn, p.device_id) for p in parts] == \
        [("Response", "RecordInfo", 77, channel)] * 3
    assert [p.sum_num for p in parts] == [12, 12, 12]
    assert [p.list_num for p in parts] == [5, 5, 2]
    assert {p.get("Name") for p in parts} == {"Simulated IPC 通道1"}
    items = [item for part in parts for item in part.items]
    # The first recording (10:00-10:10) is clipped to the range's start, 10:05.
    assert items[0]["StartTime"] == "2026-12-06T10:05:00"
    assert items[0]["EndTime"] == "2026-12-06T10:10:00"
    assert items[0]["FilePath"] == "/record/ch1/20261206-1000.mp4"
    assert [item["StartTime"] for item in items[1:]] == [
        f"2026-12-06T{10 + k // 4:02d}:{15 * (k % 4):02d}:00" for k in range(1, 12)
    ]
    assert items[-1]["EndTime"] == "2026-12-06T12:55:00"
    for item in items:
        assert item["DeviceID"] == channel
        assert (item["Secrecy"], item["Type"], item["RecorderID"]) == ("0", "time", DEVICE_ID)
        assert item["FilePath"].startswith("/record/ch1/20261206-")
        assert "Address" in item and item["Name"] == "Simulated IPC 通道1"
        # The wire times are the device's wall clock, UTC+8: they read back as the records.
        got = (manscdp.parse_gb_time(item["StartTime"], CHINA_TZ).timestamp(),
               manscdp.parse_gb_time(item["EndTime"], CHINA_TZ).timestamp())
        assert any(s <= got[0] < got[1] <= e for s, e in QUARTERS)


async def test_record_info_clips_the_end_in_the_camera_zone(node):
    camera = await node.camera(records=QUARTERS[:2], tz=UTC)
    channel = camera.channel_ids[0]
    # 10:00-10:20 Beijing is 02:00-02:20 on a camera whose clock runs on UTC; the range ends
    # inside the second recording.
    start = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
    body = manscdp.record_info_query(5, channel, start, start + timedelta(minutes=20),
                                     tz=UTC)
    await node.query(body)
    (part,) = await record_parts(node, 1)
    assert part.sum_num == 2
    assert [(i["StartTime"], i["EndTime"], i["FilePath"]) for i in part.items] == [
        ("2026-12-06T02:00:00", "2026-12-06T02:10:00", "/record/ch1/20261206-0200.mp4"),
        ("2026-12-06T02:15:00", "2026-12-06T02:20:00", "/record/ch1/20261206-0215.mp4"),
    ]


async def test_record_info_with_nothing_in_the_range_is_an_empty_answer(node):
    camera = await node.camera(records=QUARTERS)
    channel = camera.channel_ids[0]
    # the gap between two recordings, the day before, and a channel of another device
    for sn, (who, start, end) in enumerate([
        (channel, BASE + timedelta(minutes=11), BASE + timedelta(minutes=14)),
        (channel, BASE - timedelta(days=1), BASE - timedelta(hours=1)),
        ("34020000001310009999", BASE, BASE + timedelta(hours=3)),
    ], 1):
        await node.query(record_query(sn, who, start, end))
        (part,) = await record_parts(node, 1)
        assert (part.sn, part.device_id, part.sum_num, part.items) == (sn, who, 0, [])
    assert camera.record_queries == 3


async def test_a_camera_without_records_answers_sum_num_0(node):
    camera = await node.camera()
    await node.query(record_query(3, camera.channel_ids[0], BASE, BASE + timedelta(hours=1)))
    (part,) = await record_parts(node, 1)
    assert (part.sum_num, part.list_num, part.items) == (0, None, [])


_GB_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S"),
              st.datetimes(datetime(2026, 12, 5), datetime(2026, 12, 8))),
)


@given(start=_GB_TEXT, end=_GB_TEXT, per_message=st.integers(1, 20))
def test_record_info_bodies_for_any_range_text(start, end, per_message):
    camera = SimulatedCamera(CameraConfig(("127.0.0.1", 5060), DEVICE_ID, "x", records=QUARTERS,
                                          record_items_per_message=per_message))
    channel = camera.channel_ids[0]
    query = manscdp.ManscdpMessage("Query", "RecordInfo", 9, channel,
                                   {"StartTime": start, "EndTime": end})
    parts = [manscdp.parse_manscdp(body) for body in camera.record_info_bodies(query)]
    items = [item for part in parts for item in part.items]
    assert {(p.sn, p.device_id, p.sum_num) for p in parts} == {(9, channel, len(items))}
    assert all(len(p.items) <= per_message for p in parts)
    try:
        low = manscdp.parse_gb_time(start, CHINA_TZ).timestamp()
        high = manscdp.parse_gb_time(end, CHINA_TZ).timestamp()
    except (ValueError, OverflowError):
        assert items == []
        return
    assert len(items) == sum(1 for s, e in QUARTERS if s < high and e > low)
    for item in items:
        first = manscdp.parse_gb_time(item["StartTime"], CHINA_TZ).timestamp()
        last = manscdp.parse_gb_time(item["EndTime"], CHINA_TZ).timestamp()
        assert low - 1 < first <= last <= high


def test_records_are_checked():
    for bad in ({"records": ((T0 + 10.0, T0 + 5.0),)}, {"records": ((0.0, 1.0),)},
                {"records": ((T0, float("inf")),)}, {"record_items_per_message": 0}):
        with pytest.raises(ValueError):
            SimulatedCamera(CameraConfig(("127.0.0.1", 5060), DEVICE_ID, "x", **bad))


# --- Playback and Download -------------------------------------------------------------------


def check_end_of_range(play: Play, camera: SimulatedCamera, message: Request) -> None:
    """MediaStatus 121 in the INVITE's dialog, from the camera as the callee."""
    invite, answer = play.request, play.response
    assert message.method == "MESSAGE"
    assert message.call_id == invite.call_id
    assert message.from_.tag == answer.to.tag and message.from_.tag
    assert message.to.tag == invite.from_.tag
    assert message.uri == str(invite.contacts[0].uri)
    assert message.cseq[1] == "MESSAGE"
    status = parse_media_status(message.body)
    assert (status.notify_type, status.device_id) == (121, camera.channel_ids[0])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_playback_of_a_recorded_range_ends_with_media_status(node, transport):
    camera = await node.camera(transport, records=QUARTERS)
    channel = camera.channel_ids[0]
    start = T0 + 60
    play = await node.invite(channel, "Playback", start, start + 1)
    assert play.response.status == 200
    answer = parse_sdp(play.response.body)
    assert (answer.session_name, answer.timing, answer.uri) == \
        ("Playback", (start, start + 1), f"{channel}:0")
    assert answer.ssrc == SSRC

    message, at = await node.next_message(timeout=10)
    elapsed = at - play.acked_at
    check_end_of_range(play, camera, message)
    assert 0.9 <= elapsed < 5.0, elapsed  # the range is one second long
    assert camera.playbacks == [(channel, start, start + 1, "Playback")]
    session = camera.media_sessions[play.request.call_id]
    assert isinstance(session.sender, RangeSender)
    assert session.sender.frames_sent == 25  # one second at 25 frames/s, then nothing more
    count = await quiet(play.frames)
    assert count == session.sender.packets_sent
    clip = session.sender.clip
    got = [(u.data, u.pts, u.keyframe) for u in play.frames.units]
    assert got == expected_units(clip, 25)

    assert (await play.in_dialog("BYE")).status == 200
    assert camera.media_sessions == {}
    assert camera.media_statuses_sent == 1


async def test_download_at_speed_4_takes_a_quarter_of_the_range(node):
    camera = await node.camera(records=QUARTERS)
    channel = camera.channel_ids[0]
    start = T0 + 120
    play = await node.invite(channel, "Download", start, start + 2, download_speed=4)
    assert play.response.status == 200
    answer = parse_sdp(play.response.body)
    assert (answer.session_name, answer.timing) == ("Download", (start, start + 2))
    message, at = await node.next_message(timeout=10)
    check_end_of_range(play, camera, message)
    elapsed = at - play.acked_at
    assert 0.45 <= elapsed < 1.5, elapsed  # 2 s of media at 4x: 0.5 s, far from 2 s
    session = camera.media_sessions[play.request.call_id]
    assert session.sender.frames_sent == 50
    await quiet(play.frames)
    assert len(play.frames.units) == 50
    # all the media time of the range, not a quarter of it
    assert play.frames.units[-1].pts - play.frames.units[0].pts == 49 * 3600
    assert camera.playbacks == [(channel, start, start + 2, "Download")]
    assert (await play.in_dialog("BYE")).status == 200


async def test_a_range_outside_the_records_gets_404(node):
    camera = await node.camera(records=QUARTERS)
    channel = camera.channel_ids[0]
    gap = T0 + 660  # 10:11, between the first two recordings
    for session, start, stop in [("Playback", gap, gap + 60), ("Download", T0 - 7200, T0),
                                 ("Playback", T0 + 86400, T0 + 86460)]:
        play = await node.invite(channel, session, start, stop, download_speed=4)
        assert play.response.status == 404, (session, start)
    assert camera.playbacks == [] and camera.media_sessions == {}
    # a range that only touches one recording is served
    play = await node.invite(channel, "Playback", gap - 61, gap + 60)
    assert play.response.status == 200
    assert camera.playbacks == [(channel, gap - 61, gap + 60, "Playback")]
    assert (await play.in_dialog("BYE")).status == 200


async def test_without_records_a_playback_streams_as_before(node):
    camera = await node.camera()
    channel = camera.channel_ids[0]
    play = await node.invite(channel, "Playback", T0, T0 + 1)
    assert play.response.status == 200
    await asyncio.sleep(1.5)  # longer than the range: no end of it
    assert node.messages.empty()
    session = camera.media_sessions[play.request.call_id]
    assert not isinstance(session.sender, RangeSender) and session.sender.streaming
    assert camera.playbacks == []
    assert (await play.in_dialog("BYE")).status == 200


# --- MANSRTSP ---------------------------------------------------------------------------------


def mansrtsp(method: str, cseq: int, **values: float) -> bytes:
    return build_mansrtsp(MansrtspRequest(method, cseq, **values))


async def test_info_is_answered_and_pause_holds_the_range(node):
    camera = await node.camera(records=QUARTERS)
    channel = camera.channel_ids[0]
    play = await node.invite(channel, "Playback", T0 + 300, T0 + 302)
    assert play.response.status == 200
    while play.frames.packets == 0:
        await asyncio.sleep(0.01)

    response = await play.info(mansrtsp("PAUSE", 1))
    paused_at = node.endpoint.loop.time()
    assert response.status == 200
    assert response.headers.get("Content-Type") == "Application/MANSRTSP"
    reply = parse_mansrtsp_reply(response.body)
    assert (reply.status, reply.cseq) == (200, 1)
    held = await quiet(play.frames)
    await asyncio.sleep(0.3)
    assert play.frames.packets == held  # nothing while paused
    sender = camera.media_sessions[play.request.call_id].sender
    assert isinstance(sender, RangeSender) and sender.paused
    position = sender.position
    assert 0 < position < 2

    response = await play.info(mansrtsp("PLAY", 2))  # Range: npt=now-
    resumed_at = node.endpoint.loop.time()
    assert response.status == 200 and parse_mansrtsp_reply(response.body).cseq == 2
    message, at = await node.next_message(timeout=10)
    check_end_of_range(play, camera, message)
    # the range's two seconds of media, plus the pause
    assert at - play.acked_at >= 2.0 - 0.1 + (resumed_at - paused_at) - 0.1
    assert sender.frames_sent == 50
    assert [(r.method, r.cseq) for r in camera.infos] == [("PAUSE", 1), ("PLAY", 2)]
    assert (await play.in_dialog("BYE")).status == 200


async def test_info_seek_and_scale(node):
    camera = await node.camera(records=QUARTERS)
    channel = camera.channel_ids[0]
    play = await node.invite(channel, "Playback", T0 + 400, T0 + 410)
    assert play.response.status == 200
    sender = camera.media_sessions[play.request.call_id].sender
    assert isinstance(sender, RangeSender)
    while play.frames.packets == 0:
        await asyncio.sleep(0.01)
    # seek to 9.5 s into the ten seconds: from the key frame at 9 s, at twice the speed
    response = await play.info(mansrtsp("PLAY", 7, start=9.5, scale=2.0))
    assert response.status == 200
    assert sender.speed == 2.0
    message, _ = await node.next_message(timeout=10)
    check_end_of_range(play, camera, message)
    await quiet(play.frames)
    pts = [unit.pts for unit in play.frames.units]
    assert 9 * 90000 in pts and pts[-1] == 249 * 3600  # the range's last frame
    keyframe_after_seek = next(u for u in play.frames.units if u.pts == 9 * 90000)
    assert keyframe_after_seek.keyframe
    # past the end of the range, and backwards: refused with the MANSRTSP status
    for body, status in [(mansrtsp("PLAY", 8, start=10.0), 457),
                         (mansrtsp("PLAY", 9, scale=-1.0), 551)]:
        response = await play.info(body)
        assert response.status == 400
        assert parse_mansrtsp_reply(response.body).status == status
    assert (await play.in_dialog("BYE")).status == 200


async def test_bad_info_gets_400_with_the_reason(node):
    camera = await node.camera(records=QUARTERS)
    channel = camera.channel_ids[0]
    play = await node.invite(channel, "Playback", T0 + 500, T0 + 502)
    assert play.response.status == 200
    response = await play.info(b"FLY RTSP/1.0\r\nCSeq: 4\r\n")
    assert response.status == 400
    reply = parse_mansrtsp_reply(response.body)
    assert (reply.status, reply.cseq) == (501, 4)
    assert "FLY" in reply.reason
    response = await play.info(b"PLAY RTSP/1.0\r\n")  # no CSeq
    assert response.status == 400 and parse_mansrtsp_reply(response.body).status == 400
    response = await play.in_dialog("INFO", b"<xml/>", "Application/MANSCDP+xml")
    assert response.status == 415
    assert camera.infos == []
    assert (await play.in_dialog("BYE")).status == 200
    # the dialog is gone: a late INFO is 481
    assert (await play.info(mansrtsp("PLAY", 5))).status == 481
