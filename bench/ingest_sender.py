"""Simulated GB/T 28181 cameras for the live-ingest benchmark: paced PS-over-RTP senders.

    python bench/ingest_sender.py --targets T.json --transport udp --duration 30 --cpu 1 \
        --out S.json [--first 0 --count 200]

Every stream sends an H.264 clip (`clip()`: by default 1280x720, 25 fps, about 4 Mbit/s, a key
frame every 50 frames; other sizes and rates per stream, see the targets file below), muxed
by `rtp.psmux.PsMuxer` as a camera does and cut into RTP packets of 1,400 payload bytes by
`rtp.psmux.RtpPacketizer`. The packets are built once per process; for
each stream only the sequence number, timestamp and SSRC are written into the shared packet
buffers (`struct.pack_into`) right before it is sent. Each stream sends the packets of one frame
as a burst at the frame's time (every 40 ms), like a camera's encoder output; the streams'
phases are spread evenly over the 40 ms and their positions in the clip over its length, so
key frames of different streams do not coincide.

UDP: one connected socket per stream; a frame's packets go out with UDP GSO (`UDP_SEGMENT`,
Linux 4.18+): one `send` of up to 44 back-to-back packets that the kernel splits into separate
datagrams, so the receiver sees exactly what per-packet sends would give it, at a fraction of
the sender's CPU (`--no-gso`: one `send` per packet). TCP: one connection per stream to the
node's passive port, RFC 4571 framing (`rtp.framing`), one `sendall` per frame.

Lateness is how long after its due time a stream's frame started to go out; the sender reports
its distribution, the packets sent per stream and its own CPU time as one JSON object.

`--control`: the sender reads commands from its standard input between frame rounds, one
per line: `STOP i` stops stream i (its index in the targets file) for the rest of the run, as
a camera stops on the node's BYE. Its packets sent so far stay counted.

The targets file is a JSON object: `{"host": "127.0.0.1", "ports": [...]}`; stream i goes to
ports[i] with SSRC 0x0B000000 + i. Within the process, streams `first` .. `first + count - 1`
are sent. Two optional lists, as long as `ports`, change that per stream: `ssrcs` (the SSRC each
stream was given, e.g. in the node's INVITE) and `clips` (each stream's kind as `clip_spec`
reads it, e.g. `1920x1080@8000k`; each kind is its own clip, encoded once and cached).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pin  # noqa: E402

FPS = 25
FRAME_TICKS = 90_000 // FPS  # 90 kHz RTP clock
GOP = 50
WIDTH, HEIGHT = 1280, 720
BITRATE = 4_000_000
CLIP_SECONDS = 8
PAYLOAD_MAX = 1400
PACKET_SIZE = 12 + PAYLOAD_MAX  # every packet of a frame but the last has this size
GSO_SEGMENTS = 44  # packets per UDP GSO send: 44 x 1412 bytes stay under 64 KiB
UDP_SEGMENT = 103  # setsockopt(SOL_UDP, UDP_SEGMENT, size): Linux UDP GSO
SOL_UDP = 17
TICK = 0.005  # progress sample interval, s
SSRC_BASE = 0x0B000000
CACHE = Path(tempfile.gettempdir()) / "sensing-bench-ingest"

_HEADER = struct.Struct("!HII")  # sequence, timestamp, SSRC at byte 2 of the RTP header
_LEN = struct.Struct("!H")


# ----- the clip --------------------------------------------------------------------------------


def clip(width: int | None = None, height: int | None = None, bitrate: int | None = None
         ) -> list[tuple[bytes, bool]]:
    """The benchmark clip as (PS bytes of one frame, key frame) pairs, encoded once and cached;
    by default WIDTH x HEIGHT at BITRATE.

    The picture is a fixed detailed texture (as a camera view of a scene) with a few moving
    blocks and light per-frame noise (sensor noise), which makes x264 spend most of its bits on
    the key frames, as camera streams do.
    """
    width = width or WIDTH
    height = height or HEIGHT
    bitrate = bitrate or BITRATE
    name = f"clip-{width}x{height}-{FPS}fps-{bitrate // 1000}k-gop{GOP}-{CLIP_SECONDS}s.pkl"
    path = CACHE / name
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301  # our own cache file
    frames = _encode(width, height, bitrate)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(frames, f)
    os.replace(tmp, path)
    return frames


def clip_spec(text: str) -> tuple[int, int, int]:
    """A stream kind as `720p@4` or `1920x1080@8000k`: (width, height, bits per second); a
    bare number after @ is Mbit/s."""
    size, _, rate = text.strip().partition("@")
    named = {"720p": (1280, 720), "1080p": (1920, 1080), "960p": (1280, 960), "4mp": (2560, 1440)}
    if size.lower() in named:
        width, height = named[size.lower()]
    else:
        w, _, h = size.lower().partition("x")
        width, height = int(w), int(h)
    rate = rate.strip().lower() or "4"
    bitrate = int(rate[:-1]) * 1000 if rate.endswith("k") else int(float(rate) * 1_000_000)
    if width <= 0 or height <= 0 or width % 2 or height % 2 or bitrate <= 0:
        raise ValueError(f"not a stream kind: {text!r} (e.g. 720p@4 or 1920x1080@8000k)")
    return width, height, bitrate


def spec_name(spec: tuple[int, int, int]) -> str:
    """The canonical text of a stream kind, which `clip_spec` reads back."""
    return f"{spec[0]}x{spec[1]}@{spec[2] // 1000}k"


def _encode(width: int, height: int, bitrate: int) -> list[tuple[bytes, bool]]:
    from fractions import Fraction

    import av
    import numpy as np

    from rtp.psmux import PsMuxer

    rng = np.random.default_rng(28181)
    # A detailed, smooth-ish texture: noise blurred a little by averaging shifted copies.
    base = rng.integers(0, 256, (height, width), dtype=np.int16)
    base = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1) + np.roll(base, (1, 1), (0, 1))) // 4
    gradient = np.linspace(0, 60, width, dtype=np.int16)[None, :]
    background = np.clip(base // 2 + 40 + gradient, 0, 255)
    chroma_u = np.full((height // 2, width // 2), 118, np.uint8)
    chroma_v = np.full((height // 2, width // 2), 136, np.uint8)

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = Fraction(1, FPS)
    codec.framerate = Fraction(FPS, 1)
    codec.bit_rate = bitrate
    codec.gop_size = GOP
    codec.max_b_frames = 0  # cameras send I and P frames
    codec.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": (
            f"keyint={GOP}:min-keyint={GOP}:scenecut=0:vbv-maxrate={bitrate // 1000}:"
            f"vbv-bufsize={bitrate // 1000}:nal-hrd=none:repeat-headers=1"
        ),
    }
    codec.open()

    muxer = PsMuxer("h264")
    out: list[tuple[bytes, bool]] = []
    total = FPS * CLIP_SECONDS

    def take(packets: list) -> None:  # type: ignore[type-arg]
        for packet in packets:
            pts = len(out) * FRAME_TICKS
            data = bytes(packet)
            key = bool(packet.is_keyframe)
            out.append((muxer.mux_video(data, pts, keyframe=key), key))

    for k in range(total):
        y = background.copy()
        for b in range(6):  # moving blocks
            size = 60 + 20 * b
            cx = int((width - size) * (0.5 + 0.45 * np.sin(0.05 * k + b)))
            cy = int((height - size) * (0.5 + 0.45 * np.cos(0.035 * k + 2 * b)))
            y[cy : cy + size, cx : cx + size] = 40 + 35 * b
        y = y + rng.integers(-3, 4, y.shape, dtype=np.int16)
        planes = np.concatenate(
            [np.clip(y, 0, 255).astype(np.uint8).ravel(), chroma_u.ravel(), chroma_v.ravel()]
        )
        frame = av.VideoFrame(width, height, "yuv420p")
        offset = 0
        for plane in frame.planes:
            h = plane.height
            w = plane.width
            src = planes[offset : offset + w * h].reshape(h, w)
            offset += w * h
            dst = np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)
            dst[:, :w] = src
        frame.pts = k
        take(codec.encode(frame))
    take(codec.encode(None))
    return out[:total]


def clip_stats(frames: list[tuple[bytes, bool]]) -> dict[str, float]:
    """Bitrate, packets per second and key/other frame sizes of one stream of the clip."""
    sizes = [len(ps) for ps, _ in frames]
    keys = [len(ps) for ps, key in frames if key]
    others = [len(ps) for ps, key in frames if not key]
    packets = sum(-(-s // PAYLOAD_MAX) for s in sizes)
    seconds = len(frames) / FPS
    return {
        "frames": len(frames),
        "seconds": seconds,
        "bitrate_bps": 8 * (sum(sizes) + 12 * packets) / seconds,
        "packets_per_s": packets / seconds,
        "key_frame_bytes": sum(keys) / max(1, len(keys)),
        "key_frame_packets": sum(-(-s // PAYLOAD_MAX) for s in keys) / max(1, len(keys)),
        "other_frame_bytes": sum(others) / max(1, len(others)),
        "max_frame_packets": max(-(-s // PAYLOAD_MAX) for s in sizes),
    }


def templates(frames: list[tuple[bytes, bool]], tcp: bool, gso: bool
              ) -> list[tuple[bytearray, list[int], list[tuple[int, int]]]]:
    """Per frame: one buffer holding its RTP packets back to back (RFC 4571-framed for TCP),
    the offset of each packet's RTP header in it, and the (start, end) of each send: the whole
    frame for TCP, up to GSO_SEGMENTS packets with UDP GSO, else each packet. Sequence numbers,
    timestamps and SSRC are left zero."""
    from rtp.framing import frame as frame4571
    from rtp.psmux import RtpPacketizer

    packetizer = RtpPacketizer(ssrc=0, payload_max=PAYLOAD_MAX)
    out = []
    for ps, _ in frames:
        buf = bytearray()
        offsets = []
        for packet in packetizer.packetize(ps, 0):
            if tcp:
                packet = frame4571(packet)
                offsets.append(len(buf) + 2)
            else:
                offsets.append(len(buf))
            buf += packet
        if tcp:
            sends = [(0, len(buf))]
        else:
            step = GSO_SEGMENTS if gso else 1
            starts = offsets[::step]
            sends = list(zip(starts, starts[1:] + [len(buf)], strict=True))
        out.append((buf, offsets, sends))
    return out


def session_start(frames: list[tuple[bytes, bool]]) -> list[bytes]:
    """Each frame's PS bytes as the first pack of a session: with the system header and program
    stream map after the pack header, as `PsMuxer` writes its very first pack (GB/T 28181 App.
    C.1), whether or not the frame is a key frame. A stream that starts there is one a camera
    starts on a new INVITE; without them the receiver meets PES packets before any PSM."""
    key_ps = next(ps for ps, key in frames if key)
    pes = key_ps.find(b"\x00\x00\x01\xe0")
    headers = key_ps[14:pes]  # PsMuxer's pack header is 14 bytes (no stuffing)
    out = []
    for ps, key in frames:
        assert ps[:4] == b"\x00\x00\x01\xba" and ps[13] & 0x07 == 0
        out.append(ps if key else ps[:14] + headers + ps[14:])
    return out


# ----- sending ---------------------------------------------------------------------------------


class Commands:
    """`STOP i` lines from a pipe, read without blocking (`--control`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.rest = b""
        os.set_blocking(fd, False)

    def stopped(self) -> list[int]:
        """The streams named in the lines that arrived since the last call."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not data:  # the orchestrator closed the pipe: no more commands
            self.fd = -1
            return []
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            word, _, value = line.decode().strip().partition(" ")
            if word == "STOP" and value.strip().isdigit():
                out.append(int(value))
        return out


def run(targets: dict[str, Any], transport: str, duration: float, first: int, count: int,
        total_streams: int, gso: bool = True, first_headers: bool = False,
        commands: Commands | None = None) -> dict[str, Any]:
    tcp = transport == "tcp"
    host, ports = targets["host"], targets["ports"]
    ssrcs = targets.get("ssrcs") or [SSRC_BASE + i for i in range(len(ports))]
    kinds = targets.get("clips") or [spec_name((WIDTH, HEIGHT, BITRATE))] * len(ports)
    streams = range(first, first + count)
    # Per stream kind: the clip's frame templates and, to open a session, its first frames.
    tpls: dict[str, list[tuple[bytearray, list[int], list[tuple[int, int]]]]] = {}
    firsts: dict[str, list[bytes]] = {}
    for name in sorted({kinds[i] for i in streams}):
        frames = clip(*clip_spec(name))
        tpls[name] = templates(frames, tcp, gso)
        firsts[name] = session_start(frames) if first_headers else []
    socks = []
    for i in streams:
        if tcp:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.connect((host, ports[i]))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            if gso:
                s.setsockopt(SOL_UDP, UDP_SEGMENT, PACKET_SIZE)
            s.connect((host, ports[i]))
        socks.append(s)

    # Send schedule: stream i sends frame k at start + phase_i + k/FPS, from clip position
    # (start_i + k) mod nframes. Phases and clip positions are spread over all streams of the
    # run (not only this process's), so several sender processes interleave.
    period = 1.0 / FPS
    order = []
    for j, i in enumerate(streams):
        phase = period * i / total_streams
        tpl = tpls[kinds[i]]
        position = (i * len(tpl)) // total_streams
        order.append((phase, j, i, position, tpl))
    order.sort(key=lambda item: item[:3])
    # The first frame of each stream, when it is to open a session (see session_start).
    first_tpl = {(kinds[i], position): templates([(firsts[kinds[i]][position], False)], tcp,
                                                 gso)[0]
                 for _, _, i, position, _ in order} if first_headers else {}
    sends = [s.sendall if tcp else s.send for s in socks]
    seqs = [0] * count
    sent_packets = [0] * count
    sent_bytes = 0
    stream_bytes = [0] * count  # as the receiver reads them (TCP: with the RFC 4571 length)
    pack_into = _HEADER.pack_into
    lateness: list[float] = []
    record = lateness.append
    errors = 0

    cpu0 = time.process_time()
    start = time.monotonic() + 0.2
    print(f"START {start:.6f}", flush=True)  # CLOCK_MONOTONIC is the same in every process
    stop = start + duration
    # (time, packets sent so far) every TICK s: the orchestrator interpolates the packets sent
    # by the instants it read the receiver's counters, which gives the backlog at those.
    progress: list[tuple[float, int]] = []
    next_tick = start
    total_sent = 0
    stopped: set[int] = set()
    k = 0
    perf = time.monotonic
    sleep = time.sleep
    while True:
        base = start + k * period
        if base >= stop:
            break
        ts = (k * FRAME_TICKS) & 0xFFFFFFFF
        if commands is not None and commands.fd >= 0:
            stop_now = set(commands.stopped())
            if stop_now:
                order = [item for item in order if item[2] not in stop_now]
                stopped |= stop_now & set(streams)
        for phase, j, i, position, tpl in order:
            due = base + phase
            now = perf()
            if due - now > 0.0003:  # otherwise send up to 0.3 ms early rather than spin
                sleep(due - now - 0.0001)
                now = perf()
            record(now - due)
            if now >= next_tick:
                progress.append((now, total_sent))
                next_tick = now + TICK
            if k == 0 and first_tpl:
                buf, offsets, chunks = first_tpl[kinds[i], position]
            else:
                buf, offsets, chunks = tpl[(position + k) % len(tpl)]
            ssrc = ssrcs[i]
            seq = seqs[j]
            send = sends[j]
            for off in offsets:
                pack_into(buf, off + 2, seq & 0xFFFF, ts, ssrc)
                seq += 1
            try:
                if tcp:
                    send(buf)
                else:
                    mv = memoryview(buf)
                    for begin, end in chunks:
                        send(mv[begin:end])
                    mv.release()
                sent_bytes += len(buf)
                stream_bytes[j] += len(buf)
            except OSError:
                errors += 1
            sent_packets[j] += seq - seqs[j]
            total_sent += seq - seqs[j]
            seqs[j] = seq
        k += 1
    wall = time.monotonic() - start
    cpu = time.process_time() - cpu0
    for s in socks:
        if tcp:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    time.sleep(0.2)
    for s in socks:
        s.close()
    lateness.sort()
    n = len(lateness)
    return {
        "first": first,
        "count": count,
        "frames_per_stream": k,
        "sent_packets": sent_packets,
        "sent_bytes": sent_bytes,
        "sent_bytes_per_stream": stream_bytes,
        "progress": progress + [(time.monotonic(), total_sent)],
        "send_errors": errors,
        "stopped": sorted(stopped),
        "wall_s": wall,
        "cpu_s": cpu,
        "lateness_ms": {
            "median": 1000 * lateness[n // 2] if n else 0.0,
            "p99": 1000 * lateness[min(n - 1, int(0.99 * n))] if n else 0.0,
            "max": 1000 * lateness[-1] if n else 0.0,
            "over_10ms": sum(1 for x in lateness if x > 0.010),
            "events": n,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", help="JSON file with host and ports")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--out", help="write the JSON result here (default stdout)")
    parser.add_argument("--session-start", action="store_true",
                        help="every stream's first pack carries the system header and PSM, as a "
                        "camera's first pack on a new session does (see session_start)")
    parser.add_argument("--control", action="store_true",
                        help="read STOP commands from standard input (see the module's text)")
    parser.add_argument("--no-gso", action="store_true",
                        help="UDP: one send per packet instead of UDP GSO sends")
    parser.add_argument("--prepare", action="store_true", help="only encode the clip, print stats")
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(clip_stats(clip()), indent=1))
        return 0
    targets = json.loads(Path(args.targets).read_text())
    total = len(targets["ports"])
    count = args.count if args.count is not None else total - args.first
    pin(args.cpu)
    result = run(targets, args.transport, args.duration, args.first, count, total,
                 gso=not args.no_gso, first_headers=args.session_start,
                 commands=Commands(sys.stdin.fileno()) if args.control else None)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
