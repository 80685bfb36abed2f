"""recorder.playback: the stored PS of a range, frame by frame, from recordings made by the real
SegmentWriter; hash checks, gaps, seek, keyframes only, bounded reads; decoded with PyAV."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.index import RecordIndex, SegmentRow
from recorder.playback import (
    Frame,
    Gap,
    PlaybackError,
    PlaybackEvent,
    PlaybackReader,
    SegmentAltered,
)
from recorder.segments import SegmentWriter
from rtp.ps import AccessUnit
from tests.recorder.media import CHANNEL, FPS, T0, TZ, decode, is_video, timed, units

GAP_S = 10.0  # wall time missing between the second and the third segment
FIRST_COUNTER = 25  # the gb_* files start at frame counter 25 (tests/data/media/README.md)
GB_FILES = ["gb_h264_zlm.ps", "gb_h265_zlm.ps", "gb_h264_alaw_zlm.ps"]
FFMPEG_FILES = ["h264_640x360_25fps_10s_ffmpeg.ps", "h265_640x360_25fps_10s_ffmpeg.ps"]


@dataclass
class Recording:
    root: Path
    rows: list[SegmentRow]
    walls: list[float]  # wall time of each video frame, as written
    keyframes: list[int]  # video frame numbers that are keyframes

    def data(self, row: SegmentRow) -> bytes:
        return (self.root / row.path).read_bytes()

    def frame_at(self, wall: float) -> int:
        """The number of the video frame written at ``wall``."""
        return min(range(len(self.walls)), key=lambda n: abs(self.walls[n] - wall))


def video_split(items: tuple[AccessUnit, ...], frames: int) -> int:
    """Index of the unit that is video frame number ``frames``."""
    seen = -1
    for i, unit in enumerate(items):
        if is_video(unit):
            seen += 1
            if seen == frames:
                return i
    return len(items)


def make_recording(root: Path, index: RecordIndex, name: str) -> Recording:
    """Frames 0-99 in two 2-second segments, a gap of GAP_S, frames 100-199 in two more."""
    items = units(name)
    split, stop = video_split(items, 100), video_split(items, 200)
    writer = SegmentWriter(root, index, CHANNEL, segment_s=2, tz=TZ)
    walls: list[float] = []
    keyframes: list[int] = []
    rows: list[SegmentRow] = []
    later = T0 + 100 / FPS + GAP_S
    for part, t0 in ((items[:split], T0), (items[split:stop], later)):
        if t0 == later:
            rows += writer.gap(walls[-1] + 1 / FPS, later, "camera offline")
        for unit, wall in timed(part, t0):
            if is_video(unit):
                if unit.keyframe:
                    keyframes.append(len(walls))
                walls.append(wall)
            rows += writer.write(unit, wall)
    rows += writer.close()
    assert len(rows) == 4
    return Recording(root, rows, walls, keyframes)


@pytest.fixture
def rec(root: Path, index: RecordIndex) -> Recording:
    return make_recording(root, index, "gb_h264_zlm.ps")


def play(rec: Recording, start: float, end: float, **kwargs: object) -> list[PlaybackEvent]:
    with PlaybackReader(rec.root, rec.rows, start, end, **kwargs) as reader:  # type: ignore[arg-type]
        return list(reader)


def frames(events: list[PlaybackEvent]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def video(events: list[PlaybackEvent]) -> list[Frame]:
    return [f for f in frames(events) if f.video]


def numbers(rec: Recording, events: list[PlaybackEvent]) -> list[int]:
    return [rec.frame_at(f.wall) for f in video(events)]


def assert_stored_bytes(rec: Recording, events: list[PlaybackEvent]) -> None:
    """Per segment, the frames' bytes are one run of the file, in order, without a hole."""
    by_segment: dict[int, list[Frame]] = {}
    for frame in frames(events):
        by_segment.setdefault(frame.segment_id, []).append(frame)
    rows = {row.id: row for row in rec.rows}
    for segment_id, run in by_segment.items():
        data = rec.data(rows[segment_id])
        first, last = run[0].offset, run[-1].offset + len(run[-1].ps_bytes)
        assert b"".join(f.ps_bytes for f in run) == data[first:last]
        assert [f.offset for f in run[1:]] == [f.offset + len(f.ps_bytes) for f in run[:-1]]


# ----- the whole recording ----------------------------------------------------------------------

@pytest.mark.parametrize("name", GB_FILES)
def test_the_whole_range_is_the_stored_files_with_the_gap_reported(root, index, name):
    rec = make_recording(root, index, name)
    events = play(rec, T0 - 60, T0 + 60)
    first, second, third, fourth = rec.rows
    gaps = [e for e in events if isinstance(e, Gap)]
    assert gaps == [Gap(second.end_wall, third.start_wall, "not recorded")]
    assert third.start_wall - second.end_wall == pytest.approx(GAP_S)
    cut = events.index(gaps[0])
    assert {f.segment_id for f in frames(events[:cut])} == {first.id, second.id}
    assert {f.segment_id for f in frames(events[cut:])} == {third.id, fourth.id}
    # every byte of every file, in order
    assert b"".join(f.ps_bytes for f in frames(events)) == b"".join(map(rec.data, rec.rows))
    assert_stored_bytes(rec, events)
    # wall times from the PTS are the times the frames were written at (ZLMediaKit stamps
    # in milliseconds: the H.265 file's PTS steps are 40 ms give or take one)
    assert [f.wall for f in video(events)] == pytest.approx(rec.walls, abs=0.0015)
    assert [f.keyframe for f in video(events)] == [n in rec.keyframes for n in range(200)]
    assert not any(f.keyframe for f in frames(events) if not f.video)
    if name == "gb_h264_alaw_zlm.ps":
        assert any(not f.video for f in frames(events))


@pytest.mark.parametrize("name", FFMPEG_FILES)
def test_ffmpeg_packs_that_split_frames_play_byte_exact_too(root, index, name):
    """FFmpeg's 2048-byte packs start frames inside a PES: the keyframe a range starts at is
    found all the same, and its bytes are the file's."""
    rec = make_recording(root, index, name)
    whole = play(rec, T0 - 1, T0 + 60)
    assert b"".join(f.ps_bytes for f in frames(whole)) == b"".join(map(rec.data, rec.rows))
    assert len(video(whole)) == 200
    events = play(rec, rec.walls[37], rec.walls[130])
    # some units carry no PTS (a PES can start two frames): count frames, not wall times
    assert len(video(events)) == 131 - 25
    assert video(events)[0].keyframe and rec.frame_at(video(events)[0].wall) == 25
    assert_stored_bytes(rec, events)


def test_the_played_bytes_decode_to_the_recorded_frames_in_order(rec, tmp_path):
    events = play(rec, T0 + 1.5, T0 + 6.0)  # across the first segment boundary
    out = tmp_path / "played.ps"
    out.write_bytes(b"".join(f.ps_bytes for f in frames(events)))
    first = rec.keyframes[1]  # frame 25, the keyframe before 1.5 s
    last = rec.frame_at(T0 + 6.0)  # frame 150 is at 6 s
    assert decode(out) == [(FIRST_COUNTER + n) % 250 for n in range(first, last + 1)]


# ----- where a range starts and ends -----------------------------------------------------------

def test_a_range_starting_mid_gop_starts_at_the_keyframe_before(rec):
    start = rec.walls[37] + 0.001
    events = play(rec, start, rec.walls[80])
    assert numbers(rec, events) == list(range(25, 81))  # ends with the frame at `end`
    assert video(events)[0].keyframe
    assert video(events)[0].wall <= start
    assert_stored_bytes(rec, events)


def test_a_range_starting_on_a_keyframe_starts_there_and_ends_at_or_after_end(rec):
    events = play(rec, rec.walls[50], rec.walls[60] - 0.001)
    assert numbers(rec, events) == list(range(50, 61))


def test_a_range_starting_in_the_gap_starts_after_it_without_a_gap_event(rec):
    events = play(rec, rec.walls[99] + 5.0, rec.walls[130])
    assert not [e for e in events if not isinstance(e, Frame)]
    assert numbers(rec, events) == list(range(100, 131))


def test_a_range_ending_in_the_gap_ends_with_the_recording_before_it(rec):
    events = play(rec, rec.walls[60], rec.walls[99] + 5.0)
    assert numbers(rec, events) == list(range(50, 100))
    assert not [e for e in events if isinstance(e, Gap)]
    assert frames(events)[-1].offset + len(frames(events)[-1].ps_bytes) == rec.rows[1].bytes


def test_a_range_with_nothing_recorded_gives_nothing(rec):
    assert play(rec, rec.walls[99] + 1.0, rec.walls[99] + 5.0) == []
    assert play(rec, T0 - 60, T0 - 30) == []
    assert play(rec, T0 + 600, T0 + 700) == []


# ----- tamper evidence -------------------------------------------------------------------------

def tamper(rec: Recording, row: SegmentRow) -> str:
    path = rec.root / row.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest()


def test_a_tampered_segment_is_reported_and_none_of_its_bytes_go_out(rec):
    second = rec.rows[1]
    found = tamper(rec, second)
    events = play(rec, T0, T0 + 60)
    altered = [e for e in events if isinstance(e, SegmentAltered)]
    assert altered == [SegmentAltered(second, found, "SHA-256 does not match the index")]
    assert second.id not in {f.segment_id for f in frames(events)}
    # reported before anything after it; the skip is a gap from the first segment's end
    at = events.index(altered[0])
    assert {f.segment_id for f in frames(events[:at])} == {rec.rows[0].id}
    gaps = [e for e in events if isinstance(e, Gap)]
    assert len(gaps) == 1 and events.index(gaps[0]) > at
    assert (gaps[0].start, gaps[0].end) == (rec.rows[0].end_wall, rec.rows[2].start_wall)
    assert second.path in gaps[0].reason and "SHA-256" in gaps[0].reason
    assert numbers(rec, events) == list(range(50)) + list(range(100, 200))
    assert_stored_bytes(rec, events)


def test_the_caller_may_stop_at_a_tampered_segment(rec):
    tamper(rec, rec.rows[2])
    handed: list[Frame] = []
    with PlaybackReader(rec.root, rec.rows, T0, T0 + 60) as reader:
        for event in reader:
            if isinstance(event, SegmentAltered):
                assert event.segment == rec.rows[2]
                break
            assert isinstance(event, Frame)
            handed.append(event)
        reader.close()
        assert list(reader) == []
    assert [rec.frame_at(f.wall) for f in handed] == list(range(100))


def test_a_missing_or_resized_segment_is_reported(rec):
    (rec.root / rec.rows[0].path).unlink()
    path = rec.root / rec.rows[3].path
    path.write_bytes(path.read_bytes() + b"\x00")
    events = play(rec, T0, T0 + 60)
    assert [e for e in events if isinstance(e, SegmentAltered)] == [
        SegmentAltered(rec.rows[0], None, "missing"),
        SegmentAltered(rec.rows[3], None, f"size {rec.rows[3].bytes + 1}, indexed "
                                          f"{rec.rows[3].bytes}"),
    ]
    # the first segment was skipped before anything was played: the second is the start
    assert numbers(rec, events) == list(range(50, 150))
    assert [e for e in events if isinstance(e, Gap)] == [
        Gap(rec.rows[1].end_wall, rec.rows[2].start_wall, "not recorded")]


# ----- control ---------------------------------------------------------------------------------

def test_seek_restarts_at_the_keyframe_at_or_before_the_time(rec):
    with PlaybackReader(rec.root, rec.rows, T0, T0 + 60) as reader:
        head = [next(reader) for _ in range(10)]
        reader.seek(rec.walls[160] + 0.01)
        after = list(reader)
        assert numbers(rec, head) == list(range(10))
        assert numbers(rec, after) == list(range(150, 200))
        assert not [e for e in after if not isinstance(e, Frame)]
        reader.seek(rec.walls[30])  # back, across the gap
        again = list(reader)
    assert numbers(rec, again) == list(range(25, 200))
    assert [e for e in again if isinstance(e, Gap)] == [
        Gap(rec.rows[1].end_wall, rec.rows[2].start_wall, "not recorded")]
    assert_stored_bytes(rec, after)
    assert_stored_bytes(rec, again)


def test_seek_into_the_gap_goes_on_after_it(rec):
    with PlaybackReader(rec.root, rec.rows, T0, T0 + 60) as reader:
        next(reader)
        reader.seek(rec.walls[99] + 3.0)
        assert numbers(rec, list(reader)) == list(range(100, 200))


def test_keyframes_only_hands_out_keyframes_and_resumes_at_the_next_one(rec):
    events = play(rec, rec.walls[10], T0 + 60, keyframes_only=True)
    assert all(f.keyframe and f.video for f in frames(events))
    assert numbers(rec, events) == list(range(0, 200, 25))
    assert len([e for e in events if isinstance(e, Gap)]) == 1
    with PlaybackReader(rec.root, rec.rows, T0, T0 + 60, keyframes_only=True) as reader:
        assert numbers(rec, [next(reader), next(reader)]) == [0, 25]
        reader.keyframes_only = False
        rest = list(reader)
    assert numbers(rec, rest) == list(range(50, 200))
    assert_stored_bytes(rec, rest)


# ----- bounded reads ---------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [4096, 10_000])
def test_reads_are_bounded_by_the_read_ahead(rec, chunk_size):
    read_ahead = 64 * 1024
    assert all(row.bytes > 2 * read_ahead for row in rec.rows)  # no segment fits
    with PlaybackReader(rec.root, rec.rows, rec.walls[70], T0 + 60, read_ahead=read_ahead,
                        chunk_size=chunk_size) as reader:
        events = list(reader)
        assert 0 < reader.peak_held <= read_ahead
        assert reader.held == 0
        assert reader.frames == len(frames(events))
        assert reader.bytes == sum(len(f.ps_bytes) for f in frames(events))
    assert numbers(rec, events) == list(range(50, 200))
    assert_stored_bytes(rec, events)


def test_the_default_read_ahead_holds_less_than_a_segment_of_a_real_camera(rec):
    with PlaybackReader(rec.root, rec.rows, T0, T0 + 60) as reader:
        list(reader)
        assert reader.peak_held <= reader.read_ahead


def expected_numbers(rec: Recording, begin: float, end: float) -> list[int]:
    """The video frames a playback of [begin, end) hands out, from the recording's layout."""
    rows = rec.rows
    if begin >= rows[3].end_wall:
        return []
    if rows[1].end_wall <= begin < rows[2].start_wall:
        first = 100  # in the gap: from the first keyframe after it
    else:
        first = max((n for n in rec.keyframes if rec.walls[n] <= begin), default=0)
    if rec.walls[first] >= end:
        return []
    later = [n for n in range(first, 200) if rec.walls[n] >= end]
    last = later[0] if later else 199
    if last == 100 and end <= rows[2].start_wall:
        last = 99  # the range ends in the gap
    return list(range(first, last + 1))


@settings(max_examples=40)
@given(
    start=st.floats(-3.0, 20.0),
    length=st.floats(0.01, 20.0),
    chunk=st.integers(4096, 70_000),
)
def test_any_range_starts_at_a_keyframe_and_keeps_the_stored_bytes(
    tmp_path_factory, start, length, chunk
):
    rec = shared_recording(tmp_path_factory)
    begin, end = T0 + start, T0 + start + length
    events = play(rec, begin, end, chunk_size=chunk, read_ahead=max(4 * chunk, 256 * 1024))
    assert numbers(rec, events) == expected_numbers(rec, begin, end)
    if events:
        assert video(events)[0].keyframe
    assert_stored_bytes(rec, events)


_SHARED: dict[str, Recording] = {}


def shared_recording(factory: pytest.TempPathFactory) -> Recording:
    """One recording for every example of a property test (written once, only read)."""
    if "rec" not in _SHARED:
        root = factory.mktemp("shared") / "recordings"
        root.mkdir()
        index = RecordIndex(root / "index.sqlite3")
        _SHARED["rec"] = make_recording(root, index, "gb_h264_zlm.ps")
        index.close()
    return _SHARED["rec"]


# ----- bad input -------------------------------------------------------------------------------

def test_bad_arguments_are_refused(rec):
    for start, end in [(T0, T0), (T0, T0 - 1), (float("nan"), T0), (T0, float("inf"))]:
        with pytest.raises(PlaybackError):
            PlaybackReader(rec.root, rec.rows, start, end)
    with pytest.raises(PlaybackError, match="read_ahead"):
        PlaybackReader(rec.root, rec.rows, T0, T0 + 1, read_ahead=10_000, chunk_size=4096)
    with pytest.raises(PlaybackError, match="chunk_size"):
        PlaybackReader(rec.root, rec.rows, T0, T0 + 1, chunk_size=100)
    other = dataclasses.replace(rec.rows[0], channel_id="other")
    with pytest.raises(PlaybackError, match="channel"):
        PlaybackReader(rec.root, [*rec.rows, other], T0, T0 + 1)
    with PlaybackReader(rec.root, rec.rows, T0, T0 + 1) as reader, pytest.raises(PlaybackError):
        reader.seek(float("nan"))


@settings(max_examples=60)
@given(data=st.binary(max_size=4096), cut=st.integers(0, 4096))
def test_any_file_content_with_a_matching_hash_plays_or_reports_never_crashes(
    tmp_path_factory, data, cut
):
    """A segment whose bytes are garbage but indexed as such: whatever comes out is events."""
    root = tmp_path_factory.mktemp("garbage")
    rec = shared_recording(tmp_path_factory)
    good = rec.data(rec.rows[0])
    body = good[:cut] + data
    (root / "x.ps").write_bytes(body)
    row = SegmentRow(1, CHANNEL, "x.ps", T0, T0 + 2, None, None, len(body), 1, "h264",
                     hashlib.sha256(body).hexdigest(), None, False)
    events = list(PlaybackReader(root, [row], T0 - 1, T0 + 10, chunk_size=4096,
                                 read_ahead=64 * 1024))
    assert all(isinstance(e, Frame) for e in events)
    assert b"".join(f.ps_bytes for f in frames(events)) in body
