"""Clock faults: a running node whose wall clock steps forward or back, and a restart across
which the wall clock moved. The node takes its clocks as callables (`wall`, `monotonic`); here
they are the real clocks moved by an offset the test changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sensing_node.runtime.clock import REPORT_S, STEP_S, NodeClock
from sensing_node.sim.camera import CameraConfig, SimulatedCamera
from sip.transaction import Peer

from .conftest import PASSWORD, RunningNode, StartNode

CAMERA = "31011200001320000001"
OTHER = "31011200001320000002"
CHANNEL = "31011200001310000101"  # the simulator's first channel of CAMERA
HOUR = 3600.0


class Shifted:
    """A real clock moved by `offset` seconds, which the test may change at any time."""

    def __init__(self, clock: Callable[[], float], offset: float = 0.0) -> None:
        self.clock = clock
        self.offset = offset

    def __call__(self) -> float:
        return self.clock() + self.offset


class Fake:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StartAt = Callable[..., Awaitable[RunningNode]]


@pytest.fixture
def node_at(start_node: StartNode) -> StartAt:
    """Start a node on given clocks: `await node_at(wall, mono=None, data_dir=None, **keys)`."""

    async def start(
        wall: Shifted, mono: Shifted | None = None, data_dir: Path | None = None, **keys: Any
    ) -> RunningNode:
        clocks = {"wall": wall, "monotonic": mono or Shifted(time.monotonic)}
        return await start_node(data_dir, clocks=clocks, **keys)

    return start


@pytest.fixture
async def cameras() -> AsyncIterator[Callable[..., Awaitable[SimulatedCamera]]]:
    started: list[SimulatedCamera] = []

    async def camera(running: RunningNode, device_id: str = CAMERA) -> SimulatedCamera:
        cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=device_id,
                                           password=PASSWORD))
        started.append(cam)
        await cam.start(keepalives=False)  # the test sends them
        assert cam.registered
        return cam

    yield camera
    for cam in started:
        await cam.stop(unregister=False)


async def reasons(running: RunningNode) -> list[str]:
    response = await running.client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert (body["status"] == "ok") == (not body["reasons"])
    reasons: list[str] = body["reasons"]
    return reasons


async def step_reported(running: RunningNode, words: str) -> list[str]:
    """Wait (bounded) until /healthz names the wall clock step; the reasons that do."""
    deadline = time.monotonic() + 5.0
    while True:
        found = [r for r in await reasons(running) if words in r]
        if found:
            return found
        assert time.monotonic() < deadline, f"/healthz never said {words!r}"
        await asyncio.sleep(0.1)  # housekeeping checks the clock twice a second


# ----- the clock itself (fake clocks, no loop) ---------------------------------------------------


def test_a_step_is_seen_by_comparing_wall_and_monotonic_progress() -> None:
    wall, mono = Fake(1_795_000_000.0), Fake(100.0)
    clock = NodeClock(wall, mono)
    wall.now += 10.0
    mono.now += 10.0 - STEP_S  # the wall clock gained exactly STEP_S: within tolerance
    assert clock.check() is None and clock.problems() == []
    wall.now += 0.5 + 2 * HOUR
    mono.now += 0.5
    assert clock.check() == pytest.approx(2 * HOUR)
    assert clock.problems() == [
        "wall clock stepped forward 7200.0 s at " + clock._format(wall.now)
    ]
    wall.now += REPORT_S - 1
    mono.now += REPORT_S - 1
    assert clock.check() is None and len(clock.problems()) == 1  # still within the hour
    wall.now += 1
    mono.now += 1
    assert clock.problems() == []  # an hour later it is no longer news


def test_recording_stamps_never_go_back_and_follow_a_forward_step() -> None:
    wall, mono = Fake(1_795_000_000.0), Fake(100.0)
    clock = NodeClock(wall, mono)
    assert clock.stamp() == wall.now
    wall.now += 5.0 - HOUR
    mono.now += 5.0  # the wall clock was set back an hour
    assert clock.stamp() == 1_795_000_005.0  # five seconds on, not an hour back
    assert clock.check() == pytest.approx(-HOUR)
    [problem] = clock.problems()
    assert problem.startswith("wall clock stepped back 3600.0 s at ")
    assert problem.endswith("; recording times run 3600.0 s ahead of it until the node restarts")
    wall.now += 1.0
    mono.now += 1.0
    assert clock.stamp() == 1_795_000_006.0
    jumps: list[tuple[float, float]] = []
    clock.on_forward_step = lambda before, after: jumps.append((before, after))
    wall.now += 2 * HOUR + 1.0  # forward past the stamps: taken as it is
    mono.now += 1.0
    assert clock.stamp() == wall.now == 1_795_000_000.0 + HOUR + 7.0
    assert jumps == [(1_795_000_007.0, wall.now)]  # heard of before the stamp is handed out
    wall.now += STEP_S
    assert clock.stamp() == wall.now and len(jumps) == 1  # STEP_S is no step
    wall.now += 1.0
    mono.now += 1.0
    assert clock.stamp() == wall.now  # in step with the wall clock again


# ----- a running node ----------------------------------------------------------------------------


async def test_wall_clock_forward_two_hours_devices_keep_alive_and_stay_online(
    node_at: StartAt, cameras: Any
) -> None:
    wall = Shifted(time.time)
    running = await node_at(wall, **{"devices.keepalive_timeout_s": 30})
    cam = await cameras(running)
    registered_at = running.node.registry.get(CAMERA).registered_at
    assert (await cam.send_keepalive()).status == 200

    wall.offset += 2 * HOUR  # beyond the granted 3600 s
    # The registration is measured on the monotonic clock: the keepalive is still accepted.
    response = await cam.send_keepalive()
    assert (response.status, response.reason) == (200, "OK")
    await step_reported(running, "wall clock stepped forward 7200.0 s at ")
    # That housekeeping tick also swept the registry after the step: the device stays online.
    dev = running.node.registry.get(CAMERA)
    assert dev.online and dev.registered(running.node.clock.mono())
    [listed] = await running.get("/api/devices")
    assert listed["online"] is True
    # What is written down follows the wall clock: the keepalive is dated after the step.
    assert dev.last_keepalive > registered_at + 2 * HOUR - 5


async def test_wall_clock_back_an_hour_keepalives_and_registers_still_answered(
    node_at: StartAt, cameras: Any
) -> None:
    wall = Shifted(time.time)
    running = await node_at(wall)
    cam = await cameras(running)
    assert (await cam.send_keepalive()).status == 200  # its MESSAGE budget is in use
    wall.offset -= HOUR
    # Rate limits and nonces run on the monotonic clock: a wall clock an hour back neither
    # empties the device's MESSAGE budget (503 for an hour) nor makes its nonce unusable.
    for _ in range(3):
        response = await cam.send_keepalive()
        assert (response.status, response.reason) == (200, "OK")
    assert (await cam.register()).status == 200
    await step_reported(running, "wall clock stepped back 3600.")
    assert running.node.registry.get(CAMERA).online


async def test_wall_clock_back_an_hour_no_gap_overlaps_a_segment(
    node_at: StartAt, cameras: Any, tmp_path: Path
) -> None:
    """A node that started with its wall clock an hour ahead dates the time it was not running
    up to that clock; when the clock is then set right, what it records next must not fall
    inside that gap (nor overlap anything else it wrote)."""
    keys = {"recording.channels": [CHANNEL], "recording.segment_s": 1}
    wall = Shifted(time.time)
    first = await node_at(wall, **keys)
    cam = await cameras(first)
    before = await segments(first, 2)
    await cam.stop(unregister=False)
    await first.client.close()  # the node stops: open segments closed and indexed

    wall.offset = HOUR  # a wrong RTC at boot
    running = await node_at(wall, **keys)
    await cameras(running)
    ahead = await segments(running, len(before) + 2)
    _, gaps = await running.node.recording.search(CHANNEL, 0, 4e9)
    assert any("node not running" in g.reason for g in gaps)

    wall.offset = 0.0  # NTP sets it right
    rows = await segments(running, len(ahead) + 3)
    await step_reported(running, "wall clock stepped back")
    _, gaps = await running.node.recording.search(CHANNEL, 0, 4e9)
    for gap in gaps:
        assert gap.start_wall <= gap.end_wall, gap
        for row in rows:
            assert not (gap.start_wall < row.end_wall - 1e-3
                        and row.start_wall < gap.end_wall - 1e-3), (gap, row)
    ordered = sorted(rows, key=lambda r: r.start_wall)
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        assert earlier.end_wall <= later.start_wall + 1e-3, (earlier, later)


async def test_wall_clock_forward_two_hours_no_segment_spans_the_jump(
    node_at: StartAt, cameras: Any
) -> None:
    wall = Shifted(time.time)
    running = await node_at(wall, **{"recording.channels": [CHANNEL], "recording.segment_s": 1})
    await cameras(running)
    before = await segments(running, 2)
    wall.offset = 2 * HOUR
    rows = await segments(running, len(before) + 3)
    _, gaps = await running.node.recording.search(CHANNEL, 0, 4e9)
    # Segments of about two seconds (a keyframe a second); none stretched over the two hours.
    assert all(row.end_wall - row.start_wall < 10 for row in rows), rows
    [jump] = [g for g in gaps if "wall clock stepped forward" in g.reason]
    assert jump.reason == "not recorded: wall clock stepped forward 7200 s"
    assert 2 * HOUR - 1 < jump.end_wall - jump.start_wall < 2 * HOUR + 5
    for gap in gaps:
        for row in rows:
            assert not (gap.start_wall < row.end_wall - 1e-3
                        and row.start_wall < gap.end_wall - 1e-3), (gap, row)


async def segments(running: RunningNode, count: int, timeout: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows, _ = await running.node.recording.search(CHANNEL, 0, 4e9)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} segments recorded")


# ----- across a restart --------------------------------------------------------------------------


async def test_restart_with_the_wall_clock_past_expiry_grants_one_keepalive_timeout(
    node_at: StartAt, cameras: Any, tmp_path: Path
) -> None:
    wall = Shifted(time.time)
    first = await node_at(wall, **{"devices.keepalive_timeout_s": 60})
    cam = await cameras(first)
    gone = await cameras(first, OTHER)
    assert (await gone.register(expires=0)).status == 200  # unregistered: no grace for it
    await first.client.close()

    # Back up two hours later by its wall clock (the registration granted 3600 s), or with a
    # clock that moved while it was down: the same thing to the node.
    wall.offset = 2 * HOUR
    mono = Shifted(time.monotonic)
    running = await node_at(wall, mono, **{"devices.keepalive_timeout_s": 60})
    dev = running.node.registry.get(CAMERA)
    assert dev.expires_at < wall()  # by the stored wall time it ran out
    for camera in (cam, gone):
        camera.server_peer = Peer("udp", *running.sip)
    response = await cam.send_keepalive()
    assert (response.status, response.reason) == (200, "OK")
    assert dev.online
    response = await gone.send_keepalive()
    assert (response.status, response.reason) == (403, "Device Not Registered")

    # The grace is one keepalive timeout from the restart, no more: then it must register.
    mono.offset += 50.0
    assert (await cam.send_keepalive()).status == 200
    mono.offset += 10.0
    response = await cam.send_keepalive()
    assert (response.status, response.reason) == (403, "Device Not Registered")
    assert (await cam.register()).status == 200
    assert (await cam.send_keepalive()).status == 200
