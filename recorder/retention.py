"""Retention: the only code that deletes segment files, and only once they are out of retention.

District rule: recordings are kept 30 days and never altered or deleted before. ``sweep()``
deletes, oldest first, the segments whose end is older than the retention period, moves their
index rows to ``deletions`` (keeping the hash chain verifiable, and the durable per-file log of
what was deleted), logs them and removes day directories left empty.

At 300 channels of 60 s segments a day of recordings is 432,000 files, so the sweep works in
batches of :data:`BATCH_SIZE` (one index transaction each, the recorder's inserts interleave)
and logs a line per channel and day at INFO, one per file at DEBUG only.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .index import RecordIndex, SegmentRow

__all__ = [
    "BATCH_SIZE",
    "MIN_RETENTION_DAYS",
    "check_retention_days",
    "free_bytes",
    "plan_sweep",
    "sweep",
]

log = logging.getLogger("recorder.retention")

MIN_RETENTION_DAYS = 30
BATCH_SIZE = 2000  # segments deleted per index transaction (about 0.1 s of write lock)
_DAY = 86400.0


def check_retention_days(retention_days: float, allow_short: bool = False) -> None:
    """Refuse a retention period below the district minimum (ValueError), unless allowed."""
    if retention_days <= 0:
        raise ValueError(f"retention_days must be positive, not {retention_days}")
    if retention_days < MIN_RETENTION_DAYS and not allow_short:
        raise ValueError(
            f"retention_days={retention_days} is below the {MIN_RETENTION_DAYS}-day minimum for"
            " recordings; pass allow_short=True only where the district rule does not apply"
        )


def plan_sweep(
    index: RecordIndex, retention_days: float, now: float, *, allow_short: bool = False
) -> list[SegmentRow]:
    """The segments :func:`sweep` would delete at ``now`` (Unix seconds), oldest first."""
    check_retention_days(retention_days, allow_short)
    return index.segments_ended_before(now - retention_days * _DAY)


def sweep(
    root: str | Path,
    index: RecordIndex,
    retention_days: float,
    now: float,
    *,
    allow_short: bool = False,
    batch_size: int = BATCH_SIZE,
    record: Callable[[list[SegmentRow], float], int] | None = None,
) -> list[SegmentRow]:
    """Delete the segments whose end is more than ``retention_days`` before ``now``.

    Returns the rows deleted, oldest first. A file already gone is still recorded as deleted.

    Works ``batch_size`` segments at a time: remove their files, then move their rows to
    ``deletions`` in one transaction, so the write lock is held for one batch at a time. Each
    file is logged at DEBUG and each channel's day at INFO (WARNING when files were already
    gone); ``deletions`` keeps every file.

    ``index`` is only read when ``record(rows, deleted_at)`` is given to commit the deletions
    (``Recorder.record_deletions``: the recorder's writer thread does it); by default they are
    written through ``index``.
    """
    check_retention_days(retention_days, allow_short)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if record is None:
        record = index.record_deletions
    ids = index.segment_ids_ended_before(now - retention_days * _DAY)
    top = os.fspath(root)
    deleted: list[SegmentRow] = []
    days: dict[str, _Day] = {}
    # A day directory is emptied over consecutive batches (the rows come oldest first): try to
    # remove it once a batch no longer touches it, rather than after every batch.
    touched: set[str] = set()
    try:
        for first in range(0, len(ids), batch_size):
            rows = index.segments_by_id(ids[first : first + batch_size])
            done = _delete_batch(top, record, rows, now, days)
            deleted += done
            now_touched = {row.path.rpartition("/")[0] for row in done}
            _remove_empty(top, touched - now_touched)
            touched = now_touched
    finally:
        _remove_empty(top, touched)
        _log_days(days)
    return deleted


@dataclass(slots=True)
class _Day:
    """What a sweep deleted from one channel's day directory."""

    channel_id: str
    files: int = 0
    bytes: int = 0
    gone: int = 0  # files that were already missing
    first: float = math.inf
    last: float = -math.inf

    def add(self, row: SegmentRow, gone: bool) -> None:
        self.files += 1
        self.bytes += row.bytes
        self.gone += gone
        self.first = min(self.first, row.start_wall)
        self.last = max(self.last, row.end_wall)


def _delete_batch(
    top: str,
    record: Callable[[list[SegmentRow], float], int],
    rows: list[SegmentRow],
    now: float,
    days: dict[str, _Day],
) -> list[SegmentRow]:
    """Remove the files of ``rows`` and record them; on an error, record what was removed."""
    done: list[SegmentRow] = []
    gone: list[bool] = []
    try:
        for row in rows:
            try:
                os.unlink(os.path.join(top, row.path))
            except FileNotFoundError:
                gone.append(True)
            else:
                gone.append(False)
            done.append(row)
    finally:
        if done:
            record(done, now)
            debug = log.isEnabledFor(logging.DEBUG)
            for row, missing in zip(done, gone, strict=True):
                directory = row.path.rpartition("/")[0]
                day = days.get(directory)
                if day is None:
                    day = days[directory] = _Day(row.channel_id)
                day.add(row, missing)
                if debug:
                    log.debug(
                        "retention: deleted %s (channel %s, %.3f-%.3f, %d bytes, sha256 %s)%s",
                        row.path,
                        row.channel_id,
                        row.start_wall,
                        row.end_wall,
                        row.bytes,
                        row.sha256,
                        ", the file was already gone" if missing else "",
                    )
    return done


def _remove_empty(top: str, directories: set[str]) -> None:
    for directory in sorted(directories):
        _remove_if_empty(Path(top, directory))


def _log_days(days: dict[str, _Day]) -> None:
    """One line per channel's day directory swept; the per-file record is ``deletions``."""
    for directory, day in sorted(days.items(), key=lambda item: (item[1].first, item[0])):
        level = logging.WARNING if day.gone else logging.INFO
        log.log(
            level,
            "retention: deleted %d segment%s of channel %s in %s (%.3f-%.3f, %d bytes)%s",
            day.files,
            "" if day.files == 1 else "s",
            day.channel_id,
            directory,
            day.first,
            day.last,
            day.bytes,
            f"; {day.gone} of the files were already gone" if day.gone else "",
        )
    if len(days) > 1:
        log.info(
            "retention: deleted %d segments (%d bytes) in %d day directories",
            sum(day.files for day in days.values()),
            sum(day.bytes for day in days.values()),
            len(days),
        )


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (or already gone)
        return
    log.info("retention: removed empty directory %s", directory)


def free_bytes(root: str | Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``root``."""
    return shutil.disk_usage(root).free
