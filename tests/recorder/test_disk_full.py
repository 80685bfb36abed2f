"""A real full file system (a small tmpfs mounted for the test): segments written past the page
cache and through it end at their last complete unit, hashed and indexed, with "disk full"
gaps, and nothing is left half-written. Skipped where the test may not mount (not root, or no
mount(8)). A kernel whose tmpfs refuses O_DIRECT (before Linux 6.6) runs the direct case through
the cache, as the node would."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.index import RecordIndex
from recorder.segments import SegmentWriter
from recorder.verify import verify
from tests.recorder.media import CHANNEL, T0, TZ, timed, units

NAME = "gb_h264_zlm.ps"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "cached"])
def test_a_full_file_system_ends_segments_at_their_last_whole_unit(small_disk, tmp_path,
                                                                    direct):
    root = small_disk / "recordings"
    root.mkdir()
    with RecordIndex(tmp_path / "index.sqlite3") as index:  # the index on another disk
        w = SegmentWriter(root, index, CHANNEL, segment_s=60, tz=TZ, buffer_bytes=64 * 1024,
                          direct=direct, log_errors=False)
        rows = []
        t0 = T0
        for _ in range(8):  # 8 x 10 s of a 0.6 Mbit/s clip, 6 MB: the first segment (60 s,
            # about 4.7 MB) fills the disk before it ends
            for unit, wall in timed(units(NAME), t0):
                rows += w.write(unit, wall)
            t0 += 10.5
        rows += w.close()
        assert w.write_errors > 0 and "No space left" in (w.last_error or "")
        assert rows and not list(root.rglob("*.part"))
        for row in rows:
            data = (root / row.path).read_bytes()
            assert len(data) == row.bytes
            assert hashlib.sha256(data).hexdigest() == row.sha256
        assert sum(row.bytes for row in rows) > 2 * 1024 * 1024  # the disk was used
        gaps = index.gaps(CHANNEL)
        assert gaps and {g.reason for g in gaps} == {"disk full"}
        assert verify(root, index).ok
