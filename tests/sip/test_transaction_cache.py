"""The server transaction cache is bounded by bytes (`max_server_bytes`), not by a count, and
the default bound keeps Timer J at 15,000 REGISTER transactions per second."""

from __future__ import annotations

import sys
import tracemalloc

from sip import auth
from sip.message import Headers, Request, Response, parse_message
from sip.transaction import (
    DEFAULT_MAX_SERVER_BYTES,
    SERVER_ENTRY_OVERHEAD,
    Peer,
    TimerValues,
    TransactionLayer,
    server_key,
)

DEVICE = Peer("udp", "192.168.1.64", 5060)
DEVICE_TCP = Peer("tcp", "192.168.1.64", 40000)
GOAL_RATE = 15_000  # REGISTER transactions per second


def register(n: int, cseq: int = 1) -> Request:
    device = f"3101120000132{n:07d}"
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 192.168.{n // 250 % 250}.{n % 250}:5060;rport;"
                       f"branch=z9hG4bK{n:010d}{cseq}")
    headers.add("From", f"<sip:{device}@3101120000>;tag={n:09d}")
    headers.add("To", f"<sip:{device}@3101120000>")
    headers.add("Call-ID", f"{n:09d}")
    headers.add("CSeq", f"{cseq} REGISTER")
    headers.add("Contact", f"<sip:{device}@192.168.{n // 250 % 250}.{n % 250}:5060>")
    headers.add("Max-Forwards", "70")
    headers.add("User-Agent", "IP Camera")
    headers.add("Expires", "3600")
    return parse_message(bytes(Request(headers=headers, method="REGISTER",
                                       uri="sip:31011200002000000001@3101120000")))  # type: ignore[return-value]


def challenge(request: Request) -> Response:
    response = Response.for_request(request, 401, to_tag="0a1b2c3d")
    nonce = auth.NonceFactory(b"k" * 16).make(1.0, "192.168.1.64/31011200001320000001")
    response.headers.add("WWW-Authenticate", auth.build_challenge("3101120000", nonce))
    return response


def accepted(request: Request) -> Response:
    response = Response.for_request(request, 200, to_tag="0a1b2c3d")
    response.headers.add("Contact", request.headers.get("Contact") or "")
    response.headers.add("Expires", "3600")
    response.headers.add("Date", "2026-12-06T20:00:00.000")
    response.headers.add("X-GB-Ver", "3.0")
    return response


def answer(layer: TransactionLayer, request: Request, now: float, peer: Peer = DEVICE) -> bytes:
    (event,) = layer.receive(request, peer, now)
    response = accepted(request) if request.cseq[0] % 2 == 0 else challenge(request)
    layer.respond(event.key, response, peer, now)
    (out,) = layer.datagrams_to_send()
    return out.data


def test_the_cache_holds_what_its_bytes_allow_and_drops_the_oldest():
    size = SERVER_ENTRY_OVERHEAD + 1000  # room for about a thousand bytes per entry
    layer = TransactionLayer(max_server_bytes=100 * size)
    sent = [answer(layer, register(n), now=n / 1000) for n in range(1000)]
    assert layer.server_bytes <= layer.max_server_bytes
    kept = layer.server_transaction_count
    assert 100 < kept < 1000  # a 401 is far under a thousand bytes
    assert layer.server_evictions == 1000 - kept
    # The newest are kept and answer their retransmissions from the cache ...
    assert layer.receive(register(999), DEVICE, now=1.0) == []
    (again,) = layer.datagrams_to_send()
    assert again.data == sent[999]
    # ... the oldest went first: a retransmission of one is a new transaction again.
    (event,) = layer.receive(register(0), DEVICE, now=1.0)
    assert event.key == server_key(register(0))


def test_the_accounted_bytes_follow_every_change():
    layer = TransactionLayer()
    (event,) = layer.receive(register(1), DEVICE, 0.0)
    pending = layer.server_bytes
    assert pending == SERVER_ENTRY_OVERHEAD + len(event.key[0]) + len(event.key[1])
    layer.respond(event.key, Response.for_request(event.request, 100), DEVICE, 0.0)
    layer.respond(event.key, challenge(event.request), DEVICE, 0.0)
    (_, final) = layer.datagrams_to_send()
    assert layer.server_bytes == pending + len(final.data)
    layer.expire(64 * 0.5 + 1)  # Timer J
    assert (layer.server_transaction_count, layer.server_bytes) == (0, 0)
    # Over TCP, the transaction ends with its final response (Timer J is zero).
    (event,) = layer.receive(register(2), DEVICE_TCP, 0.0)
    layer.respond(event.key, challenge(event.request), DEVICE_TCP, 0.0)
    assert (layer.server_transaction_count, layer.server_bytes) == (0, 0)


def test_the_accounted_size_is_what_an_entry_holds_in_memory():
    """SERVER_ENTRY_OVERHEAD is the memory an entry takes besides its key's characters and its
    response's bytes: within a tenth of what tracemalloc sees."""
    layer = TransactionLayer()
    requests = [register(n) for n in range(2000)]
    keys = [server_key(r) for r in requests]
    responses = [challenge(r).to_bytes() for r in requests]
    keys_copy = [(str(k[0]) + "", str(k[1]) + "", k[2]) for k in keys]
    del keys
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, data in zip(keys_copy, responses, strict=True):
            layer.receive_key(key, DEVICE, 0.0)
            layer.respond_bytes(key, 401, data, DEVICE, 0.0)
        structures = (tracemalloc.get_traced_memory()[0] - before) / len(responses)
    finally:
        tracemalloc.stop()
    # What a node allocates per request besides: the key tuple, its strings, the response.
    key = keys_copy[0]
    held = (structures + sys.getsizeof(key) + sys.getsizeof(key[0]) + sys.getsizeof(key[1])
            + sys.getsizeof(responses[0]))
    accounted = layer.server_bytes / len(responses)
    assert abs(accounted - held) < held / 10, (accounted, held)


def test_the_default_bound_keeps_timer_j_at_the_goal_rate():
    """15,000 REGISTER transactions a second, each retransmitted just before Timer J ends,
    all answered from the cache, with nothing evicted. Run on a clock 100 times faster (T1 of
    5 ms, so Timer J is 0.32 s) with a bound 100 times smaller, which is the same arithmetic
    on 4,800 transactions instead of 480,000."""
    scale = 100
    timers = TimerValues(t1=0.5 / scale)
    timer_j = 64 * timers.t1
    layer = TransactionLayer(timers, max_server_bytes=DEFAULT_MAX_SERVER_BYTES // scale)
    rate = GOAL_RATE  # transactions per second of the fast clock
    total = int(rate * timer_j * 1.5)
    sent: dict[int, bytes] = {}
    for n in range(total):
        now = n / rate
        # Alternately the first REGISTER (401) and the authorized one (200), as in the field.
        sent[n] = answer(layer, register(n, cseq=1 + n % 2), now)
        late = n - int(rate * timer_j * 0.99)  # sent 99 % of Timer J ago
        if late >= 0:
            assert layer.receive(register(late, cseq=1 + late % 2), DEVICE, now) == []
            (again,) = layer.datagrams_to_send()
            assert again.data == sent.pop(late)
    assert layer.server_evictions == 0
    assert layer.server_bytes <= layer.max_server_bytes
