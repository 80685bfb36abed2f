from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sensing_node.api.routes import NODE
from sensing_node.app import build_app
from sensing_node.node import Node
from sensing_node.settings import settings_for_tests
from sensing_node.sim.camera import CameraConfig, SimulatedCamera

TOKEN = "test-token"
#: media worker processes of every node the tests start (`media.workers`; CI runs the media
#: tests with 1 and with 2)
WORKERS = int(os.environ.get("SENSING_NODE_TEST_WORKERS", "0") or 0)
#: the streams are received in the node's own process (relays can cut through)
IN_PROCESS = WORKERS < 2


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The node runs on uvloop; the registration tests also run on the stock loop (fallback)."""
    import uvloop

    factories: dict[str, Any] = {"uvloop": uvloop.new_event_loop}
    if item.module is not None and item.module.__name__.endswith("test_registration"):
        factories["asyncio"] = asyncio.new_event_loop
    return factories
PASSWORD = "12345678"


@dataclass
class RunningNode:
    node: Node
    client: TestClient
    headers: dict[str, str]

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.node.sip_address[1])

    async def get(self, path: str) -> Any:
        response = await self.client.get(path, headers=self.headers)
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()


StartNode = Callable[..., Awaitable[RunningNode]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    clients: list[TestClient] = []

    async def start(
        data_dir: Path | None = None,
        *,
        clocks: dict[str, Callable[[], float]] | None = None,
        **overrides: Any,
    ) -> RunningNode:
        """A node on loopback; `clocks` may give `wall` and `monotonic` (fake or shifted)."""
        values = {
            "node.api_token": TOKEN,
            "devices.password": PASSWORD,
            "devices.allow": ["31011200", "34020000"],
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        if WORKERS and "media.workers" not in values:
            values["media.workers"] = WORKERS
        settings = settings_for_tests(data_dir or tmp_path / "data", **values)
        app = build_app(settings, **(clocks or {}))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return RunningNode(app[NODE], client, {"Authorization": f"Bearer {TOKEN}"})

    yield start
    for client in clients:
        await client.close()


#: the camera `node_with_camera` registers (its channels end in 0101, 0102 ...)
CAMERA = "31011200001320000001"
CameraSetup = Callable[..., Awaitable[tuple[RunningNode, SimulatedCamera]]]


@pytest.fixture
async def node_with_camera(start_node: StartNode) -> AsyncIterator[CameraSetup]:
    """`setup(node_settings, **camera_config)`: a node plus one registered, catalogued camera
    (CAMERA); the cameras are stopped at the end."""
    cameras: list[SimulatedCamera] = []

    async def setup(
        node: dict[str, Any] | None = None, **camera: Any
    ) -> tuple[RunningNode, SimulatedCamera]:
        running = await start_node(**(node or {}))
        config = CameraConfig(server=running.sip, device_id=CAMERA, password=PASSWORD,
                              **camera)
        cam = SimulatedCamera(config)
        cameras.append(cam)
        await cam.start(keepalives=False)
        device = running.node.registry.get(CAMERA)
        await wait_for(lambda: device is not None and len(device.channels) == config.channels)
        return running, cam

    yield setup
    for cam in cameras:
        await cam.stop(unregister=False)


async def stop(running: RunningNode) -> None:
    await running.client.close()


async def wait_for(predicate, timeout: float = 5.0, step: float = 0.02):
    """Poll `predicate` until it is truthy; bounded so a broken node fails the test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def free_even_range(count: int, lowest: int, highest: int) -> tuple[int, int]:
    """A stretch of `count` even ports in [lowest, highest) that are all free right now (the
    RTP port pool skips busy ones). A stretch below the kernel's ephemeral range (32768 and
    up here) cannot be taken meanwhile by a socket bound to port 0."""
    rng = random.Random()
    for _ in range(100):
        low = rng.randrange(lowest, highest, 2)
        if all(_udp_port_free(port) for port in range(low, low + 2 * count, 2)):
            return low, low + 2 * count - 1
    raise AssertionError("no free port found")


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
