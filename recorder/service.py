"""The recorder service: one writer thread behind a queue, so the media hot path never blocks.

The caller (an asyncio loop receiving RTP) calls :meth:`Recorder.submit` per access unit; that
only puts a tuple on a ``queue.SimpleQueue`` (no lock: one thread submits). The thread owns
every :class:`SegmentWriter`, so file writes, hashing and SQLite inserts all happen there; what
waits for the disk (the periodic syncs of open segments, and the fsyncs and rename of each
segment that closes) runs on a second thread, ``recorder-sync`` (see Durability), whenever
``fsync_s`` is set. Errors are counted, logged
(throttled) and never end the thread. The queue is bounded by ``max_queue`` units and by
``max_queue_bytes`` bytes of PS: past either, units are dropped and the channel resumes at its
next keyframe, with a gap recorded.

Durability: every ``fsync_s`` seconds the writer thread starts a pass over the open segments
that writes out what each has buffered, one segment at a time between the units it takes off
the queue, spread over about ``SYNC_SPREAD`` of the interval (all at once, hundreds of buffers
held the queue up for most of a second), and finished at once if the next pass comes first. A
second thread, ``recorder-sync``, then makes them durable, so the writer never waits for the
disk in between: one fdatasync per ``.part`` file that grew since the last pass (and its
directory the first time), or, with ``sync_whole_fs=True`` on Linux, one ``syncfs(2)`` of the
file system holding the recordings (one call and one journal commit per pass however many
segments are open, but it writes out whatever else is pending on that file system, and in
``bench/writer.py`` at 400 streams it held up the writer's own writes in 2 of 5 passes, which
the fdatasyncs never did). A power cut therefore loses at most ``fsync_s`` seconds of each
open segment plus the pass's spread and the time of its syncs (a pass that finds the last one
still running waits for it, so on a disk that cannot keep up the loss grows with its backlog),
plus the units still in the queue. A segment that has closed is never lost: the sync thread
fsyncs the file, renames it and fsyncs its directory, and only then hands it back to the
writer thread, which indexes it chained to its channel's last hash, with the others made
durable meanwhile in one transaction (a segment that cannot be made durable is left as
``.part`` for recovery, and the chain goes on from the last segment indexed).

The writer thread is the index's only writer: segments, gaps, recovery and the retention sweep's
deletions (:meth:`Recorder.sweep` reads on its caller's thread and hands each batch of
deletions to the writer) all commit through its connection.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from rtp.ps import AccessUnit

from . import segments
from .index import RecordIndex, SegmentRow
from .recovery import recover
from .retention import BATCH_SIZE, check_retention_days, sweep
from .segments import BUFFER_BYTES, SegmentWriter, check_channel_id, local_tz

__all__ = ["FSYNC_S", "MAX_QUEUE", "MAX_QUEUE_BYTES", "Recorder", "RecorderClosed"]

log = logging.getLogger("recorder.service")

_LOG_EVERY_S = 10.0  # at most one error log line per this many seconds
_STOP = "stop"
_SYNC_CHECK_ITEMS = 256  # in a long batch, read the clock for the sync pass this often

#: Default byte bound of the queue: at 300 cameras of 4 Mbit/s (150 MB/s) about 1.7 s of a
#: stalled writer, what the 10,000-unit bound holds at their ~20 KB frames, while a queue of
#: 300 KB keyframes can no longer grow to gigabytes.
MAX_QUEUE_BYTES = 256 << 20
MAX_QUEUE = 10_000
#: Default interval of the sync pass (fdatasync of every open segment), seconds.
FSYNC_S = 2.0
#: The share of the interval over which a pass writes out the open segments' buffers, between
#: the units it takes off the queue.
SYNC_SPREAD = 0.25


class RecorderClosed(RuntimeError):
    """The recorder was closed before it could do what was asked."""


class Recorder:
    """Records channels under ``root`` with an index at ``index_path``
    (``<root>/index.sqlite3`` by default).

    :param segment_s: target segment duration (cut at the next video keyframe).
    :param tz: time zone for file names (the node's local zone by default).
    :param clock: wall clock, the default ``now`` of :meth:`sweep`.
    :param on_segment: called in the writer thread with each row once indexed.
    :param max_queue: queue depth (units) past which units are dropped.
    :param max_queue_bytes: PS bytes the queue may hold; a unit that would go past it is dropped.
    :param fsync_s: interval of the sync pass over the open segments; 0 or None: segments are
        made durable only when they close.
    :param sync_whole_fs: make each pass durable with one ``syncfs(2)`` of the file system
        holding ``root`` (where the platform has it) instead of one fdatasync per segment that
        grew (see Durability above).
    :param direct_io: write segments past the page cache (``O_DIRECT``) where the file system
        takes it (``recorder.segments``); False: through the cache.
    :param monotonic: the clock of the sync pass (tests pass a fake one).
    :param recover_on_start: first thing in the thread, finish and index what a crash left
        (``recorder.recovery.recover``); the rows are announced through ``on_segment`` too.

    Counters: ``units``, ``bytes``, ``segments_closed``, ``write_errors``, ``dropped_units``,
    ``deleted`` (by retention), ``syncs`` (sync calls of the passes: syncfs, or fdatasync per
    file), ``sync_passes`` (those that found a segment grown), ``sync_s`` (seconds spent in
    them, on the sync thread); ``queue_depth``, ``queue_bytes``; ``last_error``.

    Each counter has one owner thread, so no ``+=`` ever races with another: :meth:`submit`'s
    thread (the event loop in the node) owns the queue's byte intake and the drops at the door;
    the sync thread owns ``syncs``, ``sync_passes``, ``sync_s`` and the errors of its syncs; the
    writer thread owns everything else. ``dropped_units``, ``queue_bytes`` and ``write_errors``
    add up the sides when read.
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
        max_queue: int = MAX_QUEUE,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        buffer_bytes: int = BUFFER_BYTES,
        fsync_s: float | None = FSYNC_S,
        monotonic: Callable[[], float] = time.monotonic,
        recover_on_start: bool = True,
        sync_whole_fs: bool = False,
        direct_io: bool = True,
    ) -> None:
        if segment_s < 1:
            raise ValueError(f"segment_s must be at least 1 second, not {segment_s}")
        if fsync_s is not None and not fsync_s >= 0:
            raise ValueError(f"fsync_s must be 0 (off) or a positive interval, not {fsync_s}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index = RecordIndex(index_path if index_path is not None else root_index(self.root))
        self.segment_s = segment_s
        self.tz = tz if tz is not None else local_tz()
        self.clock = clock
        self.on_segment = on_segment
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.buffer_bytes = buffer_bytes
        self.fsync_s = fsync_s or None
        self.sync_whole_fs = sync_whole_fs and segments.syncfs is not None
        self.monotonic = monotonic
        self.direct_io = direct_io
        #: the writers' aligned buffer, used on the writer thread only (an anonymous map: its
        #: pages are taken when first written)
        self._stage = segments.Stage(buffer_bytes + segments.BLOCK) if direct_io else None
        #: how long the writer thread pauses when it has emptied the queue
        self.batch_pause_s = 0.01
        #: the share of ``fsync_s`` over which a sync pass spreads its write-outs
        self.sync_spread = SYNC_SPREAD
        # Owned by the writer thread:
        self.units = 0
        self.bytes = 0
        self.segments_closed = 0
        self._write_errors = 0
        self.deleted = 0
        self.last_error: str | None = None
        self._writer_dropped = 0  # not written: waiting for a keyframe after a loss
        self._bytes_out = 0  # PS bytes of the units taken off the queue
        # Owned by the thread that calls submit():
        self._door_dropped = 0  # refused at submit(): queue full, or closed
        self._bytes_in = 0  # PS bytes of the units queued
        self._overflowing: set[str] = set()
        # Owned by the sync thread:
        self.syncs = 0
        self.sync_passes = 0
        self.sync_s = 0.0
        self._sync_errors = 0
        self._writers: dict[str, SegmentWriter] = {}
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._enqueue = self._queue.put  # (submit's, bound once)
        # Work for the sync thread, in order: sync passes (the files that grew, from
        # SegmentWriter.written_out) and closed segments to make durable; None stops it. The
        # durable segments come back to the writer thread through _durable, to be indexed
        # there. _pass_idle is set while no pass is pending or running; _sync_pending counts
        # the requests not yet done (under _sync_done, which drain() waits on).
        self._sync_requests: queue.SimpleQueue[
            list[tuple[int, Path, Path | None]] | segments.Closing | None
        ] = queue.SimpleQueue()
        self._pass_idle = threading.Event()
        self._pass_idle.set()
        # The sync pass under way on the writer thread (_sync, _write_out): the writers still
        # to write out, one every _pass_stride items, and the files written out so far.
        self._pass_todo: deque[SegmentWriter] = deque()
        self._pass_files: list[tuple[int, Path, Path | None]] = []
        self._pass_stride = 1
        self._pass_countdown = 1
        self._pass_began: tuple[float, int] | None = None  # (when, _items) at the last pass
        self._items = 0  # requests taken off the queue
        self._sync_done = threading.Condition()
        self._sync_pending = 0
        self._durable: queue.SimpleQueue[segments.Closing] = queue.SimpleQueue()
        self._chain: dict[str, str | None] = {}  # each channel's last hash (writer thread)
        self._syncer: threading.Thread | None = None
        if self.fsync_s is not None:
            self._syncer = threading.Thread(target=self._sync_loop, name="recorder-sync",
                                            daemon=True)
            self._syncer.start()
        # Requests are put under this lock, and so is the stop: none lands behind it unanswered.
        self._put_lock = threading.Lock()
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

    @property
    def queue_bytes(self) -> int:
        """PS bytes of the units queued and not yet taken by the writer thread."""
        return self._bytes_in - self._bytes_out

    @property
    def dropped_units(self) -> int:
        """Units not recorded: refused by :meth:`submit` (queue full, closed) or left out by
        the writer (waiting for a keyframe after a loss)."""
        return self._door_dropped + self._writer_dropped

    @property
    def write_errors(self) -> int:
        """Failed writes, syncs, requests and hooks (see ``last_error``)."""
        return self._write_errors + self._sync_errors

    def submit(self, channel_id: str, unit: AccessUnit, wall: float) -> None:
        """Queue ``unit`` of ``channel_id``, received at ``wall`` (Unix seconds). Never blocks.

        Call it from one thread (the media path's): the intake counters are that thread's own,
        so no lock is taken (``SimpleQueue.put`` is atomic by itself).
        """
        if self._closed:
            self._door_dropped += 1
            return
        size = len(unit.ps_bytes)
        queued = self._bytes_in + size
        if (
            queued - self._bytes_out > self.max_queue_bytes
            or self._queue.qsize() >= self.max_queue
        ):
            self._door_dropped += 1
            if channel_id not in self._overflowing:
                self._overflowing.add(channel_id)
                self._queue.put(("lost", channel_id, wall, "recorder queue full"))
            return
        if self._overflowing:
            self._overflowing.discard(channel_id)
        self._bytes_in = queued
        self._enqueue(("unit", channel_id, unit, wall))

    def gap(self, channel_id: str, start_wall: float, end_wall: float, reason: str) -> None:
        """Record that ``channel_id`` was not received between the two times."""
        self._put(("gap", channel_id, start_wall, end_wall, reason))

    def lost(self, channel_id: str, wall: float, reason: str = "packet loss") -> None:
        """Packets were lost at ``wall``: resume at the next keyframe, recording the gap."""
        self._put(("lost", channel_id, wall, reason))

    def planned(self, channel_id: str, since: float, up: float | None = None) -> None:
        """The channel is to be recorded from ``since``; ``up``: when the node started
        (``SegmentWriter.planned``: the time since the channel's record ended becomes a "node
        not running" gap, the wait for its stream a gap if a loss is reported first).

        Handled after the recovery of what a crash left, so the record's end includes the
        recovered segments."""
        self._put(("planned", channel_id, since, up))

    def sweep(
        self,
        retention_days: float,
        now: float | None = None,
        *,
        allow_short: bool = False,
        reader: RecordIndex | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> list[SegmentRow]:
        """Run the retention sweeper (``recorder.retention.sweep``) on the calling thread and
        return the rows it deleted; ``now`` defaults to the clock.

        It finds the rows through ``reader`` (a read-only connection of the caller's; by
        default one opened for this sweep) and removes the files on the calling thread, while
        each batch of deletions is committed by the writer thread, between its own inserts
        (:meth:`record_deletions`): the index keeps a single writer. Deletions are logged and
        kept in the index. Not to be called on the writer thread (``on_segment``).
        """
        check_retention_days(retention_days, allow_short)
        if threading.current_thread() in (self._thread, self._syncer):
            raise RuntimeError("Recorder.sweep would wait for its own thread")
        if self._closed:  # before any file goes: its deletion could not be indexed any more
            raise RecorderClosed("the recorder is closed")
        at = self.clock() if now is None else now
        own = reader is None
        index = RecordIndex(self.index.path, read_only=True) if reader is None else reader
        try:
            return sweep(self.root, index, retention_days, at, allow_short=allow_short,
                         batch_size=batch_size, record=self.record_deletions)
        finally:
            if own:
                index.close()

    def record_deletions(self, rows: list[SegmentRow], deleted_at: float) -> int:
        """Have the writer thread move ``rows`` to the index's ``deletions`` (one transaction)
        and wait for it; returns how many. :class:`RecorderClosed` once the recorder is
        closed."""
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        if not self._put(("deletions", None, list(rows), deleted_at, done)):
            raise RecorderClosed("the recorder is closed; deletions not recorded")
        return done.result()

    def close_channel(self, channel_id: str, wall: float | None = None) -> None:
        """End the channel's open segment (e.g. on BYE), and a gap still open at ``wall`` (when
        recording the channel stops; by default at its last frame)."""
        self._put(("close_channel", channel_id, wall))

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

    def close(self, timeout: float | None = None, *, wall: float | None = None) -> None:
        """Drain the queue, close every open segment (durable and indexed), stop the thread.

        A gap still open ends at ``wall`` (when recording stops; by default at its channel's
        last frame)."""
        with self._put_lock:
            if not self._closed:
                self._closed = True
                self._queue.put((_STOP, wall))
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.index.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: tuple[Any, ...]) -> bool:
        with self._put_lock:
            if self._closed:  # shutting down: late requests from the media path are ignored
                return False
            self._queue.put(item)
            return True

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        get, empty = self._queue.get, self._queue.empty
        clock, idle = self.monotonic, self.fsync_s  # idle: wake up for the sync pass
        every = idle or math.inf
        next_sync = clock() + every
        check = 0  # items until the clock is read again for the sync pass (0: a batch starts)
        todo = self._pass_todo  # the sync pass's writers still to write out
        item: tuple[Any, ...] | None
        stopped_at: float | None = None  # where gaps still open end (close(wall=...))
        while True:
            if check:  # within a batch the queue holds more: no timeout (no clock read) needed
                item = get()
            else:
                try:
                    item = get(timeout=idle)
                except queue.Empty:
                    item = None
            if check <= 0 or item is None:  # a batch starts (or a long one goes on)
                check = _SYNC_CHECK_ITEMS
                if clock() >= next_sync and self._sync():
                    next_sync = clock() + every
            if item is None:
                check = 0
                while todo and empty():  # nothing waits: the pass goes on at once
                    self._write_out(1)
                continue
            check -= 1
            if item[0] == _STOP:
                stopped_at = item[1]
                break
            self._items += 1
            try:
                self._handle(item)
            except Exception as exc:  # the thread must outlive any one error
                self._failed(item, exc)
            if todo:  # a sync pass under way: its write-outs between the units
                self._pass_countdown -= 1
                if self._pass_countdown <= 0:
                    self._pass_countdown = self._pass_stride
                    self._write_out(1)
            if empty():
                check = 0  # the next item starts a batch: the clock is read before it
                while todo and empty():  # nothing waits: go on with the pass meanwhile
                    self._write_out(1)
                if empty():
                    # Let work gather: one wake-up per pause instead of one per access unit,
                    # and the media thread's put() finds nobody to wake (no futex call per
                    # frame).
                    time.sleep(self.batch_pause_s)
        if todo:
            self._write_out(len(todo))
        for channel_id in list(self._writers):
            try:
                self._handle(("close_channel", channel_id, stopped_at))
            except Exception as exc:
                self._failed(("close_channel", channel_id), exc)
        if self._syncer is not None:  # what it was given is done first, then indexed here
            self._sync_requests.put(None)
            self._syncer.join()
            self._index_durable()

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "unit":  # (per unit: _apply's work, inline)
            unit = item[2]
            self._bytes_out += len(unit.ps_bytes)  # off the queue, whatever becomes of it
            writer = self._writers.get(item[1]) or self._writer(item[1])
            units, size, errors = writer.units, writer.bytes, writer.write_errors
            rows: list[SegmentRow] = []
            try:
                rows = writer.write(unit, item[3])
            finally:
                if writer.units != units:
                    self.units += 1
                else:
                    self._writer_dropped += 1
                if writer.bytes != size:
                    self.bytes += writer.bytes - size
                if writer.write_errors != errors:
                    self._count_errors(writer, writer.write_errors - errors)
            for row in rows:
                self.segments_closed += 1
                self._announce(row)
            return
        if kind == "durable":
            self._index_durable()
            return
        if kind in ("barrier", "flush"):
            try:
                if self._pass_todo:  # what was asked before the request is done before it
                    self._write_out(len(self._pass_todo))
                if kind == "barrier":  # drain(): what the sync thread was given is done too
                    with self._sync_done:
                        self._sync_done.wait_for(lambda: self._sync_pending == 0)
                    self._index_durable()
                else:
                    for writer in list(self._writers.values()):
                        self._apply(writer, writer.flush)
            finally:
                item[1].set()
            return
        if kind == "recover":
            for row in recover(self.root, self.index, tz=self.tz):
                self._announce(row)
            return
        if kind == "deletions":
            done = item[4]
            try:
                count = self.index.record_deletions(item[2], item[3])
            except BaseException as exc:
                done.set_exception(exc)
                raise
            self.deleted += count
            done.set_result(count)
            return
        channel_id = item[1]
        writer = self._writer(channel_id)
        if kind == "gap":
            self._apply(writer, writer.gap, item[2], item[3], item[4])
        elif kind == "lost":
            self._apply(writer, writer.lost, item[2], item[3])
        elif kind == "planned":
            self._apply(writer, writer.planned, item[2], item[3])
        elif kind == "close_channel":
            del self._writers[channel_id]
            self._apply(writer, writer.close, item[2])
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
                # closed segments are made durable and indexed on the sync thread, if any
                finisher=self._to_sync_thread if self._syncer is not None else None,
                direct=self.direct_io,
                stage=self._stage,
            )
            self._writers[channel_id] = writer
        return writer

    def _sync(self) -> bool:
        """Start a sync pass: every open segment's buffer is to be written out, and then the
        sync thread makes the segments that grew since the last pass durable. The write-outs
        are spread between the units over `sync_spread` of the interval (`_write_out`), so
        that the queue is not held up for one long stretch (at 400 streams, writing out every
        buffer at once took 0.3-0.7 s). A pass still writing out when the next is due is
        finished at once. False (nothing done) while the last pass's syncs still run."""
        todo = self._pass_todo
        if todo:
            self._write_out(len(todo))
        if not self._pass_idle.is_set():
            return False
        now = self.monotonic()
        handled = self._items
        if self._pass_began is not None and now > self._pass_began[0]:
            rate = (handled - self._pass_began[1]) / (now - self._pass_began[0])
        else:
            rate = 0.0
        self._pass_began = (now, handled)
        todo.extend(self._writers.values())
        # Units expected over the spread, shared out between the writers (at least one unit
        # between two write-outs); an idle writer thread goes faster (see _run).
        spread = self.sync_spread * (self.fsync_s or 0.0)
        self._pass_stride = max(1, int(rate * spread / max(1, len(todo))))
        self._pass_countdown = self._pass_stride
        return True

    def _write_out(self, count: int) -> None:
        """Write out the buffers of the next `count` writers of the sync pass; once none is
        left, hand the files that grew to the sync thread."""
        todo, files = self._pass_todo, self._pass_files
        dup = not self.sync_whole_fs
        for _ in range(min(count, len(todo))):
            writer = todo.popleft()
            try:
                self._apply(writer, writer.written_out, files, dup)
            except Exception as exc:
                self._failed(("sync", writer.channel_id), exc)
        if not todo and files:
            self._pass_files = []
            self._pass_idle.clear()
            self._to_sync_thread(files)

    def _to_sync_thread(self, item: list[tuple[int, Path, Path | None]] | segments.Closing) -> None:
        with self._sync_done:
            self._sync_pending += 1
        self._sync_requests.put(item)

    def _sync_loop(self) -> None:
        """The sync thread: sync passes and segment closes in the order the writer made them,
        each sync call on the disk's time, not the writer's."""
        root_fd = -1
        while (item := self._sync_requests.get()) is not None:
            if isinstance(item, segments.Closing):
                try:
                    segments.make_durable(item)
                except Exception as exc:  # (the thread must outlive any one error)
                    self._sync_failed(f"channel {item.channel_id}: cannot make {item.part} "
                                      "durable; left for recovery", exc)
                else:
                    self._durable.put(item)
                    self._queue.put(("durable", None))  # wakes the writer to index it
                self._sync_request_done()
                continue
            began = self.monotonic()
            try:
                if self.sync_whole_fs:  # at once, whatever the number of files
                    if root_fd < 0:
                        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    assert segments.syncfs is not None
                    segments.syncfs(root_fd)
                    self.syncs += 1
                else:
                    self._sync_files(item)
            except Exception as exc:  # the thread must outlive any one error
                self._sync_failed("syncfs of the recordings", exc)
            finally:
                self.sync_passes += 1
                self.sync_s += self.monotonic() - began
                self._pass_idle.set()
                self._sync_request_done()
        if root_fd >= 0:
            os.close(root_fd)

    def _sync_request_done(self) -> None:
        with self._sync_done:
            self._sync_pending -= 1
            if not self._sync_pending:
                self._sync_done.notify_all()

    def _index_durable(self) -> None:
        """Index the segments the sync thread has made durable so far, in the order they
        closed, each chained to its channel's last hash, in one transaction (one commit for
        all), and announce them: the writer thread stays the index's one writer."""
        closings: list[segments.Closing] = []
        while True:
            try:
                closings.append(self._durable.get_nowait())
            except queue.Empty:
                break
        if not closings:
            return
        chain: dict[str, str | None] = {}
        fields = []
        try:
            for closing in closings:
                channel_id = closing.channel_id
                if channel_id not in chain:
                    chain[channel_id] = (self._chain[channel_id] if channel_id in self._chain
                                         else self.index.chain_head(channel_id))
                fields.append(segments.segment_fields(closing, chain[channel_id]))
                chain[channel_id] = closing.sha256
            rows = self.index.add_segments(fields)
        except Exception as exc:  # the files are durable: recovery indexes them at next start
            self._failed(("index", ", ".join(sorted(chain))), exc)
            return
        self._chain.update(chain)
        for row in rows:
            self.segments_closed += 1
            self._announce(row)

    def _sync_files(self, files: list[tuple[int, Path, Path | None]]) -> None:
        """fdatasync each file (and its directory the first time), closing its duplicate."""
        for fd, part, directory in files:
            try:
                os.fdatasync(fd)
                if directory is not None:
                    segments.fsync_dir(directory)
                self.syncs += 1
            except OSError as exc:
                self._sync_failed(f"cannot sync {part}", exc)
            finally:
                os.close(fd)

    def _sync_failed(self, what: str, exc: Exception) -> None:
        self._sync_errors += 1
        self.last_error = f"{what}: {exc}"
        self._log(self.last_error)

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
            self._writer_dropped += writer.dropped_units - before[3]
            if writer.write_errors != before[2]:
                self._count_errors(writer, writer.write_errors - before[2])
        for row in rows:
            self.segments_closed += 1
            self._announce(row)

    def _announce(self, row: SegmentRow) -> None:
        if self.on_segment is not None:
            try:
                self.on_segment(row)
            except Exception as exc:  # a hook must not stop recording
                self._failed(("on_segment", row.channel_id), exc)

    def _count_errors(self, writer: SegmentWriter, count: int) -> None:
        self._write_errors += count
        self.last_error = f"channel {writer.channel_id}: {writer.last_error}"
        self._log(self.last_error)

    def _failed(self, item: tuple[Any, ...], exc: Exception) -> None:
        self._write_errors += 1
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
