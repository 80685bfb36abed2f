"""The node's catalog toward an upper platform: share classes, answers, NOTIFY events, queries."""

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.catalog import (
    ADD,
    AUTHORIZED,
    DEL,
    NONE,
    OFF,
    ON,
    UNCONDITIONAL,
    UPDATE,
    CatalogEvent,
    ChannelShare,
    SharePolicy,
    apply_catalog_events,
    catalog_changes,
    catalog_notify_parts,
    catalog_response_parts,
    catalog_subscription,
    device_info_response,
    device_status_response,
    is_catalog_event,
    platform_query,
    shared_channels,
)
from sip.errors import LocalProtocolError
from sip.manscdp import (
    ManscdpMessage,
    build_manscdp,
    catalog_query,
    device_info_query,
    device_status_query,
    parse_manscdp,
)

NODE = "31011200002000000001"
UP_A = "31011200002000000100"
UP_B = "31011200002000000200"
UP_C = "31011200002000000300"
EVERY = {UP_A, UP_B, UP_C}
CAM1, CAM2, CAM3 = "31011200001310000101", "31011200001310000102", "31011200001310000103"
ENCODINGS = ["GB2312", "UTF-8"]


def head(msg: ManscdpMessage) -> tuple[str, str, int, str]:
    return msg.root, msg.cmd_type, msg.sn, msg.device_id


def channel(name: str, status: str = "ON", **extra: str) -> dict[str, object]:
    return {"Name": name, "Manufacturer": "Hikvision", "Status": status,
            "Info": {"PTZType": "3"}, **extra}  # fmt: skip


CHANNELS = {
    CAM1: channel("东门入口"),
    CAM2: channel("西门停车场", "OFF"),
    CAM3: channel("北区仓库"),
}


# -- share classes ------------------------------------------------------------------------------

# (default class, override of CAM1 or None) -> which of UP_A, UP_B, UP_C see CAM1
SHARE_TABLE = [
    (UNCONDITIONAL, None, EVERY),
    (AUTHORIZED, None, set()),
    (NONE, None, set()),
    (UNCONDITIONAL, ChannelShare(AUTHORIZED, frozenset({UP_A})), {UP_A}),
    (AUTHORIZED, ChannelShare(AUTHORIZED, frozenset({UP_A})), {UP_A}),
    (NONE, ChannelShare(AUTHORIZED, frozenset({UP_A, UP_B})), {UP_A, UP_B}),
    (UNCONDITIONAL, ChannelShare(AUTHORIZED), set()),
    (UNCONDITIONAL, ChannelShare(NONE, frozenset({UP_A})), set()),
    (AUTHORIZED, ChannelShare(NONE), set()),
    (NONE, ChannelShare(UNCONDITIONAL), EVERY),
    (AUTHORIZED, ChannelShare(UNCONDITIONAL, frozenset({UP_A})), EVERY),
]


@pytest.mark.parametrize(("default", "override", "seen_by"), SHARE_TABLE)
def test_share_classes(default: str, override: ChannelShare | None, seen_by: set[str]) -> None:
    policy = SharePolicy(default, {CAM1: override} if override else {})
    for upstream in (UP_A, UP_B, UP_C):
        assert policy.visible_to(upstream, CAM1) is (upstream in seen_by)
        shared = shared_channels(CHANNELS, policy, upstream)
        # the channels without an override follow the default class, which lists nobody
        others = [CAM2, CAM3] if default == UNCONDITIONAL else []
        assert list(shared) == ([CAM1] if upstream in seen_by else []) + others
        for cid, fields in shared.items():
            assert fields is CHANNELS[cid]


def test_share_policy_refuses_unknown_classes_and_copies_overrides() -> None:
    with pytest.raises(LocalProtocolError):
        SharePolicy("public")
    with pytest.raises(LocalProtocolError):
        ChannelShare("everyone")
    overrides = {CAM1: ChannelShare(NONE)}
    policy = SharePolicy(UNCONDITIONAL, overrides)
    overrides[CAM2] = ChannelShare(NONE)
    assert policy.visible_to(UP_A, CAM2)
    assert policy.share_of(CAM3) == ChannelShare(UNCONDITIONAL)


# -- catalog answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("per_part", [1, 2, 3, 5])
def test_catalog_response_parts_parse_back_in_order(encoding: str, per_part: int) -> None:
    parts = catalog_response_parts(4711, NODE, CHANNELS, per_part=per_part, encoding=encoding)
    assert len(parts) == -(-len(CHANNELS) // per_part)
    seen = []
    for body in parts:
        assert f'encoding="{encoding}"'.encode() in body
        msg = parse_manscdp(body)
        assert head(msg) == ("Response", "Catalog", 4711, NODE)
        assert msg.sum_num == 3
        assert msg.list_name == "DeviceList" and msg.list_num == len(msg.items) <= per_part
        assert msg.encoding == ("GB18030" if encoding == "GB2312" else "UTF-8")
        seen += msg.items
    assert [item["DeviceID"] for item in seen] == [CAM1, CAM2, CAM3]
    for item in seen:
        fields = CHANNELS[item["DeviceID"]]
        assert item["Name"] == fields["Name"] and item["Status"] == fields["Status"]
        assert item["Manufacturer"] == "Hikvision" and item["PTZType"] == "3"


def test_catalog_response_ignores_a_device_id_among_the_fields() -> None:
    (body,) = catalog_response_parts(1, NODE, {CAM1: {"DeviceID": "bogus", "Name": "甲"}})
    assert parse_manscdp(body).items == [{"DeviceID": CAM1, "Name": "甲"}]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_catalog_is_sumnum_0_with_an_empty_list(encoding: str) -> None:
    (body,) = catalog_response_parts(9, NODE, {}, encoding=encoding)
    assert b'<DeviceList Num="0">' in body
    msg = parse_manscdp(body)
    assert (msg.cmd_type, msg.sn, msg.sum_num, msg.list_num, msg.items) == ("Catalog", 9, 0, 0, [])


def test_catalog_response_by_bytes() -> None:
    many = {f"3101120000131{n:07d}": channel(f"通道{n}") for n in range(40)}
    parts = catalog_response_parts(2, NODE, many, per_part=100, max_bytes=1300)
    assert len(parts) > 1
    assert all(len(p) <= 1300 for p in parts)
    ids = [item["DeviceID"] for p in parts for item in parse_manscdp(p).items]
    assert ids == list(many)
    assert {parse_manscdp(p).sum_num for p in parts} == {40}


# -- DeviceInfo, DeviceStatus -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_device_info_response(encoding: str) -> None:
    body = device_info_response(
        12, NODE, name="浦东感知节点", manufacturer="sensing-node", model="node",
        firmware="1.4.0", channels=2, encoding=encoding,
    )  # fmt: skip
    msg = parse_manscdp(body)
    assert head(msg) == ("Response", "DeviceInfo", 12, NODE)
    assert msg.fields == {
        "DeviceName": "浦东感知节点",
        "Result": "OK",
        "Manufacturer": "sensing-node",
        "Model": "node",
        "Firmware": "1.4.0",
        "Channel": "2",
    }


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_device_status_response(encoding: str) -> None:
    body = device_status_response(
        13, NODE, reason="录像盘满", record=True, device_time=datetime(2026, 12, 6, 14, 5, 9),
        alarms=[(CAM1, "ONDUTY")], encoding=encoding,
    )  # fmt: skip
    msg = parse_manscdp(body)
    assert head(msg) == ("Response", "DeviceStatus", 13, NODE)
    assert msg.fields == {
        "Result": "OK",
        "Online": "ONLINE",
        "Status": "OK",
        "Reason": "录像盘满",
        "Encode": "ON",
        "Record": "ON",
        "DeviceTime": "2026-12-06T14:05:09",
    }
    assert msg.list_name == "Alarmstatus" and msg.list_num == 1
    assert msg.items == [{"DeviceID": CAM1, "DutyStatus": "ONDUTY"}]


def test_device_status_offline_without_extras() -> None:
    msg = parse_manscdp(device_status_response(1, NODE, online=False, ok=False, encode=False))
    assert msg.fields == {"Result": "OK", "Online": "OFFLINE", "Status": "ERROR", "Encode": "OFF",
                          "Record": "OFF"}  # fmt: skip
    assert msg.list_num == 0 and msg.items == []


# -- catalog changes and NOTIFY -----------------------------------------------------------------

UNCOND = SharePolicy()


def test_no_change_no_events() -> None:
    assert catalog_changes(CHANNELS, dict(CHANNELS), UNCOND, UP_A) == []


def test_status_changes_are_on_and_off() -> None:
    after = {**CHANNELS, CAM1: channel("东门入口", "OFF"), CAM2: channel("西门停车场", "ON")}
    assert catalog_changes(CHANNELS, after, UNCOND, UP_A) == [
        CatalogEvent(CAM1, OFF),
        CatalogEvent(CAM2, ON),
    ]


def test_field_change_is_update_with_full_fields() -> None:
    after = {**CHANNELS, CAM3: channel("北区仓库二号")}
    assert catalog_changes(CHANNELS, after, UNCOND, UP_A) == [
        CatalogEvent(CAM3, UPDATE, after[CAM3])
    ]


def test_field_and_status_change_is_update_then_status() -> None:
    after = {**CHANNELS, CAM3: channel("北区仓库二号", "OFF")}
    assert catalog_changes(CHANNELS, after, UNCOND, UP_A) == [
        CatalogEvent(CAM3, UPDATE, after[CAM3]),
        CatalogEvent(CAM3, OFF),
    ]


def test_new_and_removed_channels_are_add_and_del() -> None:
    new = "31011200001310000104"
    after = {CAM1: CHANNELS[CAM1], CAM2: CHANNELS[CAM2], new: channel("南门")}
    assert catalog_changes(CHANNELS, after, UNCOND, UP_A) == [
        CatalogEvent(CAM3, DEL),
        CatalogEvent(new, ADD, after[new]),
    ]


def test_invisible_channels_make_no_events() -> None:
    policy = SharePolicy(UNCONDITIONAL, {CAM1: ChannelShare(AUTHORIZED, frozenset({UP_B}))})
    after = {**CHANNELS, CAM1: channel("东门入口", "OFF")}
    assert catalog_changes(CHANNELS, after, policy, UP_A) == []
    assert catalog_changes(CHANNELS, after, policy, UP_B) == [CatalogEvent(CAM1, OFF)]


def test_a_share_change_is_add_or_del() -> None:
    closed = SharePolicy(UNCONDITIONAL, {CAM2: ChannelShare(NONE)})
    assert catalog_changes(CHANNELS, CHANNELS, closed, UP_A, previous_policy=UNCOND) == [
        CatalogEvent(CAM2, DEL)
    ]
    assert catalog_changes(CHANNELS, CHANNELS, UNCOND, UP_A, previous_policy=closed) == [
        CatalogEvent(CAM2, ADD, CHANNELS[CAM2])
    ]


def test_a_status_that_is_not_on_or_off_goes_in_an_update() -> None:
    after = {**CHANNELS, CAM1: channel("东门入口", "ONLINE")}
    assert catalog_changes(CHANNELS, after, UNCOND, UP_A) == [
        CatalogEvent(CAM1, UPDATE, after[CAM1])
    ]
    back = catalog_changes(after, CHANNELS, UNCOND, UP_A)
    assert back == [CatalogEvent(CAM1, ON)]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("per_part", [1, 2, 10])
def test_catalog_notify_parts_parse_back(encoding: str, per_part: int) -> None:
    events = [
        CatalogEvent(CAM1, OFF),
        CatalogEvent(CAM2, DEL),
        CatalogEvent(CAM3, UPDATE, channel("北区仓库二号")),
        CatalogEvent("31011200001310000104", ADD, channel("南门")),
        CatalogEvent(CAM3, ON),
    ]
    parts = catalog_notify_parts(88, NODE, events, per_part=per_part, encoding=encoding)
    assert len(parts) == -(-len(events) // per_part)
    items = []
    for body in parts:
        msg = parse_manscdp(body)
        assert head(msg) == ("Notify", "Catalog", 88, NODE)
        assert msg.sum_num == len(events) and msg.list_num == len(msg.items)
        items += msg.items
    assert [(i["DeviceID"], i["Event"]) for i in items] == [(e.channel_id, e.event) for e in events]
    assert items[0] == {"DeviceID": CAM1, "Event": OFF}
    assert items[1] == {"DeviceID": CAM2, "Event": DEL}
    assert items[2]["Name"] == "北区仓库二号" and items[2]["PTZType"] == "3"
    assert items[3]["Name"] == "南门" and items[3]["Status"] == "ON"


def test_no_events_no_notify() -> None:
    assert catalog_notify_parts(1, NODE, []) == []


def test_parts_hold_at_least_one_item() -> None:
    with pytest.raises(LocalProtocolError):
        catalog_response_parts(1, NODE, {}, per_part=0)
    with pytest.raises(LocalProtocolError):
        catalog_notify_parts(1, NODE, [CatalogEvent(CAM1, ON)], per_part=0)


# -- property: the events take an upstream's view to its new view ------------------------------

IDS = [f"3101120000131000{n:04d}" for n in range(8)]
UPSTREAMS = [UP_A, UP_B]

field_values = st.sampled_from(["东门", "西门", "Gate 3", ""])
fields_st = st.fixed_dictionaries(
    {"Name": field_values},
    optional={
        "Status": st.sampled_from(["ON", "OFF", "ONLINE", "OFFLINE"]),
        "Address": field_values,
        "Info": st.fixed_dictionaries({"PTZType": st.sampled_from(["1", "3"])}),
    },
)
snapshots = st.dictionaries(st.sampled_from(IDS), fields_st, max_size=len(IDS))
shares = st.builds(
    ChannelShare,
    st.sampled_from([UNCONDITIONAL, AUTHORIZED, NONE]),
    st.frozensets(st.sampled_from(UPSTREAMS)),
)
policies = st.builds(
    SharePolicy,
    st.sampled_from([UNCONDITIONAL, AUTHORIZED, NONE]),
    st.dictionaries(st.sampled_from(IDS), shares, max_size=4),
)


@given(snapshots, snapshots, policies, policies, st.sampled_from(UPSTREAMS))
def test_events_turn_the_old_view_into_the_new_one(
    before: dict[str, dict[str, object]],
    after: dict[str, dict[str, object]],
    old_policy: SharePolicy,
    policy: SharePolicy,
    upstream: str,
) -> None:
    old_view = shared_channels(before, old_policy, upstream)
    events = catalog_changes(before, after, policy, upstream, previous_policy=old_policy)
    assert apply_catalog_events(old_view, events) == shared_channels(after, policy, upstream)
    assert all(policy.visible_to(upstream, e.channel_id) for e in events if e.event != DEL)
    # and the NOTIFY carries them all, in order
    items = [i for p in catalog_notify_parts(5, NODE, events, per_part=3)
             for i in parse_manscdp(p).items]  # fmt: skip
    assert [(i["DeviceID"], i["Event"]) for i in items] == [(e.channel_id, e.event) for e in events]


# -- what an upstream sends ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cmd_type"),
    [
        (catalog_query(17430, NODE), "Catalog"),
        (device_info_query(17431, NODE, encoding="UTF-8"), "DeviceInfo"),
        (device_status_query(17432, CAM1), "DeviceStatus"),
    ],
)
def test_platform_queries_are_recognised(body: bytes, cmd_type: str) -> None:
    query = platform_query(parse_manscdp(body))
    assert query is not None
    assert query.cmd_type == cmd_type
    assert query.device_id == (CAM1 if cmd_type == "DeviceStatus" else NODE)
    assert query.start_time is None


def test_catalog_query_window_and_sloppy_spelling() -> None:
    body = (
        b'<?xml version="1.0" encoding="GB2312"?>\r\n<query><cmdtype>catalog</cmdtype>'
        b"<sn> 7 </sn><deviceid>" + NODE.encode() + b"</deviceid>"
        b"<StartTime>2026-12-01T00:00:00</StartTime><EndTime>2026-12-06T00:00:00</EndTime>"
        b"</query>"
    )
    query = platform_query(parse_manscdp(body))
    assert query is not None
    assert (query.cmd_type, query.sn, query.device_id) == ("Catalog", 7, NODE)
    assert (query.start_time, query.end_time) == ("2026-12-01T00:00:00", "2026-12-06T00:00:00")


@pytest.mark.parametrize(
    "body",
    [
        build_manscdp("Query", "RecordInfo", 1, CAM1),
        build_manscdp("Control", "DeviceControl", 1, CAM1, [("PTZCmd", "A50F01")]),
        build_manscdp("Response", "Catalog", 1, NODE, [("SumNum", 0)]),
        build_manscdp("Notify", "Keepalive", 1, NODE, [("Status", "OK")]),
    ],
)
def test_other_bodies_are_not_platform_queries(body: bytes) -> None:
    msg = parse_manscdp(body)
    assert platform_query(msg) is None
    assert catalog_subscription(msg) is None


def test_catalog_subscribe_body() -> None:
    body = f"<Query><CmdType>Catalog</CmdType><SN>303</SN><DeviceID>{NODE}</DeviceID></Query>"
    sub = catalog_subscription(parse_manscdp(body.encode()))
    assert sub is not None and (sub.sn, sub.device_id) == (303, NODE)
    alarm = build_manscdp("Query", "Alarm", 304, NODE)
    assert catalog_subscription(parse_manscdp(alarm)) is None


@pytest.mark.parametrize(
    ("header", "catalog"),
    [("Catalog;id=4021", True), ("catalog", True), (" presence ", True), ("Alarm", False),
     ("message-summary", False)],
)  # fmt: skip
def test_subscribe_event_header(header: str, catalog: bool) -> None:
    assert is_catalog_event(header) is catalog
