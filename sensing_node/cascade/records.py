"""A device's own records, added to the node's answer to an upstream's record search.

With `cascade.device_fallback`, the parts of a searched range the node has no recording of
(before it recorded the channel, or a gap) are asked of the channel's device, and what the
device holds there is added to the answer: each of its items clipped to those parts, its
`FilePath` marked with `DEVICE_PREFIX` so that an operator (and the node, for a playback of such
a range) can tell the device's records from the node's. Items the device writes out of form
(times that do not parse, an end before the start) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import tzinfo

from recorder.search import gb_time
from sip import manscdp

from ..recording.service import RecordAnswer

__all__ = ["DEVICE_PREFIX", "MAX_ITEMS", "add_device_records", "uncovered"]

DEVICE_PREFIX = "device:"
#: the most items an answer holds with the device's added
MAX_ITEMS = 1000
#: a part shorter than this (seconds) is no hole: GB times have whole seconds
MIN_HOLE_S = 1.0
#: the RecordList fields passed on, in the order devices write them
FIELDS = ("DeviceID", "Name", "FilePath", "Address", "StartTime", "EndTime", "Secrecy", "Type",
          "RecorderID", "FileSize")


def uncovered(
    start: float, end: float, spans: Iterable[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The parts of `start`..`end` that none of `spans` covers, in order (each at least
    `MIN_HOLE_S` long)."""
    holes: list[tuple[float, float]] = []
    at = start
    for lo, hi in sorted(spans):
        if lo - at >= MIN_HOLE_S:
            holes.append((at, min(lo, end)))
        at = max(at, hi)
        if at >= end:
            break
    if end - at >= MIN_HOLE_S:
        holes.append((at, end))
    return holes


def add_device_records(
    answer: RecordAnswer, holes: Sequence[tuple[float, float]],
    items: Iterable[Mapping[str, str]], tz: tzinfo,
) -> int:
    """Add the device's `items` that fall in `holes` to `answer` (clipped to them, FilePath
    marked), keeping the items in time order and at most `MAX_ITEMS`; returns how many were
    added."""
    timed: list[tuple[float, dict[str, manscdp.XmlValue]]] = []
    for item in answer.items:
        try:
            timed.append((manscdp.parse_gb_time(str(item["StartTime"]), tz).timestamp(), item))
        except (KeyError, ValueError):
            timed.append((answer.start, item))
    added = 0
    for found in items:
        try:
            begin = manscdp.parse_gb_time(found.get("StartTime", ""), tz).timestamp()
            finish = manscdp.parse_gb_time(found.get("EndTime", ""), tz).timestamp()
        except ValueError:
            continue
        for lo, hi in holes:
            first, last = max(begin, lo), min(finish, hi)
            if last - first < MIN_HOLE_S:
                continue
            entry: dict[str, manscdp.XmlValue] = {
                name: found[name] for name in FIELDS if name in found
            }
            entry["DeviceID"] = answer.channel_id
            entry["FilePath"] = DEVICE_PREFIX + found.get("FilePath", "")
            entry["StartTime"] = gb_time(first, tz)
            entry["EndTime"] = gb_time(last, tz)
            entry.setdefault("Secrecy", 0)
            entry.setdefault("Type", "time")
            timed.append((first, entry))
            added += 1
    timed.sort(key=lambda pair: pair[0])
    answer.items = [item for _, item in timed[:MAX_ITEMS]]
    return added
