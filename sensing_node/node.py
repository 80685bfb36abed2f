"""Wiring: the node's parts (registry, SIP endpoint, registrar, queries, stream hub, recorder,
cascade) built from the settings, started in order and stopped in reverse.

`Node.start` opens the store, the SIP port, the recorder and the housekeeping; `Node.stop` ends
the streams while devices can still take the BYE and flushes the registry to SQLite last. The
HTTP application around it is `sensing_node.app`.

`Node.reload` reads the config file again (SIGHUP, `POST /api/config/reload`). A file with any
problem is refused whole and the node runs on as it was. A valid one is handed to every part
that keeps settings: the registrar (passwords, allow-lists, overrides), the registry (timeouts),
the stream hub (media options), the access policy (users, sharing classes, grants: the sessions
no longer allowed end), the cascade (limits; upstreams added, removed, changed) and the
recording plan. What is bound at start keeps its running value and is named as needing a
restart (`settings.reload.RESTART_KEYS`). Both outcomes are logged and audited
(`config_reload`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sip.transaction import RequestReceived

from .access.principals import Principal
from .access.service import AccessService
from .cascade.service import Cascade
from .devices.queries import DeviceQueries
from .devices.registrar import Registrar
from .devices.registry import Registry
from .devices.store import Store
from .media.hub import StreamHub
from .media.workers.pool import MediaWorkers
from .recording.service import RecordingService
from .runtime.clock import NodeClock
from .runtime.stats import Stats
from .runtime.supervise import Supervisor
from .settings import ConfigError, Settings, load_settings
from .settings.reload import merge
from .sim.camera import CameraConfig, SimulatedCamera
from .transport.sip import SipEndpoint

log = logging.getLogger(__name__)

FULL_GC_INTERVAL_S = 600.0


#: problems of a refused file written to the audit log (all of them go to the log and the API)
AUDITED_PROBLEMS = 10


class StartupError(Exception):
    """The node cannot start (a port is taken, the data directory is unusable ...)."""


class ReloadRefused(Exception):
    """The config file cannot be used; `problems` as `check-config` gives them (file:line)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = list(problems)


@dataclass
class Reloaded:
    """What a reload applied: the sections that changed, the keys that need a restart (their
    running values kept), the sessions it ended, and the upstreams added, removed, changed."""

    source: str
    applied: list[str]
    restart_needed: list[str]
    ended_sessions: int
    upstreams: dict[str, list[str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "applied": self.applied,
                "restart_needed": self.restart_needed, "ended_sessions": self.ended_sessions,
                "upstreams": self.upstreams}

    def describe(self) -> str:
        parts = [f"applied: {', '.join(self.applied) or 'nothing changed'}"]
        moves = "; ".join(f"{what} {', '.join(ids)}" for what, ids in self.upstreams.items()
                          if ids)
        if moves:
            parts.append(f"upstreams {moves}")
        if self.restart_needed:
            parts.append(f"restart needed for {', '.join(self.restart_needed)} (not applied)")
        if self.ended_sessions:
            parts.append(f"{self.ended_sessions} sessions ended")
        return "; ".join(parts)


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
        #: when the running settings were read (start, or the last reload that was taken)
        self.loaded_at = wall()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[Any]] = set()
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
        self.endpoint = SipEndpoint(self._route, stats=self.stats,
                                    udp_read_pace_s=settings.node.sip_read_pace_ms / 1000)
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
        await self._start_workers()
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

    async def _start_workers(self) -> None:
        """`media.workers` > 1: the media worker processes, before any stream starts."""
        count = self.settings.media.worker_count
        if count < 2:
            return
        media = self.media
        workers = MediaWorkers(
            self.settings, count, host=media.media_bind_host, receive=media.receive_config,
            recording_root=self.recording.root,
        )
        workers.keep = self.recording.planned
        workers.stamp = self.clock.stamp
        try:
            await workers.start(self.supervisor)
        except (OSError, TimeoutError) as exc:
            await workers.close()
            raise StartupError(f"cannot start the media workers: {exc}") from exc
        media.workers = self.recording.workers = workers
        log.info("media in %d worker processes", count)

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
        """Stop in order; a step that fails is logged and the later ones still run, so the
        node's sockets, media workers and stores are closed whatever went wrong before."""
        for task in list(self._reloads):  # a SIGHUP's reload does not outlive the node
            task.cancel()
        await asyncio.gather(*self._reloads, return_exceptions=True)
        # Upstream sessions first (BYE, then Expires: 0 to every upstream), then the streams,
        # while the devices (and the built-in cameras) can still take the BYE.
        await self._stop_step("cascade", self.cascade.stop())
        # open segments closed, hashed and indexed
        await self._stop_step("recording", self.recording.stop())
        await self._stop_step("media", self.media.close())  # BYE to every device still streaming
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.queries is not None:
            await self._stop_step("device queries", self.queries.stop())
        await self._stop_step("access", self.access.stop())
        await self._stop_step("SIP", self.endpoint.close())
        self.registry.log_changes()
        gc.unfreeze()
        try:
            await self.registry.flush(self.wall())
        except Exception as exc:
            log.error("final write of the registry failed: %s", exc)
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    @staticmethod
    async def _stop_step(name: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception:
            log.exception("stopping the node: %s failed; going on with the rest", name)

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

    # ----- reload -----
    async def reload(self, *, actor: str = "node") -> Reloaded:
        """Read the config file the node runs from (`settings.source`) again and apply it;
        raises `ReloadRefused` (the running settings stay) when the file has any problem.
        `actor` is who asked, for the audit log. Reloads run one at a time."""
        async with self._reload_lock:
            source = self.settings.source
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, load_settings, source)
            except ConfigError as exc:
                problems = exc.problems
                log.error("configuration reload refused, the running configuration stays: "
                          "%s", "; ".join(problems))
                await self.recording.log_access(
                    actor=actor, action="config_reload", result="refused",
                    detail=f"{source}: {len(problems)} problem(s): "
                    + "; ".join(problems[:AUDITED_PROBLEMS]),
                )
                raise ReloadRefused(source, problems) from None
            merged = merge(self.settings, new)
            ended, upstreams = await self._apply(merged.settings)
            self.loaded_at = self.wall()
            outcome = Reloaded(source, merged.applied, merged.restart_needed, ended, upstreams)
            log.info("configuration reloaded from %s: %s", source, outcome.describe())
            if merged.restart_needed:
                log.warning("configuration reload: %s changed, which takes a restart; the "
                            "running values stay until then", ", ".join(merged.restart_needed))
            await self.recording.log_access(actor=actor, action="config_reload", result="ok",
                                            detail=f"{source}: {outcome.describe()}")
            return outcome

    def reload_soon(self, actor: str) -> None:
        """`reload` in a task of its own (from a signal handler); its outcome is logged."""
        task = asyncio.get_running_loop().create_task(self.reload(actor=actor), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloaded)

    def _reloaded(self, task: asyncio.Task[Any]) -> None:
        self._reloads.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, ReloadRefused):  # a refusal is logged
            log.error("configuration reload failed", exc_info=exc)

    async def _apply(self, settings: Settings) -> tuple[int, dict[str, list[str]]]:
        """Hand `settings` (merged: nothing bound at start changes) to every part; the sessions
        ended and the upstreams added, removed and changed."""
        self.settings = settings
        if self.endpoint.udp is not None:
            self.endpoint.udp.pace_s = settings.node.sip_read_pace_ms / 1000
        self.registrar.apply_settings(settings)
        devices = settings.devices
        self.registry.apply_settings(keepalive_timeout_s=devices.keepalive_timeout_s,
                                     channel_takeover_s=devices.channel_takeover_s)
        self.media.settings = settings  # read at each use: media options, channel overrides
        policy = self.access.policy
        policy.apply(settings)
        users = {user.name: user for user in settings.users}
        for session in list(policy.sessions):
            # A user's sessions are judged by the user as configured now; one who is gone
            # sees no channel.
            who = session.consumer
            if who.kind != "user" or who.name == "api-token":
                continue
            user = users.get(who.name)
            session.consumer = (Principal(who.name, "viewer", ()) if user is None
                                else Principal(user.name, user.role, user.channels))
        ended = policy.recheck()
        if ended:
            log.info("configuration reload: %d sessions no longer allowed ended (%s)",
                     len(ended), ended[0][1])
        self.access.ended_by_reload(ended)
        changes = await self.cascade.apply_settings(settings)
        self.recording.apply_settings(settings)
        upstreams = {"added": changes.added, "removed": changes.removed,
                     "changed": changes.changed}
        return len(ended) + changes.ended, upstreams

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
