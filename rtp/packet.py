"""RTP fixed header and packet (RFC 3550 section 5.1); RTP/RTCP demultiplexing (RFC 5761 section 4).

GB/T 28181 media is RTP carrying MPEG-PS (payload type 96 by convention) over UDP or RFC 4571
TCP. Two entry points serve the receive side: `peek_rtp_header` for the hot path, which reads
the fixed header into a tuple without creating objects, and `RtpPacket.parse`, which checks
everything and says what is wrong. `build_rtp` is the send side for the PS muxer.

Payloads are memoryview slices of the input: parsing copies nothing, and the caller must keep
the input unchanged while the payload is in use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import RtpError

__all__ = [
    "RTP_HEADER_SIZE",
    "RtpPacket",
    "build_rtp",
    "is_rtcp",
    "peek_rtp_header",
]

RTP_HEADER_SIZE = 12

_HEADER = struct.Struct("!BBHII")
_EXTENSION = struct.Struct("!HH")
_CSRC = struct.Struct("!I")

_VERSION_BITS = 0x80  # version 2 in the top two bits of the first byte
_PADDING_BIT = 0x20
_EXTENSION_BIT = 0x10
_MARKER_BIT = 0x80


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. `extension` is `(profile, data)`; `padding` counts the padding bytes.

    `serialize` writes padding as zeros ending with the count, so a packet whose padding is laid
    out that way (the usual case) round-trips byte for byte.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload: bytes | memoryview = b""
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes | memoryview) -> RtpPacket:
        """Parse one RTP packet, or raise `RtpError` with a fixed message."""
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpError("RTP packet is too short")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise RtpError("RTP version is not 2")
        pos = RTP_HEADER_SIZE
        csrc_count = first & 0x0F
        csrc: tuple[int, ...] = ()
        if csrc_count:
            end = pos + 4 * csrc_count
            if end > size:
                raise RtpError("RTP packet has truncated CSRC")
            csrc = struct.unpack_from(f"!{csrc_count}I", data, pos)
            pos = end
        extension = None
        if first & _EXTENSION_BIT:
            if pos + 4 > size:
                raise RtpError("RTP packet has truncated extension")
            profile, words = _EXTENSION.unpack_from(data, pos)
            end = pos + 4 + 4 * words
            if end > size:
                raise RtpError("RTP packet has truncated extension")
            extension = (profile, bytes(data[pos + 4 : end]))
            pos = end
        padding = 0
        if first & _PADDING_BIT:
            if pos == size:
                raise RtpError("RTP padding is longer than the packet")
            padding = data[size - 1]
            if padding == 0:
                raise RtpError("RTP padding count is zero")
            if padding > size - pos:
                raise RtpError("RTP padding is longer than the packet")
        view = data if isinstance(data, memoryview) else memoryview(data)
        return cls(
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=bool(second & _MARKER_BIT),
            payload=view[pos : size - padding],
            csrc=csrc,
            extension=extension,
            padding=padding,
        )

    def serialize(self) -> bytes:
        """Encode the packet; a field out of range raises `ValueError` (misuse, not `RtpError`)."""
        if not 0 <= self.payload_type <= 0x7F:
            raise ValueError("RTP payload type must be 0-127")
        if len(self.csrc) > 15:
            raise ValueError("RTP packet has more than 15 CSRC")
        if not 0 <= self.padding <= 0xFF:
            raise ValueError("RTP padding must be 0-255")
        first = _VERSION_BITS | len(self.csrc)
        parts: list[bytes | memoryview] = []
        if self.padding:
            first |= _PADDING_BIT
        if self.extension is not None:
            first |= _EXTENSION_BIT
        try:
            parts.append(
                _HEADER.pack(
                    first,
                    self.payload_type | (_MARKER_BIT if self.marker else 0),
                    self.sequence,
                    self.timestamp,
                    self.ssrc,
                )
            )
            parts.extend(_CSRC.pack(source) for source in self.csrc)
        except struct.error as exc:
            raise ValueError(f"RTP header field out of range: {exc}") from None
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4 or len(data) > 4 * 0xFFFF or not 0 <= profile <= 0xFFFF:
                raise ValueError("RTP extension must be whole 32-bit words with a 16-bit profile")
            parts.append(_EXTENSION.pack(profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)

    def __bytes__(self) -> bytes:
        return self.serialize()


def build_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    marker: bool,
    payload: bytes | memoryview,
) -> bytes:
    """Encode a plain RTP packet (no CSRC, extension or padding) for the send hot path.

    `sequence` and `timestamp` are reduced modulo 2**16 and 2**32, so a sender may pass
    ever-growing counters.
    """
    if payload_type > 0x7F or payload_type < 0:
        raise ValueError("RTP payload type must be 0-127")
    header = _HEADER.pack(
        _VERSION_BITS,
        (payload_type | _MARKER_BIT) if marker else payload_type,
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    return header + payload


def peek_rtp_header(data: bytes | memoryview) -> tuple[int, int, int, int, bool, int] | None:
    """Read `(payload_type, sequence, timestamp, ssrc, marker, payload_offset)` without objects.

    The payload runs from `payload_offset` to the end of `data`. Returns None when the packet
    is not plainly valid RTP or carries padding: the caller then uses `RtpPacket.parse`, which
    either handles it or raises `RtpError` with the reason. RTCP is not rejected here; check
    `is_rtcp` first on a port that carries both.
    """
    size = len(data)
    if size < RTP_HEADER_SIZE:
        return None
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first & 0xE0 != _VERSION_BITS:  # version 2 and no padding
        return None
    pos = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if first & _EXTENSION_BIT:
        if pos + 4 > size:
            return None
        pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    if pos > size:
        return None
    return second & 0x7F, sequence, timestamp, ssrc, second > 0x7F, pos


def is_rtcp(data: bytes | memoryview) -> bool:
    """Whether a version 2 packet is RTCP: second byte 192-223 (RFC 5761 section 4).

    That range covers SR, RR, SDES, BYE and APP (200-204) as well as the feedback and XR
    packets (205-207) and the old FIR/NACK (192, 193). RTP must not use the matching payload
    types 64-95 with the marker bit set.
    """
    return len(data) >= 4 and data[0] >> 6 == 2 and 192 <= data[1] <= 223
