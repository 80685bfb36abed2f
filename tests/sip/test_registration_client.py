"""The registration of this node to an upper platform (`sip.registration`), on a fake clock.

Every request the machine builds goes through bytes and the real parser, and is answered with
real Responses, the way the upstream's registrar would.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.auth import build_challenge, parse_digest, verify
from sip.errors import LocalProtocolError
from sip.manscdp import parse_manscdp
from sip.message import Request, Response, parse_message
from sip.registration import (
    KeepaliveMissed,
    Registered,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationLost,
    RegistrationState,
    Unregistered,
    UpstreamConfig,
    UpstreamRegistration,
)

UPSTREAM = "31011200002000000100"
LOCAL = "31011200002000000001"
PASSWORD = "12345678"

CONFIG = UpstreamConfig(
    upstream_id=UPSTREAM,
    realm="3101120000",
    host="127.0.0.1",
    port=15060,
    local_id=LOCAL,
    contact_host="127.0.0.1",
    contact_port=5060,
    password=PASSWORD,
    register_expires_s=3600,
    keepalive_s=60,
)


def make(config: UpstreamConfig = CONFIG, jitter: float = 0.5) -> UpstreamRegistration:
    """A machine with fixed randomness: `jitter` 0.5 is no jitter at all."""
    counter = itertools.count()
    return UpstreamRegistration(
        config, random=lambda: jitter, token=lambda: f"{next(counter):016x}"
    )


def sent(reg: UpstreamRegistration) -> list[Request]:
    """Drain the requests, through bytes and the parser."""
    out = []
    for request in reg.requests_to_send():
        parsed = parse_message(request.to_bytes())
        assert isinstance(parsed, Request)
        out.append(parsed)
    return out


def one(reg: UpstreamRegistration, method: str = "REGISTER") -> Request:
    requests = sent(reg)
    assert [r.method for r in requests] == [method], requests
    return requests[0]


def events(reg: UpstreamRegistration) -> list[RegistrationEvent]:
    out = []
    while (event := reg.next_event()) is not None:
        out.append(event)
    return out


def answer(request: Request, status: int, reason: str | None = None, **headers: str) -> Response:
    response = Response.for_request(request, status, reason, to_tag="up1")
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


def challenge(nonce: str = "n1", *, qop: bool = True, stale: bool = False) -> str:
    return build_challenge(CONFIG.realm, nonce, qop=qop, stale=stale)


def credentials(request: Request, header: str = "Authorization") -> dict[str, str]:
    value = request.headers.get(header)
    assert value is not None, f"no {header} in {request!r}"
    return parse_digest(value)


def register(reg: UpstreamRegistration, now: float = 0.0, expires: str = "3600") -> Request:
    """Start (or continue) and get through the 401 to a 200; returns the accepted REGISTER."""
    if reg.state is RegistrationState.UNREGISTERED:
        reg.start(now)
    first = one(reg)
    reg.response_received(answer(first, 401, WWW_Authenticate=challenge()), now)
    second = one(reg)
    reg.response_received(answer(second, 200, Expires=expires), now)
    assert reg.state is RegistrationState.REGISTERED
    return second


def run_until(reg: UpstreamRegistration, now: float, until: float) -> float:
    """Step the clock to each deadline up to `until`, answering nothing."""
    while (deadline := reg.next_deadline()) is not None and deadline <= until:
        now = max(now, deadline)
        reg.handle_timer(now)
    return now


# -- the first registration ---------------------------------------------------------------------


def test_first_register_has_no_credentials_and_the_gb_shape() -> None:
    reg = make()
    reg.start(0.0)
    request = one(reg)
    assert request.uri == f"sip:{UPSTREAM}@127.0.0.1:15060"
    assert request.from_.uri.user == LOCAL and request.from_.tag
    assert request.to.uri.user == LOCAL and request.to.tag is None
    assert str(request.contacts[0].uri) == f"sip:{LOCAL}@127.0.0.1:5060"
    assert request.expires == 3600
    assert request.cseq == (1, "REGISTER")
    assert request.top_via.transport == "UDP"
    assert (request.top_via.branch or "").startswith("z9hG4bK")
    assert "Authorization" not in request.headers
    assert reg.state is RegistrationState.REGISTERING
    assert reg.next_deadline() == CONFIG.request_timeout_s


@pytest.mark.parametrize("qop", [True, False])
def test_401_is_answered_with_credentials_that_verify(qop: bool) -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    reg.response_received(answer(first, 401, WWW_Authenticate=challenge(qop=qop)), 0.1)
    second = one(reg)
    assert second.call_id == first.call_id
    assert second.from_.tag == first.from_.tag
    assert second.cseq == (2, "REGISTER")
    creds = credentials(second)
    assert creds["username"] == LOCAL
    assert creds["uri"] == second.uri
    assert ("qop" in creds) is qop
    if qop:
        assert creds["nc"] == "00000001" and creds["cnonce"]
    assert verify(creds, method="REGISTER", password=PASSWORD)
    assert not verify(creds, method="REGISTER", password="wrong")
    reg.response_received(answer(second, 200, Expires="3600"), 0.2)
    assert events(reg) == [Registered(until=3600.2)]
    snap = reg.snapshot()
    assert (snap.state, snap.since, snap.last_error, snap.registered_until) == (
        "registered",
        0.2,
        None,
        3600.2,
    )


def test_407_is_answered_with_proxy_authorization() -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    reg.response_received(answer(first, 407, Proxy_Authenticate=challenge("p1")), 0.0)
    second = one(reg)
    assert "Authorization" not in second.headers
    creds = credentials(second, "Proxy-Authorization")
    assert creds["nonce"] == "p1"
    assert verify(creds, method="REGISTER", password=PASSWORD)
    reg.response_received(answer(second, 200), 0.0)
    assert reg.state is RegistrationState.REGISTERED


def test_stale_nonce_is_retried_at_once_without_a_failure() -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    reg.response_received(answer(first, 401, WWW_Authenticate=challenge("n1")), 0.0)
    second = one(reg)
    reg.response_received(answer(second, 401, WWW_Authenticate=challenge("n2", stale=True)), 0.0)
    third = one(reg)
    creds = credentials(third)
    assert creds["nonce"] == "n2" and creds["nc"] == "00000001"
    assert verify(creds, method="REGISTER", password=PASSWORD)
    assert events(reg) == []
    assert reg.state is RegistrationState.REGISTERING
    reg.response_received(answer(third, 200), 0.0)
    assert reg.state is RegistrationState.REGISTERED


def test_wrong_password_fails_and_backs_off_2_4_8_to_60() -> None:
    reg = make(jitter=0.5)
    now = 0.0
    reg.start(now)
    delays = []
    for _ in range(8):
        first = one(reg)
        reg.response_received(answer(first, 401, WWW_Authenticate=challenge("n1")), now)
        second = one(reg)
        reg.response_received(answer(second, 401, WWW_Authenticate=challenge("n1")), now)
        (event,) = events(reg)
        assert isinstance(event, RegistrationFailed)
        assert "credentials refused" in event.reason
        assert reg.state is RegistrationState.BACKOFF
        assert reg.next_deadline() == event.retry_at
        delays.append(event.retry_at - now)
        now = event.retry_at
        reg.handle_timer(now)
        assert reg.state is RegistrationState.REGISTERING
    assert delays == pytest.approx([2, 4, 8, 16, 32, 60, 60, 60])
    assert reg.snapshot().last_error is not None


@pytest.mark.parametrize("jitter", [0.0, 0.999999])
def test_backoff_jitter_stays_within_20_percent(jitter: float) -> None:
    reg = make(jitter=jitter)
    now = 0.0
    reg.start(now)
    for expected in [2, 4, 8, 16, 32, 60, 60]:
        reg.request_timed_out(one(reg), now)
        (event,) = events(reg)
        assert isinstance(event, RegistrationFailed)
        delay = event.retry_at - now
        assert expected * 0.8 - 1e-6 <= delay <= expected * 1.2 + 1e-6
        now = event.retry_at
        reg.handle_timer(now)


def test_403_fails_with_its_reason_and_retries_at_the_slow_end() -> None:
    reg = make()
    reg.start(0.0)
    reg.response_received(answer(one(reg), 403, "Device Not Allowed"), 1.0)
    (event,) = events(reg)
    assert event == RegistrationFailed(reason="403 Device Not Allowed", retry_at=61.0)
    assert reg.state is RegistrationState.FAILED
    assert reg.snapshot().last_error == "403 Device Not Allowed"
    reg.handle_timer(60.9)
    assert sent(reg) == []
    reg.handle_timer(61.0)
    assert one(reg).method == "REGISTER"
    assert reg.state is RegistrationState.REGISTERING


def test_an_unanswered_register_times_out_on_its_own_guard() -> None:
    reg = make()
    reg.start(0.0)
    one(reg)
    now = run_until(reg, 0.0, CONFIG.request_timeout_s)
    assert now == CONFIG.request_timeout_s
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.reason == "REGISTER timed out"
    assert event.retry_at == pytest.approx(now + 2)


# -- refresh and keepalive ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "granted"),
    [
        ({"Expires": "900"}, 900),
        ({"Contact": f"<sip:{LOCAL}@127.0.0.1:5060>;expires=600"}, 600),
        ({}, 3600),
    ],
)
def test_refresh_at_two_thirds_of_the_granted_expiry(headers: dict[str, str], granted: int) -> None:
    config = UpstreamConfig(**{**CONFIG.__dict__, "keepalive_s": 10_000})
    reg = make(config)
    reg.start(0.0)
    first = one(reg)
    reg.response_received(answer(first, 401, WWW_Authenticate=challenge()), 0.0)
    accepted = one(reg)
    response = answer(accepted, 200)
    for name, value in headers.items():
        response.headers.add(name, value)
    reg.response_received(response, 0.0)
    assert events(reg) == [Registered(until=granted)]
    assert reg.next_deadline() == pytest.approx(granted * 2 / 3)
    reg.handle_timer(granted * 2 / 3)
    refresh = one(reg)
    assert refresh.call_id == accepted.call_id
    assert refresh.from_.tag == accepted.from_.tag
    assert refresh.cseq == (3, "REGISTER")
    creds = credentials(refresh)
    assert creds["nonce"] == "n1" and creds["nc"] == "00000002"
    assert verify(creds, method="REGISTER", password=PASSWORD)
    reg.response_received(answer(refresh, 200, Expires=str(granted)), granted * 2 / 3)
    (event,) = events(reg)
    assert isinstance(event, Registered) and event.until == pytest.approx(granted * 5 / 3)


def test_keepalive_every_interval_with_increasing_sn() -> None:
    reg = make()
    register(reg)
    sns = []
    for k in range(1, 4):
        assert reg.next_deadline() == 60 * k
        reg.handle_timer(60.0 * k)
        message = one(reg, "MESSAGE")
        assert message.content_type == "application/manscdp+xml"
        assert message.to.uri.user == UPSTREAM and message.from_.uri.user == LOCAL
        body = parse_manscdp(message.body)
        assert (body.root, body.cmd_type, body.device_id) == ("Notify", "Keepalive", LOCAL)
        sns.append(body.sn)
        reg.response_received(answer(message, 200), 60.0 * k + 0.1)
    assert sns == [1, 2, 3]
    assert events(reg) == [Registered(until=3600)]


def test_three_missed_keepalives_re_register_at_once() -> None:
    reg = make()
    accepted = register(reg)
    events(reg)
    now = 0.0
    for k in range(1, 4):
        now = 60.0 * k
        reg.handle_timer(now)
        reg.request_timed_out(one(reg, "MESSAGE"), now + 1)
    assert events(reg) == [
        KeepaliveMissed(1),
        KeepaliveMissed(2),
        KeepaliveMissed(3),
        RegistrationLost("3 keepalives unanswered"),
    ]
    fresh = one(reg)
    assert fresh.call_id != accepted.call_id
    assert "Authorization" not in fresh.headers
    assert reg.state is RegistrationState.REGISTERING


def test_an_answered_keepalive_resets_the_miss_count() -> None:
    reg = make()
    register(reg)
    events(reg)
    for k, answered in enumerate([False, False, True, False, False], start=1):
        reg.handle_timer(60.0 * k)
        message = one(reg, "MESSAGE")
        if answered:
            reg.response_received(answer(message, 200), 60.0 * k)
        else:
            reg.request_timed_out(message, 60.0 * k)
    assert reg.state is RegistrationState.REGISTERED
    assert events(reg) == [KeepaliveMissed(1), KeepaliveMissed(2)] * 2


def test_keepalive_refused_re_registers_at_once() -> None:
    reg = make()
    register(reg)
    events(reg)
    reg.handle_timer(60.0)
    reg.response_received(answer(one(reg, "MESSAGE"), 403), 60.5)
    assert events(reg) == [RegistrationLost("keepalive answered 403 Forbidden")]
    assert one(reg).method == "REGISTER"
    assert reg.snapshot().state == "registering"


def test_a_failed_refresh_backs_off() -> None:
    config = UpstreamConfig(**{**CONFIG.__dict__, "keepalive_s": 10_000})
    reg = make(config)
    register(reg)
    events(reg)
    reg.handle_timer(2400.0)
    reg.response_received(answer(one(reg), 500), 2400.0)
    (event,) = events(reg)
    assert event == RegistrationFailed("500 Server Internal Error", 2402.0)
    assert reg.state is RegistrationState.BACKOFF
    assert reg.snapshot().registered_until is None


def test_a_registration_that_expires_unrefreshed_is_lost() -> None:
    config = UpstreamConfig(**{**CONFIG.__dict__, "keepalive_s": 10_000})
    reg = make(config)
    accepted = register(reg, expires="30")
    events(reg)
    reg.handle_timer(20.0)
    one(reg)  # the refresh, never answered
    run_until(reg, 20.0, 30.0)
    assert events(reg) == [RegistrationLost("registration expired without a refresh")]
    fresh = one(reg)
    assert fresh.call_id != accepted.call_id
    assert reg.snapshot().state == "registering"


def test_late_and_foreign_responses_are_ignored() -> None:
    reg = make()
    reg.start(0.0)
    first = one(reg)
    reg.request_timed_out(first, 1.0)
    events(reg)
    reg.response_received(answer(first, 200), 1.5)  # too late: the attempt already failed
    assert reg.state is RegistrationState.BACKOFF
    assert events(reg) == []
    other = Request(headers=first.headers.copy(), method="REGISTER", uri=first.uri)
    other.headers.set("Call-ID", "someone-else")
    reg.response_received(answer(other, 200), 1.6)
    assert events(reg) == []


# -- stop ---------------------------------------------------------------------------------------


def test_stop_unregisters_with_expires_0_and_credentials() -> None:
    reg = make()
    accepted = register(reg)
    reg.stop(100.0)
    bye = one(reg)
    assert bye.expires == 0
    assert bye.call_id == accepted.call_id
    assert verify(credentials(bye), method="REGISTER", password=PASSWORD)
    assert reg.state is RegistrationState.STOPPING
    reg.response_received(answer(bye, 200, Expires="0"), 100.1)
    assert reg.state is RegistrationState.STOPPED
    assert reg.next_deadline() is None
    assert events(reg)[-1] == Unregistered(confirmed=True)
    reg.handle_timer(10_000.0)
    assert sent(reg) == []


def test_stop_answers_a_fresh_challenge_then_gives_up_on_timeout() -> None:
    reg = make()
    register(reg)
    reg.stop(100.0)
    bye = one(reg)
    reg.response_received(answer(bye, 401, WWW_Authenticate=challenge("n9", stale=True)), 100.0)
    again = one(reg)
    assert again.expires == 0 and credentials(again)["nonce"] == "n9"
    run_until(reg, 100.0, 1000.0)
    assert reg.state is RegistrationState.STOPPED
    assert events(reg)[-1] == Unregistered(confirmed=False)


def test_stop_while_backing_off_sends_nothing() -> None:
    reg = make()
    reg.start(0.0)
    reg.response_received(answer(one(reg), 403), 0.0)
    reg.stop(1.0)
    assert sent(reg) == []
    assert reg.state is RegistrationState.STOPPED
    assert reg.next_deadline() is None


def test_misuse_raises_local_protocol_error() -> None:
    reg = make()
    reg.start(0.0)
    with pytest.raises(LocalProtocolError):
        reg.start(1.0)
    with pytest.raises(LocalProtocolError):
        UpstreamConfig(**{**CONFIG.__dict__, "transport": "sctp"})


# -- anything the upstream does -----------------------------------------------------------------

_STATUSES = [100, 200, 200, 200, 202, 401, 401, 403, 404, 407, 408, 423, 481, 500, 503]
_CHALLENGES = [
    challenge("n1"),
    challenge("n1", stale=True),
    challenge("n2", qop=False),
    "Digest realm=x",
    'Digest realm="r",nonce="z",algorithm=SHA-512',
    "Basic realm=x",
    "",
]
_answer = st.tuples(
    st.just("answer"),
    st.sampled_from(_STATUSES),
    st.sampled_from(_CHALLENGES),
    st.sampled_from([None, "0", "1", "60", "junk"]),
)
_timer = st.tuples(st.just("timer"), st.booleans(), st.floats(0, 200))
_actions = st.one_of(
    _answer,
    _answer,
    _answer,
    _timer,
    _timer,
    st.tuples(st.just("timeout"), st.integers(0, 3)),
    # stop ends the interesting part, so it comes rarely
    st.integers(0, 9).map(lambda i: ("stop",) if i == 0 else ("timer", True, 0.0)),
)


@settings(max_examples=300, deadline=None)
@given(actions=st.lists(_actions, max_size=40), jitter=st.floats(0, 0.999))
def test_any_sequence_keeps_the_machine_defined(
    actions: list[tuple[object, ...]], jitter: float
) -> None:
    reg = make(jitter=jitter)
    now = 0.0
    reg.start(now)
    outstanding: list[Request] = []
    last_cseq, tag = 0, None
    for action in actions:
        for request in sent(reg):
            if request.method == "REGISTER":
                assert request.cseq[0] > last_cseq or request.from_.tag != tag
                last_cseq, tag = request.cseq[0], request.from_.tag
            outstanding.append(request)
        match action:
            case ("answer", int(status), str(auth), expires):
                if outstanding:
                    request = outstanding.pop(0)
                    headers = {"WWW_Authenticate": auth, "Proxy_Authenticate": auth}
                    if expires is not None:
                        headers["Expires"] = str(expires)
                    response = Response.for_request(request, status, to_tag="t")
                    for name, value in headers.items():
                        response.headers.add(name.replace("_", "-"), value)
                    reg.response_received(response, now)
            case ("timeout", int(index)):
                if outstanding:
                    reg.request_timed_out(outstanding.pop(index % len(outstanding)), now)
            case ("timer", bool(to_deadline), float(step)):
                deadline = reg.next_deadline()
                if to_deadline and deadline is not None:
                    now = max(now, deadline)
                else:
                    now += step
                reg.handle_timer(now)
            case ("stop",):
                reg.stop(now)
        events(reg)
        state = reg.state
        deadline = reg.next_deadline()
        if state is RegistrationState.STOPPED:
            assert deadline is None
        else:
            assert deadline is not None
        if state is RegistrationState.REGISTERED:
            assert reg.snapshot().registered_until is not None
