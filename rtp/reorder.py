"""Bounded RTP reordering and interarrival jitter (RFC 3550 sections 6.4.1 and A.8).

Over UDP, packets of one GB/T 28181 stream may arrive out of order, twice, or not at all.
`ReorderBuffer` puts them back in sequence order while bounding both memory and delay: a gap is
waited for until `window` packets are in flight behind it or its oldest held packet is
`max_delay_s` old, then given up and counted as lost. Time is passed in by the caller; the
adapter arms one timer at `next_deadline()` and calls `flush(now)` when it fires.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["JitterStats", "ReorderBuffer"]

T = TypeVar("T")


def _offset(a: int, b: int) -> int:
    """`a - b` for 16-bit sequence numbers, in -32768..32767."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


class ReorderBuffer(Generic[T]):
    """Release items in RTP sequence order, waiting a bounded time for gaps.

    `push` returns the items now in order. An item behind the release point is dropped: it is a
    duplicate if it was released, late if its place had been given up as lost. A jump of more
    than `max_dropout` ahead or more than the remembered history behind looks like a restarted
    source; it is confirmed when the next packet follows it (RFC 3550 A.1 probation, without
    losing the first packet), and then everything held is released and counting starts again.

    Statistics: `received` (every push), `lost` (sequence numbers given up), `reordered`
    (packets that arrived after a higher one), `duplicates`, `late`, `discarded` (unconfirmed
    jumps) and `restarts`.
    """

    def __init__(self, window: int = 64, max_delay_s: float = 0.2, max_dropout: int = 3000) -> None:
        if not 1 <= window <= 0x4000 or not window <= max_dropout < 0x8000:
            raise ValueError("need 1 <= window <= 16384 and window <= max_dropout < 32768")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must not be negative")
        self.window = window
        self.max_delay_s = max_delay_s
        self.max_dropout = max_dropout
        self.received = 0
        self.lost = 0
        self.reordered = 0
        self.duplicates = 0
        self.late = 0
        self.discarded = 0
        self.restarts = 0
        # Released sequence numbers by slot, to tell a duplicate from a late packet (one at
        # most `_history` behind). A slot holds the rest of the number (its lap, `sequence >>
        # _shift`): with at least 256 slots a lap is below 256, an int Python keeps cached,
        # so that noting a packet as released costs no allocation.
        self._history = 1 << max(7, (2 * window - 1).bit_length())
        slots = max(256, self._history)
        self._mask = slots - 1  # slot of a sequence number in _released
        self._shift = slots.bit_length() - 1
        self._released = [-1] * slots
        self._next: int | None = None  # the sequence number to release next
        self._highest = 0
        self._held: dict[int, tuple[T, float]] = {}
        self._oldest = 0.0  # arrival time of the oldest held item
        self._candidate: tuple[int, T, float] | None = None

    def take(self, sequence: int) -> bool:
        """The common case of `push`, without the item: True when `sequence` is the one
        expected next and nothing is held, in which case it counts as pushed and released and
        the caller hands it on itself. False: use `push`."""
        if sequence != self._next or self._held:
            return False
        self.received += 1
        self._released[sequence & self._mask] = sequence >> self._shift
        self._next = (sequence + 1) & 0xFFFF
        self._highest = sequence
        if self._candidate is not None:
            self._candidate = None
            self.discarded += 1
        return True

    def push(self, sequence: int, item: T, now: float) -> list[T]:
        """Add a received item; return the items now releasable, in order."""
        self.received += 1
        expected = self._next
        if expected is None:
            self._start(sequence)
            expected = sequence
        delta = ((sequence - expected + 0x8000) & 0xFFFF) - 0x8000
        if delta == 0 and not self._held:
            self._released[sequence & self._mask] = sequence >> self._shift
            self._next = (sequence + 1) & 0xFFFF
            self._highest = sequence
            if self._candidate is not None:
                self._candidate = None
                self.discarded += 1
            return [item]
        out: list[T] = []
        if delta < 0:
            if -delta <= self._history:
                if self._released[sequence & self._mask] == sequence >> self._shift:
                    self.duplicates += 1
                else:
                    self.late += 1
            else:
                self._probation(sequence, item, now, out)
            self._expire(now, out)
            return out
        if delta > self.max_dropout:
            self._probation(sequence, item, now, out)
            self._expire(now, out)
            return out
        if self._candidate is not None:
            self._candidate = None
            self.discarded += 1
        if sequence in self._held:
            self.duplicates += 1
            self._expire(now, out)
            return out
        if _offset(sequence, self._highest) < 0:
            self.reordered += 1
        else:
            self._highest = sequence
        if delta >= self.window:
            self._skip_to((sequence - self.window + 1) & 0xFFFF, out)
        held = self._held
        if not held:
            self._oldest = now
        held[sequence] = (item, now)
        # While a gap waits, most packets neither fill it nor time it out: the two calls
        # below are made only when they have something to do (no candidate is left here).
        if self._next in held:
            self._release_run(out)
        if held and now >= self._oldest + self.max_delay_s:
            self._expire(now, out)
        return out

    def flush(self, now: float) -> list[T]:
        """Release what is due at `now` (call when `next_deadline()` passes)."""
        out: list[T] = []
        self._expire(now, out)
        return out

    def drain(self) -> list[T]:
        """Release everything held, in order, counting the gaps as lost (end of stream)."""
        out: list[T] = []
        if self._candidate is not None:
            self._candidate = None
            self.discarded += 1
        while self._held:
            self._skip_to(self._lowest_held(), out)
            self._release_run(out)
        return out

    def next_deadline(self) -> float | None:
        """When `flush` next has something to do, or None if nothing is waiting."""
        deadline = self._oldest + self.max_delay_s if self._held else None
        if self._candidate is not None:
            expires = self._candidate[2] + self.max_delay_s
            if deadline is None or expires < deadline:
                deadline = expires
        return deadline

    @property
    def held(self) -> int:
        """Number of items waiting for a gap to fill."""
        return len(self._held)

    def _start(self, sequence: int) -> None:
        self._next = sequence
        self._highest = (sequence - 1) & 0xFFFF
        self._released = [-1] * (self._mask + 1)

    def _probation(self, sequence: int, item: T, now: float, out: list[T]) -> None:
        candidate = self._candidate
        if candidate is not None and (candidate[0] + 1) & 0xFFFF == sequence:
            self._candidate = None
            self.restarts += 1
            out.extend(self.drain())
            self._start(candidate[0])
            self._held[candidate[0]] = (candidate[1], candidate[2])
            self._held[sequence] = (item, now)
            self._oldest = candidate[2]
            self._highest = sequence
            self._release_run(out)
            return
        if candidate is not None:
            self.discarded += 1
        self._candidate = (sequence, item, now)

    def _lowest_held(self) -> int:
        expected = self._next
        assert expected is not None
        return min(self._held, key=lambda s: (s - expected) & 0xFFFF)

    def _skip_to(self, sequence: int, out: list[T]) -> None:
        """Give up every sequence number before `sequence`, releasing held items on the way."""
        expected = self._next
        assert expected is not None
        gap = (sequence - expected) & 0xFFFF
        missing = gap
        held = self._held
        if held:
            for seq in sorted(held, key=lambda s: (s - expected) & 0xFFFF):
                if (seq - expected) & 0xFFFF >= gap:
                    break
                out.append(held.pop(seq)[0])
                self._released[seq & self._mask] = seq >> self._shift
                missing -= 1
        self.lost += missing
        self._next = sequence
        if held:
            self._oldest = min(arrival for _, arrival in held.values())

    def _release_run(self, out: list[T]) -> None:
        """Release held items from the release point while they are consecutive."""
        expected = self._next
        assert expected is not None
        held = self._held
        released = self._released
        mask, shift = self._mask, self._shift
        entry = held.pop(expected, None)
        if entry is None:
            return
        while entry is not None:
            out.append(entry[0])
            released[expected & mask] = expected >> shift
            expected = (expected + 1) & 0xFFFF
            entry = held.pop(expected, None)
        self._next = expected
        if held:
            self._oldest = min(arrival for _, arrival in held.values())

    def _expire(self, now: float, out: list[T]) -> None:
        if self._candidate is not None and now >= self._candidate[2] + self.max_delay_s:
            self._candidate = None
            self.discarded += 1
        while self._held and now >= self._oldest + self.max_delay_s:
            self._skip_to(self._lowest_held(), out)
            self._release_run(out)


class JitterStats:
    """RFC 3550 interarrival jitter (section 6.4.1, appendix A.8), in timestamp units.

    Video packets of one frame share a timestamp but are sent over a few milliseconds, so for
    video this also measures how a camera paces its packets, not only the network.
    """

    __slots__ = ("clock_rate", "jitter", "_last_timestamp", "_last_arrival")

    def __init__(self, clock_rate: int = 90000) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self.jitter = 0.0
        self._last_timestamp: int | None = None
        self._last_arrival = 0.0

    def update(self, timestamp: int, arrival: float) -> float:
        """Add a packet's RTP timestamp and arrival time (seconds); return the new jitter."""
        last = self._last_timestamp
        self._last_timestamp = timestamp
        previous_arrival = self._last_arrival
        self._last_arrival = arrival
        if last is None:
            return self.jitter
        sent = ((timestamp - last + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        transit_change = abs((arrival - previous_arrival) * self.clock_rate - sent)
        self.jitter += (transit_change - self.jitter) / 16
        return self.jitter

    @property
    def jitter_s(self) -> float:
        """The jitter in seconds."""
        return self.jitter / self.clock_rate
