"""Overload without collapse: a media process that cannot keep up sheds whole streams by a
stated policy (`media.overload`), so that the streams it keeps stay lossless, instead of
losing packets on all of them (lost packets make each remaining one dearer: reorder holds,
demuxer restarts, recording gaps, so more is lost).

Two halves, so that each media process measures itself and one guard decides for all of them:

- `LoadMeter` runs where the streams are (the node's process today, each media worker soon).
  Once a tick it turns what it sees into a `Load`, a few plain numbers: how late its own
  periodic wake-up came, how busy its event loop was, how many streams lost packets (RTP
  sequence gaps, or the kernel's receive-buffer drops on their UDP sockets) since the last
  tick, how much the receive queues of their sockets grew (UDP sockets and TCP connections),
  and the streams it carries (`Candidate`s). Nothing here is done per packet.
- `OverloadGuard` takes each process's `Load` and decides: which streams to stop now, which
  channels are refused and until when, and which one comes back next.

The rules (the constants are attributes of the guard):

- A tick is *hot* when the wake-up came `lag_hot_s` (0.1 s) late or later, or when at least
  `spread_min` (3) streams and `spread_share` (a quarter) of those playing lost packets, or
  when the process was `busy_hot` (90 %) busy or more and at least `spread_min` streams lost
  packets (a saturated process that loses a little on several streams at a time, a few
  streams here and a few there, is overloaded as surely), or when it was `busy_hot` busy and
  the receive queues of its streams grew by more than `backlog_share` (2 %) of the
  packets it took in the tick. That last one can come first: with megabytes of kernel buffer
  per socket (`media.receive_buffer_kib`), a process that falls behind queues packets for
  seconds before the kernel drops one (UDP) or the camera is made to wait (TCP, whose
  cameras then drop frames the node never sees). (The queues also move in a saw-tooth from
  one tick to the next, key-frame bursts and the recorder's batches, so it is not always
  first: see the trend below.) The recorder's queue counts as one of them once it is past a
  quarter of its bounds (`recorder_backlog`; below that it rides out the writer's stalls), its
  PS bytes charged as the datagrams that carried them: a writer that falls behind fills it,
  and a full queue drops units of every stream. One camera losing packets is a camera's
  problem, not overload.
  *Busy* is the larger of the event loop thread's share of the tick and the whole process's
  (the recorder's threads too) per CPU it may run on.
- While a process is *starting* its streams (at least `starting_share`, a quarter, of them
  started in the last `starting_s`, 10 s: the node's start, a worker's channels invited again)
  it pays once for what a stream's first seconds cost (files opened, buffers and the heap
  grown: at 400 recorded streams on one core, a quarter of the core for seconds), and its
  queues absorb that. Such a tick is hot only for loss (the rules above), a wake-up
  `lag_starting_s` (1 s) late, or, when `busy_hot` busy, a stream's UDP socket holding
  `fill_starting` (half) of its receive buffer (`media.receive_buffer_kib`, about 5 s of an
  8 Mbit/s stream): an overloaded start gets there within seconds, before the kernel drops
  anything, and such a tick starts a step at once (no `sustain_s` of hot ticks: the rest
  of the buffer is a few seconds). The trend waits for the end of the start.
- A process is *overloaded* once at least `hot_share` (3/4) of its ticks over the last
  `sustain_s` (3 s) were hot, or once its receive queues' *trend* over the last `trend_s`
  (6 s) rises by more than `backlog_share` of what it took while it was `busy_hot` busy on
  average. The trend is the least-squares slope of the queues' summed growth, which the
  saw-tooth does not move: it sees a process that falls behind seconds before the kernel
  drops anything, where the per-tick rule may see it only one tick in two. It is clear again
  after `clear_s` (5 s) of *calm* ticks only: a wake-up less than `lag_calm_s` (0.025 s)
  late, at most one stream losing packets and the receive queues not growing past
  `backlog_share`. Between the two nothing changes, so the state does not flap.
- While overloaded (unless the policy is ``off``), a step stops the first streams of the
  policy's order: ``shed-newest`` the most recently started, ``shed-lowest-priority`` the
  lowest `channels.overrides.<id>.priority`, of equal priority the most recently started.
  A step stops at least `shed_share` (5 %) of the process's streams (at least one), more when
  the ticks since the last step say more is needed, at most `shed_share_max` (a third). What
  they say: the share of packets lost or left queued over them (the queues' growth in bytes,
  from the trend where it is known, counted as packets of `queued_packet_bytes`, what the
  kernel charges for a 1,400-byte datagram); or, for a process that was `busy_hot` busy on
  average, what brings it down to `busy_target` (90 %, out of the saturated band) with nothing
  lost: it took 1 - lost of the packets at its busy share, so it can take
  (1 - lost) x target / busy of them. So a process well past what it can carry sheds up to a
  third at once rather than 5 % every 5 s. The next step needs `settle_s` (2 s) and then a
  fresh `sustain_s` of hot ticks or `trend_s` of rising queues.
- Only the channels' live streams are shed. Relays to upstreams and viewers ride on them and
  end with them, never on their own; playbacks of recordings are no candidates.
- A shed channel is refused (`admit`) for a cool-down of `cooldown_s` (60 s), doubled for each
  time it was shed again within `strike_s` (10 min) of coming back, at most `cooldown_max_s`.
  Channels whose cool-down is over come back one at a time, every `readmit_every_s` (10 s), once
  no process is overloaded, every process has been calm for `readmit_calm_s` (10 s) and none
  was `readmit_busy` (80 %) busy or more at its last tick: the most valuable first (the reverse
  of the shedding order). Coming back means the next subscription is accepted.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recorder.service import MAX_QUEUE, MAX_QUEUE_BYTES

if TYPE_CHECKING:
    from .stream import LiveStream

log = logging.getLogger(__name__)


#: the process the node's own streams run in (with media.workers: 1, all of them)
MAIN = "main"
#: at most this many channel IDs are named in one /healthz line or log line
NAMED_MAX = 20


#: what the kernel charges a receive queue for one datagram of about 1,400 bytes (its
#: buffer's true size: 2,304 bytes on Linux x86-64 over loopback), and that payload
QUEUED_PACKET_BYTES = 2304
RTP_PAYLOAD_BYTES = 1400


@dataclass(frozen=True)
class Load:
    """What one media process measured over its last tick."""

    #: how late its periodic wake-up came, seconds
    lag_s: float
    #: streams playing
    streams: int
    #: streams that lost packets since the last tick (sequence gaps or kernel drops)
    lossy: int = 0
    #: packets received and lost since the last tick, all streams together
    packets: int = 0
    lost: int = 0
    #: packets the kernel dropped on the streams' UDP sockets (a full receive buffer: the
    #: process did not read fast enough) since the last tick; None where unknown
    drops: int | None = None
    #: share of the tick its event loop's thread spent on the CPU, or the whole process's per
    #: CPU it may run on, whichever is larger; None where unknown
    busy: float | None = None
    #: bytes waiting in the receive queues of the streams' sockets at the tick's end (UDP: as
    #: the kernel charges them; TCP: the bytes as sent) and in the recorder's queue (charged
    #: as UDP), and how much those of the streams carried at both ends of the tick and the
    #: recorder's grew (negative: shrank); None and 0 where unknown
    queued: int | None = None
    grew: int = 0
    #: the largest share of its receive buffer that one stream's UDP socket held at the
    #: tick's end (the kernel drops past 1.0); None where unknown
    fullest: float | None = None


@dataclass(frozen=True)
class Candidate:
    """A stream a process carries and might shed: `started` orders them (higher is newer)."""

    channel_id: str
    started: float


@dataclass
class Shed:
    """A channel stopped for overload, refused until `until` (monotonic) and then until its
    turn to come back."""

    channel_id: str
    process: str
    priority: int
    started: float
    since: float  # monotonic
    since_wall: float
    until: float  # monotonic: end of the cool-down
    strikes: int
    reason: str


@dataclass
class _Process:
    state: str = "ok"  # ok | overloaded
    since: float = 0.0
    window_start: float | None = None
    ticks: deque[bool] = field(default_factory=deque)  # hot or not, over the window
    times: deque[float] = field(default_factory=deque)
    seen: deque[Load] = field(default_factory=deque)  # each tick's load, over the window
    #: (time, the queues' growth summed since `trend_start`, packets, busy) of each tick over
    #: the last `trend_s`
    trend: deque[tuple[float, int, int, float | None]] = field(default_factory=deque)
    trend_start: float | None = None
    grown: int = 0
    calm_since: float | None = None
    previous: float | None = None  # when the tick before this one was fed
    hold_until: float = 0.0
    last: Load | None = None
    starting: bool = False  # at the last tick (OverloadGuard.starting)


class OverloadGuard:
    """Decides, from each media process's `Load`, which whole streams to shed and when a
    shed channel may come back (see the module's docstring for the rules)."""

    lag_hot_s = 0.1
    lag_calm_s = 0.025
    spread_min = 3
    spread_share = 0.25
    busy_hot = 0.9
    sustain_s = 3.0
    hot_share = 0.75
    clear_s = 5.0
    settle_s = 2.0
    shed_share = 0.05
    shed_share_max = 1 / 3
    busy_target = 0.9
    backlog_share = 0.02
    trend_s = 6.0
    starting_s = 10.0
    starting_share = 0.25
    lag_starting_s = 1.0
    fill_starting = 0.5
    #: what the kernel charges a receive queue for one datagram of about 1,400 bytes
    queued_packet_bytes = QUEUED_PACKET_BYTES
    cooldown_s = 60.0
    cooldown_max_s = 960.0
    strike_s = 600.0
    readmit_every_s = 10.0
    readmit_calm_s = 10.0
    readmit_busy = 0.8

    def __init__(
        self,
        policy: Callable[[], str] = lambda: "shed-lowest-priority",
        priority: Callable[[str], int] = lambda channel_id: 0,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.priority = priority
        self.wall = wall
        self.processes: dict[str, _Process] = {}
        #: channels shed and refused, by channel ID
        self.shed: dict[str, Shed] = {}
        #: channel -> (monotonic time it came back, strikes then), to lengthen a cool-down
        self._returned: dict[str, tuple[float, int]] = {}
        self._last_readmit = -math.inf
        self._now = 0.0  # the last tick's monotonic time
        self.last_decision: dict[str, Any] | None = None

    # ----- the decisions -----
    def feed(
        self, process: str, now: float, load: Load, candidates: Sequence[Candidate]
    ) -> list[str]:
        """Take `process`'s load at monotonic `now`; the channels it must stop now."""
        state = self.processes.setdefault(process, _Process())
        state.last = load
        self._now = now
        starting = self.starting(candidates)
        hot, calm = self.hot(load, starting), self.calm(load)
        state.starting = starting
        if state.window_start is None:
            state.window_start = now
        state.ticks.append(hot)
        state.times.append(now)
        state.seen.append(load)
        while state.times and state.times[0] < now - self.sustain_s:
            state.times.popleft()
            state.ticks.popleft()
            state.seen.popleft()
        if state.trend_start is None:
            state.trend_start = now
        state.grown += load.grew
        state.trend.append((now, state.grown, load.packets, load.busy))
        while state.trend and state.trend[0][0] < now - self.trend_s:
            state.trend.popleft()
        # A tick's figures cover the time since the one before.
        began = state.previous if state.previous is not None else now
        state.previous = now
        state.calm_since = (state.calm_since if state.calm_since is not None else began) \
            if calm else None
        policy = self.policy()
        rising = None if starting else self.rising(state, now)
        behind = load.fullest if starting else None
        # A start whose sockets fill up is seconds from losing packets: no waiting for
        # sustain_s of hot ticks.
        filling = starting and self.filling(load)
        if state.state == "ok" and (self._sustained(state, now) or rising is not None
                                    or filling):
            state.state, state.since = "overloaded", now
            self._decide("overload", process, (), self._describe(load, rising, behind)
                         + ("; media.overload is off: nothing is shed" if policy == "off" else ""))
        elif state.state == "overloaded" and state.calm_since is not None \
                and now - state.calm_since >= self.clear_s:
            state.state, state.since = "ok", now
            self._decide("clear", process, (), f"calm for {self.clear_s:g} s")
        if policy == "off":
            if self.shed:
                self._decide("readmit", process, tuple(self.shed),
                             "media.overload is off: every shed channel may come back")
                self.shed.clear()
            return []
        victims: list[str] = []
        if state.state == "overloaded" and now >= state.hold_until \
                and (self._sustained(state, now) or rising is not None or filling):
            victims = self._shed(process, now, load, rising, candidates, policy,
                                 self.step_share(state.seen, self.trend(state, now)), behind)
            state.hold_until = now + self.settle_s
            state.ticks.clear()
            state.times.clear()
            state.seen.clear()
            state.trend.clear()
            state.window_start = state.trend_start = state.hold_until
        self._readmit(now, policy)
        return victims

    def starting(self, candidates: Sequence[Candidate]) -> bool:
        """At least `starting_share` of the process's streams started in the last
        `starting_s` (a node's start, a worker's channels invited again)."""
        if not candidates:
            return False
        since = self.wall() - self.starting_s
        young = sum(1 for c in candidates if c.started > since)
        return young >= self.starting_share * len(candidates)

    def hot(self, load: Load, starting: bool = False) -> bool:
        """A tick that counts toward overload; `starting`: the process is starting its
        streams (`starting`)."""
        spread = max(self.spread_min, math.ceil(load.streams * self.spread_share))
        saturated = load.busy is not None and load.busy >= self.busy_hot
        if load.lossy >= spread or (saturated and load.lossy >= self.spread_min):
            return True
        if starting:
            return load.lag_s >= self.lag_starting_s or self.filling(load)
        return load.lag_s >= self.lag_hot_s or (saturated and self.backlogged(load))

    def backlogged(self, load: Load) -> bool:
        """The streams' receive queues grew by more than `backlog_share` of the packets the
        process took in the tick."""
        return load.grew > self.backlog_share * load.packets * self.queued_packet_bytes

    def filling(self, load: Load) -> bool:
        """A `busy_hot` busy process with a stream's UDP socket at `fill_starting` of its
        receive buffer or more."""
        return load.busy is not None and load.busy >= self.busy_hot \
            and load.fullest is not None and load.fullest >= self.fill_starting

    def calm(self, load: Load) -> bool:
        """A tick that counts toward the end of an overload."""
        return load.lag_s < self.lag_calm_s and load.lossy <= 1 and not self.backlogged(load)

    def rising(self, state: _Process, now: float) -> float | None:
        """The share of its intake by which a busy process's receive queues rose over the
        last `trend_s`, if more than `backlog_share`; else None. Busy is the mean over those
        ticks: a process with time to spare is catching up, whatever its queues do."""
        share = self.trend(state, now)
        busy = [point[3] for point in state.trend if point[3] is not None]
        if share is None or share <= self.backlog_share or len(busy) < len(state.trend):
            return None
        return share if sum(busy) / len(busy) >= self.busy_hot else None

    def trend(self, state: _Process, now: float) -> float | None:
        """How fast the process's receive queues rose over the last `trend_s`, as a share of
        what it took (negative: they fell); None until it has `trend_s` of ticks.

        The rise is the least-squares slope of the queues' summed growth against time, so the
        tick-to-tick saw-tooth (key-frame bursts, the recorder's batches) averages out; the
        intake is the packets taken over the same ticks, in the kernel's bytes."""
        points = state.trend
        if state.trend_start is None or now - state.trend_start < self.trend_s \
                or len(points) < 4:
            return None
        first, last = points[0][0], points[-1][0]
        taken = sum(point[2] for point in points) - points[0][2]
        if last <= first or taken <= 0:
            return None
        mean_t = sum(point[0] for point in points) / len(points)
        mean_q = sum(point[1] for point in points) / len(points)
        spread = sum((point[0] - mean_t) ** 2 for point in points)
        slope = sum((point[0] - mean_t) * (point[1] - mean_q) for point in points) / spread
        return slope / (taken / (last - first) * self.queued_packet_bytes)

    def _sustained(self, state: _Process, now: float) -> bool:
        if state.window_start is None or now - state.window_start < self.sustain_s \
                or not state.ticks:
            return False
        return sum(state.ticks) >= self.hot_share * len(state.ticks)

    def step_share(self, loads: Collection[Load], trend: float | None = None) -> float:
        """The share of a process's streams one step sheds, from its loads since the last
        step and, where known, the trend of its receive queues (see the module's
        docstring)."""
        packets = sum(x.packets for x in loads)
        lost: float = sum(x.lost for x in loads)
        if trend is None:  # the queues' growth over the ticks, saw-tooth and all
            lost += max(0, sum(x.grew for x in loads)) / self.queued_packet_bytes
        else:
            lost += max(0.0, trend) * packets
        lost_share = lost / (packets + lost) if packets + lost else 0.0
        share = lost_share
        busy = [x.busy for x in loads if x.busy is not None]
        if busy:
            mean = sum(busy) / len(busy)
            if mean >= self.busy_hot:
                share = max(share, 1.0 - (1.0 - lost_share) * self.busy_target / mean)
        return min(max(self.shed_share, share), self.shed_share_max)

    def _rank(self, policy: str) -> Callable[[Shed], tuple[float, ...]]:
        """The shedding order, first shed first (its reverse is the order of coming back)."""
        if policy == "shed-newest":
            return lambda item: (-item.started,)
        return lambda item: (item.priority, -item.started)

    def _shed(
        self, process: str, now: float, load: Load, rising: float | None,
        candidates: Sequence[Candidate], policy: str, share: float,
        behind: float | None = None,
    ) -> list[str]:
        wall = self.wall()
        items = [
            Shed(c.channel_id, process, self.priority(c.channel_id), c.started, now, wall,
                 now, 0, "")
            for c in candidates if c.channel_id not in self.shed
        ]
        if not items:
            return []
        count = max(1, math.ceil(len(items) * share))
        chosen = sorted(items, key=self._rank(policy))[:count]
        reason = f"shed: media overload ({policy}; {self._describe(load, rising, behind)})"
        for item in chosen:
            came_back, strikes = self._returned.pop(item.channel_id, (-math.inf, 0))
            item.strikes = strikes + 1 if now - came_back < self.strike_s else 1
            item.until = now + min(self.cooldown_s * 2 ** (item.strikes - 1),
                                   self.cooldown_max_s)
            item.reason = reason
            self.shed[item.channel_id] = item
        names = tuple(item.channel_id for item in chosen)
        self._decide("shed", process, names,
                     f"{self._describe(load, rising, behind)}; {len(chosen)} of {len(items)} "
                     f"streams by {policy}")
        return list(names)

    def _readmit(self, now: float, policy: str) -> None:
        if not self.shed or now - self._last_readmit < self.readmit_every_s:
            return
        for state in self.processes.values():
            last = state.last
            if state.state != "ok" or state.calm_since is None \
                    or now - state.calm_since < self.readmit_calm_s:
                return
            if last is not None and last.busy is not None and last.busy >= self.readmit_busy:
                return
        due = [item for item in self.shed.values() if item.until <= now]
        if not due:
            return
        item = max(due, key=self._rank(policy))
        del self.shed[item.channel_id]
        self._returned[item.channel_id] = (now, item.strikes)
        self._last_readmit = now
        self._decide("readmit", item.process, (item.channel_id,),
                     f"calm for {self.readmit_calm_s:g} s, cool-down over")

    def forget(self, process: str) -> None:
        """A process that ended (its streams went with it)."""
        self.processes.pop(process, None)

    # ----- what subscriptions, /healthz and /api/stats see -----
    def admit(self, channel_id: str) -> str | None:
        """None if the channel may be started; else why not (it was shed)."""
        item = self.shed.get(channel_id)
        if item is None:
            return None
        left = max(0.0, item.until - self._now)
        return (f"{item.reason}; refused until the load is low again, at least "
                f"{left:.0f} s more")

    def reason(self, channel_id: str) -> str:
        """Why a shed channel's stream was stopped."""
        item = self.shed.get(channel_id)
        return item.reason if item is not None else "shed: media overload"

    @property
    def overloaded(self) -> list[str]:
        return [name for name, state in self.processes.items() if state.state == "overloaded"]

    def problems(self) -> list[str]:
        """Lines for /healthz: a process overloaded, channels shed."""
        problems = []
        for name in self.overloaded:
            last = self.processes[name].last
            problems.append(f"media overload in process {name}"
                            + (f": {self._describe(last)}" if last is not None else ""))
        if self.shed:
            problems.append(f"{len(self.shed)} channel(s) shed for media overload "
                            f"({self.policy()}), refused until the load is low again: "
                            + _named(self.shed))
        return problems

    def as_json(self) -> dict[str, Any]:
        """The `overload` object of /api/stats: `since` in Unix seconds, `cool_down_s` the
        seconds of cool-down a shed channel has left (0: it comes back in its turn),
        `queues_trend` a process's receive queues' trend (`trend`; null until known)."""
        lags = [s.last.lag_s for s in self.processes.values() if s.last is not None]
        processes = {}
        for name, state in self.processes.items():
            last = state.last
            processes[name] = {
                "state": state.state,
                "starting": state.starting,
                **({} if last is None else {
                    "lag_s": round(last.lag_s, 4), "streams": last.streams,
                    "lossy": last.lossy, "packets": last.packets, "lost": last.lost,
                    "drops": last.drops, "queued": last.queued, "grew": last.grew,
                    "fullest": None if last.fullest is None else round(last.fullest, 3),
                    "busy": None if last.busy is None else round(last.busy, 3),
                }),
                "queues_trend": None if (trend := self.trend(state, self._now)) is None
                else round(trend, 4),
            }
        return {
            "state": "overloaded" if self.overloaded else "ok",
            "policy": self.policy(),
            "lag_s": round(max(lags), 4) if lags else None,
            "processes": processes,
            "shed": [
                {"channel_id": item.channel_id, "process": item.process,
                 "priority": item.priority, "since": item.since_wall, "strikes": item.strikes,
                 "cool_down_s": round(max(0.0, item.until - self._now), 1),
                 "reason": item.reason}
                for item in self.shed.values()
            ],
            "last_decision": self.last_decision,
        }

    def _describe(self, load: Load, rising: float | None = None,
                  behind: float | None = None) -> str:
        text = f"wake-up {load.lag_s:.3f} s late, {load.lossy} of {load.streams} streams lost " \
               f"packets"
        if load.lost:
            text += f" ({load.lost} of {load.packets + load.lost})"
        if load.drops:
            text += f", {load.drops} dropped by the kernel"
        if self.backlogged(load):
            text += f", receive queues grew by {load.grew // 1024} KiB"
        if rising is not None:
            text += f", receive queues rising by {rising:.1%} of the intake over " \
                    f"{self.trend_s:g} s"
        if behind is not None:
            text += f"; starting its streams, the fullest receive queue at {behind:.0%} of " \
                    "its buffer"
        return text

    def _decide(self, action: str, process: str, channels: tuple[str, ...], reason: str) -> None:
        """Remember and log one decision (never more than one line per decision)."""
        self.last_decision = {"at": self.wall(), "action": action, "process": process,
                              "channels": list(channels), "reason": reason}
        named = f": {_named(channels)}" if channels else ""
        level = logging.WARNING if action in ("overload", "shed") else logging.INFO
        log.log(level, "media overload, process %s: %s%s (%s)", process, _ACTIONS[action],
                named, reason)


_ACTIONS = {"overload": "cannot keep up", "shed": "streams shed", "clear": "keeping up again",
            "readmit": "channel(s) may come back"}


def _named(channels: Iterable[str]) -> str:
    names = list(channels)
    text = ", ".join(names[:NAMED_MAX])
    return text + (f" and {len(names) - NAMED_MAX} more" if len(names) > NAMED_MAX else "")


class LoadMeter:
    """Measures one media process's `Load` once a tick, from its streams' counters (never per
    packet); `sockets` reads the kernel's drop count and receive queue of each of the given
    UDP ports (`udp_sockets`), `tcp` the receive queue of the established TCP connections on
    each of the given local ports (`tcp_queues`), `cpu` the event loop thread's CPU time,
    `process_cpu` the whole process's and `cores` how many CPUs the process may run on.

    The kernel's figures are taken per socket, not per stream: streams that share one port
    (`media.single_port`) share its queue and its drops, which count once. A drop on a shared
    socket makes no stream lossy by itself (which of them lost is in their sequence gaps)."""

    def __init__(
        self,
        *,
        cpu: Callable[[], float] = time.thread_time,
        process_cpu: Callable[[], float] | None = time.process_time,
        cores: Callable[[], int] = lambda: allowed_cpus(),
        sockets: Callable[[Collection[int]], dict[int, tuple[int, int]] | None] | None = None,
        tcp: Callable[[Collection[int]], dict[int, int] | None] | None = None,
        recorder_queue: Callable[[], int] | None = None,
        buffer_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.cpu = cpu
        #: what one stream's UDP socket may queue before the kernel drops (twice the receive
        #: buffer asked for, as Linux counts it), for `Load.fullest`
        self.buffer_bytes = buffer_bytes
        #: PS bytes of the process's recorder queue that count as backlog
        #: (`recorder_backlog`), set where the process records
        self.recorder_queue = recorder_queue
        self._recorder_mark: int | None = None  # what it held at the last tick, as charged
        self.process_cpu = process_cpu
        self.cores = cores
        self.sockets = sockets if sockets is not None else udp_sockets
        self.tcp = tcp if tcp is not None else tcp_queues
        #: a load to report instead of the one measured (a drill, and the tests)
        self.fed: Load | None = None
        #: channel -> (the stream, its packets, lost) at the last tick
        self._marks: dict[str, tuple[int, int, int]] = {}
        #: socket -> (kernel drops, queued bytes) at the last tick; a socket is ("udp" or
        #: "tcp", port, the stream's identity), the identity 0 for a port streams share
        self._sockets: dict[tuple[str, int, int], tuple[int, int]] = {}
        self._cpu_mark: tuple[float, float, float] | None = None

    def sample(
        self, now: float, lag_s: float, streams: Iterable[LiveStream]
    ) -> tuple[Load, list[Candidate]]:
        """The load over the tick that ended at monotonic `now`, and the streams carried."""
        playing = [s for s in streams if s.state == "playing"]
        where = {s.channel_id: stream_socket(s) for s in playing}
        by_port = Counter(key for key in where.values() if key[1])
        udp_ports = {port for kind, port in by_port if kind == "udp"}
        tcp_ports = {port for kind, port in by_port if kind == "tcp"}
        udp = self.sockets(udp_ports) if udp_ports else {}
        tcp = self.tcp(tcp_ports) if tcp_ports else {}
        known = udp is not None and tcp is not None
        marks: dict[str, tuple[int, int, int]] = {}
        sockets: dict[tuple[str, int, int], tuple[int, int]] = {}
        lossy = packets = lost = dropped = queued = grew = fullest = 0
        for stream in playing:
            channel_id = stream.channel_id
            identity = id(stream)
            now_packets, now_lost = stream.counter("packets"), stream.counter("lost")
            mark = marks[channel_id] = (identity, now_packets, now_lost)
            kind, port = where[channel_id]
            new_drops = 0
            if port:
                key = (kind, port, 0 if by_port[kind, port] > 1 else identity)
                if key not in sockets:
                    if kind == "udp":
                        figures = (udp or {}).get(port, (0, 0))
                        fullest = max(fullest, figures[1])
                    else:
                        figures = (0, (tcp or {}).get(port, 0))
                    sockets[key] = figures
                    queued += figures[1]
                    before_socket = self._sockets.get(key)
                    if before_socket is not None:  # carried at both ends of the tick
                        grew += figures[1] - before_socket[1]
                        new_drops = max(0, figures[0] - before_socket[0])
                        dropped += new_drops
                        if key[2] == 0:
                            new_drops = 0  # shared: not this stream's loss by itself
            before = self._marks.get(channel_id)
            if before is None or before[0] != mark[0]:
                continue  # a stream new since the last tick: counted from now on
            new_lost = now_lost - before[2]
            packets += now_packets - before[1]
            lost += new_lost
            if new_lost > 0 or new_drops > 0:
                lossy += 1
        self._marks = marks
        self._sockets = sockets
        if self.recorder_queue is not None:
            # The recorder's queue is one more queue the process must keep up with: a writer
            # that falls behind drops units of every stream once the queue is full. What it
            # holds past its slack (`recorder_backlog`) is charged as the kernel charges the
            # datagrams that carried it.
            charged = self.recorder_queue() * QUEUED_PACKET_BYTES // RTP_PAYLOAD_BYTES
            queued += charged
            if self._recorder_mark is not None:
                grew += charged - self._recorder_mark
            self._recorder_mark = charged
        cpu = self.cpu()
        process_cpu = self.process_cpu() if self.process_cpu is not None else 0.0
        busy = None
        before_cpu = self._cpu_mark
        if before_cpu is not None and now > before_cpu[0]:
            span = now - before_cpu[0]
            busy = (cpu - before_cpu[1]) / span
            if self.process_cpu is not None:
                busy = max(busy, (process_cpu - before_cpu[2]) / span / max(1, self.cores()))
        self._cpu_mark = (now, cpu, process_cpu)
        capacity = self.buffer_bytes() if self.buffer_bytes is not None else 0
        load = Load(lag_s=max(0.0, lag_s), streams=len(playing), lossy=lossy, packets=packets,
                    lost=lost, drops=dropped if known else None, busy=busy,
                    queued=queued if known else None, grew=grew,
                    fullest=fullest / capacity if known and capacity > 0 else None)
        if self.fed is not None:
            load = self.fed
        return load, [Candidate(s.channel_id, s.started_at) for s in playing]


#: the share of a recorder queue's bounds it may fill before it counts as backlog: the queue
#: is there to ride out the writer's stalls (segments opening and closing, the disk), which
#: alone are no overload
RECORDER_SLACK = 0.25


def recorder_backlog(queue_bytes: int, queue_depth: int, max_queue: int = MAX_QUEUE,
                     max_queue_bytes: int = MAX_QUEUE_BYTES) -> int:
    """The PS bytes of a recorder's queue past `RECORDER_SLACK` of its bounds (units and bytes,
    whichever it fills more): what the overload guard counts as backlog. It grows smoothly
    from zero, so a queue that crosses the slack adds no sudden step."""
    fill = max(queue_bytes / max_queue_bytes, queue_depth / max_queue)
    if fill <= RECORDER_SLACK:
        return 0
    return int(queue_bytes * (1.0 - RECORDER_SLACK / fill))


def stream_socket(stream: LiveStream) -> tuple[str, int]:
    """("udp" or "tcp", the local port) of the socket a stream's media arrives on; port 0
    where unknown (a TCP stream not connected yet)."""
    receiver = stream.receiver
    if stream.transport == "udp":
        return "udp", int(getattr(receiver, "port", 0) or 0)
    port = getattr(receiver, "local_port", None)
    if port is None and stream.transport == "tcp-passive":
        port = getattr(receiver, "port", 0)  # the listening port: the connection's own
    return "tcp", int(port or 0)


def allowed_cpus() -> int:
    """How many CPUs this process may run on (its affinity; all of them where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def udp_sockets(ports: Collection[int], tables: Sequence[str] = ("/proc/net/udp",
                                                                 "/proc/net/udp6")) -> \
        dict[int, tuple[int, int]] | None:
    """(drops, queued bytes) of each UDP socket bound to one of `ports`, from /proc/net/udp:
    its last column, the datagrams the kernel dropped (mostly for a full receive buffer), and
    its rx_queue, the bytes waiting to be read as the kernel charges them; None where the
    table cannot be read (not Linux)."""
    rows = _sockets_on(ports, tables)
    if rows is None:
        return None
    found: dict[int, tuple[int, int]] = {}
    for port, queued, fields in rows:
        if len(fields) >= 13 and fields[-1].isdigit():
            drops, before = found.get(port, (0, 0))
            found[port] = (drops + int(fields[-1]), before + queued)
    return found


def tcp_queues(ports: Collection[int], tables: Sequence[str] = ("/proc/net/tcp",
                                                                "/proc/net/tcp6")) -> \
        dict[int, int] | None:
    """Bytes waiting to be read on the established TCP connections whose local port is one of
    `ports`, from /proc/net/tcp: the rx_queue of each (the stream's bytes as sent, not as the
    kernel charges them: about 1,414 of them per 1,400-byte payload, where UDP's queues count
    2,304); a listening socket's entry (its accept queue) is left out. None where the table
    cannot be read (not Linux)."""
    rows = _sockets_on(ports, tables)
    if rows is None:
        return None
    found: dict[int, int] = {}
    for port, queued, fields in rows:
        if fields[3] == "01":  # ESTABLISHED
            found[port] = found.get(port, 0) + queued
    return found


def _sockets_on(ports: Collection[int], tables: Sequence[str]) -> \
        list[tuple[int, int, list[str]]] | None:
    """(local port, rx_queue, all fields) of each socket of the /proc/net `tables` (udp, tcp
    and their v6 twins share the layout) whose local port is one of `ports`; None where no
    table can be read. A line that does not parse is left out."""
    wanted = set(ports)
    rows: list[tuple[int, int, list[str]]] = []
    read = False
    for table in tables:
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split()
                    try:
                        port = int(fields[1].rpartition(":")[2], 16)
                        if port in wanted:
                            rows.append((port, int(fields[4].rpartition(":")[2], 16), fields))
                    except (IndexError, ValueError):
                        continue
            read = True
        except (OSError, UnicodeDecodeError):
            continue
    return rows if read else None
