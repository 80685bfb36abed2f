"""The end of a playback or download (Notify/MediaStatus 121) and the `t=` time rule
(GB/T 28181-2016 section 9.8, 9.9, App. F): bodies as devices and platforms write them, the
MESSAGE in the dialog of a corpus Download INVITE, the corpus `t=` lines, and hypothesis."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sip.dialog import Dialog
from sip.errors import LocalProtocolError, ParseError
from sip.manscdp import ManscdpError, parse_gb_time, parse_manscdp
from sip.message import Request, Response, parse_message
from sip.playback import (
    END_OF_FILE,
    NTP_UNIX_OFFSET,
    MediaStatus,
    media_status,
    media_status_of,
    parse_media_status,
    sdp_range_to_unix,
    sdp_time_to_unix,
    unix_to_sdp_time,
)
from sip.relay import parse_play_request
from sip.sdp import parse_sdp, play_offer
from tests.conftest import load

CHANNEL = "34020000001310000001"
BEIJING = timezone(timedelta(hours=8))
VIA = "SIP/2.0/UDP 192.168.0.64:5060;rport;branch=z9hG4bKnode121"


def corpus_message(name: str) -> Request | Response:
    return parse_message(load(f"corpus/{name}"))


# ----- MediaStatus -------------------------------------------------------------------------------


def test_media_status_as_built() -> None:
    body = media_status(151, CHANNEL)
    assert body == (
        b'<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n<CmdType>MediaStatus</CmdType>\r\n'
        b"<SN>151</SN>\r\n<DeviceID>34020000001310000001</DeviceID>\r\n"
        b"<NotifyType>121</NotifyType>\r\n</Notify>\r\n"
    )
    status = parse_media_status(body)
    assert status == MediaStatus(151, CHANNEL, END_OF_FILE)
    assert status.end_of_file


SENT = [
    # A Hikvision IPC at the end of a download: GB2312 declaration, one element a line.
    ("hikvision", b'<?xml version="1.0" encoding="GB2312"?>\n<Notify>\n'
     b"<CmdType>MediaStatus</CmdType>\n<SN>151</SN>\n<DeviceID>34020000001310000001</DeviceID>\n<NotifyType>121</NotifyType>\n"
     b"</Notify>\n", 151),
    # Device firmware on eXosip: a declaration without encoding, no final line end.
    ("exosip", b'<?xml version="1.0"?>\r\n<Notify>\r\n<CmdType>MediaStatus</CmdType>\r\n'
     b"<SN>8</SN>\r\n<DeviceID>34020000001310000001</DeviceID>\r\n"
     b"<NotifyType>121</NotifyType>\r\n</Notify>", 8),
    # wvp forwarding it upward, declaration in UTF-8.
    ("wvp", b'<?xml version="1.0" encoding="UTF-8"?>\r\n<Notify>\r\n'
     b"<CmdType>MediaStatus</CmdType>\r\n<SN>512345</SN>\r\n<DeviceID>34020000001310000001</DeviceID>\r\n"
     b"<NotifyType>121</NotifyType>\r\n</Notify>\r\n", 512345),
    ("one line", b"<Notify><CmdType>MediaStatus</CmdType><SN>812</SN><DeviceID>34020000001310000001"
     b"</DeviceID><NotifyType>121</NotifyType></Notify>", 812),
    ("case and spaces", b"<notify><cmdtype>mediastatus</cmdtype><sn> 9 </sn><deviceid>"
     b"34020000001310000001</deviceid><notifytype> 121 </notifytype></notify>", 9),
]  # fmt: skip


@pytest.mark.parametrize(("data", "sn"), [s[1:] for s in SENT], ids=[s[0] for s in SENT])
def test_media_status_as_sent(data: bytes, sn: int) -> None:
    assert parse_media_status(data) == MediaStatus(sn, CHANNEL, 121)


def test_media_status_of_a_parsed_body() -> None:
    message = parse_manscdp(media_status(7, CHANNEL, 122, encoding="UTF-8"))
    status = media_status_of(message)
    assert status == MediaStatus(7, CHANNEL, 122)
    assert not status.end_of_file


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
         b"<Status>OK</Status></Notify>", "not a MediaStatus"),
        (b"<Response><CmdType>MediaStatus</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
         b"<NotifyType>121</NotifyType></Response>", "not a MediaStatus"),
        (b"<Notify><CmdType>MediaStatus</CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify>",
         "bad NotifyType"),
        (b"<Notify><CmdType>MediaStatus</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
         b"<NotifyType>EOF</NotifyType></Notify>", "bad NotifyType"),
        (b"<Notify><CmdType>MediaStatus</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
         b"<NotifyType>-121</NotifyType></Notify>", "bad NotifyType"),
        (b"<Notify><CmdType>MediaStatus</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
         b"<NotifyType>1210000000</NotifyType></Notify>", "bad NotifyType"),
        (b"<Notify><CmdType>MediaStatus</CmdType><SN>x</SN></Notify>", "SN"),
        (b"<Notify><CmdType>MediaStatus</CmdType>", "malformed XML"),
        (b"RTSP/1.0 200 OK\r\nCSeq: 4\r\n", "malformed XML"),
    ],
)  # fmt: skip
def test_media_status_refused(data: bytes, words: str) -> None:
    with pytest.raises(ManscdpError, match=words):
        parse_media_status(data)


def test_media_status_that_cannot_be_sent() -> None:
    with pytest.raises(LocalProtocolError):
        media_status(1, CHANNEL, -1)
    with pytest.raises(LocalProtocolError):
        media_status(-1, CHANNEL)


def test_media_status_in_the_dialog_of_a_corpus_download() -> None:
    """The node ends a wx platform's Download: MESSAGE in the INVITE's dialog (Call-ID, tags)."""
    invite = corpus_message("invite-wx-download-udp-01.sip")
    assert isinstance(invite, Request)
    play = parse_play_request(invite)
    assert play.session == "Download"
    ok = Response.for_request(invite, 200, to_tag="node121")
    dialog = Dialog.from_request(invite, ok)
    message = dialog.request(
        "MESSAGE", VIA, media_status(3, play.channel_id), "Application/MANSCDP+xml"
    )
    received = parse_message(bytes(message))
    assert isinstance(received, Request)
    assert received.call_id == invite.call_id
    assert (received.from_.tag, received.to.tag) == ("node121", invite.from_.tag)
    assert parse_media_status(received.body) == MediaStatus(3, play.channel_id, 121)


@given(st.binary(max_size=400))
@example(b"<Notify><CmdType>MediaStatus</CmdType><SN>1</SN><NotifyType>\xff</NotifyType></Notify>")
def test_any_bytes_parse_or_raise(data: bytes) -> None:
    try:
        parse_media_status(data)
    except ParseError:
        pass


@given(
    st.integers(0, 2**31 - 1),
    st.text("0123456789", min_size=20, max_size=20),
    st.integers(0, 999_999_999),
    st.sampled_from(["GB2312", "UTF-8"]),
)
def test_media_status_round_trip(sn: int, channel: str, notify_type: int, encoding: str) -> None:
    body = media_status(sn, channel, notify_type, encoding=encoding)
    assert parse_media_status(body) == MediaStatus(sn, channel, notify_type)


# ----- the t= line -------------------------------------------------------------------------------


def test_corpus_offers_are_unix_seconds() -> None:
    """eXosip's Download offer for a range a Hikvision NVR lists in Beijing time."""
    invite = corpus_message("invite-exosip-download-01.sip")
    offer = parse_sdp(invite.body)
    assert offer.timing == (1714804996, 1714806986)
    start, stop = sdp_range_to_unix(offer.timing)
    assert start == parse_gb_time("2024-05-04T14:43:16", BEIJING).timestamp()
    assert stop == parse_gb_time("2024-05-04T15:16:26", BEIJING).timestamp()


def test_hikvision_nvr_answer_in_local_time() -> None:
    """The NVR's 200 to that playback writes its Beijing wall clock as if it were UTC."""
    offer = parse_sdp(corpus_message("invite-exosip-download-01.sip").body)
    answer = parse_sdp(corpus_message("200ok-invite-hikvision-nvr-playback-01.sip").body)
    assert sdp_range_to_unix(answer.timing) != sdp_range_to_unix(offer.timing)
    shifted = sdp_range_to_unix(answer.timing, wall_offset=8 * 3600)
    assert shifted == sdp_range_to_unix(offer.timing)


def test_wx_download_range_through_the_relay_parser() -> None:
    invite = corpus_message("invite-wx-download-udp-01.sip")
    assert isinstance(invite, Request)
    play = parse_play_request(invite)
    start, stop = sdp_range_to_unix((play.start, play.stop))
    assert start is not None and stop is not None
    assert datetime.fromtimestamp(start, UTC) == datetime(2025, 4, 18, 3, 14, 54, tzinfo=UTC)
    assert stop - start == 1035


def test_live_is_now() -> None:
    offer = parse_sdp(corpus_message("invite-exosip-udp-live-01.sip").body)
    assert offer.timing == (0, 0)
    assert sdp_range_to_unix(offer.timing) == (None, None)
    assert unix_to_sdp_time(None) == 0


@pytest.mark.parametrize(
    ("value", "unix"),
    [
        (1716170400, 1716170400),  # 2024-05-20T10:00:00+08:00 as GB writes it
        (NTP_UNIX_OFFSET + 1716170400, 1716170400),  # the same in NTP seconds
        (1, 1),
        (NTP_UNIX_OFFSET - 1, NTP_UNIX_OFFSET - 1),  # 2039-12-31T23:59:59Z: still Unix
        (NTP_UNIX_OFFSET, 0),  # 1970-01-01 in NTP: from here on, NTP
        (2**32, 2**32 - NTP_UNIX_OFFSET),  # past the 32-bit NTP era (2036): decimal, unwrapped
    ],
)
def test_the_rule(value: int, unix: int) -> None:
    assert sdp_time_to_unix(value) == unix


def test_the_boundary_is_2040() -> None:
    assert datetime.fromtimestamp(NTP_UNIX_OFFSET, UTC) == datetime(2040, 1, 1, tzinfo=UTC)


def test_writing() -> None:
    assert unix_to_sdp_time(1716170400) == 1716170400
    assert unix_to_sdp_time(1716170400, ntp=True) == 3925159200
    assert unix_to_sdp_time(1716170400.999) == 1716170400
    assert unix_to_sdp_time(NTP_UNIX_OFFSET - 0.5) == NTP_UNIX_OFFSET - 1


@pytest.mark.parametrize("unix", [0, 0.5, -1, NTP_UNIX_OFFSET, float("nan"), float("inf")])
def test_times_that_cannot_be_written(unix: float) -> None:
    with pytest.raises(LocalProtocolError):
        unix_to_sdp_time(unix)


@pytest.mark.parametrize("value", [-1, 10**12 + 1])
def test_values_out_of_range(value: int) -> None:
    with pytest.raises(LocalProtocolError):
        sdp_time_to_unix(value)


def test_offer_built_and_read_back() -> None:
    """play_offer writes what unix_to_sdp_time gives; the relay parser and the rule read it."""
    start = int(parse_gb_time("2026-11-23T10:00:00", BEIJING).timestamp())
    offer = play_offer(
        node_id="31011200002000000100", media_ip="10.1.0.9", port=30000, transport="udp",
        ssrc="1100000001", channel_id=CHANNEL, session="Playback",
        start=unix_to_sdp_time(start), stop=unix_to_sdp_time(start + 3600),
    )  # fmt: skip
    assert offer.timing == (start, start + 3600)
    assert sdp_range_to_unix(offer.timing) == (start, start + 3600)


@given(st.integers(1, NTP_UNIX_OFFSET - 1), st.booleans())
@example(1, True)
@example(NTP_UNIX_OFFSET - 1, True)
@example(NTP_UNIX_OFFSET - 1, False)
def test_round_trip(unix: int, ntp: bool) -> None:
    value = unix_to_sdp_time(unix, ntp=ntp)
    assert (value >= NTP_UNIX_OFFSET) is ntp
    assert sdp_time_to_unix(value) == unix
