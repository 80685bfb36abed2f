"""Before/after: the whole-node benchmark on two commits, alternately, in one run.

    .venv/bin/python bench/compare.py --base REV [--head REV] [--streams 300] [--runs 3]
                                      [--duration 20] [--transport udp,tcp] [--no-record]
                                      [--json FILE] [--doc]
    make bench-compare BASE=REV

Each commit is checked out into a temporary git worktree, and the node runs from there
(`bench/node_bench.py --node-root`), so the files being edited in the working tree do not change
what is measured; the harness (senders, simulated NVR, bare loop, measurement) is this tree's,
the same for both. Per round, the base is measured, then the head, each with one run of
`bench/node_bench.py`: per transport a bare pass, the node ingesting and, unless --no-record,
the node ingesting and recording, one worker. Alternating the two commits within each round
spreads the machine's drift over both; each node pass is still compared with the bare loop that
ran seconds before it, so the ratio node/bare is the figure to compare, as elsewhere in
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

    def run(self, args: list[str], out: Path) -> list[dict[str, Any]]:
        """One run of this tree's bench/node_bench.py with the node from the checkout."""
        cmd = [sys.executable, str(BENCH / "node_bench.py"), "--node-root", str(self.path),
               *args, "--no-doc", "--json", str(out)]
        log(f"[{self.commit}] {' '.join(cmd[1:])}")
        subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
        if not out.exists():
            raise RuntimeError(f"{self.commit}: bench/node_bench.py wrote no results")
        return list(json.loads(out.read_text())["results"])

    def remove(self) -> None:
        git("worktree", "remove", "--force", str(self.path))


def spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    med = f"{statistics.median(values):.{digits}f}"
    lo, hi = min(values), max(values)
    return med if len(values) == 1 or lo == hi else f"{med} ({lo:.{digits}f}–{hi:.{digits}f})"


def pairs(results: list[dict[str, Any]], transport: str, recording: bool
          ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(node pass, bare pass) of each round, for one transport and recording setting."""
    out = []
    for node in results:
        if (node["kind"] == "node" and node["transport"] == transport
                and node["recording"] == recording and node["workers"] == 1):
            for bare in results:
                if (bare["kind"] == "bare" and bare["transport"] == transport
                        and bare["round"] == node["round"]):
                    out.append((node, bare))
    return out


def rows(results: list[dict[str, Any]], transport: str, recording: bool
         ) -> dict[str, list[float]]:
    ps = pairs(results, transport, recording)
    return {
        "bare": [b["us_per_packet"] for _, b in ps],
        "node": [n["us_per_packet"] for n, _ in ps],
        "ratio": [n["us_per_packet"] / b["us_per_packet"] for n, b in ps],
        "cpu": [100 * n["cpu_share"] for n, _ in ps],
        "lost": [float(n["lost"]) for n, _ in ps],
    }


def added(results: list[dict[str, Any]], transport: str) -> list[float]:
    """Record µs/pkt minus ingest µs/pkt, per round."""
    ing = {n["round"]: n["us_per_packet"] for n, _ in pairs(results, transport, False)}
    rec = {n["round"]: n["us_per_packet"] for n, _ in pairs(results, transport, True)}
    return [rec[k] - ing[k] for k in sorted(ing.keys() & rec.keys())]


def summary(args: argparse.Namespace, data: dict[str, Any]) -> str:
    base, head = data["base"], data["head"]
    lines = [
        "## Before and after: the whole node on two commits (`bench/compare.py`)",
        "",
        f"Base {base} against head {head}, alternately in one run: each round measures the base, "
        "then the head, with the same harness (this tree's `bench/node_bench.py`, the node run "
        "from a worktree of each commit); the passes are those of the \"Whole node\" section.",
        "",
        f"- Date: {data['date']}; the whole run took {data['minutes']:.0f} min; machine: "
        f"{data['machine']}",
        f"- Command: `{data['command']}`",
        f"- {args.streams} streams ({args.mix}); {args.runs} round{'s' * (args.runs != 1)}; "
        "windows of "
        f"{args.duration:g} s; one worker.",
        "",
        "Median (min–max) over the rounds. µs/pkt: CPU of the node's process tree (or the bare "
        "process) per packet; ratio: node µs/pkt over the bare loop's in the same round.",
        "",
        "| transport | pass | commit | bare µs/pkt | node µs/pkt | ratio node/bare | node CPU "
        "| lost |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    passes = [False] if args.no_record else [False, True]
    for transport in args.transports:
        for recording in passes:
            for label in ("base", "head"):
                r = rows(data["results"][label], transport, recording)
                lines.append(
                    f"| {transport.upper()} | {'record' if recording else 'ingest'} | "
                    f"{data[label]} | {spread(r['bare'])} | {spread(r['node'])} | "
                    f"{spread(r['ratio'])} | {spread(r['cpu'], 1)}% | {spread(r['lost'], 0)} |")
    lines.append("")
    for transport in args.transports:
        for recording in passes:
            b = statistics.median(rows(data["results"]["base"], transport, recording)["ratio"]
                                  or [0])
            h = statistics.median(rows(data["results"]["head"], transport, recording)["ratio"]
                                  or [0])
            if b:
                lines.append(f"- {transport.upper()}, {'record' if recording else 'ingest'}: "
                             f"the head's ratio to the bare loop is {100 * (h / b - 1):+.1f}% "
                             "against the base's (median of rounds).")
        if not args.no_record:
            for label in ("base", "head"):
                lines.append(f"- {transport.upper()}: recording adds "
                             f"{spread(added(data['results'][label], transport))} µs/pkt on "
                             f"{data[label]}.")
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
    parser.add_argument("--duration", type=float, default=20.0, help="window, s")
    parser.add_argument("--transport", default="udp,tcp")
    parser.add_argument("--mix", default="720p@4", help="stream kinds (bench/node_bench.py)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--doc", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    args.transports = [x for x in args.transport.split(",") if x]
    started = time.monotonic()
    bench_args = ["--streams", str(args.streams), "--runs", "1", "--window", str(args.duration),
                  "--transport", args.transport, "--workers", "1", "--mix", args.mix,
                  "--recording", "off" if args.no_record else "off,on"]
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        parent = Path(tmp)
        sides = {"base": Checkout(args.base, parent), "head": Checkout(args.head, parent)}
        data: dict[str, Any] = {
            "base": sides["base"].commit, "head": sides["head"].commit,
            "results": {"base": [], "head": []},
        }
        try:
            for rnd in range(1, args.runs + 1):
                for label, side in sides.items():
                    out = parent / f"{label}-{rnd}.json"
                    for r in side.run(bench_args, out):
                        data["results"][label].append(dict(r, round=rnd))
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
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
    if args.doc:
        write_doc(text)


if __name__ == "__main__":
    main()
