"""Real GB/T 28181 messages from cameras, NVRs and platforms (tests/data/corpus/SOURCES.md)."""

import random
from pathlib import Path

import pytest

from sip.message import Request, Response, parse_message, validate_request, validate_response
from sip.stream import KeepAlivePing, StreamEvent, StreamParser
from sip.uri import NameAddr, Uri

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
NAMES = sorted(path.name for path in CORPUS.glob("*.sip"))


def load(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def body_of(data: bytes) -> bytes:
    return data[data.index(b"\r\n\r\n") + 4 :]


def canonical(data: bytes) -> bytes:
    """The bytes our serialiser writes for `data`: header values without trailing whitespace,
    and one unpadded Content-Length, last."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [line.rstrip(b" \t") for line in head.split(b"\r\n")]
    lines = [line for line in lines if not line.lower().startswith(b"content-length:")]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_the_corpus_is_there() -> None:
    assert len(NAMES) == 39


@pytest.mark.parametrize("name", NAMES)
def test_parses_round_trips_and_validates(name: str) -> None:
    data = load(name)
    message = parse_message(data)
    assert message.body == body_of(data)
    assert parse_message(bytes(message)) == message
    assert bytes(message) == canonical(data)
    if isinstance(message, Request):
        validate_request(message)
    else:
        validate_response(message)
    # Every accessor works on every real message.
    assert message.from_.uri.scheme == "sip"
    assert message.to.uri.scheme == "sip"
    assert message.top_via.transport in ("UDP", "TCP")
    assert message.cseq[0] >= 1
    assert all(contact.uri.host for contact in message.contacts)


@pytest.mark.parametrize("name", NAMES)
def test_stream_whole_and_byte_by_byte(name: str) -> None:
    data = load(name)
    expected = [parse_message(data)]
    assert StreamParser().feed(data) == expected
    parser = StreamParser()
    events: list[StreamEvent] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    assert events == expected
    assert parser.buffered == 0


@pytest.mark.parametrize("seed", range(5))
def test_stream_of_the_whole_corpus_with_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    stream = b""
    expected: list[StreamEvent] = []
    for name in rng.sample(NAMES, len(NAMES)):
        if rng.random() < 0.3:
            stream += b"\r\n\r\n"
            expected.append(KeepAlivePing(pong_due=True))
        stream += load(name)
        expected.append(parse_message(load(name)))
    assert StreamParser().feed(stream) == expected
    cuts = sorted(rng.sample(range(1, len(stream)), 200))
    parser = StreamParser()
    events: list[StreamEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += parser.feed(stream[start:end])
    assert events == expected


def test_register_from_hikvision_ipc() -> None:
    message = parse_message(load("register-hikvision-ipc-01.sip"))
    assert isinstance(message, Request)
    assert message.method == "REGISTER"
    assert message.request_uri == Uri("sip", "34020000002000000001", "3402000000")
    assert message.from_.uri == Uri("sip", "34020000001320000002", "3402000000")
    assert message.from_.tag == "33226951"
    assert message.to == NameAddr(Uri("sip", "34020000001320000002", "3402000000"))
    assert message.contacts == [NameAddr(Uri("sip", "34020000001320000002", "192.168.0.64", 5060))]
    assert message.expires == 3600
    via = message.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "192.168.0.64", 5060)
    assert via.branch == "z9hG4bK1945388331"
    assert "rport" in via.params and via.params["rport"] is None
    assert message.headers.get("User-Agent") == "IP Camera"


def test_unregister_has_expires_zero() -> None:
    message = parse_message(load("unregister-hikvision-ipc-01.sip"))
    assert message.expires == 0


def test_hikvision_401_challenge() -> None:
    message = parse_message(load("401-hikvision-platform-2013-01.sip"))
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (401, "Unauthorized")
    assert message.headers.get("WWW-Authenticate") == (
        'Digest realm="hik", nonce="a8afe6fcbee6331d89d3eb0d3d19ce39", '
        'opaque="a853e4f25298413f9bf3a9aa6767857d", algorithm=MD5'
    )
    assert message.expires == 7200
    assert message.top_via.params["rport"] == "7100"


def test_wx_401_challenge_after_content_length() -> None:
    message = parse_message(load("401-wx-platform-01.sip"))
    assert message.headers.get("www-authenticate") == (
        'Digest realm="3402000000", algorithm=md5, nonce="9485904448344456af5449b51759016e"'
    )
    assert message.to.tag is None
    assert message.headers.get("Date") == "2025-04-22T10:48:38.014"


def test_register_with_authorization() -> None:
    message = parse_message(load("register-authz-hikvision-2013-01.sip"))
    authorization = message.headers.get("Authorization") or ""
    assert authorization.startswith('Digest username="admin", realm="hik"')
    assert message.request_uri.port == 7100


def test_dahua_101_dialog_establishement() -> None:
    message = parse_message(load("101-dialog-establishement-dahua-sd-01.sip"))
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (101, "Dialog Establishement")
    assert message.to.tag == "1504032660"
    assert message.cseq == (20, "INVITE")
    assert message.contacts[0].uri.host == "192.168.6.71"


def test_dahua_register_with_route_and_ip_domain() -> None:
    message = parse_message(load("register-dahua-sd-01.sip"))
    assert message.headers.get("Route") == "<sip:34020000001320000002@192.168.6.106:5062;lr>"
    assert message.from_.uri.hostport == "192.168.6.71:5060"


def test_dahua_alphabetical_headers_with_via_last() -> None:
    data = load("broadcast-response-dahua-ipc-01.sip")
    message = parse_message(data)
    assert [name for name, _ in message.headers][-1] == "Via"
    assert not message.body.endswith(b"\n")
    assert len(message.body) == 180


def test_tcp_messages_from_srs_and_hikvision() -> None:
    invite = parse_message(load("invite-srs5-tcp-01.sip"))
    assert invite.top_via.transport == "TCP"
    assert invite.top_via.branch == "z9hG4bK0l31rx"
    assert invite.headers.get("Subject") == (
        "34020000001320000001:0200007585,34020000002000000001:0"
    )
    assert invite.body.endswith(b"y=0200007585\r\n")
    trying = parse_message(load("100-trying-hikvision-ipc-tcp-01.sip"))
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.top_via.params["rport"] == "5060"


def test_padded_content_length() -> None:
    data = load("catalog-response-hikvision-ipc-62010201-01.sip")
    assert b"Content-Length:   586\r\n" in data
    message = parse_message(data)
    assert len(message.body) == 586
    assert b"Content-Length: 586\r\n" in bytes(message)


def test_trailing_space_in_a_value() -> None:
    data = load("broadcast-notify-wvp-01.sip")
    assert b"User-Agent: WVP-Pro \r\n" in data
    message = parse_message(data)
    assert message.headers.get("User-Agent") == "WVP-Pro"
    assert list(message.top_via.params) == ["branch", "rport"]


def test_tabs_and_spaces_around_colons() -> None:
    data = load("register-hikvision-ipc-01.sip")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    quirky = [lines[0]] + [line.replace(b": ", b" \t:\t ", 1) + b" \t" for line in lines[1:]]
    message = parse_message(b"\r\n".join(quirky) + b"\r\n\r\n" + body)
    assert message == parse_message(data)
    assert message.headers.get("Expires") == "3600"


def test_mixed_line_ends_in_an_nvr_body() -> None:
    message = parse_message(load("catalog-response-hikvision-nvr-multipart-01.sip"))
    assert len(message.body) == 909
    assert message.body.count(b"\r\n") == 1


def test_upper_case_content_types_are_lowered() -> None:
    assert parse_message(load("200ok-invite-hikvision-nvr-playback-01.sip")).content_type == (
        "application/sdp"
    )
    assert parse_message(load("200ok-invite-wx-platform-tcp-talk-01.sip")).content_type == (
        "application/sdp"
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("presetquery-response-hikvision-ipc-gb2312-01.sip", "\u9884\u7f6e\u70b9 1"),
        ("snapshot-finished-notify-hikvision-ipc-gb18030-01.sip", None),
    ],
)
def test_gb_encoded_bodies_survive_unchanged(name: str, text: str | None) -> None:
    data = load(name)
    message = parse_message(data)
    assert message.body == body_of(data)
    assert parse_message(bytes(message)).body == body_of(data)
    assert StreamParser().feed(data)[0] == message
    if text is not None:
        assert text.encode("gb2312") in message.body
        assert len(message.body) == 258
