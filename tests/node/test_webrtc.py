"""Live video to the browser over WebRTC, end to end on this host.

A running node pulls a simulated camera; an aiortc `RTCPeerConnection` on the test's side plays
the browser: it offers to receive video, POSTs the offer, takes the answer, connects (host
candidates only, no STUN) and decodes what arrives with PyAV (aiortc's H.264 decoder). For the
frame-number checks the camera plays the corpus clip `gb_h264_zlm.ps`, whose pictures carry
their frame number as a bar (tests/data/media/README.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcicetransport import connection_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

import sensing_node.sim.camera
from rtp.nal import H264_IDR, H264_PPS, H264_SPS, iter_nal_units
from rtp.ps import AccessUnit
from sensing_node.api.webrtc import WEBRTC
from sensing_node.media.consumers import StreamError
from sensing_node.media.webrtc import (
    ParameterSets,
    PtsTimeline,
    ViewerError,
    ViewerFeed,
    Viewers,
    ice_configuration,
)
from sensing_node.settings import ConfigError, parse_settings
from sensing_node.settings.access import hash_token
from sensing_node.sim.camera import SimulatedCamera
from sensing_node.sim.media import Clip
from tests.conftest import load
from tests.recorder.media import frame_number, units

from .conftest import CameraSetup, RunningNode, wait_for

CAMERA = "31011200001320000001"
UNKNOWN_CHANNEL = "31011200001310009999"
CORPUS_FRAMES = 250  # the corpus clip's frame counter runs 25..249, 0..24
VIEWER_TOKEN = "viewer-token"
VIEWER = {"name": "vic", "token_sha256": hash_token(VIEWER_TOKEN), "role": "viewer"}

Setup = Callable[..., Awaitable[tuple[RunningNode, SimulatedCamera]]]


def corpus_clip() -> Clip:
    """The corpus H.264 clip as a camera's encoder output (frame numbers drawn in)."""
    video = [u for u in units("gb_h264_zlm.ps") if u.stream_id >= 0xE0]
    frames = tuple((u.data, i * 3600, u.keyframe) for i, u in enumerate(video))
    return Clip(frames=frames, fps=25, codec="h264", width=640, height=360)


@pytest.fixture
def live(node_with_camera: CameraSetup) -> CameraSetup:
    """A node (media.timeout_s 5) plus one registered, catalogued camera."""

    async def setup(
        node: dict[str, Any] | None = None, **camera: Any
    ) -> tuple[RunningNode, SimulatedCamera]:
        return await node_with_camera({"media.timeout_s": 5, **(node or {})}, **camera)

    return setup


@pytest.fixture
def corpus_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated cameras play the corpus clip instead of their own test pattern."""
    clip = corpus_clip()
    monkeypatch.setattr(sensing_node.sim.camera, "load_clip", lambda codec: clip)


class Browser:
    """The browser's side: a peer connection that receives one video track."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.track: MediaStreamTrack | None = None

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self.track = self.pc.getTransceivers()[0].receiver.track

    async def frame(self, timeout: float = 10.0) -> av.VideoFrame:
        assert self.track is not None
        frame = await asyncio.wait_for(self.track.recv(), timeout)
        assert isinstance(frame, av.VideoFrame)
        return frame

    async def close(self) -> None:
        await self.pc.close()


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def make() -> Browser:
        made.append(Browser())
        return made[-1]

    yield make
    for browser in made:
        await browser.close()


async def post_offer(
    running: RunningNode, channel: str, sdp: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    response = await running.client.post(
        f"/api/channels/{channel}/webrtc", json={"sdp": sdp, "type": "offer"},
        headers=running.headers if headers is None else headers,
    )
    return response.status, await response.json()


async def watch(running: RunningNode, browser: Browser, channel: str) -> dict[str, Any]:
    status, body = await post_offer(running, channel, await browser.offer())
    assert status == 200, body
    await browser.answer(body["sdp"])
    return dict(body)


def consumers(running: RunningNode, channel: str) -> list[str]:
    stream = running.node.media.streams.get(channel)
    return [c.name for c in stream.consumers] if stream is not None else []


async def listed_once(
    running: RunningNode, ready: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The one viewer `GET /api/webrtc` lists, once `ready` holds of it (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        (listed,) = await running.get("/api/webrtc")
        if ready(listed) or time.monotonic() > deadline:
            return dict(listed)
        await asyncio.sleep(0.05)


def in_worker(running: RunningNode) -> bool:
    """Whether the node's viewers run in media workers (`media.workers` > 1)."""
    return running.node.media.workers is not None


async def audit(running: RunningNode, **query: str) -> list[dict[str, Any]]:
    path = "/api/audit?action=live_view" + "".join(f"&{k}={v}" for k, v in query.items())
    return list(await running.get(path))


# ----- playing -----------------------------------------------------------------------------------
async def test_browser_plays_the_camera_live(
    live: Setup, browsers: Callable[[], Browser], corpus_camera: None
) -> None:
    running, cam = await live()
    channel = cam.channel_ids[0]
    browser = browsers()
    started = time.monotonic()
    body = await watch(running, browser, channel)
    assert body["type"] == "answer" and body["codec"] == "h264" and body["session_id"]
    assert "a=candidate:" in body["sdp"] and "H264/90000" in body["sdp"]
    assert " srflx " not in body["sdp"] and " relay " not in body["sdp"]  # host candidates only
    frame = await browser.frame()
    first_frame_s = time.monotonic() - started
    numbers = [frame_number(frame)]
    deadline = time.monotonic() + 10.0
    while len(numbers) < 40 and time.monotonic() < deadline:
        numbers.append(frame_number(await browser.frame()))
    print(f"\nPOST to first decoded frame: {first_frame_s * 1000:.0f} ms; "
          f"{len(numbers)} frames decoded")
    assert len(numbers) > 25
    assert (frame.width, frame.height) == (640, 360)
    steps = [(b - a) % CORPUS_FRAMES for a, b in zip(numbers, numbers[1:], strict=False)]
    assert all(1 <= step <= 5 for step in steps), numbers  # forward, nothing large skipped
    assert sum(steps) >= 25

    # With media workers the counters are the worker's last report (STATS_S old at most).
    listed = await listed_once(running, lambda v: v["frames_sent"] >= len(numbers))
    assert listed["session_id"] == body["session_id"] and listed["channel_id"] == channel
    assert listed["user"].startswith("api-token@") and listed["frames_sent"] >= len(numbers)
    assert listed["dropped"] == 0 and listed["connection"] == "connected"
    assert "webrtc" in consumers(running, channel)
    (entry,) = await audit(running)
    assert entry["result"] == "ok" and entry["detail"] == f"webrtc {body['session_id']}"


async def test_second_viewer_joins_the_running_stream(
    live: Setup, browsers: Callable[[], Browser], corpus_camera: None
) -> None:
    running, cam = await live()
    channel = cam.channel_ids[0]
    await watch(running, browsers(), channel)
    second = browsers()
    started = time.monotonic()
    await watch(running, second, channel)
    frame = await second.frame()
    print(f"\nPOST to first decoded frame, stream already pulled: "
          f"{(time.monotonic() - started) * 1000:.0f} ms")
    first = frame_number(frame)
    later = [frame_number(await second.frame()) for _ in range(30)]
    assert (later[-1] - first) % CORPUS_FRAMES >= 25
    assert consumers(running, channel).count("webrtc") == 2
    assert len(cam.media_sessions) == 1  # one ingest for both viewers


async def test_viewer_goes_on_with_its_camera_invited_again(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    """The camera's stream dies with its dialog up: the viewer stays and plays the stream's
    next attempt (with media workers, the new receiver in the worker is told to feed it)."""
    running, cam = await live()
    channel = cam.channel_ids[0]
    browser = browsers()
    body = await watch(running, browser, channel)
    for _ in range(5):
        await browser.frame()
    stream = running.node.media.streams[channel]
    cam.stop_media()
    await wait_for(lambda: stream.attempts >= 2 and stream.state == "playing", timeout=20)
    # More than the browser could still hold from before the gap.
    frames = [await browser.frame(10.0) for _ in range(30)]
    assert all((f.width, f.height) == (640, 360) for f in frames)
    (listed,) = await running.get("/api/webrtc")
    assert listed["session_id"] == body["session_id"] and listed["state"] == "playing"
    assert consumers(running, channel) == ["webrtc"]


# ----- ending ------------------------------------------------------------------------------------
async def test_delete_ends_the_viewer_and_its_consumer(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live()
    channel = cam.channel_ids[0]
    browser = browsers()
    body = await watch(running, browser, channel)
    await browser.frame()
    viewer = running.client.app[WEBRTC].viewers.get(body["session_id"])
    assert viewer is not None
    await listed_once(running, lambda v: v["frames_sent"] > 0)

    response = await running.client.delete(f"/api/webrtc/{body['session_id']}",
                                           headers=running.headers)
    assert response.status == 200
    ended = await response.json()
    assert ended["ended"] is True and ended["frames_sent"] > 0
    assert "webrtc" not in consumers(running, channel)
    assert await running.get("/api/webrtc") == []
    if not in_worker(running):  # else its peer connection is the worker's
        await wait_for(lambda: viewer.pc.connectionState == "closed")
    with pytest.raises(MediaStreamError):  # the browser's track ends too
        while True:
            await browser.frame()
    response = await running.client.delete(f"/api/webrtc/{body['session_id']}",
                                           headers=running.headers)
    assert response.status == 404
    entries = await wait_for_audit(running, 2)
    assert entries[0]["result"] == "ok"
    assert "ended after" in entries[0]["detail"] and "ended by api-token@" in entries[0]["detail"]


async def wait_for_audit(running: RunningNode, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        entries = await audit(running)
        if len(entries) >= count or asyncio.get_running_loop().time() > deadline:
            return entries
        await asyncio.sleep(0.05)


async def test_viewer_ends_when_the_browser_closes(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live()
    channel = cam.channel_ids[0]
    browser = browsers()
    await watch(running, browser, channel)
    await browser.frame()
    await browser.close()
    viewers = running.client.app[WEBRTC].viewers
    await wait_for(lambda: len(viewers) == 0, timeout=40.0)
    assert "webrtc" not in consumers(running, channel)
    entries = await wait_for_audit(running, 2)
    assert "peer connection" in entries[0]["detail"], entries[0]


async def test_viewer_ends_when_the_browser_does_not_connect(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live()
    viewers = running.client.app[WEBRTC].viewers
    viewers.connect_timeout_s = 1.0  # (with media workers, sent with the offer)
    status, body = await post_offer(running, cam.channel_ids[0], await browsers().offer())
    assert status == 200, body  # the browser never takes the answer
    await wait_for(lambda: len(viewers) == 0, timeout=5.0)
    entries = await wait_for_audit(running, 2)
    assert entries[0]["detail"].endswith("the browser did not connect within 1 s"), entries[0]


async def test_delete_while_starting(live: Setup, browsers: Callable[[], Browser]) -> None:
    running, cam = await live(answer_delay_s=1.0)
    channel = cam.channel_ids[0]
    posting = asyncio.ensure_future(post_offer(running, channel, await browsers().offer()))
    (starting,) = await wait_for(lambda: running.client.app[WEBRTC].viewers.snapshot())
    assert starting["state"] == "starting" and starting["frames_sent"] == 0
    response = await running.client.delete(f"/api/webrtc/{starting['session_id']}",
                                           headers=running.headers)
    assert response.status == 200
    status, body = await posting
    assert status == 410 and body["error"].startswith("ended by api-token@")
    assert "webrtc" not in consumers(running, channel)


async def test_viewer_ends_with_its_stream(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live()
    channel = cam.channel_ids[0]
    browser = browsers()
    await watch(running, browser, channel)
    await browser.frame()
    running.node.media.streams[channel].stop("the device went away")
    assert await running.get("/api/webrtc") == []
    entries = await wait_for_audit(running, 2)
    assert entries[0]["detail"].endswith("stream ended: the device went away")


async def test_node_stop_closes_every_peer_connection(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live()
    browser = browsers()
    body = await watch(running, browser, cam.channel_ids[0])
    await browser.frame()
    viewer = running.client.app[WEBRTC].viewers.get(body["session_id"])
    assert viewer is not None and (viewer.pc is not None) is not in_worker(running)
    await running.client.close()
    assert viewer.state == "ended" and viewer.end_reason == "node stopping"
    if viewer.pc is not None:
        assert viewer.pc.connectionState == "closed"
    with pytest.raises(MediaStreamError):  # the peer connection closed, wherever it ran
        while True:
            await browser.frame()


# ----- refusals ----------------------------------------------------------------------------------
async def test_refusals(live: Setup, browsers: Callable[[], Browser]) -> None:
    running, cam = await live(
        {"users": [VIEWER], "channels.default_share": "authorized",
         "limits.max_sessions_per_channel": 1}
    )
    channel = cam.channel_ids[0]
    sdp = await browsers().offer()

    status, body = await post_offer(running, channel, sdp, headers={})
    assert status == 401
    viewer_headers = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    status, body = await post_offer(running, channel, sdp, headers=viewer_headers)
    assert status == 403 and "no valid grant for vic" in body["error"]
    status, body = await post_offer(running, UNKNOWN_CHANNEL, sdp)
    assert status == 404 and UNKNOWN_CHANNEL in body["error"]
    response = await running.client.post(f"/api/channels/{channel}/webrtc",
                                         json={"sdp": sdp, "type": "answer"},
                                         headers=running.headers)
    assert response.status == 400
    status, body = await post_offer(running, channel, "v=0\r\nnot an offer\r\n")
    assert status == 400
    for kind, direction in [("video", "sendonly"), ("audio", "recvonly")]:
        other = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        other.addTransceiver(kind, direction=direction)
        await other.setLocalDescription(await other.createOffer())
        status, body = await post_offer(running, channel, other.localDescription.sdp)
        await other.close()
        assert (status, body["error"]) == (400, "the offer has no video to receive")
    assert running.node.media.streams == {}  # nothing was pulled for these

    watching = await watch(running, browsers(), channel)
    response = await running.client.get("/api/webrtc", headers=viewer_headers)
    assert response.status == 200 and await response.json() == []  # not a channel vic sees
    response = await running.client.delete(f"/api/webrtc/{watching['session_id']}",
                                           headers=viewer_headers)
    assert response.status == 404  # nor a viewer vic may end
    status, body = await post_offer(running, channel, await browsers().offer())
    assert status == 429 and body["limit"] == "limits.max_sessions_per_channel"
    assert "(1) reached" in body["error"] and "1 viewers" in body["error"]
    assert consumers(running, channel).count("webrtc") == 1
    results = [e["result"] for e in await audit(running)]
    assert results.count("denied") == 2 and results.count("ok") == 1


async def test_chromium_offer_is_answered_with_h264_only(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live()
    offer = load("webrtc/chromium-150-recvonly-offer.sdp").decode()
    status, body = await post_offer(running, cam.channel_ids[0], offer)
    assert status == 200, body
    answer = body["sdp"].splitlines()
    (media,) = [line for line in answer if line.startswith("m=")]
    assert media.startswith("m=video ") and media.endswith(" UDP/TLS/RTP/SAVPF 103 104 109 114")
    assert "a=rtpmap:103 H264/90000" in answer and "a=rtpmap:109 H264/90000" in answer
    assert "a=fmtp:104 apt=103" in answer  # retransmissions (NACK) kept
    assert "a=sendonly" in answer and "a=mid:0" in answer and "a=setup:active" in answer


class RefusingHub:
    """A hub that refuses every stream: an offer that gets this far was taken."""

    async def subscribe(self, channel_id: str, consumer: Any, **_: Any) -> Any:
        raise StreamError(404, "no such channel here")

    def unsubscribe(self, channel_id: str, consumer: Any, **_: Any) -> None:
        pass


CHROMIUM_OFFER = load("webrtc/chromium-150-recvonly-offer.sdp").decode().split("\r\n")


@settings(max_examples=40)
@given(st.one_of(
    st.text(max_size=300),
    st.lists(st.booleans(), min_size=len(CHROMIUM_OFFER), max_size=len(CHROMIUM_OFFER)).map(
        lambda keep: "\r\n".join(line for line, k in zip(CHROMIUM_OFFER, keep, strict=True) if k)
    ),
    st.tuples(st.integers(0, len(CHROMIUM_OFFER) - 1), st.text(max_size=40)).map(
        lambda cut: "\r\n".join(CHROMIUM_OFFER[:cut[0]] + [cut[1]] + CHROMIUM_OFFER[cut[0] + 1:])
    ),
))
def test_any_offer_is_taken_or_refused_with_400(offer: str) -> None:
    async def offer_it() -> int:
        viewers = Viewers(RefusingHub())
        viewer = viewers.reserve(CAMERA, "tester")
        try:
            await viewers.start(viewer, offer)
        except (ViewerError, StreamError) as exc:
            return exc.status
        finally:
            await viewers.close()
            assert len(viewers) == 0
        raise AssertionError("an offer was answered without a stream")

    assert asyncio.run(offer_it()) in (400, 404)


@pytest.mark.parametrize(("camera", "status"), [
    ({"invite_status": 486}, 502),
    ({"answer_invite": False}, 504),
])
async def test_camera_failures_as_a_live_pull_maps_them(
    live: Setup, browsers: Callable[[], Browser], camera: dict[str, Any], status: int
) -> None:
    running, cam = await live({"media.answer_timeout_s": 1}, **camera)
    channel = cam.channel_ids[0]
    got, body = await post_offer(running, channel, await browsers().offer())
    assert got == status, body
    assert body["sip_status"] == camera.get("invite_status")
    assert await running.get("/api/webrtc") == []
    assert "webrtc" not in consumers(running, channel)
    (entry,) = await audit(running)
    assert entry["result"] == "error" and entry["detail"] == f"webrtc: {body['error']}"


async def test_h265_channel_is_refused_with_415(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live(media_codec="h265")
    channel = cam.channel_ids[0]
    status, body = await post_offer(running, channel, await browsers().offer())
    assert status == 415 and body["codec"] == "h265" and "h265" in body["error"]
    assert "webrtc" not in consumers(running, channel)
    assert await running.get("/api/webrtc") == []
    (entry,) = await audit(running)
    assert entry["result"] == "error"


async def test_h265_transcoded_when_configured(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live({"console.transcode_h265": True}, media_codec="h265")
    browser = browsers()
    body = await watch(running, browser, cam.channel_ids[0])
    assert body["codec"] == "h264" and body["source_codec"] == "h265"
    frames = [await browser.frame(20.0) for _ in range(10)]
    assert all((f.width, f.height) == (640, 360) for f in frames)


async def test_revoked_grant_ends_the_viewer(
    live: Setup, browsers: Callable[[], Browser]
) -> None:
    running, cam = await live({"users": [VIEWER], "channels.default_share": "authorized"})
    channel = cam.channel_ids[0]
    now = datetime.now(UTC)
    response = await running.client.post("/api/grants", headers=running.headers, json={
        "consumer": "vic", "channels": [channel], "actions": ["live"], "purpose": "a test",
        "valid_from": (now - timedelta(minutes=1)).isoformat(),
        "valid_to": (now + timedelta(hours=1)).isoformat(),
    })
    assert response.status == 201, await response.text()
    grant = await response.json()
    browser = browsers()
    status, body = await post_offer(running, channel, await browser.offer(),
                                    headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
    assert status == 200, body
    await browser.answer(body["sdp"])
    await browser.frame()
    (listed,) = await running.get("/api/webrtc")
    assert listed["user"].startswith("vic@")

    response = await running.client.delete(f"/api/grants/{grant['id']}", headers=running.headers)
    assert response.status == 200 and (await response.json())["ended_sessions"] == 1
    assert await running.get("/api/webrtc") == []
    assert "webrtc" not in consumers(running, channel)
    entries = await wait_for_audit(running, 2)
    assert entries[0]["result"] == "revoked" and entries[0]["actor"].startswith("vic@")


# ----- the pieces --------------------------------------------------------------------------------
def video_units() -> list[AccessUnit]:
    return [u for u in units("gb_h264_alaw_zlm.ps") if u.stream_id >= 0xE0]


def test_feed_takes_video_only_and_knows_its_codec() -> None:
    feed = ViewerFeed()
    every = units("gb_h264_alaw_zlm.ps")[:60]
    for unit in every:
        feed.on_unit(unit)
    video = [u for u in every if u.stream_id >= 0xE0]
    assert len(video) < len(every)  # the clip has audio, which the browser does not get
    assert feed.codec == "h264" and list(feed.items) == video and feed.received == len(video)


def test_feed_starts_at_a_keyframe() -> None:
    video = video_units()
    feed = ViewerFeed()
    for unit in video[5:30]:  # joined mid-GOP, with no cached keyframe to start from
        feed.on_unit(unit)
    key = next(i for i, u in enumerate(video) if i >= 5 and u.keyframe)
    assert feed.codec == "h264" and feed.dropped == key - 5
    assert list(feed.items) == video[key:30]


def test_slow_viewer_drops_to_the_next_keyframe() -> None:
    video = video_units()
    keyframes = [i for i, u in enumerate(video) if u.keyframe]
    feed = ViewerFeed(maxsize=30)
    for unit in video[:31]:  # nobody reads: the 31st frame finds the queue full
        feed.on_unit(unit)
    assert not feed.items and feed.dropped == 31
    next_key = next(i for i in keyframes if i > 31)
    for unit in video[31:next_key + 3]:
        feed.on_unit(unit)
    assert feed.dropped == next_key  # everything before the keyframe
    assert list(feed.items) == video[next_key:next_key + 3] and feed.items[0].keyframe


def test_lost_packets_skip_to_the_next_keyframe() -> None:
    video = video_units()
    feed = ViewerFeed()
    for unit in video[:10]:
        feed.on_unit(unit)
    feed.on_loss(3)
    assert not feed.items and feed.dropped == 10
    for unit in video[10:30]:
        feed.on_unit(unit)
    key = next(i for i, u in enumerate(video) if i >= 10 and u.keyframe)
    assert feed.dropped == key  # the 10 queued, and those up to the keyframe
    assert list(feed.items) == video[key:30]


async def test_feed_ended_before_any_frame() -> None:
    feed = ViewerFeed()
    ended: list[str] = []
    feed.on_stream_end = ended.append
    waiting = asyncio.ensure_future(feed.first_codec())
    await asyncio.sleep(0)
    feed.on_end("refused")
    with pytest.raises(EOFError, match="refused"):
        await waiting
    assert ended == ["refused"]
    feed.on_end("again")
    assert ended == ["refused"]  # told once


def nal(nal_type: int, body: bytes = b"\x88\x99") -> bytes:
    return b"\x00\x00\x00\x01" + bytes([0x60 | nal_type]) + body


def test_parameter_sets_put_in_front_of_an_idr_without_them() -> None:
    sets = ParameterSets()
    keyframe = nal(H264_SPS, b"\x42\x00\x1f") + nal(H264_PPS, b"\xce") + nal(H264_IDR)
    assert sets.apply(keyframe) == keyframe
    bare = nal(H264_IDR, b"\x11")
    fixed = sets.apply(bare)
    assert fixed == nal(H264_SPS, b"\x42\x00\x1f") + nal(H264_PPS, b"\xce") + bare
    assert sets.apply(nal(1)) == nal(1)  # not a keyframe: as it is


def test_parameter_sets_wait_for_both() -> None:
    sets = ParameterSets()
    assert sets.apply(nal(H264_SPS) + nal(H264_IDR)) == nal(H264_SPS) + nal(H264_IDR)
    assert sets.apply(nal(H264_IDR)) == nal(H264_IDR)  # no PPS yet


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_parameter_sets_take_any_bytes(chunks: list[bytes]) -> None:
    sets = ParameterSets()
    for chunk in chunks:
        out = sets.apply(chunk)
        assert out.endswith(chunk)
        added = [t for _, t in iter_nal_units("h264", out[: len(out) - len(chunk)])]
        assert set(added) <= {H264_SPS, H264_PPS}


def test_pts_timeline_follows_the_camera_and_survives_jumps() -> None:
    timeline = PtsTimeline(max_step_s=2.0)
    assert timeline.next((1 << 33) - 1, 0.0) == 0
    assert timeline.next(3599, 0.5) == 3600  # across the 33-bit wrap, by the PTS
    assert timeline.next(None, 0.54) == 3600 + 3600  # no PTS: by the clock
    assert timeline.next(500, 1.54) == 7200 + 90000  # back in time: by the clock
    assert timeline.next(500, 1.54) == 97200 + 1  # the same PTS again: one tick on
    assert timeline.next(500 + 10 * 90000, 1.58) == 97201 + 3600  # a jump of 10 s: by the clock


@given(st.lists(st.tuples(st.none() | st.integers(0, (1 << 33) - 1),
                          st.floats(0, 10, allow_nan=False)), max_size=50))
def test_pts_timeline_only_moves_forward(frames: list[tuple[int | None, float]]) -> None:
    timeline = PtsTimeline(max_step_s=2.0)
    now, last = 0.0, -1
    for pts, elapsed in frames:
        now += elapsed
        position = timeline.next(pts, now)
        assert position > last or last == -1
        assert last == -1 or position - last <= 180_000
        last = position


def test_console_settings_default_and_errors() -> None:
    base = "node: {api_token: t}\ndevices: {password: p}\n"
    settings = parse_settings(base)
    assert settings.console.ice_servers == () and settings.console.transcode_h265 is False
    with pytest.raises(ConfigError) as caught:
        parse_settings(base + "console:\n  ice_servers:\n    - urls: http://x\n"
                              "    - urls: [turn:t.example]\n")
    assert caught.value.problems == [
        "<string>:5: console.ice_servers[0]: expected stun:HOST[:PORT], turn:HOST[:PORT]"
        "[?transport=udp|tcp] or turns:HOST[:PORT][?transport=tcp] (RFC 7064, RFC 7065), "
        "got 'http://x'",
        "<string>:6: console.ice_servers[1]: a TURN server needs username and credential",
    ]
    for servers, problem in [
        ("[{urls: 'stun:a.example?transport=udp'}]", "a stun: URL takes no transport"),
        ("[{urls: 'turns:a.example?transport=udp', username: u, credential: c}]",
         "unsupported transport 'udp'"),
        ("[{urls: 'stuns:a.example'}]", "expected stun:HOST"),
        ("[{urls: [stun:a.example, 'stun:b.example:3479']}]", "list at most one of each"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_settings(base + f"console: {{ice_servers: {servers}}}\n")
        (text,) = caught.value.problems
        assert problem in text, text
    settings = parse_settings(base + "console:\n  ice_servers:\n    - urls: stun:a.example\n"
                                     "    - {urls: 'turn:t.example:3478?transport=tcp', "
                                     "username: u, credential: c}\n")
    stun, turn = settings.console.ice_servers
    assert stun.urls == ("stun:a.example",) and turn.username == "u"
    # aiortc takes both as they are; none configured is none at all, not its public default
    kwargs = connection_kwargs(ice_configuration(settings.console.ice_servers).iceServers)
    assert kwargs == {"stun_server": ("a.example", 3478), "turn_server": ("t.example", 3478),
                      "turn_ssl": False, "turn_transport": "tcp", "turn_username": "u",
                      "turn_password": "c"}
    assert ice_configuration(()).iceServers == []
