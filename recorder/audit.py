"""Append-only, hash-chained audit log of access to video, in SQLite.

The district rule asks who fetched which video, when and for what. Every access (live view,
playback, export, search, an API read) becomes one row of ``audit``. Two things keep the rows as
written:

* SQLite triggers abort every UPDATE and DELETE on ``audit``, so the application cannot change
  the log, by mistake or on purpose, through any connection.
* Each row carries ``hash = SHA-256(canonical row fields + prev_hash)``, ``prev_hash`` being the
  previous row's hash (64 zeros for the first row). Someone who drops the triggers and edits or
  deletes rows breaks the chain, and :meth:`AuditLog.verify` names the first rows where it breaks.

A chain alone cannot reveal that its newest rows were cut off: keep :meth:`AuditLog.head`
somewhere else now and then (a report, a second system) and pass it to ``verify(anchor=...)``.

The canonical encoding is the JSON array ``[id, at, actor, action, channel_id, range_start,
range_end, purpose, result, detail, prev_hash]`` without spaces, UTF-8, floats in Python's
shortest round-trip form; times are Unix seconds stored as REAL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "ACTIONS",
    "GENESIS",
    "AuditEntry",
    "AuditLog",
    "AuditReport",
    "entry_hash",
]

#: What can be audited: watching live, playing back, exporting, searching recordings, API reads,
#: and an operator moving a channel away from the device that held it.
ACTIONS = ("live_view", "playback", "export", "search", "api_read", "channel_release",
           "upstream_live", "upstream_playback", "upstream_download", "grant", "config_reload")
#: ``prev_hash`` of the first row.
GENESIS = "0" * 64

_REPORTED = 20  # ids listed per kind of damage in a report

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    channel_id TEXT,
    range_start REAL,
    range_end REAL,
    purpose TEXT,
    result TEXT NOT NULL,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, at);
CREATE INDEX IF NOT EXISTS audit_channel ON audit (channel_id, at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;
"""
_TRIGGERS = ("audit_no_delete", "audit_no_update")
_COLUMNS = ("id, at, actor, action, channel_id, range_start, range_end, purpose, result, detail, "
            "prev_hash, hash")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    at: float  # Unix seconds of the access
    actor: str  # operator, upstream platform or API client
    action: str  # one of ACTIONS
    channel_id: str | None  # the 20-digit GB/T 28181 channel, if the access concerns one
    range_start: float | None  # the recorded time range concerned (playback, export, search)
    range_end: float | None
    purpose: str | None  # what for: case number, reason given by the operator
    result: str  # "ok", "denied", "error" or another short word
    detail: str | None  # free text: file name, query, error message
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What :meth:`AuditLog.verify` found.

    ``altered``: ids whose stored hash does not match their fields (edited rows).
    ``unlinked``: ids whose ``prev_hash`` is not the previous row's hash (rows deleted, inserted
    or reordered before them). ``anchor_ok`` is ``None`` without an anchor. Each list holds
    the first few ids only; ``first_broken`` is the lowest of them.
    """

    rows: int
    altered: tuple[int, ...]
    unlinked: tuple[int, ...]
    triggers: bool  # both append-only triggers are in place, and were when the log was opened
    head: tuple[int, str] | None  # (id, hash) of the last row
    anchor_ok: bool | None = None

    @property
    def ok(self) -> bool:
        """No damage found, the triggers are in place and the anchor (if any) matched."""
        return (not self.altered and not self.unlinked and self.triggers
                and self.anchor_ok is not False)

    @property
    def first_broken(self) -> int | None:
        """The lowest id where the log stops being trustworthy, if any."""
        return min((*self.altered, *self.unlinked), default=None)


def entry_hash(
    id: int,
    at: float,
    actor: str,
    action: str,
    channel_id: str | None,
    range_start: float | None,
    range_end: float | None,
    purpose: str | None,
    result: str,
    detail: str | None,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical encoding of a row's fields and the previous row's hash."""
    fields = [id, at, actor, action, channel_id, range_start, range_end, purpose, result, detail,
              prev_hash]
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class AuditLog:
    """The audit log in the SQLite database at ``path`` (created if missing, WAL mode).

    One connection, guarded by a lock: safe to share between the threads of one process.
    Several processes may append as well; the chain is extended inside one write transaction.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")  # an access once logged stays logged
            existed = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
            ).fetchone()
            #: The log existed but its append-only triggers did not: they are put back, and
            #: :meth:`verify` on this handle reports ``triggers=False`` all the same.
            self.triggers_were_missing = bool(existed) and not _triggers_present(self._db)
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def append(
        self,
        actor: str,
        action: str,
        *,
        at: float,
        channel_id: str | None = None,
        range_start: float | None = None,
        range_end: float | None = None,
        purpose: str | None = None,
        result: str = "ok",
        detail: str | None = None,
    ) -> AuditEntry:
        """Log one access and return the row as stored.

        :param at: Unix seconds of the access (the caller's clock).
        :raises ValueError: unknown ``action``, empty ``actor`` or ``result``, a time that is
            not a finite number.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; expected one of {ACTIONS}")
        if not actor or not result:
            raise ValueError("audit actor and result must not be empty")
        at_ = _finite(at, "at")
        start = None if range_start is None else _finite(range_start, "range_start")
        end = None if range_end is None else _finite(range_end, "range_end")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute(
                    "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"
                ).fetchone()
                id_, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
                fields = (id_, at_, actor, action, channel_id, start, end, purpose, result,
                          detail, prev)
                entry = AuditEntry(*fields, entry_hash(*fields))
                self._db.execute(
                    f"INSERT INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*fields, entry.hash),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entry

    def query(
        self,
        actor: str | None = None,
        channel_id: str | None = None,
        action: str | None = None,
        start: float | None = None,
        end: float | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Rows that match every given filter, newest first, at most ``limit``.

        ``start``/``end`` bound the time of access ``at`` (``start <= at < end``).
        """
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("actor", actor), ("channel_id", channel_id), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if start is not None:
            where.append("at >= ?")
            args.append(start)
        if end is not None:
            where.append("at < ?")
            args.append(end)
        sql = f"SELECT {_COLUMNS} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [AuditEntry(*row) for row in rows]

    def head(self) -> tuple[int, str] | None:
        """(id, hash) of the newest row, to be kept elsewhere as an anchor; None if empty."""
        with self._lock:
            row = self._db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def verify(self, anchor: tuple[int, str] | None = None) -> AuditReport:
        """Recompute every row's hash and check the chain, on a connection of its own (appends
        go on meanwhile; rows appended after the check began are not looked at).

        :param anchor: an earlier :meth:`head`; the row with that id must still have that hash.
        """
        uri = self.path.resolve().as_uri() + "?mode=ro"
        reader = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            reader.execute("BEGIN")  # one snapshot for the whole walk
            triggers = _triggers_present(reader) and not self.triggers_were_missing
            rows = reader.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY id")
            report = _walk(rows, anchor)
            reader.execute("COMMIT")
        finally:
            reader.close()
        return dataclasses.replace(report, triggers=triggers)


def _triggers_present(db: sqlite3.Connection) -> bool:
    names = {name for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"
    )}
    return set(_TRIGGERS) <= names


def _walk(rows: Iterable[tuple[Any, ...]], anchor: tuple[int, str] | None) -> AuditReport:
    count = 0
    altered: list[int] = []
    unlinked: list[int] = []
    prev = GENESIS
    head: tuple[int, str] | None = None
    anchor_ok = None if anchor is None else False
    for row in rows:
        count += 1
        id_, prev_hash, stored = row[0], row[10], row[11]
        try:
            valid = entry_hash(*row[:11]) == stored
        except (TypeError, ValueError):  # a field of the wrong type or a NaN put in by hand
            valid = False
        if not valid and len(altered) < _REPORTED:
            altered.append(id_)
        if prev_hash != prev and len(unlinked) < _REPORTED:
            unlinked.append(id_)
        if anchor is not None and id_ == anchor[0]:
            anchor_ok = stored == anchor[1] and valid
        prev = stored
        head = (id_, stored)
    return AuditReport(count, tuple(altered), tuple(unlinked), True, head, anchor_ok)


def _finite(value: float, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"audit {name} must be a finite number of seconds")
    return number
