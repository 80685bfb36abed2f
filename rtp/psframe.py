"""Per-frame MPEG-PS demuxing for camera-style streams, with :class:`rtp.ps.PsDemuxer` as fallback.

GB/T 28181 cameras (and :class:`rtp.psmux.PsMuxer`) send one frame per pack: ``pack header
[system header, PSM] PES...``, and the RTP layer delimits frames (one timestamp per frame,
marker on its last packet). :class:`PsFrameDemuxer` takes such a frame whole (the frame's RTP
payloads joined) and walks it by length fields: pack header (14 bytes plus stuffing), system
header, PSM and PES packets (6 bytes plus PES_packet_length). The only byte scan is one
search pass over the frame's video payload for NAL start codes, which proves that the
frame holds exactly one access unit and gives the keyframe flag (and, on the first frames
until the codec shows, the NAL headers ``rtp.nal.detect_video_codec`` would look at). The
search is ``_find_start``: a compiled regular expression here, and in the compiled build
(``tools/build_native.py``) the C function ``rtp._startcode.find``, which gives the same
results several times faster.

Equivalence. For every frame it accepts (the fast path), the units are exactly those
``PsDemuxer`` gives for the same byte stream, fed whole or frame by frame (same stream id,
codec, PTS, DTS, keyframe, data, ``ps_bytes`` and stream ``offset``; the counters agree too).
Timing differs: ``PsDemuxer`` ends a video unit only when the next access unit starts, so it
returns a frame's video unit (and units queued behind it) from a later call or from
``flush()``; here the frame boundary proves the end and a frame's units come back from the call
that fed it, one frame earlier. The exception: when a frame's video payload ends with a zero
byte (ZLMediaKit's H.265 frames do), ``PsDemuxer`` gives that byte to the next unit if the next
frame starts with a 3-byte start code, so such a frame's units wait for the next video frame
(or ``flush()``), as in ``PsDemuxer``.

A frame is accepted only when all of this holds, so that ``PsDemuxer`` would cut exactly at
the frame's edges and read every structure the way the walk does:

- it starts with an MPEG-2 pack header; every structure starts with ``00 00 01`` and its length
  stays inside the frame; the frame ends where its last elementary PES ends; with the frames
  since the last video frame (whose unit ``PsDemuxer`` still holds open) it makes at most 60
  units and ``max_buffered`` bytes (``PsDemuxer`` closes the oldest unit beyond 64 waiting
  units, and cuts one still open further back than ``max_buffered``); its video takes fewer
  than ``rtp.ps.MAX_UNIT_PES`` PES packets (``PsDemuxer`` ends a unit at that many);
- every PES packet has a nonzero PES_packet_length and an MPEG-2 PES header; no end code;
- a program stream map, once seen, never changes; every elementary stream of the frame is in
  it and video is H.264 or H.265 (a detected codec, see ``rtp.nal.detect_video_codec``, must
  agree); one video stream id for the whole stream;
- the first video PES has a PTS, at least 4 payload bytes, and no other video PES of the frame
  carries a different PTS;
- the video payload starts with a start code (``00 00 01`` or ``00 00 00 01``; only the latter
  after a payload ending with a zero byte) whose NAL opens an access unit, no later NAL opens
  another one after a slice, a slice is present, every NAL header is complete and none is a
  system start code (0xB9 and up).

Fallback. Any other frame, and every frame after it, goes to an internal ``PsDemuxer``
(``slow_frames``), with offsets shifted to stream offsets. It is first given the frames since
the last video frame again: that frame's video unit is still open in ``PsDemuxer`` at this
point and the later frames' units queue behind it, so the internal demuxer continues exactly
where ``PsDemuxer`` stands (for a fallback on the first frame, FFmpeg's 2048-byte packs for
instance, it simply is ``PsDemuxer``). Units it gives out again are dropped. One difference is
left: damage right after a frame can make ``PsDemuxer`` revise that frame's units already
returned (it appends the continuation payload that follows to the open video unit, and bytes it
skips to the last segment); the returned version stands, ``revised_units`` counts them, and the
revised bytes are in no unit. Everything from the damaged frame on is ``PsDemuxer``'s output.
The one assumption: ``PsDemuxer`` detects the video codec from NAL headers in pieces of payload
(as they arrive); the fast path checks whole frames, and a NAL header that looks like the other
codec in one piece but not in the frame would make them disagree.

Memory. Between calls a demuxer holds the frames since the last video frame (at most
``max_buffered`` bytes, beyond which it falls back) and their units, or after a fallback the
internal demuxer's window and the units it has yet to return again; ``buffered`` counts all of
it and never exceeds ``limit``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .nal import codec_of_nal_headers
from .ps import MAX_BUFFERED, MAX_UNIT_PES, STREAM_TYPES, AccessUnit, PsDemuxer

__all__ = ["PsFrameDemuxer"]

_START = b"\x00\x00\x01"
_START_CODE = re.compile(re.escape(_START))
_PACK = 0xBA
_PSM = 0xBC
_NAL_CODECS = ("h264", "h265")
# PsDemuxer closes the oldest unit when more than 64 wait; the units since the last video frame
# (its unit is still open there) and those of the frame being read stay below that.
_MAX_QUEUED = 60

# NAL types that open an access unit once a slice was seen (as rtp.nal.next_access_unit).
_H264_OPENERS = frozenset({6, 7, 8, 9})
_H265_OPENERS = frozenset({32, 33, 34, 35, 39, *range(41, 45), *range(48, 56)})
_H264_IDR = 5
_H265_IRAP = range(16, 22)  # as rtp.nal.is_keyframe
_MIN_HEADER = (0, 0, 5, 10)  # PES header_data_length needed per PTS_DTS_flags


def _timestamp(b: bytes, i: int) -> int:
    return (
        ((b[i] >> 1) & 0x07) << 30
        | b[i + 1] << 22
        | (b[i + 2] >> 1) << 15
        | b[i + 3] << 7
        | b[i + 4] >> 1
    )


def _psm_types(b: bytes, start: int, stop: int) -> dict[int, int] | None:
    """Stream types of a PSM body, read as PsDemuxer reads them; ``None`` if it ignores it."""
    if stop - start < 10:
        return None
    p = start + 4 + (b[start + 2] << 8 | b[start + 3])
    if p + 2 > stop:
        return None
    end = min(p + 2 + (b[p] << 8 | b[p + 1]), stop - 4)
    p += 2
    types: dict[int, int] = {}
    while p + 4 <= end:
        types[b[p + 1]] = b[p]
        p += 4 + (b[p + 2] << 8 | b[p + 3])
    return types


def _nal_kinds(h264: bool) -> tuple[tuple[bool, bool, bool] | None, ...]:
    """Per NAL header byte: (slice, opens an access unit whatever follows, key picture), or
    None for a system start code (0xB9 and up), where PsDemuxer would end the PES."""
    kinds: list[tuple[bool, bool, bool] | None] = []
    for b0 in range(256):
        if b0 >= 0xB9:
            kinds.append(None)
        elif h264:
            nal_type = b0 & 0x1F
            kinds.append((nal_type in (1, 2, 5), nal_type in _H264_OPENERS, nal_type == _H264_IDR))
        else:
            nal_type = (b0 >> 1) & 0x3F
            kinds.append((nal_type <= 31, nal_type in _H265_OPENERS, nal_type in _H265_IRAP))
    return tuple(kinds)


_H264_KINDS = _nal_kinds(h264=True)
_H265_KINDS = _nal_kinds(h264=False)


def _search_start(data: bytes, pos: int) -> int:
    """The index of the first ``00 00 01`` in `data` at or after `pos`, or -1: as
    ``data.find(_START, pos)`` (a negative `pos` counts from the end); the compiled regex
    searches about 2x faster than ``bytes.find`` does."""
    if pos < 0:
        pos = max(pos + len(data), 0)
    elif pos > len(data):
        return -1
    found = _START_CODE.search(data, pos)
    return -1 if found is None else found.start()


# The start code search of _scan_video. tools/build_native.py replaces this line in the
# compiled module with `from rtp._startcode import find as _find_start`: the same search in C
# (rtp/_startcode.c), built with that module and covered by its SHA-256 check. So the pure
# Python (with SENSING_NODE_PURE_PYTHON, without a compiler, or beside a stale build) runs no
# compiled code, and the compiled module always runs the C search.
_find_start = _search_start


def _scan_video(codec: str, data: bytes) -> tuple[bool, list[int]] | None:
    """Keyframe flag and NAL header offsets of a frame's video payload holding exactly one
    access unit, else None."""
    if codec == "h264":
        kinds, need = _H264_KINDS, 2  # header bytes plus the byte holding the first-slice bit
    else:
        kinds, need = _H265_KINDS, 3
    end = len(data)
    k = data.find(_START, 0, 4)
    if k < 0 or k > 1 or (k == 1 and data[0] != 0):
        return None
    first = True
    seen_vcl = keyframe = False
    headers: list[int] = []
    find = _find_start
    while k >= 0:
        header = k + 3
        if header + need > end:
            return None
        headers.append(header)
        kind = kinds[data[header]]
        if kind is None:
            return None
        vcl, opener, key = kind
        # a slice opens the next picture when it is its first (first_mb_in_slice 0 in
        # H.264, first_slice_segment_in_pic_flag in H.265), as in rtp.nal.next_access_unit
        opens = opener or (vcl and data[header + need - 1] & 0x80 != 0)
        if first:
            if not opens:
                return None
            first = False
        elif seen_vcl and opens:
            return None
        if vcl:
            seen_vcl = True
            if key:
                keyframe = True
        k = find(data, header)
    return (keyframe, headers) if seen_vcl else None


@dataclass(slots=True)
class _Frame:
    """A fast-path frame kept since the last video frame, to replay on a fallback."""

    frame: bytes
    units: list[AccessUnit]
    packs: int
    pes_packets: int
    psm_updates: int


class PsFrameDemuxer:
    """Demuxes GB/T 28181 PS one RTP frame at a time; see the module docstring.

    Counters as :class:`rtp.ps.PsDemuxer` (``packs``, ``pes_packets``, ``psm_updates``,
    ``resyncs``, ``truncated_pes``, ``skipped_bytes``), plus ``fast_frames`` and
    ``slow_frames`` (frames whose units came from the fast path / the internal demuxer) and
    ``revised_units`` (see ``_fall_back``). ``detected``, ``refusal`` and ``stream_types`` mean
    what they mean there.

    ``stream_types``: the program stream map the stream had so far, for a demuxer that takes
    it up again after lost packets at a frame without a PSM (cameras send one only with key
    frames). The units are then those of a ``PsDemuxer`` given that map before the first byte;
    a PSM that differs from it makes the frame fall back.
    """

    def __init__(
        self, max_buffered: int = MAX_BUFFERED, stream_types: dict[int, int] | None = None
    ) -> None:
        # PsDemuxer cuts a unit still open when more than this follows its start: the frames
        # since the last video frame and the frame being read stay within it.
        self.max_buffered = max_buffered
        self.fast_frames = 0
        self.slow_frames = 0
        self._slow: PsDemuxer | None = None
        self._shift = 0  # stream offset of the first byte the internal demuxer got
        self._offset = 0  # stream offset of the next frame
        self._detected: str | None = None
        self._types: dict[int, int] = dict(stream_types) if stream_types else {}
        self._video_sid = -1
        self._detected_codec: str | None = None
        self._tail_zero = False  # the last video payload ended with a zero byte
        # The frames since the last video frame (included) and whether their units are held
        # back (when that frame's payload ends with a zero byte) or were returned already.
        self._recent: list[_Frame] = []
        self._recent_units = 0
        self._recent_bytes = 0
        self._held = False
        self._returned: list[AccessUnit] = []  # units PsDemuxer will return again after replay
        self.revised_units = 0
        self._packs = 0
        self._pes_packets = 0
        self._psm_updates = 0

    # -- counters and state, merged with the internal demuxer's -------------------------------

    @property
    def fallen_back(self) -> bool:
        """Whether the stream is now demuxed by the internal :class:`PsDemuxer`."""
        return self._slow is not None

    @property
    def detected(self) -> str | None:
        return self._detected if self._slow is None else self._slow.detected

    @property
    def refusal(self) -> str | None:
        return None if self._slow is None else self._slow.refusal

    @property
    def stream_types(self) -> dict[int, int]:
        return self._types if self._slow is None else self._slow.stream_types

    @property
    def packs(self) -> int:
        return self._packs + (0 if self._slow is None else self._slow.packs)

    @property
    def pes_packets(self) -> int:
        return self._pes_packets + (0 if self._slow is None else self._slow.pes_packets)

    @property
    def psm_updates(self) -> int:
        return self._psm_updates + (0 if self._slow is None else self._slow.psm_updates)

    @property
    def resyncs(self) -> int:
        return 0 if self._slow is None else self._slow.resyncs

    @property
    def truncated_pes(self) -> int:
        return 0 if self._slow is None else self._slow.truncated_pes

    @property
    def skipped_bytes(self) -> int:
        return 0 if self._slow is None else self._slow.skipped_bytes

    @property
    def dropped_bytes(self) -> int:
        return 0 if self._slow is None else self._slow.dropped_bytes

    @property
    def buffered(self) -> int:
        """Bytes held between calls: kept frames and the units made of them (counted apart
        even where they share bytes), and after a fallback the internal demuxer's."""
        held = self._recent_bytes
        units = [unit for kept in self._recent for unit in kept.units]
        for unit in units + self._returned:
            held += len(unit.data) + len(unit.ps_bytes)
        return held if self._slow is None else held + self._slow.buffered

    @property
    def limit(self) -> int:
        """What ``buffered`` never exceeds when a call returns: the kept frames with their
        units' data and ``ps_bytes``, or after a fallback the units still to be returned again
        and the internal demuxer's limit."""
        if self._slow is None:
            return 3 * self.max_buffered
        return 2 * self.max_buffered + self._slow.limit

    # -- public API --------------------------------------------------------------------------

    def feed_frame(self, frame: bytes | bytearray | memoryview) -> list[AccessUnit]:
        """Consume one RTP frame's PS bytes and return the units they complete.

        A frame taken by the fast path returns all of its units now, unless its video payload
        ends with a zero byte: ``PsDemuxer`` moves that byte to the next unit when the next
        frame starts with a 3-byte start code, so such a frame's units (and those of the
        frames behind it) are returned with the next video frame, or by ``flush()``. After a
        fallback the units come back when the internal :class:`~rtp.ps.PsDemuxer` releases them.
        """
        data = frame if isinstance(frame, bytes) else bytes(frame)
        slow = self._slow
        if slow is None:
            if not data:
                return []
            units = self._fast(data)
            if units is not None:
                self.fast_frames += 1
                self._offset += len(data)
                return units
            slow, replayed = self._fall_back()
            self.slow_frames += 1
            return replayed + self._shifted(slow.feed(data))
        self.slow_frames += 1
        return self._shifted(slow.feed(data))

    def flush(self) -> list[AccessUnit]:
        """End of stream: units held back, or the internal demuxer's last ones."""
        if self._slow is None:
            units = [unit for kept in self._recent for unit in kept.units] if self._held else []
            self._remember([], held=False)
            return units
        return self._shifted(self._slow.flush())

    # -- fallback ------------------------------------------------------------------------------

    def _fall_back(self) -> tuple[PsDemuxer, list[AccessUnit]]:
        """Hand the stream to a PsDemuxer, replaying the frames since the last video frame.

        PsDemuxer keeps that frame's video unit open until the next access unit starts, so
        replaying it puts the internal demuxer in the state PsDemuxer is in. Units the fast
        path returned already and the internal demuxer returns again are dropped; if PsDemuxer
        changed one (it appends continuation payload that follows to the open video unit), the
        returned version stands and ``revised_units`` counts it. Returns the internal demuxer
        and the units of held-back frames it gave out.
        """
        recent = self._recent
        slow = PsDemuxer(self.max_buffered)
        self._slow = slow
        self._shift = self._offset - sum(len(kept.frame) for kept in recent)
        if self._shift:
            slow.detected = self._detected  # no sniffing in the middle of a PS stream
        slow.stream_types = dict(self._types)
        if not self._held:
            self._returned = [unit for kept in recent for unit in kept.units]
        replayed: list[AccessUnit] = []
        for kept in recent:
            self._packs -= kept.packs
            self._pes_packets -= kept.pes_packets
            self._psm_updates -= kept.psm_updates
            if self._held:  # their units will come from the internal demuxer
                self.fast_frames -= 1
                self.slow_frames += 1
            replayed += slow.feed(kept.frame)
        self._remember([], held=False)
        return slow, self._shifted(replayed)

    def _remember(self, frames: list[_Frame], held: bool) -> None:
        self._recent, self._held = frames, held
        units = size = 0
        for kept in frames:
            units += len(kept.units)
            size += len(kept.frame)
        self._recent_units, self._recent_bytes = units, size

    def _shifted(self, units: list[AccessUnit]) -> list[AccessUnit]:
        if self._shift:
            for unit in units:
                unit.offset += self._shift
        if self._returned and units:
            count = min(len(units), len(self._returned))
            for mine, theirs in zip(self._returned[:count], units[:count], strict=True):
                if mine != theirs:
                    self.revised_units += 1
            del self._returned[:count]
            units = units[count:]
        return units

    # -- the fast path -------------------------------------------------------------------------

    def _fast(self, frame: bytes) -> list[AccessUnit] | None:
        """The units the frame releases if it matches the camera layout, else None.

        Nothing changes when it returns None.
        """
        n = len(frame)
        if self._recent_bytes + n > self.max_buffered:
            return None
        types = self._types
        new_types: dict[int, int] | None = None
        packs = pes = psms = 0
        run: int | None = None  # where the next unit's segment starts (PsDemuxer's run)
        # (segment start, stream id, PTS, DTS, payload start, payload end) per unit
        starts: list[tuple[int, int, int | None, int | None, int, int]] = []
        video: list[bytes] = []
        video_sid = -1
        video_pts: int | None = None
        pos = 0
        while pos < n:
            if pos + 6 > n or frame[pos] or frame[pos + 1] or frame[pos + 2] != 1:
                return None
            sid = frame[pos + 3]
            if sid == _PACK:
                if pos + 14 > n or not _pack_ok(frame, pos):
                    return None
                size = 14 + (frame[pos + 13] & 0x07)
                if pos + size > n:
                    return None
                if run is None:
                    run = pos
                packs += 1
                pos += size
                continue
            length = frame[pos + 4] << 8 | frame[pos + 5]
            end = pos + 6 + length
            if end > n or length == 0 or sid < _PACK:
                return None
            if 0xC0 <= sid <= 0xEF:
                p = pos + 6
                if length < 3 or frame[p] >> 6 != 0b10:
                    return None
                flags = frame[p + 1] >> 6
                payload = p + 3 + frame[p + 2]
                if payload > end or flags == 1 or frame[p + 2] < _MIN_HEADER[flags]:
                    return None
                pts = dts = None
                if flags & 2:
                    pts = _timestamp(frame, p + 3)
                    dts = _timestamp(frame, p + 8) if flags == 3 else pts
                segment = pos if run is None else run
                run = None
                pes += 1
                if sid >= 0xE0:
                    if video_sid < 0:
                        if pts is None or end - payload < 4:
                            return None
                        if self._video_sid >= 0 and sid != self._video_sid:
                            return None
                        video_sid, video_pts = sid, pts
                        starts.append((segment, sid, pts, dts, payload, end))
                    elif sid != video_sid or (pts is not None and pts != video_pts):
                        return None
                    video.append(frame[payload:end])
                else:
                    starts.append((segment, sid, pts, dts, payload, end))
            else:  # system header, PSM, private, padding and other streams read by length
                if run is None:
                    run = pos
                if sid == _PSM:
                    found = _psm_types(frame, pos + 6, end)
                    if found is not None:
                        current = types if new_types is None else new_types
                        if current and found != current:
                            return None
                        new_types = found
                        psms += 1
            pos = end
        if run is not None or not starts or self._recent_units + len(starts) > _MAX_QUEUED:
            return None
        if len(video) >= MAX_UNIT_PES:
            return None
        if new_types is not None:
            types = new_types
        for start in starts:
            if start[1] not in types:
                return None
        keyframe = False
        data = b""
        detected = self._detected_codec
        if video_sid >= 0:
            codec = STREAM_TYPES.get(types[video_sid], "unknown")
            if codec not in _NAL_CODECS:
                return None
            data = video[0] if len(video) == 1 else b"".join(video)
            if self._tail_zero and data[:4] != b"\x00\x00\x00\x01":
                return None  # PsDemuxer would move the previous frame's last byte here
            scanned = _scan_video(codec, data)
            if scanned is None:
                return None
            keyframe, headers = scanned
            if detected is None:  # as detect_video_codec(data), without a second scan
                detected = codec_of_nal_headers(data, headers)
                if detected is not None and detected != codec:
                    return None
        # Accepted: commit the state, then build the units.
        self._detected = "MPEG-PS"
        self._types = types
        self._detected_codec = detected
        self._packs += packs
        self._pes_packets += pes
        self._psm_updates += psms
        if len(starts) == 1 and video_sid >= 0:  # the usual frame: one video unit, no audio
            _, _, pts, dts, _, _ = starts[0]
            units = [AccessUnit(video_sid, codec, pts, dts, keyframe, data, frame, self._offset)]
        else:
            units = self._units(frame, starts, data, keyframe)
        kept = _Frame(frame, units, packs, pes, psms)
        if video_sid < 0:
            if self._video_sid < 0:  # no video unit open: only this frame's last unit is
                self._remember([kept], held=False)
            else:
                self._remember([*self._recent, kept], held=self._held)
            return [] if self._held else units
        # This frame's video unit is now the open one: only this frame is kept (as _remember).
        self._video_sid = video_sid
        held = self._tail_zero = data[-1] == 0
        recent, was_held = self._recent, self._held
        self._recent, self._held = [kept], held
        self._recent_units, self._recent_bytes = len(units), n
        if not was_held:
            return [] if held else units
        released = [unit for old in recent for unit in old.units]
        return released if held else released + units

    def _units(
        self,
        frame: bytes,
        starts: list[tuple[int, int, int | None, int | None, int, int]],
        video: bytes,
        keyframe: bool,
    ) -> list[AccessUnit]:
        base = self._offset
        types = self._types
        n = len(frame)
        units = []
        for index, (segment, sid, pts, dts, payload, end) in enumerate(starts):
            stop = starts[index + 1][0] if index + 1 < len(starts) else n
            codec = STREAM_TYPES.get(types[sid], "unknown")
            ps_bytes = frame if segment == 0 and stop == n else frame[segment:stop]
            if sid >= 0xE0:
                unit = AccessUnit(sid, codec, pts, dts, keyframe, video, ps_bytes, base + segment)
            else:
                data = frame[payload:end]
                unit = AccessUnit(sid, codec, pts, dts, True, data, ps_bytes, base + segment)
            units.append(unit)
        return units


def opens_keyframe(frame: bytes | bytearray | memoryview) -> bool:
    """Whether `frame` starts like a camera's keyframe: a pack header followed directly by a
    system header (which cameras, and `rtp.psmux`, send only before keyframes, with the PSM)."""
    if len(frame) < 18 or frame[:4] != b"\x00\x00\x01\xba" or frame[4] >> 6 != 1:
        return False
    pos = 14 + (frame[13] & 7)
    return frame[pos : pos + 4] == b"\x00\x00\x01\xbb"


def _pack_ok(frame: bytes, pos: int) -> bool:
    """An MPEG-2 pack header with its marker bits (MPEG-1 packs are left to PsDemuxer)."""
    return (
        frame[pos + 4] >> 6 == 0b01
        and frame[pos + 4] & 0x04 != 0
        and frame[pos + 6] & 0x04 != 0
        and frame[pos + 8] & 0x04 != 0
        and frame[pos + 9] & 0x01 != 0
        and frame[pos + 12] & 0x03 == 0x03
    )
