"""Playback and download of the node's recordings to an upper platform, end to end over
loopback: a simulated upstream INVITEs a recorded range (two segments with a gap between
them), receives the stored PS byte for byte at real time or at a download speed, steers it
with MANSRTSP, and hears of the end through MediaStatus 121; within the limits, audited, and
with a tampered segment reported."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from recorder.index import RecordIndex, SegmentRow
from recorder.playback import Frame, PlaybackReader, SegmentAltered
from recorder.segments import SegmentWriter
from recorder.service import root_index
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream, UpstreamSession
from sip import manscdp
from sip.mansrtsp import MansrtspRequest
from tests.recorder.media import FPS, TZ, is_video, timed, units

from .conftest import PASSWORD, RunningNode, StartNode, wait_for

UPSTREAM = "31011200002000000100"
UP_PASSWORD = "upstream-password"
CHANNEL = "31011200001310000101"
CAMERA = "31011200001320000001"  # its first channel is CHANNEL
GAP_S = 10.0


@dataclass
class Store:
    root: Path
    rows: list[SegmentRow]
    t0: float  # wall time of the first frame
    later: float  # wall time of the first frame after the gap

    def expected(self, start: float, end: float) -> tuple[str, int, int]:
        """SHA-256, bytes and video frames of what a playback of the range sends."""
        digest = hashlib.sha256()
        size = frames = 0
        with PlaybackReader(self.root, self.rows, start, end) as reader:
            for event in reader:
                assert not isinstance(event, SegmentAltered), event
                if not isinstance(event, Frame):
                    continue  # the gap
                digest.update(event.ps_bytes)
                size += len(event.ps_bytes)
                frames += event.video
        return digest.hexdigest(), size, frames


def record(root: Path, t0: float) -> Store:
    """Frames 0-99 of the GB clip in two 2-second segments from `t0`, a gap of GAP_S, frames
    100-199 in two more: written by the real SegmentWriter into the node's store."""
    items = units("gb_h264_zlm.ps")
    counts = [i for i, unit in enumerate(items) if is_video(unit)]
    split, stop = counts[100], counts[200] if len(counts) > 200 else len(items)
    later = t0 + 100 / FPS + GAP_S
    rows: list[SegmentRow] = []
    with RecordIndex(root_index(root)) as index:
        writer = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
        for unit, wall in timed(items[:split], t0):
            rows += writer.write(unit, wall)
        rows += writer.gap(t0 + 100 / FPS, later, "camera offline")
        for unit, wall in timed(items[split:stop], later):
            rows += writer.write(unit, wall)
        rows += writer.close()
    assert len(rows) == 4
    return Store(root, rows, t0, later)


Setup = Callable[..., Awaitable[tuple[RunningNode, SimulatedUpstream, Store]]]


@pytest.fixture
async def playback(start_node: StartNode) -> AsyncIterator[Setup]:
    upstreams: list[SimulatedUpstream] = []

    async def setup(*, max_streams: int = 16, **node: Any) -> tuple[
            RunningNode, SimulatedUpstream, Store]:
        upstream = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM, password=UP_PASSWORD))
        upstreams.append(upstream)
        _, port = await upstream.start()
        running = await start_node(**{
            "media.timeout_s": 2,
            "recording.channels": [],
            "upstreams": [{"id": UPSTREAM, "address": f"127.0.0.1:{port}",
                           "password": UP_PASSWORD, "max_streams": max_streams}],
            **node,
        })
        running.node.cascade.restreamer.eof_bye_wait_s = 2.0
        store = record(running.node.recording.root, time.time() - 3600)
        await upstream.wait_registered(timeout=10)
        return running, upstream, store

    yield setup
    for upstream in upstreams:
        await upstream.stop()


async def audit_of(running: RunningNode, action: str) -> list[Any]:
    entries: list[Any] = []
    for _ in range(100):
        entries = await running.node.recording.audit_query(action=action)
        if entries:
            break
        await asyncio.sleep(0.05)
    return entries


def check_bytes(session: UpstreamSession, store: Store, start: float, end: float) -> None:
    assert session.problems == []
    assert session.wrong_ssrc == session.wrong_payload_type == session.sequence_gaps == 0
    digest, size, frames = store.expected(start, end)
    assert session.payload_bytes == size
    assert session.payload_sha256 == digest
    assert session.frames == frames


@pytest.mark.parametrize("transport", ["udp", "tcp-active", "tcp-passive"])
async def test_playback_of_two_segments_and_a_gap_sends_the_stored_bytes(playback, transport):
    running, upstream, store = await playback()
    # From the middle of the second segment, over the gap, into the third.
    start, end = store.t0 + 2.5, store.later + 1.5
    session = await upstream.invite(CHANNEL, transport, session="Playback", start=start,
                                    end=end, user="operator-7")
    assert session.ok, session
    assert session.answer is not None and session.answer.session_name == "Playback"
    assert session.answer.timing == (int(start), int(end))
    status = await session.wait_media_status(timeout=20)
    assert status.end_of_file and status.device_id == CHANNEL
    check_bytes(session, store, int(start), int(end))
    assert session.pts_jumps == 0  # timestamps run on over the gap
    # Paced at real time: the media the frames span in about as much wall time.
    assert session.pace is not None and 0.95 <= session.pace <= 1.05, session.pace
    assert session.wall_seconds < (int(end) - int(start)) - GAP_S + 1
    await session.wait_ended(timeout=5)  # the upstream hangs up after the 121
    await wait_for(lambda: not running.node.cascade.restreamer.live())
    [entry] = await audit_of(running, "upstream_playback")
    assert entry.actor == f"upstream {UPSTREAM} user operator-7"
    assert entry.channel_id == CHANNEL and entry.result == "ok"
    assert (entry.range_start, entry.range_end) == (int(start), int(end))
    assert f"{session.payload_bytes}" in entry.detail or "bytes" in entry.detail
    assert "1 gaps skipped" in entry.detail


async def test_download_at_speed_4_takes_a_quarter_of_the_time(playback):
    running, upstream, store = await playback()
    start, end = store.t0, store.t0 + 100 / FPS  # the first two segments, 4 s
    session = await upstream.invite(CHANNEL, "tcp-passive", session="Download", start=start,
                                    end=end, download_speed=4, ask_filesize=True)
    assert session.ok, session
    # The segments' share of the range: about what is sent (from the keyframe at the start).
    _, size, _ = store.expected(int(start), int(end))
    assert session.filesize is not None and abs(session.filesize - size) < 0.15 * size
    await session.wait_media_status(timeout=10)
    check_bytes(session, store, int(start), int(end))
    assert session.pace is not None and 3.6 <= session.pace <= 4.4, session.pace
    await session.wait_ended(timeout=5)
    [entry] = await audit_of(running, "upstream_download")
    assert entry.result == "ok"


async def test_pause_play_seek_and_scale(playback):
    running, upstream, store = await playback()
    start, end = store.t0, store.later + 4
    session = await upstream.invite(CHANNEL, "udp", session="Playback", start=start, end=end,
                                    bye_on_end=False)
    assert session.ok
    await wait_for(lambda: session.frames >= 10, timeout=5)
    [shown] = (await running.get("/api/upstreams"))["sessions"]
    assert shown["kind"] == "Playback" and shown["source"] == "store"
    assert (shown["range_start"], shown["range_end"]) == (int(start), int(end))
    answer = await session.info(MansrtspRequest("PAUSE", 1))
    assert answer.status == 200 and answer.reply is not None and answer.reply.cseq == 1
    await asyncio.sleep(0.2)
    paused_at = session.frames
    await asyncio.sleep(0.6)
    assert session.frames == paused_at  # nothing while paused
    assert (await running.get("/api/upstreams"))["sessions"][0]["paused"] is True
    answer = await session.info(MansrtspRequest("PLAY", 2))
    assert answer.status == 200 and answer.reply is not None and answer.reply.cseq == 2
    await wait_for(lambda: session.frames >= paused_at + 5, timeout=5)
    # Seek past the gap: the next frames are those recorded after it.
    running_session = running.node.cascade.restreamer.live()[0]
    relay = running.node.media.playbacks[running_session.relay_id]
    answer = await session.info(MansrtspRequest("PLAY", 3, start=store.later - start + 1))
    assert answer.status == 200
    await wait_for(lambda: relay.position is not None and relay.position >= store.later,
                   timeout=5)
    # Scale 2: twice as fast.
    answer = await session.info(MansrtspRequest("PLAY", 4, scale=2.0))
    assert answer.status == 200 and relay.speed == 2.0 and not relay.keyframes_only
    # Scale 4: keyframes only; an unsupported scale is refused with a reason.
    answer = await session.info(MansrtspRequest("PLAY", 5, scale=4.0))
    assert answer.status == 200 and relay.keyframes_only
    answer = await session.info(MansrtspRequest("PLAY", 6, scale=3.0))
    assert answer.status == 400 and "Scale" in answer.response.reason
    assert answer.reply is not None and answer.reply.cseq == 6
    await session.wait_media_status(timeout=10)
    answer = await session.info(MansrtspRequest("TEARDOWN", 7))
    assert answer.status == 200
    assert await session.wait_ended(timeout=5)
    await wait_for(lambda: not running.node.cascade.restreamer.live())


async def test_playback_counts_toward_the_upstreams_streams(playback):
    running, upstream, store = await playback(max_streams=1)
    first = await upstream.invite(CHANNEL, "udp", session="Playback", start=store.t0,
                                  end=store.later + 4)
    assert first.ok
    second = await upstream.invite(CHANNEL, "udp", session="Download", start=store.t0,
                                   end=store.later + 4, download_speed=2)
    assert second.status == 486 and second.warning is not None
    assert "(1/1)" in second.warning
    await first.bye()
    third = await upstream.invite(CHANNEL, "udp", session="Download", start=store.t0,
                                  end=store.t0 + 2, download_speed=8)
    assert third.ok
    await third.wait_media_status(timeout=10)


async def test_no_recording_in_the_range_is_404(playback):
    _, upstream, store = await playback()
    session = await upstream.invite(CHANNEL, "udp", session="Playback",
                                    start=store.t0 - 7200, end=store.t0 - 3600)
    assert session.status == 404


@pytest.mark.parametrize("action", ["skip", "end"])
async def test_a_tampered_segment_is_not_sent_and_is_reported(playback, action):
    running, upstream, store = await playback(**{"recording.altered_segments": action})
    altered = store.rows[1]
    path = store.root / altered.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    start, end = store.t0, store.t0 + 100 / FPS
    session = await upstream.invite(CHANNEL, "udp", session="Download", start=start, end=end,
                                    download_speed=8, bye_on_end=False)
    assert session.ok
    if action == "skip":
        await session.wait_media_status(timeout=10)
        expected = hashlib.sha256()
        with PlaybackReader(store.root, store.rows[:1], start, end) as reader:
            for event in reader:
                assert isinstance(event, Frame)
                expected.update(event.ps_bytes)
        assert session.payload_sha256 == expected.hexdigest()  # the first segment alone
        await session.bye()
    else:
        reason = await session.wait_ended(timeout=10)
        assert session.media_status is None, reason
    [entry] = await audit_of(running, "upstream_download")
    assert altered.path in entry.detail and "SHA-256" in entry.detail
    assert entry.result == "altered" or action == "end"
    if action == "end":
        assert "recording altered" in entry.detail


async def test_device_fallback_searches_and_plays_what_only_the_camera_holds(playback):
    running, upstream, store = await playback(**{"cascade.device_fallback": True})
    tz = running.node.settings.node.tz
    # The camera recorded a stretch before the node recorded anything of the channel.
    own = (store.t0 - 600.0, store.t0 - 60.0)
    camera = SimulatedCamera(CameraConfig(
        server=running.sip, device_id=CAMERA, password=PASSWORD, channels=1, records=(own,),
        tz=tz,
    ))
    await camera.start(keepalives=False)
    try:
        await wait_for(lambda: running.node.registry.channel_device(CHANNEL) is not None)
        begin = datetime.fromtimestamp(store.t0 - 900, tz).replace(tzinfo=None)
        finish = datetime.fromtimestamp(store.later + 10, tz).replace(tzinfo=None)
        items = await upstream.query_record_info(CHANNEL, begin, finish)
        assert camera.record_queries == 1
        device_items = [i for i in items if i["FilePath"].startswith("device:")]
        node_items = [i for i in items if not i["FilePath"].startswith("device:")]
        assert len(device_items) == 1 and len(node_items) == 2  # the node's two runs
        [item] = device_items
        assert item["FilePath"].startswith("device:/record/")
        assert manscdp.parse_gb_time(item["StartTime"], tz).timestamp() == int(own[0])
        assert manscdp.parse_gb_time(item["EndTime"], tz).timestamp() == int(own[1])
        assert items == sorted(items, key=lambda i: i["StartTime"])
        # A range only the camera holds is played back from the camera, through the node.
        start, end = own[0] + 100, own[0] + 102
        session = await upstream.invite(CHANNEL, "udp", session="Playback", start=start,
                                        end=end)
        assert session.ok, session
        assert camera.playbacks and camera.playbacks[-1][1:] == (int(start), int(end),
                                                                 "Playback")
        status = await session.wait_media_status(timeout=10)
        assert status.end_of_file
        assert session.frames >= 40 and session.problems == []
        await session.wait_ended(timeout=5)
        await wait_for(lambda: not running.node.cascade.restreamer.live())
        await wait_for(lambda: not camera.media_sessions)
    finally:
        await camera.stop(unregister=False)


async def test_without_device_fallback_the_node_answers_from_its_store_alone(playback):
    running, upstream, store = await playback()
    tz = running.node.settings.node.tz
    camera = SimulatedCamera(CameraConfig(
        server=running.sip, device_id=CAMERA, password=PASSWORD, channels=1,
        records=((store.t0 - 600.0, store.t0 - 60.0),), tz=tz,
    ))
    await camera.start(keepalives=False)
    try:
        await wait_for(lambda: running.node.registry.channel_device(CHANNEL) is not None)
        begin = datetime.fromtimestamp(store.t0 - 900, tz).replace(tzinfo=None)
        finish = datetime.fromtimestamp(store.later + 10, tz).replace(tzinfo=None)
        items = await upstream.query_record_info(CHANNEL, begin, finish)
        assert len(items) == 2 and camera.record_queries == 0
        session = await upstream.invite(CHANNEL, "udp", session="Playback",
                                        start=store.t0 - 500, end=store.t0 - 498)
        assert session.status == 404 and not camera.playbacks
    finally:
        await camera.stop(unregister=False)
