"""rtp.sps: picture size, profile, level and frame rate from H.264/H.265 sequence parameter sets.

The streams come from libx264 and libx265 through PyAV; FFmpeg's own reading of the same bytes
(the ``trace_headers`` bitstream filter) is the reference for the fields that the encoder's
settings do not give directly, and for parameter sets built here bit by bit to reach syntax that
neither encoder writes (picture order count type 1, predicted reference picture sets, PCM,
long-term pictures).
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest
from av.bitstream import BitStreamFilterContext
from hypothesis import given
from hypothesis import strategies as st

from rtp.nal import H264_SPS, H265_SPS, H265_VPS, iter_nal_units
from rtp.ps import PsDemuxer
from rtp.sps import SpsError, VideoFormat, find_video_format, parse_sps
from tests.conftest import load

CODEC = {"libx264": "h264", "libx265": "h265"}
CQM4 = ",".join(str(6 + i) for i in range(16))
CQM8 = ",".join(str(6 + (i * 7) % 40) for i in range(64))
VUI_X264 = (
    "sar=7/5:overscan=crop:videoformat=ntsc:colorprim=bt470bg:transfer=smpte170m:"
    "colormatrix=smpte170m:chromaloc=2:fullrange=on"
)
VUI_X265 = (
    "sar=12:overscan=crop:videoformat=ntsc:colorprim=bt470bg:transfer=smpte170m:"
    "colormatrix=smpte170m:chromaloc=2:range=full:display-window=8,0,8,0"
)


# --- encoding and FFmpeg's reading ------------------------------------------------------------


@cache
def encode(
    encoder: str,
    width: int,
    height: int,
    pix_fmt: str = "yuv420p",
    params: str = "",
    rate: Fraction = Fraction(25),
) -> bytes:
    """One frame of noise as an Annex-B access unit (the first one carries the parameter sets)."""
    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.framerate = rate
    ctx.time_base = 1 / rate
    if encoder == "libx265":
        ctx.options = {"preset": "ultrafast", "x265-params": ":".join(["log-level=none", params])}
    elif params:
        ctx.options = {"x264-params": params}
    rgb = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def nal_unit(codec: str, annexb: bytes, nal_type: int) -> bytes:
    """The first NAL unit of ``nal_type``, header included, start code and trailing zeros not."""
    start = next(s for s, t in iter_nal_units(codec, annexb) if t == nal_type)
    end = annexb.find(b"\x00\x00\x01", start)
    return annexb[start : end if end >= 0 else len(annexb)].rstrip(b"\x00")


_TRACE_LINE = re.compile(r"^\d+\s+(\S+)\s+[01]+ = (-?\d+)$")


def ffmpeg_fields(codec: str, annexb: bytes) -> dict[str, int]:
    """Syntax element values of the first SPS as FFmpeg's trace_headers filter reads them."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.TRACE)
    try:
        with av.logging.Capture(local=False) as logs:
            BitStreamFilterContext("trace_headers", "h264" if codec == "h264" else "hevc").filter(
                av.Packet(annexb)
            )
    finally:
        av.logging.set_level(level)
    fields: dict[str, int] = {}
    in_sps = False
    for _, name, message in logs:
        if name != "trace_headers":
            continue
        match = _TRACE_LINE.match(message.strip())
        if match is None:  # a unit's title line
            in_sps = "Sequence Parameter Set" in message and not fields
        elif in_sps:
            fields[match[1]] = int(match[2])
    return fields


def ffmpeg_fps(codec: str, fields: dict[str, int]) -> float | None:
    if codec == "h264":
        if not fields.get("timing_info_present_flag"):
            return None
        return fields["time_scale"] / (2 * fields["num_units_in_tick"])
    if not fields.get("vui_timing_info_present_flag"):
        return None
    return fields["vui_time_scale"] / fields["vui_num_units_in_tick"]


def check_against_ffmpeg(codec: str, annexb: bytes, fmt: VideoFormat) -> dict[str, int]:
    fields = ffmpeg_fields(codec, annexb)
    prefix = "" if codec == "h264" else "general_"
    assert fmt.profile == fields[f"{prefix}profile_idc"]
    assert fmt.level == fields[f"{prefix}level_idc"]
    assert fmt.fps == ffmpeg_fps(codec, fields)
    return fields


# --- streams from the encoders ----------------------------------------------------------------

ENCODED = [
    # (encoder, width, height, pix_fmt, params, expected profile_idc)
    ("libx264", 640, 360, "yuv420p", "", 100),
    ("libx264", 1920, 1080, "yuv420p", "", 100),  # 1088 coded, 8 lines cropped
    ("libx264", 1280, 720, "yuv420p", "", 100),
    ("libx264", 352, 288, "yuv420p", "", 100),
    ("libx264", 720, 576, "yuv420p", "", 100),
    ("libx264", 642, 362, "yuv420p", "", 100),  # cropped in both directions, in chroma units
    # Constrained Baseline: no chroma_format_idc, bit depths or scaling matrix flag
    ("libx264", 352, 288, "yuv420p", "cabac=0:8x8dct=0:bframes=0:weightp=0", 66),
    ("libx264", 642, 362, "gray", "", 100),  # ChromaArrayType 0: crop units of one sample
    ("libx264", 1920, 1080, "yuv422p", "", 122),  # SubHeightC 1
    ("libx264", 352, 288, "yuv444p", "", 244),
    ("libx264", 720, 576, "yuv420p", "interlaced=1", 100),  # frame_mbs_only_flag 0
    ("libx264", 1920, 1080, "yuv420p", "interlaced=1", 100),  # and cropped in field pairs
    # x264 sends scaling matrices in the PPS, never the SPS: see h264_sps_high_444() for those.
    ("libx264", 352, 288, "yuv444p", f"cqm4={CQM4}:cqm8={CQM8}", 244),
    ("libx264", 640, 360, "yuv420p", VUI_X264, 100),  # every VUI field before the timing
    ("libx265", 640, 360, "yuv420p", "", 1),
    ("libx265", 1920, 1080, "yuv420p", "", 1),  # conformance window
    ("libx265", 1280, 720, "yuv420p", "", 1),
    ("libx265", 352, 288, "yuv420p", "", 1),
    ("libx265", 720, 576, "yuv420p", "", 1),
    ("libx265", 642, 362, "yuv420p", "", 1),
    ("libx265", 642, 362, "gray", "", 4),
    ("libx265", 642, 362, "yuv422p", "", 4),
    ("libx265", 642, 362, "yuv444p", "", 4),
    ("libx265", 640, 360, "yuv420p", "temporal-layers=3", 1),  # sub-layers in profile_tier_level
    ("libx265", 640, 360, "yuv420p", "scaling-list=default", 1),
    ("libx265", 640, 360, "yuv420p", VUI_X265, 1),  # every VUI field before the timing
    ("libx265", 720, 576, "yuv420p", "interlace=tff", 1),
]


@pytest.mark.parametrize(("encoder", "width", "height", "pix_fmt", "params", "profile"), ENCODED)
def test_encoded_streams(
    encoder: str, width: int, height: int, pix_fmt: str, params: str, profile: int
) -> None:
    codec = CODEC[encoder]
    data = encode(encoder, width, height, pix_fmt, params)
    fmt = find_video_format(codec, data)
    assert fmt is not None
    assert (fmt.codec, fmt.width, fmt.height, fmt.profile) == (codec, width, height, profile)
    sps = nal_unit(codec, data, H264_SPS if codec == "h264" else H265_SPS)
    assert parse_sps(codec, sps) == parse_sps(codec, memoryview(sps)) == fmt
    check_against_ffmpeg(codec, data, fmt)
    assert fmt.fps == 25.0


def test_encoded_streams_reach_the_syntax_they_are_meant_to() -> None:
    # The parameter sets above only test what the encoders were persuaded to write.
    def fields(encoder: str, width: int, height: int, pix_fmt: str, params: str) -> dict[str, int]:
        return ffmpeg_fields(CODEC[encoder], encode(encoder, width, height, pix_fmt, params))

    assert fields("libx264", 1920, 1080, "yuv420p", "")["frame_crop_bottom_offset"] == 4
    assert fields("libx264", 642, 362, "gray", "")["frame_crop_right_offset"] == 14
    assert fields("libx264", 1920, 1080, "yuv422p", "")["frame_crop_bottom_offset"] == 8
    interlaced = fields("libx264", 1920, 1080, "yuv420p", "interlaced=1")
    assert interlaced["frame_mbs_only_flag"] == 0 and interlaced["frame_crop_bottom_offset"] == 2
    vui = fields("libx264", 640, 360, "yuv420p", VUI_X264)
    assert vui["aspect_ratio_idc"] == 255 and vui["chroma_loc_info_present_flag"] == 1
    assert vui["overscan_info_present_flag"] and vui["colour_description_present_flag"]
    assert fields("libx265", 642, 362, "gray", "")["chroma_format_idc"] == 0
    assert (
        fields("libx265", 640, 360, "yuv420p", "temporal-layers=3")["sps_max_sub_layers_minus1"]
        == 2
    )
    assert fields("libx265", 640, 360, "yuv420p", "scaling-list=default")[
        "scaling_list_enabled_flag"
    ]
    vui = fields("libx265", 640, 360, "yuv420p", VUI_X265)
    assert vui["default_display_window_flag"] and vui["chroma_loc_info_present_flag"]
    assert vui["aspect_ratio_info_present_flag"] and vui["colour_description_present_flag"]
    assert fields("libx265", 720, 576, "yuv420p", "interlace=tff")["field_seq_flag"] == 1


@pytest.mark.parametrize("encoder", ["libx264", "libx265"])
@pytest.mark.parametrize(
    ("rate", "fps"), [(Fraction(30000, 1001), 30000 / 1001), (Fraction(50), 50.0)]
)
def test_frame_rate(encoder: str, rate: Fraction, fps: float) -> None:
    fmt = find_video_format(CODEC[encoder], encode(encoder, 352, 288, rate=rate))
    assert fmt is not None and fmt.fps == pytest.approx(fps)


def test_custom_h265_scaling_lists(tmp_path: Path) -> None:
    # x265 reads HM's scaling list file; every matrix differs from its predecessor and from the
    # default, so each is sent in full (scaling_list_pred_mode_flag 1, DC for 16x16 and 32x32).
    lines = []
    for size, side in (("4X4", 4), ("8X8", 8), ("16X16", 8), ("32X32", 8)):
        kinds = ["INTRA", "INTER"]
        planes = ["LUMA", "CHROMAU", "CHROMAV"]  # x265 wants 32x32 chroma too, and compares it
        for n, (kind, plane) in enumerate((k, p) for k in kinds for p in planes):
            values = [8 + (i * (n + 3) + side) % 50 for i in range(side * side)]
            lines.append(f"{kind}{size}_{plane} =")
            lines += [",".join(map(str, values[r * side : (r + 1) * side])) for r in range(side)]
            if side == 8 and size != "8X8":
                lines.append(f"{kind}{size}_{plane}_DC =")
                lines.append(str(10 + n))
    path = tmp_path / "scaling.txt"
    path.write_text("\n".join(lines) + "\n")
    data = encode("libx265", 640, 360, params=f"scaling-list={path}")
    fmt = find_video_format("h265", data)
    assert fmt == VideoFormat("h265", 640, 360, 1, 63, 25.0)
    fields = check_against_ffmpeg("h265", data, fmt)
    assert fields["sps_scaling_list_data_present_flag"] == 1
    assert fields["scaling_list_pred_mode_flag[3][3]"] == 1


# --- captured streams -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "profile", "level"),
    [
        ("gb_h264_zlm.ps", "h264", 77, 30),
        ("gb_h265_zlm.ps", "h265", 1, 63),
        ("h264_640x360_25fps_10s_ffmpeg.ps", "h264", 77, 30),
        ("h265_640x360_25fps_10s_ffmpeg.ps", "h265", 1, 63),
    ],
)
def test_captured_streams(name: str, codec: str, profile: int, level: int) -> None:
    demuxer = PsDemuxer()
    units = demuxer.feed(load(f"media/{name}")) + demuxer.flush()
    keyframe = next(u for u in units if u.keyframe and u.codec == codec)
    fmt = find_video_format(codec, keyframe.data)
    assert fmt == VideoFormat(codec, 640, 360, profile, level, 25.0)
    # FFmpeg refuses ZLMediaKit's access unit delimiter, so it reads the SPS alone (and the VPS).
    sps = nal_unit(codec, keyframe.data, H264_SPS if codec == "h264" else H265_SPS)
    vps = nal_unit(codec, keyframe.data, H265_VPS) if codec == "h265" else b""
    check_against_ffmpeg(codec, b"\x00\x00\x01" + vps + b"\x00\x00\x01" + sps, fmt)


# --- parameter sets built bit by bit ----------------------------------------------------------


class Bits:
    """Writes syntax elements MSB first; ``nal()`` adds the stop bit and emulation prevention."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> Bits:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def ue(self, value: int) -> Bits:
        n = (value + 1).bit_length()
        return self.u(n - 1, 0).u(n, value + 1)

    def se(self, value: int) -> Bits:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self, header: bytes) -> bytes:
        bits = [*self.bits, 1] + [0] * (-(len(self.bits) + 1) % 8)
        rbsp = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
        out = bytearray(header)
        zeros = 0
        for byte in rbsp:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def h264_sps_poc_type_1() -> bytes:
    b = Bits().u(8, 77).u(8, 0x40).u(8, 31).ue(0)  # Main, level 3.1
    b.ue(0).ue(1)  # log2_max_frame_num_minus4, pic_order_cnt_type 1
    b.u(1, 0).se(-3).se(2).ue(3).se(2).se(-1).se(4)
    b.ue(4).u(1, 0).ue(44).ue(35)  # refs, gaps; 720 x 576 coded as 45 x 36 macroblocks
    b.u(1, 1).u(1, 1)  # frame_mbs_only_flag, direct_8x8_inference_flag
    b.u(1, 1).ue(4).ue(0).ue(0).ue(8)  # crop 8 left, 16 bottom: 712 x 560
    b.u(1, 1)  # vui_parameters_present_flag
    b.u(1, 1).u(8, 255).u(16, 64).u(16, 45)  # Extended_SAR
    b.u(1, 1).u(1, 0).u(1, 1).u(3, 1).u(1, 0).u(1, 1).u(24, 0x050606)
    b.u(1, 1).ue(1).ue(2)  # chroma_loc_info
    b.u(1, 1).u(32, 1001).u(32, 60000).u(1, 1)  # 29.97 frames per second
    b.u(1, 0).u(1, 0).u(1, 0).u(1, 0)  # no HRD, no pic_struct, no restrictions
    return b.nal(b"\x67")


def h264_sps_high_444(separate_planes: bool = False) -> bytes:
    b = Bits().u(8, 244).u(8, 0).u(8, 40).ue(1)  # High 4:4:4 Predictive, level 4, SPS 1
    b.ue(3).u(1, separate_planes).ue(2).ue(2).u(1, 0)  # 4:4:4, 10-bit, no transform bypass
    b.u(1, 1)  # seq_scaling_matrix_present_flag: twelve lists with 4:4:4
    for i in range(12):
        b.u(1, i % 4 != 3)
        if i % 4 == 3:
            continue  # not sent: fall-back rule
        if i == 4:
            b.se(-8)  # nextScale 0 at once: the default list
            continue
        for j in range(16 if i < 6 else 64):
            b.se((i + j) % 5 - 2)  # the running value stays within 5..11, never 0
    b.ue(2).ue(0).ue(2)  # log2_max_frame_num_minus4, POC type 0, log2_max_poc_lsb_minus4
    b.ue(2).u(1, 0).ue(119).ue(33)  # refs, gaps; 120 macroblocks by 34 field-pair rows
    b.u(1, 0).u(1, 1).u(1, 1)  # frame_mbs_only_flag 0, MBAFF, direct_8x8_inference_flag
    b.u(1, 1).ue(0).ue(4).ue(0).ue(4)  # crop 4 right, 8 bottom (two-line units): 1916 x 1080
    b.u(1, 1).u(1, 0).u(1, 0).u(1, 0).u(1, 0)  # VUI with timing only
    b.u(1, 1).u(32, 1).u(32, 60).u(1, 1)
    b.u(1, 0).u(1, 0).u(1, 0).u(1, 0)
    return b.nal(b"\x67")


def h265_sps_with_everything() -> bytes:
    b = Bits().u(4, 0).u(3, 0).u(1, 1)
    b.u(8, 0x01).u(32, 0x60000000).u(48, 0x900000000000).u(8, 120)  # Main, level 4
    b.ue(0).ue(1).ue(1928).ue(1088)  # 4:2:0, 1928 x 1088
    b.u(1, 1).ue(2).ue(2).ue(0).ue(4)  # conformance window: 1920 x 1080
    b.ue(0).ue(0).ue(4)  # 8-bit, log2_max_pic_order_cnt_lsb_minus4 4
    b.u(1, 1).ue(4).ue(2).ue(0)  # ordering info
    b.ue(0).ue(3).ue(0).ue(3).ue(2).ue(2)  # block sizes, hierarchy depths
    b.u(1, 1).u(1, 1)  # scaling lists, sent
    for size_id in range(4):
        for matrix_id in range(0, 6, 3 if size_id == 3 else 1):
            if matrix_id % 2:
                b.u(1, 0).ue(1 if size_id < 3 or matrix_id else 0)  # copy
                continue
            b.u(1, 1)
            if size_id > 1:
                b.se(8)
            for i in range(min(64, 1 << (4 + 2 * size_id))):
                b.se((i % 7) - 3)
    b.u(1, 1).u(1, 1)  # amp, sample adaptive offset
    b.u(1, 1).u(4, 7).u(4, 7).ue(0).ue(2).u(1, 1)  # PCM
    b.ue(4)  # num_short_term_ref_pic_sets
    b.ue(2).ue(1).ue(0).u(1, 1).ue(1).u(1, 1).ue(1).u(1, 0)  # -1 -3 | +2
    b.u(1, 1).u(1, 1).ue(0)  # predicted from set 0 with deltaRps -1
    for used, use_delta in [(1, 1), (0, 1), (0, 0), (1, 1)]:  # -1 -3 +2 -1: -2 -4 (dropped) -1
        b.u(1, used)
        if not used:
            b.u(1, use_delta)
    b.u(1, 1).u(1, 0).ue(1)  # predicted from set 1 with deltaRps +2
    for _ in range(4):  # -1 -2 -4 and the new one, moved by +2: +1, 0 (dropped), -2, +2
        b.u(1, 1)
    b.u(1, 0).ue(0).ue(0)  # an empty set
    b.u(1, 1).ue(2).u(8, 17).u(1, 1).u(8, 200).u(1, 0)  # long-term pictures
    b.u(1, 1).u(1, 1)  # temporal MVP, strong intra smoothing
    b.u(1, 1)  # vui_parameters_present_flag
    b.u(1, 1).u(8, 255).u(16, 4).u(16, 3)  # Extended_SAR
    b.u(1, 1).u(1, 1).u(1, 1).u(3, 5).u(1, 1).u(1, 1).u(24, 0x010101)
    b.u(1, 1).ue(0).ue(0)
    b.u(1, 0).u(1, 0).u(1, 0)  # neutral chroma, field_seq, frame_field_info
    b.u(1, 1).ue(1).ue(1).ue(0).ue(0)  # default display window
    b.u(1, 1).u(32, 1).u(32, 50).u(1, 0).u(1, 0)  # 50 Hz, no POC proportionality, no HRD
    b.u(1, 0).u(1, 0)  # no bitstream restriction, no extensions
    return b.nal(b"\x42\x01")


@cache
def x265_vps() -> bytes:
    return nal_unit("h265", encode("libx265", 640, 360), H265_VPS)


def test_h264_built_sps() -> None:
    sps = h264_sps_poc_type_1()
    fmt = parse_sps("h264", sps)
    assert fmt == VideoFormat("h264", 712, 560, 77, 31, 30000 / 1001)
    fields = check_against_ffmpeg("h264", b"\x00\x00\x00\x01" + sps, fmt)
    assert fields["pic_order_cnt_type"] == 1 and fields["aspect_ratio_idc"] == 255


@pytest.mark.parametrize("separate_planes", [False, True])
def test_h264_built_sps_with_scaling_lists(separate_planes: bool) -> None:
    # With separate colour planes ChromaArrayType is 0, which crops by the same units as 4:4:4.
    sps = h264_sps_high_444(separate_planes)
    fmt = parse_sps("h264", sps)
    assert fmt == VideoFormat("h264", 1916, 1080, 244, 40, 30.0)
    fields = check_against_ffmpeg("h264", b"\x00\x00\x00\x01" + sps, fmt)
    assert fields["seq_scaling_list_present_flag[10]"] == 1
    assert fields["frame_mbs_only_flag"] == 0
    assert fields["separate_colour_plane_flag"] == separate_planes


def test_h265_built_sps() -> None:
    sps = h265_sps_with_everything()
    fmt = parse_sps("h265", sps)
    assert fmt == VideoFormat("h265", 1920, 1080, 1, 120, 50.0)
    annexb = b"\x00\x00\x00\x01" + x265_vps() + b"\x00\x00\x00\x01" + sps
    fields = check_against_ffmpeg("h265", annexb, fmt)
    assert fields["pcm_enabled_flag"] == 1 and fields["num_long_term_ref_pics_sps"] == 2
    assert fields["abs_delta_rps_minus1"] == 1 and "use_delta_flag[1]" in fields  # last predicted
    assert fields["default_display_window_flag"] == 1
    assert find_video_format("h265", annexb) == fmt


def test_emulation_prevention_is_removed() -> None:
    # num_units_in_tick 1 is 31 zero bits: every encoder's SPS carries 00 00 03 there.
    for codec, encoder, nal_type in (("h264", "libx264", H264_SPS), ("h265", "libx265", H265_SPS)):
        sps = nal_unit(codec, encode(encoder, 352, 288), nal_type)
        assert b"\x00\x00\x03" in sps
        assert parse_sps(codec, sps).fps == 25.0


# --- what is not an SPS -----------------------------------------------------------------------


def sps_of(encoder: str) -> bytes:
    codec = CODEC[encoder]
    return nal_unit(codec, encode(encoder, 352, 288), H264_SPS if codec == "h264" else H265_SPS)


@pytest.mark.parametrize(
    ("codec", "nal", "message"),
    [
        ("h264", b"", "not an H.264 SPS NAL unit"),
        ("h264", b"\x68\xce\x38\x80", "not an H.264 SPS NAL unit"),  # a PPS
        ("h264", b"\xe7\x64\x00\x1f", "not an H.264 SPS NAL unit"),  # forbidden_zero_bit
        ("h264", b"\x67\x64\x00\x1f", "SPS is truncated"),
        (
            "h264",
            b"\x67\x42\x00\x1f\x00\x00\x00\x00\x01",
            "SPS has an exp-Golomb code longer than 32 bits",
        ),
        ("h264", b"\x67\x42\x00\x1f\x04\x20", "SPS has a value out of range"),  # SPS id 32
        ("h265", b"\x42", "not an H.265 SPS NAL unit"),
        ("h265", b"\x40\x01\x0c\x01", "not an H.265 SPS NAL unit"),  # a VPS
        ("h265", b"\x42\x09\x01\x01", "H.265 SPS is not for the base layer"),
        ("h265", b"\x42\x01\x01\x01\x60", "SPS is truncated"),
        ("h265", b"\x42\x01\x0f", "SPS has a value out of range"),  # sps_max_sub_layers_minus1 7
        ("vp8", b"\x67\x42\x00\x1f", "SPS codec is neither h264 nor h265"),
    ],
)
def test_errors(codec: str, nal: bytes, message: str) -> None:
    with pytest.raises(SpsError) as info:
        parse_sps(codec, nal)
    assert str(info.value) == message


def test_zero_picture_size_is_an_error() -> None:
    b = Bits().u(4, 0).u(3, 0).u(1, 1).u(8, 1).u(80, 0).u(8, 90).ue(0).ue(1).ue(0).ue(8).u(1, 0)
    with pytest.raises(SpsError, match="^SPS picture size is out of range$"):
        parse_sps("h265", b.nal(b"\x42\x01"))
    b = Bits().u(4, 0).u(3, 0).u(1, 1).u(8, 1).u(80, 0).u(8, 90).ue(0).ue(1).ue(16).ue(16)
    with pytest.raises(SpsError, match="^SPS picture size is out of range$"):
        parse_sps("h265", b.u(1, 1).ue(4).ue(4).ue(0).ue(0).nal(b"\x42\x01"))  # cropped to 0


def test_a_broken_vui_only_loses_the_frame_rate() -> None:
    sps = h264_sps_poc_type_1()
    cut = parse_sps("h264", sps[:16])  # the VUI stops inside the SAR
    assert (cut.width, cut.height, cut.fps) == (712, 560, None)


def test_find_video_format() -> None:
    h264 = encode("libx264", 352, 288)
    assert find_video_format("h264", memoryview(h264)) == parse_sps("h264", sps_of("libx264"))
    assert find_video_format("h264", h264[h264.find(b"\x00\x00\x01\x68") :]) is None  # from PPS
    assert find_video_format("h264", b"") is None
    assert find_video_format("vp8", h264) is None
    # The first SPS decides, even if broken; a 3-byte start code and no trailing zeros are fine.
    broken = b"\x00\x00\x01\x67\x64\x00"
    assert find_video_format("h264", broken + h264) is None
    assert find_video_format("h264", b"\x00\x00\x01" + sps_of("libx264")) is not None
    h265 = encode("libx265", 352, 288)
    other_layer = b"\x00\x00\x01\x42\x09" + sps_of("libx265")[2:]
    assert find_video_format("h265", other_layer + h265) == parse_sps("h265", sps_of("libx265"))
    assert find_video_format("h264", h265) is None


# --- any input --------------------------------------------------------------------------------


@given(st.binary(max_size=64), st.sampled_from(["h264", "h265"]))
def test_any_bytes_parse_or_raise_sps_error(data: bytes, codec: str) -> None:
    header = b"\x67" if codec == "h264" else b"\x42\x01"
    for nal in (data, header + data):
        try:
            fmt = parse_sps(codec, nal)
        except SpsError:
            continue
        assert 0 < fmt.width <= 65535 and 0 < fmt.height <= 65535
        assert fmt.fps is None or fmt.fps > 0


@given(st.sampled_from(["h264", "h265"]), st.integers(0, 200), st.binary(max_size=4))
def test_cut_or_extended_sps_parse_or_raise_sps_error(codec: str, cut: int, tail: bytes) -> None:
    encoder = "libx264" if codec == "h264" else "libx265"
    built = (
        [h264_sps_poc_type_1(), h264_sps_high_444()]
        if codec == "h264"
        else [h265_sps_with_everything()]
    )
    for sps in (sps_of(encoder), *built):
        nal = sps[:cut] + tail
        try:
            fmt: VideoFormat | None = parse_sps(codec, nal)
        except SpsError:
            fmt = None
        found = find_video_format(codec, b"\x00\x00\x01" + nal)
        if cut >= len(sps) and not tail:
            assert found == fmt == parse_sps(codec, sps)
        else:
            assert found is None or isinstance(found, VideoFormat)
