"""Memory held by the registrar's nonce state (`sip.auth.NonceTracker`), by tracemalloc.

Each device that registers is challenged once and answers once: a nonce is issued, bound to
its source address and device ID, and used with qop=auth (nc=00000001). The figure is what the
tracker holds for N such devices within one nonce lifetime (5 minutes), when nothing has expired
yet: the most it holds for N devices registering at once. The cap (`max_nonces`, the
registrar's default 100,000) is measured the same way. Memory only, no timing: a few seconds.

    .venv/bin/python bench/nonces.py [--devices 10000]
"""

from __future__ import annotations

import argparse
import os
import tracemalloc

from common import device_id

from sip.auth import NonceTracker


def held_bytes(devices: int, max_nonces: int) -> tuple[int, int]:
    """Bytes allocated and still held after `devices` challenges and answers; nonces held."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tracker = NonceTracker(os.urandom(16), lifetime_s=300.0, max_nonces=max_nonces)
    now = 1_800_000_000.0
    for serial in range(devices):
        bind = f"10.{serial >> 16 & 255}.{serial >> 8 & 255}.{serial & 255}/{device_id(serial)}"
        nonce = tracker.make(now, bind)
        assert tracker.check(nonce, now + 0.01, bind, "00000001") == "ok"
        tracker.use(nonce, "00000001")
        now += 0.001  # 1,000 registrations a second: all within one lifetime
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return held, len(tracker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args()
    cap = 100_000
    for devices in (args.devices, cap, 2 * cap):
        held, count = held_bytes(devices, cap)
        print(f"{devices:>7} devices: {count:>7} nonces held, {held / 2**20:6.2f} MiB, "
              f"{held / count:5.0f} bytes per nonce")


if __name__ == "__main__":
    main()
