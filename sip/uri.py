"""SIP URIs, name-addr values and Via values (RFC 3261 sections 19.1, 20.10, 20.42, 25.1).

The grammar of the header values the stack relies on (From, To, Contact, Route, Record-Route,
Via) is regular, so each is one compiled pattern, built below from the RFC 3261 section 25.1
rules it quotes. `message.py` checks every received value against these patterns, and the
`parse` methods here use the same patterns, so a value that passed the parser never fails later.

Where the grammar is strict but real devices are not, and no ambiguity follows, we are liberal:
an unquoted display name may hold non-ASCII words (GB/T 28181 devices send Chinese names), host
names may hold `_`, and a parameter may have an empty value (`;tag=`). Escapes are kept as sent
and decoded only by `unescape`, once (RFC 4475 section 3.1.1.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from .errors import ParseError

__all__ = [
    "NameAddr",
    "Uri",
    "Via",
    "is_contact_list",
    "is_name_addr",
    "is_name_addr_list",
    "is_request_uri",
    "is_via_list",
    "parse_params",
    "split_top_level",
    "unescape",
]

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]++"
# SWS = [LWS]; folding is undone before matching, so only SP and HTAB remain.
_SWS = r"[ \t]*+"
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
_QSTRING = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*+"'
# IPv6reference = "[" IPv6address "]"; hostname and IPv4address share one liberal class.
_IPV6REF = r"\[[0-9A-Fa-f:.]++\]"
_HOST = rf"(?:{_IPV6REF}|[A-Za-z0-9\-_.]++)"
# port = 1*DIGIT, limited here to 0-65535 so that `int()` never sees anything else.
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[0-5]?[0-9]{1,4})"
# generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string
_GEN_VALUE = rf"(?:{_TOKEN}|{_IPV6REF}|{_QSTRING})?"
_PARAM = rf"{_SWS};{_SWS}{_TOKEN}(?:{_SWS}={_SWS}{_GEN_VALUE})?"
_PARAMS = rf"(?:{_PARAM})*+"

# Characters a URI may hold at all: no controls, SP, DQUOTE or angle brackets.
_URIC = r'[^\x00-\x20"<>\x7f'
# uri-parameter = pname [ "=" pvalue ]; both 1*paramchar (no ";", "?", "=", "@", ",").
_PCHAR = _URIC + r";?=@,]++"
_URI_PARAMS = rf"(?:;{_PCHAR}(?:={_PCHAR})?)*+"
_SIP = r"[Ss][Ii][Pp](?:[Ss])?"
# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ], userinfo ending in "@".
_SIP_URI = (
    rf"(?P<scheme>{_SIP}):(?:(?P<userinfo>{_URIC}@]++)@)?(?P<host>{_HOST})"
    rf"(?::(?P<port>{_PORT}))?(?P<params>{_URI_PARAMS})(?:\?(?P<headers>{_URIC}]*+))?"
)
_SIP_URI_PLAIN = re.sub(r"\(\?P<\w+>", "(?:", _SIP_URI)
# In the addr-spec form (no angle brackets) a URI ends at ";", "," or "?" (RFC 3261 section 20).
_SIP_URI_BARE = rf"{_SIP}:(?:{_URIC};,?@]++@)?{_HOST}(?::{_PORT})?"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*+"
# absoluteURI, for every scheme but sip and sips (those must match the SIP-URI rule).
_OTHER_URI = rf"(?!{_SIP}:){_SCHEME}:{_URIC}]++"
_OTHER_URI_BARE = rf"(?!{_SIP}:){_SCHEME}:{_URIC};,?]++"

_WORD = r"[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]++"
# display-name = *(token LWS) / quoted-string
_DISPLAY = rf"(?:{_QSTRING}|{_WORD}(?:[ \t]++{_WORD})*+)"
# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT
_NAME_ADDR = rf"(?:{_DISPLAY}{_SWS})?<(?:{_SIP_URI_PLAIN}|{_OTHER_URI})>"
_ADDR = rf"(?:{_NAME_ADDR}|{_SIP_URI_BARE}|{_OTHER_URI_BARE}){_PARAMS}"
_COMMA = rf"{_SWS},{_SWS}"

# sent-protocol = protocol-name SLASH protocol-version SLASH transport; sent-by = host [COLON port]
_VIA_PARM = (
    rf"{_TOKEN}{_SWS}/{_SWS}{_TOKEN}{_SWS}/{_SWS}{_TOKEN}[ \t]++{_HOST}"
    rf"(?:{_SWS}:{_SWS}{_PORT})?{_PARAMS}"
)

_SIP_URI_RE = re.compile(_SIP_URI)
# Request-URI = SIP-URI / SIPS-URI / absoluteURI, where a SIP URI may not carry headers (19.1.1).
_REQUEST_URI_RE = re.compile(
    rf"{_SIP}:(?:{_URIC}@]++@)?{_HOST}(?::{_PORT})?{_URI_PARAMS}|{_OTHER_URI}"
)
_OTHER_URI_RE = re.compile(rf"(?P<scheme>{_SCHEME}):(?P<rest>{_URIC}]++)")
_NAME_ADDR_RE = re.compile(_ADDR)
_NAME_ADDR_LIST_RE = re.compile(rf"{_NAME_ADDR}{_PARAMS}(?:{_COMMA}{_NAME_ADDR}{_PARAMS})*+")
_CONTACT_LIST_RE = re.compile(rf"\*|{_ADDR}(?:{_COMMA}{_ADDR})*+")
_VIA_LIST_RE = re.compile(rf"{_VIA_PARM}(?:{_COMMA}{_VIA_PARM})*+")
_NAME_ADDR_PARTS_RE = re.compile(
    rf"(?:(?P<display>{_DISPLAY}){_SWS})?<(?P<uri>{_URIC}]++)>(?P<params>{_PARAMS})"
    rf"|(?P<spec>{_SIP_URI_BARE}|{_OTHER_URI_BARE}){_SWS}(?P<sparams>{_PARAMS})"
)
_VIA_PARTS_RE = re.compile(
    rf"(?P<name>{_TOKEN}){_SWS}/{_SWS}(?P<version>{_TOKEN}){_SWS}/{_SWS}(?P<transport>{_TOKEN})"
    rf"[ \t]++(?P<host>{_HOST})(?:{_SWS}:{_SWS}(?P<port>{_PORT}))?(?P<params>{_PARAMS})"
)


def is_request_uri(text: str) -> bool:
    """True if `text` is a valid Request-URI: a SIP URI without headers, or another absolute URI."""
    return _REQUEST_URI_RE.fullmatch(text) is not None


def is_name_addr(text: str) -> bool:
    """True if `text` is a valid From / To value (name-addr or addr-spec, then parameters)."""
    return _NAME_ADDR_RE.fullmatch(text) is not None


def is_name_addr_list(text: str) -> bool:
    """True if `text` is a valid Route / Record-Route value (name-addrs only, comma-separated)."""
    return _NAME_ADDR_LIST_RE.fullmatch(text) is not None


def is_contact_list(text: str) -> bool:
    """True if `text` is a valid Contact value: `*` or comma-separated name-addr / addr-spec."""
    return _CONTACT_LIST_RE.fullmatch(text) is not None


def is_via_list(text: str) -> bool:
    """True if `text` is a valid Via value: one or more comma-separated via-parms."""
    return _VIA_LIST_RE.fullmatch(text) is not None


# A quoted string (possibly unterminated) or an <...> section, inside which separators are text.
_SPLIT_RE = {
    sep: re.compile(r'"(?:[^"\\]|\\.?)*+(?:"|\Z)|<[^>]*+(?:>|\Z)|' + re.escape(sep), re.S)
    for sep in ",;"
}


def split_top_level(text: str, sep: str) -> list[str]:
    """Split `text` on `sep` where it is outside double quotes and angle brackets."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    pattern = _SPLIT_RE.get(sep) or re.compile(
        r'"(?:[^"\\]|\\.?)*+(?:"|\Z)|<[^>]*+(?:>|\Z)|' + re.escape(sep), re.S
    )
    parts: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        if match.group() == sep:
            parts.append(text[start : match.start()])
            start = match.end()
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse `;a=b;c` into an ordered dict with lower-cased names (`c` maps to None)."""
    params: dict[str, str | None] = {}
    pieces = text.split(";") if '"' not in text else split_top_level(text, ";")
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip(" \t").lower()
        if not name:
            if eq or piece.strip(" \t"):
                raise ParseError(f"empty parameter name in {text[:80]!r}")
            continue
        params[name] = value.strip(" \t") if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unescape(text: str) -> str:
    """Decode `%HH` escapes once (RFC 3261 section 19.1.2); `%` not followed by two hex digits
    stays as is. Never apply it twice: `value%2541` is `value%41`, not `valueA`."""
    if "%" not in text:
        return text
    raw = unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class Uri:
    """A `sip:` / `sips:` URI; other schemes keep their text after the colon in `host`."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> Uri:
        text = text.strip(" \t")
        match = _SIP_URI_RE.fullmatch(text)
        if match is None:
            other = _OTHER_URI_RE.fullmatch(text)
            if other is None or other["scheme"].lower() in ("sip", "sips"):
                raise ParseError(f"malformed URI {text[:80]!r}")
            return cls(scheme=other["scheme"].lower(), user=None, host=other["rest"])
        user = password = None
        if match["userinfo"] is not None:
            user, colon, pw = match["userinfo"].partition(":")
            if colon:
                password = pw
        port = match["port"]
        params = match["params"]
        return cls(
            scheme=match["scheme"].lower(),
            user=user,
            host=match["host"],
            port=None if port is None else int(port),
            params=parse_params(params) if params else {},
            headers=match["headers"],
            password=password,
        )

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.host}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{self.hostport}{_format_params(self.params)}"
        if self.headers is not None:
            text += "?" + self.headers
        return text


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters.

    `display` is the display name as sent, quotes and escapes included.
    """

    uri: Uri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip(" \t")
        if text == "*":
            return cls(uri=Uri("sip", None, "*"), wildcard=True)
        match = _NAME_ADDR_PARTS_RE.fullmatch(text)
        if match is None:
            raise ParseError(f"malformed name-addr {text[:80]!r}")
        if match["spec"] is not None:
            # addr-spec form: parameters after the URI belong to the header, not the URI.
            return cls(uri=Uri.parse(match["spec"]), params=parse_params(match["sparams"]))
        params = match["params"]
        return cls(
            uri=Uri.parse(match["uri"]),
            display=match["display"],
            params=parse_params(params) if params else {},
        )

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        prefix = f"{self.display} " if self.display else ""
        return f"{prefix}<{self.uri}>{_format_params(self.params)}"


@dataclass
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport` (LWS allowed around `/ : ; =`)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_PARTS_RE.fullmatch(text.strip(" \t"))
        if match is None:
            raise ParseError(f"malformed Via {text[:80]!r}")
        port = match["port"]
        params = match["params"]
        return cls(
            transport=match["transport"].upper(),
            host=match["host"],
            port=None if port is None else int(port),
            params=parse_params(params) if params else {},
            protocol=f"{match['name']}/{match['version']}",
        )

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"
