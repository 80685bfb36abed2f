"""recorder.search: RecordInfo items from the index, one per run of segments without a gap."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.index import GapRow, RecordIndex, SegmentRow
from recorder.search import (
    RecordItem,
    SearchError,
    file_path,
    gb_time,
    parse_file_path,
    record_search,
)
from recorder.segments import SegmentWriter
from tests.recorder.media import CHANNEL, FPS, T0, TZ, is_video, timed, units

DAY = datetime(2026, 11, 26, tzinfo=TZ).timestamp()  # local midnight at UTC+8


def add(index: RecordIndex, start: float, end: float, n: int, size: int = 1000) -> SegmentRow:
    return index.add_segment(
        channel_id=CHANNEL, path=f"{CHANNEL}/2026-11-26/{n}.ps", start_wall=start,
        end_wall=end, start_pts=0, end_pts=0, bytes=size, frames=1500, codec="h264",
        sha256=f"{n:064x}", prev_sha256=None,
    )


def minute_day(index: RecordIndex) -> None:
    """A day of one-minute segments; 09:00-09:30 not recorded (with a gap row), and the
    minute 18:00 missing without one (the node was down)."""
    for minute in range(24 * 60):
        start = DAY + minute * 60
        if 9 * 60 <= minute < 9 * 60 + 30:
            continue
        if minute == 18 * 60:
            continue
        add(index, start, start + 60, minute)
    index.add_gap(CHANNEL, DAY + 9 * 3600, DAY + 9 * 3600 + 1800, "camera offline")


def test_a_day_of_minute_segments_with_two_gaps_is_three_items(index: RecordIndex) -> None:
    minute_day(index)
    start, end = DAY, DAY + 86400
    found = record_search(index.segments(CHANNEL, start, end), start, end,
                          gaps=index.gaps(CHANNEL, start, end))
    assert found.complete and found.runs == 3
    assert [(item.start_time(TZ), item.end_time(TZ)) for item in found.items] == [
        ("2026-11-26T00:00:00", "2026-11-26T09:00:00"),
        ("2026-11-26T09:30:00", "2026-11-26T18:00:00"),
        ("2026-11-26T18:01:00", "2026-11-27T00:00:00"),
    ]
    assert [item.segments for item in found.items] == [540, 510, 359]
    assert [item.bytes for item in found.items] == [540_000, 510_000, 359_000]
    fields = found.items[1].fields(TZ, name="Gate", recorder_id="34020000002000000001")
    assert fields == {
        "DeviceID": CHANNEL, "Name": "Gate", "FilePath": f"{CHANNEL}@{DAY + 9.5 * 3600:.3f}",
        "Address": "", "StartTime": "2026-11-26T09:30:00", "EndTime": "2026-11-26T18:00:00",
        "Secrecy": 0, "Type": "time", "RecorderID": "34020000002000000001", "FileSize": 510_000,
    }


def test_items_are_clipped_to_the_range_and_keep_their_file_path(index: RecordIndex) -> None:
    minute_day(index)
    start, end = DAY + 8 * 3600 + 10.5, DAY + 12 * 3600 + 0.25
    found = record_search(index.segments(CHANNEL, start, end), start, end)
    assert [(item.start, item.end) for item in found.items] == [
        (start, DAY + 9 * 3600), (DAY + 9.5 * 3600, end)]
    # the start rounded down, the end up: every frame of the range is inside
    assert found.items[0].start_time(TZ) == "2026-11-26T08:00:10"
    assert found.items[1].end_time(TZ) == "2026-11-26T12:00:01"
    # the FilePath names the first segment found, however the run is clipped
    assert found.items[1].file_path == file_path(CHANNEL, DAY + 9.5 * 3600)
    later = record_search(index.segments(CHANNEL, DAY + 9.6 * 3600, DAY + 10 * 3600),
                          DAY + 9.6 * 3600, DAY + 10 * 3600)
    assert later.items[0].run_start == DAY + 9.6 * 3600  # the segment 09:36 opens this search
    assert parse_file_path(found.items[1].file_path) == (CHANNEL, DAY + 9.5 * 3600)


def test_a_gap_row_parts_runs_that_the_tolerance_would_join(index: RecordIndex) -> None:
    add(index, T0, T0 + 60, 1)
    add(index, T0 + 60.5, T0 + 120, 2)  # half a second apart: one run
    add(index, T0 + 120.4, T0 + 180, 3)  # and a gap row between: two runs
    index.add_gap(CHANNEL, T0 + 120, T0 + 120.4, "3 RTP packet(s) lost")
    index.add_gap(CHANNEL, T0 + 180, T0 + 180, "no media")  # an instant: no item boundary
    add(index, T0 + 180, T0 + 240, 4)
    rows, gaps = index.segments(CHANNEL), index.gaps(CHANNEL)
    found = record_search(rows, T0, T0 + 240, gaps=gaps)
    assert [(i.start, i.end, i.segments) for i in found.items] == [
        (T0, T0 + 120, 2), (T0 + 120.4, T0 + 240, 2)]
    assert len(record_search(rows, T0, T0 + 240).items) == 1  # without the gap rows
    strict = record_search(rows, T0, T0 + 240, gaps=gaps, tolerance=0.0)
    assert [(i.start, i.end) for i in strict.items] == [
        (T0, T0 + 60), (T0 + 60.5, T0 + 120), (T0 + 120.4, T0 + 240)]


def runs(index: RecordIndex, count: int) -> list[SegmentRow]:
    """``count`` runs of one segment, the k-th gap after them k * 10 s long."""
    rows, at = [], T0
    for n in range(count):
        rows.append(add(index, at, at + 60, n))
        at += 60 + 10 * (count - n)  # the last gaps are the shortest
    return rows


def test_past_max_items_the_latest_runs_are_cut(index: RecordIndex) -> None:
    rows = runs(index, 5)
    found = record_search(rows, T0, T0 + 3600, max_items=3)
    assert (found.runs, found.cut, found.merged, found.complete) == (5, 2, 0, False)
    assert [item.start for item in found.items] == [row.start_wall for row in rows[:3]]


def test_past_max_items_the_runs_with_the_shortest_gaps_are_merged(index: RecordIndex) -> None:
    rows = runs(index, 5)
    found = record_search(rows, T0, T0 + 3600, max_items=3, merge=True)
    assert (found.runs, found.cut, found.merged) == (5, 0, 2)
    assert [(i.start, i.end, i.segments, i.spans_gaps) for i in found.items] == [
        (rows[0].start_wall, rows[0].end_wall, 1, False),
        (rows[1].start_wall, rows[1].end_wall, 1, False),
        (rows[2].start_wall, rows[4].end_wall, 3, True),
    ]
    assert found.items[2].bytes == 3000


def test_a_real_recording_with_a_gap_is_two_items(root: Path, index: RecordIndex) -> None:
    items = units("gb_h264_zlm.ps")
    writer = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    for unit, wall in timed(items[:100], T0):
        writer.write(unit, wall)
    writer.gap(T0 + 4.0, T0 + 34.0, "camera offline")
    for unit, wall in timed(items[100:], T0 + 34.0):
        writer.write(unit, wall)
    writer.close()
    rows = index.segments(CHANNEL)
    assert len(rows) == 5
    assert sum(is_video(u) for u in items) == 250
    found = record_search(rows, T0 - 10, T0 + 100, gaps=index.gaps(CHANNEL))
    assert [(item.start, item.segments) for item in found.items] == [(T0, 2), (T0 + 34.0, 3)]
    assert found.items[0].end == pytest.approx(T0 + 100 / FPS)  # the last frame's end
    assert found.items[1].end == pytest.approx(T0 + 34.0 + 150 / FPS)
    assert [item.start_time(TZ) for item in found.items] == [
        "2026-11-26T16:05:12", "2026-11-26T16:05:46"]
    assert [item.end_time(TZ) for item in found.items] == [
        "2026-11-26T16:05:17", "2026-11-26T16:05:53"]
    assert sum(item.bytes for item in found.items) == sum(row.bytes for row in rows)


def test_gb_time_is_local_wall_time_without_zone() -> None:
    assert gb_time(T0, TZ) == "2026-11-26T16:05:12"
    assert gb_time(T0, UTC) == "2026-11-26T08:05:12"
    assert gb_time(T0, timezone(timedelta(hours=-5))) == "2026-11-26T03:05:12"


@pytest.mark.parametrize("text", [
    "", "@", "34020000001320000001", "/mnt/record/ch1/2024-05-20/10.mp4",
    f"{CHANNEL}@", f"{CHANNEL}@1795680312", f"{CHANNEL}@1795680312.12", f"{CHANNEL}@-1.000",
    f"{CHANNEL}@nan.000", f"ch/1@{T0:.3f}", f"@{T0:.3f}", f"{'9' * 65}@{T0:.3f}",
])
def test_a_file_path_that_is_not_ours_is_none(text: str) -> None:
    assert parse_file_path(text) is None


def test_bad_searches_are_refused(index: RecordIndex) -> None:
    row = add(index, T0, T0 + 60, 1)
    other = SegmentRow(9, "other", "other/1.ps", T0, T0 + 60, None, None, 1, 1, None, "0" * 64,
                       None, False)
    for args, kwargs in [
        ((T0, math.inf), {}), ((math.nan, T0), {}), ((T0, T0 + 60), {"max_items": 0}),
        ((T0, T0 + 60), {"tolerance": -1.0}),
    ]:
        with pytest.raises(SearchError):
            record_search([row], *args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="channels"):
        record_search([row, other], T0, T0 + 60)
    assert record_search([row], T0 + 10, T0 + 10).items == ()
    assert record_search([row], T0 + 60, T0 + 120).items == ()  # touching is not overlapping


# ----- properties ------------------------------------------------------------------------------

def segment_rows(draw: st.DrawFn) -> list[SegmentRow]:
    rows, at = [], 0.0
    for n in range(draw(st.integers(0, 30))):
        at += draw(st.sampled_from([0.0, 0.0, 0.3, 2.0, 45.0, -5.0]))  # -5: clock set back
        length = draw(st.floats(0.0, 120.0))
        rows.append(SegmentRow(n, CHANNEL, f"{n}.ps", T0 + at, T0 + at + length, None, None,
                               draw(st.integers(0, 10**6)), 1, "h264", "0" * 64, None, False))
        at += length
    return rows


@settings(max_examples=200)
@given(data=st.data(), start=st.floats(-100.0, 4000.0), length=st.floats(-10.0, 4000.0),
       max_items=st.integers(1, 8), merge=st.booleans())
def test_items_are_ordered_apart_within_the_range_and_bounded(
    data: st.DataObject, start: float, length: float, max_items: int, merge: bool
) -> None:
    rows = data.draw(st.composite(segment_rows)())
    gaps = [GapRow(1, CHANNEL, T0 + 50.0, T0 + 50.5, "loss")] if data.draw(st.booleans()) else []
    begin, end = T0 + start, T0 + start + length
    found = record_search(rows, begin, end, gaps=gaps, max_items=max_items, merge=merge)
    items = found.items
    assert len(items) <= max_items
    assert len(items) + found.merged + found.cut == found.runs
    for item in items:
        assert begin <= item.start <= item.end <= end
        assert isinstance(item, RecordItem)
        assert parse_file_path(item.file_path) == (CHANNEL, round(item.run_start, 3))
    assert all(a.end <= b.start for a, b in zip(items, items[1:], strict=False))
    inside = [r for r in rows if r.start_wall < end and r.end_wall > begin]
    if end > begin and not found.cut:
        assert sum(item.segments for item in items) == len(inside)
        assert all(any(i.start <= max(r.start_wall, begin) and min(r.end_wall, end) <= i.end
                       for i in items) for r in inside)


@given(st.text(max_size=100))
def test_parse_file_path_takes_any_text(text: str) -> None:
    found = parse_file_path(text)
    assert found is None or file_path(*found) == text
