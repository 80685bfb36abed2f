"""What the recorder tests share: real media through the demuxer, fake wall clocks, PyAV
decoding of the segment files, and how a process's open segments are open."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import timedelta, timezone
from functools import cache
from pathlib import Path

import av

from recorder.index import SegmentRow
from recorder.segments import SegmentWriter
from rtp.ps import AccessUnit, PsDemuxer
from tests.conftest import load

CHANNEL = "34020000001320000001"
TZ = timezone(timedelta(hours=8))  # the node's local zone in these tests
T0 = 1795680312.123  # 2026-11-26 16:05:12.123 at UTC+8
FPS = 25


@cache
def stream(name: str) -> bytes:
    return load(f"media/{name}")


@cache
def units(name: str) -> tuple[AccessUnit, ...]:
    demuxer = PsDemuxer()
    return tuple(demuxer.feed(stream(name)) + demuxer.flush())


def is_video(unit: AccessUnit) -> bool:
    return 0xE0 <= unit.stream_id <= 0xEF


def timed(items: Iterable[AccessUnit], t0: float = T0) -> Iterator[tuple[AccessUnit, float]]:
    """Give each unit a wall time: video frames 1/25 s apart, audio at the last frame's time."""
    frame = -1
    for unit in items:
        if is_video(unit):
            frame += 1
        yield unit, t0 + max(frame, 0) / FPS


def feed(writer: SegmentWriter, items: Iterable[AccessUnit], t0: float = T0) -> list[SegmentRow]:
    rows: list[SegmentRow] = []
    for unit, wall in timed(items, t0):
        rows += writer.write(unit, wall)
    return rows


def decode(path: Path) -> list[int]:
    """Decode a segment file on its own; the frame number drawn in each frame, in order."""
    numbers: list[int] = []
    with av.open(str(path), format="mpeg") as container:
        for frame in container.decode(video=0):
            numbers.append(frame_number(frame))
    return numbers


def frame_number(frame: av.VideoFrame) -> int:
    """Read the 16-bit frame number bar (see tests/data/media/README.md)."""
    luma = frame.to_ndarray(format="gray")
    row = luma[frame.height - 14]
    value = 0
    for bit in range(16):
        value = value << 1 | int(row[8 + bit * 38 + 17] > 128)
    return value


def open_part_flags(root: Path, pid: int | str = "self") -> list[int]:
    """The status flags of process ``pid``'s descriptors open on ``.part`` files under ``root``
    (from /proc/<pid>/fdinfo, as the kernel holds them)."""
    flags = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
            info = (Path(f"/proc/{pid}/fdinfo") / entry.name).read_text()
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(root)) and target.endswith(".ps.part"):
            (line,) = [x for x in info.splitlines() if x.startswith("flags:")]
            flags.append(int(line.split()[1], 8))
    return flags
