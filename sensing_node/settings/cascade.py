"""The ``upstreams:`` and ``limits:`` sections: the upper platforms this node registers to, and
how many live sessions they may hold.

Each upstream is one entry of a list: the platform's 20-digit code, its SIP address and
transport, the password it gave this node, and the number of sessions it may hold at once. What
each upstream may see is the ``channels:`` section's business (`default_share`, and `share` /
`upstreams` per channel).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import yaml

from .schema import (
    Key,
    _boolean,
    _choice,
    _Ctx,
    _describe,
    _device_id,
    _integer,
    _Invalid,
    _is,
    _join,
    _number,
    _Parsed,
    _read_mapping,
    _Reader,
    _string,
    _text,
)

UPSTREAM_TRANSPORTS = ("udp", "tcp")
CHARSETS = ("GB2312", "UTF-8")


@dataclass(frozen=True)
class UpstreamSettings:
    """One upper platform (``upstreams:`` entry)."""

    id: str
    realm: str
    host: str
    port: int
    transport: str
    #: our code toward it; empty: node.id
    local_id: str
    password: str
    register_expires_s: int
    keepalive_s: int
    max_streams: int
    charset: str


@dataclass(frozen=True)
class LimitsSettings:
    """The ``limits:`` section: sessions toward all upstreams together, and per channel."""

    max_outgoing_streams: int
    max_sessions_per_channel: int


def _gb_id(node: yaml.Node, ctx: _Ctx) -> str:
    return _device_id(node)


def _local_id(node: yaml.Node, ctx: _Ctx) -> str:
    if _is(node, "str") and not node.value.strip():
        return ""
    return _device_id(node)


def _realm_or_empty(node: yaml.Node, ctx: _Ctx) -> str:
    value = _string(node)
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", value):
        raise _Invalid(f"expected a SIP domain such as 3101120000, got {value!r}")
    return value


def _address(node: yaml.Node, ctx: _Ctx) -> tuple[str, int]:
    """host:port of a peer: an IPv4 address, or an IPv6 one in brackets, and a port 1..65535."""
    text = _string(node, "host:port")
    if text.startswith("["):
        host, colon, port = text[1:].partition("]:")
    else:
        host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise _Invalid(f"expected host:port, such as 192.0.2.10:5060; got {text!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _Invalid(f"{host!r} is not an IP address (in {text!r})") from None
    if address.is_unspecified:
        raise _Invalid(f"{host} cannot be reached; give the upstream's own address")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) <= 65535:
        raise _Invalid(f"the port must be a number from 1 to 65535, got {port!r}")
    return str(address), int(port)


UPSTREAM_KEYS: tuple[Key, ...] = (
    Key("id", _gb_id, doc="the upper platform's 20-digit code (usually type 200)"),
    Key("realm", _realm_or_empty, "", "its SIP domain; default: the first 10 digits of id"),
    Key("address", _address, doc="host:port of its SIP service"),
    Key("transport", _choice(UPSTREAM_TRANSPORTS), "udp", "udp | tcp, for signalling"),
    Key("local_id", _local_id, "", "our code toward it; default: node.id"),
    Key("password", _text, doc="the password it gave this node"),
    Key("register_expires_s", _integer(60), 3600, "registration lifetime asked for, seconds"),
    Key("keepalive_s", _integer(5), 60, "keepalive MESSAGE interval, seconds"),
    Key("max_streams", _integer(0), 16, "live sessions this upstream may hold at once"),
    Key("charset", _choice(CHARSETS), "GB2312", "GB2312 | UTF-8 for the XML bodies sent to it"),
)


def build_upstreams(reader: _Reader, items: list[tuple[yaml.Node, _Parsed]]) -> tuple[
    UpstreamSettings, ...
]:
    """The parsed list entries as settings; an ID or address given twice is reported."""
    out: list[UpstreamSettings] = []
    seen_ids: dict[str, int] = {}
    seen_addresses: dict[tuple[str, int, str], int] = {}
    for index, (node, parsed) in enumerate(items):
        v: dict[str, Any] = dict(parsed.values)
        host, port = v.pop("address")
        upstream = UpstreamSettings(host=host, port=port, **v)
        if not upstream.realm:
            upstream = _replace(upstream, realm=upstream.id[:10])
        path = f"upstreams[{index}]"
        line = node.start_mark.line + 1
        if upstream.id in seen_ids:
            reader.report(parsed.nodes.get("id", node), _join(path, "id"),
                          f"upstream {upstream.id} is listed twice (first on line "
                          f"{seen_ids[upstream.id]})")
        key = (host, port, upstream.transport)
        if key in seen_addresses:
            reader.report(parsed.nodes.get("address", node), _join(path, "address"),
                          f"two upstreams at {host}:{port} over {upstream.transport} (first on "
                          f"line {seen_addresses[key]}): the node could not tell them apart")
        seen_ids.setdefault(upstream.id, line)
        seen_addresses.setdefault(key, line)
        out.append(upstream)
    return tuple(out)


def _replace(upstream: UpstreamSettings, **changes: Any) -> UpstreamSettings:
    from dataclasses import replace

    return replace(upstream, **changes)


def read_list(reader: _Reader, node: yaml.Node | None, path: str, keys: tuple[Key, ...],
              anchor: yaml.Node | None) -> list[tuple[yaml.Node, _Parsed]] | None:
    """Each entry of a list of mappings read against `keys`; None if any entry is unusable."""
    if node is None or _is(node, "null"):
        return []
    if not isinstance(node, yaml.SequenceNode):
        reader.report(node, path, f"expected a list of entries (- id: ...), got "
                      f"{_describe(node)}")
        return None
    items = []
    complete = True
    for index, item in enumerate(node.value):
        parsed = _read_mapping(reader, item, f"{path}[{index}]", keys, anchor=item)
        complete = complete and parsed.complete
        items.append((item, parsed))
    return items if complete else None


LIMITS_KEYS: tuple[Key, ...] = (
    Key("max_outgoing_streams", _integer(0), 256, "live sessions to all upstreams together"),
    Key("max_sessions_per_channel", _integer(1), 8,
        "live sessions of one channel to upstreams together"),
)


def build_limits(reader: _Reader, parsed: _Parsed) -> LimitsSettings:
    return LimitsSettings(**parsed.values)


@dataclass(frozen=True)
class CascadeSettings:
    """The ``cascade:`` section: how the node answers upstreams beyond its own store."""

    #: ask the device for the parts of a record search the node has not recorded, and play
    #: such parts back from the device
    device_fallback: bool
    #: how long a device may take to answer a relayed RecordInfo query
    device_query_timeout_s: float


CASCADE_KEYS: tuple[Key, ...] = (
    Key("device_fallback", _boolean, False,
        "relay record searches (and playbacks) to the device where the node recorded nothing"),
    Key("device_query_timeout_s", _number(0.5), 5,
        "how long a device may take to answer a relayed RecordInfo query"),
)


def build_cascade(reader: _Reader, parsed: _Parsed) -> CascadeSettings:
    v = dict(parsed.values)
    v["device_query_timeout_s"] = float(v["device_query_timeout_s"])
    return CascadeSettings(**v)
