"""UAC dialogs from real 200 OK answers to INVITE (RFC 3261 section 12; GB/T 28181 live play)."""

from pathlib import Path

import pytest

from sip.dialog import Dialog
from sip.errors import LocalProtocolError, ParseError
from sip.message import Headers, Request, Response, parse_message
from sip.transaction import Peer, ResponseReceived, TransactionLayer

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
OK_NAMES = sorted(path.name for path in CORPUS.glob("200ok-invite-*.sip"))
VIA = "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKnew1"
VIA2 = "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKnew2"


def load_ok(name: str) -> Response:
    message = parse_message((CORPUS / name).read_bytes())
    assert isinstance(message, Response)
    return message


def invite_for(ok: Response) -> Request:
    """The INVITE this 200 OK answers: same Via, Call-ID, From (tag), CSeq; To without tag."""
    to = ok.to
    headers = Headers()
    headers.add("Via", ok.headers.get("Via") or "")
    headers.add("Max-Forwards", "70")
    headers.add("From", ok.headers.get("From") or "")
    headers.add("To", f"<{to.uri}>")
    headers.add("Call-ID", ok.call_id)
    headers.add("CSeq", f"{ok.cseq[0]} INVITE")
    headers.add("Contact", "<sip:34020000002000000001@10.0.0.1:5060>")
    return Request(headers=headers, method="INVITE", uri=str(to.uri))


def reparsed(request: Request) -> Request:
    message = parse_message(request.to_bytes())
    assert isinstance(message, Request)
    return message


def test_corpus_has_the_answers() -> None:
    assert len(OK_NAMES) == 4


@pytest.mark.parametrize("name", OK_NAMES)
def test_dialog_from_corpus_200_ok(name: str) -> None:
    ok = load_ok(name)
    invite = invite_for(ok)
    dialog = Dialog.from_2xx(invite, ok)
    assert dialog.call_id == ok.call_id
    assert dialog.local_tag == ok.from_.tag
    assert dialog.remote_tag == (ok.to.tag or "")
    assert dialog.remote_target == str(ok.contacts[0].uri)
    assert dialog.route_set == ()
    seq = ok.cseq[0]
    assert dialog.local_seq == seq

    ack = reparsed(dialog.ack(VIA))
    assert ack.method == "ACK" and ack.uri == dialog.remote_target
    assert ack.cseq == (seq, "ACK")
    assert ack.top_via.branch == "z9hG4bKnew1"
    assert ack.call_id == ok.call_id
    assert ack.from_.tag == ok.from_.tag and ack.from_.uri == ok.from_.uri
    assert ack.to.tag == ok.to.tag and ack.to.uri == ok.to.uri
    assert "Route" not in ack.headers
    assert ack.max_forwards == 70 and ack.body == b""

    bye = reparsed(dialog.request("BYE", VIA2))
    assert bye.method == "BYE" and bye.uri == dialog.remote_target
    assert bye.cseq == (seq + 1, "BYE")
    assert bye.top_via.branch == "z9hG4bKnew2"
    assert bye.from_.tag == ok.from_.tag and bye.to.tag == ok.to.tag
    assert dialog.local_seq == seq + 1
    # The ACK keeps the INVITE's number even after later requests.
    assert dialog.ack(VIA).cseq == (seq, "ACK")
    # Our BYE's answer and the device's own BYE both belong to the dialog.
    assert dialog.match(Response.for_request(bye, 200))
    assert dialog.match(device_bye(dialog))


def device_bye(dialog: Dialog, call_id: str | None = None, our_tag: str | None = None) -> Request:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 192.168.0.64:5060;branch=z9hG4bKdevbye")
    from_tag = f";tag={dialog.remote_tag}" if dialog.remote_tag else ";tag=devicetag"
    headers.add("From", f"{dialog.remote_uri}{from_tag}")
    headers.add("To", f"{dialog.local_uri};tag={our_tag or dialog.local_tag}")
    headers.add("Call-ID", call_id or dialog.call_id)
    headers.add("CSeq", "3 BYE")
    return Request(headers=headers, method="BYE", uri="sip:34020000002000000001@10.0.0.1:5060")


def test_hikvision_200_ok_without_to_tag_is_accepted() -> None:
    ok = load_ok("200ok-invite-hikvision-ipc-tcp-active-01.sip")
    assert ok.to.tag is None
    dialog = Dialog.from_2xx(invite_for(ok), ok)
    assert dialog.remote_tag == ""
    assert dialog.remote_target == "sip:34020000001320000001@192.168.3.99:5060"
    ack = reparsed(dialog.ack(VIA))
    assert ack.to.tag is None
    assert ack.headers.get("To") == "<sip:34020000001320000001@3402000000>"
    # With no remote tag to compare, any tag from the device matches.
    assert dialog.match(device_bye(dialog))


def test_route_set_is_record_route_reversed() -> None:
    ok = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    ok.headers.add("Record-Route", "<sip:edge.example:5060;lr>, <sip:core.example;lr>")
    ok.headers.add("Record-Route", "<sip:last.example;lr>")
    dialog = Dialog.from_2xx(invite_for(ok), ok)
    assert dialog.route_set == (
        "<sip:last.example;lr>",
        "<sip:core.example;lr>",
        "<sip:edge.example:5060;lr>",
    )
    for request in (dialog.ack(VIA), dialog.request("BYE", VIA2)):
        parsed = reparsed(request)
        assert parsed.uri == "sip:34020000001310000001@192.168.6.60:5060"
        assert parsed.headers.get_all("Route") == list(dialog.route_set)


def test_strict_router_takes_the_request_uri() -> None:
    ok = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    ok.headers.add("Record-Route", "<sip:strict.example:5070>")
    dialog = Dialog.from_2xx(invite_for(ok), ok)
    bye = reparsed(dialog.request("BYE", VIA))
    assert bye.uri == "sip:strict.example:5070"
    assert bye.headers.get_all("Route") == ["<sip:34020000001310000001@192.168.6.60:5060>"]


def test_missing_contact_falls_back_to_the_request_uri() -> None:
    ok = load_ok("200ok-invite-hikvision-ipc-download-01.sip")
    ok.headers.remove("Contact")
    invite = invite_for(ok)
    dialog = Dialog.from_2xx(invite, ok)
    assert dialog.remote_target == invite.uri
    assert dialog.ack(VIA).uri == invite.uri


def test_info_carries_its_body() -> None:
    ok = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    dialog = Dialog.from_2xx(invite_for(ok), ok)
    body = b"PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nScale: 2.0\r\n"
    info = reparsed(dialog.request("INFO", VIA, body, "Application/MANSRTSP"))
    assert info.cseq == (21, "INFO") and info.body == body
    assert info.headers.get("Content-Type") == "Application/MANSRTSP"
    with pytest.raises(LocalProtocolError):
        dialog.request("INFO", VIA, body)  # a body without a content type
    with pytest.raises(LocalProtocolError):
        dialog.request("ACK", VIA)


def test_match_rejects_other_dialogs() -> None:
    ok = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    dialog = Dialog.from_2xx(invite_for(ok), ok)
    assert dialog.match(device_bye(dialog))
    assert not dialog.match(device_bye(dialog, call_id="other"))
    assert not dialog.match(device_bye(dialog, our_tag="nottag"))
    stranger = device_bye(dialog)
    stranger.headers.set("From", f"{dialog.remote_uri};tag=stranger")
    assert not dialog.match(stranger)


def test_from_2xx_rejects_misuse_and_mismatches() -> None:
    ok = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    invite = invite_for(ok)
    with pytest.raises(LocalProtocolError):
        Dialog.from_2xx(invite, Response.for_request(invite, 486, to_tag="x"))
    bye = invite_for(ok)
    bye.method = "BYE"
    with pytest.raises(LocalProtocolError):
        Dialog.from_2xx(bye, ok)
    untagged = invite_for(ok)
    untagged.headers.set("From", "<sip:34020000002000000010@192.168.6.106:5062>")
    with pytest.raises(LocalProtocolError):
        Dialog.from_2xx(untagged, ok)
    for name, value in (
        ("Call-ID", "someone-else"),
        ("CSeq", "21 INVITE"),
        ("From", "<sip:34020000002000000010@192.168.6.106:5062>;tag=other"),
    ):
        other = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
        other.headers.set(name, value)
        with pytest.raises(ParseError):
            Dialog.from_2xx(invite, other)
    star = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    star.headers.set("Contact", "*")
    with pytest.raises(ParseError):
        Dialog.from_2xx(invite, star)


def test_dialog_follows_an_invite_transaction() -> None:
    """The pieces together: INVITE transaction, 2xx, dialog, ACK for each 2xx, BYE."""
    camera = Peer("udp", "192.168.6.60", 5060)
    layer = TransactionLayer()
    ok = load_ok("200ok-invite-hikvision-nvr-playback-01.sip")
    invite = invite_for(ok)
    key = layer.request(invite, camera, now=0.0)
    layer.datagrams_to_send()
    acks = []
    dialog = None
    for now in (0.1, 0.6):
        (event,) = layer.receive(ok, camera, now)
        assert isinstance(event, ResponseReceived) and event.key == key and event.final
        if dialog is None:
            assert not event.retransmission
            dialog = Dialog.from_2xx(invite, event.response)
            ack = dialog.ack(VIA).to_bytes()
        else:
            assert event.retransmission
        layer.send_raw(ack, camera)
        acks.extend(layer.datagrams_to_send())
    assert [out.data for out in acks] == [ack, ack]
    assert dialog is not None and dialog.request("BYE", VIA2).cseq == (21, "BYE")
