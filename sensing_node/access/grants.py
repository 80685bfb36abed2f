"""Grants: a consumer may take some actions on some channels for a stated time and purpose.

Grants come from the ``grants:`` section (read-only through the API; ``yaml-<n>``) and from
``POST /api/grants`` (kept in SQLite, ``api-<n>``). Both take the same keys; a grant lasts at
most a year (`settings.access.MAX_GRANT_DAYS`). An API grant that is revoked stays in the
database, marked, so that the record of who could see what never shrinks.

`GrantStore` is synchronous SQLite: call it from a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from ..settings.access import ACTIONS, GrantSettings, check_grant_span

__all__ = ["Grant", "GrantError", "GrantStore", "grant_from_json", "grants_from_settings"]

_MAX_TEXT = 500
_MAX_CHANNELS = 1000


class GrantError(ValueError):
    """A grant that cannot be taken, with the reason (the API's 400)."""


@dataclass(frozen=True)
class Grant:
    """One grant, its times as Unix seconds."""

    id: str
    consumer: str
    channels: tuple[str, ...]
    actions: tuple[str, ...]
    purpose: str
    valid_from: float
    valid_to: float
    max_sessions: int
    source: str  # "yaml" or "api"
    created_by: str | None = None
    created_at: float | None = None

    def covers(self, consumer: str, channel_id: str, action: str, now: float) -> bool:
        return (consumer == self.consumer and action in self.actions
                and self.valid_from <= now < self.valid_to
                and any(channel_id.startswith(prefix) for prefix in self.channels))

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id, "consumer": self.consumer, "channels": list(self.channels),
            "actions": list(self.actions), "purpose": self.purpose,
            "valid_from": self.valid_from, "valid_to": self.valid_to,
            "max_sessions": self.max_sessions, "source": self.source,
            "created_by": self.created_by, "created_at": self.created_at,
            "active": self.valid_from <= now < self.valid_to,
            "remaining_s": max(0.0, self.valid_to - max(now, self.valid_from)),
        }


def _instant(value: datetime, tz: tzinfo) -> float:
    return (value if value.tzinfo is not None else value.replace(tzinfo=tz)).timestamp()


def grants_from_settings(grants: tuple[GrantSettings, ...], tz: tzinfo) -> list[Grant]:
    return [
        Grant(f"yaml-{i}", g.consumer, g.channels, g.actions, g.purpose,
              _instant(g.valid_from, tz), _instant(g.valid_to, tz), g.max_sessions, "yaml")
        for i, g in enumerate(grants, 1)
    ]


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise GrantError(f"{name} is required (a non-empty string)")
    if len(value) > _MAX_TEXT:
        raise GrantError(f"{name} is longer than {_MAX_TEXT} characters")
    return value.strip()


def _time(body: Mapping[str, Any], name: str) -> datetime:
    text = _text(body, name)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise GrantError(f"{name}: not an ISO 8601 time: {text!r}") from None


def grant_from_json(body: Any, tz: tzinfo) -> GrantSettings:
    """A grant as `POST /api/grants` takes it (the keys of a ``grants:`` entry); raises
    `GrantError` with what is wrong."""
    if not isinstance(body, dict):
        raise GrantError("the body must be a JSON object")
    known = {"consumer", "channels", "actions", "purpose", "valid_from", "valid_to",
             "max_sessions"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise GrantError(f"unknown keys: {', '.join(unknown)}")
    channels = body.get("channels")
    if (not isinstance(channels, list) or not channels or len(channels) > _MAX_CHANNELS
            or not all(isinstance(c, str) and c.isascii() and c.isdigit() and 0 < len(c) <= 20
                       for c in channels)):
        raise GrantError("channels must be a list of channel IDs or civil-code prefixes "
                         "(1 to 20 digits, as strings)")
    actions = body.get("actions")
    if (not isinstance(actions, list) or not actions
            or not all(isinstance(a, str) and a in ACTIONS for a in actions)
            or len(set(actions)) != len(actions)):
        raise GrantError(f"actions must be a list of {', '.join(ACTIONS)} (each once)")
    sessions = body.get("max_sessions", 1)
    if not isinstance(sessions, int) or isinstance(sessions, bool) or not 1 <= sessions <= 10_000:
        raise GrantError("max_sessions must be a whole number from 1 to 10000")
    valid_from, valid_to = _time(body, "valid_from"), _time(body, "valid_to")
    if valid_from.tzinfo is None:
        valid_from = valid_from.replace(tzinfo=tz)
    if valid_to.tzinfo is None:
        valid_to = valid_to.replace(tzinfo=tz)
    problem = check_grant_span(valid_from, valid_to)
    if problem is not None:
        raise GrantError(problem)
    return GrantSettings(_text(body, "consumer"), tuple(channels), tuple(actions),
                         _text(body, "purpose"), valid_from, valid_to, sessions)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    id INTEGER PRIMARY KEY,
    consumer TEXT NOT NULL,
    channels TEXT NOT NULL,
    actions TEXT NOT NULL,
    purpose TEXT NOT NULL,
    valid_from REAL NOT NULL,
    valid_to REAL NOT NULL,
    max_sessions INTEGER NOT NULL,
    created_by TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL,
    revoked_by TEXT
);
"""


class GrantStore:
    """The API's grants in SQLite (``<data_dir>/grants.sqlite3``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def load(self) -> list[Grant]:
        """The grants not revoked (expired ones included: the API lists them)."""
        rows = self._conn().execute(
            "SELECT id, consumer, channels, actions, purpose, valid_from, valid_to, "
            "max_sessions, created_by, created_at FROM grants WHERE revoked_at IS NULL "
            "ORDER BY id"
        ).fetchall()
        return [
            Grant(f"api-{r[0]}", r[1], tuple(json.loads(r[2])), tuple(json.loads(r[3])), r[4],
                  r[5], r[6], r[7], "api", r[8], r[9])
            for r in rows
        ]

    def add(self, grant: GrantSettings, created_by: str, now: float) -> Grant:
        valid_from, valid_to = grant.valid_from.timestamp(), grant.valid_to.timestamp()
        cursor = self._conn().execute(
            "INSERT INTO grants (consumer, channels, actions, purpose, valid_from, valid_to, "
            "max_sessions, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (grant.consumer, json.dumps(list(grant.channels)), json.dumps(list(grant.actions)),
             grant.purpose, valid_from, valid_to, grant.max_sessions, created_by, now),
        )
        return Grant(f"api-{cursor.lastrowid}", grant.consumer, grant.channels, grant.actions,
                     grant.purpose, valid_from, valid_to, grant.max_sessions, "api", created_by,
                     now)

    def revoke(self, grant_id: str, by: str, now: float) -> bool:
        number = grant_id.removeprefix("api-")
        if not number.isdigit():
            return False
        cursor = self._conn().execute(
            "UPDATE grants SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
            (now, by, int(number)),
        )
        return cursor.rowcount == 1

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
