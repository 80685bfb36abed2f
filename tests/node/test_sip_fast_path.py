"""The fast path for REGISTER and keepalive MESSAGE (`sip.fastpath`, taken by the registrar
through `SipEndpoint.fast_path`) answers exactly as the full path: the same response bytes, the
same registry, nonces, transaction cache and counters, for generated messages and for every
REGISTER and keepalive of the corpus.

Each comparison runs two real endpoints, registrars and registries side by side, one with the
fast path and one without, on the same clocks, the same nonce secret and the same To tag, and
feeds both the same datagrams through `SipEndpoint.datagram_received` (where the UDP protocol
hands them over). What the endpoints send is taken from their UDP transport. With the secret,
counter and clocks equal, the nonces (which are random by design: a secret HMAC key and a
counter) come out equal too, so the answers are compared byte for byte, nothing masked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sensing_node.devices.registrar import Registrar, gb_date
from sensing_node.devices.registry import Registry
from sensing_node.runtime.stats import Stats
from sensing_node.settings import settings_for_tests
from sensing_node.transport.sip import SipEndpoint, _SipTcpConnection
from sip.auth import NonceTracker
from sip.fastpath import recognise
from sip.manscdp import format_gb_time
from sip.message import parse_message
from sip.transaction import server_key

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
NODE_ID = "31011200002000000001"
REALM = "3101120000"
PASSWORD = "12345678"
DEVICE = "31011200001320000001"
SOURCE = ("127.0.0.1", 15060)
SECRET = b"s" * 16


class FakeLoop:
    """What the endpoint and the registrar ask of their loop here: the time, and call_soon."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.soon: list[Any] = []

    def time(self) -> float:
        return self.clock[0]

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.soon.append((callback, args))


class Sent:
    """The endpoint's UDP transport: keeps what it is asked to send."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((data, addr))


class Stream:
    """A TCP connection's transport: its peer's address, and what is written to it."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.written.append(b"<closed>")


class World:
    """One endpoint + registrar + registry, with or without the fast path."""

    def __init__(self, tmp: Path, *, fast: bool, clock: list[float], **overrides: Any) -> None:
        settings = settings_for_tests(tmp, **{"node.id": NODE_ID, "node.realm": REALM,
                                             "devices.password": PASSWORD, **overrides})
        self.clock = clock
        self.stats = Stats()
        self.registry = Registry(None, keepalive_timeout_s=180, wall=self.wall, mono=self.mono)
        self.registrar = Registrar(settings, self.registry, self.stats, wall=self.wall,
                                   monotonic=self.mono)
        self.registrar.nonces = NonceTracker(SECRET, lifetime_s=300.0)
        self.registrar.to_tag = "0a1b2c3d"
        self.endpoint = SipEndpoint(self.registrar.on_request, stats=self.stats)
        self.loop = FakeLoop(clock)
        self.endpoint._loop = self.loop  # type: ignore[assignment]
        self.sent = Sent()
        self.endpoint.udp = self.sent  # type: ignore[assignment]
        self.registrar.endpoint = self.endpoint
        self.fast_taken = 0
        self.streams: dict[tuple[str, int], Stream] = {}
        if fast:
            take = self.registrar.fast_request

            def counted(request: Any, peer: Any) -> bool:
                taken = take(request, peer)
                self.fast_taken += taken
                return taken

            self.endpoint.fast_path = counted
        else:
            self.endpoint.fast_path = None

    def wall(self) -> float:
        return 1_780_000_000.0 + self.clock[0]

    def mono(self) -> float:
        return self.clock[0]

    def send(self, data: bytes, addr: tuple[str, int] = SOURCE) -> list[bytes]:
        self.endpoint.datagram_received(data, addr)
        out = [d for d, _ in self.sent.datagrams]
        self.sent.datagrams.clear()
        return out

    def send_tcp(self, segments: list[bytes], addr: tuple[str, int] = SOURCE) -> list[bytes]:
        """`segments` over the (one, long-lived) TCP connection from `addr`; what came back."""
        stream = self.streams.get(addr)
        if stream is None:
            stream = self.streams[addr] = Stream(addr)
            # The connection a device opened and registered through (no idle timer to run).
            _SipTcpConnection(self.endpoint, owned=True).connection_made(stream)  # type: ignore[arg-type]
        for segment in segments:
            self.endpoint.connections[("tcp", *addr)].data_received(segment)  # type: ignore[index]
        out, stream.written = stream.written, []
        return out

    def state(self) -> dict[str, Any]:
        tx = self.endpoint.tx
        return {
            "devices": {k: dataclasses.astuple(d) for k, d in self.registry.devices.items()},
            "dirty": sorted(self.registry._dirty),
            "stats": self.stats.as_dict(),
            "nonces": dict(self.registrar.nonces._uses),
            "transactions": [(k, d, t.response, t.size) for k, (d, t) in tx._server.items()],
            "server_bytes": tx.server_bytes,
            "lockout": repr(vars(self.registrar.auth_lockout)),
            "pending": [(d.id, m.cmd_type, m.sn) for d, m in self.registrar.pending],
            "soon": len(self.loop.soon),
        }


class Pair:
    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.clock = [100.0]
        self.fast = World(tmp / "fast", fast=True, clock=self.clock, **overrides)
        self.full = World(tmp / "full", fast=False, clock=self.clock, **overrides)

    def send_tcp(self, segments: list[bytes], addr: tuple[str, int] = SOURCE) -> list[bytes]:
        fast = self.fast.send_tcp(segments, addr)
        full = self.full.send_tcp(segments, addr)
        assert fast == full
        assert self.fast.state() == self.full.state()
        return full

    def send(self, data: bytes, addr: tuple[str, int] = SOURCE) -> list[bytes]:
        """Both answer `data` alike (checked); returns the answers."""
        fast = self.fast.send(data, addr)
        full = self.full.send(data, addr)
        assert fast == full
        assert self.fast.state() == self.full.state()
        return full


# ----- building messages ---------------------------------------------------------------------

LONG_NAMES = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact",
              "l": "Content-Length", "c": "Content-Type"}


def digest(nonce: str, *, uri: str = f"sip:{NODE_ID}@{REALM}", device: str = DEVICE,
           password: str = PASSWORD, nc: str = "00000001") -> str:
    ha1 = hashlib.md5(f"{device}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{nc}:0a4f113b:auth:{ha2}".encode()).hexdigest()
    return (f'Digest username="{device}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc={nc}')


def build(method: str, fields: list[tuple[str, str]], body: bytes = b"", *,
          eol: bytes = b"\r\n", length: bool = True) -> bytes:
    lines = [f"{method} sip:{NODE_ID}@{REALM} SIP/2.0".encode()]
    lines += [f"{name}: {value}".encode() for name, value in fields]
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return eol.join(lines) + eol + eol + body


def register_fields(*, branch: str = "z9hG4bK1001", cseq: int = 1, expires: str | None = "3600",
                    authorization: str | None = None, device: str = DEVICE,
                    call_id: str = "reg-1") -> list[tuple[str, str]]:
    fields = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:15060;rport;branch={branch}"),
        ("From", f"<sip:{device}@{REALM}>;tag=t1"),
        ("To", f"<sip:{device}@{REALM}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
        ("Contact", f"<sip:{device}@127.0.0.1:15060>"),
        ("Max-Forwards", "70"),
        ("User-Agent", "IP Camera"),
    ]
    if expires is not None:
        fields.append(("Expires", expires))
    if authorization is not None:
        fields.append(("Authorization", authorization))
    return fields


def keepalive_body(sn: int = 1, device: str = DEVICE, *, decl: str = "GB2312",
                   info: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="{decl}"?>\r\n<Notify>\r\n'
            f"<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device}</DeviceID>\r\n"
            f"<Status>OK</Status>\r\n{info}</Notify>\r\n").encode("gb18030")


def message_fields(*, branch: str = "z9hG4bK2001", device: str = DEVICE,
                   call_id: str = "ka-1") -> list[tuple[str, str]]:
    return [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:15060;rport;branch={branch}"),
        ("From", f"<sip:{device}@{REALM}>;tag=k1"),
        ("To", f"<sip:{NODE_ID}@{REALM}>"),
        ("Call-ID", call_id),
        ("CSeq", "20 MESSAGE"),
        ("Content-Type", "Application/MANSCDP+xml"),
        ("Max-Forwards", "70"),
    ]


def nonce_of(answer: bytes) -> str:
    found = re.search(rb'nonce="([0-9a-f]+)"', answer)
    assert found is not None, answer
    return found[1].decode()


def register(pair: Pair, device: str = DEVICE) -> None:
    """The whole digest exchange, checked on both sides."""
    (challenge,) = pair.send(build("REGISTER", register_fields(device=device,
                                                               call_id=f"c-{device}")))
    assert challenge.startswith(b"SIP/2.0 401 ")
    auth = digest(nonce_of(challenge), device=device)
    (ok,) = pair.send(build("REGISTER", register_fields(
        device=device, call_id=f"c-{device}", cseq=2, branch="z9hG4bK1002",
        authorization=auth)))
    assert ok.startswith(b"SIP/2.0 200 OK\r\n")


# ----- the usual exchange --------------------------------------------------------------------


def test_register_keepalive_and_retransmissions_take_the_fast_path(tmp_path):
    pair = Pair(tmp_path)
    first = build("REGISTER", register_fields())
    (challenge,) = pair.send(first)
    assert pair.send(first) == [challenge]  # a retransmission: the cached 401, no new nonce
    auth = digest(nonce_of(challenge))
    second = build("REGISTER", register_fields(cseq=2, branch="z9hG4bK1002", authorization=auth))
    (ok,) = pair.send(second)
    assert ok.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"\r\nTo: <sip:31011200001320000001@3101120000>;tag=0a1b2c3d\r\n" in ok
    assert b"\r\nExpires: 3600\r\n" in ok and b"\r\nDate: " in ok
    assert pair.send(second) == [ok]
    ka = build("MESSAGE", message_fields(), keepalive_body())
    (answer,) = pair.send(ka)
    assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    assert pair.send(ka) == [answer]
    assert pair.fast.fast_taken == 6  # every one of them, retransmissions included
    dev = pair.fast.registry.get(DEVICE)
    assert dev is not None and dev.online and dev.remote == "127.0.0.1:15060"
    assert pair.fast.stats.retransmissions_absorbed == 3


def test_replayed_authorization_changes_nothing(tmp_path):
    """The nonce-count check holds on the fast path: the same credentials under a new branch
    (a captured request sent again) are challenged, stale, and move nothing."""
    pair = Pair(tmp_path)
    (challenge,) = pair.send(build("REGISTER", register_fields()))
    auth = digest(nonce_of(challenge))
    pair.send(build("REGISTER", register_fields(cseq=2, branch="z9hG4bK1002", authorization=auth)))
    before = pair.fast.registry.get(DEVICE)
    assert before is not None
    registered = dataclasses.astuple(before)
    pair.clock[0] += 10
    (again,) = pair.send(build("REGISTER", register_fields(
        cseq=3, branch="z9hG4bK1003", authorization=auth)), ("127.0.0.1", 15060))
    assert again.startswith(b"SIP/2.0 401 ") and b"stale=true" in again
    assert dataclasses.astuple(pair.fast.registry.get(DEVICE)) == registered  # type: ignore[arg-type]
    assert pair.fast.stats.dropped["replayed_nonce"] == 1
    assert pair.fast.fast_taken == 3


def test_keepalive_from_elsewhere_or_unregistered_is_refused_alike(tmp_path):
    pair = Pair(tmp_path)
    ka = build("MESSAGE", message_fields(), keepalive_body())
    (answer,) = pair.send(ka)
    assert answer.startswith(b"SIP/2.0 403 Device Not Registered\r\n")
    register(pair)
    (answer,) = pair.send(build("MESSAGE", message_fields(branch="z9hG4bK2002"),
                                keepalive_body()), ("127.0.0.2", 15060))
    assert answer.startswith(b"SIP/2.0 403 Source Mismatch\r\n")
    assert pair.fast.fast_taken == 4


def test_what_the_fast_path_leaves_goes_the_full_way(tmp_path):
    pair = Pair(tmp_path)
    register(pair)
    taken = pair.fast.fast_taken
    # An in-dialog MESSAGE (To tag), a catalog response, a Require, folded lines, no
    # Content-Length, an upstream's ID: all answered by the full path, alike.
    tagged = message_fields(branch="z9hG4bK3001")
    tagged[2] = ("To", f"<sip:{NODE_ID}@{REALM}>;tag=x")
    pair.send(build("MESSAGE", tagged, keepalive_body()))
    catalog = b"<Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID></Response>"
    pair.send(build("MESSAGE", message_fields(branch="z9hG4bK3002"), catalog))
    pair.send(build("REGISTER", register_fields(branch="z9hG4bK3003") + [("Require", "foo")]))
    pair.send(build("REGISTER", register_fields(branch="z9hG4bK3004"), eol=b"\n"))
    pair.send(build("REGISTER", register_fields(branch="z9hG4bK3005"), length=False))
    # A line that is only a header name the recogniser has met before, with no colon.
    bare = build("REGISTER", register_fields(branch="z9hG4bK3006")).replace(
        b"\r\nUser-Agent: IP Camera\r\n", b"\r\nUser-Agent\r\n")
    assert recognise(bare) is None
    pair.send(bare)
    assert pair.fast.fast_taken == taken


def test_an_upstreams_id_is_left_to_the_cascade(tmp_path):
    upstream = {"id": "31011200002000000099", "address": "127.0.0.1:15070",
                "password": "x"}
    pair = Pair(tmp_path, upstreams=[upstream])
    pair.send(build("REGISTER", register_fields(device=upstream["id"])))
    assert pair.fast.fast_taken == 0


def test_an_exception_in_the_policy_is_answered_500_alike(tmp_path, monkeypatch):
    pair = Pair(tmp_path)
    for world in (pair.fast, pair.full):
        monkeypatch.setattr(world.registry, "full", lambda _device_id: 1 / 0)
    (answer,) = pair.send(build("REGISTER", register_fields()))
    assert answer.startswith(b"SIP/2.0 500 Server Internal Error\r\n")
    assert b";tag=" not in answer.split(b"\r\nTo: ")[1].split(b"\r\n")[0]
    assert pair.fast.fast_taken == 1


SPELLINGS = {
    "lower case": lambda name, value: (name.lower(), value),
    "upper case": lambda name, value: (name.upper(), value),
    "compact": lambda name, value: ({v: k for k, v in LONG_NAMES.items()}.get(name, name), value),
    "tabs": lambda name, value: (name + "\t", "\t" + value + "\t"),
    "spaces": lambda name, value: (name + " ", "  " + value + " "),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_exchange_in_other_spellings_takes_the_fast_path_alike(tmp_path, spelling):
    respell = SPELLINGS[spelling]
    pair = Pair(tmp_path)
    first = [respell(n, v) for n, v in register_fields() + [("X-GB-Ver", "2.0")]]
    (challenge,) = pair.send(build("REGISTER", first))
    auth = digest(nonce_of(challenge))
    second = [respell(n, v) for n, v in register_fields(
        cseq=2, branch="z9hG4bK1002", authorization=auth) + [("X-GB-Ver", "2.0")]]
    (ok,) = pair.send(build("REGISTER", second))
    assert ok.startswith(b"SIP/2.0 200 OK\r\n")
    (answer,) = pair.send(build("MESSAGE", [respell(n, v) for n, v in message_fields()],
                                keepalive_body()))
    assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    assert pair.fast.fast_taken == 3
    dev = pair.fast.registry.get(DEVICE)
    assert dev is not None and (dev.user_agent, dev.gb_version) == ("IP Camera", "2016")


async def test_over_tcp_the_exchange_takes_the_fast_path_alike(tmp_path):
    """A coroutine: the keepalive cut in two arms the connection's stall timer on the loop."""
    pair = Pair(tmp_path)
    tcp = [(n, v.replace("UDP", "TCP")) for n, v in register_fields()]
    (challenge,) = pair.send_tcp([build("REGISTER", tcp)])
    auth = digest(nonce_of(challenge))
    second = build("REGISTER", [(n, v.replace("UDP", "TCP")) for n, v in register_fields(
        cseq=2, branch="z9hG4bK1002", authorization=auth)])
    # The authorized REGISTER and two keepalives in one segment, then one cut in two.
    kas = [build("MESSAGE", message_fields(branch=f"z9hG4bK20{i}"), keepalive_body(i))
           for i in range(3)]
    answers = pair.send_tcp([second + kas[0] + b"\r\n\r\n" + kas[1]])
    assert [a[:15] for a in answers] == [b"SIP/2.0 200 OK\r"] * 2 + [b"\r\n",
                                                                    b"SIP/2.0 200 OK\r"]
    answers = pair.send_tcp([kas[2][:100], kas[2][100:]])
    assert len(answers) == 1 and answers[0].startswith(b"SIP/2.0 200 OK\r\n")
    dev = pair.fast.registry.get(DEVICE)
    assert dev is not None and dev.transport == "tcp" and dev.online
    assert pair.fast.endpoint.connections[("tcp", *SOURCE)].owned  # type: ignore[index]
    # The last keepalive came in two segments: the parser framed it, the full path took it.
    assert pair.fast.fast_taken == 4
    assert pair.fast.endpoint.tx.server_transaction_count == 0  # Timer J is zero over TCP


# ----- the corpus ----------------------------------------------------------------------------

CORPUS_NAMES = sorted(p.name for p in CORPUS.glob("*.sip")
                      if p.name.startswith(("register", "unregister", "keepalive")))


def test_the_corpus_has_registers_and_keepalives():
    assert len(CORPUS_NAMES) >= 7


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_messages_are_answered_alike(tmp_path, name):
    data = (CORPUS / name).read_bytes()
    message = parse_message(data)
    device = message.from_.uri.user or ""
    pair = Pair(tmp_path)
    pair.send(data)  # from a device unknown so far
    if len(device) == 20 and device.isdigit():
        register(pair, device)
    again = data.replace(b"branch=z9hG4bK", b"branch=z9hG4bKagain")
    pair.send(again)  # from a registered device, under a new branch
    pair.send(again)  # and retransmitted
    recognised = recognise(data)
    if name.startswith(("keepalive", "register-hikvision-ipc", "unregister")):
        assert recognised is not None  # the usual shapes do take the fast path
    if recognised is not None:
        assert recognised.key == server_key(message)
        assert recognised.device_id == device and recognised.body == message.body
    assert pair.fast.fast_taken == (3 if recognised is not None else 0) + 2 * (
        len(device) == 20)


# ----- generated messages --------------------------------------------------------------------

tokens = st.text("abcXYZ019-.!%*_+`'~", min_size=1, max_size=12)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@st.composite
def variant(draw: Any, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same request written differently: header order, name case, compact forms, spacing
    around the colon, extra headers, odd values."""
    fields = list(fields)
    out: list[tuple[str, str]] = []
    compact = {v.lower(): k for k, v in LONG_NAMES.items()}
    for name, value in fields:
        how = draw(st.sampled_from(["same", "same", "lower", "upper", "compact", "space"]))
        if how == "lower":
            name = name.lower()
        elif how == "upper":
            name = name.upper()
        elif how == "compact" and name.lower() in compact:
            name = compact[name.lower()]
        elif how == "space":
            name = name + draw(st.sampled_from([" ", "\t", "  "]))
            value = value + draw(st.sampled_from([" ", "\t", ""]))
        out.append((name, value))
    extra = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(["Allow", "Supported", "X-GB-Ver", "Subject", "X-Foo",
                                   "User-Agent", "Date", "Require", "Route", "Expires",
                                   "Max-Forwards", "Contact", "Record-Route"]), header_values),
        st.tuples(tokens, header_values),
    ), max_size=3))
    out += extra
    return draw(st.permutations(out))


odd_values = st.sampled_from([
    ("Expires", "0"), ("Expires", "59"), ("Expires", "86400"), ("Expires", "4294967296"),
    ("Expires", "00003600"), ("Max-Forwards", "256"), ("Max-Forwards", "0"),
    ("Contact", "*"), ("Contact", f"<sip:{DEVICE}@127.0.0.1:15060>;expires=60"),
    ("Contact", f'"cam" <sip:{DEVICE}@127.0.0.1>'), ("Contact", f"<sip:{DEVICE}@h:99999>"),
    ("From", f'"cam" <sip:{DEVICE}@{REALM}>;tag=t1'), ("From", f"<sip:{DEVICE}@{REALM}>"),
    ("From", f"sip:{DEVICE}@{REALM};tag=t1"), ("From", f"<sip:{DEVICE[:-1]}@{REALM}>;tag=1"),
    ("To", f"<sip:{DEVICE}@{REALM}>;tag=abc"), ("To", f"<sip:{DEVICE}@{REALM}>;TAG=abc"),
    ("Via", "SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bK"),
    ("Via", "SIP/2.0/UDP 127.0.0.1:15060;rport;branch=z9hG4bKx;branch=z9hG4bKy"),
    ("Via", "SIP/2.0/UDP 127.0.0.1:15060;rport;branch=1234"),
    ("Via", "SIP/2.0/TCP Host.Example:05060;branch=z9hG4bKcase;received=10.0.0.1"),
    ("Via", "SIP/2.0/UDP 127.0.0.1:15060;branch=z9hG4bKa, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb"),
    ("CSeq", "1  REGISTER"), ("CSeq", "2147483648 REGISTER"), ("CSeq", "1 MESSAGE"),
    ("Call-ID", "a b"), ("X-GB-Ver", "3.0"), ("User-Agent", "摄像机"),
])


@given(st.data())
def test_generated_registers_are_answered_alike(tmp_path_factory, data):
    pair = Pair(tmp_path_factory.mktemp("reg"))
    fields = register_fields(expires=data.draw(st.sampled_from(["3600", "60", "0", None])))
    replace = data.draw(st.lists(odd_values, max_size=2))
    for name, value in replace:
        fields = [(n, value if n == name else v) for n, v in fields]
        if all(n != name for n, _ in fields):
            fields.append((name, value))
    fields = data.draw(variant(fields))
    eol = data.draw(st.sampled_from([b"\r\n"] * 4 + [b"\n"]))
    message = build("REGISTER", fields, eol=eol, length=data.draw(st.booleans()))
    answers = pair.send(message)
    if answers and answers[0].startswith(b"SIP/2.0 401 "):
        # The authorized REGISTER in the same shape.
        auth = digest(nonce_of(answers[0]))
        again = [(n, v.replace("branch=z9hG4bK", "branch=z9hG4bK2") if n.lower() in ("via", "v")
                  else v.replace(" REGISTER", " REGISTER").replace("1 REGISTER", "2 REGISTER")
                  if n.lower() == "cseq" else v) for n, v in fields]
        again.append(("Authorization", auth))
        second = build("REGISTER", again, eol=eol)
        pair.send(second)
        pair.send(second)  # a retransmission
        pair.clock[0] += 1
        pair.send(build("MESSAGE", message_fields(), keepalive_body()))


@given(st.data())
def test_generated_keepalives_are_answered_alike(tmp_path_factory, data):
    pair = Pair(tmp_path_factory.mktemp("ka"))
    register(pair)
    fields = data.draw(variant(message_fields()))
    body = data.draw(st.one_of(
        st.builds(keepalive_body, st.integers(0, 10**9),
                  decl=st.sampled_from(["GB2312", "UTF-8", "GBK"]),
                  info=st.sampled_from(["", "<Info>\r\n</Info>\r\n", "<Info>在线</Info>"])),
        st.just(b"<Notify><CmdType>Keepalive</CmdType></Notify>"),
        st.just(b"<Response><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
                b"</Response>"),
        st.binary(max_size=60).map(lambda b: b"<CmdType>Keepalive</CmdType>" + b),
    ))
    eol = data.draw(st.sampled_from([b"\r\n"] * 4 + [b"\n"]))
    message = build("MESSAGE", fields, body, eol=eol)
    pair.send(message)
    pair.clock[0] += data.draw(st.sampled_from([0.0, 1.0, 200.0]))
    pair.send(message)


@given(st.binary(max_size=300), st.integers(0, 700), st.sampled_from(
    [b"REGISTER ", b"MESSAGE "]))
@example(b"", 0, b"REGISTER ")
def test_any_bytes_are_recognised_or_left_never_raising(noise, at, method):
    """Anything is either recognised (and then parses to the same request) or left alone."""
    base = bytearray(build("REGISTER", register_fields()) if method == b"REGISTER "
                     else build("MESSAGE", message_fields(), keepalive_body()))
    at = min(at, len(base))
    for data in (bytes(noise), method + bytes(noise), bytes(base[:at] + noise + base[at:]),
                 bytes(base[:at] + noise[:1] + base[at + 1:])):
        request = recognise(data)
        if request is None:
            continue
        parsed = parse_message(data)
        assert parsed.method == request.method
        assert parsed.call_id == request.call_id and parsed.body == request.body
        assert (parsed.from_.uri.user or "") == request.device_id


@given(st.binary(max_size=200), st.integers(0, 700))
def test_mutated_requests_are_answered_alike(tmp_path_factory, noise, at):
    pair = Pair(tmp_path_factory.mktemp("mut"))
    register(pair)
    for base in (build("REGISTER", register_fields(branch="z9hG4bKm1")),
                 build("MESSAGE", message_fields(branch="z9hG4bKm2"), keepalive_body())):
        at = min(at, len(base))
        pair.send(base[:at] + noise + base[at:])
        pair.send(base[:at] + noise[:1] + base[at + 1:])


# ----- the Date of a registration's 200 ----------------------------------------------------


@given(now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
       zone=st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC"]))
@example(now=1_780_000_000.9999995, zone="Asia/Shanghai")  # rounds up into the next second
@example(now=1_780_000_000.0004995, zone="UTC")
def test_the_date_worked_out_once_a_second_is_the_date_of_datetime(now: float, zone: str) -> None:
    """`gb_date` keeps the text up to the second: the same text as formatting the datetime
    of `now` afresh, at any instant and in any zone (daylight-saving ones too)."""
    tz = ZoneInfo(zone)
    settings: Any = SimpleNamespace(node=SimpleNamespace(tz=tz))
    want = format_gb_time(datetime.fromtimestamp(now, tz), millis=True)
    assert gb_date(now, settings) == want
    assert gb_date(now, settings) == want  # from the cache
