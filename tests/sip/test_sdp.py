"""SDP bodies of GB/T 28181 INVITEs and answers (RFC 4566; 2016 App. F, K, L; 2022 App. D, G)."""

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sip.errors import LocalProtocolError, MessageTooLarge, ParseError
from sip.sdp import (
    MediaDescription,
    Origin,
    SessionDescription,
    build_sdp,
    gb_ssrc,
    parse_sdp,
    play_offer,
    subject_header,
)

CORPUS = Path(__file__).parent.parent / "data" / "corpus"
SDP_FILES = sorted(
    [p.name for p in CORPUS.glob("*.sdp")]
    + [p.name for p in CORPUS.glob("invite-*.sip")]
    + [p.name for p in CORPUS.glob("200ok-invite-*.sip")]
)


def body(name: str) -> bytes:
    data = (CORPUS / name).read_bytes()
    if name.endswith(".sdp"):
        return data
    return data[data.index(b"\r\n\r\n") + 4 :]


def lines(sd: SessionDescription) -> list[str]:
    return build_sdp(sd).decode().split("\r\n")[:-1]


def test_the_sdp_corpus_is_there() -> None:
    assert len(SDP_FILES) == 9


@pytest.mark.parametrize("name", SDP_FILES)
def test_corpus_round_trips(name: str) -> None:
    sd = parse_sdp(body(name))
    assert parse_sdp(build_sdp(sd)) == sd
    # Every capture is already in canonical order, so the bytes come back unchanged (one body
    # lacks its final CRLF).
    assert build_sdp(sd) == body(name).rstrip(b"\r\n") + b"\r\n"


@pytest.mark.parametrize("name", SDP_FILES)
def test_corpus_parses_from_str_and_lf(name: str) -> None:
    data = body(name)
    assert parse_sdp(data.decode()) == parse_sdp(data)
    assert parse_sdp(data.replace(b"\r\n", b"\n")) == parse_sdp(data)


def test_platform_offer() -> None:
    sd = parse_sdp(body("sdp-offer-platform-64010600002020000001-01.sdp"))
    assert sd.version == 0
    assert sd.origin == Origin("64010600002020000001", "0", "0", "IN", "IP4", "172.20.16.3")
    assert sd.session_name == "Play"
    assert sd.uri is None
    assert sd.connection_address == "172.20.16.3"
    assert sd.timing == (0, 0)
    assert sd.ssrc == "0100008888"
    assert sd.ssrc_int == 100008888
    assert sd.f is None
    assert sd.other == []
    video = sd.video
    assert video is not None and sd.media == [video]
    assert (video.media, video.port, video.proto) == ("video", 6000, "RTP/AVP")
    assert video.formats == [96, 98, 97]
    assert video.rtpmap == {96: "PS/90000", 98: "H264/90000", 97: "MPEG4/90000"}
    assert video.direction == "recvonly"
    assert video.setup is None and video.connection is None
    assert video.connection_address is None
    assert sd.address == "172.20.16.3"
    assert not sd.is_tcp


def test_exosip_live_offer_ends_with_empty_f() -> None:
    sd = parse_sdp(body("invite-exosip-udp-live-01.sip"))
    assert sd.session_name == "Play"
    assert sd.ssrc == "0000001002"
    assert sd.ssrc_int == 1002
    assert sd.f == ""
    assert sd.address == "192.168.6.106"
    assert sd.video is not None and sd.video.port == 45056


def test_exosip_download_offer_without_final_crlf() -> None:
    data = body("invite-exosip-download-01.sip")
    assert data.endswith(b"f=")
    sd = parse_sdp(data)
    assert sd.session_name == "Download"
    assert sd.uri == "34020000001310000001:3"
    assert sd.timing == (1714804996, 1714806986)
    assert sd.ssrc == "0000003000"
    assert sd.f == ""


def test_srs_tcp_offer_without_setup() -> None:
    sd = parse_sdp(body("invite-srs5-tcp-01.sip"))
    video = sd.video
    assert video is not None
    assert (video.port, video.proto, video.formats) == (9000, "TCP/RTP/AVP", [96])
    assert video.setup is None and video.connection is None
    assert sd.is_tcp
    assert sd.ssrc == "0200007585"
    assert sd.address == "192.168.3.82"


def test_wx_download_offer_with_setup_on_udp() -> None:
    sd = parse_sdp(body("invite-wx-download-udp-01.sip"))
    assert sd.session_name == "Download"
    assert sd.uri == "34020000001310000001:0"
    assert sd.timing == (1744946094, 1744947129)
    assert sd.ssrc == "1000010003"
    video = sd.video
    assert video is not None
    assert (video.port, video.proto, video.formats) == (6902, "RTP/AVP", [96, 97, 98])
    assert (video.setup, video.connection) == ("passive", "new")
    assert not sd.is_tcp
    assert video.attribute("downloadspeed") == "8"
    assert video.attribute("streamprofile") == "1"
    assert video.attributes == [
        ("recvonly", None),
        ("setup", "passive"),
        ("connection", "new"),
        ("rtpmap", "96 PS/90000"),
        ("rtpmap", "97 MPEG4/90000"),
        ("rtpmap", "98 H264/90000"),
        ("downloadspeed", "8"),
        ("streamprofile", "1"),
    ]


def test_hikvision_ipc_download_answer_setup_active_on_udp() -> None:
    sd = parse_sdp(body("200ok-invite-hikvision-ipc-download-01.sip"))
    assert sd.origin is not None
    assert (sd.origin.session_id, sd.origin.version) == ("539", "539")
    assert sd.session_name == "Download"
    assert sd.timing == (0, 0)
    video = sd.video
    assert video is not None
    assert (video.port, video.proto, video.setup, video.direction) == (
        15060,
        "RTP/AVP",
        "active",
        "sendonly",
    )
    assert video.attribute("filesize") == "262209536"
    assert sd.ssrc == "1000010003"
    assert sd.f is None
    assert sd.address == "192.168.0.64"


def test_hikvision_ipc_tcp_active_answer() -> None:
    sd = parse_sdp(body("200ok-invite-hikvision-ipc-tcp-active-01.sip"))
    assert sd.origin is not None and sd.origin.session_id == "1941"
    video = sd.video
    assert video is not None
    assert (video.port, video.proto, video.setup) == (15060, "TCP/RTP/AVP", "active")
    assert video.connection is None
    assert video.attribute("filesize") == "0"
    assert sd.is_tcp
    assert sd.ssrc_int == 200007585


def test_hikvision_nvr_playback_answer_private_attributes_and_shifted_time() -> None:
    sd = parse_sdp(body("200ok-invite-hikvision-nvr-playback-01.sip"))
    assert sd.session_name == "Network Video Recorder"
    assert sd.timing == (1714833796, 1714835786)
    offer = parse_sdp(body("invite-exosip-download-01.sip"))
    # The NVR answers in local time: both ends are 8 hours after the offered range.
    assert sd.timing[0] - offer.timing[0] == sd.timing[1] - offer.timing[1] == 8 * 3600
    video = sd.video
    assert video is not None
    assert video.port == 62000
    assert video.attributes[2:] == [
        ("username", "34020000001110000001"),
        ("password", "********"),
        ("filesize", "2124794308"),
    ]
    assert sd.ssrc == "0000002000"
    assert sd.f == ""


def test_wx_talk_answer_audio_over_tcp() -> None:
    sd = parse_sdp(body("200ok-invite-wx-platform-tcp-talk-01.sip"))
    assert sd.video is None
    (audio,) = sd.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        30004,
        "TCP/RTP/AVP",
        [8],
    )
    assert audio.rtpmap == {8: "PCMA/8000"}
    assert (audio.direction, audio.setup, audio.connection) == ("sendonly", "passive", "new")
    assert sd.is_tcp
    assert sd.address == "192.168.0.110"
    assert sd.ssrc == "0200000017"
    assert sd.f == "v/////a/1/8/1"


def test_liberal_case_whitespace_and_line_ends() -> None:
    text = (
        "v=0 \n"
        "o=34020000002000000001 0 0 in ip4 10.0.0.1\r\n"
        "s=PLAYBACK\t\r"
        "u=34020000001310000001:0\n"
        "t=1 2\n"
        "\n"
        "m=VIDEO 30000 tcp/rtp/avp 96\n"
        "c=IN IP4 10.0.0.2\n"
        "a=RECVONLY\n"
        "a=Setup:PASSIVE\n"
        "a=CONNECTION:New\n"
        "a=rtpmap:96  PS/90000\n"
        "y=1105000002  \n"
    )
    sd = parse_sdp(text)
    assert sd.origin == Origin("34020000002000000001", "0", "0", "IN", "IP4", "10.0.0.1")
    assert sd.session_name == "Playback"
    assert sd.connection_address is None
    video = sd.video
    assert video is not None
    assert (video.media, video.proto) == ("video", "TCP/RTP/AVP")
    assert (video.direction, video.setup, video.connection) == ("recvonly", "passive", "new")
    assert video.rtpmap == {96: "PS/90000"}
    assert sd.address == "10.0.0.2"
    assert sd.ssrc == "1105000002"
    assert parse_sdp(build_sdp(sd)) == sd


def test_rtp_avp_tcp_spelling_is_tcp() -> None:
    sd = parse_sdp("v=0\nm=video 9000 RTP/AVP/TCP 96\n")
    assert sd.is_tcp


def test_media_c_line_wins_over_session_c_line() -> None:
    sd = parse_sdp("v=0\nc=IN IP4 1.1.1.1\nt=0 0\nm=video 1 RTP/AVP 96\nc=IN IP4 2.2.2.2\n")
    assert sd.connection_address == "1.1.1.1"
    assert sd.address == "2.2.2.2"


def test_unknown_lines_are_kept_in_order() -> None:
    text = "v=0\ns=Play\ni=info\nb=AS:512\nt=0 0\na=tool:x\nm=video 1 RTP/AVP 96\nb=AS:64\n"
    sd = parse_sdp(text)
    assert sd.other == [("i", "info"), ("b", "AS:512"), ("a", "tool:x")]
    assert sd.media[0].other == [("b", "AS:64")]
    assert parse_sdp(build_sdp(sd)) == sd


def test_y_and_f_anywhere_are_session_level_and_first_wins() -> None:
    sd = parse_sdp("v=0\ny=0000000001\nm=video 1 RTP/AVP 96\ny=0000000002\nf=v/2\na=recvonly\n")
    assert (sd.ssrc, sd.f) == ("0000000001", "v/2")
    assert sd.media[0].attributes == [("recvonly", None)]
    assert lines(sd)[-2:] == ["y=0000000001", "f=v/2"]


def test_missing_optional_lines() -> None:
    sd = parse_sdp(b"m=video 5000 RTP/AVP\r\n")
    assert sd.version == 0 and sd.origin is None and sd.session_name == ""
    assert sd.timing == (0, 0) and sd.media[0].formats == []
    assert sd.ssrc is None and sd.ssrc_int is None and sd.address is None
    assert lines(sd) == ["v=0", "s= ", "t=0 0", "m=video 5000 RTP/AVP"]
    assert parse_sdp(build_sdp(sd)) == sd


def test_ssrc_int_of_odd_values() -> None:
    assert parse_sdp("v=0\ny=105000001").ssrc_int == 105000001  # 9 digits (2016 example)
    assert parse_sdp("v=0\ny=9999999999").ssrc_int is None  # not a uint32
    assert parse_sdp("v=0\ny=abc").ssrc_int is None
    assert parse_sdp("v=0\ny=").ssrc == ""


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "SDP body has neither a v= nor an m= line"),
        ("s=Play\nt=0 0\n", "SDP body has neither a v= nor an m= line"),
        ("v=0\nhello\n", "malformed SDP line: 'hello'"),
        ("v=0\n1=2\n", "malformed SDP line: '1=2'"),
        ("v=x\n", "bad v= line in SDP: 'x'"),
        ("v=0\no=a b c\n", "bad o= line in SDP: 'a b c'"),
        ("v=0\nc=IN IP4\n", "bad c= line in SDP: 'IN IP4'"),
        ("v=0\nt=0\n", "bad t= line in SDP: '0'"),
        ("v=0\nt=-1 0\n", "bad t= start in SDP: '-1'"),
        ("v=0\nm=video\n", "bad m= line in SDP: 'video'"),
        ("v=0\nm=video 65536 RTP/AVP 96\n", "bad port in m= line in SDP: '65536'"),
        ("v=0\nm=video 5000/2 RTP/AVP 96\n", "bad port in m= line in SDP: '5000/2'"),
        ("v=0\nm=video ١٢ RTP/AVP 96\n", "bad port in m= line in SDP: '١٢'"),
        ("v=0\nm=video 5000 RTP/AVP PS\n", "bad format in m= line in SDP: 'PS'"),
        ("v=0\nm=video 5000 RTP/AVP 9_6\n", "bad format in m= line in SDP: '9_6'"),
        ("v=0\nm=video 5000 RTP/AVP 128\n", "bad format in m= line in SDP: '128'"),
    ],
)
def test_garbage_raises_parse_error(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sdp(text)
    assert info.value.reason == reason
    assert info.value.status_hint == 400


def test_every_prefix_parses_or_raises_parse_error() -> None:
    data = body("200ok-invite-hikvision-nvr-playback-01.sip")
    for cut in range(len(data)):
        try:
            parse_sdp(data[:cut])
        except ParseError:
            pass


def test_oversized_body() -> None:
    with pytest.raises(MessageTooLarge):
        parse_sdp(b"v=0\r\n" + b"a=x\r\n" * 20000)


def test_gb18030_session_name_survives() -> None:
    sd = parse_sdp("v=0\r\ns=回放\r\n".encode("gb18030"))
    assert sd.session_name == "回放"


# --- building -------------------------------------------------------------------------------


def test_play_offer_udp_matches_the_gb_form() -> None:
    sd = play_offer(
        node_id="41010500002000000001",
        media_ip="10.0.0.10",
        port=30000,
        transport="udp",
        ssrc="0105000001",
        channel_id="41010500001310000001",
    )
    assert lines(sd) == [
        "v=0",
        "o=41010500002000000001 0 0 IN IP4 10.0.0.10",
        "s=Play",
        "c=IN IP4 10.0.0.10",
        "t=0 0",
        "m=video 30000 RTP/AVP 96 97 98",
        "a=recvonly",
        "a=rtpmap:96 PS/90000",
        "a=rtpmap:97 MPEG4/90000",
        "a=rtpmap:98 H264/90000",
        "y=0105000001",
    ]
    assert parse_sdp(build_sdp(sd)) == sd
    assert not sd.is_tcp and sd.ssrc_int == 0x06422C41


@pytest.mark.parametrize(
    ("transport", "setup"), [("tcp-passive", "passive"), ("tcp-active", "active")]
)
def test_play_offer_tcp(transport: str, setup: str) -> None:
    sd = play_offer(
        node_id="41010500002000000001",
        media_ip="10.0.0.10",
        port=30000,
        transport=transport,
        ssrc="0105000001",
        channel_id="41010500001310000001",
        stream_number=1,
    )
    out = lines(sd)
    assert out[5] == "m=video 30000 TCP/RTP/AVP 96 97 98"
    assert out[10:] == [
        f"a=setup:{setup}",
        "a=connection:new",
        "a=streamnumber:1",
        "a=stream:1",
        "a=streamprofile:1",
        "a=streamMode:SUB",
        "y=0105000001",
    ]
    video = sd.video
    assert video is not None and (video.setup, video.connection) == (setup, "new")
    assert sd.is_tcp
    assert parse_sdp(build_sdp(sd)) == sd


def test_play_offer_playback_and_download() -> None:
    common = {
        "node_id": "41010500002000000001",
        "media_ip": "10.0.0.10",
        "port": 30002,
        "transport": "udp",
        "ssrc": "1105000002",
        "channel_id": "41010500001310000001",
        "start": 1716170400,
        "stop": 1716174000,
    }
    playback = play_offer(session="Playback", **common)  # type: ignore[arg-type]
    assert lines(playback)[2:5] == [
        "s=Playback",
        "u=41010500001310000001:0",
        "c=IN IP4 10.0.0.10",
    ]
    assert playback.timing == (1716170400, 1716174000)
    download = play_offer(session="Download", download_speed=4, **common)  # type: ignore[arg-type]
    assert lines(download)[2] == "s=Download"
    assert lines(download)[-2:] == ["a=downloadspeed:4", "y=1105000002"]
    live = play_offer(**common)  # type: ignore[arg-type]
    assert live.timing == (0, 0) and live.uri is None


@pytest.mark.parametrize(
    "changes",
    [
        {"transport": "sctp"},
        {"session": "Talk"},
        {"ssrc": "01050000011"},
        {"ssrc": "0105\r\n"},
        {"port": 0},
    ],
)
def test_play_offer_rejects_misuse(changes: dict[str, object]) -> None:
    args: dict[str, object] = {
        "node_id": "41010500002000000001",
        "media_ip": "10.0.0.10",
        "port": 30000,
        "transport": "udp",
        "ssrc": "0105000001",
        "channel_id": "41010500001310000001",
    }
    with pytest.raises(LocalProtocolError):
        play_offer(**{**args, **changes})  # type: ignore[arg-type]


def test_build_rejects_views_that_disagree_with_attributes() -> None:
    sd = parse_sdp(body("invite-srs5-tcp-01.sip"))
    sd.media[0] = replace(sd.media[0], setup="passive")
    with pytest.raises(LocalProtocolError):
        build_sdp(sd)


def test_build_rejects_line_breaks_and_misplaced_lines() -> None:
    with pytest.raises(LocalProtocolError):
        build_sdp(SessionDescription(session_name="Play\r\nm=audio 1 RTP/AVP 0"))
    with pytest.raises(LocalProtocolError):
        build_sdp(SessionDescription(other=[("y", "1")]))
    md = MediaDescription.from_attributes("video", 1, "RTP/AVP", [96], [], other=[("a", "x")])
    with pytest.raises(LocalProtocolError):
        build_sdp(SessionDescription(media=[md]))


def test_gb_ssrc_examples_from_the_standard() -> None:
    # 2016 App. F: digits 2-6 are digits 4-8 of the domain ID.
    assert gb_ssrc("13010000002000000001", 1, history=False) == "0100000001"
    assert gb_ssrc("41010500002000000001", 1, history=False) == "0105000001"
    assert gb_ssrc("4101050000", 2, history=True) == "1105000002"
    # The platform in the corpus picked its middle digits freely (y=0100008888), as wvp does.
    assert gb_ssrc("64010600002020000001", 8888, history=False) == "0106008888"
    assert int(gb_ssrc("41010500002000000001", 2, history=True)) == 0x41DCF642


@pytest.mark.parametrize(
    ("realm", "serial"),
    [("410105", 1), ("41010500x0", 1), ("4101050000", -1), ("4101050000", 10000)],
)
def test_gb_ssrc_rejects_misuse(realm: str, serial: int) -> None:
    with pytest.raises(LocalProtocolError):
        gb_ssrc(realm, serial, history=False)


def test_subject_header() -> None:
    assert (
        subject_header("41010500001310000001", "0105000001", "41010500002000000001")
        == "41010500001310000001:0105000001,41010500002000000001:0"
    )
    assert subject_header("a", "1", "b", "7") == "a:1,b:7"
    with pytest.raises(LocalProtocolError):
        subject_header("a", "x" * 21, "b")
    with pytest.raises(LocalProtocolError):
        subject_header("a,b", "1", "c")


# --- properties -------------------------------------------------------------------------------

TOKEN = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
)
VALUE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20
).filter(lambda v: v == v.strip(" \t"))
NAME = TOKEN.filter(lambda t: ":" not in t)
KNOWN_NAMES = {"play", "playback", "download", "talk"}


@st.composite
def media_descriptions(draw: st.DrawFn) -> MediaDescription:
    attributes = draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.sampled_from(["recvonly", "sendonly", "setup", "connection", "rtpmap"]),
                    st.none() | st.sampled_from(["passive", "ACTIVE", "new", "96 PS/90000"]),
                ),
                st.tuples(NAME, st.none() | VALUE),
            ),
            max_size=6,
        )
    )
    return MediaDescription.from_attributes(
        draw(st.sampled_from(["video", "audio"])),
        draw(st.integers(0, 65535)),
        draw(st.sampled_from(["RTP/AVP", "TCP/RTP/AVP", "RTP/AVP/TCP"])),
        draw(st.lists(st.integers(0, 127), max_size=4)),
        attributes,
        connection_address=draw(st.none() | TOKEN),
        other=draw(st.lists(st.tuples(st.sampled_from("ibkxZ"), VALUE), max_size=2)),
    )


@st.composite
def session_descriptions(draw: st.DrawFn) -> SessionDescription:
    origin = draw(
        st.none()
        | st.builds(
            Origin,
            TOKEN,
            TOKEN,
            TOKEN,
            TOKEN.map(str.upper),
            TOKEN.map(str.upper),
            TOKEN,
        )
    )
    name = draw(
        st.sampled_from(["Play", "Playback", "Download", "Talk", ""])
        | VALUE.filter(lambda v: v.lower() not in KNOWN_NAMES)
    )
    return SessionDescription(
        version=draw(st.integers(0, 10**12)),
        origin=origin,
        session_name=name,
        uri=draw(st.none() | VALUE),
        connection_address=draw(st.none() | TOKEN),
        timing=(draw(st.integers(0, 2**40)), draw(st.integers(0, 2**40))),
        media=draw(st.lists(media_descriptions(), max_size=3)),
        ssrc=draw(st.none() | VALUE),
        f=draw(st.none() | VALUE),
        other=draw(st.lists(st.tuples(st.sampled_from("ipebzkrXa"), VALUE), max_size=3)),
    )


@given(session_descriptions())
def test_generated_descriptions_round_trip(sd: SessionDescription) -> None:
    assert parse_sdp(build_sdp(sd)) == sd


@given(st.binary(max_size=400))
@example(b"v=0\rs=a\rb\n")
@example(b"m=video 1 RTP/AVP\n\xff\xfe")
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    try:
        sd = parse_sdp(data)
    except ParseError:
        return
    assert parse_sdp(build_sdp(sd)) == sd


SDP_ALPHABET = st.sampled_from(list("vosuctmayf=: \t\r\n0123456789/PSRTAVIN.x-") + ["\x85", "é"])


@given(st.text(alphabet=SDP_ALPHABET, max_size=200))
def test_sdp_like_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        sd = parse_sdp(text)
    except ParseError:
        return
    assert parse_sdp(build_sdp(sd)) == sd


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        parse_sdp(text)
    except ParseError:
        pass
