"""What a live stream hands its frames to, and the error a stream start fails with."""

from __future__ import annotations

import asyncio
from collections import deque

from rtp.ps import AccessUnit


class StreamError(Exception):
    """A stream could not be started. `status` is the HTTP status the API answers with
    (404 unknown channel, 409 device offline, 502 refused by the device, 503 no resources,
    504 no answer); `sip_status` is the device's SIP status when it sent one."""

    def __init__(
        self, status: int, reason: str, sip_status: int | None = None, *,
        transport_fault: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.sip_status = sip_status
        #: another transport could avoid it (a refused or timed-out connect, 488)
        self.transport_fault = transport_fault


class Consumer:
    """What subscribes to a live stream. Override what you need; every call is on the loop and
    must return quickly.

    :cvar persistent: keep the stream pulled through failures (a recorder); others are dropped
        when the attempt they wait for fails.
    :cvar wants_rtp: also call `on_rtp` with every RTP payload, in sequence order.
    :cvar remote_feed: what it needs of a stream that a media worker receives
        (`media.workers` > 1): ``units`` (the frames, sent over to the node's process: the
        default), ``record`` (the worker records the frames itself; `on_unit` and `on_loss`
        are not called in the node's process), ``relay`` (a relay to an upstream whose sender
        runs in the worker, fed there: `workers.relays.RemoteRelay`; no frames are sent over
        for it, `on_unit` and `on_loss` are not called, `on_gap` and `on_end` are),
        ``viewer`` (a WebRTC viewer whose peer connection runs in the worker, fed there:
        `workers.viewers.RemoteViewer`, called as a relay is) or ``none`` (it only keeps the
        stream up).
    """

    name = "consumer"
    persistent = False
    wants_rtp = False
    remote_feed = "units"

    def on_unit(self, unit: AccessUnit) -> None:
        """A demuxed frame; `unit.ps_bytes` are the original PS bytes that carried it."""

    def on_rtp(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        """An RTP payload, valid only during the call."""

    def on_loss(self, packets: int) -> None:
        """`packets` RTP packets never arrived; the frames around them may be damaged."""

    def on_gap(self, reason: str) -> None:
        """The media stopped (`reason`); the stream is being invited again."""

    def on_end(self, reason: str) -> None:
        """The stream ended for good for this consumer."""


class FrameQueue(Consumer):
    """A bounded frame queue for an asynchronous reader (`await get()`).

    When the reader falls `maxsize` frames or `max_bytes` bytes (a unit's elementary data and
    its PS bytes) behind, frames are dropped (and counted) until the next video keyframe, so the
    reader resumes with a decodable picture and the ingest never waits. `get()` raises
    `EOFError` with the reason once the stream has ended.
    """

    name = "queue"

    def __init__(self, maxsize: int = 250, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.items: deque[AccessUnit] = deque()
        self.bytes = 0
        self.dropped = 0
        self.ended: str | None = None
        self._skipping = False
        self._waiter: asyncio.Future[None] | None = None

    def on_unit(self, unit: AccessUnit) -> None:
        if self._skipping:
            if not (unit.keyframe and unit.stream_id >= 0xE0):
                self.dropped += 1
                return
            self._skipping = False
        size = len(unit.data) + len(unit.ps_bytes)
        if len(self.items) >= self.maxsize or self.bytes + size > self.max_bytes:
            self.dropped += len(self.items) + 1
            self.items.clear()
            self.bytes = 0
            self._skipping = size > self.max_bytes or not (
                unit.keyframe and unit.stream_id >= 0xE0
            )
            if self._skipping:
                return
        self.items.append(unit)
        self.bytes += size
        self._wake()

    def on_end(self, reason: str) -> None:
        self.ended = reason
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> AccessUnit:
        while not self.items:
            if self.ended is not None:
                raise EOFError(self.ended)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        unit = self.items.popleft()
        self.bytes -= len(unit.data) + len(unit.ps_bytes)
        return unit


class _ApiHold(Consumer):
    """Keeps a stream started with POST /api/channels/{id}/live until DELETE."""

    name = "api"
    remote_feed = "none"
