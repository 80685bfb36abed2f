"""The ``devices:`` section: who may register, passwords, rates, and per-device overrides."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import yaml

from .media import TRANSPORTS
from .schema import (
    Key,
    Parser,
    _boolean,
    _by_id,
    _choice,
    _Ctx,
    _describe,
    _float,
    _integer,
    _Invalid,
    _is,
    _items,
    _join,
    _Parsed,
    _quoted,
    _read_mapping,
    _Reader,
    _Reported,
    _string,
    _text,
)


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
