"""The ``node:`` section: identity, listening addresses, the API token, data and time zone."""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import os
import re
import zoneinfo
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import yaml

from .schema import (
    Key,
    _boolean,
    _Ctx,
    _device_id,
    _integer,
    _Invalid,
    _Parsed,
    _quoted,
    _Reader,
    _string,
    _text,
)

#: the longest `sip_read_pace_ms` (a tenth of SIP's first retransmission interval, T1)
MAX_SIP_READ_PACE_MS = 50


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
    #: /metrics asks for a bearer token (any user's) too
    metrics_auth: bool
    data_dir: Path
    timezone_name: str | None
    #: where RTP binds; None: media_ip if it is an address of this host, else the SIP host
    media_bind: str | None = None
    #: SIP over UDP is read at most this often while it carries a moderate rate (0: each
    #: datagram as it comes); see `transport.sip._SipUdpSocket`
    sip_read_pace_ms: int = 50

    @cached_property
    def tz(self) -> datetime.tzinfo:
        """The configured zone, or the system's local zone when `timezone_name` is None."""
        if self.timezone_name is None:
            return system_timezone()
        return zoneinfo.ZoneInfo(self.timezone_name)


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


def _pace_ms(node: yaml.Node, ctx: _Ctx) -> int:
    value = _integer(0)(node, ctx)
    if value > MAX_SIP_READ_PACE_MS:
        raise _Invalid(f"must be at most {MAX_SIP_READ_PACE_MS} (a tenth of the 500 ms after "
                       f"which SIP over UDP retransmits), got {value}")
    return value


def _zone(node: yaml.Node, ctx: _Ctx) -> str:
    name = _string(node, "a time zone name such as Asia/Shanghai")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else " (an IANA name such as Asia/Shanghai)"
        raise _Invalid(f"unknown time zone {name!r}{hint}") from None
    return name


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
    Key("metrics_auth", _boolean, False, "GET /metrics asks for a bearer token too"),
    Key("data_dir", _path, Path("data"), "recordings and state; relative to the config file"),
    Key("timezone", _zone, None, "IANA zone for the Date header and file names; default: system"),
    Key("media_bind", _bind_ip, None,
        "address RTP binds; default: media_ip if it is an address of this host, else the SIP "
        "host (1:1 NAT, a cloud public IP)"),
    Key("sip_read_pace_ms", _pace_ms, 50,
        "read SIP over UDP at most this often while it brings 20-2,000 datagrams a second "
        "(fewer wake-ups for many idle devices); 0: each datagram as it comes"),
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
        metrics_auth=v["metrics_auth"],
        data_dir=(reader.base_dir / v["data_dir"]).resolve(),
        timezone_name=v["timezone"],
        media_bind=v["media_bind"],
        sip_read_pace_ms=v["sip_read_pace_ms"],
    )
