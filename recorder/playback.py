"""Playback of a recorded range: the stored PS, unit by unit, for re-streaming at a pace.

A GB/T 28181 playback or download (``s=Playback``/``s=Download``, docs/gb28181.md) sends the
recorded PS as it was received, from the last keyframe at or before the requested start. A
:class:`PlaybackReader` walks a channel's segments and yields, in stream order:

- :class:`Frame`: one access unit (a video frame, or an audio frame between them) with its
  PTS as stored, keyframe flag, ``ps_bytes`` exactly as in the file and its wall time. The
  ``ps_bytes`` of consecutive frames concatenate to the file's bytes from the start keyframe's
  pack header on (for GB streams, which put a pack header before every frame).
- :class:`Gap`: the next frames come after a stretch that was not recorded (or a segment that
  was skipped): the wall time jumps, and so do the PTS. The caller keeps its own timestamps
  continuous and logs it.
- :class:`SegmentAltered`: a segment's SHA-256 (or size) does not match the index, or its file
  is missing or unreadable; none of its bytes are handed out. Going on skips the segment (a
  :class:`Gap` follows before the next frame); the caller that would rather stop closes the
  reader.

The range starts at the last video keyframe at or before ``start`` (the first keyframe of the
recording when ``start`` lies before it or in a gap) and ends with the first video frame at or
after ``end``, or at the end of the recording. :meth:`PlaybackReader.seek` starts over from
the last keyframe at or before another time; ``keyframes_only`` (for MANSRTSP ``Scale`` of 4
and more) hands out video keyframes alone and, when turned off again, resumes at the next
keyframe.

A frame's wall time is ``start_wall + (pts - start_pts) / 90000`` of its segment (PTS taken
modulo 2**33); a unit without a PTS, and an audio unit, has the wall time of the video frame
before it, so wall times never go back within a segment.

Each segment is checked before its first byte is handed out: its file is read once through for
the hash, then again from the start keyframe to be demuxed (the page cache serves the second
read). Bounded: files are read in chunks of ``chunk_size``, a new chunk only once the units of
the last one have been handed out, and the demuxer's window is a third of what ``read_ahead``
leaves after two chunks (it holds at most about twice its window: ``rtp.ps``, Memory). What
the reader holds of the files (``held``: bytes read and not handed out yet, with the
demuxer's copies) so stays within ``read_ahead``; a frame larger than the window comes out
in pieces, its bytes still in order. No segment is ever loaded whole.

Plain synchronous code for a worker thread: files only, no clock.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rtp.ps import AccessUnit, PsDemuxer

from .index import SegmentRow

__all__ = [
    "CHUNK_SIZE",
    "CLOCK",
    "GAP_TOLERANCE_S",
    "READ_AHEAD",
    "Frame",
    "Gap",
    "PlaybackError",
    "PlaybackEvent",
    "PlaybackReader",
    "SegmentAltered",
]

CLOCK = 90_000  # PS timestamps tick at 90 kHz (ISO/IEC 13818-1 2.4.3.7)
CHUNK_SIZE = 256 * 1024  # bytes per file read
READ_AHEAD = 8 << 20  # default bound of what a reader holds of the files
#: One segment's end and the next one's start further apart than this is a gap. The recorder
#: ends a segment exactly where the next one starts (at the keyframe that opens it).
GAP_TOLERANCE_S = 0.1
_WRAP = 1 << 33
_HALF = 1 << 32
_MIN_CHUNK = 4096
_NOT_RECORDED = "not recorded"


class PlaybackError(Exception):
    """The reader cannot be set up as asked: a bad range or bound, or rows of several
    channels."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One access unit as stored. ``offset`` is the file offset of ``ps_bytes[0]`` in the
    segment ``segment_id``; ``video`` is False for audio units."""

    pts: int | None
    keyframe: bool
    ps_bytes: bytes
    wall: float
    video: bool
    segment_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class Gap:
    """The recording stops at wall time ``start`` and the next frame comes from ``end`` on;
    ``reason`` is ``"not recorded"`` or names the segments skipped."""

    start: float
    end: float
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentAltered:
    """``segment`` does not match the index and is not played: ``found`` is the SHA-256 of the
    file (``None`` when it is missing or unreadable), ``reason`` says what is wrong."""

    segment: SegmentRow
    found: str | None
    reason: str


PlaybackEvent = Frame | Gap | SegmentAltered


def _pts_delta(pts: int, base: int) -> int:
    """``pts - base`` in 90 kHz ticks across the 33-bit wrap, in ``[-2**32, 2**32)``."""
    return (pts - base + _HALF) % _WRAP - _HALF


def _is_video(unit: AccessUnit) -> bool:
    return 0xE0 <= unit.stream_id <= 0xEF


class PlaybackReader:
    """The frames of ``segments`` (index rows of one channel, paths relative to ``root``) from
    the last keyframe at or before ``start`` to the first frame at or after ``end``.

    Iterate it for :data:`PlaybackEvent` values, and call :meth:`seek`, :meth:`close` and set
    ``keyframes_only`` between two of them, on the thread that iterates. Counters: ``frames``
    and ``bytes`` handed out, ``gaps``, ``altered`` (segments skipped), ``held`` (bytes of the
    files read and not handed out) and ``peak_held``.
    """

    def __init__(
        self,
        root: str | Path,
        segments: Sequence[SegmentRow],
        start: float,
        end: float,
        *,
        keyframes_only: bool = False,
        read_ahead: int = READ_AHEAD,
        chunk_size: int = CHUNK_SIZE,
        gap_tolerance: float = GAP_TOLERANCE_S,
    ) -> None:
        if not (math.isfinite(start) and math.isfinite(end)) or not end > start:
            raise PlaybackError(f"empty or unbounded range {start}..{end}")
        if chunk_size < _MIN_CHUNK:
            raise PlaybackError(f"chunk_size must be at least {_MIN_CHUNK}, not {chunk_size}")
        if read_ahead < 4 * chunk_size:
            raise PlaybackError(
                f"read_ahead must be at least 4 chunks ({4 * chunk_size}), not {read_ahead}")
        if not gap_tolerance >= 0:
            raise PlaybackError(f"gap_tolerance must be 0 or more, not {gap_tolerance}")
        if len({row.channel_id for row in segments}) > 1:
            raise PlaybackError("segments of several channels; play one channel at a time")
        self.root = Path(root)
        self.segments = tuple(sorted(segments, key=lambda row: (row.start_wall, row.id)))
        self.start = start
        self.end = end
        self.read_ahead = read_ahead
        self.chunk_size = chunk_size
        self.gap_tolerance = gap_tolerance
        self.frames = 0
        self.bytes = 0
        self.gaps = 0
        self.altered = 0
        self.held = 0
        self.peak_held = 0
        self._keyframes_only = keyframes_only
        self._need_key = False
        self._checked: dict[int, SegmentAltered | None] = {}
        self._run: Iterator[PlaybackEvent] = self._play(start)

    # -- control -------------------------------------------------------------------------------

    @property
    def keyframes_only(self) -> bool:
        return self._keyframes_only

    @keyframes_only.setter
    def keyframes_only(self, value: bool) -> None:
        if self._keyframes_only and not value:
            self._need_key = True  # the frames after a keyframe skipped refer to it
        self._keyframes_only = value

    def seek(self, wall: float) -> None:
        """Go on from the last keyframe at or before ``wall`` (the end stays)."""
        if not math.isfinite(wall):
            raise PlaybackError(f"cannot seek to {wall}")
        self._stop_run()
        self._run = self._play(wall)

    def close(self) -> None:
        """Stop reading; the files are closed and nothing more is handed out."""
        self._stop_run()
        self._run = iter(())

    def __iter__(self) -> PlaybackReader:
        return self

    def __next__(self) -> PlaybackEvent:
        return next(self._run)

    def __enter__(self) -> PlaybackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop_run(self) -> None:
        close = getattr(self._run, "close", None)
        if close is not None:
            close()
        self.held = 0

    # -- the walk over the segments ------------------------------------------------------------

    def _play(self, at: float) -> Iterator[PlaybackEvent]:
        rows = self.segments
        first = max((i for i, row in enumerate(rows) if row.start_wall <= at), default=0)
        played_to: float | None = None  # end of the last segment played
        seen_to: float | None = None  # end of the last segment met, played or skipped
        hole = False  # time not recorded since the last segment played
        skipped: list[str] = []  # segments skipped since it
        for row in rows[first:]:
            if seen_to is not None and row.start_wall > seen_to + self.gap_tolerance:
                hole = True
            seen_to = row.end_wall
            broken = played_to is not None and (hole or bool(skipped))
            if row.start_wall >= self.end and (played_to is None or broken):
                return  # nothing recorded in the range, or it ends in a gap
            problem = self._check(row)
            if problem is None:
                if played_to is not None and broken:
                    self.gaps += 1
                    yield Gap(played_to, row.start_wall,
                              "; ".join(([_NOT_RECORDED] if hole else []) + skipped))
                hole, skipped = False, []
                try:
                    with open(self.root / row.path, "rb") as f:
                        origin, base = (0, row.start_pts)
                        if played_to is None and at > row.start_wall:
                            located = self._locate(f, row, at)
                            if located is None:
                                continue  # `at` lies after this segment's last frame
                            origin, base = located
                        if (yield from self._frames(f, row, origin, base, played_to is None)):
                            return
                        played_to = row.end_wall
                        continue
                except OSError as exc:
                    problem = SegmentAltered(row, None, f"unreadable: {exc.strerror or exc}")
                    self._checked[row.id] = problem
                finally:
                    self.held = 0
            self.altered += 1
            yield problem
            skipped.append(f"segment {row.path} skipped: {problem.reason}")

    def _check(self, row: SegmentRow) -> SegmentAltered | None:
        """Compare the file with its index row (size, then SHA-256); once per segment."""
        if row.id in self._checked:
            return self._checked[row.id]
        problem: SegmentAltered | None = None
        path = self.root / row.path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != row.bytes:
                    problem = SegmentAltered(row, None, f"size {size}, indexed {row.bytes}")
                else:
                    digest = hashlib.sha256()
                    while block := f.read(self.chunk_size):
                        digest.update(block)
                    found = digest.hexdigest()
                    if found != row.sha256:
                        problem = SegmentAltered(row, found, "SHA-256 does not match the index")
        except FileNotFoundError:
            problem = SegmentAltered(row, None, "missing")
        except OSError as exc:
            problem = SegmentAltered(row, None, f"unreadable: {exc.strerror or exc}")
        self._checked[row.id] = problem
        return problem

    def _locate(self, f: BinaryIO, row: SegmentRow, at: float) -> tuple[int, int | None] | None:
        """File offset of the last keyframe at or before ``at`` and the segment's base PTS;
        ``None`` when ``at`` is past the segment's last frame and its end."""
        base = row.start_pts
        last_key: int | None = None
        seen_after = False
        wall = row.start_wall
        for unit in self._units(f, 0):
            if not _is_video(unit):
                continue
            if unit.pts is not None:
                if base is None:
                    base = unit.pts
                wall = row.start_wall + _pts_delta(unit.pts, base) / CLOCK
            if wall > at:
                seen_after = True
                break
            if unit.keyframe:
                last_key = unit.offset
        self.held = 0
        if last_key is None:
            return 0, base  # no keyframe before `at` here: from the segment's first one
        if not seen_after and row.end_wall <= at:
            return None
        return last_key, base

    def _frames(
        self, f: BinaryIO, row: SegmentRow, origin: int, base: int | None, opening: bool
    ) -> Generator[PlaybackEvent, None, bool]:
        """Hand out the units of ``row`` from ``origin``; returns True once the range ended.

        ``opening``: the first segment of a (re)start, whose first keyframe may lie at or after
        the end (then nothing is handed out)."""
        wall = row.start_wall
        need_key = True  # a (re)start, or a new segment, begins at a keyframe
        for unit in self._units(f, origin):
            video = _is_video(unit)
            if video and unit.pts is not None:
                if base is None:
                    base = unit.pts
                wall = row.start_wall + _pts_delta(unit.pts, base) / CLOCK
            if need_key:
                if not (video and unit.keyframe):
                    continue
                need_key = False
                if opening and wall >= self.end:
                    return True
            frame = Frame(unit.pts, video and unit.keyframe, unit.ps_bytes, wall, video, row.id,
                          origin + unit.offset)
            ending = video and wall >= self.end
            if self._keep(frame):
                self.frames += 1
                self.bytes += len(frame.ps_bytes)
                yield frame
            if ending:
                return True
        return False

    def _keep(self, frame: Frame) -> bool:
        if self._keyframes_only:
            return frame.keyframe
        if self._need_key:
            if not frame.keyframe:
                return False
            self._need_key = False
        return True

    def _units(self, f: BinaryIO, origin: int) -> Iterator[AccessUnit]:
        """The units of the file from ``origin`` on, read a chunk at a time."""
        window = self.read_ahead - 2 * self.chunk_size
        demuxer = PsDemuxer(max_buffered=window // 3)
        f.seek(origin)
        while True:
            chunk = f.read(self.chunk_size)
            units = deque(demuxer.feed(chunk) if chunk else demuxer.flush())
            pending = sum(len(unit.ps_bytes) for unit in units)
            while True:
                self.held = demuxer.buffered + pending
                self.peak_held = max(self.peak_held, self.held)
                if not units:
                    break
                unit = units.popleft()
                pending -= len(unit.ps_bytes)
                yield unit
            if not chunk:
                return
