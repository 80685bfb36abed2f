"""Consumers of the node's video, and what each role may do.

A `Principal` is an API user (a `users:` entry, or the holder of `node.api_token`, an admin)
or an upper platform. Roles nest: a viewer reads the node's state and watches and plays back
what it may see; an operator also exports, starts and stops pulls and releases channels; an
admin also manages grants, reads the audit log and the configuration.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..settings import Settings
from ..settings.access import hash_token

__all__ = ["RIGHTS", "Principal", "as_upstream", "authenticate", "missing_right"]

_VIEWER = frozenset({"read", "live", "playback", "search"})
_OPERATOR = _VIEWER | {"export", "pull", "release"}
_ADMIN = _OPERATOR | {"grants", "audit", "config"}
RIGHTS: dict[str, frozenset[str]] = {"viewer": _VIEWER, "operator": _OPERATOR, "admin": _ADMIN}


@dataclass(frozen=True)
class Principal:
    """Who asks. `kind` is ``user`` or ``upstream`` (then `name` is its 20-digit code);
    `channels` None: every channel, else the IDs or civil-code prefixes the user is limited to.
    """

    name: str
    role: str = "viewer"
    channels: tuple[str, ...] | None = None
    kind: str = "user"

    def may(self, right: str) -> bool:
        return right in RIGHTS.get(self.role, frozenset())

    def sees(self, channel_id: str) -> bool:
        """Whether the channel is among those the user is limited to (if any)."""
        return self.channels is None or any(channel_id.startswith(p) for p in self.channels)

    @property
    def staff(self) -> bool:
        """An operator or admin of the node itself: sharing classes and grants govern the
        consumers outside it (viewers and upper platforms), not them."""
        return self.kind == "user" and self.role in ("operator", "admin")


def as_upstream(code: str) -> Principal:
    """The principal an upper platform is, by its 20-digit code."""
    return Principal(code, "viewer", None, "upstream")


def authenticate(settings: Settings, token: str) -> Principal | None:
    """The principal a bearer token belongs to: `node.api_token` is an admin named
    ``api-token``; a user's token matches its `token_sha256`. None for any other."""
    token = token.strip()
    if not token:
        return None
    if hmac.compare_digest(token.encode(), settings.node.api_token.encode()):
        return Principal("api-token", "admin")
    digest = hash_token(token)
    for user in settings.users:
        if hmac.compare_digest(digest, user.token_sha256):
            return Principal(user.name, user.role, user.channels)
    return None


def missing_right(principal: Principal, right: str) -> str | None:
    """Why `principal` may not use `right` (the 403's text), or None."""
    if principal.may(right):
        return None
    have = ", ".join(sorted(RIGHTS.get(principal.role, ())))
    return (f"{principal.name} ({principal.role}) lacks the right {right!r}; "
            f"the role has: {have}")
