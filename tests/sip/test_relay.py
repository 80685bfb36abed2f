"""INVITEs of upper platforms read by parse_play_request, and the node's SDP answer (GB/T 28181
2016 App. K, L; 2022 App. D, H): corpus offers of eXosip, SRS 5 and wx platforms, wvp-style
offers built by `play_offer` (which writes wvp's order), and hand-made bad ones."""

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sip.errors import LocalProtocolError
from sip.message import Headers, Request, parse_message
from sip.relay import (
    PlayRequest,
    PlayRequestError,
    Subject,
    parse_play_request,
    parse_subject,
    play_answer,
    warning_value,
)
from sip.sdp import build_sdp, parse_sdp, play_offer

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
CHANNEL = "31011200001310000101"
UPSTREAM = "31011200002000000100"
NODE = "31011200002000000001"


def corpus_invite(name: str) -> Request:
    message = parse_message((CORPUS / name).read_bytes())
    assert isinstance(message, Request)
    return message


def invite(body: bytes | str, *, uri: str = f"sip:{CHANNEL}@3101120000", **headers: str) -> Request:
    fields = Headers()
    fields.add("Via", "SIP/2.0/UDP 10.1.0.5:5060;rport;branch=z9hG4bKup1")
    fields.add("From", f"<sip:{UPSTREAM}@3101120000>;tag=up1")
    fields.add("To", f"<sip:{CHANNEL}@3101120000>")
    fields.add("Call-ID", "relay-1@10.1.0.5")
    fields.add("CSeq", "1 INVITE")
    fields.add("Contact", f"<sip:{UPSTREAM}@10.1.0.5:5060>")
    fields.add("Content-Type", headers.pop("content_type", "application/sdp"))
    for name, value in headers.items():
        fields.add(name.replace("_", "-"), value)
    data = body.encode() if isinstance(body, str) else body
    return Request(headers=fields, method="INVITE", uri=uri, body=data)


def wvp_offer(transport: str, *, ssrc: str | None = None, session: str = "Play") -> bytes:
    """A wvp-style offer from the upstream: `transport` from the upstream's side."""
    history = session != "Play"
    sd = play_offer(
        node_id=UPSTREAM,
        media_ip="10.1.0.9",
        port=30000,
        transport=transport,
        ssrc=ssrc or "0100000001",
        channel_id=CHANNEL,
        session=session,
        start=1744946094 if history else 0,
        stop=1744947129 if history else 0,
    )
    if ssrc is None:
        sd.ssrc = None
    return build_sdp(sd)


def status_of(request: Request) -> int:
    with pytest.raises(PlayRequestError) as info:
        parse_play_request(request)
    return info.value.status


# ----- corpus offers -----


def test_exosip_live_udp() -> None:
    play = parse_play_request(corpus_invite("invite-exosip-udp-live-01.sip"))
    assert play.channel_id == "34020000001310000001"
    assert (play.session, play.start, play.stop, play.uri) == ("Play", 0, 0, None)
    assert (play.address, play.port, play.transport) == ("192.168.6.106", 45056, "udp")
    assert play.ssrc == "0000001002" and play.ssrc_int == 1002
    assert play.payload_types == (96, 98, 97)
    assert play.rtpmap[96] == "PS/90000"
    # eXosip sends an empty f=: nothing asked for.
    assert play.f is None
    assert play.subject == Subject(
        "34020000001320000002", "04020000001320000002", "34020000002000000010", "1002"
    )
    assert not play.is_tcp


def test_exosip_download_takes_the_channel_from_the_request_uri() -> None:
    play = parse_play_request(corpus_invite("invite-exosip-download-01.sip"))
    # Its Subject names another sender; the request-URI decides.
    assert play.subject is not None and play.subject.sender_id == "34020000001110000001"
    assert play.channel_id == "34020000001310000001"
    assert (play.session, play.start, play.stop) == ("Download", 1714804996, 1714806986)
    assert play.uri == "34020000001310000001:3"


def test_srs5_tcp_without_setup_means_we_connect() -> None:
    play = parse_play_request(corpus_invite("invite-srs5-tcp-01.sip"))
    assert play.offer.video is not None and play.offer.video.setup is None
    assert play.transport == "tcp-active"
    assert (play.address, play.port) == ("192.168.3.82", 9000)
    assert play.ssrc == "0200007585" and play.payload_types == (96,)
    assert play.channel_id == "34020000001320000001"


def test_wx_udp_offer_with_setup_is_udp() -> None:
    play = parse_play_request(corpus_invite("invite-wx-download-udp-01.sip"))
    assert play.offer.video is not None and play.offer.video.setup == "passive"
    assert play.transport == "udp"
    assert play.stream_number == 1 and play.download_speed == 8
    assert (play.session, play.uri) == ("Download", "34020000001310000001:0")


def test_platform_offer_from_the_corpus() -> None:
    body = (CORPUS / "sdp-offer-platform-64010600002020000001-01.sdp").read_bytes()
    play = parse_play_request(invite(body))
    assert (play.channel_id, play.address, play.port) == (CHANNEL, "172.20.16.3", 6000)
    assert play.ssrc == "0100008888" and play.transport == "udp"


# ----- wvp-style offers -----


@pytest.mark.parametrize(
    ("theirs", "ours", "setup"),
    [("tcp-passive", "tcp-active", "passive"), ("tcp-active", "tcp-passive", "active")],
)
def test_wvp_tcp_offers_without_ssrc(theirs: str, ours: str, setup: str) -> None:
    body = wvp_offer(theirs)
    assert b"y=" not in body and f"a=setup:{setup}".encode() in body
    play = parse_play_request(invite(body, Subject=f"{CHANNEL}:0,{UPSTREAM}:0"))
    assert play.transport == ours and play.is_tcp
    assert play.ssrc is None and play.ssrc_int is None
    assert (play.address, play.port) == ("10.1.0.9", 30000)
    assert play.payload_types == (96, 97, 98)


def test_wvp_playback_offer() -> None:
    play = parse_play_request(invite(wvp_offer("udp", ssrc="1000010003", session="Playback")))
    assert (play.session, play.start, play.stop) == ("Playback", 1744946094, 1744947129)
    assert play.uri == f"{CHANNEL}:0" and play.ssrc == "1000010003"


def test_subject_stands_in_for_a_request_uri_without_channel() -> None:
    request = invite(wvp_offer("udp"), uri="sip:10.0.0.1:5060", Subject=f"{CHANNEL}:1,{UPSTREAM}:0")
    assert parse_play_request(request).channel_id == CHANNEL


def test_actpass_means_we_connect() -> None:
    body = wvp_offer("tcp-passive").replace(b"a=setup:passive", b"a=setup:actpass")
    assert parse_play_request(invite(body)).transport == "tcp-active"


# ----- refusals -----


def test_no_ps_on_96_is_488() -> None:
    body = wvp_offer("udp").replace(b" 96 97 98", b" 97 98")
    assert status_of(invite(body)) == 488
    other = wvp_offer("udp").replace(b"a=rtpmap:96 PS/90000", b"a=rtpmap:96 H264/90000")
    with pytest.raises(PlayRequestError) as info:
        parse_play_request(invite(other))
    assert (info.value.status, info.value.reason) == (488, "payload type 96 is H264/90000, not PS")


@pytest.mark.parametrize(
    ("old", "new", "status"),
    [
        (b"s=Play", b"s=Talk", 488),
        (b"m=video 30000", b"m=video 0", 488),
        (b"m=video", b"m=audio", 488),
        (b"RTP/AVP", b"RTP/SAVP", 488),
        (b"a=setup:passive", b"a=setup:holdconn", 488),
        (b"y=0100000001", b"y=01000000x1", 400),
        (b"y=0100000001", b"y=9999999999", 400),
        (b"y=0100000001", b"y=01000000011", 400),
        (b"t=0 0", b"t=zero", 400),
        (b"c=IN IP4 10.1.0.9\r\n", b"", 400),
    ],
)
def test_unservable_offers(old: bytes, new: bytes, status: int) -> None:
    body = wvp_offer("tcp-passive", ssrc="0100000001")
    assert old in body
    assert status_of(invite(body.replace(old, new))) == status


def test_playback_without_range_is_400() -> None:
    body = wvp_offer("udp", session="Playback").replace(b"t=1744946094 1744947129", b"t=0 0")
    assert status_of(invite(body)) == 400


def test_body_and_channel_problems() -> None:
    assert status_of(invite(b"")) == 488
    assert status_of(invite(b"<Query/>", content_type="Application/MANSCDP+xml")) == 415
    assert status_of(invite(b"not sdp at all")) == 400
    assert status_of(invite(wvp_offer("udp"), uri="sip:camera@10.0.0.1")) == 400
    assert status_of(invite(wvp_offer("udp"), uri="sip:camera@10.0.0.1", Subject="garbage")) == 400
    with pytest.raises(LocalProtocolError):
        parse_play_request(replace(invite(b""), method="BYE"))


def test_empty_y_means_none() -> None:
    body = wvp_offer("udp", ssrc="0100000001").replace(b"y=0100000001", b"y=")
    assert parse_play_request(invite(body)).ssrc is None


def test_parse_subject() -> None:
    assert parse_subject(f"{CHANNEL}:0200007585, {UPSTREAM}:0") == Subject(
        CHANNEL, "0200007585", UPSTREAM, "0"
    )
    for bad in ("", "a:1", "a:1,b:2,c:3", ":1,b:2", "a 1:2,b:3", "a1,b:2", "x" * 300):
        assert parse_subject(bad) is None


# ----- the answer -----


@pytest.mark.parametrize(
    ("transport", "proto", "setup"),
    [
        ("udp", "RTP/AVP", None),
        ("tcp-active", "TCP/RTP/AVP", "active"),
        ("tcp-passive", "TCP/RTP/AVP", "passive"),
    ],
)
def test_play_answer_round_trip(transport: str, proto: str, setup: str | None) -> None:
    body = play_answer(
        origin_id=NODE, media_ip="10.2.0.1", port=40000, transport=transport, ssrc="0100000001"
    )
    sd = parse_sdp(body)
    assert build_sdp(sd) == body
    assert sd.origin is not None and sd.origin.username == NODE
    assert (sd.session_name, sd.timing, sd.address) == ("Play", (0, 0), "10.2.0.1")
    video = sd.video
    assert video is not None
    assert (video.port, video.proto, video.formats) == (40000, proto, [96])
    assert video.direction == "sendonly" and video.rtpmap == {96: "PS/90000"}
    assert video.setup == setup
    assert video.connection == (None if setup is None else "new")
    assert sd.ssrc == "0100000001" and sd.f is None
    # y= comes last: a Hikvision device answered 415 over TCP otherwise.
    assert body.endswith(b"y=0100000001\r\n")


def test_answer_to_an_offer_is_servable_by_the_other_side() -> None:
    play = parse_play_request(corpus_invite("invite-wx-download-udp-01.sip"))
    assert play.ssrc is not None
    body = play_answer(
        origin_id=play.channel_id,
        media_ip="192.168.0.64",
        port=15000,
        transport=play.transport,
        ssrc=play.ssrc,
        session=play.session,
        start=play.start,
        stop=play.stop,
        f="v/2/4/25/1/4096a///",
    )
    sd = parse_sdp(body)
    assert (sd.session_name, sd.timing) == ("Download", (1744946094, 1744947129))
    assert sd.f == "v/2/4/25/1/4096a///" and sd.ssrc == "1000010003"
    assert body.endswith(b"y=1000010003\r\nf=v/2/4/25/1/4096a///\r\n")


def test_play_answer_refuses_misuse() -> None:
    good = {
        "origin_id": NODE,
        "media_ip": "10.2.0.1",
        "port": 40000,
        "transport": "udp",
        "ssrc": "1",
    }
    play_answer(**good)  # type: ignore[arg-type]
    for key, value in [
        ("transport", "tcp"),
        ("ssrc", "x"),
        ("ssrc", "4294967296"),
        ("port", 0),
        ("session", "Talk"),
        ("f", "a\r\nb"),
    ]:
        with pytest.raises(LocalProtocolError):
            play_answer(**{**good, key: value})  # type: ignore[arg-type]


def test_warning_value() -> None:
    assert warning_value(399, NODE, "upstream streams (16/16)") == (
        f'399 {NODE} "upstream streams (16/16)"'
    )
    assert warning_value(399, NODE, 'say "hi"\\\r\nnow') == f'399 {NODE} "say \\"hi\\"\\\\ now"'
    assert warning_value(399, NODE, "a\x00\x7fb\tc") == f'399 {NODE} "a b c"'
    value = warning_value(399, NODE, 'a "b"')
    request = invite(b"", Warning=value)
    assert parse_message(request.to_bytes()).headers.get("Warning") == value
    for code, agent in [(200, NODE), (400, NODE), (399, ""), (399, "a b"), (399, 'a"')]:
        with pytest.raises(LocalProtocolError):
            warning_value(code, agent, "x")


# ----- robustness -----

SDP_LINES = st.sampled_from(
    [
        "v=0",
        "o=x 0 0 IN IP4 1.2.3.4",
        "s=Play",
        "s=Playback",
        "s=Download",
        "s=Talk",
        "u=a:0",
        "c=IN IP4 1.2.3.4",
        "c=IN",
        "t=0 0",
        "t=1 2",
        "t=2 1",
        "m=video 1 RTP/AVP 96",
        "m=video 1 TCP/RTP/AVP 96 98",
        "m=video 0 RTP/AVP 96",
        "m=audio 5 RTP/AVP 8",
        "m=video 70000 RTP/AVP 96",
        "a=rtpmap:96 PS/90000",
        "a=rtpmap:96 H264/90000",
        "a=rtpmap:96",
        "a=setup:active",
        "a=setup:passive",
        "a=setup:",
        "a=setup:x",
        "a=connection:new",
        "a=recvonly",
        "a=streamnumber:1",
        "a=downloadspeed:99999",
        "y=0100000001",
        "y=",
        "y=x",
        "y=99999999999",
        "f=",
        "f=v/2",
        "x",
        "=",
    ]
)
BASE_OFFER = wvp_offer("tcp-passive", ssrc="0100000001").decode().splitlines()
# A good offer with up to three lines dropped or replaced by another line or by noise.
LINE_EDITS = st.dictionaries(
    st.integers(0, len(BASE_OFFER) - 1),
    st.one_of(st.just(""), SDP_LINES, st.text(max_size=20)),
    max_size=3,
)
SDP_TEXT = st.one_of(
    st.lists(st.one_of(SDP_LINES, st.text(max_size=20)), max_size=14).map("\r\n".join),
    LINE_EDITS.map(
        lambda edits: "\r\n".join(edits.get(i, line) for i, line in enumerate(BASE_OFFER))
    ),
)
URIS = st.sampled_from([f"sip:{CHANNEL}@3101120000"] * 4 + ["sip:x@y", "sip:10.0.0.1", "bad", ""])
SUBJECTS = st.one_of(st.none(), st.text(max_size=40), st.just(f"{CHANNEL}:1,{UPSTREAM}:0"))


@given(
    body=st.one_of(st.binary(max_size=300), SDP_TEXT.map(str.encode), SDP_TEXT.map(str.encode)),
    uri=URIS,
    subject=SUBJECTS,
    content_type=st.sampled_from(
        ["application/sdp"] * 3 + ["APPLICATION/SDP; x=1", "text/plain", ""]
    ),
)
@example(
    body=b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\ny=",
    uri=f"sip:{CHANNEL}@3101120000",
    subject=None,
    content_type="application/sdp",
)
def test_any_invite_parses_or_raises_play_request_error(
    body: bytes, uri: str, subject: str | None, content_type: str
) -> None:
    headers = {"content_type": content_type}
    if subject is not None and "\r" not in subject and "\n" not in subject:
        headers["Subject"] = subject
    request = invite(body, uri=uri, **headers)
    try:
        play = parse_play_request(request)
    except PlayRequestError as exc:
        assert exc.status in (400, 415, 488) and exc.reason
        return
    assert isinstance(play, PlayRequest)
    assert play.transport in ("udp", "tcp-active", "tcp-passive")
    assert 96 in play.payload_types and len(play.channel_id) == 20
    assert play.ssrc is None or play.ssrc_int is not None and play.ssrc_int <= 0xFFFFFFFF
    assert 0 < play.port <= 65535
