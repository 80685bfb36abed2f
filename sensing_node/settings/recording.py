"""The ``recording:`` section: what is recorded (weekly schedules), where, and how long."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from .node import NodeSettings
from .schema import (
    _CONSTRUCT,
    Key,
    _boolean,
    _choice,
    _Ctx,
    _describe,
    _device_id,
    _entries,
    _integer,
    _Invalid,
    _is,
    _join,
    _number,
    _Parsed,
    _quoted,
    _Reader,
    _Reported,
    _string,
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Schedule:
    """When one channel is recorded: always, never, or weekly windows in the node's zone.

    `windows` holds (weekday 0=Monday, start minute, end minute) with start < end <= 1440; a
    window that crosses midnight is stored as two.
    """

    always: bool = False
    windows: tuple[tuple[int, int, int], ...] = ()

    def active(self, weekday: int, minute: int) -> bool:
        if self.always:
            return True
        return any(day == weekday and start <= minute < end for day, start, end in self.windows)


@dataclass(frozen=True)
class RecordingSettings:
    """The ``recording:`` section: what is recorded, where, and for how long it is kept.

    `channels` is None for "all" (every channel the node knows), else a mapping of channel ID
    to its `Schedule` (a plain list of IDs means "always" for each).
    """

    retention_days: int
    allow_short_retention: bool
    segment_s: int
    fsync_s: float
    #: write segments past the page cache (O_DIRECT) where the file system takes it
    direct_io: bool
    dir: Path | None
    min_free_gb: float
    channels: Mapping[str, Schedule] | None
    query_max_days: int
    #: what a playback does with a segment whose SHA-256 no longer matches the index
    altered_segments: str

    def root(self, node: NodeSettings) -> Path:
        """Where segments go: `dir`, or `<data_dir>/recordings`."""
        return self.dir if self.dir is not None else node.data_dir / "recordings"

    def wants(self, channel_id: str, weekday: int, minute: int) -> bool:
        """Whether `channel_id` is to be recorded at this local weekday and minute of the day."""
        if self.channels is None:
            return True
        schedule = self.channels.get(channel_id)
        return schedule is not None and schedule.active(weekday, minute)


def _optional_path(node: yaml.Node, ctx: _Ctx) -> Path | None:
    text = _string(node, "a directory path")
    return Path(text).expanduser() if text.strip() else None


_DAY_RANGE = re.compile(r"(mon|tue|wed|thu|fri|sat|sun)(?:\s*-\s*(mon|tue|wed|thu|fri|sat|sun))?")


_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")


def _days(text: str) -> list[int]:
    key = text.strip().lower()
    if key in ("daily", "every day", "all"):
        return list(range(7))
    match = _DAY_RANGE.fullmatch(key)
    if not match:
        raise _Invalid(f"expected a day (mon..sun), a range such as mon-fri, or daily; "
                       f"got {_quoted(text)}")
    first = WEEKDAYS.index(match[1])
    last = WEEKDAYS.index(match[2] or match[1])
    return [(first + i) % 7 for i in range((last - first) % 7 + 1)]


def _window(text: str) -> tuple[int, int]:
    match = _WINDOW.fullmatch(text)
    if not match:
        raise _Invalid(f"expected a time window such as 08:00-18:00, got {_quoted(text)}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or h1 * 60 + m1 > 1440 or h2 * 60 + m2 > 1440:
        raise _Invalid(f"not a time of day in {_quoted(text)}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise _Invalid(f"the window {_quoted(text)} is empty")
    return start, end


def _schedule(node: yaml.Node, ctx: _Ctx) -> Schedule:
    if _is(node, "str") and node.value.strip().lower() == "always":
        return Schedule(always=True)
    if _is(node, "bool"):  # YAML 1.1 reads a bare off / on as a boolean
        if _CONSTRUCT.construct_yaml_bool(node):
            return Schedule(always=True)
        return Schedule()
    if _is(node, "str") and node.value.strip().lower() == "off":
        return Schedule()
    entries = _entries(ctx.reader, node, ctx.path) if isinstance(node, yaml.MappingNode) else None
    if entries is None:
        raise _Invalid(f"expected always, off or a weekly schedule such as "
                       f'{{mon-fri: "08:00-18:00"}}, got {_describe(node)}')
    windows: list[tuple[int, int, int]] = []
    failed = False
    for name, key_node, value_node in entries:
        path = _join(ctx.path, name)
        try:
            days = _days(name)
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in items:
                start, end = _window(_string(item, "a time window such as 08:00-18:00"))
                for day in days:
                    if start < end:
                        windows.append((day, start, end))
                    else:  # crosses midnight
                        windows.append((day, start, 1440))
                        if end:
                            windows.append(((day + 1) % 7, 0, end))
        except _Invalid as exc:
            ctx.reader.report(key_node, path, str(exc))
            failed = True
    if failed:
        raise _Reported
    return Schedule(windows=tuple(sorted(windows)))


def _recorded_channels(node: yaml.Node, ctx: _Ctx) -> Mapping[str, Schedule] | None:
    if _is(node, "str") and node.value.strip().lower() == "all":
        return None
    if isinstance(node, yaml.SequenceNode):
        result: dict[str, Schedule] = {}
        failed = False
        for index, item in enumerate(node.value):
            try:
                result[_device_id(item)] = Schedule(always=True)
            except _Invalid as exc:
                ctx.reader.report(item, f"{ctx.path}[{index}]", str(exc))
                failed = True
        if failed:
            raise _Reported
        return MappingProxyType(result)
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(f"expected all, a list of channel IDs, or a mapping of channel ID to "
                       f"always | off | weekly schedule; got {_describe(node)}")
    schedules: dict[str, Schedule] = {}
    failed = False
    for name, key_node, value_node in _entries(ctx.reader, node, ctx.path) or []:
        path = _join(ctx.path, name)
        try:
            channel_id = _device_id(key_node)
            schedules[channel_id] = _schedule(value_node, _Ctx(ctx.reader, path))
        except _Invalid as exc:
            ctx.reader.report(value_node, path, str(exc))
            failed = True
        except _Reported:
            failed = True
    if failed:
        raise _Reported
    return MappingProxyType(schedules)


RECORDING_KEYS: tuple[Key, ...] = (
    Key("retention_days", _integer(1), 30, "days every segment is kept (30 at least)"),
    Key("allow_short_retention", _boolean, False, "allow retention_days below 30"),
    Key("segment_s", _integer(1), 60, "target segment length; cut at the next keyframe"),
    Key("fsync_s", _number(0), 2,
        "open segments are fdatasync'd this often (seconds; 0: only when they close)"),
    Key("direct_io", _boolean, True,
        "write segments past the page cache (O_DIRECT) where the file system takes it"),
    Key("dir", _optional_path, None, "segment directory; default <data_dir>/recordings"),
    Key("min_free_gb", _number(0), 5, "free-space alarm threshold, GB"),
    Key("channels", _recorded_channels, None,
        "all | [channel IDs] | {channel ID: always | off | weekly schedule}"),
    Key("query_max_days", _integer(1), 31,
        "longest range a device's RecordInfo query is answered for; longer ones are cut"),
    Key("altered_segments", _choice(("skip", "end")), "skip",
        "a played-back segment that fails its SHA-256 check is skipped or ends the session"),
)


def _build_recording(reader: _Reader, parsed: _Parsed) -> RecordingSettings:
    v = dict(parsed.values)
    if v["retention_days"] < 30 and not v["allow_short_retention"]:
        reader.report(
            parsed.nodes.get("retention_days"), "recording.retention_days",
            f"{v['retention_days']} days is below the 30 days district rules require; set "
            "recording.allow_short_retention: true if this node is not bound by them",
        )
    if v["dir"] is not None:
        v["dir"] = (reader.base_dir / v["dir"]).resolve()
    v["min_free_gb"] = float(v["min_free_gb"])
    v["fsync_s"] = float(v["fsync_s"])
    return RecordingSettings(**v)
