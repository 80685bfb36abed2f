"""Live-ingest benchmark: N simulated 4 Mbit/s cameras into one node process, UDP and TCP.

    .venv/bin/python bench/ingest.py [--streams 100,200,300,400] [--transport udp,tcp]
                                     [--runs 3] [--duration 60] [--warmup 5] [--no-doc]
    make bench-ingest

For every transport, stream count and run, two passes with the same traffic, one right after
the other:

  bare  a uvloop process with N sockets (1 MiB SO_RCVBUF) that only counts: for UDP a
        DatagramProtocol counting datagrams, for TCP a BufferedProtocol counting bytes read
        into one fixed buffer. The floor of receiving this traffic in Python on uvloop.
  node  the node's receive path: `sensing_node.transport.rtp.UdpRtpReceiver` (or a passive
        `TcpRtpReceiver`, RFC 4571) per stream from a `PortPool`, each expecting its source
        and SSRC, with a `MediaIngest` sink wired as `sensing_node.media` wires it
        (`on_units`); the access units it demuxes are counted and dropped.

Both run on uvloop, pinned to CPU 0; the senders (`bench/ingest_sender.py`, pinned to CPU 1)
send each stream's frames as paced bursts. After a warm-up the receiver's CPU time
(`time.process_time()`, user + system of the whole process) and counters are read at the start
and at the end of the measurement window. Loss is counted over the whole pass: packets sent
minus packets the receiver took, per stream, once the senders stopped and the receiver has read
everything left in its sockets;
the kernel's UDP receive-buffer drops (/proc/net/snmp) are recorded as a cross-check.

Writes its section of docs/benchmarks.md (between `<!-- ingest:begin -->` and
`<!-- ingest:end -->`; `bench/run_all.py` keeps it when it rewrites the rest) unless --no-doc.
Internal role: `bench/ingest.py receive --kind node|bare --transport udp|tcp --streams N`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import json
import os
import platform
import shlex
import signal
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
from common import write_section as write_doc_section  # noqa: E402
from ingest_sender import SSRC_BASE, clip, clip_stats  # noqa: E402

BENCH = Path(__file__).resolve().parent
PY = sys.executable
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- ingest:begin -->", "<!-- ingest:end -->"
HOST = "127.0.0.1"
PORTS = (30000, 31999)  # PortPool range of the node pass (even ports: 1000 streams)
RCVBUF = 1 << 20

# Goal from the issue: 300 streams on one core, no loss, at most 70% of the core, at most 2.5x
# the bare loop's CPU per packet; stretch 400.
GOAL_STREAMS, STRETCH_STREAMS = 300, 400
GOAL_SHARE, GOAL_RATIO = 0.70, 2.5
BACKLOG_OK_MS = 100  # more than this much of the stream unread at the window end: behind
QUIET_SHARE = 0.25  # the receiver's core counts as free for a pass below this busy share
DISTURBED = 0.25  # other work on the receiver's core during a window (cores): pass repeated


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- receiver process (CPU 0) ----------------------------------------------------------------


class BareUdp(asyncio.DatagramProtocol):
    __slots__ = ("packets",)

    def __init__(self) -> None:
        self.packets = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets += 1


class BareTcp(asyncio.BufferedProtocol):
    __slots__ = ("bytes", "buf")

    def __init__(self) -> None:
        self.bytes = 0
        self.buf = memoryview(bytearray(1 << 18))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes += nbytes


async def receive(args: argparse.Namespace) -> None:
    import socket

    loop = asyncio.get_running_loop()
    n = args.streams
    tcp = args.transport == "tcp"
    ports: list[int] = []
    counters: list[Any] = []  # receivers (node) or protocols (bare)
    units = [0] * n
    keep: list[Any] = []

    if args.kind == "node":
        from sensing_node.transport.rtp import (
            MediaIngest,
            PortPool,
            TcpRtpReceiver,
            UdpRtpReceiver,
        )

        pool = PortPool(*PORTS)
        for i in range(n):
            def on_units(batch: list[Any], i: int = i) -> None:
                units[i] += len(batch)

            # As sensing_node.media wires it: a list of units per frame, here only counted.
            ingest = MediaIngest(on_units=on_units)
            if tcp:
                tr = TcpRtpReceiver(ingest)
                _, port = await tr.listen_tcp(HOST, pool)
                tr.expect(SSRC_BASE + i)
                counters.append(tr)
            else:
                ur = await UdpRtpReceiver.open(HOST, pool, ingest)
                ur.expect(HOST, SSRC_BASE + i)
                port = ur.port
                counters.append(ur)
            ports.append(port)
    else:
        for _ in range(n):
            if tcp:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                sock.bind((HOST, 0))
                sock.listen(4)
                sock.setblocking(False)
                tproto = BareTcp()
                keep.append(await loop.create_server(lambda p=tproto: p, sock=sock))
                counters.append(tproto)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                sock.bind((HOST, 0))
                sock.setblocking(False)
                uproto = BareUdp()
                await loop.create_datagram_endpoint(lambda p=uproto: p, sock=sock)
                counters.append(uproto)
            ports.append(sock.getsockname()[1])

    def snapshot() -> dict[str, Any]:
        t = time.monotonic()
        cpu = time.process_time()
        if args.kind == "node":
            out = {
                "packets": [r.packets for r in counters],
                "bytes": sum(r.bytes for r in counters),
                "units": list(units),
                "lost": sum(r.lost for r in counters),
                "reordered": sum(r.reordered for r in counters),
                "duplicates": sum(r.duplicates for r in counters),
                "foreign": sum(r.dropped_foreign for r in counters),
                "invalid": sum(r.dropped_invalid for r in counters),
                "sink_errors": sum(r.sink_errors for r in counters),
                "resyncs": sum(getattr(r.sink.demuxer, "resyncs", 0) for r in counters),
                # per-frame demuxer (rtp.psframe): frames parsed by its fast path / fallback
                "fast_frames": sum(getattr(r.sink.demuxer, "fast_frames", 0) for r in counters),
                "slow_frames": sum(getattr(r.sink.demuxer, "slow_frames", 0) for r in counters),
            }
        elif tcp:
            out = {"bytes": sum(p.bytes for p in counters)}
        else:
            out = {"packets": [p.packets for p in counters]}
        out.update(t=t, cpu=cpu)
        return out

    # Commands come on stdin and are answered from a thread, so that the counters are read when
    # asked even while the loop is saturated (a stdin reader on the loop would wait its turn).
    # The thread sleeps in read() in between, so it costs nothing measurable.
    done = loop.create_future()

    def on_loop(fn: Any) -> Any:
        """Run fn on the loop thread and wait for it (cProfile profiles the calling thread)."""
        result = concurrent.futures.Future()  # type: ignore[var-annotated]

        def call() -> None:
            result.set_result(fn())

        loop.call_soon_threadsafe(call)
        return result.result(30)

    def commands() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                reply = snapshot()
            elif cmd == "profile on":
                profiler = cProfile.Profile()
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
    print(json.dumps({"pid": os.getpid(), "ports": ports, "pinned": args.pinned}), flush=True)
    await done


# ----- orchestration ---------------------------------------------------------------------------


def busy_cpu_seconds(cpu: int | None = None) -> float:
    """Busy time since boot (user+nice+system+irq+softirq+steal) of all CPUs, or of one."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == name:
                break
        else:
            return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(cpu: int | None, limit: float) -> float:
    """Wait (up to `limit` s) until the receiver's core is mostly idle, so that a pass does not
    start while another benchmark is pinned there; returns the busy share last seen."""
    if cpu is None:
        return 0.0
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = busy_cpu_seconds(cpu), time.monotonic()
        time.sleep(1.0)
        share = (busy_cpu_seconds(cpu) - b0) / (time.monotonic() - t0)
        if share < QUIET_SHARE or time.monotonic() > deadline:
            return share
        log(f"CPU {cpu} is {100 * share:.0f}% busy with other work: waiting")
        time.sleep(4.0)


def udp_drops() -> int:
    """RcvbufErrors of /proc/net/snmp (datagrams dropped on a full receive buffer)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Udp:")]
    head, values = lines[0], lines[1]
    return int(values[head.index("RcvbufErrors")])


class Receiver:
    def __init__(self, kind: str, transport: str, streams: int, cpu: int | None) -> None:
        cmd = [PY, str(Path(__file__).resolve()), "receive", "--kind", kind, "--transport",
               transport, "--streams", str(streams)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, start_new_session=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"{kind} receiver did not start")
        ready = json.loads(line)
        self.pid: int = ready["pid"]
        self.ports: list[int] = ready["ports"]
        self.pinned: str = ready["pinned"]

    def cmd(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(20)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)


def one_pass(kind: str, transport: str, n: int, args: argparse.Namespace, tmp: Path,
             cpus: tuple[int | None, int | None], profile: str | None = None) -> dict[str, Any]:
    recv = Receiver(kind, transport, n, cpus[0])
    senders: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        targets = tmp / f"targets-{kind}-{transport}-{n}.json"
        targets.write_text(json.dumps({"host": HOST, "ports": recv.ports}))
        per = -(-n // args.senders)
        total = args.warmup + args.duration + args.tail
        for s in range(args.senders):
            first = s * per
            count = min(per, n - first)
            if count <= 0:
                break
            out = tmp / f"sender-{kind}-{transport}-{n}-{s}.json"
            cmd = [PY, str(BENCH / "ingest_sender.py"), "--targets", str(targets),
                   "--transport", transport, "--duration", str(total), "--first", str(first),
                   "--count", str(count), "--out", str(out), "--session-start"]
            if cpus[1] is not None:
                cmd += ["--cpu", str(cpus[1])]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT,
                                    start_new_session=True)
            senders.append((proc, out))
        starts = []
        for proc, _ in senders:
            line = proc.stdout.readline().decode()  # type: ignore[union-attr]
            if not line.startswith("START "):
                raise RuntimeError(f"sender did not start: {line!r}")
            starts.append(float(line.split()[1]))
        start = max(starts)
        drops0 = udp_drops()
        time.sleep(max(0.0, start + args.warmup - time.monotonic()))
        busy0 = busy_cpu_seconds()
        core0 = busy_cpu_seconds(cpus[0])
        if profile:
            recv.cmd("profile on")
        a = recv.cmd("stats")
        time.sleep(max(0.0, start + args.warmup + args.duration - time.monotonic()))
        b = recv.cmd("stats")
        if profile:
            recv.cmd(f"profile off {profile}")
        busy1 = busy_cpu_seconds()
        core1 = busy_cpu_seconds(cpus[0])
        results = []
        for proc, out in senders:
            proc.wait(total + 120)
            if proc.returncode != 0:
                raise RuntimeError(f"sender failed ({proc.returncode})")
            results.append(json.loads(out.read_text()))
        c = drained(recv, args.drain)
        drops = udp_drops() - drops0
    finally:
        for proc, _ in senders:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        recv.stop()
    out = summarize(kind, transport, n, a, b, c, results, drops, busy1 - busy0, recv.pinned)
    # Other work on the receiver's own core during the window (its busy time minus ours; the
    # tick-based /proc/stat figures make this good to about 0.02 core).
    out["other_on_core"] = (0.0 if cpus[0] is None else
                            max(0.0, (core1 - core0 - out["cpu_s"]) / out["window_s"]))
    return out


def drained(recv: Receiver, settle: float, limit: float = 20.0) -> dict[str, Any]:
    """Final counters, once the receiver has taken everything the kernel still holds for it:
    read until they stop moving for `settle` seconds (a node that fell behind still has
    seconds of traffic in its socket buffers when the senders stop)."""
    deadline = time.monotonic() + limit
    last = recv.cmd("stats")
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = recv.cmd("stats")
        if now.get("packets", now.get("bytes")) == last.get("packets", last.get("bytes")):
            return now
        last = now
    return last


def sent_by(progress: list[list[float]], t: float) -> float:
    """Packets a sender had sent by time t, interpolated from its (time, count) samples."""
    prev_t, prev_n = progress[0]
    if t <= prev_t:
        return 0.0
    for now, n in progress[1:]:
        if now >= t:
            return prev_n + (n - prev_n) * (t - prev_t) / max(1e-9, now - prev_t)
        prev_t, prev_n = now, n
    return float(prev_n)


def summarize(kind: str, transport: str, n: int, a: dict[str, Any], b: dict[str, Any],
              c: dict[str, Any], senders: list[dict[str, Any]], drops: int, busy: float,
              pinned: str) -> dict[str, Any]:
    window = b["t"] - a["t"]
    cpu = b["cpu"] - a["cpu"]
    sent = [x for s in senders for x in s["sent_packets"]]
    sent_bytes = sum(s["sent_bytes"] for s in senders)
    sent_total = sum(sent)
    marks = [sum(sent_by(s["progress"], t) for s in senders) for t in (a["t"], b["t"])]
    sender_cpu = sum(s["cpu_s"] for s in senders)
    sender_wall = max(s["wall_s"] for s in senders)
    out: dict[str, Any] = {
        "kind": kind, "transport": transport, "streams": n, "window_s": window,
        "cpu_s": cpu, "cpu_share": cpu / window, "sent": sent_total,
        "sender_cpu_share": sender_cpu / sender_wall,
        "lateness_p99_ms": max(s["lateness_ms"]["p99"] for s in senders),
        "lateness_max_ms": max(s["lateness_ms"]["max"] for s in senders),
        "late_over_10ms": sum(s["lateness_ms"]["over_10ms"] for s in senders),
        "send_errors": sum(s["send_errors"] for s in senders),
        "udp_rcvbuf_drops": drops if transport == "udp" else 0,
        "pinned": pinned,
    }
    # CPU of the rest of the machine during the window, in cores (ours: receiver + senders).
    out["other_load"] = max(0.0, (busy - cpu - sender_cpu * window / sender_wall) / window)
    if "packets" in c:
        got = c["packets"]
        per_stream = [s - g for s, g in zip(sent, got, strict=True)]
        out["received"] = sum(got)
        out["window_packets"] = sum(b["packets"]) - sum(a["packets"])
        out["lost"] = sum(max(0, x) for x in per_stream)
        out["streams_with_loss"] = sum(1 for x in per_stream if x > 0)
        out["max_stream_loss"] = max(per_stream) if per_stream else 0
        received_by_end = sum(b["packets"])
    else:  # bare TCP: bytes only; packets from the senders' bytes per packet
        per_packet = sent_bytes / sent_total
        out["received"] = round(c["bytes"] / per_packet)
        out["window_packets"] = round((b["bytes"] - a["bytes"]) / per_packet)
        out["lost"] = sent_bytes - c["bytes"]  # bytes, 0 when everything arrived
        out["streams_with_loss"] = 0
        out["max_stream_loss"] = 0
        received_by_end = round(b["bytes"] / per_packet)
    # Sent during the window vs taken by the receiver; what was sent but not yet taken at
    # the end of the window (in the kernel's buffers, or lost), in ms of the offered load.
    out["window_sent"] = marks[1] - marks[0]
    out["delivered"] = out["window_packets"] / max(1, out["window_sent"])
    rate = out["window_sent"] / window
    out["backlog_ms"] = 1000 * max(0, marks[1] - received_by_end) / max(1.0, rate)
    out["us_per_packet"] = 1e6 * cpu / max(1, out["window_packets"])
    out["packets_per_s"] = out["window_packets"] / window
    if kind == "node":
        frames_sent = sum(s["frames_per_stream"] * s["count"] for s in senders)
        out["units"] = sum(c["units"])
        out["frames_sent"] = frames_sent
        out["window_units_per_s"] = (sum(b["units"]) - sum(a["units"])) / window
        for key in ("lost", "reordered", "duplicates", "foreign", "invalid", "sink_errors",
                    "resyncs", "fast_frames", "slow_frames"):
            out[f"node_{key}"] = c[key]
    return out


# ----- report ----------------------------------------------------------------------------------


def pick(results: list[dict[str, Any]], transport: str, n: int
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The node passes and the bare passes of one row, paired by run (runs with both only)."""
    def of(kind: str) -> dict[int, dict[str, Any]]:
        return {r["run"]: r for r in results
                if r["kind"] == kind and r["transport"] == transport and r["streams"] == n}
    node, bare = of("node"), of("bare")
    runs = sorted(node.keys() & bare.keys())
    return [node[k] for k in runs], [bare[k] for k in runs]


def stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cell(values: list[float], digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    s = stat(values)
    if s["min"] == s["max"]:
        return f"{s['median'] * scale:,.{digits}f}{unit}"
    return (f"{s['median'] * scale:,.{digits}f}{unit} "
            f"({s['min'] * scale:,.{digits}f}–{s['max'] * scale:,.{digits}f})")


def node_commit() -> str:
    """The commit of the code under test (read-only git), marked if the receive path differs."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, timeout=10)
        paths = ["sensing_node/transport/rtp.py", "rtp"]
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=ROOT,
                               timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" with uncommitted changes to the receive path" if dirty
                                  else "")


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import uvloop

    return {"cpu_model": model, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uvloop.__version__,
            "loadavg": os.getloadavg()}


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any],
           clipinfo: dict[str, float], command: str, elapsed: float,
           note: str | None) -> str:
    L: list[str] = []
    add = L.append
    add("## Live ingest: simulated cameras over UDP and TCP")
    add("")
    add("N simulated cameras, each a 4 Mbit/s GB/T 28181 PS-over-RTP stream, received by one "
        "process on one core; the node's receive path against a bare uvloop receive loop with "
        "the same traffic in the same run. Written by `bench/ingest.py` (`make bench-ingest`, "
        "also run by `make bench`).")
    add("")
    if note:
        add(f"> **{note}**")
        add("")
    add(f"- Machine: {info['cpu_model']}, nproc {info['nproc']}; Linux {info['kernel']}; "
        f"Python {info['python']}, uvloop {info['uvloop']}")
    add(f"- Date: {info['date']}; load average at the start "
        f"{', '.join(f'{x:.2f}' for x in info['loadavg'])}; the whole run took "
        f"{elapsed / 60:.0f} min")
    add(f"- Command: `{command}`; code under test: commit {info['commit']}")
    add(f"- Each pass: {args.warmup:g} s warm-up, then a {args.duration:g} s measurement "
        f"window; {args.runs} run{'s' if args.runs > 1 else ''} per stream count and transport, "
        "each run a bare pass and a "
        f"node pass back to back. Receiver pinned to CPU {args.cpus[0]}, the "
        f"{args.senders} sender process{'es' if args.senders > 1 else ''} to CPU "
        f"{args.cpus[1]}; every process asks for nice -10.")
    add(f"- Stream: H.264 {clipinfo['width']}x{clipinfo['height']}, 25 fps, key frame every "
        f"50 frames, {clipinfo['bitrate_bps'] / 1e6:.2f} Mbit/s on the wire (RTP), "
        f"{clipinfo['packets_per_s']:.0f} packets/s of 1,400 payload bytes; key frames "
        f"{clipinfo['key_frame_bytes'] / 1000:.0f} kB ({clipinfo['key_frame_packets']:.0f} "
        f"packets in one burst), other frames {clipinfo['other_frame_bytes'] / 1000:.1f} kB. "
        "An 8 s clip encoded once with PyAV/libx264, looped; each stream starts at a different "
        "point of it and at a different phase of the 40 ms frame period.")
    add("- Senders (`bench/ingest_sender.py`): packets are built once; per stream only sequence "
        "number, timestamp and SSRC are written before sending. UDP: one connected socket per "
        "stream, each frame sent with UDP GSO (`UDP_SEGMENT`, up to 44 packets per `send`; the "
        "kernel splits them, so the receiver still gets one datagram per RTP packet), which "
        "keeps the senders' core from being the limit. TCP: one connection per stream to the "
        "node's passive port, RFC 4571 framing, one `sendall` per frame.")
    add("- Bare TCP counts bytes, not frames: it reads whatever is queued (many packets per "
        "read) and its µs/pkt is its CPU over bytes received / bytes per packet. Its cost per "
        "packet is therefore a per-read cost spread over the packets, and the TCP ratio compares "
        "the node's per-packet work with it.")
    add("")
    add("Median of the runs, (min–max) when they differ. Offered: RTP packets/s the senders "
        "sent during the window. CPU: receiver process CPU time (user + system) over the window, "
        "in % of one core. µs/pkt: that CPU time over the RTP packets received in the window. "
        "Ratio: node µs/pkt over bare µs/pkt of the same run. Lost: packets sent minus "
        "packets the node took, over the whole pass, all streams, counted once it has read "
        "what its sockets still held after the senders stopped. Backlog: packets sent but not "
        "yet taken at the end of the window, in ms of the offered load (TCP: what sits in the "
        "socket buffers when the node falls behind; UDP: in flight, plus anything lost). Sender "
        "late: how long after its due time a frame's burst started, over all passes of that "
        "row.")
    add("")
    add("| transport | N | offered pkt/s | bare CPU | bare µs/pkt | node CPU | node µs/pkt | "
        "ratio | node lost | node backlog ms | frames demuxed/s | sender late p99 / max ms |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for transport in args.transports:
        for n in args.streams:
            node, bare = pick(results, transport, n)
            if not node or not bare:
                continue
            ratios = [x["us_per_packet"] / y["us_per_packet"]
                      for x, y in zip(node, bare, strict=True)]
            late = [r["lateness_p99_ms"] for r in node + bare]
            late_max = [r["lateness_max_ms"] for r in node + bare]
            rows[(transport, n)] = {
                "share": stat([r["cpu_share"] for r in node]),
                "lost": [r["lost"] for r in node],
                "backlog": [r["backlog_ms"] for r in node],
                "ratio": stat(ratios),
            }
            add(f"| {transport.upper()} | {n} | "
                f"{cell([r['window_sent'] / r['window_s'] for r in node], 0)} | "
                f"{cell([r['cpu_share'] for r in bare], 1, 100, '%')} | "
                f"{cell([r['us_per_packet'] for r in bare], 2)} | "
                f"{cell([r['cpu_share'] for r in node], 1, 100, '%')} | "
                f"{cell([r['us_per_packet'] for r in node], 2)} | {cell(ratios, 2)} | "
                f"{cell([r['lost'] for r in node], 0)} | "
                f"{cell([r['backlog_ms'] for r in node], 0)} | "
                f"{cell([r['window_units_per_s'] for r in node], 0)} | "
                f"{max(late):.1f} / {max(late_max):.1f} |")
    add("")
    add("Per run. Lost: over the whole pass (bare TCP: bytes). UDP drops: the kernel's "
        "RcvbufErrors (/proc/net/snmp) during the pass, machine-wide, so other processes' drops "
        "count too. Reorder-lost: the node's own count of sequence gaps given up. Sender CPU: "
        "the sender process's CPU time over its run, node pass. Other load: CPU used by other "
        "processes on the machine during the window, in cores (the larger of the two passes); "
        "other on CPU 0: that core's busy time minus the receiver's CPU time, which also holds "
        "the kernel's interrupt and scheduling work for the traffic itself (about 0.1 core at "
        "75,000 packets/s). Before each pass the benchmark "
        f"waits for the receiver's core to be below {QUIET_SHARE:.0%} busy, and a pass with "
        f"more than {DISTURBED} of that core taken by other work is measured once more "
        "(\"repeated\"; the second measurement stands).")
    add("")
    add("| transport | N | run | bare CPU | bare µs/pkt | bare lost | node CPU | node µs/pkt | "
        "node lost (streams) | node backlog ms | UDP drops bare / node | node reorder-lost | "
        "sender CPU | other load | other on CPU 0 |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for transport in args.transports:
        for n in args.streams:
            node, bare = pick(results, transport, n)
            for x, y in zip(node, bare, strict=True):
                drops = (f"{y['udp_rcvbuf_drops']:,} / {x['udp_rcvbuf_drops']:,}"
                         if transport == "udp" else "–")
                repeated = (" (repeated)" if max(x.get("attempts", 1), y.get("attempts", 1)) > 1
                            else "")
                add(f"| {transport.upper()} | {n} | {x['run']} | {100 * y['cpu_share']:.1f}% | "
                    f"{y['us_per_packet']:.2f} | {y['lost']:,} | {100 * x['cpu_share']:.1f}% | "
                    f"{x['us_per_packet']:.2f} | {x['lost']:,} ({x['streams_with_loss']}) | "
                    f"{x['backlog_ms']:.0f} | "
                    f"{drops} | "
                    f"{x['node_lost']:,} | {100 * x['sender_cpu_share']:.0f}% | "
                    f"{max(x['other_load'], y['other_load']):.2f} | "
                    f"{max(x.get('other_on_core', 0), y.get('other_on_core', 0)):.2f}"
                    f"{repeated} |")
    add("")
    node_runs = [r for r in results if r["kind"] == "node"]
    fast = sum(r.get("node_fast_frames", 0) for r in node_runs)
    slow = sum(r.get("node_slow_frames", 0) for r in node_runs)
    if fast + slow:
        add(f"The node's demuxer (`MediaIngest` → `rtp.psframe.PsFrameDemuxer`, one call per "
            f"RTP frame) parsed {fast:,} frames on its fast path and {slow:,} through its "
            f"`PsDemuxer` fallback, over all node passes; sink errors "
            f"{sum(r['node_sink_errors'] for r in node_runs):,}, demuxer resyncs "
            f"{sum(r['node_resyncs'] for r in node_runs):,}.")
        add("")
    errors = sum(r["send_errors"] for r in results)
    if errors:
        add(f"Sender errors: {errors:,} frame sends failed over all passes; their packets "
            "count as sent, so they show as lost.")
        add("")
    add("### Goal")
    add("")
    pps = clipinfo["packets_per_s"]
    add(f"Goal: {GOAL_STREAMS} streams on one core with zero loss, at most "
        f"{GOAL_SHARE:.0%} of the core, at most {GOAL_RATIO}x the bare loop's CPU per packet "
        f"(stretch: {STRETCH_STREAMS}). At {GOAL_STREAMS} streams ({GOAL_STREAMS * pps:,.0f} "
        f"packets/s) {GOAL_SHARE:.0%} of a core is {1e6 * GOAL_SHARE / (GOAL_STREAMS * pps):.1f} "
        f"µs per packet; at {STRETCH_STREAMS}, "
        f"{1e6 * GOAL_SHARE / (STRETCH_STREAMS * pps):.1f} µs. A row counts as keeping up when "
        f"no run left more than {BACKLOG_OK_MS} ms of traffic unread at the end of its window.")
    add("")
    for transport in args.transports:
        for n in (GOAL_STREAMS, STRETCH_STREAMS):
            row = rows.get((transport, n))
            if row is None:
                continue
            zero = all(x == 0 for x in row["lost"])
            kept_up = all(x <= BACKLOG_OK_MS for x in row["backlog"])
            share_ok = row["share"]["median"] <= GOAL_SHARE
            ratio_ok = row["ratio"]["median"] <= GOAL_RATIO
            ok = zero and kept_up and share_ok and ratio_ok
            runs = len(row["lost"])
            lossy = sum(1 for x in row["lost"] if x)
            behind = sum(1 for x in row["backlog"] if x > BACKLOG_OK_MS)
            parts = [
                "no loss" if zero else f"loss in {lossy} of {runs} runs",
                "kept up" if kept_up else
                f"fell behind (backlog over {BACKLOG_OK_MS} ms) in {behind} of {runs} runs",
                f"{100 * row['share']['median']:.1f}% of a core "
                f"({'within' if share_ok else 'over'} {GOAL_SHARE:.0%})",
                f"{row['ratio']['median']:.2f}x the bare loop's µs/packet "
                f"({'within' if ratio_ok else 'over'} {GOAL_RATIO}x)",
            ]
            add(f"- {transport.upper()}, {n} streams: **{'met' if ok else 'not met'}**: "
                + "; ".join(parts) + ".")
    add("")
    # What one core carries at the node's measured cost per packet, taken from the largest
    # stream count it kept up with (a saturated node batches more and looks cheaper).
    for transport in args.transports:
        easy = [(n, row) for (t, n), row in rows.items() if t == transport
                and all(x == 0 for x in row["lost"])
                and all(x <= BACKLOG_OK_MS for x in row["backlog"])]
        if not easy:
            continue
        n, row = max(easy, key=lambda item: item[0])
        node, bare = pick(results, transport, n)
        us = statistics.median(r["us_per_packet"] for r in node)
        bare_us = statistics.median(r["us_per_packet"] for r in bare)
        add(f"- {transport.upper()}: at the {us:.1f} µs per packet measured with {n} streams, "
            f"{GOAL_SHARE:.0%} of a core carries {1e6 * GOAL_SHARE / (us * pps):.0f} streams "
            f"and a whole core {1e6 / (us * pps):.0f}; the bare loop's {bare_us:.1f} µs would "
            f"carry {1e6 * GOAL_SHARE / (bare_us * pps):.0f} at {GOAL_SHARE:.0%}.")
    add("")
    return "\n".join(L)


def write_section(text: str) -> None:
    write_doc_section(BEGIN, END, text)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "receive":
        p = argparse.ArgumentParser()
        p.add_argument("role")
        p.add_argument("--kind", choices=("node", "bare"), required=True)
        p.add_argument("--transport", choices=("udp", "tcp"), required=True)
        p.add_argument("--streams", type=int, required=True)
        p.add_argument("--cpu", type=int)
        a = p.parse_args()
        a.pinned = pin(a.cpu)
        import uvloop

        uvloop.run(receive(a))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,200,300,400")
    parser.add_argument("--transport", default="udp,tcp")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=60.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--tail", type=float, default=1.0,
                        help="senders keep sending this long after the window")
    parser.add_argument("--drain", type=float, default=0.5,
                        help="after the senders stop, count again until nothing arrived "
                        "for this long")
    parser.add_argument("--senders", type=int, default=1, help="sender processes")
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="longest wait for the receiver's core to be free before a pass, s")
    parser.add_argument("--note", help="a line put at the top of the doc section")
    parser.add_argument("--profile", metavar="DIR",
                        help="also write a cProfile of each node pass's window to DIR "
                        "(slows the node; figures of those passes are not comparable)")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    args = parser.parse_args()
    args.streams = [int(x) for x in args.streams.split(",")]
    args.transports = [x for x in args.transport.split(",") if x]
    started = time.perf_counter()
    info = machine()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["commit"] = node_commit()
    avail = sorted(os.sched_getaffinity(0))
    cpus: tuple[int | None, int | None] = (avail[0], avail[1]) if len(avail) >= 2 else (None,
                                                                                         None)
    args.cpus = cpus
    frames = clip()
    clipinfo: dict[str, Any] = clip_stats(frames)
    clipinfo.update(width=1280, height=720)
    log(f"clip: {clipinfo['bitrate_bps'] / 1e6:.2f} Mbit/s, {clipinfo['packets_per_s']:.0f} "
        f"packets/s, key frames {clipinfo['key_frame_packets']:.0f} packets")
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    total = len(args.transports) * len(args.streams) * args.runs * 2
    command = shlex.join([".venv/bin/python", "bench/ingest.py", *sys.argv[1:]])

    def publish(final: bool) -> str:
        """Write the report of what has been measured so far (after every pass, so that a run
        stopped early still leaves its figures, marked as incomplete)."""
        notes = [args.note] if args.note else []
        if args.duration < 60:
            notes.append(f"Measurement windows of {args.duration:g} s, shorter than the 60 s the "
                         "issue asks for (to fit the time available).")
        if len(results) < total:
            notes.append(f"Incomplete: {len(results)} of {total} passes measured"
                         + (" (the run was stopped early)." if final else " so far."))
        notes += [f"Failed pass: {f}" for f in failures]
        text = report(results, args, info, clipinfo, command,
                      time.perf_counter() - started, " ".join(notes) or None)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "clip": clipinfo,
                                                   "results": results, "failures": failures},
                                                  indent=1))
        if not args.no_doc:
            write_section(text)
        return text

    # Run-major order: every stream count and transport once, then again, so that a run cut
    # short still covers the whole matrix.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="sensing-ingest-") as tmpname:
            tmp = Path(tmpname)
            for run in range(1, args.runs + 1):
                for transport in args.transports:
                    for n in args.streams:
                        for kind in ("bare", "node"):
                            prof = None
                            if args.profile and kind == "node":
                                Path(args.profile).mkdir(parents=True, exist_ok=True)
                                prof = str(Path(args.profile).resolve()
                                           / f"node-{transport}-{n}-{run}.prof")
                            try:
                                for attempt in (1, 2):
                                    wait_quiet(cpus[0], args.max_wait)
                                    r = one_pass(kind, transport, n, args, tmp, cpus, prof)
                                    if r["other_on_core"] <= DISTURBED or attempt == 2:
                                        break
                                    log(f"{transport} N={n} run {run} {kind}: other work took "
                                        f"{r['other_on_core']:.2f} of CPU {cpus[0]}: repeated")
                            except (RuntimeError, OSError, ValueError,
                                    subprocess.SubprocessError) as exc:
                                failures.append(f"{transport} N={n} run {run} {kind}: {exc}")
                                log(failures[-1])
                                continue
                            r["run"] = run
                            r["attempts"] = attempt
                            results.append(r)
                            log(f"{transport} N={n} run {run} {kind}: "
                                f"{100 * r['cpu_share']:.1f}% CPU, "
                                f"{r['us_per_packet']:.2f} µs/pkt, "
                                f"{r['packets_per_s']:,.0f} pkt/s, lost {r['lost']:,} "
                                f"({r['streams_with_loss']} streams), udp drops "
                                f"{r['udp_rcvbuf_drops']:,}, sender "
                                f"{100 * r['sender_cpu_share']:.0f}% late p99 "
                                f"{r['lateness_p99_ms']:.1f} max {r['lateness_max_ms']:.1f} ms, "
                                f"backlog {r['backlog_ms']:.0f} ms, other {r['other_load']:.2f}"
                                f", on CPU {cpus[0]} {r['other_on_core']:.2f}")
                            publish(final=False)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    text = publish(final=True)
    print(text)
    if not args.no_doc:
        log(f"wrote the ingest section of {os.path.relpath(DOC, ROOT)}")
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
