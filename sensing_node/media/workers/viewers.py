"""WebRTC viewers of a stream a media worker receives, run in that worker.

With media workers (`media.workers` > 1) a browser's peer connection, its `HubVideoTrack` and
its bounded `ViewerFeed` (`media.webrtc`) run in the worker that receives the channel, so the
frames go from the worker's demuxer to aiortc there and never cross to the node's process;
aiortc's ICE and DTLS sockets are the worker's own. The worker runs them with a
`media.webrtc.Viewers` of its own (`WorkerViewers`), the same code as the node's process runs
with one media process, split where the node's process joins the stream: the worker takes the
offer (``viewer``), the node's process subscribes the viewer's `RemoteViewer` to the channel's
`LiveStream` (whose `_feed` names the stream's viewers to the worker, ``viewers``), then the
worker waits for the first frame and answers (``viewer_answer``).

What the node's process keeps is the `media.webrtc.Viewer` record (the API lists, ends and
audits it as any other) and a `RemoteViewer`: the viewer's place among the stream's consumers
(so the stream stays pulled and its end ends the viewer), and the counters the worker last
reported. A viewer that ends in the worker (the browser closed or failed, it did not connect
in time, its track ended) is reported with a ``viewer_end`` event; a worker that dies ends
its viewers with ``media worker N stopped``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..consumers import Consumer

if TYPE_CHECKING:
    from ..webrtc import Viewer, ViewerError, ViewerFeed, Viewers
    from .pool import _Worker
    from .worker import Worker

log = logging.getLogger(__name__)

#: the counters a worker reports of each viewer (`media.webrtc.Viewer.counters`)
COUNTERS = ("connection", "frames_received", "frames_sent", "bytes_sent", "dropped",
            "queued", "connected_at")


class RemoteViewer(Consumer):
    """The node's handle on a viewer whose peer connection runs in a media worker.

    A consumer of the channel's `LiveStream` that takes no frames (`remote_feed = "viewer"`):
    it keeps the stream pulled and hears of its end (`on_stream_end`, as `ViewerFeed`). It
    ends by itself through `on_worker_end` (the worker's ``viewer_end``, or the worker died).
    """

    name = "webrtc"
    remote_feed = "viewer"

    def __init__(self, viewer_id: str, channel_id: str, user: str = "") -> None:
        self.viewer_id = viewer_id
        self.channel_id = channel_id
        self.user = user
        self.worker: _Worker | None = None
        self.state = "new"  # new | open | ended
        #: the worker's last report (`COUNTERS`)
        self.reported: dict[str, Any] = {}
        #: the stream's end, as `ViewerFeed.on_stream_end`
        self.on_stream_end: Callable[[str], None] | None = None
        #: the viewer ended in the worker (or the worker died), with the reason
        self.on_worker_end: Callable[[str], object] | None = None
        #: why the stream ended, once it did
        self.stream_ended: str | None = None

    # what the API reads of a viewer's feed
    @property
    def received(self) -> int:
        return int(self.reported.get("frames_received", 0))

    @property
    def dropped(self) -> int:
        return int(self.reported.get("dropped", 0))

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: 0 for name in COUNTERS}
        out["connection"] = out["connected_at"] = None
        out.update({k: v for k, v in self.reported.items() if k in COUNTERS})
        return out

    def open_request(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"op": "viewer", "vid": self.viewer_id, "channel": self.channel_id,
                "user": self.user, **options}

    async def answer(
        self, *, transcode_h265: bool, first_frame_timeout_s: float
    ) -> dict[str, Any]:
        """The worker's answer once the first frame came: ``sdp`` and ``codec``, or the
        ``status``, ``reason`` (and ``codec``) it refused with."""
        from .pool import REQUEST_TIMEOUT_S

        worker = self.worker
        if worker is None or self.state != "open":
            raise ConnectionError("the viewer is not open in a media worker")
        return await worker.request(
            {"op": "viewer_answer", "vid": self.viewer_id, "transcode_h265": transcode_h265,
             "first_frame_timeout_s": first_frame_timeout_s},
            timeout=first_frame_timeout_s + REQUEST_TIMEOUT_S,
        )

    def close(self, reason: str) -> Coroutine[Any, Any, Any] | None:
        """End the viewer in its worker (idempotent; `on_worker_end` is not called for it):
        the request that closes its peer connection there, if there is one to make."""
        if self.state == "ended":
            return None
        self.state = "ended"
        worker = self.worker
        if worker is None or worker.viewers.get(self.viewer_id) is not self:
            return None
        del worker.viewers[self.viewer_id]
        if not worker.alive:
            return None
        return worker.request({"op": "viewer_close", "vid": self.viewer_id, "reason": reason})

    # ----- the stream's calls -----
    def on_end(self, reason: str) -> None:
        self.stream_ended = reason
        if self.on_stream_end is not None:
            callback, self.on_stream_end = self.on_stream_end, None
            callback(reason)

    # ----- from the worker -----
    def update(self, stats: dict[str, Any]) -> None:
        if self.state != "ended":
            self.reported = stats

    def ended(self, reason: str, stats: dict[str, Any] | None = None) -> None:
        """The viewer ended in the worker (``viewer_end``), or the worker died."""
        if stats:
            self.update(stats)
        if self.state == "ended":
            return
        self.state = "ended"
        callback, self.on_worker_end = self.on_worker_end, None
        if callback is not None:
            try:
                callback(reason)
            except Exception:
                log.exception("webrtc viewer %s: its end handler failed", self.viewer_id)


class WorkerViewers:
    """The viewers a media worker runs, with a `media.webrtc.Viewers` of its own.

    The requests ``viewer`` (`open`), ``viewer_answer`` (`answer`) and ``viewer_close``
    (`close`) drive it; `feeds` gives a stream the feeds of the viewers the node's process
    named for it. A viewer that ends here by itself is reported with ``viewer_end``, once it
    has answered (while it starts, the node's process learns of its end from the answer).
    aiortc is imported with the first viewer, not with every worker.
    """

    def __init__(self, worker: Worker) -> None:
        from ..webrtc import Viewers

        self.worker = worker
        self.viewers: Viewers = Viewers(_NoHub(), wall=worker.wall)
        self._starting: set[str] = set()
        self._quiet: set[str] = set()  # ended by the node's process: no event back

    async def open(self, message: dict[str, Any]) -> dict[str, Any]:
        """Make the viewer's peer connection and take the offer; {} or the refusal."""
        from ...settings import IceServer
        from ..webrtc import ViewerError, ViewerFeed

        viewers = self.viewers
        viewers.connect_timeout_s = float(message["connect_timeout_s"])
        viewer = viewers.reserve(str(message["channel"]), str(message.get("user", "")),
                                 str(message["vid"]))
        if viewer.id != message["vid"]:  # the node's process reuses no ID it has open
            viewers.end(viewer.id, "not started: the ID is taken")
            raise ValueError(f"viewer {message['vid']} is open already")
        viewer.feed = ViewerFeed(int(message["queue_frames"]), int(message["queue_bytes"]))
        viewer.on_end = self._ended
        self._starting.add(viewer.id)
        servers = tuple(IceServer(urls=tuple(s["urls"]), username=s.get("username"),
                                  credential=s.get("credential"))
                        for s in message.get("ice_servers") or ())
        try:
            await viewers.take_offer(viewer, str(message["offer"]), servers)
        except ViewerError as exc:
            self._starting.discard(viewer.id)
            return _refusal(exc)
        except BaseException:
            self._starting.discard(viewer.id)
            raise
        return {}

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """Wait for the viewer's first frame and answer: ``sdp`` and ``codec``, or the
        refusal."""
        from ..webrtc import ViewerError

        viewer = self.viewers.get(str(message["vid"]))
        if viewer is None:
            return {"status": 410, "reason": "ended"}
        try:
            sdp = await self.viewers.answer(
                viewer, transcode_h265=bool(message.get("transcode_h265")),
                first_frame_timeout_s=float(message["first_frame_timeout_s"]))
        except ViewerError as exc:
            return _refusal(exc)
        finally:
            self._starting.discard(viewer.id)
        return {"sdp": sdp, "codec": viewer.source_codec}

    def close(self, message: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """End a viewer the node's process ended; answered once its peer connection has
        closed."""
        viewer_id = str(message["vid"])
        if self.viewers.get(viewer_id) is None:
            return None
        self._quiet.add(viewer_id)
        self.viewers.end(viewer_id, str(message.get("reason", "closed")))
        return self.viewers.wait_closed()

    def feeds(self, viewer_ids: list[str]) -> list[ViewerFeed]:
        from ..webrtc import ViewerFeed

        out = []
        for viewer_id in viewer_ids:
            viewer = self.viewers.get(viewer_id)
            if viewer is not None and isinstance(viewer.feed, ViewerFeed):
                out.append(viewer.feed)
        return out

    def stats(self) -> dict[str, Any]:
        return {viewer.id: viewer.counters() for viewer in self.viewers.viewers.values()}

    def _ended(self, viewer: Viewer, reason: str) -> None:
        """Off its stream here; the node's process told, unless it ended it or the viewer
        is still starting."""
        feed = viewer.feed
        for stream in self.worker.streams.values():
            if feed in stream.viewers:
                stream.set_viewers([f for f in stream.viewers if f is not feed])
        if viewer.id in self._quiet:
            self._quiet.discard(viewer.id)
            return
        if viewer.id in self._starting:
            return
        counters = viewer.counters()
        self.worker.link.send({"ev": "viewer_end", "vid": viewer.id, "reason": reason,
                               "stats": counters})

    async def stop(self, reason: str) -> None:
        """End every viewer (the node's process is told) and wait for the peer connections
        to close."""
        await self.viewers.close(reason)

    def shutdown(self, reason: str) -> None:
        """The node's process is gone: end every viewer (their peer connections close as
        the loop ends)."""
        for viewer_id in list(self.viewers.viewers):
            self.viewers.end(viewer_id, reason)


class _NoHub:
    """A worker's viewers are put on their stream by the node's process (`feeds`), never
    through a hub of the worker's."""

    async def subscribe(self, channel_id: str, consumer: Any, **_: Any) -> Any:
        raise RuntimeError("a media worker's viewers are subscribed by the node's process")

    def unsubscribe(self, channel_id: str, consumer: Any, **_: Any) -> None:
        """Nothing to do: `WorkerViewers._ended` takes the feed off its stream."""


def _refusal(exc: ViewerError) -> dict[str, Any]:
    out: dict[str, Any] = {"status": exc.status, "reason": exc.reason}
    if exc.codec:
        out["codec"] = exc.codec
    return out
