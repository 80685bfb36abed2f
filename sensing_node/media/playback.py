"""Playback relays: a recorded range sent to an upper platform at a pace (GB/T 28181 9.8, 9.9).

A `PlaybackRelay` owns a `RelaySender` (the same RTP session as a live relay: UDP, TCP active
or TCP passive, the upstream's SSRC) and feeds it from `recorder.playback.PlaybackReader`
instead of a camera. The stored PS of each frame goes out exactly as it is in the segment
file, cut into RTP packets; RTP timestamps follow the stored PTS and stay continuous over a
recording gap or a seek.

Two halves:

* **Reading** runs off the event loop, in the hub's reader threads: one batch at a time of
  at most `BATCH_BYTES`, only while fewer than `MAX_QUEUED` bytes wait to be sent. The reader
  itself holds at most `READ_AHEAD` of the files (its bound), so a session holds at most
  `MAX_QUEUED + BATCH_BYTES + READ_AHEAD` (about 5 MiB) of recording, whatever the upstream
  does. A seek or a change to keyframes-only is carried to the reader with the next batch;
  frames of a batch read before it are dropped.
* **Sending** is a task on the loop. Frame ``n`` is due at ``t0 + (wall_n - wall_0) / speed``,
  the origin taken again after a pause, a seek, a speed change and a recording gap (so a gap
  is skipped, not waited out). ``speed`` 0 sends as fast as the transport takes it. A TCP
  upstream that reads slower than the pace is waited for (nothing is dropped); one that reads
  nothing for `media.timeout_s` ends the session (the sender's "upstream not reading").

When the range is out (and a TCP upstream has read everything), `on_done` is called once: the
cascade then sends `MediaStatus 121` and waits for the upstream's BYE. A seek after that plays
again and reports the end again.

A segment whose SHA-256 does not match the index is never sent: it is logged, listed in
`altered` (which the session's audit entry carries), and either skipped (the next segment
follows as after a gap) or, with ``on_altered="end"``, the session ends with the reason.

Controls (from MANSRTSP, via `MediaControl.steer_playback`): pause, play (resume), seek to a
wall time, speed (at 4 and above only keyframes are sent).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any

from recorder.index import SegmentRow
from recorder.playback import Frame, Gap, PlaybackEvent, PlaybackReader, SegmentAltered
from rtp.ps import AccessUnit

from .relay import RelaySender

__all__ = [
    "ALTERED_ACTIONS",
    "BATCH_BYTES",
    "KEYFRAMES_ONLY_FROM",
    "MAX_QUEUED",
    "PlaybackCommand",
    "PlaybackRelay",
    "PlaybackSpec",
    "READ_AHEAD",
]

log = logging.getLogger(__name__)

#: what may wait, read and not sent yet, per session
MAX_QUEUED = 2 << 20
#: the most bytes of frames one read hands over
BATCH_BYTES = 512 << 10
#: the reader's own bound (recorder.playback.PlaybackReader read_ahead)
READ_AHEAD = 2 << 20
#: from this speed on only video keyframes are sent (MANSRTSP Scale 4 and 8)
KEYFRAMES_ONLY_FROM = 4.0
ALTERED_ACTIONS = ("skip", "end")
#: a TCP upstream gets this long to read what was sent before the end is reported
_DRAIN_WAIT_S = 10.0
_POLL_S = 0.02


@dataclass(frozen=True)
class PlaybackSpec:
    """One playback or download of a channel's recordings to an upper platform.

    `segments` are the index rows of the channel that overlap the range, paths relative to
    `root`. `speed` is the pace (1 real time, 4 a download at four times, 0 as fast as the
    transport takes it). `on_altered` is what a segment that fails its check does to the
    session: ``skip`` it, or ``end`` the session.
    """

    channel_id: str
    ssrc: int
    transport: str
    remote: tuple[str, int]
    root: str
    segments: tuple[SegmentRow, ...]
    start: float
    end: float
    speed: float = 1.0
    on_altered: str = "skip"


@dataclass(frozen=True)
class PlaybackCommand:
    """A change to a running playback: ``pause``, or ``play`` (resume), with an optional
    `seek` (wall time to go on from, at its last keyframe) and `speed`."""

    action: str
    seek: float | None = None
    speed: float | None = None


class PlaybackRelay:
    """One playback session's reading and pacing around its `RelaySender`."""

    def __init__(
        self,
        spec: PlaybackSpec,
        sender: RelaySender,
        *,
        executor: Executor | None,
        on_done: Callable[[], object],
        on_end: Callable[[str], object],
    ) -> None:
        if spec.speed < 0:
            raise ValueError(f"speed must be 0 or more, not {spec.speed}")
        if spec.on_altered not in ALTERED_ACTIONS:
            raise ValueError(f"on_altered must be one of {ALTERED_ACTIONS}")
        self.spec = spec
        self.sender = sender
        self.executor = executor
        self.on_done = on_done
        self.on_end = on_end
        self.speed = spec.speed
        self.reader = PlaybackReader(
            spec.root, spec.segments, spec.start, spec.end,
            read_ahead=READ_AHEAD,
        )
        #: only video keyframes (a fast playback); a download's speed never sets it
        self.keyframes_only = False
        sender.on_writable = self._poke
        # counters and state, for stats()
        self.paused = False
        self.done = False  # the range is out and on_done was called
        self.position: float | None = None  # wall time of the last frame sent
        self.gaps = 0
        self.altered: list[str] = []
        self.peak_queued = 0
        self.ended = False
        # the queue between the halves
        self._queue: deque[PlaybackEvent] = deque()
        self._queued = 0
        self._exhausted = False
        self._generation = 0  # bumped by a seek: a batch read before it is dropped
        self._seek_to: float | None = None
        self._fetch: asyncio.Future[tuple[list[PlaybackEvent], bool]] | None = None
        self._wake = asyncio.Event()
        self._origin: tuple[float, float] | None = None  # (loop time, frame wall) of pacing
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None

    # ----- control -----
    def start(self) -> None:
        """The upstream ACKed: start the sender, reading and pacing."""
        if self._task is not None or self.ended:
            return
        self.sender.start()
        self._more()
        self._task = self._loop.create_task(self._pump(), name="playback pump")
        self._task.add_done_callback(self._pump_done)

    def steer(self, command: PlaybackCommand) -> None:
        if self.ended:
            return
        if command.action == "pause":
            self.paused = True
        elif command.action == "play":
            self.paused = False
        else:
            raise ValueError(f"unknown playback action {command.action!r}")
        if command.speed is not None:
            if command.speed <= 0:
                raise ValueError(f"speed must be positive, not {command.speed}")
            self.speed = command.speed
            fast = command.speed >= KEYFRAMES_ONLY_FROM
            if fast != self.keyframes_only:
                self.keyframes_only = fast
                if command.seek is None and self.position is not None:
                    # what is queued was read for the other speed: read again from here
                    self._seek(self.position)
        if command.seek is not None:
            self._seek(command.seek)
        self._origin = None
        self._poke()

    def _seek(self, wall: float) -> None:
        self._generation += 1
        self._queue.clear()
        self._queued = 0
        self._seek_to = wall
        self._exhausted = False
        self.done = False
        self.sender.on_gap("seek")  # timestamps go on from the last ones
        self._more()

    def close(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.sender.on_writable = None
        self.sender.close(reason)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._queue.clear()
        self._queued = 0
        fetch = self._fetch
        if fetch is None:
            self.reader.close()
        else:  # the reader is busy in a thread: close it once it is done there
            fetch.add_done_callback(lambda _: self.reader.close())

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.close(reason)
        try:
            self.on_end(reason)
        except Exception:
            log.exception("playback of %s: on_end failed", self.spec.channel_id)

    def _poke(self) -> None:
        self._wake.set()

    # ----- reading (off the loop) -----
    def _more(self) -> None:
        """Read the next batch unless one is under way, the queue is full or the range out."""
        if self._fetch is not None or self.ended or self._exhausted:
            return
        if self._queued >= MAX_QUEUED:
            return
        seek, self._seek_to = self._seek_to, None
        fetch = self._loop.run_in_executor(
            self.executor, self._read_batch, seek, self.keyframes_only
        )
        self._fetch = fetch
        fetch.add_done_callback(partial(self._fetched, self._generation))

    def _read_batch(self, seek: float | None, keyframes_only: bool) -> tuple[
            list[PlaybackEvent], bool]:
        """On a reader thread: apply a seek or speed change, then read up to BATCH_BYTES."""
        reader = self.reader
        if seek is not None:
            reader.seek(seek)
        reader.keyframes_only = keyframes_only
        events: list[PlaybackEvent] = []
        size = 0
        for event in reader:
            events.append(event)
            if isinstance(event, Frame):
                size += len(event.ps_bytes)
                if size >= BATCH_BYTES:
                    return events, False
        return events, True

    def _fetched(self, generation: int,
                 done: asyncio.Future[tuple[list[PlaybackEvent], bool]]) -> None:
        self._fetch = None
        if self.ended or done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            log.error("playback of %s: reading failed: %s", self.spec.channel_id, exc)
            self._end(f"reading the recording failed: {exc}")
            return
        events, exhausted = done.result()
        if generation == self._generation:
            self._queue.extend(events)
            self._queued += sum(len(e.ps_bytes) for e in events if isinstance(e, Frame))
            self.peak_queued = max(self.peak_queued, self._queued)
            self._exhausted = exhausted
        self._poke()
        self._more()

    # ----- sending (on the loop) -----
    async def _pump(self) -> None:
        sender = self.sender
        while True:
            self._wake.clear()
            if sender.state == "ended":
                return
            if self.paused or not sender.writable:
                await self._wake.wait()  # a control, or the transport taking data again
                self._origin = None  # the pace starts over from here
                continue
            if not self._queue:
                if self._exhausted and self._fetch is None and not self.done:
                    await self._finish()
                    continue
                self._more()
                await self._wake.wait()
                continue
            event = self._queue[0]
            if isinstance(event, Frame):
                delay = self._due(event)
                if delay > 0.001:
                    try:
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                        continue  # woken early (a control): look again
                    except TimeoutError:
                        pass
                self._queue.popleft()
                self._queued -= len(event.ps_bytes)
                self._send(event)
                if self._queued < MAX_QUEUED // 2:
                    self._more()
                if self.speed == 0:
                    await asyncio.sleep(0)  # others get the loop between frames
            else:
                self._queue.popleft()
                self._note(event)

    def _due(self, frame: Frame) -> float:
        """Seconds until `frame` is due (0 or less: now)."""
        if self.speed == 0:
            return 0.0
        now = self._loop.time()
        if self._origin is None:
            self._origin = (now, frame.wall)
            return 0.0
        at, wall = self._origin
        return at + (frame.wall - wall) / self.speed - now

    def _send(self, frame: Frame) -> None:
        self.position = frame.wall
        unit = AccessUnit(0xE0 if frame.video else 0xC0, "unknown", frame.pts, None,
                          frame.keyframe, b"", frame.ps_bytes, frame.offset)
        self.sender.on_unit(unit)

    def _note(self, event: PlaybackEvent) -> None:
        if isinstance(event, Gap):
            self.gaps += 1
            log.info("playback of %s skips %.1f s not recorded (%s)", self.spec.channel_id,
                     event.end - event.start, event.reason)
            self.sender.on_gap(event.reason)
            self._origin = None
        elif isinstance(event, SegmentAltered):
            text = f"segment {event.segment.path}: {event.reason}"
            self.altered.append(text)
            del self.altered[:-16]
            log.warning("playback of %s: %s, not sent", self.spec.channel_id, text)
            if self.spec.on_altered == "end":
                self._end(f"recording altered: {text}")

    async def _finish(self) -> None:
        """The range is out: let a TCP upstream read what waits, then report the end."""
        sender = self.sender
        waited = 0.0
        while sender.write_buffer() and waited < _DRAIN_WAIT_S and sender.state != "ended":
            await asyncio.sleep(_POLL_S)
            waited += _POLL_S
        if sender.state == "ended" or self._queue or not self._exhausted:
            return  # ended meanwhile, or a seek came
        self.done = True
        try:
            self.on_done()
        except Exception:
            log.exception("playback of %s: on_done failed", self.spec.channel_id)

    def _pump_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("playback of %s failed: %r", self.spec.channel_id, exc)
            self._end(f"playback failed: {exc}")

    def stats(self) -> dict[str, Any]:
        stats = self.sender.stats()
        stats.update(
            kind="playback",
            channel_id=self.spec.channel_id,
            speed=self.speed,
            keyframes_only=self.keyframes_only,
            paused=self.paused,
            position=self.position,
            done=self.done,
            gaps=self.gaps,
            altered=list(self.altered),
            queued_bytes=self._queued,
            peak_queued=self.peak_queued,
            forwarding=False,
        )
        return stats
