"""Per-key token buckets and failure lockouts, bounded in size so a flood of keys cannot grow them
without limit. Time is passed in."""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    """`allow(key, now)` is True while `key` stays under `rate` per second with `burst`."""

    def __init__(self, rate: float, burst: float, max_keys: int = 200_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True


class FailureLockout:
    """Counts failures per key in a sliding window; `locked(key, now)` after `limit` of them."""

    def __init__(self, limit: int, window_s: float, lockout_s: float, max_keys: int = 100_000):
        self.limit = limit
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_keys = max_keys
        self._state: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # n, start, until

    def locked(self, key: str, now: float) -> bool:
        state = self._state.get(key)
        return state is not None and state[2] > now

    def fail(self, key: str, now: float) -> None:
        count, start, until = self._state.pop(key, (0, now, 0.0))
        if now - start > self.window_s:
            count, start = 0, now
        count += 1
        if count >= self.limit:
            until = now + self.lockout_s
            count, start = 0, now
        if len(self._state) >= self.max_keys:
            self._state.popitem(last=False)
        self._state[key] = (count, start, until)

    def succeed(self, key: str) -> None:
        self._state.pop(key, None)


class LogThrottle:
    """At most one log line per key per `interval_s`; the lines held back are counted into the
    next one, so a peer sending garbage cannot flood the log."""

    def __init__(self, interval_s: float = 1.0, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, key: str, now: float) -> int | None:
        """None to hold the line back; otherwise how many were held back before it."""
        last, held = self._last.pop(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._last[key] = (last, held + 1)
            return None
        if len(self._last) >= self.max_keys:
            self._last.popitem(last=False)
        self._last[key] = (now, 0)
        return held
