"""Per-frame costs of the receive chain, step by step, in one process (no sockets).

    .venv/bin/python bench/frames.py [--runs 5] [--seconds 120] [--repeats 3] [--base REV]
        [--head REV] [--profile] [--write] [--json FILE]

About 2 minutes with ``--base``. It runs one process at a time; other work on the machine
shows in the spread.

Camera-style PS over RTP (each frame muxed into one pack by `rtp.psmux.PsMuxer` and cut into
packets of 1,400 payload bytes by `rtp.psmux.RtpPacketizer`, as `bench/ingest_sender.py` sends
it) goes through the node's receive chain as `sensing_node.media` wires it: the UDP receiver
(`_RtpReceiver._receive`: header check, SSRC, reorder), `LiveStream.on_packet`, `MediaIngest`
(frame assembly), `rtp.psframe.PsFrameDemuxer`, `LiveStream._units` (frame count, GOP cache,
fan-out) and one recorder consumer (`ChannelRecording.on_unit` -> `Recorder.submit`: a real
`Recorder` whose threads are not started, its queue emptied between batches of BATCH packets,
outside the timed part). `datagram_received` is called directly, from the latched source. A
run fails if a consumer or the recorder failed or dropped anything (the node would count it
and go on, and the step would look cheaper or dearer than it is).

The chain is measured cumulatively, each time built afresh and fed the whole stream:

- ``receive``: the receiver, with a sink that does nothing;
- ``assembly``: + `MediaIngest` as the receiver's sink, with a demuxer that returns nothing
  (collecting the payloads and joining them once per frame);
- ``on_packet``: + `LiveStream.on_packet` between the two, as the node wires them (sequence
  check, RTP consumers: none here);
- ``demux``: + the real `PsFrameDemuxer`, its units dropped;
- ``hub``: + `LiveStream._units` without consumers;
- ``recorder``: + one recorder consumer: the whole chain.

The cost of a step is the difference between its chain and the one before, per RTP packet and
per video frame (ns from `time.perf_counter_ns`, over every packet of the stream). The streams:
720p at 2 and 4 Mbit/s and 1080p at 8 Mbit/s, 25 fps, plus a 600 kbit/s 720p stream where the
per-frame work dominates (two or three packets a frame); the clips are encoded with PyAV once
and cached (`bench/ingest_sender.py`'s texture, GOP 50). Each run is a fresh process that
measures every chain ``--repeats`` times and keeps the least; the figures are the median
(min-max) of the runs. With ``--base REV`` the same measurement runs on that commit too (a git
worktree under /tmp), alternately with the head in every run, so the two are compared within
one run of this script; the head is the working tree, or ``--head REV`` in a worktree of its
own (so that others' unfinished edits stay out). ``--profile`` adds a cProfile summary
of the whole chain on the 4 Mbit/s stream (own time per function, per video frame); the
profiler's own overhead inflates every figure, so read it for proportions.

Loss. ``lossy`` is the whole chain with one packet in LOSS_EVERY left out, through the tree's
own `MediaIngest`: after each hole `MediaIngest.restart` starts a new demuxer and the rest of
the damaged frame sends it to the internal `PsDemuxer`; since 6bef05f the new demuxer knows the
stream's program stream map and the fast path is taken up again at the next frame that starts
with a pack header, where before it waited for a keyframe that carries its PSM (up to a GOP
later). Under each table: the holes, how often the fast path was taken up again, and the
frames the full demuxer took (where the tree counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SSRC = 112_000_001
SOURCE = ("127.0.0.1", 40000)
CHANNEL = "31011200001310000101"
FPS = 25
BATCH = 500  # packets timed together; the recorder's queue is emptied between batches
STEPS = ("receive", "assembly", "on_packet", "demux", "hub", "recorder")
#: (name, width, height, bit/s)
STREAMS = (
    ("720p 0.6 Mbit/s", 1280, 720, 600_000),
    ("720p 2 Mbit/s", 1280, 720, 2_000_000),
    ("720p 4 Mbit/s", 1280, 720, 4_000_000),
    ("1080p 8 Mbit/s", 1920, 1080, 8_000_000),
)
BEGIN, END = "<!-- frames:begin -->", "<!-- frames:end -->"
LOSS_EVERY = 1000  # one packet in this many is left out in the lossy chain
LOSSY = ("lossy",)


# ----- the streams (parent process) ------------------------------------------------------------


def clip_frames(width: int, height: int, bitrate: int) -> list[tuple[bytes, bool]]:
    """The PS bytes of each frame of `bench/ingest_sender.py`'s clip at this size and rate.

    That module encodes at its module-level size and rate (and names its cache file after
    them), so they are set for the call."""
    sys.path.insert(0, str(BENCH))
    import ingest_sender

    saved = ingest_sender.WIDTH, ingest_sender.HEIGHT, ingest_sender.BITRATE
    ingest_sender.WIDTH, ingest_sender.HEIGHT, ingest_sender.BITRATE = width, height, bitrate
    try:
        return ingest_sender.clip()
    finally:
        ingest_sender.WIDTH, ingest_sender.HEIGHT, ingest_sender.BITRATE = saved


def rtp_packets(frames: list[tuple[bytes, bool]], seconds: float) -> tuple[list[bytes], int]:
    """`seconds` of the clip, looped, as RTP packets (the first frame with the system header
    and PSM, as a session starts), and the number of video frames."""
    from ingest_sender import PAYLOAD_MAX, session_start

    from rtp.psmux import RtpPacketizer

    packetizer = RtpPacketizer(ssrc=SSRC, payload_max=PAYLOAD_MAX)
    count = round(seconds * FPS)
    first = session_start(frames)[0]
    packets: list[bytes] = []
    packetizer.sequence = 0
    for k in range(count):
        ps = first if k == 0 else frames[k % len(frames)][0]
        packets += packetizer.packetize(ps, k * (90_000 // FPS))
    return packets, count


def make_streams(path: Path, seconds: float) -> dict[str, dict[str, Any]]:
    described = {}
    streams = {}
    for name, width, height, bitrate in STREAMS:
        frames = clip_frames(width, height, bitrate)
        packets, count = rtp_packets(frames, seconds)
        size = sum(len(p) for p in packets)
        streams[name] = (packets, count)
        described[name] = {
            "frames": count,
            "packets": len(packets),
            "packets_per_frame": len(packets) / count,
            "mbit_s": size * 8 * FPS / count / 1e6,
        }
    path.write_bytes(pickle.dumps(streams))
    return described


# ----- one run (child process, importing from --tree) -----------------------------------------


class _NoDemux:
    """Stands in for the demuxer in the ``assembly`` step."""

    fallen_back = False
    stream_types: dict[int, int] = {}
    fast_frames = slow_frames = 0

    def feed_frame(self, frame: object) -> list[object]:
        return []

    def flush(self) -> list[object]:
        return []


def _drop(units: object) -> None:
    pass


class _NullSink:
    def on_packet(self, payload: object, seq: int, ts: int, marker: bool) -> None:
        pass


def build_chain(step: str, loop: Any) -> tuple[Any, Any]:
    """The receiver of a chain up to `step`, and the recorder's queue (or None)."""
    import threading

    from recorder.service import Recorder
    from sensing_node.media.stream import LiveStream
    from sensing_node.recording.service import ChannelRecording
    from sensing_node.transport.rtp import MediaIngest, UdpRtpReceiver

    level = STEPS.index(step) if step in STEPS else len(STEPS) - 1
    intake = None
    if level == 0:
        sink: Any = _NullSink()
    else:
        hub = _Namespace(wall=time.time, streams={})
        stream = LiveStream.__new__(LiveStream)  # the media path only: no hub, no INVITE
        stream.hub = hub
        stream._next_seq = stream.next_seq = -1  # the name changed (the base may be older)
        stream._rtp_consumers = ()
        stream.consumers = []
        stream.frames = 0
        stream.gop, stream._gop_bytes = [], 0
        stream._proven = True
        stream.codec = stream.width = stream.height = None
        stream._late_wall = None
        stream.consumer_errors = 0
        stream.channel_id = CHANNEL
        hub.streams[CHANNEL] = stream
        ingest = MediaIngest(on_units=stream._units if level >= 4 else _drop)
        if level <= 2:
            ingest.demuxer = _NoDemux()
        stream.ingest = ingest
        if level >= 5:
            # The real Recorder without its threads: what submit() queues stays in the queue
            # until feed() takes it out, between the timed batches.
            start = threading.Thread.start
            threading.Thread.start = lambda thread: None  # type: ignore[method-assign]
            try:
                intake = Recorder(tempfile.mkdtemp(dir=_recordings()), recover_on_start=False,
                                  fsync_s=None, max_queue=1 << 40, max_queue_bytes=1 << 40)
            finally:
                threading.Thread.start = start  # type: ignore[method-assign]
            service = _Namespace(recorder=intake, hub=hub, wall=time.time)
            stream.consumers.append(ChannelRecording(service, CHANNEL))  # type: ignore[arg-type]
        sink = stream if level >= 2 else ingest
    receiver = UdpRtpReceiver(sink)
    receiver._loop = loop
    receiver.expect(SOURCE[0], SSRC)
    if level >= 2 and hasattr(receiver, "attach_fast"):  # what LiveStream._feed does
        receiver._fast.clock = loop.time
        receiver.attach_fast(stream.ingest.frame)
    return receiver, intake


class _Namespace:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def feed(receiver: Any, intake: Any, packets: list[bytes]) -> int:
    """Feed every packet, timed in batches; return the ns spent in them."""
    # The node's socket gives its datagrams to `receive_datagram` where there is one.
    receive = getattr(receiver, "receive_datagram", receiver.datagram_received)
    clock = time.perf_counter_ns
    total = 0
    source = SOURCE
    for first in range(0, len(packets), BATCH):
        batch = packets[first : first + BATCH]
        start = clock()
        for data in batch:
            receive(data, source)
        total += clock() - start
        if intake is not None:
            q = intake._queue
            while not q.empty():
                q.get_nowait()
    return total


_RECORDINGS: list[tempfile.TemporaryDirectory[str]] = []


def _recordings() -> str:
    """A directory for the recorders' indexes, removed when the process ends."""
    if not _RECORDINGS:
        _RECORDINGS.append(tempfile.TemporaryDirectory(prefix="frames-rec-"))
    return _RECORDINGS[0].name


def check(receiver: Any, intake: Any, name: str, step: str) -> None:
    """Fail the run when a part of the chain failed (the node counts such errors and goes
    on, which would make the step look cheap or dear)."""
    stream = receiver.sink
    errors = (receiver.sink_errors, getattr(stream, "consumer_errors", 0),
              0 if intake is None else intake.dropped_units)
    if any(errors):
        raise SystemExit(f"{name}, {step}: sink errors, consumer errors, units dropped: {errors}")


def new_loop() -> Any:
    """The node's event loop: uvloop where installed (`loop.time()` is called per packet)."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        import asyncio

        return asyncio.new_event_loop()


def demux_alone(packets: list[bytes]) -> int:
    """ns of `PsFrameDemuxer.feed_frame` alone, on the frames joined beforehand."""
    from rtp.psframe import PsFrameDemuxer

    frames: list[bytes] = []
    parts: list[bytes] = []
    for data in packets:
        parts.append(data[12:])
        if data[1] & 0x80:
            frames.append(b"".join(parts))
            parts = []
    demuxer = PsFrameDemuxer()
    for frame in frames[:20]:
        demuxer.feed_frame(frame)  # warm up
    demuxer = PsFrameDemuxer()
    feed_frame = demuxer.feed_frame
    clock = time.perf_counter_ns
    start = clock()
    for frame in frames:
        feed_frame(frame)
    spent = clock() - start
    assert demuxer.fast_frames == len(frames)
    return spent


def measure(streams_file: Path, repeats: int) -> dict[str, dict[str, int]]:
    """One run: ns per chain per stream, the least of `repeats` (the steps taken in turn)."""
    import gc

    loop = new_loop()
    streams = pickle.loads(streams_file.read_bytes())  # noqa: S301  # our own file
    out: dict[str, dict[str, int]] = {}
    for name, (packets, _) in streams.items():
        best: dict[str, int] = {}
        for _ in range(repeats):
            for step in STEPS:
                receiver, intake = build_chain(step, loop)
                feed(receiver, intake, packets[: 4 * BATCH])  # warm up
                receiver, intake = build_chain(step, loop)
                gc.collect()
                spent = feed(receiver, intake, packets)
                assert receiver.lost == 0, (name, step)
                check(receiver, intake, name, step)
                best[step] = min(best.get(step, spent), spent)
            gc.collect()
            spent = demux_alone(packets)
            best["demuxer alone"] = min(best.get("demuxer alone", spent), spent)
            lossy = [p for k, p in enumerate(packets) if k % LOSS_EVERY != LOSS_EVERY // 2]
            for step in LOSSY:
                receiver, intake = build_chain(step, loop)
                gc.collect()
                spent = feed(receiver, intake, lossy)
                check(receiver, intake, name, step)
                best[step] = min(best.get(step, spent), spent)
                best[step + ": holes"] = receiver.lost
                ingest = receiver.sink.ingest
                best[step + ": fast path resumed"] = ingest.fast_path_resumed
                best[step + ": slow frames"] = getattr(ingest, "slow_frames", -1)
        out[name] = best
    return out


def profile(streams_file: Path, name: str) -> list[tuple[str, float, int]]:
    """(function, own ns per video frame, calls per frame x 1000) of the whole chain."""
    import cProfile
    import pstats

    streams = pickle.loads(streams_file.read_bytes())  # noqa: S301  # our own file
    packets, frames = streams[name]
    receiver, intake = build_chain("recorder", new_loop())
    profiler = cProfile.Profile()
    profiler.enable()
    feed(receiver, intake, packets)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_, calls, own, _, _) in stats.items():
        where = path.rpartition("/work/")[2] if "/" in path else path
        for marker in ("/rtp/", "/sensing_node/", "/recorder/"):
            if marker in where:
                where = marker.strip("/") + "/" + where.partition(marker)[2]
        rows.append((f"{where}:{line}({func})", own * 1e9 / frames, round(1000 * calls / frames)))
    rows.sort(key=lambda r: -r[1])
    return rows[:20]


# ----- the parent: runs, worktree, report -----------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def child(tree: Path, streams_file: Path, what: str, extra: str) -> Any:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    done = subprocess.run(
        [sys.executable, str(BENCH / "frames.py"), what, str(tree), str(streams_file), extra],
        cwd=tree, env=env, capture_output=True, text=True,
    )
    if done.returncode:
        raise SystemExit(f"{what} in {tree} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(results: dict[str, list[dict[str, dict[str, int]]]],
           described: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    """Markdown: per stream, each step's cost per packet and per frame, per tree."""
    lines = []
    for name, info in described.items():
        lines.append(
            f"**{name}** ({info['mbit_s']:.2f} Mbit/s with RTP headers, "
            f"{info['packets_per_frame']:.1f} packets per frame, {info['frames']} frames, "
            f"{info['packets']} packets). µs, median (min-max) of the runs."
        )
        lines.append("")
        header = "| step |"
        rule = "|---|"
        for label in labels.values():
            header += f" {label} per packet | {label} per frame |"
            rule += "---:|---:|"
        lines += [header, rule]
        for level, step in enumerate(STEPS):
            row = f"| {step} |"
            for tree in labels:
                per_packet, per_frame = [], []
                for run in results[tree]:
                    ns = run[name][step] - (run[name][STEPS[level - 1]] if level else 0)
                    per_packet.append(ns / info["packets"] / 1000)
                    per_frame.append(ns / info["frames"] / 1000)
                row += f" {spread(per_packet)} | {spread(per_frame)} |"
            lines.append(row)
        row = "| **whole chain** |"
        for tree in labels:
            whole = [run[name]["recorder"] for run in results[tree]]
            row += (f" {spread([ns / info['packets'] / 1000 for ns in whole])} |"
                    f" {spread([ns / info['frames'] / 1000 for ns in whole])} |")
        lines.append(row)
        for extra in ("demuxer alone", *LOSSY):
            row = f"| {extra} |"
            for tree in labels:
                spent = [run[name][extra] for run in results[tree] if extra in run[name]]
                if not spent:
                    row += " – | – |"
                    continue
                row += (f" {spread([ns / info['packets'] / 1000 for ns in spent])} |"
                        f" {spread([ns / info['frames'] / 1000 for ns in spent])} |")
            lines.append(row)
        lossy = []
        for tree, label in labels.items():
            counts = results[tree][0][name]
            slow = counts.get("lossy: slow frames", -1)
            lossy.append(f"{label}: {counts['lossy: holes']} hole(s), fast path taken up again "
                         f"{counts['lossy: fast path resumed']} time(s)"
                         + (f", {slow} frame(s) on the full demuxer" if slow >= 0 else ""))
        lines += ["", "Lossy chain: " + "; ".join(lossy) + "."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] in ("measure", "profile"):
        sys.path.insert(0, sys.argv[2])
        if sys.argv[1] == "measure":
            print(json.dumps(measure(Path(sys.argv[3]), int(sys.argv[4]))))
        else:
            print(json.dumps(profile(Path(sys.argv[3]), sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=120, help="of each stream")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements per run, of which the least counts")
    parser.add_argument("--base", help="a commit to measure alternately with the head")
    parser.add_argument("--head", help="a commit to measure instead of the working tree")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="frames-") as tmp:
        streams_file = Path(tmp) / "streams.pkl"
        described = make_streams(streams_file, args.seconds)
        trees: dict[str, Path] = {}
        labels: dict[str, str] = {}
        for tree, rev in (("base", args.base), ("head", args.head)):
            if rev:
                commit = git("rev-parse", "--short", rev)
                trees[tree], labels[tree] = Path(tmp) / f"{tree}-{commit}", commit
                git("worktree", "add", "--detach", "-f", str(trees[tree]), commit)
        if not args.head:
            head = git("rev-parse", "--short", "HEAD")
            dirty = git("status", "--porcelain", "--", "rtp", "sensing_node", "recorder")
            trees["head"], labels["head"] = ROOT, head + (" + working tree" if dirty else "")
        try:
            results: dict[str, list[Any]] = {tree: [] for tree in trees}
            for run in range(args.runs):
                for tree, path in trees.items():
                    results[tree].append(
                        child(path, streams_file, "measure", str(args.repeats))
                    )
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
            profiles = {}
            if args.profile:
                for tree, path in trees.items():
                    profiles[tree] = child(path, streams_file, "profile", "720p 4 Mbit/s")
        finally:
            for path in trees.values():
                if path != ROOT:
                    git("worktree", "remove", "--force", str(path))
    text = report(results, described, labels)
    command = "bench/frames.py " + " ".join(sys.argv[1:])
    sys.path.insert(0, str(BENCH))
    from relay import machine

    host = machine()
    context = (
        f"- Date: {host['date']}; the run took {time.time() - began:.0f} s; machine: "
        f"{host['cpu']}, nproc {host['nproc']}; Linux {host['kernel']}; Python {host['python']}\n"
        f"- Command: `.venv/bin/python {command}`; {args.runs} runs of {args.seconds:g} s of "
        f"each stream\n"
    )
    text = context + "\n" + text
    for tree, rows in profiles.items():
        text += (f"\ncProfile of the whole chain, 720p 4 Mbit/s, {labels[tree]}: own time per "
                 "video frame (µs, profiler overhead included) and calls per frame\n\n"
                 "| function | µs per frame | calls per frame |\n|---|---:|---:|\n")
        for func, ns, calls in rows:
            text += f"| `{func}` | {ns / 1000:.2f} | {calls / 1000:.2f} |\n"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "streams": described,
                                         "labels": labels, "profiles": profiles}, indent=1))
    if args.write:
        sys.path.insert(0, str(BENCH))
        from common import write_section

        write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
