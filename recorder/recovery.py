"""Crash recovery: finish the segments a killed writer left behind (ISO/IEC 13818-1 2.5.3).

Run once at start, before any writer opens. Two kinds of leftovers are indexed, oldest first per
channel, with ``recovered = 1`` and chained to the channel's last hash:

- ``.ps.part`` files: cut back to the end of their last complete unit, so a torn write at the
  end (half a pack, a PES shorter than its length field) is dropped, then fsync'd and renamed;
- ``.ps`` files that are durable but not in the index (killed between rename and insert).

Start times come from the file names, end times from the PTS span of the frames kept. Files the
retention sweeper has already recorded as deleted are never indexed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from rtp.ps import PsDemuxer

from .index import RecordIndex, SegmentRow
from .segments import (
    PART_SUFFIX,
    PTS_WRAP,
    SEGMENT_SUFFIX,
    fsync_dir,
    local_tz,
    parse_segment_name,
)

__all__ = ["SegmentStats", "complete_length", "recover", "segment_stats"]

log = logging.getLogger("recorder.recovery")

_START = b"\x00\x00\x01"
_PACK = 0xBA
_END = 0xB9


@dataclass(frozen=True, slots=True)
class SegmentStats:
    """What a segment's PS bytes hold: video frames, their PTS span and codec."""

    frames: int
    start_pts: int | None
    end_pts: int | None
    codec: str | None
    frame_s: float  # the last video frame interval seen, 0.0 if unknown

    @property
    def duration(self) -> float:
        if self.start_pts is None or self.end_pts is None:
            return 0.0
        return ((self.end_pts - self.start_pts) % PTS_WRAP) / 90000.0 + self.frame_s


def _structure_size(data: bytes, i: int) -> int:
    """Size of the system structure at ``i`` (a start code), 0 if it runs past the end."""
    n = len(data)
    sid = data[i + 3]
    if sid == _END:
        return 4
    if sid == _PACK:
        if i + 5 > n:
            return 0
        size = 12 if data[i + 4] >> 4 == 0b0010 else 14
        if size == 14:
            if i + 14 > n:
                return 0
            size += data[i + 13] & 0x07
        return size if i + size <= n else 0
    if i + 6 > n:
        return 0
    length = data[i + 4] << 8 | data[i + 5]
    if length == 0 and 0xE0 <= sid <= 0xEF:  # unbounded video PES: up to the next system code
        k = data.find(_START, i + 6)
        while k >= 0 and k + 3 < n:
            if data[k + 3] >= _END:
                return k - i
            k = data.find(_START, k + 3)
        return 0
    return 6 + length if i + 6 + length <= n else 0


def complete_length(data: bytes) -> int:
    """Length of the longest prefix of ``data`` made of complete PS structures.

    Bytes between structures that are not a system start code are stepped over as the demuxer
    does; a structure cut off by the end of ``data`` is not complete.
    """
    pos = good = 0
    n = len(data)
    while pos < n:
        i = data.find(_START, pos)
        while i >= 0 and i + 3 < n and data[i + 3] < _END:
            i = data.find(_START, i + 3)
        if i < 0 or i + 3 >= n:
            return good
        size = _structure_size(data, i)
        if size == 0:
            return good
        pos = good = i + size
    return good


def segment_stats(data: bytes) -> tuple[SegmentStats, list[int]]:
    """Demux ``data``: its stats and the offsets where its units start."""
    demuxer = PsDemuxer()
    units = demuxer.feed(data) + demuxer.flush()
    frames, first, last, codec, frame_s = 0, None, None, None, 0.0
    for unit in units:
        if not 0xE0 <= unit.stream_id <= 0xEF:
            continue
        frames += 1
        codec = codec or unit.codec
        if unit.pts is not None:
            if last is not None:
                step = ((unit.pts - last) % PTS_WRAP) / 90000.0
                if 0.0 < step <= 1.0:
                    frame_s = step
            first = unit.pts if first is None else first
            last = unit.pts
    return SegmentStats(frames, first, last, codec, frame_s), [u.offset for u in units]


def _keep_length(data: bytes) -> int:
    """How much of a ``.part`` file to keep: all of it unless its end is torn, else up to the
    last unit start within the complete structures (every unit before it ends there; the unit
    it starts may have been cut short)."""
    complete = complete_length(data)
    if complete == len(data):
        return complete
    _, offsets = segment_stats(data)
    return max((offset for offset in offsets if offset <= complete), default=0)


def _candidates(
    root: Path, index: RecordIndex, tz: tzinfo, channels: Collection[str] | None = None
) -> list[tuple[str, float, Path]]:
    known = index.paths() | index.deleted_paths()
    found: list[tuple[str, float, Path]] = []
    for channel in sorted(p for p in root.iterdir() if p.is_dir()):
        if channels is not None and channel.name not in channels:
            continue
        for path in sorted(channel.glob("*/*")):
            name = path.name
            is_part = name.endswith(PART_SUFFIX)
            if not (is_part or name.endswith(SEGMENT_SUFFIX)):
                continue
            if not is_part and path.relative_to(root).as_posix() in known:
                continue
            start = parse_segment_name(name, tz)
            if start is None:
                log.warning("recovery: %s is not named like a segment; left alone", path)
                continue
            found.append((channel.name, start, path))
    found.sort(key=lambda item: (item[0], item[1], item[2].name))
    return found


def _finish_part(path: Path) -> tuple[Path, bytes] | None:
    """Cut a ``.part`` back to complete units, make it durable and rename it."""
    data = path.read_bytes()
    keep = _keep_length(data)
    if keep == 0:
        log.warning("recovery: %s holds no complete frame (%d bytes); removed", path, len(data))
        path.unlink()
        return None
    if keep < len(data):
        log.warning("recovery: %s cut from %d to %d bytes (torn end)", path, len(data), keep)
        data = data[:keep]
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    final = path.with_name(path.name.removesuffix(".part"))
    n = 0
    while final.exists():
        n += 1
        stem = path.name.removesuffix(PART_SUFFIX)
        final = path.with_name(f"{stem}_{n}{SEGMENT_SUFFIX}")
    os.rename(path, final)
    fsync_dir(final.parent)
    return final, data


def recover(
    root: str | Path, index: RecordIndex, *, tz: tzinfo | None = None,
    channels: Collection[str] | None = None,
) -> list[SegmentRow]:
    """Finish and index what a crash left under ``root``; return the rows added.

    ``tz`` must be the time zone the files were named in (the node's local zone by default).
    ``channels``: only these channels' directories (what one process of several recorded,
    while the others go on writing theirs); all of them if None.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    zone = tz if tz is not None else local_tz()
    rows: list[SegmentRow] = []
    for channel, start, path in _candidates(root, index, zone, channels):
        if path.name.endswith(PART_SUFFIX):
            finished = _finish_part(path)
            if finished is None:
                continue
            path, data = finished
        else:
            data = path.read_bytes()
        stats, _ = segment_stats(data)
        row = index.add_segment(
            channel_id=channel,
            path=path.relative_to(root).as_posix(),
            start_wall=start,
            end_wall=start + stats.duration,
            start_pts=stats.start_pts,
            end_pts=stats.end_pts,
            bytes=len(data),
            frames=stats.frames,
            codec=stats.codec,
            sha256=hashlib.sha256(data).hexdigest(),
            prev_sha256=index.chain_head(channel),
            recovered=True,
        )
        log.warning("recovery: indexed %s (%d frames, %d bytes)", row.path, row.frames, row.bytes)
        rows.append(row)
    return rows
