"""Recorder writer benchmark: N channels of real PS units through `recorder.service.Recorder` at
the cameras' own rate, on two versions of the code in one run.

    .venv/bin/python bench/writer.py --base REV [--head DIR] [--streams 300] [--runs 3]
                                     [--seconds 10] [--warmup 3] [--segment 10] [--fsync 2]
                                     [--sync-files] [--bitrate 4000000]
                                     [--media gb_h264_zlm.ps] [--dir DIR]
                                     [--json FILE] [--doc]

No network and no demuxing in the measured path: the test clip (`tests/data/media`, 25 fps) is
demuxed once, each unit padded with PS padding packets (stream 0xBE, still valid PS that plays
the same) so that the clip averages `--bitrate`, and every 40 ms each of the N channels submits
its next frame (with the units that follow it up to the next frame) from one thread, as the media
path does (`Recorder.submit(channel_id, unit, wall)`). Channels start at different places in the
clip, so their key frames, and their segments' cuts, are spread over time as real cameras' are.

Each pass is a process of its own importing `recorder` and `rtp` from one version of the code:
`--base` is checked out into a git worktree under /tmp (removed at the end), `--head` is a
directory (the working tree by default). Passes alternate base, head, base, head... so the
machine's drift falls on both alike; compare the two within one run. After `--warmup` seconds the
window of `--seconds` is measured:

  writer    CPU of the writer thread (/proc/self/task/TID/schedstat) per unit submitted, and
            its system share (/proc ticks); with the sync thread (`recorder-sync`, in versions
            that have one) added, what the recorder's threads cost together
  submit    CPU of the submitting thread (`time.thread_time()` around each 40 ms round of
            submits) per unit, less the same loop over a do-nothing function (the bench's own
            loop), measured in the same process before the pass
  syncs     fsync(2), fdatasync(2) and syncfs(2) calls per second (the recorder's; SQLite's
            own fsyncs happen in C and are counted as index commits instead), and the index's
            write transactions per second
  queue     the deepest queue seen at the 40 ms rounds, units dropped, and `Recorder.close()`
            time after the window (drain, close and index every segment)

The recordings go to a temporary directory on the real disk (`--dir`, by default under /tmp),
deleted after each pass. With `--doc` the summary replaces the section between
`<!-- writer:begin -->` and `<!-- writer:end -->` of docs/benchmarks.md (added at the end when
missing). Internal role: `bench/writer.py pass --code DIR ...` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PERIOD = 0.04  # one frame per channel per round (25 fps)
CHANNEL_PREFIX = "3101120000131"  # area 3101120000, type 131 (camera); + 7-digit serial
BEGIN, END = "<!-- writer:begin -->", "<!-- writer:end -->"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- one pass (child process) -------------------------------------------------------------------


def padded(ps_bytes: bytes, size: int) -> bytes:
    """`ps_bytes` followed by PS padding packets up to about `size` bytes."""
    out = bytearray(ps_bytes)
    while len(out) + 6 <= size:
        n = min(size - len(out) - 6, 0xFFFF)
        out += b"\x00\x00\x01\xbe" + n.to_bytes(2, "big") + b"\xff" * n
    return bytes(out)


def frames(media: Path, bitrate: int) -> list[list[Any]]:
    """The clip's units grouped by video frame (a frame and the units up to the next one), each
    padded so the clip averages `bitrate` bits per second at 25 fps."""
    import dataclasses

    from rtp.ps import PsDemuxer

    demuxer = PsDemuxer()
    units = demuxer.feed(media.read_bytes()) + demuxer.flush()
    groups: list[list[Any]] = []
    for unit in units:
        if 0xE0 <= unit.stream_id <= 0xEF or not groups:
            groups.append([])
        groups[-1].append(unit)
    total = sum(len(u.ps_bytes) for u in units)
    scale = bitrate / 8 * len(groups) * PERIOD / total
    return [
        [dataclasses.replace(u, ps_bytes=padded(u.ps_bytes, int(len(u.ps_bytes) * scale)))
         for u in group]
        for group in groups
    ]


def task_times(tid: int) -> tuple[float, float]:
    """(CPU seconds, of which system) of one thread of this process."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        cpu = int(f.read().split()[0]) / 1e9
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[12]) / tick


class Syncs:
    """Counts the sync calls made through `os` (and the recorder's syncfs, where it has one) and
    the index's write transactions, while `counting` is set."""

    def __init__(self) -> None:
        self.counting = False
        self.calls = {"fsync": 0, "fdatasync": 0, "syncfs": 0, "commit": 0}
        self.seconds = 0.0

    def wrap(self, owner: Any, name: str, kind: str) -> None:
        real = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if not self.counting:
                return real(*args, **kwargs)
            self.calls[kind] += 1
            began = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        setattr(owner, name, counted)


def run_pass(args: argparse.Namespace) -> dict[str, Any]:
    import recorder.index
    import recorder.segments
    from recorder.service import Recorder

    syncs = Syncs()
    syncs.wrap(os, "fsync", "fsync")
    syncs.wrap(os, "fdatasync", "fdatasync")
    if hasattr(recorder.segments, "syncfs"):
        syncs.wrap(recorder.segments, "syncfs", "syncfs")
    real_transaction = recorder.index.RecordIndex._transaction

    def transaction(index: Any) -> Any:
        if syncs.counting:
            syncs.calls["commit"] += 1
        return real_transaction(index)

    recorder.index.RecordIndex._transaction = transaction  # type: ignore[method-assign]

    clip = frames(ROOT / "tests" / "data" / "media" / args.media, args.bitrate)
    n = args.streams
    channels = [f"{CHANNEL_PREFIX}{k:07d}" for k in range(n)]
    offsets = [(k * 37) % len(clip) for k in range(n)]
    units_per_round = [sum(len(clip[(r + o) % len(clip)]) for o in offsets)
                       for r in range(len(clip))]

    # The bench's own loop over a do-nothing submit, to take from the submitting thread's CPU.
    def nothing(channel_id: str, unit: Any, wall: float) -> None:
        pass

    spent, count = 0.0, 0
    for r in range(50):
        began = time.thread_time()
        for channel, offset in zip(channels, offsets, strict=True):
            for unit in clip[(r + offset) % len(clip)]:
                nothing(channel, unit, 0.0)
        spent += time.thread_time() - began
        count += units_per_round[r % len(clip)]
    loop_us = spent / count * 1e6

    root = Path(tempfile.mkdtemp(prefix="writer-bench-", dir=args.dir))
    extra: dict[str, Any] = {"sync_whole_fs": False} if args.sync_files else {}
    if extra and "sync_whole_fs" not in Recorder.__init__.__code__.co_varnames:
        extra = {}  # a version that syncs file by file anyway
    rec = Recorder(root, segment_s=args.segment, fsync_s=args.fsync, recover_on_start=False,
                   **extra)
    tid = rec._thread.native_id
    assert tid is not None
    syncer = getattr(rec, "_syncer", None)  # the sync thread, in versions that have one
    sync_tid = syncer.native_id if syncer is not None else None
    submit = rec.submit
    rounds = round((args.warmup + args.seconds) / PERIOD)
    first = round(args.warmup / PERIOD)
    submit_cpu = 0.0
    units = 0
    queue_max = 0
    late_max = 0.0
    start = time.monotonic()
    w0 = p0 = m0 = 0.0
    d0 = b0 = 0
    for r in range(rounds):
        due = start + r * PERIOD
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif r >= first:
            late_max = max(late_max, -delay)
        if r == first:
            s0 = task_times(sync_tid)[0] if sync_tid else 0.0
            w0, ws0 = task_times(tid)
            p0, m0 = time.process_time(), time.monotonic()
            d0, b0 = rec.dropped_units, rec.bytes
            syncs.counting = True
        wall = time.time()
        began = time.thread_time()
        for channel, offset in zip(channels, offsets, strict=True):
            for unit in clip[(r + offset) % len(clip)]:
                submit(channel, unit, wall)
        if r >= first:
            submit_cpu += time.thread_time() - began
            units += units_per_round[r % len(clip)]
            queue_max = max(queue_max, rec.queue_depth)
    w1, ws1 = task_times(tid)
    s1 = task_times(sync_tid)[0] if sync_tid else 0.0
    p1, m1 = time.process_time(), time.monotonic()
    syncs.counting = False
    calls = dict(syncs.calls)
    dropped, written = rec.dropped_units - d0, rec.bytes - b0
    began = time.monotonic()
    rec.close()
    close_s = time.monotonic() - began
    closed = rec.segments_closed
    shutil.rmtree(root)
    window = m1 - m0
    return {
        "streams": n,
        "window_s": window,
        "units": units,
        "units_per_s": units / window,
        "writer_us": (w1 - w0) / units * 1e6,
        "writer_cpu": (w1 - w0) / window,
        "writer_system": (ws1 - ws0) / (w1 - w0) if w1 > w0 else 0.0,
        "sync_us": (s1 - s0) / units * 1e6,
        "recorder_us": (w1 - w0 + s1 - s0) / units * 1e6,
        "submit_us": submit_cpu / units * 1e6 - loop_us,
        "loop_us": loop_us,
        "process_cpu": (p1 - p0) / window,
        "syncs_per_s": (calls["fsync"] + calls["fdatasync"] + calls["syncfs"]) / window,
        "fdatasync_per_s": calls["fdatasync"] / window,
        "fsync_per_s": calls["fsync"] / window,
        "syncfs_per_s": calls["syncfs"] / window,
        "commits_per_s": calls["commit"] / window,
        "sync_wait_s": syncs.seconds,
        "queue_max": queue_max,
        "dropped": dropped,
        "write_mb_s": written / window / 1e6,
        "close_s": close_s,
        "segments": closed,
        "late_max_ms": late_max * 1e3,
    }


# -- the run (parent) ---------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def one_pass(code: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "pass", "--streams", str(args.streams),
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--segment",
           str(args.segment), "--fsync", str(args.fsync), "--bitrate", str(args.bitrate),
           "--media", args.media]
    if args.sync_files:
        cmd.append("--sync-files")
    if args.dir:
        cmd += ["--dir", args.dir]
    env = dict(os.environ, PYTHONPATH=str(code))
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


COLUMNS = [
    ("recorder_us", "writer + sync µs/unit", "{:.1f}"),
    ("writer_us", "writer µs/unit", "{:.1f}"),
    ("writer_cpu", "writer CPU", "{:.1%}"),
    ("writer_system", "of it system", "{:.0%}"),
    ("submit_us", "submit µs/unit", "{:.2f}"),
    ("syncs_per_s", "fsyncs/s", "{:.1f}"),
    ("commits_per_s", "index commits/s", "{:.1f}"),
    ("queue_max", "queue max", "{:,.0f}"),
    ("dropped", "dropped", "{:,.0f}"),
    ("close_s", "close s", "{:.2f}"),
    ("write_mb_s", "MB/s", "{:.0f}"),
]


def cell(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    text = fmt.format(med)
    if fmt.format(lo) != fmt.format(hi):
        text += f" ({fmt.format(lo)}–{fmt.format(hi)})"
    return text


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]],
           names: dict[str, str], took: float) -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/writer.py",
                                                 *sys.argv[1:]])
    first = results["head"][0]
    lines = [
        "## Recorder writer (`bench/writer.py`)",
        "",
        f"The recorder alone, no network: {args.streams} channels of the test clip "
        f"(`tests/data/media/{args.media}`, demuxed once, padded to {args.bitrate / 1e6:g} "
        "Mbit/s with PS padding packets) submitted to one `Recorder` from one thread at 25 "
        f"frames/s each ({first['units_per_s']:,.0f} units/s); segments of {args.segment:g} s "
        f"(so that they close inside the window; the node's default is 60 s), sync pass every "
        f"{args.fsync:g} s. Base and head alternate, one process per pass, "
        f"{args.warmup:g} s warm-up then a {args.seconds:g} s window; what each figure counts: "
        "the docstring of `bench/writer.py`.",
        "",
        f"- Machine: {cpu}, nproc {os.cpu_count()}; Linux {platform.release()}; Python "
        f"{platform.python_version()}; shared with other work (compare base and head of this "
        "run only)",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; the run took {took:.0f} s",
        f"- Command: `{command}`",
        f"- Base: {names['base']}; head: {names['head']}",
        "",
        "Median of the runs (min–max).",
        "",
        "| code | runs | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for side in ("base", "head"):
        rows = results[side]
        lines.append(f"| {side} | {len(rows)} | " + " | ".join(
            cell([r[key] for r in rows], fmt) for key, _, fmt in COLUMNS) + " |")
    def ratio(key: str) -> str:
        base = statistics.median(r[key] for r in results["base"])
        head = statistics.median(r[key] for r in results["head"])
        return f"{head / base:.2f}" if base else "n/a"

    lines += [
        "",
        f"- Head/base, medians: writer and sync threads {ratio('recorder_us')}, writer thread "
        f"{ratio('writer_us')}, submitting thread {ratio('submit_us')} (the bench's own loop, "
        f"{statistics.median(r['loop_us'] for r in results['head']):.2f} µs per unit, taken "
        f"off both), sync calls per second {ratio('syncs_per_s')}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="run", choices=["run", "pass"])
    parser.add_argument("--base", default="HEAD", help="commit measured as the base")
    parser.add_argument("--head", default=str(ROOT), help="directory of the code measured as "
                        "the head (the working tree by default)")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--segment", type=float, default=10.0)
    parser.add_argument("--fsync", type=float, default=2.0)
    parser.add_argument("--sync-files", action="store_true",
                        help="Recorder(sync_whole_fs=False): one fdatasync per grown file")
    parser.add_argument("--bitrate", type=int, default=4_000_000)
    parser.add_argument("--media", default="gb_h264_zlm.ps")
    parser.add_argument("--dir", default=None, help="where the recordings go (a real disk)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--doc", action="store_true", help="write docs/benchmarks.md's section")
    args = parser.parse_args()
    if args.role == "pass":
        print(json.dumps(run_pass(args)))
        return
    began = time.monotonic()
    base_commit = git("rev-parse", "--short", args.base)
    tree = Path(tempfile.mkdtemp(prefix="writer-base-")) / base_commit
    git("worktree", "add", "--detach", "-f", str(tree), base_commit)
    head = Path(args.head).resolve()
    head_name = git("rev-parse", "--short", "HEAD") if head == ROOT else str(head)
    if head == ROOT:
        changed = [line.split(maxsplit=1)[1] for line in
                   git("status", "--porcelain", "--", "recorder", "rtp").splitlines()]
        if changed:
            head_name += f" with uncommitted changes to {', '.join(changed)}"
    results: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    try:
        for run in range(args.runs):
            for side, code in (("base", tree), ("head", head)):
                result = one_pass(code, args)
                results[side].append(result)
                log(f"run {run + 1} {side}: " + ", ".join(
                    f"{key} {result[key]:.3g}" for key, _, _ in COLUMNS))
    finally:
        git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree.parent, ignore_errors=True)
    text = report(args, results, {"base": base_commit, "head": head_name},
                  time.monotonic() - began)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.doc:
        sys.path.insert(0, str(BENCH))
        from common import write_section

        write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
