"""MANSRTSP bodies of INFO requests in playback dialogs (GB/T 28181-2016 App. B, RFC 2326):
the corpus INFOs of the wx and eXosip platforms, the forms wvp writes, the variants platforms
send, every error with the reply it gets, and hypothesis (any bytes parse or raise
MansrtspError; requests and replies round-trip)."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sip.errors import LocalProtocolError, ParseError
from sip.mansrtsp import (
    CONTENT_TYPE,
    MAX_BODY_SIZE,
    MansrtspError,
    MansrtspReply,
    MansrtspRequest,
    build_mansrtsp,
    is_mansrtsp,
    mansrtsp_reply,
    parse_mansrtsp,
    parse_mansrtsp_reply,
)
from sip.message import Request, Response, parse_message
from tests.conftest import load

WX_SCALE = "corpus/info-mansrtsp-scale-wx-platform-01.sip"
EXOSIP_PAUSE = "corpus/info-rtsp-pause-exosip-platform-01.sip"


def corpus_info(name: str) -> Request:
    message = parse_message(load(name))
    assert isinstance(message, Request) and message.method == "INFO"
    return message


# ----- corpus ------------------------------------------------------------------------------------


def test_wx_platform_scale() -> None:
    info = corpus_info(WX_SCALE)
    assert is_mansrtsp(info.content_type)  # application/MANSRTSP
    request = parse_mansrtsp(info.body)
    assert request == MansrtspRequest("PLAY", 4, start=None, scale=4.0)
    assert not request.is_resume
    # The MANSRTSP CSeq is its own counter, not the INFO's.
    assert info.cseq == (46, "INFO")


def test_exosip_pause_with_rtsp_content_type_and_pause_time_zero() -> None:
    info = corpus_info(EXOSIP_PAUSE)
    assert info.headers.get("Content-Type") == "application/RTSP"
    assert is_mansrtsp(info.content_type)
    assert parse_mansrtsp(info.body) == MansrtspRequest("PAUSE", 20)


@pytest.mark.parametrize("name", [WX_SCALE, EXOSIP_PAUSE])
def test_corpus_info_answered_with_200_and_the_cseq(name: str) -> None:
    info = corpus_info(name)
    request = parse_mansrtsp(info.body)
    response = Response.for_request(info, 200, to_tag="node1")
    response.headers.add("Content-Type", CONTENT_TYPE)
    response.body = mansrtsp_reply(request.cseq)
    assert response.body == f"RTSP/1.0 200 OK\r\nCSeq: {request.cseq}\r\n".encode()
    again = parse_message(bytes(response))
    assert isinstance(again, Response)
    assert again.call_id == info.call_id and again.cseq == info.cseq
    reply = parse_mansrtsp_reply(again.body)
    assert reply == MansrtspReply(200, "OK", request.cseq)
    assert reply.ok


@pytest.mark.parametrize("name", [WX_SCALE, EXOSIP_PAUSE])
def test_every_prefix_of_a_corpus_body_parses_or_raises(name: str) -> None:
    body = corpus_info(name).body
    for end in range(len(body) + 1):
        try:
            parse_mansrtsp(body[:end])
        except MansrtspError:
            pass


def test_the_corpus_bodies_rebuilt() -> None:
    scale = parse_mansrtsp(corpus_info(WX_SCALE).body)
    assert build_mansrtsp(scale) == b"PLAY RTSP/1.0\r\nCSeq: 4\r\nScale: 4.000000\r\n"
    pause = parse_mansrtsp(corpus_info(EXOSIP_PAUSE).body)
    assert bytes(pause) == b"PAUSE RTSP/1.0\r\nCSeq: 20\r\nPauseTime: now\r\n"


# ----- one table for both directions (the forms wvp writes) ------------------------------------

CANONICAL = [
    (MansrtspRequest("PLAY", 5), b"PLAY RTSP/1.0\r\nCSeq: 5\r\nRange: npt=now-\r\n"),
    (MansrtspRequest("PLAY", 6, start=600.0), b"PLAY RTSP/1.0\r\nCSeq: 6\r\nRange: npt=600-\r\n"),
    (MansrtspRequest("PLAY", 7, start=0.0), b"PLAY RTSP/1.0\r\nCSeq: 7\r\nRange: npt=0-\r\n"),
    (MansrtspRequest("PLAY", 8, start=10.5), b"PLAY RTSP/1.0\r\nCSeq: 8\r\nRange: npt=10.5-\r\n"),
    (MansrtspRequest("PLAY", 9, scale=2.0), b"PLAY RTSP/1.0\r\nCSeq: 9\r\nScale: 2.000000\r\n"),
    (MansrtspRequest("PLAY", 10, scale=0.5), b"PLAY RTSP/1.0\r\nCSeq: 10\r\nScale: 0.500000\r\n"),
    (MansrtspRequest("PLAY", 11, scale=-1.0), b"PLAY RTSP/1.0\r\nCSeq: 11\r\nScale: -1.000000\r\n"),
    (
        MansrtspRequest("PLAY", 12, start=30.25, scale=4.0),
        b"PLAY RTSP/1.0\r\nCSeq: 12\r\nRange: npt=30.25-\r\nScale: 4.000000\r\n",
    ),
    (MansrtspRequest("PAUSE", 13), b"PAUSE RTSP/1.0\r\nCSeq: 13\r\nPauseTime: now\r\n"),
    (MansrtspRequest("TEARDOWN", 14), b"TEARDOWN RTSP/1.0\r\nCSeq: 14\r\n"),
    # wvp's CSeq is a random number of up to ten digits.
    (MansrtspRequest("PAUSE", 987654321),
     b"PAUSE RTSP/1.0\r\nCSeq: 987654321\r\nPauseTime: now\r\n"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "data"), CANONICAL)
def test_build_and_parse(request_: MansrtspRequest, data: bytes) -> None:
    assert build_mansrtsp(request_) == data
    assert parse_mansrtsp(data) == request_


def test_resume() -> None:
    assert parse_mansrtsp(b"PLAY RTSP/1.0\r\nCSeq: 5\r\nRange: npt=now-\r\n").is_resume
    assert parse_mansrtsp(b"PLAY RTSP/1.0\r\nCSeq: 5\r\n").is_resume
    assert not MansrtspRequest("PLAY", 5, start=0.0).is_resume
    assert not MansrtspRequest("PAUSE", 5).is_resume


# ----- what platforms send ----------------------------------------------------------------------

PLAY3 = b"PLAY RTSP/1.0\r\nCSeq: 3\r\n"
PAUSE3 = b"PAUSE RTSP/1.0\r\nCSeq: 3\r\n"


def play3(start: float | None = None, scale: float | None = None) -> MansrtspRequest:
    return MansrtspRequest("PLAY", 3, start, scale)


TOLERATED = [
    ("LF only", b"PLAY RTSP/1.0\nCSeq: 3\nScale: 2.0\n", play3(scale=2.0)),
    ("lower-case names", b"PLAY RTSP/1.0\r\ncseq: 3\r\nrange: npt=10.5-\r\n", play3(10.5)),
    ("upper-case names", b"PLAY RTSP/1.0\r\nCSEQ: 3\r\nSCALE: 1\r\n", play3(scale=1.0)),
    ("extra spaces", b"  PLAY   RTSP/1.0 \r\nCSeq :  3 \r\nRange :\tnpt = 10 - \r\n", play3(10.0)),
    ("npt=0-", PLAY3 + b"Range: npt=0-\r\n", play3(0.0)),
    ("Scale: 1.0", PLAY3 + b"Scale: 1.0\r\n", play3(scale=1.0)),
    ("wvp Scale", PLAY3 + b"Scale: 0.250000\r\n", play3(scale=0.25)),
    ("reverse", PLAY3 + b"Scale: -2\r\n", play3(scale=-2.0)),
    ("plus sign", PLAY3 + b"Scale: +8\r\n", play3(scale=8.0)),
    ("2016 version", b"PLAY MANSRTSP/1.0\r\nCSeq: 3\r\nRange: npt=now-\r\n", play3()),
    ("version in lower case", b"PAUSE rtsp/1.0\r\nCSeq: 3\r\n", MansrtspRequest("PAUSE", 3)),
    ("method in lower case", b"teardown RTSP/1.0\r\nCSeq: 3\r\n", MansrtspRequest("TEARDOWN", 3)),
    ("with a URL", b"PLAY rtsp://10.0.0.1/31011200001310000101 RTSP/1.0\r\nCSeq: 3\r\nScale: 4\r\n",
     play3(scale=4.0)),
    ("trailing blank line", PLAY3 + b"\r\n", play3()),
    ("trailing NULs", PAUSE3 + b"PauseTime: now\r\n\x00\x00", MansrtspRequest("PAUSE", 3)),
    ("no final line end", PAUSE3 + b"PauseTime: now", MansrtspRequest("PAUSE", 3)),
    ("BOM", b"\xef\xbb\xbfTEARDOWN RTSP/1.0\r\nCSeq: 3\r\n", MansrtspRequest("TEARDOWN", 3)),
    ("PauseTime with a time", PAUSE3 + b"PauseTime: 25.5\r\n", MansrtspRequest("PAUSE", 3)),
    ("PAUSE with a Range", PAUSE3 + b"Range: npt=bad\r\n", MansrtspRequest("PAUSE", 3)),
    ("npt hh:mm:ss", PLAY3 + b"Range: npt=0:01:30.5-\r\n", play3(90.5)),
    ("npt with an end", PLAY3 + b"Range: npt=10-3600\r\n", play3(10.0)),
    ("npt=now- with an end", PLAY3 + b"Range: npt=now-120.5\r\n", play3()),
    ("Range time parameter", PLAY3 + b"Range: npt=5-;time=19970123T143720Z\r\n", play3(5.0)),
    ("decimal comma", PLAY3 + b"Range: npt=0,500-\r\nScale: 0,5\r\n", play3(0.5, 0.5)),
    ("NOW", PLAY3 + b"Range: NPT=NOW-\r\n", play3()),
    ("speed change with resume", PLAY3 + b"Range: npt=now-\r\nScale: 2\r\n", play3(scale=2.0)),
    ("repeated CSeq, same value", PLAY3 + b"CSeq: 3\r\n", play3()),
    ("other header fields", PLAY3 + b"User-Agent: x\r\nSession: 1234\r\n", play3()),
    ("CSeq of 32 bits", b"TEARDOWN RTSP/1.0\r\nCSeq: 4294967295\r\n",
     MansrtspRequest("TEARDOWN", 4294967295)),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in TOLERATED],
                         ids=[c[0] for c in TOLERATED])  # fmt: skip
def test_tolerated(data: bytes, expected: MansrtspRequest) -> None:
    assert parse_mansrtsp(data) == expected


@pytest.mark.parametrize(
    "content_type",
    ["Application/MANSRTSP", "application/mansrtsp", "APPLICATION/MANSRTSP", "application/RTSP",
     "Application/MANSRTSP; charset=UTF-8", " application/mansrtsp "],
)  # fmt: skip
def test_content_types(content_type: str) -> None:
    assert is_mansrtsp(content_type)


@pytest.mark.parametrize(
    "content_type", ["", "Application/MANSCDP+xml", "application/sdp", "text/plain"]
)
def test_other_content_types(content_type: str) -> None:
    assert not is_mansrtsp(content_type)


# ----- errors and their replies -----------------------------------------------------------------

ERRORS = [
    # (bytes, RTSP status, CSeq read, words of the reason)
    (b"", 400, None, "empty"),
    (b" \r\n\r\n", 400, None, "empty"),
    (b"PLAY RTSP/1.0\r\nCSeq: \xff\r\n", 400, None, "UTF-8"),
    (b"PLAY RTSP/1.0\r\nScale: 2\r\n", 400, None, "missing CSeq"),
    (b"PLAY RTSP/1.0\r\nCSeq: three\r\n", 400, None, "bad CSeq"),
    (b"PLAY RTSP/1.0\r\nCSeq: -1\r\n", 400, None, "bad CSeq"),
    (b"PLAY RTSP/1.0\r\nCSeq: 4294967296\r\n", 400, None, "bad CSeq"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nCSeq: 4\r\n", 400, None, "conflicting cseq"),
    (b"PLAY RTSP/1.0\r\nCSeq 3\r\n", 400, None, "malformed header line"),
    (b"PLAY RTSP/1.0\r\n: 3\r\nCSeq: 3\r\n", 400, None, "malformed header line"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\n\r\nScale: 2\r\n", 400, None, "after a blank line"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\x01\r\n", 400, None, "control character"),
    (b"PLAY\r\nCSeq: 3\r\n", 400, 3, "malformed request line"),
    (b"PLAY a b RTSP/1.0\r\nCSeq: 3\r\n", 400, 3, "malformed request line"),
    (b"PL@Y RTSP/1.0\r\nCSeq: 3\r\n", 400, 3, "malformed request line"),
    (b"PLAY SIP/2.0\r\nCSeq: 3\r\n", 400, 3, "not an RTSP version"),
    (b"PLAY RTSP/2.0\r\nCSeq: 3\r\n", 505, 3, "version RTSP/2.0 not supported"),
    (b"OPTIONS * RTSP/1.0\r\nCSeq: 3\r\n", 501, 3, "method OPTIONS not supported"),
    (b"GET_PARAMETER RTSP/1.0\r\nCSeq: 3\r\n", 501, 3, "not supported"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: clock=19961108T142300Z-\r\n", 457, 3, "only npt"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: smpte=10:07:00-\r\n", 457, 3, "only npt"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=-20\r\n", 457, 3, "without a start"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=10\r\n", 457, 3, "malformed Range"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=ten-\r\n", 457, 3, "bad Range start"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=1e3-\r\n", 457, 3, "bad Range start"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=0:75:00-\r\n", 457, 3, "bad Range start"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=12345678901-\r\n", 457, 3, "bad Range start"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nRange: npt=10-x\r\n", 457, 3, "bad Range end"),
    (PLAY3 + b"Range: npt=1-\r\nRange: npt=2-\r\n", 400, 3, "conflicting range"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: 0\r\n", 400, 3, "out of range"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: 0.0001\r\n", 400, 3, "out of range"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: 5000\r\n", 400, 3, "out of range"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: fast\r\n", 400, 3, "bad Scale"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: nan\r\n", 400, 3, "bad Scale"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: 1e2\r\n", 400, 3, "bad Scale"),
    (b"PLAY RTSP/1.0\r\nCSeq: 3\r\nScale:\r\n", 400, 3, "bad Scale"),
]


@pytest.mark.parametrize(("data", "status", "cseq", "words"), ERRORS)
def test_errors_and_their_replies(data: bytes, status: int, cseq: int | None, words: str) -> None:
    with pytest.raises(MansrtspError) as info:
        parse_mansrtsp(data)
    error = info.value
    assert isinstance(error, ParseError) and error.status_hint == 400
    assert (error.status, error.cseq) == (status, cseq)
    assert words.lower() in error.reason.lower()
    reply = parse_mansrtsp_reply(error.reply())
    assert (reply.status, reply.cseq) == (status, cseq)
    assert not reply.ok
    assert error.reason in reply.reason


def test_oversized_body() -> None:
    data = b"PLAY RTSP/1.0\r\nCSeq: 3\r\n" + b"X-Pad: " + b"a" * MAX_BODY_SIZE + b"\r\n"
    with pytest.raises(MansrtspError) as info:
        parse_mansrtsp(data)
    assert (info.value.status, info.value.status_hint) == (413, 513)
    assert info.value.reply() == (
        b"RTSP/1.0 413 Request Entity Too Large (MANSRTSP body exceeds 4 KiB)\r\n"
    )
    # The bound is on the body: the same request within it parses.
    assert parse_mansrtsp(data[: MAX_BODY_SIZE - 2] + b"\r\n") == MansrtspRequest("PLAY", 3)


@pytest.mark.parametrize(
    ("status", "reason", "data"),
    [
        (200, None, b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n"),
        (400, None, b"RTSP/1.0 400 Bad Request\r\nCSeq: 7\r\n"),
        (455, None, b"RTSP/1.0 455 Method Not Valid in This State\r\nCSeq: 7\r\n"),
        (457, None, b"RTSP/1.0 457 Invalid Range\r\nCSeq: 7\r\n"),
        (457, "Invalid Range (npt=7200 is after the end)",
         b"RTSP/1.0 457 Invalid Range (npt=7200 is after the end)\r\nCSeq: 7\r\n"),
        (456, "Scale 3 not supported\r\nX-Injected: 1",
         b"RTSP/1.0 456 Scale 3 not supported X-Injected: 1\r\nCSeq: 7\r\n"),
        (599, None, b"RTSP/1.0 599\r\nCSeq: 7\r\n"),
    ],
)  # fmt: skip
def test_replies(status: int, reason: str | None, data: bytes) -> None:
    assert mansrtsp_reply(7, status, reason) == data
    reply = parse_mansrtsp_reply(data)
    assert (reply.status, reply.cseq) == (status, 7)
    assert reply.ok is (status == 200)


def test_reply_with_rtp_info_as_devices_send_it() -> None:
    data = mansrtsp_reply(5, headers=[("RTP-Info", "seq=1024;rtptime=900000")])
    assert data == b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nRTP-Info: seq=1024;rtptime=900000\r\n"
    reply = parse_mansrtsp_reply(data)
    assert reply.get("rtp-info") == "seq=1024;rtptime=900000"
    assert reply.get("Range") is None
    assert bytes(reply) == data


def test_reply_variants_read() -> None:
    assert parse_mansrtsp_reply(b"MANSRTSP/1.0 200 OK\ncseq: 9\n\n") == MansrtspReply(200, "OK", 9)
    assert parse_mansrtsp_reply(b"RTSP/1.0 200\r\n") == MansrtspReply(200, "", None)
    assert parse_mansrtsp_reply(b"RTSP/1.0\t454\tSession Not Found\r\nCSeq: 2\r\n") == (
        MansrtspReply(454, "Session Not Found", 2)
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"RTSP/1.0\r\n", b"RTSP/1.0 2000 OK\r\n", b"RTSP/1.0 099 X\r\n", b"HTTP/1.1 200 OK\r\n",
     b"RTSP/1.0 OK 200\r\n", b"RTSP/1.0 200 OK\r\nCSeq: x\r\n"],
)  # fmt: skip
def test_bad_replies(data: bytes) -> None:
    with pytest.raises(MansrtspError):
        parse_mansrtsp_reply(data)


def test_reply_without_cseq_when_the_request_had_none() -> None:
    with pytest.raises(MansrtspError) as info:
        parse_mansrtsp(b"PAUSE RTSP/1.0\r\nPauseTime: now\r\n")
    assert info.value.reply() == b"RTSP/1.0 400 Bad Request (missing CSeq)\r\n"


# ----- misuse of the API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "OPTIONS", "cseq": 1},
        {"method": "play", "cseq": 1},
        {"method": "PLAY", "cseq": -1},
        {"method": "PLAY", "cseq": 2**32},
        {"method": "PAUSE", "cseq": 1, "scale": 2.0},
        {"method": "TEARDOWN", "cseq": 1, "start": 0.0},
        {"method": "PLAY", "cseq": 1, "start": -1.0},
        {"method": "PLAY", "cseq": 1, "start": float("nan")},
        {"method": "PLAY", "cseq": 1, "start": 1e11},
        {"method": "PLAY", "cseq": 1, "scale": 0.0},
        {"method": "PLAY", "cseq": 1, "scale": float("inf")},
        {"method": "PLAY", "cseq": 1, "scale": 2000.0},
    ],
)
def test_requests_that_cannot_be_sent(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        MansrtspRequest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cseq", "status", "headers"),
    [(-1, 200, ()), (2**32, 200, ()), (1, 99, ()), (1, 700, ()), (1, 200, (("Bad Name", "x"),)),
     (1, 200, (("CSeq", "2"),)), (1, 200, (("RTP-Info", "a\r\nb"),)), (1, 200, (("X", " a"),))],
)  # fmt: skip
def test_replies_that_cannot_be_sent(
    cseq: int, status: int, headers: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(LocalProtocolError):
        mansrtsp_reply(cseq, status, headers=headers)


# ----- hypothesis -------------------------------------------------------------------------------

PIECES = [
    b"PLAY", b"PAUSE", b"TEARDOWN", b" RTSP/1.0", b" MANSRTSP/1.0", b"\r\n", b"\n", b" ", b"\t",
    b":", b"CSeq: ", b"Range: ", b"Scale: ", b"PauseTime: ", b"npt=", b"now", b"-", b".", b",",
    b"0", b"1", b"59", b"4294967296", b"\x00", b"\xff", b"RTSP/1.0 200 OK",
]  # fmt: skip


@given(st.binary(max_size=300))
@example(b"PLAY RTSP/1.0\r\nCSeq: 1\r\nRange: npt=99999:59:59.999999999-\r\n")
@example(b"PLAY RTSP/1.0\r\nCSeq: 1\r\nScale: -0\r\n")
def test_any_bytes_parse_or_raise(data: bytes) -> None:
    for parse in (parse_mansrtsp, parse_mansrtsp_reply):
        try:
            parse(data)
        except MansrtspError:
            pass


@given(st.lists(st.sampled_from(PIECES), max_size=30).map(b"".join))
def test_structured_garbage_parses_or_raises(data: bytes) -> None:
    try:
        request = parse_mansrtsp(data)
    except MansrtspError as exc:
        assert parse_mansrtsp_reply(exc.reply()).status == exc.status
    else:
        assert parse_mansrtsp(build_mansrtsp(request)) == request


def six_decimals(low: int, high: int) -> st.SearchStrategy[float]:
    """Numbers with at most six decimals between low and high millionths."""
    return st.integers(low, high).map(lambda n: float(f"{n // 10**6}.{n % 10**6:06d}"))


requests = st.one_of(
    st.builds(
        MansrtspRequest,
        st.just("PLAY"),
        st.integers(0, 2**32 - 1),
        st.none() | six_decimals(0, 10**16 - 1),
        st.none()
        | st.tuples(st.sampled_from([1.0, -1.0]), six_decimals(1000, 10**9)).map(
            lambda pair: pair[0] * pair[1]
        ),
    ),
    st.builds(MansrtspRequest, st.sampled_from(["PAUSE", "TEARDOWN"]), st.integers(0, 2**32 - 1)),
)


@given(requests)
@example(MansrtspRequest("PLAY", 0, start=9999999999.999999))
@example(MansrtspRequest("PLAY", 0, start=0.000001, scale=-0.001))
def test_requests_round_trip(request: MansrtspRequest) -> None:
    assert parse_mansrtsp(build_mansrtsp(request)) == request


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=1,
                max_size=12).filter(lambda name: name.lower() != "cseq")  # fmt: skip
VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
WORDS = st.lists(st.text("abcXYZ()0123:;", min_size=1, max_size=8), max_size=4).map(" ".join)


@given(
    st.builds(
        MansrtspReply,
        st.integers(100, 699),
        WORDS,
        st.none() | st.integers(0, 2**32 - 1),
        st.lists(st.tuples(TOKEN, VALUE), max_size=4).map(tuple),
    )
)
def test_replies_round_trip(reply: MansrtspReply) -> None:
    assert parse_mansrtsp_reply(bytes(reply)) == reply
