"""`simulate-upstream --playback`: the upper platform fetches a recorded range and checks it.

What a sensing center does with the node's store (GB/T 28181-2016 sections 9.7-9.9, issue 11):
`Query/RecordInfo` for the range, then `INVITE s=Playback` of START..END at real time and, with
a download speed, `INVITE s=Download` of the same range at N times real time. Each ends with the
node's MediaStatus 121, which the platform answers and follows with BYE.

For each session the report gives the video frames received, the media time their PTS cover,
the wall time they took, the pace (media over wall: about 1 for a playback, N for a download)
and the payload bytes. With the node's recording directory (`--store`), the bytes are compared
with what the store holds for the range: `recorder.playback.PlaybackReader` walks the same
segments from the last keyframe at or before START to the first video frame at or after END,
and the SHA-256 of the frames' concatenated `ps_bytes` must equal that of the payloads received.

The checks that decide the exit status: the INVITE answered 200 with `s=` and `t=` repeated, no
RTP problem (SSRC, payload type, sequence), MediaStatus 121 received, at least one frame, the
pace within `PACE_TOLERANCE` of the one asked for (when the range covers at least
`PACE_MIN_MEDIA_S` of media), and, with `--store`, the bytes equal.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from recorder.index import RecordIndex
from recorder.playback import Frame, Gap, PlaybackReader
from recorder.service import root_index
from sip.errors import SipError
from sip.playback import unix_to_sdp_time

from .upstream import SESSION_TRANSPORTS, SimulatedUpstream, UpstreamError, UpstreamSession

__all__ = [
    "MAX_DOWNLOAD_SPEED",
    "PACE_MIN_MEDIA_S",
    "PACE_TOLERANCE",
    "PlaybackPlan",
    "StoredRange",
    "check_recorded",
    "parse_time",
    "parse_zone",
    "stored_range",
]

MAX_DOWNLOAD_SPEED = 32  # a=downloadspeed 1..32 (2016 App. F; catalog Info/DownloadSpeed)
#: How far the measured pace may lie from the one asked for, as a fraction of it.
PACE_TOLERANCE = {"Playback": 0.10, "Download": 0.25}
#: Below this much media, a pace says more about the loop than about the node: not checked.
PACE_MIN_MEDIA_S = 2.0
#: Beyond the range's own duration at its pace, how long a session may take to end.
END_SLACK_S = 30.0


def parse_zone(name: str | None) -> tzinfo | None:
    """An IANA zone (`Asia/Shanghai`), or None (the machine's local zone) for None or ""."""
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def parse_time(text: str, tz: tzinfo | None = None) -> float:
    """Unix seconds from `1796522400` (a float too) or an ISO time `2026-12-06T10:00:00`.

    A time without an offset is local time in `tz` (the machine's zone when None); one with an
    offset (`...+08:00`) keeps it. Raises ValueError with what was wrong.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{text!r} is no time after 1970")
        return value
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither Unix seconds nor an ISO time such as "
                         "2026-12-06T10:00:00") from None
    if when.tzinfo is None and tz is not None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()  # a naive time is the machine's local time


@dataclass(frozen=True)
class PlaybackPlan:
    """What `--playback CHANNEL START END` asks: the range in Unix seconds, the download speed
    (None: no download), the node's recording directory (None: no comparison), the zone of
    the RecordInfo wire times (None: the machine's) and the media transport."""

    channel_id: str
    start: float
    end: float
    download_speed: int | None = None
    store: Path | None = None
    tz: tzinfo | None = None
    transport: str = "udp"

    @classmethod
    def from_text(
        cls,
        channel_id: str,
        start: str,
        end: str,
        *,
        download_speed: int | None = None,
        store: str | None = None,
        timezone: str | None = None,
        transport: str = "udp",
    ) -> PlaybackPlan:
        """The plan of the command line's strings; ValueError says what is wrong."""
        if not (channel_id.isascii() and channel_id.isdigit() and len(channel_id) == 20):
            raise ValueError(f"channel must be a 20-digit ID, not {channel_id!r}")
        tz = parse_zone(timezone)
        first, last = parse_time(start, tz), parse_time(end, tz)
        try:
            sdp_first, sdp_last = unix_to_sdp_time(first), unix_to_sdp_time(last)
        except SipError as exc:
            raise ValueError(str(exc)) from None
        if not sdp_first < sdp_last:
            raise ValueError(f"END must be at least a second after START ({start} .. {end})")
        if download_speed is not None and not 1 <= download_speed <= MAX_DOWNLOAD_SPEED:
            raise ValueError(f"download speed must be 1 to {MAX_DOWNLOAD_SPEED}, "
                             f"not {download_speed}")
        if transport not in SESSION_TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        return cls(channel_id, first, last, download_speed,
                   Path(store) if store is not None else None, tz, transport)

    @property
    def sdp_range(self) -> tuple[int, int]:
        """The `t=` values: whole seconds, as the node reads them."""
        return unix_to_sdp_time(self.start), unix_to_sdp_time(self.end)

    def wire_time(self, unix: float) -> datetime:
        """A zoneless local time, as RecordInfo writes it."""
        return datetime.fromtimestamp(unix, self.tz).replace(tzinfo=None)


@dataclass(frozen=True)
class StoredRange:
    """What the store holds for a range, as a playback sends it: `frames` units (`video` of
    them video frames), `bytes` of PS, their SHA-256, the gaps skipped and the segments that
    do not match the index (each `path: reason`), which are not sent."""

    frames: int
    video: int
    bytes: int
    sha256: str
    gaps: int
    altered: tuple[str, ...]


def stored_range(store: Path, channel_id: str, start: float, end: float) -> StoredRange:
    """Walk the channel's recordings of [start, end) in `store` (the node's recording
    directory, its index opened read-only) as the node's playback does. Blocking file reads:
    run it off the event loop. UpstreamError when the store has no index."""
    path = root_index(store)
    if not path.is_file():
        raise UpstreamError(f"{store}: no recordings index ({path.name})")
    with RecordIndex(path, read_only=True) as index:
        rows = index.segments(channel_id, start, end)
    digest = hashlib.sha256()
    frames = video = size = gaps = 0
    altered: list[str] = []
    with PlaybackReader(store, rows, start, end) as reader:
        for event in reader:
            if isinstance(event, Frame):
                frames += 1
                video += event.video
                size += len(event.ps_bytes)
                digest.update(event.ps_bytes)
            elif isinstance(event, Gap):
                gaps += 1
            else:
                altered.append(f"{event.segment.path}: {event.reason}")
    return StoredRange(frames, video, size, digest.hexdigest(), gaps, tuple(altered))


# ----- the run ---------------------------------------------------------------------------------


async def check_recorded(
    upstream: SimulatedUpstream,
    plan: PlaybackPlan,
    *,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> bool:
    """Search, play back and (with a speed) download `plan`'s range from the registered node,
    printing what came; True when every check passed (see the module docstring)."""
    stop = stop or asyncio.Event()
    ok = await _record_info(upstream, plan, out)
    stored: StoredRange | None = None
    if plan.store is not None:
        start, end = plan.sdp_range
        try:
            stored = await asyncio.to_thread(stored_range, plan.store, plan.channel_id,
                                             start, end)
        except (UpstreamError, OSError) as exc:
            out(f"store: {exc}")
            return False
        out(f"store: {stored.video} frames, {stored.bytes} bytes, sha256 {stored.sha256}, "
            f"{stored.gaps} gaps")
        for line in stored.altered:
            out(f"store: ALTERED {line}")
    runs = [("Playback", 1)]
    if plan.download_speed is not None:
        runs.append(("Download", plan.download_speed))
    for name, speed in runs:
        if stop.is_set():
            out(f"{name.lower()}: not run (stopped)")
            return False
        ok = await _run_one(upstream, plan, name, speed, stored, out, stop) and ok
    return ok


async def _record_info(upstream: SimulatedUpstream, plan: PlaybackPlan,
                       out: Callable[[str], None]) -> bool:
    start, end = plan.wire_time(plan.start), plan.wire_time(plan.end)
    try:
        items = await upstream.query_record_info(plan.channel_id, start, end)
    except (UpstreamError, TimeoutError) as exc:
        out(f"record info: {exc}")
        return False
    out(f"record info {plan.channel_id} {start.isoformat()} .. {end.isoformat()}: "
        f"{len(items)} items")
    for item in items:
        out(f"  {item.get('StartTime', '?')} .. {item.get('EndTime', '?')} "
            f"{item.get('FilePath', '')}".rstrip())
    return True


async def _run_one(upstream: SimulatedUpstream, plan: PlaybackPlan, name: str, speed: int,
                   stored: StoredRange | None, out: Callable[[str], None],
                   stop: asyncio.Event) -> bool:
    label = name.lower()
    download = name == "Download"
    session = await upstream.invite(
        plan.channel_id, plan.transport, session=name, start=plan.start, end=plan.end,
        download_speed=speed if download else None, ask_filesize=download)
    if not session.ok:
        out(f"{label}: {session.status} {session.reason} {session.warning or ''}".rstrip())
        return False
    if download:
        out(f"{label}: {session.status} {session.reason}, SSRC {session.expected_ssrc}, "
            f"filesize {session.filesize}")
    else:
        out(f"{label}: {session.status} {session.reason}, SSRC {session.expected_ssrc}")
    limit = (plan.end - plan.start) / speed * 1.5 + END_SLACK_S
    ended = await _wait_end(session, limit, stop)
    if not ended:
        why = "stopped" if stop.is_set() else f"no end within {limit:.0f} s"
        out(f"{label}: {why}; hanging up")
        await session.bye(reason=f"BYE: {why}")
    return _report(session, label, name, speed, stored, out) and ended


async def _wait_end(session: UpstreamSession, limit: float, stop: asyncio.Event) -> bool:
    """Wait until the session ended (MediaStatus and BYE, or the node's BYE), `stop` or
    `limit` seconds; whether it ended."""
    ended = asyncio.ensure_future(session.ended.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({ended, stopped}, timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (ended, stopped):
            future.cancel()
        await asyncio.gather(ended, stopped, return_exceptions=True)
    return session.ended.is_set()


def _report(session: UpstreamSession, label: str, name: str, speed: int,
            stored: StoredRange | None, out: Callable[[str], None]) -> bool:
    ok = True
    pace = session.pace
    status = session.media_status
    out(f"{label}: {session.frames} frames, media {session.media_seconds:.2f} s, wall "
        f"{session.wall_seconds:.2f} s, pace {'-' if pace is None else f'{pace:.2f}'}, "
        f"{session.payload_bytes} bytes, MediaStatus "
        f"{'none' if status is None else status.notify_type}, end: {session.end_reason}")
    if session.problems:
        ok = False
        out(f"{label}: FAILED: {len(session.problems)} problems, first "
            f"{session.problems[:5]}")
    if status is None or not status.end_of_file:
        ok = False
        out(f"{label}: FAILED: no MediaStatus 121 at the end")
    if session.frames == 0:
        ok = False
        out(f"{label}: FAILED: no frame received")
    if session.media_seconds >= PACE_MIN_MEDIA_S and pace is not None:
        tolerance = PACE_TOLERANCE[name]
        if abs(pace - speed) > tolerance * speed:
            ok = False
            out(f"{label}: FAILED: pace {pace:.2f}, asked {speed} (within "
                f"{tolerance:.0%})")
    if stored is not None:
        same = (session.payload_sha256 == stored.sha256
                and session.payload_bytes == stored.bytes)
        if same:
            out(f"{label}: bytes equal the store ({stored.bytes} bytes, sha256 "
                f"{stored.sha256})")
        else:
            ok = False
            out(f"{label}: FAILED: bytes differ from the store: received "
                f"{session.payload_bytes} bytes sha256 {session.payload_sha256}, stored "
                f"{stored.bytes} bytes sha256 {stored.sha256} ({session.frames} frames "
                f"received, {stored.video} stored)")
    return ok
