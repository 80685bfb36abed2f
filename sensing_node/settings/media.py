"""The ``media:``, ``channels:`` and ``simulator:`` sections: how live streams are pulled."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import yaml

from .schema import (
    Key,
    _bounded,
    _by_id,
    _choice,
    _Ctx,
    _describe,
    _integer,
    _Invalid,
    _items,
    _number,
)


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
