"""recorder.retention: only segments past 30 days go, oldest first, logged, chain kept."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from recorder.index import RecordIndex
from recorder.retention import free_bytes, plan_sweep, sweep
from recorder.segments import SegmentWriter
from recorder.verify import file_sha256, verify
from tests.recorder.media import CHANNEL, FPS, T0, TZ, units

DAY = 86400.0
NOW = T0 + 60 * DAY
NAME = "gb_h264_zlm.ps"


def record_history(root, index):
    """Ten one-second segments: four ended 31-40 days ago, the rest within retention."""
    w = SegmentWriter(root, index, CHANNEL, segment_s=1, tz=TZ)
    starts = [NOW - d * DAY for d in (40, 35, 32, 31, 29.99, 20, 10, 5, 1, 0.5)]
    rows = []
    for k, start in enumerate(starts):
        for n, unit in enumerate(units(NAME)[25 * k : 25 * k + 25]):
            rows += w.write(unit, start + n / FPS)
        rows += w.gap(start + 1, starts[k + 1] if k + 1 < len(starts) else NOW, "camera offline")
    return rows


def test_only_segments_past_retention_are_deleted_oldest_first(root, index, caplog):
    rows = record_history(root, index)
    assert len(rows) == 10
    kept_hashes = {row.path: file_sha256(root / row.path) for row in rows[4:]}
    assert plan_sweep(index, 30, NOW) == rows[:4]
    with caplog.at_level(logging.DEBUG, logger="recorder.retention"):
        deleted = sweep(root, index, 30, NOW)
    assert deleted == rows[:4]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert [row.path in line for row, line in zip(rows[:4], logged, strict=True)] == [True] * 4
    days = [r.getMessage() for r in caplog.records if "segment of channel" in r.getMessage()]
    folders = [row.path.rpartition("/")[0] for row in rows[:4]]
    assert all(folder in line for folder, line in zip(folders, days, strict=True))  # INFO, a day
    assert all(not (root / row.path).exists() for row in deleted)
    assert all(not (root / row.path).parent.exists() for row in deleted)  # empty days removed
    assert {row.path: file_sha256(root / row.path) for row in rows[4:]} == kept_hashes
    assert index.segments(CHANNEL) == rows[4:]
    deletions = index.deletions(CHANNEL)
    assert [(d.path, d.sha256, d.deleted_at) for d in deletions] == [
        (row.path, row.sha256, NOW) for row in rows[:4]
    ]
    assert rows[4].prev_sha256 == deletions[-1].sha256
    assert verify(root, index).ok  # the chain still verifies through the deletions
    assert sweep(root, index, 30, NOW) == []


def test_sweeping_everything_keeps_the_chain_for_new_segments(root, index):
    rows = record_history(root, index)
    sweep(root, index, 30, NOW + 400 * DAY)
    assert index.segments() == [] and len(index.deletions()) == len(rows)
    w = SegmentWriter(root, index, CHANNEL, segment_s=1, tz=TZ)
    for n, unit in enumerate(units(NAME)[:25]):
        w.write(unit, NOW + 401 * DAY + n / FPS)
    (row,) = w.close()
    assert row.prev_sha256 == rows[-1].sha256
    assert verify(root, index).ok


def test_short_retention_is_refused_unless_allowed(root, index):
    rows = record_history(root, index)
    with pytest.raises(ValueError, match="30-day minimum"):
        sweep(root, index, 7, NOW)
    with pytest.raises(ValueError, match="positive"):
        sweep(root, index, 0, NOW, allow_short=True)
    assert index.segments(CHANNEL) == rows
    assert sweep(root, index, 7, NOW, allow_short=True) == rows[:7]


def test_a_file_already_gone_is_still_recorded(root, index):
    rows = record_history(root, index)
    (root / rows[0].path).unlink()
    assert sweep(root, index, 30, NOW) == rows[:4]
    assert verify(root, index).ok


def record_days(root, index, channels, days, per_day):
    """``per_day`` one-second segments a day for ``days`` days, on every channel in turn (as
    the recorder interleaves them), ending 31 days before NOW; then one recent segment each."""
    writers = [SegmentWriter(root, index, ch, segment_s=1, tz=TZ) for ch in channels]
    first = NOW - (31 + days) * DAY
    starts = [first + d * DAY + 3600 * k for d in range(days) for k in range(per_day)]
    starts.append(NOW - DAY)
    rows = []
    for n, start in enumerate(starts):
        group = units(NAME)[25 * (n % 10) : 25 * (n % 10) + 25]
        for w in writers:
            for f, unit in enumerate(group):
                rows += w.write(unit, start + f / FPS)
            rows += w.lost(start + 1)
    for w in writers:
        rows += w.close()
    return rows


class InterleavedIndex(RecordIndex):
    """A sweeper's connection; after every batch it commits, the recorder's own connection
    (another ``RecordIndex`` on the same file) indexes something, as its writer thread would."""

    def __init__(self, path, recorder: RecordIndex) -> None:
        super().__init__(path)
        self.recorder = recorder
        self.batches: list[int] = []

    def record_deletions(self, rows, deleted_at):
        count = super().record_deletions(rows, deleted_at)
        self.batches.append(count)
        start = deleted_at + 10 * len(self.batches)  # one after the other, as gaps follow
        self.recorder.add_gap("writer", start, start + len(self.batches), "between")
        return count


def test_a_large_sweep_goes_in_batches_and_logs_a_line_per_channel_day(root, index, caplog):
    channels = [CHANNEL, "34020000001320000002"]
    rows = record_days(root, index, channels, days=3, per_day=4)
    old = [row for row in rows if row.end_wall < NOW - 30 * DAY]
    assert len(old) == 24 and len(rows) == 26
    oldest_first = sorted(old, key=lambda r: (r.start_wall, r.id))
    with InterleavedIndex(index.path, index) as sweeper:
        assert plan_sweep(sweeper, 30, NOW) == oldest_first
        with caplog.at_level(logging.INFO, logger="recorder.retention"):
            deleted = sweep(root, sweeper, 30, NOW, batch_size=5)
        assert sweeper.batches == [5, 5, 5, 5, 4]
    assert deleted == oldest_first
    # the recorder's connection wrote between the batches: the lock was not held throughout
    assert [gap.end_wall - gap.start_wall for gap in index.gaps("writer")] == [1, 2, 3, 4, 5]
    assert all(not (root / row.path).exists() for row in old)
    assert all(not (root / row.path).parent.exists() for row in old)
    assert index.segments() == [row for row in rows if row not in old]
    assert {d.path: d.sha256 for d in index.deletions()} == {row.path: row.sha256 for row in old}
    assert verify(root, index).ok
    messages = [r.getMessage() for r in caplog.records]
    assert not any(".ps" in line for line in messages)  # no file by file at INFO
    summaries = [line for line in messages if "segments of channel" in line]
    assert len(summaries) == 6  # 2 channels x 3 days, 4 segments each
    assert all("deleted 4 segments" in line for line in summaries)
    assert messages[-1].startswith("retention: deleted 24 segments")
    assert len([line for line in messages if "removed empty directory" in line]) == 6


def test_an_error_mid_batch_still_records_the_files_removed(root, index, caplog):
    rows = record_history(root, index)
    blocked = root / rows[2].path
    blocked.unlink()
    blocked.mkdir()  # unlink() of a directory fails (EISDIR or EPERM)
    with pytest.raises(OSError):
        sweep(root, index, 30, NOW)
    assert [d.path for d in index.deletions(CHANNEL)] == [row.path for row in rows[:2]]
    assert index.segments(CHANNEL) == rows[2:]
    assert not (root / rows[0].path).exists() and (root / rows[3].path).exists()
    blocked.rmdir()
    with caplog.at_level(logging.INFO, logger="recorder.retention"):
        assert sweep(root, index, 30, NOW) == rows[2:4]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of the files were already gone" in warnings[0]
    assert rows[2].path.rpartition("/")[0] in warnings[0]
    assert [d.path for d in index.deletions(CHANNEL)] == [row.path for row in rows[:4]]
    assert verify(root, index).ok


def test_the_sweep_and_storage_rate_read_only_rows_near_the_cutoff(root, index):
    record_history(root, index)
    statements: list[str] = []
    index._db.set_trace_callback(statements.append)
    try:
        sweep(root, index, 30, NOW)
        sweep(root, index, 30, NOW)  # the hourly case: nothing to delete
        index.bytes_per_day(since=NOW - 7 * DAY)
    finally:
        index._db.set_trace_callback(None)
    reads = [sql for sql in statements if sql.startswith("SELECT") and "end_wall <" in sql]
    reads += [sql for sql in statements if sql.startswith("SELECT") and "end_wall >" in sql]
    assert len(reads) == 3
    with sqlite3.connect(index.path) as db:
        plans = [
            " ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for sql in reads
        ]
    db.close()
    assert all("USING INDEX segments_end (end_wall" in plan for plan in plans), plans


def test_free_bytes(root):
    assert free_bytes(root) > 0
