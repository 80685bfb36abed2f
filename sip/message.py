"""SIP requests and responses: parsing bytes and serialising back (RFC 3261 sections 7, 20, 25).

`parse_message` takes one UDP datagram and returns a `Request` or `Response`, or raises
`ParseError`; `stream.py` frames TCP byte streams with the same head parser. Header fields live
in `headers.Headers` (re-exported here). Bodies stay bytes: MANSCDP bodies (GB/T 28181 appendix
A) are decoded by `manscdp.py`, which knows about GB2312 and friends.

What the parser checks (so that the accessors of a parsed message never fail): the start line;
that Via, From, To, Call-ID and CSeq are present, and that single-valued headers are not
repeated (RFC 4475 section 3.3.8); the syntax of From, To, Contact, Route, Record-Route, Via,
Call-ID, CSeq and Content-Length. Checks that depend on the receiving element (URI scheme,
Require, Date, expiry ranges) live in `validate_request` and `validate_response`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from .errors import LocalProtocolError, MessageTooLarge, ParseError
from .headers import COMPACT_FORMS, LIST_HEADERS, Headers, header_key
from .uri import (
    NameAddr,
    Uri,
    Via,
    is_contact_list,
    is_name_addr,
    is_name_addr_list,
    is_request_uri,
    is_via_list,
    split_top_level,
)

_T = TypeVar("_T")

__all__ = [
    "COMPACT_FORMS",
    "KNOWN_METHODS",
    "LIST_HEADERS",
    "MAX_MESSAGE_SIZE",
    "REASONS",
    "Headers",
    "Message",
    "Request",
    "Response",
    "find_head_end",
    "header_key",
    "parse_cseq",
    "parse_head",
    "parse_head_and_body",
    "parse_message",
    "validate_request",
    "validate_response",
]

MAX_MESSAGE_SIZE = 64 * 1024

REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
}

# Methods of RFC 3261 and its extensions; a CSeq mismatch on any other method earns 501.
KNOWN_METHODS = frozenset(
    "ACK BYE CANCEL INFO INVITE MESSAGE NOTIFY OPTIONS PRACK PUBLISH REFER REGISTER SUBSCRIBE "
    "UPDATE".split()
)

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_TOKENS = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]*")
_DIGITS = re.compile(r"[0-9]+")
_VERSION = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")
_STATUS = re.compile(r"[1-6][0-9][0-9]")
# callid = word [ "@" word ]; any visible ASCII is accepted.
_CALL_ID = re.compile(r"[!-~]+")
# The end of the last header line and the empty line: one pass, stopping at the first match.
_EMPTY_LINE = re.compile(rb"\n\r?\n")
_CSEQ = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")

# Single-valued headers a parser must not see twice (RFC 4475 sections 3.3.8 and 3.3.9).
_SINGLE = frozenset(
    {"from", "to", "call-id", "cseq", "content-length", "content-type", "max-forwards"}
)
_REQUIRED = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
_CHECKS: dict[str, Callable[[str], bool]] = {
    "via": is_via_list,
    "from": is_name_addr,
    "to": is_name_addr,
    "contact": is_contact_list,
    "route": is_name_addr_list,
    "record-route": is_name_addr_list,
    "call-id": lambda value: _CALL_ID.fullmatch(value) is not None,
    "cseq": lambda value: _CSEQ.fullmatch(value) is not None,
    "content-length": lambda value: _DIGITS.fullmatch(value) is not None,
    # Only checked for repetition: their syntax matters above the parser, if at all.
    "content-type": lambda value: True,
    "max-forwards": lambda value: True,
}


@dataclass(eq=False)
class Message:
    """Common part of requests and responses."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"
    # Parsed header values, keyed by header; an entry is reused only while the header's text is
    # the very same string, so editing `headers` never yields a stale value.
    _parsed: dict[str, tuple[str, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _cached(self, name: str, parse: Callable[[str], _T]) -> _T:
        raw = self._required(name)
        hit = self._parsed.get(name)
        if hit is not None and hit[0] is raw:
            return cast(_T, hit[1])
        value = parse(raw)
        self._parsed[name] = (raw, value)
        return value

    # --- convenience accessors (parsed on demand, once per header text) ---
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return self._cached("CSeq", parse_cseq)

    @property
    def from_(self) -> NameAddr:
        """The From value; shared with later calls, so treat it as read-only."""
        return self._cached("From", NameAddr.parse)

    @property
    def to(self) -> NameAddr:
        """The To value; shared with later calls, so treat it as read-only."""
        return self._cached("To", NameAddr.parse)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        """The first Via value; shared with later calls, so treat it as read-only."""
        return self._cached("Via", Via.parse)

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value in order; `[NameAddr(wildcard=True)]` for `Contact: *`."""
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact")]

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").strip().lower()

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds, None if absent; ParseError beyond 2**32-1 (20.19)."""
        value = self.headers.get("Expires")
        return None if value is None else _delta_seconds(value, "Expires")

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ParseError(f"missing {name} header")
        return value

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always written and always matches the body.

        Raises LocalProtocolError if a start line or header field would break the framing
        (CR or LF in it) or cannot be encoded.
        """
        lines = [self._start_line()]
        lines.extend(
            f"{name}: {value}"
            for key, name, value in self.headers.fields()
            if key != "content-length"
        )
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines)
        if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
            raise LocalProtocolError("CR or LF inside a start line or header field")
        try:
            return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"header text cannot be encoded: {exc}") from None

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message) or type(self) is not type(other):
            return NotImplemented
        if self._start_line() != other._start_line():
            return False
        return self._comparable() == other._comparable()

    def _comparable(self) -> tuple[object, ...]:
        fields = [(k, v) for k, v in self.headers.normalized() if k != "content-length"]
        return (fields, self.body)


@dataclass(eq=False)
class Request(Message):
    method: str = ""
    uri: str = ""

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    @property
    def request_uri(self) -> Uri:
        return Uri.parse(self.uri)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards as an int (leading zeros allowed), None if absent."""
        value = self.headers.get("Max-Forwards")
        return None if value is None else _delta_seconds(value, "Max-Forwards")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


_COPIED_TO_RESPONSES = frozenset({"via", "from", "to", "call-id", "cseq"})


@dataclass(eq=False)
class Response(Message):
    status: int = 200
    reason: str = "OK"

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    @classmethod
    def for_request(
        cls,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
    ) -> Response:
        """Build a response that copies Via, From, To, Call-ID and CSeq (RFC 3261 8.2.6.2).

        `to_tag` is added to To unless the request's To already has a tag.
        """
        if "Via" not in request.headers:
            raise LocalProtocolError("cannot answer a request without Via")
        headers = Headers()
        copied = headers.fields()
        for key, name, value in request.headers.fields():
            if key in _COPIED_TO_RESPONSES:
                if key == "to" and to_tag and ";tag=" not in value.replace(" ", "").lower():
                    value = f"{value};tag={to_tag}"
                copied.append((key, name, value))
        return cls(
            headers=headers,
            status=status,
            reason=reason if reason is not None else REASONS.get(status, "Unknown"),
        )

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id!r}>"


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse `CSeq: 0009 INVITE` into (9, "INVITE"); the number must be below 2**31 (8.1.1.5)."""
    match = _CSEQ.fullmatch(value.strip(" \t"))
    if match is None:
        raise ParseError(f"bad CSeq {value[:80]!r}")
    seq = int(match[1])
    if seq >= 2**31:
        raise ParseError(f"CSeq number out of range: {value[:80]!r}")
    return seq, match[2]


def _delta_seconds(value: str, name: str) -> int:
    value = value.strip(" \t")
    if _DIGITS.fullmatch(value) is None:
        raise ParseError(f"bad {name} {value[:80]!r}")
    digits = value.lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > 2**32 - 1:
        raise ParseError(f"{name} out of range: {value[:80]!r}")
    return int(digits)


# --------------------------------------------------------------------------------------------
# Parsing


def parse_message(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> Request | Response:
    """Parse one SIP message from a datagram; trailing octets after the body are ignored
    (RFC 3261 section 18.3, RFC 4475 section 3.1.1.8). Raises ParseError or MessageTooLarge."""
    message, _ = parse_head_and_body(data, max_size=max_size, datagram=True)
    assert message is not None
    return message


def find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Find the empty line ending the header block: (end of headers, start of body), or (-1, -1).

    Line ends may be CRLF or, from liberal senders, bare LF, in any mix.
    """
    match = _EMPTY_LINE.search(data, start)
    if match is None:
        return -1, -1
    pos = match.start()
    if pos > 0 and data[pos - 1] == 0x0D:
        pos -= 1
    return pos, match.end()


def _skip_line_breaks(data: bytes | bytearray) -> int:
    """RFC 3261 section 7.5: CRLFs before the start line are ignored."""
    if data[:1] not in (b"\r", b"\n"):
        return 0
    return len(data) - len(data.lstrip(b"\r\n"))


def parse_head_and_body(
    data: bytes, *, max_size: int = MAX_MESSAGE_SIZE, datagram: bool
) -> tuple[Request | Response | None, int]:
    """Parse a message at the start of `data`.

    For a datagram the body is framed by Content-Length (or runs to the end without one). For a
    stream, returns (None, 0) while more bytes are needed; otherwise (message, bytes consumed).
    `stream.StreamParser` is the incremental form for TCP.
    """
    if datagram and len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    start = _skip_line_breaks(data)
    head_end, body_start = find_head_end(data, start)
    if head_end < 0:
        if len(data) - start > max_size:
            raise MessageTooLarge(f"header block exceeds {max_size} bytes")
        if datagram:
            raise ParseError("no empty line after the headers")
        return None, 0
    if head_end - start > max_size:
        raise MessageTooLarge(f"header block exceeds {max_size} bytes")
    message, length = parse_head(data[start:head_end])
    if length is None:
        if not datagram:
            raise ParseError("missing Content-Length on a stream transport")
        body_end = len(data)
    else:
        body_end = body_start + length
        if datagram and body_end > len(data):
            raise ParseError("Content-Length larger than the message")
        if body_end - start > max_size:
            raise MessageTooLarge(f"message of {body_end - start} bytes exceeds {max_size}")
        if body_end > len(data):
            return None, 0
    message.body = bytes(data[body_start:body_end])
    return message, body_end


def parse_head(head: bytes | bytearray) -> tuple[Request | Response, int | None]:
    """Parse a start line and header block (without the empty line) into a message with an
    empty body; also returns the Content-Length, None if there is none."""
    lines = _split_lines(head.decode("utf-8", "surrogateescape"))
    start = lines[0]
    if start[:4].upper() == "SIP/":
        version, status, reason = _parse_status_line(start)
        fields = _parse_fields(lines)
        seen = _check_fields(fields)
        parse_cseq(seen["cseq"])
        message: Request | Response = Response(status=status, reason=reason, version=version)
    else:
        method, uri, version = _parse_request_line(start)
        fields = _parse_fields(lines)
        seen = _check_fields(fields)
        _, cseq_method = parse_cseq(seen["cseq"])
        if cseq_method != method:
            hint = 400 if method in KNOWN_METHODS else 501
            raise ParseError(f"CSeq method {cseq_method!r} does not match {method!r}", hint)
        message = Request(method=method, uri=uri, version=version)
    message.headers._fields = fields
    length = seen.get("content-length")
    return message, None if length is None else _content_length(length)


def _content_length(value: str) -> int:
    digits = value.lstrip("0") or "0"
    # Anything this long exceeds every size cap; never hand int() an unbounded digit string.
    return int(digits) if len(digits) <= 10 else 10**10


def _split_lines(text: str) -> list[str]:
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise ParseError("bare CR in the header block")
    lines = text.split("\n")
    if "\n " in text or "\n\t" in text:
        lines = _unfold(lines)
    return lines


def _unfold(lines: list[str]) -> list[str]:
    """Join folded continuation lines: the line break and leading whitespace become one SP."""
    groups: list[list[str]] = []
    for line in lines:
        if groups and line[:1] in (" ", "\t"):
            groups[-1].append(line.lstrip(" \t"))
        else:
            groups.append([line])
    return [" ".join(group) for group in groups]


def _parse_fields(lines: list[str]) -> list[tuple[str, str, str]]:
    """Header lines (after the start line) as (key, name-as-written, value) triples."""
    fields: list[tuple[str, str, str]] = []
    names: list[str] = []
    compact = COMPACT_FORMS
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(":")
        if not colon:
            raise ParseError(f"malformed header line {lines[i][:80]!r}")
        name = name.rstrip(" \t")
        names.append(name)
        key = name.lower()
        fields.append((compact.get(key, key), name, value.strip(" \t")))
    if not all(names) or _TOKENS.fullmatch("".join(names)) is None:
        bad = next(n for n in names if not n or _TOKEN.fullmatch(n) is None)
        raise ParseError(f"malformed header name {bad[:80]!r}")
    return fields


def _check_fields(fields: list[tuple[str, str, str]]) -> dict[str, str]:
    """Check the headers the stack relies on; returns the first value of each of them."""
    seen: dict[str, str] = {}
    for key, name, value in fields:
        check = _CHECKS.get(key)
        if check is None:
            continue
        if key in seen:
            if key in _SINGLE and not (key == "content-length" and seen[key] == value):
                raise ParseError(f"more than one {name} header")
        else:
            seen[key] = value
        if not check(value):
            raise ParseError(f"malformed {name} header {value[:80]!r}")
    for key, name in _REQUIRED.items():
        if key not in seen:
            raise ParseError(f"missing {name} header")
    return seen


def _check_version(version: str) -> None:
    if _VERSION.fullmatch(version) is None:
        raise ParseError(f"malformed SIP version {version[:40]!r}")
    if version.upper() != "SIP/2.0":
        raise ParseError(f"unsupported SIP version {version!r}", status_hint=505)


def _parse_status_line(line: str) -> tuple[str, int, str]:
    # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase; an empty phrase is fine
    # (RFC 4475 section 3.1.1.13), and so is a missing SP before it.
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    _check_version(version)
    if _STATUS.fullmatch(code) is None:
        raise ParseError(f"bad status code {code[:40]!r}")
    return version, int(code), reason


def _parse_request_line(line: str) -> tuple[str, str, str]:
    # Request-Line = Method SP Request-URI SP SIP-Version, single SPs (RFC 4475 3.1.2.9-10).
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError(f"malformed request line {line[:80]!r}")
    method, uri, version = parts
    if _TOKEN.fullmatch(method) is None:
        raise ParseError(f"bad method {method[:40]!r}")
    _check_version(version)
    if not is_request_uri(uri):
        raise ParseError(f"bad Request-URI {uri[:80]!r}")
    return method, uri, version


# --------------------------------------------------------------------------------------------
# Checks above the parser


_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
# SIP-date = rfc1123-date (always GMT, 20.17), or the local time GB/T 28181 section 9.10 uses.
_DATE = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{{2}} (?:{_MONTHS}) [0-9]{{4}} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,3})?"
)
_MAGIC_COOKIE = "z9hG4bK"
# A quick look for a branch that is only the magic cookie (RFC 4475 section 3.2.1).
_BARE_COOKIE = re.compile(r"[ \t]*;[ \t]*(?i:branch)[ \t]*=[ \t]*z9hG4bK[ \t]*(?:;|\Z)")
_VALIDATED = frozenset({"max-forwards", "expires", "contact", "date", "require"})


def validate_request(request: Request, *, supported: Collection[str] = ()) -> None:
    """Checks an endpoint applies to a well-formed request before acting on it (RFC 3261 8.2).

    Raises ParseError whose `status_hint` is the answer: 400 for a Max-Forwards above 255, an
    Expires or contact expires beyond 2**32-1, a Date that is neither RFC 1123 GMT nor the
    GB/T 28181 form, a branch that is only the magic cookie, or a REGISTER whose To is not a
    SIP URI; 416 for a Request-URI scheme other than sip/sips; 420 for a Require option not in
    `supported` (the adapter lists them in Unsupported).
    """
    values: dict[str, list[str]] = {}
    for key, _, value in request.headers._fields:
        if key in _VALIDATED:
            values.setdefault(key, []).append(value)
    _check_values(values)
    top_via = request.headers.get("Via") or ""
    if _BARE_COOKIE.search(top_via) and Via.parse(top_via).branch == _MAGIC_COOKIE:
        raise ParseError("Via branch is only the magic cookie")
    if request.uri.partition(":")[0].lower() not in ("sip", "sips"):
        raise ParseError(f"unsupported Request-URI scheme in {request.uri[:80]!r}", 416)
    if request.method == "REGISTER" and request.to.uri.scheme not in ("sip", "sips"):
        raise ParseError("REGISTER To is not a SIP URI")
    if "require" in values and request.method not in ("ACK", "CANCEL"):
        unknown = [opt for opt in request.headers.get_all("Require") if opt not in supported]
        if unknown:
            raise ParseError(f"unsupported extension(s): {', '.join(unknown)}", 420)


def _check_values(values: dict[str, list[str]]) -> None:
    for value in values.get("max-forwards", [])[:1]:
        if _delta_seconds(value, "Max-Forwards") > 255:
            raise ParseError(f"Max-Forwards {value[:20]!r} above 255")
    for value in values.get("expires", []):
        _delta_seconds(value, "Expires")
    for value in values.get("contact", []):
        if "expires" not in value.lower():
            continue
        for item in split_top_level(value, ","):
            expires = NameAddr.parse(item).params.get("expires")
            if expires is not None:
                _delta_seconds(expires, "contact expires")
    for value in values.get("date", []):
        if _DATE.fullmatch(value.strip(" \t")) is None:
            raise ParseError(f"bad Date {value[:80]!r}")


def validate_response(response: Response) -> None:
    """Checks a UAC applies to a well-formed response: exactly one Via (RFC 3261 8.1.3.3).

    A response failing them is discarded, never answered (`status_hint` is only informative).
    """
    if len(response.headers.get_all("Via")) != 1:
        raise ParseError("a response to this element must carry exactly one Via")
