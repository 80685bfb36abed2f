"""Playback and download signalling besides MANSRTSP (GB/T 28181-2016 section 9.8, 9.9, App. F).

- `MediaStatus`: the in-dialog MESSAGE `Notify/MediaStatus` that ends a playback or download,
  `NotifyType 121` ("end of file"), sent by whoever sends the media once the `t=` range is
  out; the other side answers 200 and ends the dialog with BYE.
- The `t=` line of a Playback/Download offer, `t=<start> <stop>`: GB/T 28181 writes seconds
  since 1970 (2016 App. F; wvp, eXosip and wx platforms), RFC 4566 NTP seconds since 1900
  (some platforms), and live
  offers `0 0`. `sdp_time_to_unix` and `unix_to_sdp_time` convert under one rule, below.

Sans-I/O: bytes and integers in, bytes and integers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import LocalProtocolError
from .manscdp import ManscdpError, ManscdpMessage, build_manscdp, parse_manscdp

__all__ = [
    "END_OF_FILE",
    "NTP_UNIX_OFFSET",
    "MediaStatus",
    "media_status",
    "media_status_of",
    "parse_media_status",
    "sdp_time_to_unix",
    "unix_to_sdp_time",
    "sdp_range_to_unix",
]

END_OF_FILE = 121
"""NotifyType of a MediaStatus sent when a playback or download reached the end of its range."""

NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix epoch), RFC 5905 / RFC 4566."""

_MAX_SDP_TIME = 10**12


# -- MediaStatus --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaStatus:
    """A `Notify/MediaStatus` body: `device_id` names the channel whose media ended, `sn` the
    sender's serial number, `notify_type` what happened (121: end of file)."""

    sn: int
    device_id: str
    notify_type: int = END_OF_FILE

    @property
    def end_of_file(self) -> bool:
        return self.notify_type == END_OF_FILE


def media_status(
    sn: int, channel_id: str, notify_type: int = END_OF_FILE, *, encoding: str = "GB2312"
) -> bytes:
    """The body of the MediaStatus MESSAGE sent in a playback or download dialog at its end:

    `<Notify><CmdType>MediaStatus</CmdType><SN/><DeviceID>channel</DeviceID>
    <NotifyType>121</NotifyType></Notify>` (2016 section 9.8, as wvp and Hikvision send it).
    """
    if notify_type < 0:
        raise LocalProtocolError(f"NotifyType must be non-negative: {notify_type}")
    return build_manscdp("Notify", "MediaStatus", sn, channel_id, [("NotifyType", notify_type)],
                         encoding=encoding)  # fmt: skip


def media_status_of(message: ManscdpMessage) -> MediaStatus:
    """The MediaStatus in a parsed MANSCDP body; raises `ManscdpError` for any other body or
    one without a numeric NotifyType."""
    if message.root != "Notify" or message.cmd_type != "MediaStatus":
        raise ManscdpError(f"not a MediaStatus notify: {message.root}/{message.cmd_type[:40]}")
    value = (message.get("NotifyType") or "").strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ManscdpError(f"bad NotifyType {value[:20]!r}")
    return MediaStatus(message.sn, message.device_id, int(value))


def parse_media_status(data: bytes) -> MediaStatus:
    """Parse a MediaStatus body (`media_status_of(parse_manscdp(data))`); `ManscdpError` else."""
    return media_status_of(parse_manscdp(data))


# -- the t= line --------------------------------------------------------------------------------


def sdp_time_to_unix(value: int, *, wall_offset: int = 0) -> int | None:
    """Unix seconds of one `t=` value, or None for 0 ("now" / unbounded).

    The rule: 0 is None; a value below `NTP_UNIX_OFFSET` (2208988800, which is 2040-01-01 as Unix
    time and 1970-01-01 as NTP time) is Unix seconds, as GB/T 28181 writes them; a value at or
    above it is NTP seconds (RFC 4566), and `NTP_UNIX_OFFSET` is subtracted. No GB recording
    lies before 1970 or after 2040, so the two readings cannot be confused until 2040.

    `wall_offset` is subtracted from the result for peers that write their local wall clock as
    if it were UTC (a Hikvision NVR's Playback answer in the corpus is 28800 s, UTC+8, ahead of
    the offer). Raises `LocalProtocolError` for a negative value or one beyond 10**12.
    """
    if not 0 <= value <= _MAX_SDP_TIME:
        raise LocalProtocolError(f"t= time out of range: {value}")
    if value == 0:
        return None
    unix = value - NTP_UNIX_OFFSET if value >= NTP_UNIX_OFFSET else value
    return unix - wall_offset


def unix_to_sdp_time(unix: int | float | None, *, ntp: bool = False) -> int:
    """The `t=` value for Unix seconds: whole seconds since 1970 (GB/T 28181), or since 1900
    with `ntp`; None ("now") is 0. Fractions are dropped, toward the start of the second.

    Raises `LocalProtocolError` for times before 1970-01-01T00:00:01 or from 2040 on, which
    `sdp_time_to_unix` could not read back.
    """
    if unix is None:
        return 0
    if not math.isfinite(unix):
        raise LocalProtocolError(f"time outside 1970-2039 for t=: {unix}")
    seconds = math.floor(unix)
    if not 0 < seconds < NTP_UNIX_OFFSET:
        raise LocalProtocolError(f"time outside 1970-2039 for t=: {unix}")
    return seconds + NTP_UNIX_OFFSET if ntp else seconds


def sdp_range_to_unix(
    timing: tuple[int, int], *, wall_offset: int = 0
) -> tuple[int | None, int | None]:
    """Both values of a `t=` line (`SessionDescription.timing`) in Unix seconds, each None for
    0: `(1716170400, 1716174000)` for `t=1716170400 1716174000`, `(None, None)` for `t=0 0`."""
    start, stop = timing
    return (
        sdp_time_to_unix(start, wall_offset=wall_offset),
        sdp_time_to_unix(stop, wall_offset=wall_offset),
    )
