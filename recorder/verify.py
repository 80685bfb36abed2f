"""Tamper evidence: check segment files against their index hashes and the per-channel chain.

Every segment row holds the SHA-256 of its file and the hash of the channel's previous segment
(in ``id`` order); the retention sweeper keeps the hashes of what it deletes, so the chain runs
from a channel's first segment ever to its latest one even after old files are gone.

It also checks each channel's record of time (:func:`check_timeline`): a gap never ends before
it starts, and never overlaps another gap or a segment of its channel.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .index import TIME_TOLERANCE_S, GapRow, RecordIndex, SegmentRow
from .segments import PART_SUFFIX, SEGMENT_SUFFIX

__all__ = ["ChainBreak", "GapProblem", "VerifyReport", "check_timeline", "file_sha256", "verify"]

_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """A link whose ``prev_sha256`` is not the hash of the channel's previous segment."""

    channel_id: str
    path: str
    expected: str | None
    found: str | None


@dataclass(frozen=True, slots=True)
class GapProblem:
    """A gap that breaks the record's order: it ends before it starts (``other`` is None), or
    it overlaps ``other``, a segment or an earlier gap of its channel."""

    gap: GapRow
    other: SegmentRow | GapRow | None

    @property
    def channel_id(self) -> str:
        return self.gap.channel_id


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify` found. Paths are relative to the recording root.

    ``partial`` lists ``.part`` files (a segment being written, or a crash not yet recovered);
    they do not make the report fail.
    """

    checked: int = 0
    altered: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    chain_breaks: list[ChainBreak] = field(default_factory=list)
    gap_problems: list[GapProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.altered or self.missing or self.unindexed or self.chain_breaks
                    or self.gap_problems)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            digest.update(block)
    return digest.hexdigest()


def _check_chain(index: RecordIndex, channel: str, report: VerifyReport) -> None:
    links = [(d.segment_id or 0, d.path, d.sha256, d.prev_sha256) for d in index.deletions(channel)]
    links += [(s.id, s.path, s.sha256, s.prev_sha256) for s in index.chain(channel)]
    links.sort()
    expected: str | None = None
    for _, path, sha, prev in links:
        if prev != expected:
            report.chain_breaks.append(ChainBreak(channel, path, expected, prev))
        expected = sha


def check_timeline(
    segments: Sequence[SegmentRow], gaps: Sequence[GapRow], tolerance: float = TIME_TOLERANCE_S
) -> list[GapProblem]:
    """The gaps of one channel that end before they start or overlap one of ``segments`` or
    another gap (each gap reported once, with the first thing found that it overlaps).

    Times that touch, or overlap by less than ``tolerance`` (float rounding), do not count.
    Segments are not checked against each other here: a wall clock set back makes them overlap
    (the node's recording times never go back within a run).
    """
    ordered = sorted(segments, key=lambda row: (row.start_wall, row.id))
    starts = [row.start_wall for row in ordered]
    latest: list[SegmentRow] = []  # latest[k]: of ordered[:k + 1], the one that ends last
    for row in ordered:
        latest.append(row if not latest or row.end_wall > latest[-1].end_wall else latest[-1])
    problems: list[GapProblem] = []
    reach: GapRow | None = None  # of the gaps seen so far, the one that ends last
    for gap in sorted(gaps, key=lambda row: (row.start_wall, row.id)):
        if gap.end_wall < gap.start_wall:
            problems.append(GapProblem(gap, None))
            continue
        other: SegmentRow | GapRow | None = None
        if reach is not None and gap.start_wall < reach.end_wall - tolerance:
            other = reach
        # The segments that start before the gap ends; does any of them end after it starts?
        before = bisect.bisect_left(starts, gap.end_wall - tolerance)
        if other is None and before and latest[before - 1].end_wall > gap.start_wall + tolerance:
            other = latest[before - 1]
        if other is not None:
            problems.append(GapProblem(gap, other))
        if reach is None or gap.end_wall > reach.end_wall:
            reach = gap
    return problems


def verify(root: str | Path, index: RecordIndex, channel: str | None = None) -> VerifyReport:
    """Recompute every segment hash (of one channel or all), walk the hash chains and check
    that each channel's gaps keep their order (:func:`check_timeline`)."""
    root = Path(root)
    report = VerifyReport()
    channels = [channel] if channel is not None else index.channels()
    indexed: set[str] = set()
    for name in channels:
        rows = index.chain(name)
        report.gap_problems += check_timeline(rows, index.gaps(name))
        for row in rows:
            indexed.add(row.path)
            report.checked += 1
            path = root / row.path
            try:
                if path.stat().st_size != row.bytes or file_sha256(path) != row.sha256:
                    report.altered.append(row.path)
            except FileNotFoundError:
                report.missing.append(row.path)
        _check_chain(index, name, report)
    if channel is not None:
        directories = [root / channel]
    else:
        directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for directory in directories:
        for path in sorted(directory.glob("*/*")):
            rel = path.relative_to(root).as_posix()
            if path.name.endswith(PART_SUFFIX):
                report.partial.append(rel)
            elif path.name.endswith(SEGMENT_SUFFIX) and rel not in indexed:
                report.unindexed.append(rel)
    return report
