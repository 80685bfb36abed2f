"""RTP packetising of PS frames for re-streaming to an upper platform, sans-I/O.

References: RFC 3550 section 5.1 (fixed header), RFC 4571 section 2 (framing over TCP), GB/T
28181-2022 section 4.3.6 and Appendix C (PS over RTP, PT 96, 90 kHz, one timestamp per frame,
marker on the last packet of a frame).

The node re-streams a camera's PS as it came: the PS bytes of each frame (`rtp.ps.AccessUnit`
`.ps_bytes`, the camera's own packs, no remux) are cut into packets of at most `payload_max`
payload bytes, with the upstream's SSRC, our own sequence numbers (from `first_seq`, wrapping at
2**16), the frame's timestamp on every packet and the marker bit on its last.

Timestamps follow the frames' PTS. The first frame with a PTS is stamped `first_ts`, each later
one `first_ts` plus its PTS's distance from that first PTS, modulo 2**32. The PTS is a 33-bit
clock and the timestamp a 32-bit one; 2**32 divides 2**33, so the sum modulo 2**32 carries the
timeline across the PTS wrap with no special case (a PTS going back gives a timestamp going back
by as much). A frame without a PTS keeps the timestamp of the frame before it (`first_ts` before
any). When the frames' PTS start over from another base (the camera's stream was pulled again),
`restart_timeline` anchors the next PTS a step after the last timestamp.

Each call is one frame, and each packet costs a `struct.pack` of its header and a memoryview
slice of the frame, joined with one copy of the payload bytes (about 1.6 times as fast as
`rtp.packet.build_rtp`). `packetize` returns the packets as `bytes` (one datagram each);
`packetize_framed` returns them RFC 4571 framed in one `bytes` object, one write per frame on
TCP. A frame of n bytes gives n bytes of
payload plus 12 bytes per packet (14 framed); nothing is kept between frames but the counters.

Cut-through: `begin_forwarding` switches to passing the source's packets on one by one as they
arrive (`forward`), without waiting for the frame's last packet: each gets our header, with the
source's timestamp shifted onto our timeline at the switch, and is split when its payload is
larger than `payload_max`. `end_forwarding` goes back to whole frames.
"""

from __future__ import annotations

import struct

__all__ = ["PAYLOAD_MAX_LIMIT", "RtpPacketizer"]

_MASK32 = 0xFFFFFFFF
# version 2, no padding, extension or CSRC; then marker and payload type; seq, timestamp, SSRC
_HEADER = struct.Struct("!HHII")
# the same preceded by the RFC 4571 length
_FRAMED_HEADER = struct.Struct("!HHHII")
_HEADER_SIZE = 12
_MARKER = 0x80
# An RFC 4571 frame holds at most 65535 bytes, 12 of them the RTP header.
PAYLOAD_MAX_LIMIT = 0xFFFF - _HEADER_SIZE


class RtpPacketizer:
    """Cuts each frame's PS bytes into RTP packets toward one receiver (one SSRC).

    `sequence` is the next packet's sequence number and `timestamp` the last frame's (`first_ts`
    before the first); `packets` and `octets` count the packets and payload bytes sent, as an
    RTCP sender report needs them (RFC 3550 section 6.4.1, both modulo 2**32 there).

    :param ssrc: the receiver's SSRC (GB/T 28181 `y=` as an integer).
    :param payload_max: payload bytes per packet, RTP header not included; at most 65523, so
        that every packet fits an RFC 4571 frame.
    :param first_seq: sequence number of the first packet (RFC 3550 asks for a random one).
    :param first_ts: timestamp of the first frame (likewise random).
    """

    __slots__ = (
        "ssrc",
        "payload_type",
        "payload_max",
        "sequence",
        "timestamp",
        "packets",
        "octets",
        "_offset",
        "_anchor",
        "_lead",
        "_through",
    )

    def __init__(
        self,
        ssrc: int,
        *,
        payload_type: int = 96,
        payload_max: int = 1400,
        first_seq: int,
        first_ts: int,
    ) -> None:
        if not 0 <= ssrc <= _MASK32:
            raise ValueError("ssrc must be 0-4294967295")
        if not 0 <= payload_type <= 0x7F:
            raise ValueError("RTP payload type must be 0-127")
        if not 1 <= payload_max <= PAYLOAD_MAX_LIMIT:
            raise ValueError(f"payload_max must be 1-{PAYLOAD_MAX_LIMIT}")
        if not 0 <= first_seq <= 0xFFFF:
            raise ValueError("first_seq must be 0-65535")
        if not 0 <= first_ts <= _MASK32:
            raise ValueError("first_ts must be 0-4294967295")
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.payload_max = payload_max
        self.sequence = first_seq
        self.timestamp = first_ts
        self.packets = 0
        self.octets = 0
        self._offset: int | None = None  # timestamp - PTS, from the first frame with a PTS
        self._anchor = first_ts  # what the next first PTS is stamped
        self._lead = 0x8000 | payload_type  # the header's first two bytes, marker clear
        self._through: int | None = None  # timestamp - source timestamp while forwarding

    def restart_timeline(self, step: int = 3600) -> None:
        """Stamp the next frame with a PTS `step` after the last timestamp and follow the PTS
        from there (for a source whose PTS start over; 3600 is one frame at 25 fps)."""
        if not 0 <= step <= _MASK32:
            raise ValueError("step must be 0-4294967295")
        self._offset = None
        self._anchor = (self.timestamp + step) & _MASK32

    def _stamp(self, pts: int | None) -> int:
        """The timestamp of the frame being sent, which has this PTS (90 kHz, 33 bits)."""
        if pts is None:
            return self.timestamp
        offset = self._offset
        if offset is None:
            offset = self._offset = self._anchor - pts
        self.timestamp = timestamp = (pts + offset) & _MASK32
        return timestamp

    def packetize(self, ps: bytes | bytearray | memoryview, pts: int | None) -> list[bytes]:
        """The RTP packets of one frame, in order; an empty frame gives none and changes
        nothing. `ps` is only read during the call."""
        view = memoryview(ps).cast("B")
        size = len(view)
        if not size:
            return []
        timestamp = self._stamp(pts)
        payload_max = self.payload_max
        pack = _HEADER.pack
        lead = self._lead
        ssrc = self.ssrc
        seq = self.sequence
        last = size - 1 - (size - 1) % payload_max  # where the last packet's payload starts
        out: list[bytes] = []
        append = out.append
        for start in range(0, last, payload_max):
            append(pack(lead, seq & 0xFFFF, timestamp, ssrc) + view[start : start + payload_max])
            seq += 1
        append(pack(lead | _MARKER, seq & 0xFFFF, timestamp, ssrc) + view[last:])
        self.sequence = (seq + 1) & 0xFFFF
        self.packets = (self.packets + len(out)) & _MASK32
        self.octets = (self.octets + size) & _MASK32
        return out

    def packetize_framed(self, ps: bytes | bytearray | memoryview, pts: int | None) -> bytes:
        """The RTP packets of one frame, each with its RFC 4571 length, as one `bytes` object;
        an empty frame gives `b""` and changes nothing. `ps` is only read during the call."""
        view = memoryview(ps).cast("B")
        size = len(view)
        if not size:
            return b""
        timestamp = self._stamp(pts)
        payload_max = self.payload_max
        length = payload_max + _HEADER_SIZE
        pack = _FRAMED_HEADER.pack
        lead = self._lead
        ssrc = self.ssrc
        seq = self.sequence
        last = size - 1 - (size - 1) % payload_max
        parts: list[bytes | memoryview] = []
        append = parts.append
        for start in range(0, last, payload_max):
            append(pack(length, lead, seq & 0xFFFF, timestamp, ssrc))
            append(view[start : start + payload_max])
            seq += 1
        append(pack(size - last + _HEADER_SIZE, lead | _MARKER, seq & 0xFFFF, timestamp, ssrc))
        append(view[last:])
        count = len(parts) >> 1
        self.sequence = (seq + 1) & 0xFFFF
        self.packets = (self.packets + count) & _MASK32
        self.octets = (self.octets + size) & _MASK32
        return b"".join(parts)

    # ----- cut-through: the source's packets passed on one by one -----
    def begin_forwarding(self, source_ts: int) -> None:
        """Pass the source's packets on from now on (`forward`): the frame sent last carried the
        source's RTP timestamp `source_ts`, so a forwarded packet is stamped our last timestamp
        plus its distance from that one (modulo 2**32)."""
        if not 0 <= source_ts <= _MASK32:
            raise ValueError("source_ts must be 0-4294967295")
        self._through = (self.timestamp - source_ts) & _MASK32

    def forward(self, payload: bytes | bytearray | memoryview, source_ts: int,
                marker: bool) -> list[bytes]:
        """One source packet's payload as our packets (split when it is larger than
        `payload_max`; the marker, if set, on the last piece only). Needs `begin_forwarding`."""
        through = self._through
        if through is None:
            raise ValueError("forward() before begin_forwarding()")
        view = memoryview(payload).cast("B")
        size = len(view)
        if not size:
            return []
        self.timestamp = timestamp = (source_ts + through) & _MASK32
        pack = _HEADER.pack
        lead = self._lead
        ssrc = self.ssrc
        seq = self.sequence
        payload_max = self.payload_max
        if size <= payload_max:
            out = [pack(lead | _MARKER if marker else lead, seq, timestamp, ssrc) + view]
        else:
            out = []
            last = size - 1 - (size - 1) % payload_max
            for start in range(0, last, payload_max):
                out.append(pack(lead, seq & 0xFFFF, timestamp, ssrc)
                           + view[start : start + payload_max])
                seq += 1
            out.append(pack(lead | _MARKER if marker else lead, seq & 0xFFFF, timestamp, ssrc)
                       + view[last:])
        self.sequence = (seq + 1) & 0xFFFF
        self.packets = (self.packets + len(out)) & _MASK32
        self.octets = (self.octets + size) & _MASK32
        return out

    def forward_framed(self, payload: bytes | bytearray | memoryview, source_ts: int,
                       marker: bool) -> bytes:
        """`forward`, RFC 4571 framed, as one `bytes` object."""
        return b"".join(
            len(packet).to_bytes(2, "big") + packet
            for packet in self.forward(payload, source_ts, marker)
        )

    def end_forwarding(self) -> None:
        """Back to whole frames (`packetize`): the next frame's PTS is stamped a frame after the
        last timestamp, as after `restart_timeline`."""
        self._through = None
        self.restart_timeline()

    @property
    def forwarding(self) -> bool:
        return self._through is not None

    def skip(self, packets: int) -> None:
        """Leave `packets` sequence numbers out, so the receiver sees the source's loss."""
        self.sequence = (self.sequence + packets) & 0xFFFF
