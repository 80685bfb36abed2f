"""Incremental MPEG program stream demuxer (ISO/IEC 13818-1 2.5.3-2.5.4; GB/T 28181 App. C.1).

Bytes go in (cut anywhere, e.g. the concatenated payloads of PS-over-RTP packets), access units
come out. The parser walks start codes with ``bytes.find`` (a regular expression in video
payloads) and copies PES payloads in slices, so the Python-level cost is per structure, not per
byte.

Structures: pack header (MPEG-2 with stuffing, MPEG-1 tolerated), system header (skipped by
length), program stream map (the latest one wins), PES packets for video 0xE0-0xEF and audio
0xC0-0xDF (MPEG-2 or MPEG-1 PES header, PTS/DTS), everything else (private streams, padding,
ECM/EMM, DSM-CC...) skipped by length. A PES_packet_length of 0 means the payload runs to the next
system start code (``00 00 01`` followed by 0xB9..0xFF, which no H.264/H.265 NAL header can be).

Access units. For H.264/H.265 (from the PSM, or recognised from the NAL headers when there is
no PSM or it names the wrong codec) the PES payloads of a stream are joined and cut where a new
access unit begins (H.264 7.4.1.2.3, H.265 7.4.2.4.4: delimiter, parameter set, SEI or the first
slice of a picture after a slice), which is also where FFmpeg's parser cuts. A PES PTS/DTS goes
to the first access unit that commences in that PES (ISO/IEC 13818-1 2.4.3.7); a unit that
commences in a PES without one (FFmpeg's 2048-byte packs can start two frames in one PES) has
``pts`` ``None``. A GB frame split over several PES packets, with or without a repeated PTS,
comes out whole. Other video codecs are cut at PES packets with a new PTS. An audio unit is the
payload of one PES packet (AAC ADTS frames are not split). PTS and DTS are the raw 33-bit values.

``ps_bytes``. The input is cut into consecutive segments, one per access unit, in the order the
units start. A unit's segment starts at the first pack header, system header, program stream
map or skipped PES that follows the previous elementary PES packet (so a camera's
``pack | system header | PSM | PES...`` belongs to the frame it introduces), or at the unit's
first PES when nothing precedes it, and ends where the next unit's segment starts. Segments
therefore may also hold continuation PES packets of another stream's unit, the tail of the
previous frame when a frame starts inside a PES, and any garbage bytes met on the way.
Bytes before the first segment are dropped and counted in ``skipped_bytes``. Units are returned in
segment order, so ``b"".join(u.ps_bytes for u in units) == stream[units[0].offset:]`` as long as
``dropped_bytes`` is 0 (see Memory: only bytes that no unit took within the window are left out).

Bad input never raises: undecodable bytes are skipped up to the next start code and counted in
``resyncs`` and ``skipped_bytes``. A PES packet is read for the bytes its PES_packet_length
announces, except that an H.264/H.265 video PES ends early at a system start code in its payload:
no NAL header byte is 0xB9 or more and emulation prevention keeps ``00 00 01`` out of NAL units,
so the PES lost bytes (a lost RTP packet, say) and the pack header, system header, PSM or PES
header found there are parsed as such. The damaged frame ends there and the next one comes out
whole, with its PTS. Such PES packets are counted in ``truncated_pes`` (and ``resyncs``). Audio
(G.711 and AAC payloads can hold any bytes), private and unknown streams and other video codecs
(MPEG-4 part 2 has start codes from 0xBA up) are read by length, so a loss inside one of them
may still cost the structures that follow. The check searches each video payload for ``00 00 01``
followed by 0xB9..0xFF; the last 3 buffered payload bytes are held back until more input comes,
since a start code may begin there, so the result does not depend on where the input is cut.
MPEG-TS and bare Annex-B elementary streams are recognised and refused through ``refusal``
instead of being parsed as PS.

Memory. Between calls a demuxer keeps at most ``max_buffered`` bytes of input behind the input's
end (``MAX_BUFFERED`` by default; see there for what happens past it), plus the data of the
units it has not returned yet (copies of part of that window) and the structure it is waiting
for (a system header or PSM, up to 64 KiB); before the stream is recognised, the first bytes it
sniffs. ``buffered`` says how much that is, and it never exceeds ``limit``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

from .nal import detect_video_codec, is_keyframe, next_access_unit

__all__ = ["MAX_BUFFERED", "MAX_UNIT_PES", "STREAM_TYPES", "AccessUnit", "PsDemuxer"]

_START = b"\x00\x00\x01"
# 00 00 01 then a stream id (0xB9..0xFF: end code, pack, system header, PSM, PES packets). No
# H.264/H.265 NAL header byte is that large (forbidden_zero_bit), and emulation prevention keeps
# 00 00 01 out of NAL units, so inside H.264/H.265 payload this means bytes were lost.
_SYSTEM_CODE = re.compile(b"\x00\x00\x01[\xb9-\xff]")
_PACK = 0xBA
_END = 0xB9
_SYSTEM_HEADER = 0xBB
_PSM = 0xBC
_TS_PACKET = 188

#: PSM stream_type -> codec name (ISO/IEC 13818-1 table 2-34; GB/T 28181-2022 App. C.1).
STREAM_TYPES: dict[int, str] = {
    0x0F: "aac",
    0x10: "mpeg4",
    0x1B: "h264",
    0x24: "h265",
    0x90: "g711a",
    0x91: "g711u",
}

_MAX_PENDING_UNITS = 64  # a unit whose stream went quiet is closed after this many later units
_SNIFF_BYTES = 128 * 1024  # without a PS start code by then, the stream is not PS
_HEAD = 4096  # bytes kept for sniffing until the stream is recognised
#: The window: how far behind the end of the input a demuxer keeps bytes between calls. Past it,
#: the oldest unit is ended where parsing stands and returned (a stream still open goes on in a
#: new unit), and bytes that no unit has taken yet (a run of pack headers, padding, private or
#: other skipped streams, with no elementary data after it) are dropped and counted in
#: ``dropped_bytes``. A 1080p key frame is 0.2-1 MB and a 4K one rarely over 2 MB, so no camera
#: frame comes near it (a near-lossless 1080p key frame of pure noise is 4.3 MB); a stream of
#: anything else stays below it. Per stream, the ingest's frame assembly and both demuxers
#: together hold at most about five windows (40 MiB).
MAX_BUFFERED = 8 * 1024 * 1024
#: PES packets one open H.264/H.265 unit takes before it is ended (FFmpeg's 2048-byte packs
#: carry MAX_BUFFERED in as many): bounds the list of PES starts kept per unit.
MAX_UNIT_PES = 4096
# Held beyond twice the window at most: a structure waiting for its bytes (a system header or
# PSM, 6 + 65535 bytes, less one), or before the stream is recognised the bytes sniffed.
_WAITING = 6 + 0xFFFF
_SNIFFED = _SNIFF_BYTES + _HEAD
_NAL_CODECS = ("h264", "h265")


def _is_elementary(sid: int) -> bool:
    return 0xC0 <= sid <= 0xEF


def _is_video(sid: int) -> bool:
    return 0xE0 <= sid <= 0xEF


@dataclass(slots=True)
class AccessUnit:
    """One video frame or audio frame and the PS bytes that carried it (see module docstring)."""

    stream_id: int
    codec: str  # "h264", "h265", "mpeg4", "g711a", "g711u", "aac" or "unknown"
    pts: int | None  # 33-bit, 90 kHz, as sent
    dts: int | None
    keyframe: bool
    data: bytes  # elementary stream bytes (Annex-B for video)
    ps_bytes: bytes  # this unit's segment of the input, byte-exact
    offset: int  # stream offset of ps_bytes[0]


@dataclass(slots=True)
class _Pending:
    stream_id: int
    pts: int | None
    dts: int | None
    start: int  # stream offset where this unit's segment starts
    data: bytearray = field(default_factory=bytearray)
    done: bool = False
    scan: int = 0  # next_access_unit() resume position in data
    seen_vcl: bool = False
    # PES packets of this stream met while the unit is open: (offset in data, segment start,
    # PTS, DTS); the PTS goes to the first access unit that commences in that PES.
    marks: list[tuple[int, int, int | None, int | None]] = field(default_factory=list)


def _start_of(pending: _Pending) -> int:
    return pending.start


def _timestamp(b: bytes | bytearray, i: int) -> int:
    return (
        ((b[i] >> 1) & 0x07) << 30
        | b[i + 1] << 22
        | (b[i + 2] >> 1) << 15
        | b[i + 3] << 7
        | b[i + 4] >> 1
    )


class PsDemuxer:
    """Incremental MPEG-PS demuxer: ``feed()`` bytes, get :class:`AccessUnit` objects back.

    Counters: ``packs``, ``pes_packets``, ``psm_updates``, ``resyncs``, ``truncated_pes``,
    ``skipped_bytes``, ``dropped_bytes`` (bytes left out of every unit to keep within
    ``max_buffered``; while it is 0, the units' ``ps_bytes`` reproduce the input).
    ``detected`` is ``None`` until the stream type is known, then ``"MPEG-PS"``, ``"MPEG-TS"`` or
    ``"bare H.264 elementary stream"`` (``H.265`` / ``Annex-B`` likewise); for anything but PS
    ``refusal`` holds the reason and further input is ignored.
    """

    def __init__(self, max_buffered: int = MAX_BUFFERED) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be positive")
        self.max_buffered = max_buffered
        self.detected: str | None = None
        self.refusal: str | None = None
        self.stream_types: dict[int, int] = {}
        self.packs = 0
        self.pes_packets = 0
        self.psm_updates = 0
        self.resyncs = 0
        self.truncated_pes = 0
        self.skipped_bytes = 0
        self.dropped_bytes = 0
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0  # parse position in _buf
        self._head = bytearray()  # first bytes, kept for sniffing
        self._sid = 0  # PES whose payload is being read
        self._left = 0  # payload bytes left; -1 = runs to the next system start code
        self._pes_segment = 0  # segment start of the last PES header
        self._keep = False  # whether that payload is kept (elementary) or skipped
        self._garbage = False  # inside a run of skipped bytes
        self._run_start: int | None = None  # where the next unit's segment would start
        self._open: dict[int, _Pending] = {}
        self._codecs: dict[int, str] = {}  # codec seen in the bitstream, per stream
        self._queue: deque[_Pending] = deque()
        self._emitted_to = 0  # stream offset where the last emitted segment ended

    # -- public API --------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes held between calls: the input window, the head kept for sniffing and the
        data of the units not returned yet."""
        return len(self._buf) + len(self._head) + sum(len(p.data) for p in self._queue)

    @property
    def limit(self) -> int:
        """What ``buffered`` never exceeds when a call returns."""
        return 2 * self.max_buffered + (_SNIFFED if self.detected is None else _WAITING)

    def feed(self, data: bytes | bytearray | memoryview) -> list[AccessUnit]:
        """Consume ``data`` (any cut of the stream) and return the units completed by it."""
        if self.refusal is not None:
            self.skipped_bytes += len(data)
            return []
        self._buf += data
        if self.detected is None and not self._sniff(final=False):
            return []
        self._parse(final=False)
        return self._emit(final=False)

    def flush(self) -> list[AccessUnit]:
        """End of stream: parse what is left and return every unit still open."""
        if self.refusal is None:
            if self.detected is None:
                self._sniff(final=True)
            if self.refusal is None:
                self._parse(final=True)
        for pending in list(self._open.values()):
            self._close_at_marks(pending)
        for pending in self._queue:
            pending.done = True
        self._open.clear()
        return self._emit(final=True)

    # -- sniffing ------------------------------------------------------------------------------

    def _sniff(self, final: bool) -> bool:
        """Decide what the stream is; True once it is PS. Until then nothing is parsed."""
        buf = self._buf
        if len(self._head) < _HEAD:
            self._head = buf[:_HEAD]  # buf is only trimmed once the head is complete
        head = bytes(self._head)
        if head[:1] == b"\x47":
            if len(head) < 3 * _TS_PACKET and not final:
                return False
            if all(head[k : k + 1] == b"\x47" for k in range(0, len(head), _TS_PACKET)):
                return self._refuse("MPEG-TS")
        pos = buf.find(_START)
        while pos >= 0 and pos + 3 < len(buf):
            if buf[pos + 3] >= _END:
                self.detected = "MPEG-PS"
                self._head = bytearray()
                return True
            pos = buf.find(_START, pos + 3)
        if len(buf) >= _SNIFF_BYTES or final:
            lead = head.lstrip(b"\x00")
            if head.startswith(b"\x00\x00") and lead[:1] == b"\x01" and len(lead) > 1:
                codec = detect_video_codec(head)
                name = {"h264": "H.264", "h265": "H.265"}.get(codec or "", "Annex-B")
                return self._refuse(f"bare {name} elementary stream")
            if not final:
                # no start code at all so far: keep only the tail a start code may straddle
                self.skipped_bytes += len(buf) - 3
                self._base += len(buf) - 3
                del buf[:-3]
        return False

    def _refuse(self, what: str) -> bool:
        self.detected = what
        self._head = bytearray()
        self.refusal = f"{what}, not MPEG-PS"
        self.skipped_bytes += len(self._buf)
        self._base += len(self._buf)
        self._buf.clear()
        return False

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, final: bool) -> None:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        while True:
            if self._left:
                pos = self._payload(pos, final)
                if self._left:
                    break
                continue
            i = buf.find(_START, pos)
            if i < 0 or i + 4 > n:
                stop = n if final else max(pos, n - 3 if i < 0 else i)
                self._skip(pos, stop)
                pos = stop
                break
            if i > pos:
                self._skip(pos, i)
            size = self._structure(i, final)
            if size == 0:  # incomplete: wait for more bytes
                if final:
                    self._skip(i, n)
                    pos = n
                else:
                    pos = i
                break
            if size < 0:  # not a valid structure: step over the start code
                self._skip(i, i + 3)
                pos = i + 3
                continue
            self._garbage = False
            pos = i + size
        self._pos = pos

    def _skip(self, start: int, stop: int) -> None:
        if stop <= start:
            return
        if not self._garbage:
            self._garbage = True
            self.resyncs += 1
        self.skipped_bytes += stop - start

    def _payload(self, pos: int, final: bool) -> int:
        """Consume PES payload from ``pos``; return the new position."""
        buf = self._buf
        n = len(buf)
        if self._left > 0:
            end = pos + self._left
            stop = min(n, end)
            if _is_video(self._sid):
                # a system start code beginning inside the payload (its 4th byte buffered)
                found = _SYSTEM_CODE.search(buf, pos, min(end + 3, n))
                if found is not None:
                    pos = self._check_truncated(pos, found.start(), end)
                    if not self._left:
                        return pos
                if not final and end > n - 3:
                    stop = max(pos, n - 3)  # one may begin in the last 3 bytes: wait for them
            self._left = end - stop
        else:
            found = _SYSTEM_CODE.search(buf, pos)
            if found is not None:
                stop = found.start()
                self._left = 0
            else:
                stop = n if final else max(pos, n - 3)
                if final:
                    self._left = 0
        if stop > pos and self._keep:
            self._append(self._sid, buf[pos:stop])
        if final and self._left > 0 and stop == n:
            self._left = 0
        return stop

    def _check_truncated(self, pos: int, code: int, end: int) -> int:
        """A system start code at ``code`` lies inside the video PES payload ending at ``end``.

        For H.264/H.265 it cannot be payload: the PES lost bytes, so it ends at ``code``
        (``_left`` becomes 0) and the structure there is parsed. For other codecs the search
        goes on. Until the codec is known, the payload before each code is appended first, as
        it may reveal the codec; the decision thus depends on the bytes before the code only,
        never on how the input was cut. Returns the position up to which payload was consumed.
        """
        buf = self._buf
        sid = self._sid
        limit = min(end + 3, len(buf))
        while True:
            codec = self._codec(sid)
            if codec not in _NAL_CODECS and sid not in self._codecs and code > pos:
                self._append(sid, buf[pos:code])
                pos = code
                codec = self._codec(sid)
            if codec in _NAL_CODECS:
                if code > pos:
                    self._append(sid, buf[pos:code])
                self._left = 0
                self.truncated_pes += 1
                self.resyncs += 1
                self._garbage = True  # a broken structure at ``code`` is the same resync
                return code
            found = _SYSTEM_CODE.search(buf, code + 1, limit)
            if found is None:
                self._left = end - pos
                return pos
            code = found.start()

    def _structure(self, i: int, final: bool) -> int:
        """Handle the structure at ``i``: its size, 0 if incomplete, -1 if invalid."""
        buf = self._buf
        sid = buf[i + 3]
        if sid < _END:
            return -1
        if sid == _END:
            self._mark_run(i)
            return 4
        if sid == _PACK:
            return self._pack(i)
        if i + 6 > len(buf):
            return 0
        length = buf[i + 4] << 8 | buf[i + 5]
        if _is_elementary(sid):
            return self._pes(i, sid, length)
        if i + 6 + length > len(buf) and sid in (_SYSTEM_HEADER, _PSM):
            return 0
        self._mark_run(i)
        if sid == _PSM:
            self._psm(i + 6, i + 6 + length)
        elif sid != _SYSTEM_HEADER:
            self._sid, self._left, self._keep = sid, length, False  # skipped stream
            return 6
        return 6 + length

    def _mark_run(self, i: int) -> None:
        if self._run_start is None:
            self._run_start = self._base + i

    def _pack(self, i: int) -> int:
        buf = self._buf
        if i + 5 > len(buf):
            return 0
        b4 = buf[i + 4]
        if b4 >> 6 == 0b01:  # MPEG-2: 14 bytes + stuffing
            if i + 14 > len(buf):
                return 0
            if (
                b4 & 0x04 == 0
                or buf[i + 6] & 0x04 == 0
                or buf[i + 8] & 0x04 == 0
                or buf[i + 9] & 0x01 == 0
                or buf[i + 12] & 0x03 != 0x03
            ):
                return -1
            size = 14 + (buf[i + 13] & 0x07)
        elif b4 >> 4 == 0b0010:  # MPEG-1: 12 bytes
            size = 12
        else:
            return -1
        if i + size > len(buf):
            return 0
        self.packs += 1
        self._mark_run(i)
        return size

    def _psm(self, start: int, stop: int) -> None:
        buf = self._buf
        if stop - start < 10:
            return
        info_len = buf[start + 2] << 8 | buf[start + 3]
        p = start + 4 + info_len
        if p + 2 > stop:
            return
        es_len = buf[p] << 8 | buf[p + 1]
        p += 2
        end = min(p + es_len, stop - 4)  # trust map_length over es_map_length; CRC not checked
        types: dict[int, int] = {}
        while p + 4 <= end:
            types[buf[p + 1]] = buf[p]
            p += 4 + (buf[p + 2] << 8 | buf[p + 3])
        if types != self.stream_types:
            for sid in types.keys() | self.stream_types.keys():
                if types.get(sid) != self.stream_types.get(sid):
                    self._codecs.pop(sid, None)
        self.stream_types = types
        self.psm_updates += 1

    def _pes(self, i: int, sid: int, length: int) -> int:
        """Parse a video/audio PES header; the payload is then read by ``_payload``."""
        buf = self._buf
        n = len(buf)
        p = i + 6
        limit = i + 6 + length if length else n
        pts = dts = None
        if p >= n:
            return 0
        if buf[p] >> 6 == 0b10:  # MPEG-2 PES header
            if p + 3 > n:
                return 0
            flags = buf[p + 1] >> 6
            payload = p + 3 + buf[p + 2]
            if payload > n:
                return 0
            if payload > limit or flags == 1 or buf[p + 2] < (0, 0, 5, 10)[flags]:
                return -1
            if flags & 2:
                pts = _timestamp(buf, p + 3)
                dts = _timestamp(buf, p + 8) if flags == 3 else pts
        else:  # MPEG-1 PES header (2.4.3.7 of ISO/IEC 11172-1)
            while p < n and p < i + 6 + 16 and buf[p] == 0xFF:
                p += 1
            if p + 10 > n:
                return 0
            if buf[p] >> 6 == 0b01:
                p += 2
            kind = buf[p] >> 4
            if kind == 0b0010:
                pts = dts = _timestamp(buf, p)
                payload = p + 5
            elif kind == 0b0011:
                pts, dts = _timestamp(buf, p), _timestamp(buf, p + 5)
                payload = p + 10
            elif buf[p] == 0x0F:
                payload = p + 1
            else:
                return -1
            if payload > limit:
                return -1
        self.pes_packets += 1
        self._start_pes(i, sid, pts, dts)
        self._sid, self._keep = sid, True
        self._left = (limit - payload) if length else -1
        self._run_start = None
        if self._left == 0 and not _is_video(sid):
            unit = self._open.pop(sid, None)
            if unit is not None:
                unit.done = True
        return payload - i

    # -- access unit assembly ------------------------------------------------------------------

    def _codec(self, sid: int) -> str:
        found = self._codecs.get(sid)
        if found is not None:
            return found
        return STREAM_TYPES.get(self.stream_types.get(sid, -1), "unknown")

    def _start_pes(self, i: int, sid: int, pts: int | None, dts: int | None) -> None:
        """A PES header was read: open a new unit or note where the PES starts in the open one."""
        segment = self._run_start if self._run_start is not None else self._base + i
        self._pes_segment = segment
        current = self._open.get(sid)
        if not _is_video(sid):
            self._open_unit(_Pending(sid, pts, dts, segment))
            return
        if current is None:
            self._open_unit(_Pending(sid, pts, dts, segment))
        elif self._codec(sid) in _NAL_CODECS:
            if len(current.marks) < MAX_UNIT_PES:
                current.marks.append((len(current.data), segment, pts, dts))
            else:  # a unit over this many PES packets ends before this one
                current.done = True
                self._open_unit(_Pending(sid, pts, dts, segment))
        elif pts is not None and pts != current.pts:
            current.done = True
            self._open_unit(_Pending(sid, pts, dts, segment))

    def _close_at_marks(self, pending: _Pending) -> None:
        """End of stream: a PES with a new PTS whose frame never showed its start opens one."""
        for offset, segment, pts, dts in pending.marks:
            if pts is not None and pts != pending.pts and offset < len(pending.data):
                rest = _Pending(pending.stream_id, pts, dts, segment, pending.data[offset:])
                del pending.data[offset:]
                pending.done = True
                self._open_unit(rest)
                return

    def _open_unit(self, pending: _Pending) -> None:
        pending.start = max(pending.start, self._emitted_to)  # segments never overlap
        self._open[pending.stream_id] = pending
        queue = self._queue
        queue.insert(bisect_right(queue, pending.start, key=_start_of), pending)
        if len(queue) > _MAX_PENDING_UNITS:
            oldest = queue[0]
            oldest.done = True
            if self._open.get(oldest.stream_id) is oldest:
                del self._open[oldest.stream_id]

    def _append(self, sid: int, chunk: bytearray) -> None:
        pending = self._open.get(sid)
        if pending is None:  # a continuation PES whose unit was closed already
            pending = _Pending(sid, None, None, self._pes_segment)
            self._open_unit(pending)
        pending.data += chunk
        if _is_video(sid) and sid not in self._codecs:
            detected = detect_video_codec(pending.data[-len(chunk) - 8 :])
            if detected is not None:
                self._codecs[sid] = detected
        if not _is_video(sid):
            if self._left == 0:
                pending.done = True
                del self._open[sid]
            return
        codec = self._codec(sid)
        if codec in _NAL_CODECS:
            unit: _Pending | None = pending
            while unit is not None:
                unit = self._cut(unit, codec)

    def _cut(self, pending: _Pending, codec: str) -> _Pending | None:
        """Split off the next access unit if one starts in ``pending``; return it."""
        data = pending.data
        cut, pending.scan, seen_vcl = next_access_unit(codec, data, pending.scan, pending.seen_vcl)
        if cut is None:
            pending.seen_vcl = seen_vcl
            return None
        code = pending.scan - 3  # the start code that opens the next unit
        start, pts, dts = pending.start, None, None
        later: list[tuple[int, int, int | None, int | None]] = []
        for offset, segment, mark_pts, mark_dts in pending.marks:
            if offset <= code:
                start, pts, dts = segment, mark_pts, mark_dts
            else:
                later.append((offset - cut, segment, mark_pts, mark_dts))
        following = _Pending(pending.stream_id, pts, dts, start, data[cut:])
        following.scan = pending.scan - cut
        following.seen_vcl = seen_vcl
        following.marks = later
        del data[cut:]
        pending.marks = []
        pending.done = True
        self._open_unit(following)
        return following

    def _emit(self, final: bool) -> list[AccessUnit]:
        out: list[AccessUnit] = []
        self._release(out, final)
        if not final and self._base + len(self._buf) - self._kept_from() > self.max_buffered:
            self._shed(out)
        drop = self._kept_from() - self._base
        if drop > 0:
            del self._buf[:drop]
            self._base += drop
            self._pos -= drop
        return out

    def _kept_from(self) -> int:
        """Stream offset of the first byte still needed: the oldest unit's or the run's start."""
        queue = self._queue
        keep = queue[0].start if queue else self._base + self._pos
        run = self._run_start
        return keep if run is None or run > keep else run

    def _release(self, out: list[AccessUnit], final: bool) -> None:
        """Return the done units at the head of the queue (each ends where the next starts)."""
        queue = self._queue
        buf = self._buf
        base = self._base
        end = base + len(buf)
        while queue and queue[0].done and (len(queue) > 1 or final):
            pending = queue.popleft()
            stop = queue[0].start if queue else end
            segment = bytes(buf[pending.start - base : stop - base])
            out.append(self._unit(pending, segment))
            self._emitted_to = stop
        run = self._run_start
        if run is not None and run < self._emitted_to:
            self._run_start = self._emitted_to  # those bytes went with the unit just returned

    def _shed(self, out: list[AccessUnit]) -> None:
        """Keep within ``max_buffered``: what starts further back than that and before the
        parse position is ended there and returned, or dropped if no unit takes it."""
        here = self._base + self._pos
        behind = min(here, self._base + len(self._buf) - self.max_buffered)
        queue = self._queue
        while queue and queue[0].start < behind:
            first = queue[0]
            if not first.done:
                if len(queue) == 1 and not first.data:
                    self._restart_empty(first, here)
                    break
                self._force_close(first)
            if len(queue) > 1:
                self._release(out, final=False)
                continue
            queue.popleft()  # the last unit, done: its segment ends here
            segment = bytes(self._buf[first.start - self._base : here - self._base])
            out.append(self._unit(first, segment))
            self._emitted_to = self._run_start = here
        run = self._run_start
        if run is not None and run < behind:
            self._drop(run, min(here, queue[0].start) if queue else here)
            self._run_start = here

    def _restart_empty(self, pending: _Pending, here: int) -> None:
        """``pending``, the last unit, has no data yet, and the bytes from its start to
        ``here`` go to no unit: with a PTS it starts again at ``here``; without one (it only
        continued a unit that was cut) it goes, and the next unit starts at ``here``."""
        self._drop(pending.start, here)
        run = self._run_start
        if pending.pts is not None:
            pending.start = here
            if run is not None and run < here:
                self._run_start = None
            return
        self._queue.popleft()
        if self._open.get(pending.stream_id) is pending:
            del self._open[pending.stream_id]
        self._run_start = here

    def _drop(self, start: int, stop: int) -> None:
        """Bytes ``start:stop`` are left out of every unit; nothing may start before ``stop``."""
        if stop > start:
            self.dropped_bytes += stop - start
            self._emitted_to = max(self._emitted_to, stop)

    def _force_close(self, pending: _Pending) -> None:
        """Bound the buffer: end ``pending`` here and continue its stream in a new unit."""
        pending.done = True
        if self._open.get(pending.stream_id) is pending:
            following = _Pending(pending.stream_id, None, None, self._base + self._pos)
            following.seen_vcl = True
            self._open_unit(following)

    def _unit(self, pending: _Pending, ps_bytes: bytes) -> AccessUnit:
        data = bytes(pending.data)
        sid = pending.stream_id
        if _is_video(sid):
            if sid not in self._codecs:
                found = detect_video_codec(data)
                if found is not None:
                    self._codecs[sid] = found
            codec = self._codec(sid)
            keyframe = is_keyframe(codec, data)
        else:
            codec = self._codec(sid)
            keyframe = True
        return AccessUnit(
            sid, codec, pending.pts, pending.dts, keyframe, data, ps_bytes, pending.start
        )
