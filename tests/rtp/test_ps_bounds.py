"""Bounded memory in the media path: PsDemuxer, PsFrameDemuxer and MediaIngest, on any input.

Streams are built from PS structures (pack headers, system headers, PSMs, padding, private
streams, video and audio PES packets, end codes) mixed with arbitrary bytes, fed in any
chunking, with windows small enough that the bound matters; after every call the bytes held
must stay within the demuxer's ``limit``. On valid streams a window that holds a frame changes
nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rtp.ps import MAX_BUFFERED, AccessUnit, PsDemuxer
from rtp.psframe import PsFrameDemuxer
from sensing_node.transport.rtp import MediaIngest
from tests.conftest import load

PACK = bytes.fromhex("000001BA440004708401013883F8")
FILES = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps",
         "h264_640x360_25fps_10s_ffmpeg.ps"]
WINDOWS = [1, 1000, 20_000, 200_000]


@cache
def media(name: str) -> bytes:
    return load(f"media/{name}")


@cache
def whole(name: str) -> tuple[AccessUnit, ...]:
    demuxer = PsDemuxer()
    return tuple(demuxer.feed(media(name)) + demuxer.flush())


def _pts(value: int) -> bytes:
    return bytes([
        0x21 | (value >> 29) & 0x0E, value >> 22 & 0xFF, (value >> 14) & 0xFE | 1,
        value >> 7 & 0xFF, (value << 1) & 0xFE | 1,
    ])


def _pes(sid: int, payload: bytes, pts: int | None, unbounded: bool) -> bytes:
    optional = _pts(pts) if pts is not None else b""
    header = bytes([0x80, 0x80 if pts is not None else 0, len(optional)]) + optional
    body = header + payload[: 0xFFFF - len(header)]
    length = 0 if unbounded else len(body)
    return b"\x00\x00\x01" + bytes([sid]) + length.to_bytes(2, "big") + body


def _skipped(sid: int, size: int, fill: int) -> bytes:
    return b"\x00\x00\x01" + bytes([sid]) + size.to_bytes(2, "big") + bytes([fill]) * size


def _psm() -> bytes:
    es_map = bytes([0x1B, 0xE0, 0, 0, 0x90, 0xC0, 0, 0])
    body = b"\xe0\xff\x00\x00" + len(es_map).to_bytes(2, "big") + es_map + b"\x00" * 4
    return b"\x00\x00\x01\xbc" + len(body).to_bytes(2, "big") + body


@st.composite
def pieces(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(
        ["pack", "padding", "private", "psm", "system", "video", "audio", "end", "junk"]
    ))
    if kind == "pack":
        return PACK
    if kind in ("padding", "private"):
        size = draw(st.sampled_from([0, 1, 100, 4000, 30_000, 0xFFFF]))
        return _skipped(0xBE if kind == "padding" else 0xBD, size, draw(st.integers(0, 255)))
    if kind == "psm":
        return _psm()
    if kind == "system":
        return _skipped(0xBB, draw(st.integers(6, 40)), 0xFF)
    if kind == "end":
        return b"\x00\x00\x01\xb9"
    if kind == "junk":
        return draw(st.binary(max_size=200))
    pts = draw(st.one_of(st.none(), st.integers(0, 1 << 33 - 1)))
    unbounded = draw(st.booleans())
    if kind == "audio":
        return _pes(0xC0, bytes([draw(st.integers(0, 255))]) * 320, pts, unbounded)
    frames = [u for u in whole("gb_h264_zlm.ps") if u.stream_id == 0xE0]
    data = frames[draw(st.integers(0, len(frames) - 1))].data
    cut = draw(st.integers(0, len(data)))
    return _pes(0xE0, data[:cut] if draw(st.booleans()) else data, pts, unbounded)


def _cuts(draw: st.DataObject, size: int) -> list[int]:
    cuts = draw.draw(st.lists(st.integers(0, size), max_size=30))
    return [0, *sorted(cuts), size]


@given(st.data())
def test_psdemuxer_holds_at_most_its_limit_on_any_stream(draw: st.DataObject) -> None:
    stream = b"".join(draw.draw(st.lists(pieces(), max_size=60)))
    window = draw.draw(st.sampled_from(WINDOWS))
    demuxer = PsDemuxer(window)
    edges = _cuts(draw, len(stream))
    units: list[AccessUnit] = []
    for a, b in zip(edges, edges[1:], strict=False):
        units += demuxer.feed(stream[a:b])
        assert demuxer.buffered <= demuxer.limit
    units += demuxer.flush()
    # Each unit's ps_bytes is the input at its offset; they do not overlap, and only bytes
    # dropped to keep within the window fall between them.
    gaps = 0
    for unit, after in zip(units, units[1:], strict=False):
        gaps += after.offset - (unit.offset + len(unit.ps_bytes))
        assert after.offset >= unit.offset + len(unit.ps_bytes)
    assert gaps <= demuxer.dropped_bytes
    for unit in units:
        assert stream[unit.offset : unit.offset + len(unit.ps_bytes)] == unit.ps_bytes


@given(st.data())
def test_a_window_that_holds_every_frame_changes_nothing(draw: st.DataObject) -> None:
    name = draw.draw(st.sampled_from(FILES))
    data = media(name)
    window = draw.draw(st.sampled_from([300_000, 1 << 20, MAX_BUFFERED]))
    demuxer = PsDemuxer(window)
    edges = _cuts(draw, len(data))
    units: list[AccessUnit] = []
    for a, b in zip(edges, edges[1:], strict=False):
        units += demuxer.feed(data[a:b])
    assert units + demuxer.flush() == list(whole(name))
    assert demuxer.dropped_bytes == 0


@given(st.data())
def test_psframedemuxer_holds_at_most_its_limit_on_any_frames(draw: st.DataObject) -> None:
    # Frames are runs of pieces: some camera-like (a pack and a video PES), some not at all.
    frames = draw.draw(st.lists(
        st.lists(pieces(), min_size=1, max_size=8).map(b"".join), max_size=30
    ))
    window = draw.draw(st.sampled_from(WINDOWS))
    demuxer = PsFrameDemuxer(window)
    for frame in frames:
        demuxer.feed_frame(frame)
        assert demuxer.buffered <= demuxer.limit
    demuxer.flush()


def _packets(stream: bytes, draw: st.DataObject) -> list[tuple[bytes, int, bool]]:
    """(payload, timestamp, marker): the stream cut anywhere (no payload is over 65535
    bytes), frames ended or not."""
    edges = sorted({*_cuts(draw, len(stream)), *range(0, len(stream), 0xFFFF)})
    packets = []
    ts = 0
    for a, b in zip(edges, edges[1:], strict=False):
        marker = draw.draw(st.booleans())
        packets.append((stream[a:b], ts, marker))
        if marker or draw.draw(st.booleans()):
            ts += 3600
    return packets


class _Recording:
    """A demuxer that notes the size of each frame it is fed (the node's may be compiled, and
    a compiled object's methods cannot be replaced)."""

    def __init__(self, demuxer: Any, fed: list[int]) -> None:
        self._demuxer, self._fed = demuxer, fed

    def feed_frame(self, frame: Any) -> Any:
        self._fed.append(len(frame))
        return self._demuxer.feed_frame(frame)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._demuxer, name)


@given(st.data())
def test_media_ingest_holds_at_most_its_limit(draw: st.DataObject) -> None:
    stream = b"".join(draw.draw(st.lists(pieces(), max_size=40)))
    window = draw.draw(st.sampled_from([1, 70_000, 200_000]))
    ingest = MediaIngest(max_buffered=window)
    fed: list[int] = []
    for seq, (payload, ts, marker) in enumerate(_packets(stream, draw)):
        if not isinstance(ingest.demuxer, _Recording):  # a new one after a fallback
            ingest.demuxer = _Recording(ingest.demuxer, fed)
        ingest.on_packet(memoryview(payload), seq, ts, marker)
        assert ingest.buffered <= ingest.limit
    ingest.flush()
    assert all(size <= max(window, 0xFFFF) for size in fed)


def test_a_frame_that_never_ends_is_cut_at_the_window() -> None:
    # 64 KB payloads of one timestamp and no marker: 4096 of them would make a 268 MB frame.
    payload = memoryview(_skipped(0xBE, 65000 - 6, 0xFF))
    ingest = MediaIngest()
    sizes: list[int] = []
    ingest.demuxer = _Recording(ingest.demuxer, sizes)
    for seq in range(600):
        ingest.on_packet(payload, seq, 3600, False)
        assert ingest.buffered <= ingest.limit
    ingest.flush()
    assert sum(sizes) == 600 * 65000
    per_frame = MAX_BUFFERED // 65000  # whole payloads that fit in the window
    assert max(sizes) <= MAX_BUFFERED and len(sizes) == -(-600 // per_frame)
