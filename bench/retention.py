"""Retention sweep at scale, and the recording index's size per day.

    python bench/retention.py [--days 30] [--channels 300] [--segment 60] [--sweeps 3]
                              [--dir DIR] [--no-files] [--regenerate] [--keep]

Builds the index of ``--days`` days of ``--channels`` channels recording ``--segment`` second
segments (30 x 300 x 1440 = 12.96 M rows by default) with the recorder's own schema
(``recorder.index.RecordIndex``) and realistic values: 20-digit GB/T 28181 channel ids, paths
``<channel>/<YYYY-MM-DD>/<YYYYmmddTHHMMSS.fff>.ps``, wall times a few hundred milliseconds
apart between channels, 33-bit PTS, about 15 MB per segment, a sha256 chain per channel. The
rows go in by bulk INSERT, a day per transaction, in the order the recorder would write them
(every channel's minute, then the next minute). Generating is not measured; the database is
kept under ``--dir`` (default ``$TMPDIR/sensing-node-bench/retention``) and reused by later runs
with the same size, then copied to a work file for the measurements.

Measured on the work copy (the page cache is warm: the copy has just been written):

1. the hourly sweep that finds nothing to delete (retention = --days, data exactly that old);
2. ``RecordIndex.segments(channel, start, end)`` for one hour of one channel: the most recent
   hour, and an hour at random over the whole period;
3. ``RecordIndex.bytes_per_day(since=now - 7 days)`` (storage planning at startup);
4. ``--sweeps`` daily sweeps, one after the other: each deletes the oldest day (channels x
   segments a day rows). Before each, that day's files are created (empty, timed on its own),
   and during each a second thread with its own ``RecordIndex`` connection inserts a segment
   row every 50 ms, as the recorder's writer thread does, to show how long an insert waits for
   the sweep's write lock. The sweep logs at INFO to a file, as the node does.

Also: the database size before and after, per table and index (SQLite ``dbstat``), and the
time ``RecordIndex`` takes to build the ``segments_end`` index when it opens a database that
predates it. Prints a markdown section (the figures for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_id  # noqa: E402 (also puts the repository root on sys.path)

from recorder.index import RecordIndex, SegmentRow  # noqa: E402
from recorder.retention import BATCH_SIZE, MIN_RETENTION_DAYS, sweep  # noqa: E402

DAY = 86400.0
T0 = 1767225600.0  # 2026-01-01 00:00:00 UTC, the first segment of the generated period
LAYOUT = 1  # bump when the generated rows change, so cached databases are rebuilt
PTS_WRAP = 1 << 33
FPS = 25
MB = 1e6


# -- generating the index -------------------------------------------------------------------


def channel_ids(channels: int) -> list[str]:
    return [device_id(c + 1) for c in range(channels)]


def offset_ms(c: int) -> int:
    """Where a channel's segments start within each segment slot (0-1999 ms)."""
    return (c * 7919) % 2000


def generate(path: Path, days: int, channels: int, segment_s: int) -> dict[str, float]:
    """Write the index of ``days`` x ``channels`` at ``path``; returns what it took."""
    part = path.with_name(path.name + ".part")
    for leftover in (part, Path(f"{part}-wal"), Path(f"{part}-shm")):
        leftover.unlink(missing_ok=True)
    RecordIndex(part).close()  # the recorder's schema, indexes and all
    db = sqlite3.connect(part, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -2000000")  # 2 GB: the path index stays in memory
    ids = channel_ids(channels)
    offsets = [offset_ms(c) for c in range(channels)]
    codecs = ["h265" if c % 5 == 4 else "h264" for c in range(channels)]
    pts0 = [(c * 104_729_113) % PTS_WRAP for c in range(channels)]
    prev: list[str | None] = [None] * channels
    per_day = int(DAY) // segment_s
    pts_step = (segment_s * FPS - 1) * (90000 // FPS)
    sql = (
        "INSERT INTO segments (channel_id, path, start_wall, end_wall, start_pts, end_pts,"
        " bytes, frames, codec, sha256, prev_sha256, recovered)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
    )
    began = time.perf_counter()
    rows = 0
    for d in range(days):
        date = datetime.fromtimestamp(T0 + d * DAY, UTC)
        ymd, folder = date.strftime("%Y%m%d"), date.strftime("%Y-%m-%d")
        batch = []
        for k in range(per_day):
            slot = k * segment_s
            base = T0 + d * DAY + slot
            for c in range(channels):
                off = offsets[c]
                second = slot + off // 1000
                name = (
                    f"{ymd}T{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}"
                    f".{off % 1000:03d}.ps"
                )
                start = base + off / 1000.0
                pts = (pts0[c] + int((d * DAY + slot) * 90000)) % PTS_WRAP
                sha = hashlib.sha256(f"{ids[c]}/{d}/{k}".encode()).hexdigest()
                batch.append(
                    (
                        ids[c],
                        f"{ids[c]}/{folder}/{name}",
                        start,
                        start + segment_s,
                        pts,
                        (pts + pts_step) % PTS_WRAP,
                        15_000_000 + (c * 7_919 + k * 104_729) % 1_000_000 - 500_000,
                        segment_s * FPS,
                        codecs[c],
                        sha,
                        prev[c],
                    )
                )
                prev[c] = sha
        db.execute("BEGIN")
        db.executemany(sql, batch)
        db.execute("COMMIT")
        rows += len(batch)
        print(
            f"  generated day {d + 1}/{days}: {rows:,} rows, {time.perf_counter() - began:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    seconds = time.perf_counter() - began
    os.replace(part, path)
    for leftover in (Path(f"{part}-wal"), Path(f"{part}-shm")):
        leftover.unlink(missing_ok=True)
    return {"rows": rows, "seconds": seconds, "bytes": path.stat().st_size}


# -- measuring --------------------------------------------------------------------------------


def db_bytes(path: Path) -> int:
    """The database file plus its WAL."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def breakdown(path: Path) -> tuple[dict[str, int], int, int]:
    """Bytes per table and index (dbstat), the page size and the free pages."""
    db = sqlite3.connect(path)
    try:
        sizes = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        page = db.execute("PRAGMA page_size").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        db.close()
    return sizes, page, free


def query_plans(index: RecordIndex, call: Callable[[], object]) -> str:
    """``EXPLAIN QUERY PLAN`` of the SELECTs ``call`` runs on ``index``'s connection."""
    statements: list[str] = []
    index._db.set_trace_callback(statements.append)
    try:
        call()
    finally:
        index._db.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            rows = index._query(f"EXPLAIN QUERY PLAN {sql}")
            plans.append("; ".join(row[-1] for row in rows))
    return " / ".join(plans)


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """median (min-max) of ``values`` times ``scale``."""
    med = statistics.median(values) * scale
    return f"{med:.{digits}f} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rows_bytes(rows: list[SegmentRow]) -> int:
    """Memory held by a list of rows: the list, each row object and its values (from a sample;
    small ints and the like shared by Python are counted too, so it is an upper bound)."""
    sample = rows[:: max(1, len(rows) // 2000)]
    each = sum(
        sys.getsizeof(row) + sum(sys.getsizeof(getattr(row, f)) for f in SegmentRow.__slots__)
        for row in sample
    ) / len(sample)
    return int(sys.getsizeof(rows) + each * len(rows))


def create_files(root: Path, index: RecordIndex, cutoff: float) -> tuple[int, float]:
    """Empty files for every segment ending before ``cutoff``; returns (count, seconds)."""
    query = "SELECT path FROM segments WHERE end_wall < ?"
    paths = [row[0] for row in index._query(query, (cutoff,))]
    began = time.perf_counter()
    made: set[str] = set()
    top = os.fspath(root)
    for rel in paths:
        full = os.path.join(top, rel)
        folder = os.path.dirname(full)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return len(paths), time.perf_counter() - began


class Inserter(threading.Thread):
    """The recorder's writer: a segment row every ``interval`` seconds on its own connection."""

    def __init__(self, path: Path, start_wall: float, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.start_wall = start_wall
        self.interval = interval
        self.waits: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        channel = device_id(9_999_999)
        with RecordIndex(self.path) as index:
            prev = index.chain_head(channel)
            k = 0
            self.ready.set()
            while not self.stop.wait(self.interval):
                start = self.start_wall + k * 60.0
                sha = hashlib.sha256(f"{channel}/{start}".encode()).hexdigest()
                began = time.perf_counter()
                index.add_segment(
                    channel_id=channel,
                    path=f"{channel}/live/{self.start_wall:.0f}-{k}.ps",
                    start_wall=start,
                    end_wall=start + 60.0,
                    start_pts=0,
                    end_pts=90000,
                    bytes=15_000_000,
                    frames=1500,
                    codec="h264",
                    sha256=sha,
                    prev_sha256=prev,
                )
                self.waits.append(time.perf_counter() - began)
                prev = sha
                k += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days of recordings indexed")
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--segment", type=int, default=60, help="segment seconds")
    parser.add_argument("--sweeps", type=int, default=3, help="daily sweeps measured")
    parser.add_argument("--noop-runs", type=int, default=20)
    parser.add_argument("--search-runs", type=int, default=200)
    parser.add_argument("--rate-runs", type=int, default=5, help="bytes_per_day runs")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sensing-node-bench" / "retention",
        help="where the generated index is cached and the work copy lives",
    )
    parser.add_argument("--no-files", action="store_true", help="sweep without creating files")
    parser.add_argument("--regenerate", action="store_true", help="ignore a cached index")
    parser.add_argument("--keep", action="store_true", help="keep the work copy and files")
    args = parser.parse_args()
    if args.sweeps >= args.days:
        parser.error("--sweeps must be below --days")

    days, channels, segment_s = args.days, args.channels, args.segment
    per_day = int(DAY) // segment_s
    retention = float(days)
    allow_short = days < MIN_RETENTION_DAYS
    args.dir.mkdir(parents=True, exist_ok=True)
    cache = args.dir / f"index-v{LAYOUT}-{days}d-{channels}ch-{segment_s}s.sqlite3"
    meta_path = cache.with_name(cache.name + ".json")
    if args.regenerate or not cache.exists() or not meta_path.exists():
        print(f"generating {cache} ...", file=sys.stderr, flush=True)
        meta_path.unlink(missing_ok=True)
        meta = generate(cache, days, channels, segment_s)
        meta_path.write_text(json.dumps(meta))
    meta = json.loads(meta_path.read_text())
    rows_total = int(meta["rows"])

    load_before = os.getloadavg()
    work_dir = args.dir / "work"
    shutil.rmtree(work_dir, ignore_errors=True)
    root = work_dir / "recordings"
    root.mkdir(parents=True)
    work = root / "index.sqlite3"
    began = time.perf_counter()
    shutil.copyfile(cache, work)
    copy_s = time.perf_counter() - began

    # The segments_end index on a database written before it existed: built when opened.
    db = sqlite3.connect(work)
    db.execute("DROP INDEX IF EXISTS segments_end")
    db.close()
    began = time.perf_counter()
    RecordIndex(work).close()
    upgrade_s = time.perf_counter() - began

    sizes, page, free_pages = breakdown(work)
    size_before = db_bytes(work)
    end_of_data = T0 + days * DAY
    now_noop = end_of_data  # every row is within retention, the newest ends now
    log_path = work_dir / "retention.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("recorder.retention")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    index = RecordIndex(work)
    rng = random.Random(28181)
    ids = channel_ids(channels)
    plans = {
        "sweep (ids to delete)": query_plans(
            index, lambda: sweep(root, index, retention, now_noop, allow_short=allow_short)
        ),
        "`segments(channel, start, end)`": query_plans(
            index, lambda: index.segments(ids[0], end_of_data - 3600, end_of_data)
        ),
        "`bytes_per_day(since)`": query_plans(
            index, lambda: index.bytes_per_day(since=end_of_data - 7 * DAY)
        ),
    }

    # 1. the hourly sweep with nothing to delete
    noop: list[float] = []
    for _ in range(args.noop_runs):
        began = time.perf_counter()
        assert sweep(root, index, retention, now_noop, allow_short=allow_short) == []
        noop.append(time.perf_counter() - began)

    # 2. search: one hour of one channel
    last_hour: list[float] = []
    any_hour: list[float] = []
    for n in range(args.search_runs):
        channel = rng.choice(ids)
        if n % 2:
            start = end_of_data - 3600.0
            series = last_hour
        else:
            start = T0 + rng.randrange(days * 24) * 3600.0
            series = any_hour
        began = time.perf_counter()
        found = index.segments(channel, start, start + 3600.0)
        series.append(time.perf_counter() - began)
        assert 3600 // segment_s <= len(found) <= 3600 // segment_s + 1, len(found)

    # 3. storage planning
    rate: list[float] = []
    for _ in range(args.rate_runs):
        began = time.perf_counter()
        per_channel = index.bytes_per_day(since=end_of_data - 7 * DAY)
        rate.append(time.perf_counter() - began)
        assert len(per_channel) == channels

    # 4. daily sweeps
    sweeps = []
    for k in range(1, args.sweeps + 1):
        cutoff = T0 + k * DAY + 30.0  # every segment of day k-1 has ended, none of day k
        now = cutoff + retention * DAY
        files, create_s = (0, 0.0) if args.no_files else create_files(root, index, cutoff)
        before = db_bytes(work)
        began = time.perf_counter()
        plan_ids = index.segment_ids_ended_before(cutoff)
        plan_s = time.perf_counter() - began
        assert len(plan_ids) == channels * per_day, len(plan_ids)
        lines_before = sum(1 for _ in open(log_path)) if log_path.exists() else 0
        writer = Inserter(work, end_of_data + k * DAY)
        writer.start()
        writer.ready.wait()
        time.sleep(0.2)
        began = time.perf_counter()
        deleted = sweep(
            root, index, retention, now, allow_short=allow_short, batch_size=args.batch_size
        )
        sweep_s = time.perf_counter() - began
        time.sleep(0.2)
        writer.stop.set()
        writer.join()
        handler.flush()
        lines = sum(1 for _ in open(log_path)) - lines_before
        assert len(deleted) == channels * per_day
        held = rows_bytes(deleted)
        del deleted
        left = [p for p in (root / ids[0]).iterdir()] if (root / ids[0]).exists() else []
        assert all(p.name != datetime.fromtimestamp(T0 + (k - 1) * DAY, UTC).strftime("%Y-%m-%d")
                   for p in left)
        sweeps.append(
            {
                "rows": channels * per_day,
                "files": files,
                "create_s": create_s,
                "plan_s": plan_s,
                "sweep_s": sweep_s,
                "before": before,
                "after": db_bytes(work),
                "log_lines": lines,
                "inserts": len(writer.waits),
                "insert_max": max(writer.waits) if writer.waits else 0.0,
                "insert_p99": percentile(writer.waits, 0.99) if writer.waits else 0.0,
                "insert_median": statistics.median(writer.waits) if writer.waits else 0.0,
                "held": held,
            }
        )
        print(f"  sweep {k}: {sweep_s:.2f} s", file=sys.stderr, flush=True)
    deletions = index._query("SELECT COUNT(*) FROM deletions")[0][0]
    assert deletions == sum(s["rows"] for s in sweeps)
    index.close()
    logger.removeHandler(handler)
    handler.close()
    _, _, free_after = breakdown(work)
    size_after = db_bytes(work)

    load = (load_before, os.getloadavg())
    report(
        load=load,
        args=args,
        meta=meta,
        rows_total=rows_total,
        copy_s=copy_s,
        upgrade_s=upgrade_s,
        sizes=sizes,
        page=page,
        free_pages=free_pages,
        free_after=free_after,
        size_before=size_before,
        size_after=size_after,
        plans=plans,
        noop=noop,
        last_hour=last_hour,
        any_hour=any_hour,
        rate=rate,
        sweeps=sweeps,
    )
    if not args.keep:
        shutil.rmtree(work_dir, ignore_errors=True)


def report(*, load, args, meta, rows_total, copy_s, upgrade_s, sizes, page, free_pages, free_after,
           size_before, size_after, plans, noop, last_hour, any_hour, rate, sweeps) -> None:
    days, channels = args.days, args.channels
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    command = "python bench/retention.py" + (
        "" if (days, channels) == (30, 300) else f" --days {days} --channels {channels}"
    )
    if args.no_files:
        command += " --no-files"
    per_day_rows = rows_total / days
    out = []
    out.append(f"### Retention sweep and index size ({days} days x {channels} channels)")
    out.append("")
    out.append(
        f"`{command}` on {os.cpu_count()} CPUs ({cpu}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}; index in WAL mode, `synchronous = FULL` (the recorder's "
        f"settings), page cache warm. {rows_total:,} segment rows of {args.segment} s, "
        f"generated in {meta['seconds']:.0f} s (not measured), cached as a "
        f"{meta['bytes'] / MB:,.0f} MB file; copied for the run in {copy_s:.1f} s. Load average "
        f"(1 min) {load[0][0]:.2f} at the start, {load[1][0]:.2f} at the end: other work on the "
        f"machine shows in the sweep times, which are mostly disk writes (fsync, checkpoints)."
    )
    out.append("")
    out.append("**Index size**")
    out.append("")
    out.append("| | bytes | per day | per segment row |")
    out.append("|---|---:|---:|---:|")
    out.append(
        f"| whole database | {size_before / MB:,.0f} MB | {size_before / days / MB:,.1f} MB | "
        f"{size_before / rows_total:.0f} B |"
    )
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if size >= 1 << 20:
            out.append(
                f"| `{name}` | {size / MB:,.0f} MB | {size / days / MB:,.1f} MB | "
                f"{size / rows_total:.0f} B |"
            )
    out.append("")
    out.append(
        f"{per_day_rows:,.0f} rows a day. Building `segments_end` when `RecordIndex` opens a "
        f"database of this size that lacks it (once, on upgrade): {upgrade_s:.1f} s."
    )
    out.append("")
    out.append("**Sweeps and queries** (seconds or milliseconds: median (min-max))")
    out.append("")
    out.append("| measurement | runs | result |")
    out.append("|---|---:|---|")
    rows = [s["rows"] for s in sweeps]
    out.append(
        f"| daily sweep, {rows[0]:,} rows{'' if args.no_files else ' and files'} "
        f"(batches of {args.batch_size:,}), s | {len(sweeps)} | "
        f"{spread([s['sweep_s'] for s in sweeps], 1, 2)} |"
    )
    out.append(
        f"| daily sweep, rows (= files) per second | {len(sweeps)} | "
        f"{spread([s['rows'] / s['sweep_s'] for s in sweeps], 1, 0)} |"
    )
    out.append(
        f"| of which the plan (ids of the rows to delete), s | {len(sweeps)} | "
        f"{spread([s['plan_s'] for s in sweeps], 1, 2)} |"
    )
    if not args.no_files:
        out.append(
            f"| creating that day's {sweeps[0]['files']:,} empty files (setup, not in the "
            f"sweep), s | {len(sweeps)} | {spread([s['create_s'] for s in sweeps], 1, 2)} |"
        )
    inserts = sum(s["inserts"] for s in sweeps)
    for label, key in (("median", "insert_median"), ("99th percentile", "insert_p99"),
                       ("longest", "insert_max")):
        out.append(
            f"| segment insert by a second connection during a sweep ({inserts} inserts), "
            f"{label}, ms | {len(sweeps)} | {spread([s[key] for s in sweeps], 1000, 0)} |"
        )
    out.append(
        f"| INFO/WARNING log lines per daily sweep | {len(sweeps)} | "
        f"{spread([float(s['log_lines']) for s in sweeps], 1, 0)} |"
    )
    out.append(
        f"| memory held by the list of deleted rows `sweep()` returns, MB | {len(sweeps)} | "
        f"{spread([s['held'] / MB for s in sweeps], 1, 0)} |"
    )
    out.append(
        f"| sweep with nothing to delete (hourly), ms | {len(noop)} | {spread(noop, 1000, 2)} |"
    )
    out.append(
        f"| `segments(channel, start, end)`, the last hour, ms | {len(last_hour)} | "
        f"{spread(last_hour, 1000, 2)} |"
    )
    out.append(
        f"| `segments(channel, start, end)`, an hour at random, ms | {len(any_hour)} | "
        f"{spread(any_hour, 1000, 2)} |"
    )
    out.append(
        f"| `bytes_per_day(since=now - 7 days)`, s | {len(rate)} | {spread(rate, 1, 2)} |"
    )
    out.append("")
    out.append(
        f"Database file before the sweeps {size_before / MB:,.0f} MB, after {len(sweeps)} "
        f"daily sweeps {size_after / MB:,.0f} MB (file plus WAL): deleted rows leave free pages "
        f"({free_pages * page / MB:,.0f} MB free before, {free_after * page / MB:,.0f} MB "
        f"after) that the next days' inserts reuse, so the file does not shrink; "
        f"the `deletions` table grows by {rows[0]:,} rows a day."
    )
    out.append("")
    out.append("Query plans (`EXPLAIN QUERY PLAN`):")
    out.append("")
    for name, plan in plans.items():
        out.append(f"- {name}: `{plan}`")
    print("\n".join(out))


if __name__ == "__main__":
    main()
