"""Recording export speed, as multiples of real time.

    python bench/export.py [--seconds 120] [--segment 60] [--bitrate 4000000] [--runs 5]
                           [--cpu N] [--codec h264|h265]

Encodes a 1280x720, 25 fps clip with PyAV (libx264/libx265, no B-frames, a keyframe every 2 s,
noise added so that the encoder spends the target bit rate), muxes it into GB/T 28181-style PS
(`rtp.psmux.PsMuxer`: a pack per frame, system header and PSM before keyframes) and writes it
as segment files of `--segment` seconds (the recorder's default is 60) with their index
entries. Each run plans an export and drains `export_ps` or `export_mp4` into nothing; the
figure is exported recording seconds per wall-clock second of both. Two 60 s ranges: one whole
segment (the index's end_wall spares demuxing it) and one from the middle of a segment to the
middle of the next (both boundary segments demuxed from the keyframe before the cut). The
files sit in a temporary directory, so reads come from the page cache: this measures the
export, not the disk.

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pin  # noqa: E402 (also puts the repository root on sys.path)

from recorder.export import (  # noqa: E402
    ExportPlan,
    SegmentRef,
    export_mp4,
    export_ps,
    plan_export,
)
from rtp.psmux import PsMuxer  # noqa: E402

FPS = 25
GOP = 2 * FPS
WALL = 1_700_000_000.0
ENCODERS = {"h264": "libx264", "h265": "libx265"}


def encode(codec: str, seconds: int, bitrate: int) -> list[tuple[bytes, bool]]:
    """Annex-B access units of a moving, noisy 1280x720 pattern, with keyframe flags."""
    width, height = 1280, 720
    context = av.CodecContext.create(ENCODERS[codec], "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, FPS)
    context.framerate = Fraction(FPS, 1)
    context.gop_size = GOP
    context.max_b_frames = 0
    context.bit_rate = bitrate
    params = f"repeat-headers=1:annexb=1:bframes=0:keyint={GOP}:min-keyint={GOP}:scenecut=0"
    option = "x264-params" if codec == "h264" else "x265-params"
    if codec == "h265":
        params += ":open-gop=0:log-level=error"
    context.options = {"preset": "ultrafast", option: params}
    rng = np.random.default_rng(28181)
    rows, cols = np.mgrid[0:height, 0:width]
    ramp = (rows + cols).astype(np.uint16)
    chroma = np.full((height // 2) * (width // 2), 128, np.uint8).tobytes()
    units: list[tuple[bytes, bool]] = []
    for index in range(seconds * FPS + 1):
        if index < seconds * FPS:
            noise = rng.integers(0, 24, (height, width), dtype=np.uint16)
            luma = ((ramp + 4 * index + noise) & 0xFF).astype(np.uint8)
            picture = av.VideoFrame(width, height, "yuv420p")
            picture.planes[0].update(luma.tobytes())
            picture.planes[1].update(chroma)
            picture.planes[2].update(chroma)
            picture.pts = index
            packets = context.encode(picture)
        else:
            packets = context.encode(None)
        units += [(bytes(p), p.is_keyframe) for p in packets]
    return units


def write_segments(
    units: list[tuple[bytes, bool]], codec: str, folder: Path, seconds: int
) -> list[SegmentRef]:
    """PS segment files of ``seconds`` each, cut at keyframes."""
    muxer = PsMuxer(codec)
    segments: list[SegmentRef] = []
    parts: list[bytes] = []
    start_pts = 0
    for index, (frame, keyframe) in enumerate(units):
        pts = 90_000 + index * 3600
        if keyframe and index % (seconds * FPS) == 0 and parts:
            segments.append(_flush(folder, len(segments), parts, start_pts, codec))
            parts = []
        if not parts:
            start_pts = pts
        parts.append(muxer.mux_video(frame, pts, keyframe=keyframe))
    segments.append(_flush(folder, len(segments), parts, start_pts, codec))
    return segments


def _flush(folder: Path, number: int, parts: list[bytes], start_pts: int, codec: str) -> SegmentRef:
    """One segment file and its index entry (end_wall: the wall time of its last frame)."""
    path = folder / f"{number:04d}.ps"
    path.write_bytes(b"".join(parts))
    wall = WALL + (start_pts - 90_000) / 90_000
    end_wall = wall + (len(parts) - 1) / FPS
    return SegmentRef(path, wall, start_pts, codec, end_wall)


def drain(chunks: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)


def measure(
    segments: list[SegmentRef],
    start: float,
    end: float,
    export: Callable[[ExportPlan], Iterator[bytes]],
    runs: int,
) -> tuple[list[float], int]:
    """Real-time multiples of plan + export over ``runs`` runs, and the output size."""
    factors = []
    size = 0
    for _ in range(runs):
        began = time.perf_counter()
        plan = plan_export(segments, WALL + start, WALL + end)
        size = drain(export(plan))
        elapsed = time.perf_counter() - began
        factors.append((plan.end_wall - plan.start_wall) / elapsed)
    return factors, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=120, help="recording length")
    parser.add_argument("--segment", type=int, default=60, help="segment length, seconds")
    parser.add_argument("--bitrate", type=int, default=4_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    where = pin(args.cpu)
    units = encode(args.codec, args.seconds, args.bitrate)
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        segments = write_segments(units, args.codec, Path(tmp), args.segment)
        size = sum(s.path.stat().st_size for s in segments)
        rate = size * 8 / args.seconds / 1e6
        exports = (("PS (byte-exact)", export_ps), ("MP4 (fragmented remux)", export_mp4))
        half = args.segment / 2 + 0.02
        ranges = (("one whole segment", 0, args.segment),
                  ("cut inside two segments", half, half + args.segment))
        for label, export in exports:
            for what, start, end in ranges:
                factors, out = measure(segments, start, end, export, args.runs)
                rows.append((f"{label}, {what}", factors, out))
    print(f"{args.seconds} s of 1280x720 {args.codec} at {rate:.2f} Mbit/s in "
          f"{len(segments)} segments of {args.segment} s ({size / 1e6:.1f} MB), "
          f"{args.runs} runs, {where}, Python {sys.version.split()[0]}, PyAV {av.__version__}")
    print()
    print("| export (plan + write) | median (x real time) | spread [min – max] | output MB |")
    print("| --- | ---: | --- | ---: |")
    for label, factors, out in rows:
        print(f"| {label} | {statistics.median(factors):,.0f} | "
              f"{min(factors):,.0f} – {max(factors):,.0f} | {out / 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
