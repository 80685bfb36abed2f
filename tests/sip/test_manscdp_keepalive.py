"""The plain-keepalive shortcut of `parse_manscdp` must agree with the XML path exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import ParseError
from sip.manscdp import ManscdpMessage, keepalive, parse_manscdp, parse_manscdp_xml
from sip.message import parse_message

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"

space = st.sampled_from(["", " ", "\r\n", "\n", "\t", "\r\n  "])


def same(a: ManscdpMessage, b: ManscdpMessage) -> bool:
    return a == b  # `element` is excluded from comparison


def test_corpus_keepalive_takes_the_shortcut_and_agrees():
    body = parse_message((CORPUS / "keepalive-hikvision-ipc-01.sip").read_bytes()).body
    fast = parse_manscdp(body)
    assert fast.element is None  # the shortcut was taken
    assert same(fast, parse_manscdp_xml(body))


def test_built_keepalive_takes_the_shortcut():
    body = keepalive(7, "31011200001320000001")
    fast = parse_manscdp(body)
    assert fast.element is None
    assert (fast.root, fast.cmd_type, fast.sn, fast.device_id, fast.fields) == (
        "Notify", "Keepalive", 7, "31011200001320000001", {"Status": "OK"}
    )
    assert same(fast, parse_manscdp_xml(body))


@pytest.mark.parametrize(
    "body",
    [
        b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
        b"<Status>OK</Status><Info><DeviceID>2</DeviceID></Info></Notify>",
        b"<Notify><CmdType>keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
        b"<Status>OK</Status></Notify>",
        b"\xef\xbb\xbf<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID>"
        b"<Status>OK</Status></Notify>",
    ],
)
def test_other_keepalive_forms_go_through_xml(body):
    assert parse_manscdp(body).element is not None


@given(
    decl=st.sampled_from(
        ["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="GB2312"?>',
         "<?xml version='1.0' encoding='gb18030'?>", '<?xml version="1.0" encoding="UTF-8" ?>']
    ),
    gaps=st.lists(space, min_size=9, max_size=9),
    sn=st.integers(0, 999_999_999).map(str) | st.just("007"),
    device=st.text("0123456789", min_size=1, max_size=20),
    status=st.sampled_from(["OK", "ERROR"]),
    info=st.sampled_from(["", "<Info></Info>", "<Info/>", "<Info>\r\n</Info>"]),
)
def test_shortcut_agrees_with_xml_path(decl, gaps, sn, device, status, info):
    g = gaps
    body = (
        f"{g[0]}{decl}{g[1]}<Notify>{g[2]}<CmdType>Keepalive</CmdType>{g[3]}<SN>{sn}</SN>{g[4]}"
        f"<DeviceID>{device}</DeviceID>{g[5]}<Status>{status}</Status>{g[6]}{info}{g[7]}"
        f"</Notify>{g[8]}"
    ).encode()
    assert same(parse_manscdp(body), parse_manscdp_xml(body))


@given(st.binary(max_size=300))
def test_shortcut_never_accepts_what_the_xml_path_refuses(data):
    prefix = b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>"
    body = prefix + data
    try:
        expected = parse_manscdp_xml(body)
    except ParseError:
        with pytest.raises(ParseError):
            parse_manscdp(body)
        return
    assert same(parse_manscdp(body), expected)
