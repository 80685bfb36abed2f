"""RFC 4571 framing: whole, byte by byte, random chunks, and the BufferedProtocol path."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rtp.errors import RtpError
from rtp.framing import Deframer, frame
from rtp.packet import build_rtp

PACKETS = [
    build_rtp(96, seq, seq * 3600, 0x0BEBDFA1, seq % 3 == 0, bytes([seq]) * seq * 7)
    for seq in range(1, 40)
]
STREAM = b"".join(frame(p) for p in PACKETS)


def _as_bytes(packets: list[memoryview | bytes]) -> list[bytes]:
    return [bytes(p) for p in packets]


def test_frame() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"") == b"\x00\x00"
    assert frame(bytes(0xFFFF))[:2] == b"\xff\xff"


def test_frame_too_long() -> None:
    with pytest.raises(RtpError, match="^RTP packet is too long for RFC 4571 framing$"):
        frame(bytes(0x10000))


def test_whole_stream() -> None:
    deframer = Deframer()
    out = deframer.feed(STREAM)
    assert _as_bytes(out) == PACKETS
    assert all(isinstance(p, memoryview) for p in out)  # cut from the input, no copy
    assert deframer.buffered == 0


def test_byte_by_byte() -> None:
    deframer = Deframer()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += _as_bytes(deframer.feed(STREAM[i : i + 1]))
    assert out == PACKETS
    assert deframer.buffered == 0


def test_trailing_partial_frame_is_kept() -> None:
    deframer = Deframer()
    assert _as_bytes(deframer.feed(STREAM + b"\x00\x05ab")) == PACKETS
    assert deframer.buffered == 4
    assert _as_bytes(deframer.feed(b"cde\x00")) == [b"abcde"]
    assert deframer.buffered == 1


def test_zero_length_frames_are_skipped() -> None:
    deframer = Deframer()
    data = b"\x00\x00" + frame(b"x") + b"\x00\x00\x00\x00" + frame(b"y") + b"\x00\x00"
    assert _as_bytes(deframer.feed(data)) == [b"x", b"y"]
    assert deframer.buffered == 0


def test_largest_frame() -> None:
    big = bytes(range(256)) * 255 + bytes(range(255))
    assert len(big) == 0xFFFF
    deframer = Deframer(max_buffer=0xFFFF + 2)
    out: list[bytes] = []
    for i in range(0, 2 * len(big) + 4, 1000):
        out += _as_bytes(deframer.feed(memoryview((frame(big) * 2)[i : i + 1000])))
    assert out == [big, big]


def test_max_buffer_must_hold_a_frame() -> None:
    with pytest.raises(ValueError):
        Deframer(max_buffer=0xFFFF)


def test_buffered_protocol_api() -> None:
    deframer = Deframer()
    out: list[bytes] = []
    pos = 0
    for size in (1, 5, 3000, 17, 9000, 1, 1, 64000):
        view = deframer.get_buffer(-1)
        chunk = STREAM[pos : pos + min(size, len(view))]
        view[: len(chunk)] = chunk
        view.release()
        out += _as_bytes(deframer.buffer_updated(len(chunk)))
        pos += len(chunk)
    assert pos == len(STREAM)
    assert out == PACKETS


def test_buffered_protocol_while_view_is_held() -> None:
    # asyncio keeps the view alive until buffer_updated returns; compaction must not resize.
    deframer = Deframer(max_buffer=0xFFFF + 2)
    stream = STREAM * 20
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        view = deframer.get_buffer(-1)
        chunk = stream[pos : pos + min(777, len(view))]
        view[: len(chunk)] = chunk
        out += _as_bytes(deframer.buffer_updated(len(chunk)))
        del view
        pos += len(chunk)
    assert out == PACKETS * 20


def test_buffer_updated_rejects_overrun() -> None:
    deframer = Deframer()
    size = len(deframer.get_buffer(10))
    with pytest.raises(ValueError):
        deframer.buffer_updated(size + 1)


def test_feed_memoryview_copies() -> None:
    data = bytearray(STREAM)
    out = Deframer().feed(memoryview(data))
    data[:] = bytes(len(data))
    assert _as_bytes(out) == PACKETS


@given(st.lists(st.integers(0, len(STREAM)), max_size=30), st.booleans())
@example([1], False)
@example(list(range(0, len(STREAM), 3)), True)
def test_chunking_invariance(cuts: list[int], buffered_protocol: bool) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    deframer = Deframer()
    out: list[bytes] = []
    for start, stop in zip(bounds, bounds[1:], strict=False):
        chunk = STREAM[start:stop]
        if buffered_protocol:
            while chunk:
                view = deframer.get_buffer(len(chunk))
                n = min(len(view), len(chunk))
                view[:n] = chunk[:n]
                view.release()
                out += _as_bytes(deframer.buffer_updated(n))
                chunk = chunk[n:]
        else:
            out += _as_bytes(deframer.feed(chunk))
    assert out == PACKETS
    assert deframer.buffered == 0


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_generated_frames_survive_any_split(packets: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in packets)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    bounds = [0, *sorted(cuts), len(stream)]
    deframer = Deframer()
    out: list[bytes] = []
    for start, stop in zip(bounds, bounds[1:], strict=False):
        out += _as_bytes(deframer.feed(stream[start:stop]))
    assert out == [p for p in packets if p]


@given(st.binary(max_size=3000), st.integers(1, 500))
def test_any_bytes_deframe(data: bytes, step: int) -> None:
    deframer = Deframer()
    out: list[bytes] = []
    for i in range(0, len(data), step):
        out += _as_bytes(deframer.feed(data[i : i + step]))
    expected = []
    pos = 0
    while pos + 2 <= len(data) and pos + 2 + int.from_bytes(data[pos : pos + 2]) <= len(data):
        stop = pos + 2 + int.from_bytes(data[pos : pos + 2])
        expected.append(data[pos + 2 : stop])
        pos = stop
    assert out == [p for p in expected if p]
    assert deframer.buffered == len(data) - pos
