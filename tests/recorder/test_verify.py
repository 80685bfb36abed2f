"""recorder.verify: altered, missing, unindexed and partial files, and hash chain breaks."""

from __future__ import annotations

import shutil
import sqlite3

from recorder.segments import SegmentWriter
from recorder.verify import ChainBreak, file_sha256, verify
from tests.recorder.media import CHANNEL, TZ, feed, units

OTHER = "34020000001320000002"


def record(root, index, channel=CHANNEL):
    w = SegmentWriter(root, index, channel, segment_s=2, tz=TZ)
    return feed(w, units("gb_h264_zlm.ps")) + w.close()


def test_an_untouched_recording_verifies(root, index):
    rows = record(root, index) + record(root, index, OTHER)
    report = verify(root, index)
    assert report.ok and report.checked == len(rows) == 10
    assert report.altered == report.missing == report.unindexed == report.chain_breaks == []
    assert all(file_sha256(root / row.path) == row.sha256 for row in rows)


def test_altered_missing_and_unindexed_files_are_reported(root, index):
    rows = record(root, index)
    altered = root / rows[1].path
    blob = bytearray(altered.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    altered.write_bytes(bytes(blob))
    (root / rows[3].path).unlink()
    extra = (root / rows[0].path).with_name("20261126T170000.000.ps")
    shutil.copy(root / rows[0].path, extra)
    part = extra.with_name("20261126T170100.000.ps.part")
    part.write_bytes(b"\x00\x00\x01\xba")

    report = verify(root, index)
    assert not report.ok
    assert report.altered == [rows[1].path]
    assert report.missing == [rows[3].path]
    assert report.unindexed == [extra.relative_to(root).as_posix()]
    assert report.partial == [part.relative_to(root).as_posix()]
    assert report.chain_breaks == []
    assert verify(root, index, channel=OTHER).ok  # another channel is not affected


def test_a_rewritten_hash_breaks_the_chain(root, index):
    rows = record(root, index)
    target = root / rows[2].path
    target.write_bytes(target.read_bytes()[:-100])  # shortened, and the index "fixed" to match
    with sqlite3.connect(index.path) as db:
        db.execute(
            "UPDATE segments SET sha256 = ?, bytes = ? WHERE id = ?",
            (file_sha256(target), target.stat().st_size, rows[2].id),
        )
    db.close()
    report = verify(root, index)
    assert report.altered == [] and not report.ok
    assert report.chain_breaks == [
        ChainBreak(CHANNEL, rows[3].path, file_sha256(target), rows[2].sha256)
    ]
