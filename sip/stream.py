"""Incremental SIP parser for stream transports (RFC 3261 sections 7.5 and 18.3; RFC 5626 3.5.1).

Over TCP, messages are framed by Content-Length, which is mandatory there. CRLFs between
messages are keep-alives: RFC 5626 pings are a double CRLF, and RFC 3261 section 7.5 has
receivers ignore any CRLF before a start line. Both are reported as `KeepAlivePing` events;
only the double CRLF asks for a pong, which the adapter writes (a single CRLF).

The parser is sans-I/O: bytes go in, events come out. Its buffer holds at most one message plus
whatever arrived after it, each byte is searched once (the search for the empty line resumes
where it stopped), and a message, header block or Content-Length beyond `max_size` raises
`MessageTooLarge`. After any `ParseError` the framing is lost: the parser is `broken` and the
adapter closes the connection (RFC 4475 sections 3.1.2.3 and 3.3.9).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LocalProtocolError, MessageTooLarge, ParseError
from .fastpath import FastRequest, recognise
from .message import MAX_MESSAGE_SIZE, Request, Response, find_head_end, parse_head

__all__ = ["KeepAlivePing", "StreamEvent", "StreamParser"]

_CR = 0x0D
_LF = 0x0A


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """CRLFs received between messages.

    `pong_due` is True for the RFC 5626 double-CRLF ping, which the adapter answers with one
    CRLF; False for a lone CRLF (or bare LF), which is not answered, so that two peers can never
    bounce CRLFs back and forth.
    """

    pong_due: bool = True


StreamEvent = Request | Response | KeepAlivePing | FastRequest


class StreamParser:
    """Turns a TCP byte stream into SIP messages and keep-alive pings.

    Use `feed(data)`, which returns every event the data completes, or `receive(data)` followed
    by `next_event()` until it returns None, which also yields the messages that precede a
    malformed one in the same segment before raising.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE, *, fast: bool = False) -> None:
        self.max_size = max_size
        # With `fast`, a REGISTER or keepalive that `fastpath.recognise` knows, found whole at
        # the start of the buffer, comes out as a `FastRequest` instead of a parsed `Request`.
        self.fast = fast
        self.broken = False
        self._buf = bytearray()
        # Where the next search for the empty line starts: bytes before it were searched.
        self._scan = 0
        # A message whose head is parsed and whose body is awaited: (message, start, end).
        self._pending: tuple[Request | Response, int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events (a partial message, or a lone CRLF)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Add bytes from the connection; return the messages and pings they complete, in order.

        Raises ParseError (MessageTooLarge for oversized input) on a malformed stream; the
        parser is then broken and any further call raises LocalProtocolError.
        """
        self.receive(data)
        events: list[StreamEvent] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def receive(self, data: bytes) -> None:
        """Add bytes from the connection without parsing them yet."""
        self._check_usable()
        self._buf += data

    def next_event(self) -> StreamEvent | None:
        """The next complete message or ping, or None until more bytes are received."""
        self._check_usable()
        try:
            return self._next()
        except ParseError:
            self.broken = True
            raise

    def pending_head(self) -> bytes:
        """The buffered start of the current message, up to and including its empty line (at
        most `max_size` bytes): enough for the adapter to answer a malformed request with 400
        before closing the connection."""
        head_end, body_start = find_head_end(self._buf)
        end = body_start if head_end >= 0 else len(self._buf)
        return bytes(self._buf[: min(end, self.max_size)])

    def _check_usable(self) -> None:
        if self.broken:
            raise LocalProtocolError("the stream is broken after a parse error; close it")

    def _next(self) -> StreamEvent | None:
        if self._pending is None:
            if self._buf and self._buf[0] in (_CR, _LF):
                return self._take_ping()
            buf = self._buf
            if self.fast and self._scan == 0 and buf and buf[0] in (0x52, 0x4D):  # R, M
                fast = recognise(bytes(buf[: self.max_size]))
                if fast is not None:
                    del buf[: fast.size]
                    return fast
            if not self._read_head():
                return None
        return self._take_body()

    def _take_ping(self) -> KeepAlivePing | None:
        buf = self._buf
        first = _line_break(buf, 0)
        if first == 0:
            raise ParseError("stray CR before a start line")
        if first < 0:
            return None
        second = _line_break(buf, first)
        if second < 0:
            return None  # a lone line break or the start of a double one: the next byte tells
        size = first + second
        pong_due = buf[:size] == b"\r\n\r\n"
        del buf[:size]
        self._scan = 0
        return KeepAlivePing(pong_due=pong_due)

    def _read_head(self) -> bool:
        buf = self._buf
        head_end, body_start = find_head_end(buf, self._scan)
        if head_end < 0:
            if len(buf) > self.max_size:
                raise MessageTooLarge(f"header block exceeds {self.max_size} bytes")
            # An empty line split across segments starts at most two bytes back.
            self._scan = max(0, len(buf) - 2)
            return False
        if head_end > self.max_size:
            raise MessageTooLarge(f"header block exceeds {self.max_size} bytes")
        message, length = parse_head(buf[:head_end])
        if length is None:
            raise ParseError("missing Content-Length on a stream transport")
        body_end = body_start + length
        if body_end > self.max_size:
            raise MessageTooLarge(f"message of {body_end} bytes exceeds {self.max_size}")
        self._pending = (message, body_start, body_end)
        return True

    def _take_body(self) -> Request | Response | None:
        assert self._pending is not None
        message, body_start, body_end = self._pending
        if len(self._buf) < body_end:
            return None
        message.body = bytes(self._buf[body_start:body_end])
        del self._buf[:body_end]
        self._pending = None
        self._scan = 0
        return message


def _line_break(buf: bytearray, i: int) -> int:
    """Length of the line break at `buf[i]` (2 for CRLF, 1 for LF), 0 if none starts there,
    -1 if the buffer ends before it is known."""
    if i >= len(buf):
        return -1
    if buf[i] == _LF:
        return 1
    if buf[i] != _CR:
        return 0
    if i + 1 >= len(buf):
        return -1
    return 2 if buf[i + 1] == _LF else 0
