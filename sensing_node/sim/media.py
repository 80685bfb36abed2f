"""Media of the simulated camera: an encoded test clip and a paced PS-over-RTP sender.

`load_clip` encodes a short moving test pattern with PyAV (libx264 or libx265) into Annex-B
access units the way a camera's encoder emits them: no B-frames, a fixed GOP, and the parameter
sets (SPS/PPS, plus VPS for H.265) repeated in front of every IDR, so a receiver can start at
any key frame. Clips are cached per process; PyAV and numpy are imported only when a clip is
first encoded.

`MediaSender` plays a clip in a loop as GB/T 28181 media (section 6 of docs/gb28181.md): each
frame muxed into one PS pack (`rtp.psmux.PsMuxer`), cut into RTP packets of payload type 96 that
share the frame's 90 kHz timestamp, and sent in one burst at the frame's due time. Due times are
counted from the start (frame n at start + n/fps), so late wake-ups never accumulate into drift.
Sequence numbers and timestamps run on across loops: loop k adds k clip durations to the PTS.

Transports, named from the sender's side:

* ``udp``: datagrams from a bound local port (the one the SDP answer names) to the receiver.
* ``tcp-connect``: the camera connects to the receiver (the node offered ``a=setup:passive``).
* ``tcp-listen``: the camera listens on the port of its answer and the receiver connects (the
  node offered ``a=setup:active``). The first connection carries the stream.

TCP media uses RFC 4571 framing. A receiver that closes the connection ends the sender; a
receiver that stops reading makes it skip frames until the next key frame once the write buffer
holds `write_buffer_limit` bytes, as a camera's encoder does when its socket is full.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from rtp.framing import frame
from rtp.psmux import PsMuxer, RtpPacketizer

__all__ = ["Clip", "MediaSender", "TRANSPORTS", "load_clip"]

log = logging.getLogger(__name__)

TRANSPORTS = ("udp", "tcp-connect", "tcp-listen")
CLOCK_RATE = 90_000

_ENCODERS = {"h264": ("libx264", "x264-params"), "h265": ("libx265", "x265-params")}
_encode_lock = threading.Lock()  # many cameras asking at once encode the clip once


@dataclass(frozen=True)
class Clip:
    """Encoded video: `frames` holds (Annex-B access unit, PTS at 90 kHz, key frame) in order."""

    frames: tuple[tuple[bytes, int, bool], ...]
    fps: int
    codec: str
    width: int
    height: int

    @property
    def duration(self) -> int:
        """Length of one pass through the clip, 90 kHz units (the PTS step between loops)."""
        return len(self.frames) * CLOCK_RATE // self.fps

    @property
    def kbps(self) -> int:
        """Average bit rate of the elementary stream, kbit/s."""
        size = sum(len(data) for data, _, _ in self.frames)
        return round(size * 8 * CLOCK_RATE / self.duration / 1000)


def load_clip(
    codec: str = "h264",
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    seconds: float = 2,
    gop: int = 25,
    bitrate: int | None = None,
) -> Clip:
    """A moving test pattern encoded as `codec` ("h264" or "h265"); cached per argument set.

    Safe to call from worker threads: concurrent callers wait for a single encoding.

    :param gop: frames from one IDR to the next.
    :param bitrate: target in bit/s; None leaves the encoder's constant-quality default.
    """
    if codec not in _ENCODERS:
        raise ValueError(f"unknown video codec {codec!r}")
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError("width and height must be positive and even")
    if fps <= 0 or gop <= 0 or seconds <= 0:
        raise ValueError("fps, gop and seconds must be positive")
    count = max(1, round(seconds * fps))
    with _encode_lock:
        return _encode(codec, width, height, fps, count, gop, bitrate)


@functools.cache
def _encode(
    codec: str, width: int, height: int, fps: int, count: int, gop: int, bitrate: int | None
) -> Clip:
    import av
    import numpy as np

    name, params_option = _ENCODERS[codec]
    context = av.CodecContext.create(name, "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, fps)
    context.framerate = Fraction(fps, 1)
    context.gop_size = gop
    context.max_b_frames = 0
    if bitrate is not None:
        context.bit_rate = bitrate
    params = f"repeat-headers=1:annexb=1:bframes=0:keyint={gop}:min-keyint={gop}:scenecut=0"
    if codec == "h265":
        params += ":open-gop=0:log-level=error"  # closed GOPs: every key frame is an IDR
    context.options = {"preset": "ultrafast", "tune": "zerolatency", params_option: params}

    rows, cols = np.mgrid[0:height, 0:width]
    ramp = (rows + cols).astype(np.uint16)
    half = (height // 2) * (width // 2)
    box = min(width, height) // 4
    packets = []
    for index in range(count):
        luma = ((ramp + 4 * index) & 0xFF).astype(np.uint8)
        left = (index * 8) % (width - box)
        luma[box : 2 * box, left : left + box] = 235  # a square crossing the picture
        picture = av.VideoFrame(width, height, "yuv420p")
        picture.planes[0].update(luma.tobytes())
        picture.planes[1].update(np.full(half, (64 + 2 * index) & 0xFF, np.uint8).tobytes())
        picture.planes[2].update(np.full(half, 128, np.uint8).tobytes())
        picture.pts = index
        packets += context.encode(picture)
    packets += context.encode(None)
    step = Fraction(CLOCK_RATE, fps)
    frames = []
    for packet in packets:
        assert packet.pts is not None  # no B-frames: PTS is the input frame's index
        frames.append((bytes(packet), int(packet.pts * step), bool(packet.is_keyframe)))
    return Clip(frames=tuple(frames), fps=fps, codec=codec, width=width, height=height)


class MediaSender:
    """Streams a `Clip` in a loop as PS over RTP, paced in real time.

    Call `prepare` to bind the local port (for the SDP answer), `start` when the session may
    flow (the ACK), and `stop` to end it. `finished` is set once the sender has ended, by
    `stop` or because the TCP receiver went away.

    :param remote: (host, port) of the receiver; unused by ``tcp-listen``.
    :param local_host: address to bind the local port on.
    :param payload_max: RTP payload bytes per packet.
    :param first_sequence: RTP sequence number of the first packet; random when None.
    :param on_finished: called once when the sender ends.
    """

    connect_attempts = 3
    connect_retry_s = 1.0
    write_buffer_limit = 4 << 20

    def __init__(
        self,
        clip: Clip,
        ssrc: int,
        transport: str,
        remote: tuple[str, int] | None = None,
        *,
        local_host: str = "127.0.0.1",
        payload_max: int = 1400,
        first_sequence: int | None = None,
        on_finished: Callable[[MediaSender], None] | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown media transport {transport!r}")
        if transport != "tcp-listen" and remote is None:
            raise ValueError(f"{transport} needs the receiver's address")
        if not clip.frames:
            raise ValueError("the clip has no frames")
        self.clip = clip
        self.transport = transport
        self.remote = remote
        self.local_host = local_host
        self.local_port = 0
        self.on_finished = on_finished
        self.muxer = PsMuxer(clip.codec)
        sequence = random.randrange(0x10000) if first_sequence is None else first_sequence
        self.packetizer = RtpPacketizer(ssrc, 96, payload_max, sequence)
        self.frames_sent = 0
        self.frames_skipped = 0
        self.packets_sent = 0
        self.bytes_sent = 0  # RTP packets, header included, RFC 4571 length prefix not
        self.finished = asyncio.Event()
        self.peer: tuple[str, int] | None = None  # the TCP receiver, once connected
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Transport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None  # tcp-connect: bound before the answer
        self._connect_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = False
        self._streaming = False
        self._start_time = 0.0
        self._index = 0  # frames scheduled since the start, across loops
        self._need_key = False

    @property
    def ssrc(self) -> int:
        return self.packetizer.ssrc

    @property
    def streaming(self) -> bool:
        """True while frames are being sent."""
        return self._streaming

    # ----- life cycle -----
    async def prepare(self) -> int:
        """Bind the local port and return it (listening already for ``tcp-listen``)."""
        loop = self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        if self.transport == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpLink(self), local_addr=(self.local_host, 0), family=family
            )
            self.local_port = self._udp.get_extra_info("sockname")[1]
        elif self.transport == "tcp-listen":
            self._server = await loop.create_server(
                self._accept, self.local_host, 0, family=family, reuse_address=True
            )
            self.local_port = self._server.sockets[0].getsockname()[1]
        else:
            self._sock = _bound_tcp_socket(self.local_host, 0)
            self.local_port = self._sock.getsockname()[1]
        return self.local_port

    def start(self) -> None:
        """Let media flow: at once over UDP, after the TCP connection is up otherwise."""
        if self._started or self.finished.is_set():
            return
        if self._loop is None:
            raise RuntimeError("MediaSender.prepare() was not awaited")
        self._started = True
        if self.transport == "udp" or self._tcp is not None:
            self._begin()
        elif self.transport == "tcp-connect":
            self._connect_task = self._loop.create_task(self._connect())

    def stop(self) -> None:
        """Stop sending and close every socket; safe to call more than once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._streaming = False
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        for closable in (self._udp, self._tcp, self._server, self._sock):
            if closable is not None:
                closable.close()
        self._udp = self._tcp = self._server = self._sock = None
        if not self.finished.is_set():
            self.finished.set()
            if self.on_finished is not None:
                self.on_finished(self)

    # ----- TCP -----
    async def _connect(self) -> None:
        assert self._loop is not None and self.remote is not None
        last: OSError | None = None
        for attempt in range(self.connect_attempts):
            if attempt:
                await asyncio.sleep(self.connect_retry_s)
            sock = self._sock or _bound_tcp_socket(self.local_host, self.local_port)
            self._sock = None
            try:
                await self._loop.sock_connect(sock, self.remote)
                await self._loop.create_connection(lambda: _TcpLink(self), sock=sock)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:  # stopped while connecting
                sock.close()
                raise
            self._connect_task = None
            return
        self._connect_task = None
        log.info("media to %s:%s: connection failed %d times: %s", *self.remote,
                 self.connect_attempts, last)
        self.stop()

    def _accept(self) -> asyncio.Protocol:
        if self._tcp is not None or self.finished.is_set():
            return _Refused()
        return _TcpLink(self)

    def _connected(self, transport: asyncio.Transport) -> None:
        if self.finished.is_set():
            transport.close()
            return
        self._tcp = transport
        self.peer = transport.get_extra_info("peername")[:2]
        if self._server is not None and self._loop is not None:
            # One receiver per session. Not closed from inside the accept path: uvloop is
            # still attaching the new connection to the server there.
            self._loop.call_soon(self._server.close)
            self._server = None
        if self._started:
            self._begin()

    def _connection_lost(self, transport: asyncio.Transport) -> None:
        if transport is self._tcp:
            self._tcp = None
            self.stop()

    # ----- pacing -----
    def _begin(self) -> None:
        assert self._loop is not None
        self._streaming = True
        self._start_time = self._loop.time()
        self._tick()

    def _tick(self) -> None:
        clip = self.clip
        loops, position = divmod(self._index, len(clip.frames))
        data, pts, keyframe = clip.frames[position]
        pts += loops * clip.duration
        self._send_frame(data, pts, keyframe)
        self._index += 1
        if not self._streaming or self._loop is None:
            return
        due = self._start_time + self._index / clip.fps
        self._timer = self._loop.call_at(due, self._tick)

    def _send_frame(self, data: bytes, pts: int, keyframe: bool) -> None:
        tcp = self._tcp
        if tcp is not None and tcp.get_write_buffer_size() > self.write_buffer_limit:
            self._need_key = True  # the receiver lags: drop frames, resume at a key frame
            self.frames_skipped += 1
            return
        if self._need_key and not keyframe:
            self.frames_skipped += 1
            return
        self._need_key = False
        packets = self.packetizer.packetize(self.muxer.mux_video(data, pts, keyframe=keyframe), pts)
        if tcp is not None:
            tcp.write(b"".join([frame(packet) for packet in packets]))
        elif self._udp is not None:
            sendto, remote = self._udp.sendto, self.remote
            for packet in packets:
                sendto(packet, remote)
        else:
            return
        self.frames_sent += 1
        self.packets_sent += len(packets)
        self.bytes_sent += sum(map(len, packets))


def _bound_tcp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        try:
            sock.bind((host, port))
        except OSError:
            if not port:
                raise
            sock.bind((host, 0))  # the answered port is taken meanwhile: any port will do
    except BaseException:
        sock.close()
        raise
    return sock


class _UdpLink(asyncio.DatagramProtocol):
    def __init__(self, sender: MediaSender) -> None:
        self.sender = sender

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        pass  # RTCP from the receiver, if any, is ignored

    def error_received(self, exc: Exception) -> None:
        pass  # port unreachable while the receiver is not (yet) there: keep sending


class _TcpLink(asyncio.Protocol):
    def __init__(self, sender: MediaSender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.sender._connected(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        pass  # RTCP from the receiver, if any, is ignored

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.sender._connection_lost(self.transport)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
