"""Property tests: robustness, chunking invariance and round trips (hypothesis, "ci" profile)."""

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from sip.errors import ParseError
from sip.headers import header_key
from sip.message import (
    Headers,
    Request,
    Response,
    parse_message,
    validate_request,
    validate_response,
)
from sip.stream import KeepAlivePing, StreamEvent, StreamParser

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
SAMPLES = [path.read_bytes() for path in sorted(CORPUS.glob("*.sip"))[:12]]

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
# Headers whose values the generators below build from their grammar.
CHECKED = {
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "content-length",
    "contact",
    "route",
    "record-route",
    "content-type",
    "max-forwards",
}

# --- robustness ------------------------------------------------------------------------------

# Pieces of SIP syntax, so that random messages get past the start line and into the headers.
PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b"<",
    b">",
    b'"',
    b"\\",
    b"@",
    b"?",
    b"/",
    b"[",
    b"]",
    b"%",
    b"*",
    b"sip:",
    b"a@b",
    b"SIP/2.0/UDP h",
    b"SIP",
    b"2.0",
    b";branch=z9hG4bK",
    b";tag=",
    b";expires=",
    b"5060",
    b"65536",
    b"0",
    b"99999999999",
    b"INVITE",
    b"\xc2\xb2",
    b"\x00",
    b"\xff",
    b"\xe4\xb8\xad",
]
START_LINES = [
    b"INVITE sip:a@b SIP/2.0",
    b"REGISTER sip:b SIP/2.0",
    b"SIP/2.0 200 OK",
    b"SIP/2.0 100 ",
]
NAMES = [
    b"Via",
    b"v",
    b"From",
    b"f",
    b"To",
    b"t",
    b"Call-ID",
    b"i",
    b"CSeq",
    b"Contact",
    b"m",
    b"Route",
    b"Record-Route",
    b"Content-Length",
    b"l",
    b"Content-Type",
    b"Max-Forwards",
    b"Expires",
    b"Date",
    b"Require",
    b"X",
]
GOOD_LINES = [
    b"Via: SIP/2.0/UDP h;branch=z9hG4bKx",
    b"From: <sip:a@b>;tag=1",
    b"To: <sip:a@b>",
    b"Call-ID: x",
    b"CSeq: 1 INVITE",
]
syntax = st.lists(st.sampled_from(PIECES), max_size=12).map(b"".join)
header_line = st.builds(
    lambda name, colon, value: name + colon + value,
    st.sampled_from(NAMES),
    st.sampled_from([b":", b": ", b" :\t"]),
    syntax,
)


@st.composite
def sip_like(draw: st.DrawFn) -> bytes:
    """A start line and header lines mixing valid mandatory headers with random syntax."""
    start = draw(st.one_of(st.sampled_from(START_LINES), syntax))
    lines = [line for line in GOOD_LINES if draw(st.integers(0, 9))]
    lines += draw(st.lists(header_line, max_size=6))
    draw(st.randoms()).shuffle(lines)
    end = draw(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n\r\nbody", b""]))
    return start + b"\r\n" + b"\r\n".join(lines) + end


def mutate(data: bytes, edits: list[tuple[int, bytes, int]]) -> bytes:
    for position, insert, delete in edits:
        at = position % (len(data) + 1)
        data = data[:at] + insert + data[at + delete :]
    return data


mutated = st.builds(
    mutate,
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=4), st.integers(0, 4)), max_size=6),
)


def exercise(message: Request | Response) -> None:
    """Whatever parsed must serialise, re-parse equal, and answer its accessors."""
    assert parse_message(bytes(message)) == message
    _ = (message.from_, message.to, message.vias, message.top_via, message.contacts, message.cseq)
    try:
        if isinstance(message, Request):
            _ = message.request_uri
            validate_request(message)
        else:
            validate_response(message)
    except ParseError:
        pass


def parse_or_reject(data: bytes) -> None:
    try:
        message = parse_message(data)
    except ParseError:
        return
    exercise(message)


@given(st.binary(max_size=3000))
@example(b"SIP/2.0 \xc2\xb2\xc2\xb2\xc2\xb2 OK\r\n\r\n")
@example(b"INVITE sip:a@b SIP/2.0\r\nl: \xc2\xb9\r\n\r\n")
@example(b"\r\n\r\n")
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    parse_or_reject(data)


@given(st.one_of(sip_like(), mutated))
@example(SAMPLES[0].replace(b"CSeq: ", b"CSeq: \xc2\xb9"))
@example(SAMPLES[0].replace(b":5060", b":99999"))
def test_sip_like_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    parse_or_reject(data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_chunks(chunks: list[bytes]) -> list[StreamEvent]:
    parser = StreamParser()
    events: list[StreamEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


@given(st.one_of(st.binary(max_size=3000), sip_like(), mutated), st.lists(st.integers(0, 3000)))
def test_stream_takes_any_bytes_in_any_chunks(data: bytes, cuts: list[int]) -> None:
    parser = StreamParser(max_size=2048)
    try:
        for chunk in split(data, cuts):
            for event in parser.feed(chunk):
                if not isinstance(event, KeepAlivePing):
                    exercise(event)
    except ParseError:
        assert parser.broken


# --- generated messages ----------------------------------------------------------------------

token = st.text(TOKEN_CHARS, min_size=1, max_size=10)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
host = st.one_of(
    st.lists(label, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.just("[2001:db8::1]"),
    st.integers(0, 9_999_999_999).map("{:010d}".format),
)
port = st.one_of(st.none(), st.integers(0, 65535))
escaped = st.integers(0, 255).map("%{:02X}".format)
user = st.lists(
    st.one_of(token, escaped, st.sampled_from(["&", "=", "+", "$", ",", ";", "?", "/"])),
    min_size=1,
    max_size=4,
).map("".join)
param = st.tuples(token, st.one_of(st.none(), token)).map(
    lambda p: f";{p[0]}" if p[1] is None else f";{p[0]}={p[1]}"
)
params = st.lists(param, max_size=3).map("".join)


@st.composite
def sip_uri(draw: st.DrawFn, *, bare: bool = False) -> str:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP"]))
    userinfo = "" if draw(st.booleans()) else draw(token if bare else user) + "@"
    hostport = draw(host)
    p = draw(port)
    if p is not None:
        hostport += f":{p}"
    return f"{scheme}:{userinfo}{hostport}" + ("" if bare else draw(params))


quoted = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='"\\'), max_size=8
).map(lambda s: f'"{s}"') | st.just('"a \\" b \\\\"')
display = st.one_of(st.none(), quoted, st.lists(token, min_size=1, max_size=3).map(" ".join))


@st.composite
def name_addr(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(sip_uri(bare=True)) + draw(params)
    name = draw(display)
    prefix = "" if name is None else name + draw(st.sampled_from(["", " ", " \t "]))
    return f"{prefix}<{draw(sip_uri())}>{draw(params)}"


@st.composite
def via(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "udp"]))
    sent_by = draw(host)
    p = draw(port)
    if p is not None:
        sent_by += f":{p}"
    branch = draw(token)
    return f"SIP/2.0/{transport} {sent_by};branch=z9hG4bK{branch}{draw(params)}"


def spelling(long: str, compact: str | None = None) -> st.SearchStrategy[str]:
    names = [long, long.lower(), long.upper()] + ([compact] if compact else [])
    return st.sampled_from(names)


value_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=20).map(
    lambda s: s.strip(" \t")
)
extension_name = token.filter(lambda name: header_key(name) not in CHECKED)


@st.composite
def headers(draw: st.DrawFn, method: str) -> Headers:
    fields = [
        (draw(spelling("Via", "v")), ", ".join(draw(st.lists(via(), min_size=1, max_size=3)))),
        (draw(spelling("From", "f")), draw(name_addr())),
        (draw(spelling("To", "t")), draw(name_addr())),
        (
            draw(spelling("Call-ID", "i")),
            draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)),
        ),
        (draw(spelling("CSeq")), f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    if draw(st.booleans()):
        contacts = st.lists(name_addr(), min_size=1, max_size=2).map(", ".join)
        fields.append((draw(spelling("Contact", "m")), draw(st.just("*") | contacts)))
    if draw(st.booleans()):
        fields.append((draw(spelling("Content-Type", "c")), "Application/MANSCDP+xml"))
    if draw(st.booleans()):
        fields.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    fields += draw(st.lists(st.tuples(extension_name, value_text), max_size=4))
    draw(st.randoms()).shuffle(fields)
    return Headers(fields)


method = st.one_of(st.sampled_from(["REGISTER", "MESSAGE", "INVITE", "ACK", "BYE"]), token)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    name = draw(method)
    return Request(
        method=name,
        uri=draw(sip_uri()),
        headers=draw(headers(name)),
        body=draw(st.binary(max_size=200)),
    )


@st.composite
def responses(draw: st.DrawFn) -> Response:
    reason = draw(st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=20))
    return Response(
        status=draw(st.integers(100, 699)),
        reason=reason,
        headers=draw(headers(draw(method))),
        body=draw(st.binary(max_size=200)),
    )


messages = st.one_of(requests(), responses())


@given(messages)
def test_round_trip(message: Request | Response) -> None:
    data = bytes(message)
    parsed = parse_message(data)
    assert parsed == message
    assert parsed.body == message.body
    assert StreamParser().feed(data) == [message]
    assert parsed.from_ == message.from_
    assert parsed.vias == message.vias
    assert parsed.contacts == message.contacts


@given(
    st.lists(st.one_of(messages, st.sampled_from(SAMPLES), st.just(b"\r\n\r\n")), max_size=5),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_chunking_invariance(items: list[Request | Response | bytes], cuts: list[int]) -> None:
    stream = b"".join(item if isinstance(item, bytes) else bytes(item) for item in items)
    whole = StreamParser().feed(stream)
    assert len(whole) == len(items)
    assert feed_chunks(split(stream, cuts)) == whole
    assert feed_chunks([stream[i : i + 1] for i in range(len(stream))]) == whole
