"""Recognising the two requests that dominate a big site from raw bytes (RFC 3261 sections 7,
8.2.6, 17.2.3; GB/T 28181-2016 9.1 registration and 9.6 keepalive).

Thousands of cameras refresh their registration (REGISTER, answered 401, then REGISTER with
digest credentials) and send a keepalive MESSAGE every minute, always in the same shape.
`recognise` takes one datagram (or what a TCP stream has buffered) and, for a REGISTER or a
plain keepalive MESSAGE of that usual shape, returns a `FastRequest`: the few values the
registrar reads, the server transaction key, and the header lines a response copies.
`FastRequest.response` builds the bytes that `Response.for_request(...)` with the same added
headers would serialise to.

The recogniser accepts only what the full path (`message.parse_message`, `validate_request`, the
transaction layer) accepts and reads the same way; everything else returns None and goes through
the full path. It is deliberately narrow: one CRLF-terminated header per line (no folding, no bare
LF), no header repeated, one Via with an RFC 3261 branch, From, To and Contact as a plain
`<sip:user@host[:port]>` with at most a `tag` parameter, no Require, Date or Contact expires
parameter, a Content-Length, and for a MESSAGE a To without tag and a Keepalive body. Headers it
does not read may be present as long as their names are tokens; the full path reads none of them
either (Route and Record-Route are checked with the parser's own patterns).
"""

from __future__ import annotations

import re

from .headers import COMPACT_FORMS
from .message import MAX_MESSAGE_SIZE, REASONS
from .uri import is_name_addr_list, is_request_uri

__all__ = ["FastRequest", "recognise"]

_HEAD_END = b"\r\n\r\n"
# The characters of a token (RFC 3261 25.1), which a header name is made of.
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
_PORT = rb"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[0-5]?[0-9]{1,4})"
_OTHER_VIA_PARAMS = rb"(?:;rport(?:=[0-9]{1,5})?|;received=[0-9.]{1,39})*"
_BRANCH_CHARS = rb"[A-Za-z0-9.\-_!%*+`'~]"
# SIP/2.0/UDP host[:port] with exactly one branch (an RFC 3261 one, more than the magic cookie
# alone) among rport and received parameters.
_VIA = re.compile(
    rb"SIP/2\.0/(?:UDP|TCP) ([A-Za-z0-9.\-]+)(?::(" + _PORT + rb"))?" + _OTHER_VIA_PARAMS
    + rb";branch=(z9hG4bK" + _BRANCH_CHARS + rb"+)" + _OTHER_VIA_PARAMS
)
# From and To: <sip:user@host[:port]> and an optional tag; Contact without the tag.
_ADDR = rb"<sip:([A-Za-z0-9]+)@[A-Za-z0-9.\-]+(?::" + _PORT + rb")?>"
_TAGGED = re.compile(_ADDR + rb"(;tag=[A-Za-z0-9.\-_!%*+`'~]+)?")
_CONTACT = re.compile(_ADDR)
_CALL_ID = re.compile(rb"[!-~]+")
_CSEQ = re.compile(rb"([0-9]{1,10}) (REGISTER|MESSAGE)")
_KEEPALIVE = b"<CmdType>Keepalive</CmdType>"

# Headers whose presence sends a request the full way: the checks of `validate_request` that the
# recogniser does not repeat (Require, Date), and Proxy-Require with them.
_REFUSED = frozenset({"require", "proxy-require", "date"})
# Headers a response copies (RFC 3261 8.2.6.2), in the order the request has them.
_COPIED = frozenset({"via", "from", "to", "call-id", "cseq"})
_KEYS: dict[bytes, str] = {}
_URIS: dict[bytes, bool] = {}
_KEYS_LIMIT = 512


def _key(name: bytes) -> str:
    """The key of a header name that is a token: lower case, compact forms expanded. The names
    met first are kept, so `_KEYS` holds tokens only."""
    key = _KEYS.get(name)
    if key is None:
        lowered = name.decode("ascii").lower()
        key = COMPACT_FORMS.get(lowered, lowered)
        if len(_KEYS) < _KEYS_LIMIT:
            _KEYS[name] = key
    return key


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class FastRequest:
    """A REGISTER or keepalive MESSAGE recognised from its bytes; see the module docstring.

    `key` is the server transaction key the transaction layer would compute (branch, sent-by,
    method); `headers` holds every header value as the parser would store it, still in bytes
    (by lower-case key, compact forms expanded), for the registrar's `header` look-ups.
    """

    __slots__ = ("method", "key", "device_id", "call_id", "expires", "body", "headers",
                 "size", "_data", "_copied", "_to_index", "_to_tagged")

    def __init__(
        self,
        method: str,
        key: tuple[str, str, str],
        device_id: str,
        call_id: str,
        expires: int | None,
        body: bytes,
        headers: dict[str, bytes],
        copied: list[bytes],
        to_index: int,
        to_tagged: bool,
        data: bytes = b"",
        size: int = 0,
    ) -> None:
        self.method = method
        self.key = key
        self.device_id = device_id
        self.call_id = call_id
        self.expires = expires  # the Expires header, None without one
        self.body = body
        self.headers = headers
        self._copied = copied  # "Name: value" of the copied headers, in order
        self._to_index = to_index  # the To line among them, the one a to-tag changes
        self._to_tagged = to_tagged
        self._data = data
        self.size = size  # bytes of the message in what `recognise` was given, body included

    @property
    def raw(self) -> bytes:
        """The message's own bytes, for the parser when the fast path declines it."""
        data = self._data
        return data if len(data) == self.size else data[: self.size]

    def header(self, key: str) -> str | None:
        """A header's value by lower-case key (`"authorization"`), None if absent."""
        value = self.headers.get(key)
        return None if value is None else value.decode("utf-8", "surrogateescape")

    def response(
        self,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """The bytes of `Response.for_request(request, status, reason, to_tag=to_tag)` with
        `headers` added in order (no body)."""
        copied = self._copied
        if to_tag and not self._to_tagged:
            copied = copied.copy()
            at = self._to_index
            copied[at] = copied[at] + b";tag=" + to_tag.encode("utf-8", "surrogateescape")
        text = reason if reason is not None else REASONS.get(status, "Unknown")
        lines = [f"SIP/2.0 {status} {text}".encode("utf-8", "surrogateescape"), *copied]
        for name, value in headers:
            lines.append(f"{name}: {value}".encode("utf-8", "surrogateescape"))
        lines.append(b"Content-Length: 0\r\n\r\n")
        return b"\r\n".join(lines)


def recognise(data: bytes) -> FastRequest | None:
    """A `FastRequest` for a REGISTER or plain keepalive MESSAGE of the usual shape at the start
    of `data` (a datagram, or what a stream has buffered: bytes after the body are left alone
    and `size` says where the message ends), None for anything else, which then takes the full
    path. Never raises."""
    if data[:9] == b"REGISTER ":
        method = "REGISTER"
    elif data[:8] == b"MESSAGE ":
        method = "MESSAGE"
    else:
        return None
    if len(data) > MAX_MESSAGE_SIZE:
        return None
    head_end = data.find(_HEAD_END)
    if head_end < 0:
        return None
    head = data[:head_end]
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1
    if head.count(b"\r") != breaks or head.count(b"\n") != breaks:
        return None  # a bare CR or LF: the parser's job
    start = lines[0].split(b" ")
    if len(start) != 3 or start[2] != b"SIP/2.0":
        return None
    if not _uri_ok(start[1]):
        return None
    raw: dict[str, bytes] = {}
    copied: list[bytes] = []
    to_index = -1
    keys = _KEYS
    # Each header line: a token name, optional SP or HTAB, the colon, and the value without
    # the SP and HTAB around it (as the parser stores it). A line that is none of that (folded,
    # no colon, a name that is no token) is the parser's job.
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # a name seen before is a token with no space before the colon
        key = keys.get(name) if colon else None
        if key is None:
            name = name.rstrip(b" \t")
            if not colon or not name or name.translate(None, _TOKEN_CHARS):
                return None
            key = _key(name)
        value = value.strip(b" \t")
        if key in raw or key in _REFUSED:
            return None
        raw[key] = value
        if key in _COPIED:
            if key == "to":
                to_index = len(copied)
            copied.append(name + b": " + value)
    return _check(method, data, head_end, raw, copied, to_index)


def _uri_ok(raw: bytes) -> bool:
    """A SIP or SIPS Request-URI (`validate_request`, `is_request_uri`); the verdicts on the
    few URIs devices send (the node's own) are kept."""
    verdict = _URIS.get(raw)
    if verdict is None:
        uri = _text(raw)
        verdict = uri.partition(":")[0].lower() in ("sip", "sips") and is_request_uri(uri)
        if len(_URIS) < _KEYS_LIMIT:
            _URIS[raw] = verdict
    return verdict


def _check(
    method: str,
    data: bytes,
    head_end: int,
    raw: dict[str, bytes],
    copied: list[bytes],
    to_index: int,
) -> FastRequest | None:
    get = raw.get
    via, from_, to, call_id, cseq = get("via"), get("from"), get("to"), get("call-id"), get("cseq")
    if via is None or from_ is None or to is None or call_id is None or cseq is None:
        return None
    m = _VIA.fullmatch(via)
    if m is None:
        return None
    host = m[1].decode("ascii").lower()
    sent_by = host if m[2] is None else f"{host}:{int(m[2])}"
    key = (m[3].decode("ascii"), sent_by, method)
    f = _TAGGED.fullmatch(from_)
    t = _TAGGED.fullmatch(to)
    if f is None or t is None:
        return None
    to_tagged = t[2] is not None
    if to_tagged and method == "MESSAGE":
        return None  # a MESSAGE with a To tag may belong to a dialog of ours
    if _CALL_ID.fullmatch(call_id) is None:
        return None
    c = _CSEQ.fullmatch(cseq)
    if c is None or c[2].decode("ascii") != method or int(c[1]) >= 2**31:
        return None
    contact = get("contact")
    if contact is not None and _CONTACT.fullmatch(contact) is None:
        return None
    expires = None
    value = get("expires")
    if value is not None:
        if not value.isdigit() or len(value) > 10 or int(value) > 2**32 - 1:
            return None
        expires = int(value)
    value = get("max-forwards")
    if value is not None and (not value.isdigit() or len(value) > 10 or int(value) > 255):
        return None
    for name in ("route", "record-route"):
        if name in raw and not is_name_addr_list(_text(raw[name])):
            return None
    length = get("content-length")
    if length is None or not length.isdigit() or len(length) > 10:
        return None
    body_start = head_end + 4
    body_end = body_start + int(length)
    if body_end > len(data):
        return None
    body = data[body_start:body_end]
    if method == "MESSAGE" and _KEEPALIVE not in body:
        return None
    return FastRequest(method, key, f[1].decode("ascii"), call_id.decode("ascii"), expires,
                       body, raw, copied, to_index, to_tagged, data, body_end)
