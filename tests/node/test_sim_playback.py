"""The simulated upper platform plays back and downloads recorded ranges.

Against it stands a small lower side built of the real pieces: it registers with
`sip.registration.UpstreamRegistration` (the driver of test_sim_upstream), reads the INVITE
with `sip.relay.parse_play_request`, answers with `sip.relay.play_answer`, sends the frames
that `recorder.playback.PlaybackReader` reads from a recording the real `SegmentWriter` made
(two segments, a gap, two more), as RTP over UDP or TCP, then the MediaStatus 121 MESSAGE in
the dialog, and answers INFO with a MANSRTSP reply. What the platform received is compared with
the store (`sim.recorded.stored_range`) and, independently, decoded with PyAV: the frame
numbers drawn in the pictures must be the recorded ones, in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.index import RecordIndex
from recorder.playback import Frame, PlaybackReader
from recorder.segments import SegmentWriter
from rtp.framing import frame as rfc4571
from rtp.packet import build_rtp
from sensing_node import __main__ as cli
from sensing_node.sim import recorded
from sensing_node.sim.recorded import PlaybackPlan, parse_time, stored_range
from sensing_node.sim.upstream import (
    PlatformConfig,
    SimulatedUpstream,
    UpstreamError,
    UpstreamSession,
)
from sensing_node.sim.upstream_run import run_upstream
from sensing_node.transport.sip import SipEndpoint
from sip import manscdp
from sip.dialog import Dialog
from sip.mansrtsp import MansrtspRequest, mansrtsp_reply, parse_mansrtsp
from sip.message import Request, Response
from sip.playback import media_status
from sip.relay import PlayRequest, parse_play_request, play_answer
from sip.transaction import RequestReceived
from tests.recorder.media import CHANNEL, FPS, T0, TZ, frame_number, timed, units

from .conftest import wait_for
from .test_sim_upstream import NODE_ID, PASSWORD, PLATFORM, REALM, RegistrationDriver

HOST = "127.0.0.1"
GAP_S = 10.0
FIRST_COUNTER = 25  # gb_h264_zlm.ps draws frame counter 25 in its first frame
# t= is whole seconds: from frame 71 (the keyframe before it is 50) to just before frame 147
# after the gap (frames 100-199 are recorded from T0 + 4 + GAP_S on).
START = math.floor(T0) + 3
END = math.floor(T0) + 16
SENT = list(range(50, 148))  # the video frames the range sends
PAYLOAD = 1400


# ----- a recording and the lower side that plays it ----------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames 0-99 in two 2-second segments, a 10 s gap, frames 100-199 in two more."""
    root = tmp_path_factory.mktemp("recordings")
    items = units("gb_h264_zlm.ps")
    with RecordIndex(root / "index.sqlite3") as index:
        writer = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
        for unit, wall in timed(items[:100], T0):
            writer.write(unit, wall)
        later = T0 + 100 / FPS + GAP_S
        writer.gap(T0 + 100 / FPS, later, "camera offline")
        for unit, wall in timed(items[100:200], later):
            writer.write(unit, wall)
        writer.close()
        assert len(index.segments(CHANNEL)) == 4 and len(index.gaps(CHANNEL)) == 1
    return root


@dataclass
class LowerSide:
    """The node's part of a playback, as far as these tests need it."""

    driver: RegistrationDriver
    store: Path
    speed: float = 20.0  # times real time, whatever the INVITE asked: the tests stay short
    filesize: int | None = 123456
    info_status: int = 200
    reply_cseq_offset: int = 0  # a reply naming another CSeq
    tamper: bool = False  # leave out one frame's bytes
    invites: list[Request] = field(default_factory=list)
    plays: list[PlayRequest] = field(default_factory=list)
    infos: list[Request] = field(default_factory=list)
    record_queries: list[manscdp.ManscdpMessage] = field(default_factory=list)
    byes: list[Request] = field(default_factory=list)
    status_answers: list[Response] = field(default_factory=list)
    dialogs: dict[str, Dialog] = field(default_factory=dict)
    send_media: bool = True
    send_media_status: bool = True
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.Server | None = None  # where the platform connects (we answer passive)
    accepted: asyncio.Queue[asyncio.StreamWriter] = field(default_factory=asyncio.Queue)

    async def listen(self) -> None:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.put_nowait(writer)

        self.server = await asyncio.start_server(accept, HOST, 0)

    @property
    def endpoint(self) -> SipEndpoint:
        return self.driver.endpoint

    def on_request(self, event: RequestReceived) -> None:
        request = event.request
        if request.method == "INVITE":
            self._invite(event)
        elif request.method == "ACK" and self.send_media:
            play = next(p for p, r in zip(self.plays, self.invites, strict=True)
                        if r.call_id == request.call_id)
            task = asyncio.get_running_loop().create_task(self._send(play, request.call_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif request.method == "INFO":
            self.infos.append(request)
            cseq = parse_mansrtsp(request.body).cseq + self.reply_cseq_offset
            answer = Response.for_request(request, self.info_status)
            answer.headers.add("Content-Type", "Application/MANSRTSP")
            answer.body = mansrtsp_reply(cseq, self.info_status)
            self.endpoint.respond(event, answer)
        else:
            if request.method == "BYE":
                self.byes.append(request)
            self.endpoint.respond(event, Response.for_request(request, 200))
            if request.method == "MESSAGE":
                query = manscdp.parse_manscdp(request.body)
                if query.cmd_type in ("Catalog", "RecordInfo"):
                    task = asyncio.get_running_loop().create_task(self._answer(query))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    async def _answer(self, query: manscdp.ManscdpMessage) -> None:
        """A catalog of the one channel; for RecordInfo one item per run of adjacent
        segments. In parts of one item, each after the previous part's 200."""
        if query.cmd_type == "Catalog":
            await self._respond(query, [{"DeviceID": CHANNEL, "Name": "camera",
                                         "Status": "ON"}], "DeviceList", [])
            return
        self.record_queries.append(query)
        with RecordIndex(self.store / "index.sqlite3", read_only=True) as index:
            rows = index.segments(query.device_id)
        runs: list[list[float]] = []
        for row in rows:
            if runs and row.start_wall - runs[-1][1] < 0.1:
                runs[-1][1] = row.end_wall
            else:
                runs.append([row.start_wall, row.end_wall])
        items = [{"DeviceID": query.device_id, "Name": "camera",
                  "StartTime": manscdp.format_gb_time(datetime.fromtimestamp(a, TZ)),
                  "EndTime": manscdp.format_gb_time(datetime.fromtimestamp(b, TZ)),
                  "FilePath": f"run{n}", "Type": "time"} for n, (a, b) in enumerate(runs)]
        await self._respond(query, items, "RecordList", [("Name", "camera")])

    async def _respond(self, query: manscdp.ManscdpMessage, items: list[dict[str, str]],
                       list_name: str, fields: list[tuple[str, str]]) -> None:
        assert self.driver.peer is not None
        for body in manscdp.response_parts(query.cmd_type, query.sn, query.device_id, items,
                                           list_name=list_name, fields=fields):
            message = Request(method="MESSAGE", uri=f"sip:{PLATFORM}@{HOST}", body=body)
            for name, value in (
                ("Via", self.endpoint.via("udp")), ("From", f"<sip:{NODE_ID}@{REALM}>;tag=rec"),
                ("To", f"<sip:{PLATFORM}@{REALM}>"), ("Call-ID", f"rec{query.sn}-{len(body)}"),
                ("CSeq", "1 MESSAGE"), ("Max-Forwards", "70"),
                ("Content-Type", "Application/MANSCDP+xml"),
            ):
                message.headers.add(name, value)
            answer = await self.endpoint.request(message, self.driver.peer)
            assert answer.status == 200

    def _invite(self, event: RequestReceived) -> None:
        request = event.request
        play = parse_play_request(request)
        self.invites.append(request)
        self.plays.append(play)
        port = 40000  # UDP: where we send from, only informative
        if play.transport == "tcp-passive":
            assert self.server is not None
            port = self.server.sockets[0].getsockname()[1]
        sdp = play_answer(origin_id=NODE_ID, media_ip=HOST, port=port,
                          transport=play.transport, ssrc=play.ssrc or "1",
                          session=play.session, start=play.start, stop=play.stop)
        if play.session == "Download" and self.filesize is not None:
            sdp += f"a=filesize:{self.filesize}\r\n".encode()
        answer = Response.for_request(request, 200, to_tag=f"node{len(self.invites)}")
        answer.headers.add("Contact", f"<sip:{NODE_ID}@{HOST}:{self.endpoint.local[1]}>")
        answer.headers.add("Content-Type", "application/sdp")
        answer.body = sdp
        self.dialogs[request.call_id] = Dialog.from_request(request, answer)
        self.endpoint.respond(event, answer)

    async def _send(self, play: PlayRequest, call_id: str) -> None:
        """The frames of the range as RTP, paced by their PTS at `speed`, then MediaStatus."""
        loop = asyncio.get_running_loop()
        with RecordIndex(self.store / "index.sqlite3", read_only=True) as index:
            rows = index.segments(play.channel_id, play.start, play.stop)
        frames = [e for e in PlaybackReader(self.store, rows, play.start, play.stop)
                  if isinstance(e, Frame)]
        if self.tamper:
            del frames[len(frames) // 2]
        if not frames:
            return
        ssrc, seq = play.ssrc_int or 1, 0
        writer: asyncio.StreamWriter | None = None
        udp: asyncio.DatagramTransport | None = None
        if play.transport == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(play.address, play.port))
        elif play.transport == "tcp-active":
            _, writer = await asyncio.open_connection(play.address, play.port)
        else:
            writer = await asyncio.wait_for(self.accepted.get(), 5.0)
        try:
            started, first_pts = loop.time(), frames[0].pts or 0
            for item in frames:
                pts = item.pts if item.pts is not None else first_pts
                due = started + (pts - first_pts) / 90_000 / self.speed
                await asyncio.sleep(max(0.0, due - loop.time()))
                data = item.ps_bytes
                for offset in range(0, len(data), PAYLOAD):
                    last = offset + PAYLOAD >= len(data)
                    packet = build_rtp(96, seq, pts, ssrc, last, data[offset:offset + PAYLOAD])
                    seq += 1
                    if udp is not None:
                        udp.sendto(packet)
                    else:
                        assert writer is not None
                        writer.write(rfc4571(packet))
                if writer is not None:
                    await writer.drain()
        finally:
            if udp is not None:
                udp.close()
        if self.send_media_status:
            await self.end_of_file(call_id, play.channel_id)
        if writer is not None:
            await wait_for(lambda: self.byes or not self.send_media_status)
            writer.close()

    async def end_of_file(self, call_id: str, channel_id: str, *,
                          dialog: Dialog | None = None) -> Response:
        """MediaStatus 121 in the dialog of `call_id`; the platform's answer."""
        dialog = dialog or self.dialogs[call_id]
        assert self.driver.peer is not None
        message = dialog.request("MESSAGE", self.endpoint.via("udp"),
                                 media_status(7, channel_id), "Application/MANSCDP+xml")
        answer = await self.endpoint.request(message, self.driver.peer)
        self.status_answers.append(answer)
        return answer


@pytest.fixture
async def upstream() -> AsyncIterator[SimulatedUpstream]:
    platform = SimulatedUpstream(PlatformConfig(PLATFORM, REALM, PASSWORD))
    await platform.start()
    yield platform
    await platform.stop()


@pytest.fixture
async def lower(upstream: SimulatedUpstream, store: Path) -> AsyncIterator[LowerSide]:
    driver = RegistrationDriver(upstream, "udp")
    side = LowerSide(driver, store)
    driver.endpoint.on_request = side.on_request
    await side.listen()
    await driver.start()
    await upstream.wait_registered(5.0)
    yield side
    for task in list(side.tasks):
        task.cancel()
    await asyncio.gather(*side.tasks, return_exceptions=True)
    while not side.accepted.empty():
        side.accepted.get_nowait().close()
    assert side.server is not None
    side.server.close()
    await driver.stop()


def decoded_numbers(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data), format="mpeg") as container:
        return [frame_number(f) - FIRST_COUNTER for f in container.decode(video=0)]


def stored_video_pts(store: Path) -> list[int]:
    with RecordIndex(store / "index.sqlite3", read_only=True) as index:
        rows = index.segments(CHANNEL, START, END)
    return [e.pts for e in PlaybackReader(store, rows, START, END)
            if isinstance(e, Frame) and e.video and e.pts is not None]


# ----- the offers -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp-active", "tcp-passive"])
async def test_playback_and_download_offers_read_back_as_the_node_reads_them(
        upstream, lower, transport):
    lower.send_media = False
    playback = await upstream.invite(CHANNEL, transport, session="Playback", start=START + 0.75,
                                     end=END)
    download = await upstream.invite(CHANNEL, transport, session="Download", start=START,
                                     end=END, download_speed=4, ask_filesize=True)
    live = await upstream.invite(CHANNEL, transport)
    played, loaded, watched = lower.plays
    for play in (played, loaded):
        assert play.channel_id == CHANNEL and play.uri == f"{CHANNEL}:0"
        assert (play.start, play.stop) == (START, END)  # fractions dropped
        assert play.transport == {"udp": "udp", "tcp-active": "tcp-passive",
                                  "tcp-passive": "tcp-active"}[transport]
        assert play.ssrc is not None and play.ssrc.startswith("1") and len(play.ssrc) == 10
        assert play.subject is not None and play.subject.sender_stream == play.ssrc
        assert play.rtpmap[96] == "PS/90000"
    assert played.session == "Playback" and played.download_speed is None
    assert played.offer.video.attribute("filesize") is None
    assert loaded.session == "Download" and loaded.download_speed == 4
    assert loaded.offer.video.attribute("filesize") == "0"
    # Live stays as it was: s=Play, t=0 0, no u=, a live y=.
    assert watched.session == "Play" and (watched.start, watched.stop) == (0, 0)
    assert watched.uri is None and watched.ssrc.startswith("0")
    assert playback.ok and download.ok and live.ok
    assert download.filesize == 123456 and playback.filesize is None
    assert playback.problems == download.problems == live.problems == []
    for session in (playback, download, live):
        await session.bye()


async def test_offers_that_cannot_be_made_are_refused(upstream, lower):
    for kw, text in (
        ({"session": "Replay"}, "unknown session"),
        ({"start": START, "end": END}, "live Play"),
        ({"session": "Playback", "start": START}, "needs start and end"),
        ({"session": "Playback", "start": START + 0.2, "end": START + 0.9}, "empty"),
        ({"session": "Download", "start": END, "end": START}, "empty"),
        ({"session": "Playback", "start": START, "end": END, "download_speed": 4},
         "needs a Download"),
        ({"session": "Download", "start": START, "end": END, "download_speed": 0},
         "1 or more"),
        ({"session": "Playback", "start": -5, "end": END}, "outside 1970-2039"),
    ):
        with pytest.raises(ValueError, match=text):
            await upstream.invite(CHANNEL, **kw)
    assert lower.invites == [] and not upstream.sessions


async def test_an_answer_that_does_not_repeat_s_and_t_is_a_problem(upstream, lower):
    lower.send_media = False
    original = lower._invite

    def shifted(event: RequestReceived) -> None:
        body = event.request.body.replace(f"t={START} {END}".encode(),
                                          f"t={START + 28800} {END + 28800}".encode())
        event.request.body = body.replace(b"s=Download", b"s=Playback")
        original(event)

    lower._invite = shifted  # type: ignore[method-assign]
    session = await upstream.invite(CHANNEL, session="Download", start=START, end=END,
                                    download_speed=2, ask_filesize=True)
    assert session.ok
    assert session.problems == [
        "answer s=Playback, offered Download",
        f"answer t={START + 28800} {END + 28800}, offered {START} {END}",
        "a=filesize asked for, not answered",
    ]
    await session.bye()


# ----- what comes, and how it ends --------------------------------------------------------------


@pytest.mark.parametrize(("transport", "name"), [
    ("udp", "Playback"), ("tcp-passive", "Download"), ("tcp-active", "Playback")])
async def test_the_stored_range_arrives_and_ends_with_media_status_then_bye(
        upstream, lower, store, transport, name):
    speed = 4 if name == "Download" else None
    session = await upstream.invite(CHANNEL, transport, session=name, start=START, end=END,
                                    download_speed=speed, keep_bytes=True)
    assert session.ok, (session.status, session.reason)
    status = await session.wait_media_status(10.0)
    assert (status.device_id, status.notify_type, status.end_of_file) == (CHANNEL, 121, True)
    assert await session.wait_ended(5.0) == "BYE after MediaStatus 121"
    # The platform answered the MESSAGE 200 and hung up in the dialog.
    assert [a.status for a in lower.status_answers] == [200]
    [bye] = lower.byes
    assert bye.call_id == session.call_id and bye.to.tag == "node1"
    assert session.problems == [] and session.sequence_gaps == 0
    # Byte for byte the stored PS of the range, from the keyframe before START to the first
    # frame at or after END, across the gap; as stored_range sees it, and as decoded.
    stored = await asyncio.to_thread(stored_range, store, CHANNEL, START, END)
    assert stored.gaps == 1 and stored.altered == () and stored.video == len(SENT)
    assert session.payload_bytes == stored.bytes == len(session.kept)
    assert session.payload_sha256 == stored.sha256
    assert not session.kept_truncated
    assert decoded_numbers(bytes(session.kept)) == SENT
    assert session.frames == len(SENT) and session.markers == len(SENT)
    pts = stored_video_pts(store)
    assert (session.first_pts, session.last_pts) == (pts[0], pts[-1])
    assert session.media_seconds == (len(SENT) - 1) / FPS and session.pts_jumps == 0
    assert session.wall_seconds > 0 and session.pace is not None
    assert not upstream.sessions


async def test_kept_bytes_are_bounded_and_the_digest_covers_everything(upstream, lower, store):
    session = await upstream.invite(CHANNEL, session="Playback", start=START, end=END,
                                    keep_bytes=True, max_kept_bytes=5000)
    await session.wait_ended(10.0)
    stored = await asyncio.to_thread(stored_range, store, CHANNEL, START, END)
    assert len(session.kept) == 5000 and session.kept_truncated
    assert session.payload_sha256 == stored.sha256 and session.payload_bytes == stored.bytes
    assert bytes(session.kept) == _stored_bytes(store)[:5000]


def _stored_bytes(store: Path) -> bytes:
    with RecordIndex(store / "index.sqlite3", read_only=True) as index:
        rows = index.segments(CHANNEL, START, END)
    return b"".join(e.ps_bytes for e in PlaybackReader(store, rows, START, END)
                    if isinstance(e, Frame))


async def test_without_bye_on_end_the_dialog_stays_until_the_platform_hangs_up(upstream, lower):
    session = await upstream.invite(CHANNEL, session="Playback", start=START, end=END,
                                    bye_on_end=False)
    await session.wait_media_status(10.0)
    await asyncio.sleep(0.5)  # time for a BYE that must not come
    assert not session.ended.is_set() and lower.byes == []
    assert session.media_statuses == 1
    answer = await session.bye()
    assert answer is not None and answer.status == 200
    assert session.end_reason == "BYE sent"


async def test_media_status_outside_a_session_or_malformed_is_refused(upstream, lower):
    lower.send_media_status = False
    session = await upstream.invite(CHANNEL, session="Playback", start=START, end=END,
                                    bye_on_end=False)
    dialog = lower.dialogs[session.call_id]
    # Another Call-ID: no such session.
    stranger = dataclasses.replace(dialog, call_id="nobody@127.0.0.1", local_seq=10)
    answer = await lower.end_of_file("", CHANNEL, dialog=stranger)
    assert answer.status == 481
    # The right Call-ID with foreign tags is found by Call-ID (as wvp does), and noted.
    foreign = dataclasses.replace(dialog, local_tag="other", local_seq=20)
    answer = await lower.end_of_file("", CHANNEL, dialog=foreign)
    assert answer.status == 200 and session.media_status is not None
    assert session.problems == [
        "MediaStatus with tags From 'other' To "
        f"{session.dialog.local_tag!r}, not those of the dialog"]
    # A MediaStatus without a usable NotifyType.
    bad = dialog.request("MESSAGE", lower.endpoint.via("udp"), manscdp.build_manscdp(
        "Notify", "MediaStatus", 8, CHANNEL, [("NotifyType", "end")]),
        "Application/MANSCDP+xml")
    answer = await lower.endpoint.request(bad, lower.driver.peer)
    assert answer.status == 400 and "bad NotifyType" in session.problems[-1]
    await session.bye()
    # After the BYE the dialog is gone: 481.
    answer = await lower.end_of_file(session.call_id, CHANNEL)
    assert answer.status == 481


# ----- MANSRTSP ---------------------------------------------------------------------------------


async def test_info_goes_out_in_the_dialog_with_the_next_cseq(upstream, lower):
    lower.speed = 1.0  # the session is still up while it is steered
    lower.send_media_status = False
    session = await upstream.invite(CHANNEL, session="Playback", start=START, end=END)
    invite_cseq = lower.invites[0].cseq[0]
    sent = [
        await session.control("PLAY", scale=2.0),
        await session.control("PAUSE"),
        await session.control("PLAY"),
        await session.info(MansrtspRequest("PLAY", 40, start=10.5)),
        await session.control("TEARDOWN"),
    ]
    assert [a.status for a in sent] == [200] * 5
    assert [a.reply.cseq for a in sent] == [1, 2, 3, 40, 4]
    assert [parse_mansrtsp(r.body) for r in lower.infos] == [
        MansrtspRequest("PLAY", 1, scale=2.0), MansrtspRequest("PAUSE", 2),
        MansrtspRequest("PLAY", 3), MansrtspRequest("PLAY", 40, start=10.5),
        MansrtspRequest("TEARDOWN", 4)]
    tags = (session.invite_request.from_.tag, "node1")
    for number, info in enumerate(lower.infos, invite_cseq + 1):
        assert info.method == "INFO" and info.cseq == (number, "INFO")
        assert info.call_id == session.call_id
        assert (info.from_.tag, info.to.tag) == tags
        assert info.uri == f"sip:{NODE_ID}@{HOST}:{lower.endpoint.local[1]}"  # its Contact
        assert info.headers.get("Content-Type") == "Application/MANSRTSP"
    assert session.problems == []
    await session.bye()
    with pytest.raises(UpstreamError, match="no dialog for INFO PLAY"):
        await session.control("PLAY")


async def test_an_info_reply_with_another_cseq_or_a_refusal_is_reported(upstream, lower):
    lower.speed = 1.0
    lower.send_media_status = False
    session = await upstream.invite(CHANNEL, session="Playback", start=START, end=END)
    lower.reply_cseq_offset = 1
    answer = await session.control("PAUSE")
    assert answer.status == 200 and answer.reply.cseq == 2
    assert session.problems == ["INFO PAUSE: reply CSeq 2, sent 1"]
    lower.reply_cseq_offset, lower.info_status = 0, 400
    answer = await session.control("PLAY", start=3.0)
    assert answer.status == 400 and answer.reply.status == 400 and not answer.reply.ok
    await session.bye()


async def test_a_stalled_range_waits_for_the_media_status(upstream, lower):
    lower.send_media_status = False
    session = await upstream.invite(CHANNEL, session="Playback", start=START, end=END)
    await wait_for(lambda: session.frames == len(SENT))
    with pytest.raises(UpstreamError, match="no MediaStatus within 0.2 s"):
        await session.wait_media_status(0.2)
    await session.bye()


# ----- the command line ------------------------------------------------------------------------

SHANGHAI = timezone(timedelta(hours=8))


def test_times_are_unix_seconds_or_iso_local_times():
    assert parse_time("1796522400") == 1796522400.0
    assert parse_time(" 1796522400.25 ") == 1796522400.25
    # 2026-12-06T10:00:00 at UTC+8 is 02:00 UTC.
    assert parse_time("2026-12-06T10:00:00", SHANGHAI) == 1796522400.0
    assert parse_time("2026-12-06T10:00:00+08:00") == 1796522400.0
    assert parse_time("2026-12-06T02:00:00Z", SHANGHAI) == 1796522400.0  # its own offset
    assert parse_time("2026-12-06T10:00:00", UTC) == 1796522400.0 + 8 * 3600
    assert parse_time("2026-12-06T10:00:00") == datetime(2026, 12, 6, 10).timestamp()
    for text in ("yesterday", "", "nan", "inf", "-5", "0", "2026-13-01T00:00:00"):
        with pytest.raises(ValueError):
            parse_time(text)


def test_a_playback_plan_from_the_command_line_strings():
    plan = PlaybackPlan.from_text(CHANNEL, "2026-12-06T10:00:00", "1796526000.5",
                                  download_speed=8, store="/srv/rec", timezone="Asia/Shanghai",
                                  transport="tcp-passive")
    assert (plan.start, plan.end, plan.download_speed) == (1796522400.0, 1796526000.5, 8)
    assert plan.store == Path("/srv/rec") and plan.transport == "tcp-passive"
    assert plan.sdp_range == (1796522400, 1796526000)
    assert plan.wire_time(plan.start) == datetime(2026, 12, 6, 10)
    bare = PlaybackPlan.from_text(CHANNEL, "1796522400", "1796522401")
    assert bare.download_speed is None and bare.store is None and bare.tz is None
    for args, kw, text in (
        (("3402000000132000000", "1796522400", "1796526000"), {}, "20-digit"),
        ((CHANNEL, "1796526000", "1796522400"), {}, "after START"),
        ((CHANNEL, "1796522400.2", "1796522400.9"), {}, "after START"),
        ((CHANNEL, "1796522400", "1796526000"), {"download_speed": 33}, "1 to 32"),
        ((CHANNEL, "1796522400", "1796526000"), {"download_speed": 0}, "1 to 32"),
        ((CHANNEL, "1796522400", "1796526000"), {"timezone": "Mars/Olympus"}, "time zone"),
        ((CHANNEL, "1796522400", "3000000000"), {}, "1970-2039"),
        ((CHANNEL, "soon", "1796526000"), {}, "ISO time"),
    ):
        with pytest.raises(ValueError, match=text):
            PlaybackPlan.from_text(*args, **kw)


def test_the_playback_options_parse():
    args = cli.build_parser().parse_args([
        "simulate-upstream", "--password", "x", "--playback", CHANNEL, "2026-12-06T10:00:00",
        "2026-12-06T10:05:00", "--download-speed", "4", "--store", "/srv/rec",
        "--timezone", "Asia/Shanghai", "--transport", "tcp-active"])
    assert args.playback == [CHANNEL, "2026-12-06T10:00:00", "2026-12-06T10:05:00"]
    assert (args.download_speed, args.store, args.timezone) == (4, "/srv/rec", "Asia/Shanghai")
    assert args.func is cli.cmd_simulate_upstream
    plain = cli.build_parser().parse_args(["simulate-upstream", "--password", "x"])
    assert plain.playback is None and plain.download_speed is None and plain.store is None


@pytest.mark.parametrize(("extra", "message"), [
    (["--download-speed", "4"], "--download-speed needs --playback"),
    (["--store", "/srv/rec"], "--store needs --playback"),
    (["--playback", CHANNEL, "1796526000", "1796522400"], "--playback: END must be"),
    (["--playback", CHANNEL, "1796522400", "1796526000", "--download-speed", "64"],
     "--playback: download speed must be 1 to 32"),
    (["--playback", CHANNEL, "noon", "1796526000"], "--playback: 'noon' is neither"),
])
def test_wrong_playback_options_exit_2_before_listening(capsys, extra, message):
    assert cli.main(["simulate-upstream", "--password", "x", "--listen", "127.0.0.1:1",
                     *extra]) == 2
    assert message in capsys.readouterr().err


async def _run_cli(store: Path, plan: PlaybackPlan,
                   prepare=None) -> tuple[int, list[str], LowerSide]:
    """run_upstream with `plan` against a lower side registering to it."""
    config = PlatformConfig(PLATFORM, REALM, PASSWORD)
    lines: list[str] = []
    task = asyncio.get_running_loop().create_task(
        run_upstream(config, playback=plan, out=lines.append))
    await wait_for(lambda: config.port)
    driver = RegistrationDriver(SimpleNamespace(local=(HOST, config.port)), "udp")  # type: ignore[arg-type]
    side = LowerSide(driver, store)
    if prepare is not None:
        prepare(side)
    driver.endpoint.on_request = side.on_request
    await side.listen()
    await driver.start()
    try:
        code = await asyncio.wait_for(task, 30.0)
    finally:
        for pending in list(side.tasks):
            pending.cancel()
        await asyncio.gather(*side.tasks, return_exceptions=True)
        assert side.server is not None
        side.server.close()
        # The platform is gone: no unregistration to wait for.
        if driver._task is not None:
            driver._task.cancel()
            await asyncio.gather(driver._task, return_exceptions=True)
        for future in list(driver._pending):
            future.cancel()
        await driver.endpoint.close()
    return code, lines, side


@pytest.mark.parametrize("transport", ["udp", "tcp-passive"])
async def test_playback_command_searches_plays_downloads_and_compares(
        store, monkeypatch, transport):
    monkeypatch.setattr(recorded, "PACE_MIN_MEDIA_S", math.inf)  # the lower side runs at 20x
    plan = PlaybackPlan.from_text(CHANNEL, str(START), str(END), download_speed=4,
                                  store=str(store), timezone="Asia/Shanghai",
                                  transport=transport)
    code, lines, side = await _run_cli(store, plan)
    text = "\n".join(lines)
    assert code == 0, text
    [query] = side.record_queries
    assert query.get("StartTime") == manscdp.format_gb_time(datetime.fromtimestamp(START, SHANGHAI))
    assert query.get("EndTime") == manscdp.format_gb_time(datetime.fromtimestamp(END, SHANGHAI))
    assert f"record info {CHANNEL} " in text and ": 2 items" in text
    assert "run0" in text and "run1" in text
    stored = stored_range(store, CHANNEL, START, END)
    assert f"store: {len(SENT)} frames, {stored.bytes} bytes, sha256 {stored.sha256}, " \
        "1 gaps" in lines
    assert [p.session for p in side.plays] == ["Playback", "Download"]
    assert side.plays[1].download_speed == 4
    assert side.plays[1].offer.video.attribute("filesize") == "0"
    assert any(line.startswith("download: 200 OK") and line.endswith("filesize 123456")
               for line in lines)
    for label in ("playback", "download"):
        [report] = [line for line in lines if line.startswith(f"{label}: {len(SENT)} frames")]
        assert f"media {(len(SENT) - 1) / FPS:.2f} s" in report
        assert f"{stored.bytes} bytes, MediaStatus 121, end: BYE after MediaStatus 121" in report
        assert f"{label}: bytes equal the store ({stored.bytes} bytes, sha256 {stored.sha256})" \
            in lines
    assert "FAILED" not in text
    assert len(side.byes) == 2


async def test_playback_command_fails_on_bytes_that_differ_from_the_store(store, monkeypatch):
    monkeypatch.setattr(recorded, "PACE_MIN_MEDIA_S", math.inf)
    plan = PlaybackPlan.from_text(CHANNEL, str(START), str(END), store=str(store))

    def tamper(side: LowerSide) -> None:
        side.tamper = True

    code, lines, side = await _run_cli(store, plan, tamper)
    assert code == 1
    [failed] = [line for line in lines if "FAILED" in line]
    assert failed.startswith("playback: FAILED: bytes differ from the store")
    assert f"({len(SENT) - 1} frames received, {len(SENT)} stored)" in failed
    assert [p.session for p in side.plays] == ["Playback"]  # no download asked


async def test_playback_command_fails_on_a_pace_far_from_real_time(store):
    # The lower side sends 40 times faster than a playback may: a pace near 40, not 1.
    plan = PlaybackPlan.from_text(CHANNEL, str(START), str(END))

    def hurry(side: LowerSide) -> None:
        side.speed = 40.0

    code, lines, _ = await _run_cli(store, plan, hurry)
    assert code == 1
    [failed] = [line for line in lines if "FAILED" in line]
    assert failed.startswith("playback: FAILED: pace ") and "asked 1 (within 10%)" in failed


async def test_playback_command_fails_when_the_store_has_no_index(tmp_path, store):
    plan = PlaybackPlan.from_text(CHANNEL, str(START), str(END), store=str(tmp_path))
    code, lines, side = await _run_cli(store, plan)
    assert code == 1
    assert f"store: {tmp_path}: no recordings index (index.sqlite3)" in lines
    assert side.plays == []



@given(st.text(max_size=40))
@settings(max_examples=300)
def test_any_text_is_a_time_or_a_value_error(text):
    try:
        value = parse_time(text, SHANGHAI)
    except ValueError:
        return
    assert math.isfinite(value)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2039, 12, 31),
                    timezones=st.sampled_from([SHANGHAI, UTC, timezone(timedelta(hours=-5))])))
def test_iso_times_read_back_to_their_instant(when):
    assert parse_time(when.isoformat()) == when.timestamp()
    assert parse_time(when.replace(tzinfo=None).isoformat(), when.tzinfo) == when.timestamp()


async def test_a_range_that_does_not_end_is_hung_up_when_stopped(upstream, lower, store):
    lower.send_media_status = False
    plan = PlaybackPlan.from_text(CHANNEL, str(START), str(END), store=str(store))
    stop = asyncio.Event()
    lines: list[str] = []
    run = asyncio.get_running_loop().create_task(
        recorded.check_recorded(upstream, plan, out=lines.append, stop=stop))
    await wait_for(lambda: upstream.sessions and next(iter(upstream.sessions.values())).frames
                   == len(SENT))
    stop.set()
    assert await asyncio.wait_for(run, 5.0) is False
    assert "playback: stopped; hanging up" in lines
    assert "playback: FAILED: no MediaStatus 121 at the end" in lines
    # All that came is what the store holds: only the end was missing.
    assert any(line.startswith("playback: bytes equal the store") for line in lines)
    assert len(lower.byes) == 1 and not upstream.sessions


async def test_media_time_spans_the_pts_across_wrap_and_b_frames_without_jumps(upstream):
    session = UpstreamSession(upstream, CHANNEL, "udp", "1", max_units=1, max_unit_bytes=1)
    wrap = 1 << 33
    # I P B B (decode order) across the 33-bit wrap, then a jump of 10 s (a gap skipped, a
    # seek), then two frames more, and one without PTS.
    for pts in (wrap - 3600, 7200, 0, 3600, 7200 + 900_000, 10_800 + 900_000, None):
        session._video_frame(pts)
    assert session.frames == 7 and session.pts_jumps == 1
    assert (session.first_pts, session.last_pts) == (wrap - 3600, 10_800 + 900_000)
    assert session.media_seconds == (10_800 + 3600) / 90_000
