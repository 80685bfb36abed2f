"""The ``media:``, ``channels:`` and ``simulator:`` sections: how live streams are pulled."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import yaml

from sip.catalog import ChannelShare, SharePolicy

from .node import NodeSettings
from .schema import (
    Key,
    _bounded,
    _by_id,
    _choice,
    _Ctx,
    _describe,
    _device_id,
    _integer,
    _Invalid,
    _is,
    _items,
    _number,
    _Parsed,
    _Reader,
)


@dataclass(frozen=True)
class SimulatorSettings:
    """The ``simulator:`` section: built-in simulated cameras for the demo and tests."""

    cameras: int
    channels_per_camera: int


TRANSPORTS = ("udp", "tcp-passive", "tcp-active")


STREAMS = ("main", "sub")


#: what a media process that cannot keep up does (media/overload.py)
OVERLOAD_POLICIES = ("shed-lowest-priority", "shed-newest", "off")


@dataclass(frozen=True)
class MediaSettings:
    """The ``media:`` section: how live streams are pulled from devices."""

    transport: str
    timeout_s: int
    rtp_payload_max: int
    linger_s: int
    answer_timeout_s: int
    connect_timeout_s: float
    #: SO_RCVBUF asked for on each stream's socket, KiB
    receive_buffer_kib: int = 4096
    #: transports to move on to when one fails in a way another could avoid
    transport_fallback: tuple[str, ...] = ()
    #: media worker processes; 0 stands for "auto" (one per core the node may run on)
    workers: int = 1
    #: one of OVERLOAD_POLICIES: which whole streams go when a media process cannot keep up
    overload: str = "shed-lowest-priority"
    #: one UDP and TCP port for every stream, demultiplexed by SSRC
    #: (`transport/single_port.py`); None: a port of node.rtp_ports per stream
    single_port: int | None = None

    @property
    def worker_count(self) -> int:
        """How many media processes to run: `workers`, or for "auto" the cores the node may
        use (its CPU affinity), at least 1."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # not Linux
            return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ChannelOverride:
    """Settings for one channel; None means "use the default"."""

    stream: str | None = None
    transport: str | None = None
    #: unconditional | authorized | none (the district's sharing classes); None: the default
    share: str | None = None
    #: the upstreams an `authorized` channel goes to
    upstreams: tuple[str, ...] = ()
    #: under media overload, higher is kept longer (`media.overload: shed-lowest-priority`)
    priority: int = 0


@dataclass(frozen=True)
class ChannelsSettings:
    """The ``channels:`` section: per-channel choices such as main or sub stream."""

    overrides: Mapping[str, ChannelOverride]
    default_share: str = "unconditional"

    @cached_property
    def share_policy(self) -> SharePolicy:
        """Who sees which channel, for the cascade (`sip.catalog`)."""
        return SharePolicy(self.default_share, {
            channel_id: ChannelShare(override.share, frozenset(override.upstreams))
            for channel_id, override in self.overrides.items() if override.share is not None
        })

    def stream_for(self, channel_id: str) -> str:
        """"main" or "sub": the stream to ask the device for."""
        override = self.overrides.get(channel_id)
        return override.stream if override is not None and override.stream else "main"

    def transport_for(self, channel_id: str, default: str) -> str:
        override = self.overrides.get(channel_id)
        return override.transport if override is not None and override.transport else default

    def priority_for(self, channel_id: str) -> int:
        """The channel's priority under media overload (higher is kept longer); default 0."""
        override = self.overrides.get(channel_id)
        return override.priority if override is not None else 0


def _workers(node: yaml.Node, ctx: _Ctx) -> int:
    """`auto` (0) or a whole number of worker processes, 1 to 64."""
    if isinstance(node, yaml.ScalarNode) and node.value == "auto":
        return 0
    if not _is(node, "int"):
        raise _Invalid(f"expected auto or a whole number of processes, got {_describe(node)}")
    value: int = _bounded(1, 64)(node, ctx)
    return value


def build_media(reader: _Reader, parsed: _Parsed) -> MediaSettings:
    """The ``media:`` section, with single-port mode checked against the media workers.

    Single-port mode keeps the media in the node's process, and `media.workers` other than 1
    is a configuration error rather than a warning and one worker: the one port cannot be
    shared out among processes by SSRC (SO_REUSEPORT spreads datagrams by address, not by
    stream, and passing each packet on to a worker would add the copy per packet the workers
    exist to take away), and a node quietly running on one core when its file asks for
    several would be overloaded with nothing in the file to say why.
    """
    values = parsed.values
    if values["single_port"] is not None and values["workers"] != 1:
        reader.report(parsed.nodes.get("single_port"), "media.single_port",
                      "single-port mode runs the media in the node's process; it needs "
                      "media.workers: 1")
    return MediaSettings(**values)


def check_single_port(
    reader: _Reader, media: MediaSettings, node: NodeSettings, section: yaml.Node | None
) -> None:
    """`media.single_port` must not be a port of node.rtp_ports (the per-port receivers of
    relays and playbacks take those) nor SIP's; `section` is the ``media:`` mapping."""
    port = media.single_port
    if port is None:
        return
    where: yaml.Node | None = section
    if isinstance(section, yaml.MappingNode):
        where = next((value for key, value in section.value if key.value == "single_port"),
                     section)
    if node.rtp_port_min <= port <= node.rtp_port_max:
        reader.report(where, "media.single_port",
                      f"{port} lies in node.rtp_ports ({node.rtp_port_min}-{node.rtp_port_max}); "
                      f"choose a port outside that range")
    elif port == node.sip_port:
        reader.report(where, "media.single_port", f"{port} is the SIP port (node.sip_listen)")


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


SIMULATOR_KEYS: tuple[Key, ...] = (
    Key("cameras", _integer(0), 0, "number of built-in simulated cameras"),
    Key("channels_per_camera", _integer(1), 1, "video channels on each simulated camera"),
)


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
    Key("receive_buffer_kib", _bounded(64, 1 << 20), 4096,
        "receive buffer asked for on each stream's socket, KiB (Linux grants twice this, its "
        "bookkeeping included): how long a stream rides out its media process falling behind"),
    Key("transport_fallback", _transports, (),
        "transports to try next when one fails in a way another could avoid; empty: none"),
    Key("workers", _workers, 1,
        "media worker processes: auto (one per core) or N; 1 keeps media in the node's process"),
    Key("overload", _choice(OVERLOAD_POLICIES), "shed-lowest-priority",
        "a media process that cannot keep up sheds whole streams: shed-lowest-priority | "
        "shed-newest | off"),
    Key("single_port", _bounded(1, 65535), None,
        "one UDP and TCP port (outside node.rtp_ports) for every stream, told apart by SSRC; "
        "needs workers: 1; empty: a port of node.rtp_ports per stream"),
)


SHARES = ("unconditional", "authorized", "none")


def _upstream_ids(node: yaml.Node, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise _Invalid(f'expected a list of upstream IDs such as ["31011200002000000100"], got '
                       f"{_describe(node)}")

    def one(item: yaml.Node, chosen: list[str]) -> str:
        value = _device_id(item)
        if value in chosen:
            raise _Invalid(f"{value} is listed twice")
        return value

    return tuple(_items(node, ctx, one))


CHANNEL_KEYS: tuple[Key, ...] = (
    Key("stream", _choice(STREAMS), None, "main or sub stream of the channel"),
    Key("transport", _choice(TRANSPORTS), None, "media.transport for this channel"),
    Key("share", _choice(SHARES), None, "sharing class of this channel; default: default_share"),
    Key("upstreams", _upstream_ids, (), "the upstreams an authorized channel is shared with"),
    Key("priority", _bounded(-1000, 1000), 0,
        "under media overload, higher is kept longer (-1000..1000)"),
)


def _channel_override(**values: Any) -> ChannelOverride:
    if values["upstreams"] and values["share"] != "authorized":
        raise _Invalid("upstreams only apply with share: authorized")
    return ChannelOverride(**values)


_channel_overrides = _by_id(CHANNEL_KEYS, _channel_override)


CHANNELS_KEYS: tuple[Key, ...] = (
    Key("default_share", _choice(SHARES), "unconditional",
        "sharing class of channels without their own: unconditional | authorized | none"),
    Key("overrides", _channel_overrides, MappingProxyType({}),
        "per-channel settings by 20-digit channel ID"),
)
