"""Picture size, profile, level and frame rate from H.264 and H.265 sequence parameter sets.

ITU-T H.264 7.3.2.1.1 (with E.1.1 for the VUI) and ITU-T H.265 7.3.2.2 (with 7.3.4, 7.3.7 and
E.2.1). Only the fields that lead to the picture size and the VUI timing information are kept;
everything in between is read and skipped, never guessed.

The size comes from the SPS proper: anything malformed there raises :class:`SpsError`. The
frame rate comes from the optional VUI at the end; a VUI that is missing, has no timing
information or cannot be read gives ``fps=None`` without failing the whole parse, because devices
get the VUI wrong far more often than the picture size.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RtpError
from .nal import H264_SPS, H265_SPS, iter_nal_units

__all__ = ["SpsError", "VideoFormat", "find_video_format", "parse_sps"]

# Largest picture side accepted. The highest levels of both codecs stop near 16888 samples;
# anything past 16 bits is garbage that happened to decode.
_MAX_SIDE = 65535

# H.264 profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices.
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})

# (SubWidthC, SubHeightC) by chroma_format_idc (H.264 table 6-1, H.265 table 6-1).
_SUB_WH = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}


class SpsError(RtpError):
    """Bytes that are not a valid H.264 or H.265 sequence parameter set."""


@dataclass(frozen=True, slots=True)
class VideoFormat:
    """What a sequence parameter set says about the pictures that follow it.

    ``width`` and ``height`` are the displayed size in luma samples, after cropping (H.264
    frame cropping, H.265 conformance window). ``profile`` and ``level`` are ``profile_idc`` and
    ``level_idc`` as coded (H.265: the general ones; level 4.1 is 41 in H.264 and 123 in H.265).
    ``fps`` is the frame rate from the VUI timing information, ``None`` when not sent. An H.265
    stream of field pictures (``field_seq_flag``) is described as coded: size and rate of fields.
    """

    codec: str
    width: int
    height: int
    profile: int
    level: int
    fps: float | None


class _Bits:
    """MSB-first bit reader over an RBSP (emulation prevention already removed)."""

    __slots__ = ("_left", "_value")

    def __init__(self, rbsp: bytes) -> None:
        self._value = int.from_bytes(rbsp, "big")
        self._left = 8 * len(rbsp)  # bits not yet read

    def u(self, n: int) -> int:
        if n > self._left:
            raise SpsError("SPS is truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def flag(self) -> bool:
        return self.u(1) == 1

    def skip(self, n: int) -> None:
        if n > self._left:
            raise SpsError("SPS is truncated")
        self._left -= n

    def ue(self, limit: int = 0xFFFFFFFE) -> int:
        """ue(v) (H.264 9.1); values above ``limit`` are a range error."""
        rest = self._value & ((1 << self._left) - 1)
        if rest == 0:
            raise SpsError("SPS is truncated")
        zeros = self._left - rest.bit_length()
        if zeros > 31:
            raise SpsError("SPS has an exp-Golomb code longer than 32 bits")
        self._left -= zeros
        value = self.u(zeros + 1) - 1
        if value > limit:
            raise SpsError("SPS has a value out of range")
        return value

    def se(self, low: int = -(2**31), high: int = 2**31 - 1) -> int:
        """se(v) (H.264 9.1.1); values outside ``low..high`` are a range error."""
        k = self.ue()
        value = (k + 1) // 2 if k & 1 else -(k // 2)
        if not low <= value <= high:
            raise SpsError("SPS has a value out of range")
        return value


def _rbsp(nal: bytes | bytearray | memoryview, header_size: int) -> bytes:
    # Removing 0x03 from every 00 00 03, scanning left to right without overlap, is exactly the
    # emulation prevention of H.264 7.4.1 / H.265 7.4.2.
    return bytes(nal[header_size:]).replace(b"\x00\x00\x03", b"\x00\x00")


def _size(
    width: int, height: int, sub_w: int, sub_h: int, crop: tuple[int, int, int, int]
) -> tuple[int, int]:
    left, right, top, bottom = crop
    width -= sub_w * (left + right)
    height -= sub_h * (top + bottom)
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise SpsError("SPS picture size is out of range")
    return width, height


# --- H.264 ------------------------------------------------------------------------------------


def _h264_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + bits.se(-128, 127) + 256) % 256
        last = last if nxt == 0 else nxt


def _h264(nal: bytes | bytearray | memoryview) -> VideoFormat:
    if len(nal) < 1 or nal[0] & 0x80 or nal[0] & 0x1F != H264_SPS:
        raise SpsError("not an H.264 SPS NAL unit")
    bits = _Bits(_rbsp(nal, 1))
    profile = bits.u(8)
    bits.skip(8)  # constraint_set0..5_flag, reserved_zero_2bits
    level = bits.u(8)
    bits.ue(31)  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_planes = False
    if profile in _H264_HIGH_PROFILES:
        chroma_format_idc = bits.ue(3)
        if chroma_format_idc == 3:
            separate_planes = bits.flag()
        bits.ue(6)  # bit_depth_luma_minus8
        bits.ue(6)  # bit_depth_chroma_minus8
        bits.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.flag():  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == 3 else 8):
                if bits.flag():  # seq_scaling_list_present_flag[i]
                    _h264_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue(12)  # log2_max_frame_num_minus4
    poc_type = bits.ue(2)
    if poc_type == 0:
        bits.ue(12)  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.skip(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue(255)):  # num_ref_frames_in_pic_order_cnt_cycle
            bits.se()  # offset_for_ref_frame[i]
    bits.ue()  # max_num_ref_frames
    bits.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue(_MAX_SIDE) + 1
    height_map_units = bits.ue(_MAX_SIDE) + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.skip(1)  # mb_adaptive_frame_field_flag
    bits.skip(1)  # direct_8x8_inference_flag
    crop = (0, 0, 0, 0)
    if bits.flag():  # frame_cropping_flag
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    vui = bits.flag()
    # 7.4.2.1.1: CropUnitX/CropUnitY from ChromaArrayType and frame_mbs_only_flag.
    if separate_planes or chroma_format_idc == 0:
        sub_w, sub_h = 1, 1
    else:
        sub_w, sub_h = _SUB_WH[chroma_format_idc]
    width, height = _size(
        width_mbs * 16,
        height_map_units * 16 * (2 - frame_mbs_only),
        sub_w,
        sub_h * (2 - frame_mbs_only),
        crop,
    )
    fps = None
    if vui:
        try:
            fps = _h264_vui_fps(bits)
        except SpsError:
            fps = None
    return VideoFormat("h264", width, height, profile, level, fps)


def _skip_video_info(bits: _Bits) -> None:
    # The head of the VUI that H.264 E.1.1 and H.265 E.2.1 share, up to chroma_loc_info.
    if bits.flag():  # aspect_ratio_info_present_flag
        if bits.u(8) == 255:  # aspect_ratio_idc == Extended_SAR
            bits.skip(32)  # sar_width, sar_height
    if bits.flag():  # overscan_info_present_flag
        bits.skip(1)  # overscan_appropriate_flag
    if bits.flag():  # video_signal_type_present_flag
        bits.skip(4)  # video_format, video_full_range_flag
        if bits.flag():  # colour_description_present_flag
            bits.skip(24)  # colour_primaries, transfer_characteristics, matrix_coefficients
    if bits.flag():  # chroma_loc_info_present_flag
        bits.ue(5)  # chroma_sample_loc_type_top_field
        bits.ue(5)  # chroma_sample_loc_type_bottom_field


def _rate(time_scale: int, ticks: int) -> float | None:
    return time_scale / ticks if time_scale and ticks else None


def _h264_vui_fps(bits: _Bits) -> float | None:
    _skip_video_info(bits)
    if not bits.flag():  # timing_info_present_flag
        return None
    num_units_in_tick = bits.u(32)
    time_scale = bits.u(32)
    # E.2.1: a frame lasts two ticks (one per field).
    return _rate(time_scale, 2 * num_units_in_tick)


# --- H.265 ------------------------------------------------------------------------------------


def _h265_profile_tier_level(bits: _Bits, max_sub_layers_minus1: int) -> tuple[int, int]:
    bits.skip(3)  # general_profile_space, general_tier_flag
    profile = bits.u(5)
    bits.skip(32 + 4 + 43 + 1)  # compatibility flags, source flags, constraints, inbld/reserved
    level = bits.u(8)
    present = [(bits.flag(), bits.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        bits.skip(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.skip(88 * profile_present + 8 * level_present)
    return profile, level


def _h265(nal: bytes | bytearray | memoryview) -> VideoFormat:
    if len(nal) < 2 or nal[0] & 0x80 or (nal[0] >> 1) & 0x3F != H265_SPS:
        raise SpsError("not an H.265 SPS NAL unit")
    if (nal[0] & 1) << 5 | nal[1] >> 3:
        # nuh_layer_id > 0: multi-layer extensions change the syntax (F.7.3.2.2.1).
        raise SpsError("H.265 SPS is not for the base layer")
    bits = _Bits(_rbsp(nal, 2))
    bits.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    if max_sub_layers_minus1 > 6:
        raise SpsError("SPS has a value out of range")
    bits.skip(1)  # sps_temporal_id_nesting_flag
    profile, level = _h265_profile_tier_level(bits, max_sub_layers_minus1)
    bits.ue(15)  # sps_seq_parameter_set_id
    chroma_format_idc = bits.ue(3)
    separate_planes = chroma_format_idc == 3 and bits.flag()
    coded_width = bits.ue(_MAX_SIDE)
    coded_height = bits.ue(_MAX_SIDE)
    crop = (0, 0, 0, 0)
    if bits.flag():  # conformance_window_flag
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    # 7.4.3.2.1: the offsets count chroma samples (SubWidthC, SubHeightC; 1 when ChromaArrayType 0).
    sub_w, sub_h = (1, 1) if separate_planes else _SUB_WH[chroma_format_idc]
    width, height = _size(coded_width, coded_height, sub_w, sub_h, crop)
    try:
        fps = _h265_fps(bits, max_sub_layers_minus1)
    except SpsError:
        fps = None
    return VideoFormat("h265", width, height, profile, level, fps)


def _h265_scaling_list_data(bits: _Bits) -> None:
    for size_id in range(4):
        for _ in range(0, 6, 3 if size_id == 3 else 1):
            if not bits.flag():  # scaling_list_pred_mode_flag
                bits.ue(5)  # scaling_list_pred_matrix_id_delta
                continue
            if size_id > 1:
                bits.se(-7, 247)  # scaling_list_dc_coef_minus8
            for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                bits.se(-128, 127)  # scaling_list_delta_coef


def _h265_st_ref_pic_sets(bits: _Bits, count: int) -> None:
    # 7.3.7 and the derivation in 7.4.8: each set is kept as its negative and positive POC deltas,
    # because an inter-predicted set codes one flag per delta of the set before it.
    sets: list[tuple[list[int], list[int]]] = []
    for idx in range(count):
        if idx and bits.flag():  # inter_ref_pic_set_prediction_flag
            ref_s0, ref_s1 = sets[idx - 1]
            sign = bits.u(1)
            delta_rps = (1 - 2 * sign) * (bits.ue(2**15 - 1) + 1)
            s0: list[int] = []
            s1: list[int] = []
            for d_poc in [*ref_s0, *ref_s1, 0]:
                used = bits.flag()  # used_by_curr_pic_flag[j]
                if used or bits.flag():  # use_delta_flag[j]
                    d_poc += delta_rps
                    if d_poc < 0:
                        s0.append(d_poc)
                    elif d_poc > 0:
                        s1.append(d_poc)
            s0.sort(reverse=True)
            s1.sort()
        else:
            num_negative = bits.ue(16)
            num_positive = bits.ue(16)
            s0 = _h265_deltas(bits, num_negative, -1)
            s1 = _h265_deltas(bits, num_positive, 1)
        if len(s0) + len(s1) > 16:
            raise SpsError("SPS has a value out of range")
        sets.append((s0, s1))


def _h265_deltas(bits: _Bits, n: int, direction: int) -> list[int]:
    out: list[int] = []
    poc = 0
    for _ in range(n):
        poc += direction * (bits.ue(2**15 - 1) + 1)  # delta_poc_sX_minus1
        bits.skip(1)  # used_by_curr_pic_sX_flag
        out.append(poc)
    return out


def _h265_fps(bits: _Bits, max_sub_layers_minus1: int) -> float | None:
    bits.ue(8)  # bit_depth_luma_minus8
    bits.ue(8)  # bit_depth_chroma_minus8
    poc_lsb_bits = bits.ue(12) + 4
    ordering_info = bits.flag()  # sps_sub_layer_ordering_info_present_flag
    for _ in range(max_sub_layers_minus1 + 1 if ordering_info else 1):
        bits.ue(15)  # sps_max_dec_pic_buffering_minus1
        bits.ue()  # sps_max_num_reorder_pics
        bits.ue()  # sps_max_latency_increase_plus1
    for _ in range(6):  # luma coding and transform block sizes, transform hierarchy depths
        bits.ue()
    if bits.flag() and bits.flag():  # scaling_list_enabled_flag, sps_scaling_list_data_present
        _h265_scaling_list_data(bits)
    bits.skip(2)  # amp_enabled_flag, sample_adaptive_offset_enabled_flag
    if bits.flag():  # pcm_enabled_flag
        bits.skip(8)  # pcm_sample_bit_depth_luma_minus1, pcm_sample_bit_depth_chroma_minus1
        bits.ue()  # log2_min_pcm_luma_coding_block_size_minus3
        bits.ue()  # log2_diff_max_min_pcm_luma_coding_block_size
        bits.skip(1)  # pcm_loop_filter_disabled_flag
    _h265_st_ref_pic_sets(bits, bits.ue(64))
    if bits.flag():  # long_term_ref_pics_present_flag
        for _ in range(bits.ue(32)):  # num_long_term_ref_pics_sps
            bits.skip(poc_lsb_bits + 1)  # lt_ref_pic_poc_lsb_sps, used_by_curr_pic_lt_sps_flag
    bits.skip(2)  # sps_temporal_mvp_enabled_flag, strong_intra_smoothing_enabled_flag
    if not bits.flag():  # vui_parameters_present_flag
        return None
    _skip_video_info(bits)
    bits.skip(3)  # neutral_chroma_indication_flag, field_seq_flag, frame_field_info_present_flag
    if bits.flag():  # default_display_window_flag
        for _ in range(4):
            bits.ue()
    if not bits.flag():  # vui_timing_info_present_flag
        return None
    num_units_in_tick = bits.u(32)
    return _rate(bits.u(32), num_units_in_tick)


# --- public -----------------------------------------------------------------------------------


def parse_sps(codec: str, nal: bytes | bytearray | memoryview) -> VideoFormat:
    """Parse one SPS NAL unit (header included, start code not) of ``codec`` ``"h264"``/``"h265"``.

    Raises :class:`SpsError` for anything that is not a well-formed SPS as far as the picture
    size; a VUI that cannot be read only leaves ``fps`` as ``None``.
    """
    if codec == "h264":
        return _h264(nal)
    if codec == "h265":
        return _h265(nal)
    raise SpsError("SPS codec is neither h264 nor h265")


def find_video_format(codec: str, annexb: bytes | bytearray | memoryview) -> VideoFormat | None:
    """The format from the first SPS of an Annex-B access unit, or ``None``.

    ``None`` also when that SPS is broken, or the codec is neither ``"h264"`` nor ``"h265"``:
    this is called on live streams, where a bad parameter set is one more thing a device gets
    wrong, and the caller waits for the next keyframe either way. H.265 SPSs of layers other than
    the base layer are passed over.
    """
    if codec not in ("h264", "h265"):
        return None
    data = bytes(annexb)
    sps_type = H264_SPS if codec == "h264" else H265_SPS
    for start, nal_type in iter_nal_units(codec, data):
        if nal_type != sps_type:
            continue
        if codec == "h265" and (start + 1 >= len(data) or data[start + 1] >> 3 or data[start] & 1):
            continue
        end = data.find(b"\x00\x00\x01", start)
        # The zeros before the next start code (4-byte start code, trailing_zero_8bits) are not
        # part of this NAL unit; an SPS always ends with the rbsp_stop_one_bit.
        nal = data[start : len(data) if end < 0 else end].rstrip(b"\x00")
        try:
            return parse_sps(codec, nal)
        except SpsError:
            return None
    return None
