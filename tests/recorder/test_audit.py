"""recorder.audit: append-only triggers, the hash chain, tamper detection, queries, threads."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from recorder.audit import GENESIS, AuditEntry, AuditLog, entry_hash

CHANNEL = "34020000001320000001"
OTHER = "34020000001320000002"
T0 = 1_700_000_000.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite"


@pytest.fixture
def log(path: Path) -> Iterator[AuditLog]:
    with AuditLog(path) as opened:
        yield opened


def fill(log: AuditLog, count: int = 5) -> list[AuditEntry]:
    actions = ["live_view", "playback", "export", "search", "api_read"]
    return [
        log.append(
            f"operator{i % 2}",
            actions[i % len(actions)],
            at=T0 + i,
            channel_id=CHANNEL if i % 2 == 0 else OTHER,
            range_start=T0 - 3600 + i,
            range_end=T0 - 1800 + i,
            purpose=f"case {i}",
            detail=None if i % 3 else f"file {i}.mp4",
        )
        for i in range(count)
    ]


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection, as someone with file access would open it."""
    return sqlite3.connect(path, isolation_level=None)


def test_append_returns_the_stored_row_and_chains(log):
    entries = fill(log, 3)
    assert [e.id for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    first = entries[0]
    assert first == AuditEntry(1, T0, "operator0", "live_view", CHANNEL, T0 - 3600, T0 - 1800,
                               "case 0", "ok", "file 0.mp4", GENESIS, first.hash)
    assert first.hash == entry_hash(1, T0, "operator0", "live_view", CHANNEL, T0 - 3600,
                                    T0 - 1800, "case 0", "ok", "file 0.mp4", GENESIS)
    assert log.query(limit=10)[::-1] == entries


def test_canonical_encoding():
    text = ('[7,1700000000.5,"张三","export","34020000001320000001",1699990000.0,null,'
            '"案件 12","ok",null,"' + GENESIS + '"]')
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert entry_hash(7, 1700000000.5, "张三", "export", CHANNEL, 1699990000.0, None, "案件 12",
                      "ok", None, GENESIS) == expected


def test_query_filters_newest_first(log):
    entries = fill(log, 10)
    assert log.query(actor="operator1") == [e for e in entries[::-1] if e.actor == "operator1"]
    assert log.query(channel_id=OTHER) == [e for e in entries[::-1] if e.channel_id == OTHER]
    assert log.query(action="export") == [entries[7], entries[2]]
    assert log.query(start=T0 + 3, end=T0 + 6) == entries[3:6][::-1]
    assert log.query(actor="operator0", action="export") == [entries[2]]
    assert log.query(limit=2) == [entries[9], entries[8]]
    assert log.query(actor="nobody") == []


def test_verify_accepts_an_untouched_log(log):
    entries = fill(log, 20)
    report = log.verify()
    assert report.ok
    assert report.rows == 20
    assert report.altered == report.unlinked == ()
    assert report.first_broken is None
    assert report.triggers
    assert report.head == (20, entries[-1].hash) == log.head()
    assert log.verify(anchor=(5, entries[4].hash)).anchor_ok is True


def test_verify_of_an_empty_log(log):
    report = log.verify()
    assert report.ok and report.rows == 0 and report.head is None and log.head() is None


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit SET actor = 'someone else' WHERE id = 2", "DELETE FROM audit WHERE id = 2",
     "DELETE FROM audit"],
)
def test_triggers_refuse_update_and_delete(log, path, statement):
    fill(log)
    with closing(raw(path)) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)
    assert log.verify().ok
    assert len(log.query()) == 5


def test_an_altered_row_is_found(log, path):
    fill(log)
    with closing(raw(path)) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET purpose = 'nothing to see' WHERE id = 3")
    report = log.verify()
    assert not report.ok
    assert report.altered == (3,)
    assert report.unlinked == ()
    assert report.first_broken == 3
    assert not report.triggers


def test_an_altered_row_with_a_recomputed_hash_breaks_the_next_link(log, path):
    entries = fill(log)
    row = entries[2]
    forged = entry_hash(row.id, row.at, "someone else", row.action, row.channel_id,
                        row.range_start, row.range_end, row.purpose, row.result, row.detail,
                        row.prev_hash)
    with closing(raw(path)) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET actor = 'someone else', hash = ? WHERE id = 3", (forged,))
    report = log.verify()
    assert report.altered == ()
    assert report.unlinked == (4,)
    assert report.first_broken == 4


def test_an_altered_time_type_is_found(log, path):
    fill(log)
    with closing(raw(path)) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET range_start = 'yesterday' WHERE id = 2")
    assert log.verify().altered == (2,)


def test_a_deleted_row_is_found(log, path):
    fill(log)
    with closing(raw(path)) as db:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE id = 2")
    report = log.verify()
    assert report.rows == 4
    assert report.altered == ()
    assert report.unlinked == (3,)
    assert report.first_broken == 3
    assert not report.ok


def test_a_cut_off_tail_is_found_only_against_an_anchor(path):
    with AuditLog(path) as log:
        fill(log)
        anchor = log.head()
    with closing(raw(path)) as db:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE id >= 4")
    with AuditLog(path) as log:  # opening puts the triggers back, and says so
        assert log.triggers_were_missing
        report = log.verify()
        assert not report.triggers and not report.ok
        assert report.altered == report.unlinked == ()  # the chain itself looks whole
        report = log.verify(anchor=anchor)
        assert report.anchor_ok is False
        assert not report.ok
        # and the chain goes on from what is there now
        assert log.append("operator0", "search", at=T0 + 100).id == 4
        with closing(raw(path)) as db, pytest.raises(sqlite3.IntegrityError):
            db.execute("DELETE FROM audit")
    with AuditLog(path) as log:
        assert not log.triggers_were_missing
        assert log.verify().ok


def test_reopening_keeps_chaining(path):
    with AuditLog(path) as log:
        entries = fill(log, 3)
    with AuditLog(path) as log:
        more = log.append("auditor", "api_read", at=T0 + 50, result="denied")
        assert more.id == 4
        assert more.prev_hash == entries[-1].hash
        assert log.verify().ok
        assert log.query(limit=1) == [more]


def test_database_is_in_wal_mode(log, path):
    fill(log, 1)
    with closing(raw(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_threads_append_into_one_chain(log):
    def work(worker: int) -> None:
        for i in range(40):
            log.append(f"worker{worker}", "playback", at=T0 + i, channel_id=CHANNEL)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = log.verify()
    assert report.ok and report.rows == 320
    assert [e.id for e in log.query(limit=1000)] == list(range(320, 0, -1))


def test_two_handles_on_one_file_share_the_chain(path):
    with AuditLog(path) as first, AuditLog(path) as second:
        for i in range(10):
            (first if i % 2 else second).append("operator0", "search", at=T0 + i)
        assert first.verify().ok
        assert second.head() == first.head()
        assert first.head() is not None and first.head()[0] == 10


def test_times_are_stored_as_floats(log):
    entry = log.append("operator0", "export", at=1_700_000_000, range_start=5, range_end=9)
    assert entry.at == 1_700_000_000.0 and isinstance(entry.at, float)
    assert log.query() == [entry]
    assert log.verify().ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor": "op", "action": "delete_all", "at": T0}, "unknown audit action"),
        ({"actor": "", "action": "export", "at": T0}, "must not be empty"),
        ({"actor": "op", "action": "export", "at": T0, "result": ""}, "must not be empty"),
        ({"actor": "op", "action": "export", "at": float("nan")}, "finite"),
        ({"actor": "op", "action": "export", "at": T0, "range_end": float("inf")}, "finite"),
    ],
)
def test_bad_entries_are_refused(log, kwargs, message):
    with pytest.raises(ValueError, match=message):
        log.append(**kwargs)
    assert log.head() is None


def test_a_failed_append_leaves_no_half_row(log):
    fill(log, 2)
    with pytest.raises(UnicodeEncodeError):
        log.append("operator0", "export", at=T0, detail="\ud800")  # a lone surrogate
    assert log.verify().ok and log.verify().rows == 2
    assert log.append("operator0", "export", at=T0).id == 3


def test_a_file_that_is_not_a_database_is_refused(path):
    path.write_bytes(b"not a database, just some bytes" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        AuditLog(path)
