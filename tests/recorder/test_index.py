"""recorder.index: the schema other modules read, overlap queries, storage rates."""

from __future__ import annotations

import sqlite3

import pytest

from recorder.index import RecordIndex, SegmentRow

SEGMENT_COLUMNS = [
    "id",
    "channel_id",
    "path",
    "start_wall",
    "end_wall",
    "start_pts",
    "end_pts",
    "bytes",
    "frames",
    "codec",
    "sha256",
    "prev_sha256",
    "recovered",
]


def add(index: RecordIndex, channel: str, start: float, end: float, size: int = 1000) -> SegmentRow:
    return index.add_segment(
        channel_id=channel,
        path=f"{channel}/d/{start}.ps",
        start_wall=start,
        end_wall=end,
        start_pts=0,
        end_pts=90000,
        bytes=size,
        frames=25,
        codec="h264",
        sha256=f"{start:064.0f}",
        prev_sha256=index.chain_head(channel),
    )


def test_schema_has_the_agreed_tables_and_columns(index):
    with sqlite3.connect(index.path) as db:
        columns = {
            table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            for table in ("segments", "gaps", "deletions")
        }
        names = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        indexes = {row[0] for row in names}
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    db.close()
    assert columns["segments"] == SEGMENT_COLUMNS
    assert columns["gaps"] == ["id", "channel_id", "start_wall", "end_wall", "reason"]
    assert columns["deletions"][:7] == [
        "id",
        "channel_id",
        "path",
        "sha256",
        "start_wall",
        "end_wall",
        "deleted_at",
    ]
    assert {"segments_channel_start", "gaps_channel_start"} <= indexes
    assert mode == "wal"


def test_rows_round_trip_and_overlap_queries(index):
    a = add(index, "c1", 100.0, 160.0)
    b = add(index, "c1", 160.0, 220.0)
    c = add(index, "c2", 100.0, 130.0)
    assert index.segments("c1") == [a, b]
    assert index.segments("c1", 150.0, 170.0) == [a, b]
    assert index.segments("c1", 160.0, 170.0) == [b]  # [start, end) overlap, end exclusive
    assert index.segments("c1", 0.0, 100.0) == []
    assert index.segments(None, 120.0, 125.0) == [a, c]
    assert index.last_segment("c1") == b and index.last_segment("none") is None
    assert b.prev_sha256 == a.sha256 and a.prev_sha256 is None
    assert index.segment_by_path(c.path) == c
    gap = index.add_gap("c3", 10.0, 20.0, "camera offline")
    assert index.gaps("c3", 15.0, 16.0) == [gap] and index.gaps("c3", 20.0, 30.0) == []
    assert index.channels() == ["c1", "c2", "c3"]
    with pytest.raises(sqlite3.IntegrityError):
        add(index, "c1", 100.0, 160.0)  # the same path twice


def test_bytes_per_day_is_the_observed_rate(index):
    add(index, "c1", 0.0, 60.0, size=6_000)
    add(index, "c1", 60.0, 120.0, size=6_000)
    add(index, "c2", 0.0, 10.0, size=500)
    assert index.bytes_per_day() == {"c1": 100.0 * 86400, "c2": 50.0 * 86400}
    assert index.bytes_per_day("c2") == {"c2": 50.0 * 86400}
    assert index.bytes_per_day(since=100.0) == {"c1": 100.0 * 86400}


def test_a_second_connection_reads_while_the_writer_holds_one(index):
    row = add(index, "c1", 0.0, 60.0)
    with RecordIndex(index.path) as reader:
        assert reader.segments("c1") == [row]


def test_search_in_a_long_history_finds_exactly_the_overlapping_segments(
    index: RecordIndex,
) -> None:
    channel = "31011200001310000001"
    day = 86400.0
    # Ten days of one-minute segments (written in one transaction: the test is about reading),
    # then a three-day segment (a stream whose keyframes stopped), then minutes again.
    with sqlite3.connect(index.path) as db:
        db.executemany(
            "INSERT INTO segments (channel_id, path, start_wall, end_wall, start_pts, end_pts, "
            "bytes, frames, codec, sha256, prev_sha256) VALUES (?, ?, ?, ?, 0, 0, 1, 1, 'h264', "
            "?, NULL)",
            [(channel, f"{channel}/d/{i}.ps", i * 60.0, i * 60.0 + 60.0, f"{i:064d}")
             for i in range(10 * 1440)],
        )
    long_start = 10 * day
    add(index, channel, long_start, long_start + 3 * day)
    for i in range(10):
        add(index, channel, 13 * day + i * 60.0, 13 * day + i * 60.0 + 60.0)

    hour = [r.start_wall for r in index.segments(channel, 2 * day + 30.0, 2 * day + 3630.0)]
    assert hour == [2 * day + m * 60.0 for m in range(61)]
    inside = index.segments(channel, 12 * day, 12 * day + 60.0)  # only the long one
    assert [r.start_wall for r in inside] == [long_start]
    across = index.segments(channel, 13 * day - 30.0, 13 * day + 90.0)
    assert [r.start_wall for r in across] == [long_start, 13 * day, 13 * day + 60.0]
    assert index.segments(channel, 20 * day, 21 * day) == []


def _fields(channel: str, start: float, prev: str | None) -> dict[str, object]:
    return {"channel_id": channel, "path": f"{channel}/d/{start}.ps", "start_wall": start,
            "end_wall": start + 60, "start_pts": 0, "end_pts": 90000 * 59, "bytes": 1000,
            "frames": 1500, "codec": "h264", "sha256": f"{start:064.0f}", "prev_sha256": prev}


def test_segments_added_together_are_the_rows_added_one_by_one(index, tmp_path):
    items = [_fields("a", 0, None), _fields("b", 0, None), _fields("a", 60, f"{0:064.0f}")]
    rows = index.add_segments(items)
    with RecordIndex(tmp_path / "one_by_one.sqlite3") as other:
        expected = [other.add_segment(**kw) for kw in items]  # type: ignore[arg-type]
    assert rows == expected
    assert index.segments() == sorted(rows, key=lambda r: (r.start_wall, r.id))
    assert index.chain_head("a") == f"{60:064.0f}"


def test_segments_added_together_are_all_or_nothing(index):
    add(index, "a", 0, 60)
    with pytest.raises(sqlite3.IntegrityError):  # the second path is taken
        index.add_segments([_fields("b", 0, None), _fields("a", 0, None)])
    assert [r.channel_id for r in index.segments()] == ["a"]
    assert index.add_segments([]) == []
