"""Node configuration: one YAML file, read into frozen dataclasses.

Operators edit the file by hand, so the loader reports every problem at once, one line each, as
``file:line: key.path: what is wrong``, instead of stopping at the first. Line numbers come from
PyYAML's node API (``yaml.compose``), which keeps the position of every key and value.

The schema is a table. Each section is a tuple of `Key` declarations (name, parser, default, doc)
plus a function that builds the section's dataclass from the parsed values. A new section needs a
dataclass, a key table, a builder, one `Section` entry in `SECTIONS` and a field on `Settings`.

Relative paths (``node.data_dir``) resolve against the directory that holds the config file, so
the node finds the same data whatever directory it is started from.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import yaml

__all__ = [
    "ChannelOverride", "ChannelsSettings", "ConfigError", "DeviceOverride", "DevicesSettings",
    "Key", "MediaSettings", "NodeSettings", "Rate", "RecordingSettings", "SECTIONS", "Schedule",
    "Section", "Settings",
    "SimulatorSettings", "TRANSPORTS", "load_settings", "parse_settings",
    "settings_for_tests", "system_timezone",
]


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(list(problems))
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- The settings the rest of the node sees ----------------------------------------------------


@dataclass(frozen=True)
class DeviceOverride:
    """Settings for one device ("one device, one archive"); None means "use the default"."""

    password: str | None = None
    name: str | None = None
    address: str | None = None
    longitude: float | None = None
    latitude: float | None = None
    username: str | None = None
    follow_source: bool = False
    #: "digest", or "none" for a device that cannot answer a challenge (only from `from_`)
    auth: str = "digest"
    #: `from`: the network the device may register from; None: anywhere
    from_: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    #: the media transport tried first for this device's channels (see StreamHub.transport_plan)
    transport: str | None = None


@dataclass(frozen=True)
class Rate:
    """A flood limit: `per_s` requests a second on average, after a burst of `burst`."""

    per_s: float
    burst: int


@dataclass(frozen=True)
class NodeSettings:
    """The ``node:`` section: identity, listening addresses, storage and time zone."""

    id: str
    realm: str
    sip_host: str
    sip_port: int
    media_ip: str
    rtp_port_min: int
    rtp_port_max: int
    http_host: str
    http_port: int
    api_token: str
    api_trusted_proxy: bool
    data_dir: Path
    timezone_name: str | None
    #: where RTP binds; None: media_ip if it is an address of this host, else the SIP host
    media_bind: str | None = None

    @cached_property
    def tz(self) -> datetime.tzinfo:
        """The configured zone, or the system's local zone when `timezone_name` is None."""
        if self.timezone_name is None:
            return system_timezone()
        return zoneinfo.ZoneInfo(self.timezone_name)


@dataclass(frozen=True)
class DevicesSettings:
    """The ``devices:`` section: who may register, with which password, and for how long."""

    password: str
    allow: tuple[str, ...]
    register_expires_s: int
    keepalive_timeout_s: int
    time_sync: bool
    overrides: Mapping[str, DeviceOverride]
    channel_takeover_s: int
    register_rate: Rate
    message_rate: Rate

    def password_for(self, device_id: str) -> str:
        """The digest password for `device_id`: its own if it has one, else the default."""
        override = self.overrides.get(device_id)
        if override is not None and override.password is not None:
            return override.password
        return self.password

    def username_for(self, device_id: str) -> str | None:
        """The digest username `device_id` must use, or None when any username is taken."""
        override = self.overrides.get(device_id)
        return override.username if override is not None else None

    def follows_source(self, device_id: str) -> bool:
        """Whether a MESSAGE from another address may move `device_id` there (unsafe)."""
        override = self.overrides.get(device_id)
        return override is not None and override.follow_source

    def unauthenticated(self, device_id: str) -> bool:
        """Whether `device_id` registers without digest (`auth: none`, only from `from`)."""
        override = self.overrides.get(device_id)
        return override is not None and override.auth == "none"

    def network_for(self, device_id: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The network `device_id` must register from (`from`), or None for anywhere."""
        override = self.overrides.get(device_id)
        return override.from_ if override is not None else None

    def transport_for(self, device_id: str) -> str | None:
        """The media transport `device_id`'s override names, or None."""
        override = self.overrides.get(device_id)
        return override.transport if override is not None else None

    def allowed(self, device_id: str) -> bool:
        """Whether `device_id` may register: an empty allow list admits every ID."""
        return not self.allow or device_id.startswith(self.allow)


@dataclass(frozen=True)
class SimulatorSettings:
    """The ``simulator:`` section: built-in simulated cameras for the demo and tests."""

    cameras: int
    channels_per_camera: int


TRANSPORTS = ("udp", "tcp-passive", "tcp-active")
STREAMS = ("main", "sub")


@dataclass(frozen=True)
class MediaSettings:
    """The ``media:`` section: how live streams are pulled from devices."""

    transport: str
    timeout_s: int
    rtp_payload_max: int
    linger_s: int
    answer_timeout_s: int
    connect_timeout_s: float
    #: transports to move on to when one fails in a way another could avoid
    transport_fallback: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelOverride:
    """Settings for one channel; None means "use the default"."""

    stream: str | None = None
    transport: str | None = None


@dataclass(frozen=True)
class ChannelsSettings:
    """The ``channels:`` section: per-channel choices such as main or sub stream."""

    overrides: Mapping[str, ChannelOverride]

    def stream_for(self, channel_id: str) -> str:
        """"main" or "sub": the stream to ask the device for."""
        override = self.overrides.get(channel_id)
        return override.stream if override is not None and override.stream else "main"

    def transport_for(self, channel_id: str, default: str) -> str:
        override = self.overrides.get(channel_id)
        return override.transport if override is not None and override.transport else default


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Schedule:
    """When one channel is recorded: always, never, or weekly windows in the node's zone.

    `windows` holds (weekday 0=Monday, start minute, end minute) with start < end <= 1440; a
    window that crosses midnight is stored as two.
    """

    always: bool = False
    windows: tuple[tuple[int, int, int], ...] = ()

    def active(self, weekday: int, minute: int) -> bool:
        if self.always:
            return True
        return any(day == weekday and start <= minute < end for day, start, end in self.windows)


@dataclass(frozen=True)
class RecordingSettings:
    """The ``recording:`` section: what is recorded, where, and for how long it is kept.

    `channels` is None for "all" (every channel the node knows), else a mapping of channel ID
    to its `Schedule` (a plain list of IDs means "always" for each).
    """

    retention_days: int
    allow_short_retention: bool
    segment_s: int
    fsync_s: float
    dir: Path | None
    min_free_gb: float
    channels: Mapping[str, Schedule] | None
    query_max_days: int

    def root(self, node: NodeSettings) -> Path:
        """Where segments go: `dir`, or `<data_dir>/recordings`."""
        return self.dir if self.dir is not None else node.data_dir / "recordings"

    def wants(self, channel_id: str, weekday: int, minute: int) -> bool:
        """Whether `channel_id` is to be recorded at this local weekday and minute of the day."""
        if self.channels is None:
            return True
        schedule = self.channels.get(channel_id)
        return schedule is not None and schedule.active(weekday, minute)


@dataclass(frozen=True)
class Settings:
    """The whole checked configuration; `source` names the file it came from."""

    node: NodeSettings
    devices: DevicesSettings
    simulator: SimulatorSettings
    media: MediaSettings
    channels: ChannelsSettings
    recording: RecordingSettings
    source: str


def system_timezone() -> datetime.tzinfo:
    """The local zone as the C library sees it, with its DST rules when they can be found."""
    name = os.environ.get("TZ", "").removeprefix(":")
    try:
        if name:
            return zoneinfo.ZoneInfo(name)
        # Most systems link /etc/localtime into the zone database; its path names the zone.
        key = Path("/etc/localtime").resolve().as_posix().partition("zoneinfo/")[2]
        with open("/etc/localtime", "rb") as file:
            return zoneinfo.ZoneInfo.from_file(file, key=key or "localtime")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # A POSIX rule such as TZ="CST-8", or no zone database: keep today's offset.
        return datetime.datetime.now().astimezone().tzinfo or datetime.UTC


# --- Schema machinery ---------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
          "null": "an empty value", "timestamp": "a date", "binary": "binary data"}
_CONSTRUCT = yaml.constructor.SafeConstructor()
_REQUIRED: Any = object()


class _Invalid(Exception):
    """A value is unusable; the message is reported at the value's line."""


class _Reported(Exception):
    """A value is unusable and its problems have already been reported."""


class _Reader:
    """Collects problems, each tied to a file and line, while one document is read."""

    def __init__(self, filename: str, base_dir: Path) -> None:
        self.filename = filename
        self.base_dir = base_dir
        self._found: list[tuple[int, str]] = []

    def report(self, where: yaml.Node | int | None, path: str, message: str) -> None:
        line = where.start_mark.line + 1 if isinstance(where, yaml.Node) else where or 1
        text = f"{path}: {message}" if path else message
        self._found.append((line, f"{self.filename}:{line}: {text}"))

    @property
    def problems(self) -> list[str]:
        """Every problem so far, in file order (the sort is stable within one line)."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]


class _Ctx(NamedTuple):
    """What a parser may need beyond the node: somewhere to report, and its own key path."""

    reader: _Reader
    path: str


Parser = Callable[[yaml.Node, _Ctx], Any]


@dataclass(frozen=True)
class Key:
    """One configuration key: how to parse it, its default (if it has one) and what it means."""

    name: str
    parse: Parser
    default: Any = _REQUIRED
    doc: str = ""


@dataclass
class _Parsed:
    """The values read from one mapping, plus the nodes needed to report cross-key problems."""

    values: dict[str, Any]
    nodes: dict[str, yaml.Node]
    complete: bool = True


@dataclass(frozen=True)
class Section:
    """A top-level mapping: its keys, and the function that turns their values into settings."""

    name: str
    keys: tuple[Key, ...]
    build: Callable[[_Reader, _Parsed], Any]


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = _KINDS.get(node.tag.removeprefix(_TAG), node.tag)
    return f"{kind} ({node.value})" if node.value else kind


def _is(node: yaml.Node | None, kind: str) -> bool:
    """Whether `node` is a scalar that YAML reads as `kind` (str, int, float, bool, null)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _TAG + kind


def _quoted(text: str) -> str:
    # A JSON string is also a valid YAML double-quoted string.
    return json.dumps(text, ensure_ascii=False)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f'; did you mean "{close[0]}"?'
    return "; expected one of: " + ", ".join(choices)


def _entries(
    reader: _Reader, node: yaml.Node | None, path: str
) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
    """The (name, key node, value node) triples of a mapping, or None if it is not one.

    An absent or empty value counts as an empty mapping, so a section whose keys are all
    commented out still works. Duplicate keys are reported: YAML would silently keep the last.
    """
    if node is None or _is(node, "null"):
        return []
    if not isinstance(node, yaml.MappingNode):
        reader.report(node, path, f"expected a mapping of keys, got {_describe(node)}")
        return None
    seen: dict[str, yaml.Node] = {}
    entries: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            reader.report(key_node, path, f"a key must be plain text, got {_describe(key_node)}")
            continue
        name = key_node.value
        if name in seen:
            first = seen[name].start_mark.line + 1
            reader.report(key_node, _join(path, name), f"duplicate key (first on line {first})")
            continue
        seen[name] = key_node
        entries.append((name, key_node, value_node))
    return entries


def _read_mapping(
    reader: _Reader,
    node: yaml.Node | None,
    path: str,
    keys: tuple[Key, ...],
    anchor: yaml.Node | None,
    homes: Mapping[str, str] | None = None,
) -> _Parsed:
    """Parse a mapping against a key table; `anchor` is where missing keys are reported."""
    parsed = _Parsed({}, {})
    entries = _entries(reader, node, path)
    if entries is None:
        parsed.complete = False
        return parsed
    table = {key.name: key for key in keys}
    empty: dict[str, yaml.Node] = {}
    for name, key_node, value_node in entries:
        key = table.get(name)
        if key is None:
            home = (homes or {}).get(name)
            hint = f'; it belongs under "{home}:"' if home else _suggest(name, list(table))
            reader.report(key_node, _join(path, name), "unknown key" + hint)
        elif _is(value_node, "null"):
            empty[name] = key_node  # "key:" with nothing after it means the same as leaving it out
        else:
            parsed.nodes[name] = value_node
            try:
                parsed.values[name] = key.parse(value_node, _Ctx(reader, _join(path, name)))
            except _Invalid as exc:
                reader.report(value_node, _join(path, name), str(exc))
                parsed.complete = False
            except _Reported:
                parsed.complete = False
    for key in keys:
        if key.name in parsed.nodes:
            continue
        if key.default is not _REQUIRED:
            parsed.values[key.name] = key.default
            continue
        parsed.complete = False
        if key.name in empty:
            reader.report(empty[key.name], _join(path, key.name), "must not be empty")
        else:
            reader.report(anchor, _join(path, key.name), "required, but not given")
    return parsed


# --- Parsers for single values ------------------------------------------------------------------


def _string(node: yaml.Node, what: str = "a string") -> str:
    if _is(node, "str"):
        return str(node.value)
    if isinstance(node, yaml.ScalarNode) and node.value:
        raise _Invalid(
            f"expected {what}, got {_describe(node)}; "
            f"put it in quotes if you mean the text: {_quoted(node.value)}"
        )
    raise _Invalid(f"expected {what}, got {_describe(node)}")


def _text(node: yaml.Node, ctx: _Ctx) -> str:
    value = _string(node)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _device_id(node: yaml.Node, type_code: str | None = None) -> str:
    if _is(node, "int"):
        raise _Invalid(
            f"a device ID must be quoted: YAML reads {node.value} as a number, which drops "
            f"leading zeros; write {_quoted(node.value)}"
        )
    value = _string(node, "a 20-digit ID")
    if not re.fullmatch(r"[0-9]{20}", value):
        raise _Invalid(f"expected exactly 20 digits (0-9), got {_quoted(value)}")
    if type_code is not None and value[10:13] != type_code:
        raise _Invalid(f"digits 11-13 (the type code) must be {type_code}, got {value[10:13]}")
    return value


def _node_id(node: yaml.Node, ctx: _Ctx) -> str:
    # Type 200 is a central signalling (SIP) server in the GB/T 28181 annex D coding scheme.
    return _device_id(node, type_code="200")


def _realm(node: yaml.Node, ctx: _Ctx) -> str:
    value = _string(node)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", value):
        raise _Invalid(f"expected a SIP domain such as 3101120000, got {_quoted(value)}")
    return value


class _HostPort(NamedTuple):
    host: str
    port: int


def _listen(node: yaml.Node, ctx: _Ctx) -> _HostPort:
    text = _string(node, "host:port")
    bracketed = text.startswith("[")
    if bracketed:
        host, colon, port = text[1:].partition("]:")
    else:
        host, colon, port = text.rpartition(":")
        if ":" in host:
            raise _Invalid(f"write an IPv6 address in brackets, as [::]:5060; got {text!r}")
    if not colon:
        raise _Invalid(f"expected host:port, such as 0.0.0.0:5060 or [::]:5060; got {text!r}")
    version = 6 if bracketed else 4
    try:
        valid = ipaddress.ip_address(host).version == version
    except ValueError:
        valid = False
    if not valid:
        raise _Invalid(f"{host!r} is not an IPv{version} address (in {text!r})")
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise _Invalid(f"the port must be a number from 0 to 65535, got {port!r}")
    return _HostPort(host, int(port))


def _media_ip(node: yaml.Node, ctx: _Ctx) -> str:
    text = _string(node, "an IP address")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"expected an IPv4 or IPv6 address, got {text!r}") from None
    if address.is_unspecified:
        raise _Invalid(f"{text} cannot be reached; give the address devices send media to")
    return str(address)


def _bind_ip(node: yaml.Node, ctx: _Ctx) -> str:
    text = _string(node, "an IP address")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Invalid(f"expected an IPv4 or IPv6 address, got {text!r}") from None


def _transports(node: yaml.Node, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f"expected a list such as [tcp-passive, udp], got {_describe(node)}")
    parse = _choice(TRANSPORTS)

    def one(item: yaml.Node, chosen: list[str]) -> str:
        value = parse(item, ctx)
        if value in chosen:
            raise _Invalid(f"{value} is listed twice")
        return value

    return tuple(_items(node, ctx, one))


def _items(
    node: yaml.SequenceNode, ctx: _Ctx, parse: Callable[[yaml.Node, list[Any]], Any]
) -> list[Any]:
    """Each item of a list through `parse(item, items so far)`; every bad item is reported at
    its own line before the list is refused."""
    out: list[Any] = []
    failed = False
    for index, item in enumerate(node.value):
        try:
            out.append(parse(item, out))
        except _Invalid as exc:
            ctx.reader.report(item, f"{ctx.path}[{index}]", str(exc))
            failed = True
    if failed:
        raise _Reported
    return out


def _port_range(node: yaml.Node, ctx: _Ctx) -> tuple[int, int]:
    text = _string(node, "a port range such as 30000-30999")
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", text)
    if not match:
        raise _Invalid(f"expected a port range such as 30000-30999, got {text!r}")
    low, high = int(match[1]), int(match[2])
    if not (1024 <= low <= 65535 and 1024 <= high <= 65535):
        raise _Invalid(f"ports must lie within 1024..65535, got {low}-{high}")
    if low > high:
        raise _Invalid(f"the low port must not exceed the high port, got {low}-{high}")
    return low, high


def _path(node: yaml.Node, ctx: _Ctx) -> Path:
    return Path(_text(node, ctx)).expanduser()


def _zone(node: yaml.Node, ctx: _Ctx) -> str:
    name = _string(node, "a time zone name such as Asia/Shanghai")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else " (an IANA name such as Asia/Shanghai)"
        raise _Invalid(f"unknown time zone {name!r}{hint}") from None
    return name


def _integer(minimum: int) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> int:
        if not _is(node, "int"):
            quoted_number = _is(node, "str") and node.value.strip().isdigit()
            hint = "; remove the quotes" if quoted_number else ""
            raise _Invalid(f"expected a whole number, got {_describe(node)}{hint}")
        value: int = _CONSTRUCT.construct_yaml_int(node)
        if value < minimum:
            raise _Invalid(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> str:
        value = _string(node, "one of " + ", ".join(choices))
        if value not in choices:
            raise _Invalid(f"unknown value {_quoted(value)}" + _suggest(value, list(choices)))
        return value

    return parse


def _boolean(node: yaml.Node, ctx: _Ctx) -> bool:
    if _is(node, "bool"):
        return bool(_CONSTRUCT.construct_yaml_bool(node))
    raise _Invalid(f"expected true or false, got {_describe(node)}")


def _float(node: yaml.Node, what: str) -> float:
    """An int or float scalar as a float (may be .nan or .inf: callers check ranges)."""
    if _is(node, "int"):
        return float(_CONSTRUCT.construct_yaml_int(node))
    if _is(node, "float"):
        return float(_CONSTRUCT.construct_yaml_float(node))
    raise _Invalid(f"expected {what}, got {_describe(node)}")


def _degrees(limit: float) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> float:
        value = _float(node, "a number of degrees")
        if not -limit <= value <= limit:  # also rejects .nan
            raise _Invalid(f"must lie within -{limit:g}..{limit:g} degrees, got {node.value}")
        return value

    return parse


def _prefixes(node: yaml.Node, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f'expected a list of prefixes such as ["31011200"], got {_describe(node)}')

    def one(item: yaml.Node, _: list[str]) -> str:
        if _is(item, "int"):
            raise _Invalid(
                f"quote the prefix, as {_quoted(item.value)}: YAML reads an unquoted one "
                "as a number, which drops leading zeros"
            )
        value = _string(item, "an ID prefix")
        if not re.fullmatch(r"[0-9]{1,20}", value):
            raise _Invalid(f"expected 1 to 20 digits (0-9), got {_quoted(value)}")
        return value

    return tuple(_items(node, ctx, one))


AUTH_MODES = ("digest", "none")


def _network(node: yaml.Node, ctx: _Ctx) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    value = _string(node, "a network such as 192.0.2.0/24 or 2001:db8::/32").strip()
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(f"expected an IPv4 or IPv6 network such as 192.0.2.0/24 or 2001:db8::/32, "
                       f"got {_quoted(value)}") from None
    raise _Invalid(f"{_quoted(value)} has host bits set; did you mean \"{network}\"?")


OVERRIDE_KEYS: tuple[Key, ...] = (
    Key("password", _text, None, "digest password of this device instead of devices.password"),
    Key("name", _text, None, "name shown in the API and the catalog"),
    Key("address", _text, None, "where the device is installed"),
    Key("longitude", _degrees(180), None, "WGS-84 longitude, degrees east"),
    Key("latitude", _degrees(90), None, "WGS-84 latitude, degrees north"),
    Key("username", _text, None, "digest username this device must use; default: any"),
    Key("follow_source", _boolean, False,
        "unsafe: a MESSAGE from another address moves the device there"),
    Key("auth", _choice(AUTH_MODES), "digest",
        "digest, or none for a device that cannot answer a challenge (needs from)"),
    Key("from", _network, None, "the IPv4 or IPv6 network the device may register from"),
    Key("transport", _choice(TRANSPORTS), None,
        "media transport tried first for this device, before the remembered one"),
)


def _device_override(**values: Any) -> DeviceOverride:
    values["from_"] = values.pop("from")  # a Python keyword
    return DeviceOverride(**values)


def _by_id(keys: tuple[Key, ...], build: Callable[..., Any]) -> Parser:
    """A mapping of quoted 20-digit IDs to settings read with `keys` and made by `build`."""

    def parse(node: yaml.Node, ctx: _Ctx) -> Mapping[str, Any]:
        entries = _entries(ctx.reader, node, ctx.path)
        if entries is None:
            raise _Reported
        result: dict[str, Any] = {}
        failed = False
        for name, key_node, value_node in entries:
            path = _join(ctx.path, name)
            try:
                item_id = _device_id(key_node)
            except _Invalid as exc:
                ctx.reader.report(key_node, path, str(exc))
                failed = True
                continue
            parsed = _read_mapping(ctx.reader, value_node, path, keys, anchor=key_node)
            if parsed.complete:
                result[item_id] = build(**parsed.values)
            failed = failed or not parsed.complete
        if failed:
            raise _Reported
        return MappingProxyType(result)

    return parse


_each_override = _by_id(OVERRIDE_KEYS, _device_override)


def _overrides(node: yaml.Node, ctx: _Ctx) -> Mapping[str, DeviceOverride]:
    """Device overrides; `auth: none` without `from` is refused (a password-less device from
    anywhere), beside whatever else is wrong with the entries."""
    unbound = False
    for id_node, entry in node.value if isinstance(node, yaml.MappingNode) else ():
        if not isinstance(entry, yaml.MappingNode):
            continue
        given = {key.value: value for key, value in entry.value}
        auth = given.get("auth")
        if _is(auth, "str") and auth.value == "none" and (
            "from" not in given or _is(given["from"], "null")
        ):
            ctx.reader.report(
                auth, f"{_join(ctx.path, str(id_node.value))}.auth",
                'none needs from: the network this device registers from without a password, '
                'e.g. from: "192.0.2.0/24"',
            )
            unbound = True
    overrides: Mapping[str, DeviceOverride] = _each_override(node, ctx)
    if unbound:
        raise _Reported
    return overrides


# --- The schema ---------------------------------------------------------------------------------

NODE_KEYS: tuple[Key, ...] = (
    Key("id", _node_id, "34020000002000000001", "20-digit GB/T 28181 code of this node"),
    Key("realm", _realm, None, "SIP domain; default: the first 10 digits of id"),
    Key("sip_listen", _listen, _HostPort("0.0.0.0", 5060), "UDP and TCP SIP address"),
    Key("media_ip", _media_ip, "127.0.0.1", "address put in SDP for devices to send media to"),
    Key("rtp_ports", _port_range, (30000, 30999), "local ports for RTP, as low-high"),
    Key("http_listen", _listen, _HostPort("127.0.0.1", 8080), "address of the HTTP API"),
    Key("api_token", _text, doc="Bearer token required on /api/*"),
    Key("api_trusted_proxy", _boolean, False,
        "holders of api_token are an authenticating proxy: X-User names the operator"),
    Key("data_dir", _path, Path("data"), "recordings and state; relative to the config file"),
    Key("timezone", _zone, None, "IANA zone for the Date header and file names; default: system"),
    Key("media_bind", _bind_ip, None,
        "address RTP binds; default: media_ip if it is an address of this host, else the SIP "
        "host (1:1 NAT, a cloud public IP)"),
)


def _build_node(reader: _Reader, parsed: _Parsed) -> NodeSettings:
    v = parsed.values
    return NodeSettings(
        id=v["id"],
        realm=v["realm"] or v["id"][:10],
        sip_host=v["sip_listen"].host,
        sip_port=v["sip_listen"].port,
        media_ip=v["media_ip"],
        rtp_port_min=v["rtp_ports"][0],
        rtp_port_max=v["rtp_ports"][1],
        http_host=v["http_listen"].host,
        http_port=v["http_listen"].port,
        api_token=v["api_token"],
        api_trusted_proxy=v["api_trusted_proxy"],
        data_dir=(reader.base_dir / v["data_dir"]).resolve(),
        timezone_name=v["timezone"],
        media_bind=v["media_bind"],
    )


def _per_second(node: yaml.Node, ctx: _Ctx) -> float:
    value = _float(node, "a number of requests a second")
    if not 0 < value < float("inf"):  # also rejects .nan
        raise _Invalid(f"must be a number above 0, got {node.value}")
    return value


RATE_KEYS: tuple[Key, ...] = (
    Key("per_s", _per_second, doc="requests a second, on average"),
    Key("burst", _integer(1), doc="requests at once before the average applies"),
)


def _rate(node: yaml.Node, ctx: _Ctx) -> Rate:
    parsed = _read_mapping(ctx.reader, node, ctx.path, RATE_KEYS, anchor=node)
    if not parsed.complete:
        raise _Reported
    return Rate(**parsed.values)


DEVICES_KEYS: tuple[Key, ...] = (
    Key("password", _text, doc="default digest password; no default, it must be set"),
    Key("allow", _prefixes, (), "ID prefixes allowed to register; empty: every ID"),
    Key("register_expires_s", _integer(60), 3600, "longest registration granted, seconds"),
    Key("keepalive_timeout_s", _integer(1), 180, "silence after which a device is offline"),
    Key("time_sync", _boolean, True, "send the Date header in REGISTER 200 OK"),
    Key("overrides", _overrides, MappingProxyType({}), "per-device settings by 20-digit ID"),
    Key("channel_takeover_s", _integer(0), 86400,
        "a channel moves to another device once its owner has been silent this long"),
    Key("register_rate", _rate, Rate(2.0, 10),
        "REGISTERs per device ID: {per_s, burst}; past it 503 with Retry-After"),
    Key("message_rate", _rate, Rate(50.0, 200),
        "MESSAGEs per registered device: {per_s, burst}; past it 503 with Retry-After"),
)


def _build_devices(reader: _Reader, parsed: _Parsed) -> DevicesSettings:
    devices = DevicesSettings(**parsed.values)
    overrides = parsed.nodes.get("overrides")
    for key_node, _ in overrides.value if isinstance(overrides, yaml.MappingNode) else ():
        if not devices.allowed(key_node.value):
            reader.report(
                key_node,
                f"devices.overrides.{key_node.value}",
                "not covered by devices.allow, so this device could never register; "
                "add its ID or a prefix of it to devices.allow",
            )
    return devices


SIMULATOR_KEYS: tuple[Key, ...] = (
    Key("cameras", _integer(0), 0, "number of built-in simulated cameras"),
    Key("channels_per_camera", _integer(1), 1, "video channels on each simulated camera"),
)


def _bounded(minimum: int, maximum: int) -> Parser:
    check = _integer(minimum)

    def parse(node: yaml.Node, ctx: _Ctx) -> int:
        value: int = check(node, ctx)
        if value > maximum:
            raise _Invalid(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _number(minimum: float) -> Parser:
    def parse(node: yaml.Node, ctx: _Ctx) -> float:
        value = _float(node, "a number")
        if not value >= minimum:  # also rejects .nan
            raise _Invalid(f"must be at least {minimum:g}, got {node.value}")
        return value

    return parse


MEDIA_KEYS: tuple[Key, ...] = (
    Key("transport", _choice(TRANSPORTS), "udp",
        "how streams are pulled: udp | tcp-passive (the node listens) | tcp-active (it connects)"),
    Key("timeout_s", _integer(1), 10,
        "no media (or no video frame) for this long: BYE, and re-INVITE if still wanted"),
    # An RFC 4571 frame holds 65535 bytes, 12 of them the RTP header.
    Key("rtp_payload_max", _bounded(188, 65523), 1400, "largest RTP payload the node sends"),
    Key("linger_s", _integer(0), 5, "keep an unwatched stream this long before BYE"),
    Key("answer_timeout_s", _integer(1), 10, "wait this long for a device to answer an INVITE"),
    Key("connect_timeout_s", _number(0.1), 5,
        "tcp-active: give up connecting to the device's media port after this long"),
    Key("transport_fallback", _transports, (),
        "transports to try next when one fails in a way another could avoid; empty: none"),
)

CHANNEL_KEYS: tuple[Key, ...] = (
    Key("stream", _choice(STREAMS), None, "main or sub stream of the channel"),
    Key("transport", _choice(TRANSPORTS), None, "media.transport for this channel"),
)


_channel_overrides = _by_id(CHANNEL_KEYS, ChannelOverride)


CHANNELS_KEYS: tuple[Key, ...] = (
    Key("overrides", _channel_overrides, MappingProxyType({}),
        "per-channel settings by 20-digit channel ID"),
)


def _optional_path(node: yaml.Node, ctx: _Ctx) -> Path | None:
    text = _string(node, "a directory path")
    return Path(text).expanduser() if text.strip() else None


_DAY_RANGE = re.compile(r"(mon|tue|wed|thu|fri|sat|sun)(?:\s*-\s*(mon|tue|wed|thu|fri|sat|sun))?")
_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")


def _days(text: str) -> list[int]:
    key = text.strip().lower()
    if key in ("daily", "every day", "all"):
        return list(range(7))
    match = _DAY_RANGE.fullmatch(key)
    if not match:
        raise _Invalid(f"expected a day (mon..sun), a range such as mon-fri, or daily; "
                       f"got {_quoted(text)}")
    first = WEEKDAYS.index(match[1])
    last = WEEKDAYS.index(match[2] or match[1])
    return [(first + i) % 7 for i in range((last - first) % 7 + 1)]


def _window(text: str) -> tuple[int, int]:
    match = _WINDOW.fullmatch(text)
    if not match:
        raise _Invalid(f"expected a time window such as 08:00-18:00, got {_quoted(text)}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or h1 * 60 + m1 > 1440 or h2 * 60 + m2 > 1440:
        raise _Invalid(f"not a time of day in {_quoted(text)}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise _Invalid(f"the window {_quoted(text)} is empty")
    return start, end


def _schedule(node: yaml.Node, ctx: _Ctx) -> Schedule:
    if _is(node, "str") and node.value.strip().lower() == "always":
        return Schedule(always=True)
    if _is(node, "bool"):  # YAML 1.1 reads a bare off / on as a boolean
        if _CONSTRUCT.construct_yaml_bool(node):
            return Schedule(always=True)
        return Schedule()
    if _is(node, "str") and node.value.strip().lower() == "off":
        return Schedule()
    entries = _entries(ctx.reader, node, ctx.path) if isinstance(node, yaml.MappingNode) else None
    if entries is None:
        raise _Invalid(f"expected always, off or a weekly schedule such as "
                       f'{{mon-fri: "08:00-18:00"}}, got {_describe(node)}')
    windows: list[tuple[int, int, int]] = []
    failed = False
    for name, key_node, value_node in entries:
        path = _join(ctx.path, name)
        try:
            days = _days(name)
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in items:
                start, end = _window(_string(item, "a time window such as 08:00-18:00"))
                for day in days:
                    if start < end:
                        windows.append((day, start, end))
                    else:  # crosses midnight
                        windows.append((day, start, 1440))
                        if end:
                            windows.append(((day + 1) % 7, 0, end))
        except _Invalid as exc:
            ctx.reader.report(key_node, path, str(exc))
            failed = True
    if failed:
        raise _Reported
    return Schedule(windows=tuple(sorted(windows)))


def _recorded_channels(node: yaml.Node, ctx: _Ctx) -> Mapping[str, Schedule] | None:
    if _is(node, "str") and node.value.strip().lower() == "all":
        return None
    if isinstance(node, yaml.SequenceNode):
        result: dict[str, Schedule] = {}
        failed = False
        for index, item in enumerate(node.value):
            try:
                result[_device_id(item)] = Schedule(always=True)
            except _Invalid as exc:
                ctx.reader.report(item, f"{ctx.path}[{index}]", str(exc))
                failed = True
        if failed:
            raise _Reported
        return MappingProxyType(result)
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(f"expected all, a list of channel IDs, or a mapping of channel ID to "
                       f"always | off | weekly schedule; got {_describe(node)}")
    schedules: dict[str, Schedule] = {}
    failed = False
    for name, key_node, value_node in _entries(ctx.reader, node, ctx.path) or []:
        path = _join(ctx.path, name)
        try:
            channel_id = _device_id(key_node)
            schedules[channel_id] = _schedule(value_node, _Ctx(ctx.reader, path))
        except _Invalid as exc:
            ctx.reader.report(value_node, path, str(exc))
            failed = True
        except _Reported:
            failed = True
    if failed:
        raise _Reported
    return MappingProxyType(schedules)


RECORDING_KEYS: tuple[Key, ...] = (
    Key("retention_days", _integer(1), 30, "days every segment is kept (30 at least)"),
    Key("allow_short_retention", _boolean, False, "allow retention_days below 30"),
    Key("segment_s", _integer(1), 60, "target segment length; cut at the next keyframe"),
    Key("fsync_s", _number(0), 2,
        "open segments are fdatasync'd this often (seconds; 0: only when they close)"),
    Key("dir", _optional_path, None, "segment directory; default <data_dir>/recordings"),
    Key("min_free_gb", _number(0), 5, "free-space alarm threshold, GB"),
    Key("channels", _recorded_channels, None,
        "all | [channel IDs] | {channel ID: always | off | weekly schedule}"),
    Key("query_max_days", _integer(1), 31,
        "longest range a device's RecordInfo query is answered for; longer ones are cut"),
)


def _build_recording(reader: _Reader, parsed: _Parsed) -> RecordingSettings:
    v = dict(parsed.values)
    if v["retention_days"] < 30 and not v["allow_short_retention"]:
        reader.report(
            parsed.nodes.get("retention_days"), "recording.retention_days",
            f"{v['retention_days']} days is below the 30 days district rules require; set "
            "recording.allow_short_retention: true if this node is not bound by them",
        )
    if v["dir"] is not None:
        v["dir"] = (reader.base_dir / v["dir"]).resolve()
    v["min_free_gb"] = float(v["min_free_gb"])
    v["fsync_s"] = float(v["fsync_s"])
    return RecordingSettings(**v)


SECTIONS: tuple[Section, ...] = (
    Section("node", NODE_KEYS, _build_node),
    Section("devices", DEVICES_KEYS, _build_devices),
    Section("simulator", SIMULATOR_KEYS, lambda _, parsed: SimulatorSettings(**parsed.values)),
    Section("media", MEDIA_KEYS, lambda _, parsed: MediaSettings(**parsed.values)),
    Section("channels", CHANNELS_KEYS, lambda _, parsed: ChannelsSettings(**parsed.values)),
    Section("recording", RECORDING_KEYS, _build_recording),
)


# --- Entry points -------------------------------------------------------------------------------


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and check the config file at `path`; raise `ConfigError` listing every problem."""
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the config file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{name}:{line}: the file must be UTF-8 text ({exc.reason})"]) from None
    return parse_settings(text, name, base_dir=Path(path).parent)


def parse_settings(text: str, filename: str = "<string>", base_dir: Path | None = None) -> Settings:
    """Check YAML `text`; `base_dir` anchors relative paths (default: the working directory)."""
    reader = _Reader(filename, Path.cwd() if base_dir is None else Path(base_dir))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        line, message = _syntax_error(exc, text)
        reader.report(line, "", f"YAML syntax error: {message}")
        raise ConfigError(reader.problems) from None
    settings = _read_document(reader, root)
    if reader.problems or settings is None:
        raise ConfigError(reader.problems)
    return settings


def _syntax_error(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """The line and the text of a YAML syntax error."""
    if isinstance(exc, yaml.reader.ReaderError):  # bad characters: only a character offset
        return text.count("\n", 0, exc.position) + 1, f"{exc.reason} (U+{exc.character:04X})"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return 1, str(exc)
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or str(exc)
    if exc.context and exc.context_mark:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    if "'\\t'" in message:
        message += "; indent with spaces, not tabs"
    return (mark.line + 1 if mark else 1), message


def _read_document(reader: _Reader, root: yaml.Node | None) -> Settings | None:
    names = [section.name for section in SECTIONS]
    if root is not None and not isinstance(root, yaml.MappingNode) and not _is(root, "null"):
        reader.report(
            root, "", f"the top level must be a mapping of sections ({', '.join(names)}), "
            f"got {_describe(root)}"
        )
        return None
    homes = {key.name: section.name for section in SECTIONS for key in section.keys}
    given: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for name, key_node, value_node in _entries(reader, root, "") or []:
        if name in names:
            given[name] = (key_node, value_node)
        elif name in homes:
            reader.report(key_node, name, f'unknown section; it belongs under "{homes[name]}:"')
        else:
            reader.report(key_node, name, "unknown section" + _suggest(name, names))
    built: dict[str, Any] = {}
    for section in SECTIONS:
        key_node, value_node = given.get(section.name, (None, None))
        parsed = _read_mapping(reader, value_node, section.name, section.keys, key_node, homes)
        if parsed.complete:
            built[section.name] = section.build(reader, parsed)
    if len(built) < len(SECTIONS):
        return None
    return Settings(source=reader.filename, **built)


def settings_for_tests(data_dir: Path, **overrides: object) -> Settings:
    """Settings on loopback with ephemeral SIP and HTTP ports (port 0), storing under `data_dir`.

    Each override names a key by its dotted path, e.g. ``**{"devices.keepalive_timeout_s": 5}``;
    as a keyword argument, write the dots as double underscores: ``devices__keepalive_timeout_s=5``.
    Relative paths resolve against the working directory.
    """
    loopback = "127.0.0.1"
    node = {"sip_listen": f"{loopback}:0", "http_listen": f"{loopback}:0", "media_ip": loopback}
    node |= {"api_token": "test-token", "data_dir": os.fspath(Path(data_dir).absolute())}
    document: dict[str, Any] = {"node": node, "devices": {"password": "test-password"}}
    # Tests record only the channels they name (a real node's default is every channel).
    document["recording"] = {"channels": []}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.replace("__", ".").split(".")
        target = document
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = _plain(value)
    text = yaml.safe_dump(document, sort_keys=False)
    return parse_settings(text, "<settings_for_tests>")


def _plain(value: object) -> object:
    """Turn test values into what `yaml.safe_dump` writes back as the same YAML."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value
