"""SIP message parsing and serialisation (RFC 3261 sections 7, 8.2, 20 and 25)."""

from pathlib import Path

import pytest

from sip.errors import LocalProtocolError, MessageTooLarge, ParseError
from sip.message import (
    MAX_MESSAGE_SIZE,
    Headers,
    Request,
    Response,
    find_head_end,
    parse_cseq,
    parse_head_and_body,
    parse_message,
    validate_request,
    validate_response,
)
from sip.uri import NameAddr, Uri, Via

CORPUS = Path(__file__).parent.parent / "data" / "corpus"

REGISTER = (
    b"REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.0.64:5060;rport;branch=z9hG4bK1945388331\r\n"
    b"From: <sip:34020000001320000002@3402000000>;tag=33226951\r\n"
    b"To: <sip:34020000001320000002@3402000000>\r\n"
    b"Call-ID: 1455222403\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:34020000001320000002@192.168.0.64:5060>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Expires: 3600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

OK_WITH_BODY = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP 192.168.3.82:5060;rport=5060;branch=z9hG4bK0l31rx\r\n"
    b"From: <sip:34020000002000000001@3402000000>;tag=SRSk1er282t\r\n"
    b"To: <sip:34020000001320000001@3402000000>;tag=1\r\n"
    b"CSeq: 854 INVITE\r\n"
    b"Call-ID: 854k7337207yxpfj\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 10\r\n"
    b"\r\n"
    b"v=0\r\ns=-\r\n"
)

GB2312_MESSAGE = (
    b"MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.0.64:5060;rport;branch=z9hG4bK1149716366\r\n"
    b'From: "\xc9\xe3\xcf\xf1\xbb\xfa" <sip:34020000001320000002@3402000000>;tag=2001348774\r\n'
    b"To: <sip:34020000002000000001@3402000000>\r\n"
    b"Call-ID: 360379917\r\n"
    b"CSeq: 20 MESSAGE\r\n"
    b"Content-Type: Application/MANSCDP+xml\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b"<N>\xd4\xa4\xd6\xc3\xb5\xe3</N>"
)


def _headers(*pairs: tuple[str, str]) -> Headers:
    return Headers(list(pairs))


# (object, bytes): the serialiser must produce exactly these bytes and the parser this object.
SIMPLE_CASES = [
    (
        Request(
            method="REGISTER",
            uri="sip:34020000002000000001@3402000000",
            headers=_headers(
                ("Via", "SIP/2.0/UDP 192.168.0.64:5060;rport;branch=z9hG4bK1945388331"),
                ("From", "<sip:34020000001320000002@3402000000>;tag=33226951"),
                ("To", "<sip:34020000001320000002@3402000000>"),
                ("Call-ID", "1455222403"),
                ("CSeq", "1 REGISTER"),
                ("Contact", "<sip:34020000001320000002@192.168.0.64:5060>"),
                ("Max-Forwards", "70"),
                ("Expires", "3600"),
            ),
        ),
        REGISTER,
    ),
    (
        Response(
            status=200,
            reason="OK",
            headers=_headers(
                ("Via", "SIP/2.0/TCP 192.168.3.82:5060;rport=5060;branch=z9hG4bK0l31rx"),
                ("From", "<sip:34020000002000000001@3402000000>;tag=SRSk1er282t"),
                ("To", "<sip:34020000001320000001@3402000000>;tag=1"),
                ("CSeq", "854 INVITE"),
                ("Call-ID", "854k7337207yxpfj"),
                ("Content-Type", "application/sdp"),
            ),
            body=b"v=0\r\ns=-\r\n",
        ),
        OK_WITH_BODY,
    ),
    (
        Request(
            method="MESSAGE",
            uri="sip:34020000002000000001@3402000000",
            headers=_headers(
                ("Via", "SIP/2.0/UDP 192.168.0.64:5060;rport;branch=z9hG4bK1149716366"),
                (
                    "From",
                    '"\udcc9\udce3\udccf\udcf1\udcbb\udcfa" '
                    "<sip:34020000001320000002@3402000000>;tag=2001348774",
                ),
                ("To", "<sip:34020000002000000001@3402000000>"),
                ("Call-ID", "360379917"),
                ("CSeq", "20 MESSAGE"),
                ("Content-Type", "Application/MANSCDP+xml"),
            ),
            body=b"<N>\xd4\xa4\xd6\xc3\xb5\xe3</N>",
        ),
        GB2312_MESSAGE,
    ),
]


@pytest.mark.parametrize(("message", "data"), SIMPLE_CASES, ids=["register", "200", "gb2312"])
def test_simple_cases_both_directions(message: Request | Response, data: bytes) -> None:
    assert bytes(message) == data
    assert message.to_bytes() == data
    assert parse_message(data) == message
    assert bytes(parse_message(data)) == data


def test_register_fields() -> None:
    req = parse_message(REGISTER)
    assert isinstance(req, Request)
    assert req.method == "REGISTER"
    assert req.request_uri == Uri("sip", "34020000002000000001", "3402000000")
    assert req.call_id == "1455222403"
    assert req.cseq == (1, "REGISTER")
    assert req.from_.uri.user == "34020000001320000002"
    assert req.from_.tag == "33226951"
    assert req.to.tag is None
    assert req.top_via == Via(
        "UDP", "192.168.0.64", 5060, {"rport": None, "branch": "z9hG4bK1945388331"}
    )
    assert req.contacts == [NameAddr(Uri("sip", "34020000001320000002", "192.168.0.64", 5060))]
    assert req.expires == 3600
    assert req.max_forwards == 70
    assert req.body == b""
    assert (
        repr(req) == "<Request REGISTER sip:34020000002000000001@3402000000 call-id='1455222403'>"
    )


def test_response_fields() -> None:
    resp = parse_message(OK_WITH_BODY)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason, resp.version) == (200, "OK", "SIP/2.0")
    assert resp.content_type == "application/sdp"
    assert resp.body == b"v=0\r\ns=-\r\n"
    assert repr(resp) == "<Response 200 OK call-id='854k7337207yxpfj'>"


def test_non_utf8_header_bytes_survive() -> None:
    msg = parse_message(GB2312_MESSAGE)
    display = msg.from_.display
    assert display is not None
    assert display.encode("utf-8", "surrogateescape") == b'"\xc9\xe3\xcf\xf1\xbb\xfa"'
    assert msg.body == b"<N>\xd4\xa4\xd6\xc3\xb5\xe3</N>"


def _options(*lines: bytes, start: bytes = b"OPTIONS sip:a@b SIP/2.0", body: bytes = b"") -> bytes:
    """An OPTIONS request with the mandatory headers, then `lines`, then `body`."""
    head = [
        start,
        b"Via: SIP/2.0/UDP h;branch=z9hG4bKx",
        b"From: <sip:a@b>;tag=1",
        b"To: <sip:a@b>",
        b"Call-ID: c1",
        b"CSeq: 1 OPTIONS",
        *lines,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _without(name: bytes) -> bytes:
    lines = _options().split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.startswith(name + b":"))


# (data, status_hint, exact reason)
INVALID = [
    (b"", 400, "no empty line after the headers"),
    (b"\r\n\r\n", 400, "no empty line after the headers"),
    (
        _options(start=b"OPTIONS  sip:a@b SIP/2.0"),
        400,
        "malformed request line 'OPTIONS  sip:a@b SIP/2.0'",
    ),
    (
        _options(start=b"OPTIONS sip:a@b SIP/2.0 "),
        400,
        "malformed request line 'OPTIONS sip:a@b SIP/2.0 '",
    ),
    (_options(start=b"OPTIONS sip:a@b"), 400, "malformed request line 'OPTIONS sip:a@b'"),
    (_options(start=b"OPTIONS sip:a@b HTTP/1.1"), 400, "malformed SIP version 'HTTP/1.1'"),
    (_options(start=b"OPTIONS sip:a@b SIP/3.0"), 505, "unsupported SIP version 'SIP/3.0'"),
    (_options(start=b"OPT(IONS sip:a@b SIP/2.0"), 400, "bad method 'OPT(IONS'"),
    (_options(start=b"OPTIONS <sip:a@b> SIP/2.0"), 400, "bad Request-URI '<sip:a@b>'"),
    (_options(start=b"OPTIONS sip:a@b?X=1 SIP/2.0"), 400, "bad Request-URI 'sip:a@b?X=1'"),
    (_options(start=b"SIP/2.0 99 Low"), 400, "bad status code '99'"),
    (_options(start=b"SIP/2.0 700 High"), 400, "bad status code '700'"),
    (
        _options(start=b"SIP/2.0 \xc2\xb2\xc2\xb2\xc2\xb2 OK"),
        400,
        "bad status code '\u00b2\u00b2\u00b2'",
    ),
    (_options(start=b"SIP/2.0"), 400, "bad status code ''"),
    (_options(start=b"SIP/3.0 200 OK"), 505, "unsupported SIP version 'SIP/3.0'"),
    (_options(b"NoColon"), 400, "malformed header line 'NoColon'"),
    (_options(b"Bad Name: x"), 400, "malformed header name 'Bad Name'"),
    (_options(b": x"), 400, "malformed header name ''"),
    (_options(b"X\x00Y: z"), 400, "malformed header name 'X\\x00Y'"),
    (_options(b"X: a\rb"), 400, "bare CR in the header block"),
    (
        _options().replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via"),
        400,
        "malformed request line 'OPTIONS sip:a@b SIP/2.0 Via: SIP/2.0/UDP h;branch=z9hG4bKx'",
    ),
    (_without(b"Via"), 400, "missing Via header"),
    (_without(b"From"), 400, "missing From header"),
    (_without(b"To"), 400, "missing To header"),
    (_without(b"Call-ID"), 400, "missing Call-ID header"),
    (_without(b"CSeq"), 400, "missing CSeq header"),
    (_options(b"f: <sip:c@d>;tag=2"), 400, "more than one f header"),
    (_options(b"To: <sip:c@d>"), 400, "more than one To header"),
    (_options(b"i: c2"), 400, "more than one i header"),
    (_options(b"CSeq: 1 OPTIONS"), 400, "more than one CSeq header"),
    (_options(b"Max-Forwards: 70", b"Max-Forwards: 70"), 400, "more than one Max-Forwards header"),
    (
        _options(b"c: text/plain", b"Content-Type: text/plain"),
        400,
        "more than one Content-Type header",
    ),
    (_options(b"Content-Length: 0", b"l: 1"), 400, "more than one l header"),
    (
        _options(start=b"SIP/2.0 200 OK").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1"),
        400,
        "malformed CSeq header '1'",
    ),
    (
        _options().replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS"),
        400,
        "malformed CSeq header 'x OPTIONS'",
    ),
    (
        _options().replace(b"CSeq: 1", b"CSeq: \xc2\xb9"),
        400,
        "malformed CSeq header '\u00b9 OPTIONS'",
    ),
    (
        _options().replace(b"CSeq: 1", b"CSeq: 2147483648"),
        400,
        "CSeq number out of range: '2147483648 OPTIONS'",
    ),
    (
        _options().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"),
        400,
        "CSeq method 'INVITE' does not match 'OPTIONS'",
    ),
    (_options(start=b"FOO sip:a@b SIP/2.0"), 501, "CSeq method 'OPTIONS' does not match 'FOO'"),
    (_options(b"Content-Length: -1"), 400, "malformed Content-Length header '-1'"),
    (_options(b"Content-Length: \xc2\xb9"), 400, "malformed Content-Length header '\u00b9'"),
    (_options(b"Content-Length: 1 2"), 400, "malformed Content-Length header '1 2'"),
    (_options(b"Content-Length: 5", body=b"abc"), 400, "Content-Length larger than the message"),
    (_options(b"Content-Length: " + b"9" * 5000), 400, "Content-Length larger than the message"),
    (_options(b"Contact: <sip:a@b>,"), 400, "malformed Contact header '<sip:a@b>,'"),
    (_options(b"Route: sip:p@h"), 400, "malformed Route header 'sip:p@h'"),
    (_options(b"Record-Route: <sip:p@h"), 400, "malformed Record-Route header '<sip:p@h'"),
    (_options().replace(b"Call-ID: c1", b"Call-ID: c 1"), 400, "malformed Call-ID header 'c 1'"),
    (_options().replace(b"Call-ID: c1", b"Call-ID:"), 400, "malformed Call-ID header ''"),
    (
        _options().replace(b"To: <sip:a@b>", b"To: <sip:a@b:65536>"),
        400,
        "malformed To header '<sip:a@b:65536>'",
    ),
    (
        _options().replace(b"h;branch", b"h:0x1;branch"),
        400,
        "malformed Via header 'SIP/2.0/UDP h:0x1;branch=z9hG4bKx'",
    ),
]


@pytest.mark.parametrize(("data", "status", "reason"), INVALID, ids=range(len(INVALID)))
def test_invalid(data: bytes, status: int, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.status_hint == status
    assert info.value.reason == reason
    assert str(info.value) == reason


def test_every_prefix_fails_with_a_fixed_reason() -> None:
    data = (CORPUS / "keepalive-hikvision-ipc-01.sip").read_bytes()
    body_start = data.index(b"\r\n\r\n") + 4
    for size in range(len(data)):
        with pytest.raises(ParseError) as info:
            parse_message(data[:size])
        if size < body_start:
            assert info.value.reason == "no empty line after the headers", size
        else:
            assert info.value.reason == "Content-Length larger than the message", size
    assert parse_message(data).body.endswith(b"</Notify>\n")


@pytest.mark.parametrize(
    "data",
    [
        _options(b"Content-Length: 0", b"l: 0"),
        _options(b"Content-Length:    5", body=b"hello"),
        _options(b"Content-Length: 0000000000000000005", body=b"hello"),
        _options(b"Max-Forwards: 0068"),
        _options().replace(b"\r\n", b"\n"),
        _options().replace(b"\r\n\r\n", b"\r\n\n"),
        _options().replace(b"\r\n\r\n", b"\n\r\n"),
        b"\r\n\r\n\n" + _options(),
        _options(b"X-Empty:", b"UnknownHeaderWithUnusualValue: ;;,,;;,;"),
        _options(b"Subject: a", b" \t folded", b"\tagain"),
        _options(b"Via: SIP/2.0/UDP h2;branch=z9hG4bKy, SIP/2.0/TCP h3"),
        _options(b"Contact: *"),
        _options(b"Content-Type:", b"Max-Forwards: seventy"),
        _options(b"Route: <sip:p1@h;lr>, <sip:p2@h;lr>", b"Record-Route: <sip:p@h;lr>"),
    ],
    ids=range(14),
)
def test_liberal_but_valid(data: bytes) -> None:
    msg = parse_message(data)
    assert parse_message(bytes(msg)) == msg


def test_folding_joins_with_one_space() -> None:
    msg = parse_message(_options(b"Subject: a", b" \t folded", b"\tagain"))
    assert msg.headers.get("Subject") == "a folded again"


def test_leading_zeros_and_padding() -> None:
    msg = parse_message(_options(b"Max-Forwards: 0068", b"Content-Length:    5", body=b"hello"))
    assert isinstance(msg, Request)
    assert msg.max_forwards == 68
    assert msg.body == b"hello"
    assert parse_cseq("0009 INVITE") == (9, "INVITE")
    assert parse_cseq(" 12\tACK ") == (12, "ACK")


def test_compact_forms() -> None:
    data = (
        b"MESSAGE sip:a@b SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
        b"f: <sip:a@b>;tag=1\r\n"
        b"t: <sip:c@d>\r\n"
        b"i: c1\r\n"
        b"CSeq: 2 MESSAGE\r\n"
        b"m: <sip:a@10.0.0.1>\r\n"
        b"c: Application/MANSCDP+xml\r\n"
        b"l: 2\r\n"
        b"\r\n"
        b"<>"
    )
    msg = parse_message(data)
    assert msg.top_via.host == "h"
    assert msg.from_.tag == "1"
    assert msg.to.uri.user == "c"
    assert msg.call_id == "c1"
    assert msg.contacts[0].uri.host == "10.0.0.1"
    assert msg.content_type == "application/manscdp+xml"
    assert msg.body == b"<>"
    assert b"\r\nl: " not in bytes(msg)
    assert bytes(msg).endswith(b"\r\nContent-Length: 2\r\n\r\n<>")
    assert parse_message(bytes(msg)) == msg


def test_datagram_without_content_length_runs_to_the_end() -> None:
    msg = parse_message(_options(body=b"v=0\r\n"))
    assert msg.body == b"v=0\r\n"


def test_trailing_octets_are_ignored_over_udp() -> None:
    data = _options(b"Content-Length: 0") + b"INVITE sip:x@y SIP/2.0\r\n\r\n"
    msg, consumed = parse_head_and_body(data, datagram=True)
    assert msg is not None and msg.body == b""
    assert consumed == len(_options(b"Content-Length: 0"))


def test_stream_framing_with_parse_head_and_body() -> None:
    data = _options(b"Content-Length: 3", body=b"abc")
    assert parse_head_and_body(data[:-1], datagram=False) == (None, 0)
    assert parse_head_and_body(data[:20], datagram=False) == (None, 0)
    msg, consumed = parse_head_and_body(data + b"OPT", datagram=False)
    assert msg is not None and msg.body == b"abc" and consumed == len(data)
    with pytest.raises(ParseError, match="missing Content-Length on a stream transport"):
        parse_head_and_body(_options(), datagram=False)


def test_message_too_large() -> None:
    big = _options(b"Content-Length: 0", b"X: " + b"a" * MAX_MESSAGE_SIZE)
    with pytest.raises(MessageTooLarge) as info:
        parse_message(big)
    assert info.value.status_hint == 513
    with pytest.raises(MessageTooLarge, match="header block exceeds 100 bytes"):
        parse_head_and_body(b"A" * 101, max_size=100, datagram=False)
    with pytest.raises(MessageTooLarge):
        parse_head_and_body(_options(b"Content-Length: 100000"), datagram=False)
    with pytest.raises(MessageTooLarge):
        parse_message(_options(), max_size=50)
    limit = len(_options(b"Content-Length: 0"))
    assert parse_message(_options(b"Content-Length: 0"), max_size=limit).body == b""


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"A\r\nB\r\n\r\nbody", (4, 8)),
        (b"A\nB\n\nbody", (3, 5)),
        (b"A\r\nB\r\n\nbody", (4, 7)),
        (b"A\nB\n\r\nbody", (3, 6)),
        (b"A\r\nB\r\n\r", (-1, -1)),
        (b"", (-1, -1)),
    ],
)
def test_find_head_end(data: bytes, end: tuple[int, int]) -> None:
    assert find_head_end(data) == end
    assert find_head_end(bytearray(data)) == end


def test_find_head_end_from_a_start_position() -> None:
    data = b"A\r\n\r\nB\r\n\r\n"
    assert find_head_end(data, 0) == (1, 5)
    assert find_head_end(data, 5) == (6, 10)


def test_to_bytes_rewrites_content_length() -> None:
    msg = parse_message(_options(b"Content-Length: 3", body=b"abc"))
    msg.body = b"longer body"
    data = bytes(msg)
    assert data.count(b"Content-Length") == 1
    assert data.endswith(b"Content-Length: 11\r\n\r\nlonger body")


@pytest.mark.parametrize(
    "message",
    [
        Request(method="OPTIONS", uri="sip:a@b", headers=_headers(("X", "a\r\nVia: injected"))),
        Request(method="OPTIONS", uri="sip:a@b", headers=_headers(("X\n", "a"))),
        Response(status=200, reason="OK\r\nX: y"),
        Request(method="OPTIONS", uri="sip:a@b", headers=_headers(("X", "\ud800"))),
    ],
    ids=["value", "name", "reason", "surrogate"],
)
def test_to_bytes_refuses_to_break_framing(message: Request | Response) -> None:
    with pytest.raises(LocalProtocolError):
        bytes(message)


def test_response_for_request() -> None:
    req = parse_message(REGISTER)
    assert isinstance(req, Request)
    resp = Response.for_request(req, 200, to_tag="abc")
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.to.tag == "abc"
    assert [name for name, _ in resp.headers] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert parse_message(bytes(resp)) == resp
    in_dialog = parse_message(_options().replace(b"To: <sip:a@b>", b"To: <sip:a@b>;tag=1"))
    assert isinstance(in_dialog, Request)
    assert Response.for_request(in_dialog, 180, to_tag="x").to.tag == "1"
    assert Response.for_request(req, 299).reason == "Unknown"
    with pytest.raises(LocalProtocolError):
        Response.for_request(Request(method="OPTIONS", uri="sip:a@b"), 200)


def test_accessors_on_built_messages() -> None:
    req = Request(method="OPTIONS", uri="sip:a@b")
    assert req.call_id == ""
    assert req.content_type == ""
    assert req.expires is None
    assert req.max_forwards is None
    assert req.contacts == []
    assert req.vias == []
    for accessor in ("cseq", "from_", "to", "top_via"):
        with pytest.raises(ParseError, match="missing"):
            getattr(req, accessor)


def test_equality_ignores_spelling_but_not_content() -> None:
    a = parse_message(_options(b"Allow: INVITE, ACK", b"Allow: BYE"))
    b = parse_message(_options(b"allow: INVITE,ACK,BYE").replace(b"To:", b"t:"))
    assert a == b
    assert a != parse_message(_options(b"Allow: INVITE, BYE, ACK"))
    assert a != parse_message(_options(b"Allow: INVITE, ACK", b"Allow: BYE", body=b"x"))
    assert (a == "not a message") is False


def test_headers_multimap() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b"), ("v", "SIP/2.0/UDP c")])
    headers.add("Subject", "x")
    assert headers.get("VIA") == "SIP/2.0/UDP a"
    assert headers.get_all("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert "s" in headers and "Date" not in headers and 1 not in headers
    assert headers.get("Date", "none") == "none"
    headers.set("Via", "SIP/2.0/UDP z")
    assert list(headers) == [("Via", "SIP/2.0/UDP z"), ("Subject", "x")]
    copy = headers.copy()
    copy.remove("subject")
    assert len(copy) == 1 and len(headers) == 2
    headers.set("X-New", "1")
    assert headers.normalized() == [
        ("via", ["SIP/2.0/UDP z"]),
        ("subject", ["x"]),
        ("x-new", ["1"]),
    ]
    assert repr(Headers([("A", "1")])) == "Headers([('A', '1')])"
    assert (headers == 1) is False


# Each case: header lines added to a valid OPTIONS (or a whole request), expected status or None.
VALIDATE_CASES = [
    ([], None),
    ([b"Max-Forwards: 0"], None),
    ([b"Max-Forwards: 255"], None),
    ([b"Max-Forwards: 256"], 400),
    ([b"Max-Forwards: x"], 400),
    ([b"Expires: 4294967295"], None),
    ([b"Expires: 4294967296"], 400),
    ([b"Expires: 1" + b"0" * 100], 400),
    ([b"Expires: -1"], 400),
    ([b"Contact: <sip:a@h>;expires=60"], None),
    ([b"Contact: <sip:a@h>;expires=280297596632815"], 400),
    ([b"Date: Sat, 13 Nov 2010 23:29:00 GMT"], None),
    ([b"Date: 2013-09-10T16:01:51"], None),
    ([b"Date: 2025-04-22T10:48:38.014"], None),
    ([b"Date: Fri, 01 Jan 2010 16:00:00 EST"], 400),
    ([b"Require: 100rel"], 420),
    ([b"Proxy-Require: foo"], None),
]


@pytest.mark.parametrize(("lines", "status"), VALIDATE_CASES, ids=range(len(VALIDATE_CASES)))
def test_validate_request(lines: list[bytes], status: int | None) -> None:
    req = parse_message(_options(*lines))
    assert isinstance(req, Request)
    if status is None:
        validate_request(req)
    else:
        with pytest.raises(ParseError) as info:
            validate_request(req)
        assert info.value.status_hint == status


def test_validate_request_scheme_branch_register_and_require() -> None:
    def check(data: bytes, **kwargs: object) -> int | None:
        req = parse_message(data)
        assert isinstance(req, Request)
        try:
            validate_request(req, **kwargs)  # type: ignore[arg-type]
        except ParseError as exc:
            return exc.status_hint
        return None

    assert check(_options(start=b"OPTIONS tel:+861012345 SIP/2.0")) == 416
    assert check(_options(start=b"OPTIONS sips:a@b SIP/2.0")) is None
    assert check(_options().replace(b"z9hG4bKx", b"z9hG4bK")) == 400
    assert check(_options().replace(b"z9hG4bKx", b"z3hG9bKx")) is None
    assert (
        check(_options().replace(b";branch=z9hG4bKx", b';x="a;branch=z9hG4bK";branch=z9hG4bKx'))
        is None
    )
    assert check(_options().replace(b";branch=z9hG4bKx", b";BRANCH = z9hG4bK ;rport")) == 400
    register = _options(start=b"REGISTER sip:b SIP/2.0").replace(b"1 OPTIONS", b"1 REGISTER")
    assert check(register) is None
    assert check(register.replace(b"To: <sip:a@b>", b"To: isbn:2983792873")) == 400
    assert check(_options(b"Require: 100rel"), supported={"100rel"}) is None
    for method in (b"ACK", b"CANCEL"):
        request = _options(b"Require: foo", start=method + b" sip:a@b SIP/2.0")
        assert check(request.replace(b"1 OPTIONS", b"1 " + method)) is None


def test_validate_request_reports_unsupported_options() -> None:
    req = parse_message(_options(b"Require: a, b", b"Require: c"))
    assert isinstance(req, Request)
    with pytest.raises(ParseError, match=r"unsupported extension\(s\): b, c"):
        validate_request(req, supported=["a"])


def test_validate_response() -> None:
    resp = parse_message(OK_WITH_BODY)
    assert isinstance(resp, Response)
    validate_response(resp)
    resp.headers.add("Via", "SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23")
    with pytest.raises(ParseError):
        validate_response(resp)
