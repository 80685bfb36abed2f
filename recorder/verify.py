"""Tamper evidence: check segment files against their index hashes and the per-channel chain.

Every segment row holds the SHA-256 of its file and the hash of the channel's previous segment
(in ``id`` order); the retention sweeper keeps the hashes of what it deletes, so the chain runs
from a channel's first segment ever to its latest one even after old files are gone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .index import RecordIndex
from .segments import PART_SUFFIX, SEGMENT_SUFFIX

__all__ = ["ChainBreak", "VerifyReport", "file_sha256", "verify"]

_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """A link whose ``prev_sha256`` is not the hash of the channel's previous segment."""

    channel_id: str
    path: str
    expected: str | None
    found: str | None


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

    @property
    def ok(self) -> bool:
        return not (self.altered or self.missing or self.unindexed or self.chain_breaks)


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


def verify(root: str | Path, index: RecordIndex, channel: str | None = None) -> VerifyReport:
    """Recompute every segment hash (of one channel or all) and walk the hash chains."""
    root = Path(root)
    report = VerifyReport()
    channels = [channel] if channel is not None else index.channels()
    indexed: set[str] = set()
    for name in channels:
        for row in index.chain(name):
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
