"""The one place that decides whether a consumer may take an action on a channel.

Sharing classes (``channels.default_share`` and per-channel ``share``) and grants apply to the
consumers outside the node: upper platforms and API users of role viewer. Operators and admins
run the node; a user's ``channels`` list limits every role.

- ``none``: nobody outside the node.
- ``unconditional``: every authenticated consumer (with the role's right, checked by the API).
- ``authorized``: an upstream named in the channel's ``upstreams`` list, or any consumer under
  a grant valid now that names the consumer, the channel (or a prefix of it) and the action,
  while it carries fewer than its ``max_sessions``.

Sessions (a live relay, a playback, a download, an API playback or export) are opened here and
closed when they end. Each carries the grant it was allowed under, if any; `sweep` ends those
whose grant expired or was revoked (their `on_revoke` is called with the reason), and
`recheck` ends those the settings no longer allow (after a reload).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sip.catalog import AUTHORIZED, UNCONDITIONAL

from ..settings import Settings
from .grants import Grant, grants_from_settings
from .principals import Principal

__all__ = ["AccessPolicy", "Decision", "Session", "EXPIRY_WARNING_S"]

log = logging.getLogger(__name__)

#: grants ending within this are listed in /healthz
EXPIRY_WARNING_S = 14 * 86400.0


@dataclass(frozen=True)
class Decision:
    """Allowed, or refused with the `reason` (and `busy`: a grant's sessions are all taken,
    which upstreams hear as 486, not 403). `grant` is the grant it rests on, if any."""

    allowed: bool
    reason: str = ""
    grant: Grant | None = None
    busy: bool = False


@dataclass(eq=False)
class Session:
    consumer: Principal
    channel_id: str
    action: str
    grant: Grant | None
    on_revoke: Callable[[str], object] | None = None
    opened: float = field(default_factory=time.time)


class AccessPolicy:
    def __init__(self, settings: Settings, *, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.sessions: set[Session] = set()
        self.api_grants: dict[str, Grant] = {}
        self._epoch = 0
        self.apply(settings)

    def apply(self, settings: Settings) -> None:
        """Take (new) settings: share classes and YAML grants. Running sessions are left to
        `recheck`."""
        self.settings = settings
        self.share = settings.channels.share_policy
        self.yaml_grants = grants_from_settings(settings.grants, settings.node.tz)
        self._epoch += 1

    def set_api_grants(self, grants: list[Grant]) -> None:
        self.api_grants = {g.id: g for g in grants}
        self._epoch += 1

    def add_api_grant(self, grant: Grant) -> None:
        self.api_grants[grant.id] = grant
        self._epoch += 1

    def remove_api_grant(self, grant_id: str) -> None:
        self.api_grants.pop(grant_id, None)
        self._epoch += 1

    def epoch(self) -> int:
        """A number that changes whenever the settings or the grants do."""
        return self._epoch

    def next_change(self, now: float | None = None) -> float:
        """When a grant next starts or ends (what anybody may see changes then); inf if
        never."""
        now = self.wall() if now is None else now
        return min((t for g in self.grants() for t in (g.valid_from, g.valid_to) if t > now),
                   default=float("inf"))

    # ----- grants -----
    def grants(self) -> list[Grant]:
        return [*self.yaml_grants, *self.api_grants.values()]

    def grant(self, grant_id: str) -> Grant | None:
        return next((g for g in self.grants() if g.id == grant_id), None)

    def carried(self, grant: Grant) -> int:
        return sum(1 for s in self.sessions if s.grant is not None and s.grant.id == grant.id)

    def expiring(self, now: float | None = None) -> list[str]:
        """Grants that end within `EXPIRY_WARNING_S` (a warning for /healthz)."""
        now = self.wall() if now is None else now
        return [
            f"grant {g.id} for {g.consumer} ends in {(g.valid_to - now) / 86400:.1f} days"
            for g in self.grants()
            if g.valid_from <= now < g.valid_to and g.valid_to - now <= EXPIRY_WARNING_S
        ]

    # ----- decisions -----
    def decide(
        self, consumer: Principal, channel_id: str, action: str, *, now: float | None = None,
        count: bool = True,
    ) -> Decision:
        """May `consumer` take `action` (live, playback, export) on the channel now? With
        `count`, a grant whose sessions are all taken does not count."""
        now = self.wall() if now is None else now
        if not consumer.sees(channel_id):
            return Decision(False, f"channel {channel_id} is not among {consumer.name}'s")
        if consumer.staff:
            return Decision(True)
        share = self.share.share_of(channel_id)
        if share.share == UNCONDITIONAL:
            return Decision(True)
        if share.share != AUTHORIZED:
            return Decision(False, f"channel {channel_id} is not shared")
        if consumer.kind == "upstream" and consumer.name in share.upstreams:
            return Decision(True)
        full: Grant | None = None
        for grant in self.grants():
            if not grant.covers(consumer.name, channel_id, action, now):
                continue
            if not count or self.carried(grant) < grant.max_sessions:
                return Decision(True, grant=grant)
            full = grant
        if full is not None:
            return Decision(False, f"sessions of grant {full.id} "
                                   f"({self.carried(full)}/{full.max_sessions})",
                            grant=full, busy=True)
        return Decision(False, f"no valid grant for {consumer.name} to {action} channel "
                               f"{channel_id}")

    def visible(self, consumer: Principal, channel_id: str, *, now: float | None = None) -> bool:
        """Whether the consumer may know of the channel (catalog, record search): some action
        is allowed on it now."""
        now = self.wall() if now is None else now
        return any(self.decide(consumer, channel_id, action, now=now, count=False).allowed
                   for action in ("live", "playback", "export"))

    # ----- sessions -----
    def open(
        self, consumer: Principal, channel_id: str, action: str,
        on_revoke: Callable[[str], object] | None = None,
    ) -> Session | Decision:
        """A session, if allowed (then `close` it when it ends); else the refusal."""
        decision = self.decide(consumer, channel_id, action)
        if not decision.allowed:
            return decision
        session = Session(consumer, channel_id, action, decision.grant, on_revoke, self.wall())
        self.sessions.add(session)
        return session

    def close(self, session: Session | None) -> None:
        if session is not None:
            self.sessions.discard(session)

    def _end(self, ended: list[tuple[Session, str]]) -> list[tuple[Session, str]]:
        for session, reason in ended:
            self.sessions.discard(session)
            if session.on_revoke is not None:
                try:
                    session.on_revoke(reason)
                except Exception:
                    log.exception("ending a session of %s failed", session.consumer.name)
        return ended

    def sweep(self, now: float | None = None) -> list[tuple[Session, str]]:
        """End the sessions whose grant has expired or is gone; what was ended, and why."""
        now = self.wall() if now is None else now
        current = {g.id: g for g in self.grants()}
        ended = []
        for session in list(self.sessions):
            grant = session.grant
            if grant is None:
                continue
            if grant.id not in current:
                ended.append((session, f"grant {grant.id} was revoked"))
            elif now >= current[grant.id].valid_to:
                ended.append((session, f"grant {grant.id} expired"))
        return self._end(ended)

    def recheck(self) -> list[tuple[Session, str]]:
        """End the sessions the current settings and grants no longer allow."""
        now = self.wall()
        ended = []
        for session in list(self.sessions):
            decision = self.decide(session.consumer, session.channel_id, session.action,
                                   now=now, count=False)
            if not decision.allowed:
                ended.append((session, f"no longer allowed: {decision.reason}"))
            elif session.grant is not None and decision.grant is not None:
                session.grant = decision.grant
        return self._end(ended)

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        now = self.wall() if now is None else now
        out = []
        for grant in self.grants():
            item = grant.as_json(now)
            item["sessions"] = self.carried(grant)
            out.append(item)
        return out
