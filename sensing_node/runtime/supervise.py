"""Supervision of the node's long-lived tasks, so that none of them dies silently.

A supervised task is a coroutine function meant to run for the node's lifetime (housekeeping,
the recording loop, the stream hub's ticker, the device query workers). When it raises, the
supervisor logs the exception with its traceback, counts it under the task's name and runs the
function again after a backoff: `backoff_min_s`, doubling with each failure up to
`backoff_max_s`; a run that lasted `healthy_s` before it failed starts again from
`backoff_min_s`. Cancellation (the node stopping) is not a failure: it ends the task at once,
whether the task is running or waiting for its restart. A function that returns has finished
its work and is not run again.

Health: a task is reported (`/healthz` degraded, naming it and its last error) while it waits
for its restart and for `healthy_s` after its last failure, so a task that fails over and over
stays reported; `/api/stats` keeps the counts for the node's lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class TaskHealth:
    """What the supervisor knows of the tasks of one name (several workers may share it)."""

    name: str
    failures: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_failure: float | None = None  # the supervisor's clock
    waiting: int = 0  # runs waiting for their restart now


class Supervisor:
    """Starts long-lived tasks and restarts any that fail, with backoff.

    `clock` (monotonic seconds) and `sleep` are injectable so that tests need not wait; the
    backoff and healthy period are read at each failure, so a test may shorten them on a
    running node.
    """

    def __init__(
        self,
        *,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
        healthy_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.healthy_s = healthy_s
        self.clock = clock
        self.sleep = sleep
        self.tasks: dict[str, TaskHealth] = {}

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` in a task of that name, again after each failure until cancelled."""
        health = self.tasks.setdefault(name, TaskHealth(name))
        return asyncio.create_task(self._supervise(health, run), name=name)

    async def _supervise(self, health: TaskHealth, run: Callable[[], Awaitable[None]]) -> None:
        delay: float | None = None
        while True:
            started = self.clock()
            try:
                await run()
                return
            except Exception as exc:
                now = self.clock()
                if delay is None or now - started >= self.healthy_s:
                    delay = self.backoff_min_s
                else:
                    delay = min(delay * 2, self.backoff_max_s)
                health.failures += 1
                health.last_error = f"{type(exc).__name__}: {exc}"
                health.last_failure = now
                log.error("task %s failed (%d failures so far), restarting in %g s",
                          health.name, health.failures, delay, exc_info=True)
            health.waiting += 1
            try:
                await self.sleep(delay)
            finally:
                health.waiting -= 1
            health.restarts += 1

    def failed(self, name: str, exc: BaseException, what: str) -> None:
        """Count a failure that the task `name` caught and survived (one item of its work
        failed, not the task): logged with its traceback and shown like a restart's."""
        health = self.tasks.setdefault(name, TaskHealth(name))
        health.failures += 1
        health.last_error = f"{what}: {type(exc).__name__}: {exc}"
        health.last_failure = self.clock()
        log.error("task %s: %s failed (%d failures so far)", name, what, health.failures,
                  exc_info=exc)

    def problems(self) -> list[str]:
        """One line per task that is restarting or failed within the last `healthy_s`."""
        now = self.clock()
        out = []
        for health in self.tasks.values():
            if health.last_failure is None:
                continue
            if health.waiting:
                state = "restarting"
            elif now - health.last_failure < self.healthy_s:
                state = f"last failure {now - health.last_failure:.0f} s ago"
                if health.restarts:
                    state = "restarted, " + state
            else:
                continue
            out.append(f"task {health.name} failed ({health.failures} failures, {state}): "
                       f"{health.last_error}")
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Failures and restarts by task name, for /api/stats."""
        now = self.clock()
        return {
            name: {
                "failures": health.failures,
                "restarts": health.restarts,
                "restarting": health.waiting > 0,
                "last_error": health.last_error,
                "seconds_since_failure": None if health.last_failure is None
                else round(now - health.last_failure, 1),
            }
            for name, health in sorted(self.tasks.items())
        }
