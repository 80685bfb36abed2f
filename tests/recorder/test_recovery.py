"""recorder.recovery: a writer killed with SIGKILL mid-segment, torn ends, lost index rows."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.index import RecordIndex
from recorder.recovery import _keep_length, complete_length, recover, segment_stats
from recorder.segments import SegmentWriter
from recorder.verify import verify
from tests.recorder.media import CHANNEL, FPS, T0, TZ, decode, feed, stream, units

REPO = Path(__file__).resolve().parents[2]
NAME = "gb_h264_zlm.ps"

# Records the media as fast as it can until two segments are indexed and the third one's .part
# holds at least 40 kB on disk, says "ready" and then waits to be killed.
CHILD = """
import sys, time
from datetime import timedelta, timezone
from pathlib import Path
from recorder.index import RecordIndex
from recorder.segments import SegmentWriter
from rtp.ps import PsDemuxer

root, media, t0 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
demuxer = PsDemuxer()
units = demuxer.feed(Path(media).read_bytes()) + demuxer.flush()
index = RecordIndex(root / "index.sqlite3")
writer = SegmentWriter(root, index, sys.argv[4], segment_s=2, buffer_bytes=16384,
                       tz=timezone(timedelta(hours=8)))
frame = -1
for unit in units:
    frame += 0xE0 <= unit.stream_id <= 0xEF
    writer.write(unit, t0 + frame / 25)
    parts = list(root.rglob("*.part"))
    if len(index.segments()) == 2 and parts and parts[0].stat().st_size >= 40000:
        print("ready", parts[0].stat().st_size, flush=True)
        time.sleep(600)
print("finished without becoming ready", flush=True)
"""


def run_and_kill(root: Path) -> int:
    """Start the child writer, SIGKILL it once it is mid-segment; the .part size it saw."""
    media = REPO / "tests" / "data" / "media" / NAME
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(media), repr(T0), CHANNEL],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.startswith("ready"), line + (child.stderr.read() if child.stderr else "")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    return int(line.split()[1])


def test_recovery_after_sigkill_indexes_the_part_file(root):
    part_size = run_and_kill(root)
    (part,) = root.rglob("*.ps.part")
    assert part.stat().st_size == part_size
    with RecordIndex(root / "index.sqlite3") as index:
        before = index.segments(CHANNEL)
        assert len(before) == 2
        (row,) = recover(root, index, tz=TZ)
        assert not part.exists() and not list(root.rglob("*.part"))
        data = (root / row.path).read_bytes()
        source = stream(NAME)
        assert data == source[units(NAME)[100].offset :][: len(data)]  # frames from 100 on
        assert len(data) == part_size  # the writer only wrote whole units: nothing to cut
        assert row.recovered and row.path == before[-1].path.replace("14.123", "16.123")
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        assert row.prev_sha256 == before[-1].sha256
        assert row.start_wall == pytest.approx(T0 + 4)
        assert row.end_wall == pytest.approx(T0 + 4 + row.frames / FPS)
        numbers = decode(root / row.path)
        assert len(numbers) == row.frames > 0
        assert numbers == [(125 + k) % 250 for k in range(row.frames)]
        assert verify(root, index).ok
        assert recover(root, index, tz=TZ) == []  # nothing left to do


def test_a_torn_write_at_the_end_is_cut_off(root):
    part_size = run_and_kill(root)
    (part,) = root.rglob("*.ps.part")
    original = part.read_bytes()
    frames = segment_stats(original)[0].frames
    following = next(u for u in units(NAME) if u.offset >= units(NAME)[100].offset + part_size)
    with open(part, "ab") as f:  # half of the next frame reached the disk
        f.write(following.ps_bytes[: len(following.ps_bytes) // 2])
    with RecordIndex(root / "index.sqlite3") as index:
        (row,) = recover(root, index, tz=TZ)
        data = (root / row.path).read_bytes()
        assert data == original
        assert row.bytes == part_size and row.frames == frames
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        assert len(decode(root / row.path)) == row.frames
        assert verify(root, index).ok


def test_durable_files_missing_from_the_index_are_indexed(root, tmp_path):
    with RecordIndex(root / "index.sqlite3") as first:
        w = SegmentWriter(root, first, CHANNEL, segment_s=2, tz=TZ)
        written = feed(w, units(NAME)) + w.close()
    # as if the process died after each rename but before each insert
    with RecordIndex(tmp_path / "rebuilt.sqlite3") as index:
        rows = recover(root, index, tz=TZ)
        assert [r.path for r in rows] == [r.path for r in written]
        assert [r.sha256 for r in rows] == [r.sha256 for r in written]
        assert [r.prev_sha256 for r in rows] == [r.prev_sha256 for r in written]
        assert [r.frames for r in rows] == [r.frames for r in written]
        assert [r.start_wall for r in rows] == pytest.approx([r.start_wall for r in written])
        assert [r.end_wall for r in rows] == pytest.approx([r.end_wall for r in written])
        assert all(r.recovered for r in rows)
        assert verify(root, index).ok


def test_a_part_without_a_complete_frame_is_removed(root, index):
    directory = root / CHANNEL / "2026-11-26"
    directory.mkdir(parents=True)
    part = directory / "20261126T160512.123.ps.part"
    part.write_bytes(units(NAME)[0].ps_bytes[:1000])
    assert recover(root, index, tz=TZ) == []
    assert not part.exists()


def test_foreign_files_are_left_alone(root, index):
    directory = root / CHANNEL / "2026-11-26"
    directory.mkdir(parents=True)
    (directory / "notes.ps").write_bytes(b"x")
    assert recover(root, index, tz=TZ) == []
    assert (directory / "notes.ps").exists()


def test_complete_length_stops_before_a_cut_structure():
    data = b"".join(u.ps_bytes for u in units(NAME)[:3])
    assert complete_length(data) == len(data)
    ends = set()
    for n in range(len(data) + 1):
        k = complete_length(data[:n])
        assert k <= n
        ends.add(k)
    assert {len(u.ps_bytes) for u in units(NAME)[:1]} <= ends
    assert complete_length(b"") == 0
    assert complete_length(b"\x00\x00\x01\xba\x44") == 0


def test_any_torn_end_is_cut_back_to_whole_frames():
    items = units(NAME)[:6]
    data = b"".join(u.ps_bytes for u in items)
    starts = [u.offset for u in items]
    for n in range(starts[4], len(data) + 1, 97):
        keep = _keep_length(data[:n])
        assert keep in starts or keep == n == len(data)
        assert keep >= starts[3]  # at most the frame before the torn one is given up
