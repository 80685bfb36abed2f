"""Playback benchmark: the whole node serving recorded video to an upper platform under live ingest.

    .venv/bin/python bench/playback.py [--runs 2] [--window 15] [--warmup 5] [--live 300]
                                       [--playbacks 50] [--downloads 10] [--speed 8]
                                       [--warm-cache] [--no-doc] [--json FILE]
    make bench-playback

Issue 11 asks for 50 concurrent playbacks at 1x and 10 downloads at 8x from a 300-channel store,
the node's CPU per packet sent, its read throughput, and that the live ingest of 300 streams
loses nothing meanwhile.

The store. Before any node starts, `bench/playback_store.py` writes the recordings of 300
channels into the node's recording directory (`<data_dir>/recordings`, index
`recorder.service.root_index`) with the recorder's own `SegmentWriter`: the played channels get
what the run needs (the playbacks' channels `--warmup + --window + --slack` seconds, the
downloads' channels `--speed` times that, each with a lead of one 60 s segment), every other
channel a short recording, all of them ending ten minutes before the run. The sessions of a
kind start at whole seconds spread evenly over the lead and play to the end of the recording,
so they cross into their next segment, and read it, at different times, as sessions that
started at different moments do. The channel IDs are those of the simulated NVR, so the
channels that are played back are also ingested live. Before each run the store's pages are
dropped from the page cache (`posix_fadvise(DONTNEED)`; `--warm-cache` keeps them), so the node
reads the recordings from the disk.

A run starts one node (`sensing-node run -c <config>`: settings parser, uvloop, HTTP API,
recording service, cascade registration), pinned to CPU 0, and measures it twice:

  ingest    N live streams pulled through the operator API (`POST /api/channels/{id}/live`)
            and nothing else: what the node spends on the live ingest alone.
  playback  the same pulls stay; the simulated upper platform INVITEs `s=Playback` 50 times
            (channels 1-50) and `s=Download` with `a=downloadspeed:8` 10 times (channels
            51-60), one session per channel, media over UDP.

Node CPU per sent packet is the playback pass's CPU per second minus the ingest pass's, over
the packets per second the platform received from the playbacks and downloads. Read
throughput is the PS bytes per second those packets carried (what the node sent out of the
store); the node's own read calls (`rchar` of /proc/PID/io: every segment is read twice, once
for its SHA-256 and once to be sent) and what the block layer read for it (`read_bytes`) are
reported beside it. Live loss is the node's own count (`lost` of `/api/streams`, summed over
the streams) over each window and over the whole run, with the kernel's UDP receive-buffer
drops (`RcvbufErrors`, machine-wide) beside it.

Everything else runs in this process, pinned to CPU 1: the simulated NVR
(`sensing_node.sim.camera.SimulatedCamera`, answering the node's INVITEs without media of its
own), the camera senders in a thread (`bench/ingest_sender.py`'s clip and packets, a frame's
packets as UDP GSO sends every 40 ms, the cameras' phases and clip positions spread), and the
simulated upper platform (`sensing_node.sim.upstream.SimulatedUpstream`) whose sessions get a
lean receiver: it counts packets, payload bytes, frames (RTP marker bits) and sequence gaps,
and follows the RTP timestamps, which the node derives from the stored PTS. A session's pace
over the window is the media time its timestamps advanced over the time between the last
packets that arrived before the window's two ends: 1 for a playback, 8 for a download that
keeps up.

Writes its section of docs/benchmarks.md (between `<!-- playback:begin -->` and
`<!-- playback:end -->`) unless --no-doc.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest_sender  # noqa: E402
import playback_store  # noqa: E402
from common import NODE_ID, PASSWORD, REALM, ROOT, percentile, pin  # noqa: E402
from common import write_section as write_doc_section  # noqa: E402
from relay import NodeProcess, cell, clip_for, free_port, machine, wait_until  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- playback:begin -->", "<!-- playback:end -->"
HOST = "127.0.0.1"
TOKEN = "bench-playback-token"
UPSTREAM_ID = "31011200002000000100"
UP_PASSWORD = "upstream-password"
NVR_ID = f"{REALM}1320000001"
RTP_PORTS = "40000-41999"
RCVBUF = 4 << 20
FRAME_S = 1.0 / ingest_sender.FPS
CLOCK = 90_000
_RTP = struct.Struct("!BBHI")  # flags, marker/PT, sequence, timestamp

# Goals: issue 11's tests ask a playback's pace within 5 % of real time; a download at 8x is
# taken as reached within the same 5 %.
PACE_TOLERANCE = 0.05


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- camera senders (a thread of this process) -----------------------------------------------


class Camera:
    """One camera's RTP toward the node: its socket (UDP GSO) and position in the clip."""

    __slots__ = ("index", "sock", "ssrc", "seq", "k", "position", "phase", "sent")

    def __init__(self, index: int, remote: tuple[str, int], ssrc: int, cameras: int,
                 nframes: int) -> None:
        self.index = index
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.setsockopt(ingest_sender.SOL_UDP, ingest_sender.UDP_SEGMENT,
                             ingest_sender.PACKET_SIZE)
        self.sock.bind((HOST, 0))
        self.sock.connect(remote)
        self.ssrc = ssrc
        self.seq = 0
        self.k = 0
        self.position = (index * nframes) // cameras
        self.phase = FRAME_S * index / cameras
        self.sent = 0


class Cameras(threading.Thread):
    """Paced senders: every camera sends its next frame every 40 ms at its phase, a frame's
    packets in UDP GSO sends of up to 44 (the kernel splits them into one datagram each)."""

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        super().__init__(name="camera senders", daemon=True)
        self.tpl = ingest_sender.templates(frames, tcp=False, gso=True)
        firsts = ingest_sender.session_start(frames)
        self.first_tpl = [ingest_sender.templates([(ps, False)], False, True)[0]
                          for ps in firsts]
        self.nframes = len(frames)
        self.cameras: list[Camera] = []
        self.added: collections.deque[Camera] = collections.deque()
        self.stop_flag = threading.Event()
        self.lateness: collections.deque[float] = collections.deque(maxlen=500_000)
        self.send_errors = 0
        self.skips = 0  # periods given up after a stall of more than a second

    def add(self, camera: Camera) -> None:
        self.added.append(camera)  # taken by the thread at its next period

    def packets_sent(self) -> int:
        return sum(c.sent for c in self.cameras)

    def run(self) -> None:
        pack_into = struct.Struct("!HII").pack_into
        mono = time.monotonic
        sleep = time.sleep
        base = mono()
        late = self.lateness.append
        while not self.stop_flag.is_set():
            while self.added:
                self.cameras.append(self.added.popleft())
                self.cameras.sort(key=lambda c: c.phase)
            for c in self.cameras:
                due = base + c.phase
                now = mono()
                if due - now > 0.0003:
                    sleep(due - now - 0.0001)
                    now = mono()
                late(now - due)
                if c.k == 0:
                    buf, offsets, chunks = self.first_tpl[c.position]
                else:
                    buf, offsets, chunks = self.tpl[(c.position + c.k) % self.nframes]
                ts = (c.k * ingest_sender.FRAME_TICKS) & 0xFFFFFFFF
                seq = c.seq
                for off in offsets:
                    pack_into(buf, off + 2, seq & 0xFFFF, ts, c.ssrc)
                    seq += 1
                c.seq = seq
                mv = memoryview(buf)
                send = c.sock.send
                for begin, end in chunks:
                    try:
                        send(mv[begin:end])
                    except OSError:
                        self.send_errors += 1
                mv.release()
                c.sent += len(offsets)
                c.k += 1
            base += FRAME_S
            now = mono()
            if now > base + 1.0:  # far behind (a stall of the machine): skip, do not burst
                self.skips += 1
                base = now
            elif not self.cameras and base > now:
                sleep(base - now)
        for c in self.cameras:
            c.sock.close()


# ----- the upper platform's lean media receiver ------------------------------------------------


class Receiver:
    """The media end of one playback or download: counts what comes and follows the RTP
    timestamps (extended past their 32-bit wrap) with the loop time of the last arrival."""

    def __init__(self, kind: str, channel_id: str) -> None:
        self.kind = kind
        self.channel_id = channel_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.buf = bytearray(2048)
        self.packets = 0
        self.payload = 0
        self.frames = 0
        self.gaps = 0
        self.last_seq: int | None = None
        self.last_ts: int | None = None
        self.ts = 0  # extended timestamp of the last packet, from the first one
        self.last_at = 0.0  # loop time of the last read that brought packets
        self.first_at = 0.0
        self.session: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self.readable)

    def detach(self) -> None:
        if self.loop is not None and self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def snapshot(self) -> tuple[int, int, int, int, float]:
        return self.packets, self.payload, self.frames, self.ts, self.last_at

    def readable(self) -> None:
        recv_into = self.sock.recv_into
        buf = self.buf
        unpack = _RTP.unpack_from
        got = 0
        for _ in range(512):
            try:
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if n < 12:
                continue
            flags, mpt, seq, ts = unpack(buf)
            header = 12 + 4 * (flags & 0x0F)
            if flags & 0x10 and n >= header + 4:
                header += 4 + 4 * ((buf[header + 2] << 8) | buf[header + 3])
            got += 1
            self.payload += n - header
            if mpt & 0x80:
                self.frames += 1
            last = self.last_seq
            if last is not None and seq != (last + 1) & 0xFFFF:
                self.gaps += 1
            self.last_seq = seq
            if self.last_ts is not None:
                step = (ts - self.last_ts) & 0xFFFFFFFF
                self.ts += step - (1 << 32) if step >= 1 << 31 else step
            self.last_ts = ts
        if got:
            assert self.loop is not None
            now = self.loop.time()
            if not self.packets:
                self.first_at = now
            self.packets += got
            self.last_at = now
            if self.session is not None:
                self.session.last_packet_at = now  # its BYE after MediaStatus waits for quiet


def install_lean(upstream_module: Any, receivers: list[Receiver]) -> Any:
    """Make the simulated platform build sessions whose UDP media goes to a `Receiver` (its
    own checking receiver demuxes everything, which would cost this process too much);
    returns the class to put back."""
    base = upstream_module.UpstreamSession

    class LeanSession(base):  # type: ignore[misc, valid-type]
        async def _open_media(self) -> int:
            receiver = Receiver(self.session_name, self.channel_id)
            receiver.session = self
            receiver.attach(self._loop)
            receivers.append(receiver)
            self.lean = receiver
            self.local_port = receiver.port
            return receiver.port

        def close(self, reason: str = "closed") -> None:
            receiver = getattr(self, "lean", None)
            if receiver is not None:
                receiver.detach()
            super().close(reason)

    upstream_module.UpstreamSession = LeanSession
    return base


# ----- the node and /proc ----------------------------------------------------------------------


def node_config(data: Path, sip_port: int, http_port: int, up_port: int, sessions: int) -> Path:
    text = f"""\
node:
  id: "{NODE_ID}"
  realm: "{REALM}"
  sip_listen: "{HOST}:{sip_port}"
  media_ip: "{HOST}"
  rtp_ports: "{RTP_PORTS}"
  http_listen: "{HOST}:{http_port}"
  api_token: "{TOKEN}"
  data_dir: "{data}"
devices:
  password: "{PASSWORD}"
  allow: ["31011200"]
recording:
  channels: []
upstreams:
  - id: "{UPSTREAM_ID}"
    realm: "{REALM}"
    address: "{HOST}:{up_port}"
    transport: udp
    password: "{UP_PASSWORD}"
    max_streams: {sessions}
limits:
  max_outgoing_streams: {sessions}
  max_sessions_per_channel: 1
"""
    path = data.parent / "node.yaml"
    path.write_text(text)
    return path


def proc_io(pid: int) -> dict[str, int]:
    """rchar (bytes the process asked read calls for) and read_bytes (what the block layer
    read for it) of /proc/PID/io."""
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = int(value)
    return out


def thread_groups(pid: int) -> dict[str, float]:
    """CPU seconds of the node's main thread (`loop`, the event loop) and of all its other
    threads together (`threads`: the playback readers, the recorder's writer, the index and
    audit threads; Python does not name them for the kernel)."""
    out = {"loop": 0.0, "threads": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out["loop" if tid == str(pid) else "threads"] += ns / 1e9
    return out


def user_system(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def process_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every process on the machine but `exclude`, by PID.
    (The kernel's per-CPU busy counters of /proc/stat are sampled at its ticks and miss
    much of the short bursts of work on this machine; the processes' own counters do not.)"""
    tck = os.sysconf("SC_CLK_TCK")
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(name)] = (int(fields[11]) + int(fields[12])) / tck
    return out


def other_cores(before: dict[int, float], after: dict[int, float], seconds: float) -> float:
    """Cores the other processes used between two `process_cpu` readings (a process that
    started in between counts whole; one that ended in between is missed)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items()) / seconds


def rcvbuf_errors() -> int:
    """The kernel's UDP RcvbufErrors (machine-wide)."""
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def live_counters(streams: list[dict[str, Any]], channels: set[str]) -> dict[str, int]:
    rows = [s for s in streams if s.get("channel_id") in channels]
    return {
        "streams": len(rows),
        "packets": sum(int(s.get("packets") or 0) for s in rows),
        "lost": sum(int(s.get("lost") or 0) for s in rows),
        "streams_with_loss": sum(1 for s in rows if s.get("lost")),
    }


# ----- one run ---------------------------------------------------------------------------------


async def one_run(args: argparse.Namespace, frames: list[tuple[bytes, bool]],
                  channels: list[str], ranges: dict[str, tuple[float, float]],
                  data: Path) -> dict[str, Any]:
    import aiohttp

    import sensing_node.sim.upstream as upmod
    from sensing_node.sim.camera import CameraConfig, SimulatedCamera
    from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream

    loop = asyncio.get_running_loop()
    receivers: list[Receiver] = []
    base_session = install_lean(upmod, receivers)
    upstream = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM_ID, password=UP_PASSWORD))
    node: NodeProcess | None = None
    camera: SimulatedCamera | None = None
    cams = Cameras(frames)
    http: aiohttp.ClientSession | None = None
    sessions: list[Any] = []
    out: dict[str, Any] = {"live": args.live}
    try:
        _, up_port = await upstream.start()
        sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
        config = node_config(data, sip_port, http_port, up_port,
                             args.playbacks + args.downloads)
        node = NodeProcess(config, args.cpus[0], data.parent / "node.log")
        out["pinned"] = node.pinned
        http = aiohttp.ClientSession(f"http://{HOST}:{http_port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        proc = node

        async def healthy() -> bool:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"the node exited ({proc.proc.returncode}); see its log")
            assert http is not None
            try:
                async with http.get("/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, 60, "the node did not answer /healthz")
        camera = SimulatedCamera(CameraConfig(
            server=(HOST, sip_port), device_id=NVR_ID, password=PASSWORD,
            channels=args.channels, send_media=False, catalog_items_per_message=20,
            name="Benchmark NVR",
        ))
        await camera.start(keepalives=False)
        assert camera.channel_ids == channels

        async def catalogued() -> bool:
            assert http is not None
            async with http.get("/api/channels", params={"device_id": NVR_ID}) as resp:
                body = await resp.json()
            return len(body) >= args.channels

        await wait_until(catalogued, 60, "the node did not take the NVR's catalog")
        await upstream.wait_registered(timeout=30)

        live = channels[:args.live]
        live_set = set(live)
        started: set[str] = set()
        nframes = len(frames)

        def start_streams() -> None:
            assert camera is not None
            for session in list(camera.media_sessions.values()):
                if session.channel_id in started:
                    continue
                started.add(session.channel_id)
                index = channels.index(session.channel_id)
                cams.add(Camera(index, session.remote, session.ssrc, args.live, nframes))

        async def watch() -> None:
            while True:
                start_streams()
                await asyncio.sleep(0.02)

        watcher = loop.create_task(watch())
        cams.start()
        limit = asyncio.Semaphore(16)

        async def pull(channel: str) -> None:
            assert http is not None
            async with limit, http.post(f"/api/channels/{channel}/live", json={}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"pulling {channel}: {resp.status} {await resp.text()}")

        t = time.monotonic()
        await asyncio.gather(*(pull(c) for c in live))
        log(f"  {len(live)} channels pulled in {time.monotonic() - t:.1f} s")

        async def streams() -> list[dict[str, Any]]:
            assert http is not None
            async with http.get("/api/streams") as resp:
                body = await resp.json()
            return body if isinstance(body, list) else body.get("streams", [])

        async def window(kind: str) -> dict[str, Any]:
            assert node is not None
            await asyncio.sleep(args.warmup)
            api0 = live_counters(await streams(), live_set)
            t0, cpu0, us0 = time.monotonic(), node.cpu(), user_system(node.pid)
            io0, th0, own0 = proc_io(node.pid), thread_groups(node.pid), time.process_time()
            sent0, drops0 = cams.packets_sent(), rcvbuf_errors()
            others0 = process_cpu({node.pid, os.getpid()})
            rx0 = {id(r): r.snapshot() for r in receivers}
            cams.lateness.clear()
            await asyncio.sleep(args.window)
            t1, cpu1, us1 = time.monotonic(), node.cpu(), user_system(node.pid)
            io1, th1, own1 = proc_io(node.pid), thread_groups(node.pid), time.process_time()
            sent1, drops1 = cams.packets_sent(), rcvbuf_errors()
            others1 = process_cpu({node.pid, os.getpid()})
            rx1 = {id(r): r.snapshot() for r in receivers}
            api1 = live_counters(await streams(), live_set)
            seconds = t1 - t0
            result: dict[str, Any] = {
                "seconds": seconds,
                "cpu_share": (cpu1 - cpu0) / seconds,
                "user_share": (us1[0] - us0[0]) / seconds,
                "system_share": (us1[1] - us0[1]) / seconds,
                "threads": {k: (th1.get(k, 0.0) - th0.get(k, 0.0)) / seconds for k in th1},
                "rchar_bps": (io1["rchar"] - io0["rchar"]) / seconds,
                "disk_bps": (io1["read_bytes"] - io0["read_bytes"]) / seconds,
                "field_share": (own1 - own0) / seconds,
                "other_cores": other_cores(others0, others1, seconds),
                "in_pps": (sent1 - sent0) / seconds,
                "rcvbuf_errors": drops1 - drops0,
                "live_streams": api1["streams"],
                "live_lost": api1["lost"] - api0["lost"],
                "live_packets_pps": (api1["packets"] - api0["packets"]) / seconds,
                "live_lost_total": api1["lost"],
                "streams_with_loss": api1["streams_with_loss"],
            }
            late = sorted(cams.lateness)
            result["late_p99_ms"] = 1e3 * percentile(late, 0.99) if late else 0.0
            result["late_max_ms"] = 1e3 * late[-1] if late else 0.0
            by_kind: dict[str, dict[str, Any]] = {}
            for r in receivers:
                a, b = rx0.get(id(r)), rx1[id(r)]
                if a is None:
                    continue
                k = by_kind.setdefault(r.kind, {"packets": 0, "payload": 0, "frames": 0,
                                                "paces": [], "silent": 0})
                k["packets"] += b[0] - a[0]
                k["payload"] += b[1] - a[1]
                k["frames"] += b[2] - a[2]
                span = b[4] - a[4]
                if b[0] > a[0] and a[0] and span > 0:
                    k["paces"].append((b[3] - a[3]) / CLOCK / span)
                else:
                    k["silent"] += 1
            for k in by_kind.values():
                k["pps"] = k["packets"] / seconds
                k["payload_bps"] = k["payload"] / seconds
                k["fps"] = k["frames"] / seconds
                k["paces"].sort()
            result["kinds"] = by_kind
            result["out_pps"] = sum(k["pps"] for k in by_kind.values())
            result["out_bps"] = sum(k["payload_bps"] for k in by_kind.values())
            log(f"  {kind}: node {100 * result['cpu_share']:.1f}% CPU, in "
                f"{result['in_pps']:,.0f} pkt/s, out {result['out_pps']:,.0f} pkt/s "
                f"({result['out_bps'] / 1e6:.1f} MB/s), file reads "
                f"{result['rchar_bps'] / 1e6:.1f} MB/s, disk {result['disk_bps'] / 1e6:.1f} "
                f"MB/s, live lost {result['live_lost']} ({result['live_lost_total']} in all), "
                f"sender late p99 {result['late_p99_ms']:.1f} ms"
                + "".join(f", {name} pace {statistics.median(k['paces']):.2f} "
                          f"({k['paces'][0]:.2f}-{k['paces'][-1]:.2f})"
                          for name, k in by_kind.items() if k["paces"]))
            return result

        out["ingest"] = await window("ingest")

        # The playback pass: one session per played channel, over its range.
        failures: list[str] = []
        invite_limit = asyncio.Semaphore(args.invites_at_once)

        async def invite(channel: str, kind: str) -> None:
            start, end = ranges[channel]
            extra: dict[str, Any] = {"download_speed": args.speed} if kind == "Download" else {}
            async with invite_limit:
                session = await upstream.invite(channel, "udp", session=kind, start=start,
                                                end=end, **extra)
            if not session.ok:
                failures.append(f"{kind} {channel}: {session.status} {session.reason} "
                                f"{session.warning or ''}".rstrip())
                return
            sessions.append(session)

        t = time.monotonic()
        played = channels[:args.playbacks + args.downloads]
        await asyncio.gather(*(invite(c, "Playback") for c in played[:args.playbacks]),
                             *(invite(c, "Download") for c in played[args.playbacks:]))
        out["invite_s"] = time.monotonic() - t
        answers = sorted(s.answered_at - s.invited_at for s in sessions
                         if s.answered_at is not None and s.invited_at is not None)
        out["answer_ms"] = {"p50": 1e3 * percentile(answers, 0.5),
                            "max": 1e3 * answers[-1]} if answers else {}
        out["answers_in_order_ms"] = [
            round(1e3 * (s.answered_at - s.invited_at), 1) for s in
            sorted(sessions, key=lambda s: s.invited_at or 0.0)
            if s.answered_at is not None and s.invited_at is not None]
        out["invite_failures"] = failures
        log(f"  {len(sessions)} sessions up in {out['invite_s']:.1f} s"
            + (f"; {len(failures)} refused: {failures[:3]}" if failures else ""))
        out["playback"] = await window("playback")
        out["sessions"] = len(sessions)
        out["ended_early"] = sum(1 for s in sessions if s.media_status is not None)
        out["upstream_gaps"] = sum(r.gaps for r in receivers)
        out["sender_skips"] = cams.skips
        out["send_errors"] = cams.send_errors
        watcher.cancel()
    finally:
        cams.stop_flag.set()
        if cams.is_alive():
            cams.join(5)
        for session in list(upstream.sessions.values()):
            session.close("benchmark over")
        if http is not None:
            await http.close()
        if node is not None:
            node.stop()
        if camera is not None:
            await camera.stop(unregister=False)
        await upstream.stop()
        upmod.UpstreamSession = base_session
    return out


def components(root: Path, channel_id: str) -> dict[str, float]:
    """What reading costs on this machine, on one core, with the files in the page cache: a
    `recorder.playback.PlaybackReader` (with the node's read-ahead) through one channel's
    recording, and SHA-256 alone over the same bytes (the reader hashes every segment before
    handing out its frames)."""
    import hashlib

    from recorder.index import RecordIndex
    from recorder.playback import Frame, PlaybackReader
    from recorder.service import root_index
    from sensing_node.media.playback import READ_AHEAD

    with RecordIndex(root_index(root), read_only=True) as index:
        rows = index.segments(channel_id, 0, 2e9)
    files = [(root / r.path).read_bytes() for r in rows]  # into the page cache
    size = sum(len(b) for b in files)
    t0 = time.thread_time()
    for data in files:
        hashlib.sha256(data).digest()
    hash_s = time.thread_time() - t0
    reader = PlaybackReader(str(root), rows, rows[0].start_wall, rows[-1].end_wall,
                            read_ahead=READ_AHEAD)
    t0 = time.thread_time()
    frames = sum(1 for e in reader if isinstance(e, Frame))
    read_s = time.thread_time() - t0
    return {"bytes": size, "frames": frames, "reader_mbps": size / read_s / 1e6,
            "reader_us_per_frame": 1e6 * read_s / frames, "sha256_mbps": size / hash_s / 1e6}


# ----- report ----------------------------------------------------------------------------------


def derived(r: dict[str, Any]) -> dict[str, float]:
    ing, pb = r["ingest"], r["playback"]
    nan = float("nan")
    out_pps = pb["out_pps"]
    d = {
        "out_us": 1e6 * (pb["cpu_share"] - ing["cpu_share"]) / out_pps if out_pps else nan,
        "out_sys_us": (1e6 * (pb["system_share"] - ing["system_share"]) / out_pps
                       if out_pps else nan),
        "in_us": 1e6 * ing["cpu_share"] / ing["in_pps"] if ing["in_pps"] else nan,
        "reader_us": (1e6 * (pb["threads"]["threads"] - ing["threads"]["threads"]) / out_pps
                      if out_pps else nan),
    }
    for kind in ("Playback", "Download"):
        k = pb["kinds"].get(kind)
        if k and k["paces"]:
            d[f"{kind}_pace_p50"] = statistics.median(k["paces"])
            d[f"{kind}_pace_min"] = k["paces"][0]
            d[f"{kind}_pace_max"] = k["paces"][-1]
    return d


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any],
           command: str, elapsed: float, notes: list[str], store: dict[str, Any]) -> str:
    L: list[str] = []
    add = L.append
    clip = args.clipinfo
    add("## Playback and download to an upper platform under live ingest (`bench/playback.py`)")
    add("")
    add(f"The whole node (`sensing-node run`, pinned to CPU 0) ingests {args.live} live "
        f"streams and serves {args.playbacks} playbacks at 1x and {args.downloads} downloads "
        f"at {args.speed}x (`s=Playback` / `s=Download` with `a=downloadspeed:{args.speed}`, "
        f"UDP) from a {args.channels}-channel store to a simulated upper platform; cameras, "
        "platform and measurement run in one process pinned to CPU 1. Each run starts one node "
        "and measures it twice with the same camera traffic: an ingest pass (the live pulls "
        "only), then a playback pass (the same pulls plus the sessions), so the playback's "
        "cost is the difference within one run. How the store is made and what each figure "
        "counts: the docstring of `bench/playback.py`.")
    add("")
    add(f"- Machine: {info['cpu']}, nproc {info['nproc']}; Linux {info['kernel']}; Python "
        f"{info['python']}; node commit {info['commit']}")
    add(f"- Date: {info['date']}; the whole run took {elapsed / 60:.0f} min (the store "
        f"{store['build_s']:.0f} s of it)")
    add(f"- Command: `{command}`")
    add(f"- {args.runs} runs; {args.warmup:g} s warm-up and {args.window:g} s window per pass.")
    add(f"- Clip: 1280x720, 25 fps, GOP 50, {clip['bitrate_bps'] / 1e6:.2f} Mbit/s on the "
        f"wire, {clip['packets_per_s']:.0f} packets/s per camera, for the live streams and "
        "the recordings alike.")
    add(f"- Store: {store['channels']} channels, {store['segments']:,} segments of at most "
        f"60 s, {store['bytes'] / 1e9:.2f} GB, written by `SegmentWriter` in "
        f"{store['build_s']:.0f} s; the {args.playbacks} playback channels hold "
        f"{store['playback_s']:.0f} s each, the {args.downloads} download channels "
        f"{store['download_s']:.0f} s, the other "
        f"{store['channels'] - args.playbacks - args.downloads} {store['short_s']:.0f} s; "
        "recorded up to 10 minutes before the run. The sessions of a kind start at points "
        f"spread over the first {store['lead_s']:.0f} s of their recordings and play to "
        "the end, so they change segments (and read the next one) at different times. "
        + ("Kept in the page cache (`--warm-cache`)." if args.warm_cache else
           "Its pages dropped from the page cache before each run, so the node reads it from "
           "the disk."))
    comp = store.get("components")
    if comp:
        add(f"- Reading alone on this machine (one core, page cache, the node's read-ahead): "
            f"`PlaybackReader` through a download channel's {comp['bytes'] / 1e6:.0f} MB "
            f"({comp['frames']:,} frames) at {comp['reader_mbps']:.0f} MB/s, "
            f"{comp['reader_us_per_frame']:.0f} µs per frame; SHA-256 alone over the same "
            f"bytes {comp['sha256_mbps']:.0f} MB/s.")
    for note in notes:
        add(f"- {note}")
    add("")
    add("Median (min–max) over the runs. Node CPU: % of one core, all threads, ingest pass → "
        "playback pass. µs/pkt out: playback pass minus ingest pass CPU per second, over the "
        "playback and download packets per second (system time of it in brackets). Read: the "
        "PS bytes per second those packets carried out of the store; file reads: the node's "
        "read calls (`rchar`), disk: what the block layer read for it (`read_bytes`). Pace: "
        "media time over wall time per session over the window, median (slowest). Live lost: "
        "packets the node counted lost on the live streams, ingest window / playback window.")
    add("")
    add("| live streams | in pkt/s | out pkt/s | node CPU | in µs/pkt | µs/pkt out (system) "
        "| read MB/s | file reads MB/s | disk MB/s | playback pace | download pace | "
        "live lost |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    if results:
        ds = [derived(r) for r in results]

        def col(key: str, digits: int = 2) -> str:
            return cell([d[key] for d in ds if key in d], digits)

        def pace(kind: str) -> str:
            p50 = [d[f"{kind}_pace_p50"] for d in ds if f"{kind}_pace_p50" in d]
            low = [d[f"{kind}_pace_min"] for d in ds if f"{kind}_pace_min" in d]
            if not p50:
                return "–"
            return f"{statistics.median(p50):.3f} ({min(low):.3f})"

        add(f"| {cell([r['playback']['live_streams'] for r in results], 0)} | "
            f"{cell([r['playback']['in_pps'] for r in results], 0)} | "
            f"{cell([r['playback']['out_pps'] for r in results], 0)} | "
            f"{cell([r['ingest']['cpu_share'] for r in results], 1, 100)}% → "
            f"{cell([r['playback']['cpu_share'] for r in results], 1, 100)}% | "
            f"{col('in_us')} | {col('out_us')} ({col('out_sys_us')}) | "
            f"{cell([r['playback']['out_bps'] for r in results], 1, 1e-6)} | "
            f"{cell([r['playback']['rchar_bps'] for r in results], 1, 1e-6)} | "
            f"{cell([r['playback']['disk_bps'] for r in results], 1, 1e-6)} | "
            f"{pace('Playback')} | {pace('Download')} | "
            f"{sum(r['ingest']['live_lost'] for r in results)} / "
            f"{sum(r['playback']['live_lost'] for r in results)} |")
    add("")
    add("Per run. Playbacks / downloads: packets/s, MB/s of PS and frames/s, over all sessions "
        "of the kind. Readers: what the node's threads besides the event loop (the playback "
        "readers: hash, demux) took in the playback pass beyond the ingest pass, % of a core, "
        "and per sent packet. Loop: the node's event-loop thread, "
        "ingest → playback pass. Live lost in all: the node's count over the whole run, and "
        "the streams with any. UDP drops: the kernel's RcvbufErrors in each window, "
        "machine-wide. Gaps: sequence gaps the platform saw over the run. Ended: sessions "
        "whose range ran out (MediaStatus) before the window ended. This process: its CPU "
        "share in the playback window. Other: CPU the machine's other processes (the other "
        "engineers' work) used in the ingest / playback window, in cores. Sender late: how "
        "late the camera sender started a frame, p99 / max ms, playback window. Answer: "
        "INVITE sent to its 200 OK, p50 / max ms, every session set up at once, "
        f"{args.invites_at_once} at a time.")
    add("")
    add("| run | sessions up | playbacks pkt/s, MB/s, fps | downloads pkt/s, MB/s, fps | "
        "readers % (µs/pkt) | loop % | live lost in all (streams) | UDP drops | gaps | "
        "ended | this process | other | sender late ms | answer ms |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ing, pb = r["ingest"], r["playback"]
        d = derived(r)

        def kind_cell(name: str, pb: dict[str, Any] = pb) -> str:
            k = pb["kinds"].get(name)
            if not k:
                return "–"
            return f"{k['pps']:,.0f}, {k['payload_bps'] / 1e6:.2f}, {k['fps']:,.0f}"

        add(f"| {r['run']} | {r['sessions']}/{args.playbacks + args.downloads} | "
            f"{kind_cell('Playback')} | {kind_cell('Download')} | "
            f"{100 * (pb['threads']['threads'] - ing['threads']['threads']):.1f}% "
            f"({d['reader_us']:.2f}) | "
            f"{100 * ing['threads']['loop']:.1f}% → {100 * pb['threads']['loop']:.1f}% | "
            f"{pb['live_lost_total']} ({pb['streams_with_loss']}) | "
            f"{ing['rcvbuf_errors']} / {pb['rcvbuf_errors']} | {r['upstream_gaps']} | "
            f"{r['ended_early']} | {100 * pb['field_share']:.0f}% | "
            f"{ing['other_cores']:.2f} / {pb['other_cores']:.2f} | "
            f"{pb['late_p99_ms']:.1f} / {pb['late_max_ms']:.1f} | "
            + (f"{r['answer_ms']['p50']:.0f} / {r['answer_ms']['max']:.0f} |"
               if r.get("answer_ms") else "– |"))
    add("")
    add("### Goals")
    add("")
    add(f"Playbacks at 1x within {100 * PACE_TOLERANCE:.0f} % of real time; downloads at "
        f"{args.speed}x (within the same {100 * PACE_TOLERANCE:.0f} %); zero loss on the live "
        f"ingest of {args.live} streams in both passes. Over every session of every run:")
    add("")
    if results:
        paces = {kind: [p for r in results for p in r["playback"]["kinds"].get(kind, {})
                        .get("paces", [])] for kind in ("Playback", "Download")}
        silent = {kind: sum(r["playback"]["kinds"].get(kind, {}).get("silent", 0)
                            for r in results) for kind in ("Playback", "Download")}
        for kind, target in (("Playback", 1.0), ("Download", float(args.speed))):
            ps = sorted(paces[kind])
            if not ps:
                add(f"- {kind}s: no session measured (**missed**).")
                continue
            met = ps[0] >= target * (1 - PACE_TOLERANCE) and ps[-1] <= target * (
                1 + PACE_TOLERANCE) and not silent[kind]
            add(f"- {kind}s at {target:g}x: pace median {statistics.median(ps):.3f}, "
                f"slowest {ps[0]:.3f}, fastest {ps[-1]:.3f} over {len(ps)} sessions"
                + (f", {silent[kind]} silent in a window" if silent[kind] else "")
                + f" ({'met' if met else '**missed**'}).")
        lost = [(r["ingest"]["live_lost"], r["playback"]["live_lost"]) for r in results]
        zero = all(a == 0 and b == 0 for a, b in lost)
        add(f"- Live ingest of {args.live} streams: lost in the ingest / playback windows "
            + ", ".join(f"{a} / {b}" for a, b in lost)
            + f" ({'met' if zero else '**missed**'}).")
        ds = [derived(r) for r in results]
        out_us = statistics.median(d["out_us"] for d in ds)
        read = statistics.median(r["playback"]["out_bps"] for r in results)
        add(f"- Node CPU per sent playback packet: {out_us:.2f} µs (median); read throughput "
            f"{read / 1e6:.1f} MB/s of PS sent from the store.")
    add("")
    return "\n".join(L)


def write_section(text: str) -> None:
    write_doc_section(BEGIN, END, text)


def session_ranges(plans: list[playback_store.ChannelPlan], end: float, playbacks: int,
                   downloads: int, lead: float) -> dict[str, tuple[float, float]]:
    """Each played channel's range: from a whole second within the lead of its recording
    (spread evenly over the sessions of a kind, so their segment changes are spread over a
    segment's length) to the end of the recording."""
    out = {}
    for i, p in enumerate(plans[:playbacks + downloads]):
        j, n = (i, playbacks) if i < playbacks else (i - playbacks, downloads)
        start = end - p.frames / playback_store.FPS
        out[p.channel_id] = (start + int(lead * j / max(1, n)), end)
    return out


# ----- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--window", type=float, default=15.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--slack", type=float, default=15.0,
                        help="recording a playback needs beyond warm-up and window, s")
    parser.add_argument("--channels", type=int, default=300, help="channels of the store")
    parser.add_argument("--live", type=int, default=300, help="live streams ingested")
    parser.add_argument("--playbacks", type=int, default=50)
    parser.add_argument("--downloads", type=int, default=10)
    parser.add_argument("--speed", type=int, default=8, help="downloadspeed of the downloads")
    parser.add_argument("--kbps", type=int, default=2000, help="clip bitrate")
    parser.add_argument("--invites-at-once", type=int, default=8,
                        help="INVITEs of the playback pass in flight at a time")
    parser.add_argument("--short", type=float, default=playback_store.SHORT_SECONDS,
                        help="seconds recorded of each channel that is not played")
    parser.add_argument("--warm-cache", action="store_true",
                        help="leave the store in the page cache between runs")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the store and the node's data go (a temporary directory "
                        "under it; default the system's)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="keep each run's node log in this directory")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    args = parser.parse_args()
    if not args.playbacks + args.downloads <= args.live <= args.channels:
        parser.error("need playbacks + downloads <= live <= channels")
    avail = sorted(os.sched_getaffinity(0))
    args.cpus = (avail[0], avail[1]) if len(avail) >= 2 else (None, None)
    log(f"this process: {pin(args.cpus[1])}")
    sys.setswitchinterval(0.0005)  # the sender thread gets the interpreter back sooner
    frames = clip_for(args.kbps * 1000)
    args.clipinfo = ingest_sender.clip_stats(frames)
    info = machine()
    command = shlex.join([".venv/bin/python", "bench/playback.py", *sys.argv[1:]])
    started = time.perf_counter()

    from sensing_node.sim.camera import channel_ids

    channels = channel_ids(NVR_ID, args.channels)
    playback_s = args.warmup + args.window + args.slack
    lead = playback_store.SEGMENT_S
    plans = playback_store.plan(channels, args.playbacks + args.downloads, playback_s,
                                args.speed * playback_s, args.downloads, args.short, lead)
    es = playback_store.clip_es(frames)
    need = playback_store.estimate_bytes(plans, es)
    base = args.dir if args.dir is not None else Path(tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    log(f"store: about {need / 1e9:.2f} GB; {free / 1e9:.0f} GB free under {base}")
    if need > free // 4:
        log("the store would take more than a quarter of the free space: shorten --window")
        return 2
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="sensing-playback-", dir=base) as tmpname:
        tmp = Path(tmpname)
        data = tmp / "data"
        root = data / "recordings"
        end = float(int(time.time()) - 600)
        built = playback_store.build(root, plans, frames, end, log=log)
        store = {"channels": built.channels, "segments": built.segments, "bytes": built.bytes,
                 "build_s": built.seconds, "playback_s": plans[0].frames / 25,
                 "download_s": plans[args.playbacks].frames / 25 if args.downloads else 0.0,
                 "short_s": plans[-1].frames / 25 if args.channels > args.playbacks
                 + args.downloads else 0.0, "lead_s": lead}
        log(f"store: {built.bytes / 1e9:.2f} GB, {built.segments} segments in "
            f"{built.seconds:.0f} s")
        ranges = session_ranges(plans, end, args.playbacks, args.downloads, lead)
        if args.downloads:
            store["components"] = components(root, channels[args.playbacks])
            log("reader alone: {reader_mbps:.0f} MB/s, {reader_us_per_frame:.0f} µs per "
                "frame; SHA-256 {sha256_mbps:.0f} MB/s".format(**store["components"]))

        def publish() -> str:
            notes = list(args.note) + [f"Failed run: {f}" for f in failures]
            text = report(results, args, info, command, time.perf_counter() - started,
                          notes, store)
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"machine": info, "store": store, "results": results,
                     "failures": failures}, indent=1))
            if not args.no_doc:
                write_section(text)
            return text

        import uvloop

        try:
            for run in range(1, args.runs + 1):
                for path in data.iterdir():  # a fresh node each run, on the same store
                    if path != root:
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                if not args.warm_cache:
                    playback_store.evict(root)
                log(f"run {run}")
                try:
                    r = uvloop.run(one_run(args, frames, channels, ranges, data))
                except Exception as exc:  # noqa: BLE001  # a failed run is reported, not fatal
                    failures.append(f"run {run}: {exc}")
                    log(failures[-1])
                    node_log = tmp / "node.log"
                    if node_log.exists():
                        log(node_log.read_text()[-3000:])
                    continue
                r["run"] = run
                results.append(r)
                node_log = tmp / "node.log"
                if node_log.exists():
                    lines = node_log.read_text().splitlines()
                    r["node_log_errors"] = [line for line in lines
                                            if " ERROR " in line or "Traceback" in line][:20]
                    r["node_log_warnings"] = sum(1 for line in lines if " WARNING " in line)
                    for line in r["node_log_errors"]:
                        log(f"  node: {line}")
                    if args.logs is not None:
                        args.logs.mkdir(parents=True, exist_ok=True)
                        shutil.copy(node_log, args.logs / f"node-run{run}.log")
                publish()
        except KeyboardInterrupt:
            log("interrupted: reporting what was measured")
        print(publish())
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
