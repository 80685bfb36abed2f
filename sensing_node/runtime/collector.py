"""The cyclic garbage collector's settings for a process that carries media.

Per packet and per frame the media path makes container objects (access units, tuples, the
recorder's queue items) that live for milliseconds and hold no cycles. CPython collects its
youngest generation every 700 net allocations of such objects; at 400 recorded streams on one
core that was about 40 collections a second, about 3 % of the core, mostly spent scanning
objects still in flight (queued for the recorder) that reference counting frees a moment later.
With the first threshold at `GEN0` the collector ran 7 times in a 20 s pass, for about 0.15 %
of the core (`docs/benchmarks.md`). Cycles still get collected, only in larger batches: at
most `GEN0` young objects wait, a few megabytes.
"""

from __future__ import annotations

import gc

#: the youngest generation's threshold (CPython's default: 700); the older two keep theirs
GEN0 = 20_000


def tune() -> tuple[int, int, int]:
    """Raise the youngest generation's threshold to `GEN0`; the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(GEN0, before[1], before[2])
    return before
