"""rtp.packetize: packets parse back, payloads rebuild the frame, sequence and timestamp
continuity across wraps, RFC 4571 output, and the real test media through a fresh demuxer."""

from __future__ import annotations

import dataclasses
import random
from functools import cache

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rtp.framing import Deframer, frame
from rtp.packet import RtpPacket
from rtp.packetize import PAYLOAD_MAX_LIMIT, RtpPacketizer
from rtp.ps import AccessUnit, PsDemuxer
from rtp.psframe import PsFrameDemuxer
from rtp.psmux import RtpPacketizer as MuxPacketizer
from tests.conftest import load

SSRC = 0x06422C41  # y=0105000001
MASK32 = 0xFFFFFFFF
MASK33 = (1 << 33) - 1


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def parsed(packets: list[bytes]) -> list[RtpPacket]:
    return [RtpPacket.parse(p) for p in packets]


def deframe(stream: bytes, cuts: list[int]) -> list[bytes]:
    deframer = Deframer()
    out: list[bytes] = []
    edges = [0, *sorted(cuts), len(stream)]
    for a, b in zip(edges, edges[1:], strict=False):
        out += [bytes(p) for p in deframer.feed(stream[a:b])]
    assert deframer.buffered == 0
    return out


def twins(**kwargs: int) -> tuple[RtpPacketizer, RtpPacketizer]:
    return RtpPacketizer(SSRC, **kwargs), RtpPacketizer(SSRC, **kwargs)


def check_frame(packets: list[RtpPacket], ps: bytes, payload_max: int, seq: int, ts: int) -> None:
    assert b"".join(bytes(p.payload) for p in packets) == ps
    assert all(len(p.payload) == payload_max for p in packets[:-1])
    assert 0 < len(packets[-1].payload) <= payload_max
    assert [p.marker for p in packets] == [False] * (len(packets) - 1) + [True]
    assert [p.sequence for p in packets] == [(seq + i) & 0xFFFF for i in range(len(packets))]
    assert {(p.timestamp, p.ssrc, p.payload_type) for p in packets} == {(ts, SSRC, 96)}
    assert all(p.csrc == () and p.extension is None and p.padding == 0 for p in packets)


# -- one frame --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, count", [(1, 1), (1399, 1), (1400, 1), (1401, 2), (2800, 2), (2801, 3), (51200, 37)]
)
def test_frame_is_cut_at_payload_max(size: int, count: int) -> None:
    ps = noise(size)
    packer, framer = twins(first_seq=100, first_ts=5000)
    packets = packer.packetize(ps, 90_000)
    assert len(packets) == count
    assert all(len(p) <= 12 + 1400 for p in packets)
    check_frame(parsed(packets), ps, 1400, 100, 5000)
    assert framer.packetize_framed(ps, 90_000) == b"".join(frame(p) for p in packets)
    assert packer.sequence == framer.sequence == (100 + count) & 0xFFFF
    assert (packer.packets, packer.octets) == (framer.packets, framer.octets) == (count, size)


def test_header_bytes() -> None:
    packer = RtpPacketizer(SSRC, payload_type=96, payload_max=4, first_seq=0xABCD, first_ts=7)
    assert packer.packetize(b"\x00\x00\x01\xba\xff", None) == [
        bytes.fromhex("8060abcd00000007 06422c41 000001ba"),
        bytes.fromhex("80e0abce00000007 06422c41 ff"),
    ]


def test_empty_frame_sends_nothing_and_changes_nothing() -> None:
    packer = RtpPacketizer(SSRC, first_seq=9, first_ts=10)
    assert packer.packetize(b"", 1234) == []
    assert packer.packetize_framed(memoryview(b""), 1234) == b""
    assert (packer.sequence, packer.timestamp, packer.packets, packer.octets) == (9, 10, 0, 0)
    # the timeline is anchored by the first frame that is sent
    assert RtpPacket.parse(packer.packetize(b"x", 99_999)[0]).timestamp == 10


def test_input_may_be_bytearray_or_any_memoryview() -> None:
    ps = noise(5000, 1)
    expected = RtpPacketizer(SSRC, first_seq=0, first_ts=0).packetize(ps, 0)
    padded = bytearray(b"??" + ps + b"??")
    for given_ps in (bytearray(ps), memoryview(padded)[2:-2], memoryview(ps).cast("I")):
        assert RtpPacketizer(SSRC, first_seq=0, first_ts=0).packetize(given_ps, 0) == expected


def test_same_packets_as_the_muxers_packetizer() -> None:
    """With the timeline anchored at the PTS itself the two packetizers agree byte for byte."""
    ps = noise(30_000, 2)
    pts = (1 << 33) - 1800
    ours = RtpPacketizer(SSRC, payload_max=1000, first_seq=65530, first_ts=pts & MASK32)
    theirs = MuxPacketizer(SSRC, payload_max=1000, sequence=65530)
    for step in range(3):
        frame_pts = (pts + 3600 * step) & MASK33
        assert ours.packetize(ps, frame_pts) == theirs.packetize(ps, frame_pts)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ssrc": -1}, "ssrc must be 0-4294967295"),
        ({"ssrc": 1 << 32}, "ssrc must be 0-4294967295"),
        ({"payload_type": 128}, "RTP payload type must be 0-127"),
        ({"payload_max": 0}, "payload_max must be 1-65523"),
        ({"payload_max": 65524}, "payload_max must be 1-65523"),
        ({"first_seq": 65536}, "first_seq must be 0-65535"),
        ({"first_ts": -1}, "first_ts must be 0-4294967295"),
    ],
)
def test_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    arguments = {"ssrc": SSRC, "first_seq": 0, "first_ts": 0, **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        RtpPacketizer(**arguments)


def test_largest_payload_fits_rfc4571() -> None:
    packer = RtpPacketizer(SSRC, payload_max=PAYLOAD_MAX_LIMIT, first_seq=0, first_ts=0)
    ps = noise(2 * PAYLOAD_MAX_LIMIT + 1)
    stream = packer.packetize_framed(ps, 0)
    packets = parsed(deframe(stream, []))
    assert [len(p.payload) for p in packets] == [PAYLOAD_MAX_LIMIT, PAYLOAD_MAX_LIMIT, 1]
    assert stream[:2] == b"\xff\xff"


# -- across frames ------------------------------------------------------------------------------


def test_sequence_continues_across_frames_and_wraps() -> None:
    packer, framer = twins(payload_max=100, first_seq=65533, first_ts=0)
    frames = [noise(250, 3), noise(100, 4), noise(1, 5), noise(301, 6)]  # 3, 1, 1, 4 packets
    seqs: list[int] = []
    framed_seqs: list[int] = []
    for n, ps in enumerate(frames):
        seqs += [p.sequence for p in parsed(packer.packetize(ps, 3600 * n))]
        framed_seqs += [p.sequence for p in parsed(deframe(framer.packetize_framed(ps, n), []))]
    assert seqs == framed_seqs == [65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    assert packer.sequence == framer.sequence == 6


def test_timestamps_follow_pts_across_the_33_bit_wrap() -> None:
    packer = RtpPacketizer(SSRC, first_seq=0, first_ts=(1 << 32) - 5400)
    pts = [(1 << 33) - 3600, (1 << 33) - 1800, 1800, 5400, 1800]
    stamps = [RtpPacket.parse(packer.packetize(b"f", p)[0]).timestamp for p in pts]
    # +1800, +3600 across the 33-bit PTS wrap (and the 32-bit RTP one), +3600, then 3600 back
    assert stamps == [(1 << 32) - 5400, (1 << 32) - 3600, 0, 3600, 0]
    assert packer.timestamp == 0


def test_frame_without_pts_keeps_the_last_timestamp() -> None:
    packer = RtpPacketizer(SSRC, first_seq=0, first_ts=1000)
    sent = [(None, 1000), (500, 1000), (None, 1000), (4100, 4600), (None, 4600), (7700, 8200)]
    for pts, ts in sent:
        assert RtpPacket.parse(packer.packetize(b"f", pts)[0]).timestamp == ts


def test_restart_timeline() -> None:
    packer = RtpPacketizer(SSRC, first_seq=0, first_ts=MASK32 - 100)
    packer.packetize(b"f", 90_000)
    packer.restart_timeline(3600)
    assert RtpPacket.parse(packer.packetize(b"f", None)[0]).timestamp == MASK32 - 100
    stamps = [RtpPacket.parse(packer.packetize(b"f", p)[0]).timestamp for p in (17, 3617)]
    assert stamps == [3499, 7099]
    with pytest.raises(ValueError, match="^step must be 0-4294967295$"):
        packer.restart_timeline(-1)


def test_counters_wrap_at_32_bits() -> None:
    packer = RtpPacketizer(SSRC, payload_max=10, first_seq=0, first_ts=0)
    packer.packets, packer.octets = MASK32, MASK32 - 5
    packer.packetize(noise(25), 0)
    assert (packer.packets, packer.octets) == (2, 19)


# -- properties ---------------------------------------------------------------------------------


# Sizes near a multiple of payload_max are where an off-by-one would show.
EDGE = st.tuples(st.integers(0, 300_000), st.sampled_from([None, -1, 0, 1]))


@given(
    payload_max=st.integers(16, 65000),
    edge=EDGE,
    first_seq=st.integers(0, 0xFFFF),
    first_ts=st.integers(0, MASK32),
    pts=st.none() | st.integers(0, MASK33),
    framed=st.booleans(),
)
@example(
    payload_max=16, edge=(300_000, None), first_seq=0xFFFF, first_ts=MASK32, pts=0, framed=True
)
@example(payload_max=65000, edge=(65000, None), first_seq=0, first_ts=0, pts=None, framed=False)
@example(payload_max=65000, edge=(65001, None), first_seq=0, first_ts=0, pts=None, framed=True)
def test_any_payload_max_and_frame_size(
    payload_max: int,
    edge: tuple[int, int | None],
    first_seq: int,
    first_ts: int,
    pts: int | None,
    framed: bool,
) -> None:
    size, near = edge
    if near is not None:  # the multiple of payload_max below size, moved by near
        size = max(0, min(300_000, size - size % payload_max + near))
    ps = noise(size, size)
    packer = RtpPacketizer(SSRC, payload_max=payload_max, first_seq=first_seq, first_ts=first_ts)
    if framed:
        packets = deframe(packer.packetize_framed(ps, pts), [])
    else:
        packets = packer.packetize(ps, pts)
    count = -(-size // payload_max)
    assert len(packets) == count
    assert packer.sequence == (first_seq + count) & 0xFFFF
    if size:
        check_frame(parsed(packets), ps, payload_max, first_seq, first_ts)


@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    payload_max=st.integers(1, 1500),
    cuts=st.lists(st.integers(0, 20_000), max_size=30),
)
def test_framed_output_deframes_at_any_cuts(
    sizes: list[int], payload_max: int, cuts: list[int]
) -> None:
    packer, framer = twins(payload_max=payload_max, first_seq=65000, first_ts=1)
    expected: list[bytes] = []
    stream = b""
    for n, size in enumerate(sizes):
        ps = noise(size, n)
        expected += packer.packetize(ps, 3600 * n)
        stream += framer.packetize_framed(ps, 3600 * n)
    assert deframe(stream, [c for c in cuts if c <= len(stream)]) == expected


def test_framed_output_deframes_split_at_every_position() -> None:
    packer, framer = twins(payload_max=300, first_seq=65535, first_ts=0)
    frames = [noise(700, 7), noise(300, 8), noise(1, 9)]
    expected = [p for n, ps in enumerate(frames) for p in packer.packetize(ps, n)]
    stream = b"".join(framer.packetize_framed(ps, n) for n, ps in enumerate(frames))
    assert len(expected) == 5
    for cut in range(len(stream) + 1):
        assert deframe(stream, [cut]) == expected


# -- the real test media --------------------------------------------------------------------


@cache
def units(name: str) -> tuple[AccessUnit, ...]:
    demuxer = PsDemuxer()
    return tuple(demuxer.feed(load(f"media/{name}")) + demuxer.flush())


def restream(name: str, framed: bool, payload_max: int) -> list[RtpPacket]:
    """Packetise every unit's PS bytes with its PTS, as the node re-streams a camera."""
    packer = RtpPacketizer(SSRC, payload_max=payload_max, first_seq=65000, first_ts=MASK32 - 7200)
    if framed:
        stream = b"".join(packer.packetize_framed(u.ps_bytes, u.pts) for u in units(name))
        return parsed(deframe(stream, list(range(0, len(stream), 4093))))
    return parsed([p for u in units(name) for p in packer.packetize(u.ps_bytes, u.pts)])


def frames_by_marker(packets: list[RtpPacket]) -> list[bytes]:
    """A receiver's view: the payloads up to each marker make one frame."""
    frames: list[bytes] = []
    parts: list[bytes] = []
    for packet in packets:
        parts.append(bytes(packet.payload))
        if packet.marker:
            frames.append(b"".join(parts))
            parts = []
    assert not parts
    return frames


def fields(unit: AccessUnit) -> tuple[object, ...]:
    return dataclasses.astuple(unit)


@pytest.mark.parametrize("name", ["gb_h264_alaw_zlm.ps", "gb_h265_zlm.ps"])
@pytest.mark.parametrize("framed, payload_max", [(False, 1400), (True, 1400), (True, 8000)])
def test_media_comes_out_of_a_fresh_demuxer_the_same(
    name: str, framed: bool, payload_max: int
) -> None:
    sent = units(name)
    assert len(sent) >= 250 and all(u.pts is not None for u in sent)
    packets = restream(name, framed, payload_max)
    assert all(len(p.payload) <= payload_max for p in packets)
    assert [p.sequence for p in packets] == [(65000 + i) & 0xFFFF for i in range(len(packets))]
    # one timestamp per frame, following the PTS from first_ts across the 32-bit wrap
    frames = frames_by_marker(packets)
    assert frames == [u.ps_bytes for u in sent]
    stamps = [p.timestamp for p in packets if p.marker]
    pts0 = sent[0].pts
    assert pts0 is not None
    assert stamps == [(MASK32 - 7200 + u.pts - pts0) & MASK32 for u in sent if u.pts is not None]
    assert stamps[-1] < stamps[0]  # the timeline did wrap

    # the receive path: one frame at a time into PsFrameDemuxer, as MediaIngest does
    receiver = PsFrameDemuxer()
    got = [u for data in frames for u in receiver.feed_frame(data)] + receiver.flush()
    assert [fields(u) for u in got] == [fields(u) for u in sent]
    assert not receiver.fallen_back
    # and payload by payload into the full demuxer
    demuxer = PsDemuxer()
    got = [u for p in packets for u in demuxer.feed(p.payload)] + demuxer.flush()
    assert [fields(u) for u in got] == [fields(u) for u in sent]
    assert sum(u.keyframe for u in got if u.stream_id == 0xE0) == 10


def test_forwarding_continues_the_timeline_and_sequence_of_whole_frames() -> None:
    p = RtpPacketizer(99, payload_max=100, first_seq=65534, first_ts=5000)
    with pytest.raises(ValueError):
        p.forward(b"x", 0, True)
    whole = [RtpPacket.parse(x) for x in p.packetize(b"a" * 150, 90_000)]
    assert [x.sequence for x in whole] == [65534, 65535] and p.timestamp == 5000
    p.begin_forwarding(777_000)  # the camera's timestamp of that frame
    assert p.forwarding
    small = [RtpPacket.parse(x) for x in p.forward(b"b" * 60, 777_000 + 3600, False)]
    big = [RtpPacket.parse(x) for x in p.forward(b"c" * 250, 777_000 + 3600, True)]
    assert [x.sequence for x in small + big] == [0, 1, 2, 3]
    assert {x.timestamp for x in small + big} == {8600}
    assert [x.marker for x in small + big] == [False, False, False, True]
    assert [len(x.payload) for x in big] == [100, 100, 50]
    assert b"".join(bytes(x.payload) for x in big) == b"c" * 250
    unmarked = [RtpPacket.parse(x) for x in p.forward(b"d" * 250, 777_000 + 7200, False)]
    assert not any(x.marker for x in unmarked)
    p.skip(5)
    framed = p.forward_framed(b"e" * 120, (777_000 + 10_800) & 0xFFFFFFFF, True)
    packets = Deframer().feed(framed)
    assert [RtpPacket.parse(bytes(x)).sequence for x in packets] == [12, 13]
    assert p.packets == 2 + 1 + 3 + 3 + 2 and p.octets == 150 + 60 + 250 + 250 + 120
    p.end_forwarding()
    assert not p.forwarding
    after = RtpPacket.parse(p.packetize(b"f", 12345)[0])
    assert after.timestamp == (5000 + 10_800 + 3600) & 0xFFFFFFFF and after.sequence == 14
