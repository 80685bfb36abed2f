"""Whole-node benchmark: simulated cameras into a real `sensing-node run`, against the bare loop.

    .venv/bin/python bench/node_bench.py [--streams 100,200,300,400,500] [--transport udp,tcp]
        [--recording off,on] [--workers 1,2] [--runs 3] [--window 20] [--warmup 5]
        [--mix 720p@2,720p@4,1080p@4,1080p@8] [--segment 10] [--senders 1]
        [--overload] [--capacity N] [--single-port] [--quick] [--node-root DIR] [--no-doc]
        [--json FILE]
    make bench-node      the full sweep (about 90 minutes)
    make bench           runs it with --quick (about 2 minutes)

For every run, transport and stream count N, one bare pass and then one node pass per
(recording, workers) pair, all with the same traffic:

  bare  a uvloop process with N sockets (1 MiB SO_RCVBUF) that only counts: for UDP a
        DatagramProtocol counting datagrams, for TCP a BufferedProtocol counting bytes read
        into one fixed buffer. The floor of receiving this traffic in Python on uvloop.
  node  `python -m sensing_node run -c <config>`, the whole node with its own configuration
        and data directory under a temporary directory: settings parser, uvloop, HTTP API,
        housekeeping, and `media.workers` worker processes when the node has them. One
        simulated NVR (`sensing_node.sim.camera.SimulatedCamera`, in this process, answering
        the node's INVITEs without media of its own) registers with N channels; the channels
        are pulled through the operator API (`POST /api/channels/{id}/live`), or with
        recording on (`recording.channels: all`) the node pulls them itself. Once every
        channel is answered, the camera traffic starts, from another process.

The cameras' media comes from `bench/ingest_sender.py` processes: PS over RTP, 1,400-byte
payloads, each frame's packets as one burst every 40 ms (UDP: UDP GSO sends; TCP: one
connection per stream to the node's passive port, RFC 4571), the streams' phases and clip
positions spread. Stream kinds are dealt round robin from `--mix` (H.264 clips encoded once with
libx264 and cached: 720p and 1080p, 25 fps, a key frame every 50 frames, 2-8 Mbit/s). Each
stream is sent to the port and with the SSRC of the node's INVITE.

Measured over the window, after a warm-up: the CPU time (user + system) of the node's whole
process tree (the node and every process descended from it, `common.tree_cpu_seconds`), in %
of one core and per packet the node took (its `/api/streams` counters); for the bare pass its
process's CPU per packet it counted; the ratio of the two per packet, same run. Loss is per
stream over the whole pass: packets sent minus packets taken, read once the senders stopped
and the counters stopped moving. Backlog: packets sent but not yet taken at the window's end,
in ms of the offered load.

CPU: on 2 cores or more, passes with one worker have the node (and every process it starts)
pinned to the first CPU, as is the bare loop, and the senders to the second; passes with more
workers pin nothing (`--pin-workers` pins those too, to as many CPUs as workers). A node that
refuses a `media.workers` value (`check-config`) has those passes skipped, with its message.

`--single-port`: every one-worker node pass is followed by the same pass with
`media.single_port` (every stream on one UDP and TCP port, told apart by SSRC; the senders
send to the port the node's offers name, so all to that one). These passes are reported in a
table of their own ("Single port", per-port against single-port with each one's ratio to the
bare loop of the same run), not in the tables above.

`--overload`: after the runs, each (transport, recording, workers) config again at 110 % and
150 % of its capacity, estimated from the largest stream count it carried without loss (N over
its share of the cores it had), or `--capacity N`. Reported: cost per packet taken, loss of the
streams the node kept and of those it shed: the channels named under `overload` in its
`/api/stats`, when it has that (printed as it is), else none. Kept streams are also reported
over the window alone: those carried from its start to its end and not shed, with the packets
the node counted lost on them (its RTP sequence gaps, `/api/streams` `lost`) in the window.

In every node pass a camera whose dialog the node ended (a BYE: a stream shed for overload)
stops sending, as a real one does: the bench tells the sender processes (`--control`). Such
streams' counters leave the node's API with them, so their loss is not known and they count
in neither the loss nor the backlog.

Writes the section "Whole node" of docs/benchmarks.md (between `<!-- node:begin -->` and
`<!-- node:end -->`) unless --no-doc. `bench/ingest.py`, `bench/record.py` and
`bench/compare.py` run this module. Internal role: `node_bench.py bare --transport T
--streams N [--cpu C]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest_sender  # noqa: E402
from common import NODE_ID, PASSWORD, PRIORITY, REALM, ROOT, pin, tree_cpu_seconds  # noqa: E402
from common import write_section as write_doc_section  # noqa: E402
from node_report import kept_up, report  # noqa: E402

BENCH = Path(__file__).resolve().parent
PY = sys.executable
BEGIN, END = "<!-- node:begin -->", "<!-- node:end -->"
HOST = "127.0.0.1"
TOKEN = "bench-node-token"
NVR_ID = f"{REALM}1320000001"
RTP_BASE = 40000
RCVBUF = 1 << 20
MIX = "720p@2,720p@4,1080p@4,1080p@8"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Skip(Exception):
    """A pass that cannot run on this node (a setting it refuses); the message says why."""


# ----- the bare receiver (its own process) -----------------------------------------------------


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


async def bare_receive(transport: str, n: int, pinned: str) -> None:
    """N sockets that count, answering `stats` on stdin from a thread (so that the counters
    are read when asked, even while the loop is saturated) until `quit` or end of input."""
    loop = asyncio.get_running_loop()
    counters: list[Any] = []
    ports: list[int] = []
    keep: list[Any] = []
    for _ in range(n):
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        if transport == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        if transport == "tcp":
            sock.listen(4)
            tproto = BareTcp()
            keep.append(await loop.create_server(lambda p=tproto: p, sock=sock))
            counters.append(tproto)
        else:
            uproto = BareUdp()
            await loop.create_datagram_endpoint(lambda p=uproto: p, sock=sock)
            counters.append(uproto)
        ports.append(sock.getsockname()[1])
    done = loop.create_future()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() != "stats":
                break
            if transport == "tcp":
                reply: dict[str, Any] = {"bytes": [c.bytes for c in counters]}
            else:
                reply = {"packets": [c.packets for c in counters]}
            reply.update(t=time.monotonic(), cpu=time.process_time())
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=commands, name="commands", daemon=True).start()
    print(json.dumps({"pid": os.getpid(), "ports": ports, "pinned": pinned}), flush=True)
    await done


class Bare:
    """The bare receiver process, steered over its stdin."""

    def __init__(self, transport: str, n: int, cpu: int | None) -> None:
        cmd = [PY, str(Path(__file__).resolve()), "bare", "--transport", transport,
               "--streams", str(n)] + ([] if cpu is None else ["--cpu", str(cpu)])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, start_new_session=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(10)
            raise RuntimeError("the bare receiver did not start")
        ready = json.loads(line)
        self.pid: int = ready["pid"]
        self.ports: list[int] = ready["ports"]
        self.pinned: str = ready["pinned"]

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


# ----- the node (its own process tree) ---------------------------------------------------------


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_single_port(above: int) -> int:
    """A port above `above` (the RTP range, which `media.single_port` must stay out of) that
    is free for both UDP and TCP right now."""
    for port in range(above + 1, 65536):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                udp.bind((HOST, port))
                tcp.bind((HOST, port))
            except OSError:
                continue
        return port
    raise OSError(f"no free port above {above} for media.single_port")


def node_config(tmp: Path, n: int, transport: str, recording: bool, workers: int,
                segment_s: int, fsync_s: float = 2.0,
                single_port: bool = False,
                media_extra: Sequence[str] = ()) -> tuple[Path, int, int]:
    """The node's configuration file for one pass; returns it with its SIP and HTTP ports.
    `media.workers` is written only when it is not 1 (the default), so that a node from before
    the setting runs the one-worker passes; `media.single_port` only when asked for, on a
    free port above the RTP range; `media_extra` ("key: value" lines, `--media`) as given."""
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    high = RTP_BASE + max(1000, 4 * n + 100)
    media = f"  transport: {'udp' if transport == 'udp' else 'tcp-passive'}\n"
    # Channels wait for the senders while the rest are pulled: no BYE for silence meanwhile.
    media += "  timeout_s: 120\n"
    if workers != 1:
        media += f"  workers: {workers}\n"
    if single_port:
        media += f"  single_port: {free_single_port(high)}\n"
    media += "".join(f"  {line}\n" for line in media_extra)
    text = f"""\
node:
  id: "{NODE_ID}"
  realm: "{REALM}"
  sip_listen: "{HOST}:{sip_port}"
  media_ip: "{HOST}"
  rtp_ports: "{RTP_BASE}-{high}"
  http_listen: "{HOST}:{http_port}"
  api_token: "{TOKEN}"
  data_dir: "{tmp / 'data'}"
devices:
  password: "{PASSWORD}"
  allow: ["31011200"]
  keepalive_timeout_s: 3600
media:
{media}recording:
  channels: {'all' if recording else '[]'}
  segment_s: {segment_s}
  fsync_s: {fsync_s:g}
  min_free_gb: 0
"""
    path = tmp / "node.yaml"
    path.write_text(text)
    return path, sip_port, http_port


def node_env(root: Path) -> dict[str, str]:
    """The environment that makes `python -m sensing_node` import the tree at `root`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    return env


def check_config(config: Path, root: Path) -> str | None:
    """None when the node at `root` takes `config`, else what `check-config` says about it."""
    out = subprocess.run([PY, "-m", "sensing_node", "check-config", str(config)], cwd=root,
                         env=node_env(root), capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return "; ".join(line for line in text if "workers" in line) or "; ".join(text[-3:])


class Node:
    """`python -m sensing_node run -c config` from `root`, its output in `tmp/node.log`; with
    `cpus`, it and every process it starts are pinned to them (set before it runs)."""

    def __init__(self, config: Path, root: Path, cpus: set[int] | None, log_path: Path) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # noqa: SIM115

        def before_exec() -> None:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            try:
                os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)
            except OSError:
                pass

        self.proc = subprocess.Popen(
            [PY, "-m", "sensing_node", "run", "-c", str(config)], cwd=root, env=node_env(root),
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=before_exec,
        )
        self.pid = self.proc.pid
        self.pinned = "not pinned" if cpus is None else f"cpu {','.join(map(str, sorted(cpus)))}"

    def cpu(self) -> tuple[float, int]:
        """CPU seconds of the node's process tree and how many processes it has."""
        return tree_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)  # its workers too (its own session)
                self.proc.wait(10)
        self.log_file.close()

    def problems(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if " ERROR " in line or "Traceback" in line][:10]


# ----- senders (other processes) ---------------------------------------------------------------


def stream_kinds(mix: str, n: int) -> list[str]:
    """Each stream's kind (`ingest_sender.spec_name`), dealt round robin from `mix`."""
    kinds = [ingest_sender.spec_name(ingest_sender.clip_spec(x)) for x in mix.split(",") if x]
    return [kinds[i % len(kinds)] for i in range(n)]


class Senders:
    """`--senders` processes of `bench/ingest_sender.py`, the streams split among them."""

    def __init__(self, targets: dict[str, Any], transport: str, duration: float,
                 processes: int, cpu: int | None, tmp: Path, label: str,
                 control: bool = False) -> None:
        path = tmp / f"targets-{label}.json"
        path.write_text(json.dumps(targets))
        n = len(targets["ports"])
        per = -(-n // processes)
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.duration = duration
        for s in range(processes):
            first, count = s * per, min(per, n - s * per)
            if count <= 0:
                break
            out = tmp / f"sent-{label}-{s}.json"
            cmd = [PY, str(BENCH / "ingest_sender.py"), "--targets", str(path), "--transport",
                   transport, "--duration", str(duration), "--first", str(first), "--count",
                   str(count), "--out", str(out), "--session-start"]
            if cpu is not None:
                cmd += ["--cpu", str(cpu)]
            if control:
                cmd.append("--control")
            self.procs.append((subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE if control else None,
                cwd=ROOT, start_new_session=True), out))

    def stop_streams(self, indexes: list[int]) -> None:
        """Stop these streams (indexes into the targets), as cameras do on the node's BYE:
        every sender is told, each stops those it sends."""
        text = "".join(f"STOP {i}\n" for i in indexes).encode()
        for proc, _ in self.procs:
            if proc.stdin is not None and proc.poll() is None:
                try:
                    proc.stdin.write(text)
                    proc.stdin.flush()
                except (OSError, ValueError):  # it ended, or its pipe is closed
                    pass

    def started(self) -> float:
        """Wait for every sender's START line; the monotonic time they all start at."""
        starts = []
        for proc, _ in self.procs:
            line = proc.stdout.readline().decode()  # type: ignore[union-attr]
            if not line.startswith("START "):
                raise RuntimeError(f"a sender did not start: {line!r}")
            starts.append(float(line.split()[1]))
        return max(starts)

    def results(self) -> list[dict[str, Any]]:
        out = []
        for proc, path in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(self.duration + 120)
            if proc.returncode != 0:
                raise RuntimeError(f"a sender failed ({proc.returncode})")
            out.append(json.loads(path.read_text()))
        return out

    def kill(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def sent_by(progress: list[list[float]], t: float) -> float:
    """Packets a sender had sent by time t, interpolated from its (time, count) samples."""
    prev_t, prev_n = progress[0]
    if t <= prev_t:
        return 0.0
    for now, count in progress[1:]:
        if now >= t:
            return prev_n + (count - prev_n) * (t - prev_t) / max(1e-9, now - prev_t)
        prev_t, prev_n = now, count
    return float(prev_n)


def busy_cpu_seconds() -> float:
    """Busy time since boot of all CPUs (user+nice+system+irq+softirq+steal), seconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def sender_figures(sent: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    per_stream = [x for s in sent for x in s["sent_packets"]]
    wall = max(s["wall_s"] for s in sent)
    marks = [sum(sent_by(s["progress"], t) for s in sent) for t in (t0, t1)]
    return {
        "sent_per_stream": per_stream,
        "sent_bytes_per_stream": [x for s in sent for x in s.get("sent_bytes_per_stream", ())],
        "sent_bytes": sum(s["sent_bytes"] for s in sent),
        "window_sent": marks[1] - marks[0],
        "sent_by_t1": marks[1],
        "sender_cpu_share": sum(s["cpu_s"] for s in sent) / wall,
        "sender_cpu_s": sum(s["cpu_s"] for s in sent),
        "late_p99_ms": max(s["lateness_ms"]["p99"] for s in sent),
        "late_max_ms": max(s["lateness_ms"]["max"] for s in sent),
        "send_errors": sum(s["send_errors"] for s in sent),
    }


def finish(out: dict[str, Any], got: list[int], taken_t0: float, taken_t1: float,
           cpu_s: float, seconds: float, gone: frozenset[int] = frozenset(),
           gone_by_t1: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Loss per stream, backlog and cost per packet of one pass, into `out`.

    `gone`: the streams whose dialog the node ended (shed for overload, say). Their counters
    left the node's API with them, so what it took of them is not known: they count neither
    as lost nor as delivered (their loss is None). `gone_by_t1`: those of them that had
    ended, and so stopped sending, by the window's end: not backlog either.
    """
    sent = out.pop("sent_per_stream")
    lost: list[int | None] = [None if i in gone else max(0, s - g)
                              for i, (s, g) in enumerate(zip(sent, got, strict=True))]
    out.pop("sent_bytes_per_stream", None)
    # Packets taken in the window: those sent in it, less the pass's share lost. (The node's
    # own counters at the window's ends would do as well, but with worker processes the API
    # has them only as often as the workers report, and that would blur a short window.)
    known = [i for i in range(len(sent)) if i not in gone]
    delivered = min(1.0, sum(got[i] for i in known) / max(1, sum(sent[i] for i in known)))
    window_packets = out["window_sent"] * delivered
    rate = out["window_sent"] / seconds
    counted = [x or 0 for x in lost]
    out.update(
        seconds=seconds, cpu_s=cpu_s, cpu_share=cpu_s / seconds,
        sent=sum(sent), received=sum(got), lost=sum(counted), sent_by_stream=sent,
        streams_with_loss=sum(1 for x in counted if x),
        max_stream_loss=max((x / s for x, s in zip(counted, sent, strict=True) if s),
                            default=0.0),
        lost_per_stream=lost, streams_gone=len(gone),
        window_packets=window_packets, packets_per_s=window_packets / seconds,
        window_counted=taken_t1 - taken_t0,
        us_per_packet=1e6 * cpu_s / max(1, window_packets),
        backlog_ms=1000 * max(0.0, out.pop("sent_by_t1") - sum(sent[i] for i in gone_by_t1)
                              - taken_t1) / max(1.0, rate),
    )
    return out


# ----- one bare pass ---------------------------------------------------------------------------


def bare_pass(transport: str, n: int, kinds: list[str], args: argparse.Namespace,
              tmp: Path) -> dict[str, Any]:
    cpu0, cpu1 = args.cpus
    recv = Bare(transport, n, cpu0)
    senders: Senders | None = None
    try:
        targets = {"host": HOST, "ports": recv.ports, "clips": kinds}
        senders = Senders(targets, transport, args.warmup + args.window + args.tail,
                          args.senders, cpu1, tmp, f"bare-{transport}-{n}")
        start = senders.started()
        time.sleep(max(0.0, start + args.warmup - time.monotonic()))
        busy0 = busy_cpu_seconds()
        a = recv.stats()
        time.sleep(max(0.0, start + args.warmup + args.window - time.monotonic()))
        b = recv.stats()
        busy1 = busy_cpu_seconds()
        sent = senders.results()
        c = settled(recv.stats, lambda s: sum(s.get("packets", s.get("bytes", []))),
                    args.drain)
    finally:
        if senders is not None:
            senders.kill()
        recv.stop()
    out: dict[str, Any] = {"kind": "bare", "transport": transport, "streams": n,
                           "pinned": recv.pinned, "processes": 1}
    out.update(sender_figures(sent, a["t"], b["t"]))
    seconds = b["t"] - a["t"]
    if transport == "tcp":  # bytes: packets from each stream's bytes per packet
        per_packet = [b / max(1, p) for b, p in zip(out.pop("sent_bytes_per_stream"),
                                                     out["sent_per_stream"], strict=True)]
        got = [round(x / size) for x, size in zip(c["bytes"], per_packet, strict=True)]
        t0 = sum(x / size for x, size in zip(a["bytes"], per_packet, strict=True))
        t1 = sum(x / size for x, size in zip(b["bytes"], per_packet, strict=True))
    else:
        got, t0, t1 = c["packets"], sum(a["packets"]), sum(b["packets"])
    finish(out, got, t0, t1, b["cpu"] - a["cpu"], seconds)
    out["other_load"] = max(0.0, (busy1 - busy0 - out["cpu_s"] - out["sender_cpu_share"]
                                  * seconds) / seconds)
    return out


def settled(read: Any, total: Any, settle: float, limit: float = 30.0) -> Any:
    """Read counters until their total stops moving for `settle` s (a receiver that fell
    behind still has seconds of traffic in its socket buffers when the senders stop)."""
    deadline = time.monotonic() + limit
    last = read()
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = read()
        if total(now) == total(last):
            return now
        last = now
    return last


# ----- one node pass ---------------------------------------------------------------------------


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.2)


def channel_ids_in(value: Any, channels: set[str]) -> set[str]:
    """Every one of `channels` named anywhere in `value` (keys, strings, nested lists and
    mappings): what the node's `overload` report says it shed, whatever its shape."""
    found: set[str] = set()
    if isinstance(value, str):
        if value in channels:
            found.add(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            found |= channel_ids_in(k, channels) | channel_ids_in(v, channels)
    elif isinstance(value, list | tuple):
        for v in value:
            found |= channel_ids_in(v, channels)
    return found


async def node_pass(transport: str, n: int, recording: bool, workers: int, kinds: list[str],
                    args: argparse.Namespace, tmp: Path,
                    single_port: bool = False) -> dict[str, Any]:
    import aiohttp

    from sensing_node.sim.camera import CameraConfig, SimulatedCamera

    loop = asyncio.get_running_loop()
    config, sip_port, http_port = node_config(tmp, n, transport, recording, workers,
                                              args.segment, args.fsync, single_port, args.media)
    if single_port:
        problem = await loop.run_in_executor(None, check_config, config, args.node_root)
        if problem is not None:
            raise Skip(f"the node refuses media.single_port: {problem}")
    if workers != 1:
        problem = await loop.run_in_executor(None, check_config, config, args.node_root)
        if problem is not None:
            raise Skip(f"the node refuses media.workers: {workers}: {problem}")
    pinned = workers == 1 or args.pin_workers
    cpus: set[int] | None = None
    if pinned and args.cpus[0] is not None:
        cpus = set(sorted(os.sched_getaffinity(0))[:workers]) if workers > 1 else {args.cpus[0]}
    node = Node(config, args.node_root, cpus, tmp / "node.log")
    camera: SimulatedCamera | None = None
    senders: Senders | None = None
    watcher: asyncio.Task[None] | None = None
    http = aiohttp.ClientSession(f"http://{HOST}:{http_port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})

    async def get(path: str, **params: str) -> Any:
        async with http.get(path, params=params) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {await resp.text()}")
            return await resp.json()

    # Single-port passes are a kind of their own, kept out of the per-port tables.
    out: dict[str, Any] = {"kind": "single" if single_port else "node", "transport": transport,
                           "streams": n, "recording": recording, "workers": workers,
                           "pinned": node.pinned}
    try:
        async def answering() -> bool:
            if node.proc.poll() is not None:
                raise RuntimeError(f"the node exited ({node.proc.returncode}): "
                                   f"{node.problems() or 'see its log'}")
            try:
                async with http.get("/healthz") as resp:
                    return resp.status in (200, 503)
            except aiohttp.ClientError:
                return False

        await wait_until(answering, 60, "the node did not answer /healthz")
        camera = SimulatedCamera(CameraConfig(
            server=(HOST, sip_port), device_id=NVR_ID, password=PASSWORD, channels=n,
            send_media=False, catalog_items_per_message=20, name="Benchmark NVR"))
        await camera.start(keepalives=False)
        channels = camera.channel_ids

        async def catalogued() -> bool:
            return len(await get("/api/channels", device_id=NVR_ID)) >= n

        await wait_until(catalogued, 60, "the node did not take the NVR's catalog")
        t = time.monotonic()
        if not recording:
            limit = asyncio.Semaphore(16)

            async def pull(channel: str) -> None:
                async with limit, http.post(f"/api/channels/{channel}/live", json={}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"pulling {channel}: {resp.status} "
                                           f"{await resp.text()}")

            await asyncio.gather(*(pull(c) for c in channels))

        async def answered() -> bool:
            assert camera is not None
            return sum(1 for s in camera.media_sessions.values() if s.acked) >= n

        await wait_until(answered, 60 + n / 10, f"the node did not invite all {n} channels")
        out["setup_s"] = time.monotonic() - t
        sessions = {s.channel_id: s for s in camera.media_sessions.values()}
        order = [sessions[c] for c in channels]
        targets = {"host": HOST, "ports": [s.remote[1] for s in order],
                   "ssrcs": [s.ssrc for s in order], "clips": kinds}
        sender_cpu = None if not pinned else args.cpus[1]
        senders = Senders(targets, transport, args.warmup + args.window + args.tail,
                          args.senders, sender_cpu, tmp, f"node-{transport}-{n}",
                          control=True)
        start = await loop.run_in_executor(None, senders.started)
        index = {c: i for i, c in enumerate(channels)}
        ended_at: dict[str, float] = {}  # channel -> when its dialog ended, s after start

        async def follow_byes() -> None:
            """Stop the streams whose dialog the node ended (a BYE: shed for overload, say),
            as their cameras would."""
            assert camera is not None
            while True:
                live = {s.channel_id for s in camera.media_sessions.values()}
                gone = [c for c in channels if c not in live and c not in ended_at]
                if gone:
                    now = time.monotonic() - start
                    ended_at.update((c, now) for c in gone)
                    senders.stop_streams([index[c] for c in gone])
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(follow_byes())
        await asyncio.sleep(max(0.0, start + args.warmup - time.monotonic()))

        async def streams_now() -> dict[str, tuple[int, int]]:
            rows = await get("/api/streams")
            rows = rows if isinstance(rows, list) else rows.get("streams", [])
            return {r["channel_id"]: (int(r.get("packets") or 0), int(r.get("lost") or 0))
                    for r in rows}

        async def taken() -> tuple[dict[str, int], int]:
            by = {c: v[0] for c, v in (await streams_now()).items()}
            return by, sum(by.values())

        rows0 = await streams_now()
        taken0 = sum(v[0] for v in rows0.values())
        busy0, own0 = busy_cpu_seconds(), time.process_time()
        t0, (cpu0, procs0) = time.monotonic(), node.cpu()
        await asyncio.sleep(max(0.0, start + args.warmup + args.window - time.monotonic()))
        t1, (cpu1, procs1) = time.monotonic(), node.cpu()
        busy1, own1 = busy_cpu_seconds(), time.process_time()
        rows1 = await streams_now()
        taken1 = sum(v[0] for v in rows1.values())
        watcher.cancel()
        sent = await loop.run_in_executor(None, senders.results)
        # Until the node's counters stop moving; worker processes report theirs every 0.5 s.
        pause = args.drain if max(procs0, procs1) <= 1 else max(args.drain, 1.2)
        last = -1
        for _ in range(60):
            by, total = await taken()
            if total == last:
                break
            last = total
            await asyncio.sleep(pause)
        stats = await get("/api/stats")
        out.update(sender_figures(sent, t0, t1))
        gone = frozenset(i for i, c in enumerate(channels) if c not in by or c in ended_at)
        gone_by_t1 = frozenset(index[c] for c, t in ended_at.items() if start + t < t1 - 0.5)
        finish(out, [by.get(c, 0) for c in channels], taken0, taken1, cpu1 - cpu0, t1 - t0,
               gone, gone_by_t1)
        out["processes"] = max(procs0, procs1)
        out["other_load"] = max(0.0, (busy1 - busy0 - out["cpu_s"] - (own1 - own0)
                                      - out["sender_cpu_share"] * (t1 - t0)) / (t1 - t0))
        out["streams_ended"] = sum(1 for c in channels if c not in by)
        out["recording_stats"] = {k: v for k, v in (stats.get("recording") or {}).items()
                                  if k in ("units", "segments_closed", "write_errors",
                                           "dropped_units", "syncs", "last_error")}
        if single_port:
            ports = {s.remote[1] for s in order}
            out["single_port_offered"] = sorted(ports)  # the one port, if the node used it
        if "overload" in stats:
            out["overload_report"] = stats["overload"]
            out["shed"] = sorted(channel_ids_in(stats["overload"], set(channels)))
        # The window alone, from the node's own counters (RTP sequence gaps, `lost`): the
        # streams it carried from the window's start to its end and did not shed.
        shed = set(out.get("shed") or ()) | set(ended_at)
        kept = [c for c in channels if c in rows0 and c in rows1 and c not in shed]
        window_lost = [rows1[c][1] - rows0[c][1] for c in kept]
        out["window_kept"] = {
            "streams": len(kept),
            "packets": sum(rows1[c][0] - rows0[c][0] for c in kept),
            "lost": sum(window_lost),
            "with_loss": sum(1 for x in window_lost if x > 0),
        }
        window_start = args.warmup
        out["ended"] = {
            "streams": len(ended_at),
            "last_s": round(max(ended_at.values()), 1) if ended_at else None,
            "in_window": sum(1 for t in ended_at.values()
                             if window_start <= t <= window_start + args.window),
        }
        out["channels"] = channels
        out["problems"] = node.problems()
    finally:
        if watcher is not None:
            watcher.cancel()
        if senders is not None:
            senders.kill()
        await http.close()
        await loop.run_in_executor(None, node.stop)
        if camera is not None:
            await camera.stop(unregister=False)
    return out


# ----- the sweep -------------------------------------------------------------------------------


def label(r: dict[str, Any]) -> str:
    if r["kind"] == "bare":
        return f"{r['transport']} N={r['streams']} bare"
    return (f"{r['transport']} N={r['streams']} {'record' if r['recording'] else 'ingest'} "
            f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}"
            + (" single port" if r["kind"] == "single" else ""))


def one(kind: str, transport: str, n: int, recording: bool, workers: int, kinds: list[str],
        args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sensing-node-bench-", dir=args.dir) as name:
        tmp = Path(name)
        if kind == "bare":
            return bare_pass(transport, n, kinds, args, tmp)
        import uvloop

        return uvloop.run(node_pass(transport, n, recording, workers, kinds, args, tmp,
                                    single_port=kind == "single"))


def show(r: dict[str, Any]) -> str:
    text = (f"{label(r)}: {100 * r['cpu_share']:.1f}% CPU ({r['processes']} process"
            f"{'es' if r['processes'] > 1 else ''}), {r['us_per_packet']:.2f} µs/pkt, "
            f"{r['packets_per_s']:,.0f} pkt/s, lost {r['lost']:,} ({r['streams_with_loss']} "
            f"streams), backlog {r['backlog_ms']:.0f} ms, sender "
            f"{100 * r['sender_cpu_share']:.0f}% late p99 {r['late_p99_ms']:.1f} ms, other "
            f"{r['other_load']:.2f}")
    if r.get("setup_s") is not None:
        text += f", setup {r['setup_s']:.1f} s"
    if "overload_report" in r:
        text += f", overload {json.dumps(r['overload_report'])[:300]}"
    return text


def configs(args: argparse.Namespace) -> list[tuple[bool, int]]:
    return [(rec, w) for rec in args.recording for w in args.workers]


def passes(args: argparse.Namespace) -> list[tuple[str, bool, int]]:
    """One round's passes at one N: the bare loop, each config, and with `--single-port` each
    one-worker config again on the single port, right after its per-port pass."""
    out = [("bare", False, 1)]
    for rec, w in configs(args):
        out.append(("node", rec, w))
        if args.single_port and w == 1:
            out.append(("single", rec, w))
    return out


def single_port_table(results: list[dict[str, Any]]) -> list[str]:
    """Per-port against single-port passes of the same run, N, transport and recording: CPU
    per packet, its ratio to the bare loop of that run, CPU share, loss."""
    rows = [r for r in results if r["kind"] == "single" and not r.get("overload")]
    if not rows:
        return []
    lines = ["### Single port (`--single-port`)", "",
             "| pass | per-port µs/pkt | single-port µs/pkt | single / per-port | per-port "
             "x bare | single-port x bare | CPU per-port | CPU single-port | lost per-port "
             "| lost single-port |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        same = [r for r in results if r["kind"] == "node" and r.get("run") == s.get("run")
                and r["transport"] == s["transport"] and r["streams"] == s["streams"]
                and r["recording"] == s["recording"] and r["workers"] == s["workers"]]
        bare = [r for r in results if r["kind"] == "bare" and r.get("run") == s.get("run")
                and r["transport"] == s["transport"] and r["streams"] == s["streams"]]
        if not same:
            continue
        p = same[0]
        base = bare[0]["us_per_packet"] if bare else float("nan")
        lines.append(
            f"| {s['transport']} N={s['streams']} {'record' if s['recording'] else 'ingest'} "
            f"run {s.get('run')} | {p['us_per_packet']:.2f} | {s['us_per_packet']:.2f} | "
            f"{s['us_per_packet'] / p['us_per_packet']:.2f} | {p['us_per_packet'] / base:.2f} | "
            f"{s['us_per_packet'] / base:.2f} | {100 * p['cpu_share']:.1f} % | "
            f"{100 * s['cpu_share']:.1f} % | {p['lost']:,} | {s['lost']:,} |")
    return lines


def capacity(results: list[dict[str, Any]], transport: str, recording: bool, workers: int,
             cores: int) -> tuple[int, int] | None:
    """(streams, from N): what the config carries on its cores by its CPU share at the largest
    N it took without loss and without falling behind (median over the runs)."""
    best = None
    for n in sorted({r["streams"] for r in results}):
        rows = [r for r in results if r["kind"] == "node" and r["transport"] == transport
                and r["recording"] == recording and r["workers"] == workers
                and r["streams"] == n and not r.get("overload")]
        if kept_up(rows):
            share = statistics.median(r["cpu_share"] for r in rows)
            best = (round(n * cores / max(share, 1e-3)), n)
    return best


def sweep(args: argparse.Namespace, results: list[dict[str, Any]], skipped: dict[str, str],
          failures: list[str], publish: Any) -> None:
    kinds_by_n = {n: stream_kinds(args.mix, n) for n in args.streams}
    for run in range(1, args.runs + 1):
        for transport in args.transports:
            for n in args.streams:
                for kind, rec, w in passes(args):
                    key = f"media.workers: {w}" if kind == "node" else "media.single_port"
                    if kind != "bare" and key in skipped:
                        continue
                    try:
                        r = one(kind, transport, n, rec, w, kinds_by_n[n], args)
                    except Skip as exc:
                        skipped[key] = str(exc)
                        log(f"skipped: {exc}")
                        continue
                    except (RuntimeError, OSError, ValueError, KeyError,
                            subprocess.SubprocessError) as exc:
                        failures.append(f"{transport} N={n} run {run} {kind}: {exc!r}")
                        log(failures[-1])
                        continue
                    r["run"] = run
                    results.append(r)
                    log(f"run {run}: {show(r)}")
                    publish(final=False)
    if not args.overload:
        return
    cores = max(1, len(os.sched_getaffinity(0)))
    for transport in args.transports:
        for rec, w in configs(args):
            if f"media.workers: {w}" in skipped:
                continue
            own = 1 if (w == 1 or args.pin_workers) and args.cpus[0] is not None else \
                min(w, cores)
            if args.capacity:
                cap, base = args.capacity, None
            else:
                found = capacity(results, transport, rec, w, own)
                if found is None:
                    log(f"overload {transport} recording={rec} workers={w}: no pass without "
                        "loss to take the capacity from; skipped")
                    continue
                cap, base = found
            for factor in (1.1, 1.5):
                n = round(cap * factor)
                try:
                    r = one("node", transport, n, rec, w, stream_kinds(args.mix, n), args)
                except (Skip, RuntimeError, OSError, ValueError, KeyError,
                        subprocess.SubprocessError) as exc:
                    failures.append(f"overload {transport} N={n}: {exc!r}")
                    log(failures[-1])
                    continue
                r.update(run=1, overload=factor, capacity=cap, capacity_from=base)
                results.append(r)
                log(f"overload {factor:.0%}: {show(r)}")
                publish(final=False)


# ----- main ------------------------------------------------------------------------------------


def node_commit(root: Path) -> str:
    """The commit of the code under test (read-only git), marked when the tree differs."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=root, timeout=10)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "sensing_node", "sip",
                                "rtp", "recorder"], cwd=root, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


def machine(root: Path) -> dict[str, Any]:
    import platform

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "commit": node_commit(root),
            "loadavg": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


QUICK = {"streams": "300", "transport": "udp", "runs": 1, "window": 10.0, "warmup": 3.0}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,200,300,400,500", help="stream counts N")
    parser.add_argument("--transport", default="udp,tcp")
    parser.add_argument("--recording", default="off,on", help="off, on or off,on")
    parser.add_argument("--workers", default="1,2", help="media.workers values")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", "--duration", dest="window", type=float, default=20.0,
                        help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--tail", type=float, default=1.0,
                        help="the senders go on this long after the window")
    parser.add_argument("--drain", type=float, default=0.5,
                        help="after the senders stop, read until nothing moved for this long")
    parser.add_argument("--mix", default=MIX, help="stream kinds dealt round robin, e.g. "
                        "720p@4 (Mbit/s) or 1920x1080@8000k")
    parser.add_argument("--segment", type=int, default=10,
                        help="recording.segment_s (10: segments close inside short windows)")
    parser.add_argument("--fsync", type=float, default=2.0,
                        help="recording.fsync_s: the sync pass of open segments (0: off)")
    parser.add_argument("--senders", type=int, default=1, help="sender processes")
    parser.add_argument("--pin-workers", action="store_true",
                        help="pin passes with several workers too, to as many CPUs")
    parser.add_argument("--overload", action="store_true",
                        help="then each config at 110 %% and 150 %% of its capacity")
    parser.add_argument("--capacity", type=int, help="the capacity in streams for --overload")
    parser.add_argument("--single-port", action="store_true",
                        help="each one-worker node pass again with media.single_port")
    parser.add_argument("--quick", action="store_true",
                        help="the short pass of `make bench`: " + ", ".join(
                            f"--{k} {v}" for k, v in QUICK.items()))
    parser.add_argument("--node-root", default=str(ROOT),
                        help="run the node from this source tree (bench/compare.py)")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where each pass's node data and recordings go (a real disk)")
    parser.add_argument("--media", action="append", default=[], metavar="'KEY: VALUE'",
                        help="a line of the node's media: section, e.g. "
                        "'receive_buffer_kib: 1024' (repeatable)")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    args.streams = [int(x) for x in str(args.streams).split(",") if x]
    args.transports = [x for x in args.transport.split(",") if x]
    args.recording = [{"off": False, "on": True}[x] for x in args.recording.split(",") if x]
    args.workers = [int(x) for x in args.workers.split(",") if x]
    args.node_root = Path(args.node_root).resolve()
    avail = sorted(os.sched_getaffinity(0))
    args.cpus = (avail[0], avail[1]) if len(avail) >= 2 else (None, None)
    args.pinning = (f"bare loop and one-worker nodes (their whole process tree) on CPU "
                    f"{avail[0]}, their senders on CPU {avail[1]}; "
                    + ("several workers pinned to as many CPUs" if args.pin_workers else
                       "nodes with several workers and their senders not pinned")
                    if len(avail) >= 2 else "none (fewer than two CPUs)")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bare"]:
        p = argparse.ArgumentParser()
        p.add_argument("--transport", choices=("udp", "tcp"), required=True)
        p.add_argument("--streams", type=int, required=True)
        p.add_argument("--cpu", type=int)
        a = p.parse_args(argv[1:])
        pinned = pin(a.cpu)
        import uvloop

        uvloop.run(bare_receive(a.transport, a.streams, pinned))
        return 0
    args = parse(argv)
    started = time.perf_counter()
    info = machine(args.node_root)
    clips = {}
    for name in dict.fromkeys(stream_kinds(args.mix, len(args.mix.split(",")))):
        log(f"clip {name} ...")
        clips[name] = ingest_sender.clip_stats(ingest_sender.clip(*ingest_sender.clip_spec(name)))
    command = shlex.join([".venv/bin/python", "bench/node_bench.py", *argv])
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    failures: list[str] = []
    per_run = len(args.transports) * len(args.streams) * len(passes(args))
    total = args.runs * per_run
    log(f"{total} passes of about {args.warmup + args.window + 15:.0f} s each")

    def publish(final: bool) -> str:
        notes = list(args.note)
        notes += [f"Skipped: {text}" for text in skipped.values()]
        done = sum(1 for r in results if not r.get("overload") and r["kind"] != "single")
        live = [c for c in configs(args) if f"media.workers: {c[1]}" not in skipped]
        planned = args.runs * len(args.transports) * len(args.streams) * (1 + len(live))
        if done + len(failures) < planned:
            notes.append(f"Incomplete: {done} of {planned} passes measured"
                         + (" (the run was stopped early)." if final else " so far."))
        notes += [f"Failed pass: {f}" for f in failures]
        text = report(results, args, info, clips, command, time.perf_counter() - started,
                      notes)
        single = single_port_table(results)
        if single:  # the single-port passes, in a table of their own after the report
            text += "\n\n" + "\n".join(single) + "\n"
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"machine": info, "clips": clips, "results": results, "skipped": skipped,
                 "failures": failures}, indent=1, default=str))
        if not args.no_doc:
            write_doc_section(BEGIN, END, text)
        return text

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sweep(args, results, skipped, failures, publish)
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    text = publish(final=True)
    print(text)
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
