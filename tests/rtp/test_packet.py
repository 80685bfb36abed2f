"""RTP fixed header (RFC 3550 5.1): parse, serialize, peek, build, RTCP demultiplexing."""

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rtp.errors import RtpError
from rtp.packet import RtpPacket, build_rtp, is_rtcp, peek_rtp_header
from tests.conftest import load

HIKVISION_SEQ10 = load("corpus/rtp-ps-hikvision-seq10-complete-01.rtp")
HIKVISION_FIRST = load("corpus/rtp-ps-h264-hikvision-first-packet-prefix-01.bin")

PLAIN = bytes.fromhex("8060 0001 00000002 12345678") + b"hello"
# P, X, CC=2; M, PT 96; seq 65535; two CSRC; one-word extension; six 0xff bytes; 4 bytes padding.
FULL = (
    bytes.fromhex("b2e0 ffff deadbeef 0badcafe 00000001 00000002 bede0001 01020304")
    + b"\xff" * 6
    + bytes.fromhex("00000004")
)

# One table drives both directions: (packet, bytes).
CASES = [
    (RtpPacket(96, 1, 2, 0x12345678, payload=b"hello"), PLAIN),
    (
        RtpPacket(
            payload_type=96,
            sequence=0xFFFF,
            timestamp=0xDEADBEEF,
            ssrc=0x0BADCAFE,
            marker=True,
            payload=b"\xff" * 6,
            csrc=(1, 2),
            extension=(0xBEDE, b"\x01\x02\x03\x04"),
            padding=4,
        ),
        FULL,
    ),
    (RtpPacket(0, 0, 0, 0), bytes.fromhex("8000 0000 00000000 00000000")),
    (
        RtpPacket(127, 7, 9, 1, extension=(1, b"")),
        bytes.fromhex("907f0007 00000009 00000001 00010000"),
    ),
]


@pytest.mark.parametrize(("packet", "data"), CASES)
def test_table_parse(packet: RtpPacket, data: bytes) -> None:
    assert RtpPacket.parse(data) == packet


@pytest.mark.parametrize(("packet", "data"), CASES)
def test_table_serialize(packet: RtpPacket, data: bytes) -> None:
    assert bytes(packet) == data
    assert packet.serialize() == data


def test_hikvision_packet() -> None:
    packet = RtpPacket.parse(HIKVISION_SEQ10)
    assert (packet.payload_type, packet.sequence, packet.timestamp) == (96, 10, 0)
    assert packet.ssrc == 0x0BEBDFA1
    assert not packet.marker
    assert bytes(packet.payload) == HIKVISION_SEQ10[12:]
    assert bytes(packet) == HIKVISION_SEQ10
    assert repr(packet).startswith("RtpPacket(payload_type=96, sequence=10, timestamp=0,")


def test_hikvision_first_packet_payload_is_ps() -> None:
    packet = RtpPacket.parse(HIKVISION_FIRST)
    assert packet.sequence == 0
    assert bytes(packet.payload[:4]) == b"\x00\x00\x01\xba"


def test_payload_is_a_view_of_the_input() -> None:
    data = bytearray(PLAIN)
    packet = RtpPacket.parse(memoryview(data))
    assert isinstance(packet.payload, memoryview)
    data[-1] = ord("!")
    assert bytes(packet.payload) == b"hell!"


def _truncation_message(prefix: bytes) -> str:
    size = len(prefix)
    if size < 12:
        return "RTP packet is too short"
    if size < 20:
        return "RTP packet has truncated CSRC"
    if size < 28:
        return "RTP packet has truncated extension"
    if size > 28 and prefix[-1] == 0:
        return "RTP padding count is zero"
    return "RTP padding is longer than the packet"


@pytest.mark.parametrize("size", range(len(FULL)))
def test_truncated(size: int) -> None:
    prefix = FULL[:size]
    with pytest.raises(RtpError) as info:
        RtpPacket.parse(prefix)
    assert str(info.value) == _truncation_message(prefix)
    assert peek_rtp_header(prefix) is None


@pytest.mark.parametrize("size", range(28))
def test_peek_truncated_without_padding(size: int) -> None:
    unpadded = bytes([FULL[0] & ~0x20]) + FULL[1:-4]
    assert RtpPacket.parse(unpadded).payload == b"\xff" * 6
    with pytest.raises(RtpError, match=f"^{_truncation_message(unpadded[:size])}$"):
        RtpPacket.parse(unpadded[:size])
    assert peek_rtp_header(unpadded[:size]) is None
    assert peek_rtp_header(unpadded[:28]) == (96, 0xFFFF, 0xDEADBEEF, 0x0BADCAFE, True, 28)


def test_bad_version() -> None:
    for first in (0x00, 0x40, 0xC0):
        with pytest.raises(RtpError, match="^RTP version is not 2$"):
            RtpPacket.parse(bytes([first]) + PLAIN[1:])
        assert peek_rtp_header(bytes([first]) + PLAIN[1:]) is None


def test_padding_may_fill_the_payload() -> None:
    packet = RtpPacket.parse(bytes.fromhex("a060000100000002000000030000000000000008"))
    assert packet.padding == 8
    assert bytes(packet.payload) == b""


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (RtpPacket(128, 0, 0, 0), "payload type"),
        (RtpPacket(96, 0x10000, 0, 0), "out of range"),
        (RtpPacket(96, 0, 0, 0, csrc=tuple(range(16))), "15 CSRC"),
        (RtpPacket(96, 0, 0, 0, padding=256), "padding"),
        (RtpPacket(96, 0, 0, 0, extension=(1, b"abc")), "32-bit words"),
    ],
)
def test_serialize_rejects_bad_fields(packet: RtpPacket, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        packet.serialize()
    assert not isinstance(info.value, RtpError)


def test_peek_matches_parse() -> None:
    for _, data in CASES[:1] + CASES[2:]:
        packet = RtpPacket.parse(data)
        pt, seq, ts, ssrc, marker, offset = peek_rtp_header(data) or (0, 0, 0, 0, False, 0)
        assert (pt, seq, ts, ssrc, marker) == (
            packet.payload_type,
            packet.sequence,
            packet.timestamp,
            packet.ssrc,
            packet.marker,
        )
        assert data[offset:] == bytes(packet.payload)


def test_peek_leaves_padding_to_parse() -> None:
    assert peek_rtp_header(FULL) is None
    assert RtpPacket.parse(FULL).padding == 4


def test_build_rtp() -> None:
    assert build_rtp(96, 1, 2, 0x12345678, False, b"hello") == PLAIN
    wrapped = build_rtp(96, 0x10001, 0x100000002, 0x12345678, True, memoryview(b"hello"))
    assert wrapped == bytes([0x80, 0xE0]) + PLAIN[2:]
    with pytest.raises(ValueError):
        build_rtp(128, 0, 0, 0, False, b"")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("80c80006"), True),  # SR
        (bytes.fromhex("81c90007"), True),  # RR
        (bytes.fromhex("81cb0001"), True),  # BYE
        (bytes.fromhex("81cd0002"), True),  # RTPFB (RFC 4585)
        (bytes.fromhex("80cc0002"), True),  # APP
        (PLAIN, False),
        (bytes.fromhex("80e0"), False),  # too short
        (bytes.fromhex("00c80006"), False),  # not version 2
        (bytes.fromhex("80e00006") + bytes(8), False),  # RTP, marker set, PT 96
    ],
)
def test_is_rtcp(data: bytes, expected: bool) -> None:
    assert is_rtcp(data) is expected


@given(st.binary(max_size=200))
@example(FULL[:28])
@example(bytes.fromhex("a0000000000000000000000000"))
def test_any_bytes_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        assert peek_rtp_header(data) is None
        return
    assert bytes(packet.payload) in data
    peeked = peek_rtp_header(data)
    if peeked is not None:
        assert peeked[5] == len(data) - len(packet.payload)


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload=st.binary(max_size=64),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=16).map(lambda b: b[: len(b) // 4 * 4])),
    padding=st.integers(0, 255),
)


@given(packets)
def test_generated_packets_round_trip(packet: RtpPacket) -> None:
    data = bytes(packet)
    parsed = RtpPacket.parse(data)
    assert parsed == packet
    assert bytes(parsed) == data


@given(
    st.integers(0, 127),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.booleans(),
    st.binary(max_size=64),
)
def test_build_rtp_matches_packet(
    pt: int, seq: int, ts: int, ssrc: int, marker: bool, payload: bytes
) -> None:
    data = build_rtp(pt, seq, ts, ssrc, marker, payload)
    assert data == bytes(RtpPacket(pt, seq, ts, ssrc, marker, payload))
    assert peek_rtp_header(data) == (pt, seq, ts, ssrc, marker, 12)
    assert struct.unpack_from("!H", data, 2)[0] == seq
