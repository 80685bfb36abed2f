"""The config loader: defaults, the shipped files, and one reported line per problem."""

from __future__ import annotations

import dataclasses
import datetime
import time
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from sensing_node.settings import (
    SECTIONS,
    ConfigError,
    DeviceOverride,
    Settings,
    load_settings,
    parse_settings,
    settings_for_tests,
)

CONFIG = Path(__file__).resolve().parents[2] / "config"
MINIMAL = 'node: {api_token: "t"}\ndevices: {password: "p"}\n'


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    """Set the process's TZ (None: unset) and make the C library see the change."""

    def set_zone(name: str | None) -> None:
        if name is None:
            monkeypatch.delenv("TZ", raising=False)
        else:
            monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


# --- Shipped files and defaults -----------------------------------------------------------------


def test_example_file_loads() -> None:
    settings = load_settings(CONFIG / "node.example.yaml")
    assert settings.node.id == "31011200002000000001"
    assert settings.node.timezone_name == "Asia/Shanghai"
    assert settings.devices.allow == ("31011200",)
    gate = settings.devices.overrides["31011200001320000001"]
    assert gate.name == "Gate 1"
    assert settings.devices.password_for("31011200001320000001") == gate.password
    assert settings.source.endswith("node.example.yaml")


def test_example_file_shows_every_key() -> None:
    document = yaml.safe_load((CONFIG / "node.example.yaml").read_text(encoding="utf-8"))
    for section in SECTIONS:
        shown = document[section.name][0] if section.many else document[section.name]
        assert set(shown) == {key.name for key in section.keys}, section.name


def test_demo_file_loads_on_loopback() -> None:
    settings = load_settings(CONFIG / "demo.yaml")
    node = settings.node
    assert (node.sip_host, node.sip_port) == ("127.0.0.1", 5060)
    assert (node.http_host, node.http_port) == ("127.0.0.1", 8080)
    assert node.media_ip == "127.0.0.1"
    assert node.id == "31011200002000000001"
    assert node.data_dir == CONFIG.parent / "data"
    assert settings.devices.allow == ("31011200",)
    assert settings.simulator.cameras == 2


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    node, devices = settings.node, settings.devices
    assert node.id == "34020000002000000001"
    assert node.realm == "3402000000"
    assert (node.sip_host, node.sip_port) == ("0.0.0.0", 5060)
    assert (node.http_host, node.http_port) == ("127.0.0.1", 8080)
    assert (node.rtp_port_min, node.rtp_port_max) == (30000, 30999)
    assert node.data_dir == tmp_path / "data"
    assert node.timezone_name is None
    assert devices.allow == ()
    assert (devices.register_expires_s, devices.keepalive_timeout_s) == (3600, 180)
    assert devices.time_sync is True
    assert dict(devices.overrides) == {}
    assert (settings.simulator.cameras, settings.simulator.channels_per_camera) == (0, 1)


def test_realm_defaults_to_first_ten_digits_of_id() -> None:
    text = 'node: {id: "44010600002000000007", api_token: t}\ndevices: {password: p}\n'
    settings = parse_settings(text)
    assert settings.node.realm == "4401060000"
    explicit = parse_settings('node: {realm: gb.example, api_token: t}\ndevices: {password: p}')
    assert explicit.node.realm == "gb.example"


def test_empty_values_mean_defaults() -> None:
    text = "node:\n  api_token: t\n  timezone:\n  realm:\ndevices:\n  password: p\n  allow:\n"
    settings = parse_settings(text + "simulator:\n")
    assert settings.node.timezone_name is None
    assert settings.node.realm == "3402000000"
    assert settings.devices.allow == ()


def test_ipv6_listen_address() -> None:
    settings = parse_settings(
        'node: {sip_listen: "[::]:5080", http_listen: "[::1]:0", media_ip: "2001:db8::1",'
        " api_token: t}\ndevices: {password: p}\n"
    )
    assert (settings.node.sip_host, settings.node.sip_port) == ("::", 5080)
    assert (settings.node.http_host, settings.node.http_port) == ("::1", 0)
    assert settings.node.media_ip == "2001:db8::1"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.node.api_token = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.devices.overrides["31011200001320000001"] = DeviceOverride()  # type: ignore[index]


# --- Devices ------------------------------------------------------------------------------------


def test_password_for_and_allowed() -> None:
    settings = parse_settings(
        "node: {api_token: t}\n"
        "devices:\n"
        "  password: common\n"
        '  allow: ["31011200", "44010000001320000009"]\n'
        "  overrides:\n"
        '    "31011200001320000001": {password: own, name: Gate}\n'
        '    "31011200001320000002": {name: "No own password"}\n'
    )
    devices = settings.devices
    assert devices.password_for("31011200001320000001") == "own"
    assert devices.password_for("31011200001320000002") == "common"
    assert devices.password_for("31011200001320000099") == "common"
    assert devices.allowed("31011200001320000099")
    assert devices.allowed("44010000001320000009")
    assert not devices.allowed("44010000001320000008")


def test_empty_allow_list_admits_everyone() -> None:
    assert parse_settings(MINIMAL).devices.allowed("99999999999999999999")


# --- One problem, one line ----------------------------------------------------------------------

ERRORS = [
    # (file text, line, key path, part of the message)
    (MINIMAL + "simulater: {}\n", 3, "simulater", 'did you mean "simulator"'),
    ('node: {api_token: t, relam: x}\ndevices: {password: p}\n', 1, "node.relam",
     'did you mean "realm"'),
    ("node:\n  api_token: t\n  password: p\ndevices: {password: p}\n", 3, "node.password",
     'belongs under "devices:"'),
    ("node:\n  api_token: [a, b]\ndevices: {password: p}\n", 2, "node.api_token",
     "expected a string, got a list"),
    ('node: {api_token: t}\ndevices:\n  password: 12345678\n', 3, "devices.password",
     'put it in quotes if you mean the text: "12345678"'),
    ('node:\n  api_token: t\n  id: "3101120000200000001"\ndevices: {password: p}\n', 3, "node.id",
     "expected exactly 20 digits"),
    ('node:\n  api_token: t\n  id: "3101120000200000000١"\ndevices: {password: p}\n', 3,
     "node.id", "expected exactly 20 digits"),
    ('node:\n  api_token: t\n  id: "31011200001320000001"\ndevices: {password: p}\n', 3,
     "node.id", "type code) must be 200, got 132"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  overrides:\n    "1234": {}\n', 5,
     "devices.overrides.1234", "expected exactly 20 digits"),
    ('node:\n  api_token: t\n  sip_listen: "0.0.0.0"\ndevices: {password: p}\n', 3,
     "node.sip_listen", "expected host:port"),
    ('node:\n  api_token: t\n  sip_listen: "300.0.0.1:5060"\ndevices: {password: p}\n', 3,
     "node.sip_listen", "is not an IPv4 address"),
    ('node:\n  api_token: t\n  http_listen: "::1:8080"\ndevices: {password: p}\n', 3,
     "node.http_listen", "in brackets"),
    ('node:\n  api_token: t\n  http_listen: "127.0.0.1:65536"\ndevices: {password: p}\n', 3,
     "node.http_listen", "from 0 to 65535"),
    ('node:\n  api_token: t\n  media_ip: "0.0.0.0"\ndevices: {password: p}\n', 3,
     "node.media_ip", "cannot be reached"),
    ('node:\n  api_token: t\n  rtp_ports: "31000-30000"\ndevices: {password: p}\n', 3,
     "node.rtp_ports", "must not exceed"),
    ('node:\n  api_token: t\n  rtp_ports: "1000-2000"\ndevices: {password: p}\n', 3,
     "node.rtp_ports", "within 1024..65535"),
    ('node:\n  api_token: t\n  rtp_ports: 30000\ndevices: {password: p}\n', 3,
     "node.rtp_ports", "expected a port range"),
    ('node:\n  api_token: t\n  timezone: "Asia/Shangai"\ndevices: {password: p}\n', 3,
     "node.timezone", 'did you mean "Asia/Shanghai"'),
    ('node:\n  api_token: t\n  timezone: "Mars/Olympus"\ndevices: {password: p}\n', 3,
     "node.timezone", "unknown time zone"),
    ('node: {api_token: t}\ndevices:\n  password: ""\n', 3, "devices.password",
     "must not be empty"),
    ('node: {api_token: t}\ndevices:\n  password:\n', 3, "devices.password", "must not be empty"),
    ('node: {api_token: t}\ndevices:\n  allow: ["3101"]\n', 2, "devices.password",
     "required, but not given"),
    ('node: {api_token: t}\n', 1, "devices.password", "required, but not given"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  allow:\n    - "3101"\n    - "31a"\n', 6,
     "devices.allow[1]", "expected 1 to 20 digits"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  allow: "3101"\n', 4, "devices.allow",
     "expected a list of prefixes"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  register_expires_s: 30\n', 4,
     "devices.register_expires_s", "must be at least 60, got 30"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  keepalive_timeout_s: "180"\n', 4,
     "devices.keepalive_timeout_s", "remove the quotes"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  time_sync: "false"\n', 4,
     "devices.time_sync", "expected true or false"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  overrides:\n'
     '    "31011200001320000001":\n      longitude: 181\n', 6,
     "devices.overrides.31011200001320000001.longitude", "-180..180"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  overrides:\n'
     '    "31011200001320000001":\n      latitude: -90.5\n', 6,
     "devices.overrides.31011200001320000001.latitude", "-90..90"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  overrides:\n'
     '    "31011200001320000001":\n      password: ""\n', 6,
     "devices.overrides.31011200001320000001.password", "must not be empty"),
    ('node: {api_token: t}\ndevices:\n  password: p\n  allow: ["3101"]\n  overrides:\n'
     '    "44011200001320000001": {name: x}\n', 6, "devices.overrides.44011200001320000001",
     "not covered by devices.allow"),
    (MINIMAL + "simulator:\n  cameras: -1\n", 4, "simulator.cameras", "at least 0"),
    (MINIMAL + "simulator: [1]\n", 3, "simulator", "expected a mapping"),
    ("node:\n  api_token: a\n  api_token: b\ndevices: {password: p}\n", 3, "node.api_token",
     "duplicate key (first on line 2)"),
    ('node:\n  api_token: t\n  sip_read_pace_ms: 51\ndevices: {password: p}\n', 3,
     "node.sip_read_pace_ms", "must be at most 50 (a tenth of the 500 ms"),
    ('node:\n  api_token: t\n  sip_read_pace_ms: -1\ndevices: {password: p}\n', 3,
     "node.sip_read_pace_ms", "must be at least 0, got -1"),
    ('node:\n  api_token: t\n  sip_read_pace_ms: 2.5\ndevices: {password: p}\n', 3,
     "node.sip_read_pace_ms", "expected a whole number"),
]


@pytest.mark.parametrize(("text", "line", "path", "message"), ERRORS)
def test_each_problem_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, path: str, message: str
) -> None:
    problems = problems_of(write(tmp_path, text))
    prefix = f"{tmp_path / 'node.yaml'}:{line}: {path}: "
    matching = [problem for problem in problems if problem.startswith(prefix)]
    assert len(matching) == 1, problems
    assert message in matching[0]
    assert len(problems) == 1, problems


def test_all_problems_are_reported_together_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "simulator:\n"
        "  cameras: many\n"
        "node:\n"
        "  id: 31011200002000000001\n"
        '  sip_listen: "localhost"\n'
        "  timezone: Nowhere/Special\n"
        "devices:\n"
        "  allow: [1]\n"
        "extra: true\n",
    )
    problems = problems_of(path)
    lines = [int(problem.split(":")[1]) for problem in problems]
    paths = [problem.split(": ")[1] for problem in problems]
    assert lines == [2, 3, 4, 5, 6, 7, 8, 9]
    assert paths == [
        "simulator.cameras",
        "node.api_token",
        "node.id",
        "node.sip_listen",
        "node.timezone",
        "devices.password",
        "devices.allow[0]",
        "extra",
    ]
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == "\n".join(problems)


def test_integer_ids_get_a_hint_to_quote_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node:\n"
        "  api_token: t\n"
        "  id: 01011200002000000001\n"
        "devices:\n"
        "  password: p\n"
        "  overrides:\n"
        "    31011200001320000001: {name: Gate}\n",
    )
    first, second = problems_of(path)
    assert first.startswith(f"{path}:3: node.id: a device ID must be quoted")
    assert 'write "01011200002000000001"' in first
    assert second.startswith(f"{path}:7: devices.overrides.31011200001320000001: ")
    assert 'write "31011200001320000001"' in second


def test_integer_allow_prefix_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, 'node: {api_token: t}\ndevices:\n  password: p\n  allow: [31011200]\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:4: devices.allow[0]: quote the prefix")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("node: {api_token: t\ndevices: {password: p}\n", 2, "YAML syntax error"),
        ("node:\n  api_token: t\n\tid: x\n", 3, "indent with spaces, not tabs"),
        ("node:\n  api_token: 'unterminated\n", 3, "YAML syntax error"),
        (MINIMAL + "---\nnode: {}\n", 3, "expected a single document"),
    ],
)
def test_yaml_syntax_error_has_its_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line}: ")
    assert message in problem


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    (problem,) = problems_of(path)
    assert problem == f"{path}: cannot read the config file: No such file or directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_bytes(b"node:\n  name: \xff\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: the file must be UTF-8 text")


@pytest.mark.parametrize("text", ["- node\n- devices\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: the top level must be a mapping")


def test_empty_file_asks_for_the_required_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    assert problems_of(path) == [
        f"{path}:1: node.api_token: required, but not given",
        f"{path}:1: devices.password: required, but not given",
    ]


def test_parse_settings_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("node: {api_token: t}\n", "inline.yaml")
    assert info.value.problems == ["inline.yaml:1: devices.password: required, but not given"]
    assert parse_settings(MINIMAL).source == "<string>"


# --- Paths --------------------------------------------------------------------------------------


def test_relative_data_dir_follows_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", 'node: {api_token: t, data_dir: "../var/rec"}\n'
                 "devices: {password: p}\n")
    monkeypatch.chdir(tmp_path / "etc")
    from_inside = load_settings("node.yaml")
    monkeypatch.chdir("/")
    from_outside = load_settings(path)
    assert from_inside.node.data_dir == from_outside.node.data_dir == tmp_path / "var" / "rec"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    text = f'node: {{api_token: t, data_dir: "{tmp_path / "abs"}"}}\ndevices: {{password: p}}\n'
    assert load_settings(write(tmp_path, text)).node.data_dir == tmp_path / "abs"


def test_parse_settings_resolves_against_base_dir_or_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = 'node: {api_token: t, data_dir: "rec"}\ndevices: {password: p}\n'
    assert parse_settings(text, base_dir=tmp_path).node.data_dir == tmp_path / "rec"
    monkeypatch.chdir(tmp_path)
    assert parse_settings(text).node.data_dir == tmp_path / "rec"


# --- settings_for_tests -------------------------------------------------------------------------


def test_settings_for_tests_uses_loopback_and_ephemeral_ports(tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path)
    assert isinstance(settings, Settings)
    node = settings.node
    assert (node.sip_host, node.sip_port, node.http_host, node.http_port) == (
        "127.0.0.1", 0, "127.0.0.1", 0,
    )
    assert node.media_ip == "127.0.0.1"
    assert node.data_dir == tmp_path
    assert settings.devices.password


def test_settings_for_tests_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert settings_for_tests(Path("state")).node.data_dir == tmp_path / "state"


def test_settings_for_tests_overrides(tmp_path: Path) -> None:
    settings = settings_for_tests(
        tmp_path,
        **{"devices.keepalive_timeout_s": 5, "devices.allow": ("31011200",)},
        simulator__cameras=3,
        devices__overrides={"31011200001320000001": {"password": "own"}},
    )
    assert settings.devices.keepalive_timeout_s == 5
    assert settings.devices.allow == ("31011200",)
    assert settings.simulator.cameras == 3
    assert settings.devices.password_for("31011200001320000001") == "own"


def test_settings_for_tests_checks_its_overrides(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"devices\.keepalive_timeout_s: must be at least 1"):
        settings_for_tests(tmp_path, **{"devices.keepalive_timeout_s": 0})
    with pytest.raises(ConfigError, match=r"devices\.keepalive: unknown key"):
        settings_for_tests(tmp_path, **{"devices.keepalive": 5})


# --- Time zone ----------------------------------------------------------------------------------

WINTER = datetime.datetime(2024, 1, 15, 12, 0)
SUMMER = datetime.datetime(2024, 7, 15, 12, 0)


def test_default_timezone_is_the_system_zone(
    local_zone: Callable[[str | None], None],
) -> None:
    local_zone("Europe/Berlin")
    tz = parse_settings(MINIMAL).node.tz
    assert WINTER.replace(tzinfo=tz).utcoffset() == datetime.timedelta(hours=1)
    assert SUMMER.replace(tzinfo=tz).utcoffset() == datetime.timedelta(hours=2)
    assert SUMMER.replace(tzinfo=tz).utcoffset() == SUMMER.astimezone().utcoffset()


def test_default_timezone_without_tz_variable(local_zone: Callable[[str | None], None]) -> None:
    local_zone(None)
    tz = parse_settings(MINIMAL).node.tz
    for moment in (WINTER, SUMMER):
        assert moment.replace(tzinfo=tz).utcoffset() == moment.astimezone().utcoffset()


def test_explicit_timezone_gives_a_zoneinfo(local_zone: Callable[[str | None], None]) -> None:
    local_zone("Europe/Berlin")
    settings = parse_settings('node: {api_token: t, timezone: "Asia/Shanghai"}\n'
                              "devices: {password: p}\n")
    assert settings.node.timezone_name == "Asia/Shanghai"
    assert settings.node.tz == zoneinfo.ZoneInfo("Asia/Shanghai")
    assert WINTER.replace(tzinfo=settings.node.tz).utcoffset() == datetime.timedelta(hours=8)


# --- media, channels and recording --------------------------------------------------------------


def test_media_and_recording_defaults() -> None:
    settings = parse_settings(MINIMAL)
    media = settings.media
    assert (media.transport, media.timeout_s, media.rtp_payload_max, media.linger_s) == (
        "udp", 10, 1400, 5)
    rec = settings.recording
    assert (rec.retention_days, rec.segment_s, rec.min_free_gb, rec.channels) == (30, 60, 5.0, None)
    assert rec.root(settings.node) == settings.node.data_dir / "recordings"
    assert rec.wants("31011200001310000001", 3, 600)  # "all"
    assert settings.channels.stream_for("31011200001310000001") == "main"


def test_recording_schedules(tmp_path: Path) -> None:
    text = MINIMAL + """recording:
  dir: rec
  channels:
    "31011200001310000001": always
    "31011200001310000002": off
    "31011200001310000003": {mon-fri: "08:00-18:00", sun: ["22:00-02:00"], daily: "12:00-12:30"}
"""
    settings = load_settings(write(tmp_path, text))
    rec = settings.recording
    assert rec.root(settings.node) == (tmp_path / "rec").resolve()
    one, two, three = (f"3101120000131000000{i}" for i in (1, 2, 3))
    assert rec.wants(one, 6, 0) and not rec.wants(two, 0, 600)
    assert rec.wants(three, 0, 8 * 60) and not rec.wants(three, 0, 18 * 60)
    assert not rec.wants(three, 5, 9 * 60)  # Saturday
    assert rec.wants(three, 5, 12 * 60 + 10)  # daily window
    assert rec.wants(three, 6, 23 * 60) and rec.wants(three, 0, 60)  # Sunday into Monday
    assert not rec.wants("31011200001310000009", 0, 600)  # not listed


def test_recording_list_of_channels_means_always() -> None:
    settings = parse_settings(MINIMAL + 'recording: {channels: ["31011200001310000001"]}\n')
    assert settings.recording.wants("31011200001310000001", 2, 3)
    assert not settings.recording.wants("31011200001310000002", 2, 3)


def test_recording_problems_are_reported_with_lines(tmp_path: Path) -> None:
    text = MINIMAL + """recording:
  retention_days: 7
  channels:
    "31011200001310000003": {mon-fry: "08:00-18:00", tue: "25:00-26:00", wed: "08:00-08:00"}
    12345: always
"""
    problems = problems_of(write(tmp_path, text))
    assert any(":6: recording.channels.31011200001310000003.mon-fry: expected a day" in p
               for p in problems)
    assert any("tue: not a time of day" in p for p in problems)
    assert any("wed: the window" in p and "is empty" in p for p in problems)
    assert any(":7: recording.channels.12345" in p for p in problems)
    short = problems_of(write(tmp_path, MINIMAL + "recording:\n  retention_days: 7\n"))
    assert short == [f"{tmp_path / 'node.yaml'}:4: recording.retention_days: 7 days is below the "
                     "30 days district rules require; set recording.allow_short_retention: "
                     "true if this node is not bound by them"]
    allowed = parse_settings(
        MINIMAL + "recording: {retention_days: 7, allow_short_retention: true}\n")
    assert allowed.recording.retention_days == 7


def test_channel_overrides_and_media_choices(tmp_path: Path) -> None:
    text = MINIMAL + """media: {transport: tcp-pasive}
channels:
  overrides:
    "31011200001310000001": {stream: sub, transport: tcp-active}
    "31011200001310000002": {stream: third}
"""
    problems = problems_of(write(tmp_path, text))
    assert any('media.transport: unknown value "tcp-pasive"; did you mean "tcp-passive"?' in p
               for p in problems)
    assert any("31011200001310000002.stream" in p for p in problems)
    good = parse_settings(text.replace("tcp-pasive", "tcp-passive").replace(
        '\n    "31011200001310000002": {stream: third}', ""))
    assert good.channels.stream_for("31011200001310000001") == "sub"
    assert good.channels.transport_for("31011200001310000001", "udp") == "tcp-active"
    assert good.channels.transport_for("31011200001310000002", "udp") == "udp"


def test_media_transport_keys(tmp_path: Path) -> None:
    settings = parse_settings(
        'node: {api_token: t, media_bind: "0.0.0.0"}\n'
        'devices:\n  password: p\n  overrides:\n    "31011200001320000001": {transport: udp}\n'
        "media: {transport_fallback: [tcp-passive, udp]}\n"
    )
    assert settings.node.media_bind == "0.0.0.0"
    assert settings.media.transport_fallback == ("tcp-passive", "udp")
    assert settings.devices.transport_for("31011200001320000001") == "udp"
    assert settings.devices.transport_for("31011200001320000002") is None
    defaults = parse_settings(MINIMAL)
    assert defaults.node.media_bind is None and defaults.media.transport_fallback == ()
    path = write(
        tmp_path,
        'node: {api_token: t, media_bind: "nat.example"}\n'
        'devices:\n  password: p\n  overrides:\n    "31011200001320000001": {transport: tcp}\n'
        "media: {transport_fallback: [udp, tpc-passive, udp]}\n",
    )
    problems = problems_of(path)
    assert [p.split(": ", 2)[1] for p in problems] == [
        "node.media_bind", "devices.overrides.31011200001320000001.transport",
        "media.transport_fallback[1]", "media.transport_fallback[2]",
    ]
    assert "expected an IPv4 or IPv6 address" in problems[0]
    assert problems[2].endswith('unknown value "tpc-passive"; did you mean "tcp-passive"?')
    assert problems[3].endswith("udp is listed twice")


def test_sip_read_pace_defaults_to_50_ms_and_0_turns_it_off() -> None:
    assert parse_settings(MINIMAL).node.sip_read_pace_ms == 50
    off = parse_settings('node: {api_token: t, sip_read_pace_ms: 0}\ndevices: {password: p}\n')
    assert off.node.sip_read_pace_ms == 0


def test_single_port_is_off_by_default_and_a_port_outside_the_rtp_range() -> None:
    assert parse_settings(MINIMAL).media.single_port is None
    assert parse_settings(MINIMAL + "media:\n  single_port:\n").media.single_port is None
    settings = parse_settings(MINIMAL + "media: {single_port: 10000, workers: 1}\n")
    assert settings.media.single_port == 10000 and settings.media.worker_count == 1
    edge = parse_settings('node: {api_token: t, rtp_ports: "30000-30999"}\n'
                          'devices: {password: p}\nmedia: {single_port: 31000}\n')
    assert edge.media.single_port == 31000


@pytest.mark.parametrize(("text", "line", "message"), [
    (MINIMAL + "media:\n  single_port: 0\n", 4, "must be at least 1, got 0"),
    (MINIMAL + "media:\n  single_port: 65536\n", 4, "must be at most 65535, got 65536"),
    (MINIMAL + 'media:\n  single_port: "10000"\n', 4, "remove the quotes"),
    (MINIMAL + "media:\n  single_port: 30000\n", 4,
     "30000 lies in node.rtp_ports (30000-30999); choose a port outside that range"),
    ('node:\n  api_token: t\n  rtp_ports: "40000-40099"\ndevices: {password: p}\n'
     "media:\n  transport: udp\n  single_port: 40099\n", 7, "lies in node.rtp_ports"),
    ('node:\n  api_token: t\n  sip_listen: "127.0.0.1:10000"\ndevices: {password: p}\n'
     "media:\n  single_port: 10000\n", 6, "10000 is the SIP port"),
    (MINIMAL + "media:\n  workers: 2\n  single_port: 10000\n", 5,
     "single-port mode runs the media in the node's process; it needs media.workers: 1"),
    (MINIMAL + "media:\n  single_port: 10000\n  workers: auto\n", 4, "needs media.workers: 1"),
])
def test_single_port_problems(tmp_path: Path, text: str, line: int, message: str) -> None:
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'node.yaml'}:{line}: media.single_port: ")
    assert message in problems[0]


UPSTREAMS = """upstreams:
  - id: "31011200002000000100"
    address: "127.0.0.1:15060"
    password: up
  - id: "31011200002000000200"
    realm: "gb.example"
    address: "[::1]:5061"
    transport: tcp
    local_id: "31011200002000000009"
    password: up2
    register_expires_s: 600
    keepalive_s: 30
    max_streams: 2
    charset: UTF-8
"""


def test_upstreams_limits_and_shares() -> None:
    settings = parse_settings(MINIMAL + UPSTREAMS + """limits: {max_outgoing_streams: 3}
channels:
  default_share: authorized
  overrides:
    "31011200001310000101": {share: authorized, upstreams: ["31011200002000000200"]}
    "31011200001310000102": {share: none}
    "31011200001310000103": {share: unconditional}
    "31011200001310000104": {stream: sub}
""")
    first, second = settings.upstreams
    assert (first.realm, first.host, first.port, first.transport) == (
        "3101120000", "127.0.0.1", 15060, "udp")
    assert (first.local_id, first.register_expires_s, first.keepalive_s) == ("", 3600, 60)
    assert (first.max_streams, first.charset) == (16, "GB2312")
    assert (second.realm, second.host, second.port, second.transport) == (
        "gb.example", "::1", 5061, "tcp")
    assert (second.local_id, second.max_streams, second.charset) == (
        "31011200002000000009", 2, "UTF-8")
    assert (settings.limits.max_outgoing_streams, settings.limits.max_sessions_per_channel) == (
        3, 8)
    policy = settings.channels.share_policy
    up1, up2 = first.id, second.id
    assert [policy.visible_to(up, "31011200001310000101") for up in (up1, up2)] == [False, True]
    assert not policy.visible_to(up2, "31011200001310000102")
    assert policy.visible_to(up1, "31011200001310000103")
    # authorized by default, with no list: not shared; an override without share keeps it
    assert not policy.visible_to(up1, "31011200001310000104")
    assert not policy.visible_to(up1, "31011200001310009999")


def test_no_upstreams_by_default() -> None:
    settings = parse_settings(MINIMAL)
    assert settings.upstreams == ()
    assert settings.channels.default_share == "unconditional"
    assert settings.channels.share_policy.visible_to("31011200002000000100", "1" * 20)


def test_upstream_problems_are_reported_with_lines(tmp_path: Path) -> None:
    text = MINIMAL + """upstreams:
  - id: 31011200002000000100
    address: "localhost:5060"
    password: up
  - id: "31011200002000000101"
    address: "0.0.0.0:5060"
    transport: sctp
    charset: latin1
  - {id: "31011200002000000102", address: "127.0.0.1:0", password: x, max_streams: -1}
"""
    problems = problems_of(write(tmp_path, text))
    expected = [
        ":4: upstreams[0].id: a device ID must be quoted",
        ":5: upstreams[0].address: 'localhost' is not an IP address",
        ":8: upstreams[1].address: 0.0.0.0 cannot be reached",
        ':9: upstreams[1].transport: unknown value "sctp"',
        ':10: upstreams[1].charset: unknown value "latin1"',
        ":11: upstreams[2].address: the port must be a number from 1 to 65535",
        ":11: upstreams[2].max_streams: must be at least 0",
    ]
    for part in expected:
        assert any(part in p for p in problems), (part, problems)
    assert any(":7: upstreams[1].password: required, but not given" in p for p in problems)


def test_upstream_given_twice_and_shares_naming_unknown_upstreams(tmp_path: Path) -> None:
    twice = MINIMAL + """upstreams:
  - {id: "31011200002000000100", address: "127.0.0.1:5060", password: a}
  - {id: "31011200002000000100", address: "127.0.0.1:5060", password: b}
"""
    problems = problems_of(write(tmp_path, twice))
    assert any(":5: upstreams[1].id: upstream 31011200002000000100 is listed twice (first on "
               "line 4)" in p for p in problems), problems
    assert any("upstreams[1].address: two upstreams at 127.0.0.1:5060 over udp" in p
               for p in problems), problems
    unknown = MINIMAL + UPSTREAMS + """channels:
  overrides:
    "31011200001310000101": {share: authorized, upstreams: ["31011200002000000999"]}
    "31011200001310000102": {share: none, upstreams: ["31011200002000000100"]}
"""
    problems = problems_of(write(tmp_path, unknown))
    assert any("channels.overrides.31011200001310000102: upstreams only apply with share: "
               "authorized" in p for p in problems), problems
    fixed = unknown.replace('{share: none, upstreams: ["31011200002000000100"]}', "{share: none}")
    problems = problems_of(write(tmp_path, fixed))
    assert problems == [f"{tmp_path / 'node.yaml'}:17: channels.overrides.31011200001310000101"
                        ".upstreams: 31011200002000000999 is not one of the upstreams "
                        "(31011200002000000100, 31011200002000000200)"], problems


def test_upstreams_must_be_a_list(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL + "upstreams: {id: x}\n"))
    assert any(":3: upstreams: expected a list of entries" in p for p in problems), problems
