"""SQLite persistence of devices and channels, written behind the registry in batches.

The registry mutates its in-memory objects on the event loop and marks them dirty; `flush()`
takes a snapshot of the dirty rows on the loop and writes them in one transaction on a single
writer thread, so a burst of 10,000 registrations costs a few SQLite transactions, not 10,000,
and the loop never waits on the disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    name TEXT, manufacturer TEXT, model TEXT, firmware TEXT,
    transport TEXT, remote TEXT, contact TEXT, user_agent TEXT, gb_version TEXT, charset TEXT,
    call_id TEXT,
    registered_at REAL, last_keepalive REAL, expires_at REAL, online INTEGER NOT NULL DEFAULT 0,
    media_transport TEXT, quirks TEXT
);
CREATE TABLE IF NOT EXISTS channels (
    device_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT, status TEXT,
    fields TEXT NOT NULL,
    updated_at REAL,
    PRIMARY KEY (device_id, id)
);
"""

DEVICE_COLUMNS = (
    "id", "name", "manufacturer", "model", "firmware", "transport", "remote", "contact",
    "user_agent", "gb_version", "charset", "call_id", "registered_at", "last_keepalive",
    "expires_at", "online", "media_transport", "quirks",
)  # fmt: skip

# A device's row is updated where it lies (an upsert), not deleted and inserted again as
# INSERT OR REPLACE does: about a sixth less work per row for the writer thread.
UPSERT_DEVICE = (
    f"INSERT INTO devices ({', '.join(DEVICE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(DEVICE_COLUMNS))}) "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in DEVICE_COLUMNS[1:])
)

#: SQLite's page cache for the writer's connection, KiB (taken as pages are read, so a small
#: site uses little). The default 2 MiB holds about 8,000 devices' rows; a registration storm
#: on a larger site then reads most pages it updates back from the OS at every write.
CACHE_KIB = 65536


class Store:
    """One SQLite file under `data_dir`, used from one writer thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.executescript(SCHEMA)
            # A file written by an older node lacks the newer columns: add them (empty).
            have = {row[1] for row in conn.execute("PRAGMA table_info(devices)")}
            for column in DEVICE_COLUMNS:
                if column not in have:
                    conn.execute(f"ALTER TABLE devices ADD COLUMN {column}")
            self._local.conn = conn
        return conn

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    # Everything below runs on the writer thread (through `executor`) or at start-up.
    def load(self) -> tuple[list[dict[str, Any]], list[tuple[str, str, dict[str, str]]]]:
        conn = self._conn()
        conn.row_factory = sqlite3.Row
        devices = [dict(row) for row in conn.execute("SELECT * FROM devices")]
        channels = [
            (row["device_id"], row["id"], json.loads(row["fields"]))
            for row in conn.execute("SELECT device_id, id, fields FROM channels")
        ]
        conn.row_factory = None
        return devices, channels

    def write(
        self,
        devices: Iterable[tuple[Any, ...]],
        channel_sets: Iterable[tuple[str, list[tuple[str, dict[str, str]]], float]],
    ) -> None:
        conn = self._conn()
        with conn:
            conn.executemany(UPSERT_DEVICE, devices)
            for device_id, channels, now in channel_sets:
                conn.execute("DELETE FROM channels WHERE device_id = ?", (device_id,))
                conn.executemany(
                    "INSERT INTO channels (device_id, id, name, status, fields, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            device_id,
                            cid,
                            f.get("Name"),
                            f.get("Status"),
                            json.dumps(f, ensure_ascii=False),
                            now,
                        )
                        for cid, f in channels
                    ],
                )

    def close(self) -> None:
        def _close() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
