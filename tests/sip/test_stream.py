"""SIP over TCP: Content-Length framing, CRLF keep-alives, size caps (RFC 3261 18.3, RFC 5626)."""

from collections.abc import Callable
from pathlib import Path

import pytest

import sip.stream
from sip.errors import LocalProtocolError, MessageTooLarge, ParseError
from sip.message import Request, Response, parse_message
from sip.stream import KeepAlivePing, StreamEvent, StreamParser

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
KEEPALIVE = (CORPUS / "keepalive-hikvision-ipc-01.sip").read_bytes()
TRYING = (CORPUS / "100-trying-hikvision-ipc-tcp-01.sip").read_bytes()
INVITE = (CORPUS / "invite-srs5-tcp-01.sip").read_bytes()

PING = KeepAlivePing(pong_due=True)
LONE = KeepAlivePing(pong_due=False)


def feed_whole(data: bytes) -> list[StreamEvent]:
    return StreamParser().feed(data)


def feed_bytewise(data: bytes) -> list[StreamEvent]:
    return _bytewise(StreamParser(), data)


Feeder = Callable[[bytes], list[StreamEvent]]
FEEDERS = [feed_whole, feed_bytewise]


@pytest.mark.parametrize("feed", FEEDERS)
def test_one_message(feed: Feeder) -> None:
    assert feed(KEEPALIVE) == [parse_message(KEEPALIVE)]


@pytest.mark.parametrize("feed", FEEDERS)
def test_several_messages_and_pings(feed: Feeder) -> None:
    data = b"\r\n\r\n" + KEEPALIVE + TRYING + b"\r\n\r\n" + INVITE + b"\r\n\r\n"
    expected = [
        PING,
        parse_message(KEEPALIVE),
        parse_message(TRYING),
        PING,
        parse_message(INVITE),
        PING,
    ]
    assert feed(data) == expected


def test_messages_are_returned_as_soon_as_complete() -> None:
    parser = StreamParser()
    assert parser.feed(KEEPALIVE[:-1]) == []
    assert parser.buffered == len(KEEPALIVE) - 1
    assert parser.feed(KEEPALIVE[-1:] + TRYING[:10]) == [parse_message(KEEPALIVE)]
    assert parser.buffered == 10
    assert parser.feed(TRYING[10:]) == [parse_message(TRYING)]
    assert parser.buffered == 0


def test_trailing_bytes_are_kept_intact() -> None:
    parser = StreamParser()
    assert parser.feed(KEEPALIVE + b"MESSAGE sip:") == [parse_message(KEEPALIVE)]
    assert parser.buffered == len(b"MESSAGE sip:")
    assert parser.pending_head() == b"MESSAGE sip:"
    assert parser.feed(KEEPALIVE[len(b"MESSAGE sip:") :]) == [parse_message(KEEPALIVE)]


def test_binary_body_with_empty_lines_is_framed_by_content_length() -> None:
    body = b"\r\n\r\n\x00\n\nSIP/2.0 200 OK\r\n\r\n"
    data = KEEPALIVE.replace(b"Content-Length: 176", b"Content-Length: %d" % len(body))
    data = data[: data.index(b"\r\n\r\n") + 4] + body
    for feed in FEEDERS:
        (message,) = feed(data + TRYING)[:1]
        assert isinstance(message, Request)
        assert message.body == body


@pytest.mark.parametrize(
    ("data", "events", "left"),
    [
        (b"\r\n\r\n", [PING], 0),
        (b"\r\n", [], 2),
        (b"\r\n\r", [], 3),
        (b"\r", [], 1),
        (b"\r\n\r\n\r\n", [PING], 2),
        (b"\r\n\r\n\r\n\r\n", [PING, PING], 0),
        (b"\n", [], 1),
        (b"\n\n", [LONE], 0),
        (b"\n\r\n", [LONE], 0),
        (b"\r\nS", [LONE], 1),
        (b"\r\n" + TRYING, [LONE, parse_message(TRYING)], 0),
        (TRYING + b"\r\n", [parse_message(TRYING)], 2),
    ],
    ids=range(12),
)
def test_keepalive_pings(data: bytes, events: list[StreamEvent], left: int) -> None:
    whole = StreamParser()
    assert whole.feed(data) == events
    assert whole.buffered == left
    split = StreamParser()
    assert _bytewise(split, data) == events
    assert split.buffered == left


def _bytewise(parser: StreamParser, data: bytes) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    return events


def test_ping_is_small_and_frozen() -> None:
    ping = KeepAlivePing()
    assert ping.pong_due
    with pytest.raises(AttributeError):
        ping.pong_due = False  # type: ignore[misc]


def test_stray_cr_breaks_the_stream() -> None:
    parser = StreamParser()
    with pytest.raises(ParseError, match="stray CR before a start line"):
        parser.feed(b"\rX")
    assert parser.broken


def test_missing_content_length_breaks_the_stream() -> None:
    data = INVITE.replace(b"Content-Length: 168\r\n", b"")
    parser = StreamParser()
    with pytest.raises(ParseError, match="missing Content-Length on a stream transport"):
        parser.feed(data)
    assert parser.broken
    assert parser.pending_head() == data[: data.index(b"\r\n\r\n") + 4]
    with pytest.raises(LocalProtocolError):
        parser.feed(b"\r\n")
    with pytest.raises(LocalProtocolError):
        parser.next_event()


def test_malformed_head_is_reported_as_soon_as_it_ends() -> None:
    parser = StreamParser()
    head = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 100\r\n"
    assert parser.feed(head) == []
    with pytest.raises(ParseError, match="missing Via header"):
        parser.feed(b"\r\n")


@pytest.mark.parametrize("value", [b"-999", b"5, 6", b"x"])
def test_bad_content_length_breaks_the_stream(value: bytes) -> None:
    data = TRYING.replace(b"Content-Length: 0", b"Content-Length: " + value)
    parser = StreamParser()
    with pytest.raises(ParseError):
        parser.feed(data)
    assert parser.broken


def test_conflicting_content_length_breaks_the_stream() -> None:
    data = TRYING.replace(b"Content-Length: 0", b"Content-Length: 13\r\nl: 5")
    with pytest.raises(ParseError, match="more than one l header"):
        StreamParser().feed(data)


def test_short_body_waits() -> None:
    data = INVITE.replace(b"Content-Length: 168", b"Content-Length: 9999")
    parser = StreamParser()
    assert parser.feed(data) == []
    assert parser.buffered == len(data)
    assert not parser.broken


def test_header_block_over_the_cap() -> None:
    parser = StreamParser(max_size=1000)
    assert parser.feed(b"A" * 1000) == []
    with pytest.raises(MessageTooLarge) as info:
        parser.feed(b"A")
    assert info.value.status_hint == 513
    assert parser.broken


def test_header_block_over_the_cap_in_one_segment() -> None:
    with pytest.raises(MessageTooLarge):
        StreamParser(max_size=100).feed(b"X" * 200 + b"\r\n\r\n")


def test_content_length_over_the_cap_fails_before_the_body_arrives() -> None:
    head = KEEPALIVE[: KEEPALIVE.index(b"\r\n\r\n") + 4]
    data = head.replace(b"Content-Length: 176", b"Content-Length: 65536")
    with pytest.raises(MessageTooLarge):
        StreamParser().feed(data)


def test_message_exactly_at_the_cap() -> None:
    parser = StreamParser(max_size=len(KEEPALIVE))
    assert parser.feed(KEEPALIVE) == [parse_message(KEEPALIVE)]
    with pytest.raises(MessageTooLarge):
        StreamParser(max_size=len(KEEPALIVE) - 1).feed(KEEPALIVE)


def test_next_event_delivers_messages_before_a_malformed_one() -> None:
    parser = StreamParser()
    parser.receive(KEEPALIVE + b"garbage\r\n\r\n")
    assert parser.next_event() == parse_message(KEEPALIVE)
    with pytest.raises(ParseError, match="malformed request line 'garbage'"):
        parser.next_event()
    assert parser.broken
    assert parser.pending_head() == b"garbage\r\n\r\n"
    with pytest.raises(LocalProtocolError):
        parser.receive(b"x")


def test_next_event_returns_none_until_complete() -> None:
    parser = StreamParser()
    assert parser.next_event() is None
    parser.receive(TRYING[:-1])
    assert parser.next_event() is None
    parser.receive(TRYING[-1:])
    message = parser.next_event()
    assert isinstance(message, Response) and message.status == 100
    assert parser.next_event() is None


def test_pending_head_is_capped() -> None:
    parser = StreamParser(max_size=10)
    parser.receive(b"A" * 50)
    assert parser.pending_head() == b"A" * 10


def test_search_for_the_empty_line_resumes_where_it_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    searched = 0
    real = sip.stream.find_head_end

    def counting(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
        nonlocal searched
        searched += len(data) - start
        return real(data, start)

    monkeypatch.setattr(sip.stream, "find_head_end", counting)
    data = KEEPALIVE.replace(b"User-Agent: IP Camera", b"X: " + b"a" * 20000)
    assert len(_bytewise(StreamParser(), data)) == 1
    # Each byte is searched a bounded number of times, however the data is split.
    assert searched <= 3 * len(data)
