"""recorder.export: planning by wall time, byte-exact PS export, fragmented MP4 remux."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from recorder.export import (
    CLOCK,
    ExportError,
    ExportPiece,
    ExportPlan,
    SegmentRef,
    export_mp4,
    export_ps,
    plan_export,
)
from rtp.ps import AccessUnit, PsDemuxer
from rtp.psmux import PsMuxer
from tests.conftest import load

WALL = 1_700_000_000.0
FILES = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps"]
FIRST_COUNTER = 25  # the gb_* files start at frame counter 25 (tests/data/media/README.md)


@cache
def video_units(name: str) -> tuple[bytes, tuple[AccessUnit, ...]]:
    return demux_video(load(f"media/{name}"))


def demux_video(data: bytes) -> tuple[bytes, tuple[AccessUnit, ...]]:
    demuxer = PsDemuxer()
    units = demuxer.feed(data) + demuxer.flush()
    return data, tuple(u for u in units if u.codec in ("h264", "h265"))


@dataclass
class Recording:
    data: bytes
    frames: tuple[AccessUnit, ...]
    walls: list[float]  # wall time of each video frame
    segments: list[SegmentRef]
    segment_starts: set[int]  # index of each segment's first frame, and len(frames)

    def expected(self, start: float, end: float) -> tuple[int, int]:
        """Indices of the first and last frame an export of [start, end) holds."""
        keys = [i for i, f in enumerate(self.frames) if f.keyframe]
        before = [i for i in keys if self.walls[i] <= start]
        first = before[-1] if before else min(i for i in keys if self.walls[i] > start)
        last = max(i for i, wall in enumerate(self.walls) if wall < end)
        return first, last

    def slice(self, first: int, last: int) -> bytes:
        """The stream from frame ``first`` to frame ``last``, or to the end of its segment when
        it is a segment's last frame (the audio after it comes along)."""
        stop = self.frames[last].offset + len(self.frames[last].ps_bytes)
        if last + 1 in self.segment_starts:
            stop = self.frames[last + 1].offset if last + 1 < len(self.frames) else len(self.data)
        return self.data[self.frames[first].offset : stop]


def record(
    tmp_path: Path,
    name: str | tuple[bytes, tuple[AccessUnit, ...]],
    gops_per_segment: int = 2,
    gaps: dict[int, float] | None = None,
    end_walls: bool = False,
) -> Recording:
    """Cut the test stream into segment files at keyframe packs, as the recorder writes them.

    ``gaps`` maps a segment number to seconds of wall time missing before it (camera offline);
    ``end_walls`` fills in each segment's end_wall (its last frame's wall time) as the index has.
    """
    data, frames = video_units(name) if isinstance(name, str) else name
    keys = [i for i, f in enumerate(frames) if f.keyframe][::gops_per_segment]
    walls: list[float] = []
    segments: list[SegmentRef] = []
    shift = 0.0
    for number, (first, stop) in enumerate(zip(keys, [*keys[1:], len(frames)], strict=True)):
        shift += (gaps or {}).get(number, 0.0)
        end = frames[stop].offset if stop < len(frames) else len(data)
        path = tmp_path / f"{number:03d}.ps"
        path.write_bytes(data[frames[first].offset : end])
        base = frames[first].pts
        assert base is not None
        start_wall = WALL + shift + (base - frames[0].pts) / CLOCK
        for frame in frames[first:stop]:  # a frame without PTS takes the one before's time
            pts = frame.pts
            walls.append(walls[-1] if pts is None else start_wall + (pts - base) / CLOCK)
        end_wall = walls[-1] if end_walls else None
        segments.append(SegmentRef(path, start_wall, base, frames[first].codec, end_wall))
    return Recording(data, frames, walls, segments, {*keys, len(frames)})


def counter(frame: av.VideoFrame) -> int:
    """The frame number drawn as a 16-bit bar along the bottom (tests/data/media/README.md)."""
    luma = frame.to_ndarray(format="gray")
    row = luma[luma.shape[0] - 14]
    bits = [int(row[8 + bit * 38 + 17] > 128) for bit in range(16)]
    return int("".join(map(str, bits)), 2)


def mp4_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video"]
        return [p for p in container.demux(video=0) if p.size]


def mp4_counters(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [counter(frame) for frame in container.decode(video=0)]


def counters(first: int, last: int) -> list[int]:
    return [(FIRST_COUNTER + i) % 250 for i in range(first, last + 1)]


RANGES = [
    pytest.param(1.3, 2.5, id="mid-gop-in-one-segment"),
    pytest.param(0.5, 7.01, id="across-segments"),
    pytest.param(-30.0, 3.0, id="starts-before-the-recording"),
    pytest.param(4.0, 1000.0, id="ends-after-the-recording"),
    pytest.param(2.0, 4.0, id="segment-boundaries"),
]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize(("start", "end"), RANGES)
def test_ps_export_is_the_byte_slice_from_keyframe_to_last_frame(tmp_path, name, start, end):
    rec = record(tmp_path, name)
    first, last = rec.expected(WALL + start, WALL + end)
    plan = plan_export(rec.segments, WALL + start, WALL + end)
    exported = b"".join(export_ps(plan))
    assert exported == rec.slice(first, last)
    assert plan.size == len(exported)
    assert plan.start_wall == pytest.approx(rec.walls[first])
    assert plan.end_wall == pytest.approx(rec.walls[last])
    assert plan.codec == rec.frames[0].codec


@pytest.mark.parametrize("name", FILES)
def test_mp4_export_holds_exactly_the_frames_in_range(tmp_path, name):
    rec = record(tmp_path, name)
    first, last = rec.expected(WALL + 1.3, WALL + 7.01)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan_export(rec.segments, WALL + 1.3, WALL + 7.01))))
    packets = mp4_packets(out)
    assert len(packets) == last - first + 1
    assert packets[0].pts == packets[0].dts == 0
    assert packets[0].is_keyframe
    times = [float(p.pts * p.time_base) for p in packets]
    assert times == pytest.approx([w - rec.walls[first] for w in rec.walls[first : last + 1]],
                                  abs=1e-3)
    assert mp4_counters(out) == counters(first, last)


def test_mp4_export_of_h265_is_hevc(tmp_path):
    rec = record(tmp_path, "gb_h265_zlm.ps")
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan_export(rec.segments, WALL, WALL + 100))))
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
    assert mp4_counters(out) == counters(0, len(rec.frames) - 1)


def test_range_starting_mid_gop_starts_at_the_previous_keyframe(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    start = rec.walls[30] + 0.001  # frames 25..49 are one GOP
    plan = plan_export(rec.segments, start, start + 0.5)
    assert plan.start_wall == pytest.approx(rec.walls[25])
    assert b"".join(export_ps(plan)) == rec.slice(25, 42)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan)))
    assert mp4_counters(out) == counters(25, 42)


def test_start_on_a_keyframe_starts_there(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    plan = plan_export(rec.segments, rec.walls[75], rec.walls[80])
    assert b"".join(export_ps(plan)) == rec.slice(75, 79)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(5.0, 5.0, id="empty-interval"),
        pytest.param(6.0, 5.0, id="reversed"),
        pytest.param(-100.0, -10.0, id="before-the-recording"),
        pytest.param(10.5, 20.0, id="after-the-recording"),
    ],
)
def test_nothing_in_range_raises(tmp_path, start, end):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    with pytest.raises(ExportError):
        plan_export(rec.segments, WALL + start, WALL + end)


def test_no_segments_raises():
    with pytest.raises(ExportError, match="nothing recorded"):
        plan_export([], WALL, WALL + 10)


def test_range_inside_a_gap_raises_and_a_range_after_it_skips_the_old_gop(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps", gaps={3: 100.0})  # segment 3 begins at 106 s
    with pytest.raises(ExportError):
        plan_export(rec.segments, WALL + 30, WALL + 90)
    plan = plan_export(rec.segments, WALL + 30, WALL + 107)
    assert plan.start_wall == pytest.approx(rec.walls[150])
    assert b"".join(export_ps(plan)) == rec.slice(150, 174)


def test_mp4_timeline_keeps_a_gap_between_segments(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps", gaps={2: 30.0})
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan_export(rec.segments, WALL + 1, WALL + 40))))
    packets = mp4_packets(out)
    first, last = rec.expected(WALL + 1, WALL + 40)
    times = [float(p.pts * p.time_base) for p in packets]
    assert times == pytest.approx([w - rec.walls[first] for w in rec.walls[first : last + 1]],
                                  abs=1e-3)
    assert first == 25
    assert times[100 - first] - times[99 - first] == pytest.approx(30.04, abs=1e-3)
    assert mp4_counters(out) == counters(first, last)


def test_segment_order_and_unknown_start_pts_do_not_matter(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    vague = [dataclasses.replace(s, start_pts=None, codec=None) for s in reversed(rec.segments)]
    plan = plan_export(vague, WALL + 2.5, WALL + 8.5)
    first, last = rec.expected(WALL + 2.5, WALL + 8.5)
    assert plan.codec == "h264"
    assert b"".join(export_ps(plan)) == rec.slice(first, last)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan)))
    assert mp4_counters(out) == counters(first, last)


@pytest.mark.parametrize(("start", "end"), [*RANGES, pytest.param(2.5, 3.9, id="one-segment")])
def test_end_walls_from_the_index_give_the_same_export(tmp_path, start, end):
    rec = record(tmp_path, "gb_h264_alaw_zlm.ps", end_walls=True)
    first, last = rec.expected(WALL + start, WALL + end)
    plan = plan_export(rec.segments, WALL + start, WALL + end)
    assert b"".join(export_ps(plan)) == rec.slice(first, last)
    assert plan.end_wall == pytest.approx(rec.walls[last])
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan)))
    assert len(mp4_packets(out)) == last - first + 1


class CountingDemuxer(PsDemuxer):
    fed = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[AccessUnit]:
        CountingDemuxer.fed += len(data)
        return super().feed(data)


@pytest.mark.parametrize(
    ("find_size", "end_walls", "leads"),
    [
        pytest.param(None, False, None, id="from-the-start"),
        # keyframe packs and their PES headers cut by the reads that look for them
        pytest.param(700, False, None, id="small-reads"),
        # the look starts where the bit rate puts the cut, 4 s earlier
        pytest.param(700, True, None, id="bit-rate-guess"),
        # a guess that lands after the keyframe: look again from the start
        pytest.param(700, True, (-1.0,), id="guess-too-late"),
    ],
)
def test_planning_demuxes_from_the_keyframe_before_each_cut(
    tmp_path, monkeypatch, find_size, end_walls, leads
):
    monkeypatch.setattr("recorder.export.PsDemuxer", CountingDemuxer)
    if find_size is not None:
        monkeypatch.setattr("recorder.export._FIND_SIZE", find_size)
        monkeypatch.setattr("recorder.export._FIND_KEEP", 300)
    if leads is not None:
        monkeypatch.setattr("recorder.export._LEADS", leads)
    CountingDemuxer.fed = 0
    rec = record(tmp_path, "gb_h264_alaw_zlm.ps", gops_per_segment=10, end_walls=end_walls)
    plan = plan_export(rec.segments, WALL + 5.1, WALL + 6.5)
    first, last = rec.expected(WALL + 5.1, WALL + 6.5)
    assert first == 125
    assert b"".join(export_ps(plan)) == rec.slice(first, last)
    assert 0 < CountingDemuxer.fed < len(rec.data) / 4


@pytest.mark.parametrize("name", ["h264_640x360_25fps_10s_ffmpeg.ps",
                                  "h265_640x360_25fps_10s_ffmpeg.ps"])
def test_a_stream_without_keyframe_packs_is_demuxed_from_its_start(tmp_path, name):
    """FFmpeg's PS has no system header before keyframes and cuts frames across packs."""
    rec = record(tmp_path, name, gops_per_segment=10)
    assert len(rec.segments) == 1
    for start, end in [(5.1, 6.5), (0.0, 3.0), (7.3, 100.0)]:
        first, last = rec.expected(WALL + start, WALL + end)
        plan = plan_export(rec.segments, WALL + start, WALL + end)
        assert b"".join(export_ps(plan)) == rec.slice(first, last)


def test_packs_that_announce_a_keyframe_falsely_are_not_trusted(tmp_path):
    """A system header before P-frames (every 10th frame) and none before the IDR at 25."""
    _, frames = video_units("gb_h264_zlm.ps")
    muxer = PsMuxer("h264")
    assert all(f.pts is not None for f in frames)
    data = b"".join(muxer.mux_video(f.data, f.pts or 0, keyframe=i % 10 == 0)
                    for i, f in enumerate(frames))
    rec = record(tmp_path, demux_video(data), gops_per_segment=10)
    assert [i for i, f in enumerate(rec.frames) if f.keyframe][:3] == [0, 25, 50]
    start = rec.walls[37]
    plan = plan_export(rec.segments, start, start + 1)
    assert plan.start_wall == pytest.approx(rec.walls[25])
    assert b"".join(export_ps(plan)) == rec.slice(25, 61)


def test_pts_wrap_inside_a_segment(tmp_path):
    """A segment whose PTS wraps past 2**33: the index's start_pts lies just below the wrap."""
    rec = record(tmp_path, "gb_h264_zlm.ps", gops_per_segment=10)
    segment = rec.segments[0]
    assert segment.start_pts is not None
    wrapped = dataclasses.replace(segment, start_pts=segment.start_pts + (1 << 33))
    plan = plan_export([wrapped], WALL + 1.3, WALL + 2.5)
    assert b"".join(export_ps(plan)) == rec.slice(25, 62)


@pytest.mark.parametrize("export", [export_ps, export_mp4])
def test_exports_stream_in_chunks(tmp_path, export):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    plan = plan_export(rec.segments, WALL, WALL + 100)
    chunks = list(export(plan, chunk_size=64 * 1024))
    assert len(chunks) > 5
    if export is export_ps:
        assert all(len(chunk) <= 64 * 1024 for chunk in chunks)
        assert b"".join(chunks) == rec.data
    else:
        assert chunks[0][4:8] == b"ftyp"


def test_default_chunks_are_a_mebibyte(tmp_path):
    data, _ = video_units("gb_h264_zlm.ps")
    big = tmp_path / "big.ps"
    big.write_bytes(data * 3)
    size = len(data) * 3
    plan = ExportPlan((ExportPiece(SegmentRef(big, WALL), 0, size, None),), WALL, WALL, None)
    chunks = list(export_ps(plan))
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, size - (2 << 20)]
    assert b"".join(chunks) == data * 3


def test_mp4_export_yields_before_reading_later_segments(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps", gops_per_segment=1)
    chunks = export_mp4(plan_export(rec.segments, WALL, WALL + 100), chunk_size=16 * 1024)
    next(chunks)
    rec.segments[-1].path.unlink()  # not opened yet: the export fails only when it gets there
    with pytest.raises(ExportError, match="unreadable"):
        list(chunks)


def test_mp4_export_probes_again_when_a_short_probe_misses_the_video(tmp_path, monkeypatch):
    # 32 bytes of probing end before the parameter sets of this file are parsed
    monkeypatch.setattr("recorder.export._PROBE", {"probesize": "32"})
    rec = record(tmp_path, "gb_h264_alaw_zlm.ps")
    out = tmp_path / "out.mp4"
    out.write_bytes(b"".join(export_mp4(plan_export(rec.segments, WALL + 1, WALL + 3))))
    assert mp4_counters(out) == counters(25, 74)


def test_mp4_export_of_an_empty_plan_raises():
    with pytest.raises(ExportError, match="empty"):
        next(export_mp4(ExportPlan((), WALL, WALL, None)))


def test_segment_removed_after_planning_raises(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    plan = plan_export(rec.segments, WALL, WALL + 100)
    rec.segments[2].path.unlink()
    with pytest.raises(ExportError, match="unreadable"):
        list(export_ps(plan))


def test_segment_truncated_after_planning_raises(tmp_path):
    rec = record(tmp_path, "gb_h264_zlm.ps")
    plan = plan_export(rec.segments, WALL, WALL + 100)
    path = rec.segments[1].path
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ExportError, match="shorter than planned"):
        list(export_ps(plan))


def test_a_segment_that_is_not_ps_raises(tmp_path):
    path = tmp_path / "ts.ps"
    path.write_bytes(bytes([0x47] + [0] * 187) * 40)
    with pytest.raises(ExportError, match="MPEG-TS"):
        plan_export([SegmentRef(path, WALL)], WALL, WALL + 10)


def test_counter_reader_matches_the_source(tmp_path):
    """The bar reader itself, on the original file, so the MP4 checks above mean something."""
    data, frames = video_units("gb_h264_zlm.ps")
    path = tmp_path / "whole.ps"
    path.write_bytes(data)
    with av.open(str(path), format="mpeg") as container:
        seen = [counter(frame) for frame in container.decode(video=0)]
    assert seen == counters(0, len(frames) - 1)
    assert np.diff(seen[:10]).tolist() == [1] * 9
