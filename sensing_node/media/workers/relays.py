"""Relays to upper platforms, as the hub runs them in its own process or in a media worker.

`HubRelay` is the sender the hub runs (`media.relay.RelaySender` with the camera's gap
timeout). With one media process it is a consumer of the channel's `LiveStream` in the node's
process. With media workers (`media.workers` > 1) it runs in the worker that receives the
channel, so its packets leave from where the camera's arrive: the worker's `WorkerStream`
hands it the camera's packets as they come (cut-through), the frames, the losses, and the
GOP it caches when the relay joins a running stream; the node's process sends no frames over
for it. What the node's process keeps is a `RemoteRelay`: the relay's place among the
stream's consumers (so the stream stays pulled and its gaps and end reach the relay), the
port pool's books, and the counters the worker last reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rtp.ps import AccessUnit

from ..consumers import Consumer
from ..relay import RelaySender

if TYPE_CHECKING:
    from ...transport.rtp import PortPool
    from .pool import _Worker

log = logging.getLogger(__name__)


class HubRelay(RelaySender):
    """A relay as the hub runs it: a camera stream that pauses (it is being invited again) and
    brings no frame within `gap_timeout_s` ends the relay, so that the upstream hears of it
    instead of waiting on a silent session."""

    channel_id = ""
    gap_timeout_s = 10.0
    on_stream_lost: Callable[[str], None] | None = None
    _units = 0
    _gap_timer: asyncio.TimerHandle | None = None

    def on_unit(self, unit: AccessUnit) -> None:
        self._units += 1
        super().on_unit(unit)

    def on_gap(self, reason: str) -> None:
        super().on_gap(reason)
        if self._gap_timer is None:
            self._gap_timer = asyncio.get_running_loop().call_later(
                self.gap_timeout_s, self._gap_over, self._units, reason
            )

    def _gap_over(self, seen: int, reason: str) -> None:
        self._gap_timer = None
        if self._units == seen and self.on_stream_lost is not None:
            self.on_stream_lost(reason)

    def close(self, reason: str = "closed") -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        super().close(reason)


class RemoteRelay(Consumer):
    """The node's handle on a relay that runs in a media worker.

    A consumer of the channel's `LiveStream` that takes no frames (`remote_feed = "relay"`):
    it keeps the stream pulled, tells the worker of the stream's gaps, and ends the relay with
    the stream. `MediaWorkers.open_relay` binds its port and opens it in the channel's worker;
    `start`, `allow_cut_through` and `close` are sent on; `stats` are the worker's last report
    (at most `pool.STATS_S` old, state ``open`` before the first) merged with what the node
    knows. It ends by itself through `on_end` (the sender ended: upstream closed, stalled,
    connect failed; the camera's stream ended; the worker died) or `on_stream_lost` (the
    camera's stream brought nothing for `gap_timeout_s` after a gap), as `HubRelay` does.
    """

    name = "relay"
    remote_feed = "relay"

    def __init__(
        self,
        relay_id: int,
        *,
        channel_id: str,
        ssrc: int,
        transport: str,
        remote: tuple[str, int],
        port_pool: PortPool,
        bind_host: str,
        payload_max: int,
        timeout_s: float,
        connect_timeout_s: float,
        max_buffer_bytes: int,
        gap_timeout_s: float,
        on_end: Callable[[str], object] | None = None,
        on_stream_lost: Callable[[str], object] | None = None,
    ) -> None:
        self.relay_id = relay_id
        self.channel_id = channel_id
        self.ssrc = ssrc
        self.transport = transport
        self.remote = (remote[0], int(remote[1]))
        self.port_pool = port_pool
        self.bind_host = bind_host
        self.payload_max = payload_max
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_buffer_bytes = max_buffer_bytes
        self.gap_timeout_s = gap_timeout_s
        self.on_end_callback = on_end
        self.on_stream_lost = on_stream_lost
        self.cut_through = True
        self.state = "new"  # new | open | ended (the worker's report says more)
        self.end_reason: str | None = None
        self.local_port = 0
        self.worker: _Worker | None = None
        self.port_held = False
        self.opened = False  # the worker has it
        self.reported: dict[str, Any] = {}

    def open_request(self) -> dict[str, Any]:
        """What the worker needs to open the sender (the `relay` request, less the token)."""
        return {
            "op": "relay", "rid": self.relay_id, "channel": self.channel_id, "ssrc": self.ssrc,
            "transport": self.transport, "remote": list(self.remote),
            "bind_host": self.bind_host, "payload_max": self.payload_max,
            "timeout_s": self.timeout_s, "connect_timeout_s": self.connect_timeout_s,
            "max_buffer": self.max_buffer_bytes, "gap_timeout_s": self.gap_timeout_s,
            "cut": self.cut_through,
        }

    # ----- the hub's calls -----
    def start(self) -> None:
        if self.state == "open" and self.worker is not None:
            self.worker.send({"op": "relay_start", "rid": self.relay_id})

    def allow_cut_through(self, allowed: bool) -> None:
        if allowed == self.cut_through:
            return
        self.cut_through = allowed
        if self.opened and self.worker is not None:
            self.worker.send({"op": "relay_cut", "rid": self.relay_id, "on": allowed})

    def close(self, reason: str = "closed") -> None:
        """End the relay in the worker and give the port back (idempotent; `on_end` is not
        called for it)."""
        if self.state == "ended":
            return
        self.state = "ended"
        self.end_reason = reason
        worker = self.worker
        if worker is not None:
            if worker.relays.get(self.relay_id) is self:
                del worker.relays[self.relay_id]
                if self.opened:
                    worker.send({"op": "relay_close", "rid": self.relay_id, "reason": reason})
        self._release()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transport": self.transport, "local_port": self.local_port,
            "remote": f"{self.remote[0]}:{self.remote[1]}", "ssrc": f"{self.ssrc:010d}",
            "state": self.state, "packets": 0, "bytes": 0, "frames": 0, "dropped_frames": 0,
            "send_errors": 0, "udp_gso": False, "refused_connections": 0, "write_buffer": 0,
            "started": None, "first_keyframe_at": None, "end_reason": None,
            "forwarding": False,
        }
        out.update(self.reported)
        if self.state == "ended":
            out["state"], out["end_reason"] = "ended", self.end_reason
        # A report already under way when cut-through was stopped is no longer true.
        out["forwarding"] = bool(out["forwarding"]) and self.cut_through \
            and self.state != "ended"
        if self.worker is not None:
            out["worker"] = self.worker.index
        return out

    # ----- the stream's calls -----
    def on_gap(self, reason: str) -> None:
        # After the ending attempt's `close` (its receiver's last frames still reach the
        # sender, as they do in one process): that request is written by a task that is
        # already scheduled.
        worker = self.worker
        if self.opened and worker is not None and self.state != "ended":
            message = {"op": "relay_gap", "rid": self.relay_id, "reason": reason}
            asyncio.get_running_loop().call_soon(worker.send, message)

    def on_end(self, reason: str) -> None:
        self._end(reason)

    # ----- from the worker -----
    def update(self, stats: dict[str, Any]) -> None:
        if self.state != "ended":
            self.reported = stats

    def ended(self, reason: str, *, gap: bool, stats: dict[str, Any] | None = None) -> None:
        """The worker's sender ended by itself (`relay_end`), or the worker died."""
        if stats:
            self.update(stats)
        self.opened = False  # nothing to close there any more
        if gap:
            if self.state == "ended":
                return
            callback = self.on_stream_lost
            if callback is None:
                self._end(reason)
                return
            self.close(f"camera stream stopped: {reason}")
            self._call(callback, reason)
        else:
            self._end(reason)

    def _end(self, reason: str) -> None:
        if self.state == "ended":
            return
        self.close(reason)
        if self.on_end_callback is not None:
            self._call(self.on_end_callback, reason)

    def _call(self, callback: Callable[[str], object], reason: str) -> None:
        try:
            callback(reason)
        except Exception:
            log.exception("relay %d: on_end failed", self.relay_id)

    def _release(self) -> None:
        if self.port_held:
            self.port_held = False
            self.port_pool.release(self.local_port)
