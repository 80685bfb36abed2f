"""SDP bodies of GB/T 28181 INVITEs and their answers.

RFC 4566 (SDP) subset plus the GB/T 28181 additions: `y=` (SSRC, 2016 App. F / 2022 App. G),
`f=` (media format, same appendix), `u=<channel>:<type>` on Playback/Download, `s=` naming the
session kind (Play, Playback, Download, Talk), RFC 4145/4571 `a=setup` + `a=connection` for TCP
media (2016 App. L / 2022 App. D) and `a=streamnumber` (2022). Sans-I/O and liberal on input:
CRLF or LF, stray whitespace, case in known values and missing optional lines are accepted;
anything else raises `ParseError` (status 400).

`parse_sdp` keeps every line: known ones land in typed fields, all `a=` lines stay in order in
`MediaDescription.attributes`, and unknown lines go to `other`. `build_sdp` writes the canonical
order (v o s u c t, then each m c a, then y f last, because a Hikvision device answered 415 over
TCP when `y=` was not last), so `parse_sdp(build_sdp(x)) == x` for anything `parse_sdp` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LocalProtocolError, MessageTooLarge, ParseError

__all__ = [
    "Origin",
    "MediaDescription",
    "SessionDescription",
    "parse_sdp",
    "build_sdp",
    "gb_ssrc",
    "play_offer",
    "subject_header",
    "MAX_SDP_SIZE",
]

MAX_SDP_SIZE = 65536
"""Same cap as a whole SIP message: a body can never be larger in practice."""

_SESSION_NAMES = {name.lower(): name for name in ("Play", "Playback", "Download", "Talk")}
_DIRECTIONS = frozenset({"recvonly", "sendonly", "sendrecv", "inactive"})
_WS = " \t"


def _number(text: str, what: str, limit: int | None = None) -> int:
    # str.isdigit() alone accepts non-ASCII digits and int() accepts "1_0"; neither is SDP.
    if not text or not text.isascii() or not text.isdigit():
        raise ParseError(f"bad {what} in SDP: {text[:40]!r}")
    value = int(text)
    if limit is not None and value > limit:
        raise ParseError(f"bad {what} in SDP: {text[:40]!r}")
    return value


@dataclass
class Origin:
    """The `o=` line: `<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`.

    GB/T 28181 puts the author's 20-digit ID in `username`; devices ignore the line otherwise.
    """

    username: str
    session_id: str
    version: str
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        fields = (self.username, self.session_id, self.version)
        return " ".join((*fields, self.nettype, self.addrtype, self.address))


@dataclass
class MediaDescription:
    """One `m=` section.

    `attributes` holds every `a=` line in order, as `(name, value)` with `value` None for a flag
    such as `a=recvonly`; it is what `build_sdp` writes. `rtpmap`, `direction`, `setup` and
    `connection` are views of it (lower-cased), so build new sections with `from_attributes`.
    `other` holds the section's remaining lines (`i=`, `b=`, a second `c=`...) in order.
    """

    media: str
    port: int
    proto: str
    formats: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)
    direction: str | None = None
    setup: str | None = None
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    connection_address: str | None = None
    other: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_attributes(
        cls,
        media: str,
        port: int,
        proto: str,
        formats: list[int],
        attributes: list[tuple[str, str | None]],
        *,
        connection_address: str | None = None,
        other: list[tuple[str, str]] | None = None,
    ) -> MediaDescription:
        """A section whose typed views are derived from `attributes`."""
        rtpmap, direction, setup, connection = _views(attributes)
        return cls(
            media=media,
            port=port,
            proto=proto,
            formats=list(formats),
            rtpmap=rtpmap,
            direction=direction,
            setup=setup,
            connection=connection,
            attributes=list(attributes),
            connection_address=connection_address,
            other=list(other or []),
        )

    @property
    def is_tcp(self) -> bool:
        """True for `TCP/RTP/AVP` (and the `RTP/AVP/TCP` some senders write)."""
        return "TCP" in self.proto.upper().split("/")

    def attribute(self, name: str) -> str | None:
        """The value of the first `a=<name>:...` (name compared case-insensitively), else None."""
        wanted = name.lower()
        for key, value in self.attributes:
            if key.strip().lower() == wanted:
                return value
        return None


def _views(
    attributes: list[tuple[str, str | None]],
) -> tuple[dict[int, str], str | None, str | None, str | None]:
    # The first occurrence wins everywhere, so a repeated line never changes the meaning.
    rtpmap: dict[int, str] = {}
    direction = setup = connection = None
    for raw_name, raw_value in attributes:
        name = raw_name.strip().lower()
        value = raw_value.strip() if raw_value is not None else None
        if name == "rtpmap" and value:
            pt, *encoding = value.split(None, 1)
            if pt.isascii() and pt.isdigit() and encoding:
                rtpmap.setdefault(int(pt), encoding[0].strip())
        elif name in _DIRECTIONS and direction is None:
            direction = name
        elif name == "setup" and value is not None and setup is None:
            setup = value.lower()
        elif name == "connection" and value is not None and connection is None:
            connection = value.lower()
    return rtpmap, direction, setup, connection


@dataclass
class SessionDescription:
    """A whole SDP body. `ssrc` (`y=`) and `f` (`f=`) are kept as sent; `f` may be empty."""

    version: int = 0
    origin: Origin | None = None
    session_name: str = ""
    uri: str | None = None
    connection_address: str | None = None
    timing: tuple[int, int] = (0, 0)
    media: list[MediaDescription] = field(default_factory=list)
    ssrc: str | None = None
    f: str | None = None
    other: list[tuple[str, str]] = field(default_factory=list)

    @property
    def video(self) -> MediaDescription | None:
        """The first `m=video` section, if any."""
        return next((m for m in self.media if m.media == "video"), None)

    @property
    def _primary(self) -> MediaDescription | None:
        return self.video or (self.media[0] if self.media else None)

    @property
    def address(self) -> str | None:
        """Where the media goes: the main section's `c=`, else the session's `c=`."""
        primary = self._primary
        if primary is not None and primary.connection_address is not None:
            return primary.connection_address
        return self.connection_address

    @property
    def ssrc_int(self) -> int | None:
        """`y=` as the RTP SSRC (the decimal value as uint32), or None if absent or not one."""
        if self.ssrc is None or not self.ssrc.isascii() or not self.ssrc.isdigit():
            return None
        value = int(self.ssrc)
        return value if value <= 0xFFFFFFFF else None

    @property
    def is_tcp(self) -> bool:
        """True when the main media section is RTP over TCP."""
        primary = self._primary
        return primary is not None and primary.is_tcp


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_SDP_SIZE:
            raise MessageTooLarge("SDP body exceeds 64 KiB")
        return data
    if len(data) > MAX_SDP_SIZE:
        raise MessageTooLarge("SDP body exceeds 64 KiB")
    for encoding in ("utf-8", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def _address(value: str) -> str:
    parts = value.split()
    if len(parts) < 3:
        raise ParseError(f"bad c= line in SDP: {value[:60]!r}")
    return parts[2]


def _media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise ParseError(f"bad m= line in SDP: {value[:60]!r}")
    port = _number(parts[1], "port in m= line", 65535)
    formats = [_number(p, "format in m= line", 127) for p in parts[3:]]
    return MediaDescription(
        media=parts[0].lower(), port=port, proto=parts[2].upper(), formats=formats
    )


def _session_line(sd: SessionDescription, seen: set[str], kind: str, value: str) -> None:
    if kind in seen or kind not in "vosuct":
        sd.other.append((kind, value))
        return
    seen.add(kind)
    if kind == "v":
        sd.version = _number(value, "v= line")
    elif kind == "o":
        parts = value.split()
        if len(parts) != 6:
            raise ParseError(f"bad o= line in SDP: {value[:60]!r}")
        sd.origin = Origin(
            parts[0], parts[1], parts[2], parts[3].upper(), parts[4].upper(), parts[5]
        )
    elif kind == "s":
        sd.session_name = _SESSION_NAMES.get(value.lower(), value)
    elif kind == "u":
        sd.uri = value
    elif kind == "c":
        sd.connection_address = _address(value)
    else:
        times = value.split()
        if len(times) != 2:
            raise ParseError(f"bad t= line in SDP: {value[:60]!r}")
        sd.timing = (_number(times[0], "t= start"), _number(times[1], "t= stop"))


def _media_attr(md: MediaDescription, kind: str, value: str) -> None:
    if kind == "a":
        name, colon, rest = value.partition(":")
        md.attributes.append((name, rest if colon else None))
    elif kind == "c" and md.connection_address is None:
        md.connection_address = _address(value)
    else:
        md.other.append((kind, value))


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body. Raises `ParseError` (400) on anything that is not SDP."""
    sd = SessionDescription()
    seen: set[str] = set()
    current: MediaDescription | None = None
    found_v_or_m = False
    # CRLF per RFC 4566, but bare LF and bare CR occur too: all three end a line.
    text = _decode(data).replace("\r\n", "\n").replace("\r", "\n")
    for raw in text.split("\n"):
        line = raw.strip(_WS)
        if not line:
            continue
        if len(line) < 2 or line[1] != "=" or not (line[0].isascii() and line[0].isalpha()):
            raise ParseError(f"malformed SDP line: {line[:60]!r}")
        kind, value = line[0], line[2:].strip(_WS)
        if kind in "yf":
            # GB lines are session-level wherever they appear; the first one wins.
            if kind == "y" and sd.ssrc is None:
                sd.ssrc = value
            elif kind == "f" and sd.f is None:
                sd.f = value
        elif kind == "m":
            current = _media_line(value)
            sd.media.append(current)
            found_v_or_m = True
        elif current is not None:
            _media_attr(current, kind, value)
        else:
            found_v_or_m = found_v_or_m or kind == "v"
            _session_line(sd, seen, kind, value)
    if not found_v_or_m:
        raise ParseError("SDP body has neither a v= nor an m= line")
    for md in sd.media:
        md.rtpmap, md.direction, md.setup, md.connection = _views(md.attributes)
    return sd


def _check_media(md: MediaDescription) -> None:
    if (md.rtpmap, md.direction, md.setup, md.connection) != _views(md.attributes):
        raise LocalProtocolError(
            "MediaDescription views disagree with its attributes; build it with from_attributes"
        )
    if any(kind in "amyf" or len(kind) != 1 for kind, _ in md.other):
        raise LocalProtocolError("MediaDescription.other may not hold a=, m=, y= or f= lines")


def _connection(address: str) -> str:
    return f"IN {'IP6' if ':' in address else 'IP4'} {address}"


def build_sdp(sd: SessionDescription) -> bytes:
    """Serialise in the canonical order (v o s u c t, m c a per section, y f last), CRLF."""
    if any(kind in "myf" or len(kind) != 1 for kind, _ in sd.other):
        raise LocalProtocolError("SessionDescription.other may not hold m=, y= or f= lines")
    lines = [f"v={sd.version}"]
    if sd.origin is not None:
        lines.append(f"o={sd.origin}")
    lines.append(f"s={sd.session_name or ' '}")
    if sd.uri is not None:
        lines.append(f"u={sd.uri}")
    if sd.connection_address is not None:
        lines.append(f"c={_connection(sd.connection_address)}")
    lines.append(f"t={sd.timing[0]} {sd.timing[1]}")
    lines.extend(f"{kind}={value}" for kind, value in sd.other)
    for md in sd.media:
        _check_media(md)
        lines.append(" ".join([f"m={md.media}", str(md.port), md.proto, *map(str, md.formats)]))
        if md.connection_address is not None:
            lines.append(f"c={_connection(md.connection_address)}")
        lines.extend(f"{kind}={value}" for kind, value in md.other)
        lines.extend(f"a={n}" if v is None else f"a={n}:{v}" for n, v in md.attributes)
    if sd.ssrc is not None:
        lines.append(f"y={sd.ssrc}")
    if sd.f is not None:
        lines.append(f"f={sd.f}")
    if any("\n" in line or "\r" in line for line in lines):
        raise LocalProtocolError("an SDP value contains a line break")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def gb_ssrc(realm: str, serial: int, *, history: bool) -> str:
    """The 10-digit `y=` value for a stream we originate.

    GB/T 28181-2016 App. F (2022 App. G): 1st digit 0 live / 1 history (playback, download);
    2nd-6th = digits 4-8 of the domain ID (`13010000002000000001` -> `10000`); 7th-10th = a stream
    number unique in the domain. `realm` is the 10-digit realm or the 20-digit domain ID (both
    start with the same 8-digit center code).
    """
    if len(realm) not in (10, 20) or not realm.isascii() or not realm.isdigit():
        raise LocalProtocolError(f"realm must be 10 or 20 digits: {realm!r}")
    if not 0 <= serial <= 9999:
        raise LocalProtocolError(f"SSRC serial must be 0-9999: {serial}")
    return f"{1 if history else 0}{realm[3:8]}{serial:04d}"


_TRANSPORTS = {"udp": None, "tcp-passive": "passive", "tcp-active": "active"}


def play_offer(
    *,
    node_id: str,
    media_ip: str,
    port: int,
    transport: str,
    ssrc: str,
    channel_id: str,
    session: str = "Play",
    stream_number: int | None = None,
    start: int = 0,
    stop: int = 0,
    download_speed: int | None = None,
) -> SessionDescription:
    """The offer a GB platform sends to a device to pull a channel's stream (2016 App. F, C.2).

    `transport` is "udp", "tcp-passive" (we listen on `port`, the device connects) or
    "tcp-active" (we connect to the address in the answer). `stream_number` (0 main, 1 sub...)
    is offered as `a=streamnumber` and as the vendor attributes `a=stream`, `a=streamprofile`
    and `a=streamMode`. Playback and Download carry
    `u=<channel>:0` and the `start`/`stop` range in Unix seconds; Play keeps `t=0 0`.
    """
    if transport not in _TRANSPORTS:
        raise LocalProtocolError(f"unknown transport {transport!r}")
    if session not in ("Play", "Playback", "Download"):
        raise LocalProtocolError(f"play_offer cannot build s={session}")
    if not ssrc.isascii() or not ssrc.isdigit() or len(ssrc) > 10:
        raise LocalProtocolError(f"SSRC must be up to 10 digits: {ssrc!r}")
    if not 0 < port <= 65535:
        raise LocalProtocolError(f"bad media port {port}")
    setup = _TRANSPORTS[transport]
    # Order as wvp writes it: direction, rtpmaps, then the TCP and GB extension attributes.
    attributes: list[tuple[str, str | None]] = [
        ("recvonly", None),
        ("rtpmap", "96 PS/90000"),
        ("rtpmap", "97 MPEG4/90000"),
        ("rtpmap", "98 H264/90000"),
    ]
    if setup is not None:
        attributes += [("setup", setup), ("connection", "new")]
    if stream_number is not None:
        # GB/T 28181-2022 names the stream with a=streamnumber; devices made before it read
        # their vendor's own attribute instead (the variants wvp sends), so all are offered.
        number = str(stream_number)
        attributes += [
            ("streamnumber", number),
            ("stream", number),
            ("streamprofile", number),
            ("streamMode", "MAIN" if stream_number == 0 else "SUB"),
        ]
    if download_speed is not None:
        attributes.append(("downloadspeed", str(download_speed)))
    live = session == "Play"
    video = MediaDescription.from_attributes(
        "video", port, "TCP/RTP/AVP" if setup else "RTP/AVP", [96, 97, 98], attributes
    )
    return SessionDescription(
        version=0,
        origin=Origin(node_id, "0", "0", "IN", "IP4", media_ip),
        session_name=session,
        uri=None if live else f"{channel_id}:0",
        connection_address=media_ip,
        timing=(0, 0) if live else (start, stop),
        media=[video],
        ssrc=ssrc,
    )


def subject_header(
    channel_id: str, sender_stream: str, receiver_id: str, receiver_stream: str | int = 0
) -> str:
    """`Subject: <sender ID>:<sender seq>,<receiver ID>:<receiver seq>` (2016 App. K, 2022 App. L).

    For a pull the sender is the channel and its sequence is the SSRC; the receiver sequence
    names our receiving window, `0` as wvp and Monibuca send it.
    """
    if len(sender_stream) > 20:
        raise LocalProtocolError("Subject sender sequence is limited to 20 characters")
    parts = (channel_id, sender_stream, receiver_id, str(receiver_stream))
    if any(not p or any(c in p for c in ",: \t\r\n") for p in parts):
        raise LocalProtocolError(f"bad Subject component in {parts!r}")
    return f"{channel_id}:{sender_stream},{receiver_id}:{receiver_stream}"
