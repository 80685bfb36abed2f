"""The playback benchmark's store (`bench/playback_store.py`): what the node is asked to play
must be a real recording, cut, hashed and indexed as the recorder does it, with time stamps
that rise across the clip's loops and the segments' cuts."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from recorder.index import RecordIndex
from recorder.playback import Frame, PlaybackReader
from recorder.service import root_index
from tests.recorder.media import TZ, decode, units

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import playback  # noqa: E402
import playback_store  # noqa: E402

CLIP = "gb_h264_zlm.ps"  # 250 frames, key frames every 25, frame numbers 25..249, 0..24
END = 1795680360.0  # every recording ends here (2026-11-26 16:06:00 at UTC+8)
CHANNELS = [f"3101120000131{n:07d}" for n in range(1, 6)]


def clip_frames() -> list[tuple[bytes, bool]]:
    """The test clip as the benchmark's clip comes: one (PS bytes, key frame) per frame."""
    return [(u.ps_bytes, u.keyframe) for u in units(CLIP) if 0xE0 <= u.stream_id <= 0xEF]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, object]:
    root = tmp_path_factory.mktemp("store") / "recordings"
    # channels 1-2 played back (20 s), 3 downloaded (70 s), 4-5 short; a lead of 10 s each
    plans = playback_store.plan(CHANNELS, played=3, seconds=20, download_seconds=70,
                                downloads=1, short_seconds=4, lead=10)
    report = playback_store.build(root, plans, clip_frames(), END, tz=TZ)
    return root, plans, report


def test_plan_gives_the_played_channels_their_lead_and_whole_gops() -> None:
    plans = playback_store.plan(CHANNELS, played=3, seconds=20, download_seconds=70,
                                downloads=1, short_seconds=4, lead=10)
    assert [p.seconds for p in plans] == [30, 30, 80, 4, 4]
    # whole GOPs of the benchmark clip (50 frames): 30 s is 15 GOPs, 4 s two
    assert [p.frames for p in plans] == [750, 750, 2000, 100, 100]
    assert playback_store.ChannelPlan("x", 4.1).frames == 150  # rounded up to a GOP


def test_every_channel_is_indexed_and_ends_at_the_same_time(store) -> None:
    root, plans, report = store
    with RecordIndex(root_index(root), read_only=True) as index:
        assert sorted(index.channels()) == CHANNELS
        rows = {c: index.segments(c, 0, 2e9) for c in CHANNELS}
    for p in plans:
        segs = rows[p.channel_id]
        assert segs[-1].end_wall == END
        assert segs[0].start_wall == END - p.frames / 25
        assert sum(r.frames for r in segs) == p.frames
        # the recorder's 60 s segments, adjacent, each file as long as its row says
        assert all(b.start_wall == a.end_wall for a, b in zip(segs, segs[1:], strict=False))
        assert all(r.end_wall - r.start_wall <= 60.0 + 1e-6 for r in segs)
        for r in segs:
            data = (root / r.path).read_bytes()
            assert len(data) == r.bytes
            assert hashlib.sha256(data).hexdigest() == r.sha256
    assert len(rows[CHANNELS[2]]) == 2  # 80 s: one cut at 60 s
    assert report.segments == sum(len(v) for v in rows.values())
    assert report.bytes == sum(r.bytes for v in rows.values() for r in v)
    assert report.start == END - 80


def test_a_download_plays_across_the_cut_and_the_clip_loops(store) -> None:
    root, _, _ = store
    channel = CHANNELS[2]
    with RecordIndex(root_index(root), read_only=True) as index:
        rows = index.segments(channel, 0, 2e9)
    frames = [e for e in PlaybackReader(str(root), rows, rows[0].start_wall, END)]
    assert all(isinstance(e, Frame) for e in frames)  # no gap, nothing altered
    assert len(frames) == 2000
    walls = [f.wall for f in frames]
    assert walls[0] == rows[0].start_wall
    assert max(abs(b - a - 0.04) for a, b in zip(walls, walls[1:], strict=False)) < 1e-6
    pts = [f.pts for f in frames]
    assert pts == [k * 3600 for k in range(2000)]  # rising past the clip's 250 frames
    assert [f.keyframe for f in frames] == [k % 25 == 0 for k in range(2000)]
    # what a playback sends is the files' bytes, in order
    stored = b"".join((root / r.path).read_bytes() for r in rows)
    assert b"".join(f.ps_bytes for f in frames) == stored


def test_segments_decode_to_the_clip_looped(store) -> None:
    root, _, _ = store
    with RecordIndex(root_index(root), read_only=True) as index:
        rows = index.segments(CHANNELS[2], 0, 2e9)
    first = decode(root / rows[0].path)
    assert first == [(25 + k) % 250 for k in range(1500)]
    second = decode(root / rows[1].path)
    assert second == [(25 + k) % 250 for k in range(1500, 2000)]


def test_estimate_is_close_to_what_was_written(store) -> None:
    _, plans, report = store
    estimate = playback_store.estimate_bytes(plans, playback_store.clip_es(clip_frames()))
    assert report.bytes <= estimate <= report.bytes * 1.05


def test_evict_covers_every_segment_file(store) -> None:
    root, _, report = store
    assert playback_store.evict(root) == report.bytes


def test_sessions_start_at_whole_seconds_spread_over_the_lead(store) -> None:
    _, plans, _ = store
    ranges = playback.session_ranges(plans, END, playbacks=2, downloads=1, lead=10)
    assert set(ranges) == set(CHANNELS[:3])
    starts = [ranges[c][0] - (END - p.frames / 25) for c, p in zip(CHANNELS, plans, strict=True)
              if c in ranges]
    assert starts == [0, 5, 0]  # two playbacks 5 s apart; the one download at the start
    assert all(end == END for _, end in ranges.values())
    assert all(start == int(start) for start, _ in ranges.values())
