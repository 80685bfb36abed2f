"""What an upper platform's INVITE asks of the node, and the SDP the node answers with, sans-I/O.

Toward a sensing center the node is a lower platform (GB/T 28181 section 9.2, 2016 App. K, M;
2022 App. H, K): the upstream INVITEs one of our channels with an SDP offer, and the node sends
the channel's PS stream over RTP to the address in that offer. `parse_play_request` reads the
INVITE into a `PlayRequest`, or raises `PlayRequestError` with the status to answer; `play_answer`
builds the SDP of our 200; `warning_value` the `Warning` header that says why we refused.

Offers seen from upper platforms differ in ways the parser takes in its stride:

* wvp and most platforms offer `m=video <port> RTP/AVP 96 97 98`, or `TCP/RTP/AVP` with
  `a=setup:passive` (the upstream listens and we connect: `tcp-active` from our side) or
  `a=setup:active` (it connects to us: `tcp-passive`); wvp leaves `y=` out when it lets the
  lower platform choose the SSRC.
* SRS 5 offers `TCP/RTP/AVP` without any `a=setup`, and listens on its port: an offer without
  `a=setup` is read as passive. RFC 4145's default would be `active`, which SRS never does.
* wx_feiyangqingyun writes `a=setup:passive` into a `RTP/AVP` (UDP) offer: the protocol in `m=`
  decides the transport, the attribute is then ignored.
* eXosip platforms send an empty `f=`, and a Subject whose sender is not the channel of the
  request-URI: the request-URI names the channel, the Subject only stands in when it has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import LocalProtocolError, ParseError, SipError
from .message import Request
from .sdp import MediaDescription, Origin, SessionDescription, build_sdp, parse_sdp
from .uri import Uri

__all__ = [
    "PlayRequest",
    "PlayRequestError",
    "Subject",
    "parse_play_request",
    "parse_subject",
    "play_answer",
    "warning_value",
    "TRANSPORTS",
    "SESSIONS",
]

TRANSPORTS = ("udp", "tcp-active", "tcp-passive")
"""Transports from the node's side: `tcp-active` connects to the upstream, `tcp-passive` listens."""

SESSIONS = ("Play", "Playback", "Download")
"""The session kinds (`s=`) the node serves; Talk (voice broadcast) is another exchange."""

_PS_PAYLOAD = 96
_MAX_SUBJECT = 256
# Stream selection attributes: 2022's own, then the vendor forms wvp sends beside it.
_STREAM_ATTRIBUTES = ("streamnumber", "stream", "streamprofile")


class PlayRequestError(SipError):
    """The INVITE cannot be served; answer it with `status` (`reason` says why, in short).

    400 for a request or SDP body that does not parse, 415 for a body that is not SDP, 488 for an
    offer the node cannot serve (no PS on payload type 96, no video, Talk, an unknown setup).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Subject:
    """`Subject: <sender ID>:<sender seq>,<receiver ID>:<receiver seq>` (2016 App. K, 2022 App. L).

    In an INVITE from an upper platform the sender is the channel and its sequence the SSRC
    the upstream expects; the receiver is the upstream (or its media server) and its stream.
    """

    sender_id: str
    sender_stream: str
    receiver_id: str
    receiver_stream: str


def parse_subject(value: str) -> Subject | None:
    """The Subject fields, or None when `value` is not of that form (or longer than 256)."""
    if len(value) > _MAX_SUBJECT:
        return None
    parts = value.split(",")
    if len(parts) != 2:
        return None
    fields: list[str] = []
    for part in parts:
        ident, colon, stream = part.strip(" \t").partition(":")
        ident, stream = ident.strip(" \t"), stream.strip(" \t")
        if not colon or not ident or any(c in ident + stream for c in " \t:"):
            return None
        fields += (ident, stream)
    return Subject(*fields)


@dataclass(frozen=True)
class PlayRequest:
    """An upstream's INVITE for one of our channels, as far as the node needs it.

    `session` is Play, Playback or Download; `start` and `stop` are the `t=` times (0 0 for
    Play), `uri` the `u=` line. `address` and `port` are where the media goes (UDP) or where
    we connect (`tcp-active`); for `tcp-passive` the upstream connects to us and they are only
    informative. `ssrc` is the `y=` value as sent (up to 10 digits, as a uint32) or None when
    the upstream lets us choose. `payload_types` are the offered formats and `rtpmap` their
    encodings; PS on 96 is among them. `f` is the `f=` value (None when absent or empty),
    `stream_number` the requested stream (0 main, 1 sub...) when the offer names one, and
    `download_speed` the `a=downloadspeed` factor of a Download. `offer` is the parsed SDP.
    """

    channel_id: str
    session: str
    address: str
    port: int
    transport: str
    ssrc: str | None
    payload_types: tuple[int, ...]
    rtpmap: Mapping[int, str]
    start: int = 0
    stop: int = 0
    uri: str | None = None
    f: str | None = None
    stream_number: int | None = None
    download_speed: int | None = None
    subject: Subject | None = None
    offer: SessionDescription = field(default_factory=SessionDescription, compare=False)

    @property
    def ssrc_int(self) -> int | None:
        """`ssrc` as the RTP SSRC, or None."""
        return None if self.ssrc is None else int(self.ssrc)

    @property
    def is_tcp(self) -> bool:
        return self.transport != "udp"


def _is_gb_id(text: str | None) -> bool:
    return text is not None and len(text) == 20 and text.isascii() and text.isdigit()


def _channel_id(request: Request, subject: Subject | None) -> str:
    try:
        user = Uri.parse(request.uri).user
    except ParseError:
        user = None
    if _is_gb_id(user):
        assert user is not None
        return user
    if subject is not None and _is_gb_id(subject.sender_id):
        return subject.sender_id
    raise PlayRequestError(400, "no channel ID in the request-URI or Subject")


def _transport(video: MediaDescription) -> str:
    proto = video.proto.upper().split("/")
    if "RTP" not in proto or "AVP" not in proto:
        raise PlayRequestError(488, f"media protocol {video.proto[:40]} not supported")
    if not video.is_tcp:
        return "udp"
    setup = video.setup
    # No a=setup: SRS listens and waits for us. actpass leaves the choice to us: connecting
    # goes through the NATs in front of lower platforms.
    if setup in (None, "passive", "actpass"):
        return "tcp-active"
    if setup == "active":
        return "tcp-passive"
    raise PlayRequestError(488, f"a=setup:{setup[:20]} not supported")


def _ssrc(value: str | None) -> str | None:
    if value is None or not value.strip(" \t"):
        return None
    if len(value) > 10 or not value.isascii() or not value.isdigit():
        raise PlayRequestError(400, f"bad y= SSRC {value[:20]!r}")
    if int(value) > 0xFFFFFFFF:
        raise PlayRequestError(400, f"y= SSRC {value} exceeds 32 bits")
    return value


def _small_number(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip(" \t")
    if not value or len(value) > 4 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _check_ps(video: MediaDescription) -> None:
    if _PS_PAYLOAD not in video.formats:
        raise PlayRequestError(488, "PS on payload type 96 not offered")
    encoding = video.rtpmap.get(_PS_PAYLOAD)
    # Without an rtpmap 96 is PS by the standard's convention; with one it must say so.
    if encoding is not None and encoding.split("/", 1)[0].strip().upper() != "PS":
        raise PlayRequestError(488, f"payload type 96 is {encoding[:20]}, not PS")


def parse_play_request(request: Request) -> PlayRequest:
    """Read an upstream's INVITE. Raises PlayRequestError with the status to answer.

    Raises LocalProtocolError if `request` is not an INVITE.
    """
    if request.method != "INVITE":
        raise LocalProtocolError(f"parse_play_request needs an INVITE, not {request.method}")
    raw_subject = request.headers.get("Subject")
    subject = parse_subject(raw_subject) if raw_subject is not None else None
    channel_id = _channel_id(request, subject)
    if not request.body:
        raise PlayRequestError(488, "no SDP offer")
    content_type = request.content_type.split(";", 1)[0].strip()
    if content_type not in ("application/sdp", ""):
        raise PlayRequestError(415, f"body is {content_type[:40]}, not SDP")
    try:
        offer = parse_sdp(request.body)
    except ParseError as exc:
        raise PlayRequestError(400, f"malformed SDP: {exc.reason[:80]}") from None
    if offer.session_name not in SESSIONS:
        raise PlayRequestError(488, f"s={offer.session_name[:20]} not served")
    video = offer.video
    if video is None:
        raise PlayRequestError(488, "no video in the offer")
    if video.port == 0:
        raise PlayRequestError(488, "video declined in the offer (port 0)")
    address = offer.address
    if not address:
        raise PlayRequestError(400, "no c= address in the offer")
    _check_ps(video)
    transport = _transport(video)
    start, stop = offer.timing
    if offer.session_name != "Play" and not 0 < start < stop:
        raise PlayRequestError(400, f"{offer.session_name} needs a t= time range")
    stream_number = next(
        (
            number
            for name in _STREAM_ATTRIBUTES
            if (number := _small_number(video.attribute(name))) is not None
        ),
        None,
    )
    return PlayRequest(
        channel_id=channel_id,
        session=offer.session_name,
        address=address,
        port=video.port,
        transport=transport,
        ssrc=_ssrc(offer.ssrc),
        payload_types=tuple(video.formats),
        rtpmap=dict(video.rtpmap),
        start=start,
        stop=stop,
        uri=offer.uri,
        f=offer.f or None,
        stream_number=stream_number,
        download_speed=_small_number(video.attribute("downloadspeed")),
        subject=subject,
        offer=offer,
    )


def play_answer(
    *,
    origin_id: str,
    media_ip: str,
    port: int,
    transport: str,
    ssrc: str,
    session: str = "Play",
    start: int = 0,
    stop: int = 0,
    f: str | None = None,
    filesize: int | None = None,
) -> bytes:
    """The SDP of our 200 to an upstream's INVITE (2016 App. K; 2022 App. H, D for TCP).

    `origin_id` goes into `o=` (the node's ID, or the channel's as wvp writes it); `media_ip`
    and `port` are where we send from (UDP) or listen (`tcp-passive`). `transport` is from our
    side, as in `PlayRequest.transport`: `tcp-active` answers `a=setup:active` (we connect),
    `tcp-passive` answers `a=setup:passive` (we listen). `session`, `start` and `stop` repeat
    the offer's `s=` and `t=`. `ssrc` is the `y=` we send with (up to 10 digits).
    `filesize` (a Download's) is announced as `a=filesize:<bytes>`, the size of the recording
    the range covers, for the upstream's progress bar.
    """
    if transport not in TRANSPORTS:
        raise LocalProtocolError(f"unknown transport {transport!r}")
    if session not in SESSIONS:
        raise LocalProtocolError(f"play_answer cannot answer s={session}")
    if not ssrc.isascii() or not ssrc.isdigit() or len(ssrc) > 10 or int(ssrc) > 0xFFFFFFFF:
        raise LocalProtocolError(f"SSRC must be up to 10 digits within 32 bits: {ssrc!r}")
    if not 0 < port <= 65535:
        raise LocalProtocolError(f"bad media port {port}")
    if f is not None and any(c in f for c in "\r\n"):
        raise LocalProtocolError("f= may not contain a line break")
    if filesize is not None and filesize < 0:
        raise LocalProtocolError(f"bad filesize {filesize}")
    attributes: list[tuple[str, str | None]] = [("sendonly", None), ("rtpmap", "96 PS/90000")]
    if filesize is not None:
        attributes.append(("filesize", str(filesize)))
    if transport != "udp":
        attributes += [("setup", transport.removeprefix("tcp-")), ("connection", "new")]
    video = MediaDescription.from_attributes(
        "video", port, "RTP/AVP" if transport == "udp" else "TCP/RTP/AVP", [96], attributes
    )
    answer = SessionDescription(
        version=0,
        origin=Origin(origin_id, "0", "0", "IN", "IP6" if ":" in media_ip else "IP4", media_ip),
        session_name=session,
        connection_address=media_ip,
        timing=(start, stop),
        media=[video],
        ssrc=ssrc,
        f=f or None,
    )
    return build_sdp(answer)


def warning_value(code: int, agent: str, text: str) -> str:
    """A Warning header value, `<code> <agent> "<text>"` (RFC 3261 section 20.43).

    GB platforms show the text of `399` (miscellaneous) warnings: the node names the limit it
    hit, e.g. `399 <node-id> "upstream streams (16/16)"`. Quotes and backslashes in `text` are
    escaped; control characters (line breaks included) become spaces and runs of white space
    one space.
    """
    if not 300 <= code <= 399:
        raise LocalProtocolError(f"warning code must be 3xx: {code}")
    if not agent or any(c in agent for c in ' \t\r\n"'):
        raise LocalProtocolError(f"bad warning agent {agent!r}")
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    text = " ".join(text.replace("\\", "\\\\").replace('"', '\\"').split())
    return f'{code} {agent} "{text}"'
