"""The node's clocks: the wall clock for what is written down, the monotonic clock for deadlines.

A wall clock can step: an NTP correction, an operator setting it, an RTC that was wrong at boot.
Within a running node, everything that measures time (registration expiry, keepalive timeouts,
nonce lifetimes, rate limits, media timeouts) uses the monotonic clock, which does not step; the
wall clock only labels what is written down (`registered_at`, `last_keepalive`, `expires_at`,
the recordings' start and end times).

The recordings need more than a label: a channel's segments and gaps must follow each other
without overlapping. `NodeClock.stamp()` is the wall clock, except that it never goes back: after
a backward step it keeps counting from where it was by the monotonic clock, so it runs ahead of
the wall clock by the size of the step until the node restarts. A forward step is taken as it
comes (nothing written before can overlap what follows); `on_forward_step` hears of it at the
first stamp after it, before that stamp is handed out, so that the recordings can end their
open segments before the jump instead of stretching one across it.

`check()`, called at every housekeeping tick, compares how far the wall clock and the monotonic
clock moved since the last tick; a difference over `STEP_S` is a step: logged, and named in
`/healthz` for `REPORT_S`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, tzinfo

log = logging.getLogger(__name__)

STEP_S = 2.0  # a wall clock that moves this much more or less than the monotonic one stepped
REPORT_S = 3600.0  # how long /healthz names a step


class NodeClock:
    """Wall clock, monotonic clock and step detection; both clocks injectable for tests."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        tz: tzinfo | None = None,
    ) -> None:
        self.wall = wall
        self.mono = monotonic
        self.tz = tz
        now_wall, now_mono = wall(), monotonic()
        self._tick = (now_wall, now_mono)  # the last check()
        # stamp() = anchor wall + monotonic time since the anchor, or the wall clock when that
        # is later. One tuple, assigned at once: the recorder's threads read it too.
        self._anchor = (now_wall, now_mono)
        #: the steps seen: (size in seconds, wall time after it, monotonic time), newest last
        self.steps: list[tuple[float, float, float]] = []
        #: called with (the stamp the step skipped from, the stamp after it) when stamp() jumps
        #: forward by more than STEP_S; on whichever thread asked for the stamp
        self.on_forward_step: Callable[[float, float], None] | None = None

    def stamp(self) -> float:
        """The wall clock, but never earlier than a stamp given before (see the module)."""
        now_mono = self.mono()
        now_wall = self.wall()
        anchor_wall, anchor_mono = self._anchor
        steady = anchor_wall + (now_mono - anchor_mono)
        if now_wall >= steady:
            self._anchor = (now_wall, now_mono)
            if now_wall - steady > STEP_S and self.on_forward_step is not None:
                self.on_forward_step(steady, now_wall)
            return now_wall
        return steady

    def check(self) -> float | None:
        """Compare the two clocks' progress since the last call; the step in seconds, if any."""
        now_wall, now_mono = self.wall(), self.mono()
        last_wall, last_mono = self._tick
        self._tick = (now_wall, now_mono)
        step = (now_wall - last_wall) - (now_mono - last_mono)
        if abs(step) <= STEP_S:
            return None
        self.steps.append((step, now_wall, now_mono))
        del self.steps[:-10]
        if step < 0:
            log.warning("the wall clock stepped back %.1f s (now %s); deadlines are unaffected "
                        "(monotonic clock), recording times keep their course and run %.1f s "
                        "ahead of the wall clock until the node restarts", -step,
                        self._format(now_wall), self.stamp() - self.wall())
        else:
            log.warning("the wall clock stepped forward %.1f s (now %s); deadlines are "
                        "unaffected (monotonic clock)", step, self._format(now_wall))
        return step

    def ahead(self) -> float:
        """How far recording times run ahead of the wall clock (after a backward step)."""
        return max(0.0, self.stamp() - self.wall())

    def problems(self) -> list[str]:
        """The steps of the last `REPORT_S`, for /healthz."""
        now_mono = self.mono()
        problems = []
        ahead = self.ahead()
        for step, at_wall, at_mono in self.steps:
            if now_mono - at_mono >= REPORT_S:
                continue
            text = (f"wall clock stepped {'forward' if step > 0 else 'back'} {abs(step):.1f} s "
                    f"at {self._format(at_wall)}")
            if step < 0 and ahead > STEP_S:
                text += f"; recording times run {ahead:.1f} s ahead of it until the node restarts"
            problems.append(text)
        return problems

    def _format(self, ts: float) -> str:
        try:
            return datetime.fromtimestamp(ts, self.tz).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            return repr(ts)
