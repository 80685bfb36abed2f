"""Instructions per RTP packet of the node's UDP receive path, two commits, under callgrind.

    .venv/bin/python bench/receive_instructions.py --base REV [--head REV] [--packets 6000]

Timing on this 2-core machine moves by about 10% between passes seconds apart (see the
before/after section of docs/benchmarks.md); instruction counts do not. For each commit,
checked out in a worktree of its own, `valgrind --tool=callgrind` runs the same Python program
twice: it builds `UdpRtpReceiver` + `MediaIngest` as `sensing_node.media` wires them (no
socket: `datagram_received` is called directly, from the latched source, with the expected
SSRC), then feeds it either a few packets or `--packets` more of the benchmark clip (one 4 Mbit/s
720p camera, the stream of `bench/ingest.py`). The difference of the two totals over the
difference of packets is the cost of one packet in steady state: receiver checks, reorder
buffer, frame assembly, PS demux and handing the access units over, with the interpreter's own
work included. The packets are made once, natively, and read from a file by both runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SSRC = 112_000_001  # y=0112000001
SOURCE = ("127.0.0.1", 40000)
WARM = 500  # packets fed by both runs, so that start-up work cancels out


def make_packets(path: Path, count: int) -> None:
    sys.path.insert(0, str(BENCH))
    from ingest_sender import _HEADER, clip, session_start, templates

    frames = clip()
    first = templates([(session_start(frames)[0], False)], False, False)[0]
    rest = templates(frames[1:], False, False)
    packets: list[bytes] = []
    seq = 0
    for k, (buf, offsets, _) in enumerate([first, *rest] * 4):
        for j, off in enumerate(offsets):
            end = offsets[j + 1] if j + 1 < len(offsets) else len(buf)
            _HEADER.pack_into(buf, off + 2, seq & 0xFFFF, (k * 3600) & 0xFFFFFFFF, SSRC)
            packets.append(bytes(buf[off:end]))
            seq += 1
        if len(packets) >= count + WARM:
            break
    path.write_bytes(pickle.dumps(packets[: count + WARM]))


def feed(path: Path, count: int) -> None:
    from sensing_node.transport.rtp import MediaIngest, UdpRtpReceiver

    packets = pickle.loads(path.read_bytes())[:count]  # noqa: S301  # our own file
    units = [0]

    def on_units(batch: list[object]) -> None:
        units[0] += len(batch)

    receiver = UdpRtpReceiver(MediaIngest(on_units=on_units))
    receiver._loop = asyncio.new_event_loop()  # what `open` sets, without binding a socket
    receiver.expect(SOURCE[0], SSRC)
    receive = receiver.datagram_received
    for data in packets:
        receive(data, SOURCE)
    print(f"{len(packets)} packets, {units[0]} units, lost {receiver.lost}", file=sys.stderr)


def instructions(tree: Path, packets: Path, count: int) -> int:
    with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}",
             sys.executable, str(BENCH / "receive_instructions.py"), "feed", str(packets),
             str(count)],
            cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        text = Path(out.name).read_text(errors="replace")
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert match, "no totals in the callgrind output"
    return int(match.group(1))


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "feed":
        feed(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--packets", type=int, default=6000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="instr-") as tmp:
        packets = Path(tmp) / "packets.pkl"
        make_packets(packets, args.packets)
        rows = []
        for rev in (args.base, args.head):
            commit = git("rev-parse", "--short", rev)
            tree = Path(tmp) / commit
            git("worktree", "add", "--detach", "-f", str(tree), commit)
            try:
                low = instructions(tree, packets, WARM)
                high = instructions(tree, packets, WARM + args.packets)
            finally:
                git("worktree", "remove", "--force", str(tree))
            per = (high - low) / args.packets
            rows.append((commit, per))
            print(f"{commit}: {per:,.0f} instructions per packet "
                  f"({low:,} for {WARM} packets, {high:,} for {WARM + args.packets})", flush=True)
        (c0, p0), (c1, p1) = rows
        print(f"{c1} against {c0}: {100 * (p1 / p0 - 1):+.2f}% instructions per packet")


if __name__ == "__main__":
    main()
