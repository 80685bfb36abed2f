"""MPEG-PS muxer in the GB/T 28181 camera layout, and an RTP packetizer for its output.

References: ISO/IEC 13818-1 section 2.5.3 (pack header, system header), 2.5.4 (program stream
map, CRC_32 of Annex A) and 2.4.3.6-7 (PES packet); GB/T 28181-2016/2022 Appendix C.1 (one video
frame per pack; pack header, system header and PSM before each key frame; video stream id 0xE0,
audio 0xC0); RFC 3550 and RFC 2250 with GB/T 28181-2022 section 4.3.6 for the RTP carriage
(PT 96, 90 kHz, one timestamp per frame, marker on the last packet of a frame).

The output is what a camera sends: each call returns the PS bytes of exactly one frame, starting
with a pack header, so a caller can store it, packetize it, or concatenate calls into a stream.
No I/O and no clock: timestamps are passed in (90 kHz). The caller says which frames are key
frames (``rtp.nal.is_keyframe`` tells from the NAL headers when the encoder does not).
"""

from __future__ import annotations

from .packet import build_rtp

__all__ = [
    "VIDEO_STREAM_TYPES",
    "AUDIO_STREAM_TYPES",
    "VIDEO_STREAM_ID",
    "AUDIO_STREAM_ID",
    "PES_PAYLOAD_MAX",
    "PsMuxer",
    "RtpPacketizer",
    "crc32_mpeg2",
]

# PSM stream_type per codec name (GB/T 28181-2022 Appendix C.1, ISO/IEC 13818-1 table 2-34).
VIDEO_STREAM_TYPES: dict[str, int] = {"h264": 0x1B, "h265": 0x24}
AUDIO_STREAM_TYPES: dict[str, int] = {"g711a": 0x90, "g711u": 0x91, "aac": 0x0F}

VIDEO_STREAM_ID = 0xE0
AUDIO_STREAM_ID = 0xC0

# PES_packet_length counts the bytes after itself: 3 bytes of flags and header_data_length, the
# optional fields (PTS/DTS), then the payload. Without PTS/DTS this is the largest payload.
PES_PAYLOAD_MAX = 0xFFFF - 3

_MASK33 = (1 << 33) - 1
_MASK32 = 0xFFFFFFFF

# program_mux_rate and rate_bound in units of 50 bytes/s: 20000 = 1,000,000 bytes/s (8 Mbit/s),
# a ceiling above the bitrate of any camera main stream we expect. Receivers ignore it.
_MUX_RATE = 20_000

# P-STD buffer bounds in the system header: video in 1024-byte units (scale 1), audio in 128-byte
# units (scale 0). Generous, so that no decoder model rejects a large I-frame.
_VIDEO_BUFFER = (1, 1024)
_AUDIO_BUFFER = (0, 64)

_PACK_START = b"\x00\x00\x01\xba"
_SYSTEM_HEADER_START = b"\x00\x00\x01\xbb"
_PSM_START = b"\x00\x00\x01\xbc"

# PTS_DTS prefixes of the 5-byte time stamp fields (ISO/IEC 13818-1 section 2.4.3.7).
_PREFIX_PTS_ONLY = 0b0010
_PREFIX_PTS_WITH_DTS = 0b0011
_PREFIX_DTS = 0b0001


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        register = byte << 24
        for _ in range(8):
            if register & 0x80000000:
                register = ((register << 1) ^ 0x04C11DB7) & _MASK32
            else:
                register = (register << 1) & _MASK32
        table.append(register)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32_mpeg2(data: bytes | memoryview) -> int:
    """CRC-32/MPEG-2: polynomial 0x04C11DB7, initial value all ones, MSB first, no final xor.

    Running it over a whole PSM (CRC_32 field included) gives 0 when the CRC is right.
    """
    register = _MASK32
    for byte in bytes(data):
        register = ((register << 8) & _MASK32) ^ _CRC_TABLE[(register >> 24) ^ byte]
    return register


def _pack_header(scr_base: int) -> bytes:
    """Pack header (MPEG-2, 14 bytes, no stuffing); SCR extension 0."""
    base = scr_base & _MASK33
    scr = (
        (0b01 << 46)
        | ((base >> 30) & 0x7) << 43
        | 1 << 42
        | ((base >> 15) & 0x7FFF) << 27
        | 1 << 26
        | (base & 0x7FFF) << 11
        | 1 << 10
        | 1  # SCR extension (9 bits) is 0, then the marker bit
    )
    mux_rate = (_MUX_RATE << 2) | 0b11
    # 0xF8: five reserved bits, pack_stuffing_length 0.
    return _PACK_START + scr.to_bytes(6, "big") + mux_rate.to_bytes(3, "big") + b"\xf8"


def _time_stamp(prefix: int, value: int) -> bytes:
    """A 5-byte PTS or DTS field: prefix(4) T[32..30] 1 T[29..15] 1 T[14..0] 1."""
    t = value & _MASK33
    field = (
        prefix << 36
        | ((t >> 30) & 0x7) << 33
        | 1 << 32
        | ((t >> 15) & 0x7FFF) << 17
        | 1 << 16
        | (t & 0x7FFF) << 1
        | 1
    )
    return field.to_bytes(5, "big")


def _pes_header(stream_id: int, payload_length: int, pts: int | None, dts: int | None) -> bytes:
    """PES header up to the payload. data_alignment_indicator marks the start of a frame."""
    # byte 6: '10', not scrambled, priority 0, data_alignment_indicator, copyright 0, copy 0.
    # byte 7: PTS_DTS_flags, then no ESCR, ES rate, trick mode, copy info, CRC or extension.
    if pts is None:
        flags, pts_dts_flags, optional = 0x80, 0x00, b""
    elif dts is None:
        flags, pts_dts_flags, optional = 0x84, 0x80, _time_stamp(_PREFIX_PTS_ONLY, pts)
    else:
        flags, pts_dts_flags = 0x84, 0xC0
        optional = _time_stamp(_PREFIX_PTS_WITH_DTS, pts) + _time_stamp(_PREFIX_DTS, dts)
    length = 3 + len(optional) + payload_length
    return (
        bytes((0x00, 0x00, 0x01, stream_id))
        + length.to_bytes(2, "big")
        + bytes((flags, pts_dts_flags, len(optional)))
        + optional
    )


def _pes_packets(
    stream_id: int, frame: bytes | memoryview, pts: int, dts: int | None
) -> list[bytes]:
    """One frame as PES packets of at most 65535 bytes; only the first carries PTS/DTS."""
    view = memoryview(frame).cast("B")
    first_max = PES_PAYLOAD_MAX - (5 if dts is None else 10)
    chunk = view[:first_max]
    parts = [_pes_header(stream_id, len(chunk), pts, dts), bytes(chunk)]
    offset = len(chunk)
    while offset < len(view):
        chunk = view[offset : offset + PES_PAYLOAD_MAX]
        parts += (_pes_header(stream_id, len(chunk), None, None), bytes(chunk))
        offset += len(chunk)
    return parts


class PsMuxer:
    """Writes video (and optionally audio) frames as GB/T 28181 MPEG-PS, one frame per pack.

    Every frame gets a pack header whose SCR is the frame's decode time. Each key frame, and the
    very first pack, is preceded by a system header and a program stream map naming the
    configured streams, so a receiver can start at any key frame. Time stamps are 90 kHz and are
    taken modulo 2**33.

    :param video: ``"h264"`` or ``"h265"``; the stream id is 0xE0.
    :param audio: ``None``, ``"g711a"``, ``"g711u"`` or ``"aac"`` (ADTS); the stream id is 0xC0.
    """

    def __init__(self, video: str = "h264", audio: str | None = None) -> None:
        if video not in VIDEO_STREAM_TYPES:
            raise ValueError("unknown video codec")
        if audio is not None and audio not in AUDIO_STREAM_TYPES:
            raise ValueError("unknown audio codec")
        self.video = video
        self.audio = audio
        self._headers = self._system_header() + self._program_stream_map()
        self._headers_sent = False

    def mux_video(
        self,
        frame: bytes | memoryview,
        pts: int,
        dts: int | None = None,
        keyframe: bool = False,
    ) -> bytes:
        """PS bytes of one Annex-B access unit (one pack, split over PES packets as needed).

        :param dts: written only when given and different from ``pts`` (modulo 2**33).
        :param keyframe: put the system header and PSM in front of the PES packets.
        """
        if dts is not None and (dts & _MASK33) == (pts & _MASK33):
            dts = None
        scr = pts if dts is None else dts
        parts = [_pack_header(scr), *self._take_headers(keyframe)]
        parts += _pes_packets(VIDEO_STREAM_ID, frame, pts, dts)
        return b"".join(parts)

    def mux_audio(self, frame: bytes | memoryview, pts: int) -> bytes:
        """PS bytes of one audio frame in its own pack (no system header or PSM after the first)."""
        if self.audio is None:
            raise ValueError("muxer has no audio stream")
        parts = [_pack_header(pts), *self._take_headers(False)]
        parts += _pes_packets(AUDIO_STREAM_ID, frame, pts, None)
        return b"".join(parts)

    def _take_headers(self, keyframe: bool) -> list[bytes]:
        """System header and PSM for a key frame, and for the first pack of all.

        A demuxer that meets a PES before any PSM guesses the codec from the stream id (FFmpeg
        takes 0xC0 for MPEG audio and never revises it), so the map must come first.
        """
        if keyframe or not self._headers_sent:
            self._headers_sent = True
            return [self._headers]
        return []

    def _streams(self) -> list[tuple[int, int, tuple[int, int]]]:
        """(stream_id, stream_type, (buffer scale, buffer size)) for each configured stream."""
        streams = [(VIDEO_STREAM_ID, VIDEO_STREAM_TYPES[self.video], _VIDEO_BUFFER)]
        if self.audio is not None:
            streams.append((AUDIO_STREAM_ID, AUDIO_STREAM_TYPES[self.audio], _AUDIO_BUFFER))
        return streams

    def _system_header(self) -> bytes:
        streams = self._streams()
        audio_bound = 1 if self.audio is not None else 0
        body = bytearray()
        body += ((1 << 23) | (_MUX_RATE << 1) | 1).to_bytes(3, "big")  # marker, rate_bound, marker
        body.append(audio_bound << 2)  # audio_bound(6), fixed_flag 0, CSPS_flag 0
        body.append(0x20 | 1)  # audio/video lock 0, marker, video_bound(5) = 1
        body.append(0x7F)  # packet_rate_restriction_flag 0, reserved
        for stream_id, _, (scale, size) in streams:
            body.append(stream_id)
            body += ((0b11 << 14) | (scale << 13) | size).to_bytes(2, "big")
        return _SYSTEM_HEADER_START + len(body).to_bytes(2, "big") + bytes(body)

    def _program_stream_map(self) -> bytes:
        es_map = bytearray()
        for stream_id, stream_type, _ in self._streams():
            es_map += bytes((stream_type, stream_id, 0x00, 0x00))  # no descriptors
        body = bytearray()
        body.append(0x80 | 0x20)  # current_next_indicator 1, single_extension 0, reserved, v0
        body.append(0xFF)  # reserved(7), marker
        body += (0).to_bytes(2, "big")  # program_stream_info_length: no descriptors
        body += len(es_map).to_bytes(2, "big") + es_map
        map_length = len(body) + 4  # the CRC_32 follows
        psm = _PSM_START + map_length.to_bytes(2, "big") + bytes(body)
        return psm + crc32_mpeg2(psm).to_bytes(4, "big")


class RtpPacketizer:
    """Cuts each frame's PS bytes into RTP packets (GB/T 28181 PS over RTP, no payload header).

    All packets of a frame share its timestamp and the last one has the marker bit set; the
    sequence number continues across frames and wraps at 65536.

    :param payload_max: payload bytes per packet, RTP header not included.
    :param sequence: sequence number of the first packet.
    """

    def __init__(
        self, ssrc: int, payload_type: int = 96, payload_max: int = 1400, sequence: int = 0
    ) -> None:
        if not 0 <= ssrc <= _MASK32:
            raise ValueError("ssrc out of range")
        if not 0 <= payload_type <= 127:
            raise ValueError("payload type out of range")
        # An RFC 4571 frame holds at most 65535 bytes, 12 of them the RTP header.
        if not 1 <= payload_max <= 0xFFFF - 12:
            raise ValueError("payload_max out of range")
        if not 0 <= sequence <= 0xFFFF:
            raise ValueError("sequence out of range")
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.payload_max = payload_max
        self.sequence = sequence

    def packetize(self, ps: bytes | memoryview, timestamp: int) -> list[bytes]:
        """RTP packets for one frame; an empty ``ps`` gives no packets.

        :param timestamp: 90 kHz, normally the frame's PTS; taken modulo 2**32.
        """
        view = memoryview(ps).cast("B")
        count = -(-len(view) // self.payload_max)
        packets = []
        for index in range(count):
            offset = index * self.payload_max
            packets.append(
                build_rtp(
                    self.payload_type,
                    self.sequence,
                    timestamp & _MASK32,
                    self.ssrc,
                    index == count - 1,
                    view[offset : offset + self.payload_max],
                )
            )
            self.sequence = (self.sequence + 1) & 0xFFFF
        return packets
