"""The ``console:`` section: how the operator console's live video reaches the browser.

Live video goes to the browser over WebRTC. Without ICE servers the node offers only its host
candidates, which is all loopback and a flat LAN need; across NAT give it a STUN and a TURN
server (``ice_servers``, entries as a browser's ``RTCConfiguration.iceServers`` takes them; aiortc
uses one of each, so more are refused rather than silently ignored). H.264 is
passed through as it comes; H.265, which browsers do not take over WebRTC, is refused (the
console offers the recorded MP4) unless ``transcode_h265`` decodes it and encodes H.264, one
encoder per viewer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from .schema import (
    Key,
    _boolean,
    _Ctx,
    _describe,
    _entries,
    _Invalid,
    _items,
    _Parsed,
    _Reader,
    _string,
)

__all__ = ["CONSOLE_KEYS", "ICE_SCHEMES", "ConsoleSettings", "IceServer", "build_console"]

ICE_SCHEMES = ("stun:", "turn:", "turns:")
_ICE_SERVER_KEYS = ("urls", "username", "credential")
# RFC 7064 and RFC 7065 URLs, as aiortc reads them (stuns: it does not use)
_URL = re.compile(r"(?P<scheme>(?i:stun|turns?)):(?P<host>[^?:]+)(:(?P<port>[0-9]{1,5}))?"
                  r"(\?transport=(?P<transport>[a-z]+))?")


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server (RFC 7064, RFC 7065 URLs); TURN needs `username` and
    `credential`."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class ConsoleSettings:
    """The ``console:`` section."""

    #: STUN/TURN servers for WebRTC; empty: host candidates only
    ice_servers: tuple[IceServer, ...]
    #: decode H.265 and encode H.264 for WebRTC viewers (CPU-heavy); else H.265 is refused
    transcode_h265: bool


def _url(node: yaml.Node, seen: list[str]) -> str:
    value = _string(node, "a STUN or TURN URL").strip()
    match = _URL.fullmatch(value)
    if match is None:
        raise _Invalid(f"expected stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp] or "
                       f"turns:HOST[:PORT][?transport=tcp] (RFC 7064, RFC 7065), got {value!r}")
    scheme, transport = match["scheme"].lower(), match["transport"]
    if scheme == "stun" and transport is not None:
        raise _Invalid(f"a stun: URL takes no transport, got {value!r}")
    if transport is not None and transport not in ("udp", "tcp") or \
            scheme == "turns" and transport == "udp":
        raise _Invalid(f"unsupported transport {transport!r} in {value!r}")
    return value


def _ice_server(node: yaml.Node, ctx: _Ctx, index: int) -> IceServer:
    path = f"{ctx.path}[{index}]"
    if not isinstance(node, yaml.MappingNode):
        raise _Invalid(f"expected a mapping with urls (and username, credential for TURN), "
                       f"got {_describe(node)}")
    values: dict[str, yaml.Node] = {}
    for name, _, value_node in _entries(ctx.reader, node, path) or []:
        if name not in _ICE_SERVER_KEYS:
            raise _Invalid(f"unknown key {name!r}; an ICE server has "
                           f"{', '.join(_ICE_SERVER_KEYS)}")
        values[name] = value_node
    if "urls" not in values:
        raise _Invalid("urls is required (a URL, or a list of them)")
    urls_node = values["urls"]
    if isinstance(urls_node, yaml.SequenceNode):
        if not urls_node.value:
            raise _Invalid("urls must list at least one URL")
        urls = tuple(_items(urls_node, ctx._replace(path=f"{path}.urls"), _url))
    else:
        urls = (_url(urls_node, []),)
    username = _string(values["username"], "a user name") if "username" in values else None
    credential = (_string(values["credential"], "a credential") if "credential" in values
                  else None)
    if any(u.lower().startswith(("turn:", "turns:")) for u in urls) and (
            not username or not credential):
        raise _Invalid("a TURN server needs username and credential")
    return IceServer(urls, username, credential)


def _ice_servers(node: yaml.Node, ctx: _Ctx) -> tuple[IceServer, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f"expected a list of ICE servers (- urls: ...), got {_describe(node)}")
    servers = tuple(_items(node, ctx, lambda item, seen: _ice_server(item, ctx, len(seen))))
    urls = [url.lower() for server in servers for url in server.urls]
    if sum(url.startswith("stun:") for url in urls) > 1 \
            or sum(url.startswith(("turn:", "turns:")) for url in urls) > 1:
        raise _Invalid("the node uses one STUN and one TURN server (aiortc takes no more); "
                       "list at most one of each")
    return servers


CONSOLE_KEYS: tuple[Key, ...] = (
    Key("ice_servers", _ice_servers, (),
        "STUN/TURN servers for live video in the browser; default: host candidates only"),
    Key("transcode_h265", _boolean, False,
        "decode H.265 and encode H.264 for browsers (CPU-heavy); default: refuse H.265"),
)


def build_console(reader: _Reader, parsed: _Parsed) -> ConsoleSettings:
    return ConsoleSettings(**parsed.values)
