"""recorder.service: the writer thread, shutdown, hooks, errors and queue overflow."""

from __future__ import annotations

import hashlib
import threading

import pytest

from recorder.index import RecordIndex, SegmentRow
from recorder.service import Recorder
from recorder.verify import verify
from tests.recorder.media import CHANNEL, T0, TZ, decode, stream, timed, units

NAME = "gb_h264_zlm.ps"
WAIT = 30.0  # upper bound for waits on the writer thread; never reached when things work


def test_units_submitted_are_recorded_and_close_finishes_every_segment(root):
    announced: list[SegmentRow] = []
    recorder = Recorder(root, segment_s=2, tz=TZ, on_segment=announced.append)
    for unit, wall in timed(units(NAME)):
        recorder.submit(CHANNEL, unit, wall)
        recorder.submit("34020000001320000002", unit, wall)
    assert recorder.drain(WAIT)
    assert recorder.queue_depth == 0
    assert recorder.segments_closed == 8  # 4 per channel; the last ones are still open
    assert list(root.rglob("*.ps.part"))
    recorder.close()  # as on SIGTERM
    assert not list(root.rglob("*.ps.part"))
    assert recorder.segments_closed == len(announced) == 10
    assert recorder.units == 2 * len(units(NAME))
    assert recorder.bytes == 2 * len(stream(NAME))
    assert recorder.write_errors == 0 and recorder.last_error is None
    with RecordIndex(root / "index.sqlite3") as index:
        rows = index.segments(CHANNEL)
        assert rows == [row for row in announced if row.channel_id == CHANNEL]
        assert b"".join((root / row.path).read_bytes() for row in rows) == stream(NAME)
        assert all(
            hashlib.sha256((root / row.path).read_bytes()).hexdigest() == row.sha256 for row in rows
        )
        assert verify(root, index).ok
    recorder.submit(CHANNEL, units(NAME)[0], T0)  # after close: ignored, counted
    assert recorder.dropped_units == 1


def test_gaps_flush_and_close_channel(root):
    with Recorder(root, segment_s=60, tz=TZ) as recorder:
        for unit, wall in timed(units(NAME)[:60]):
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)
        (part,) = root.rglob("*.ps.part")
        assert part.read_bytes() == b"".join(u.ps_bytes for u in units(NAME)[:60])
        recorder.gap(CHANNEL, T0 + 2.4, T0 + 50, "camera offline")
        for unit, wall in timed(units(NAME)[75:], T0 + 50):
            recorder.submit(CHANNEL, unit, wall)
        recorder.lost(CHANNEL, T0 + 55)
        recorder.close_channel(CHANNEL)
        assert recorder.drain(WAIT)
        assert recorder.segments_closed == 2
        gaps = recorder.index.gaps(CHANNEL)
        assert [(g.start_wall, g.end_wall, g.reason) for g in gaps] == [
            (T0 + 2.4, T0 + 50, "camera offline"),
            (recorder.index.segments(CHANNEL)[-1].end_wall, T0 + 50 + 175 / 25, "packet loss"),
        ]


def test_errors_are_counted_and_the_thread_keeps_going(root, caplog):
    def failing_hook(row: SegmentRow) -> None:
        raise RuntimeError("hook failed")

    with Recorder(root, segment_s=2, tz=TZ, on_segment=failing_hook) as recorder:
        for unit, wall in timed(units(NAME)[:60]):
            recorder.submit("../escape", unit, wall)
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.drain(WAIT)
        assert recorder.write_errors == 61  # 60 refused units and one failed hook
        assert "cannot be used as a directory name" in (recorder.last_error or "")
        assert recorder.segments_closed == 1
    assert len([r for r in caplog.records if r.name == "recorder.service"]) == 1  # throttled
    assert not (root.parent / "escape").exists()


def test_a_full_queue_drops_units_and_resumes_at_a_keyframe(root):
    entered, release = threading.Event(), threading.Event()

    def slow_hook(row: SegmentRow) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(WAIT)

    items = list(timed(units(NAME)))
    with Recorder(root, segment_s=2, tz=TZ, on_segment=slow_hook) as recorder:
        for unit, wall in items[:51]:  # the keyframe at 50 closes the first segment
            recorder.submit(CHANNEL, unit, wall)
        assert entered.wait(WAIT)  # the writer thread now waits in the hook
        recorder.max_queue = 20
        for unit, wall in items[51:]:
            recorder.submit(CHANNEL, unit, wall)
        release.set()
    assert recorder.dropped_units == len(items) - 51 - 20
    with RecordIndex(root / "index.sqlite3") as index:
        rows = index.segments(CHANNEL)
        (gap,) = index.gaps(CHANNEL)
        assert gap.reason == "recorder queue full"
        assert len(rows) == 2 and rows[1].frames == 21  # the keyframe and the 20 queued frames
        assert gap.start_wall == rows[1].end_wall
        assert len(decode(root / rows[1].path)) == 21
        assert verify(root, index).ok


def test_start_recovers_what_a_crash_left_and_sweeps_on_request(root):
    part = root / CHANNEL / "2026-11-26" / "20261126T160512.123.ps.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"".join(u.ps_bytes for u in units(NAME)[:60]))
    announced: list[SegmentRow] = []
    with Recorder(root, tz=TZ, on_segment=announced.append) as recorder:
        assert recorder.drain(WAIT)
        (row,) = announced
        assert row.recovered and row.frames == 60 and row.start_wall == T0
        with pytest.raises(ValueError, match="30-day minimum"):
            recorder.sweep(7)
        recorder.sweep(30, now=T0 + 29 * 86400)
        assert recorder.drain(WAIT) and recorder.deleted == 0
        recorder.sweep(30, now=T0 + 31 * 86400)
        assert recorder.drain(WAIT) and recorder.deleted == 1
        assert recorder.index.segments() == [] and not part.parent.exists()
