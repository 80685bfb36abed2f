"""PS muxer and RTP packetizer: checked by PyAV's demuxer and by a strict parser written here."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rtp.psmux import PES_PAYLOAD_MAX, PsMuxer, RtpPacketizer, crc32_mpeg2
from tests.conftest import DATA

MEDIA = DATA / "media"
MASK33 = (1 << 33) - 1


# --- a strict reader for what the muxer writes -----------------------------------------------


@dataclass
class Pes:
    stream_id: int
    payload: bytes
    pts: int | None
    dts: int | None
    aligned: bool


@dataclass
class Pack:
    scr: int
    psm: dict[int, int] | None  # stream_id -> stream_type
    pes: list[Pes]


def time_stamp(field: bytes, prefix: int) -> int:
    assert field[0] >> 4 == prefix
    assert field[0] & 1 and field[2] & 1 and field[4] & 1, "marker bits"
    return (
        ((field[0] >> 1) & 7) << 30
        | field[1] << 22
        | (field[2] >> 1) << 15
        | field[3] << 7
        | field[4] >> 1
    )


def read_pack_header(data: bytes, pos: int) -> tuple[int, int]:
    assert data[pos : pos + 4] == b"\x00\x00\x01\xba"
    bits = int.from_bytes(data[pos + 4 : pos + 10], "big")
    assert bits >> 46 == 0b01, "MPEG-2 pack header"
    assert (bits >> 42) & 1 and (bits >> 26) & 1 and (bits >> 10) & 1 and bits & 1
    scr = ((bits >> 43) & 7) << 30 | ((bits >> 27) & 0x7FFF) << 15 | (bits >> 11) & 0x7FFF
    assert (bits >> 1) & 0x1FF == 0, "SCR extension"
    mux_rate = int.from_bytes(data[pos + 10 : pos + 13], "big")
    assert mux_rate & 3 == 3 and mux_rate >> 2 > 0
    assert data[pos + 13] == 0xF8, "no stuffing"
    return scr, pos + 14


def read_psm(data: bytes, pos: int) -> tuple[dict[int, int], int]:
    length = int.from_bytes(data[pos + 4 : pos + 6], "big")
    psm = data[pos : pos + 6 + length]
    assert crc32_mpeg2(psm) == 0, "CRC_32 over the whole map leaves no remainder"
    assert psm[6] & 0x80, "current_next_indicator"
    info_length = int.from_bytes(psm[8:10], "big")
    es_start = 10 + info_length
    es_length = int.from_bytes(psm[es_start : es_start + 2], "big")
    assert es_start + 2 + es_length + 4 == len(psm)
    streams = {}
    for i in range(es_start + 2, es_start + 2 + es_length, 4):
        stream_type, stream_id, es_info = struct.unpack("!BBH", psm[i : i + 4])
        assert es_info == 0
        streams[stream_id] = stream_type
    return streams, pos + 6 + length


def read_pes(data: bytes, pos: int) -> tuple[Pes, int]:
    stream_id = data[pos + 3]
    length = int.from_bytes(data[pos + 4 : pos + 6], "big")
    end = pos + 6 + length
    assert end <= len(data)
    flags, pts_dts, header_length = data[pos + 6 : pos + 9]
    assert flags & 0xFB == 0x80
    fields = data[pos + 9 : pos + 9 + header_length]
    pts = dts = None
    if pts_dts == 0x80:
        assert header_length == 5
        pts = time_stamp(fields, 0b0010)
    elif pts_dts == 0xC0:
        assert header_length == 10
        pts, dts = time_stamp(fields[:5], 0b0011), time_stamp(fields[5:], 0b0001)
    else:
        assert (pts_dts, header_length) == (0, 0)
    payload = data[pos + 9 + header_length : end]
    return Pes(stream_id, payload, pts, dts, bool(flags & 0x04)), end


def parse_ps(data: bytes) -> list[Pack]:
    packs: list[Pack] = []
    pos = 0
    while pos < len(data):
        scr, pos = read_pack_header(data, pos)
        pack = Pack(scr, None, [])
        while pos < len(data) and data[pos : pos + 4] != b"\x00\x00\x01\xba":
            assert data[pos : pos + 3] == b"\x00\x00\x01"
            code = data[pos + 3]
            if code == 0xBB:
                pos += 6 + int.from_bytes(data[pos + 4 : pos + 6], "big")
            elif code == 0xBC:
                pack.psm, pos = read_psm(data, pos)
            else:
                pes, pos = read_pes(data, pos)
                pack.pes.append(pes)
        packs.append(pack)
    return packs


def frame_of(pack: Pack) -> tuple[int, bytes, int | None, int | None]:
    """The one frame a pack carries: PTS/DTS only on the first PES, all of one stream."""
    first, rest = pack.pes[0], pack.pes[1:]
    assert first.aligned and first.pts is not None
    assert all(p.pts is None and not p.aligned and p.stream_id == first.stream_id for p in rest)
    assert all(len(p.payload) == PES_PAYLOAD_MAX for p in rest[:-1])
    return first.stream_id, b"".join(p.payload for p in pack.pes), first.pts, first.dts


# --- PyAV helpers --------------------------------------------------------------------------


def source_frames(name: str) -> list[tuple[bytes, int, bool]]:
    """(bytes, pts, is_keyframe) of each video packet of one of the ZLMediaKit captures."""
    with av.open(str(MEDIA / name), format="mpeg") as container:
        return [(bytes(p), p.pts, p.is_keyframe) for p in container.demux() if p.size]


def pyav_packets(path: Path) -> tuple[dict[str, str], list[tuple[str, bytes, int]]]:
    with av.open(str(path), format="mpeg") as container:
        codecs = {s.type: s.codec_context.name for s in container.streams}
        packets = [(p.stream.type, bytes(p), p.pts) for p in container.demux() if p.size]
    return codecs, packets


@pytest.fixture(scope="module", params=[("h264", "gb_h264_zlm.ps"), ("h265", "gb_h265_zlm.ps")])
def muxed(request, tmp_path_factory):
    video, name = request.param
    frames = source_frames(name)
    muxer = PsMuxer(video)
    data = b"".join(muxer.mux_video(b, pts, keyframe=k) for b, pts, k in frames)
    path = tmp_path_factory.mktemp("psmux") / f"{video}.ps"
    path.write_bytes(data)
    return video, frames, path


# --- PyAV reads what we write --------------------------------------------------------------


def test_pyav_demuxes_the_same_packets(muxed):
    video, frames, path = muxed
    codecs, packets = pyav_packets(path)
    assert codecs == {"video": {"h264": "h264", "h265": "hevc"}[video]}
    assert len(frames) == 250
    assert [(b, pts) for _, b, pts in packets] == [(b, pts) for b, pts, _ in frames]


def test_pyav_decodes_the_frames(muxed):
    _, _, path = muxed
    with av.open(str(path), format="mpeg") as container:
        pictures = []
        for frame in container.decode(video=0):
            pictures.append((frame.width, frame.height, frame.pts))
            if len(pictures) == 10:
                break
    assert [(w, h) for w, h, _ in pictures] == [(640, 360)] * 10


def test_one_frame_per_pack_and_headers_before_key_frames(muxed):
    video, frames, path = muxed
    packs = parse_ps(path.read_bytes())
    assert len(packs) == len(frames)
    stream_type = {"h264": 0x1B, "h265": 0x24}[video]
    for pack, (data, pts, key) in zip(packs, frames, strict=True):
        assert frame_of(pack) == (0xE0, data, pts, None)
        assert pack.scr == pts
        assert pack.psm == ({0xE0: stream_type} if key else None)


def test_the_packs_bytes_are_the_same_as_the_frames_pack():
    muxer = PsMuxer("h264")
    first = muxer.mux_video(b"\x00\x00\x00\x01\x65\x88", 3600, keyframe=True)
    assert first.startswith(bytes.fromhex("000001BA 44000470 8401 013883 F8"))
    pes = first[first.index(b"\x00\x00\x01\xe0") :]
    assert pes == bytes.fromhex("000001E0 000E 84 80 05 210001 1C21 00000001 6588")


# --- large frames span several PES packets -------------------------------------------------


def big_key_frame(size: int = 200_000) -> bytes:
    # Non-zero filler, so no start code appears inside the slice data.
    body = bytes(random.Random(7).randrange(1, 256) for _ in range(size))
    return b"\x00\x00\x00\x01\x65\x88" + body


def test_large_key_frame_is_split_within_one_pack(tmp_path):
    frame = big_key_frame()
    muxer = PsMuxer("h264")
    data = muxer.mux_video(frame, 3600, keyframe=True)
    data += muxer.mux_video(b"\x00\x00\x00\x01\x41\x9a" + frame[6:1006], 7200)
    packs = parse_ps(data)
    assert len(packs) == 2
    sizes = [len(p.payload) for p in packs[0].pes]
    assert sizes == [PES_PAYLOAD_MAX - 5, PES_PAYLOAD_MAX, PES_PAYLOAD_MAX, len(frame) - 196_591]
    assert frame_of(packs[0]) == (0xE0, frame, 3600, None)

    # FFmpeg's mpeg demuxer runs the H.264 parser, which joins the PES payloads into one
    # access unit again.
    path = tmp_path / "big.ps"
    path.write_bytes(data)
    _, packets = pyav_packets(path)
    assert [(len(b), pts) for _, b, pts in packets] == [(len(frame), 3600), (1006, 7200)]
    assert packets[0][1] == frame


# --- time stamps ----------------------------------------------------------------------------


def test_dts_is_written_only_when_it_differs():
    muxer = PsMuxer("h265")
    same = parse_ps(muxer.mux_video(b"x", 9000, dts=9000))[0]
    other = parse_ps(muxer.mux_video(b"x", 9000, dts=5400))[0]
    assert (same.pes[0].pts, same.pes[0].dts, same.scr) == (9000, None, 9000)
    assert (other.pes[0].pts, other.pes[0].dts, other.scr) == (9000, 5400, 5400)


def test_time_stamps_wrap_at_33_bits():
    muxer = PsMuxer("h264")
    pack = parse_ps(muxer.mux_video(b"x", (1 << 33) + 5, dts=(1 << 33) - 1))[0]
    assert (pack.pes[0].pts, pack.pes[0].dts, pack.scr) == (5, MASK33, MASK33)


# --- program stream map ---------------------------------------------------------------------


def test_crc32_mpeg2_check_value():
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7
    assert crc32_mpeg2(b"") == 0xFFFFFFFF


def test_crc_agrees_with_the_zlmediakit_capture():
    data = (MEDIA / "gb_h264_zlm.ps").read_bytes()
    start = data.index(b"\x00\x00\x01\xbc")
    length = int.from_bytes(data[start + 4 : start + 6], "big")
    psm = data[start : start + 6 + length]
    assert crc32_mpeg2(psm[:-4]) == int.from_bytes(psm[-4:], "big")


@pytest.mark.parametrize(
    ("video", "audio", "types"),
    [
        ("h264", None, {0xE0: 0x1B}),
        ("h265", None, {0xE0: 0x24}),
        ("h264", "g711a", {0xE0: 0x1B, 0xC0: 0x90}),
        ("h265", "g711u", {0xE0: 0x24, 0xC0: 0x91}),
        ("h264", "aac", {0xE0: 0x1B, 0xC0: 0x0F}),
    ],
)
def test_psm_lists_the_streams_with_a_correct_crc(video, audio, types):
    data = PsMuxer(video, audio).mux_video(b"\x00\x00\x01\x09", 0, keyframe=True)
    start = data.index(b"\x00\x00\x01\xbc")
    psm, _ = read_psm(data, start)  # checks the CRC by running it over the map
    assert psm == types
    length = int.from_bytes(data[start + 4 : start + 6], "big")
    body = data[start : start + 2 + length]
    assert crc32_mpeg2(body) == int.from_bytes(data[start + 2 + length : start + 6 + length])
    system = data[data.index(b"\x00\x00\x01\xbb") :]
    assert system[4:6] == (6 + 3 * len(types)).to_bytes(2, "big")
    assert system[12 : 12 + 3 * len(types) : 3] == bytes(types)


def test_headers_go_in_front_of_key_frames_and_the_first_pack():
    muxer = PsMuxer("h264", "g711a")
    packs = [
        muxer.mux_audio(b"a" * 160, 0),
        muxer.mux_video(b"p", 0),
        muxer.mux_video(b"k", 3600, keyframe=True),
        muxer.mux_audio(b"a" * 160, 3600),
        muxer.mux_video(b"p", 7200),
    ]
    assert [b"\x00\x00\x01\xbc" in p for p in packs] == [True, False, True, False, False]


def test_bad_codecs_are_refused():
    with pytest.raises(ValueError, match="unknown video codec"):
        PsMuxer("mpeg4")
    with pytest.raises(ValueError, match="unknown audio codec"):
        PsMuxer("h264", "opus")
    with pytest.raises(ValueError, match="muxer has no audio stream"):
        PsMuxer("h264").mux_audio(b"a", 0)


# --- audio ----------------------------------------------------------------------------------


def test_g711a_interleaved_with_video(tmp_path):
    frames = source_frames("gb_h264_zlm.ps")[:50]
    muxer = PsMuxer("h264", "g711a")
    chunks, audio = [], []
    for index, (data, pts, key) in enumerate(frames):
        chunks.append(muxer.mux_video(data, pts, keyframe=key))
        for half in (0, 1):  # 20 ms of 8 kHz A-law per frame, two per 40 ms video frame
            sample = bytes([(index * 2 + half) & 0xFF]) * 160
            audio.append((sample, pts + half * 1800))
            chunks.append(muxer.mux_audio(sample, pts + half * 1800))
    path = tmp_path / "av.ps"
    path.write_bytes(b"".join(chunks))
    codecs, packets = pyav_packets(path)
    assert codecs == {"video": "h264", "audio": "pcm_alaw"}
    assert [(b, pts) for kind, b, pts in packets if kind == "audio"] == audio
    assert [(b, pts) for kind, b, pts in packets if kind == "video"] == [
        (b, pts) for b, pts, _ in frames
    ]
    stream_ids = [frame_of(p)[0] for p in parse_ps(path.read_bytes())]
    assert stream_ids == [0xE0, 0xC0, 0xC0] * 50


# --- properties -----------------------------------------------------------------------------


@given(
    frames=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 2_000), st.integers(0, 200_000)),
            st.integers(0, (1 << 34)),
            st.one_of(st.none(), st.integers(0, 1 << 34)),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 2**32),
)
# First PES exactly full (65527 bytes with PTS, 65522 with PTS and DTS), one byte more, the top.
@example(frames=[(65_527, MASK33, None, True), (65_522, 1, 0, False)], seed=0)
@example(frames=[(65_528, 0, None, False), (65_523, 1 << 33, 5, True)], seed=1)
@example(frames=[(200_000, 3600, 3600, True), (0, 0, None, False)], seed=2)
def test_any_frame_round_trips(frames, seed):
    rng = random.Random(seed)
    muxer = PsMuxer("h265", "aac")
    data, expected = b"", []
    for size, pts, dts, key in frames:
        frame = rng.randbytes(size)
        data += muxer.mux_video(frame, pts, dts, keyframe=key)
        wrapped_dts = None if dts is None or (dts - pts) & MASK33 == 0 else dts & MASK33
        expected.append((0xE0, frame, pts & MASK33, wrapped_dts))
        data += muxer.mux_audio(frame[:2000], pts + 1)
        expected.append((0xC0, frame[:2000], (pts + 1) & MASK33, None))
    assert [frame_of(p) for p in parse_ps(data)] == expected


# --- RTP packetizer -------------------------------------------------------------------------


def read_rtp(packet: bytes) -> tuple[int, bool, int, int, int, bytes]:
    first, second, sequence, timestamp, ssrc = struct.unpack("!BBHII", packet[:12])
    assert first == 0x80, "version 2, no padding, extension or CSRC"
    return second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, packet[12:]


def test_packets_cover_the_frame_with_the_marker_on_the_last():
    packetizer = RtpPacketizer(ssrc=100000001, payload_type=96, sequence=65533)
    ps = PsMuxer("h264").mux_video(big_key_frame(10_000), 3600, keyframe=True)
    packets = [read_rtp(p) for p in packetizer.packetize(ps, 3600)]
    assert len(packets) == -(-len(ps) // 1400)
    assert [pt for pt, *_ in packets] == [96] * len(packets)
    assert [marker for _, marker, *_ in packets] == [False] * (len(packets) - 1) + [True]
    assert [seq for _, _, seq, *_ in packets][:5] == [65533, 65534, 65535, 0, 1]
    assert {(ts, ssrc) for *_, ts, ssrc, _ in packets} == {(3600, 100000001)}
    assert all(len(payload) <= 1400 for *_, payload in packets)
    assert b"".join(payload for *_, payload in packets) == ps
    assert packetizer.sequence == (65533 + len(packets)) & 0xFFFF


def test_timestamp_wraps_at_32_bits_and_empty_input_sends_nothing():
    packetizer = RtpPacketizer(ssrc=1, sequence=7)
    assert packetizer.packetize(b"", 0) == []
    (packet,) = packetizer.packetize(b"\x00\x00\x01\xba", (1 << 32) + 90)
    assert read_rtp(packet) == (96, True, 7, 90, 1, b"\x00\x00\x01\xba")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ssrc": -1}, "ssrc out of range"),
        ({"ssrc": 1 << 32}, "ssrc out of range"),
        ({"ssrc": 1, "payload_type": 128}, "payload type out of range"),
        ({"ssrc": 1, "payload_max": 0}, "payload_max out of range"),
        ({"ssrc": 1, "payload_max": 65524}, "payload_max out of range"),
        ({"ssrc": 1, "sequence": 65536}, "sequence out of range"),
    ],
)
def test_packetizer_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RtpPacketizer(**kwargs)


@given(
    sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=8),
    payload_max=st.integers(1, 3000),
    sequence=st.integers(0, 0xFFFF),
)
def test_packetizer_sequence_is_continuous(sizes, payload_max, sequence):
    packetizer = RtpPacketizer(ssrc=5, payload_max=payload_max, sequence=sequence)
    expected = sequence
    for index, size in enumerate(sizes):
        ps = bytes([index & 0xFF]) * size
        packets = [read_rtp(p) for p in packetizer.packetize(ps, index * 3600)]
        assert len(packets) == -(-size // payload_max)
        for offset, (_, marker, seq, ts, _, payload) in enumerate(packets):
            assert seq == (expected + offset) & 0xFFFF
            assert marker == (offset == len(packets) - 1)
            assert ts == index * 3600 and 0 < len(payload) <= payload_max
        assert b"".join(p[-1] for p in packets) == ps
        expected = (expected + len(packets)) & 0xFFFF
