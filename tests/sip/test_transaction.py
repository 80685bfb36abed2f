"""Transaction layer on a fake clock (RFC 3261 section 17): no sockets, no asyncio."""

import pytest

from sip.errors import LocalProtocolError
from sip.message import Headers, Request, Response, parse_message
from sip.transaction import (
    InviteState,
    Peer,
    RequestReceived,
    ResponseReceived,
    TimerValues,
    TransactionLayer,
    TransactionTimedOut,
)

DEVICE = Peer("udp", "127.0.0.1", 5070)
DEVICE_TCP = Peer("tcp", "127.0.0.1", 40000)


def make_request(method="MESSAGE", branch="z9hG4bK-1", call_id="c1", cseq=1, body=b""):
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;rport;branch={branch}")
    headers.add("From", "<sip:31011200001320000001@3101120000>;tag=a1")
    headers.add("To", "<sip:31011200002000000001@3101120000>")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} {method}")
    return Request(headers=headers, method=method, uri="sip:31011200002000000001@3101120000",
                   body=body)


def wire(message):
    """Through bytes and back, as the transport would deliver it."""
    return parse_message(bytes(message))


def test_new_request_becomes_event_and_retransmission_is_absorbed():
    layer = TransactionLayer()
    req = make_request()
    (event,) = layer.receive(wire(req), DEVICE, now=0.0)
    assert isinstance(event, RequestReceived) and event.request.method == "MESSAGE"
    # Retransmitted before we answered: absorbed, nothing sent.
    assert layer.receive(wire(req), DEVICE, now=0.5) == []
    assert layer.datagrams_to_send() == []
    layer.respond(event.key, Response.for_request(event.request, 200), DEVICE, now=0.6)
    (first,) = layer.datagrams_to_send()
    # Retransmitted after the answer: the cached response goes out again, no new event.
    assert layer.receive(wire(req), DEVICE, now=1.0) == []
    (again,) = layer.datagrams_to_send()
    assert again.data == first.data and again.peer == DEVICE
    assert layer.absorbed_retransmissions == 2


def test_server_transaction_released_after_timer_j():
    layer = TransactionLayer()
    (event,) = layer.receive(wire(make_request()), DEVICE, now=0.0)
    layer.respond(event.key, Response.for_request(event.request, 200), DEVICE, now=0.0)
    layer.expire(now=31.9)
    assert layer.server_transaction_count == 1
    layer.expire(now=32.1)  # Timer J = 64*T1
    assert layer.server_transaction_count == 0
    # The same request after Timer J is a new request again.
    assert len(layer.receive(wire(make_request()), DEVICE, now=40.0)) == 1


def test_reliable_server_transaction_ends_at_final_response():
    layer = TransactionLayer()
    (event,) = layer.receive(wire(make_request()), DEVICE_TCP, now=0.0)
    layer.respond(event.key, Response.for_request(event.request, 200), DEVICE_TCP, now=0.0)
    assert layer.server_transaction_count == 0


def test_different_branches_are_different_transactions():
    layer = TransactionLayer()
    assert len(layer.receive(wire(make_request(branch="z9hG4bKa")), DEVICE, 0.0)) == 1
    assert len(layer.receive(wire(make_request(branch="z9hG4bKb")), DEVICE, 0.0)) == 1


def test_rfc2543_request_without_magic_cookie_is_matched_by_call_id_and_cseq():
    layer = TransactionLayer()
    req = make_request(branch="oldstyle")
    assert len(layer.receive(wire(req), DEVICE, 0.0)) == 1
    assert layer.receive(wire(req), DEVICE, 0.1) == []
    assert len(layer.receive(wire(make_request(branch="oldstyle", cseq=2)), DEVICE, 0.2)) == 1


def test_client_retransmits_on_timer_e_and_times_out_on_timer_f():
    layer = TransactionLayer(TimerValues(t1=0.5, t2=4.0))
    req = make_request(branch="z9hG4bKclient")
    key = layer.request(req, DEVICE, now=0.0)
    assert len(layer.datagrams_to_send()) == 1
    sent_at = []
    now = 0.0
    events = []
    while True:
        deadline = layer.next_deadline()
        assert deadline is not None and deadline >= now
        now = deadline
        events = layer.handle_timer(now)
        if events:
            break
        sent_at.extend(now for _ in layer.datagrams_to_send())
    # T1, 2T1, 4T1, then capped at T2 = 4 s: 0.5, 1.5, 3.5, 7.5, 11.5, ... until 32 s.
    assert sent_at[:4] == [0.5, 1.5, 3.5, 7.5]
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert all(g <= 4.0 for g in gaps)
    assert now == pytest.approx(32.0)
    (timeout,) = events
    assert isinstance(timeout, TransactionTimedOut) and timeout.key == key
    assert layer.client_transaction_count == 0
    assert layer.next_deadline() is None


def test_client_over_tcp_does_not_retransmit():
    layer = TransactionLayer()
    layer.request(make_request(branch="z9hG4bKtcp"), DEVICE_TCP, now=0.0)
    layer.datagrams_to_send()
    assert layer.next_deadline() == pytest.approx(32.0)
    assert layer.handle_timer(10.0) == []
    assert layer.datagrams_to_send() == []
    (event,) = layer.handle_timer(32.0)
    assert isinstance(event, TransactionTimedOut)


def test_client_gets_final_response_once_and_absorbs_its_retransmission():
    layer = TransactionLayer()
    req = make_request(branch="z9hG4bKq1")
    key = layer.request(req, DEVICE, now=0.0)
    assert len(layer.datagrams_to_send()) == 1
    ok = Response.for_request(req, 200, to_tag="x")
    (event,) = layer.receive(wire(ok), DEVICE, now=0.1)
    assert isinstance(event, ResponseReceived) and event.final and event.key == key
    assert layer.receive(wire(ok), DEVICE, now=0.2) == []
    assert layer.stray_responses == 1
    # No more retransmissions of the request once answered.
    layer.handle_timer(1.0)
    assert layer.datagrams_to_send() == []
    layer.handle_timer(10.0)  # Timer K over
    assert layer.client_transaction_count == 0


def test_provisional_response_moves_retransmits_to_t2():
    layer = TransactionLayer()
    req = make_request(branch="z9hG4bKprov")
    layer.request(req, DEVICE, now=0.0)
    layer.datagrams_to_send()
    (event,) = layer.receive(wire(Response.for_request(req, 100)), DEVICE, now=0.1)
    assert not event.final
    layer.handle_timer(0.5)  # the Timer E already armed fires once more
    assert len(layer.datagrams_to_send()) == 1
    assert layer.next_deadline() == pytest.approx(4.5)


def test_branch_reuse_and_missing_cookie_are_local_errors():
    layer = TransactionLayer()
    layer.request(make_request(branch="z9hG4bKdup"), DEVICE, now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.request(make_request(branch="z9hG4bKdup"), DEVICE, now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.request(make_request(branch="nocookie"), DEVICE, now=0.0)


def test_server_transactions_are_bounded():
    layer = TransactionLayer(max_server_transactions=100)
    for i in range(1000):
        layer.receive(wire(make_request(branch=f"z9hG4bK{i}", call_id=f"c{i}")), DEVICE, 0.0)
    assert layer.server_transaction_count == 100


def test_invite_passes_through_without_transaction():
    layer = TransactionLayer()
    (event,) = layer.receive(wire(make_request(method="INVITE")), DEVICE, 0.0)
    assert event.key is None
    assert layer.server_transaction_count == 0


# ----- INVITE client transactions (RFC 3261 17.1.1, RFC 6026) -----


def make_invite(branch="z9hG4bKinv", route=None):
    invite = make_request(method="INVITE", branch=branch, call_id="inv1", cseq=20)
    if route is not None:
        invite.headers.add("Route", route)
    return invite


def run_until_event(layer, now=0.0):
    """Fire timers deadline after deadline; returns (retransmission times, now, events)."""
    sent_at = []
    while True:
        deadline = layer.next_deadline()
        assert deadline is not None and deadline >= now
        now = deadline
        events = layer.handle_timer(now)
        sent_at.extend(now for _ in layer.datagrams_to_send())
        if events:
            return sent_at, now, events


def test_invite_retransmits_on_timer_a_without_cap_until_timer_b():
    layer = TransactionLayer(TimerValues(t1=0.5, t2=4.0))
    invite = make_invite()
    key = layer.request(invite, DEVICE, now=0.0)
    assert key == ("z9hG4bKinv", "INVITE")
    (first,) = layer.datagrams_to_send()
    assert first.data == invite.to_bytes() and first.peer == DEVICE
    sent_at, now, events = run_until_event(layer)
    # T1 doubling with no T2 cap: gaps of 0.5, 1, 2, 4, 8, 16 s.
    assert sent_at == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == pytest.approx(32.0)  # Timer B = 64*T1
    (timeout,) = events
    assert isinstance(timeout, TransactionTimedOut) and timeout.key == key
    assert timeout.request is invite
    assert layer.client_transaction_count == 0
    assert layer.next_deadline() is None


def test_invite_provisional_stops_retransmissions():
    layer = TransactionLayer()
    invite = make_invite()
    key = layer.request(invite, DEVICE, now=0.0)
    layer.datagrams_to_send()
    (event,) = layer.receive(wire(Response.for_request(invite, 100)), DEVICE, now=0.2)
    assert isinstance(event, ResponseReceived) and not event.final and event.key == key
    assert layer.invite_state(key) is InviteState.PROCEEDING
    for now in (0.5, 1.5, 3.5, 7.5, 31.5, 32.0, 40.0):
        assert layer.handle_timer(now) == []
        assert layer.datagrams_to_send() == []
    # Timer B no longer applies once Proceeding; Timer C bounds the wait instead.
    assert layer.invite_state(key) is InviteState.PROCEEDING
    ringing = Response.for_request(invite, 180, to_tag="d1")
    (event,) = layer.receive(wire(ringing), DEVICE, now=100.0)
    assert not event.final
    assert layer.handle_timer(279.0) == []
    (timeout,) = layer.handle_timer(280.0)
    assert isinstance(timeout, TransactionTimedOut) and timeout.key == key


def test_invite_2xx_and_its_retransmissions_all_surface_until_timer_m():
    layer = TransactionLayer()
    invite = make_invite()
    key = layer.request(invite, DEVICE, now=0.0)
    layer.datagrams_to_send()
    ok = Response.for_request(invite, 200, to_tag="dev")
    (event,) = layer.receive(wire(ok), DEVICE, now=0.3)
    assert isinstance(event, ResponseReceived) and event.final and event.key == key
    assert not event.retransmission
    assert layer.invite_state(key) is InviteState.ACCEPTED
    # The transaction never ACKs a 2xx itself, and stops retransmitting the INVITE.
    layer.handle_timer(0.5)
    assert layer.datagrams_to_send() == []
    (again,) = layer.receive(wire(ok), DEVICE, now=1.0)
    assert again.final and again.key == key and again.retransmission
    assert layer.datagrams_to_send() == []
    # A 2xx from another fork (another To tag) is new, not a retransmission.
    (fork,) = layer.receive(wire(Response.for_request(invite, 200, to_tag="other")), DEVICE, 2.0)
    assert not fork.retransmission
    # Non-2xx responses in Accepted are dropped.
    assert layer.receive(wire(Response.for_request(invite, 486, to_tag="x")), DEVICE, 3.0) == []
    assert layer.handle_timer(32.2) == []
    assert layer.invite_state(key) is InviteState.ACCEPTED
    assert layer.handle_timer(32.3) == []  # Timer M = 64*T1 after the 2xx: gone, quietly
    assert layer.invite_state(key) is None
    # A 2xx after Timer M matches nothing and passes through with key None, as before.
    (late,) = layer.receive(wire(ok), DEVICE, now=40.0)
    assert late.key is None and late.final


def test_invite_non_2xx_is_acked_by_the_transaction_and_absorbed_until_timer_d():
    layer = TransactionLayer()
    invite = make_invite(route="<sip:proxy.example;lr>")
    key = layer.request(invite, DEVICE, now=0.0)
    layer.datagrams_to_send()
    busy = Response.for_request(invite, 486, to_tag="busy1")
    (event,) = layer.receive(wire(busy), DEVICE, now=0.2)
    assert isinstance(event, ResponseReceived) and event.final and event.key == key
    assert event.response.status == 486
    assert layer.invite_state(key) is InviteState.COMPLETED
    (ack_out,) = layer.datagrams_to_send()
    assert ack_out.peer == DEVICE
    ack = parse_message(ack_out.data)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.top_via.branch == "z9hG4bKinv"
    assert ack.headers.get_all("Via") == invite.headers.get_all("Via")[:1]
    assert ack.cseq == (20, "ACK")
    assert ack.call_id == invite.call_id
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.to.tag == "busy1"
    assert ack.headers.get_all("Route") == ["<sip:proxy.example;lr>"]
    assert ack.body == b""
    # The retransmitted 486 gets the very same ACK again and no second event.
    assert layer.receive(wire(busy), DEVICE, now=1.0) == []
    (again,) = layer.datagrams_to_send()
    assert again.data == ack_out.data
    # No INVITE retransmissions in Completed.
    layer.handle_timer(1.5)
    assert layer.datagrams_to_send() == []
    # Timer D: 32 s on UDP.
    assert layer.next_deadline() is not None
    assert layer.handle_timer(32.1) == []
    assert layer.invite_state(key) is InviteState.COMPLETED
    assert layer.handle_timer(32.2) == []
    assert layer.invite_state(key) is None
    assert layer.client_transaction_count == 0


def test_invite_over_tcp_does_not_retransmit_and_times_out_on_timer_b():
    layer = TransactionLayer()
    layer.request(make_invite(), DEVICE_TCP, now=0.0)
    assert len(layer.datagrams_to_send()) == 1
    assert layer.next_deadline() == pytest.approx(32.0)
    assert layer.handle_timer(16.0) == []
    assert layer.datagrams_to_send() == []
    (event,) = layer.handle_timer(32.0)
    assert isinstance(event, TransactionTimedOut)


def test_invite_non_2xx_over_tcp_is_acked_and_done_at_once():
    layer = TransactionLayer()
    invite = make_invite()
    key = layer.request(invite, DEVICE_TCP, now=0.0)
    layer.datagrams_to_send()
    (event,) = layer.receive(wire(Response.for_request(invite, 488, to_tag="n")), DEVICE_TCP, 0.1)
    assert event.final and event.key == key
    (ack_out,) = layer.datagrams_to_send()
    assert parse_message(ack_out.data).method == "ACK" and ack_out.peer == DEVICE_TCP
    assert layer.invite_state(key) is None  # Timer D is zero on reliable transports


def test_invite_2xx_without_to_tag_retransmission_is_recognised():
    layer = TransactionLayer()
    invite = make_invite()
    layer.request(invite, DEVICE, now=0.0)
    ok = Response.for_request(invite, 200)  # no To tag, as some devices send
    (first,) = layer.receive(wire(ok), DEVICE, now=0.1)
    (second,) = layer.receive(wire(ok), DEVICE, now=0.6)
    assert not first.retransmission and second.retransmission


def test_invite_response_matching_no_transaction_passes_through():
    layer = TransactionLayer()
    invite = make_invite(branch="z9hG4bKnotours")
    (event,) = layer.receive(wire(Response.for_request(invite, 180)), DEVICE, now=0.0)
    assert event.key is None and not event.final
    (event,) = layer.receive(wire(Response.for_request(invite, 200, to_tag="t")), DEVICE, 0.1)
    assert event.key is None and event.final and not event.retransmission
    assert layer.stray_responses == 0


def test_ack_cannot_start_a_transaction():
    layer = TransactionLayer()
    with pytest.raises(LocalProtocolError):
        layer.request(make_request(method="ACK", branch="z9hG4bKack"), DEVICE, now=0.0)


def test_many_provisional_responses_do_not_grow_the_timer_heap():
    layer = TransactionLayer()
    invite = make_invite()
    layer.request(invite, DEVICE, now=0.0)
    for i in range(1000):
        layer.receive(wire(Response.for_request(invite, 180, to_tag="r")), DEVICE, 0.1 + i / 1e4)
    assert len(layer._timers) <= 2
