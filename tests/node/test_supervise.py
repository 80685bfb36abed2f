"""Long-lived tasks are supervised: a failure is logged, counted, shown and followed by a restart.

The supervisor alone runs on a fake clock and a fake sleep; the node's own tasks (housekeeping,
the recording loop, the stream hub's ticker) each get one injected exception while the node runs
with a camera streaming, and must go on doing their work afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from sensing_node.runtime.supervise import Supervisor
from sensing_node.sim.camera import CameraConfig, SimulatedCamera

from .conftest import PASSWORD, StartNode, wait_for

CAMERA = "31011200001320000001"
CHANNEL = "31011200001310000101"  # the simulator's first channel of CAMERA


class FakeTime:
    """A clock and a sleep that advances it at once, recording each delay asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def supervisor_on(fake: FakeTime) -> Supervisor:
    return Supervisor(backoff_min_s=1.0, backoff_max_s=60.0, healthy_s=60.0,
                      clock=fake.clock, sleep=fake.sleep)


async def test_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run(caplog) -> None:
    fake = FakeTime()
    supervisor = supervisor_on(fake)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 10:
            fake.now += 60.0  # this run was healthy for a minute before it failed
        if runs <= 11:
            raise OSError(f"disk check {runs} failed")
        # the 12th run finishes its work: nothing more to restart

    with caplog.at_level(logging.ERROR, logger="sensing_node.runtime.supervise"):
        await asyncio.wait_for(supervisor.spawn("disk", flaky), 5.0)
    assert fake.sleeps == [1, 2, 4, 8, 16, 32, 60, 60, 60, 1, 2]
    health = supervisor.tasks["disk"]
    assert (health.failures, health.restarts, runs) == (11, 11, 12)
    assert health.last_error == "OSError: disk check 11 failed"
    failures = [r for r in caplog.records if "task disk failed" in r.getMessage()]
    assert len(failures) == 11
    assert failures[0].exc_info is not None  # the traceback is logged
    assert "restarting in 1 s" in failures[0].getMessage()
    stats = supervisor.as_dict()["disk"]
    assert stats["failures"] == 11 and stats["restarting"] is False


async def test_health_names_the_task_while_restarting_and_for_a_while_after() -> None:
    fake = FakeTime()
    release = asyncio.Event()
    in_backoff = asyncio.Event()

    async def held_sleep(delay: float) -> None:
        in_backoff.set()
        await release.wait()

    supervisor = Supervisor(backoff_min_s=1.0, healthy_s=60.0, clock=fake.clock,
                            sleep=held_sleep)
    runs = 0
    running = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("database is locked")
        running.set()
        await asyncio.Event().wait()

    assert supervisor.problems() == []
    task = supervisor.spawn("housekeeping", loop)
    await asyncio.wait_for(in_backoff.wait(), 5.0)
    (problem,) = supervisor.problems()
    assert problem.startswith("task housekeeping failed (1 failures, restarting)")
    assert problem.endswith("RuntimeError: database is locked")
    assert supervisor.as_dict()["housekeeping"]["restarting"] is True

    release.set()
    await asyncio.wait_for(running.wait(), 5.0)
    fake.now += 59.0
    (problem,) = supervisor.problems()
    assert "restarted, last failure 59 s ago" in problem
    fake.now += 1.0
    assert supervisor.problems() == []
    assert supervisor.as_dict()["housekeeping"]["failures"] == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("where", ["running", "in backoff"])
async def test_cancelling_stops_the_task_and_is_not_a_failure(where: str) -> None:
    fake = FakeTime()
    started = asyncio.Event()
    waiting = asyncio.Event()

    async def forever_sleep(delay: float) -> None:
        waiting.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(clock=fake.clock, sleep=forever_sleep)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        started.set()
        if where == "in backoff":
            raise ValueError("boom")
        await asyncio.Event().wait()

    task = supervisor.spawn("ticker", loop)
    await asyncio.wait_for((waiting if where == "in backoff" else started).wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    health = supervisor.tasks["ticker"]
    assert health.failures == (1 if where == "in backoff" else 0)
    assert health.restarts == 0 and health.waiting == 0 and runs == 1


def fail_once(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> Callable[[], int]:
    """Make `obj.name` raise on its next call, then behave; returns the count of later calls."""
    original = getattr(obj, name)
    calls = {"failed": 0, "after": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not calls["failed"]:
            calls["failed"] = 1
            raise RuntimeError(f"injected failure in {name}")
        calls["after"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return lambda: calls["after"]


async def test_each_node_task_recovers_from_an_injected_failure(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await start_node(**{"recording.channels": [CHANNEL], "recording.segment_s": 1})
    node = running.node
    fake = FakeTime()
    supervisor = node.supervisor
    supervisor.backoff_min_s = 0.05
    supervisor.clock = fake.clock

    # Housekeeping and the recording loop fail before the camera is there ...
    sweeps_after = fail_once(monkeypatch, node.registry, "sweep")
    reconciles_after = fail_once(monkeypatch, node.recording, "reconcile")
    await wait_for(lambda: sweeps_after() >= 2 and reconciles_after() >= 2, timeout=15.0)
    # ... and afterwards still do their work: the camera registers and is recorded.
    cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=CAMERA, password=PASSWORD))
    await cam.start(keepalives=False)
    try:
        recording = await wait_for(lambda: node.recording.recordings.get(CHANNEL), 15.0)
        stream = await wait_for(lambda: node.media.streams.get(CHANNEL), 15.0)
        # (the recorder's count: with media workers the channel is recorded in one of them)
        await wait_for(lambda: stream.state == "playing" and recording is not None
                       and node.recording.stats()["units"] > 0, 15.0)

        # A stream's tick failing ends that stream's attempt, which is invited again; the
        # ticker itself goes on for the other streams (the failure is counted all the same).
        ticks_after = fail_once(monkeypatch, stream, "tick")
        await wait_for(lambda: ticks_after() >= 2, 15.0)
        frames = stream.frames
        await wait_for(lambda: stream.frames > frames and stream.state == "playing", 15.0)
        assert stream.attempts >= 2

        tasks = (await running.get("/api/stats"))["tasks"]
        for name in ("housekeeping", "recording"):
            assert tasks[name]["failures"] == 1, (name, tasks)
            assert tasks[name]["restarts"] == 1 and tasks[name]["restarting"] is False
            assert tasks[name]["last_error"] == "RuntimeError: injected failure in " + {
                "housekeeping": "sweep", "recording": "reconcile"}[name]
        ticker = tasks["stream ticker"]
        assert (ticker["failures"], ticker["restarts"], ticker["restarting"]) == (1, 0, False)
        assert ticker["last_error"] == f"stream {CHANNEL}: RuntimeError: injected failure in tick"
        assert tasks["device queries"]["failures"] == 0

        health = await (await running.client.get("/healthz")).json()
        assert health["status"] == "degraded"
        for name in ("housekeeping", "recording"):
            assert any(r.startswith(f"task {name} failed (1 failures, restarted")
                       for r in health["reasons"]), health
        assert any(r.startswith("task stream ticker failed (1 failures, last failure")
                   for r in health["reasons"]), health
        fake.now += 60.0  # a healthy minute later the node is no longer degraded for them
        health = await (await running.client.get("/healthz")).json()
        assert not any(r.startswith("task ") for r in health["reasons"]), health
    finally:
        await cam.stop(unregister=False)

    queries = node.queries
    assert queries is not None
    tasks_before_stop = [*node._tasks, node.media._tick_task, node.recording._task,
                         *queries._workers]
    await running.client.close()  # node stop: every task ends, none of that is a failure
    assert all(task is not None and task.done() for task in tasks_before_stop)
    expected = {"housekeeping": 1, "recording": 1, "stream ticker": 1, "device queries": 0}
    if node.media.workers is not None:
        expected["media worker stats"] = 0
    assert {name: h.failures for name, h in supervisor.tasks.items()} == expected


async def test_a_failed_query_worker_is_restarted_and_the_pool_keeps_working(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await start_node(**{"recording.channels": []})
    node = running.node
    node.supervisor.backoff_min_s = 0.05
    queries = node.queries
    assert queries is not None
    fail_once(monkeypatch, node.registry, "update_info")  # the DeviceInfo answer's handling
    cam = SimulatedCamera(CameraConfig(server=running.sip, device_id=CAMERA, password=PASSWORD))
    await cam.start(keepalives=False)
    try:
        health = node.supervisor.tasks["device queries"]
        await wait_for(lambda: health.failures == 1 and health.restarts == 1, 15.0)
        assert sum(not w.done() for w in queries._workers) == queries.max_inflight
        device = node.registry.get(CAMERA)
        # That refresh lost the DeviceInfo answer (the Catalog, asked beside it, may be in).
        assert device is not None and not device.model
        queries.device_registered(device)  # asked again, a worker answers it in full
        await wait_for(lambda: CHANNEL in device.channels and device.model, 15.0)
    finally:
        await cam.stop(unregister=False)


async def test_a_built_in_camera_that_fails_to_start_is_started_again_afresh(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SimulatedCamera.start
    calls = 0

    async def start_fails_once(self: SimulatedCamera, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await self.endpoint.open_udp()  # a socket that the restart must not reuse
            raise ConnectionRefusedError("injected: the node is not answering yet")
        await original(self, **kwargs)

    monkeypatch.setattr(SimulatedCamera, "start", start_fails_once)
    running = await start_node(**{"simulator.cameras": 1, "recording.channels": []})
    node = running.node
    first = node.simulators[0]
    # The first failure waits the default backoff (1 s) before the restart.
    device = await wait_for(lambda: node.registry.get(first.device_id), 15.0)
    await wait_for(lambda: device.online and node.simulators[0].registered, 15.0)
    assert node.simulators[0] is not first
    health = node.supervisor.tasks["simulated cameras"]
    assert (health.failures, health.restarts) == (1, 1)
    assert health.last_error == "ConnectionRefusedError: injected: the node is not answering yet"


async def test_sip_transaction_expiry_goes_on_after_a_failure(caplog) -> None:
    """The endpoint's once-a-second expiry timer re-arms itself even when one run raises."""
    from sensing_node.transport.sip import SipEndpoint

    endpoint = SipEndpoint(lambda event: None)
    await endpoint.listen("127.0.0.1", 0, tcp=False)
    try:
        later_calls = fail_once(pytest.MonkeyPatch(), endpoint.tx, "expire")
        with caplog.at_level(logging.ERROR):
            await wait_for(lambda: later_calls() >= 1, timeout=5.0)
        assert endpoint.stats.dropped["tx_expire_error"] == 1
        assert "expiring SIP transactions failed" in caplog.text
    finally:
        await endpoint.close()
