"""A recording store for the playback benchmark, written by the recorder's own segment writer.

    python bench/playback_store.py ROOT --channels 300 --played 60 --seconds 40 \
        --download-seconds 320 [--short-seconds 4] [--kbps 2000]

The node finds recordings under `<data_dir>/recordings` through the index
`recorder.service.root_index(root)`. This module fills both the way the node does while it
records: every channel's access units go through a `recorder.segments.SegmentWriter` (60 s
segments cut at a key frame, SHA-256 and hash chain, fsync, atomic rename, one index row per
segment), with the wall time of each frame 40 ms after the one before.

The media is the benchmark clip of `bench/ingest_sender.py` (H.264 1280x720, 25 fps, a key
frame every 50 frames) looped: its frames are muxed again by `rtp.psmux.PsMuxer` with time
stamps that keep rising past the clip's end (a recording's PTS run on, and the playback reader
dates its frames by them), and the muxed stream is cut into access units by `rtp.ps.PsDemuxer`,
as the node's ingest cuts a camera's stream. One timeline serves every channel: channel i
writes the first `seconds_i` of it, all channels ending at the same wall time.

Which channels get how much: the first `played` channels are the ones the benchmark plays back
and downloads and get the minutes they need, plus a lead of one segment (60 s) within which
their sessions start at different points; every other channel gets a short recording
(`short_seconds`, two GOPs by default), so the index holds every channel as a store of that
many channels would. `estimate_bytes` says what a plan will take on the disk before it is
written, and `evict` drops the store's pages from the page cache, so that a run reads the
files from the disk as a node does a day after recording them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest_sender  # noqa: E402
from common import ROOT  # noqa: E402, F401  (puts the repository on sys.path)

from recorder.index import RecordIndex  # noqa: E402
from recorder.segments import SEGMENT_SUFFIX, SegmentWriter, local_tz  # noqa: E402
from recorder.service import root_index  # noqa: E402
from rtp.ps import AccessUnit, PsDemuxer  # noqa: E402
from rtp.psmux import PsMuxer  # noqa: E402

FPS = ingest_sender.FPS
FRAME_TICKS = ingest_sender.FRAME_TICKS
GOP = ingest_sender.GOP
SEGMENT_S = 60.0  # the node's default recording.segment_s
SHORT_SECONDS = 4.0  # two GOPs: the recording of a channel that is not played
FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 4)


@dataclass(frozen=True)
class ChannelPlan:
    """One channel of the store: its ID and how many seconds of recording it gets."""

    channel_id: str
    seconds: float

    @property
    def frames(self) -> int:
        """Whole GOPs covering `seconds`, so the recording ends before a key frame."""
        gops = max(1, math.ceil(self.seconds * FPS / GOP))
        return gops * GOP


@dataclass
class StoreReport:
    """What `build` wrote."""

    root: str
    channels: int
    segments: int
    bytes: int
    frames: int
    seconds: float  # wall time the writing took
    start: float  # earliest recording start (Unix seconds)
    end: float  # when every recording ends (Unix seconds)


def plan(channel_ids: Sequence[str], played: int, seconds: float,
         download_seconds: float, downloads: int, short_seconds: float = SHORT_SECONDS,
         lead: float = 0.0) -> list[ChannelPlan]:
    """The first `played - downloads` channels get `lead + seconds`, the next `downloads` get
    `lead + download_seconds`, the rest `short_seconds` each. (A lead of a segment's length
    lets the sessions start at different points of a segment, so that they do not all cross
    into the next segment, and read it, at the same moment.)"""
    out = []
    for i, channel_id in enumerate(channel_ids):
        if i < played - downloads:
            length = lead + seconds
        elif i < played:
            length = lead + download_seconds
        else:
            length = short_seconds
        out.append(ChannelPlan(channel_id, length))
    return out


def clip_es(frames: list[tuple[bytes, bool]]) -> list[tuple[bytes, bool]]:
    """The clip's H.264 access units (Annex B) and key frame flags, out of its PS."""
    demuxer = PsDemuxer()
    units: list[AccessUnit] = []
    for ps, _ in frames:
        units += demuxer.feed(ps)
    units += demuxer.flush()
    video = [u for u in units if 0xE0 <= u.stream_id <= 0xEF]
    if len(video) != len(frames):
        raise RuntimeError(f"the clip demuxed into {len(video)} frames, not {len(frames)}")
    return [(u.data, u.keyframe) for u in video]


def timeline(es: list[tuple[bytes, bool]], count: int) -> list[AccessUnit]:
    """`count` frames of the clip looped, muxed with rising time stamps and demuxed again."""
    muxer = PsMuxer("h264")
    demuxer = PsDemuxer()
    units: list[AccessUnit] = []
    for k in range(count):
        data, key = es[k % len(es)]
        units += demuxer.feed(muxer.mux_video(data, k * FRAME_TICKS, keyframe=key))
    units += demuxer.flush()
    if demuxer.resyncs or demuxer.dropped_bytes or len(units) != count:
        raise RuntimeError(f"the timeline demuxed into {len(units)} units of {count} "
                           f"({demuxer.resyncs} resyncs, {demuxer.dropped_bytes} bytes dropped)")
    return units


def estimate_bytes(plans: Sequence[ChannelPlan], es: list[tuple[bytes, bool]]) -> int:
    """PS bytes the plan writes (the clip's frames looped; the muxer's headers are counted
    from the clip, which the same muxer wrote)."""
    sizes = [len(data) for data, _ in es]
    per_loop = sum(sizes)
    total = 0
    for p in plans:
        loops, rest = divmod(p.frames, len(sizes))
        total += loops * per_loop + sum(sizes[:rest])
    return int(total * 1.02)  # pack, PES and PSM headers


def build(root: Path, plans: Sequence[ChannelPlan], frames: list[tuple[bytes, bool]],
          end: float, tz: tzinfo | None = None, log: object = None) -> StoreReport:
    """Write every channel of `plans` under `root` (created) with its index, each recording
    ending at `end` (Unix seconds, on a frame boundary of every channel)."""
    root.mkdir(parents=True, exist_ok=True)
    tz = tz if tz is not None else local_tz()
    started = time.perf_counter()
    es = clip_es(frames)
    units = timeline(es, max(p.frames for p in plans))
    segments = written = total_frames = 0
    earliest = end
    with RecordIndex(root_index(root)) as index:
        for n, p in enumerate(plans):
            writer = SegmentWriter(root, index, p.channel_id, segment_s=SEGMENT_S, tz=tz)
            start = end - p.frames / FPS
            earliest = min(earliest, start)
            for k, unit in enumerate(units[:p.frames]):
                segments += len(writer.write(unit, start + k / FPS))
            segments += len(writer.close(wall=end))
            if writer.write_errors:
                raise RuntimeError(f"channel {p.channel_id}: {writer.last_error}")
            written += writer.bytes
            total_frames += p.frames
            if callable(log) and (n + 1) % 50 == 0:
                log(f"  store: {n + 1}/{len(plans)} channels, {written / 1e6:,.0f} MB")
    return StoreReport(str(root), len(plans), segments, written, total_frames,
                       time.perf_counter() - started, earliest, end)


def segment_files(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{SEGMENT_SUFFIX}"))


def evict(root: Path) -> int:
    """Drop the segment files' pages from the page cache (they are clean: the writer fsynced
    them); the bytes of the files so treated."""
    total = 0
    for path in segment_files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--played", type=int, default=60)
    parser.add_argument("--downloads", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--download-seconds", type=float, default=320.0)
    parser.add_argument("--short-seconds", type=float, default=SHORT_SECONDS)
    parser.add_argument("--lead", type=float, default=SEGMENT_S)
    parser.add_argument("--kbps", type=int, default=2000)
    args = parser.parse_args()
    from sensing_node.sim.camera import channel_ids

    saved = ingest_sender.BITRATE
    ingest_sender.BITRATE = args.kbps * 1000
    try:
        frames = ingest_sender.clip()
    finally:
        ingest_sender.BITRATE = saved
    plans = plan(channel_ids("31011200001320000001", args.channels), args.played,
                 args.seconds, args.download_seconds, args.downloads, args.short_seconds,
                 args.lead)
    print(f"about {estimate_bytes(plans, clip_es(frames)) / 1e9:.2f} GB", file=sys.stderr)
    report = build(args.root, plans, frames, float(int(time.time()) - 600),
                   log=lambda text: print(text, file=sys.stderr))
    print(json.dumps(report.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
