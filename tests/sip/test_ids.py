"""20-digit GB/T 28181 codes and civil codes (2016 App. D, 2022 App. E)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import ParseError
from sip.ids import (
    REGISTRABLE_TYPES,
    InvalidId,
    check_device_id,
    classify_catalog_id,
    is_civil_code,
    parse_civil_code,
    parse_gb_id,
    type_name,
)


def make_id(type_code: int, center: str = "41010500", industry: str = "00", net: int = 0) -> str:
    return f"{center}{industry}{type_code:03d}{net}000001"


def test_fields_of_an_ipc_id():
    gid = parse_gb_id("41010500001320000001")
    assert gid.text == "41010500001320000001"
    assert str(gid) == gid.text
    assert (gid.center, gid.industry, gid.type_code, gid.network, gid.serial) == (
        "41010500",
        "00",
        132,
        0,
        "000001",
    )
    assert gid.domain == "4101050000"
    assert gid.civil_code == "410105"
    assert gid.kind == "IPC"
    assert gid.is_peripheral and gid.is_device and gid.is_video_channel
    assert not gid.is_platform and not gid.is_front_end_device


def test_network_flag_and_serial():
    gid = parse_gb_id("34020000001327012345")
    assert gid.network == 7
    assert gid.serial == "012345"


@pytest.mark.parametrize(
    ("code", "kind", "front_end", "peripheral", "platform", "video"),
    [
        (111, "DVR", True, False, False, True),
        (114, "decoder", True, False, False, False),
        (118, "NVR", True, False, False, True),
        (130, "HVR", True, False, False, True),
        (131, "camera", False, True, False, True),
        (132, "IPC", False, True, False, True),
        (134, "alarm input", False, True, False, False),
        (137, "audio output", False, True, False, False),
        (199, "peripheral", False, True, False, False),
        (200, "platform", False, False, True, False),
        (202, "media server", False, False, True, False),
        (215, "business group", False, False, True, False),
        (216, "virtual organization", False, False, True, False),
        (300, "central user", False, False, False, False),
        (400, "terminal user", False, False, False, False),
        (501, "O&M platform", False, False, False, False),
        (777, "extension", False, False, False, False),
        (0, "reserved", False, False, False, False),
    ],
)
def test_type_classification(code, kind, front_end, peripheral, platform, video):
    gid = parse_gb_id(make_id(code))
    assert gid.kind == kind
    assert gid.is_front_end_device is front_end
    assert gid.is_peripheral is peripheral
    assert gid.is_platform is platform
    assert gid.is_video_channel is video


def test_special_types():
    assert parse_gb_id(make_id(200)).is_sip_server
    assert parse_gb_id(make_id(215)).is_business_group
    assert parse_gb_id(make_id(216)).is_virtual_org
    assert parse_gb_id(make_id(134)).is_alarm_input
    assert parse_gb_id(make_id(137)).is_audio_output
    assert parse_gb_id(make_id(300)).is_user
    assert type_name(125) == "security inspection device"
    assert type_name(250) == "platform component"


def test_civil_code_of_center_strips_unused_levels():
    assert parse_gb_id("34020000001320000002").civil_code == "3402"
    assert parse_gb_id("41000000002000000001").civil_code == "41"
    assert parse_gb_id("00000000001320000001").civil_code == "00"
    assert parse_gb_id("41010501001320000001").civil_code == "41010501"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must be 20 digits, got 0"),
        ("130909113319427420", "must be 20 digits, got 18"),  # 2013 Hikvision capture
        ("410105000013200000011", "must be 20 digits, got 21"),
        ("4101050000132000000A", "must contain only digits"),
        ("41010500001320000001 ", "must contain only digits"),
        ("4101050000132000000١", "must contain only digits"),  # Arabic-Indic digit one
        ("abc", "must contain only digits"),
    ],
)
def test_invalid_ids(text, reason):
    with pytest.raises(InvalidId, match=reason) as info:
        parse_gb_id(text)
    assert isinstance(info.value, ParseError)
    assert info.value.status_hint == 400
    assert reason in check_device_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "34020000001320000002",  # Hikvision IPC (corpus)
        "34020000001110000001",  # Hikvision NVR registered as DVR type (corpus)
        "34020000001310000001",  # camera
        "41010500001180000001",  # NVR
        "41010000002000000001",  # lower platform
        "41010000002090000001",  # access gateway
        "41010000005010000001",  # O&M platform
    ],
)
def test_registrable_ids(text):
    assert check_device_id(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("41010500000000000001", "type code 000 is not a device type"),
        ("41010500001100000001", "type code 110 is not a device type"),
        ("41010500002150000001", "type code 215 is a business group, not a device"),
        ("41010500002160000001", "type code 216 is a virtual organization, not a device"),
        ("41010500003000000001", "type code 300 is a user type, not a device type"),
        ("41010500004000000001", "type code 400 is a user type, not a device type"),
        ("41010500006000000001", "type code 600 is not allowed to register"),
    ],
)
def test_unregistrable_types(text, reason):
    assert check_device_id(text) == reason


def test_allowed_types_override():
    assert check_device_id(make_id(600), allowed_types={600}) is None
    assert check_device_id(make_id(132), allowed_types={200}) == (
        "type code 132 is not allowed to register"
    )


def test_registrable_types_policy():
    assert set(range(111, 200)) <= REGISTRABLE_TYPES
    assert 200 in REGISTRABLE_TYPES and 299 in REGISTRABLE_TYPES
    assert 215 not in REGISTRABLE_TYPES and 216 not in REGISTRABLE_TYPES
    assert 500 in REGISTRABLE_TYPES and 599 in REGISTRABLE_TYPES
    assert not {0, 110, 300, 400, 600, 999} & REGISTRABLE_TYPES


@pytest.mark.parametrize(
    ("text", "level", "name", "parent", "city", "district"),
    [
        ("41", 1, "province", None, None, None),
        ("4101", 2, "city", "41", "4101", None),
        ("410105", 3, "district", "4101", "4101", "410105"),
        ("41010501", 4, "grassroots unit", "410105", "4101", "410105"),
    ],
)
def test_civil_codes(text, level, name, parent, city, district):
    code = parse_civil_code(text)
    assert str(code) == text
    assert (code.level, code.level_name, code.parent) == (level, name, parent)
    assert (code.province, code.city, code.district) == ("41", city, district)
    assert is_civil_code(text)


@pytest.mark.parametrize("text", ["", "4", "410", "4101050000", "CivilCode", "41a1"])
def test_invalid_civil_codes(text):
    # "CivilCode" is the placeholder a Hikvision NVR sends; 10 digits is a SIP domain.
    with pytest.raises(InvalidId):
        parse_civil_code(text)
    assert not is_civil_code(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("41", "civil-code"),
        ("41010501", "civil-code"),
        ("41010500001310000001", "device"),
        ("41010500001180000001", "device"),
        ("41010500002000000001", "platform"),
        ("41010500002150000001", "business-group"),
        ("41010500002160000001", "virtual-org"),
        ("41010500003000000001", "other"),
        ("4101050000", "invalid"),
        ("CivilCode", "invalid"),
    ],
)
def test_classify_catalog_id(text, kind):
    assert classify_catalog_id(text) == kind


@given(st.text(max_size=30))
def test_any_text_parses_or_raises_invalid_id(text):
    try:
        gid = parse_gb_id(text)
    except InvalidId as exc:
        assert check_device_id(text) is not None
        assert exc.reason
    else:
        assert gid.text == text and len(text) == 20


@given(st.from_regex(r"[0-9]{20}", fullmatch=True))
def test_any_20_digits_round_trip(text):
    gid = parse_gb_id(text)
    rebuilt = f"{gid.center}{gid.industry}{gid.type_code:03d}{gid.network}{gid.serial}"
    assert rebuilt == text
    assert (check_device_id(text) is None) == (gid.type_code in REGISTRABLE_TYPES)
