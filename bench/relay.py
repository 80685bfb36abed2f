"""Re-streaming benchmark: the whole node relaying live camera video to an upper platform.

    .venv/bin/python bench/relay.py [--configs 1x1,1x10,1x50,200x1] [--runs 3] [--window 10]
                                    [--warmup 3] [--no-doc] [--json FILE]
    make bench-relay

A config `CxS` is C cameras, each relayed to S upstream sessions (UDP). For every config and
run, one node is started and measured twice in a row, with the same camera traffic:

  ingest  every camera's channel is pulled through the operator API
          (`POST /api/channels/{id}/live`) and nothing else: the node's cost per incoming
          packet.
  relay   the same pulls stay, and the simulated upper platform INVITEs every channel S times
          (`s=Play`, UDP): the node's cost per outgoing packet is the difference of the two
          passes' CPU per second over the packets per second it sends upward.

The node is the real thing: `sensing-node run -c <config>` (settings parser, uvloop, HTTP API,
housekeeping, cascade registration), pinned to CPU 0; its CPU time (all threads) comes from
/proc. Everything else runs in this process, pinned to CPU 1: one simulated NVR
(`sensing_node.sim.camera.SimulatedCamera` with C channels, which answers the node's INVITEs but
sends no media itself), the paced camera senders in a thread of their own, and the upper
platform (`sensing_node.sim.upstream.SimulatedUpstream`, which the node registers to, with a lean
media receiver per session instead of its checking one).

Camera traffic is that of `bench/ingest_sender.py`: an H.264 clip (1280x720, 25 fps, a key frame
every 50 frames) muxed as PS by `rtp.psmux.PsMuxer`, sent as each frame's RTP packets (1,400
payload bytes) back to back every 40 ms, the cameras' phases and clip positions spread evenly.
Here every packet is its own `send` (no UDP GSO), so that each one is stamped on its own. The
clip is 4 Mbit/s; configs of `--many` (100) cameras or more get a 2 Mbit/s encoding of it
(`--many-kbps`): this process sends and receives every packet in Python on one core, and 200
cameras at 4 Mbit/s (75,000 packets/s each way) are more than it can stamp and read in time.

Latency. The sender takes `time.time_ns()` right before each packet's `send`; on loopback the
datagram is in the node's socket buffer when that call returns. The upstream's sockets have
SO_TIMESTAMPNS, so each relayed packet carries the kernel's arrival time, whatever this process
was doing then. A relayed frame is matched to the camera frame it came from (the latest one sent
before it arrived with the same size and packet count; the node relays the camera's PS bytes
unchanged, cut at the same 1,400 bytes), and packet i of the one to packet i of the other:
sender -> upstream is the arrival minus the stamp. The sender -> node part is measured on the
side: camera 0's packets also go to a plain socket of this process with SO_TIMESTAMPNS, stamped
the same way (sender -> socket). The added latency is sender -> upstream minus the median of
sender -> socket. It includes the node's wait for the rest of a frame: the node relays whole
frames, so a frame's first packet waits for its last. "After the frame" takes each relayed
packet from the stamp of its camera frame's last packet instead: what the node adds once it
could relay the frame.

First keyframe: for every session, from sending the INVITE to the kernel's arrival time of its
first RTP packet, which must open a key frame (a PS pack followed by the system header the muxer
writes before key frames); the channel is being pulled already.

Writes its section of docs/benchmarks.md (between `<!-- relay:begin -->` and
`<!-- relay:end -->`) unless --no-doc.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest_sender  # noqa: E402
from common import (  # noqa: E402
    CLK_TCK,
    NODE_ID,
    PASSWORD,
    REALM,
    ROOT,
    cpu_seconds,
    percentile,
    pin,
)
from common import write_section as write_doc_section  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- relay:begin -->", "<!-- relay:end -->"
HOST = "127.0.0.1"
NODE_BIN = ROOT / ".venv" / "bin" / "sensing-node"
TOKEN = "bench-relay-token"
UPSTREAM_ID = "31011200002000000100"
UP_PASSWORD = "upstream-password"
NVR_ID = f"{REALM}1320000001"
RTP_PORTS = "40000-41999"
RCVBUF = 4 << 20
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # SCM_TIMESTAMPNS is the same number
_TIMESPEC = struct.Struct("@qq")
PACKET_SIZE = ingest_sender.PACKET_SIZE
PAYLOAD_MAX = ingest_sender.PAYLOAD_MAX
FRAME_S = 1.0 / ingest_sender.FPS
MATCH_BACK = 25  # camera frames searched back for the one a relayed frame came from
KEPT_FRAMES = 60  # camera frames remembered per camera (2.4 s)

# Goals from issue 10.
GOAL_P50_MS, GOAL_P99_MS, GOAL_KEYFRAME_S = 0.2, 2.0, 1.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- camera senders (a thread of this process) -----------------------------------------------


class CameraStream:
    """One camera's RTP toward the node: its socket, position in the clip and the stamps of
    the frames it sent lately."""

    __slots__ = ("index", "sock", "ssrc", "seq", "k", "position", "phase", "sent",
                 "frames", "copy")

    def __init__(self, index: int, remote: tuple[str, int], ssrc: int, cameras: int,
                 nframes: int, copy: socket.socket | None) -> None:
        self.index = index
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.bind((HOST, 0))
        self.sock.connect(remote)
        self.ssrc = ssrc
        self.seq = 0
        self.k = 0
        self.position = (index * nframes) // cameras
        self.phase = FRAME_S * index / cameras
        self.sent = 0
        # (payload bytes, per-packet stamps in ns) of the last frames, newest last
        self.frames: collections.deque[tuple[int, list[int]]] = collections.deque(
            maxlen=KEPT_FRAMES)
        self.copy = copy  # camera 0: every packet again to this process's socket


class Senders(threading.Thread):
    """Paced camera senders: every stream sends its next frame every 40 ms at its phase."""

    def __init__(self, frames: list[tuple[bytes, bool]]) -> None:
        super().__init__(name="camera senders", daemon=True)
        self.tpl = ingest_sender.templates(frames, tcp=False, gso=False)
        firsts = ingest_sender.session_start(frames)
        self.first_tpl = [ingest_sender.templates([(ps, False)], False, False)[0]
                          for ps in firsts]
        self.sizes = [len(ps) for ps, _ in frames]
        self.first_sizes = [len(ps) for ps in firsts]
        self.nframes = len(frames)
        self.streams: list[CameraStream] = []
        self.added: collections.deque[CameraStream] = collections.deque()
        self.stop_flag = threading.Event()
        self.copy_stamps: list[int] = []  # camera 0's copies: about 360 a second
        self.lateness: list[float] = []

    def add(self, stream: CameraStream) -> None:
        self.added.append(stream)  # taken by the thread at its next period

    def packets_sent(self) -> int:
        return sum(s.sent for s in self.streams)

    def run(self) -> None:
        pack_into = struct.Struct("!HII").pack_into
        time_ns = time.time_ns
        mono = time.monotonic
        sleep = time.sleep
        base = mono()
        late = self.lateness
        while not self.stop_flag.is_set():
            while self.added:
                self.streams.append(self.added.popleft())
                self.streams.sort(key=lambda s: s.phase)
            for s in self.streams:
                due = base + s.phase
                now = mono()
                if due - now > 0.0003:
                    sleep(due - now - 0.0001)
                    now = mono()
                if len(late) < 1_000_000:
                    late.append(now - due)
                if s.k == 0:
                    buf, offsets, chunks = self.first_tpl[s.position]
                    size = self.first_sizes[s.position]
                else:
                    clip_index = (s.position + s.k) % self.nframes
                    buf, offsets, chunks = self.tpl[clip_index]
                    size = self.sizes[clip_index]
                ts = (s.k * ingest_sender.FRAME_TICKS) & 0xFFFFFFFF
                seq = s.seq
                for off in offsets:
                    pack_into(buf, off + 2, seq & 0xFFFF, ts, s.ssrc)
                    seq += 1
                s.seq = seq
                mv = memoryview(buf)
                send = s.sock.send
                stamps = []
                stamp = stamps.append
                copy = s.copy
                for begin, end in chunks:
                    packet = mv[begin:end]
                    t = time_ns()
                    try:
                        send(packet)
                    except OSError:
                        pass
                    stamp(t)
                    if copy is not None:
                        t = time_ns()
                        try:
                            copy.send(packet)
                        except OSError:
                            pass
                        self.copy_stamps.append(t)
                mv.release()
                s.sent += len(chunks)
                s.frames.append((size, stamps))
                s.k += 1
            base += FRAME_S
            now = mono()
            if now > base + 1.0:  # far behind (a stall of the machine): skip, do not burst
                base = now
            elif not self.streams and base > now:
                sleep(base - now)
        for s in self.streams:
            s.sock.close()


# ----- the upper platform's lean media receiver ------------------------------------------------


def timestamped_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((HOST, port))
    sock.setblocking(False)
    return sock


def arrival_ns(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return 0


class Receiver:
    """The media end of one upstream session: reads every datagram with its kernel arrival
    time and keeps each relayed frame as (arrivals, payload bytes) until it is matched."""

    def __init__(self, camera: int) -> None:
        self.camera = camera
        self.sock = timestamped_socket()
        self.port = self.sock.getsockname()[1]
        self.packets = 0
        self.first_arrival = 0
        self.first_is_key: bool | None = None
        self.arrivals: list[int] = []
        self.payload = 0
        self.frames: list[tuple[list[int], int]] = []
        self.gaps = 0
        self.last_seq: int | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self.readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def readable(self) -> None:
        recvmsg = self.sock.recvmsg
        for _ in range(256):
            try:
                data, anc, _flags, _addr = recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < 12:
                continue
            t = arrival_ns(anc)
            if not self.packets:
                self.first_arrival = t
                # a key frame opens with a pack header and the system header right after it
                self.first_is_key = data[12:16] == b"\x00\x00\x01\xba" and \
                    b"\x00\x00\x01\xbb" in data[12:64]
            self.packets += 1
            seq = (data[2] << 8) | data[3]
            if self.last_seq is not None and seq != (self.last_seq + 1) & 0xFFFF:
                self.gaps += 1
                self.arrivals, self.payload = [], 0
            self.last_seq = seq
            self.arrivals.append(t)
            self.payload += len(data) - 12
            if data[1] & 0x80:
                if len(self.frames) < 2000:
                    self.frames.append((self.arrivals, self.payload))
                self.arrivals, self.payload = [], 0


class Lean:
    """Builds `UpstreamSession`s whose UDP media goes to a `Receiver` (swapped in for the
    simulated platform's checking receiver, which would cost this process too much)."""

    @staticmethod
    def install(upstream_module: Any, receivers: dict[str, Receiver],
                next_camera: list[int]) -> None:
        base = upstream_module.UpstreamSession

        class LeanSession(base):  # type: ignore[misc, valid-type]
            async def _open_media(self) -> int:
                receiver = Receiver(next_camera[0])
                receiver.attach(self._loop)
                receivers[self.channel_id + f"#{id(self)}"] = receiver
                self.lean = receiver
                self.local_port = receiver.port
                return receiver.port

            def close(self, reason: str = "closed") -> None:
                receiver = getattr(self, "lean", None)
                if receiver is not None and receiver.sock.fileno() >= 0:
                    receiver.detach(self._loop)
                super().close(reason)

        upstream_module.UpstreamSession = LeanSession


# ----- the node process ------------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def node_config(tmp: Path, sip_port: int, http_port: int, up_port: int, sessions: int,
                cameras: int) -> Path:
    outgoing = max(sessions * cameras, 1)
    text = f"""\
node:
  id: "{NODE_ID}"
  realm: "{REALM}"
  sip_listen: "{HOST}:{sip_port}"
  media_ip: "{HOST}"
  rtp_ports: "{RTP_PORTS}"
  http_listen: "{HOST}:{http_port}"
  api_token: "{TOKEN}"
  data_dir: "{tmp / 'data'}"
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
    max_streams: {outgoing}
limits:
  max_outgoing_streams: {outgoing}
  max_sessions_per_channel: {max(sessions, 1)}
"""
    path = tmp / "node.yaml"
    path.write_text(text)
    return path


class NodeProcess:
    """`sensing-node run -c config` as a subprocess, pinned to `cpu`, its output in `log_path`."""

    def __init__(self, config: Path, cpu: int | None, log_path: Path) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(NODE_BIN), "run", "-c", str(config)], cwd=ROOT, stdout=self.log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.pinned = "not pinned"
        if cpu is not None:
            # Threads the node creates later inherit the main thread's affinity and nice.
            os.sched_setaffinity(self.pid, {cpu})
            self.pinned = f"cpu {cpu}"
            try:
                os.setpriority(os.PRIO_PROCESS, self.pid, -10)
                self.pinned += ", nice -10"
            except OSError:
                pass

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def user_system(self) -> tuple[float, float]:
        """User and system CPU seconds of the whole process (clock ticks of /proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_file.close()

    def problems(self) -> list[str]:
        """The log's errors and tracebacks (the first 20 lines of them)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if " ERROR " in line or "Traceback" in line][:20]


# ----- one config, one run ---------------------------------------------------------------------


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.1)


def match(receivers: list[Receiver], cameras: dict[int, CameraStream], since_ns: int,
          until_ns: int, samples: dict[str, list[int]], counts: dict[str, int]) -> None:
    """Match every relayed frame so far to its camera frame, and take the latency samples (ns)
    of the frames that arrived within [since, until): per packet, from the stamp of the camera
    packet it carries (`packet`) and from the stamp of the camera frame's last packet
    (`after_frame`, what the node adds once it has the whole frame); per frame, how long the
    camera took to send it (`spread`)."""
    for r in receivers:
        frames, r.frames = r.frames, []
        cam = cameras.get(r.camera)
        recent = list(cam.frames) if cam is not None else []
        for arrivals, payload in frames:
            first = arrivals[0]
            if not since_ns <= first < until_ns:
                continue
            counts["frames"] += 1
            found = None
            for size, stamps in reversed(recent[-MATCH_BACK - 5:]):
                if stamps[-1] > arrivals[-1]:
                    continue  # sent after this frame arrived: a later one
                if size == payload and len(stamps) == len(arrivals):
                    found = stamps
                    break
            if found is None:
                counts["unmatched"] += 1
                continue
            last = found[-1]
            samples["packet"].extend(a - s for a, s in zip(arrivals, found, strict=True))
            samples["after_frame"].extend(a - last for a in arrivals)
            samples["spread"].append(last - found[0])


async def one_run(cameras_n: int, sessions: int, frames: list[tuple[bytes, bool]],
                  args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import aiohttp

    import sensing_node.sim.upstream as upmod
    from sensing_node.sim.camera import CameraConfig, SimulatedCamera
    from sensing_node.sim.upstream import PlatformConfig, SimulatedUpstream

    loop = asyncio.get_running_loop()
    receivers: dict[str, Receiver] = {}
    next_camera = [0]
    Lean.install(upmod, receivers, next_camera)
    upstream = SimulatedUpstream(PlatformConfig(platform_id=UPSTREAM_ID, password=UP_PASSWORD))
    _, up_port = await upstream.start()
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    config = node_config(tmp, sip_port, http_port, up_port, sessions, cameras_n)
    node = NodeProcess(config, args.cpus[0], tmp / "node.log")
    senders = Senders(frames)
    copy_sock = timestamped_socket()
    copy_target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    copy_target.connect(copy_sock.getsockname())
    copy_arrivals: list[int] = []

    def read_copies() -> None:
        for _ in range(256):
            try:
                _data, anc, _f, _a = copy_sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError, OSError):
                return
            copy_arrivals.append(arrival_ns(anc))

    loop.add_reader(copy_sock.fileno(), read_copies)
    camera: SimulatedCamera | None = None
    http = aiohttp.ClientSession(f"http://{HOST}:{http_port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    streams: dict[str, CameraStream] = {}
    out: dict[str, Any] = {"cameras": cameras_n, "sessions": sessions, "pinned": ""}
    try:
        async def healthy() -> bool:
            if node.proc.poll() is not None:
                raise RuntimeError(f"the node exited ({node.proc.returncode}); see its log")
            try:
                async with http.get("/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(healthy, 30, "the node did not answer /healthz")
        out["pinned"] = node.pinned
        camera = SimulatedCamera(CameraConfig(
            server=(HOST, sip_port), device_id=NVR_ID, password=PASSWORD, channels=cameras_n,
            send_media=False, catalog_items_per_message=20, name="Benchmark NVR",
        ))
        await camera.start(keepalives=False)
        channels = camera.channel_ids

        async def catalogued() -> bool:
            async with http.get("/api/channels", params={"device_id": NVR_ID}) as resp:
                body = await resp.json()
            return len(body) >= cameras_n

        await wait_until(catalogued, 30, "the node did not take the NVR's catalog")
        await upstream.wait_registered(timeout=30)

        # The camera side of each INVITE: as soon as the simulated NVR has answered one, its
        # stream starts (packets before the node's ACK are held by the node, as from a device).
        nframes = len(frames)

        def start_streams() -> None:
            assert camera is not None
            for session in list(camera.media_sessions.values()):
                if session.channel_id in streams:
                    continue
                index = channels.index(session.channel_id)
                stream = CameraStream(index, session.remote, session.ssrc, cameras_n, nframes,
                                      copy_target if index == 0 else None)
                streams[session.channel_id] = stream
                senders.add(stream)

        async def watch() -> None:
            while True:
                start_streams()
                await asyncio.sleep(0.02)

        watcher = loop.create_task(watch())
        senders.start()
        limit = asyncio.Semaphore(16)

        async def pull(channel: str) -> None:
            async with limit, http.post(f"/api/channels/{channel}/live", json={}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"pulling {channel}: {resp.status} {await resp.text()}")

        await asyncio.gather(*(pull(c) for c in channels))
        log(f"  {cameras_n} channel(s) pulled")

        def by_index() -> dict[int, CameraStream]:
            return {s.index: s for s in list(streams.values())}

        async def window(kind: str) -> dict[str, Any]:
            await asyncio.sleep(args.warmup)
            for r in receivers.values():
                r.frames = []
            t0, cpu0, in0 = time.monotonic(), node.cpu(), senders.packets_sent()
            us0, own0 = node.user_system(), time.process_time()
            out0 = sum(r.packets for r in receivers.values())
            since = time.time_ns()
            copies0 = len(copy_arrivals)
            samples: dict[str, list[int]] = {"packet": [], "after_frame": [], "spread": []}
            counts = {"frames": 0, "unmatched": 0}
            end = t0 + args.window
            while time.monotonic() < end:
                await asyncio.sleep(0.2)
                match(list(receivers.values()), by_index(), since, 1 << 62, samples, counts)
            t1, cpu1, in1 = time.monotonic(), node.cpu(), senders.packets_sent()
            us1, own1 = node.user_system(), time.process_time()
            out1 = sum(r.packets for r in receivers.values())
            until = time.time_ns()
            await asyncio.sleep(0.2)
            match(list(receivers.values()), by_index(), since, until, samples, counts)
            seconds = t1 - t0
            result: dict[str, Any] = {
                "seconds": seconds,
                "cpu_s": cpu1 - cpu0,
                "cpu_share": (cpu1 - cpu0) / seconds,
                "in_pps": (in1 - in0) / seconds,
                "out_pps": (out1 - out0) / seconds,
                "user_share": (us1[0] - us0[0]) / seconds,
                "system_share": (us1[1] - us0[1]) / seconds,
                "field_share": (own1 - own0) / seconds,  # this process: cameras, upstream
            }
            # sender -> socket: camera 0's copies, stamp i with arrival i (loopback keeps
            # their order and loses none: both lists count the same datagrams)
            n = min(len(copy_arrivals), len(senders.copy_stamps))
            transit = sorted(a - s for a, s in zip(copy_arrivals[copies0:n],
                                                   senders.copy_stamps[copies0:n], strict=True))
            if transit:
                result["transit_us"] = {"p50": percentile(transit, 0.5) / 1e3,
                                        "p99": percentile(transit, 0.99) / 1e3}
            for name, values in samples.items():
                if values:
                    values.sort()
                    result[f"{name}_us"] = {"p50": percentile(values, 0.5) / 1e3,
                                            "p99": percentile(values, 0.99) / 1e3,
                                            "max": values[-1] / 1e3, "n": len(values)}
            result.update(counts)
            log(f"  {kind}: node {100 * result['cpu_share']:.1f}% CPU, in "
                f"{result['in_pps']:,.0f} pkt/s, out {result['out_pps']:,.0f} pkt/s"
                + "".join(f", {name} p50 {result[name + '_us']['p50']:.0f} p99 "
                          f"{result[name + '_us']['p99']:.0f} µs"
                          for name in samples if name + "_us" in result)
                + f" ({counts['unmatched']} of {counts['frames']} frames unmatched)")
            return result

        out["ingest"] = await window("ingest")
        # The relay pass: S sessions per channel, each timed to its first keyframe.
        delays: list[float] = []
        failures: list[str] = []
        timed = []
        for _ in range(sessions):
            for i, channel in enumerate(channels):
                next_camera[0] = i
                invited = time.time_ns()
                session = await upstream.invite(channel, "udp")
                if not session.ok:
                    failures.append(f"{channel}: {session.status} {session.reason} "
                                    f"{session.warning or ''}")
                    continue
                timed.append((session, invited))
        await asyncio.sleep(1.5)
        for session, invited in timed:
            receiver = session.lean
            if receiver.packets:
                delays.append((receiver.first_arrival - invited) / 1e9)
        out["keyframe_s"] = sorted(delays)
        out["keyframe_first_is_key"] = sum(
            1 for session, _ in timed if session.lean.first_is_key)
        out["keyframe_sessions"] = len(timed)
        out["invite_failures"] = failures
        out["relay"] = await window("relay")
        out["sessions_up"] = sum(1 for r in receivers.values() if r.packets)
        out["sequence_gaps"] = sum(r.gaps for r in receivers.values())
        out["sender_late_p99_ms"] = 1e3 * percentile(sorted(senders.lateness[-200_000:]), 0.99)
        watcher.cancel()
    finally:
        senders.stop_flag.set()
        if senders.is_alive():
            senders.join(5)
        for session in list(upstream.sessions.values()):
            session.close("benchmark over")
        await http.close()
        node.stop()
        if camera is not None:
            await camera.stop(unregister=False)
        await upstream.stop()
        loop.remove_reader(copy_sock.fileno())
        copy_sock.close()
        copy_target.close()
        upmod.UpstreamSession = upmod.UpstreamSession.__mro__[1]
    return out


# ----- orchestration and report ----------------------------------------------------------------


def cell(values: list[float], digits: int = 1, scale: float = 1.0) -> str:
    if not values:
        return "–"
    xs = [v * scale for v in values]
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(xs):,.{digits}f}–{max(xs):,.{digits}f})"


def derived(r: dict[str, Any]) -> dict[str, float]:
    """Per-packet costs of one run: the ingest pass's CPU per incoming packet, the relay's CPU
    per outgoing packet (the relay pass's CPU per second minus the ingest pass's, over the
    packets sent upward per second; also split into user and system time), and the added
    latency (sender -> upstream minus the median sender -> socket transit)."""
    ing, rel = r["ingest"], r["relay"]
    nan = float("nan")
    out_pps = rel["out_pps"]
    d = {
        "in_us": 1e6 * ing["cpu_share"] / ing["in_pps"] if ing["in_pps"] else nan,
        "out_us": 1e6 * (rel["cpu_share"] - ing["cpu_share"]) / out_pps if out_pps else nan,
        "out_sys_us": (1e6 * (rel["system_share"] - ing["system_share"]) / out_pps
                       if out_pps else nan),
    }
    d["ratio"] = d["out_us"] / d["in_us"]
    transit = rel.get("transit_us", {}).get("p50", 0.0)
    for name, key in (("packet_us", "added"), ("after_frame_us", "after_frame")):
        lat = rel.get(name)
        if lat:
            d[f"{key}_p50_ms"] = (lat["p50"] - transit) / 1e3
            d[f"{key}_p99_ms"] = (lat["p99"] - transit) / 1e3
    return d


def pick(results: list[dict[str, Any]], cameras: int, sessions: int) -> list[dict[str, Any]]:
    return [r for r in results if r["cameras"] == cameras and r["sessions"] == sessions]


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any],
           command: str, elapsed: float, notes: list[str]) -> str:
    L: list[str] = []
    add = L.append
    add("## Re-streaming to an upper platform (`bench/relay.py`)")
    add("")
    add("The whole node (`sensing-node run`, pinned to CPU 0) pulls C simulated cameras and "
        "relays each to S sessions of a simulated upper platform over UDP (config CxS); the "
        "cameras, the platform and the measurement run in one process pinned to CPU 1. Each "
        "run starts one node and measures it twice with the same camera traffic: an ingest "
        "pass (the channels pulled through the operator API only), then a relay pass (the "
        "same pulls, plus the upstream sessions), so the relay's cost is the difference "
        "within one run. How packets are stamped and matched: the docstring of "
        "`bench/relay.py` and the notes below the tables.")
    add("")
    add(f"- Machine: {info['cpu']}, nproc {info['nproc']}; Linux {info['kernel']}; Python "
        f"{info['python']}; node commit {info['commit']}")
    add(f"- Date: {info['date']}; the whole run took {elapsed / 60:.0f} min")
    add(f"- Command: `{command}`")
    add(f"- {args.runs} runs, each going through the configs in turn (alternating, as "
        f"`bench/compare.py` does); {args.warmup:g} s warm-up and {args.window:g} s window per "
        "pass.")
    for cameras, sessions, rate in args.configs:
        clipinfo = args.clipinfo[rate]
        add(f"- {cameras}x{sessions}: clip 1280x720, 25 fps, GOP 50, "
            f"{clipinfo['bitrate_bps'] / 1e6:.2f} Mbit/s, "
            f"{clipinfo['packets_per_s']:.0f} packets/s per camera")
    for note in notes:
        add(f"- {note}")
    add("")
    add("Median (min–max) over the runs. Node CPU: % of one core, all threads, ingest pass → "
        "relay pass. In µs/pkt: ingest pass CPU per incoming packet. Out µs/pkt: relay pass "
        "minus ingest pass CPU per second, over the outgoing packets per second (of which "
        "system time in brackets). Added, per packet: from the node receiving a camera packet "
        "to the upstream receiving the packet that carries the same bytes. After the frame: "
        "from the node receiving the frame's last packet (the earliest it can relay the frame) "
        "to the upstream receiving each packet of it. First keyframe: INVITE sent → first RTP "
        "packet at the upstream (a key frame), ms, over every session.")
    add("")
    add("| config | in pkt/s | out pkt/s | node CPU | in µs/pkt | out µs/pkt (system) | "
        "out/in | added p50 ms | added p99 ms | after the frame p50 / p99 ms | "
        "first keyframe ms, p50 / max |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cameras, sessions, _ in args.configs:
        rs = pick(results, cameras, sessions)
        if not rs:
            continue
        ds = [derived(r) for r in rs]
        kf = sorted(x for r in rs for x in r["keyframe_s"])
        kf_cell = f"{1e3 * statistics.median(kf):.1f} / {1e3 * kf[-1]:.1f}" if kf else "–"
        add(f"| {cameras}x{sessions} | {cell([r['relay']['in_pps'] for r in rs], 0)} | "
            f"{cell([r['relay']['out_pps'] for r in rs], 0)} | "
            f"{cell([r['ingest']['cpu_share'] for r in rs], 1, 100)}% → "
            f"{cell([r['relay']['cpu_share'] for r in rs], 1, 100)}% | "
            f"{cell([d['in_us'] for d in ds], 2)} | {cell([d['out_us'] for d in ds], 2)} "
            f"({cell([d['out_sys_us'] for d in ds], 2)}) | "
            f"{cell([d['ratio'] for d in ds], 2)} | "
            f"{cell([d['added_p50_ms'] for d in ds if 'added_p50_ms' in d], 2)} | "
            f"{cell([d['added_p99_ms'] for d in ds if 'added_p99_ms' in d], 2)} | "
            f"{cell([d['after_frame_p50_ms'] for d in ds if 'after_frame_p50_ms' in d], 2)} / "
            f"{cell([d['after_frame_p99_ms'] for d in ds if 'after_frame_p99_ms' in d], 2)} | "
            f"{kf_cell} |")
    add("")
    add("Per run. System: the node's system (kernel) share of its CPU, ingest → relay pass. "
        "Sender → upstream: per packet, p50 / p99 / max, µs, not corrected for the transit. "
        "Frame spread: how long the camera sender took from a frame's first packet to its "
        "last (p50 / p99, µs). Transit: sender → socket of camera 0's packets sent a second "
        "time to a socket of this process (p50 / p99, µs). Frames: relayed frames in the "
        "window (of them not matched to a camera frame). Gaps: sequence gaps the upstream saw "
        "over the run. Key: sessions whose first packet opened a key frame. "
        "This process: its CPU share during the relay window (cameras, platform, "
        "measurement). Late p99: how late the camera sender started a frame, ms.")
    add("")
    add("| config | run | CPU ingest → relay | system | sender → upstream µs | frame spread µs "
        "| transit µs | frames | gaps | key | sessions up | this process | late p99 | "
        "INVITE failures |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ing, rel = r["ingest"], r["relay"]
        lat, spread, tr = rel.get("packet_us"), rel.get("spread_us"), rel.get("transit_us")
        add(f"| {r['cameras']}x{r['sessions']} | {r['run']} | "
            f"{100 * ing['cpu_share']:.1f}% → {100 * rel['cpu_share']:.1f}% | "
            f"{100 * ing['system_share']:.1f}% → {100 * rel['system_share']:.1f}% | "
            + (f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f}" if lat else "–")
            + " | " + (f"{spread['p50']:.0f} / {spread['p99']:.0f}" if spread else "–")
            + " | " + (f"{tr['p50']:.1f} / {tr['p99']:.1f}" if tr else "–")
            + f" | {rel['frames']:,} ({rel['unmatched']}) | {r['sequence_gaps']} | "
            f"{r['keyframe_first_is_key']}/{r['keyframe_sessions']} | "
            f"{r['sessions_up']}/{r['cameras'] * r['sessions']} | "
            f"{100 * rel['field_share']:.0f}% | {r['sender_late_p99_ms']:.1f} | "
            f"{len(r['invite_failures'])} |")
    add("")
    add("### Goals")
    add("")
    add(f"Added latency p50 ≤ {GOAL_P50_MS} ms and p99 ≤ {GOAL_P99_MS} ms; an outgoing "
        f"packet costs less CPU than an incoming one; first keyframe < {GOAL_KEYFRAME_S:g} s "
        "after the INVITE on a channel already pulled. Medians of the runs:")
    add("")
    for cameras, sessions, _ in args.configs:
        rs = pick(results, cameras, sessions)
        if not rs:
            continue
        ds = [derived(r) for r in rs]

        def med(key: str, ds: list[dict[str, float]] = ds) -> float:
            values = [d[key] for d in ds if key in d]
            return statistics.median(values) if values else float("nan")

        kf = [x for r in rs for x in r["keyframe_s"]]
        parts = [
            f"added p50 {med('added_p50_ms'):.2f} ms "
            f"({'met' if med('added_p50_ms') <= GOAL_P50_MS else 'missed'}), "
            f"after the frame {med('after_frame_p50_ms'):.2f} ms",
            f"p99 {med('added_p99_ms'):.2f} ms "
            f"({'met' if med('added_p99_ms') <= GOAL_P99_MS else 'missed'}), "
            f"after the frame {med('after_frame_p99_ms'):.2f} ms",
            f"out/in {med('ratio'):.2f} ({'met' if med('ratio') < 1 else 'missed'})",
            f"slowest first keyframe {1e3 * max(kf):.0f} ms "
            f"({'met' if kf and max(kf) < GOAL_KEYFRAME_S else 'missed'})" if kf
            else "first keyframe not measured",
        ]
        add(f"- {cameras}x{sessions}: " + "; ".join(parts) + ".")
    add("")
    return "\n".join(L)


def write_section(text: str) -> None:
    write_doc_section(BEGIN, END, text)


def machine() -> dict[str, Any]:
    import platform

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def clip_for(bitrate: int) -> list[tuple[bytes, bool]]:
    """The ingest benchmark's clip at `bitrate` (encoded once and cached, like its own)."""
    saved = ingest_sender.BITRATE
    ingest_sender.BITRATE = bitrate
    try:
        return ingest_sender.clip()
    finally:
        ingest_sender.BITRATE = saved


def parse_configs(text: str, default_kbps: int, many_kbps: int, many: int
                  ) -> list[tuple[int, int, int]]:
    """`CxS[@kbps]` items; without @, cameras >= `many` get `many_kbps`, others default."""
    out = []
    for item in text.split(","):
        spec, _, kbps = item.strip().partition("@")
        c, _, s = spec.partition("x")
        cameras, sessions = int(c), int(s)
        rate = int(kbps) if kbps else (many_kbps if cameras >= many else default_kbps)
        out.append((cameras, sessions, rate * 1000))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="1x1,1x10,1x50,200x1",
                        help="CxS[@kbps] items: C cameras, S upstream sessions each")
    parser.add_argument("--kbps", type=int, default=4000, help="camera bitrate")
    parser.add_argument("--many-kbps", type=int, default=2000,
                        help="bitrate of configs with --many cameras or more")
    parser.add_argument("--many", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--json", help="also write every raw figure to this file")
    args = parser.parse_args()
    args.configs = parse_configs(args.configs, args.kbps, args.many_kbps, args.many)
    avail = sorted(os.sched_getaffinity(0))
    args.cpus = (avail[0], avail[1]) if len(avail) >= 2 else (None, None)
    pinned = pin(args.cpus[1])
    sys.setswitchinterval(0.0005)  # the sender thread gets the interpreter back sooner
    log(f"this process: {pinned}")
    clips: dict[int, list[tuple[bytes, bool]]] = {}
    args.clipinfo = {}
    for _, _, rate in args.configs:
        if rate not in clips:
            clips[rate] = clip_for(rate)
            args.clipinfo[rate] = ingest_sender.clip_stats(clips[rate])
            log(f"clip {rate // 1000} kbit/s: "
                f"{args.clipinfo[rate]['bitrate_bps'] / 1e6:.2f} Mbit/s, "
                f"{args.clipinfo[rate]['packets_per_s']:.0f} packets/s")
    info = machine()
    command = shlex.join([".venv/bin/python", "bench/relay.py", *sys.argv[1:]])
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    failures: list[str] = []

    def publish() -> str:
        notes = list(args.note) + [f"Failed run: {f}" for f in failures]
        text = report(results, args, info, command, time.perf_counter() - started, notes)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "results": results,
                                                   "failures": failures}, indent=1))
        if not args.no_doc:
            write_section(text)
        return text

    import uvloop

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for run in range(1, args.runs + 1):
            for cameras, sessions, rate in args.configs:
                log(f"run {run}: {cameras}x{sessions} at {rate // 1000} kbit/s")
                with tempfile.TemporaryDirectory(prefix="sensing-relay-") as tmpname:
                    try:
                        r = uvloop.run(one_run(cameras, sessions, clips[rate], args,
                                               Path(tmpname)))
                    except (RuntimeError, OSError) as exc:
                        failures.append(f"{cameras}x{sessions} run {run}: {exc}")
                        log(failures[-1])
                        node_log = Path(tmpname) / "node.log"
                        if node_log.exists():
                            log(node_log.read_text()[-2000:])
                        continue
                r["run"] = run
                results.append(r)
                publish()
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    print(publish())
    return 0 if results and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
