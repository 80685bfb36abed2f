"""Transaction layer on a fake clock (RFC 3261 section 17): no sockets, no asyncio."""

import pytest

from sip.errors import LocalProtocolError
from sip.message import Headers, Request, Response, parse_message
from sip.transaction import (
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
