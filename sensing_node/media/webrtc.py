"""Live video to browsers over WebRTC (aiortc): one hub consumer and one peer connection per
viewer.

A viewer's `ViewerFeed` subscribes to the channel's stream like any other consumer, from the
cached keyframe on, and keeps a bounded queue: a viewer that falls behind drops to the next
keyframe (`FrameQueue`), so the ingest never waits for a browser. `HubVideoTrack` hands the
queued frames to aiortc as `av.Packet`s of Annex-B H.264 with a 90 kHz time base; aiortc's
`RTCRtpSender` passes packets through its H.264 encoder's `pack()`, which only splits the access
unit into NAL units and packetises them (RFC 6184 single NAL unit, STAP-A and FU-A): the
camera's picture reaches the browser without being transcoded. The track puts the last SPS and
PPS in front of an IDR that comes without them, so a browser can start at any keyframe.

H.265 is not sent as it is (browsers take no H.265 over WebRTC); with `transcode_h265` the track
decodes it and returns pictures, which aiortc encodes as H.264 (one encoder per viewer).

`Viewers` holds the viewers of a node: it starts them from an SDP offer (the answer comes once
ICE gathering is done: no trickle), ends them on request, when their peer connection fails or
closes, when their stream ends, and all of them at node stop. What a viewer may watch, the
session limits and the audit are the caller's (`api/webrtc.py`); it hears of every end through
the viewer's `on_end`.

With media workers (`media.workers` > 1, the hub's `workers`) the peer connection, the track
and the feed of a viewer run in the worker that receives its channel, with these same classes
(`workers.viewers`); what `Viewers` keeps here is the `Viewer` record, whose counters are the
worker's last report, and a `workers.viewers.RemoteViewer` among the stream's consumers. The
caller sees no difference.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from rtp.nal import H264_IDR, H264_PPS, H264_SPS, iter_nal_units
from rtp.ps import AccessUnit

from ..settings import IceServer
from .consumers import FrameQueue, StreamError
from .stream import LiveStream
from .workers.viewers import RemoteViewer

if TYPE_CHECKING:
    from .workers.pool import MediaWorkers

__all__ = [
    "HubVideoTrack",
    "ParameterSets",
    "PtsTimeline",
    "Viewer",
    "ViewerError",
    "ViewerFeed",
    "Viewers",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CLOCK_RATE = 90_000
TIME_BASE = Fraction(1, CLOCK_RATE)
PTS_MODULO = 1 << 33
#: frames a viewer may fall behind (about 2 s at 25 fps) before it drops to the next keyframe
VIEWER_QUEUE_FRAMES = 50
#: bytes a viewer may fall behind (elementary data and PS bytes of the queued frames)
VIEWER_QUEUE_BYTES = 8 * 1024 * 1024
#: how long a browser has from the answer to a connected peer connection
CONNECT_TIMEOUT_S = 30.0
#: the largest SDP offer taken
MAX_OFFER_BYTES = 64 * 1024
#: an SPS or PPS longer than this is not kept
MAX_PARAMETER_SET_BYTES = 1024
_START_CODE = b"\x00\x00\x00\x01"
#: PyAV decoders of the codecs a track may transcode
_DECODERS = {"h265": "hevc"}


class ViewerError(Exception):
    """A viewer could not be started: `status` is the HTTP status the API answers with (400 an
    offer that cannot be answered, 415 a codec the browser cannot take, 504 no video came);
    `codec` names the stream's codec where it is the reason."""

    def __init__(self, status: int, reason: str, *, codec: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.codec = codec


class ViewerFeed(FrameQueue):
    """The hub consumer of one viewer: video frames only, in a bounded queue that drops to the
    next keyframe when the viewer falls behind or the camera's packets were lost."""

    name = "webrtc"

    def __init__(
        self, maxsize: int = VIEWER_QUEUE_FRAMES, max_bytes: int = VIEWER_QUEUE_BYTES
    ) -> None:
        super().__init__(maxsize, max_bytes)
        self._skipping = True  # a browser can start at a keyframe only
        #: the codec of the first video frame (None until one came)
        self.codec: str | None = None
        self.received = 0
        #: called once when the stream ends for good, with the reason
        self.on_stream_end: Callable[[str], None] | None = None
        self._first: asyncio.Future[None] | None = None

    def on_unit(self, unit: AccessUnit) -> None:
        if unit.stream_id < 0xE0:
            return  # audio: the browser gets video only
        self.received += 1
        if self.codec is None:
            self.codec = unit.codec
            self._settle()
        super().on_unit(unit)

    def on_loss(self, packets: int) -> None:
        """Frames after a hole would show as damage until the next keyframe: skip to it."""
        self.dropped += len(self.items)
        self.items.clear()
        self.bytes = 0
        self._skipping = True

    def on_end(self, reason: str) -> None:
        super().on_end(reason)
        self._settle()
        if self.on_stream_end is not None:
            callback, self.on_stream_end = self.on_stream_end, None
            callback(reason)

    def _settle(self) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(None)

    async def first_codec(self) -> str:
        """The codec of the stream's video, once a frame came; EOFError if the stream ended
        first."""
        while self.codec is None:
            if self.ended is not None:
                raise EOFError(self.ended)
            self._first = asyncio.get_running_loop().create_future()
            await self._first
        return self.codec


class ParameterSets:
    """Keeps an H.264 stream's latest SPS and PPS and puts them in front of an IDR access unit
    that comes without them, so a decoder can start at any keyframe."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def apply(self, data: bytes) -> bytes:
        """The access unit (Annex-B), with the parameter sets added where it needs them."""
        has_sps = has_pps = has_idr = False
        nals = list(iter_nal_units("h264", data))
        for index, (offset, nal_type) in enumerate(nals):
            if nal_type == H264_SPS or nal_type == H264_PPS:
                end = nals[index + 1][0] - 3 if index + 1 < len(nals) else len(data)
                nal = data[offset:end].rstrip(b"\x00")
                if len(nal) <= MAX_PARAMETER_SET_BYTES:
                    if nal_type == H264_SPS:
                        self.sps, has_sps = nal, True
                    else:
                        self.pps, has_pps = nal, True
            elif nal_type == H264_IDR:
                has_idr = True
        if not has_idr or (has_sps and has_pps) or self.sps is None or self.pps is None:
            return data
        missing = b""
        if not has_sps:
            missing += _START_CODE + self.sps
        if not has_pps:
            missing += _START_CODE + self.pps
        return missing + data


class PtsTimeline:
    """A viewer's 90 kHz timeline: starts at 0 and only moves forward.

    It follows the camera's PTS (33 bits, starting anywhere, wrapping) frame to frame. A frame
    without PTS, or one whose PTS goes back or jumps more than `max_step_s` (a camera that
    restarted, a stream invited again), moves the timeline on by the time that passed on the
    caller's clock instead, within 1 tick and `max_step_s`.
    """

    def __init__(self, max_step_s: float = 2.0) -> None:
        self.max_step = int(max_step_s * CLOCK_RATE)
        self.position = 0
        self._last_pts: int | None = None
        self._last_now: float | None = None

    def next(self, pts: int | None, now: float) -> int:
        """The timeline's time for a frame with `pts` (or None) arriving at `now` (seconds)."""
        last_pts, last_now = self._last_pts, self._last_now
        self._last_now = now
        if pts is not None:
            self._last_pts = pts % PTS_MODULO
        if last_now is None:
            return self.position
        step = None
        if pts is not None and last_pts is not None:
            step = (pts - last_pts) % PTS_MODULO
            if step > self.max_step:
                step = None
        if step is None:
            step = round((now - last_now) * CLOCK_RATE)
        self.position += min(max(step, 1), self.max_step)
        return self.position


class HubVideoTrack(MediaStreamTrack):
    """The video track of one viewer: the feed's frames as aiortc takes them.

    H.264 frames are returned as `av.Packet`s (Annex-B, time base 1/90000), which aiortc
    packetises as they are. With `transcode`, frames of another codec (H.265) are decoded off
    the loop and returned as pictures for aiortc to encode as H.264. A frame of a codec the
    track may not pass on ends it (`end_reason` says why).
    """

    kind = "video"

    def __init__(
        self, feed: ViewerFeed, *, transcode: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.feed = feed
        self.transcode = transcode
        self.clock = clock
        self.timeline = PtsTimeline()
        self.parameter_sets = ParameterSets()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.end_reason: str | None = None
        self._decoder: Any = None
        self._decoder_codec: str | None = None
        self._pending: list[av.VideoFrame] = []

    async def recv(self) -> Frame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        while not self._pending:
            try:
                unit = await self.feed.get()
            except EOFError as exc:
                self._end(f"stream ended: {exc}")
                raise MediaStreamError from None
            pts = self.timeline.next(unit.pts, self.clock())
            if unit.codec == "h264":
                data = self.parameter_sets.apply(unit.data)
                packet = av.Packet(data)
                packet.pts = packet.dts = pts
                packet.time_base = TIME_BASE
                self.frames_sent += 1
                self.bytes_sent += len(data)
                return packet
            if not self.transcode:
                self._end(f"the stream's video is now {unit.codec}, which is not passed on")
                raise MediaStreamError
            await self._decode(unit, pts)
        frame = self._pending.pop(0)
        self.frames_sent += 1
        return frame

    async def _decode(self, unit: AccessUnit, pts: int) -> None:
        if self._decoder is None or self._decoder_codec != unit.codec:
            name = _DECODERS.get(unit.codec)
            if name is None:
                self._end(f"cannot decode {unit.codec} video")
                raise MediaStreamError
            self._decoder = av.CodecContext.create(name, "r")
            self._decoder_codec = unit.codec
        decoder = self._decoder
        packet = av.Packet(unit.data)
        packet.pts = pts
        packet.time_base = TIME_BASE
        loop = asyncio.get_running_loop()
        try:
            frames = await loop.run_in_executor(None, decoder.decode, packet)
        except av.FFmpegError as exc:  # a damaged frame: the next keyframe repairs it
            log.debug("webrtc: %s frame not decoded: %s", unit.codec, exc)
            return
        for frame in frames:
            frame.pts = pts
            frame.time_base = TIME_BASE
            self._pending.append(frame)
        self.bytes_sent += len(unit.data)

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.stop()


class Hub(Protocol):
    """What `Viewers` needs of the stream hub (`media.hub.StreamHub`). A hub with media
    workers also has `workers` (`workers.pool.MediaWorkers`, else None) and `streams`."""

    async def subscribe(
        self, channel_id: str, consumer: Any, *, transport: str | None = None,
        from_keyframe: bool = True,
    ) -> LiveStream: ...

    def unsubscribe(
        self, channel_id: str, consumer: Any, *, linger: bool = True,
        reason: str = "no consumers left",
    ) -> None: ...


class Viewer:
    """One browser watching one channel.

    With media workers its peer connection, track and feed run in the channel's worker:
    `remote` is then this process's handle on it, `feed` that handle (the stream's
    consumer here), and the counters and the connection's state are the worker's last
    report (at most `workers.pool.STATS_S` old).
    """

    def __init__(self, viewer_id: str, channel_id: str, user: str, started: float) -> None:
        self.id = viewer_id
        self.channel_id = channel_id
        self.user = user
        #: wall time the viewer was asked for
        self.started = started
        self.feed: ViewerFeed | RemoteViewer = ViewerFeed()
        self.track: HubVideoTrack | None = None
        self.pc: RTCPeerConnection | None = None
        self.transceiver: Any = None  # the pc's video transceiver, once the offer is taken
        self.remote: RemoteViewer | None = None
        self.state = "starting"  # starting | playing | ended
        self.source_codec: str | None = None
        #: called once when the viewer ends, with the reason
        self.on_end: Callable[[Viewer, str], None] | None = None
        self.end_reason: str | None = None
        self.connected_at: float | None = None
        self._subscribed = False
        self._connect_timer: asyncio.TimerHandle | None = None

    @property
    def frames_sent(self) -> int:
        if self.remote is not None:
            return int(self.remote.reported.get("frames_sent", 0))
        return self.track.frames_sent if self.track is not None else 0

    def counters(self) -> dict[str, Any]:
        """The peer connection's state and the feed's and track's counters."""
        if self.remote is not None:
            return self.remote.counters()
        return {
            "connection": self.pc.connectionState if self.pc is not None else None,
            "frames_received": self.feed.received,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.track.bytes_sent if self.track is not None else 0,
            "dropped": self.feed.dropped,
            "queued": len(self.feed.items) if isinstance(self.feed, ViewerFeed) else 0,
            "connected_at": self.connected_at,
        }

    def as_json(self) -> dict[str, Any]:
        counters = self.counters()
        out = {
            "session_id": self.id,
            "channel_id": self.channel_id,
            "user": self.user,
            "started": self.started,
            "state": self.state,
            "connection": counters["connection"],
            "codec": "h264",
            "source_codec": self.source_codec,
            "frames_received": counters["frames_received"],
            "frames_sent": counters["frames_sent"],
            "bytes_sent": counters["bytes_sent"],
            "dropped": counters["dropped"],
            "queued": counters["queued"],
        }
        if self.remote is not None and self.remote.worker is not None:
            out["worker"] = self.remote.worker.index
        return out


def ice_configuration(servers: tuple[IceServer, ...]) -> RTCConfiguration:
    """The peer connections' ICE servers: the configured ones, else none at all (host
    candidates only; aiortc would otherwise ask a public STUN server)."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in servers
    ])


class Viewers:
    """The WebRTC viewers of a node, by session ID.

    :param hub: the stream hub the viewers subscribe to.
    :param wall: the clock `Viewer.started` is read from.
    :param connect_timeout_s: how long a browser has from the answer to a connected peer
        connection before the viewer ends.
    """

    def __init__(
        self, hub: Hub, *, wall: Callable[[], float] = time.time,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.hub = hub
        self.wall = wall
        self.connect_timeout_s = connect_timeout_s
        self.viewers: dict[str, Viewer] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self.viewers)

    def get(self, viewer_id: str) -> Viewer | None:
        return self.viewers.get(viewer_id)

    def count(self, channel_id: str | None = None) -> int:
        """Viewers of the channel (or of every channel), those being set up included."""
        return sum(1 for v in self.viewers.values()
                   if channel_id is None or v.channel_id == channel_id)

    def reserve(self, channel_id: str, user: str, viewer_id: str | None = None) -> Viewer:
        """A new viewer, counted from now on; `start` it, or `end` it. `viewer_id`: the ID
        it has (a media worker's viewers have the node's IDs), else a new one."""
        if self._closed:
            raise ViewerError(503, "the node is stopping")
        if viewer_id is None or viewer_id in self.viewers:
            viewer_id = secrets.token_urlsafe(12)
        while viewer_id in self.viewers:
            viewer_id = secrets.token_urlsafe(12)
        viewer = Viewer(viewer_id, channel_id, user, self.wall())
        self.viewers[viewer_id] = viewer
        return viewer

    async def start(
        self, viewer: Viewer, offer: str, *, ice_servers: tuple[IceServer, ...] = (),
        transcode_h265: bool = False, first_frame_timeout_s: float = 10.0,
    ) -> str:
        """Answer the browser's `offer` (SDP, receiving video) with the channel's video;
        returns the SDP answer once ICE gathering is done. `ice_servers` empty: host
        candidates only. With media workers (the hub's `workers`) the peer connection runs in
        the channel's worker (`_start_remote`).

        Raises ViewerError (400, 415, 502, 504; 410 for a viewer ended meanwhile by DELETE or
        node stop; 500 for what aiortc failed at, 503 a media worker that failed) or the
        hub's StreamError; the viewer has then ended.
        """
        workers = getattr(self.hub, "workers", None)
        if workers is not None:
            return await self._guarded(viewer, self._start_remote(
                workers, viewer, offer, ice_servers, transcode_h265, first_frame_timeout_s))
        return await self._guarded(viewer, self._start(
            viewer, offer, ice_servers, transcode_h265, first_frame_timeout_s))

    async def take_offer(
        self, viewer: Viewer, offer: str, ice_servers: tuple[IceServer, ...] = ()
    ) -> None:
        """The first half of `start`, as a media worker runs it: the peer connection made
        and the browser's offer taken. Raises as `start` does; the viewer has then ended."""
        await self._guarded(viewer, self._take_offer(viewer, offer, ice_servers))

    async def answer(
        self, viewer: Viewer, *, transcode_h265: bool = False,
        first_frame_timeout_s: float = 10.0,
    ) -> str:
        """The second half of `start`, once the viewer's feed is on the stream: the SDP
        answer. Raises as `start` does; the viewer has then ended."""
        return await self._guarded(viewer, self._answer(viewer, transcode_h265,
                                                        first_frame_timeout_s))

    async def _guarded(self, viewer: Viewer, starting: Coroutine[Any, Any, _T]) -> _T:
        try:
            return await starting
        except (ViewerError, StreamError) as exc:
            self.end(viewer.id, exc.reason)
            raise
        except Exception as exc:
            if viewer.state == "ended":  # ended meanwhile, under aiortc's feet
                raise ViewerError(410, viewer.end_reason or "ended") from None
            log.exception("webrtc viewer %s of %s could not be started", viewer.id,
                          viewer.channel_id)
            reason = f"not started: {type(exc).__name__}: {exc}"
            self.end(viewer.id, reason)
            raise ViewerError(500, reason) from None
        except BaseException:
            self.end(viewer.id, "not started: cancelled")
            raise

    async def _start(
        self, viewer: Viewer, offer: str, ice_servers: tuple[IceServer, ...],
        transcode_h265: bool, first_frame_timeout_s: float,
    ) -> str:
        await self._take_offer(viewer, offer, ice_servers)
        feed = viewer.feed

        def stream_ended(reason: str) -> None:
            self.end(viewer.id, f"stream ended: {reason}")

        feed.on_stream_end = stream_ended
        viewer._subscribed = True
        await self.hub.subscribe(viewer.channel_id, feed, from_keyframe=True)
        self._check(viewer)
        return await self._answer(viewer, transcode_h265, first_frame_timeout_s)

    async def _take_offer(
        self, viewer: Viewer, offer: str, ice_servers: tuple[IceServer, ...]
    ) -> None:
        if len(offer.encode()) > MAX_OFFER_BYTES:
            raise ViewerError(400, f"the offer is longer than {MAX_OFFER_BYTES} bytes")
        pc = viewer.pc = RTCPeerConnection(ice_configuration(ice_servers))
        transceiver = viewer.transceiver = pc.addTransceiver("video", direction="sendonly")
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() in ("video/h264", "video/rtx")]
        transceiver.setCodecPreferences(h264)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc raises ValueError and its own errors alike
            raise ViewerError(400, f"the offer cannot be answered with H.264 video: "
                                   f"{exc or type(exc).__name__}") from None
        # The offer's direction, seen from this side (aiortc keeps it only privately): the
        # browser must want to receive.
        if transceiver.mid is None or transceiver._offerDirection not in ("sendonly", "sendrecv"):
            raise ViewerError(400, "the offer has no video to receive")
        self._check(viewer)

    async def _answer(
        self, viewer: Viewer, transcode_h265: bool, first_frame_timeout_s: float
    ) -> str:
        pc, transceiver, feed = viewer.pc, viewer.transceiver, viewer.feed
        assert pc is not None and transceiver is not None and isinstance(feed, ViewerFeed)
        try:
            codec = await asyncio.wait_for(feed.first_codec(), first_frame_timeout_s)
        except TimeoutError:
            raise ViewerError(504, f"no video from the camera in {first_frame_timeout_s:g} s") \
                from None
        except EOFError as exc:
            raise ViewerError(502, f"the stream ended: {exc}") from None
        self._check(viewer)
        viewer.source_codec = codec
        if codec != "h264" and not (transcode_h265 and codec == "h265"):
            raise ViewerError(415, f"the channel's video is {codec}, which browsers do not "
                                   f"play over WebRTC", codec=codec)
        track = viewer.track = HubVideoTrack(feed, transcode=codec != "h264")

        def track_ended() -> None:
            # aiortc stops the track when it cannot send any more: the browser closed DTLS.
            dtls = transceiver.sender.transport
            closed = dtls is not None and dtls.state in ("closed", "failed")
            self.end(viewer.id, track.end_reason or (
                f"peer connection closed by the browser (DTLS {dtls.state})" if closed
                else f"sending stopped (peer connection {pc.connectionState})"))

        track.on("ended", track_ended)
        transceiver.sender.replaceTrack(track)

        @pc.on("connectionstatechange")
        def state_changed() -> None:
            state = pc.connectionState
            if state == "connected" and viewer.connected_at is None:
                viewer.connected_at = self.wall()
                if viewer._connect_timer is not None:
                    viewer._connect_timer.cancel()
            elif state in ("failed", "closed"):
                self.end(viewer.id, f"peer connection {state}")

        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # gathers the ICE candidates first
        self._check(viewer)
        viewer.state = "playing"
        viewer._connect_timer = asyncio.get_running_loop().call_later(
            self.connect_timeout_s, self._connect_due, viewer.id
        )
        return str(pc.localDescription.sdp)

    async def _start_remote(
        self, workers: MediaWorkers, viewer: Viewer, offer: str,
        ice_servers: tuple[IceServer, ...], transcode_h265: bool, first_frame_timeout_s: float,
    ) -> str:
        """A viewer whose peer connection, track and feed run in the channel's media worker
        (`workers.viewers`): the worker takes the offer (before the stream is pulled, so an
        offer refused with 400 pulls nothing), this process joins the stream with the
        viewer's `RemoteViewer` (no frames come over; the stream's `_feed` has the worker
        feed the viewer from the stream it receives), then the worker answers."""
        if len(offer.encode()) > MAX_OFFER_BYTES:
            raise ViewerError(400, f"the offer is longer than {MAX_OFFER_BYTES} bytes")
        remote = viewer.remote = RemoteViewer(viewer.id, viewer.channel_id, viewer.user)
        viewer.feed = remote
        remote.on_worker_end = lambda reason: self.end(viewer.id, reason)
        await self._remote_step(viewer, workers.open_viewer(remote, {
            "offer": offer,
            "ice_servers": [{"urls": list(s.urls), "username": s.username,
                             "credential": s.credential} for s in ice_servers],
            "connect_timeout_s": self.connect_timeout_s,
            "queue_frames": VIEWER_QUEUE_FRAMES, "queue_bytes": VIEWER_QUEUE_BYTES,
        }))
        self._check(viewer)

        def stream_ended(reason: str) -> None:
            self.end(viewer.id, f"stream ended: {reason}")

        remote.on_stream_end = stream_ended
        viewer._subscribed = True
        try:
            await self.hub.subscribe(viewer.channel_id, remote, from_keyframe=True)
        except BaseException:
            if viewer.channel_id not in getattr(self.hub, "streams", {}):
                workers.release(viewer.channel_id)  # the viewer took the channel's worker
            raise
        self._check(viewer)
        answer = await self._remote_step(viewer, remote.answer(
            transcode_h265=transcode_h265, first_frame_timeout_s=first_frame_timeout_s))
        self._check(viewer)
        viewer.source_codec = answer.get("codec")
        viewer.state = "playing"
        return str(answer["sdp"])

    async def _remote_step(
        self, viewer: Viewer, step: Coroutine[Any, Any, dict[str, Any]]
    ) -> dict[str, Any]:
        """A request to the viewer's worker: a refusal there raised here as it was (its
        status), a worker that failed as 503."""
        try:
            answer = await step
        except (OSError, TimeoutError) as exc:
            self._check(viewer)
            raise ViewerError(503, f"media worker: {exc or type(exc).__name__}") from None
        status = answer.get("status")
        if status is not None:
            remote = viewer.remote
            if remote is not None and remote.stream_ended is not None:
                raise ViewerError(502, f"the stream ended: {remote.stream_ended}")
            self._check(viewer)
            raise ViewerError(int(status), str(answer.get("reason")), codec=answer.get("codec"))
        return answer

    def _check(self, viewer: Viewer) -> None:
        if viewer.state == "ended":
            raise ViewerError(410, viewer.end_reason or "ended")

    def _connect_due(self, viewer_id: str) -> None:
        viewer = self.viewers.get(viewer_id)
        if viewer is not None and viewer.connected_at is None:
            self.end(viewer_id, f"the browser did not connect within {self.connect_timeout_s:g} s")

    def end(self, viewer_id: str, reason: str) -> Viewer | None:
        """End a viewer (once): off the stream, its peer connection closed, `on_end` told."""
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None or viewer.state == "ended":
            return None
        viewer.state = "ended"
        viewer.end_reason = reason
        if viewer._connect_timer is not None:
            viewer._connect_timer.cancel()
        viewer.feed.on_stream_end = None
        if viewer._subscribed:
            self.hub.unsubscribe(viewer.channel_id, viewer.feed, reason=reason)
        closing: Coroutine[Any, Any, Any] | None = None
        if viewer.remote is not None:
            closing = viewer.remote.close(reason)  # in its worker, where its pc runs
        else:
            viewer.feed.on_end(reason)  # a track waiting for a frame ends
            if viewer.pc is not None:
                closing = viewer.pc.close()
        if closing is not None:
            task = asyncio.get_running_loop().create_task(
                closing, name=f"webrtc close {viewer_id}"
            )
            self._closing.add(task)
            task.add_done_callback(self._closed_one)
        log.info("webrtc viewer %s of %s (%s) ended: %s", viewer_id, viewer.channel_id,
                 viewer.user, reason)
        if viewer.on_end is not None:
            callback, viewer.on_end = viewer.on_end, None
            try:
                callback(viewer, reason)
            except Exception:
                log.exception("webrtc viewer %s: its end handler failed", viewer_id)
        return viewer

    def _closed_one(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing a webrtc peer connection failed: %s", task.exception())

    async def close(self, reason: str = "node stopping") -> None:
        """End every viewer and wait for their peer connections to close."""
        self._closed = True
        for viewer_id in list(self.viewers):
            self.end(viewer_id, reason)
        await self.wait_closed()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait for the peer connections of the viewers ended so far to close."""
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=timeout)

    def snapshot(self) -> list[dict[str, Any]]:
        return [viewer.as_json() for viewer in self.viewers.values()]
