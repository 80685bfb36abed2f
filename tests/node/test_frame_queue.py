"""A live consumer's frame queue is bounded by frames and by bytes, and resumes at a keyframe."""

from __future__ import annotations

import asyncio

from rtp.ps import AccessUnit
from sensing_node.media.consumers import FrameQueue


def unit(n: int, size: int, *, key: bool = False) -> AccessUnit:
    data = bytes([n % 256]) * size
    return AccessUnit(stream_id=0xE0, codec="h264", pts=n * 3600, dts=None, keyframe=key,
                      data=data, ps_bytes=data, offset=0)


def test_bytes_held_stay_under_max_bytes_and_the_reader_resumes_at_a_keyframe() -> None:
    queue = FrameQueue(maxsize=1000, max_bytes=1_000_000)
    fed = [unit(0, 100_000, key=True)] + [unit(n, 100_000) for n in range(1, 12)]
    fed += [unit(12, 100_000, key=True), unit(13, 100_000)]
    for u in fed:
        queue.on_unit(u)
        assert queue.bytes <= queue.max_bytes
    # Frames 0-4 filled the queue (5 x 200,000 bytes); frame 5 did not fit: everything held and
    # every frame up to the next keyframe is dropped; 12 and 13 are held.
    assert [u.pts // 3600 for u in queue.items] == [12, 13]
    assert queue.dropped == 12
    assert queue.bytes == 400_000


def test_a_frame_larger_than_max_bytes_is_dropped_with_what_depends_on_it() -> None:
    queue = FrameQueue(max_bytes=100_000)
    for u in (unit(0, 80_000, key=True), unit(1, 10), unit(2, 10)):
        queue.on_unit(u)
    assert queue.dropped == 3 and not queue.items and queue.bytes == 0
    queue.on_unit(unit(3, 1_000, key=True))
    assert [u.pts // 3600 for u in queue.items] == [3]


async def test_get_gives_the_bytes_back() -> None:
    queue = FrameQueue(max_bytes=1_000_000)
    queue.on_unit(unit(0, 1_000, key=True))
    queue.on_unit(unit(1, 500))
    assert queue.bytes == 3_000
    first = await asyncio.wait_for(queue.get(), 1.0)
    assert first.pts == 0 and queue.bytes == 1_000
