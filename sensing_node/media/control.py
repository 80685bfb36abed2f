"""The data plane's control interface: what the control plane may ask of the media side.

The control plane (SIP signalling, registry, cascade, API, settings) and the data plane
(receivers, the hub's streams, the recorder feed, relay senders, viewers) meet here and nowhere
else. Everything that crosses is plain data: channel IDs, relay specs, ports, reasons and dicts
of counters. That is what lets the data plane run in per-core worker processes with these
calls turned into messages, without the cascade or the API changing.

`StreamHub` implements it: in the node's process with `media.workers: 1`; with media workers the
calls become messages to the channel's worker (`workers`), where the relay senders run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .playback import PlaybackCommand, PlaybackSpec
from .stream import History

__all__ = ["History", "MediaControl", "PlaybackCommand", "PlaybackSpec", "RelayOpened",
           "RelaySpec"]


@dataclass(frozen=True)
class RelaySpec:
    """One outgoing RTP session of a channel to an upper platform.

    `transport` is from the node's side: `udp`, `tcp-active` (the node connects to `remote`)
    or `tcp-passive` (the node listens; the upstream connects from `remote`'s host).
    """

    channel_id: str
    ssrc: int
    transport: str
    remote: tuple[str, int]


@dataclass(frozen=True)
class RelayOpened:
    """A relay that is ready: its ID for the other calls and the local port for our SDP."""

    relay_id: int
    local_port: int


#: called once with (relay ID, reason) when a relay ends by itself: the upstream closed the
#: connection or stopped reading, a connect failed, the camera's stream stopped or ended
RelayEnded = Callable[[int, str], None]


class MediaControl(Protocol):
    async def open_relay(self, spec: RelaySpec, on_end: RelayEnded) -> RelayOpened:
        """Take a local port and join the channel's stream (starting the ingest if nobody
        pulls it yet); return once the stream plays. Media is held, from the last keyframe,
        until `start_relay`. Raises `StreamError` (the camera), `PortsExhausted` or `OSError`."""
        ...

    async def open_playback(
        self, spec: PlaybackSpec, on_end: RelayEnded, on_done: Callable[[int], None]
    ) -> RelayOpened:
        """Take a local port for a playback or download of recorded segments (`spec`); it
        sends once `start_relay` is called, at the spec's pace. `on_done(relay_id)` is called
        when the range is out (again after a seek), `on_end` when the session ends by itself
        (the upstream went away, a segment was altered and the spec says end). Raises
        `PortsExhausted` or `OSError`."""
        ...

    async def open_device_playback(
        self, spec: RelaySpec, history: History, on_end: RelayEnded,
        on_done: Callable[[int], None],
    ) -> RelayOpened:
        """A playback or download of the device's own recordings of a range (`history`),
        passed on to the upstream like a live relay; `on_done` when the device says the range
        is out (its MediaStatus 121). Raises as `open_relay`."""
        ...

    def steer_playback(self, relay_id: int, command: PlaybackCommand) -> bool:
        """Pause, resume, seek or change the speed of a playback; False when it is gone.
        Raises `ValueError` for a command that makes no sense (a speed of 0 or less)."""
        ...

    def start_relay(self, relay_id: int) -> None:
        """The upstream is ready (it ACKed): send, from the cached keyframe on (a playback:
        from the start of its range)."""
        ...

    def close_relay(self, relay_id: int, reason: str) -> None:
        """End a relay (idempotent; `on_end` is not called for it)."""
        ...

    def relay_stats(self, relay_id: int) -> dict[str, Any]:
        """Counters of a relay (packets, bytes, frames, dropped_frames, state, ...); empty
        once it is gone."""
        ...

    def allocate_serial(self) -> int:
        """A stream number (1-9999) for a `y=` the node chooses, unique among the node's
        streams, devices' and upstreams' alike. Raises `StreamError` (503) when all are taken."""
        ...

    def release_serial(self, serial: int) -> None:
        ...
