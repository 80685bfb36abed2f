"""The common RTP packet of a stream, taken in one call.

Nearly every datagram of a camera's stream is plain RTP (version 2, no padding, extension or
CSRC) from the latched source, of the answered SSRC, with the sequence number expected next
and no gap waiting in the reorder buffer. `FastReceive.datagram_received` takes such a packet
by itself and adds its payload straight to the stream's frame in progress (`FrameAssembly`);
anything else goes to `slow`, the receiver's full path, which does what it always did. The
fast path changes nothing the full path would not have changed for the same packet, in the
same way: the same counters, the same reorder state (through `ReorderBuffer.take`), the same
sequence number expected next, the same call to the frame.

The module is plain typed Python and is compiled with mypyc, together with `rtp.reorder` and
`rtp.psframe`, when the build has a C compiler (`make`, see `sensing_node.transport.native`):
then the receiver's reader (`sensing_node.transport._drain`, in C too) calls
`datagram_received` with no Python frame, and `ReorderBuffer.take` and `FrameAssembly.add` are
calls into C, which is most of what the fast path is for.
Compiled, attributes keep their declared types, so the owner sets them with values of those
types (no SSRC is `-1` here, not None).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rtp.reorder import ReorderBuffer

__all__ = ["FastReceive", "FrameAssembly"]


def _nothing() -> None:
    pass


def _ignore(data: bytes, addr: Any) -> None:
    pass


def _ignore_packet(data: bytes) -> object:
    return None


def _zero() -> float:
    return 0.0


def _never() -> bool:
    return False


class FrameAssembly:
    """The frame in progress of a stream: the RTP payloads of one timestamp, in order.

    `add(payload, seq, ts, marker)` is a packet's share of the ingest's work: a new timestamp
    ends the frame before it (`end_frame()`, which takes `parts` and starts a new list), the
    payload is added, and a marker ends the frame with it. Once the frame has `check_at`
    payloads, `frame_full()` is asked whether one more could take it past its bounds (and may
    move `check_at` on); if so, the frame ends there. The owner (`MediaIngest`) sets
    `check_at` and `ts` back as it needs. `next_seq` is the sequence number the stream
    expects next (-1 before the first), kept by whoever hands the packets over: the stream's
    `on_packet`, or the fast path.
    """

    def __init__(
        self, check_at: int, end_frame: Callable[[], None] = _nothing,
        frame_full: Callable[[], bool] = _never,
    ) -> None:
        self.parts: list[memoryview] = []
        self.ts = -1
        self.next_seq = -1
        self.check_at = check_at
        self.end_frame = end_frame
        self.frame_full = frame_full

    def add(self, payload: memoryview, seq: int, ts: int, marker: bool) -> None:
        parts = self.parts
        if ts != self.ts:
            if parts:
                self.end_frame()
                parts = self.parts
            self.ts = ts
        parts.append(payload)
        if marker or (len(parts) >= self.check_at and self.frame_full()):
            self.end_frame()


class FastReceive:
    """One UDP stream's datagrams: the common packet here, every other to `slow`.
    For a stream over TCP, `packet_received` takes each packet out of the RFC 4571 framing
    the same way, every other to `slow_packet(data)`.

    `reorder` is the stream's `ReorderBuffer` (compiled, the compiled class of
    `rtp/reorder.py`; the owner may replace it with another). Set by the owner: `slow(data,
    addr)`, `clock()` (the loop's time, for `last_packet_at`), `source` (the latched address;
    None sends everything to `slow`), `ssrc` (-1: none yet), and with `attach` the stream's
    frame in progress, whose `next_seq` it keeps as the stream's `on_packet` would; without a
    frame attached every packet goes to `slow`. `on_error()` is called when the frame raises.
    `packets`, `bytes` and `last_packet_at` (-1.0: never) count every packet of the stream,
    whichever path took it (the full path adds to them too); `fast` the packets taken here.
    """

    def __init__(self, reorder: ReorderBuffer[Any]) -> None:
        self.reorder = reorder
        self.slow: Callable[[bytes, Any], None] = _ignore
        self.slow_packet: Callable[[bytes], object] = _ignore_packet
        self.clock: Callable[[], float] = _zero
        self.on_error: Callable[[], None] = _nothing
        self.source: object = None
        self.ssrc = -1
        self.frame: FrameAssembly | None = None
        self.packets = 0
        self.bytes = 0
        self.last_packet_at = -1.0
        self.fast = 0

    def attach(self, frame: FrameAssembly | None) -> None:
        """Take packets into `frame` (None: take none)."""
        self.frame = frame

    def datagram_received(self, data: bytes, addr: Any) -> None:
        frame = self.frame
        if frame is None or addr != self.source or not self._take(frame, data, 0, len(data)):
            self.slow(data, addr)

    def datagram_in(self, batch: bytes, start: int, end: int) -> None:
        """A datagram from the latched source (a socket connected to it), `batch[start:end]`:
        the compiled reader puts all it read in one call in one bytes object, so a datagram
        taken here costs a view of it, not an object of its own. Every other datagram goes
        to `slow` as a bytes object of its own."""
        frame = self.frame
        if frame is None or not self._take(frame, batch, start, end):
            self.slow(batch[start:end], self.source)

    def packet_received(self, data: bytes) -> None:
        """An RTP packet of a stream over TCP, out of its RFC 4571 framing: as a datagram,
        but with no source to check (the connection was, when it was taken)."""
        frame = self.frame
        if frame is None or not self._take(frame, data, 0, len(data)):
            self.slow_packet(data)

    def _take(self, frame: FrameAssembly, data: bytes, start: int, end: int) -> bool:
        """Take the packet `data[start:end]` if it is the common packet; False: nothing was
        changed."""
        if end - start <= 12 or data[start] != 0x80:
            return False
        second = data[start + 1]
        if 192 <= second <= 223:  # RTCP on the RTP port
            return False
        ssrc = (data[start + 8] << 24) | (data[start + 9] << 16) | (data[start + 10] << 8) \
            | data[start + 11]
        seq = (data[start + 2] << 8) | data[start + 3]
        if ssrc != self.ssrc or seq != frame.next_seq or not self.reorder.take(seq):
            return False
        self.fast += 1
        self.packets += 1
        self.bytes += end - start
        self.last_packet_at = self.clock()
        frame.next_seq = (seq + 1) & 0xFFFF
        ts = (data[start + 4] << 24) | (data[start + 5] << 16) | (data[start + 6] << 8) \
            | data[start + 7]
        try:
            frame.add(memoryview(data)[start + 12:end], seq, ts, second > 0x7F)
        except Exception:
            self.on_error()
        return True
