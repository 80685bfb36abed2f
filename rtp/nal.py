"""Annex-B NAL unit helpers for H.264 and H.265 (ITU-T H.264 7.3.1 and Annex B; H.265 7.3.1.2).

GB/T 28181 App. C carries video as Annex-B byte streams inside PES packets; when a device sends
no program stream map (or a wrong one) the codec is told apart by its NAL unit headers. These
helpers look at headers only and never decode slice data beyond the first bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

__all__ = [
    "H264_AUD",
    "H264_IDR",
    "H264_PPS",
    "H264_SEI",
    "H264_SPS",
    "H265_AUD",
    "H265_PPS",
    "H265_SPS",
    "H265_VPS",
    "codec_of_nal_headers",
    "detect_video_codec",
    "is_keyframe",
    "iter_nal_units",
    "next_access_unit",
]

_START = b"\x00\x00\x01"

H264_IDR = 5
H264_SEI = 6
H264_SPS = 7
H264_PPS = 8
H264_AUD = 9

H265_VPS = 32
H265_SPS = 33
H265_PPS = 34
H265_AUD = 35
_H265_PREFIX_SEI = 39
_H265_IRAP = range(16, 22)  # BLA_W_LP .. CRA_NUT (H.265 table 7-1)

# NAL types that open a new access unit once a picture has been seen (H.264 7.4.1.2.3,
# H.265 7.4.2.4.4): delimiter, parameter sets, prefix SEI and reserved prefix types.
_H264_AU_OPENERS = frozenset({H264_SEI, H264_SPS, H264_PPS, H264_AUD})
_H265_AU_OPENERS = frozenset(
    {H265_VPS, H265_SPS, H265_PPS, H265_AUD, _H265_PREFIX_SEI, *range(41, 45), *range(48, 56)}
)


def _nal_type(codec: str, header: int) -> int:
    return header & 0x1F if codec == "h264" else (header >> 1) & 0x3F


def iter_nal_units(codec: str, annexb: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, nal_type)`` for each NAL unit of an Annex-B byte stream.

    ``offset`` is the index of the NAL header byte (just after ``00 00 01``); ``codec`` is
    ``"h264"`` or ``"h265"`` and only selects how the type is read from the header.
    """
    data = bytes(annexb) if isinstance(annexb, memoryview) else annexb
    pos = data.find(_START)
    end = len(data)
    while pos >= 0 and pos + 3 < end:
        header = pos + 3
        yield header, _nal_type(codec, data[header])
        pos = data.find(_START, header)


def next_access_unit(
    codec: str, data: bytes | bytearray, pos: int = 0, seen_vcl: bool = False
) -> tuple[int | None, int, bool]:
    """Scan ``data`` from ``pos`` for the start of the next access unit.

    ``seen_vcl`` says whether a slice of the current picture was already met. Returns
    ``(cut, resume, seen_vcl)``: ``cut`` is the offset where the next access unit begins
    (including the zero byte of a 4-byte start code) or ``None``; ``resume`` is where to continue
    scanning (just after the start code found, or where an incomplete NAL header waits for more
    bytes); ``seen_vcl`` is the state to continue with (for the new unit when ``cut`` is set).
    Only codecs ``"h264"`` and ``"h265"`` are understood.
    """
    h264 = codec == "h264"
    openers = _H264_AU_OPENERS if h264 else _H265_AU_OPENERS
    need = 2 if h264 else 3  # header bytes plus the byte holding the first-slice bit
    end = len(data)
    k = data.find(_START, pos)
    while k >= 0:
        header = k + 3
        if header + need > end:
            return None, k, seen_vcl
        b0 = data[header]
        nal_type = b0 & 0x1F if h264 else (b0 >> 1) & 0x3F
        vcl = nal_type in (1, 2, 5) if h264 else nal_type <= 31
        # first_mb_in_slice == 0 (ue(v) starting with 1) / first_slice_segment_in_pic_flag
        opens = nal_type in openers or (vcl and data[header + need - 1] & 0x80 != 0)
        if seen_vcl and opens:
            cut = k - 1 if k > 0 and data[k - 1] == 0 else k
            return cut, header, vcl
        seen_vcl = seen_vcl or vcl
        k = data.find(_START, header)
    return None, max(pos, end - 2), seen_vcl


def is_keyframe(codec: str, data: bytes | bytearray | memoryview) -> bool:
    """True if the access unit holds an IDR picture (H.264) or an IRAP picture (H.265)."""
    if codec == "h264":
        return any(t == H264_IDR for _, t in iter_nal_units(codec, data))
    if codec == "h265":
        return any(t in _H265_IRAP for _, t in iter_nal_units(codec, data))
    return False


def _h265_plausible(data: bytes | bytearray, header: int) -> bool:
    # forbidden_zero_bit 0, nuh_layer_id 0 and nuh_temporal_id_plus1 in 1..7.
    if header + 1 >= len(data):
        return False
    b0, b1 = data[header], data[header + 1]
    return b0 & 0x81 == 0 and 1 <= b1 <= 7


def detect_video_codec(data: bytes | bytearray | memoryview, max_nals: int = 64) -> str | None:
    """Tell H.264 from H.265 by the NAL headers of an Annex-B stream; ``None`` if undecided.

    H.265 is recognised by a VPS/SPS/PPS/AUD or IRAP header with layer 0 and a valid temporal id
    (``40 01``, ``42 01``, ``44 01``, ``46 01``, ``26 01``...). H.264 is recognised by an SPS, PPS,
    IDR or AUD header that is not a plausible H.265 header (``67``, ``68``, ``65``, ``09 F0``...).
    """
    raw = bytes(data) if isinstance(data, memoryview) else data
    for count, (header, _) in enumerate(iter_nal_units("h264", raw)):
        if count >= max_nals:
            break
        found = _codec_at(raw, header)
        if found is not None:
            return found
    return None


def codec_of_nal_headers(
    data: bytes | bytearray, headers: Sequence[int], max_nals: int = 64
) -> str | None:
    """`detect_video_codec` for a caller that has found the NAL headers already: ``headers``
    are their offsets in ``data``, all of them, in order (as ``iter_nal_units`` yields them)."""
    for header in headers[:max_nals]:
        found = _codec_at(data, header)
        if found is not None:
            return found
    return None


def _codec_at(data: bytes | bytearray, header: int) -> str | None:
    """The codec the NAL header at ``header`` proves, if any (see `detect_video_codec`)."""
    b0 = data[header]
    if b0 & 0x80:
        return None
    if _h265_plausible(data, header):
        t265 = (b0 >> 1) & 0x3F
        if t265 in (H265_VPS, H265_SPS, H265_PPS, H265_AUD) or t265 in _H265_IRAP:
            return "h265"
        return None
    t264 = b0 & 0x1F
    if t264 in (H264_SPS, H264_PPS, H264_IDR, H264_AUD) and (b0 & 0x60 or t264 == H264_AUD):
        return "h264"
    return None
