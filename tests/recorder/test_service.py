"""recorder.service: the writer thread, shutdown, hooks, errors, queue overflow (by units and
by bytes), the periodic sync pass and the retention sweep beside the writer."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from recorder import segments as segment_files
from recorder.index import RecordIndex, SegmentRow
from recorder.service import Recorder
from recorder.verify import verify
from rtp.ps import AccessUnit
from tests.recorder.media import (
    CHANNEL,
    T0,
    TZ,
    decode,
    open_part_flags,
    stream,
    timed,
    units,
)

NAME = "gb_h264_zlm.ps"
WAIT = 30.0  # upper bound for waits on the writer thread; never reached when things work
DAY = 86400.0


class FakeClock:
    """A monotonic clock that moves only when the test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def grown(unit: AccessUnit, size: int) -> AccessUnit:
    """``unit`` with PS padding packets (stream 0xBE) appended up to ``size`` bytes: still valid
    PS that plays the same, as large as a 1080p keyframe when asked."""
    out = bytearray(unit.ps_bytes)
    while len(out) < size:
        n = min(size - len(out) - 6, 0xFFFF)
        assert n >= 0, "no room for a padding packet header"
        out += b"\x00\x00\x01\xbe" + n.to_bytes(2, "big") + b"\xff" * n
    assert len(out) == size
    return dataclasses.replace(unit, ps_bytes=bytes(out))


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every fdatasync from now on, as (file, its size then); the real call still happens."""
    calls: list[tuple[str, int]] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "cached"])
def test_units_submitted_are_recorded_and_close_finishes_every_segment(root, direct_io):
    announced: list[SegmentRow] = []
    recorder = Recorder(root, segment_s=2, tz=TZ, on_segment=announced.append,
                        direct_io=direct_io)
    for unit, wall in timed(units(NAME)):
        recorder.submit(CHANNEL, unit, wall)
        recorder.submit("34020000001320000002", unit, wall)
    assert recorder.drain(WAIT)
    assert recorder.queue_depth == 0
    assert recorder.segments_closed == 8  # 4 per channel; the last ones are still open
    assert list(root.rglob("*.ps.part"))
    flags = open_part_flags(root)
    assert len(flags) == 2  # the two open segments, one descriptor each
    assert all(bool(f & segment_files.O_DIRECT) == direct_io for f in flags)
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
        # the latest of the two (the hook runs on the sync thread, after its segment's close)
        assert recorder.last_error in (
            "on_segment for channel 34020000001320000001: RuntimeError('hook failed')",
            "unit for channel ../escape: ValueError(\"channel id '../escape' cannot be used as "
            "a directory name\")",
        )
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


def test_the_queue_is_bounded_by_bytes_too(root):
    entered, release = threading.Event(), threading.Event()

    def slow_hook(row: SegmentRow) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(WAIT)

    cap, size = 1 << 20, 100_000  # 10 units of 100 KB fit, far below the 10,000-unit bound
    items = list(timed(units(NAME)))
    held: list[int] = []
    with Recorder(root, segment_s=2, tz=TZ, on_segment=slow_hook, max_queue_bytes=cap) as recorder:
        for unit, wall in items[:51]:  # small units; the keyframe at 50 closes the first segment
            recorder.submit(CHANNEL, unit, wall)
        assert entered.wait(WAIT)  # the writer thread now waits in the hook
        for unit, wall in items[51:]:
            recorder.submit(CHANNEL, grown(unit, size), wall)
            held.append(recorder.queue_bytes)
        release.set()
    assert max(held) == 10 * size <= cap  # never more than the cap, whatever came
    assert recorder.queue_bytes == 0
    assert recorder.dropped_units == len(items) - 51 - 10
    with RecordIndex(root / "index.sqlite3") as index:
        rows = index.segments(CHANNEL)
        (gap,) = index.gaps(CHANNEL)
        assert gap.reason == "recorder queue full"
        assert len(rows) == 2 and rows[1].frames == 11  # the keyframe and the 10 queued frames
        assert rows[1].bytes == len(items[50][0].ps_bytes) + 10 * size
        assert gap.start_wall == rows[1].end_wall
        assert len(decode(root / rows[1].path)) == 11
        assert verify(root, index).ok


def test_open_segments_are_synced_every_fsync_s_in_one_pass(root, monkeypatch):
    synced = record_syncs(monkeypatch)
    clock = FakeClock(100.0)
    items = list(timed(units(NAME)))
    first, second = items[:60], items[:120]
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=2, monotonic=clock) as recorder:
        for unit, wall in first:
            recorder.submit(CHANNEL, unit, wall)
        recorder.submit("34020000001320000002", items[0][0], T0)
        clock.now = 101.9
        assert recorder.drain(WAIT)
        assert synced == [] and recorder.sync_passes == 0
        part = next(root.glob(f"{CHANNEL}/*/*.ps.part")).resolve()
        assert part.stat().st_size == 0  # still in the write batch (1 MiB)

        clock.now = 102.0  # due: one pass writes out both segments and syncs them
        assert recorder.drain(WAIT)
        other = next(root.glob("34020000001320000002/*/*.ps.part")).resolve()
        assert sorted(synced) == sorted([
            (str(part), sum(len(u.ps_bytes) for u, _ in first)),
            (str(other), len(items[0][0].ps_bytes)),
        ])
        assert part.read_bytes() == b"".join(u.ps_bytes for u, _ in first)
        assert recorder.sync_passes == 1 and recorder.syncs == 2

        clock.now = 104.5  # due again, but nothing grew: no call (and no pass to count)
        assert recorder.drain(WAIT)
        assert recorder.sync_passes == 1 and len(synced) == 2

        for unit, wall in items[60:120]:
            recorder.submit(CHANNEL, unit, wall)
        clock.now = 106.4  # 1.9 s after the last pass
        assert recorder.drain(WAIT)
        assert len(synced) == 2
        clock.now = 106.5
        assert recorder.drain(WAIT)
        assert synced[2:] == [(str(part), sum(len(u.ps_bytes) for u, _ in second))]
        assert recorder.sync_passes == 2 and recorder.syncs == 3 and recorder.write_errors == 0
    assert len(synced) == 3  # closing fsyncs (not fdatasyncs) the files
    with RecordIndex(root / "index.sqlite3") as index:
        assert verify(root, index).ok


def test_a_sync_pass_writes_the_segments_out_between_the_units(root, monkeypatch):
    # Written out all at once, hundreds of buffers held the queue up for most of a second: a
    # pass writes out one segment at a time between the units queued meanwhile.
    synced = record_syncs(monkeypatch)
    events: list[str] = []
    gate, inside = threading.Event(), threading.Event()
    writer_class = segment_files.SegmentWriter
    real_write, real_out = writer_class.write, writer_class.written_out

    def write(self, unit, wall):
        if not gate.is_set():  # the writer thread waits here until the units are queued
            inside.set()
            assert gate.wait(WAIT)
        events.append("unit")
        return real_write(self, unit, wall)

    def written_out(self, files, dup=True):
        events.append("out")
        return real_out(self, files, dup)

    channels = [f"340200000013200{n:05d}" for n in range(20)]
    items = list(timed(units(NAME)))
    clock = FakeClock(100.0)
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=2, monotonic=clock) as recorder:
        gate.set()
        for channel in channels:
            recorder.submit(channel, items[0][0], T0)
        assert recorder.drain(WAIT) and synced == []
        monkeypatch.setattr(segment_files.SegmentWriter, "write", write)
        monkeypatch.setattr(segment_files.SegmentWriter, "written_out", written_out)
        gate.clear()
        clock.now = 102.0  # due: the next unit starts the pass
        recorder.submit(channels[0], items[1][0], items[1][1])
        assert inside.wait(WAIT)
        for unit, wall in items[2:42]:
            recorder.submit(channels[0], unit, wall)
        gate.set()
        assert recorder.drain(WAIT)
        # unit, out, unit, out, ...: each unit taken is followed by one segment written out
        # until all 20 are, then the rest of the units
        assert events == ["unit", "out"] * 20 + ["unit"] * 21
        assert recorder.sync_passes == 1 and len(synced) == 20
        first = next(root.glob(f"{channels[1]}/*/*.ps.part")).resolve()
        assert (str(first), len(items[0][0].ps_bytes)) in synced
        assert first.read_bytes() == items[0][0].ps_bytes


def test_an_idle_writer_wakes_up_for_its_sync_pass(root, monkeypatch):
    sizes: list[int] = []
    called = threading.Event()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        sizes.append(os.fstat(fd).st_size)
        real(fd)
        called.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    clock = FakeClock(0.0)
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=0.05, monotonic=clock) as recorder:
        for unit, wall in timed(units(NAME)[:60]):
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.drain(WAIT) and not called.is_set()
        clock.now = 1.0  # nothing is queued: only the thread's own wake-up can run the pass
        assert called.wait(WAIT)
        assert sizes == [sum(len(u.ps_bytes) for u in units(NAME)[:60])]


def test_fsync_s_zero_syncs_only_at_close(root, monkeypatch):
    synced = record_syncs(monkeypatch)
    clock = FakeClock(0.0)
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=0, monotonic=clock) as recorder:
        for unit, wall in timed(units(NAME)[:60]):
            recorder.submit(CHANNEL, unit, wall)
        clock.now = 1e9
        assert recorder.drain(WAIT)
        assert recorder.sync_passes == 0
    assert synced == [] and recorder.segments_closed == 1
    with pytest.raises(ValueError, match="fsync_s"):
        Recorder(root, fsync_s=-1)


needs_syncfs = pytest.mark.skipif(segment_files.syncfs is None,
                                  reason="syncfs(2) is Linux's; elsewhere passes sync per file")


def record_syncfs(monkeypatch: pytest.MonkeyPatch, root: Path,
                  gate: threading.Event | None = None) -> list[dict[str, int]]:
    """Every syncfs from now on, as the sizes of the .part files under ``root`` then (after
    waiting for ``gate``, if given); the real call still happens."""
    calls: list[dict[str, int]] = []
    real = segment_files.syncfs
    assert real is not None

    def syncfs(fd: int) -> None:
        if gate is not None:
            assert gate.wait(WAIT)
        assert os.path.samestat(os.fstat(fd), os.stat(root))
        calls.append({p.parent.parent.name: p.stat().st_size for p in root.glob("*/*/*.part")})
        real(fd)

    monkeypatch.setattr(segment_files, "syncfs", syncfs)
    return calls


@needs_syncfs
def test_a_sync_pass_is_one_syncfs_of_the_recordings_file_system(root, monkeypatch):
    per_file = record_syncs(monkeypatch)
    calls = record_syncfs(monkeypatch, root)
    clock = FakeClock(100.0)
    items = list(timed(units(NAME)))
    other = "34020000001320000002"
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=2, monotonic=clock,
                  sync_whole_fs=True) as recorder:
        for unit, wall in items[:60]:
            recorder.submit(CHANNEL, unit, wall)
        recorder.submit(other, items[0][0], T0)
        assert recorder.drain(WAIT) and calls == []

        clock.now = 102.0  # due: both segments written out, then one call for the two
        assert recorder.drain(WAIT)
        size = sum(len(u.ps_bytes) for u, _ in items[:60])
        assert calls == [{CHANNEL: size, other: len(items[0][0].ps_bytes)}]
        assert recorder.sync_passes == 1 and recorder.syncs == 1

        clock.now = 104.5  # due again, but nothing grew: no call
        assert recorder.drain(WAIT)
        assert len(calls) == 1 and recorder.sync_passes == 1

        for unit, wall in items[60:90]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.drain(WAIT)  # written before the clock moves
        clock.now = 106.5
        assert recorder.drain(WAIT)
        assert calls[1:] == [{CHANNEL: sum(len(u.ps_bytes) for u, _ in items[:90]),
                              other: len(items[0][0].ps_bytes)}]
        assert recorder.syncs == 2 and recorder.write_errors == 0
    assert per_file == [] and len(calls) == 2  # closing fsyncs (not syncs) each file


def test_the_writer_goes_on_while_a_file_sync_waits_for_the_disk(root, monkeypatch):
    gate = threading.Event()
    seen: list[tuple[str, int]] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        assert gate.wait(WAIT)
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        if len(seen) == 1:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    clock = FakeClock(0.0)
    items = list(timed(units(NAME)))
    first = sum(len(u.ps_bytes) for u, _ in items[:30])
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=1, monotonic=clock) as recorder:
        for unit, wall in items[:30]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)
        clock.now = 1.0  # the pass starts; its fdatasync waits on the gate
        for unit, wall in items[30:60]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)  # written meanwhile: the writer did not wait
        part = next(root.glob(f"{CHANNEL}/*/*.ps.part"))
        assert part.stat().st_size == sum(len(u.ps_bytes) for u, _ in items[:60])
        gate.set()
        assert recorder.drain(WAIT)
        assert seen[0][0] == str(part.resolve()) and seen[0][1] >= first
        assert recorder.write_errors == 1 and recorder.syncs == 0
        assert f"cannot sync {part}" in (recorder.last_error or "")
        clock.now = 2.0  # the next pass syncs the file again (it grew)
        assert recorder.drain(WAIT)
        assert recorder.syncs == 1 and recorder.sync_passes == 2
    assert recorder.segments_closed == 1 and recorder.write_errors == 1


@needs_syncfs
def test_the_writer_goes_on_while_a_sync_pass_waits_for_the_disk(root, monkeypatch):
    gate = threading.Event()
    calls = record_syncfs(monkeypatch, root, gate)
    clock = FakeClock(0.0)
    items = list(timed(units(NAME)))
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=1, monotonic=clock,
                  sync_whole_fs=True) as recorder:
        for unit, wall in items[:30]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)
        clock.now = 1.0  # the pass starts, and its syncfs waits on the gate
        for unit, wall in items[30:60]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)  # written meanwhile: the writer did not wait
        part = next(root.glob(f"{CHANNEL}/*/*.ps.part"))
        assert part.stat().st_size == sum(len(u.ps_bytes) for u, _ in items[:60])
        clock.now = 2.0  # due again while the first pass runs: not queued behind it
        for unit, wall in items[60:90]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)
        assert calls == [] and recorder.sync_passes == 0
        gate.set()
        for _ in range(int(WAIT / 0.01)):  # the pass under way ends
            if recorder.sync_passes:
                break
            time.sleep(0.01)
        assert len(calls) == 1 and recorder.sync_passes == 1
        assert recorder.drain(WAIT)  # the pass skipped at 2.0 is made at the next batch
        assert len(calls) == 2 and recorder.sync_passes == 2
        assert calls[1] == {CHANNEL: sum(len(u.ps_bytes) for u, _ in items[:90])}


@needs_syncfs
def test_a_failed_syncfs_is_counted_and_the_next_pass_tries_again(root, monkeypatch):
    real = segment_files.syncfs
    failures = [OSError(5, "Input/output error")]

    def syncfs(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(segment_files, "syncfs", syncfs)
    clock = FakeClock(0.0)
    items = list(timed(units(NAME)))
    with Recorder(root, segment_s=60, tz=TZ, fsync_s=1, monotonic=clock,
                  sync_whole_fs=True) as recorder:
        for unit, wall in items[:30]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.drain(WAIT)
        clock.now = 1.0
        assert recorder.drain(WAIT)
        assert recorder.write_errors == 1 and recorder.syncs == 0 and recorder.sync_passes == 1
        assert "Input/output error" in (recorder.last_error or "")
        for unit, wall in items[30:60]:
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.drain(WAIT)
        clock.now = 2.0
        assert recorder.drain(WAIT)
        assert recorder.syncs == 1 and recorder.sync_passes == 2
    assert recorder.segments_closed == 1 and recorder.write_errors == 1
    with RecordIndex(root / "index.sqlite3") as index:
        (row,) = index.segments(CHANNEL)
        assert row.bytes == sum(len(u.ps_bytes) for u, _ in items[:60])
        assert verify(root, index).ok


def _old_segments(root: Path, channels: int, per_channel: int) -> list[SegmentRow]:
    """Rows (and empty files) of segments that ended 40 days before T0."""
    rows = []
    with RecordIndex(root / "index.sqlite3") as index:
        for c in range(channels):
            channel = f"3402000000132{c:07d}"
            for k in range(per_channel):
                start = T0 - 40 * DAY + 60 * k
                path = f"{channel}/2026-10-17/{k:04d}.ps"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).touch()
                rows.append(index.add_segment(
                    channel_id=channel, path=path, start_wall=start, end_wall=start + 60,
                    start_pts=0, end_pts=0, bytes=0, frames=0, codec="h264",
                    sha256=hashlib.sha256(path.encode()).hexdigest(),
                    prev_sha256=index.chain_head(channel),
                ))
    return rows


def test_a_sweep_during_heavy_indexing_leaves_every_write_to_the_writer_thread(root, monkeypatch):
    old = _old_segments(root, channels=20, per_channel=100)
    writes: list[tuple[str, str]] = []  # (what, on which thread), in commit order
    for name in ("add_segment", "add_segments", "add_gap", "record_deletions"):
        real = getattr(RecordIndex, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            result = _real(self, *args, **kwargs)
            writes.append((_name, threading.current_thread().name))
            return result

        monkeypatch.setattr(RecordIndex, name, spy)

    announced: list[SegmentRow] = []
    first_row, first_batch = threading.Event(), threading.Event()

    def on_segment(row: SegmentRow) -> None:
        announced.append(row)
        first_row.set()

    channels = [f"3402000000131{c:07d}" for c in range(40)]
    items = list(timed(units(NAME)))
    recorder = Recorder(root, segment_s=1, tz=TZ, on_segment=on_segment, max_queue=10**6)
    record_deletions = recorder.record_deletions

    def record_then_tell(rows, deleted_at):
        count = record_deletions(rows, deleted_at)
        first_batch.set()
        return count

    recorder.record_deletions = record_then_tell  # type: ignore[method-assign]

    def feed(part: list) -> None:
        for unit, wall in part:
            for channel in channels:
                recorder.submit(channel, unit, wall)

    def feeder() -> None:  # 40 channels, a segment a second each; the second half after the
        feed(items[:125])  # sweep's first batch is in, so the two certainly overlap
        first_batch.wait(WAIT)
        feed(items[125:])

    thread = threading.Thread(target=feeder)
    try:
        thread.start()
        assert first_row.wait(WAIT)
        with RecordIndex(root / "index.sqlite3", read_only=True) as reader:
            deleted = recorder.sweep(30, now=T0, reader=reader, batch_size=50)
        thread.join(WAIT)
    finally:
        first_batch.set()
        recorder.close()
    assert sorted(row.id for row in deleted) == [row.id for row in old]
    assert [row.start_wall for row in deleted] == sorted(row.start_wall for row in old)
    assert recorder.deleted == len(old) and recorder.write_errors == 0
    assert recorder.dropped_units == 0
    assert not any((root / row.path).exists() for row in old)
    assert {thread for _, thread in writes} == {"recorder-writer"}
    kinds = [what for what, _ in writes]
    first = kinds.index("record_deletions")
    assert "add_segments" in kinds[:first] and "add_segments" in kinds[first:]
    assert kinds.count("record_deletions") == len(old) // 50
    with RecordIndex(root / "index.sqlite3") as index:
        assert sorted(r.id for r in index.segments()) == sorted(r.id for r in announced)
        assert len(announced) == 40 * 10  # a segment per keyframe, the last closed by close()
        assert [d.segment_id for d in index.deletions()] == sorted(r.id for r in old)
        for channel in channels:
            chain = index.chain(channel)
            assert b"".join((root / r.path).read_bytes() for r in chain) == stream(NAME)


def test_a_sweep_needs_an_open_recorder_and_a_thread_of_its_own(root):
    _old_segments(root, channels=1, per_channel=3)
    recorder = Recorder(root, tz=TZ)
    recorder.close()
    from recorder.service import RecorderClosed

    with pytest.raises(RecorderClosed):
        recorder.sweep(30, now=T0)
    with RecordIndex(root / "index.sqlite3") as index:  # nothing went that the index still lists
        rows = list(index.segments())
        assert len(rows) == 3 and all((root / r.path).exists() for r in rows)
    failures: list[BaseException] = []

    def hook(row: SegmentRow) -> None:
        try:
            hooked.sweep(30, now=T0)
        except RuntimeError as exc:
            failures.append(exc)

    part = root / CHANNEL / "2026-11-26" / "20261126T160512.123.ps.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"".join(u.ps_bytes for u in units(NAME)[:30]))
    with Recorder(root, tz=TZ, on_segment=hook) as hooked:
        assert hooked.drain(WAIT)
    assert "its own thread" in str(failures[0])
    with RecordIndex(root / "index.sqlite3", read_only=True) as reader:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.add_gap(CHANNEL, T0, T0 + 1, "a write through a reader")


def test_a_closing_segment_is_made_durable_on_the_sync_thread_while_the_writer_goes_on(
        root, monkeypatch):
    gate = threading.Event()
    fsyncs: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # (the writer fsyncs the directories it creates)
        on = threading.current_thread().name
        if on == "recorder-sync" and "recorder-sync" not in fsyncs:
            assert gate.wait(WAIT)
        fsyncs.append(on)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    indexed_on: list[str] = []
    real_add = RecordIndex.add_segments

    def add_segments(self, items):
        indexed_on.append(threading.current_thread().name)
        return real_add(self, items)

    monkeypatch.setattr(RecordIndex, "add_segments", add_segments)
    items = list(timed(units(NAME)))
    clock = FakeClock(0.0)  # no sync pass comes due
    with Recorder(root, segment_s=2, tz=TZ, monotonic=clock) as recorder:
        for unit, wall in items[:60]:  # the keyframe at 50 closes the first segment
            recorder.submit(CHANNEL, unit, wall)
        assert recorder.flush(WAIT)  # while the first segment's fsync waits
        first, second = sorted(root.glob(f"{CHANNEL}/*/*.ps.part"))
        assert second.read_bytes() == b"".join(u.ps_bytes for u, _ in items[50:60])
        assert recorder.segments_closed == 0 and "recorder-sync" not in fsyncs
        gate.set()
        assert recorder.drain(WAIT)
        assert recorder.segments_closed == 1 and not first.exists()
    assert recorder.segments_closed == 2 and recorder.write_errors == 0
    # file and directory of each segment on the sync thread; the index on the writer's
    assert fsyncs.count("recorder-sync") == 4 and set(indexed_on) == {"recorder-writer"}
    with RecordIndex(root / "index.sqlite3") as index:
        rows = index.segments(CHANNEL)
        assert [r.prev_sha256 for r in rows] == [None, rows[0].sha256]
        assert b"".join((root / r.path).read_bytes() for r in rows) == b"".join(
            u.ps_bytes for u, _ in items[:60])
        assert verify(root, index).ok


def test_a_segment_that_cannot_be_made_durable_is_left_for_recovery_and_the_chain_skips_it(
        root, monkeypatch):
    real_fsync = os.fsync
    failed: list[int] = []

    def fsync(fd: int) -> None:
        if not failed and threading.current_thread().name == "recorder-sync":
            failed.append(fd)
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    items = list(timed(units(NAME)))
    with Recorder(root, segment_s=2, tz=TZ, monotonic=FakeClock(0.0)) as recorder:
        for unit, wall in items[:60]:
            recorder.submit(CHANNEL, unit, wall)
    assert recorder.write_errors == 1 and recorder.segments_closed == 1
    assert "left for recovery" in (recorder.last_error or "")
    (left,) = root.glob(f"{CHANNEL}/*/*.ps.part")
    assert left.read_bytes() == b"".join(u.ps_bytes for u, _ in items[:50])
    with RecordIndex(root / "index.sqlite3") as index:
        (row,) = index.segments(CHANNEL)
        assert row.prev_sha256 is None  # chained to what is indexed, not to the file left


def test_segments_made_durable_meanwhile_are_indexed_in_one_transaction(root, monkeypatch):
    gate = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "recorder-sync":
            assert gate.wait(WAIT)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    batches: list[list[str]] = []
    real_add = RecordIndex.add_segments

    def add_segments(self, items):
        batches.append([kw["channel_id"] for kw in items])
        return real_add(self, items)

    monkeypatch.setattr(RecordIndex, "add_segments", add_segments)
    channels = [f"3402000000131{c:07d}" for c in range(3)]
    items = list(timed(units(NAME)))
    with Recorder(root, segment_s=2, tz=TZ, monotonic=FakeClock(0.0)) as recorder:
        for unit, wall in items[:60]:  # each channel's first segment closes at frame 50
            for channel in channels:
                recorder.submit(channel, unit, wall)
        done = threading.Event()
        assert recorder._put(("barrier", done))  # drain(), queued before any close is durable
        gate.set()
        assert done.wait(WAIT)
        assert batches == [channels] and recorder.segments_closed == 3
    assert batches[1:] == [channels]  # and the last three, closed together at the end
    with RecordIndex(root / "index.sqlite3") as index:
        for channel in channels:
            first, second = index.chain(channel)
            assert (first.prev_sha256, second.prev_sha256) == (None, first.sha256)
        assert verify(root, index).ok


def test_a_file_system_refusing_o_direct_is_reported_once_for_every_channel(root, monkeypatch,
                                                                            caplog):
    """The channels' writers share one stage: the first refusal turns direct writes off for
    all of them, with one warning, and every channel is recorded through the cache."""
    real = fcntl.fcntl
    refused = []

    def setfl(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & segment_files.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, cmd, arg)

    monkeypatch.setattr(segment_files.fcntl, "fcntl", setfl)
    channels = [f"3402000000132000000{i}" for i in range(1, 5)]
    with Recorder(root, segment_s=60, tz=TZ) as recorder:
        for unit, wall in timed(units(NAME)):
            for channel in channels:
                recorder.submit(channel, unit, wall)
        assert recorder.drain(WAIT)
        assert len(open_part_flags(root)) == len(channels)
        assert not any(flags & segment_files.O_DIRECT for flags in open_part_flags(root))
    assert len(refused) == 1
    assert caplog.text.count("cannot be written past the page cache") == 1
    with RecordIndex(root / "index.sqlite3") as index:
        for channel in channels:
            (row,) = index.segments(channel)
            assert (root / row.path).read_bytes() == stream(NAME)
