"""The RFC 4475 torture messages, handled as tests/data/rfc4475/INDEX.md says.

Each file is classified once in CASES: `valid` parses, passes `validate_request` /
`validate_response` and has the field values the RFC names; `malformed` makes the parser raise
ParseError with the status the RFC asks for; `rejected` parses (it is well formed) but the
checks above the parser raise ParseError with the required status.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sip.errors import ParseError
from sip.message import (
    KNOWN_METHODS,
    Request,
    Response,
    parse_head_and_body,
    parse_message,
    validate_request,
    validate_response,
)
from sip.stream import KeepAlivePing, StreamParser
from sip.uri import NameAddr, Uri, Via, unescape

DATA = Path(__file__).parent.parent / "data" / "rfc4475"


def load(name: str) -> bytes:
    """A torture message as sent: LF becomes CRLF in files that hold no CR at all (INDEX.md)."""
    data = (DATA / name).read_bytes()
    return data if b"\r" in data else data.replace(b"\n", b"\r\n")


def validate(message: Request | Response) -> None:
    if isinstance(message, Request):
        validate_request(message)
    else:
        validate_response(message)


Check = Callable[[Request | Response], None]


@dataclass(frozen=True)
class Case:
    kind: str  # "valid", "malformed" or "rejected"
    status: int = 400
    check: Check | None = None


CHECKS: dict[str, Check] = {}


def checks(name: str) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        CHECKS[name] = function
        return function

    return register


@checks("wsinv.dat")
def check_wsinv(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.max_forwards == 68
    assert m.cseq == (9, "INVITE")
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.to == NameAddr(
        Uri("sip", "vivekg", "chair-dnrc.example.com"), None, {"tag": "1918181833n"}
    )
    assert m.from_.display == '"J Rosenberg \\\\\\""'
    assert m.from_.tag == "98asjd8"
    (contact,) = m.contacts
    assert contact.display == '"Quoted string \\"\\""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.headers.get("Route") == (
        "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    )
    assert m.request_uri.params == {"unknownparam": None}
    assert len(m.body) == 150


@checks("intmeth.dat")
def check_intmeth(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method not in KNOWN_METHODS  # the endpoint answers 501
    assert m.cseq == (139122385, m.method)
    uri = m.request_uri
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert m.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert m.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert (
        m.from_.params["fromparam''~+*_!.-%"]
        == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    )
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


@checks("esc01.dat")
def check_esc01(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert unescape(m.request_uri.user or "") == "sips:user@example.com"
    assert m.request_uri.host == "example.net"
    assert unescape(m.to.uri.user or "") == "user"
    assert unescape(m.from_.uri.user or "") == "I have spaces"
    (contact,) = m.contacts
    assert unescape(contact.uri.user or "") == "caller"
    assert contact.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    assert unescape("v%61lue%25%34%31") == "value%41"  # one pass, never recursive


@checks("escnull.dat")
def check_escnull(m: Request | Response) -> None:
    assert unescape(m.to.uri.user or "") == "null-\x00-null"
    assert m.to.uri == m.from_.uri
    users = [c.uri.user for c in m.contacts]
    assert users == ["%00", "%00%00"]
    assert unescape(users[0] or "") != unescape(users[1] or "")


@checks("esc02.dat")
def check_esc02(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.method == "RE%47IST%45R"
    assert m.method != "REGISTER"
    assert m.to.display == '"%Z%45"'
    assert [c.uri.user for c in m.contacts] == ["alias1", "alias3"]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"


@checks("lwsdisp.dat")
def check_lwsdisp(m: Request | Response) -> None:
    assert m.from_.display == "caller"
    assert m.from_.uri.user == "caller"


@checks("longreq.dat")
def check_longreq(m: Request | Response) -> None:
    assert len(m.vias) == 34
    assert [v.host for v in m.vias[:3]] == [
        "sip33.example.com",
        "sip32.example.com",
        "sip31.example.com",
    ]
    assert m.vias[-1].branch is not None and len(m.vias[-1].branch) > 200
    display = m.to.display or ""
    assert display.startswith('"I have a user name of extreme') and display.endswith('proportion"')
    assert m.to.uri.port == 6000
    assert len(m.to.uri.params) == 3
    assert len(m.from_.params) == 3
    assert m.call_id.endswith("reallylongcallid")
    assert len(m.body) == 150


@checks("dblreq.dat")
def check_dblreq(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.method == "REGISTER"
    assert m.cseq == (8, "REGISTER")
    assert m.body == b""


@checks("semiuri.dat")
def check_semiuri(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.request_uri == Uri("sip", "user;par=u%40example.net", "example.com")
    assert len(m.headers.get_all("Accept")) == 6


@checks("transports.dat")
def check_transports(m: Request | Response) -> None:
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


@checks("mpart01.dat")
def check_mpart01(m: Request | Response) -> None:
    assert len(m.body) == 553
    assert b"\x00" in m.body
    assert m.body.startswith(b"--7a9cbec02ceef655\r\n")
    assert m.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert m.content_type == "multipart/mixed;boundary=7a9cbec02ceef655"


@checks("unreason.dat")
def check_unreason(m: Request | Response) -> None:
    assert isinstance(m, Response)
    assert m.status == 200
    assert m.reason == (
        "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e"
        "\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441"
        "\u0442\u043e\u0435"
    )


@checks("noreason.dat")
def check_noreason(m: Request | Response) -> None:
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (100, "")


@checks("inv2543.dat")
def check_inv2543(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert "Content-Length" not in m.headers
    assert m.body.startswith(b"v=0\r\n") and m.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")
    assert m.top_via == Via("UDP", "iftgw.example.com")
    assert m.top_via.branch is None
    assert m.from_.tag is None
    assert m.max_forwards is None


@checks("invut.dat")
def check_invut(m: Request | Response) -> None:
    assert m.content_type == "application/unknownformat"  # the endpoint answers 415


@checks("regaut01.dat")
def check_regaut01(m: Request | Response) -> None:
    assert m.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


@checks("zeromf.dat")
def check_zeromf(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.max_forwards == 0


@checks("cparam01.dat")
def check_cparam01(m: Request | Response) -> None:
    (contact,) = m.contacts
    assert contact.params == {"unknownparam": None}
    assert contact.uri.params == {}


@checks("cparam02.dat")
def check_cparam02(m: Request | Response) -> None:
    (contact,) = m.contacts
    assert contact.params == {}
    assert contact.uri.params == {"unknownparam": None}


@checks("regescrt.dat")
def check_regescrt(m: Request | Response) -> None:
    (contact,) = m.contacts
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(contact.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


@checks("sdp01.dat")
def check_sdp01(m: Request | Response) -> None:
    assert m.headers.get_all("Accept") == ["text/nobodyKnowsThis"]  # the endpoint answers 406
    assert m.content_type == "application/sdp"


VALID = "valid"
MALFORMED = "malformed"
REJECTED = "rejected"

CASES: dict[str, Case] = {
    # 3.1.1: valid messages
    "wsinv.dat": Case(VALID),
    "intmeth.dat": Case(VALID),
    "esc01.dat": Case(VALID),
    "escnull.dat": Case(VALID),
    "esc02.dat": Case(VALID),
    "lwsdisp.dat": Case(VALID),
    "longreq.dat": Case(VALID),
    "dblreq.dat": Case(VALID),
    "semiuri.dat": Case(VALID),
    "transports.dat": Case(VALID),
    "mpart01.dat": Case(VALID),
    "unreason.dat": Case(VALID),
    "noreason.dat": Case(VALID),
    # 3.1.2: invalid messages
    "badinv01.dat": Case(MALFORMED),
    "clerr.dat": Case(MALFORMED),
    "ncl.dat": Case(MALFORMED),
    "scalar02.dat": Case(MALFORMED),
    "scalarlg.dat": Case(MALFORMED),
    "quotbal.dat": Case(MALFORMED),
    "ltgtruri.dat": Case(MALFORMED),
    "lwsruri.dat": Case(MALFORMED),
    "lwsstart.dat": Case(MALFORMED),
    "trws.dat": Case(MALFORMED),
    "escruri.dat": Case(MALFORMED),
    "baddate.dat": Case(REJECTED),
    "regbadct.dat": Case(MALFORMED),
    "badaspec.dat": Case(MALFORMED),
    "baddn.dat": Case(MALFORMED),
    "badvers.dat": Case(MALFORMED, 505),
    "mismatch01.dat": Case(MALFORMED),
    "mismatch02.dat": Case(MALFORMED, 501),
    "bigcode.dat": Case(MALFORMED),
    # 3.2 and 3.3: transaction layer and application layer semantics
    "badbranch.dat": Case(REJECTED),
    "insuf.dat": Case(MALFORMED),
    "unkscm.dat": Case(REJECTED, 416),
    "novelsc.dat": Case(REJECTED, 416),
    "unksm2.dat": Case(REJECTED),
    "bext01.dat": Case(REJECTED, 420),
    "invut.dat": Case(VALID),
    "regaut01.dat": Case(VALID),
    "multi01.dat": Case(MALFORMED),
    "mcl01.dat": Case(MALFORMED),
    "bcast.dat": Case(REJECTED),
    "zeromf.dat": Case(VALID),
    "cparam01.dat": Case(VALID),
    "cparam02.dat": Case(VALID),
    "regescrt.dat": Case(VALID),
    "sdp01.dat": Case(VALID),
    # 3.4: backward compatibility
    "inv2543.dat": Case(VALID),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_torture_message(name: str) -> None:
    case = CASES[name]
    data = load(name)
    if case.kind == MALFORMED:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert info.value.status_hint == case.status
        return
    message = parse_message(data)
    assert parse_message(bytes(message)) == message
    if case.kind == REJECTED:
        with pytest.raises(ParseError) as info:
            validate(message)
        assert info.value.status_hint == case.status
        return
    validate(message)
    check = CHECKS.get(name)
    if check is not None:
        check(message)


def _index_verdicts() -> dict[str, str]:
    verdicts = {}
    for line in (DATA / "INDEX.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 4 and cells[1].endswith(".dat"):
            verdicts[cells[1]] = cells[4]
    return verdicts


def test_cases_cover_every_file_and_follow_the_index() -> None:
    files = {path.name for path in DATA.glob("*.dat")}
    assert len(files) == 49
    assert set(CASES) == files
    allowed = {
        "valid": {VALID},
        "invalid": {MALFORMED, REJECTED},
        "valid (semantic)": {VALID, REJECTED},
    }
    verdicts = _index_verdicts()
    assert set(verdicts) == files
    for name, verdict in verdicts.items():
        assert CASES[name].kind in allowed[verdict], name
    assert {name for name, case in CASES.items() if case.kind == VALID} >= set(CHECKS)


def test_files_are_the_rfc_archive_bytes() -> None:
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_baddn_is_rejected_for_its_display_names() -> None:
    # The archive's baddn.dat lacks the final empty line; with it restored, the non-token
    # display names are what the parser rejects.
    with pytest.raises(ParseError, match="no empty line after the headers"):
        parse_message(load("baddn.dat"))
    with pytest.raises(ParseError, match="malformed From header 'Bell, Alexander") as info:
        parse_message(load("baddn.dat") + b"\r\n")
    assert info.value.status_hint == 400


def test_dblreq_trailing_octets_are_not_processed_over_udp() -> None:
    data = load("dblreq.dat")
    message, consumed = parse_head_and_body(data, datagram=True)
    assert message is not None and message.cseq == (8, "REGISTER")
    assert data[consumed:].startswith(b"\r\nINVITE sip:joe@example.com SIP/2.0\r\n")


def test_dblreq_over_a_stream_frames_the_next_message() -> None:
    # Over TCP the octets are the next message; its Content-Length (150) is 5 bytes short, so
    # the leftover "C\r\n\r\n" breaks the stream.
    parser = StreamParser()
    parser.receive(load("dblreq.dat"))
    first, ping, second = (parser.next_event() for _ in range(3))
    assert isinstance(first, Request) and first.method == "REGISTER"
    assert ping == KeepAlivePing(pong_due=False)
    assert isinstance(second, Request) and second.method == "INVITE"
    with pytest.raises(ParseError):
        parser.next_event()


def test_clerr_over_a_stream_waits_for_the_body() -> None:
    parser = StreamParser()
    data = load("clerr.dat")
    assert parser.feed(data) == []
    assert parser.buffered == len(data)
    assert not parser.broken  # the adapter closes the connection after its read timeout


@pytest.mark.parametrize("name", ["ncl.dat", "mcl01.dat", "inv2543.dat"])
def test_unframeable_over_a_stream(name: str) -> None:
    parser = StreamParser()
    with pytest.raises(ParseError):
        parser.feed(load(name))
    assert parser.broken


@pytest.mark.parametrize(
    "name", sorted(name for name, case in CASES.items() if case.kind == MALFORMED)
)
def test_malformed_over_a_stream_byte_by_byte(name: str) -> None:
    parser = StreamParser()
    data = load(name)
    try:
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    except ParseError:
        assert parser.broken
    else:
        assert name in ("clerr.dat", "baddn.dat")  # waiting for a body / the empty line
