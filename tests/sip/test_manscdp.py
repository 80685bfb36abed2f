"""MANSCDP bodies: the real ones of the corpus, what devices get wrong, hostile input, building."""

import time
from datetime import UTC, datetime, timedelta, timezone
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from sip import manscdp
from sip.errors import LocalProtocolError, ParseError
from sip.manscdp import (
    ManscdpError,
    build_manscdp,
    catalog_query,
    catalog_response_parts,
    decode_body,
    device_info_query,
    device_status_query,
    format_gb_time,
    keepalive,
    parse_gb_time,
    parse_manscdp,
    record_info_query,
    response_parts,
)
from tests.conftest import DATA, load

CORPUS = DATA / "corpus"
BEIJING = timezone(timedelta(hours=8))


def body_of(name: str) -> bytes:
    """The body of a stored SIP message: everything after the first blank line."""
    return load(f"corpus/{name}").split(b"\r\n\r\n", 1)[1]


def manscdp_files() -> list[str]:
    names = []
    for path in sorted(CORPUS.glob("*.sip")):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].lower()
        if b"manscdp+xml" in head:
            names.append(path.name)
    return names


def envelope(inner: str, cmd: str = "Catalog") -> str:
    return f"<Query><CmdType>{cmd}</CmdType><SN>1</SN><DeviceID>1</DeviceID>{inner}</Query>"


# -- the corpus ---------------------------------------------------------------------------------

IPC, CAM, NVR = "34020000001320000002", "34020000001310000001", "34020000001110000001"
# file -> (root, CmdType, SN, DeviceID, real encoding, declared encoding)
CORPUS_CASES = {
    "broadcast-notify-wvp-01.sip": ("Notify", "Broadcast", 177976, "", "UTF-8", "GB2312"),
    "broadcast-response-dahua-ipc-01.sip": ("Response", "Broadcast", 10017, CAM, "UTF-8", "GB2312"),
    "catalog-query-exosip-platform-01.sip": ("Query", "Catalog", 7, IPC, "UTF-8", None),
    "catalog-response-hikvision-ipc-01.sip": ("Response", "Catalog", 10021, IPC, "UTF-8", "GB2312"),
    "catalog-response-hikvision-ipc-62010201-01.sip":
        ("Response", "Catalog", 1708, "62010201001320000393", "UTF-8", "GB2312"),
    "catalog-response-hikvision-nvr-multipart-01.sip":
        ("Response", "Catalog", 419315752, NVR, "UTF-8", "gb2312"),
    "deviceinfo-response-dahua-sd-01.sip": ("Response", "DeviceInfo", 9, IPC, "UTF-8", "GB2312"),
    "devicestatus-response-hikvision-ipc-01.sip":
        ("Response", "DeviceStatus", 10018, IPC, "UTF-8", "GB2312"),
    "keepalive-hikvision-ipc-01.sip": ("Notify", "Keepalive", 9, IPC, "UTF-8", "GB2312"),
    "presetquery-response-hikvision-ipc-gb2312-01.sip":
        ("Response", "PresetQuery", 10024, CAM, "GB18030", "GB2312"),
    "recordinfo-query-exosip-platform-01.sip": ("Query", "RecordInfo", 18, CAM, "UTF-8", None),
    "snapshot-finished-notify-hikvision-ipc-gb18030-01.sip":  # declared GB18030, ASCII only
        ("Notify", "UploadSnapShotFinished", 10003, CAM, "UTF-8", "GB18030"),
    "subscribe-alarm-wx-platform-01.sip": ("Query", "Alarm", 10033, CAM, "UTF-8", "GB2312"),
}  # fmt: skip


def test_every_manscdp_body_of_the_corpus_is_covered():
    assert sorted(CORPUS_CASES) == manscdp_files()


@pytest.mark.parametrize("name", sorted(CORPUS_CASES))
def test_corpus_body_parses(name):
    msg = parse_manscdp(body_of(name))
    got = (msg.root, msg.cmd_type, msg.sn, msg.device_id, msg.encoding, msg.declared_encoding)
    assert got == CORPUS_CASES[name]
    # The plain keepalive skips the XML parser (test_manscdp_keepalive.py); others keep a tree.
    plain_keepalive = msg.cmd_type == "Keepalive" and msg.element is None
    assert plain_keepalive or (msg.element is not None and msg.element.tag == msg.root)


def test_keepalive_hikvision_empty_info():
    msg = parse_manscdp(body_of("keepalive-hikvision-ipc-01.sip"))
    assert msg.fields == {"Status": "OK", "Info": ""}  # <Info>\n</Info>
    assert msg.items == [] and msg.list_num is None and msg.sum_num is None


def test_catalog_hikvision_ipc_alarm_input_with_empty_name():
    msg = parse_manscdp(body_of("catalog-response-hikvision-ipc-01.sip"))
    assert msg.sum_num == 2 and msg.list_num == 2 and msg.list_name == "DeviceList"
    camera, alarm_in = msg.items
    assert (camera["DeviceID"], camera["Name"], camera["Status"]) == (
        "34020000001310000001", "hikangname", "ON",
    )  # fmt: skip
    assert camera["ParentID"] == "34020000002000000001"  # the platform
    assert (alarm_in["Name"], alarm_in["Model"]) == ("", "AlarmIn")
    assert alarm_in["ParentID"] == "34020000001320000002"  # the device
    gansu = parse_manscdp(body_of("catalog-response-hikvision-ipc-62010201-01.sip"))
    assert gansu.items[0]["CivilCode"] == "5100000000"  # the 10-digit domain of Sichuan


def test_catalog_multipart_nvr_first_part():
    msg = parse_manscdp(body_of("catalog-response-hikvision-nvr-multipart-01.sip"))
    assert msg.sum_num == 8 and msg.list_num == 2 and len(msg.items) == 2
    assert [i["Status"] for i in msg.items] == ["ON", "OFF"]
    assert msg.items[0]["CivilCode"] == "CivilCode"  # placeholder kept as sent
    assert "ParentID" not in msg.items[0]


def test_deviceinfo_dahua_vendor_fields():
    msg = parse_manscdp(body_of("deviceinfo-response-dahua-sd-01.sip"))
    assert msg.get("result") == "OK" and msg.get("Firmware") == "2.623.0000000.17.R,2019-01-19"
    assert msg.get("channel") == "1" and msg.get("DEVICETYPE") == "SD"
    assert msg.get("Password") == "******"


def test_devicestatus_hikvision_alarmstatus_list():
    msg = parse_manscdp(body_of("devicestatus-response-hikvision-ipc-01.sip"))
    assert msg.list_name == "Alarmstatus" and msg.list_num == 1
    assert msg.items == [{"DeviceID": "34020000001340000001", "DutyStatus": "ONDUTY"}]
    assert msg.fields["Online"] == "ONLINE" and msg.fields["Record"] == "ON"


def test_presetquery_gb2312_chinese_name():
    raw = body_of("presetquery-response-hikvision-ipc-gb2312-01.sip")
    assert "预置点".encode("gb2312") in raw
    msg = parse_manscdp(raw)
    assert msg.list_name == "PresetList"
    assert msg.items == [{"PresetID": "1", "PresetName": "预置点 1"}]


def test_snapshot_notify_2022_list_without_items():
    msg = parse_manscdp(body_of("snapshot-finished-notify-hikvision-ipc-gb18030-01.sip"))
    assert msg.get("SnapShotFileID") == "34020000001310000001022025081815045400000"
    assert msg.list_name is None


def test_broadcast_notify_wvp_without_device_id():
    msg = parse_manscdp(body_of("broadcast-notify-wvp-01.sip"))
    assert msg.get("DeviceID") == "" and msg.get("SourceID") == "34020000002000000001"
    assert msg.get("TargetID") == "34020000001310000001"


def test_queries_from_platforms():
    record = parse_manscdp(body_of("recordinfo-query-exosip-platform-01.sip"))
    assert record.get("Type") == "all" and record.get("FilePath") == ""
    start = parse_gb_time(record.get("StartTime") or "", BEIJING)
    assert start == datetime(2024, 5, 1, tzinfo=BEIJING)
    alarm = parse_manscdp(body_of("subscribe-alarm-wx-platform-01.sip"))
    assert alarm.get("AlarmType") == "all"


def test_uniview_catalog_item_fragment():
    fragment = load("corpus/fragment-catalog-item-uniview-ipc-01.xml").decode("ascii")
    body = (
        '<?xml version="1.0" encoding="GB2312"?>\n<Response>\n<CmdType>Catalog</CmdType>\n'
        "<SN>3</SN>\n<DeviceID>34020000001320000002</DeviceID>\n<SumNum>1</SumNum>\n"
        f'<DeviceList Num="1">\n{fragment}</DeviceList>\n</Response>\n'
    )
    msg = parse_manscdp(body.encode("ascii"))
    (item,) = msg.items
    assert item["Owner"] == "IPC-B2202.7.11.230222" and item["Parental"] == "1"
    assert item["Longitude"] == "0.0000000"
    # Info children are flattened into the item
    assert (item["PTZType"], item["Resolution"], item["DownloadSpeed"]) == ("1", "6/4/2", "0")
    assert "Info" not in item


# -- encodings ----------------------------------------------------------------------------------


def catalog_item_body(declaration: str, name_bytes: bytes) -> bytes:
    return (
        declaration.encode("ascii")
        + b"<Response><CmdType>Catalog</CmdType><SN>5</SN><DeviceID>1</DeviceID>"
        + b'<SumNum>1</SumNum><DeviceList Num="1"><Item><DeviceID>2</DeviceID><Name>'
        + name_bytes
        + b"</Name></Item></DeviceList></Response>"
    )


UTF8_DECL, GB_DECL = (
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<?xml version="1.0" encoding="GB2312"?>',
)


@pytest.mark.parametrize(
    ("declaration", "codec", "name", "expected"),
    [
        (UTF8_DECL, "gbk", "东门入口", "GB18030"),  # UTF-8 declared, GBK sent
        (GB_DECL, "utf-8", "东门入口", "UTF-8"),  # GB2312 declared, UTF-8 sent
        (GB_DECL, "gbk", "东门入口", "GB18030"),
        (GB_DECL, "gbk", "朱镕基路", "GB18030"),  # 镕 is GBK, not GB2312: Python's gb2312 fails
        ('<?xml version="1.0"?>', "gbk", "东门入口", "GB18030"),  # no encoding declared
        ("", "gbk", "东门入口", "GB18030"),  # no declaration at all (Monibuca)
        ("", "utf-8", "东门入口", "UTF-8"),
        ("<?xml version='1.0' encoding='GBK' standalone='yes'?>", "gb18030", "東區", "GB18030"),
    ],
)
def test_encoding_by_content_not_declaration(declaration, codec, name, expected):
    msg = parse_manscdp(catalog_item_body(declaration, name.encode(codec)))
    assert msg.items[0]["Name"] == name and msg.encoding == expected


def test_short_gbk_name_that_is_also_valid_utf8():
    # "预" in GBK is D4 A4, which UTF-8 reads as U+0524. The GB declaration breaks the tie.
    raw = "预".encode("gbk")
    assert raw.decode("utf-8") == "\u0524"
    gb = parse_manscdp(catalog_item_body(GB_DECL, raw))
    assert gb.items[0]["Name"] == "预" and gb.encoding == "GB18030"
    utf = parse_manscdp(catalog_item_body('<?xml version="1.0" encoding="utf-8"?>', raw))
    assert utf.items[0]["Name"] == "\u0524" and utf.encoding == "UTF-8"
    # Real UTF-8 with CJK and a middle dot stays UTF-8 whatever the declaration says.
    mixed = parse_manscdp(catalog_item_body(GB_DECL, "张·三".encode()))
    assert mixed.items[0]["Name"] == "张·三" and mixed.encoding == "UTF-8"


def test_decode_body_reports_declaration():
    assert decode_body(b'<?xml version="1.0" encoding="GB2312"?><a/>') == (
        '<?xml version="1.0" encoding="GB2312"?><a/>', "UTF-8", "GB2312",
    )  # fmt: skip
    assert decode_body(b"\xef\xbb\xbf <?xml version='1.0' encoding='gbk' ?><a/>")[2] == "gbk"
    with pytest.raises(ManscdpError, match="neither UTF-8 nor GB18030"):
        decode_body(b"<a>\xff\xff</a>")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b: b"\xef\xbb\xbf" + b,  # UTF-8 BOM
        lambda b: "\ufeff".encode("gb18030") + b,  # GB18030 BOM
        lambda b: b"\r\n \t\n" + b,  # leading whitespace before the declaration
        lambda b: b + b"\x00\x00\x00",  # trailing NULs (C strings)
        lambda b: b + b"\r\n\x00 \n\x00",
    ],
)
def test_tolerated_framing(wrap):
    body = keepalive(3, "34020000001320000002")
    msg = parse_manscdp(wrap(body))
    assert (msg.cmd_type, msg.sn, msg.get("Status")) == ("Keepalive", 3, "OK")


def test_case_insensitive_names_and_trimmed_values():
    body = (
        b"<?xml version='1.0'?><NOTIFY><cmdtype>  keepALIVE </cmdtype><sn> 42 </sn>"
        b"<deviceid>\n 34020000001320000002\t</deviceid><STATUS> OK </STATUS>"
        b"<Info><ControlPriority> 5 </ControlPriority></Info></NOTIFY>"
    )
    msg = parse_manscdp(body)
    assert (msg.root, msg.cmd_type, msg.sn, msg.device_id) == (
        "Notify", "Keepalive", 42, "34020000001320000002",
    )  # fmt: skip
    assert msg.fields == {"Status": "OK", "ControlPriority": "5"}
    assert msg.get("status") == msg.get("STATUS") == "OK"
    assert msg.get("cmdtype") == "Keepalive" and msg.get("sn") == "42"
    assert msg.get("missing") is None and msg.get("missing", "x") == "x"
    vendor = parse_manscdp(
        b"<Notify><CmdType> VendorThing </CmdType><SN>1</SN><FooBar>x</FooBar></Notify>"
    )
    assert vendor.cmd_type == "VendorThing"  # unknown CmdType and elements kept as sent
    assert vendor.fields == {"FooBar": "x"} and vendor.get("foobar") == "x"


def test_flattening_nested_fields_and_items():
    body = envelope(
        "<Status>OK</Status><Info><DeviceID>41010500001310000003</DeviceID><Status>BAD</Status>"
        "<Deeper><Depth>2</Depth></Deeper></Info>",
        cmd="Keepalive",
    ).encode()
    msg = parse_manscdp(body)
    assert msg.device_id == "1"
    assert msg.fields == {"Status": "OK", "Depth": "2"}
    assert msg.element is not None
    assert msg.element.find("Info/DeviceID").text == "41010500001310000003"
    body = envelope(
        '<DeviceList Num="1"><Item><DeviceID>9</DeviceID><Info><BusinessGroupID>B</BusinessGroupID>'
        "<PTZType>3</PTZType></Info><BusinessGroupID>A</BusinessGroupID></Item>"
        "<NotAnItem>x</NotAnItem></DeviceList>"
    ).encode()
    items = parse_manscdp(body).items  # Info flattened, item-level BusinessGroupID first
    assert items == [{"DeviceID": "9", "BusinessGroupID": "A", "PTZType": "3"}]
    # A leaf with attributes is still a field; only the first list element gives items.
    body = envelope('<Name lang="zh">x</Name><A Num="1"><Item><B>1</B></Item></A><C Num="0"/>')
    msg = parse_manscdp(body.encode())
    assert msg.fields == {"Name": "x"} and (msg.list_name, msg.items) == ("A", [{"B": "1"}])


def test_empty_list_and_list_without_num():
    empty = parse_manscdp(envelope('<SumNum>0</SumNum><DeviceList Num="0"></DeviceList>').encode())
    assert (empty.sum_num, empty.list_num, empty.items) == (0, 0, [])
    msg = parse_manscdp(envelope("<RecordList><Item><Name>a</Name></Item></RecordList>").encode())
    assert (msg.list_name, msg.list_num) == ("RecordList", None) and msg.items == [{"Name": "a"}]
    bad_num = parse_manscdp(envelope('<DeviceList Num="two"></DeviceList>').encode())
    assert bad_num.list_num is None and bad_num.list_name == "DeviceList"


def test_raw_ampersand_and_less_than_are_repaired():
    body = envelope("<Address>Road 5 & 6</Address><Name>A&amp;B &#x4E1C;</Name>").encode()
    msg = parse_manscdp(body)
    assert msg.get("Address") == "Road 5 & 6"
    assert msg.get("Name") == "A&B 东"
    # An HTML entity is undefined in XML: kept as literal text rather than refusing the body.
    assert parse_manscdp(envelope("<Name>a&nbsp;b</Name>").encode()).get("Name") == "a&nbsp;b"
    msg = parse_manscdp(envelope("<Address>gate <3 & 4</Address>").encode())
    assert msg.get("Address") == "gate <3 & 4"


# -- refusals -----------------------------------------------------------------------------------

# Nine levels of ten-fold entity expansion: 10^9 "lol"s if a parser expanded them.
BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol0 "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    + "]>\n<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>&lol9;</DeviceID></Notify>"
).encode()

HOSTILE = {
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>&x;</DeviceID></Notify>",
    "doctype-lower-case": b'<!doctype Notify SYSTEM "http://203.0.113.1/x.dtd"><Notify/>',
    "entity-without-doctype": b'<Notify><!ENTITY x "y"><CmdType>a</CmdType></Notify>',
    "doctype-in-gb18030-body": "<!DocType x []><Notify>东</Notify>".encode("gb18030"),
    "doctype-after-bom": b"\xef\xbb\xbf<!DOCTYPE Notify><Notify/>",
    "doctype-spaced": b"<! DOCTYPE Notify><Notify/>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_dtd_and_entities_are_refused_before_any_xml_parsing(name, monkeypatch):
    # Refused on the text, so nothing is ever expanded or fetched: the XML parser is not reached.
    def no_parser(*args, **kwargs):
        raise AssertionError(f"{name} reached the XML parser")

    monkeypatch.setattr(manscdp, "_parse_xml", no_parser)
    monkeypatch.setattr(ElementTree, "XMLParser", no_parser)
    with pytest.raises(ManscdpError, match="DTD/entities not allowed") as info:
        parse_manscdp(HOSTILE[name])
    assert info.value.status_hint == 400


def test_oversized_body():
    big = envelope("<Pad>" + "x" * 65536 + "</Pad>").encode()
    with pytest.raises(ManscdpError, match="64 KiB") as info:
        parse_manscdp(big)
    assert info.value.status_hint == 513
    exact = envelope("<Pad>" + "x" * (65536 - len(envelope("<Pad></Pad>"))) + "</Pad>").encode()
    assert len(exact) == 65536 and parse_manscdp(exact).get("Pad")


@pytest.mark.parametrize(
    ("body", "reason", "status"),
    [
        (b"", "empty MANSCDP body", 400),
        (b"\x00\x00  \r\n", "empty MANSCDP body", 400),
        (b'<?xml version="1.0"?>', "empty MANSCDP body", 400),
        (b"<Notify><CmdType>Keepalive</CmdType>", "malformed XML", 400),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN></Notify><x/>", "malformed XML", 400),
        (b"not xml at all", "malformed XML", 400),
        (b"<a>\xff\xfe</a>", "neither UTF-8 nor GB18030", 400),
        (b"<Message><CmdType>X</CmdType><SN>1</SN></Message>", "unknown MANSCDP root", 415),
        (b"<Notify><SN>1</SN></Notify>", "missing CmdType", 400),
        (b"<Notify><CmdType> </CmdType><SN>1</SN></Notify>", "missing CmdType", 400),
        (b"<Notify><CmdType>Keepalive</CmdType></Notify>", "missing SN", 400),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>-1</SN></Notify>", "SN is not", 400),
        (b"<Notify><CmdType>Keepalive</CmdType><SN>1e3</SN></Notify>", "SN is not", 400),
        (b"<Notify><CmdType>K</CmdType><SN>" + b"9" * 30 + b"</SN></Notify>", "SN is not", 400),
        ("<Notify><CmdType>K</CmdType><SN>٣</SN></Notify>".encode(), "SN is not", 400),
        (b"<Notify><CmdType>K</CmdType><SN>1</SN>\x01</Notify>", "malformed XML", 400),
    ],
)
def test_refused_bodies(body, reason, status):
    with pytest.raises(ManscdpError, match=reason) as info:
        parse_manscdp(body)
    assert isinstance(info.value, ParseError)
    assert info.value.status_hint == status


@pytest.mark.parametrize(
    "body",
    [
        envelope("<a>" + "<" * 60000 + "</a>"),
        "<Query>" + "<a>x<<" * 10000,
        "<Query>" + "<a>" * 20000,
        "<Query>" + "<a>&" * 16000,
        "<Query>" + "<a>" * 100 + "<" * 60000,
        envelope("<a>" * 15000 + "x" + "</a>" * 15000),
    ],
    ids=["lt-run", "lt-blocks", "deep-open", "amp-run", "lt-tail", "deep-closed"],
)
def test_pathological_bodies_are_bounded(body):
    # CPU time of this thread, which other processes on a loaded machine do not inflate; these
    # take about 30 ms, a repair pass gone quadratic takes minutes.
    start = time.thread_time()
    try:
        parse_manscdp(body.encode()[:65536])
    except ManscdpError:
        pass
    assert time.thread_time() - start < 1.0


# -- building -----------------------------------------------------------------------------------


def test_keepalive_bytes():
    assert keepalive(57, "41010500001180000001") == (
        b'<?xml version="1.0" encoding="GB2312"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n'
        b"<SN>57</SN>\r\n<DeviceID>41010500001180000001</DeviceID>\r\n<Status>OK</Status>\r\n"
        b"</Notify>\r\n"
    )


@pytest.mark.parametrize(
    ("helper", "cmd"),
    [(catalog_query, "Catalog"), (device_info_query, "DeviceInfo"),
     (device_status_query, "DeviceStatus")],
)  # fmt: skip
def test_query_helpers(helper, cmd):
    msg = parse_manscdp(helper(17430, "41010500001180000001"))
    assert (msg.root, msg.cmd_type, msg.sn, msg.device_id, msg.fields) == (
        "Query", cmd, 17430, "41010500001180000001", {},
    )  # fmt: skip
    assert helper(1, "x", encoding="UTF-8").startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


def test_record_info_query():
    start = datetime(2024, 5, 20, tzinfo=BEIJING)
    end = datetime(2024, 5, 20, 15, 59, 59, tzinfo=UTC)
    msg = parse_manscdp(record_info_query(2101, "41010500001310000001", start, end, tz=BEIJING))
    assert msg.fields == {
        "StartTime": "2024-05-20T00:00:00",
        "EndTime": "2024-05-20T23:59:59",
        "Secrecy": "0",
        "Type": "all",
    }


@pytest.mark.parametrize("encoding", ["GB2312", "GB18030", "GBK", "UTF-8", "utf8"])
def test_build_parse_round_trip_with_chinese(encoding):
    items = [
        {"DeviceID": "41010500001310000001", "Name": "东门入口", "Address": "东门 <1> & 2",
         "Info": {"PTZType": 3, "Resolution": "6/5"}},
        {"DeviceID": "41010500002160000001", "Name": "東區 €"},
    ]  # fmt: skip
    body = build_manscdp(
        "Response", "Catalog", 17430, "41010500001180000001",
        [("SumNum", 9), ("Longitude", 113.6654), ("Info", {"Note": "备注\r\n"}), ("X", "a\rb")],
        items=items, encoding=encoding,
    )  # fmt: skip
    assert body.startswith(f'<?xml version="1.0" encoding="{encoding}"?>\r\n'.encode())
    if encoding.upper().startswith("GB"):
        assert "东门入口".encode("gb2312") in body
    else:
        assert "东门入口".encode() in body
    msg = parse_manscdp(body)
    assert msg.declared_encoding == encoding
    assert b"a&#13;b" in body  # a bare CR would come back as LF
    assert msg.fields == {"SumNum": "9", "Longitude": "113.6654", "Note": "备注", "X": "a\rb"}
    assert msg.sum_num == 9 and msg.list_num == 2
    assert msg.items == [
        {"DeviceID": "41010500001310000001", "Name": "东门入口", "Address": "东门 <1> & 2",
         "PTZType": "3", "Resolution": "6/5"},
        {"DeviceID": "41010500002160000001", "Name": "東區 €"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"fields": [("bad name", "x")]}, "invalid XML element name"),
        ({"fields": [("Name", "bell\x07")]}, "not allowed in XML"),
        ({"fields": [("Name", "\ud800")]}, "not allowed in XML"),
        ({"items": [{"1x": "y"}]}, "invalid XML element name"),
        ({"list_name": "Device List", "items": []}, "invalid XML element name"),
        ({"encoding": "Big5"}, "unsupported MANSCDP encoding"),
        ({"sn": -1}, "SN must be non-negative"),
    ],
)
def test_build_refuses_misuse(kwargs, reason):
    with pytest.raises(LocalProtocolError, match=reason):
        build_manscdp(
            **{"root": "Query", "cmd_type": "Catalog", "sn": 1, "device_id": "x", **kwargs}
        )


def make_items(n: int) -> list[dict[str, str]]:
    parent = "41010500001180000001"
    return [
        {
            "DeviceID": f"4101050000131{i:07d}",
            "Name": f"通道{i}",
            "ParentID": parent,
            "Status": "ON",
        }
        for i in range(n)
    ]


def test_catalog_response_parts_split():
    items = make_items(7)
    parts = catalog_response_parts(17430, "41010500001180000001", items, per_message=3)
    assert len(parts) == 3
    parsed = [parse_manscdp(p) for p in parts]
    assert [m.list_num for m in parsed] == [3, 3, 1]
    assert all(m.sum_num == 7 and m.sn == 17430 and m.cmd_type == "Catalog" for m in parsed)
    assert all(m.root == "Response" for m in parsed)
    assert [i for m in parsed for i in m.items] == items
    assert len(catalog_response_parts(1, "x", items)) == 7  # default: one item per part
    parts = catalog_response_parts(5, "x", make_items(2), 10, per_message=5)
    assert [parse_manscdp(p).sum_num for p in parts] == [10]
    (empty,) = catalog_response_parts(5, "x", [])  # SumNum 0 and no list
    assert parse_manscdp(empty).sum_num == 0 and parse_manscdp(empty).list_name is None


def test_response_parts_respect_max_bytes():
    items = make_items(20)
    parts = catalog_response_parts(9, "41010500001180000001", items, per_message=100,
                                   max_bytes=1000)  # fmt: skip
    assert len(parts) > 1
    assert all(len(p) <= 1000 for p in parts)
    assert [i for p in parts for i in parse_manscdp(p).items] == items
    # a single item larger than the budget still goes out, alone
    big = [{"DeviceID": "1", "Name": "x" * 2000}, {"DeviceID": "2"}]
    sizes = [parse_manscdp(p).list_num for p in catalog_response_parts(1, "x", big, per_message=9,
                                                                        max_bytes=500)]  # fmt: skip
    assert sizes == [1, 1]
    with pytest.raises(LocalProtocolError):
        catalog_response_parts(1, "x", items, per_message=0)


def test_record_info_response_parts_keep_name_before_sum_num():
    records = [{"DeviceID": "c", "StartTime": f"2024-05-20T0{i}:00:00"} for i in range(3)]
    parts = response_parts("RecordInfo", 2101, "c", records, list_name="RecordList",
                           fields=[("Name", "东门")], per_message=2)  # fmt: skip
    first = parse_manscdp(parts[0])
    assert first.fields == {"Name": "东门", "SumNum": "3"} and first.list_name == "RecordList"
    assert parts[0].index(b"<Name>") < parts[0].index(b"<SumNum>")


# -- times --------------------------------------------------------------------------------------


def test_format_gb_time_and_zones():
    dt = datetime(2026, 11, 23, 10, 0, 0, 987654)
    assert format_gb_time(dt) == "2026-11-23T10:00:00"
    assert format_gb_time(dt, millis=True) == "2026-11-23T10:00:00.987"
    aware = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    assert format_gb_time(aware, tz=ZoneInfo("Asia/Shanghai")) == "2026-11-23T10:00:00"
    assert format_gb_time(datetime(9, 1, 2, 3, 4, 5)) == "0009-01-02T03:04:05"
    # RecordInfo times are Beijing wall-clock time: 2024-05-20T10:00:00 -> 1716170400.
    assert parse_gb_time("2024-05-20T10:00:00", ZoneInfo("Asia/Shanghai")).timestamp() == 1716170400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-20T10:00:00", datetime(2024, 5, 20, 10, tzinfo=BEIJING)),
        ("2024-05-20T10:00:03.215", datetime(2024, 5, 20, 10, 0, 3, 215000, tzinfo=BEIJING)),
        ("2024-5-20T9:3:0", datetime(2024, 5, 20, 9, 3, tzinfo=BEIJING)),
        ("2024-05-20 10:00", datetime(2024, 5, 20, 10, tzinfo=BEIJING)),
        (" 2024-05-20t10:00:00.1234567 ", datetime(2024, 5, 20, 10, 0, 0, 123456, tzinfo=BEIJING)),
        ("2024-05-20T02:00:00Z", datetime(2024, 5, 20, 10, tzinfo=BEIJING)),
        ("2024-05-20T10:00:00+08:00", datetime(2024, 5, 20, 10, tzinfo=BEIJING)),
        ("2024-05-20T03:00:00-0500", datetime(2024, 5, 20, 16, tzinfo=BEIJING)),
        ("2013-09-10T16:01:51", datetime(2013, 9, 10, 16, 1, 51, tzinfo=BEIJING)),
    ],
)
def test_parse_gb_time(text, expected):
    parsed = parse_gb_time(text, BEIJING)
    assert parsed == expected and parsed.tzinfo is BEIJING


@pytest.mark.parametrize(
    "text",
    ["", "2024-05-20", "2024-13-01T00:00:00", "2024-02-30T00:00:00", "2024-05-20T25:00:00",
     "20240520T100000", "2024-05-20T10:00:00+24:00", "2024-05-20T10:00:00 CST", "yesterday"],
)  # fmt: skip
def test_parse_gb_time_refuses(text):
    with pytest.raises(ManscdpError, match="invalid time"):
        parse_gb_time(text, BEIJING)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
def test_gb_time_round_trip(dt):
    text = format_gb_time(dt, millis=True)
    assert parse_gb_time(text, BEIJING) == dt.replace(
        microsecond=dt.microsecond // 1000 * 1000, tzinfo=BEIJING
    )


# -- properties ---------------------------------------------------------------------------------

XML_TEXT = st.text(
    st.characters(exclude_categories=("Cs",)).filter(
        lambda c: c in "\t\n\r" or (" " <= c and c not in "\ufffe\uffff")
    ),
    max_size=40,
)
KNOWN_NAMES = ["Name", "Status", "Address", "Manufacturer", "Model", "Longitude", "Owner"]
FIELD_NAME = st.one_of(
    st.sampled_from(KNOWN_NAMES), st.from_regex(r"X[A-Za-z0-9_.-]{0,8}", fullmatch=True)
)


def unique_names(pairs):
    seen = set()
    return [(k, v) for k, v in pairs if not (k.lower() in seen or seen.add(k.lower()))]


def ambiguous(body: bytes, encoding: str) -> bool:
    """GB bytes that also happen to be valid UTF-8 cannot be told apart (see decode_body)."""
    if not encoding.startswith("GB") or body.isascii():
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(st.binary(max_size=2048))
@example(b"<Notify>&</Notify>")
@example(b"<!DOCTYPE")
@example(b"<Query><CmdType>a</CmdType><SN>1</SN><x Num='\xff'/></Query>")
def test_any_bytes_parse_or_raise_manscdp_error(data):
    try:
        parse_manscdp(data)
    except ManscdpError:
        pass


@given(
    st.lists(st.tuples(FIELD_NAME, XML_TEXT), max_size=6).map(unique_names),
    st.lists(
        st.lists(st.tuples(FIELD_NAME, XML_TEXT), min_size=1, max_size=5).map(unique_names),
        max_size=4,
    ),
    st.sampled_from(["GB2312", "UTF-8"]),
    st.integers(min_value=0, max_value=2**64),
)
def test_build_parse_round_trip(fields, items, encoding, sn):
    item_dicts = [dict(pairs) for pairs in items]
    body = build_manscdp("Response", "Catalog", sn, "41010500001180000001", fields,
                         items=item_dicts, encoding=encoding)  # fmt: skip
    assume(not ambiguous(body, encoding))
    msg = parse_manscdp(body)
    assert (msg.root, msg.cmd_type, msg.sn) == ("Response", "Catalog", sn)
    assert msg.fields == {k: v.strip() for k, v in fields}
    assert msg.items == [{k: v.strip() for k, v in d.items()} for d in item_dicts]
    assert msg.list_num == len(item_dicts)
    assert msg.encoding == ("UTF-8" if encoding == "UTF-8" or body.isascii() else "GB18030")


@given(st.text(st.characters(codec="gb2312", exclude_categories=("Cc", "Cs")), max_size=20))
def test_gb2312_text_survives(name):
    body = build_manscdp("Notify", "Alarm", 1, "x", [("AlarmDescription", name)])
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped.encode("gb18030") in body
    assume(not ambiguous(body, "GB2312"))
    assert parse_manscdp(body).get("AlarmDescription") == name.strip()


def test_gb2312_bytes_decode_with_gb18030_mapping():
    # Python's gb2312 codec maps A1A4/A1AA to U+30FB/U+2015; GB18030 (and CP936, which device
    # firmware uses) maps them to U+00B7 MIDDLE DOT and U+2014 EM DASH. We follow GB18030.
    assert b"\xa1\xa4\xa1\xaa".decode("gb2312") == "\u30fb\u2015"
    body = catalog_item_body(GB_DECL, b"\xa1\xa4\xa1\xaa")
    assert parse_manscdp(body).items[0]["Name"] == "\u00b7\u2014"
    # Characters GB2312 has under another mapping still round-trip (as GBK code points).
    built = build_manscdp("Notify", "Alarm", 1, "x", [("AlarmDescription", "\u2015")])
    assert b"\xa8\x44" in built and parse_manscdp(built).get("AlarmDescription") == "\u2015"


XML_TOKENS = [
    "<Query>", "</Query>", "<Response>", "<CmdType>", "</CmdType>", "Catalog", "<SN>", "</SN>",
    "7", "<DeviceID>", "</DeviceID>", '<DeviceList Num="2">', "</DeviceList>", "<Item>",
    "</Item>", "<Info>", "</Info>", "<Name>", "</Name>", "&", "&amp;", "&#x4E1C;", "&#0;", "<",
    ">", "]]>", "<![CDATA[", "<!--", "-->", "<?xml version='1.0'?>", "<?pi x?>", "\x00", " ",
    "\r\n", "东", "\ufeff", '"', "'", "=", "/>", "<a b='1' b='2'>", "xmlns:p='u'", "<p:x>",
]  # fmt: skip


@given(st.lists(st.sampled_from(XML_TOKENS), max_size=40), st.sampled_from(["utf-8", "gb18030"]))
def test_token_soup_parses_or_raises_manscdp_error(tokens, codec):
    try:
        parse_manscdp("".join(tokens).encode(codec))
    except ManscdpError:
        pass
