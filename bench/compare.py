"""Before/after: the ingest and recording benchmarks on two commits, alternately, in one run.

    .venv/bin/python bench/compare.py --base REV [--head REV] [--streams 300] [--runs 3]
                                      [--duration 20] [--record-duration 30] [--no-record]
                                      [--fsync 2,0] [--writer-cpu C] [--json FILE] [--doc]
    make bench-compare BASE=REV

Each commit is checked out into a temporary git worktree and imported from there (PYTHONPATH),
so the files being edited in the working tree do not change what is measured. Per round, the
base is measured, then the head: `bench/ingest.py` (bare loop, then the node's receive path, UDP
and TCP) and `bench/record.py` (ingest, then ingest + recording; the head once per `--fsync`
value when its record benchmark knows the option). Alternating the two commits within each
round spreads the machine's drift over both; each pass is still compared with the bare loop
that ran seconds before it, so the ratio node/bare is the figure to compare, as elsewhere in
docs/benchmarks.md.

With --doc, the summary replaces the section between `<!-- compare:begin -->` and
`<!-- compare:end -->` of docs/benchmarks.md (added at the end when missing).
"""

from __future__ import annotations

import argparse
import json
import os
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
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


class Checkout:
    """One commit in a worktree of its own, removed again on exit."""

    def __init__(self, rev: str, parent: Path) -> None:
        self.commit = git("rev-parse", "--short", rev)
        self.path = parent / self.commit
        git("worktree", "add", "--detach", "-f", str(self.path), self.commit)

    def run(self, script: str, args: list[str], out: Path) -> list[dict[str, Any]]:
        env = dict(os.environ, PYTHONPATH=str(self.path))
        cmd = [sys.executable, str(self.path / "bench" / script), *args, "--json", str(out)]
        log(f"[{self.commit}] {' '.join(cmd[1:])}")
        subprocess.run(cmd, cwd=self.path, env=env, check=True, stdout=subprocess.DEVNULL)
        return list(json.loads(out.read_text())["results"])

    def knows(self, script: str, option: str) -> bool:
        return option in (self.path / "bench" / script).read_text()

    def remove(self) -> None:
        git("worktree", "remove", "--force", str(self.path))


def spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    med = f"{statistics.median(values):.{digits}f}"
    lo, hi = min(values), max(values)
    return med if len(values) == 1 or lo == hi else f"{med} ({lo:.{digits}f}–{hi:.{digits}f})"


def ingest_rows(results: list[dict[str, Any]], transport: str) -> dict[str, list[float]]:
    by_run: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r["transport"] == transport:
            by_run.setdefault(r["round"], {})[r["kind"]] = r
    pairs = [p for p in by_run.values() if "bare" in p and "node" in p]
    return {
        "bare": [p["bare"]["us_per_packet"] for p in pairs],
        "node": [p["node"]["us_per_packet"] for p in pairs],
        "ratio": [p["node"]["us_per_packet"] / p["bare"]["us_per_packet"] for p in pairs],
        "cpu": [100 * p["node"]["cpu_share"] for p in pairs],
        "lost": [float(p["node"]["lost"]) for p in pairs],
    }


def record_rows(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    by_run: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_run.setdefault(r["round"], {})[r["kind"]] = r
    pairs = [p for p in by_run.values() if "ingest" in p and "record" in p]
    return {
        "ingest": [p["ingest"]["us_per_packet"] for p in pairs],
        "record": [p["record"]["us_per_packet"] for p in pairs],
        "added": [p["record"]["us_per_packet"] - p["ingest"]["us_per_packet"] for p in pairs],
        "loop_added": [p["record"]["loop_us_per_packet"] - p["ingest"]["loop_us_per_packet"]
                       for p in pairs],
        "writer": [p["record"].get("writer_us_per_packet", 0.0) for p in pairs],
        "lost": [float(p["record"]["lost"]) for p in pairs],
        "syncs": [float((p["record"].get("fdatasync") or {}).get("count", 0)) for p in pairs],
        "sync_s": [float((p["record"].get("fdatasync") or {}).get("total_s", 0.0))
                   for p in pairs],
        "cpu": [100 * p["record"]["cpu_share"] for p in pairs],
    }


def summary(args: argparse.Namespace, data: dict[str, Any]) -> str:
    base, head = data["base"], data["head"]
    lines = [
        "## Before and after: ingest and recording on two commits (`bench/compare.py`)",
        "",
        f"Base {base} against head {head}, alternately in one run: each round measures the base, "
        "then the head. Written by `bench/compare.py`; the passes are those of "
        "`bench/ingest.py` and `bench/record.py` described in their sections.",
        "",
        f"- Date: {data['date']}; the whole run took {data['minutes']:.0f} min; machine: "
        f"{data['machine']}",
        f"- Command: `{data['command']}`",
        f"- {args.streams} streams of 4 Mbit/s; {args.runs} rounds; ingest windows of "
        f"{args.duration:g} s, recording windows of {args.record_duration:g} s with "
        f"{args.segment:g} s segments"
        + (f", the recorder's writer thread on CPU {args.writer_cpu}." if args.writer_cpu
           is not None else "."),
        "",
        "Median (min–max) over the rounds. µs/pkt: receiver process CPU per RTP packet; ratio: "
        "node µs/pkt over the bare loop's in the same round.",
        "",
        "| transport | commit | bare µs/pkt | node µs/pkt | ratio node/bare | node CPU | lost |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for transport in ("udp", "tcp"):
        for label in ("base", "head"):
            rows = ingest_rows(data["ingest"][label], transport)
            lines.append(
                f"| {transport.upper()} | {data[label]} | {spread(rows['bare'])} | "
                f"{spread(rows['node'])} | {spread(rows['ratio'])} | {spread(rows['cpu'], 1)}% "
                f"| {spread(rows['lost'], 0)} |"
            )
    lines.append("")
    for transport in ("udp", "tcp"):
        b = statistics.median(ingest_rows(data["ingest"]["base"], transport)["ratio"] or [0])
        h = statistics.median(ingest_rows(data["ingest"]["head"], transport)["ratio"] or [0])
        if b:
            lines.append(f"- {transport.upper()}: the head's ratio to the bare loop is "
                         f"{100 * (h / b - 1):+.1f}% against the base's (median of rounds).")
    if data["record"]:
        lines += [
            "",
            "Recording on top of ingest. Added: record µs/pkt minus ingest µs/pkt of the same "
            "round; loop added: the same for the event-loop thread alone; fdatasyncs: periodic "
            "syncs of open segments in the record window (`recording.fsync_s`) and the seconds "
            "spent in them; record CPU: the whole process, in % of the one core it is pinned to "
            "(above 95% it is saturated and falls behind, and the added figure is no longer a "
            "cost).",
            "",
            "| commit | fsync_s | ingest µs/pkt | record µs/pkt | added µs/pkt | loop added "
            "µs/pkt | writer µs/pkt | fdatasyncs | in fdatasync, s | record CPU | lost (record) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, results in data["record"].items():
            label, _, fsync = key.partition(":")
            rows = record_rows(results)
            lines.append(
                f"| {data[label]} | {fsync or '–'} | {spread(rows['ingest'])} | "
                f"{spread(rows['record'])} | {spread(rows['added'])} | "
                f"{spread(rows['loop_added'])} | {spread(rows['writer'])} | "
                f"{spread(rows['syncs'], 0)} | {spread(rows['sync_s'])} | "
                f"{spread(rows['cpu'], 1)}% | {spread(rows['lost'], 0)} |"
            )
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit to compare against")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="rounds")
    parser.add_argument("--duration", type=float, default=20.0, help="ingest window, s")
    parser.add_argument("--record-duration", type=float, default=30.0)
    parser.add_argument("--segment", type=float, default=10.0)
    parser.add_argument("--fsync", default="2,0", help="head's recording.fsync_s values")
    parser.add_argument("--writer-cpu", type=int,
                        help="pin the recorder's writer thread to this CPU (record passes)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--doc", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        parent = Path(tmp)
        sides = {"base": Checkout(args.base, parent), "head": Checkout(args.head, parent)}
        data: dict[str, Any] = {
            "base": sides["base"].commit, "head": sides["head"].commit,
            "ingest": {"base": [], "head": []}, "record": {},
        }
        try:
            for rnd in range(1, args.runs + 1):
                for label, side in sides.items():
                    out = parent / f"ingest-{label}-{rnd}.json"
                    for r in side.run("ingest.py", [
                        "--streams", str(args.streams), "--runs", "1", "--duration",
                        str(args.duration), "--max-wait", "60", "--no-doc"], out):
                        data["ingest"][label].append(dict(r, round=rnd))
                if args.no_record:
                    continue
                for label, side in sides.items():
                    fsyncs = [None]
                    if label == "head" and side.knows("record.py", "--fsync"):
                        fsyncs = args.fsync.split(",")
                    for fsync in fsyncs:
                        extra = [] if fsync is None else ["--fsync", fsync]
                        if args.writer_cpu is not None:
                            extra += ["--writer-cpu", str(args.writer_cpu)]
                        out = parent / f"record-{label}-{fsync}-{rnd}.json"
                        key = label if fsync is None else f"{label}:{fsync}"
                        for r in side.run("record.py", [
                            "--streams", str(args.streams), "--runs", "1", "--duration",
                            str(args.record_duration), "--segment", str(args.segment),
                            "--disk-gb", "1", "--out", "", *extra], out):
                            data["record"].setdefault(key, []).append(dict(r, round=rnd))
        finally:
            for side in sides.values():
                side.remove()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    data |= {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.monotonic() - started) / 60,
        "machine": f"{cpu}, nproc {os.cpu_count()}",
        "command": " ".join(["bench/compare.py", *sys.argv[1:]]),
    }
    text = summary(args, data)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    if args.doc:
        write_doc(text)


if __name__ == "__main__":
    main()
