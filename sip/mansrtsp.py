"""MANSRTSP: control of a playback or download dialog (GB/T 28181-2016 App. B, 2022 App. B).

An upper platform steers a playback with in-dialog INFO requests whose body (Content-Type
`Application/MANSRTSP`) is an RTSP 1.0 request (RFC 2326 section 6) without URL or session:

    PLAY RTSP/1.0      PAUSE RTSP/1.0     PLAY RTSP/1.0      PLAY RTSP/1.0      TEARDOWN RTSP/1.0
    CSeq: 3            CSeq: 4            CSeq: 5            CSeq: 6            CSeq: 7
    Scale: 2.0         PauseTime: now     Range: npt=now-    Range: npt=600-

`Range: npt=<t>-` seeks to t seconds after the start of the INVITE's `t=` range, `npt=now-`
resumes where the playback paused, `Scale` sets the speed (below 1 slower, negative in reverse,
2022). Any PLAY ends a pause. The INFO's 200 carries the answer, `RTSP/1.0 200 OK` with the
request's CSeq (RFC 2326 section 7).

What platforms send, and `parse_mansrtsp` takes:

* `RTSP/1.0` (2022, wvp, eXosip, wx) or `MANSRTSP/1.0` (2016 examples), with or without an
  RTSP URL between method and version; the method in any case.
* LF-only or CRLF line ends, header names in any case, spaces around `:` and `=`, a trailing
  blank line, trailing NULs.
* `Scale: 4` (wx), `Scale: 1.0`, `Scale: 2.000000` (wvp); `PauseTime: now` or `PauseTime: 0`
  (eXosip). Whatever PauseTime says, a PAUSE pauses at once.
* `Range: npt=10.5-`, `npt=0-`, `npt=0:01:30-` (RFC 2326 section 3.6), a decimal comma, and an
  end (`npt=10-20`), which is read and ignored: the session ends at the `t=` stop.

Every failure raises `MansrtspError`, a `ParseError` (so the SIP status to answer is 400, 513
for an oversized body) that also carries the RTSP `status` of the MANSRTSP reply and the
request's `cseq` when it could be read; `MansrtspError.reply()` builds that reply. Bodies are
capped at 4 KiB: the longest real one is under 100 bytes.

Building goes the other way: `build_mansrtsp` writes requests as wvp does (the form devices in
the field accept), `mansrtsp_reply` the replies, and `parse_mansrtsp_reply` reads a device's
reply to a relayed request. `parse_mansrtsp(build_mansrtsp(r)) == r` for every request `r`,
and the same holds for replies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import LocalProtocolError, ParseError

__all__ = [
    "CONTENT_TYPE",
    "MAX_BODY_SIZE",
    "METHODS",
    "REASONS",
    "MAX_SCALE",
    "MIN_SCALE",
    "MAX_NPT",
    "MansrtspError",
    "MansrtspRequest",
    "MansrtspReply",
    "is_mansrtsp",
    "parse_mansrtsp",
    "build_mansrtsp",
    "parse_mansrtsp_reply",
    "mansrtsp_reply",
]

CONTENT_TYPE = "Application/MANSRTSP"
"""The Content-Type of the INFO body, as the standard spells it."""

MAX_BODY_SIZE = 4096
METHODS = ("PLAY", "PAUSE", "TEARDOWN")

MIN_SCALE = 0.001
MAX_SCALE = 1000.0
"""Bounds of |Scale|: 1/32 and 32 are the extremes seen in the field."""

MAX_NPT = 1e10
"""npt times are below this: ten integer digits of seconds."""

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    451: "Parameter Not Understood",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    456: "Header Field Not Valid for Resource",
    457: "Invalid Range",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version not supported",
    551: "Option not supported",
}
"""Reason phrases of RFC 2326 section 7.1.1 for the statuses a playback answers with."""

_CONTENT_TYPES = frozenset({"application/mansrtsp", "application/rtsp"})
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"(?:MANS)?RTSP/1\.0", re.IGNORECASE)
_ANY_VERSION = re.compile(r"(?:MANS)?RTSP/[0-9]\.[0-9]", re.IGNORECASE)
_METHOD = re.compile(r"[A-Za-z_]{1,32}")
_CSEQ = re.compile(r"[0-9]{1,10}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(r"([0-9]{3})(?:[ \t]+(.*))?")
_FRACTION = r"(?:[.,]([0-9]{1,9}))?"
_NPT_SECONDS = re.compile(r"([0-9]{1,10})" + _FRACTION)
_NPT_HHMMSS = re.compile(r"([0-9]{1,6}):([0-5]?[0-9]):([0-5]?[0-9])" + _FRACTION)
_RANGE = re.compile(r"([A-Za-z-]+)[ \t]*=[ \t]*([^ \t-]*)[ \t]*-[ \t]*([^ \t;]*)", re.IGNORECASE)
_SCALE = re.compile(r"[+-]?[0-9]{1,4}" + _FRACTION)
_MAX_REASON = 200


class MansrtspError(ParseError):
    """A MANSRTSP body that cannot be accepted.

    `status_hint` is the SIP status for the INFO (400, or 513 for an oversized body); `status`
    is the RTSP status of the MANSRTSP reply (400 syntax, 413 size, 457 Range, 501 method, 505
    version); `cseq` is the request's CSeq if it could be read, else None.
    """

    def __init__(
        self,
        reason: str,
        status: int = 400,
        cseq: int | None = None,
        status_hint: int | None = None,
    ) -> None:
        super().__init__(reason, status_hint)
        self.status = status
        self.cseq = cseq

    def reply(self) -> bytes:
        """The MANSRTSP reply for this error: `RTSP/1.0 <status> <phrase> (<reason>)`."""
        phrase = REASONS.get(self.status, "Error")
        return mansrtsp_reply(self.cseq, self.status, f"{phrase} ({self.reason})")


def _check_scale(scale: float) -> bool:
    return math.isfinite(scale) and MIN_SCALE <= abs(scale) <= MAX_SCALE


@dataclass(frozen=True)
class MansrtspRequest:
    """One control request of a playback dialog.

    `method` is PLAY, PAUSE or TEARDOWN and `cseq` the MANSRTSP CSeq (its own counter, not the
    INFO's). For PLAY, `start` is the seek target in seconds from the start of the `t=` range
    (None: carry on from where the playback is, for `npt=now-` or no Range) and `scale` the new
    speed (None: unchanged). PAUSE and TEARDOWN carry neither. Raises `LocalProtocolError` for
    values that cannot be sent.
    """

    method: str
    cseq: int
    start: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LocalProtocolError(f"MANSRTSP method must be one of {METHODS}: {self.method!r}")
        if not 0 <= self.cseq <= 0xFFFFFFFF:
            raise LocalProtocolError(f"CSeq out of range: {self.cseq}")
        if self.method != "PLAY" and (self.start is not None or self.scale is not None):
            raise LocalProtocolError(f"{self.method} carries neither Range nor Scale")
        if self.start is not None and not (math.isfinite(self.start) and 0 <= self.start < MAX_NPT):
            raise LocalProtocolError(f"npt start out of range: {self.start}")
        if self.scale is not None and not _check_scale(self.scale):
            raise LocalProtocolError(f"Scale out of range: {self.scale}")

    @property
    def is_resume(self) -> bool:
        """A PLAY that neither seeks nor changes the speed (`Range: npt=now-`)."""
        return self.method == "PLAY" and self.start is None and self.scale is None

    def __bytes__(self) -> bytes:
        return build_mansrtsp(self)


@dataclass(frozen=True)
class MansrtspReply:
    """A MANSRTSP reply: `RTSP/1.0 <status> <reason>`, the CSeq (None when absent) and the
    other header fields in order, names as sent (e.g. `RTP-Info: seq=..;rtptime=..`)."""

    status: int
    reason: str
    cseq: int | None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def get(self, name: str) -> str | None:
        """The first header field `name` (any case), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def __bytes__(self) -> bytes:
        return mansrtsp_reply(self.cseq, self.status, self.reason, self.headers)


def is_mansrtsp(content_type: str) -> bool:
    """Whether an INFO's Content-Type names a MANSRTSP body: `Application/MANSRTSP` in any
    case, or `application/RTSP` as eXosip platforms send it; parameters are ignored."""
    return content_type.split(";", 1)[0].strip(" \t").lower() in _CONTENT_TYPES


# -- parsing ------------------------------------------------------------------------------------


def _message_lines(data: bytes) -> list[str]:
    """The start line and header lines of a body, or MansrtspError."""
    if len(data) > MAX_BODY_SIZE:
        raise MansrtspError("MANSRTSP body exceeds 4 KiB", status=413, status_hint=513)
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise MansrtspError("MANSRTSP body is not UTF-8 text") from None
    text = text.removeprefix("\ufeff").rstrip("\x00").strip(" \t\r\n")
    if not text:
        raise MansrtspError("empty MANSRTSP body")
    lines = _LINE_BREAK.split(text)
    if "" in lines:
        # A blank line would end the header block; no MANSRTSP message has a body.
        raise MansrtspError("MANSRTSP body continues after a blank line")
    for line in lines:
        if _CONTROL.search(line):
            raise MansrtspError("control character in a MANSRTSP body")
    return lines


def _header_fields(lines: list[str]) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip(" \t")
        if not colon or not _TOKEN.fullmatch(name):
            raise MansrtspError(f"malformed header line {line[:40]!r}")
        fields.append((name, value.strip(" \t")))
    return fields


def _single(fields: list[tuple[str, str]], name: str, cseq: int | None = None) -> str | None:
    """The value of header `name`; repeats must agree."""
    values = {v for k, v in fields if k.lower() == name}
    if len(values) > 1:
        raise MansrtspError(f"conflicting {name} header fields", 400, cseq)
    return values.pop() if values else None


def _cseq(value: str | None) -> int | None:
    if value is None:
        return None
    if not _CSEQ.fullmatch(value) or int(value) > 0xFFFFFFFF:
        raise MansrtspError(f"bad CSeq {value[:20]!r}")
    return int(value)


def _fraction(digits: str | None) -> float:
    return float("0." + digits) if digits else 0.0


def _npt_time(text: str) -> float | None:
    """Seconds of an npt time (`10.5`, `0:01:30`), or None if it is none."""
    if _NPT_SECONDS.fullmatch(text):
        return float(text.replace(",", "."))
    m = _NPT_HHMMSS.fullmatch(text)
    if m is not None:
        hours, minutes, seconds, frac = m.groups()
        return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + _fraction(frac)
    return None


def _range_start(value: str, cseq: int | None) -> float | None:
    """The start of `Range: npt=<start>-[<end>]`, None for `now`; MansrtspError 457 otherwise."""
    spec = value.split(";", 1)[0].strip(" \t")
    m = _RANGE.fullmatch(spec)
    if m is None:
        raise MansrtspError(f"malformed Range {value[:40]!r}", 457, cseq)
    unit, start, end = m.groups()
    if unit.lower() != "npt":
        raise MansrtspError(f"Range in {unit[:10]} units; only npt is supported", 457, cseq)
    if end and _npt_time(end) is None and end.lower() != "now":
        raise MansrtspError(f"bad Range end {end[:20]!r}", 457, cseq)
    if not start:
        raise MansrtspError("Range without a start", 457, cseq)
    if start.lower() == "now":
        return None
    seconds = _npt_time(start)
    if seconds is None or seconds >= MAX_NPT:
        raise MansrtspError(f"bad Range start {start[:20]!r}", 457, cseq)
    return seconds


def _scale(value: str, cseq: int | None) -> float:
    m = _SCALE.fullmatch(value)
    if m is None:
        raise MansrtspError(f"bad Scale {value[:20]!r}", 400, cseq)
    scale = float(value.replace(",", "."))
    if not _check_scale(scale):
        raise MansrtspError(f"Scale {value[:20]} out of range", 400, cseq)
    return scale


def _check_version(version: str, cseq: int | None) -> None:
    if not _VERSION.fullmatch(version):
        if _ANY_VERSION.fullmatch(version):
            raise MansrtspError(f"version {version} not supported", 505, cseq)
        raise MansrtspError(f"not an RTSP version: {version[:20]!r}", 400, cseq)


def parse_mansrtsp(data: bytes) -> MansrtspRequest:
    """Parse the MANSRTSP body of an INFO; raise `MansrtspError` for anything unacceptable."""
    lines = _message_lines(data)
    fields = _header_fields(lines[1:])
    cseq = _cseq(_single(fields, "cseq"))
    parts = lines[0].split()
    if len(parts) not in (2, 3) or not _METHOD.fullmatch(parts[0]):
        raise MansrtspError(f"malformed request line {lines[0][:40]!r}", 400, cseq)
    _check_version(parts[-1], cseq)
    method = parts[0].upper()
    if cseq is None:
        raise MansrtspError("missing CSeq")
    if method not in METHODS:
        raise MansrtspError(f"method {method} not supported", 501, cseq)
    if method != "PLAY":
        return MansrtspRequest(method, cseq)
    range_value = _single(fields, "range", cseq)
    scale_value = _single(fields, "scale", cseq)
    start = _range_start(range_value, cseq) if range_value is not None else None
    scale = _scale(scale_value, cseq) if scale_value is not None else None
    return MansrtspRequest(method, cseq, start, scale)


def parse_mansrtsp_reply(data: bytes) -> MansrtspReply:
    """Parse a MANSRTSP reply (the body of a device's 200 to INFO); raise `MansrtspError`."""
    lines = _message_lines(data)
    fields = _header_fields(lines[1:])
    cseq = _cseq(_single(fields, "cseq"))
    version, _, rest = lines[0].replace("\t", " ").partition(" ")
    _check_version(version, cseq)
    m = _STATUS.fullmatch(rest.strip(" "))
    if m is None or not 100 <= int(m.group(1)) <= 699:
        raise MansrtspError(f"malformed status line {lines[0][:40]!r}", 400, cseq)
    headers = tuple((k, v) for k, v in fields if k.lower() != "cseq")
    return MansrtspReply(int(m.group(1)), (m.group(2) or "").strip(" \t"), cseq, headers)


# -- building -----------------------------------------------------------------------------------


def _decimal(value: float) -> str:
    """Six decimals at most, without trailing zeros: `600`, `10.5`."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def build_mansrtsp(request: MansrtspRequest) -> bytes:
    """The body of a MANSRTSP INFO, in wvp's form (CRLF after each line, no blank line).

    A PLAY writes `Range: npt=<start>-` to seek, `Scale: <scale>` with six decimals to change
    the speed, and `Range: npt=now-` when it does neither (resume). A PAUSE writes
    `PauseTime: now`. Times are written to the microsecond.
    """
    lines = [f"{request.method} RTSP/1.0", f"CSeq: {request.cseq}"]
    if request.method == "PLAY":
        if request.start is not None:
            lines.append(f"Range: npt={_decimal(request.start)}-")
        if request.scale is not None:
            lines.append(f"Scale: {request.scale:.6f}")
        if request.is_resume:
            lines.append("Range: npt=now-")
    elif request.method == "PAUSE":
        lines.append("PauseTime: now")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _clean_reason(reason: str) -> str:
    text = " ".join("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in reason).split())
    return text[:_MAX_REASON]


def mansrtsp_reply(
    cseq: int | None,
    status: int = 200,
    reason: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A MANSRTSP reply: `RTSP/1.0 <status> <reason>`, `CSeq` (left out when None) and
    `headers` in order.

    `reason` defaults to the phrase of RFC 2326 for `status`; control characters in it become
    spaces, runs of white space one space, and it is cut to 200 characters. Raises
    `LocalProtocolError` for a status outside 100-699, a CSeq outside 32 bits, a header name
    that is no token, or a value with control characters or surrounding white space.
    """
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"status out of range: {status}")
    if cseq is not None and not 0 <= cseq <= 0xFFFFFFFF:
        raise LocalProtocolError(f"CSeq out of range: {cseq}")
    phrase = _clean_reason(REASONS.get(status, "") if reason is None else reason)
    lines = [f"RTSP/1.0 {status} {phrase}".rstrip(" ")]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or name.lower() == "cseq":
            raise LocalProtocolError(f"bad MANSRTSP header name {name!r}")
        if _CONTROL.search(value) or value != value.strip(" \t"):
            raise LocalProtocolError(f"bad MANSRTSP header value {value!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
