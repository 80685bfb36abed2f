"""Recording benchmark: N simulated 4 Mbit/s cameras received and written to disk by one process.

    .venv/bin/python bench/record.py [--streams 300,100] [--runs 3] [--duration 75]
                                     [--warmup 5] [--segment 60] [--fsync 2] [--disk-gb 6]
                                     [--dir DIR] [--writer-cpu C] [--out bench/results/record.md]

For every stream count and run, two passes with the same traffic, one right after the other:

  ingest  the node's receive path, as in `bench/ingest.py`: one
          `sensing_node.transport.rtp.UdpRtpReceiver` per stream from a `PortPool`, expecting
          its source and SSRC, with a `MediaIngest` sink whose demuxed access units are counted.
  record  the same, and every access unit is also handed to one `recorder.service.Recorder`
          (`submit(channel_id, unit, wall)`), whose writer thread batches the PS bytes into
          ~1 MiB writes, hashes them (SHA-256), writes out and fdatasyncs every open segment in
          one pass every `--fsync` seconds (the node's `recording.fsync_s`; 0: off), fsyncs each
          segment when it closes and indexes it in SQLite. The files go to a temporary
          directory on a real disk and are deleted after the pass.

The receiver (uvloop) is pinned to CPU 0 with all its threads, the sender
(`bench/ingest_sender.py`) to CPU 1. After a warm-up, the receiver's counters and CPU times are
read at the start and at the end of the measurement window: process CPU (`time.process_time()`,
all threads), the event-loop thread's CPU (`time.thread_time()`, read in the loop thread) and the
writer thread's CPU (/proc/self/task/TID/schedstat). The difference of the process's CPU per
packet between the two passes is what recording adds; the loop thread's share of it is what can
delay packet reads. `os.fsync` and `os.fdatasync` are wrapped in the receiver process (count,
total and longest time; file and directory fsyncs apart, the sync pass's fdatasyncs apart), and
so is the index's `add_segment` (SQLite commit with `synchronous = FULL`). A 20 ms timer on the
loop measures how late the loop runs it (loop lag) and reads the recorder's queue depth (units
and bytes).

With 60 s segments the window has to be at least 70 s long for every stream to close a segment
inside it (its first segment starts at its first key frame after the receiver starts); with
`--segment 10` shorter windows do. Before the passes, a quick disk check writes `--disk-gb` GiB
in 1 MiB writes to the same file system and fsyncs it, and the SHA-256 and buffered-write
speeds are measured on 1 MiB blocks.

Prints the report (markdown) and writes it to `--out` after every pass (marked incomplete until
the end). Internal role: `bench/record.py receive --kind ingest|record --streams N ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import stat as statmod
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, pin  # noqa: E402
from ingest_sender import SSRC_BASE, clip, clip_stats  # noqa: E402

BENCH = Path(__file__).resolve().parent
PY = sys.executable
OUT = BENCH / "results" / "record.md"
HOST = "127.0.0.1"
PORTS = (36000, 37999)  # PortPool range of the receiver (apart from bench/ingest.py's)
CHANNEL_PREFIX = "3101120000131"  # area 3101120000, type 131 (camera); + 7-digit serial
LAG_TICK = 0.02  # loop-lag probe period, s

# Goal from the issue: recording, hashing included, adds at most 1.5 µs per packet over
# ingest alone, with zero loss.
GOAL_ADDED_US = 1.5
GOAL_STREAMS = 300
SATURATED = 0.95  # a receiver using this much of its core is not keeping up with ease
BACKLOG_OK_MS = 100


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- receiver process (CPU 0) ----------------------------------------------------------------


def task_cpu_seconds(tid: int) -> float | None:
    """CPU time of one thread of this process (ns counter of schedstat, else clock ticks)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def task_user_sys(tid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of one thread of this process (clock ticks of stat)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, ValueError, IndexError):
        return None


def task_switches(tid: int) -> list[int] | None:
    """Voluntary and involuntary context switches of one thread of this process."""
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            found = {}
            for line in f:
                if "ctxt_switches" in line:
                    key, _, value = line.partition(":")
                    found[key] = int(value)
        return [found["voluntary_ctxt_switches"], found["nonvoluntary_ctxt_switches"]]
    except (OSError, ValueError, KeyError):
        return None


class Timed:
    """Count, total and longest duration of the calls of a wrapped function, by kind."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}  # kind -> [count, total s, max s]
        self.lock = threading.Lock()

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            s = self.stats.setdefault(kind, [0, 0.0, 0.0])
            s[0] += 1
            s[1] += seconds
            s[2] = max(s[2], seconds)

    def take(self) -> dict[str, list[float]]:
        """The stats so far (the maxima are reset, so that each reading has its own)."""
        with self.lock:
            out = {k: list(v) for k, v in self.stats.items()}
            for v in self.stats.values():
                v[2] = 0.0
        return out


def install_fsync_timer(timed: Timed) -> None:
    real = os.fsync
    real_data = os.fdatasync
    perf = time.perf_counter

    def fsync(fd: Any) -> None:
        try:
            kind = "dir" if statmod.S_ISDIR(os.fstat(fd).st_mode) else "file"
        except OSError:
            kind = "file"
        t0 = perf()
        try:
            real(fd)
        finally:
            timed.add(kind, perf() - t0)

    def fdatasync(fd: Any) -> None:  # the recorder's sync pass, one per open segment
        t0 = perf()
        try:
            real_data(fd)
        finally:
            timed.add("sync", perf() - t0)

    os.fsync = fsync  # segments.py looks them up on the os module at each call
    os.fdatasync = fdatasync


def profile_writer_thread(path: str) -> None:
    """Profile the recorder's writer thread for its whole life (dumped when it ends)."""
    from recorder.service import Recorder

    real = Recorder._run

    def run(self: Any) -> None:
        prof = cProfile.Profile(time.thread_time)  # CPU time, not time spent waiting
        prof.enable()
        try:
            real(self)
        finally:
            prof.disable()
            prof.dump_stats(path)

    Recorder._run = run  # type: ignore[method-assign]


async def receive(args: argparse.Namespace) -> None:
    from sensing_node.transport.rtp import MediaIngest, PortPool, UdpRtpReceiver

    loop = asyncio.get_running_loop()
    n = args.streams
    loop_tid = threading.get_native_id()
    fsyncs, index_adds = Timed(), Timed()
    rec = None
    writer_tid = None
    pinned_writer = ""
    if args.kind == "record":
        from recorder.service import Recorder

        install_fsync_timer(fsyncs)
        if args.profile_writer:
            profile_writer_thread(args.profile_writer)
        rec = Recorder(args.root, segment_s=args.segment, tz=UTC, fsync_s=args.fsync)
        real_add = rec.index.add_segment

        def add_segment(**kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real_add(**kw)
            finally:
                index_adds.add("add_segment", time.perf_counter() - t0)

        rec.index.add_segment = add_segment  # type: ignore[method-assign]
        writer_tid = rec._thread.native_id
        if args.writer_cpu is not None and writer_tid is not None:
            try:
                os.sched_setaffinity(writer_tid, {args.writer_cpu})
                pinned_writer = f"writer thread on cpu {args.writer_cpu}"
            except OSError as exc:
                pinned_writer = f"writer thread not pinned: {exc}"

    pool = PortPool(*PORTS)
    receivers: list[Any] = []
    ports: list[int] = []
    units = [0] * n
    now = time.time
    for i in range(n):
        if rec is not None:
            def on_units(batch: list[Any], i: int = i, cid: str = f"{CHANNEL_PREFIX}{i:07d}",
                         submit: Any = rec.submit) -> None:
                units[i] += len(batch)
                for unit in batch:
                    submit(cid, unit, now())
        else:
            def on_units(batch: list[Any], i: int = i) -> None:
                units[i] += len(batch)

        ur = await UdpRtpReceiver.open(HOST, pool, MediaIngest(on_units=on_units))
        ur.expect(HOST, SSRC_BASE + i)
        receivers.append(ur)
        ports.append(ur.port)

    # Loop lag: how late a 20 ms timer runs, and the recorder's queue depth at the same beats.
    lags: list[float] = []
    qmax = [0, 0]  # units, bytes

    def tick(due: float) -> None:
        t = loop.time()
        lags.append(t - due)
        if rec is not None:
            q, qb = rec.queue_depth, rec.queue_bytes
            if q > qmax[0]:
                qmax[0] = q
            if qb > qmax[1]:
                qmax[1] = qb
        nxt = t + LAG_TICK
        loop.call_at(nxt, tick, nxt)

    first = loop.time() + LAG_TICK
    loop.call_at(first, tick, first)

    def snapshot() -> dict[str, Any]:
        """All counters, read in the loop thread."""
        out: dict[str, Any] = {
            "t": time.monotonic(),
            "cpu": time.process_time(),
            "loop_cpu": time.thread_time(),
            "loop_cpu_proc": task_cpu_seconds(loop_tid),
            "writer_cpu": task_cpu_seconds(writer_tid) if writer_tid is not None else None,
            "writer_us": task_user_sys(writer_tid) if writer_tid is not None else None,
            "loop_us": task_user_sys(loop_tid),
            "loop_cs": task_switches(loop_tid),
            "writer_cs": task_switches(writer_tid) if writer_tid is not None else None,
            "packets": [r.packets for r in receivers],
            "units": list(units),
            "rtp_lost": sum(r.lost for r in receivers),
            "foreign": sum(r.dropped_foreign for r in receivers),
            "invalid": sum(r.dropped_invalid for r in receivers),
            "sink_errors": sum(r.sink_errors for r in receivers),
        }
        ordered = sorted(lags)
        out["lag_ms"] = {
            "n": len(ordered),
            "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
            if ordered else 0.0,
            "max": 1000 * ordered[-1] if ordered else 0.0,
        }
        lags.clear()
        if rec is not None:
            out["rec"] = recorder_counters(rec)
            out["rec"]["queue_max"], out["rec"]["queue_bytes_max"] = qmax
            qmax[:] = [rec.queue_depth, rec.queue_bytes]
            out["fsync"] = fsyncs.take()
            out["index"] = index_adds.take()
        return out

    done = loop.create_future()

    def on_loop(fn: Any) -> Any:
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:  # reported to the orchestrator
                result.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return result.result(60)

    keep: list[Any] = []

    def commands() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                reply = on_loop(snapshot)
            elif cmd == "close":
                # Stop recording: drain the queue, close (fsync, index) every open segment.
                reply = {}
                if rec is not None:
                    t0 = time.monotonic()
                    rec.close(120)
                    reply = {"close_s": time.monotonic() - t0,
                             "alive": rec._thread.is_alive(),
                             "rec": recorder_counters(rec), "fsync": fsyncs.take(),
                             "index": index_adds.take()}
            elif cmd == "profile on":
                profiler = cProfile.Profile(time.thread_time)
                keep.append(profiler)
                on_loop(profiler.enable)
                reply = {}
            elif cmd.startswith("profile off"):
                profiler = keep[-1]
                on_loop(profiler.disable)
                profiler.dump_stats(cmd.split(maxsplit=2)[2])
                reply = {}
            else:
                break
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        loop.call_soon_threadsafe(finish)

    threading.Thread(target=commands, name="commands", daemon=True).start()
    print(json.dumps({"pid": os.getpid(), "ports": ports, "pinned": args.pinned,
                      "writer": pinned_writer}), flush=True)
    await done
    if rec is not None and not rec._closed:
        rec.close(60)


def recorder_counters(rec: Any) -> dict[str, Any]:
    return {"units": rec.units, "bytes": rec.bytes, "segments_closed": rec.segments_closed,
            "write_errors": rec.write_errors, "dropped_units": rec.dropped_units,
            "queue": rec.queue_depth, "last_error": rec.last_error,
            "sync_passes": rec.sync_passes, "syncs": rec.syncs, "sync_s": rec.sync_s}


# ----- checks of the machine -------------------------------------------------------------------


def fs_of(path: Path) -> dict[str, str]:
    """Device, mount point and type of the file system holding `path` (/proc/mounts)."""
    path = path.resolve()
    best = {"device": "?", "mount": "/", "type": "?"}
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, kind = line.split()[:3]
        mnt = mnt.replace("\\040", " ")
        if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) >= len(best["mount"]):
            best = {"device": dev, "mount": mnt, "type": kind}
    return best


def disk_check(directory: Path, gib: float) -> dict[str, float]:
    """Write `gib` GiB in 1 MiB writes (random bytes, one block reused) to a file in
    `directory`, then fsync it: the buffered-write rate, and the rate to the disk counting
    the fsync (what the disk sustains when the page cache cannot hide it)."""
    block = os.urandom(1 << 20)
    count = int(gib * 1024)
    path = directory / "disk-check.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(count):
            os.write(fd, block)
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
        path.unlink()
    size = count * len(block)
    return {"bytes": size, "write_s": t1 - t0, "fsync_s": t2 - t1,
            "buffered_mb_s": size / (t1 - t0) / 1e6, "disk_mb_s": size / (t2 - t0) / 1e6}


def component_costs(directory: Path) -> dict[str, float]:
    """SHA-256 and buffered 1 MiB writes (page cache, no fsync) per 1,400-byte packet."""
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    rounds = 256
    t0 = time.perf_counter()
    for _ in range(rounds):
        h.update(block)
    sha_s = time.perf_counter() - t0
    path = directory / "write-check.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, block)
        write_s = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    size = rounds * len(block)
    return {"sha_gb_s": size / sha_s / 1e9, "sha_us_per_packet": 1e6 * sha_s * 1400 / size,
            "write_gb_s": size / write_s / 1e9,
            "write_us_per_packet": 1e6 * write_s * 1400 / size}


# ----- orchestration ---------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def iowait_seconds() -> float:
    with open("/proc/stat") as f:
        return int(f.readline().split()[5]) / os.sysconf("SC_CLK_TCK")


def udp_drops() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Udp:")]
    head, values = lines[0], lines[1]
    return int(values[head.index("RcvbufErrors")])


def dir_bytes(path: Path) -> tuple[int, int]:
    """Bytes and number of segment files under `path`."""
    size = files = 0
    for base, _dirs, names in os.walk(path):
        for name in names:
            if name.endswith((".ps", ".ps.part")):
                files += 1
                size += os.path.getsize(os.path.join(base, name))
    return size, files


class Receiver:
    def __init__(self, kind: str, n: int, args: argparse.Namespace, root: Path,
                 profile_writer: str | None) -> None:
        cmd = [PY, str(Path(__file__).resolve()), "receive", "--kind", kind, "--streams", str(n),
               "--segment", str(args.segment), "--fsync", str(args.fsync), "--root", str(root)]
        if args.cpus[0] is not None:
            cmd += ["--cpu", str(args.cpus[0])]
        if args.writer_cpu is not None:
            cmd += ["--writer-cpu", str(args.writer_cpu)]
        if profile_writer:
            cmd += ["--profile-writer", profile_writer]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, start_new_session=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"{kind} receiver did not start")
        ready = json.loads(line)
        self.pid: int = ready["pid"]
        self.ports: list[int] = ready["ports"]
        self.pinned: str = ready["pinned"] + (f", {ready['writer']}" if ready["writer"] else "")

    def cmd(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"receiver ended (command {text!r})")
        return json.loads(line)

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(60)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)


def drained(recv: Receiver, settle: float, limit: float = 20.0) -> dict[str, Any]:
    """Final counters once the receiver has read what its sockets still held."""
    deadline = time.monotonic() + limit
    last = recv.cmd("stats")
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = recv.cmd("stats")
        if sum(now["packets"]) == sum(last["packets"]):
            return now
        last = now
    return last


def sent_by(progress: list[list[float]], t: float) -> float:
    prev_t, prev_n = progress[0]
    if t <= prev_t:
        return 0.0
    for now, n in progress[1:]:
        if now >= t:
            return prev_n + (n - prev_n) * (t - prev_t) / max(1e-9, now - prev_t)
        prev_t, prev_n = now, n
    return float(prev_n)


def one_pass(kind: str, n: int, args: argparse.Namespace, tmp: Path, run: int
             ) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"{kind}-{n}-", dir=tmp))
    prof_loop = prof_writer = None
    if args.profile and kind == "record":
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        base = Path(args.profile).resolve()
        prof_loop = str(base / f"record-loop-{n}-{run}.prof")
        prof_writer = str(base / f"record-writer-{n}-{run}.prof")
    load = os.getloadavg()
    recv = Receiver(kind, n, args, root, prof_writer)
    sender: subprocess.Popen[bytes] | None = None
    closing: dict[str, Any] = {}
    on_disk = (0, 0)
    try:
        targets = tmp / f"targets-{kind}-{n}.json"
        targets.write_text(json.dumps({"host": HOST, "ports": recv.ports}))
        out = tmp / f"sender-{kind}-{n}.json"
        total = args.warmup + args.duration + args.tail
        cmd = [PY, str(BENCH / "ingest_sender.py"), "--targets", str(targets), "--transport",
               "udp", "--duration", str(total), "--out", str(out), "--session-start"]
        if args.cpus[1] is not None:
            cmd += ["--cpu", str(args.cpus[1])]
        sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True)
        line = sender.stdout.readline().decode()  # type: ignore[union-attr]
        if not line.startswith("START "):
            raise RuntimeError(f"sender did not start: {line!r}")
        start = float(line.split()[1])
        drops0 = udp_drops()
        time.sleep(max(0.0, start + args.warmup - time.monotonic()))
        busy0, iow0 = busy_cpu_seconds(), iowait_seconds()
        if prof_loop:
            recv.cmd("profile on")
        a = recv.cmd("stats")
        time.sleep(max(0.0, start + args.warmup + args.duration - time.monotonic()))
        b = recv.cmd("stats")
        if prof_loop:
            recv.cmd(f"profile off {prof_loop}")
        busy1, iow1 = busy_cpu_seconds(), iowait_seconds()
        sender.wait(total + 120)
        if sender.returncode != 0:
            raise RuntimeError(f"sender failed ({sender.returncode})")
        sent = json.loads(out.read_text())
        c = drained(recv, args.drain)
        drops = udp_drops() - drops0
        if kind == "record":
            closing = recv.cmd("close")
            on_disk = dir_bytes(root)
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait(10)
        recv.stop()
        shutil.rmtree(root, ignore_errors=True)
    r = summarize(kind, n, a, b, c, sent, drops, busy1 - busy0, recv.pinned, closing, on_disk)
    r.update(run=run, loadavg=load, iowait=(iow1 - iow0) / max(1e-9, r["window_s"]))
    return r


def delta(b: dict[str, list[float]], a: dict[str, list[float]], kind: str) -> dict[str, float]:
    """count, total s and max s of one timed kind between two readings (max: since a)."""
    x = b.get(kind, [0, 0.0, 0.0])
    y = a.get(kind, [0, 0.0, 0.0])
    return {"count": x[0] - y[0], "total_s": x[1] - y[1], "max_s": x[2] if x[0] > y[0] else 0.0}


def summarize(kind: str, n: int, a: dict[str, Any], b: dict[str, Any], c: dict[str, Any],
              snd: dict[str, Any], drops: int, busy: float, pinned: str,
              closing: dict[str, Any], on_disk: tuple[int, int]) -> dict[str, Any]:
    window = b["t"] - a["t"]
    cpu = b["cpu"] - a["cpu"]
    loop_cpu = b["loop_cpu"] - a["loop_cpu"]
    packets = sum(b["packets"]) - sum(a["packets"])
    sent = snd["sent_packets"]
    got = c["packets"]
    per_stream = [s - g for s, g in zip(sent, got, strict=True)]
    marks = [sent_by(snd["progress"], t) for t in (a["t"], b["t"])]
    rate = (marks[1] - marks[0]) / window
    out: dict[str, Any] = {
        "kind": kind, "streams": n, "window_s": window, "pinned": pinned,
        "cpu_s": cpu, "cpu_share": cpu / window,
        "window_packets": packets, "window_sent": marks[1] - marks[0],
        "packets_per_s": packets / window,
        "us_per_packet": 1e6 * cpu / max(1, packets),
        "loop_cpu_s": loop_cpu, "loop_share": loop_cpu / window,
        "loop_us_per_packet": 1e6 * loop_cpu / max(1, packets),
        "sent": sum(sent), "received": sum(got),
        "lost": sum(max(0, x) for x in per_stream),
        "streams_with_loss": sum(1 for x in per_stream if x > 0),
        "udp_rcvbuf_drops": drops,
        "rtp_lost": c["rtp_lost"], "sink_errors": c["sink_errors"],
        "backlog_ms": 1000 * max(0, marks[1] - sum(b["packets"])) / max(1.0, rate),
        "units_per_s": (sum(b["units"]) - sum(a["units"])) / window,
        "units": sum(c["units"]),
        "units_after_warmup": sum(c["units"]) - sum(a["units"]),
        "lag_p99_ms": b["lag_ms"]["p99"], "lag_max_ms": b["lag_ms"]["max"],
        "sender_cpu_share": snd["cpu_s"] / snd["wall_s"],
        "lateness_p99_ms": snd["lateness_ms"]["p99"],
        "lateness_max_ms": snd["lateness_ms"]["max"],
        "send_errors": snd["send_errors"],
    }
    sender_cpu = snd["cpu_s"] * window / snd["wall_s"]
    out["other_load"] = max(0.0, (busy - cpu - sender_cpu) / window)
    if b.get("writer_cpu") is not None and a.get("writer_cpu") is not None:
        w = b["writer_cpu"] - a["writer_cpu"]
        out.update(writer_cpu_s=w, writer_share=w / window,
                   writer_us_per_packet=1e6 * w / max(1, packets))
    for who in ("writer", "loop"):
        if b.get(f"{who}_cs") and a.get(f"{who}_cs"):
            out[f"{who}_switches_per_s"] = [(y - x) / window
                                            for x, y in zip(a[f"{who}_cs"], b[f"{who}_cs"],
                                                            strict=True)]
        if b.get(f"{who}_us") and a.get(f"{who}_us"):
            out[f"{who}_sys_fraction"] = ((b[f"{who}_us"][1] - a[f"{who}_us"][1])
                                          / max(1e-9, sum(b[f"{who}_us"]) - sum(a[f"{who}_us"])))
    if kind == "record":
        ra, rb = a["rec"], b["rec"]
        fin = closing.get("rec", c["rec"])
        out.update(
            write_mb_s=(rb["bytes"] - ra["bytes"]) / window / 1e6,
            rec_units_per_s=(rb["units"] - ra["units"]) / window,
            segments_in_window=rb["segments_closed"] - ra["segments_closed"],
            queue_max=rb["queue_max"],
            queue_bytes_max=rb["queue_bytes_max"],
            sync_passes=rb["sync_passes"] - ra["sync_passes"],
            sync_pass_s=rb["sync_s"] - ra["sync_s"],
            # Units the recorder did not write, from the start of the window to the close
            # (the drops before it are each stream's wait for its first key frame).
            rec_dropped=fin["dropped_units"] - ra["dropped_units"],
            rec_dropped_startup=ra["dropped_units"],
            write_errors=fin["write_errors"],
            last_error=fin["last_error"],
            rec_units=fin["units"], rec_bytes=fin["bytes"],
            segments_total=fin["segments_closed"],
            unaccounted=sum(c["units"]) - fin["units"] - fin["dropped_units"],
            close_s=closing.get("close_s", float("nan")),
            disk_bytes=on_disk[0], disk_files=on_disk[1],
        )
        f = delta(b["fsync"], a["fsync"], "file")
        d = delta(b["fsync"], a["fsync"], "dir")
        ix = delta(b["index"], a["index"], "add_segment")
        out.update(fsync_file=f, fsync_dir=d, index_add=ix,
                   fdatasync=delta(b["fsync"], a["fsync"], "sync"))
        cf = closing.get("fsync", {})
        out["close_fsync_file"] = delta(cf, b["fsync"], "file") if cf else {}
    return out


# ----- report ----------------------------------------------------------------------------------


def pairs(results: list[dict[str, Any]], n: int
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def of(kind: str) -> dict[int, dict[str, Any]]:
        return {r["run"]: r for r in results if r["kind"] == kind and r["streams"] == n}
    rec, ing = of("record"), of("ingest")
    runs = sorted(rec.keys() & ing.keys())
    return [ing[k] for k in runs], [rec[k] for k in runs]


def cell(values: list[float], digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    if not values:
        return "–"
    med, lo, hi = statistics.median(values), min(values), max(values)
    if f"{lo * scale:.{digits}f}" == f"{hi * scale:.{digits}f}":
        return f"{med * scale:,.{digits}f}{unit}"
    return (f"{med * scale:,.{digits}f}{unit} "
            f"({lo * scale:,.{digits}f}–{hi * scale:,.{digits}f})")


def node_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, timeout=10)
        paths = ["sensing_node/transport/rtp.py", "rtp", "recorder"]
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=ROOT,
                               timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes to the receive or recording path"
                                  if dirty else "")


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import uvloop

    return {"cpu_model": model, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uvloop.__version__,
            "loadavg": os.getloadavg(),
            "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30}


def ms(x: float) -> str:
    return f"{1000 * x:,.1f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any],
           clipinfo: dict[str, Any], command: str, elapsed: float, note: str | None) -> str:
    L: list[str] = []
    add = L.append
    add("## Recording: simulated cameras received and written to disk")
    add("")
    add("N simulated 4 Mbit/s cameras over UDP into one process on one core, twice with the same "
        "traffic: `ingest` (the node's receive path: `UdpRtpReceiver` + `MediaIngest`, access "
        "units counted) and `record` (the same, every access unit also submitted to one "
        "`recorder.service.Recorder`: ~1 MiB buffered writes, SHA-256, a sync pass "
        + (f"(fdatasync of every open segment) every {args.fsync:g} s, " if args.fsync else
           "(off), ")
        + "fsync at segment close, SQLite index, on its writer thread). Written by "
        "`bench/record.py`.")
    add("")
    if note:
        add(f"> **{note}**")
        add("")
    disk = info.get("disk", {})
    comp = info.get("components", {})
    fs = info.get("fs", {})
    add(f"- Machine: {info['cpu_model']}, nproc {info['nproc']}, {info['mem_gib']:.0f} GiB RAM; "
        f"Linux {info['kernel']}; Python {info['python']}, uvloop {info['uvloop']}")
    add(f"- Date: {info['date']}; load average at the start "
        f"{', '.join(f'{x:.2f}' for x in info['loadavg'])}; the whole run took "
        f"{elapsed / 60:.0f} min")
    add(f"- Command: `{command}`; code under test: commit {info['commit']}")
    add(f"- Each pass: {args.warmup:g} s warm-up, then a {args.duration:g} s measurement window; "
        f"segments of {args.segment:g} s (cut at the first key frame after that); "
        + (f"the recorder's sync pass every {args.fsync:g} s (`--fsync`, the node's "
           "`recording.fsync_s`)" if args.fsync else "no sync pass (`--fsync 0`)")
        + ", so each "
        "stream closes "
        + ("at least one segment inside the window" if args.duration >= args.segment + 10 else
           "**no segment inside the window (window too short)**")
        + f"; {args.runs} run{'s' if args.runs > 1 else ''} per stream count, each an ingest "
        f"pass and a record pass back to back. Receiver (all its threads) pinned to CPU "
        f"{args.cpus[0]}"
        + (f", except the writer thread, pinned to CPU {args.writer_cpu}"
           if args.writer_cpu is not None else "")
        + f"; the sender to CPU {args.cpus[1]}; every process asks for nice -10.")
    add(f"- Recordings: a temporary directory under `{args.dir}` ({fs.get('type', '?')} on "
        f"{fs.get('device', '?')}, mounted at {fs.get('mount', '?')}), deleted after each pass; "
        "channel ids `3101120000131` + 7 digits; file names in UTC.")
    if disk:
        add(f"- Disk check before the passes: {disk['bytes'] / 2**30:.1f} GiB written in 1 MiB "
            f"writes at {disk['buffered_mb_s']:,.0f} MB/s (page cache), then fsync'd in "
            f"{disk['fsync_s']:.1f} s: **{disk['disk_mb_s']:,.0f} MB/s to the disk** including "
            f"the fsync. {args.streams_max} streams need "
            f"{args.streams_max * clipinfo['bitrate_bps'] / 8e6:,.0f} MB/s on the wire "
            f"(somewhat less as PS bytes), so the disk "
            + ("sustains it." if disk["disk_mb_s"] >= args.streams_max * clipinfo["bitrate_bps"]
               / 8e6 else "does **not** sustain it."))
    if comp:
        add(f"- Components on this machine (1 MiB blocks): SHA-256 {comp['sha_gb_s']:.2f} GB/s "
            f"= {comp['sha_us_per_packet']:.2f} µs per 1,400-byte packet; buffered `os.write` "
            f"to the page cache {comp['write_gb_s']:.2f} GB/s = "
            f"{comp['write_us_per_packet']:.2f} µs per packet.")
    add(f"- Stream: H.264 1280x720, 25 fps, key frame every 50 frames, "
        f"{clipinfo['bitrate_bps'] / 1e6:.2f} Mbit/s on the wire (RTP), "
        f"{clipinfo['packets_per_s']:.0f} packets/s of 1,400 payload bytes, sent by "
        "`bench/ingest_sender.py` (one burst per frame, UDP GSO).")
    add("")
    add("Median of the runs, (min–max) when they differ. CPU: receiver process CPU time (all "
        "threads) over the window, in % of one core; µs/pkt: that over the RTP packets received "
        "in the window. Added: record µs/pkt minus ingest µs/pkt of the same run (the goal is "
        f"at most {GOAL_ADDED_US} µs). Loop: the event-loop thread alone (what delays packet "
        "reads); writer: the recorder's writer thread. Lost: packets sent minus packets taken, "
        "whole pass. Rec. dropped: access units the recorder did not write from the window's "
        "start to its close (queue overflow, waits for a key frame after a loss). Lag: how "
        "late the loop ran a 20 ms timer, p99 / max over the window.")
    add("")
    add("| N | offered pkt/s | ingest CPU | ingest µs/pkt | record CPU | record µs/pkt | "
        "added µs/pkt | loop µs/pkt ingest → record | writer µs/pkt | lost ingest / record | "
        "rec. dropped | write MB/s | lag p99 ingest / record ms |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[int, dict[str, Any]] = {}
    for n in args.streams:
        ing, rec = pairs(results, n)
        if not ing:
            continue
        added = [y["us_per_packet"] - x["us_per_packet"] for x, y in zip(ing, rec, strict=True)]
        rows[n] = {"added": added, "ing": ing, "rec": rec}
        add(f"| {n} | {cell([r['window_sent'] / r['window_s'] for r in rec], 0)} | "
            f"{cell([r['cpu_share'] for r in ing], 1, 100, '%')} | "
            f"{cell([r['us_per_packet'] for r in ing], 2)} | "
            f"{cell([r['cpu_share'] for r in rec], 1, 100, '%')} | "
            f"{cell([r['us_per_packet'] for r in rec], 2)} | {cell(added, 2)} | "
            f"{cell([r['loop_us_per_packet'] for r in ing], 2)} → "
            f"{cell([r['loop_us_per_packet'] for r in rec], 2)} | "
            f"{cell([r.get('writer_us_per_packet', 0.0) for r in rec], 2)} | "
            f"{cell([r['lost'] for r in ing], 0)} / {cell([r['lost'] for r in rec], 0)} | "
            f"{cell([r['rec_dropped'] for r in rec], 0)} | "
            f"{cell([r['write_mb_s'] for r in rec], 1)} | "
            f"{cell([r['lag_p99_ms'] for r in ing], 1)} / "
            f"{cell([r['lag_p99_ms'] for r in rec], 1)} |")
    add("")
    add("Segment closes inside the window of the record passes (medians): the file fsyncs "
        "(count, total, longest), the directory fsyncs after each rename, and the index insert "
        "(SQLite, `synchronous = FULL`). Close: time for `Recorder.close()` after the senders "
        "stopped (drain the queue, fsync and index every open segment). Sync passes inside "
        "the window: how many, their fdatasyncs (count, total, longest) and the passes' total "
        "time (what the writer thread spends making open segments durable). Queue max: "
        "deepest recorder queue seen at the 20 ms beats (units / MB; the queue holds 10,000 "
        "units or 256 MiB). Writer system time: the kernel's part of the writer thread's CPU "
        "(/proc stat ticks). Switches: context switches per second of the thread (voluntary "
        "+ involuntary), each a wakeup or a preemption on the shared core.")
    add("")
    add("| N | segments closed | file fsync count | fsync total s | fsync max ms | "
        "dir fsync total s | index insert max ms | sync passes | fdatasync count | "
        "fdatasync total s | fdatasync max ms | sync pass total s | queue max | close s | "
        "writer CPU | writer system time | writer switches/s | "
        "loop switches/s ingest → record | write errors |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|---:|")
    for n, row in rows.items():
        rec = row["rec"]
        add(f"| {n} | {cell([r['segments_in_window'] for r in rec], 0)} | "
            f"{cell([r['fsync_file']['count'] for r in rec], 0)} | "
            f"{cell([r['fsync_file']['total_s'] for r in rec], 2)} | "
            f"{cell([r['fsync_file']['max_s'] for r in rec], 0, 1000)} | "
            f"{cell([r['fsync_dir']['total_s'] for r in rec], 2)} | "
            f"{cell([r['index_add']['max_s'] for r in rec], 0, 1000)} | "
            f"{cell([r.get('sync_passes', 0) for r in rec], 0)} | "
            f"{cell([r.get('fdatasync', {}).get('count', 0) for r in rec], 0)} | "
            f"{cell([r.get('fdatasync', {}).get('total_s', 0.0) for r in rec], 2)} | "
            f"{cell([r.get('fdatasync', {}).get('max_s', 0.0) for r in rec], 0, 1000)} | "
            f"{cell([r.get('sync_pass_s', 0.0) for r in rec], 2)} | "
            f"{cell([r['queue_max'] for r in rec], 0)} / "
            f"{cell([r.get('queue_bytes_max', 0) / 1e6 for r in rec], 1)} | "
            f"{cell([r['close_s'] for r in rec], 1)} | "
            f"{cell([r.get('writer_share', 0.0) for r in rec], 1, 100, '%')} | "
            f"{cell([r.get('writer_sys_fraction', 0.0) for r in rec], 0, 100, '%')} | "
            f"{cell([sum(r.get('writer_switches_per_s', [0])) for r in rec], 0)} | "
            f"{cell([sum(r.get('loop_switches_per_s', [0])) for r in row['ing']], 0)} → "
            f"{cell([sum(r.get('loop_switches_per_s', [0])) for r in rec], 0)} | "
            f"{cell([r['write_errors'] for r in rec], 0)} |")
    add("")
    add("Per run. Other load: CPU used by other processes during the window, in cores (the "
        "larger of the two passes); load: the 1-minute load average when the pass started; "
        "iowait: cores waiting on I/O during the record window. UDP drops: the kernel's "
        "RcvbufErrors during the pass (machine-wide).")
    add("")
    add("| N | run | ingest CPU | ingest µs/pkt | ingest loop µs/pkt | record CPU | "
        "record µs/pkt | record loop µs/pkt | writer µs/pkt | added µs/pkt | "
        "lost ingest / record (streams) | UDP drops ingest / record | rec. dropped | "
        "write MB/s | backlog ms ingest / record | lag max ms ingest / record | "
        "other load | load | iowait |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|---:|")
    for n, row in rows.items():
        for x, y in zip(row["ing"], row["rec"], strict=True):
            add(f"| {n} | {x['run']} | {100 * x['cpu_share']:.1f}% | {x['us_per_packet']:.2f} | "
                f"{x['loop_us_per_packet']:.2f} | {100 * y['cpu_share']:.1f}% | "
                f"{y['us_per_packet']:.2f} | {y['loop_us_per_packet']:.2f} | "
                f"{y.get('writer_us_per_packet', 0.0):.2f} | "
                f"{y['us_per_packet'] - x['us_per_packet']:+.2f} | "
                f"{x['lost']:,} ({x['streams_with_loss']}) / {y['lost']:,} "
                f"({y['streams_with_loss']}) | "
                f"{x['udp_rcvbuf_drops']:,} / {y['udp_rcvbuf_drops']:,} | "
                f"{y['rec_dropped']:,} | {y['write_mb_s']:.1f} | "
                f"{x['backlog_ms']:.0f} / {y['backlog_ms']:.0f} | "
                f"{x['lag_max_ms']:.0f} / {y['lag_max_ms']:.0f} | "
                f"{max(x['other_load'], y['other_load']):.2f} | {y['loadavg'][0]:.2f} | "
                f"{y['iowait']:.2f} |")
    add("")
    add("### Goal")
    add("")
    pps = clipinfo["packets_per_s"]
    add(f"Goal: recording {GOAL_STREAMS} streams, hashing included, adds at most "
        f"{GOAL_ADDED_US} µs per packet to ingest alone, with zero loss. A pass whose process "
        f"used more than {SATURATED:.0%} of its core is saturated: it batches more per wakeup "
        "and falls behind, so its µs/pkt understates the cost and the difference of two such "
        "passes is not the added cost.")
    add("")
    for n, row in rows.items():
        ing, rec = row["ing"], row["rec"]
        added = statistics.median(row["added"])
        lost = [y["lost"] for y in rec] + [y["rec_dropped"] for y in rec]
        errs = sum(y["write_errors"] for y in rec)
        sat = [r for r in ing + rec if r["cpu_share"] > SATURATED]
        behind = [r for r in ing + rec if r["backlog_ms"] > BACKLOG_OK_MS]
        zero = all(x == 0 for x in lost) and errs == 0
        ok = added <= GOAL_ADDED_US and zero and not sat
        loop_added = statistics.median(y["loop_us_per_packet"] - x["loop_us_per_packet"]
                                       for x, y in zip(ing, rec, strict=True))
        parts = [f"added {added:.2f} µs/pkt ({'within' if added <= GOAL_ADDED_US else 'over'} "
                 f"{GOAL_ADDED_US})",
                 f"loop thread {loop_added:+.2f} µs/pkt",
                 "zero loss" if zero else
                 f"loss: packets {', '.join(str(y['lost']) for y in rec)}, recorder dropped "
                 f"{', '.join(str(y['rec_dropped']) for y in rec)}, write errors {errs}"]
        if sat:
            parts.append(f"{len(sat)} of {len(ing) + len(rec)} passes saturated the core "
                         "(difference not a cost)")
        if behind:
            parts.append(f"{len(behind)} passes fell behind (backlog over {BACKLOG_OK_MS} ms)")
        add(f"- {n} streams ({n * pps:,.0f} packets/s): **{'met' if ok else 'not met'}**: "
            + "; ".join(parts) + ".")
    add("")
    return "\n".join(L)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "receive":
        p = argparse.ArgumentParser()
        p.add_argument("role")
        p.add_argument("--kind", choices=("ingest", "record"), required=True)
        p.add_argument("--streams", type=int, required=True)
        p.add_argument("--segment", type=float, default=60.0)
        p.add_argument("--fsync", type=float, default=2.0)
        p.add_argument("--root", required=True)
        p.add_argument("--cpu", type=int)
        p.add_argument("--writer-cpu", type=int)
        p.add_argument("--profile-writer")
        a = p.parse_args()
        a.pinned = pin(a.cpu)
        import uvloop

        uvloop.run(receive(a))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="300,100")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=75.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--segment", type=float, default=60.0, help="segment duration, s")
    parser.add_argument("--fsync", type=float, default=2.0,
                        help="the recorder's sync pass interval, s (the node's "
                        "recording.fsync_s; 0: only at segment close)")
    parser.add_argument("--tail", type=float, default=1.0)
    parser.add_argument("--drain", type=float, default=0.5)
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the recordings go (a real disk, not tmpfs)")
    parser.add_argument("--disk-gb", type=float, default=6.0,
                        help="GiB written by the disk check (0: skip it)")
    parser.add_argument("--writer-cpu", type=int,
                        help="pin the recorder's writer thread to this CPU instead")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile (thread CPU time) the loop thread (window) and the writer "
                        "thread (whole pass) of each record pass into DIR; slows them, figures "
                        "not comparable")
    parser.add_argument("--note", help="a line put at the top of the report")
    parser.add_argument("--out", default=str(OUT), help="markdown report ('' : none)")
    parser.add_argument("--json", help="also write every raw figure to this file")
    args = parser.parse_args()
    args.streams = [int(x) for x in args.streams.split(",")]
    args.streams_max = max(args.streams)
    started = time.perf_counter()
    info = machine()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["commit"] = node_commit()
    avail = sorted(os.sched_getaffinity(0))
    args.cpus = (avail[0], avail[1]) if len(avail) >= 2 else (None, None)
    parent = Path(args.dir)
    info["fs"] = fs_of(parent)
    if info["fs"]["type"] in ("tmpfs", "ramfs"):
        log(f"warning: {parent} is on {info['fs']['type']}, not a disk")
    if args.duration < args.segment + 10:
        log(f"warning: a {args.duration:g} s window with {args.segment:g} s segments closes no "
            "segment inside the window")
    frames = clip()
    clipinfo: dict[str, Any] = clip_stats(frames)
    log(f"clip: {clipinfo['bitrate_bps'] / 1e6:.2f} Mbit/s, {clipinfo['packets_per_s']:.0f} "
        "packets/s")
    command = shlex.join([".venv/bin/python", "bench/record.py", *sys.argv[1:]])
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    total = len(args.streams) * args.runs * 2

    def publish(final: bool) -> str:
        notes = [args.note] if args.note else []
        if len(results) < total:
            notes.append(f"Incomplete: {len(results)} of {total} passes measured"
                         + (" (the run was stopped early)." if final else " so far."))
        notes += [f"Failed pass: {f}" for f in failures]
        text = report(results, args, info, clipinfo, command, time.perf_counter() - started,
                      " ".join(notes) or None)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"machine": info, "clip": clipinfo, "results": results, "failures": failures},
                indent=1, default=str))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        return text

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="sensing-record-", dir=parent) as tmpname:
            tmp = Path(tmpname)
            info["components"] = component_costs(tmp)
            log("components: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                           info["components"].items()))
            if args.disk_gb > 0:
                info["disk"] = disk_check(tmp, args.disk_gb)
                d = info["disk"]
                log(f"disk: {d['bytes'] / 2**30:.1f} GiB, buffered {d['buffered_mb_s']:.0f} "
                    f"MB/s, fsync {d['fsync_s']:.1f} s, to disk {d['disk_mb_s']:.0f} MB/s")
            for run in range(1, args.runs + 1):
                for n in args.streams:
                    for kind in ("ingest", "record"):
                        try:
                            r = one_pass(kind, n, args, tmp, run)
                        except (RuntimeError, OSError, ValueError, KeyError,
                                subprocess.SubprocessError) as exc:
                            failures.append(f"N={n} run {run} {kind}: {exc!r}")
                            log(failures[-1])
                            continue
                        results.append(r)
                        extra = ""
                        if kind == "record":
                            extra = (f", writer {r.get('writer_us_per_packet', 0):.2f} µs/pkt "
                                     f"(sys {r.get('writer_sys_fraction', 0):.0%}, "
                                     f"switches/s {r.get('writer_switches_per_s')}, loop "
                                     f"{r.get('loop_switches_per_s')}), "
                                     f"{r['write_mb_s']:.1f} MB/s, segments "
                                     f"{r['segments_in_window']}, fsync "
                                     f"{r['fsync_file']['count']} "
                                     f"{r['fsync_file']['total_s']:.2f} s max "
                                     f"{1000 * r['fsync_file']['max_s']:.0f} ms, sync passes "
                                     f"{r['sync_passes']} ({r['sync_pass_s']:.2f} s), "
                                     f"fdatasync {r['fdatasync']['count']} "
                                     f"{r['fdatasync']['total_s']:.2f} s max "
                                     f"{1000 * r['fdatasync']['max_s']:.0f} ms, queue max "
                                     f"{r['queue_max']}, rec dropped {r['rec_dropped']}, "
                                     f"errors {r['write_errors']}, close {r['close_s']:.1f} s, "
                                     f"unaccounted {r['unaccounted']}")
                        log(f"N={n} run {run} {kind}: {100 * r['cpu_share']:.1f}% CPU, "
                            f"{r['us_per_packet']:.2f} µs/pkt (loop "
                            f"{r['loop_us_per_packet']:.2f}), {r['packets_per_s']:,.0f} pkt/s, "
                            f"lost {r['lost']:,}, udp drops {r['udp_rcvbuf_drops']:,}, backlog "
                            f"{r['backlog_ms']:.0f} ms, lag p99 {r['lag_p99_ms']:.1f} max "
                            f"{r['lag_max_ms']:.1f} ms, other {r['other_load']:.2f}{extra}")
                        publish(final=False)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    text = publish(final=True)
    print(text)
    if args.out:
        log(f"wrote {os.path.relpath(args.out, ROOT)}")
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
