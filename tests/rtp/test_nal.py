"""rtp.nal: NAL unit iteration, keyframes, codec detection and access-unit boundaries."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.nal import (
    codec_of_nal_headers,
    detect_video_codec,
    is_keyframe,
    iter_nal_units,
    next_access_unit,
)
from rtp.ps import PsDemuxer
from tests.conftest import load


@cache
def frames(name: str) -> list[bytes]:
    demuxer = PsDemuxer()
    units = demuxer.feed(load(f"media/{name}")) + demuxer.flush()
    return [u.data for u in units if u.stream_id >= 0xE0]


def test_iter_nal_units_h264_keyframe() -> None:
    # ZLMediaKit's H.264 keyframe: AUD, SPS, PPS, SEI?, IDR slices
    types = [t for _, t in iter_nal_units("h264", frames("gb_h264_zlm.ps")[0])]
    assert types[:3] == [9, 7, 8] and types[-1] == 5


def test_iter_nal_units_h265_keyframe() -> None:
    types = [t for _, t in iter_nal_units("h265", frames("h265_640x360_25fps_10s_ffmpeg.ps")[0])]
    assert types[:3] == [32, 33, 34] and (19 in types or 20 in types)


def test_iter_nal_units_offsets_point_at_headers() -> None:
    data = b"\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\xce\x00\x00\x01\x65\x88"
    assert list(iter_nal_units("h264", data)) == [(4, 7), (9, 8), (14, 5)]
    assert list(iter_nal_units("h264", memoryview(data))) == [(4, 7), (9, 8), (14, 5)]
    assert list(iter_nal_units("h264", b"\x00\x00\x01")) == []


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("gb_h264_zlm.ps", "h264"),
        ("gb_h265_zlm.ps", "h265"),
        ("h264_640x360_25fps_10s_ffmpeg.ps", "h264"),
        ("h265_640x360_25fps_10s_ffmpeg.ps", "h265"),
    ],
)
def test_detect_and_keyframes(name: str, codec: str) -> None:
    data = frames(name)
    assert detect_video_codec(data[0]) == codec
    assert [k for k, f in enumerate(data) if is_keyframe(codec, f)] == list(range(0, 250, 25))


@pytest.mark.parametrize(
    ("header", "codec"),
    [
        ("67", "h264"),  # SPS, nal_ref_idc 3
        ("68ce", "h264"),  # PPS
        ("65", "h264"),  # IDR
        ("09f0", "h264"),  # AUD
        ("4001", "h265"),  # VPS
        ("4201", "h265"),  # SPS
        ("4401", "h265"),  # PPS
        ("4601", "h265"),  # AUD
        ("2601", "h265"),  # IDR_W_RADL
        ("2801", "h265"),  # CRA
        ("41", None),  # H.264 P slice: not decisive on its own
        ("0201", None),  # H.265 TRAIL_R: not decisive on its own
    ],
)
def test_detect_by_header(header: str, codec: str | None) -> None:
    assert detect_video_codec(b"\x00\x00\x00\x01" + bytes.fromhex(header) + b"\x80\x80") == codec


def test_empty_and_truncated_input_is_undecided() -> None:
    assert detect_video_codec(b"") is None
    assert detect_video_codec(b"\x00\x00\x00\x01") is None


def test_keyframe_of_other_codecs_is_false() -> None:
    assert not is_keyframe("g711a", b"\x00\x00\x01\x65")


@pytest.mark.parametrize(
    "name",
    [
        "gb_h264_zlm.ps",
        "gb_h265_zlm.ps",
        "h264_640x360_25fps_10s_ffmpeg.ps",
        "h265_640x360_25fps_10s_ffmpeg.ps",
    ],
)
def test_next_access_unit_splits_a_joined_stream(name: str) -> None:
    codec = "h265" if "h265" in name else "h264"
    data = frames(name)[:30]
    joined = b"".join(data)
    cuts, pos, seen = [], 0, False
    while True:
        cut, pos, seen = next_access_unit(codec, joined, pos, seen)
        if cut is None:
            break
        cuts.append(cut)
    starts = [sum(map(len, data[:k])) for k in range(1, len(data))]
    assert cuts == starts


def test_next_access_unit_waits_for_the_slice_header() -> None:
    slice_ = b"\x00\x00\x00\x01\x41\x9a\x00"
    assert next_access_unit("h264", slice_ + b"\x00\x00\x00\x01\x41") == (None, 8, True)
    assert next_access_unit("h264", slice_ + b"\x00\x00\x00\x01\x41\x9a")[0] == 7
    # a second slice of the same picture (first_mb_in_slice != 0) does not open a unit
    assert next_access_unit("h264", slice_ + b"\x00\x00\x01\x41\x40")[0] is None


@given(st.binary(max_size=300), st.sampled_from(["h264", "h265"]), st.booleans())
def test_helpers_accept_any_bytes(data: bytes, codec: str, seen: bool) -> None:
    for offset, _ in iter_nal_units(codec, data):
        assert data[offset - 3 : offset] == b"\x00\x00\x01"
    is_keyframe(codec, data)
    assert detect_video_codec(data) in (None, "h264", "h265")
    cut, resume, _ = next_access_unit(codec, data, 0, seen)
    assert 0 <= resume <= len(data) and (cut is None or 0 <= cut < len(data))


def headers_of(data: bytes) -> list[int]:
    return [offset for offset, _ in iter_nal_units("h264", data)]


@pytest.mark.parametrize(
    "name",
    ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "h264_640x360_25fps_10s_ffmpeg.ps",
     "h265_640x360_25fps_10s_ffmpeg.ps"],
)
def test_codec_of_known_headers_is_detect_video_codec(name: str) -> None:
    decided = 0
    for data in frames(name):
        found = codec_of_nal_headers(data, headers_of(data))
        assert found == detect_video_codec(data)
        decided += found is not None
    assert decided >= 10  # the keyframes at least (an AUD decides any frame)


@given(
    st.lists(
        st.tuples(st.sampled_from([b"\x00\x00\x01", b"\x00\x00\x00\x01"]), st.binary(max_size=4)),
        max_size=80,
    ),
    st.integers(0, 80),
)
def test_codec_of_known_headers_matches_on_any_nal_units(parts, max_nals: int) -> None:
    # up to 80 NAL units of any header bytes, so that the max_nals limit is met too
    data = b"".join(start + body for start, body in parts)
    found = codec_of_nal_headers(data, headers_of(data), max_nals)
    assert found == detect_video_codec(data, max_nals)
