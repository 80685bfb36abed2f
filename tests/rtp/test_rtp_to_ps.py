"""The receive chain RTP -> ReorderBuffer -> PsDemuxer against the in-order demux of each file.

Each test file is cut into its frames (the demuxer's ``ps_bytes``), and each frame into RTP
packets by ``RtpPacketizer`` with sequence numbers starting at 65000, so every stream crosses the
16-bit wrap. The reference is the demux of the whole file in one piece. Byte-level cut points of
the demuxer input are covered by ``test_ps.py``; here the RTP side varies: arrival order,
duplicates, losses, and the optional header parts (CSRC, extension, padding).
"""

from __future__ import annotations

import dataclasses
import random
import struct
from dataclasses import dataclass
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.packet import RtpPacket, peek_rtp_header
from rtp.ps import AccessUnit, PsDemuxer
from rtp.psmux import PsMuxer, RtpPacketizer
from rtp.reorder import ReorderBuffer
from tests.conftest import load

FILES = [
    "gb_h264_zlm.ps",
    "gb_h265_zlm.ps",
    "gb_h264_alaw_zlm.ps",
    "h264_640x360_25fps_10s_ffmpeg.ps",
]
FIRST_SEQUENCE = 65000
SSRC = 0x2818_1001
PT = 96


@dataclass(frozen=True)
class Capture:
    """One test file as a sender would put it on the wire, and what the demuxer makes of it."""

    name: str
    data: bytes
    reference: tuple[AccessUnit, ...]
    packets: tuple[bytes, ...]  # RTP packets, in sending order
    offsets: tuple[int, ...]  # stream offset of each packet's first payload byte
    sizes: tuple[int, ...]  # payload size of each packet


@cache
def capture(name: str) -> Capture:
    data = load(f"media/{name}")
    demuxer = PsDemuxer()
    reference = tuple(demuxer.feed(data) + demuxer.flush())
    assert b"".join(u.ps_bytes for u in reference) == data
    packetizer = RtpPacketizer(SSRC, payload_type=PT, payload_max=1400, sequence=FIRST_SEQUENCE)
    packets: list[bytes] = []
    timestamp = 0
    for unit in reference:
        timestamp = unit.pts if unit.pts is not None else timestamp
        packets += packetizer.packetize(unit.ps_bytes, timestamp)
    sizes = tuple(len(p) - 12 for p in packets)
    offsets = tuple(sum(sizes[:k]) for k in range(len(sizes)))
    return Capture(name, data, reference, tuple(packets), offsets, sizes)


def is_video(unit: AccessUnit) -> bool:
    return 0xE0 <= unit.stream_id <= 0xEF


def payload_of(packet: bytes) -> tuple[int, memoryview]:
    """Sequence number and payload the way a receiver gets them: peek, else a full parse."""
    peeked = peek_rtp_header(packet)
    if peeked is not None:
        return peeked[1], memoryview(packet)[peeked[5] :]
    parsed = RtpPacket.parse(packet)
    return parsed.sequence, memoryview(parsed.payload)


def demux_packets(packets: list[bytes]) -> list[AccessUnit]:
    demuxer = PsDemuxer()
    units: list[AccessUnit] = []
    for packet in packets:
        units += demuxer.feed(payload_of(packet)[1])
    return units + demuxer.flush()


@st.composite
def arrival_order(
    draw: st.DrawFn, count: int, window: int, duplicate_rates: tuple[float, ...] = (0.0,)
) -> list[int]:
    """Packet indices in arrival order; a repeated index is a duplicate.

    Each copy of each packet gets a sort key of its index plus a delay in 0..window, so a packet
    arrives at most ``window - 1`` ahead of the lowest one still missing, the most the buffer
    waits for. Packet 0 keeps delay 0 and comes first, since the buffer starts at the first
    arrival.
    """
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    moved = draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    doubled = draw(st.sampled_from(duplicate_rates))

    def delay() -> int:
        return rng.randint(0, window) if rng.random() < moved else 0

    keys = [(0, 0, 0)] + [(k + delay(), k, 0) for k in range(1, count)]
    keys += [(k + delay(), k, 1) for k in range(count) if rng.random() < doubled]
    return [k for _, k, _ in sorted(keys)]


@st.composite
def losses(draw: st.DrawFn, count: int) -> set[int]:
    """Indices of lost packets: single losses and bursts, never packet 0."""
    lost: set[int] = set()
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(1, count - 1))
        length = draw(st.sampled_from([1, 1, 2, 3, 8, 40]))
        lost.update(range(start, min(count, start + length)))
    return lost


def expected_reordered(order: list[int]) -> int:
    """First arrivals below the highest sequence number already seen."""
    seen: set[int] = set()
    highest = -1
    reordered = 0
    for index in order:
        if index in seen:
            continue
        seen.add(index)
        if index < highest:
            reordered += 1
        highest = max(highest, index)
    return reordered


def reorder(
    packets: tuple[bytes, ...], order: list[int], window: int
) -> tuple[list[bytes], ReorderBuffer[bytes], float]:
    """Push packets in ``order`` with a clock that moves 0.1 ms per arrival; max_delay 10 s."""
    buffer: ReorderBuffer[bytes] = ReorderBuffer(window=window, max_delay_s=10.0)
    released: list[bytes] = []
    now = 0.0
    for index in order:
        now += 1e-4
        sequence, _ = payload_of(packets[index])
        released += buffer.push(sequence, packets[index], now)
    return released, buffer, now


# -- baseline ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_in_order_packets_give_the_reference(name: str) -> None:
    cap = capture(name)
    sequences = [payload_of(p)[0] for p in cap.packets]
    assert sequences[0] == FIRST_SEQUENCE and 0 in sequences  # the wrap is crossed
    assert sequences == [(FIRST_SEQUENCE + k) & 0xFFFF for k in range(len(cap.packets))]
    assert sum(RtpPacket.parse(p).marker for p in cap.packets) == len(cap.reference)
    assert b"".join(payload_of(p)[1] for p in cap.packets) == cap.data
    released, buffer, _ = reorder(cap.packets, list(range(len(cap.packets))), 64)
    assert released == list(cap.packets)
    assert (buffer.lost, buffer.reordered, buffer.duplicates, buffer.held) == (0, 0, 0, 0)
    assert demux_packets(released) == list(cap.reference)


# -- 1. reordering within the window and duplicates ----------------------------------------------


@settings(max_examples=40)
@given(st.data())
def test_reordered_and_duplicated_packets_give_the_reference(data: st.DataObject) -> None:
    cap = capture(data.draw(st.sampled_from(FILES), label="file"))
    window = data.draw(st.sampled_from([1, 2, 5, 16, 64]), label="window")
    order = data.draw(arrival_order(len(cap.packets), window, (0.0, 0.01, 0.1, 0.5)), label="order")
    released, buffer, _ = reorder(cap.packets, order, window)
    assert buffer.held == 0
    assert buffer.drain() == []
    assert released == list(cap.packets)
    assert buffer.received == len(order)
    assert buffer.duplicates == len(order) - len(cap.packets)
    assert buffer.reordered == expected_reordered(order)
    assert (buffer.lost, buffer.late, buffer.discarded, buffer.restarts) == (0, 0, 0, 0)
    assert demux_packets(released) == list(cap.reference)


# -- 2. losses with reordering --------------------------------------------------------------------


def resync_point(cap: Capture, lost: set[int]) -> int:
    """Index in the reference of the first keyframe the demuxer must get right after the losses.

    That is the first video keyframe starting at or after the end of the last lost packet;
    len(reference) if there is none. A video PES that lost bytes ends at the first system start
    code after the gap (H.264/H.265 payload cannot hold one), so the next pack header is parsed
    as such. Here every packet starts at a frame's pack header or inside video payload (or in the
    padding packet at the very end of the FFmpeg file), so no other PES length is counted across
    a gap.
    """
    last = max(lost)
    end = cap.offsets[last] + cap.sizes[last]
    for k, unit in enumerate(cap.reference):
        if is_video(unit) and unit.keyframe and unit.offset >= end:
            return k
    return len(cap.reference)


def untouched_prefix(cap: Capture, lost: set[int]) -> int:
    """Number of reference units that must come out unchanged before the first loss.

    A video unit is known complete once the next video unit has started, so the units up to the
    second to last video unit that ends before the first lost byte are safe.
    """
    gap = cap.offsets[min(lost)]
    ends = [
        k for k, u in enumerate(cap.reference) if is_video(u) and u.offset + len(u.ps_bytes) <= gap
    ]
    return ends[-2] + 1 if len(ends) >= 2 else 0


@settings(max_examples=40)
@given(st.data())
def test_lost_packets_are_counted_and_the_demuxer_resynchronises(data: st.DataObject) -> None:
    cap = capture(data.draw(st.sampled_from(FILES), label="file"))
    count = len(cap.packets)
    window = data.draw(st.sampled_from([1, 4, 16, 64]), label="window")
    lost = data.draw(losses(count), label="lost")
    order = [k for k in data.draw(arrival_order(count, window), label="order") if k not in lost]
    released, buffer, now = reorder(cap.packets, order, window)
    released += buffer.flush(now + buffer.max_delay_s)
    assert buffer.held == 0 and buffer.next_deadline() is None
    assert buffer.drain() == []
    kept = [p for k, p in enumerate(cap.packets) if k not in lost]
    assert released == kept
    # Only gaps below the highest packet received are known to the buffer; a loss at the very
    # end of the stream is indistinguishable from packets not sent yet.
    assert buffer.lost == sum(1 for k in lost if k < max(order))
    assert (buffer.duplicates, buffer.late, buffer.discarded, buffer.restarts) == (0, 0, 0, 0)

    units = demux_packets(released)
    removed = sum(cap.sizes[k] for k in lost)
    prefix = untouched_prefix(cap, lost)
    assert units[:prefix] == list(cap.reference[:prefix])
    start = resync_point(cap, lost)
    tail = cap.reference[start:]
    if tail:
        assert units[-len(tail) :] == [
            dataclasses.replace(u, offset=u.offset - removed) for u in tail
        ]


def test_loss_before_a_keyframe_resynchronises_within_a_gop() -> None:
    # The last packet of frame 24 lost: keyframe 25, right after the gap, is intact.
    cap = capture("gb_h264_zlm.ps")
    frame_ends = [k for k, p in enumerate(cap.packets) if RtpPacket.parse(p).marker]
    lost = frame_ends[24]
    assert resync_point(cap, {lost}) == 25
    units = demux_packets([p for k, p in enumerate(cap.packets) if k != lost])
    assert [u.data for u in units][-225:] == [u.data for u in cap.reference[25:]]


def test_loss_just_before_a_keyframe_keeps_that_keyframe() -> None:
    idr = b"\x00\x00\x00\x01\x65\x88" + b"\x11" * 3000
    inter = b"\x00\x00\x00\x01\x41\x9a" + b"\x22" * 3000
    muxer = PsMuxer("h264")
    packetizer = RtpPacketizer(SSRC, sequence=FIRST_SEQUENCE)
    first = packetizer.packetize(muxer.mux_video(idr, 3600, keyframe=True), 3600)
    second = packetizer.packetize(muxer.mux_video(inter, 7200), 7200)
    third = packetizer.packetize(muxer.mux_video(idr, 10800, keyframe=True), 10800)
    units = demux_packets(first + second[:-1] + third)  # the last packet of frame 2 is lost
    assert (units[-1].pts, units[-1].keyframe, units[-1].data) == (10800, True, idr)


# -- 3. CSRC, header extension and padding -------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    csrc: tuple[int, ...]
    extension: tuple[int, bytes] | None
    padding: int  # 0 for none, else the count in the last byte
    filler: bytes  # repeated to fill the padding before the count
    keepalive: bool  # send a padding-only packet (no payload) in front of this one


variants = st.builds(
    Variant,
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.tuples(
        st.integers(0, 0xFFFF),
        st.sampled_from([b"", b"\x00\x00\x01\xba", b"\x00\x00\x01\xe0" * 3, bytes(range(16))]),
    ),
    padding=st.sampled_from([0, 0, 1, 4, 255]) | st.integers(1, 255),
    filler=st.sampled_from([b"\x00", b"\x00\x00\x01\xba", b"\xff"]),
    keepalive=st.booleans(),
)


def build_packet(
    sequence: int, timestamp: int, marker: bool, payload: bytes | memoryview, variant: Variant
) -> bytes:
    """An RTP packet written field by field (RFC 3550 section 5.1 and 5.3.1)."""
    first = 0x80 | len(variant.csrc)
    if variant.padding:
        first |= 0x20
    if variant.extension is not None:
        first |= 0x10
    header = struct.pack(
        "!BBHII", first, PT | (0x80 if marker else 0), sequence & 0xFFFF, timestamp, SSRC
    )
    header += b"".join(struct.pack("!I", source) for source in variant.csrc)
    if variant.extension is not None:
        profile, body = variant.extension
        header += struct.pack("!HH", profile, len(body) // 4) + body
    padding = b""
    if variant.padding:
        size = variant.padding - 1
        padding = (variant.filler * size)[:size] + bytes([variant.padding])
    return header + bytes(payload) + padding


@settings(max_examples=25)
@given(st.data())
def test_csrc_extension_and_padding_feed_the_same_payload(data: st.DataObject) -> None:
    cap = capture(data.draw(st.sampled_from(FILES), label="file"))
    chosen = data.draw(st.lists(variants, min_size=1, max_size=6), label="variants")
    wire: list[tuple[bytes, Variant]] = []
    sequence = FIRST_SEQUENCE
    for k, plain in enumerate(cap.packets):
        parsed = RtpPacket.parse(plain)
        variant = chosen[k % len(chosen)]
        if variant.keepalive:
            keepalive = dataclasses.replace(variant, padding=variant.padding or 1)
            wire.append(
                (build_packet(sequence, parsed.timestamp, False, b"", keepalive), keepalive)
            )
            sequence += 1
        packet = build_packet(sequence, parsed.timestamp, parsed.marker, parsed.payload, variant)
        wire.append((packet, variant))
        sequence += 1

    payloads: list[memoryview] = []
    buffer: ReorderBuffer[memoryview] = ReorderBuffer()
    for packet, variant in wire:
        parsed = RtpPacket.parse(packet)
        assert (parsed.csrc, parsed.extension, parsed.padding) == (
            variant.csrc,
            variant.extension,
            variant.padding,
        )
        peeked = peek_rtp_header(packet)
        if peeked is not None:
            assert not parsed.padding
            assert peeked[:5] == (
                parsed.payload_type,
                parsed.sequence,
                parsed.timestamp,
                parsed.ssrc,
                parsed.marker,
            )
            assert memoryview(packet)[peeked[5] :] == parsed.payload
        sequence, payload = payload_of(packet)
        payloads += buffer.push(sequence, payload, 0.0)
    assert buffer.held == 0 and buffer.lost == 0
    assert len(payloads) == len(wire)
    assert b"".join(payloads) == cap.data

    demuxer = PsDemuxer()
    units: list[AccessUnit] = []
    for payload in payloads:
        units += demuxer.feed(payload)
    assert units + demuxer.flush() == list(cap.reference)
    assert demuxer.resyncs == 0 and demuxer.skipped_bytes == 0
