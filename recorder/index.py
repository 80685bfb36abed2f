"""The recording index: one SQLite database (WAL) per recording root, one writer.

Tables (``recorder/export.py`` and ``recorder/audit.py`` read them directly, so columns are only
ever added, never renamed):

- ``segments``: one row per durable segment file, ``path`` relative to the root, wall times in
  Unix seconds, PTS as raw 33-bit 90 kHz values, ``sha256`` of the whole file and
  ``prev_sha256`` of the channel's previous segment (``NULL`` for the first): a hash chain per
  channel, in ``id`` order (AUTOINCREMENT: an id is never reused, even after retention has
  deleted every row). ``recovered`` is 1 for rows written by crash recovery.
- ``gaps``: time ranges a channel was not recorded, with a reason.
- ``deletions``: segments removed by the retention sweeper, with their hash and the hash they
  chained to, so the chain of what remains stays verifiable.

A row is added to ``segments`` only once its file is durable (fsync'd and renamed).

``segments_end`` (on ``end_wall``) serves the retention sweeper and ``bytes_per_day(since=...)``:
without it both read every row, and the index holds about 13 M rows at 300 channels of 60 s
segments kept 30 days. Opening an older database builds it once (about 8 s at that size,
``bench/retention.py``), holding the write lock meanwhile.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TIME_TOLERANCE_S", "DeletionRow", "GapRow", "RecordIndex", "SegmentRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    start_wall REAL NOT NULL,
    end_wall REAL NOT NULL,
    start_pts INTEGER,
    end_pts INTEGER,
    bytes INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    codec TEXT,
    sha256 TEXT NOT NULL,
    prev_sha256 TEXT,
    recovered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS segments_channel_start ON segments (channel_id, start_wall);
CREATE INDEX IF NOT EXISTS segments_end ON segments (end_wall);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    channel_id TEXT NOT NULL,
    start_wall REAL NOT NULL,
    end_wall REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gaps_channel_start ON gaps (channel_id, start_wall);
CREATE TABLE IF NOT EXISTS deletions (
    id INTEGER PRIMARY KEY,
    channel_id TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    start_wall REAL NOT NULL,
    end_wall REAL NOT NULL,
    deleted_at REAL NOT NULL,
    segment_id INTEGER,
    prev_sha256 TEXT,
    bytes INTEGER
);
CREATE INDEX IF NOT EXISTS deletions_channel ON deletions (channel_id, segment_id);
"""

_SEGMENT_COLUMNS = (
    "id, channel_id, path, start_wall, end_wall, start_pts, end_pts, bytes, frames, codec, "
    "sha256, prev_sha256, recovered"
)

_IDS_PER_QUERY = 500  # bound parameters per IN (...), well below every SQLite build's limit


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One row of ``segments``."""

    id: int
    channel_id: str
    path: str  # relative to the recording root, "/" separated
    start_wall: float
    end_wall: float
    start_pts: int | None
    end_pts: int | None
    bytes: int
    frames: int
    codec: str | None
    sha256: str
    prev_sha256: str | None
    recovered: bool

    @property
    def duration(self) -> float:
        return self.end_wall - self.start_wall


@dataclass(frozen=True, slots=True)
class GapRow:
    """One row of ``gaps``."""

    id: int
    channel_id: str
    start_wall: float
    end_wall: float
    reason: str


@dataclass(frozen=True, slots=True)
class DeletionRow:
    """One row of ``deletions``: a segment removed by the retention sweeper."""

    id: int
    channel_id: str
    path: str
    sha256: str
    start_wall: float
    end_wall: float
    deleted_at: float
    segment_id: int | None
    prev_sha256: str | None
    bytes: int | None


def _segment(row: tuple[Any, ...]) -> SegmentRow:
    values = list(row)
    values[12] = bool(values[12])
    return SegmentRow(*values)


_LOOKBACK_S = 86400.0

#: How far two times of a channel's record may disagree and still be the same instant: a
#: segment's end and the gap after it are computed apart (frame time plus frame interval), so
#: float rounding may part them by far less than this.
TIME_TOLERANCE_S = 0.001


def _bounds(start: float | None, end: float | None) -> tuple[str, list[Any]]:
    """SQL for rows overlapping [start, end); either bound may be open."""
    sql = ""
    args: list[Any] = []
    if end is not None:
        sql += " AND start_wall < ?"
        args.append(end)
    if start is not None:
        sql += " AND end_wall > ?"
        args.append(start)
    return sql, args


class RecordIndex:
    """The segment/gap/deletion index at ``path`` (created if missing).

    Safe to share between threads (one connection behind a lock); other processes may read the
    same file concurrently thanks to WAL. The recorder's writer thread is the one writer;
    everybody else opens the index with ``read_only=True`` (``PRAGMA query_only``: any write
    through it fails with ``sqlite3.OperationalError``), which also leaves the schema alone.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 5000")
        if read_only:
            self._db.execute("PRAGMA query_only = ON")
            return
        self._db.execute("PRAGMA journal_mode = WAL")
        # FULL: a row the writer reports as indexed survives a power cut as well (WAL: the
        # log is fsync'd at every commit).
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RecordIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- writing -------------------------------------------------------------------------------

    def add_segment(
        self,
        *,
        channel_id: str,
        path: str,
        start_wall: float,
        end_wall: float,
        start_pts: int | None,
        end_pts: int | None,
        bytes: int,
        frames: int,
        codec: str | None,
        sha256: str,
        prev_sha256: str | None,
        recovered: bool = False,
    ) -> SegmentRow:
        """Index a durable segment file and return its row."""
        values = (
            channel_id,
            path,
            start_wall,
            end_wall,
            start_pts,
            end_pts,
            bytes,
            frames,
            codec,
            sha256,
            prev_sha256,
            int(recovered),
        )
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT INTO segments ({_SEGMENT_COLUMNS.removeprefix('id, ')})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return SegmentRow(row_id, *values[:11], recovered)

    def add_segments(self, segments: Sequence[dict[str, Any]]) -> list[SegmentRow]:
        """Index durable segment files in one transaction (one commit, so one WAL fsync for
        all of them), in order; each item holds :meth:`add_segment`'s arguments. Nothing is
        indexed if one fails."""
        out: list[SegmentRow] = []
        with self._transaction() as db:
            for kw in segments:
                values = (
                    kw["channel_id"], kw["path"], kw["start_wall"], kw["end_wall"],
                    kw["start_pts"], kw["end_pts"], kw["bytes"], kw["frames"], kw["codec"],
                    kw["sha256"], kw["prev_sha256"], int(kw.get("recovered", False)),
                )
                cursor = db.execute(
                    f"INSERT INTO segments ({_SEGMENT_COLUMNS.removeprefix('id, ')})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
                assert cursor.lastrowid is not None
                out.append(SegmentRow(cursor.lastrowid, *values[:11], bool(values[11])))
        return out

    def add_gap(self, channel_id: str, start_wall: float, end_wall: float, reason: str) -> GapRow:
        """Record that ``channel_id`` was not recorded from ``start_wall`` to ``end_wall``."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO gaps (channel_id, start_wall, end_wall, reason) VALUES (?, ?, ?, ?)",
                (channel_id, start_wall, end_wall, reason),
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return GapRow(row_id, channel_id, start_wall, end_wall, reason)

    def record_deletions(self, rows: Iterable[SegmentRow], deleted_at: float) -> int:
        """Move ``rows`` from ``segments`` to ``deletions`` in one transaction (the files are not
        touched); returns how many.

        The retention sweeper has the recorder's writer thread call it once per batch, so the
        recorder's inserts go in between.
        """
        values = [
            (
                row.channel_id,
                row.path,
                row.sha256,
                row.start_wall,
                row.end_wall,
                deleted_at,
                row.id,
                row.prev_sha256,
                row.bytes,
            )
            for row in rows
        ]
        if not values:
            return 0
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO deletions (channel_id, path, sha256, start_wall, end_wall,"
                " deleted_at, segment_id, prev_sha256, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            db.executemany("DELETE FROM segments WHERE id = ?", [(v[6],) for v in values])
        return len(values)

    # -- reading -------------------------------------------------------------------------------

    def segments(
        self, channel_id: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[SegmentRow]:
        """Segments overlapping [start, end) (open bounds when ``None``), by start time.

        ``channel_id=None`` returns every channel's segments.
        """
        where, args = _bounds(start, end)
        if channel_id is not None:
            where += " AND channel_id = ?"
            args.append(channel_id)
            if start is not None:
                # The index on (channel_id, start_wall) bounds the scan from above only; bound
                # it from below too, so a search in a long history does not read all of it.
                # A channel's segments follow each other: only the last one that starts at or
                # before `start` can reach into the range from before, and a day of slack
                # covers segments that overlap after the clock was set back.
                floor = start - _LOOKBACK_S
                anchor = self._query(
                    "SELECT start_wall FROM segments WHERE channel_id = ? AND start_wall <= ? "
                    "ORDER BY start_wall DESC LIMIT 1",
                    (channel_id, start),
                )
                if anchor:
                    floor = min(floor, anchor[0][0])
                where += " AND start_wall >= ?"
                args.append(floor)
        rows = self._query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE 1 = 1{where} ORDER BY start_wall, id",
            args,
        )
        return [_segment(row) for row in rows]

    def chain(self, channel_id: str) -> list[SegmentRow]:
        """A channel's segments in hash-chain (insertion) order."""
        rows = self._query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE channel_id = ? ORDER BY id",
            (channel_id,),
        )
        return [_segment(row) for row in rows]

    def segments_ended_before(self, cutoff: float) -> list[SegmentRow]:
        """Segments of every channel whose end is before ``cutoff``, oldest first."""
        rows = self._query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE end_wall < ? ORDER BY start_wall, id",
            (cutoff,),
        )
        return [_segment(row) for row in rows]

    def segment_ids_ended_before(self, cutoff: float) -> list[int]:
        """The ids of :meth:`segments_ended_before` in the same order: the plan of a sweep,
        small however many rows it names (an integer per row instead of a whole row)."""
        rows = self._query(
            "SELECT id FROM segments WHERE end_wall < ? ORDER BY start_wall, id", (cutoff,)
        )
        return [row[0] for row in rows]

    def segments_by_id(self, ids: Sequence[int]) -> list[SegmentRow]:
        """The rows of ``ids`` that are still indexed, in the order of ``ids``."""
        found: dict[int, SegmentRow] = {}
        for first in range(0, len(ids), _IDS_PER_QUERY):
            chunk = list(ids[first : first + _IDS_PER_QUERY])
            marks = ", ".join("?" * len(chunk))
            rows = self._query(
                f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE id IN ({marks})", chunk
            )
            for row in rows:
                found[row[0]] = _segment(row)
        return [found[i] for i in ids if i in found]

    def segment_by_path(self, path: str) -> SegmentRow | None:
        rows = self._query(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE path = ?", (path,))
        return _segment(rows[0]) if rows else None

    def paths(self) -> set[str]:
        """Every indexed segment path."""
        return {row[0] for row in self._query("SELECT path FROM segments")}

    def last_segment(self, channel_id: str) -> SegmentRow | None:
        """The channel's most recently indexed segment (the end of its hash chain)."""
        rows = self._query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE channel_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (channel_id,),
        )
        return _segment(rows[0]) if rows else None

    def recorded_until(self, channel_id: str) -> float | None:
        """Where the channel's record ends: the latest end of its segments and gaps, None for a
        channel with neither. What comes next (a segment, a gap) starts there or later.

        A channel's segments and gaps follow each other, so only those starting within a day of
        its latest start are read: both indexes on (channel_id, start_wall) bound the scan.
        """
        ends: list[float] = []
        for table in ("segments", "gaps"):
            rows = self._query(
                f"SELECT MAX(end_wall) FROM {table} WHERE channel_id = ? AND start_wall >= "
                f"(SELECT MAX(start_wall) FROM {table} WHERE channel_id = ?) - ?",
                (channel_id, channel_id, _LOOKBACK_S),
            )
            if rows and rows[0][0] is not None:
                ends.append(rows[0][0])
        return max(ends) if ends else None

    def chain_head(self, channel_id: str) -> str | None:
        """The sha256 the channel's next segment chains to: its last segment, or the last
        deleted one when retention has swept them all."""
        last = self.last_segment(channel_id)
        if last is not None:
            return last.sha256
        deleted = self.deletions(channel_id)
        return deleted[-1].sha256 if deleted else None

    def gaps(
        self, channel_id: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[GapRow]:
        """Gaps overlapping [start, end), by start time."""
        where, args = _bounds(start, end)
        if channel_id is not None:
            where += " AND channel_id = ?"
            args.append(channel_id)
        rows = self._query(
            "SELECT id, channel_id, start_wall, end_wall, reason FROM gaps"
            f" WHERE 1 = 1{where} ORDER BY start_wall, id",
            args,
        )
        return [GapRow(*row) for row in rows]

    def deletions(self, channel_id: str | None = None) -> list[DeletionRow]:
        """Retention deletions, in chain order (by the deleted segment's id) per channel."""
        sql = (
            "SELECT id, channel_id, path, sha256, start_wall, end_wall, deleted_at, segment_id,"
            " prev_sha256, bytes FROM deletions"
        )
        if channel_id is None:
            return [DeletionRow(*r) for r in self._query(sql + " ORDER BY channel_id, segment_id")]
        rows = self._query(sql + " WHERE channel_id = ? ORDER BY segment_id, id", (channel_id,))
        return [DeletionRow(*row) for row in rows]

    def deleted_paths(self) -> set[str]:
        return {row[0] for row in self._query("SELECT path FROM deletions")}

    def channels(self) -> list[str]:
        """Every channel with segments or gaps, sorted."""
        rows = self._query(
            "SELECT channel_id FROM segments UNION SELECT channel_id FROM gaps ORDER BY 1"
        )
        return [row[0] for row in rows]

    def total_bytes(self) -> int:
        """Bytes of every indexed segment (what the recordings hold now)."""
        rows = self._query("SELECT COALESCE(SUM(bytes), 0) FROM segments", ())
        return int(rows[0][0])

    def bytes_per_day(
        self, channel_id: str | None = None, since: float | None = None
    ) -> dict[str, float]:
        """Observed storage rate per channel (bytes per recorded day), for storage planning.

        The rate is total bytes over total recorded seconds of the channel's segments ending
        after ``since``; channels with no recorded time are left out.
        """
        sql = "SELECT channel_id, SUM(bytes), SUM(end_wall - start_wall) FROM segments WHERE 1 = 1"
        args: list[Any] = []
        # Every channel: "+channel_id" keeps SQLite from walking segments_channel_start (all
        # rows, in channel order) just to save sorting a few hundred groups, so that ``since``
        # reads only the recent rows through segments_end (and no ``since``, the table in order).
        group = "channel_id"
        if channel_id is not None:
            sql += " AND channel_id = ?"
            args.append(channel_id)
        else:
            group = "+channel_id"
        if since is not None:
            sql += " AND end_wall > ?"
            args.append(since)
        rows = self._query(sql + f" GROUP BY {group} ORDER BY {group}", args)
        return {ch: total * 86400.0 / seconds for ch, total, seconds in rows if seconds > 0}
