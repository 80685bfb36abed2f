"""The node's access service: the policy, the API's grants in SQLite, and the audit of grant
changes and of sessions ended by a grant's expiry or revocation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..settings import Settings
from ..settings.access import GrantSettings
from .grants import Grant, GrantError, GrantStore
from .policy import AccessPolicy, Session

__all__ = ["AccessService"]

log = logging.getLogger(__name__)

Audit = Callable[..., Awaitable[None]]


class AccessService:
    def __init__(self, settings: Settings, *, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.policy = AccessPolicy(settings, wall=wall)
        self.store = GrantStore(settings.node.data_dir / "grants.sqlite3")
        #: the audit log's writer (the recording service's), set by the node
        self.audit: Audit | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="grants")
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def start(self) -> None:
        grants = await self._run(self.store.load)
        self.policy.set_api_grants(grants)
        log.info("grants: %d from the configuration, %d made through the API",
                 len(self.policy.yaml_grants), len(grants))

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        await self._run(self.store.close)
        self._executor.shutdown(wait=False)

    async def add(self, grant: GrantSettings, by: str) -> Grant:
        made: Grant = await self._run(self.store.add, grant, by, self.wall())
        self.policy.add_api_grant(made)
        await self._audit(actor=by, action="grant", result="created",
                          purpose=made.purpose, detail=_describe(made))
        return made

    async def revoke(self, grant_id: str, by: str) -> list[tuple[Session, str]]:
        """Revoke an API grant and end the sessions it carried; raises `GrantError` for a
        grant of the configuration, KeyError for an unknown one."""
        grant = self.policy.grant(grant_id)
        if grant is None:
            raise KeyError(grant_id)
        if grant.source != "api":
            raise GrantError(f"grant {grant_id} comes from the configuration file: edit it there "
                             "(and reload)")
        await self._run(self.store.revoke, grant_id, by, self.wall())
        self.policy.remove_api_grant(grant_id)
        ended = self.policy.sweep()
        await self._audit(actor=by, action="grant", result="revoked", purpose=grant.purpose,
                          detail=_describe(grant) + _sessions(ended))
        return ended

    def tick(self) -> None:
        """End the sessions of grants that have expired (called twice a second)."""
        ended = self.policy.sweep()
        if ended:
            by_grant: dict[str, list[tuple[Session, str]]] = {}
            for session, reason in ended:
                key = session.grant.id if session.grant else "?"
                by_grant.setdefault(key, []).append((session, reason))
            for grant_id, items in by_grant.items():
                log.info("grant %s: %d sessions ended (%s)", grant_id, len(items), items[0][1])
                self._background(self._audit(
                    actor="node", action="grant", result="expired",
                    detail=f"grant {grant_id}" + _sessions(items)))

    def ended_by_reload(self, ended: list[tuple[Session, str]]) -> None:
        if ended:
            self._background(self._audit(actor="node", action="grant", result="ended",
                                         detail="after a reload" + _sessions(ended)))

    async def _audit(self, **entry: Any) -> None:
        if self.audit is not None:
            await self.audit(**entry)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _describe(grant: Grant) -> str:
    return (f"grant {grant.id}: {grant.consumer} may {'/'.join(grant.actions)} "
            f"{', '.join(grant.channels[:5])}{' ...' if len(grant.channels) > 5 else ''}, "
            f"max {grant.max_sessions} sessions")


def _sessions(ended: list[tuple[Session, str]]) -> str:
    if not ended:
        return ""
    listed = "; ".join(f"{s.consumer.kind} {s.consumer.name} {s.action} {s.channel_id}"
                       for s, _ in ended[:10])
    return f"; ended {len(ended)} sessions: {listed}"
