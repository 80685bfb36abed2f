"""recorder.retention: only segments past 30 days go, oldest first, logged, chain kept."""

from __future__ import annotations

import logging

import pytest

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
    with caplog.at_level(logging.INFO, logger="recorder.retention"):
        deleted = sweep(root, index, 30, NOW)
    assert deleted == rows[:4]
    logged = [r.getMessage() for r in caplog.records if "deleted" in r.getMessage()]
    assert [row.path in line for row, line in zip(rows[:4], logged, strict=True)] == [True] * 4
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


def test_free_bytes(root):
    assert free_bytes(root) > 0
