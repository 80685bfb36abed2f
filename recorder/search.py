"""Record search: a channel's segments in a time range as GB/T 28181 RecordInfo items.

A device answers ``Query/RecordInfo`` with one ``Item`` per recording file; the node cuts a
channel into segments of about a minute, so it answers with one item per run of segments that
follow each other without a gap (docs/gb28181.md, record search): a day with two gaps is three
items, not 1,440. Two segments are in the same run when the second starts no more than
``tolerance`` seconds after the first ends and no gap row of the index lies between them.

Items are clipped to the searched range. Their times are written as GB devices write them: the
local wall time of ``tz`` without a zone, ``YYYY-MM-DDTHH:MM:SS``; the start is rounded down and
the end up to the second, so an item covers every frame of its run in the range (a range given
in whole seconds is never exceeded). ``FilePath`` names the run by its channel and the start of
its first segment (:func:`file_path`, :func:`parse_file_path`), a text that stays the same
whatever the range and the time zone, as long as the search reaches that segment.

The number of items is bounded (``max_items``): past it the runs separated by the shortest
gaps are merged (``merge=True``; an item then spans gaps) or the latest runs are left out, and
the result says how many runs that concerned, so the caller can report it.

Pure functions over index rows: no files, no clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from .index import TIME_TOLERANCE_S, GapRow, SegmentRow

__all__ = [
    "JOIN_TOLERANCE_S",
    "MAX_ITEMS",
    "RecordItem",
    "RecordSearch",
    "SearchError",
    "file_path",
    "gb_time",
    "parse_file_path",
    "record_search",
]

#: How far apart one segment's end and the next one's start may be within a run. The recorder
#: ends a segment where the next one starts; a camera's frame interval (at most a second, at
#: 1 fps) is the most that wall times taken apart may differ by.
JOIN_TOLERANCE_S = 1.0
#: Default bound on the items of one answer: 100 runs are 10 MESSAGEs of 10 items.
MAX_ITEMS = 100
_SEPARATOR = "@"
_MAX_CHANNEL = 64


class SearchError(ValueError):
    """The search cannot be answered as asked: a bad range or bound, or rows of several
    channels."""


@dataclass(frozen=True, slots=True)
class RecordItem:
    """One run of segments without a gap, clipped to the searched range.

    ``start``/``end`` are Unix seconds (clipped); ``run_start`` is the start of the run's first
    segment (unclipped), which ``file_path`` names. ``bytes`` and ``segments`` count the
    segments that overlap the item (whole segments, clipped or not); ``spans_gaps`` is set on
    an item that merged runs to keep within ``max_items``.
    """

    channel_id: str
    start: float
    end: float
    run_start: float
    bytes: int
    segments: int
    spans_gaps: bool = False

    @property
    def file_path(self) -> str:
        return file_path(self.channel_id, self.run_start)

    def start_time(self, tz: tzinfo) -> str:
        return gb_time(math.floor(self.start), tz)

    def end_time(self, tz: tzinfo) -> str:
        return gb_time(math.ceil(self.end), tz)

    def fields(
        self, tz: tzinfo, *, name: str = "", recorder_id: str = "", address: str = ""
    ) -> dict[str, str | int]:
        """The item's RecordList fields (GB/T 28181-2016 A.2.6.6), in the order devices send
        them."""
        return {
            "DeviceID": self.channel_id,
            "Name": name,
            "FilePath": self.file_path,
            "Address": address,
            "StartTime": self.start_time(tz),
            "EndTime": self.end_time(tz),
            "Secrecy": 0,
            "Type": "time",
            "RecorderID": recorder_id,
            "FileSize": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class RecordSearch:
    """What :func:`record_search` found: the items in time order, how many runs the range held,
    and how many of them were merged into others or left out to keep within ``max_items``."""

    items: tuple[RecordItem, ...]
    runs: int
    merged: int = 0
    cut: int = 0

    @property
    def complete(self) -> bool:
        """Whether every run is an item of its own."""
        return not (self.merged or self.cut)


def gb_time(wall: float, tz: tzinfo) -> str:
    """``YYYY-MM-DDTHH:MM:SS``: the local wall time of ``tz`` at ``wall`` (Unix seconds), with
    the fraction dropped and no zone, as GB/T 28181 writes times."""
    moment = datetime.fromtimestamp(wall, tz)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"


def file_path(channel_id: str, run_start: float) -> str:
    """The FilePath of the run of ``channel_id`` whose first segment starts at ``run_start``:
    ``<channel>@<Unix seconds with milliseconds>``."""
    return f"{channel_id}{_SEPARATOR}{run_start:.3f}"


def parse_file_path(text: str) -> tuple[str, float] | None:
    """(channel, run start) of a FilePath made by :func:`file_path`; ``None`` for any other
    text (a device's own FilePath, say)."""
    channel_id, sep, stamp = text.rpartition(_SEPARATOR)
    if not sep or not 0 < len(channel_id) <= _MAX_CHANNEL or not channel_id.isalnum():
        return None
    whole, dot, millis = stamp.partition(".")
    if not (whole.isdigit() and dot and len(millis) == 3 and millis.isdigit()):
        return None
    return channel_id, float(stamp)


@dataclass(slots=True)
class _Run:
    start: float
    end: float
    first_start: float
    bytes: int
    segments: int
    spans_gaps: bool = False


def record_search(
    segments: Sequence[SegmentRow],
    start: float,
    end: float,
    *,
    gaps: Sequence[GapRow] = (),
    tolerance: float = JOIN_TOLERANCE_S,
    max_items: int = MAX_ITEMS,
    merge: bool = False,
) -> RecordSearch:
    """The RecordInfo items of one channel's ``segments`` in ``[start, end)`` (Unix seconds).

    ``segments`` are index rows (any order; rows outside the range are ignored), ``gaps`` the
    channel's gap rows: one longer than the index's time tolerance between two segments parts
    their runs even where their times touch. At most ``max_items`` items: past that, the runs
    with the shortest gaps between them are merged (``merge``) or the latest runs are cut.
    Raises :class:`SearchError` for a non-finite range, a bound below 1, a negative tolerance
    or rows of more than one channel. An empty range gives no items.
    """
    if not (math.isfinite(start) and math.isfinite(end)):
        raise SearchError(f"range {start}..{end} is not finite")
    if max_items < 1:
        raise SearchError(f"max_items must be at least 1, not {max_items}")
    if not tolerance >= 0:
        raise SearchError(f"tolerance must be 0 or more, not {tolerance}")
    channels = {row.channel_id for row in segments} | {row.channel_id for row in gaps}
    if len(channels) > 1:
        raise SearchError(f"rows of {len(channels)} channels; search one channel at a time")
    rows = sorted(
        (row for row in segments if row.start_wall < end and row.end_wall > start),
        key=lambda row: (row.start_wall, row.id),
    )
    if not rows or not end > start:
        return RecordSearch((), 0)
    cuts = _Cuts(gaps)
    runs: list[_Run] = []
    for row in rows:
        last = runs[-1] if runs else None
        if (
            last is not None
            and row.start_wall <= last.end + tolerance
            # a row that starts inside the run (a clock set back) joins it whatever lies there
            and (row.start_wall < last.end or not cuts.between(last.end, row.start_wall))
        ):
            last.end = max(last.end, row.end_wall)
            last.bytes += row.bytes
            last.segments += 1
        else:
            runs.append(_Run(row.start_wall, row.end_wall, row.start_wall, row.bytes, 1))
    count = len(runs)
    merged = cut = 0
    if count > max_items:
        if merge:
            runs = _merge(runs, max_items)
            merged = count - max_items
        else:
            runs, cut = runs[:max_items], count - max_items
    channel_id = rows[0].channel_id
    items = tuple(
        RecordItem(channel_id, max(run.start, start), min(run.end, end), run.first_start,
                   run.bytes, run.segments, run.spans_gaps)
        for run in runs
    )
    return RecordSearch(items, count, merged, cut)


class _Cuts:
    """The gap rows that part runs, searchable by time in O(log n)."""

    def __init__(self, gaps: Sequence[GapRow]) -> None:
        spans = sorted(
            (gap.start_wall, gap.end_wall)
            for gap in gaps
            if gap.end_wall - gap.start_wall > TIME_TOLERANCE_S
        )
        self.starts = [span[0] for span in spans]
        self.reach: list[float] = []  # reach[k]: the latest end of spans[:k + 1]
        for _, span_end in spans:
            self.reach.append(max(span_end, self.reach[-1]) if self.reach else span_end)

    def between(self, after: float, before: float) -> bool:
        """Whether a gap lies between a run's end ``after`` and the next segment's start
        ``before`` (not earlier)."""
        low, high = after - TIME_TOLERANCE_S, before + TIME_TOLERANCE_S
        k = bisect.bisect_left(self.starts, high)
        return k > 0 and self.reach[k - 1] > low


def _merge(runs: list[_Run], limit: int) -> list[_Run]:
    """``runs`` reduced to ``limit`` by joining across the shortest gaps (the earlier of equal
    ones first)."""
    spaces = sorted(range(1, len(runs)), key=lambda i: (runs[i].start - runs[i - 1].end, i))
    joined = set(spaces[: len(runs) - limit])
    out: list[_Run] = []
    for i, run in enumerate(runs):
        if i in joined:
            last = out[-1]
            last.end = max(last.end, run.end)
            last.bytes += run.bytes
            last.segments += run.segments
            last.spans_gaps = True
        else:
            out.append(_Run(run.start, run.end, run.first_start, run.bytes, run.segments))
    return out
