"""Retention: the only code that deletes segment files, and only once they are out of retention.

District rule: recordings are kept 30 days and never altered or deleted before. ``sweep()``
deletes, oldest first, the segments whose end is older than the retention period, logs each
one, moves its index row to ``deletions`` (keeping the hash chain verifiable) and removes day
directories left empty.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .index import RecordIndex, SegmentRow

__all__ = ["MIN_RETENTION_DAYS", "check_retention_days", "free_bytes", "plan_sweep", "sweep"]

log = logging.getLogger("recorder.retention")

MIN_RETENTION_DAYS = 30
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
) -> list[SegmentRow]:
    """Delete the segments whose end is more than ``retention_days`` before ``now``.

    Returns the rows deleted, oldest first. A file already gone is still recorded as deleted.
    """
    root = Path(root)
    deleted: list[SegmentRow] = []
    for row in plan_sweep(index, retention_days, now, allow_short=allow_short):
        path = root / row.path
        try:
            path.unlink()
        except FileNotFoundError:
            log.warning("retention: %s was already gone", row.path)
        index.record_deletion(row, deleted_at=now)
        log.info(
            "retention: deleted %s (channel %s, %.3f-%.3f, %d bytes, sha256 %s)",
            row.path,
            row.channel_id,
            row.start_wall,
            row.end_wall,
            row.bytes,
            row.sha256,
        )
        deleted.append(row)
        _remove_if_empty(path.parent)
    return deleted


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (or already gone)
        return
    log.info("retention: removed empty directory %s", directory)


def free_bytes(root: str | Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``root``."""
    return shutil.disk_usage(root).free
