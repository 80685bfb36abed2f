"""rtp.ps: the MPEG-PS demuxer against PyAV, chunking, ps_bytes, bad input and refusals."""

from __future__ import annotations

import dataclasses
import io
import random
import time
from functools import cache

import av
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.ps import MAX_BUFFERED, MAX_UNIT_PES, AccessUnit, PsDemuxer
from rtp.psmux import PsMuxer
from tests.conftest import DATA, load

GB_FILES = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps"]
FFMPEG_FILES = ["h264_640x360_25fps_10s_ffmpeg.ps", "h265_640x360_25fps_10s_ffmpeg.ps"]
FILES = GB_FILES + FFMPEG_FILES
CODEC = {
    "gb_h264_zlm.ps": "h264",
    "gb_h265_zlm.ps": "h265",
    "gb_h264_alaw_zlm.ps": "h264",
    "h264_640x360_25fps_10s_ffmpeg.ps": "h264",
    "h265_640x360_25fps_10s_ffmpeg.ps": "h265",
}

PACK = bytes.fromhex("000001BA440004708401013883F8")  # gb28181.md section 7 example, SCR 3600


def media(name: str) -> bytes:
    return load(f"media/{name}")


def demux(data: bytes, cuts: list[int] | None = None) -> list[AccessUnit]:
    demuxer = PsDemuxer()
    out: list[AccessUnit] = []
    edges = [0, *(cuts or []), len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        out += demuxer.feed(data[a:b])
    return out + demuxer.flush()


@cache
def whole(name: str) -> tuple[AccessUnit, ...]:
    return tuple(demux(media(name)))


@cache
def pyav_packets(name: str, kind: str) -> tuple[tuple[int | None, bytes], ...]:
    with av.open(str(DATA / "media" / name), format="mpeg") as container:
        return tuple(
            (packet.pts, bytes(packet))
            for packet in container.demux()
            if packet.size and packet.stream.type == kind
        )


def video(units: tuple[AccessUnit, ...] | list[AccessUnit]) -> list[AccessUnit]:
    return [u for u in units if 0xE0 <= u.stream_id <= 0xEF]


def timestamp(prefix: int, value: int) -> bytes:
    return bytes(
        [
            prefix << 4 | (value >> 29) & 0x0E | 1,
            value >> 22 & 0xFF,
            (value >> 14) & 0xFE | 1,
            value >> 7 & 0xFF,
            (value << 1) & 0xFE | 1,
        ]
    )


def pes(sid: int, payload: bytes, pts: int | None = None, unbounded: bool = False) -> bytes:
    optional = timestamp(0b0010, pts) if pts is not None else b""
    header = bytes([0x80, 0x80 if pts is not None else 0, len(optional)]) + optional
    length = 0 if unbounded else len(header) + len(payload)
    return b"\x00\x00\x01" + bytes([sid]) + length.to_bytes(2, "big") + header + payload


def psm(entries: list[tuple[int, int]]) -> bytes:
    es_map = b"".join(bytes([stream_type, sid, 0, 0]) for stream_type, sid in entries)
    body = b"\xe0\xff\x00\x00" + len(es_map).to_bytes(2, "big") + es_map + b"\x00" * 4
    return b"\x00\x00\x01\xbc" + len(body).to_bytes(2, "big") + body


# -- (a) byte-identical to PyAV -------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_video_data_matches_pyav(name: str) -> None:
    ours = video(whole(name))
    theirs = pyav_packets(name, "video")
    assert len(ours) == len(theirs) == 250
    assert [u.data for u in ours] == [data for _, data in theirs]


H265_PTS_REASON = (
    "FFmpeg's parser gives frame 74 of the H.265 vob file pts 315000, the PTS of the next PES; "
    "that frame's start code begins in the last 3 bytes of a PES without PTS and only its NAL "
    "header lies in the PES carrying 315000, which ISO/IEC 13818-1 2.4.3.7 assigns to the first "
    "access unit commencing in it (frame 75, also 315000 in PyAV). We report None for frame 74."
)


@pytest.mark.parametrize(
    "name",
    [
        *GB_FILES,
        FFMPEG_FILES[0],
        pytest.param(FFMPEG_FILES[1], marks=pytest.mark.xfail(strict=True, reason=H265_PTS_REASON)),
    ],
)
def test_video_pts_matches_pyav(name: str) -> None:
    assert [u.pts for u in video(whole(name))] == [pts for pts, _ in pyav_packets(name, "video")]


def test_h265_ffmpeg_pts_differ_only_where_pyav_repeats_the_next_pts() -> None:
    name = FFMPEG_FILES[1]
    ours = [u.pts for u in video(whole(name))]
    theirs = [pts for pts, _ in pyav_packets(name, "video")]
    differ = [k for k, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert differ == [74]
    assert ours[74] is None and theirs[74] == theirs[75] == ours[75] == 315000


def test_ffmpeg_pts_are_missing_where_no_frame_starts_in_a_pes_with_pts() -> None:
    # The vob muxer stamps only the first frame commencing in each 2048-byte pack; PyAV agrees.
    ours = video(whole(FFMPEG_FILES[0]))
    assert ours[0].pts == 45000
    missing = [k for k, u in enumerate(ours) if u.pts is None]
    assert missing == [
        k for k, (pts, _) in enumerate(pyav_packets(FFMPEG_FILES[0], "video")) if pts is None
    ]


def test_gb_audio_matches_pyav() -> None:
    name = "gb_h264_alaw_zlm.ps"
    audio = [u for u in whole(name) if 0xC0 <= u.stream_id <= 0xDF]
    assert {u.codec for u in audio} == {"g711a"}
    assert [(u.pts, u.data) for u in audio] == list(pyav_packets(name, "audio"))
    assert all(u.keyframe for u in audio)


# -- (b) chunking invariance --------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_rtp_sized_chunks_match_whole(name: str) -> None:
    data = media(name)
    assert demux(data, list(range(1388, len(data), 1388))) == list(whole(name))


@pytest.mark.parametrize("name", ["gb_h264_alaw_zlm.ps", FFMPEG_FILES[1]])
def test_byte_by_byte_matches_whole(name: str) -> None:
    data = media(name)[:40_000]
    assert demux(data, list(range(1, len(data)))) == demux(data)


@given(st.data())
def test_any_cut_points_match_whole(draw: st.DataObject) -> None:
    name = draw.draw(st.sampled_from(FILES))
    data = media(name)
    cuts = draw.draw(st.lists(st.integers(1, len(data) - 1), max_size=40))
    assert demux(data, sorted(set(cuts))) == list(whole(name))


# -- (c) ps_bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_ps_bytes_reproduce_the_input(name: str) -> None:
    units = whole(name)
    assert units[0].offset == 0
    assert b"".join(u.ps_bytes for u in units) == media(name)
    offsets = [u.offset for u in units]
    assert offsets == sorted(offsets)


@pytest.mark.parametrize("name", GB_FILES)
def test_gb_ps_bytes_start_at_the_frames_pack(name: str) -> None:
    # camera layout: each frame (and each audio PES) has its own pack; keyframes carry the
    # system header and PSM, which belong to the keyframe's ps_bytes.
    for unit in whole(name):
        assert unit.ps_bytes.startswith(b"\x00\x00\x01\xba")
        if unit.keyframe and unit.stream_id >= 0xE0:
            assert unit.ps_bytes[14:18] == b"\x00\x00\x01\xbb"


# -- (d) keyframes and codecs ------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_keyframe_every_25_frames_and_codec(name: str) -> None:
    frames = video(whole(name))
    assert [k for k, u in enumerate(frames) if u.keyframe] == list(range(0, 250, 25))
    assert {u.codec for u in frames} == {CODEC[name]}


@pytest.mark.parametrize("name", FFMPEG_FILES)
def test_codec_inferred_without_psm(name: str) -> None:
    demuxer = PsDemuxer()
    demuxer.feed(media(name))
    assert demuxer.psm_updates == 0 and demuxer.stream_types == {}
    assert demuxer.detected == "MPEG-PS" and demuxer.refusal is None


def test_psm_stream_types_are_kept() -> None:
    demuxer = PsDemuxer()
    demuxer.feed(media("gb_h264_alaw_zlm.ps"))
    assert demuxer.stream_types == {0xE0: 0x1B, 0xC0: 0x90}


def test_wrong_psm_type_loses_to_the_bitstream() -> None:
    # Kedacom-style: PSM says H.264 for an H.265 stream.
    frames = [u.data for u in video(whole("gb_h265_zlm.ps"))][:3]
    stream = PACK + psm([(0x1B, 0xE0)])
    for k, frame in enumerate(frames):
        stream += PACK + pes(0xE0, frame, pts=3600 * (k + 1))
    units = demux(stream)
    assert [u.codec for u in units] == ["h265"] * 3
    assert [u.data for u in units] == frames


# -- (e) bad input -----------------------------------------------------------------------------


def test_garbage_before_the_stream_is_skipped() -> None:
    garbage = bytes(range(1, 256)) * 9
    data = media("gb_h264_zlm.ps")
    demuxer = PsDemuxer()
    units = demuxer.feed(garbage + data) + demuxer.flush()
    assert units == [
        dataclasses.replace(u, offset=u.offset + len(garbage)) for u in whole("gb_h264_zlm.ps")
    ]
    assert demuxer.skipped_bytes == len(garbage)
    assert demuxer.resyncs == 1


def test_truncation_at_every_97th_offset() -> None:
    data = media("gb_h264_alaw_zlm.ps")[:60_000]
    full = demux(data)
    for end in range(0, len(data), 97):
        units = demux(data[:end])
        assert len(units) <= len(full)
        cut_short = set()
        for ours, theirs in zip(units, full, strict=False):
            assert (ours.stream_id, ours.pts, ours.offset) == (
                theirs.stream_id,
                theirs.pts,
                theirs.offset,
            )
            assert theirs.data.startswith(ours.data)
            if ours.data != theirs.data:
                assert ours.stream_id not in cut_short  # only each stream's last unit
                cut_short.add(ours.stream_id)
        assert b"".join(u.ps_bytes for u in units) == (data[:end] if units else b"")


def test_gaps_resync_and_later_frames_come_out() -> None:
    data = media("h264_640x360_25fps_10s_ffmpeg.ps")
    tail = [u.data for u in video(whole("h264_640x360_25fps_10s_ffmpeg.ps"))][-150:]
    for start in range(40_000, 40_000 + 97 * 30, 97):
        demuxer = PsDemuxer()
        units = demuxer.feed(data[:start] + data[start + 1400 :]) + demuxer.flush()
        assert [u.data for u in units][-150:] == tail
        assert demuxer.resyncs >= 1


@pytest.mark.parametrize("seed", range(20))
def test_random_corruption_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    name = rng.choice(FILES)
    data = bytearray(media(name))
    for _ in range(30):
        data[rng.randrange(len(data) // 2)] = rng.randrange(256)
    units = demux(bytes(data), sorted(rng.sample(range(1, len(data)), 200)))
    originals = [u.data for u in video(whole(name))]
    assert [u.data for u in video(units)][-100:] == originals[-100:]


@given(st.binary(max_size=4000), st.lists(st.integers(0, 4000), max_size=8))
def test_any_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    demux(data, sorted({c for c in cuts if 0 < c < len(data)}))


@given(st.binary(max_size=3000), st.sampled_from([0xE0, 0xC0, 0xBD, 0xBC, 0xBB]))
def test_any_bytes_after_ps_headers_never_raise(tail: bytes, sid: int) -> None:
    data = PACK + b"\x00\x00\x01" + bytes([sid]) + tail + PACK + tail
    units = demux(data)
    if units:
        assert b"".join(u.ps_bytes for u in units) == data[units[0].offset :]


# -- (f) refusals ------------------------------------------------------------------------------


def remux(name: str, fmt: str) -> bytes:
    out = io.BytesIO()
    with av.open(str(DATA / "media" / name), format="mpeg") as src:
        with av.open(out, "w", format=fmt) as dst:
            stream = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.size:
                    packet.stream = stream
                    dst.mux(packet)
    return out.getvalue()


def test_mpeg_ts_is_refused() -> None:
    data = remux("gb_h264_zlm.ps", "mpegts")
    demuxer = PsDemuxer()
    assert demux(data, list(range(1316, len(data), 1316))) == []
    demuxer.feed(data)
    assert demuxer.detected == "MPEG-TS"
    assert demuxer.refusal == "MPEG-TS, not MPEG-PS"


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("gb_h264_zlm.ps", "bare H.264 elementary stream"),
        ("gb_h265_zlm.ps", "bare H.265 elementary stream"),
    ],
)
def test_bare_annexb_is_refused(name: str, what: str) -> None:
    data = b"".join(u.data for u in video(whole(name)))
    demuxer = PsDemuxer()
    assert demuxer.feed(data) == [] and demuxer.flush() == []
    assert demuxer.detected == what
    assert demuxer.refusal == f"{what}, not MPEG-PS"


def test_short_bare_annexb_is_refused_at_flush() -> None:
    demuxer = PsDemuxer()
    demuxer.feed(video(whole("gb_h264_zlm.ps"))[0].data[:500])
    assert demuxer.refusal is None
    assert demuxer.flush() == []
    assert demuxer.refusal == "bare H.264 elementary stream, not MPEG-PS"


# -- (g) big frames, unbounded PES, other structures -------------------------------------------


@cache
def big_keyframe() -> tuple[bytes, bytes]:
    """A noisy 1080p H.264 keyframe (> 64 KiB) and the vob PS that FFmpeg makes of it."""
    rng = np.random.default_rng(7)
    out = io.BytesIO()
    with av.open(out, "w", format="vob") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.bit_rate = 50_000_000
        stream.options = {"crf": "1", "preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(
            rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), format="rgb24"
        )
        packets = list(stream.encode(frame)) + list(stream.encode(None))
        for packet in packets:
            container.mux(packet)
        keyframe = bytes(packets[0])
    return keyframe, out.getvalue()


def test_big_keyframe_from_ffmpeg_is_one_unit() -> None:
    keyframe, ps = big_keyframe()
    assert len(keyframe) > 65536
    units = demux(ps, list(range(1400, len(ps), 1400)))
    assert len(units) == 1
    assert units[0].data == keyframe and units[0].keyframe and units[0].codec == "h264"


@pytest.mark.parametrize("repeat_pts", [False, True])
def test_big_keyframe_gb_style_is_one_unit(repeat_pts: bool) -> None:
    keyframe, _ = big_keyframe()
    pieces = [keyframe[k : k + 65000] for k in range(0, len(keyframe), 65000)]
    stream = PACK + psm([(0x1B, 0xE0)])
    for k, piece in enumerate(pieces):
        stream += pes(0xE0, piece, pts=3600 if k == 0 or repeat_pts else None)
    small = video(whole("gb_h264_zlm.ps"))[1].data
    stream += PACK + pes(0xE0, small, pts=7200)
    units = demux(stream, list(range(1400, len(stream), 1400)))
    assert [(u.pts, u.keyframe, u.data) for u in units] == [
        (3600, True, keyframe),
        (7200, False, small),
    ]


def test_unbounded_video_pes_runs_to_the_next_start_code() -> None:
    frames = [u.data for u in video(whole("gb_h264_alaw_zlm.ps"))][:4]
    sound = b"\xd5" * 320
    stream = b""
    for k, frame in enumerate(frames):
        stream += PACK + pes(0xE0, frame, pts=3600 * k, unbounded=True)
        stream += PACK + pes(0xC0, sound, pts=3600 * k)
    units = demux(stream, list(range(7, len(stream), 700)))
    assert [u.data for u in units if u.stream_id == 0xE0] == frames
    assert [u.codec for u in units if u.stream_id == 0xC0] == ["unknown"] * 4  # no PSM
    assert b"".join(u.ps_bytes for u in units) == stream


def test_private_streams_padding_and_mpeg1_packs_are_skipped() -> None:
    frames = [u.data for u in video(whole("gb_h264_zlm.ps"))][:3]
    mpeg1_pack = bytes.fromhex("000001BA2100010001800001")
    private = b"\x00\x00\x01\xbd\x00\x05\x80\x00\x00hi"
    padding = b"\x00\x00\x01\xbe\x00\x04\xff\xff\xff\xff"
    stream = b""
    for k, frame in enumerate(frames):
        pack = mpeg1_pack if k == 1 else PACK
        stream += pack + private + pes(0xE0, frame, pts=3600 * k) + padding
    stream += b"\x00\x00\x01\xb9"
    demuxer = PsDemuxer()
    units = demuxer.feed(stream) + demuxer.flush()
    assert [u.data for u in units] == frames
    assert units[1].ps_bytes.startswith(padding + mpeg1_pack + private)
    assert demuxer.packs == 3 and demuxer.resyncs == 0 and demuxer.skipped_bytes == 0


def test_hikvision_truncated_pack_header_resyncs() -> None:
    frames = [u.data for u in video(whole("gb_h265_zlm.ps"))][:3]
    stream = b"".join(
        (b"\x00\x00\x01\xba" if k == 1 else PACK) + pes(0xE0, f, pts=3600 * k)
        for k, f in enumerate(frames)
    )
    demuxer = PsDemuxer()
    units = demuxer.feed(stream) + demuxer.flush()
    assert [u.data for u in units] == frames
    assert demuxer.resyncs == 1 and demuxer.skipped_bytes == 4  # the bare 00 00 01 BA


# -- (h) a PES that lost bytes -----------------------------------------------------------------

IDR = b"\x00\x00\x00\x01\x65\x88" + b"\x11" * 3000
INTER = b"\x00\x00\x00\x01\x41\x9a" + b"\x22" * 3000


def demux_counted(data: bytes) -> tuple[list[AccessUnit], tuple[int, int, int]]:
    demuxer = PsDemuxer()
    units = demuxer.feed(data) + demuxer.flush()
    return units, (demuxer.truncated_pes, demuxer.resyncs, demuxer.skipped_bytes)


@pytest.mark.parametrize("lost", [1, 2, 3, 4, 1400])
def test_lost_bytes_before_a_keyframe_leave_that_keyframe_whole(lost: int) -> None:
    # The frame's PES length still counts the lost bytes; the keyframe's pack header, system
    # header, PSM and PES header that follow must not be read as its payload (with 1 to 3 bytes
    # lost, the PES "ends" inside the pack start code).
    muxer = PsMuxer("h264")
    first = muxer.mux_video(IDR, 3600, keyframe=True)
    second = muxer.mux_video(INTER, 7200)
    third = muxer.mux_video(IDR, 10800, keyframe=True)
    stream = first + second[:-lost] + third
    units, counters = demux_counted(stream)
    assert [(u.pts, u.keyframe, u.data) for u in units] == [
        (3600, True, IDR),
        (7200, False, INTER[:-lost]),
        (10800, True, IDR),
    ]
    assert units[2].ps_bytes == third and units[1].ps_bytes == second[:-lost]
    assert counters == (1, 1, 0)  # one truncated PES, nothing skipped
    assert demux(stream, list(range(1, len(stream)))) == units


def test_lost_bytes_inside_a_multi_pes_keyframe_leave_the_next_frame_whole() -> None:
    # 150 kB keyframe in three PES packets; 1400 bytes lost from the middle of the second one,
    # whose length then reaches past the third one and over both frames that follow.
    body = bytes(range(1, 256)) * 600  # no zero byte: no start code inside
    big = b"\x00\x00\x00\x01\x65\x88" + body
    muxer = PsMuxer("h264")
    first = muxer.mux_video(big, 3600, keyframe=True)
    second = muxer.mux_video(INTER, 7200)
    third = muxer.mux_video(INTER, 10800)
    pes1 = first.index(b"\x00\x00\x01\xe0")
    pes2 = first.index(b"\x00\x00\x01\xe0", pes1 + 1)
    pes3 = first.index(b"\x00\x00\x01\xe0", pes2 + 1)
    gap = (pes2 + pes3) // 2
    stream = first[:gap] + first[gap + 1400 :] + second + third
    at = (pes2 - pes1 - 14) + (gap - pes2 - 9)  # where the gap falls in the frame's data
    expected = [
        (3600, True, big[:at] + big[at + 1400 :]),
        (7200, False, INTER),
        (10800, False, INTER),
    ]
    units, counters = demux_counted(stream)
    assert [(u.pts, u.keyframe, u.data) for u in units] == expected
    assert [u.ps_bytes for u in units[1:]] == [second, third]
    assert counters == (1, 1, 0)
    assert demux(stream, list(range(1, len(stream), 1400))) == units
    assert demux(stream, list(range(gap - 200, gap + 200))) == units


def test_without_psm_the_codec_is_learnt_before_a_pes_is_cut() -> None:
    # No PSM: the codec is only known from the NAL headers before the stray start code, whether
    # the bytes come in one piece or one by one.
    stream = PACK + pes(0xE0, IDR, pts=3600)[:-100] + PACK + pes(0xE0, IDR, pts=7200)
    units, counters = demux_counted(stream)
    assert [(u.pts, u.codec, u.data) for u in units] == [
        (3600, "h264", IDR[:-100]),
        (7200, "h264", IDR),
    ]
    assert counters == (1, 1, 0)
    assert demux(stream, list(range(1, len(stream)))) == units


def test_system_start_codes_in_audio_private_and_mpeg4_payloads_are_payload() -> None:
    # G.711 and private data may hold any bytes, MPEG-4 part 2 has start codes 0xBA-0xC3: those
    # PES packets are read for their whole length.
    fake = PACK + b"\x00\x00\x01\xe0\x00\x08\x80\x00\x00" + b"\x00\x00\x01\xbd"
    sound = b"\xd5" * 100 + fake + b"\xd5" * 100
    private = b"\x00\x00\x01\xbd" + len(fake).to_bytes(2, "big") + fake
    vop = b"\x00\x00\x01\xb6\x10" + b"\x33" * 500 + b"\x00\x00\x01\xc3" + b"\x44" * 40
    streams = [(0x1B, 0xE0), (0x10, 0xE1), (0x90, 0xC0)]
    stream = PACK + psm(streams) + pes(0xE0, IDR, pts=3600) + pes(0xE1, vop, pts=3600)
    stream += PACK + private + pes(0xC0, sound, pts=3600)
    stream += PACK + pes(0xE0, INTER, pts=7200) + pes(0xE1, vop, pts=7200)
    stream += b"\x00\x00\x01\xb9"
    units, counters = demux_counted(stream)
    assert [(u.stream_id, u.codec, u.pts, u.data) for u in units] == [
        (0xE0, "h264", 3600, IDR),
        (0xE1, "mpeg4", 3600, vop),
        (0xC0, "g711a", 3600, sound),
        (0xE0, "h264", 7200, INTER),
        (0xE1, "mpeg4", 7200, vop),
    ]
    assert counters == (0, 0, 0)
    assert demux(stream, list(range(1, len(stream)))) == units


# -- performance -------------------------------------------------------------------------------


def test_throughput() -> None:
    data = media("gb_h264_zlm.ps")
    chunks = [data[k : k + 1388] for k in range(0, len(data), 1388)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        demuxer = PsDemuxer()
        for chunk in chunks:
            demuxer.feed(chunk)
        demuxer.flush()
        best = min(best, time.perf_counter() - started)
    # well above 100 MB/s on a desktop core; the bound only catches a per-byte Python loop
    assert len(data) / best > 20e6


def test_mpeg_ts_fed_in_small_pieces_is_refused() -> None:
    data = remux("gb_h264_zlm.ps", "mpegts")
    demuxer = PsDemuxer()
    for k in range(0, 20_000, 100):
        assert demuxer.feed(data[k : k + 100]) == []
    assert demuxer.refusal == "MPEG-TS, not MPEG-PS"


def test_a_unit_that_never_ends_is_cut_to_bound_the_buffer() -> None:
    # PTS-less PES packets of an unknown codec: no frame boundary ever shows up.
    packet = PACK + pes(0xE0, b"\x55" * 60_000)
    demuxer = PsDemuxer()
    early: list[AccessUnit] = []
    for _ in range(400):  # 24 MB
        early += demuxer.feed(packet)
    assert early, "the buffer must not grow without bound"
    units = early + demuxer.flush()
    assert b"".join(u.ps_bytes for u in units) == packet * 400
    assert b"".join(u.data for u in units) == b"\x55" * 60_000 * 400


def test_pes_header_too_short_for_its_timestamps_is_skipped() -> None:
    demuxer = PsDemuxer()
    data = PACK + bytes.fromhex("000001E0000080C000") + PACK
    assert demuxer.feed(data) + demuxer.flush() == []
    assert demuxer.resyncs == 1


# -- (i) bounded memory ----------------------------------------------------------------------

PADDING = b"\x00\x00\x01\xbe\xff\xf0" + b"\xff" * 0xFFF0
PRIVATE = b"\x00\x00\x01\xbd\xff\xf0" + b"\x80" * 0xFFF0
# The PES header of a last slice NAL that never ends: every PES after it continues the frame.
TINY_PES = b"\x00\x00\x01\xe0\x00\x09\x80\x80\x05" + timestamp(0b0010, 3600)


@pytest.mark.parametrize(
    ("run", "bound", "total"),
    [
        (PACK, 1 << 20, 14_000_000),  # 14 MB of pack headers: the reported case, 1 MiB window
        (PACK + PADDING, MAX_BUFFERED, 48_000_000),
        (PACK + PRIVATE, MAX_BUFFERED, 48_000_000),
        (PACK + PRIVATE + PADDING + psm([(0x1B, 0xE0)]), MAX_BUFFERED, 48_000_000),
    ],
    ids=["pack-headers", "padding", "private", "private-padding-psm"],
)
def test_a_run_without_video_is_not_held(run: bytes, bound: int, total: int) -> None:
    # Frames, then a long run of packs that carry no elementary stream, then frames again.
    frames = video(whole("gb_h264_zlm.ps"))
    before = b"".join(u.ps_bytes for u in frames[:3])
    after = b"".join(u.ps_bytes for u in frames[3:6])
    demuxer = PsDemuxer(bound)
    units = demuxer.feed(before)
    chunk = run * max(1, 65536 // len(run))
    for _ in range(total // len(chunk)):
        units += demuxer.feed(chunk)
        assert demuxer.buffered <= bound + 65536 <= demuxer.limit
    units += demuxer.feed(after) + demuxer.flush()
    assert [u.data for u in units] == [u.data for u in frames[:6]]
    assert [u.pts for u in units] == [u.pts for u in frames[:6]]
    assert units[2].ps_bytes.startswith(frames[2].ps_bytes)  # the run went with it, up to...
    assert units[3].ps_bytes.endswith(frames[3].ps_bytes)  # ...where the rest was dropped
    assert demuxer.dropped_bytes > total - 2 * bound


def test_a_run_without_video_from_the_start_is_not_held() -> None:
    demuxer = PsDemuxer(1 << 20)
    chunk = (PACK + PADDING) * 64
    for _ in range(40):
        assert demuxer.feed(chunk) == []
        assert demuxer.buffered <= (1 << 20) + 65536
    frames = video(whole("gb_h264_zlm.ps"))[:3]
    units = demuxer.feed(b"".join(u.ps_bytes for u in frames)) + demuxer.flush()
    assert [u.data for u in units] == [u.data for u in frames]


def test_audio_then_a_run_without_video_is_not_held() -> None:
    # The last unit is done but waits for the next one to end its segment: it goes out early.
    sound = b"\xd5" * 320
    demuxer = PsDemuxer(1 << 20)
    units = demuxer.feed(PACK + psm([(0x90, 0xC0)]) + pes(0xC0, sound, pts=3600))
    chunk = (PACK + PRIVATE) * 64
    for _ in range(40):
        units += demuxer.feed(chunk)
        assert demuxer.buffered <= (1 << 20) + 65536
    units += demuxer.feed(PACK + pes(0xC0, sound, pts=7200)) + demuxer.flush()
    assert [(u.pts, u.codec, u.data) for u in units] == [(3600, "g711a", sound)] * 1 + [
        (7200, "g711a", sound)
    ]


def test_a_unit_over_max_unit_pes_packets_is_ended() -> None:
    # One slice NAL continued by PES packets of one byte each: the list of PES starts kept for
    # the open unit is bounded too (it would take ~100 bytes a PES otherwise).
    head = PACK + psm([(0x1B, 0xE0)]) + pes(0xE0, IDR, pts=3600)
    demuxer = PsDemuxer()
    units = demuxer.feed(head)
    count = MAX_UNIT_PES + 100
    units += demuxer.feed((TINY_PES + b"\x11") * count)
    assert len(units) == 1 and units[0].data == IDR + b"\x11" * MAX_UNIT_PES
    rest = demuxer.flush()
    assert b"".join(u.data for u in units + rest) == IDR + b"\x11" * count
