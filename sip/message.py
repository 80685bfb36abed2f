"""SIP requests and responses: parsing from bytes and serialising back (RFC 3261 section 7).

`parse_message` takes one UDP datagram (or one framed TCP message, see `stream.py`) and returns a
`Request` or `Response`, or raises `ParseError`. Header names keep their spelling for faithful
re-serialisation but are looked up case-insensitively, with the compact forms of RFC 3261
section 7.3.3 mapped to their long names. Bodies stay bytes: MANSCDP bodies are decoded by
`manscdp.py`, which knows about GB2312 and friends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import LocalProtocolError, MessageTooLarge, ParseError
from .uri import NameAddr, Uri, Via, split_top_level

__all__ = [
    "MAX_MESSAGE_SIZE",
    "Headers",
    "Message",
    "Request",
    "Response",
    "parse_message",
    "REASONS",
]

MAX_MESSAGE_SIZE = 64 * 1024

COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose grammar is a comma-separated list, so that `Via: a, b` is two values.
# Others (Authorization, WWW-Authenticate, Date, ...) contain commas inside one value.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "in-reply-to",
    }
)

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
    420: "Bad Extension",
    423: "Interval Too Brief",
    481: "Call/Transaction Does Not Exist",
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

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


class Headers:
    """An ordered, case-insensitive multimap of header fields.

    Each stored field is one header line as received (`Via: a, b` stays one line); `get_all`
    splits list-valued headers into their values.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]] | None = None) -> None:
        # (key, name-as-written, value)
        self._fields: list[tuple[str, str, str]] = []
        for name, value in fields or ():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._fields.append((header_key(name), name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name by one, at the position of the first."""
        key = header_key(name)
        for i, (k, _, _) in enumerate(self._fields):
            if k == key:
                self._fields[i] = (key, name, value)
                self._fields[i + 1 :] = [f for f in self._fields[i + 1 :] if f[0] != key]
                return
        self._fields.append((key, name, value))

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields = [f for f in self._fields if f[0] != key]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (the first list element for list headers)."""
        key = header_key(name)
        for k, _, v in self._fields:
            if k == key:
                if key in LIST_HEADERS:
                    return split_top_level(v, ",")[0].strip()
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = header_key(name)
        values: list[str] = []
        for k, _, v in self._fields:
            if k != key:
                continue
            if key in LIST_HEADERS:
                values.extend(p.strip() for p in split_top_level(v, ",") if p.strip())
            else:
                values.append(v)
        return values

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = header_key(name)
        return any(k == key for k, _, _ in self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._fields:
            yield name, value

    def __len__(self) -> int:
        return len(self._fields)

    def normalized(self) -> list[tuple[str, list[str]]]:
        """Fields as (key, values) in order, for comparing two messages for equivalence."""
        out: list[tuple[str, list[str]]] = []
        for key, _, value in self._fields:
            if key in LIST_HEADERS:
                vals = [p.strip() for p in split_top_level(value, ",") if p.strip()]
            else:
                vals = [value.strip()]
            if out and out[-1][0] == key and key in LIST_HEADERS:
                out[-1][1].extend(vals)
            else:
                out.append((key, vals))
        return out

    def copy(self) -> Headers:
        new = Headers()
        new._fields = list(self._fields)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self.normalized() == other.normalized()

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


@dataclass(eq=False)
class Message:
    """Common part of requests and responses."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    # --- convenience accessors (parsed on demand) ---
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.headers.get("CSeq")
        if value is None:
            raise ParseError("missing CSeq header")
        return parse_cseq(value)

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        return Via.parse(self._required("Via"))

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").strip().lower()

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ParseError(f"missing {name} header")
        return value

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always written and always matches the body."""
        lines = [self._start_line()]
        for name, value in self.headers:
            if header_key(name) != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message) or type(self) is not type(other):
            return NotImplemented
        return self._start_line() == other._start_line() and self._comparable() == other._comparable()

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

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


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
        for name, value in request.headers:
            key = header_key(name)
            if key in ("via", "from", "call-id", "cseq"):
                headers.add(name, value)
            elif key == "to":
                if to_tag and ";tag=" not in value.replace(" ", "").lower():
                    value = f"{value};tag={to_tag}"
                headers.add(name, value)
        return cls(
            headers=headers,
            status=status,
            reason=reason if reason is not None else REASONS.get(status, "Unknown"),
        )

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id!r}>"


def parse_cseq(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    if not number.isdigit() or len(number) > 10 or not method or not _TOKEN.match(method):
        raise ParseError(f"bad CSeq {value!r}")
    seq = int(number)
    if seq >= 2**31:
        raise ParseError(f"CSeq number out of range: {value!r}")
    return seq, method


def parse_message(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> Request | Response:
    """Parse one SIP message from a datagram; trailing octets after the body are ignored."""
    message, _ = parse_head_and_body(data, max_size=max_size, datagram=True)
    assert message is not None
    return message


def find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Find the empty line ending the header block: (end of headers, start of body), or (-1, -1).

    Accepts CRLF CRLF and, from liberal senders, LF LF.
    """
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def parse_head_and_body(
    data: bytes, *, max_size: int = MAX_MESSAGE_SIZE, datagram: bool
) -> tuple[Request | Response | None, int]:
    """Parse a message at the start of `data`.

    For a datagram the body is framed by Content-Length (or runs to the end without one). For a
    stream, returns (None, 0) while more bytes are needed; otherwise (message, bytes consumed).
    """
    if datagram and len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    head_end, body_start = find_head_end(data)
    if head_end < 0:
        if len(data) > max_size:
            raise MessageTooLarge(f"header block exceeds {max_size} bytes")
        if datagram:
            raise ParseError("no empty line after the headers")
        return None, 0
    head = data[:head_end].decode("utf-8", "surrogateescape")
    message = _parse_head(head)
    length_text = message.headers.get("Content-Length")
    if length_text is None:
        if not datagram:
            raise ParseError("missing Content-Length on a stream transport")
        body_end = len(data)
    else:
        length_text = length_text.strip()
        if not length_text.isdigit() or len(length_text) > 9:
            raise ParseError(f"bad Content-Length {length_text!r}")
        body_end = body_start + int(length_text)
        if body_end > max_size:
            raise MessageTooLarge(f"message of {body_end} bytes exceeds {max_size}")
        if body_end > len(data):
            if datagram:
                raise ParseError("Content-Length larger than the message")
            return None, 0
    message.body = bytes(data[body_start:body_end])
    return message, body_end


def _unfold(head: str) -> list[str]:
    """Split the header block into logical lines, joining folded continuation lines."""
    lines: list[str] = []
    for raw in head.split("\n"):
        if raw.endswith("\r"):
            raw = raw[:-1]
        if raw[:1] in (" ", "\t"):
            if not lines:
                raise ParseError("message starts with whitespace")
            lines[-1] = lines[-1] + " " + raw.strip()
        else:
            lines.append(raw)
    return lines


def _parse_head(head: str) -> Request | Response:
    lines = _unfold(head.lstrip("\r\n"))
    start = lines[0]
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _HEADER_NAME.match(name):
            raise ParseError(f"malformed header line {line[:80]!r}")
        headers.add(name, value.strip(" \t"))
    if start.startswith("SIP/"):
        return _parse_status_line(start, headers)
    return _parse_request_line(start, headers)


def _parse_status_line(line: str, headers: Headers) -> Response:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0":
        raise ParseError(f"unsupported SIP version {version!r}", status_hint=505)
    if len(code) != 3 or not code.isdigit() or code[0] == "0":
        raise ParseError(f"bad status code {code!r}")
    _check_common(headers)
    return Response(headers=headers, status=int(code), reason=reason, version=version)


def _parse_request_line(line: str, headers: Headers) -> Request:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError(f"malformed request line {line[:80]!r}")
    method, uri, version = parts
    if not _TOKEN.match(method):
        raise ParseError(f"bad method {method[:40]!r}")
    if not version.upper().startswith("SIP/"):
        raise ParseError(f"malformed request line {line[:80]!r}")
    if version.upper() != "SIP/2.0":
        raise ParseError(f"unsupported SIP version {version!r}", status_hint=505)
    if ":" not in uri or "<" in uri or ">" in uri:
        raise ParseError(f"bad Request-URI {uri[:80]!r}")
    _check_common(headers)
    _, cseq_method = parse_cseq(headers.get("CSeq") or "")
    if cseq_method != method:
        raise ParseError(f"CSeq method {cseq_method!r} does not match {method!r}")
    return Request(headers=headers, method=method, uri=uri, version=version)


def _check_common(headers: Headers) -> None:
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in headers:
            raise ParseError(f"missing {name} header")
    parse_cseq(headers.get("CSeq") or "")
