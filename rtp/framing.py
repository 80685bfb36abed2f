"""RTP over a byte stream: RFC 4571 section 2 framing, as GB/T 28181 uses for TCP media.

Each packet is preceded by its length as a 16-bit big-endian number. A zero length is legal
and carries nothing; it is skipped.

`Deframer` accepts bytes two ways: `feed(data)` for `asyncio.Protocol.data_received`, and the
`get_buffer`/`buffer_updated` pair for `asyncio.BufferedProtocol`, where the transport reads
straight into the deframer's buffer. The buffer holds at most one partial frame between calls
(never more than 65537 bytes once the complete frames are taken out), consumed bytes are
tracked by an offset and moved down only when space is needed, so each byte is copied a
bounded number of times.
"""

from __future__ import annotations

import struct

from .errors import RtpError

__all__ = ["MAX_FRAME", "Deframer", "frame"]

MAX_FRAME = 0xFFFF
_LENGTH = struct.Struct("!H")
_MIN_READ = 1 << 16


def frame(packet: bytes | memoryview) -> bytes:
    """Prefix `packet` with its RFC 4571 length; packets over 65535 bytes raise `RtpError`."""
    if len(packet) > MAX_FRAME:
        raise RtpError("RTP packet is too long for RFC 4571 framing")
    return _LENGTH.pack(len(packet)) + packet


class Deframer:
    """Split an RFC 4571 stream into packets; fed in any chunks it returns the same packets.

    Packets cut out of a `bytes` argument to `feed` are memoryview slices of it (no copy);
    packets assembled in the internal buffer are returned as `bytes`.
    """

    __slots__ = ("max_buffer", "_buf", "_start", "_end")

    def __init__(self, max_buffer: int = 1 << 20) -> None:
        if max_buffer < MAX_FRAME + 2:
            raise ValueError("max_buffer must hold a whole frame (65537 bytes)")
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._start = 0  # first unconsumed byte
        self._end = 0  # end of received bytes; the rest of _buf is free space

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a packet."""
        return self._end - self._start

    def feed(self, data: bytes | memoryview) -> list[memoryview | bytes]:
        """Take received bytes and return the packets they complete, in order."""
        out: list[memoryview | bytes] = []
        view = memoryview(data)
        zero_copy = isinstance(data, bytes)
        while view:
            count = len(view)
            if zero_copy:
                if self._start == self._end:
                    view = view[_split(view, out) :]
                    count = len(view)
                    if not count:
                        break
                else:
                    count = min(count, self._missing())
            target = self.get_buffer(count)
            count = min(len(target), count)
            target[:count] = view[:count]
            target.release()
            out.extend(self.buffer_updated(count))
            view = view[count:]
        return out

    def _missing(self) -> int:
        """Bytes still needed to finish the partial frame in the buffer (or its length)."""
        have = self._end - self._start
        if have < 2:
            return 2 - have
        buf = self._buf
        return 2 + ((buf[self._start] << 8) | buf[self._start + 1]) - have

    def get_buffer(self, sizehint: int) -> memoryview:
        """Return free space for the next read (`asyncio.BufferedProtocol.get_buffer`).

        The view must be released (asyncio drops it after `buffer_updated`) before the next
        call, which may have to grow the buffer.
        """
        want = sizehint if sizehint > 0 else _MIN_READ
        buf = self._buf
        if self._start == self._end:
            self._start = self._end = 0
        if len(buf) - self._end < want and self._start:
            kept = self._end - self._start
            buf[:kept] = buf[self._start : self._end]
            self._start, self._end = 0, kept
        free = len(buf) - self._end
        if free < want and len(buf) < self.max_buffer:
            grown = min(self.max_buffer, max(self._end + want, 2 * len(buf), _MIN_READ))
            buf.extend(bytes(grown - len(buf)))
        return memoryview(buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> list[memoryview | bytes]:
        """Account for `nbytes` written into the last `get_buffer` view; return whole packets."""
        if not 0 <= nbytes <= len(self._buf) - self._end:
            raise ValueError("buffer_updated: more bytes than the buffer has room for")
        self._end += nbytes
        out: list[memoryview | bytes] = []
        buf = self._buf
        pos = self._start
        end = self._end
        while end - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            stop = pos + 2 + size
            if stop > end:
                break
            if size:
                out.append(bytes(buf[pos + 2 : stop]))
            pos = stop
        self._start = pos
        return out


def _split(view: memoryview, out: list[memoryview | bytes]) -> int:
    """Append the whole frames at the start of `view` to `out`; return the bytes they use."""
    pos = 0
    end = len(view)
    while end - pos >= 2:
        size = (view[pos] << 8) | view[pos + 1]
        stop = pos + 2 + size
        if stop > end:
            break
        if size:
            out.append(view[pos + 2 : stop])
        pos = stop
    return pos
