"""Export of a recorded time range, as the original MPEG-PS bytes or remuxed to fragmented MP4.

A GB/T 28181 download (``s=Download``, docs/gb28181.md section 4.7) carries the recorded PS
itself; a browser or an evidence workstation wants MP4. Both come from the same plan: the byte
ranges of the segment files from the last keyframe at or before the requested start to the last
video frame before the requested end.

Segments hold the camera's PS bytes unchanged and each starts at a keyframe pack, so a range is a
run of whole files with a cut at both ends. Only the two boundary segments are demuxed (with
:class:`rtp.ps.PsDemuxer`), from a keyframe pack shortly before the cut (found by a byte search)
to the cut; the segments between them are taken whole, and so is the last one when the index's
``end_wall`` says it ends before the range does.
A video frame's wall time is ``start_wall + (pts - start_pts) / 90000`` of its segment, with the
PTS difference taken modulo 2**33.

Nothing is held in memory beyond one chunk: :func:`export_ps` reads the files in chunks and
:func:`export_mp4` writes fragmented MP4 (one fragment per keyframe) into a sink that the
generator drains after every packet. The MP4 is a stream copy made by FFmpeg through PyAV
(ISO/IEC 14496-12 and 14496-15); nothing is transcoded. PyAV is imported by the MP4 export only,
so planning and PS export work without it.
"""

from __future__ import annotations

import io
import math
import os
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from rtp.ps import AccessUnit, PsDemuxer

if TYPE_CHECKING:
    import av

__all__ = [
    "CHUNK_SIZE",
    "CLOCK",
    "ExportError",
    "ExportPiece",
    "ExportPlan",
    "SegmentRef",
    "export_mp4",
    "export_ps",
    "plan_export",
]

CHUNK_SIZE = 1 << 20  # bytes per yielded chunk, and per file read
CLOCK = 90_000  # PS timestamps tick at 90 kHz (ISO/IEC 13818-1 2.4.3.7)
_WRAP = 1 << 33
_HALF = 1 << 32
_VIDEO_CODECS = ("h264", "h265")
_MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
_TIME_BASE = Fraction(1, CLOCK)
_READ_SIZE = 256 * 1024  # PyAV's read size
_SCAN_SIZE = 64 * 1024  # planning demuxes in small steps, as it stops early
_FIND_SIZE = 1 << 20  # and looks for keyframe packs in larger ones
_FIND_KEEP = 64 * 1024  # bytes kept between those reads, for structures cut by a read
_LEADS = (4.0, 16.0)  # seconds before a cut where the look for a keyframe starts: GOP lengths
# FFmpeg's parser takes the stream parameters from the first parameter sets; probing further
# only decodes more frames.
_PROBE = {"probesize": "32768"}


class ExportError(Exception):
    """The range cannot be exported: nothing recorded in it, or a segment file is unusable."""


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """One segment file as the index knows it.

    ``start_pts`` is the 90 kHz PTS of the segment's first video frame (``None``: take it from
    the file), ``codec`` the video codec if known. ``end_wall``, if known, is the wall time of
    the segment's last frame (or any later time): a segment that ends before the requested end
    is then taken whole without being demuxed.
    """

    path: Path
    start_wall: float
    start_pts: int | None = None
    codec: str | None = None
    end_wall: float | None = None


@dataclass(frozen=True, slots=True)
class ExportPiece:
    """The bytes ``[start, stop)`` of one segment file that belong to an export.

    ``start_pts`` is the PTS that corresponds to ``segment.start_wall`` when it is known (from
    the index or from demuxing the file), else ``None``: the piece then starts at the
    segment's first frame, which is at ``start_wall``.
    """

    segment: SegmentRef
    start: int
    stop: int
    start_pts: int | None


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """What :func:`plan_export` found: byte ranges in order and the wall times they cover."""

    pieces: tuple[ExportPiece, ...]
    start_wall: float  # wall time of the first frame, a keyframe
    end_wall: float  # wall time of the last frame
    codec: str | None  # video codec, if the index or the demuxer named it

    @property
    def size(self) -> int:
        """Length of the PS export in bytes."""
        return sum(piece.stop - piece.start for piece in self.pieces)


@dataclass(frozen=True, slots=True)
class _Frame:
    wall: float
    keyframe: bool
    start: int  # file offset of the frame's PS bytes
    stop: int


def _pts_delta(pts: int, base: int) -> int:
    """``pts - base`` in 90 kHz ticks across the 33-bit wrap, in ``[-2**32, 2**32)``."""
    return (pts - base + _HALF) % _WRAP - _HALF


# -- planning ----------------------------------------------------------------------------------


def plan_export(segments: Sequence[SegmentRef], start: float, end: float) -> ExportPlan:
    """Plan the export of ``[start, end)`` (Unix seconds) from ``segments``.

    The range runs from the last keyframe at or before ``start`` to the last video frame before
    ``end``; a segment whose frames all lie before ``end`` is taken whole, with any audio after
    its last frame. When no keyframe precedes ``start`` (the recording begins later, or
    ``start`` falls in a gap after a segment's last frame) it begins at the first keyframe after
    ``start``. Raises :class:`ExportError` when no frame lies in the range.
    """
    if not end > start:
        raise ExportError(f"empty time range: end {end} is not after start {start}")
    ordered = sorted(segments, key=lambda segment: segment.start_wall)
    first, head, first_frame = _find_start(ordered, start, end)
    last, tail, end_wall, stop = _find_end(ordered, first, head, end)
    if first == last:
        pieces = [ExportPiece(ordered[first], first_frame.start, stop, head.base)]
    else:
        pieces = [ExportPiece(ordered[first], first_frame.start, _file_size(ordered[first]),
                              head.base)]
        pieces += [ExportPiece(segment, 0, _file_size(segment), segment.start_pts)
                   for segment in ordered[first + 1 : last]]
        pieces.append(ExportPiece(ordered[last], 0, stop,
                                  tail.base if tail else ordered[last].start_pts))
    codec = head.codec or (tail.codec if tail else ordered[last].codec)
    return ExportPlan(tuple(pieces), first_frame.wall, end_wall, codec)


def _find_start(
    ordered: list[SegmentRef], start: float, end: float
) -> tuple[int, _Scanner, _Frame]:
    """The segment, its scanner and the keyframe the export starts with."""
    index = max((i for i, s in enumerate(ordered) if s.start_wall <= start), default=0)
    for i in range(index, len(ordered)):
        if ordered[i].start_wall >= end:
            break
        # up to a keyframe and a frame after start: then the start keyframe is among them
        scanner = _scan_from_keyframe(
            ordered[i], start, lambda s: s.key_seen and s.frames[-1].wall > start
        )
        keys = [f for f in scanner.frames if f.keyframe and f.wall < end]
        before = [f for f in keys if f.wall <= start]
        # a segment whose last frame precedes start ends in a gap: start after the gap
        if before and scanner.frames[-1].wall >= start:
            return i, scanner, before[-1]
        after = [f for f in keys if f.wall > start]
        if after:
            return i, scanner, after[0]
    raise ExportError(f"nothing recorded between {start} and {end}")


def _find_end(
    ordered: list[SegmentRef], first: int, head: _Scanner, end: float
) -> tuple[int, _Scanner | None, float, int]:
    """The last segment, its scanner if it was demuxed, and the wall time and end offset of the
    last video frame before ``end``."""
    last = max(i for i, s in enumerate(ordered) if s.start_wall < end or i == first)
    for i in range(last, first - 1, -1):
        segment = ordered[i]
        if segment.end_wall is not None and segment.end_wall < end:
            return i, (head if i == first else None), segment.end_wall, _file_size(segment)
        scanner = _scan_from_keyframe(
            segment, math.nextafter(end, -math.inf), lambda s: s.frames[-1].wall >= end,
            head if i == first else None,
        )
        before = [f for f in scanner.frames if f.wall < end]
        if before and len(before) == len(scanner.frames) and scanner.complete:
            # the whole segment, with any audio after its last frame, as with end_wall above
            return i, scanner, before[-1].wall, _file_size(segment)
        if before:
            return i, scanner, before[-1].wall, before[-1].stop
    raise ExportError(f"nothing recorded before {end}")  # unreachable: the start frame is one


def _scan_from_keyframe(
    segment: SegmentRef,
    wall: float,
    done: Callable[[_Scanner], bool],
    head: _Scanner | None = None,
) -> _Scanner:
    """A scanner advanced until ``done``, started at the last keyframe at or before ``wall``.

    Demuxing from the segment's start would give the same frames from there on, only slower:
    the keyframe is found by :func:`_keyframe_packs` and trusted only if the demuxer, started
    there, sees a keyframe right at it; else the scan starts at the beginning of the file
    (or resumes ``head``, the scanner that found the export's start in this segment).
    """
    packs, base = _keyframe_packs(segment, wall)
    origin = max((offset for offset, pts in packs if _wall(segment, base, pts) <= wall), default=0)
    if head is not None and origin <= head.origin + head.read:
        head.advance(done)  # what is left to demux lies ahead of head already
        return head
    if origin:
        scanner = _Scanner(segment, origin, base)
        scanner.advance(done)
        if scanner.frames and scanner.frames[0].keyframe and scanner.frames[0].start == origin:
            return scanner
    scanner = head or _Scanner(segment)
    scanner.advance(done)
    return scanner


def _wall(segment: SegmentRef, base: int | None, pts: int) -> float:
    return segment.start_wall + _pts_delta(pts, pts if base is None else base) / CLOCK


def _unreadable(path: Path, exc: Exception) -> ExportError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ExportError(f"segment {path} is unreadable: {reason}")


def _file_size(segment: SegmentRef) -> int:
    try:
        return os.stat(segment.path).st_size
    except OSError as exc:
        raise _unreadable(segment.path, exc) from exc


class _Scanner:
    """Demuxes a segment file as far as needed: wall time, keyframe flag and byte range of each
    frame of its (first) video stream."""

    def __init__(self, segment: SegmentRef, origin: int = 0, base: int | None = None) -> None:
        self.segment = segment
        self.origin = origin  # file offset where demuxing started
        self.base = segment.start_pts if base is None else base  # PTS at segment.start_wall
        self.codec = segment.codec
        self.frames: list[_Frame] = []
        self.key_seen = False
        self.read = 0  # bytes fed to the demuxer
        self.complete = False  # demuxed to the end of the file
        self._stream_id: int | None = None
        self._demuxer = PsDemuxer()

    def advance(self, done: Callable[[_Scanner], bool]) -> None:
        """Demux until ``done(self)`` holds after a frame, or to the end of the file."""
        if self.frames and done(self):
            return
        path = self.segment.path
        try:
            with open(path, "rb") as f:
                f.seek(self.origin + self.read)
                while not self.complete:
                    chunk = f.read(_SCAN_SIZE)
                    self.read += len(chunk)
                    self.complete = not chunk
                    units = self._demuxer.feed(chunk) if chunk else self._demuxer.flush()
                    if self._add(units, done):
                        return
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        if self._demuxer.refusal is not None:
            raise ExportError(f"segment {path} is {self._demuxer.refusal}")

    def _add(self, units: list[AccessUnit], done: Callable[[_Scanner], bool]) -> bool:
        finished = False
        for unit in units:
            if unit.codec not in _VIDEO_CODECS or self._stream_id not in (None, unit.stream_id):
                continue
            self._stream_id = unit.stream_id
            self.codec = unit.codec
            if unit.pts is None:
                wall = self.frames[-1].wall if self.frames else self.segment.start_wall
            else:
                if self.base is None:
                    self.base = unit.pts
                wall = self.segment.start_wall + _pts_delta(unit.pts, self.base) / CLOCK
            start = self.origin + unit.offset
            self.frames.append(_Frame(wall, unit.keyframe, start, start + len(unit.ps_bytes)))
            self.key_seen = self.key_seen or unit.keyframe
            finished = finished or done(self)
        return finished


def _keyframe_packs(segment: SegmentRef, wall: float) -> tuple[list[tuple[int, int]], int | None]:
    """Offsets and video PTS of the packs that open with a system header (GB/T 28181 App. C.1
    puts one before every keyframe), up to the first one after ``wall``; and the PTS at the
    segment's start (from the index, else from a pack at offset 0, else ``None``).

    A quick look with ``bytes.find`` that does not demux; an H.264/H.265 payload cannot hold
    ``00 00 01 BB``, an audio payload can, hence the checks on the pack header before it. When
    the index gives the segment's times, the look starts where the mean bit rate puts ``wall``
    less a lead (a few seconds, then more), and at the start of the file only if no keyframe
    showed up before ``wall`` that way. Any keyframe before ``wall`` will do; a later one only
    saves demuxing.
    """
    base, end_wall = segment.start_pts, segment.end_wall
    if base is not None and end_wall is not None and end_wall > segment.start_wall:
        size = _file_size(segment)
        for lead in _LEADS:
            share = (wall - lead - segment.start_wall) / (end_wall - segment.start_wall)
            skip = int(size * min(share, 1.0))
            if skip < _FIND_SIZE:
                break
            packs, _ = _packs_from(segment, skip, base, wall)
            if packs and _wall(segment, base, packs[0][1]) <= wall:
                return packs, base
    return _packs_from(segment, 0, base, wall)


def _packs_from(
    segment: SegmentRef, skip: int, base: int | None, wall: float
) -> tuple[list[tuple[int, int]], int | None]:
    packs: list[tuple[int, int]] = []
    try:
        with open(segment.path, "rb") as f:
            f.seek(skip)
            buf = b""
            offset = skip  # file offset of buf[0]
            while chunk := f.read(_FIND_SIZE):
                buf += chunk
                pos = _find_packs(buf, offset, packs)
                if base is None and packs and packs[0][0] == 0:
                    base = packs[0][1]
                if packs and _wall(segment, base, packs[-1][1]) > wall:
                    break
                keep = min(pos, max(len(buf) - _FIND_KEEP, 0))
                buf, offset = buf[keep:], offset + keep
    except OSError as exc:
        raise _unreadable(segment.path, exc) from exc
    if base is None:
        return [], None
    return packs, base


def _find_packs(buf: bytes, offset: int, packs: list[tuple[int, int]]) -> int:
    """Append the keyframe packs that lie wholly in ``buf``; return where to search on from."""
    pos = 0
    while (header := buf.find(b"\x00\x00\x01\xbb", pos)) >= 0:
        found = _pack_before(buf, header)
        if found is not None:
            pts = _video_pts(buf, header)
            if pts == -1:  # runs past the end of buf: look again with more bytes
                return found
            if pts is not None and (not packs or packs[-1][0] < offset + found):
                packs.append((offset + found, pts))
        pos = header + 4
    return max(len(buf) - 3, 0)


def _pack_before(buf: bytes, header: int) -> int | None:
    """Start of the MPEG-2 pack header that ends right at ``header``, if there is one."""
    for stuffing in range(8):
        start = header - 14 - stuffing
        if (
            start >= 0
            and buf[start : start + 4] == b"\x00\x00\x01\xba"
            and buf[start + 4] >> 6 == 0b01
            and buf[start + 13] & 0x07 == stuffing
        ):
            return start
    return None


def _video_pts(buf: bytes, pos: int) -> int | None:
    """PTS of the first video PES from ``pos`` on, skipping a few other structures by length.

    ``None`` if there is none or it has no PTS, -1 if ``buf`` ends first.
    """
    for _ in range(8):
        if pos + 14 > len(buf):
            return -1
        if buf[pos : pos + 3] != b"\x00\x00\x01" or buf[pos + 3] < 0xBB:
            return None
        if 0xE0 <= buf[pos + 3] <= 0xEF:
            if buf[pos + 6] >> 6 != 0b10 or not buf[pos + 7] & 0x80:
                return None
            b = buf[pos + 9 : pos + 14]  # ISO/IEC 13818-1 2.4.3.7: 3 + 15 + 15 bits, markers
            return (b[0] >> 1 & 0x07) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1
        pos += 6 + (buf[pos + 4] << 8 | buf[pos + 5])
    return None


# -- PS ----------------------------------------------------------------------------------------


def export_ps(plan: ExportPlan, *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the original PS bytes of ``plan``, byte-exact, in chunks of at most ``chunk_size``.

    A segment that disappeared or shrank since planning raises :class:`ExportError`.
    """
    for piece in plan.pieces:
        yield from _read_range(piece, chunk_size)


def _read_range(piece: ExportPiece, chunk_size: int) -> Iterator[bytes]:
    path = piece.segment.path
    try:
        with open(path, "rb") as f:
            f.seek(piece.start)
            left = piece.stop - piece.start
            while left > 0:
                chunk = f.read(min(chunk_size, left))
                if not chunk:
                    raise ExportError(f"segment {path} is shorter than planned")
                left -= len(chunk)
                yield chunk
    except OSError as exc:
        raise _unreadable(path, exc) from exc


# -- MP4 ---------------------------------------------------------------------------------------


class _PiecesFile(io.RawIOBase):
    """The pieces of a plan read as one seekable stream, for PyAV; files are opened lazily.

    Read errors surface from PyAV's demuxer as the :class:`ExportError` raised here.
    """

    def __init__(self, pieces: Sequence[ExportPiece]) -> None:
        super().__init__()
        self.pieces = pieces
        self.starts: list[int] = []  # stream offset of each piece
        size = 0
        for piece in pieces:
            self.starts.append(size)
            size += piece.stop - piece.start
        self.size = size
        self._pos = 0
        self._index = -1
        self._file: io.BufferedReader | None = None

    def piece_at(self, pos: int) -> int:
        """Index of the piece that holds stream offset ``pos``."""
        return max(bisect_right(self.starts, pos) - 1, 0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self.size:
            return 0
        index = self.piece_at(self._pos)
        piece = self.pieces[index]
        if index != self._index or self._file is None:
            self._switch(index)
        assert self._file is not None
        within = self._pos - self.starts[index]
        want = min(len(buffer), piece.stop - piece.start - within)
        self._file.seek(piece.start + within)
        got = self._file.readinto(memoryview(buffer)[:want])
        if not got:
            raise ExportError(f"segment {piece.segment.path} is shorter than planned")
        self._pos += got
        return got

    def _switch(self, index: int) -> None:
        self._close_file()
        path = self.pieces[index].segment.path
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        self._index = index

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"unsupported whence {whence}")
        origin = (0, self._pos, self.size)[whence]
        self._pos = min(max(origin + offset, 0), self.size)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()
        super().close()


class _Sink:
    """A write-only, non-seekable file for PyAV; the generator takes what was written."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return data


class _Timeline:
    """Places each piece's PTS/DTS on one output timeline in 90 kHz ticks that starts at 0.

    A piece's frames keep their PTS differences; the pieces are placed by their segments' wall
    times, so a gap in the recording stays a gap in the MP4.
    """

    def __init__(self, pieces: Sequence[ExportPiece]) -> None:
        self._pieces = pieces
        self._origin_wall: float | None = None
        self._origin_ticks = 0
        self._index = -1
        self._base = 0  # PTS at the current piece's segment start
        self._ticks = 0  # output ticks of the current piece's segment start
        self.last_dts: int | None = None
        self.step = CLOCK // 25  # last DTS step, for a packet without timestamps

    def place(self, index: int, pts: int, dts: int) -> tuple[int, int]:
        """Output (PTS, DTS) of a packet of piece ``index`` (90 kHz input timestamps)."""
        if index != self._index:
            self._enter(index, pts, dts)
        out_pts = self._ticks + _pts_delta(pts, self._base)
        return self.keep_order(out_pts, out_pts - _pts_delta(pts, dts))

    def _enter(self, index: int, pts: int, dts: int) -> None:
        piece = self._pieces[index]
        self._index = index
        self._base = piece.start_pts if piece.start_pts is not None else pts
        wall = piece.segment.start_wall
        if self._origin_wall is None:
            self._origin_wall = wall
            # the first packet's DTS becomes 0
            self._origin_ticks = _pts_delta(pts, dts) - _pts_delta(pts, self._base)
        self._ticks = self._origin_ticks + round((wall - self._origin_wall) * CLOCK)

    def keep_order(self, pts: int, dts: int) -> tuple[int, int]:
        """Keep DTS strictly increasing whatever the wall times of the segments say."""
        last = self.last_dts
        if last is not None:
            if dts <= last:
                pts, dts = pts + last + 1 - dts, last + 1
            else:
                self.step = min(dts - last, CLOCK)
        self.last_dts = dts
        return pts, dts


def export_mp4(plan: ExportPlan, *, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield ``plan`` remuxed to fragmented MP4 (video only, stream copy), in chunks.

    Timestamps start at 0 and follow the segments' wall times, so a gap between segments stays
    a gap. Audio is dropped: FFmpeg's ``mp4`` muxer refuses G.711 (``pcm_alaw``/``pcm_mulaw``),
    which is what GB/T 28181 cameras send, and the MP4 stays a plain stream copy. A chunk is
    yielded as soon as ``chunk_size`` bytes have been written (FFmpeg writes one fragment per
    GOP), and the rest at the end. A segment file that disappeared or shrank since planning, or
    an FFmpeg failure, raises :class:`ExportError` when the export reaches it.
    """
    import av  # only MP4 export needs PyAV; planning and PS export run without it

    if not plan.pieces:
        raise ExportError("the plan is empty")
    sink = _Sink()
    try:
        with _PiecesFile(plan.pieces) as raw:
            source, video = _open_input(raw)
            with source, av.open(sink, "w", format="mp4", options=_MP4_OPTIONS) as output:
                stream = output.add_stream_from_template(video)
                for packet in _packets(source, video, raw, _Timeline(plan.pieces)):
                    packet.stream = stream
                    output.mux(packet)
                    if sink.size >= chunk_size:
                        yield sink.take()
                output.close()
                if sink.size:
                    yield sink.take()
    except av.FFmpegError as exc:
        raise ExportError(f"MP4 remux failed: {exc}") from exc


def _open_input(raw: _PiecesFile) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open the PS with PyAV; probe little first, everything if that did not find the video."""
    import av

    for options in (_PROBE, {}):
        raw.seek(0)
        try:
            source = av.open(raw, "r", format="mpeg", options=options, buffer_size=_READ_SIZE)
        except av.FFmpegError as exc:
            raise _unreadable(raw.pieces[0].segment.path, exc) from exc
        for video in source.streams.video:
            if video.codec_context.name in ("h264", "hevc") and video.codec_context.width:
                return source, video
        source.close()
    raise ExportError(f"segment {raw.pieces[0].segment.path} has no H.264 or H.265 video")


def _packets(
    source: av.container.InputContainer,
    video: av.VideoStream,
    raw: _PiecesFile,
    timeline: _Timeline,
) -> Iterator[av.Packet[av.VideoStream]]:
    """The video packets, their timestamps placed on the output timeline."""
    scale = video.time_base * CLOCK if video.time_base else Fraction(1)
    rescale = scale != 1
    index = 0
    for packet in source.demux(video):
        if packet.size == 0:
            continue
        if packet.pos is not None and packet.pos >= 0:
            index = raw.piece_at(packet.pos)
        pts = packet.pts if packet.pts is not None else packet.dts
        dts = packet.dts if packet.dts is not None else pts
        if pts is None or dts is None:
            if timeline.last_dts is None:
                continue  # nothing to place it by before the first timestamp
            guess = timeline.last_dts + timeline.step
            packet.pts, packet.dts = timeline.keep_order(guess, guess)
        else:
            if rescale:
                pts, dts = round(pts * scale), round(dts * scale)
            packet.pts, packet.dts = timeline.place(index, pts, dts)
        packet.time_base = _TIME_BASE
        yield packet
