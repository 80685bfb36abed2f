"""Wiring: the node's parts (registry, SIP endpoint, registrar, queries, stream hub, recorder,
cascade) built from the settings, started in order and stopped in reverse.

`Node.start` opens the store, the SIP port, the recorder and the housekeeping; `Node.stop` ends
the streams while devices can still take the BYE and flushes the registry to SQLite last. The
HTTP application around it is `sensing_node.app`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial

from sip.transaction import RequestReceived

from .access.service import AccessService
from .cascade.service import Cascade
from .devices.queries import DeviceQueries
from .devices.registrar import Registrar
from .devices.registry import Registry
from .devices.store import Store
from .media.hub import StreamHub
from .recording.service import RecordingService
from .runtime.clock import NodeClock
from .runtime.stats import Stats
from .runtime.supervise import Supervisor
from .settings import Settings
from .sim.camera import CameraConfig, SimulatedCamera
from .transport.sip import SipEndpoint

log = logging.getLogger(__name__)

FULL_GC_INTERVAL_S = 600.0


class StartupError(Exception):
    """The node cannot start (a port is taken, the data directory is unusable ...)."""


class Node:
    """The running node; tests create one with `settings_for_tests` and a real port."""

    def __init__(
        self,
        settings: Settings,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.wall = wall
        #: deadlines on the monotonic clock, labels on the wall clock, steps of the latter noticed
        #: at every housekeeping tick; recordings are dated by `clock.stamp` (never backwards)
        self.clock = NodeClock(wall, monotonic, tz=settings.node.tz)
        self.stats = Stats()
        #: restarts the long-lived tasks that fail (housekeeping, recording, ticker, queries)
        self.supervisor = Supervisor(clock=monotonic)
        self.store = Store(settings.node.data_dir / "registry.sqlite3")
        self.registry = Registry(
            self.store, keepalive_timeout_s=settings.devices.keepalive_timeout_s,
            channel_takeover_s=settings.devices.channel_takeover_s, wall=wall, mono=monotonic,
        )
        self.registrar = Registrar(settings, self.registry, self.stats, wall=wall,
                                   monotonic=monotonic)
        self.endpoint = SipEndpoint(self._route, stats=self.stats)
        self.registrar.endpoint = self.endpoint
        self.queries: DeviceQueries | None = None
        self.media = StreamHub(settings, self.registry, self.endpoint, wall=self.clock.stamp)
        self.registrar.dialog_requests = self.media.on_request
        self.recording = RecordingService(settings, self.media, self.registry,
                                          wall=self.clock.stamp)
        self.clock.on_forward_step = self.recording.wall_stepped
        self.registrar.record_search = self.recording.record_info
        #: users, sharing classes and grants: who may take what (access/)
        self.access = AccessService(settings, wall=wall)
        self.access.audit = self.recording.log_access
        self.cascade = Cascade(settings, self.endpoint, self.registry, self.media,
                               audit=self.recording.log_access, access=self.access.policy,
                               wall=wall, mono=monotonic)
        self.cascade.record_search = self.recording.record_info
        self.cascade.record_items = self.recording.record_items
        self.cascade.restreamer.recordings = self.recording.playback_segments
        self.sip_address: tuple[str, int] = ("", 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_error: str | None = None
        self.simulators: list[SimulatedCamera] = []
        self._simulators_run: set[int] = set()

    async def start(self) -> None:
        node = self.settings.node
        loop = asyncio.get_running_loop()
        try:
            valid = await loop.run_in_executor(
                self.store.executor, self.registry.load, self.wall()
            )
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the registry in {self.store.path}: {exc}") from exc
        log.info("registry loaded: %d devices, %d still registered", len(self.registry), valid)
        try:
            self.sip_address = await self.endpoint.listen(node.sip_host, node.sip_port)
        except OSError as exc:
            raise StartupError(
                f"cannot listen for SIP on {node.sip_host}:{node.sip_port} (UDP and TCP): "
                f"{exc.strerror or exc}"
            ) from exc
        log.info("SIP listening on %s:%d (UDP and TCP)", *self.sip_address)
        self.queries = DeviceQueries(
            self.endpoint, self.registry, self.stats, node_id=node.id, realm=node.realm
        )
        self.registrar.queries = self.queries
        self.cascade.queries = self.queries
        self.queries.start(self.supervisor)
        self.media.start(self.supervisor)
        try:
            await self.recording.start(self.supervisor)
        except OSError as exc:
            raise StartupError(f"cannot open the recordings in {self.recording.root}: {exc}") \
                from exc
        try:
            await self.access.start()
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the grants in {self.access.store.path}: {exc}") \
                from exc
        self._tasks.append(self.supervisor.spawn("housekeeping", self._housekeeping))
        contact_host = self.endpoint.advertise_host or self.sip_address[0]
        self.cascade.start(self.supervisor, (contact_host, self.sip_address[1]))
        await self._start_simulators()

    async def _start_simulators(self) -> None:
        """Built-in cameras (`simulator.cameras`) registering over loopback, for the demo."""
        sim = self.settings.simulator
        node = self.settings.node
        host = "127.0.0.1" if self.sip_address[0] in ("0.0.0.0", "") else self.sip_address[0]
        for i in range(1, sim.cameras + 1):
            device_id = f"{node.id[:10]}132{node.id[13]}{i:06d}"
            camera = SimulatedCamera(
                CameraConfig(
                    server=(host, self.sip_address[1]),
                    device_id=device_id,
                    password=self.settings.devices.password_for(device_id),
                    channels=sim.channels_per_camera,
                    transport="udp" if i % 2 else "tcp",
                    server_id=node.id,
                    name=f"Simulated camera {i}",
                )
            )
            self.simulators.append(camera)
            run = partial(self._run_simulator, len(self.simulators) - 1)
            self._tasks.append(self.supervisor.spawn("simulated cameras", run))

    async def _run_simulator(self, index: int) -> None:
        camera = self.simulators[index]
        if index in self._simulators_run:  # a restart: the failed run closed its sockets
            camera = self.simulators[index] = SimulatedCamera(camera.config)
        self._simulators_run.add(index)
        try:
            await camera.start()
            log.info("simulated camera %s registered over %s: %s", camera.device_id,
                     camera.config.transport, camera.registered)
            await asyncio.Event().wait()
        finally:
            await camera.stop()

    def _route(self, event: RequestReceived) -> None:
        """Requests in an upstream's name go to the cascade, all others to the registrar."""
        if self.cascade.claims(event):
            self.cascade.on_request(event)
        else:
            self.registrar.on_request(event)

    async def stop(self) -> None:
        # Upstream sessions first (BYE, then Expires: 0 to every upstream), then the streams,
        # while the devices (and the built-in cameras) can still take the BYE.
        await self.cascade.stop()
        await self.recording.stop()  # open segments closed, hashed and indexed
        await self.media.close()  # BYE to every device still streaming
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.queries is not None:
            await self.queries.stop()
        await self.access.stop()
        await self.endpoint.close()
        self.registry.log_changes()
        gc.unfreeze()
        try:
            await self.registry.flush(self.wall())
        except Exception as exc:
            log.error("final write of the registry failed: %s", exc)
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    async def _housekeeping(self) -> None:
        """Wall clock step checks, offline sweeps and batched SQLite writes, twice a second.

        It also keeps the garbage collector off the long-lived objects (devices, cached
        transactions): without `gc.freeze()` a full collection walks all of them and stalls the
        loop for tens of milliseconds, which sets the latency tail under load. Frozen objects
        are released for a full collection once every `FULL_GC_INTERVAL_S`.
        """
        last_full_gc = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            if time.monotonic() - last_full_gc >= FULL_GC_INTERVAL_S:
                gc.unfreeze()
                gc.collect()
                last_full_gc = time.monotonic()
            gc.freeze()
            self.clock.check()  # a wall clock step is logged and shown in /healthz
            self.access.tick()  # sessions of grants that ended are ended too
            self.registry.sweep(self.clock.mono())
            self.registry.log_changes()
            try:
                await self.registry.flush(self.wall())
                self._flush_error = None
            except Exception as exc:  # disk full, permissions: report, keep serving
                self._flush_error = f"registry store: {exc}"
                log.error("writing the registry failed: %s", exc)

    def health_problems(self) -> list[str]:
        problems = []
        if self.endpoint.udp is None or self.endpoint.tcp_server is None:
            problems.append("SIP port not listening")
        if self._flush_error:
            problems.append(self._flush_error)
        problems += self.recording.problems()
        problems += self.supervisor.problems()
        problems += self.clock.problems()
        if len(self.registrar.pending) > self.registrar.max_pending // 2:
            problems.append("MESSAGE backlog above half its limit")
        return problems
