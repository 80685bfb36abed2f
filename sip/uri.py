"""SIP URIs, name-addr values and Via values (RFC 3261 sections 19.1, 20.10, 20.42, 25.1).

Parsing here is deliberately liberal, as GB/T 28181 devices are: header parameters are split on
`;` outside quotes, names compare case-insensitively, and escapes are kept as sent (never
unescaped twice, RFC 4475 section 3.1.1.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ParseError

__all__ = ["Uri", "NameAddr", "Via", "parse_params", "split_top_level"]


def split_top_level(text: str, sep: str) -> list[str]:
    """Split `text` on `sep` where it is outside double quotes and angle brackets."""
    parts: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse `;a=b;c` into an ordered dict with lower-cased names (`c` maps to None)."""
    params: dict[str, str | None] = {}
    for piece in split_top_level(text, ";"):
        piece = piece.strip()
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not name:
            raise ParseError(f"empty parameter name in {text!r}")
        params[name] = value.strip() if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass
class Uri:
    """A `sip:` / `sips:` URI; other schemes keep their text in `host`."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> Uri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        if not colon or not scheme:
            raise ParseError(f"URI without scheme: {text!r}")
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            return cls(scheme=scheme, user=None, host=rest)
        rest, qmark, headers = rest.partition("?")
        user: str | None = None
        password: str | None = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, pcolon, pw = userinfo.partition(":")
            if pcolon:
                password = pw
        hostport, _, params = rest.partition(";")
        host, port = _split_hostport(hostport)
        return cls(
            scheme=scheme,
            user=user,
            host=host,
            port=port,
            params=parse_params(params) if params else {},
            headers=headers if qmark else None,
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


def _split_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if not text:
        raise ParseError("URI without host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference: {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ParseError(f"bad host:port {text!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return host, None
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise ParseError(f"bad port in {text!r}")
    return host, int(port_text)


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: Uri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if text == "*":
            return cls(uri=Uri("sip", None, "*"), wildcard=True)
        lt = _find_unquoted(text, "<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ParseError(f"unterminated '<' in {text!r}")
            display = text[:lt].strip() or None
            uri = Uri.parse(text[lt + 1 : gt])
            params = parse_params(text[gt + 1 :])
            return cls(uri=uri, display=display, params=params)
        # addr-spec form: parameters after the URI belong to the header, not the URI.
        uri_text, _, params_text = text.partition(";")
        return cls(uri=Uri.parse(uri_text), params=parse_params(params_text))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        prefix = f"{self.display} " if self.display else ""
        return f"{prefix}<{self.uri}>{_format_params(self.params)}"


def _find_unquoted(text: str, ch: str) -> int:
    quoted = False
    escaped = False
    for i, c in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ch:
            return i
    return -1


@dataclass
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport`."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        text = text.strip()
        sent_protocol, _, rest = text.partition(" ")
        # LWS is allowed around the slashes (RFC 3261 25.1), so rebuild the protocol triple.
        while sent_protocol.count("/") < 2 and rest:
            more, _, rest = rest.strip().partition(" ")
            sent_protocol += more
        pieces = [p.strip() for p in sent_protocol.split("/")]
        if len(pieces) != 3 or not all(pieces):
            raise ParseError(f"bad Via sent-protocol: {text!r}")
        sent_by, _, params = rest.strip().partition(";")
        host, port = _split_hostport(sent_by)
        return cls(
            transport=pieces[2].upper(),
            host=host,
            port=port,
            params=parse_params(params) if params else {},
            protocol=f"{pieces[0]}/{pieces[1]}",
        )

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"
