"""recorder.segments: keyframe-aligned byte-exact segments from real media, gaps, disk full."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recorder.segments
from recorder.index import RecordIndex, SegmentRow
from recorder.segments import SegmentWriter, parse_segment_name, segment_name
from recorder.verify import verify
from rtp.ps import AccessUnit, PsDemuxer
from tests.recorder.media import (
    CHANNEL,
    FPS,
    T0,
    TZ,
    decode,
    feed,
    is_video,
    stream,
    timed,
    units,
)

GB_FILES = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps"]
FFMPEG_FILES = ["h264_640x360_25fps_10s_ffmpeg.ps", "h265_640x360_25fps_10s_ffmpeg.ps"]
PACK_START = b"\x00\x00\x01\xba"


def writer(root: Path, index: RecordIndex, **kwargs: object) -> SegmentWriter:
    kwargs.setdefault("segment_s", 2)
    return SegmentWriter(root, index, CHANNEL, tz=TZ, **kwargs)  # type: ignore[arg-type]


def record(root: Path, index: RecordIndex, name: str, **kwargs: object) -> list[SegmentRow]:
    w = writer(root, index, **kwargs)
    return feed(w, units(name)) + w.close()


def contents(root: Path, rows: list[SegmentRow]) -> list[bytes]:
    return [(root / row.path).read_bytes() for row in rows]


def first_video(data: bytes) -> AccessUnit:
    """The first whole video frame of a segment on its own.

    In FFmpeg's 2048-byte packs a frame can start inside a PES, so the pack that begins a
    keyframe also carries the tail of the frame before it; that tail demuxes as a first unit
    which is skipped here.
    """
    demuxer = PsDemuxer()
    video = [u for u in demuxer.feed(data) + demuxer.flush() if is_video(u)]
    return video[0] if video[0].keyframe else video[1]


@pytest.mark.parametrize("name", GB_FILES + FFMPEG_FILES)
def test_segments_are_the_stream_cut_at_keyframes(root, index, name):
    rows = record(root, index, name)
    files = contents(root, rows)
    assert b"".join(files) == stream(name)[units(name)[0].offset :]
    assert len(rows) == 5  # 250 frames, keyframe every 25, cut at the first one after 2 s
    for row, data in zip(rows, files, strict=True):
        assert data.startswith(PACK_START)
        assert first_video(data).keyframe
        assert row.bytes == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        assert row.frames == 50 == len(decode(root / row.path))
        assert row.codec == units(name)[0].codec
        assert not row.recovered
    assert [row.prev_sha256 for row in rows] == [None] + [row.sha256 for row in rows[:-1]]
    assert index.segments(CHANNEL) == rows


@pytest.mark.parametrize("name", GB_FILES)
def test_each_segment_decodes_on_its_own(root, index, name):
    rows = record(root, index, name)
    numbers = [decode(root / row.path) for row in rows]
    assert [len(n) for n in numbers] == [row.frames for row in rows]
    flat = [n for segment in numbers for n in segment]
    assert flat == [(25 + k) % 250 for k in range(250)]  # the media's counter starts at 25


def test_index_rows_carry_times_pts_and_names(root, index):
    rows = record(root, index, "gb_h264_zlm.ps")
    video = [u for u in units("gb_h264_zlm.ps") if is_video(u)]
    assert rows[0].path == f"{CHANNEL}/2026-11-26/20261126T160512.123.ps"
    for k, row in enumerate(rows):
        assert row.start_wall == pytest.approx(T0 + 2 * k)
        assert row.end_wall == pytest.approx(T0 + 2 * k + 2)
        assert row.start_pts == video[50 * k].pts
        assert row.end_pts == video[50 * k + 49].pts
    assert not list(root.rglob("*.part"))


def test_nothing_is_indexed_before_the_file_is_durable(root, index):
    w = writer(root, index, segment_s=60)
    feed(w, units("gb_h264_zlm.ps")[:40])
    (part,) = root.rglob("*.ps.part")
    assert part.stat().st_size == 0  # still batched in memory (writes go out 1 MiB at a time)
    assert index.segments(CHANNEL) == []
    (row,) = w.close()
    assert not part.exists()
    expected = b"".join(u.ps_bytes for u in units("gb_h264_zlm.ps")[:40])
    assert (root / row.path).read_bytes() == expected


def test_small_write_batches_reach_the_part_file_while_open(root, index):
    w = writer(root, index, segment_s=60, buffer_bytes=64 * 1024)
    feed(w, units("gb_h264_zlm.ps")[:100])
    (part,) = root.rglob("*.ps.part")
    expected = b"".join(u.ps_bytes for u in units("gb_h264_zlm.ps")[:100])
    assert 0 < part.stat().st_size <= len(expected)
    assert expected.startswith(part.read_bytes())


def test_units_before_the_first_keyframe_are_dropped(root, index):
    w = writer(root, index)
    rows = feed(w, units("gb_h264_zlm.ps")[10:]) + w.close()
    assert w.dropped_units == 15
    start = units("gb_h264_zlm.ps")[25].offset
    assert b"".join(contents(root, rows)) == stream("gb_h264_zlm.ps")[start:]


def test_packet_loss_resumes_at_the_next_keyframe_with_a_gap(root, index):
    items = list(timed(units("gb_h264_zlm.ps")))
    w = writer(root, index)
    rows: list[SegmentRow] = []
    for k, (unit, wall) in enumerate(items):
        if k == 60:
            rows += w.lost(wall)
        rows += w.write(unit, wall)
    rows += w.close()
    assert w.dropped_units == 15  # frames 60..74, up to the keyframe at 75
    assert [row.start_wall - T0 for row in rows] == pytest.approx([0, 2, 3, 5, 7, 9])
    (gap,) = index.gaps(CHANNEL)
    assert gap.reason == "packet loss"
    assert (gap.start_wall, gap.end_wall) == pytest.approx((T0 + 60 / FPS, T0 + 3))
    assert rows[1].end_wall == pytest.approx(gap.start_wall)
    data = contents(root, rows)
    assert b"".join(data[:2]) == b"".join(u.ps_bytes for u in units("gb_h264_zlm.ps")[:60])
    assert b"".join(data[2:]) == stream("gb_h264_zlm.ps")[units("gb_h264_zlm.ps")[75].offset :]
    assert [len(decode(root / row.path)) for row in rows] == [row.frames for row in rows]
    assert verify(root, index).ok


def test_a_gap_reported_by_the_caller_ends_the_segment(root, index):
    w = writer(root, index)
    first = feed(w, units("gb_h264_zlm.ps")[:75])
    closed = w.gap(T0 + 3, T0 + 100, "camera offline")
    later = feed(w, units("gb_h264_zlm.ps")[75:], t0=T0 + 100) + w.close()
    rows = first + closed + later
    assert len(closed) == 1 and closed[0].end_wall == pytest.approx(T0 + 3)
    assert [(g.start_wall, g.end_wall, g.reason) for g in index.gaps(CHANNEL)] == [
        (T0 + 3, T0 + 100, "camera offline")
    ]
    assert index.gaps(CHANNEL, T0 + 200, T0 + 300) == []
    assert [row.prev_sha256 for row in rows[1:]] == [row.sha256 for row in rows[:-1]]
    assert b"".join(contents(root, rows)) == stream("gb_h264_zlm.ps")


def test_a_codec_change_starts_a_new_segment(root, index):
    w = writer(root, index, segment_s=60)
    rows = feed(w, units("gb_h264_zlm.ps")[:30])
    rows += feed(w, units("gb_h265_zlm.ps")[:30], t0=T0 + 30 / FPS) + w.close()
    assert [(row.codec, row.frames) for row in rows] == [("h264", 30), ("h265", 30)]
    assert [len(decode(root / row.path)) for row in rows] == [30, 30]


def test_a_clock_stepped_back_cuts_at_the_next_keyframe(root, index):
    w = writer(root, index, segment_s=60)
    rows = feed(w, units("gb_h264_zlm.ps")[:30])
    rows += feed(w, units("gb_h264_zlm.ps")[30:60], t0=T0 - 3600) + w.close()
    assert [(row.start_wall, row.frames) for row in rows] == [(T0, 50), (T0 - 3600 + 20 / FPS, 10)]


def test_names_follow_the_local_time_zone():
    assert segment_name(T0, TZ) == ("2026-11-26", "20261126T160512.123")
    assert parse_segment_name("20261126T160512.123.ps", TZ) == pytest.approx(T0)
    assert parse_segment_name("20261126T160512.123_1.ps.part", TZ) == pytest.approx(T0)
    assert parse_segment_name("notes.ps", TZ) is None


def test_settings_are_checked(root, index):
    with pytest.raises(ValueError, match="at least 1 second"):
        SegmentWriter(root, index, CHANNEL, segment_s=0.5)
    for bad in ["", "..", "a/b", " 3402"]:
        with pytest.raises(ValueError, match="directory name"):
            SegmentWriter(root, index, bad)


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & recorder.segments.O_DIRECT)


class DiskFull:
    """Stands in for os.writev: the disk holds ``room`` more bytes, then ENOSPC. A direct write
    (O_DIRECT) is cut at a whole block, as the kernel cuts it, and written from the caller's
    aligned buffer."""

    def __init__(self, room: float) -> None:
        self.room = room
        self.failures = 0
        self.direct_writes = 0

    def __call__(self, fd: int, buffers: list[bytes | memoryview]) -> int:
        if is_direct(fd):
            (view,) = buffers  # one aligned buffer
            take = int(min(len(view), self.room)) // recorder.segments.BLOCK
            take *= recorder.segments.BLOCK
            if take:
                self.direct_writes += 1
                n = os.writev(fd, [memoryview(view)[:take]])
                self.room -= n
                return n
        if self.room <= 0 or is_direct(fd):
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = b"".join(buffers)  # a short write, as writev(2) makes when the disk fills
        n = os.write(fd, data[: int(min(len(data), self.room))])
        self.room -= n
        return n


both_ways = pytest.mark.parametrize("direct", [True, False], ids=["direct", "cached"])


@both_ways
def test_disk_full_keeps_what_was_written_and_resumes_at_a_keyframe(root, index, monkeypatch,
                                                                    direct):
    disk = DiskFull(room=200_000)
    monkeypatch.setattr(recorder.segments, "_write", disk)
    items = list(timed(units("gb_h264_zlm.ps")))
    w = writer(root, index, buffer_bytes=16 * 1024, direct=direct)
    rows: list[SegmentRow] = []
    for k, (unit, wall) in enumerate(items):
        if k == 120:  # space comes back (the sweeper ran)
            disk.room = float("inf")
        rows += w.write(unit, wall)
    rows += w.close()
    assert disk.failures >= 1 and w.write_errors == disk.failures
    assert "No space left" in (w.last_error or "")
    (cut, *_) = [row for row in rows if row.end_wall - row.start_wall < 2]
    data = contents(root, rows)
    source = stream("gb_h264_zlm.ps")
    offsets = {u.offset for u in units("gb_h264_zlm.ps")} | {len(source)}
    for row, blob in zip(rows, data, strict=True):
        start = source.find(blob)
        assert start in offsets and start + len(blob) in offsets  # whole units, byte-exact
        assert blob.startswith(PACK_START) and first_video(blob).keyframe
        assert row.sha256 == hashlib.sha256(blob).hexdigest()
        assert len(decode(root / row.path)) == row.frames
    assert sum(len(blob) for blob in data[: rows.index(cut) + 1]) <= 200_000
    gaps = index.gaps(CHANNEL)
    assert gaps and all(g.reason == "disk full" for g in gaps)
    assert gaps[0].start_wall == pytest.approx(cut.end_wall)
    assert rows[-1].start_wall >= gaps[-1].end_wall
    assert rows[-1].end_wall == pytest.approx(T0 + 10)
    assert not list(root.rglob("*.part"))
    assert verify(root, index).ok
    assert w.direct == direct and (disk.direct_writes > 0) == direct


@both_ways
def test_disk_full_before_anything_was_written_leaves_no_file(root, index, monkeypatch, direct):
    monkeypatch.setattr(recorder.segments, "_write", DiskFull(room=0))
    w = writer(root, index, direct=direct)
    rows = feed(w, units("gb_h264_zlm.ps")[:60]) + w.close()
    assert rows == [] and not list(root.rglob("*.ps*"))
    gaps = [
        (round(g.start_wall - T0, 3), round(g.end_wall - T0, 3), g.reason) for g in index.gaps()
    ]
    assert gaps == [(0, 2, "disk full"), (2, 60 / FPS, "disk full")]
    assert w.write_errors == 2  # the flush at the cut (frame 50) and the one at close


PREFIX = units("gb_h264_zlm.ps")[:130]
PREFIX_BYTES = b"".join(u.ps_bytes for u in PREFIX)


@settings(max_examples=15)
@given(
    cuts=st.lists(st.integers(1, len(PREFIX_BYTES) - 1), max_size=40, unique=True),
    buffer_bytes=st.integers(1, 300_000),
    segment_s=st.sampled_from([1, 2, 60]),
    direct=st.booleans(),
)
def test_chunking_and_batching_do_not_change_the_files(cuts, buffer_bytes, segment_s, direct):
    demuxer = PsDemuxer()
    edges = [0, *sorted(cuts), len(PREFIX_BYTES)]
    fed: list[AccessUnit] = []
    for a, b in zip(edges, edges[1:], strict=False):
        fed += demuxer.feed(PREFIX_BYTES[a:b])
    fed += demuxer.flush()
    with tempfile.TemporaryDirectory() as tmp, RecordIndex(Path(tmp) / "i.sqlite3") as idx:
        w = SegmentWriter(tmp, idx, CHANNEL, segment_s=segment_s, tz=TZ,
                          buffer_bytes=buffer_bytes, direct=direct)
        rows = feed(w, fed) + w.close()
        files = contents(Path(tmp), rows)
    assert b"".join(files) == PREFIX_BYTES
    expected_starts = [PREFIX[k].offset for k in range(0, 130, 25 * segment_s)][: len(files)]
    assert [PREFIX_BYTES.find(f) for f in files] == expected_starts



def _reference_rows(name: str, files: list[bytes]) -> list[tuple[str, int, int | None, int | None]]:
    """What each segment's row should hold, computed unit by unit as the writer once did (the
    SHA-256 updated with each unit's bytes, the video frames counted, the first and last PTS),
    from the units of ``name`` whose bytes each file is."""
    source = stream(name)
    out = []
    for blob in files:
        start = source.find(blob)
        inside = [u for u in units(name) if start <= u.offset < start + len(blob)]
        assert b"".join(u.ps_bytes for u in inside) == blob  # whole units, byte-exact
        sha, frames, first, last = hashlib.sha256(), 0, None, None
        for unit in inside:
            sha.update(unit.ps_bytes)
            if is_video(unit):
                frames += 1
                if unit.pts is not None:
                    first = unit.pts if first is None else first
                    last = unit.pts
        out.append((sha.hexdigest(), frames, first, last))
    return out


def _row_values(rows: list[SegmentRow]) -> list[tuple[str, int, int | None, int | None]]:
    return [(r.sha256, r.frames, r.start_pts, r.end_pts) for r in rows]


@both_ways
@pytest.mark.parametrize("buffer_bytes", [1, 16 * 1024, 1 << 20])
@pytest.mark.parametrize("name", ["gb_h264_alaw_zlm.ps", "h265_640x360_25fps_10s_ffmpeg.ps"])
def test_batched_hashing_gives_the_files_hash_and_the_unit_by_unit_rows(root, index, name,
                                                                         buffer_bytes, direct):
    rows = record(root, index, name, buffer_bytes=buffer_bytes, direct=direct)
    files = contents(root, rows)
    assert len(rows) >= 4
    assert _row_values(rows) == _reference_rows(name, files)
    assert [r.sha256 for r in rows] == [hashlib.sha256(blob).hexdigest() for blob in files]
    assert [r.prev_sha256 for r in rows] == [None] + [r.sha256 for r in rows[:-1]]


@both_ways
def test_a_failed_batch_hashes_only_the_units_that_reached_the_file(root, index, monkeypatch,
                                                                    direct):
    disk = DiskFull(room=150_000)  # a batch of 200 KB is written in part: whole units kept
    monkeypatch.setattr(recorder.segments, "_write", disk)
    w = writer(root, index, buffer_bytes=200_000, segment_s=60, direct=direct)
    rows: list[SegmentRow] = []
    for unit, wall in timed(units("gb_h264_zlm.ps")):
        rows += w.write(unit, wall)
        if disk.failures:
            disk.room = float("inf")  # space comes back
    rows += w.close()
    assert disk.failures == 1 and len(rows) == 2
    files = contents(root, rows)
    assert 0 < len(files[0]) <= 150_000
    assert _row_values(rows) == _reference_rows("gb_h264_zlm.ps", files)
    assert w.direct == direct


@pytest.mark.parametrize("buffer_bytes", [1, 5_000, 16 * 1024, 1 << 20])
def test_a_direct_segment_holds_every_byte_of_each_batch_written(root, index, buffer_bytes):
    """Past the page cache the whole blocks go out with O_DIRECT and the rest through the
    cache, so after every batch (and every flush) the file is the stream so far, whatever its
    length; the next batch writes the partial block again."""
    name = "gb_h264_zlm.ps"
    w = writer(root, index, buffer_bytes=buffer_bytes, segment_s=60)
    sent = bytearray()
    sizes = set()
    for k, (unit, wall) in enumerate(timed(units(name)[:150])):
        w.write(unit, wall)
        sent += unit.ps_bytes
        if k % 7 == 6:
            w.flush()
        (part,) = root.rglob("*.ps.part")
        on_disk = part.read_bytes()
        assert sent.startswith(on_disk)
        if k % 7 == 6:
            assert on_disk == sent
            sizes.add(len(on_disk) % recorder.segments.BLOCK)
        seg = w._open
        assert seg is not None and is_direct(seg.fd)
    (row,) = w.close()
    assert (root / row.path).read_bytes() == sent
    assert row.sha256 == hashlib.sha256(sent).hexdigest()
    assert len(sizes) > 5  # files that end inside a block, many ways


def test_a_file_system_refusing_direct_writes_gets_cached_ones(root, index, monkeypatch, caplog):
    """As on a disk of larger logical blocks than the stage's alignment: the first direct write
    fails with EINVAL, nothing of the batch is lost, and the writer goes on through the cache."""
    refused = []

    def picky(fd: int, buffers: list[bytes | memoryview]) -> int:
        if is_direct(fd):
            refused.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return os.writev(fd, buffers)

    monkeypatch.setattr(recorder.segments, "_write", picky)
    name = "gb_h264_zlm.ps"
    w = writer(root, index, buffer_bytes=64 * 1024)
    rows = feed(w, units(name)) + w.close()
    assert len(refused) == 1 and not w.direct
    assert "cannot be written past the page cache" in caplog.text
    assert b"".join(contents(root, rows)) == stream(name)[units(name)[0].offset :]
    assert [r.sha256 for r in rows] == [hashlib.sha256(b).hexdigest() for b in contents(root, rows)]
    assert w.write_errors == 0


def test_a_file_system_without_o_direct_is_written_through_the_cache(root, index, monkeypatch,
                                                                    caplog):
    """Setting O_DIRECT on a new segment's descriptor is refused (EINVAL): the segment, and the
    writer's next ones, go through the page cache."""
    real = fcntl.fcntl
    calls = []

    def setfl(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & recorder.segments.O_DIRECT:
            calls.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, cmd, arg)

    monkeypatch.setattr(recorder.segments.fcntl, "fcntl", setfl)
    name = "gb_h264_zlm.ps"
    w = writer(root, index)
    rows = feed(w, units(name)) + w.close()
    assert len(calls) == 1 and not w.direct
    assert "cannot be written past the page cache" in caplog.text
    assert b"".join(contents(root, rows)) == stream(name)[units(name)[0].offset :]
    assert len(rows) == 5 and w.write_errors == 0
