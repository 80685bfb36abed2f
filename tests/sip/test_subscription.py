"""Catalog subscriptions of upper platforms (RFC 6665; GB/T 28181 2016 App. P, 2022 App. N),
with a fake clock: creation, refresh, unsubscribe, expiry, limits and NOTIFY requests."""

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sip.catalog import OFF, CatalogEvent, catalog_notify_parts, catalog_subscription
from sip.errors import LocalProtocolError, ParseError
from sip.manscdp import parse_manscdp
from sip.message import Headers, Request, Response, parse_message
from sip.subscription import (
    MANSCDP_CONTENT_TYPE,
    SubscribeOutcome,
    Subscription,
    SubscriptionConfig,
    SubscriptionTable,
    parse_event,
)

NODE = "31011200002000000001"
UPSTREAM = "31011200002000000100"
OTHER = "31011200002000000200"
CONTACT = f"<sip:{NODE}@10.0.0.2:5060>"
VIA = "SIP/2.0/UDP 10.0.0.2:5060;rport;branch=z9hG4bKn"
BODY = (
    b'<?xml version="1.0" encoding="GB2312"?>\r\n<Query><CmdType>Catalog</CmdType><SN>303</SN>'
    b"<DeviceID>" + NODE.encode() + b"</DeviceID></Query>"
)


def subscribe(
    *,
    call_id: str = "sub-1",
    seq: int = 1,
    expires: str | None = "600",
    event: str | None = "Catalog;id=4021",
    upstream: str = UPSTREAM,
    to_tag: str | None = None,
) -> Request:
    """An upstream's SUBSCRIBE, as the 2022 example in the protocol reference writes it."""
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 10.1.0.5:5060;branch=z9hG4bK{call_id}{seq}")
    headers.add("From", f"<sip:{upstream}@3101120000>;tag=s-{call_id}")
    to = f"<sip:{NODE}@3101120000>"
    headers.add("To", to if to_tag is None else f"{to};tag={to_tag}")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{seq} SUBSCRIBE")
    if event is not None:
        headers.add("Event", event)
    if expires is not None:
        headers.add("Expires", expires)
    headers.add("Contact", f"<sip:{upstream}@10.1.0.5:5060>")
    headers.add("Content-Type", "Application/MANSCDP+xml")
    # Through the wire format, as the transport hands requests over.
    message = parse_message(
        Request(
            headers=headers, method="SUBSCRIBE", uri=f"sip:{NODE}@10.0.0.2", body=BODY
        ).to_bytes()
    )
    assert isinstance(message, Request)
    return message


def table(**config: int) -> SubscriptionTable:
    return SubscriptionTable(NODE, SubscriptionConfig(**config), contact=CONTACT)


def created(
    t: SubscriptionTable, now: float, **kwargs: str
) -> tuple[SubscribeOutcome, Subscription]:
    outcome = t.receive(UPSTREAM, subscribe(**kwargs), now, to_tag=f"n{len(t)}")
    assert outcome.kind == "created" and outcome.status == 200
    assert outcome.subscription is not None
    return outcome, outcome.subscription


def refresh(sub: Subscription, seq: int, expires: str | None) -> Request:
    return subscribe(
        call_id=sub.dialog.call_id, seq=seq, expires=expires, to_tag=sub.dialog.local_tag
    )


def test_parse_event() -> None:
    assert parse_event("Catalog;id=4021") == ("Catalog", "4021")
    assert parse_event(" presence ") == ("presence", None)
    assert parse_event("Catalog ; ID = 7 ;x=1") == ("Catalog", "7")
    bad_values = ("", ";id=1", "Catalog;id=", "Catalog;id", "a b", "Catalog;id=a b", "Cat\x00")
    for bad in (*bad_values, "Catalog;id=" + "1" * 65):
        with pytest.raises(ParseError):
            parse_event(bad)


def test_create_answers_200_with_expires_tag_and_contact() -> None:
    t = table()
    request = subscribe()
    outcome = t.receive(UPSTREAM, request, 100.0, to_tag="node1")
    assert (outcome.kind, outcome.status, outcome.expires) == ("created", 200, 600)
    response = parse_message(outcome.response(request).to_bytes())
    assert isinstance(response, Response)
    assert (response.status, response.expires, response.to.tag) == (200, 600, "node1")
    assert response.headers.get("Contact") == CONTACT
    assert response.cseq == (1, "SUBSCRIBE") and response.call_id == "sub-1"
    sub = outcome.subscription
    assert sub is not None and t.of(UPSTREAM) == [sub] and len(t) == 1
    assert (sub.event, sub.remaining(100.0), sub.expires_at) == ("Catalog;id=4021", 600, 700.0)
    assert t.next_deadline() == 700.0
    # The body is the caller's to check; sip.catalog reads it.
    body = parse_manscdp(request.body)
    assert catalog_subscription(body) is not None


@pytest.mark.parametrize(
    ("asked", "granted"), [(None, 3600), ("5", 30), ("90", 90), ("999999", 86400)]
)
def test_expires_is_clamped(asked: str | None, granted: int) -> None:
    outcome, sub = created(table(), 0.0, expires=asked)
    assert outcome.expires == granted and sub.expires_at == granted


def test_refresh_in_dialog_extends_expiry() -> None:
    t = table()
    _, sub = created(t, 0.0, expires="90")
    request = refresh(sub, 2, "120")
    assert t.find(request) is sub
    outcome = t.receive(UPSTREAM, request, 60.0, to_tag="unused")
    assert (outcome.kind, outcome.status, outcome.expires) == ("refreshed", 200, 120)
    assert outcome.subscription is sub and sub.expires_at == 180.0
    response = outcome.response(request)
    assert response.to.tag == sub.dialog.local_tag and response.expires == 120
    assert t.expire(179.9) == [] and t.expire(180.0) == [sub] and len(t) == 0


def test_refresh_out_of_order_or_unknown() -> None:
    t = table()
    _, sub = created(t, 0.0)
    assert t.receive(UPSTREAM, refresh(sub, 5, "600"), 1.0, to_tag="x").kind == "refreshed"
    stale = t.receive(UPSTREAM, refresh(sub, 4, "600"), 2.0, to_tag="x")
    assert (stale.kind, stale.status) == ("refused", 500)
    unknown = subscribe(call_id="nope", to_tag="n9")
    outcome = t.receive(UPSTREAM, unknown, 3.0, to_tag="x")
    assert (outcome.kind, outcome.status) == ("refused", 481)
    assert outcome.response(unknown).status == 481


def test_unsubscribe_ends_with_a_terminated_notify() -> None:
    t = table()
    _, sub = created(t, 0.0)
    request = refresh(sub, 2, "0")
    outcome = t.receive(UPSTREAM, request, 50.0, to_tag="x")
    assert (outcome.kind, outcome.status, outcome.expires) == ("ended", 200, 0)
    assert outcome.subscription is sub and len(t) == 0 and t.next_deadline() is None
    assert outcome.response(request).expires == 0
    notify = sub.notify(VIA, b"", 50.0)
    assert notify.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert "Content-Type" not in notify.headers


def test_fetch_creates_no_subscription() -> None:
    t = table()
    outcome = t.receive(UPSTREAM, subscribe(expires="0"), 0.0, to_tag="f1")
    assert (outcome.kind, outcome.status, outcome.expires, outcome.to_tag) == (
        "fetched",
        200,
        0,
        "f1",
    )
    assert len(t) == 0 and outcome.subscription is not None
    notify = outcome.subscription.notify(VIA, BODY, 0.0, terminated="timeout")
    assert notify.headers.get("Subscription-State") == "terminated;reason=timeout"


def test_limit_per_upstream_and_replacement() -> None:
    t = table(max_per_upstream=2)
    _, first = created(t, 0.0, call_id="a", event="Catalog;id=1")
    _, second = created(t, 0.0, call_id="b", event="Catalog;id=2")
    request = subscribe(call_id="c", event="Catalog;id=3")
    refused = t.receive(UPSTREAM, request, 1.0, to_tag="n")
    assert (refused.kind, refused.status) == ("refused", 486)
    assert refused.warning == f'399 {NODE} "catalog subscriptions (2/2)"'
    response = parse_message(refused.response(request).to_bytes())
    assert isinstance(response, Response)
    assert response.status == 486 and response.headers.get("Warning") == refused.warning
    assert len(t) == 2
    # Another upstream has its own allowance.
    other = t.receive(OTHER, subscribe(call_id="d", upstream=OTHER), 1.0, to_tag="m")
    assert other.kind == "created" and len(t.of(OTHER)) == 1
    # The same event id again (an upstream that restarted) takes the old one's place.
    outcome, again = created(t, 2.0, call_id="e", event="Catalog;id=1")
    assert outcome.replaced is first and t.of(UPSTREAM) == [second, again]
    assert t.find(refresh(first, 2, "600")) is None


def test_bad_requests() -> None:
    t = table()
    bad_event = subscribe(event="presence;id=")
    assert t.receive(UPSTREAM, bad_event, 0.0, to_tag="x").status == 400
    missing = subscribe(event=None)
    assert t.receive(UPSTREAM, missing, 0.0, to_tag="x").status == 400
    alarm = subscribe(event="Alarm")
    outcome = t.receive(UPSTREAM, alarm, 0.0, to_tag="x")
    assert (outcome.status, outcome.reason) == (489, "Bad Event")
    assert outcome.response(alarm).headers.get("Allow-Events") == "Catalog"
    huge = subscribe(expires="99999999999")
    assert t.receive(UPSTREAM, huge, 0.0, to_tag="x").status == 400
    assert len(t) == 0
    message = subscribe()
    message.method = "MESSAGE"
    with pytest.raises(LocalProtocolError):
        t.receive(UPSTREAM, message, 0.0, to_tag="x")


def test_presence_counts_as_catalog() -> None:
    _, sub = created(table(), 0.0, event="presence")
    assert sub.event == "presence" and sub.event_id is None


def test_notify_in_the_dialog() -> None:
    t = table()
    request = subscribe()
    _, sub = created(t, 10.0)
    events = [CatalogEvent(f"{NODE[:10]}131000010{n}", OFF) for n in range(3)]
    parts = catalog_notify_parts(7, NODE, events)
    assert len(parts) == 3
    sent = []
    for step, part in enumerate(parts):
        notify = parse_message(sub.notify(VIA, part, 10.0 + 100 * step).to_bytes())
        assert isinstance(notify, Request)
        sent.append(notify)
    notify = sent[0]
    assert notify.method == "NOTIFY" and notify.uri == f"sip:{UPSTREAM}@10.1.0.5:5060"
    assert notify.call_id == request.call_id
    assert notify.from_.tag == sub.dialog.local_tag and notify.to.tag == request.from_.tag
    assert notify.headers.get("Event") == "Catalog;id=4021"
    assert notify.headers.get("Subscription-State") == "active;expires=600"
    assert notify.headers.get("Content-Type") == MANSCDP_CONTENT_TYPE
    assert notify.headers.get("Contact") == CONTACT
    assert notify.body == parts[0]
    assert parse_manscdp(notify.body).root == "Notify"
    # The upstream's 200 to it belongs to the subscription.
    assert t.find(Response.for_request(notify, 200)) is sub
    # CSeq rises from 1 with each NOTIFY.
    later = sub.notify(VIA, parts[0], 500.0)
    assert [n.cseq[0] for n in sent] + [later.cseq[0]] == list(range(1, len(sent) + 2))
    assert later.headers.get("Subscription-State") == "active;expires=110"
    final = sub.notify(VIA, b"", 500.0, terminated="noresource")
    assert final.headers.get("Subscription-State") == "terminated;reason=noresource"
    with pytest.raises(LocalProtocolError):
        sub.notify(VIA, b"", 500.0, terminated="because")


def test_expiry_with_a_fake_clock() -> None:
    t = table(min_expires=30)
    _, a = created(t, 0.0, call_id="a", expires="30", event="Catalog;id=1")
    _, b = created(t, 5.0, call_id="b", expires="60", event="Catalog;id=2")
    assert t.next_deadline() == 30.0
    assert a.remaining(29.5) == 1 and a.remaining(30.0) == 0
    assert t.expire(29.0) == []
    assert t.expire(30.0) == [a]
    assert t.next_deadline() == 65.0
    # A NOTIFY after the expiry says so, even before the caller expired the table.
    assert (
        b.notify(VIA, BODY, 70.0).headers.get("Subscription-State") == "terminated;reason=timeout"
    )
    assert t.expire(1000.0) == [b] and t.next_deadline() is None


def test_drop_upstream_and_remove() -> None:
    t = table()
    _, a = created(t, 0.0, call_id="a", event="Catalog;id=1")
    _, b = created(t, 0.0, call_id="b", event="Catalog;id=2")
    t.receive(OTHER, subscribe(call_id="c", upstream=OTHER), 0.0, to_tag="z")
    assert t.drop_upstream(UPSTREAM) == [a, b] and len(t) == 1
    t.remove(a)  # already gone: nothing happens
    (c,) = t.of(OTHER)
    t.remove(c)
    assert len(t) == 0


def test_config_is_checked() -> None:
    for bad in (
        {"min_expires": 0},
        {"min_expires": 4000},
        {"max_expires": 100},
        {"max_per_upstream": 0},
    ):
        with pytest.raises(LocalProtocolError):
            SubscriptionConfig(**bad)


# ----- properties -----

OPS = st.lists(
    st.tuples(
        st.sampled_from(["new", "refresh", "unsubscribe", "expire"]),
        st.sampled_from([UPSTREAM, OTHER]),
        st.integers(0, 5),  # event id / which subscription
        st.one_of(st.none(), st.integers(0, 100_000).map(str)),  # Expires
        st.floats(0, 500, allow_nan=False),  # time step
    ),
    max_size=30,
)


@given(ops=OPS)
@example(ops=[("new", UPSTREAM, 1, "0", 0.0), ("new", UPSTREAM, 1, None, 1.0)])
def test_any_sequence_keeps_the_bounds(
    ops: list[tuple[str, str, int, str | None, float]],
) -> None:
    t = table(max_per_upstream=3)
    now = 0.0
    for n, (op, upstream, which, expires, step) in enumerate(ops):
        now += step
        held = t.of(upstream)
        if op == "new":
            request = subscribe(
                call_id=f"c{n}", expires=expires, event=f"Catalog;id={which}", upstream=upstream
            )
            outcome = t.receive(upstream, request, now, to_tag=f"t{n}")
            assert outcome.status in (200, 486)
            if outcome.status == 486:
                assert len(held) == 3 and outcome.warning is not None
        elif op in ("refresh", "unsubscribe") and held:
            sub = held[which % len(held)]
            asked = "0" if op == "unsubscribe" else expires
            seq = (sub.dialog.remote_seq or 0) + 1
            request = subscribe(
                call_id=sub.dialog.call_id, seq=seq, expires=asked, upstream=upstream,
                to_tag=sub.dialog.local_tag,
            )  # fmt: skip
            outcome = t.receive(upstream, request, now, to_tag="x")
            assert outcome.kind == ("ended" if asked == "0" else "refreshed")
            assert (sub in t.of(upstream)) == (asked != "0")
        elif op == "expire":
            gone = t.expire(now)
            assert all(s.expires_at <= now for s in gone)
        for who in (UPSTREAM, OTHER):
            assert len(t.of(who)) <= 3
        for sub in t.of(UPSTREAM) + t.of(OTHER):
            remaining = sub.expires_at - now
            # Expired ones linger only until expire(now) is called.
            assert remaining <= 86400
        deadlines = [s.expires_at for s in t.of(UPSTREAM) + t.of(OTHER)]
        assert t.next_deadline() == (min(deadlines) if deadlines else None)


@given(value=st.text(max_size=80))
@example(value="Catalog;id=\x00")
def test_any_event_header_parses_or_raises_parse_error(value: str) -> None:
    try:
        package, event_id = parse_event(value)
    except ParseError:
        return
    token = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
    assert token.fullmatch(package)
    assert event_id is None or token.fullmatch(event_id) and len(event_id) <= 64
