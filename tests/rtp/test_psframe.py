"""rtp.psframe: the per-frame demuxer gives exactly PsDemuxer's units, and falls back safely."""

from __future__ import annotations

import random
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rtp.psframe
from rtp.ps import MAX_UNIT_PES, AccessUnit, PsDemuxer
from rtp.psframe import PsFrameDemuxer
from rtp.psmux import PsMuxer, RtpPacketizer
from sensing_node.sim.media import load_clip
from sensing_node.transport import native
from tests.conftest import load

# Every test runs on the pure class and, where make compiled it, on the compiled one (what the
# node uses then): the module's `PsFrameDemuxer` is set to each in turn.
BUILDS = [pytest.param(rtp.psframe.PsFrameDemuxer, id="pure")]
if native.COMPILED:
    BUILDS.append(pytest.param(native.PsFrameDemuxer, id="compiled"))


@pytest.fixture(autouse=True, scope="module", params=BUILDS)
def _build(request: pytest.FixtureRequest) -> object:
    global PsFrameDemuxer
    PsFrameDemuxer = request.param
    yield request.param
    PsFrameDemuxer = rtp.psframe.PsFrameDemuxer

GB_FILES = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps"]
FFMPEG_FILES = ["h264_640x360_25fps_10s_ffmpeg.ps", "h265_640x360_25fps_10s_ffmpeg.ps"]
COUNTERS = (
    "packs", "pes_packets", "psm_updates", "resyncs", "truncated_pes", "skipped_bytes",
    "dropped_bytes",
)
PACK = b"\x00\x00\x01\xba"


# --- building and comparing streams -------------------------------------------------------


def reference(stream: bytes) -> tuple[list[AccessUnit], PsDemuxer]:
    """PsDemuxer fed the whole stream at once, then flushed."""
    demuxer = PsDemuxer()
    return demuxer.feed(stream) + demuxer.flush(), demuxer


def reference_per_frame(frames: list[bytes]) -> list[AccessUnit]:
    """PsDemuxer fed one frame per call (codec labels are taken when a unit is returned)."""
    demuxer = PsDemuxer()
    units: list[AccessUnit] = []
    for frame in frames:
        units += demuxer.feed(frame)
    return units + demuxer.flush()


def per_frame(frames: list[bytes]) -> tuple[list[AccessUnit], PsFrameDemuxer]:
    demuxer = PsFrameDemuxer()
    units: list[AccessUnit] = []
    for frame in frames:
        units += demuxer.feed_frame(frame)
    return units + demuxer.flush(), demuxer


def camera_frames(stream: bytes) -> list[bytes]:
    """Cut a camera-style stream where a unit's segment starts with a pack header.

    A camera sends each pack (video frame, or audio frame in its own pack) as one RTP frame.
    """
    units, _ = reference(stream)
    cuts = [u.offset for u in units if u.ps_bytes.startswith(PACK)]
    edges = sorted({0, *cuts, len(stream)})
    return [stream[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def chunk_frames(stream: bytes, seed: int) -> list[bytes]:
    """1400-byte packets joined in groups of 1 to 30: "frames" not aligned with packs."""
    rng = random.Random(seed)
    packets = [stream[i : i + 1400] for i in range(0, len(stream), 1400)]
    frames = []
    while packets:
        count = rng.randint(1, 30)
        frames.append(b"".join(packets[:count]))
        del packets[:count]
    return frames


def assert_same(frames: list[bytes], *, fast: bool) -> PsFrameDemuxer:
    stream = b"".join(frames)
    expected, ref = reference(stream)
    units, demuxer = per_frame(frames)
    assert len(units) == len(expected)
    for got, want in zip(units, expected, strict=True):
        assert got == want  # every field: ids, codec, PTS, DTS, keyframe, data, ps_bytes, offset
    assert units == reference_per_frame(frames)
    for name in COUNTERS:
        assert getattr(demuxer, name) == getattr(ref, name), name
    assert (demuxer.detected, demuxer.refusal) == (ref.detected, ref.refusal)
    assert demuxer.stream_types == ref.stream_types
    if fast:
        assert (demuxer.fast_frames, demuxer.slow_frames) == (len(frames), 0)
    return demuxer


def mux_clip(
    video: str, frames: list[tuple[bytes, int, bool]], audio: str | None = None
) -> list[bytes]:
    """PsMuxer output per frame, each frame sent through RtpPacketizer and joined again."""
    muxer = PsMuxer(video, audio)
    packetizer = RtpPacketizer(0x0BADCAFE, payload_max=1400)
    out = []
    for index, (data, pts, key) in enumerate(frames):
        chunks = [muxer.mux_video(data, pts, keyframe=key)]
        if audio is not None:  # 20 ms audio frames, two per 40 ms video frame
            for half in (0, 1):
                sample = bytes([(index * 2 + half) & 0xFF]) * 160
                chunks.append(muxer.mux_audio(sample, pts + half * 1800))
        for ps in chunks:
            packets = packetizer.packetize(ps, pts)
            out.append(b"".join(memoryview(p)[12:] for p in packets))
    return out


@cache
def clip_frames(codec: str, width: int = 640, height: int = 360) -> list[tuple[bytes, int, bool]]:
    return list(load_clip(codec, width=width, height=height).frames)


# --- the test media ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", GB_FILES)
def test_camera_captures_take_the_fast_path_and_match(name):
    frames = camera_frames(load(f"media/{name}"))
    assert len(frames) == (500 if "alaw" in name else 250)
    assert_same(frames, fast=True)


@pytest.mark.parametrize("name", FFMPEG_FILES)
@pytest.mark.parametrize("seed", [1, 2])
def test_ffmpeg_packs_fall_back_and_match(name, seed):
    frames = chunk_frames(load(f"media/{name}"), seed)
    demuxer = assert_same(frames, fast=False)
    assert (demuxer.fast_frames, demuxer.slow_frames) == (0, len(frames))


def test_h265_frames_ending_in_zero_are_returned_with_the_next_frame():
    # ZLMediaKit's H.265 frames end with a zero byte: PsDemuxer would give it to the next
    # unit if that one began with a 3-byte start code, so the frame waits for the next one.
    frames = camera_frames(load("media/gb_h265_zlm.ps"))
    demuxer = PsFrameDemuxer()
    assert demuxer.feed_frame(frames[0]) == []
    units = demuxer.feed_frame(frames[1])
    assert [u.offset for u in units] == [0]
    assert units[0].data.endswith(b"\x00") and units[0].keyframe


def test_units_come_from_the_call_that_fed_the_frame():
    frames = camera_frames(load("media/gb_h264_alaw_zlm.ps"))
    demuxer = PsFrameDemuxer()
    offset = 0
    for frame in frames[:20]:
        units = demuxer.feed_frame(frame)
        assert len(units) == 1 and units[0].offset == offset and units[0].ps_bytes == frame
        offset += len(frame)
    assert demuxer.flush() == []


# --- PsMuxer streams from an encoder ---------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264", "h265"])
@pytest.mark.parametrize("audio", [None, "g711a", "aac"])
def test_psmuxer_streams_match(codec, audio):
    frames = mux_clip(codec, clip_frames(codec), audio)
    demuxer = assert_same(frames, fast=True)
    assert demuxer.pes_packets == len(frames)


def test_large_keyframe_split_over_several_pes_packets():
    source = clip_frames("h264", 1920, 1080)[:6]
    assert len(source[0][0]) > 0xFFFF and source[0][2]
    frames = mux_clip("h264", source, "g711u")
    assert frames[0].count(b"\x00\x00\x01\xe0") >= 2
    demuxer = assert_same(frames, fast=True)
    assert demuxer.pes_packets > len(frames)


def test_audio_before_the_first_video_frame():
    source = clip_frames("h265")[:10]
    muxer = PsMuxer("h265", "g711a")
    frames = [muxer.mux_audio(b"\x55" * 160, source[0][1] - 1800)]
    frames += [muxer.mux_video(data, pts, keyframe=key) for data, pts, key in source]
    assert_same(frames, fast=True)


def shared_packs(count: int) -> list[bytes]:
    """Audio PES before, then after, the video PES in the video frame's own pack."""
    source = clip_frames("h264")[:count]
    muxer = PsMuxer("h264", "g711a")
    frames = []
    for index, (data, pts, key) in enumerate(source):
        video_ps = muxer.mux_video(data, pts, keyframe=key)
        audio_ps = muxer.mux_audio(bytes([index]) * 160, pts)
        if index % 2:
            frames.append(audio_ps + video_ps[14:])  # pack, audio, [system header, PSM,] video
        else:
            frames.append(video_ps + audio_ps[14:])  # pack, [...,] video, audio
    return frames


def test_audio_sharing_the_video_pack():
    assert_same(shared_packs(30), fast=True)


def test_audio_only():
    muxer = PsMuxer("h264", "aac")
    frames = [muxer.mux_audio(bytes([n]) * (100 + n), n * 1920) for n in range(100)]
    demuxer = assert_same(frames, fast=True)
    assert demuxer.pes_packets == 100


def test_a_long_audio_run_without_video_falls_back_exactly():
    # PsDemuxer closes the open video unit once 64 units queue behind it; the fast path hands
    # over before that, and the replay keeps the output PsDemuxer's (fed frame by frame).
    source = clip_frames("h264")[:4]
    muxer = PsMuxer("h264", "g711a")
    frames = [muxer.mux_video(data, pts, keyframe=key) for data, pts, key in source[:2]]
    frames += [muxer.mux_audio(bytes([n]) * 160, source[1][1] + n) for n in range(70)]
    frames += [muxer.mux_video(data, pts, keyframe=key) for data, pts, key in source[2:]]
    units, demuxer = per_frame(frames)
    assert units == reference_per_frame(frames)
    assert demuxer.fast_frames == 2 + 59 and demuxer.revised_units == 0


# --- frames that leave the fast path ----------------------------------------------------------


def test_three_byte_start_code_after_a_trailing_zero_falls_back_exactly():
    muxer = PsMuxer("h264")
    source = clip_frames("h264")[:6]
    frames = []
    for index, (data, pts, key) in enumerate(source):
        if index == 2:
            data += b"\x00"  # trailing_zero_8bits
        if index == 3:
            data = data[1:]  # 00 00 01: PsDemuxer moves the zero above into this unit
        frames.append(muxer.mux_video(data, pts, keyframe=key))
    demuxer = assert_same(frames, fast=False)
    assert (demuxer.fast_frames, demuxer.slow_frames) == (2, 4)
    assert demuxer.revised_units == 0


def test_frame_not_starting_with_a_pack_header_falls_back():
    frames = camera_frames(load("media/gb_h264_zlm.ps"))[:30]
    damaged = frames[:10] + [frames[10][100:]] + frames[11:]
    units, demuxer = per_frame(damaged)
    assert (demuxer.fast_frames, demuxer.slow_frames) == (10, 20)
    assert demuxer.resyncs == 1 and demuxer.skipped_bytes > 0
    expected = reference_per_frame(damaged)
    start = sum(map(len, frames[:10]))
    assert [u for u in units if u.offset >= start] == [u for u in expected if u.offset >= start]
    # the frame before the damage: PsDemuxer appends the continuation payload to it
    assert demuxer.revised_units == 1
    assert units[9] == reference(b"".join(frames[:10]))[0][9]


def test_a_frame_of_more_pes_packets_than_a_unit_takes_falls_back_exactly():
    # PsDemuxer ends a unit at MAX_UNIT_PES PES packets; the fast path leaves such frames to it.
    frames = camera_frames(load("media/gb_h264_zlm.ps"))[:4]
    tiny = b"\x00\x00\x01\xe0\x00\x04\x80\x00\x00\x11"  # no PTS, one byte of the slice
    big = frames[1] + tiny * (MAX_UNIT_PES + 10)
    demuxer = assert_same([frames[0], big, frames[2], frames[3]], fast=False)
    assert (demuxer.fast_frames, demuxer.slow_frames) == (1, 3)


def test_empty_frames_are_ignored():
    frames = camera_frames(load("media/gb_h264_zlm.ps"))[:5]
    demuxer = PsFrameDemuxer()
    units = []
    for frame in frames:
        units += demuxer.feed_frame(b"") + demuxer.feed_frame(memoryview(frame))
    assert units == reference(b"".join(frames))[0]
    assert demuxer.slow_frames == 0


@cache
def short_streams() -> dict[str, list[bytes]]:
    return {
        "h264+g711a": mux_clip("h264", clip_frames("h264")[20:32], "g711a"),
        "h265 zlm": camera_frames(load("media/gb_h265_zlm.ps"))[:12],
        "shared packs": shared_packs(12),
    }


def damaged(name: str, index: int, kind: str, at: int, blob: bytes) -> list[bytes]:
    """The stream's frames with frame ``index`` damaged at ``at`` (modulo its length)."""
    frames = list(short_streams()[name])
    index %= len(frames)
    frame = frames[index]
    at %= len(frame)
    if kind == "truncate":
        frame = frame[:at]
    elif kind == "flip":
        frame = frame[:at] + blob[:1] + frame[at + 1 :]
    elif kind == "delete":
        frame = frame[:at] + frame[at + len(blob) * 4 :]
    elif kind == "insert":
        frame = frame[:at] + blob + frame[at:]
    else:
        frame = b""
    frames[index] = frame
    return frames


@given(
    st.sampled_from(["h264+g711a", "h265 zlm", "shared packs"]),
    st.integers(0, 63),
    st.sampled_from(["truncate", "flip", "delete", "insert", "drop"]),
    st.integers(0, 1 << 20),
    st.binary(min_size=1, max_size=16),
)
def test_damaged_frame_never_raises_and_matches_psdemuxer_from_there(name, index, kind, at, blob):
    frames = damaged(name, index, kind, at, blob)
    index %= len(frames)
    units, demuxer = per_frame(frames)
    expected = reference_per_frame(frames)
    if demuxer.slow_frames == 0:
        assert units == expected  # the damage still looked like a frame: exact
        return
    start = sum(map(len, frames[:index]))
    assert [u for u in units if u.offset >= start] == [u for u in expected if u.offset >= start]
    # before the damage: each unit is PsDemuxer's, for the damaged stream or for the stream cut
    # before the damaged frame (PsDemuxer may revise the unit still open there)
    before = {u.offset: u for u in reference(b"".join(frames[:index]))[0]}
    theirs = {u.offset: u for u in expected}
    earlier = [u for u in units if u.offset < start]
    assert [u.offset for u in earlier] == sorted(before)
    for unit in earlier:
        assert unit == before[unit.offset] or unit == theirs.get(unit.offset)


# --- NAL header bytes: the fast path's table against PsDemuxer --------------------------------

# Header bytes cameras send: H.264 AUD, SPS, PPS, SEI, then IDR and P slices; H.265 (first byte
# of two) VPS, SPS, PPS, AUD, SEI, then IDR, CRA and trailing pictures.
OPENERS = {"h264": [0x09, 0x67, 0x68, 0x06], "h265": [0x40, 0x42, 0x44, 0x46, 0x4E]}
SLICES = {"h264": [0x65, 0x41, 0x01], "h265": [0x26, 0x2A, 0x02]}


@st.composite
def nal_frames(draw: st.DrawFn, codec: str) -> list[tuple[bytes, int, bool]]:
    """Frames of 1-5 NAL units: the first opens an access unit (a frame that does not is a
    continuation, which PsDemuxer adds to the unit already returned: see the module
    docstring), the others have any header byte, system start codes included. Bodies have
    no zero bytes, so the only start codes are the NALs' own; start codes of 3 or 4 bytes;
    sometimes a trailing zero."""
    frames = []
    h265 = codec == "h265"
    for index in range(draw(st.integers(1, 6))):
        data = b""
        for position in range(draw(st.integers(1, 5))):
            if position == 0:
                header = draw(st.sampled_from(OPENERS[codec] + SLICES[codec]))
                first_slice = 0x80  # first_mb_in_slice 0 / first_slice_segment_in_pic_flag
            else:
                typical = st.sampled_from(OPENERS[codec] + SLICES[codec])
                system = st.sampled_from([0xB9, 0xBA, 0xBC, 0xE0])  # as where bytes were lost
                header = draw(st.one_of(typical, system, st.integers(0, 255)))
                first_slice = 0
            body = bytearray(draw(st.binary(min_size=2, max_size=6)).replace(b"\x00", b"\x11"))
            body[0] |= first_slice
            if h265:
                body[:0] = b"\x01"  # nuh_layer_id 0, nuh_temporal_id_plus1 1
            start = b"\x00\x00\x00\x01" if draw(st.booleans()) else b"\x00\x00\x01"
            data += start + bytes([header]) + body
        if draw(st.booleans()):
            data += b"\x00"
        frames.append((data, index * 3600, draw(st.booleans())))
    return frames


@pytest.mark.parametrize("codec", ["h264", "h265"])
@given(draw=st.data())
def test_any_nal_headers_give_psdemuxers_units(codec, draw):
    # Every header byte goes through the fast path's NAL table: whether a frame holds one
    # access unit, ends at a system start code and is a keyframe must be what PsDemuxer
    # finds, or the frame falls back.
    muxer = PsMuxer(codec)
    frames = [
        muxer.mux_video(data, pts, keyframe=key) for data, pts, key in draw.draw(nal_frames(codec))
    ]
    units, demuxer = per_frame(frames)
    assert units == reference_per_frame(frames)
    assert demuxer.revised_units == 0


def test_camera_nal_headers_take_the_fast_path():
    # The test above is only worth something if its frames can take the fast path.
    for codec, first, slice_header in (
        ("h264", 0x67, b"\x65\x88"),
        ("h265", 0x40, b"\x26\x01\xaf"),
    ):
        muxer = PsMuxer(codec)
        data = b"\x00\x00\x00\x01" + bytes([first]) + b"\x01\x0c\x00\x00\x01" + slice_header
        frames = [muxer.mux_video(data + b"\x11" * 40, 3600 * k, keyframe=True) for k in range(3)]
        units, demuxer = per_frame(frames)
        assert demuxer.fast_frames == 3 and [u.keyframe for u in units] == [True] * 3
        assert units == reference_per_frame(frames)


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_every_opener_after_a_slice_starts_another_unit(codec):
    # Two access units in one frame: PsDemuxer cuts at the second opener, so the frame must
    # fall back, whichever NAL type opens the second one.
    extra = b"\x01" if codec == "h265" else b""
    first, other = b"\x88\x11\x22", b"\x08\x11\x22"  # a picture's first slice, a later one
    for opener in OPENERS[codec] + SLICES[codec]:
        data = b""
        for header, body in (
            (OPENERS[codec][0], first), (SLICES[codec][0], first),
            (opener, first), (SLICES[codec][1], other),
        ):
            data += b"\x00\x00\x00\x01" + bytes([header]) + extra + body
        muxer = PsMuxer(codec)
        frames = [muxer.mux_video(data, 3600 * k, keyframe=k == 0) for k in range(2)]
        units, demuxer = per_frame(frames)
        assert demuxer.slow_frames == 2, hex(opener)
        assert units == reference_per_frame(frames)


def seeded_reference(frames: list[bytes], types: dict[int, int]) -> list[AccessUnit]:
    demuxer = PsDemuxer()
    demuxer.stream_types = dict(types)
    units: list[AccessUnit] = []
    for frame in frames:
        units += demuxer.feed(frame)
    return units + demuxer.flush()


def test_known_stream_types_take_a_stream_up_again_without_a_psm():
    # After lost packets the ingest starts a new demuxer at the next whole frame, which has no
    # PSM unless it is a keyframe: given the map the stream had, it takes the fast path.
    frames = mux_clip("h264", clip_frames("h264"), "g711a")
    types = reference(b"".join(frames))[1].stream_types
    later = next(k for k in range(30, len(frames)) if frames[k][14:18] == b"\x00\x00\x01\xe0")
    rest = frames[later:]
    assert not any(b"\x00\x00\x01\xbc" in frame for frame in rest[:10])  # no PSM for a while
    demuxer = PsFrameDemuxer(stream_types=types)
    units = [unit for frame in rest for unit in demuxer.feed_frame(frame)] + demuxer.flush()
    assert demuxer.fast_frames == len(rest) and demuxer.stream_types == types
    assert units == seeded_reference(rest, types)
    assert units[0].offset == 0 and units[0].stream_id == 0xE0 and units[0].codec == "h264"
    # without the map the first frame is no camera frame to the fast path
    assert per_frame(rest)[1].slow_frames == len(rest)


def test_wrong_known_stream_types_fall_back_to_psdemuxer():
    frames = mux_clip("h264", clip_frames("h264")[:12])
    wrong = {0xE0: 0x24}  # H.265 where the bitstream is H.264
    demuxer = PsFrameDemuxer(stream_types=wrong)
    units = [unit for frame in frames for unit in demuxer.feed_frame(frame)] + demuxer.flush()
    assert demuxer.slow_frames == len(frames)
    assert units == seeded_reference(frames, wrong)
