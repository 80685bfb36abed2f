"""The recorder service: one writer thread behind a queue, so the media hot path never blocks.

The caller (an asyncio loop receiving RTP) calls :meth:`Recorder.submit` per access unit; that
only puts a tuple on a ``queue.SimpleQueue``. The thread owns every :class:`SegmentWriter`,
so file writes, hashing, fsync and SQLite inserts all happen there. Errors are counted, logged
(throttled) and never end the thread. The queue is bounded by ``max_queue``: past it, units are
dropped and the channel resumes at its next keyframe, with a gap recorded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from rtp.ps import AccessUnit

from .index import RecordIndex, SegmentRow
from .recovery import recover
from .retention import check_retention_days, sweep
from .segments import BUFFER_BYTES, SegmentWriter, check_channel_id, local_tz

__all__ = ["Recorder"]

log = logging.getLogger("recorder.service")

_LOG_EVERY_S = 10.0  # at most one error log line per this many seconds
_STOP = "stop"


class Recorder:
    """Records channels under ``root`` with an index at ``index_path``
    (``<root>/index.sqlite3`` by default).

    :param segment_s: target segment duration (cut at the next video keyframe).
    :param tz: time zone for file names (the node's local zone by default).
    :param clock: wall clock, used for the time of a queue overflow.
    :param on_segment: called in the writer thread with each row once indexed.
    :param max_queue: queue depth past which units are dropped.
    :param recover_on_start: first thing in the thread, finish and index what a crash left
        (``recorder.recovery.recover``); the rows are announced through ``on_segment`` too.

    Counters: ``units``, ``bytes``, ``segments_closed``, ``write_errors``, ``dropped_units``,
    ``deleted`` (by retention); ``queue_depth``; ``last_error``.
    """

    def __init__(
        self,
        root: str | Path,
        index_path: str | Path | None = None,
        *,
        segment_s: float = 60.0,
        tz: tzinfo | None = None,
        clock: Callable[[], float] = time.time,
        on_segment: Callable[[SegmentRow], None] | None = None,
        max_queue: int = 10_000,
        buffer_bytes: int = BUFFER_BYTES,
        recover_on_start: bool = True,
    ) -> None:
        if segment_s < 1:
            raise ValueError(f"segment_s must be at least 1 second, not {segment_s}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = RecordIndex(index_path if index_path is not None else root_index(self.root))
        self.segment_s = segment_s
        self.tz = tz if tz is not None else local_tz()
        self.clock = clock
        self.on_segment = on_segment
        self.max_queue = max_queue
        self.buffer_bytes = buffer_bytes
        #: how long the writer thread pauses when it has emptied the queue
        self.batch_pause_s = 0.01
        self.units = 0
        self.bytes = 0
        self.segments_closed = 0
        self.write_errors = 0
        self.dropped_units = 0
        self.deleted = 0
        self.last_error: str | None = None
        self._writers: dict[str, SegmentWriter] = {}
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._overflowing: set[str] = set()
        self._closed = False
        self._last_log = float("-inf")
        self._suppressed = 0
        if recover_on_start:
            self._queue.put(("recover", None))
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    # -- caller side (any thread) --------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, channel_id: str, unit: AccessUnit, wall: float) -> None:
        """Queue ``unit`` of ``channel_id``, received at ``wall`` (Unix seconds). Never blocks."""
        if self._closed:
            self.dropped_units += 1
            return
        if self._queue.qsize() >= self.max_queue:
            self.dropped_units += 1
            if channel_id not in self._overflowing:
                self._overflowing.add(channel_id)
                self._queue.put(("lost", channel_id, wall, "recorder queue full"))
            return
        self._overflowing.discard(channel_id)
        self._queue.put(("unit", channel_id, unit, wall))

    def gap(self, channel_id: str, start_wall: float, end_wall: float, reason: str) -> None:
        """Record that ``channel_id`` was not received between the two times."""
        self._put(("gap", channel_id, start_wall, end_wall, reason))

    def lost(self, channel_id: str, wall: float, reason: str = "packet loss") -> None:
        """Packets were lost at ``wall``: resume at the next keyframe, recording the gap."""
        self._put(("lost", channel_id, wall, reason))

    def sweep(self, retention_days: float, now: float | None = None) -> None:
        """Run the retention sweeper (``recorder.retention.sweep``) in the writer thread;
        ``now`` defaults to the clock. Deletions are logged and kept in the index."""
        check_retention_days(retention_days)
        self._put(("sweep", None, retention_days, self.clock() if now is None else now))

    def close_channel(self, channel_id: str) -> None:
        """End the channel's open segment (e.g. on BYE)."""
        self._put(("close_channel", channel_id))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is handled; False on timeout."""
        done = threading.Event()
        if not self._put(("barrier", done)):
            return not self._thread.is_alive()
        return done.wait(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Like :meth:`drain`, and also write every buffered byte to its ``.part`` file."""
        done = threading.Event()
        if not self._put(("flush", done)):
            return not self._thread.is_alive()
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Drain the queue, close every open segment (durable and indexed), stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put((_STOP,))
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.index.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: tuple[Any, ...]) -> bool:
        if self._closed:  # shutting down: late requests from the media path are ignored
            return False
        self._queue.put(item)
        return True

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        queue_ = self._queue
        while True:
            item = queue_.get()
            if item[0] == _STOP:
                break
            try:
                self._handle(item)
            except Exception as exc:  # the thread must outlive any one error
                self._failed(item, exc)
            if queue_.empty():
                # Let work gather: one wake-up per pause instead of one per access unit, and
                # the media thread's put() finds nobody to wake (no futex call per frame).
                time.sleep(self.batch_pause_s)
        for channel_id in list(self._writers):
            try:
                self._handle(("close_channel", channel_id))
            except Exception as exc:
                self._failed(("close_channel", channel_id), exc)

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind in ("barrier", "flush"):
            try:
                if kind == "flush":
                    for writer in list(self._writers.values()):
                        self._apply(writer, writer.flush)
            finally:
                item[1].set()
            return
        if kind == "recover":
            for row in recover(self.root, self.index, tz=self.tz):
                self._announce(row)
            return
        if kind == "sweep":
            self.deleted += len(sweep(self.root, self.index, item[2], item[3]))
            return
        channel_id = item[1]
        writer = self._writer(channel_id)
        if kind == "unit":
            self._apply(writer, writer.write, item[2], item[3])
        elif kind == "gap":
            self._apply(writer, writer.gap, item[2], item[3], item[4])
        elif kind == "lost":
            self._apply(writer, writer.lost, item[2], item[3])
        elif kind == "close_channel":
            del self._writers[channel_id]
            self._apply(writer, writer.close)
        else:
            raise ValueError(f"unknown recorder request {kind!r}")

    def _writer(self, channel_id: str) -> SegmentWriter:
        writer = self._writers.get(channel_id)
        if writer is None:
            writer = SegmentWriter(
                self.root,
                self.index,
                check_channel_id(channel_id),
                segment_s=self.segment_s,
                tz=self.tz,
                buffer_bytes=self.buffer_bytes,
                log_errors=False,  # logged here, throttled
            )
            self._writers[channel_id] = writer
        return writer

    def _apply(
        self, writer: SegmentWriter, call: Callable[..., list[SegmentRow]], *args: Any
    ) -> None:
        """Run one writer call, fold its counter changes into ours and announce new rows."""
        before = (writer.units, writer.bytes, writer.write_errors, writer.dropped_units)
        try:
            rows = call(*args)
        finally:
            self.units += writer.units - before[0]
            self.bytes += writer.bytes - before[1]
            self.write_errors += writer.write_errors - before[2]
            self.dropped_units += writer.dropped_units - before[3]
            if writer.write_errors != before[2]:
                self.last_error = f"channel {writer.channel_id}: {writer.last_error}"
                self._log(self.last_error)
        for row in rows:
            self.segments_closed += 1
            self._announce(row)

    def _announce(self, row: SegmentRow) -> None:
        if self.on_segment is not None:
            try:
                self.on_segment(row)
            except Exception as exc:  # a hook must not stop recording
                self._failed(("on_segment", row.channel_id), exc)

    def _failed(self, item: tuple[Any, ...], exc: Exception) -> None:
        self.write_errors += 1
        self.last_error = f"{item[0]} for channel {item[1]}: {exc!r}"
        self._log(self.last_error, exc)

    def _log(self, message: str, exc: Exception | None = None) -> None:
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY_S:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more errors since the last report)"
        self._last_log, self._suppressed = now, 0
        log.error("recorder: %s", message, exc_info=exc)


def root_index(root: Path) -> Path:
    """The default index location for a recording root."""
    return root / "index.sqlite3"
