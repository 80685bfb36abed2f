"""Recording of original PS bytes in segments, with an index, retention and tamper evidence.

Synchronous file I/O and SQLite; no asyncio. ``service.Recorder`` runs the writers in a thread.

- `segments`: `SegmentWriter` (keyframe-aligned, byte-exact segment files), file naming
- `index`: `RecordIndex` over ``<root>/index.sqlite3`` (segments, gaps, deletions)
- `recovery`: `recover()` finishes the ``.part`` files a crash left
- `verify`: `verify()` checks file hashes, hash chains, unindexed files and that gaps keep
  their order (`check_timeline()`)
- `retention`: `sweep()` deletes segments past retention (30 days minimum), `free_bytes()`
- `service`: `Recorder`, the writer thread the media path submits units to
- `search`: `record_search()`, a range's segments as RecordInfo items, one per run without a gap
- `playback`: `PlaybackReader`, the stored frames of a range from its keyframe on, hashes checked
- `export`, `audit`: range export (PS, MP4) and the hash-chained access log
"""

from .index import DeletionRow, GapRow, RecordIndex, SegmentRow
from .recovery import recover
from .retention import MIN_RETENTION_DAYS, free_bytes, plan_sweep, sweep
from .segments import SegmentWriter, parse_segment_name, segment_name
from .service import Recorder
from .verify import ChainBreak, GapProblem, VerifyReport, check_timeline, verify

__all__ = [
    "MIN_RETENTION_DAYS",
    "ChainBreak",
    "DeletionRow",
    "GapProblem",
    "GapRow",
    "RecordIndex",
    "Recorder",
    "SegmentRow",
    "SegmentWriter",
    "VerifyReport",
    "check_timeline",
    "free_bytes",
    "parse_segment_name",
    "plan_sweep",
    "recover",
    "segment_name",
    "sweep",
    "verify",
]
