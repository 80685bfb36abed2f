"""Segment files: the original PS bytes of one channel, cut at video keyframes (GB/T 28181 App. C).

A segment is a byte-exact run of the PS stream as the camera sent it, starting at the pack header
that introduces a video keyframe (``rtp.ps.AccessUnit.ps_bytes`` of consecutive units
concatenate to the stream), so each file plays on its own. Layout::

    <root>/<channel>/<YYYY-MM-DD>/<YYYYmmddTHHMMSS.fff>.ps       (local time of the first frame)
    <root>/<channel>/<YYYY-MM-DD>/<YYYYmmddTHHMMSS.fff>.ps.part  (while being written)

Life of a segment: units are batched in memory and written about 1 MiB at a time. Where the
file system takes it (Linux: ext4, XFS, btrfs, tmpfs...), a segment is written past the page
cache (``O_DIRECT``): each batch is copied into a page-aligned buffer (:class:`Stage`) behind
the last partial block of the file, the whole blocks go out in one direct write and the rest
(under 4 KiB) in one ordinary write, so the file holds every byte of the batch when the call
returns, as before; the next batch writes that last block again, whole. At a few hundred
streams this costs about a third of the CPU of writing through the page cache (the kernel no
longer copies every byte into cache pages and tracks them dirty) and leaves the cache to the
index and to playback instead of filling it with recordings nobody reads back soon. Elsewhere
(or with ``direct=False``) a batch is one writev(2) of the units' own bytes. Then the segment's
SHA-256 is updated with the batch: in one call over the aligned buffer, or unit by unit
(hashlib takes no list of buffers, and joining the batch first costs more than the calls it
saves). ``sync()`` also writes out the batch and fdatasyncs the ``.part`` file,
and the directory holding it the first time; the recorder's periodic pass uses
``written_out()`` instead and leaves the syncing to a thread of its own. On close the file is
fsync'd, renamed from ``.part`` and its directory fsync'd, and only then indexed, with the SHA-256
computed while writing and the channel's previous hash (the chain). A ``.part`` left by a crash
or a power loss is finished by ``recorder.recovery``.

Every write goes through :func:`_write`, so tests can inject ``ENOSPC``. A failed write ends the
segment at the last unit written completely (truncate, fsync, index) and records a gap until
the next keyframe that can be written.

Gaps: a channel's record is a sequence of segments and gaps that never overlap, and a gap never
ends before it starts. The writer knows where the record ends (``recorded_until`` of the index,
then every segment and gap it adds) and starts no gap before that. A loss opens a gap that ends
at the next keyframe written; its reason is the first cause reported. ``planned()`` says when
the caller began to want the channel: the time since the record ended and the caller's start is
a "node not running" gap, and from then on the channel is waited for: a loss reported before
the first frame names that wait (``no answer to INVITE...``), frames that come first mean the
stream merely took that long to start (no gap).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from rtp.ps import AccessUnit

from .index import RecordIndex, SegmentRow

__all__ = [
    "NODE_NOT_RUNNING",
    "Closing",
    "NOT_STARTED",
    "PART_SUFFIX",
    "SEGMENT_SUFFIX",
    "SegmentWriter",
    "Stage",
    "check_channel_id",
    "fsync_dir",
    "index_segment",
    "local_tz",
    "make_durable",
    "parse_segment_name",
    "segment_fields",
    "segment_name",
    "syncfs",
]

log = logging.getLogger("recorder.segments")

SEGMENT_SUFFIX = ".ps"
PART_SUFFIX = ".ps.part"
BUFFER_BYTES = 1 << 20  # batch size of file writes
PTS_WRAP = 1 << 33
_NAME_FORMAT = "%Y%m%dT%H%M%S"

#: Reason of the gap between a channel's record and the node's start (``planned(up=...)``).
NODE_NOT_RUNNING = "not recorded: node not running"
#: Reason of a wait for a planned channel that ended (closed) before any frame or loss came.
NOT_STARTED = "not recorded: stream not started"


_IOV_MAX = 1024  # buffers per writev(2) call (Linux's UIO_MAXIOV)

#: ``os.O_DIRECT`` where the platform has it (Linux), else 0: then every write goes through the
#: page cache
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: What a direct write is aligned to: its file offset, its length and its buffer's address.
#: 4 KiB suits disks of 512-byte and of 4 KiB logical blocks alike.
BLOCK = 4096


def _write(fd: int, buffers: list[bytes | memoryview]) -> int:
    """The only place segment bytes reach the disk (tests patch it to inject errors): one
    writev(2) of the units' own bytes, so they are never copied into a staging buffer."""
    return os.writev(fd, buffers)


def _round_up(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class Stage:
    """The page-aligned buffer (an anonymous mmap) that direct writes go out of. A batch is
    copied into it, so one serves every segment writer of a thread, one batch at a time. It
    grows to the largest batch seen: the batch size plus the unit that filled it, and the
    partial block before it (under 4 KiB); a unit is at most one frame, which the receive path
    cuts at ``rtp.ps.MAX_BUFFERED`` (8 MiB), so the stage stays under 9 MiB and 4 KiB.

    ``refused`` is set when the file system refuses a direct write or O_DIRECT itself: the
    writers sharing the stage then write through the cache, and only the first says so."""

    def __init__(self, size: int = BUFFER_BYTES + BLOCK) -> None:
        self._map = mmap.mmap(-1, _round_up(size))
        self.refused = False

    def __len__(self) -> int:
        return len(self._map)

    def view(self, size: int) -> memoryview:
        """The buffer, at least ``size`` bytes of it."""
        if size > len(self._map):  # the old map goes once no view of it is left
            self._map = mmap.mmap(-1, _round_up(size))
        return memoryview(self._map)


def _from(chunks: list[bytes], offset: int) -> list[bytes | memoryview]:
    """The buffers of `chunks` from byte `offset` on (after a short write), at most _IOV_MAX."""
    out: list[bytes | memoryview] = []
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        out.append(memoryview(chunk)[offset:] if offset else chunk)
        offset = 0
        if len(out) == _IOV_MAX:
            break
    return out


def _load_syncfs() -> Callable[[int], None] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux (or a libc without it)
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        """syncfs(2): write out every file of the file system holding ``fd`` and flush the
        disk's cache, directory entries and sizes included (one call, one journal commit)."""
        if call(fd) != 0:  # ctypes releases the GIL for the call
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


#: ``syncfs(fd)`` where the platform has it (Linux), else None.
syncfs = _load_syncfs()


def local_tz() -> tzinfo:
    """The node's local time zone as currently in effect."""
    found = datetime.now().astimezone().tzinfo
    assert found is not None
    return found


def check_channel_id(channel_id: str) -> str:
    """A channel ID becomes a directory name: refuse anything that is not a plain name."""
    if (
        not channel_id
        or channel_id in (".", "..")
        or any(c in channel_id for c in "/\\\0")
        or channel_id != channel_id.strip()
    ):
        raise ValueError(f"channel id {channel_id!r} cannot be used as a directory name")
    return channel_id


def segment_name(start_wall: float, tz: tzinfo) -> tuple[str, str]:
    """(day directory, file name without suffix) for a segment starting at ``start_wall``."""
    seconds, millis = divmod(round(start_wall * 1000), 1000)
    moment = datetime.fromtimestamp(seconds, tz)
    return moment.strftime("%Y-%m-%d"), f"{moment.strftime(_NAME_FORMAT)}.{millis:03d}"


def parse_segment_name(name: str, tz: tzinfo) -> float | None:
    """Start wall time from a segment file name (``.ps`` or ``.ps.part``), None if not one."""
    stem = name.removesuffix(".part").removesuffix(SEGMENT_SUFFIX)
    stem = stem.split("_", 1)[0]  # "_1" marks a name taken twice in the same millisecond
    try:
        moment = datetime.strptime(stem, _NAME_FORMAT + ".%f")
    except ValueError:
        return None
    return moment.replace(tzinfo=tz).timestamp()


def fsync_dir(path: Path) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A unit sitting in the write buffer: (where it ends there, wall, pts, video). A plain tuple,
# built once per unit: a dataclass's __init__ would cost more than the rest of write().
_Unit = tuple[int, float, int | None, bool]


@dataclass(frozen=True, slots=True)
class Closing:
    """A segment written whole and closed for writing: what its finisher needs to make it
    durable (:func:`make_durable`) and index it (:func:`index_segment`)."""

    fd: int  # open for writing; make_durable closes it
    part: Path
    channel_id: str
    path: str  # relative to the root, as indexed
    start_wall: float
    end_wall: float
    start_pts: int | None
    end_pts: int | None
    bytes: int
    frames: int
    codec: str
    sha256: str


def make_durable(closing: Closing) -> Path:
    """fsync the segment's file, close it, rename it from ``.part`` and fsync its directory;
    returns the final path. The descriptor is closed whatever happens; OSError on failure (the
    ``.part`` is then left for ``recorder.recovery``)."""
    final = closing.part.with_name(closing.part.name.removesuffix(".part"))
    try:
        os.fsync(closing.fd)
    finally:
        os.close(closing.fd)
    os.rename(closing.part, final)
    fsync_dir(final.parent)
    return final


def segment_fields(closing: Closing, prev_sha256: str | None) -> dict[str, Any]:
    """``RecordIndex.add_segment``'s arguments for a durable segment chained to
    ``prev_sha256``."""
    return {
        "channel_id": closing.channel_id,
        "path": closing.path,
        "start_wall": closing.start_wall,
        "end_wall": closing.end_wall,
        "start_pts": closing.start_pts,
        "end_pts": closing.end_pts,
        "bytes": closing.bytes,
        "frames": closing.frames,
        "codec": closing.codec,
        "sha256": closing.sha256,
        "prev_sha256": prev_sha256,
    }


def index_segment(index: RecordIndex, closing: Closing, prev_sha256: str | None) -> SegmentRow:
    """Index a durable segment, chained to ``prev_sha256``."""
    return index.add_segment(**segment_fields(closing, prev_sha256))


@dataclass(slots=True)
class _Open:
    """The segment being written."""

    rel: str
    part: Path
    fd: int
    start_wall: float
    codec: str
    sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    chunks: list[bytes] = field(default_factory=list)  # the pending units' PS bytes
    buffered: int = 0  # their total length
    pending: list[_Unit] = field(default_factory=list)  # one per chunk
    written: int = 0  # bytes in the file
    synced: int = 0  # bytes of the file on the disk (fdatasync'd)
    frames: int = 0
    start_pts: int | None = None
    end_pts: int | None = None
    last_wall: float = 0.0
    #: the descriptor's status flags with O_DIRECT, while the file is written past the cache
    direct: int = 0
    tail: bytes = b""  # the file's bytes past its last whole block (direct writes only)


class SegmentWriter:
    """Writes one channel's access units into segment files and indexes them (synchronous).

    :param segment_s: target duration; a segment is cut at the first video keyframe at or after
        this many seconds (wall clock) since it started.
    :param tz: local time zone for directory and file names.
    :param buffer_bytes: write batch size.
    :param finisher: given, a closed segment is handed to it (:class:`Closing`) instead of being
        made durable and indexed here: the caller does both, in order, and keeps the chain
        (``index.chain_head`` to begin with); ``write()`` and the others then return no rows.
    :param direct: write past the page cache (``O_DIRECT``) where the file system takes it; the
        first file it refuses turns it off for this writer and those sharing its stage (logged
        once).
    :param stage: the aligned buffer of direct writes, shared by the writers of one thread (the
        writer makes its own otherwise; unused when not writing direct).

    ``write()``, ``gap()``, ``lost()``, ``sync()`` and ``close()`` return the segment rows they
    indexed. Counters: ``units``, ``bytes``, ``dropped_units`` (not written: before a keyframe),
    ``segments_closed``, ``write_errors``, ``syncs`` (fdatasync calls); ``last_error`` holds the
    latest error text.
    """

    def __init__(
        self,
        root: str | Path,
        index: RecordIndex,
        channel_id: str,
        *,
        segment_s: float = 60.0,
        tz: tzinfo | None = None,
        buffer_bytes: int = BUFFER_BYTES,
        log_errors: bool = True,
        finisher: Callable[[Closing], None] | None = None,
        direct: bool = True,
        stage: Stage | None = None,
    ) -> None:
        if segment_s < 1:
            raise ValueError(f"segment_s must be at least 1 second, not {segment_s}")
        self.root = Path(root)
        self.index = index
        self.channel_id = check_channel_id(channel_id)
        self.segment_s = float(segment_s)
        self.tz = tz if tz is not None else local_tz()
        self.buffer_bytes = buffer_bytes
        self.log_errors = log_errors
        self.finisher = finisher
        if not (direct and O_DIRECT):
            stage = None  # through the page cache: no stage, whatever was given
        elif stage is None:
            stage = Stage(buffer_bytes + BLOCK)
        self._stage = stage
        self.units = 0
        self.bytes = 0
        self.dropped_units = 0
        self.segments_closed = 0
        self.write_errors = 0
        self.syncs = 0
        self.last_error: str | None = None
        self._open: _Open | None = None
        self._prev_sha: str | None = index.chain_head(channel_id)
        #: the end of the channel's record (segments and gaps): no gap starts before it
        self._until: float | None = index.recorded_until(channel_id)
        #: a gap that ends at the next keyframe: its start and reason (None: waiting for a
        #: planned channel's stream, no cause reported yet)
        self._gap: tuple[float, str | None] | None = None
        self._frame_s = 0.0  # last video frame interval from PTS, for end times
        self._last_pts: int | None = None
        self._last_wall = 0.0

    @property
    def direct(self) -> bool:
        """Whether the next segment is to be written past the page cache."""
        return self._stage is not None and not self._stage.refused

    @property
    def recording(self) -> bool:
        """Whether a segment is open (False before the first keyframe and after a gap)."""
        return self._open is not None

    # -- public API --------------------------------------------------------------------------

    def write(self, unit: AccessUnit, wall: float) -> list[SegmentRow]:
        """Append ``unit`` (received at ``wall``, Unix seconds); cut a segment when due."""
        video = 0xE0 <= unit.stream_id <= 0xEF  # video stream IDs (inline: runs per unit)
        if video:
            pts = unit.pts
            if pts is not None:
                last = self._last_pts
                if last is not None:
                    step = ((pts - last) % PTS_WRAP) / 90000.0
                    if 0.0 < step <= 1.0:
                        self._frame_s = step
                self._last_pts = pts
            self._last_wall = wall + self._frame_s  # where a gap still open at close ends
        closed: list[SegmentRow] = []
        seg = self._open
        if video and unit.keyframe:
            if seg is not None and (
                not 0 <= wall - seg.start_wall < self.segment_s  # due, or the clock stepped back
                or unit.codec != seg.codec
            ):
                closed += self._close(end_wall=wall)
                seg = None
            if seg is None:
                seg = self._start(unit, wall)
        if seg is None:
            self.dropped_units += 1
            return closed
        data = unit.ps_bytes
        seg.chunks.append(data)
        end = seg.buffered = seg.buffered + len(data)
        seg.pending.append((end, wall, unit.pts, video))
        self.units += 1
        if end >= self.buffer_bytes:
            closed += self._flush(seg)
        return closed

    def gap(self, start_wall: float, end_wall: float, reason: str) -> list[SegmentRow]:
        """The channel was not received from ``start_wall`` to ``end_wall`` (camera offline,
        stream restart...): end the open segment, record the gap, wait for a keyframe.

        The part of it that the record already covers (before the end of the segment just
        closed, or of an earlier gap) is left out; the wait for a keyframe after ``end_wall``
        is a gap for the same reason."""
        closed = self._close()
        if self._gap is not None:  # an earlier loss that never resumed ends where this starts
            start, pending = self._gap
            self._gap = None
            if pending is not None and start < start_wall:  # (else this gap covers it)
                self._add_gap(start, start_wall, pending)
        self._add_gap(start_wall, end_wall, reason)
        self._gap = (end_wall, reason)
        return closed

    def lost(self, wall: float, reason: str = "packet loss") -> list[SegmentRow]:
        """Data was lost at ``wall``: end the open segment there and skip to the next keyframe;
        the gap is recorded when writing resumes."""
        seg = self._open
        start = wall if seg is None else self._end_of(seg)
        closed = self._close()
        self._pend(start, reason)
        return closed

    def planned(self, since: float, up: float | None = None) -> list[SegmentRow]:
        """The caller wants the channel recorded from ``since`` on; ``up``: when the caller (the
        node) started.

        The time from the end of the channel's record to ``up`` is recorded as a gap
        (:data:`NODE_NOT_RUNNING`). From ``since`` (or the record's end, if later) the channel is
        waited for: the first loss reported before a frame names that gap (``lost()``), a frame
        that comes first ends the wait without a gap, and ``close()`` records it as
        :data:`NOT_STARTED`. Nothing is done while a segment is open or a gap is pending.
        """
        if self._open is not None or self._gap is not None:
            return []
        until = self._until
        if up is not None and until is not None and until < up:
            self._add_gap(until, up, NODE_NOT_RUNNING)
            until = self._until
        self._gap = (since if until is None else max(since, until), None)
        return []

    def flush(self) -> list[SegmentRow]:
        """Write the buffered bytes of the open segment to its ``.part`` file (no fsync)."""
        seg = self._open
        return self._flush(seg) if seg is not None and seg.chunks else []

    def sync(self) -> list[SegmentRow]:
        """Write the buffered bytes of the open segment and fdatasync its ``.part`` file, so a
        power loss keeps them; the first time, the directory entry of the new file too.

        Does nothing when the file has not grown since the last call. A failed fdatasync is
        counted and logged; the segment stays open and its close fsyncs it again."""
        seg = self._open
        if seg is None:
            return []
        closed = self._flush(seg) if seg.chunks else []
        if self._open is not seg or seg.written == seg.synced:
            return closed
        try:
            os.fdatasync(seg.fd)
            if not seg.synced:
                fsync_dir(seg.part.parent)
        except OSError as exc:
            self._error(f"cannot sync {seg.part}", exc)
            return closed
        seg.synced = seg.written
        self.syncs += 1
        return closed

    def written_out(
        self, files: list[tuple[int, Path, Path | None]], dup: bool = True
    ) -> list[SegmentRow]:
        """The first half of ``sync()``, for a caller that syncs elsewhere (the recorder's sync
        thread): write the buffered bytes of the open segment to its ``.part`` file and, if the
        file grew since the last call, add ``(descriptor, .part path, its directory the first
        time, else None)`` to ``files`` and count it as synced from now on.

        The descriptor is an ``os.dup`` of the file's, which the caller closes once it has
        synced it (the segment may close meanwhile); -1 with ``dup=False``, for a caller that
        syncs the whole file system (``syncfs``)."""
        seg = self._open
        if seg is None:
            return []
        closed = self._flush(seg) if seg.chunks else []
        if self._open is not seg or seg.written == seg.synced:
            return closed
        fd = -1
        if dup:
            try:
                fd = os.dup(seg.fd)
            except OSError as exc:
                self._error(f"cannot sync {seg.part}", exc)
                return closed
        files.append((fd, seg.part, None if seg.synced else seg.part.parent))
        seg.synced = seg.written
        return closed

    def close(self, wall: float | None = None) -> list[SegmentRow]:
        """End the open segment (durable and indexed on return) and any gap still open: at
        ``wall`` (the caller stops recording the channel then), else at the last frame."""
        closed = self._close()
        if self._gap is not None:
            start, reason = self._gap
            self._gap = None
            end = self._last_wall if wall is None else wall
            self._add_gap(start, max(start, end), reason or NOT_STARTED)
        return closed

    # -- the record: segments and gaps in sequence ---------------------------------------------

    def _pend(self, start: float, reason: str) -> None:
        """A loss at ``start``: open a gap, or name the wait for a planned channel."""
        if self._gap is None:
            self._gap = (start, reason)
        elif self._gap[1] is None:
            self._gap = (self._gap[0], reason)

    def _resume(self, wall: float) -> None:
        """Writing resumes at ``wall``: the pending gap ends there (a wait without a cause
        reported was only the stream starting: no gap; nor is a wait of no time)."""
        if self._gap is not None:
            start, reason = self._gap
            self._gap = None
            if reason is not None and wall != start:
                self._add_gap(start, wall, reason)

    def _add_gap(self, start: float, end: float, reason: str) -> None:
        """Index a gap, never before the end of the record and never ending before it starts."""
        until = self._until
        if until is not None and start < until:
            if end <= until:
                return  # already covered by the record
            start = until
        if end < start:
            log.warning("channel %s: gap %.3f..%.3f (%s) ends before it starts (the wall clock "
                        "went back?); not recorded", self.channel_id, start, end, reason)
            return
        self.index.add_gap(self.channel_id, start, end, reason)
        self._extend(end)

    def _extend(self, end: float) -> None:
        if self._until is None or end > self._until:
            self._until = end

    # -- segment life --------------------------------------------------------------------------

    def _start(self, unit: AccessUnit, wall: float) -> _Open | None:
        day, name = segment_name(wall, self.tz)
        directory = self.root / self.channel_id / day
        try:
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                fsync_dir(directory.parent)
                fsync_dir(self.root)
            stem, n = name, 0
            while (directory / f"{stem}{SEGMENT_SUFFIX}").exists() or (
                directory / f"{stem}{PART_SUFFIX}"
            ).exists():
                n += 1
                stem = f"{name}_{n}"
            part = directory / f"{stem}{PART_SUFFIX}"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._error("cannot open a segment", exc)
            self._pend(wall, _reason(exc))
            return None
        self._resume(wall)
        rel = f"{self.channel_id}/{day}/{stem}{SEGMENT_SUFFIX}"
        self._open = _Open(rel, part, fd, wall, unit.codec, last_wall=wall,
                           direct=self._go_direct(fd, part) if self.direct else 0)
        return self._open

    def _go_direct(self, fd: int, part: Path) -> int:
        """Set O_DIRECT on a new segment's descriptor; its flags with it, or 0 (and direct
        writes off for this writer) where the file system refuses it."""
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL) | O_DIRECT
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        except OSError as exc:
            self._no_direct(part, exc)
            return 0
        return flags

    def _no_direct(self, part: Path, exc: OSError) -> None:
        stage = self._stage
        if stage is not None and not stage.refused:
            stage.refused = True
            log.warning("%s cannot be written past the page cache (%s); segments are written "
                        "through it from now on", part.parent, exc.strerror or exc)

    def _flush(self, seg: _Open) -> list[SegmentRow]:
        """Write the buffer out; on an error end the segment at the last complete unit."""
        if seg.direct:
            return self._flush_direct(seg)
        done = 0
        chunks = seg.chunks
        try:
            if len(chunks) <= _IOV_MAX:
                done = _write(seg.fd, chunks)  # type: ignore[arg-type]  # list is invariant
            while done < seg.buffered:
                done += _write(seg.fd, _from(chunks, done))
        except OSError as exc:
            return self._fail(seg, done, exc)
        self._commit(seg, seg.buffered, len(seg.pending))
        return []

    def _flush_direct(self, seg: _Open) -> list[SegmentRow]:
        """:meth:`_flush` past the page cache: the file's last partial block and the batch are
        copied into the stage; its whole blocks are written from the block's start with
        O_DIRECT, the rest through the cache (so the file holds the whole batch, and a power
        loss after the next sync keeps it); that rest is the tail the next batch starts with."""
        stage = self._stage
        assert stage is not None  # a segment is opened direct only with a stage
        tail = seg.tail
        t = len(tail)
        n = t + seg.buffered
        view = stage.view(n)
        view[:t] = tail
        end = t
        for chunk in seg.chunks:
            start, end = end, end + len(chunk)
            view[start:end] = chunk
        whole = n - n % BLOCK  # bytes of whole blocks
        base = seg.written - t  # the file offset of the stage's first byte (aligned)
        reached = seg.written  # the file holds the stream up to here
        try:
            if whole:
                if t:
                    os.lseek(seg.fd, base, os.SEEK_SET)
                done = 0
                while done < whole:
                    done += _write(seg.fd, [view[done:whole]])
                    reached = max(reached, base + done)
            rest = max(whole, t)
            if rest < n:
                fcntl.fcntl(seg.fd, fcntl.F_SETFL, seg.direct & ~O_DIRECT)
                try:
                    while rest < n:
                        rest += _write(seg.fd, [view[rest:n]])
                        reached = base + rest
                finally:
                    fcntl.fcntl(seg.fd, fcntl.F_SETFL, seg.direct)
        except OSError as exc:
            if exc.errno == errno.EINVAL and reached == seg.written:
                # the file system refuses this alignment: write through the cache instead
                return self._undirect(seg, exc)
            return self._fail(seg, reached - seg.written, exc)
        seg.sha.update(view[t:n])
        seg.tail = bytes(view[whole:n])
        self._commit(seg, seg.buffered, len(seg.pending), hashed=True)
        return []

    def _undirect(self, seg: _Open, exc: OSError) -> list[SegmentRow]:
        """A direct write was refused (EINVAL) before anything of the batch reached the file:
        write this segment and the next ones through the page cache."""
        self._no_direct(seg.part, exc)
        try:
            fcntl.fcntl(seg.fd, fcntl.F_SETFL, seg.direct & ~O_DIRECT)
            os.lseek(seg.fd, seg.written, os.SEEK_SET)
        except OSError as again:
            return self._fail(seg, 0, again)
        seg.direct = 0
        seg.tail = b""
        return self._flush(seg)

    def _commit(self, seg: _Open, size: int, count: int, hashed: bool = False) -> None:
        """The first ``size`` buffered bytes (``count`` units) are in the file: hash them, unless
        ``hashed`` (the same bytes in the same order as the file, so the digest is the file's),
        and add their frames and times to the row."""
        whole = count == len(seg.pending)  # the usual case: the whole batch was written
        if not hashed:
            update = seg.sha.update
            for chunk in seg.chunks if whole else seg.chunks[:count]:
                update(chunk)
        frames, start_pts, end_pts = seg.frames, seg.start_pts, seg.end_pts
        for _end, _wall, pts, video in seg.pending if whole else seg.pending[:count]:
            if video:
                frames += 1
                if pts is not None:
                    if start_pts is None:
                        start_pts = pts
                    end_pts = pts
        seg.frames, seg.start_pts, seg.end_pts = frames, start_pts, end_pts
        if count:
            seg.last_wall = seg.pending[count - 1][1]
        seg.written += size
        self.bytes += size
        del seg.chunks[:count]
        seg.buffered -= size
        del seg.pending[:count]

    def _fail(self, seg: _Open, done: int, exc: OSError) -> list[SegmentRow]:
        """A write failed after ``done`` buffered bytes reached the file."""
        self._error(f"writing {seg.part} failed", exc)
        count = 0
        while count < len(seg.pending) and seg.pending[count][0] <= done:
            count += 1
        keep = seg.pending[count - 1][0] if count else 0
        resume = seg.pending[count][1]
        self._commit(seg, keep, count)
        seg.chunks.clear()
        seg.buffered = 0
        seg.pending.clear()
        closed: list[SegmentRow] = []
        try:
            os.ftruncate(seg.fd, seg.written)
        except OSError as again:
            self._error(f"cannot truncate {seg.part}; left for recovery", again)
            self._abandon(seg)
        else:
            closed = self._finish(seg, end_wall=resume)
        self._pend(resume, _reason(exc))
        return closed

    def _end_of(self, seg: _Open) -> float:
        last = seg.pending[-1][1] if seg.pending else seg.last_wall
        return last + self._frame_s

    def _close(self, end_wall: float | None = None) -> list[SegmentRow]:
        seg = self._open
        if seg is None:
            return []
        if end_wall is None:
            end_wall = self._end_of(seg)
        if seg.chunks:
            closed = self._flush(seg)
            if self._open is None:  # the flush failed and ended the segment itself
                return closed
        return self._finish(seg, end_wall)

    def _finish(self, seg: _Open, end_wall: float) -> list[SegmentRow]:
        """Make the file durable, rename it, then index it."""
        self._open = None
        if seg.written == 0:
            os.close(seg.fd)
            seg.part.unlink()  # nothing was written: not a recording
            return []
        closing = Closing(
            seg.fd, seg.part, self.channel_id, seg.rel, seg.start_wall,
            max(end_wall, seg.start_wall), seg.start_pts, seg.end_pts, seg.written, seg.frames,
            seg.codec, seg.sha.hexdigest(),
        )
        if self.finisher is not None:
            self.finisher(closing)
            self._extend(closing.end_wall)
            self.segments_closed += 1
            return []
        try:
            make_durable(closing)
        except OSError as exc:
            self._error(f"cannot make {seg.part} durable; left for recovery", exc)
            return []
        row = index_segment(self.index, closing, self._prev_sha)
        self._prev_sha = row.sha256
        self._extend(row.end_wall)
        self.segments_closed += 1
        return [row]

    def _abandon(self, seg: _Open) -> None:
        self._open = None
        try:
            os.close(seg.fd)
        except OSError:
            pass

    def _error(self, what: str, exc: OSError) -> None:
        self.write_errors += 1
        self.last_error = f"{what}: {exc}"
        if self.log_errors:
            log.error("channel %s: %s: %s", self.channel_id, what, exc)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return f"write error: {exc.strerror or exc}"
