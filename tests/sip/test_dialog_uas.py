"""UAS dialogs from real INVITEs and SUBSCRIBEs of upper platforms (RFC 3261 12.1.1, 12.2)."""

from pathlib import Path

import pytest

from sip.dialog import Dialog
from sip.errors import LocalProtocolError, ParseError
from sip.message import Headers, Request, Response, parse_message

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
REQUESTS = sorted(
    [p.name for p in CORPUS.glob("invite-*.sip")] + [p.name for p in CORPUS.glob("subscribe-*.sip")]
)
VIA = "SIP/2.0/UDP 10.0.0.2:5060;rport;branch=z9hG4bKnode1"


def load(name: str) -> Request:
    message = parse_message((CORPUS / name).read_bytes())
    assert isinstance(message, Request)
    return message


def reparsed(request: Request) -> Request:
    message = parse_message(request.to_bytes())
    assert isinstance(message, Request)
    return message


def upstream_request(dialog: Dialog, method: str, seq: int) -> Request:
    """An in-dialog request from the upstream: its tag in From, ours in To."""
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 10.1.0.5:5060;branch=z9hG4bKup9")
    from_tag = f";tag={dialog.remote_tag}" if dialog.remote_tag else ""
    headers.add("From", f"{dialog.remote_uri}{from_tag}")
    headers.add("To", f"{dialog.local_uri};tag={dialog.local_tag}")
    headers.add("Call-ID", dialog.call_id)
    headers.add("CSeq", f"{seq} {method}")
    return Request(headers=headers, method=method, uri="sip:node@10.0.0.2:5060")


def test_corpus_has_the_requests() -> None:
    assert len(REQUESTS) == 5


@pytest.mark.parametrize("name", REQUESTS)
def test_dialog_from_corpus_request(name: str) -> None:
    request = load(name)
    ok = Response.for_request(request, 200, to_tag="node77")
    dialog = Dialog.from_request(request, ok, first_seq=1)
    assert dialog.uas
    assert dialog.call_id == request.call_id
    assert (dialog.local_tag, dialog.remote_tag) == ("node77", request.from_.tag)
    assert dialog.remote_target == str(request.contacts[0].uri)
    assert dialog.route_set == ()
    assert dialog.remote_seq == request.cseq[0]

    method = "BYE" if request.method == "INVITE" else "NOTIFY"
    ours = reparsed(dialog.request(method, VIA))
    assert ours.method == method and ours.uri == dialog.remote_target
    assert ours.cseq == (1, method)
    # From and To swap against the request: we are its To, with our tag.
    assert ours.from_.uri == request.to.uri and ours.from_.tag == "node77"
    assert ours.to.uri == request.from_.uri and ours.to.tag == request.from_.tag
    assert ours.call_id == request.call_id
    assert dialog.request(method, VIA).cseq == (2, method)

    # The upstream's answer to our request, and its own BYE, belong to the dialog.
    assert dialog.match(Response.for_request(ours, 200))
    assert dialog.match(upstream_request(dialog, "BYE", request.cseq[0] + 1))
    # The original request before our tag was added does not.
    assert not dialog.match(request)
    with pytest.raises(LocalProtocolError):
        dialog.ack(VIA)


def test_uas_route_set_keeps_the_request_order() -> None:
    request = load("invite-srs5-tcp-01.sip")
    request.headers.add("Record-Route", "<sip:edge.example;lr>, <sip:core.example;lr>")
    request.headers.add("Record-Route", "<sip:last.example;lr>")
    dialog = Dialog.from_request(request, Response.for_request(request, 200, to_tag="t"))
    assert dialog.route_set == (
        "<sip:edge.example;lr>",
        "<sip:core.example;lr>",
        "<sip:last.example;lr>",
    )
    bye = reparsed(dialog.request("BYE", VIA))
    assert bye.uri == "sip:34020000002000000001@3402000000"
    assert bye.headers.get_all("Route") == list(dialog.route_set)


def test_uas_first_seq_and_missing_contact() -> None:
    request = load("invite-exosip-udp-live-01.sip")
    request.headers.remove("Contact")
    dialog = Dialog.from_request(
        request, Response.for_request(request, 200, to_tag="t"), first_seq=500
    )
    assert dialog.remote_target == str(request.from_.uri)
    assert dialog.request("BYE", VIA).cseq == (500, "BYE")


def test_remote_seq_order() -> None:
    request = load("subscribe-alarm-wx-platform-01.sip")
    dialog = Dialog.from_request(request, Response.for_request(request, 200, to_tag="t"))
    assert dialog.remote_seq == 34
    assert dialog.accept_remote_seq(upstream_request(dialog, "SUBSCRIBE", 35))
    assert dialog.remote_seq == 35
    assert dialog.accept_remote_seq(upstream_request(dialog, "SUBSCRIBE", 35))
    assert not dialog.accept_remote_seq(upstream_request(dialog, "SUBSCRIBE", 34))
    assert dialog.remote_seq == 35


def test_from_request_refuses_misuse() -> None:
    request = load("invite-exosip-udp-live-01.sip")
    ok = Response.for_request(request, 200, to_tag="t")
    with pytest.raises(LocalProtocolError):
        Dialog.from_request(request, Response.for_request(request, 486, to_tag="t"))
    with pytest.raises(LocalProtocolError):
        Dialog.from_request(request, Response.for_request(request, 200))  # no To tag
    with pytest.raises(LocalProtocolError):
        Dialog.from_request(request, ok, first_seq=0)
    other = load("invite-srs5-tcp-01.sip")
    with pytest.raises(LocalProtocolError):
        Dialog.from_request(other, ok)
    message = load("invite-exosip-udp-live-01.sip")
    message.method = "MESSAGE"
    with pytest.raises(LocalProtocolError):
        Dialog.from_request(message, ok)
    request.headers.set("Contact", "*")
    with pytest.raises(ParseError):
        Dialog.from_request(request, ok)
